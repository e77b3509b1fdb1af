"""The CVAE study's figures, written by ``t2i train cvae`` at the end of a run into ``out``:

- ``samples.png``: the MLP's class-conditioned grid (seed 002, Figures 4-5): one row per class,
  labelled with its name from the manifest, ``grid_cols`` samples per row, column j decoded from
  the same z_j in every row (z ~ N(0, I) drawn from the run's seed), so a column shows one "style"
  across the classes. The conv CVAE's caption-conditioned grid (Figure 6): ``grid_rows`` held-out
  samples, each row its original image, a gap, then ``grid_cols`` samples decoded from its
  caption's embedding, the caption written under the row.
- ``latent-tsne.png`` (MLP; Figure 3): μ of ``latent_n`` held-out images mapped to 2-D by
  scikit-learn's ``TSNE`` (the study: "sklearn manifold.TSNE"), coloured by class with a legend of
  the class names. Without scikit-learn (``pip install 't2i-data[tsne]'``) it is
  ``latent-pca.png``, the first two principal components (an exact SVD of the centred μ in
  float64: ``torch.pca_lowrank`` draws from the global generator), and the title and the log say
  that it is PCA because scikit-learn is missing.
- ``loss.png``: the training loss and its two terms (``metrics.jsonl``) over the steps.

Every PNG carries its title (and legend) as PNG text chunks (``Title``, ``Legend``, ``Method``),
so a reader can tell what a figure shows without looking at it. Held-out samples are a seeded
choice of keys (the ``latent_n`` smallest of u(seed, key)), not the first ones of the split. The
held-out loss over them goes into ``metrics.jsonl`` as ``{"split": "test", ...}``.
"""
from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from t2i_data.align import check_aligned, merge_aligned
from t2i_data.errors import T2IError
from t2i_data.figures import scatter_chart
from t2i_data.manifest import open_split, split_manifest
from t2i_data.rng import key_ids, keyed_u64, stream_id, uniform_float
from t2i_data.subset import shard_keys
from t2i_data.tario import iter_samples

from .train_common import append_metrics

log = logging.getLogger(__name__)
CELL = 56  # px per image in the sample grids (28 px doubled, 64 px shrunk slightly)


def _generator(seed: int, name: str, device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(keyed_u64(seed, stream_id(name), 0, 0)) & (2**63 - 1))
    return g


def save_png(img: Image.Image, path: Path, **text: str) -> Path:
    """``img`` as PNG with ``text`` as tEXt chunks (no clock: the same figure gives the same bytes)."""
    info = PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    img.save(path, format="PNG", pnginfo=info)
    return path


def heldout(images: str, text_emb: str, decode, n: int, seed: int) -> list[dict]:
    """The decoded samples of the ``n`` keys of ``images`` (zipped with ``text_emb`` when given)
    with the smallest u(seed, key), in that order; each with ``caption`` (the caption its
    ``caption_index`` names, or its first). Shards are checked against their manifests."""
    sets = [open_split(images)] + ([open_split(text_emb)] if text_emb else [])  # folders or URLs
    ms = [ss.manifest for ss in sets]
    for ss in sets[1:]:
        check_aligned(ms[0], ss.manifest, ss.location)
    names = [s["name"] for s in ms[0]["shards"]]
    keys = []
    for s in ms[0]["shards"]:
        with sets[0].pinned(s["name"]) as path:
            keys += shard_keys(path, s)
    if not keys:
        raise T2IError(f"{images}: no samples to draw the figures from")
    u = uniform_float(seed, stream_id("cvae-figures"), key_ids(keys), 0)
    rank = {keys[i]: r for r, i in enumerate(np.argsort(u, kind="stable")[:n])}
    for ss in sets[1:]:
        for s in ss.manifest["shards"]:
            with ss.pinned(s["name"]) as path:
                shard_keys(path, s)  # size and sha256 of the derived shards too
    found: dict[str, dict] = {}
    for name in names:
        with ExitStack() as pins:
            paths = [pins.enter_context(ss.pinned(name)) for ss in sets]
            for parts in zip(*[iter_samples(p) for p in paths], strict=True):
                key = parts[0]["__key__"]
                if key in rank:
                    merged = merge_aligned(parts, name)
                    merged["__url__"] = sets[0].where(name)
                    item = decode(merged, 0)
                    caps = json.loads(merged["json"]).get("captions") or [""]
                    item["caption"] = str(caps[int(item.get("caption_index", 0))])
                    found[key] = item
    return sorted(found.values(), key=lambda it: rank[it["key"]])


def _stack(items: list[dict], name: str, device) -> torch.Tensor:
    return torch.stack([torch.as_tensor(np.asarray(it[name])) for it in items]).to(device)


def _pixels(x: torch.Tensor) -> list[np.ndarray]:
    """(B, C, S, S) floats in [0, 1] -> B uint8 (S, S, 3) arrays."""
    x = x.detach().float().clamp(0, 1).cpu()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return list((x.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8))


