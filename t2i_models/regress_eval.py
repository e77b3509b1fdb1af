"""What ``t2i train regress`` writes at its end, from the held-out pair (or the train pair, with a
warning and ``"set": "train"`` in the report, when none is given):

- held-out rows (``heldout_metrics``): the MSE of the predicted latent against z_q, and, as its
  scale, ``mse_mean``: the MSE of the held-out set's own mean latent (a constant predictor that
  knew the held-out mean; a regressor whose outputs collapse to one point, as the seed reports
  for its transformer variants, scores about this); without a held-out pair the report's
  ``train_fit`` holds the same figures on the train split;
- ``report.json`` and ``histograms.png``: the seed's Figure 3, cosine similarity and MSE of pairs of
  similar captions (two captions of one image) and of dissimilar ones (no word in common, with
  ``pair_images``' caption texts; else captions of two different images), for each stage the
  caption passes: the text embedding (BERT features: the study's "after the transformer" in mode
  mlp), the Siamese head's output (mode siamese: the study's "after the transformer"), and the
  predicted latent ("after the fully connected layers"). The report lists every pair as [key,
  row, key, row] with both values per stage, so the figure can be recomputed from it;
- ``decoded.png``: ``grid_n`` held-out samples, rows: the VQ-VAE's decoding of the true tokens (the
  best the latent can give), the decoder on the predicted latent as it is (the seed's evaluation:
  "transformed through the fully connected layers, and finally decoded with the VQ-VAE decoder"),
  and the decoder on the predicted latent snapped to its nearest codes; the captions (with
  ``pair_images``) in the PNG's "Legend" text chunk.

Every sample uses view 0 of its tokens and the caption row ``text_emb.caption_index`` draws for
epoch 0, so reruns give the same numbers.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, PngImagePlugin

from t2i_data.align import same_key
from t2i_data.errors import T2IError
from t2i_data.figures import bar_chart, font
from t2i_data.manifest import checked_samples, open_split
from t2i_data.npyio import load_npy
from t2i_data.text_emb import MEMBER, caption_index

from .regress import LatentSpace, draw_captions, histogram_pairs, pair_values, triplet_loss

log = logging.getLogger(__name__)
CHUNK = 64  # rows per forward in evaluation (the study's latent is 131,072 floats a row)
STAGES = {"input": "text embeddings (the MLP's input)", "head": "after the Siamese head (the MLP's input)",
          "latent": "after the fully connected layers (predicted latents)"}


def aligned_parts(dirs: list[str], n: int = 0) -> Iterator[tuple[dict, ...]]:
    """The first ``n`` (0: all) samples of sets of one image set, one dict per set, shard by shard,
    each shard checked against its manifest (size, sha256, count) and the keys against each other."""
    sets = [open_split(d) for d in dirs]  # folders or URLs
    count = 0
    for i, shard in enumerate(sets[0].manifest["shards"]):
        for parts in zip(*[checked_samples(ss, ss.manifest["shards"][i]) for ss in sets], strict=True):
            same_key(parts, shard["name"])
            yield parts
            count += 1
            if n and count >= n:
                return


def _rows(sample: dict, where: str) -> np.ndarray:
    return np.asarray(load_npy(sample[MEMBER], f"{where}: {sample['__key__']}"), dtype=np.float32)


def _view0(sample: dict, where: str) -> np.ndarray:
    return np.asarray(load_npy(sample["image_tokens.npy"], f"{where}: {sample['__key__']}")[0], dtype=np.int64)


def load_set(text_emb: str, image_tokens: str, n: int, pair_images: str = "") -> dict:
    """{"keys", "rows": [(C_i, D) float32], "tokens": (N, h, w) int64 (view 0), "captions": [[str]] or
    None} of the first ``n`` samples. ``T2IError`` when ``pair_images``' caption count of a sample
    differs from its embedding rows (not the image set the embeddings were made from)."""
    dirs = [image_tokens, text_emb] + ([pair_images] if pair_images else [])
    keys, rows, tokens, captions = [], [], [], [] if pair_images else None
    for parts in aligned_parts(dirs, n):
        keys.append(parts[0]["__key__"])
        tokens.append(_view0(parts[0], image_tokens))
        rows.append(_rows(parts[1], text_emb))
        if pair_images:
            from t2i_data.text import sample_captions

            caps = sample_captions(parts[2], pair_images)[0]
            if len(caps) != len(rows[-1]):
                raise T2IError(f"pair_images={pair_images}: {keys[-1]} has {len(caps)} captions, text_emb={text_emb} {len(rows[-1])} "
                               f"embedding rows; give the image set the embeddings were made from")
            captions.append(caps)
    return {"keys": keys, "rows": rows, "tokens": np.stack(tokens) if tokens else np.zeros((0, 1, 1), np.int64), "captions": captions}


@torch.no_grad()
def heldout_metrics(model, space: LatentSpace, cfg, text_emb: str, image_tokens: str, device) -> dict:
    """{"mse", "mse_mean", "samples"} (and "triplet" for the Siamese mode) over the first ``cfg.eval_n``
    (0: all) samples: caption row ``caption_index(key, seed, 0, C)``, view 0 (module docstring)."""
    se, s1, s2, tri, n = 0.0, None, 0.0, 0.0, 0
    batch: list = []

    def flush() -> None:
        nonlocal se, s1, s2, tri, n
        x = torch.from_numpy(np.stack([b[0] for b in batch])).to(device)
        t = space.target(torch.from_numpy(np.stack([b[1] for b in batch])).to(device))
        se += float(F.mse_loss(model(x).float(), t, reduction="sum"))
        s1 = t.double().sum(0) if s1 is None else s1 + t.double().sum(0)
        s2 += float((t.double() ** 2).sum())
        if model.cfg.head_dim and len(batch) > 1:
            a, p = model.features(x), model.features(torch.from_numpy(np.stack([b[2] for b in batch])).to(device))
            tri += float(triplet_loss(a, p, a.roll(1, 0), cfg.margin)) * len(batch)
        n += len(batch)
        batch.clear()

    for img, txt in aligned_parts([image_tokens, text_emb], cfg.eval_n):
        key, rows = img["__key__"], _rows(txt, text_emb)
        a = caption_index(key, cfg.seed, 0, len(rows))
        batch.append((rows[a], _view0(img, image_tokens), rows[draw_captions(len(rows), cfg.seed, key, 0, anchor=a)[1]]))
        if len(batch) == CHUNK:
            flush()
    if batch:
        flush()
    if not n:
        raise T2IError(f"eval_image_tokens={image_tokens}: no samples to evaluate")
    size = space.size
    out = {"mse": se / (n * size), "mse_mean": (s2 - float((s1 ** 2).sum()) / n) / (n * size), "samples": n}
    if model.cfg.head_dim:
        out["triplet"] = tri / n
    return out


@torch.no_grad()
def stage_values(model, rows: list[np.ndarray], pairs: list[list[int]], device) -> dict[str, dict[str, list[float]]]:
    """{stage: {"cosine": [...], "mse": [...]}} of each pair [i, a, j, b] (rows[i][a] against
    rows[j][b]) at each stage (``STAGES``; "head" only for a model with one), in CHUNK pairs per forward."""
    stages = ["input"] + (["head"] if model.cfg.head_dim else []) + ["latent"]
    out = {s: {"cosine": [], "mse": []} for s in stages}
    for k in range(0, len(pairs), CHUNK):
        part = pairs[k:k + CHUNK]
        u = torch.from_numpy(np.stack([rows[i][a] for i, a, _, _ in part])).to(device)
        v = torch.from_numpy(np.stack([rows[j][b] for _, _, j, b in part])).to(device)
        got = {"input": (u, v)}
        if model.cfg.head_dim:
            got["head"] = (model.features(u), model.features(v))
        got["latent"] = (model(u), model(v))
        for s, (x, y) in got.items():
            cos, mse = pair_values(x.float().cpu().numpy(), y.float().cpu().numpy())
            out[s]["cosine"] += cos.tolist()
            out[s]["mse"] += mse.tolist()
    return out


def _binned(values: list[list[float]], bins: int) -> tuple[list[list[int]], list[float]]:
    """Counts of each list over ``bins`` equal bins spanning all values, and the bin edges."""
    allv = np.concatenate([np.asarray(v, np.float64) for v in values]) if values else np.zeros(0)
    lo, hi = (float(allv.min()), float(allv.max())) if allv.size else (0.0, 1.0)
    hi = hi if hi > lo else lo + max(abs(lo) * 1e-6, 1e-12)
    edges = np.linspace(lo, hi, bins + 1)
    return [np.histogram(np.asarray(v, np.float64), edges)[0].tolist() for v in values], edges.tolist()


def histogram_figure(hist: dict, bins: int, header: str, path: Path) -> dict:
    """One row of two panels per stage of ``hist["stages"]`` (cosine similarity, MSE), similar and
    dissimilar pairs as two bar series, axes labelled, pair counts in the legend and ``header``.
    Returns {stage: {measure: {"edges", "similar", "dissimilar"}}}: the counts drawn."""
    ns, nd = len(hist["similar"]), len(hist["dissimilar"])
    panel_w, panel_h, top = 760, 360, 40
    stages = list(hist["stages"])
    img = Image.new("RGB", (2 * panel_w, top + panel_h * len(stages)), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.text((12, 12), header, fill=(20, 20, 20), font=font(16))
    drawn: dict = {}
    for r, stage in enumerate(stages):
        for c, (measure, label) in enumerate((("cosine", "cosine similarity"), ("mse", "MSE (mean squared difference)"))):
            s, dis = hist["stages"][stage]["similar"][measure], hist["stages"][stage]["dissimilar"][measure]
            (cs, cd), edges = _binned([s, dis], bins)
            cats = [f"{(edges[i] + edges[i + 1]) / 2:.4g}" for i in range(bins)]
            panel = bar_chart([(f"similar ({ns})", cs), (f"dissimilar ({nd})", cd)], cats, f"{STAGES[stage]}: {label}", label,
                              "caption pairs", label_every=max(1, bins // 6), size=(panel_w, panel_h))
            img.paste(panel, (c * panel_w, top + r * panel_h))
            drawn.setdefault(stage, {})[measure] = {"edges": edges, "similar": cs, "dissimilar": cd}
    img.save(path)
    return drawn


@torch.no_grad()
def decoded_grid(model, space: LatentSpace, data: dict, n: int, seed: int, device, path: Path) -> None:
    """``n`` samples of ``data`` (``load_set``): true tokens decoded, predicted latent decoded, its
    nearest codes decoded (module docstring), row labels on the left, captions in the "Legend" chunk."""
    n = min(n, len(data["keys"]))
    idx = [caption_index(k, seed, 0, len(r)) for k, r in zip(data["keys"][:n], data["rows"][:n])]
    x = torch.from_numpy(np.stack([r[a] for r, a in zip(data["rows"][:n], idx)])).to(device)
    pred = model(x).float()
    rows = [space.decode(space.target(torch.from_numpy(data["tokens"][:n]).to(device))), space.decode(pred),
            space.decode(space.target(space.nearest(pred)))]
    s = rows[0].shape[-1]
    scale = max(1, 96 // s)
    label_w, tile = 230, s * scale
    img = Image.new("RGB", (label_w + n * tile, 3 * tile), (255, 255, 255))
    d = ImageDraw.Draw(img)
    names = ("VQ-VAE decoding of the true tokens", "decoder on the predicted latent", "predicted latent, nearest codes")
    for r, (name, ims) in enumerate(zip(names, rows)):
        d.text((6, r * tile + tile // 2 - 8), name, fill=(20, 20, 20), font=font(12))
        arr = (ims.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        for c in range(n):
            img.paste(Image.fromarray(arr[c]).resize((tile, tile), Image.NEAREST), (label_w + c * tile, r * tile))
    info = PngImagePlugin.PngInfo()
    caps = [data["captions"][i][a] for i, a in enumerate(idx)] if data["captions"] is not None else [f"{k} caption {a}" for k, a in zip(data["keys"], idx)]
    info.add_text("Legend", json.dumps(caps))
    img.save(path, pnginfo=info)


def write_report(model, space: LatentSpace, cfg, device, out: Path, step: int, heldout: dict | None = None) -> str:
    """``report.json``, ``histograms.png`` and ``decoded.png`` in ``out`` (module docstring);
    ``heldout``: this step's ``heldout_metrics`` when the trainer has them. Returns the report's path."""
    held = bool(cfg.eval_text_emb)
    text_emb, image_tokens = (cfg.eval_text_emb, cfg.eval_image_tokens) if held else (cfg.text_emb, cfg.image_tokens)
    if not held:
        log.warning("no eval_text_emb / eval_image_tokens: the histograms and the decoded grid show the train split")
    data = load_set(text_emb, image_tokens, cfg.pairs_n, cfg.pair_images)
    pairs = histogram_pairs([len(r) for r in data["rows"]], cfg.seed, data["captions"])
    rule = "no words in common" if data["captions"] is not None else "captions of two different images"
    keyed = {k: [[data["keys"][i], a, data["keys"][j], b] for i, a, j, b in v] for k, v in pairs.items()}
    hist = {"set": "held-out" if held else "train", "images": len(data["keys"]), "dissimilar_rule": rule, **keyed,
            "stages": {s: {"similar": vs, "dissimilar": vd} for (s, vs), vd in
                       zip(stage_values(model, data["rows"], pairs["similar"], device).items(),
                           stage_values(model, data["rows"], pairs["dissimilar"], device).values())}}
    header = (f"{cfg.mode} regression, step {step}, {hist['set']} split: {len(keyed['similar'])} similar pairs (two captions of one "
              f"image) vs {len(keyed['dissimilar'])} dissimilar pairs ({rule})")
    figures = [str(out / "histograms.png")]
    hist["counts"] = histogram_figure(hist, cfg.bins, header, out / "histograms.png")
    if cfg.grid_n and data["keys"]:
        decoded_grid(model, space, data, cfg.grid_n, cfg.seed, device, out / "decoded.png")
        figures.append(str(out / "decoded.png"))
    summary = {s: {kind: {m: float(np.mean(v[kind][m])) if v[kind][m] else None for m in ("cosine", "mse")}
                   for kind in ("similar", "dissimilar")} for s, v in hist["stages"].items()}
    if held and heldout is None:
        heldout = heldout_metrics(model, space, cfg, cfg.eval_text_emb, cfg.eval_image_tokens, device)
    fit = None if held else heldout_metrics(model, space, cfg, cfg.text_emb, cfg.image_tokens, device)  # the train split's, as a scale
    report = {"mode": cfg.mode, "arch": cfg.arch, "step": step, "heldout": heldout, "train_fit": fit, "means": summary, "histograms": hist, "figures": figures}
    path = out / "report.json"
    path.write_text(json.dumps(report, indent=1, sort_keys=True))
    for s, v in summary.items():
        log.info("%s: similar cosine %.4g / mse %.4g; dissimilar cosine %.4g / mse %.4g", STAGES[s], v["similar"]["cosine"] or 0,
                 v["similar"]["mse"] or 0, v["dissimilar"]["cosine"] or 0, v["dissimilar"]["mse"] or 0)
    return str(path)