def project(mu: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """(N, 2) coordinates of μ (N, z) and the method: "t-SNE" (scikit-learn's TSNE, PCA init,
    ``random_state`` = seed, perplexity min(30, (N − 1) / 3)) or, without scikit-learn, "PCA" (exact
    SVD of the centred μ in float64)."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        log.warning("scikit-learn is not installed: the latent figure shows PCA, not t-SNE (pip install 't2i-data[tsne]')")
        x = torch.from_numpy(mu.astype(np.float64))
        x = x - x.mean(0)
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        return (x @ vh[:2].T).numpy(), "PCA"
    perplexity = float(min(30.0, max(1.0, (len(mu) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(mu.astype(np.float64)), "t-SNE"


def latent_figure(mu: np.ndarray, labels: np.ndarray, classes: list[str], out: Path, seed: int, where: str) -> Path:
    """``latent-tsne.png`` or ``latent-pca.png`` (module docstring) of μ (N, z) coloured by ``labels``."""
    xy, method = project(mu, seed)
    why = "" if method == "t-SNE" else " (scikit-learn not installed: PCA instead of t-SNE)"
    title = f"{method} of the CVAE's mu (z = {mu.shape[1]}) for {len(mu)} {where} images, coloured by class{why}"
    names = [f"{i}: {c}" for i, c in enumerate(classes)]
    img = scatter_chart(xy, labels.tolist(), names, title, f"{method} 1", f"{method} 2")
    stem = "latent-tsne" if method == "t-SNE" else "latent-pca"
    return save_png(img, out / f"{stem}.png", Title=title, Legend=json.dumps(names), Method=method)


def loss_figure(out: Path, rec_key: str) -> Path | None:
    """``loss.png``: loss, its reconstruction term and KL (nats per image) from ``metrics.jsonl``."""
    from .plot import Quantity, line_chart, read_metrics, series

    rows = read_metrics(out)
    runs = [(name, {"train": series(rows, (name,), False)}) for name in ("loss", rec_key, "kl")]
    runs = [(n, p) for n, p in runs if len(p["train"][0])]
    if not runs:
        return None
    title = f"CVAE training loss = {rec_key.upper()} + KL"
    q = Quantity("loss", title, "nats per image", smooth=True)
    return save_png(line_chart(runs, q).convert("RGB"), out / "loss.png", Title=title, Legend=json.dumps([n for n, _ in runs]))


@torch.no_grad()
def write_figures(model, cfg, facts: dict, device, metrics_path: Path, step: int, epoch: int) -> list[str]:
    """Every figure of the module docstring for a finished run, and the held-out row; returns the paths."""
    from .sample import prompt_sheet
    from .cvae_data import class_decode, image_decode, stored_size

    out = Path(cfg.out)
    mlp = model.kind == "cvae_mlp"
    images = cfg.eval_images or cfg.images
    text = (cfg.eval_text_emb or cfg.text_emb) if not mlp else ""
    where = "held-out" if cfg.eval_images else "training-split"
    if not cfg.eval_images:
        log.warning("no eval_images: the figures and the held-out row come from the training split %s", cfg.images)
    size = stored_size(split_manifest(images), images)
    if mlp:
        decode = class_decode(size, model.cfg.channels, model.cfg.num_classes)
    else:
        from .embed import text_emb_decode

        decode = text_emb_decode(cfg.seed, image_decode(size))
    n = max(cfg.latent_n, 0 if mlp else cfg.grid_rows)
    items = heldout(images, text, decode, n, cfg.seed) if n else []
    written = []
    cond_key = "label" if mlp else "text_emb"
    if items:
        x = _stack(items, "image", device).float() / 255
        cond = _stack(items, cond_key, device)
        res = model(x, cond, generator=_generator(cfg.seed, "cvae-heldout", device))
        row = {"step": step, "epoch": epoch, "split": "test", "images": len(items), "loss": round(float(res["loss"]), 6),
               model.cfg.recon: round(float(res["rec"]), 6), "kl": round(float(res["kl"]), 6)}
        append_metrics(metrics_path, row)
        log.info("%s loss over %d images: %.2f (%s %.2f, kl %.2f nats per image)", where, len(items), row["loss"], model.cfg.recon,
                 row[model.cfg.recon], row["kl"])
    g = _generator(cfg.seed, "cvae-samples", device)
    if mlp:
        classes = facts["classes"]
        z = torch.randn((cfg.grid_cols, model.cfg.latent), generator=g, device=device)
        rows = [_pixels(model.decode(z, torch.full((cfg.grid_cols,), k, dtype=torch.int64, device=device)))
                for k in range(model.cfg.num_classes)]
        title = f"CVAE samples at step {step}: one row per class, column j from the same z_j"
        labels = [f"{k}: {c}" for k, c in enumerate(classes)]
        written.append(save_png(prompt_sheet(rows, labels, cell=CELL, header=title), out / "samples.png", Title=title,
                                Legend=json.dumps(labels)))
        if cfg.latent_n and items:
            mu = model.encode(x, cond)[0].float().cpu().numpy()
            written.append(latent_figure(mu, cond.cpu().numpy(), classes, out, cfg.seed, where))
    elif items:
        shown = items[: cfg.grid_rows]
        emb = _stack(shown, "text_emb", device).float()
        rows = []
        for i in range(len(shown)):
            samples = model.sample(emb[i : i + 1].expand(cfg.grid_cols, -1), generator=g)
            rows.append(_pixels(x[i : i + 1]) + _pixels(samples))
        caps = [it["caption"] for it in shown]
        title = f"CVAE samples at step {step}: {where} image, then samples from its caption's embedding"
        written.append(save_png(prompt_sheet(rows, caps, cell=CELL, gap_after=1, header=title), out / "samples.png", Title=title,
                                Legend=json.dumps(caps)))
    loss = loss_figure(out, model.cfg.recon)
    if loss is not None:
        written.append(loss)
    return [str(p) for p in written]
