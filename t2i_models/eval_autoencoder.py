"""Held-out evaluation of a discrete autoencoder (dVAE or VQ-VAE) on an image shard set's test split.

Every image is encoded to tokens (argmax / nearest codeword, as ``t2i encode``) and decoded back;
the figures compare the decoder's output with the stored image, both in [0, 1]:

- ``mse``: mean squared error per pixel value (over every channel of every pixel of every image).
- ``psnr``: dB, the *per-image mean*: mean over images of 10·log10(1 / MSE_i), MSE_i that image's
  mean squared error (floored at 1e-10, so an exact reconstruction counts 100 dB, not infinity).
  This is the usual reporting in image-reconstruction papers; 10·log10(1 / mse) of the dataset
  MSE is never higher (Jensen) and follows from ``mse``.
- ``bce``: binary cross-entropy per pixel value, nats, the output clamped to [1e-6, 1 − 1e-6] as
  the dVAE's training loss does (thesis: BCE reconstruction term). With soft targets its minimum is
  the targets' own entropy, not 0: compare runs, not against 0.
- ``codes_used``: share of the V codes that occur at least once over the whole set.
- ``perplexity``: exp(entropy) of the set's code histogram (V when all codes are equally used).
- ``images``: how many images were evaluated.

The figures use the decoder's float output (what training's loss sees), computed in fp32; the
PNG of reconstructions holds it rounded to 8 bits (``encode.decode_tokens``), which moves each
value by at most 0.5/255.

Images are read in the set's order through the checked reader (each shard's size and sha256
against its manifest, its sample count too), without augmentation: regime ``ae`` / ``prior``
sets give their identity view (the centred N×N crop of the stored image, view 0 of ``t2i
encode``); sets without a regime (MD-MNIST) give the stored image as it is.

``evaluate_autoencoder`` writes ``report.json`` and ``reconstructions.png`` (originals in the row
above their reconstructions, 1-px borders, the architecture and step in the title).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, ImageDraw

from t2i_data.augment import regime_of, stored_image
from t2i_data.build import out_folder
from t2i_data.errors import T2IError
from t2i_data.figures import TEXT, font
from t2i_data.manifest import ShardSet, open_shard_sets
from t2i_data.remote import is_url
from t2i_data.stream import check_shard_cached
from t2i_data.tario import iter_samples

from .blocks import usage_stats
from .checkpoint import load_autoencoder
from .encode import decode_tokens

log = logging.getLogger(__name__)
BCE_EPS = 1e-6  # as the dVAE's training loss clamps its output
MSE_FLOOR = 1e-10  # per-image MSE floor for PSNR: at most 100 dB
GRID_COLUMNS = 8  # images per row pair of reconstructions.png
BORDER = (160, 160, 160)
LABEL_W, TITLE_H = 100, 30  # reconstruction grid: row-label margin, title band (px)


def image_set(images: str | Path) -> ShardSet:
    """The one split at ``images`` (an image shard set folder); ``T2IError`` for a build folder
    of several splits or a set of another kind."""
    sets = open_shard_sets(images)
    if len(sets) != 1:
        raise T2IError(f"{images}: holds {len(sets)} splits ({', '.join(s.split for s in sets)}); give one split's folder, "
                       f"e.g. {Path(images) / 'test' if not is_url(images) else str(images).rstrip('/') + '/test'}")
    ss = sets[0]
    if ss.kind != "images":
        raise T2IError(f"{ss.location}: a {ss.kind} set; the autoencoder is evaluated on an image shard set")
    return ss


def view_size(ss: ShardSet) -> int:
    """Side of the images the set gives an autoencoder: the regime's N, or the stored size."""
    regime = regime_of(ss.manifest, allow_none=True)
    return regime.size if regime else int(ss.manifest["size"])


def check_size(ss: ShardSet, model) -> None:
    size, want = view_size(ss), model.cfg.image_size
    if size != want:
        what = f"{ss.manifest['regime']}-{size}" if ss.manifest.get("regime") else f"{size}x{size}"
        raise T2IError(f"{ss.location}: holds {what} images but the autoencoder takes {want}x{want}; "
                       f"evaluate on a set preprocessed with --size {want}")


def iter_images(ss: ShardSet, n: int = 0) -> Iterator[np.ndarray]:
    """The set's first ``n`` images (0: all) in order, each (S, S, 3) uint8, un-augmented.
    Each shard is checked (size, sha256) before it is read, its sample count when read to the end;
    a set read by URL has its shards fetched into the shard cache (checked on arrival), the next
    ones while this one is read."""
    regime = regime_of(ss.manifest, allow_none=True)
    done = 0
    for record in ss.shards():
        where = ss.where(record["name"])
        with ss.pinned(record["name"]) as path:
            try:
                check_shard_cached(path, record)
            except OSError as e:
                raise T2IError(f"{where}: cannot be read ({e.strerror or e}); restore it or rebuild the set "
                               f"(t2i verify {ss.location})") from None
            count = 0
            for sample in iter_samples(path):
                count += 1
                im = stored_image(sample, where)
                if regime is not None:
                    im = regime.apply_view(im, regime.identity(im.size))
                yield np.asarray(im)
                done += 1
                if n and done >= n:
                    return
        if count != record["samples"]:
            raise T2IError(f"{where}: {count} samples, the manifest says {record['samples']}; rebuild the set")


def _batches(arrays: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    batch = []
    for a in arrays:
        batch.append(a)
        if len(batch) == size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def to_input(batch, device) -> torch.Tensor:
    """(B, S, S, 3) uint8 array → (B, 3, S, S) float32 in [0, 1] on ``device``."""
    return torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div_(255)


def _device_of(model) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def heldout_metrics(model, images: str | Path, *, n: int = 0, batch_size: int = 64, device=None) -> dict:
    """Reconstruction figures of ``model`` (a DVAE or VQVAE, or one wrapped in DDP) over the first
    ``n`` images (0: all) of the image shard set ``images`` (one split, usually test):
    {"mse", "psnr" (dB), "bce" (nats), "codes_used" (share of V), "perplexity", "images"}, as the
    module docstring defines them. The model runs in eval mode without gradients, on ``device``
    (default: where its weights are), and gets its training mode back afterwards.

    Raises ``T2IError`` for a set whose images are not the model's input size, an empty set, a
    shard that does not match its manifest, or n / batch_size < 0 / < 1."""
    model = getattr(model, "module", model)  # DDP: the wrapped model has encode / decode
    if n < 0 or batch_size < 1:
        raise T2IError(f"n must be >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    ss = image_set(images)
    check_size(ss, model)
    if ss.split == "train":
        log.warning("%s: evaluating on the training split; held-out figures need the test split", ss.location)
    device = torch.device(device) if device is not None else _device_of(model)
    V = model.cfg.vocab_size
    hist = torch.zeros(V, dtype=torch.int64, device=device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # squared errors, BCE, per-image PSNR: summed on the device, no sync per batch
    span = torch.tensor([math.inf, -math.inf], dtype=torch.float32, device=device)  # the decoder's output range, checked once at the end
    count, values = 0, 0
    was_training = model.training
    model.eval()
    try:  # fp32 even inside a trainer's bf16 autocast
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            for batch in _batches(iter_images(ss, n), batch_size):
                x = to_input(batch, device)
                tokens = model.encode(x)  # (B, h, w)
                y = model.decode(tokens).float()  # (B, 3, S, S); the decoders end in a sigmoid, checked below, not clamped
                span = torch.stack([torch.minimum(span[0], y.min()), torch.maximum(span[1], y.max())])
                idx = tokens.flatten().long()
                hist.index_add_(0, idx, torch.ones_like(idx))  # bincount would read the max back every batch
                per_image = (y - x).square().flatten(1).mean(1).double()  # (B,)
                p = y.clamp(BCE_EPS, 1 - BCE_EPS)
                bce = -(x * p.log() + (1 - x) * (1 - p).log())
                sums += torch.stack([per_image.sum() * x[0].numel(), bce.double().sum(),
                                     (10 * torch.log10(1 / per_image.clamp_min(MSE_FLOOR))).sum()])
                count, values = count + len(x), values + x.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise T2IError(f"{ss.location}: holds no images to evaluate")
    lo, hi = span.tolist()
    if lo < 0 or hi > 1:
        raise T2IError(f"{type(model).__name__}: decoded pixels span [{lo:.4g}, {hi:.4g}], outside [0, 1]; MSE, PSNR and BCE "
                       "assume [0, 1] images and are not computed on clipped values")
    sq, bce_sum, psnr_sum = sums.tolist()
    usage = usage_stats(hist.cpu().double())
    return {"mse": sq / values, "psnr": psnr_sum / count, "bce": bce_sum / values,
            "codes_used": float(usage["used"]), "perplexity": float(usage["perplexity"]), "images": count}


# -- the report ------------------------------------------------------------------------------------
def reconstruction_grid(originals: np.ndarray, recons: np.ndarray, title: str, columns: int = GRID_COLUMNS) -> Image.Image:
    """(N, S, S, 3) uint8 originals and their reconstructions → a labelled PNG image: a title band,
    then for every ``columns`` images a row of originals above the row of their reconstructions,
    each cell S×S inside 1-px grey borders (cell pitch S + 1), row labels in a left margin.

    Geometry (tests rely on it): left margin ``LABEL_W``, title band ``TITLE_H``; cell (r, c) of
    row r (0 = first originals row, 1 = its reconstructions, ...) starts at
    x = LABEL_W + 1 + c·(S + 1), y = TITLE_H + 1 + r·(S + 1)."""
    n, s = len(originals), originals.shape[1]
    cols = max(1, min(columns, n))
    pairs = math.ceil(n / cols)
    small, big = font(12), font(14)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    grid_w, grid_h = cols * (s + 1) + 1, 2 * pairs * (s + 1) + 1
    width = max(LABEL_W + grid_w, int(probe.textlength(title, font=big)) + 20)
    img = Image.new("RGB", (width, TITLE_H + grid_h), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.text(((width - d.textlength(title, font=big)) / 2, 8), title, fill=TEXT, font=big)
    d.rectangle([LABEL_W, TITLE_H, LABEL_W + grid_w - 1, TITLE_H + grid_h - 1], fill=BORDER)
    for i in range(n):
        pair, c = divmod(i, cols)
        x = LABEL_W + 1 + c * (s + 1)
        for r, arr in ((2 * pair, originals[i]), (2 * pair + 1, recons[i])):
            img.paste(Image.fromarray(arr), (x, TITLE_H + 1 + r * (s + 1)))
    for r in range(2 * pairs):
        label = "original" if r % 2 == 0 else "reconstruction"
        y = TITLE_H + 1 + r * (s + 1) + s // 2 - 7
        d.text((LABEL_W - 6 - d.textlength(label, font=small), y), label, fill=TEXT, font=small)
    return img


def evaluate_autoencoder(autoencoder: str, images: str, out: str, *, n: int = 0, batch_size: int = 64, grid: int = 8) -> dict:
    """Evaluate the checkpoint ``autoencoder`` on the image set ``images`` (first ``n`` images, 0:
    all) and write ``out/report.json`` (sorted keys) and ``out/reconstructions.png`` (the first
    ``grid`` images of the set, ``GRID_COLUMNS`` per row pair). Returns the report: ``heldout_metrics``'s
    keys (mse, psnr, bce, codes_used, perplexity, images: the count) and "autoencoder" (the checkpoint
    path), "fingerprint", "kind", "arch", "step", "image_set" (its path), "images_digest", "dataset",
    "split", "reconstructions": "reconstructions.png".
    Runs on CUDA when there is one. ``T2IError`` for a file that is not an autoencoder checkpoint,
    a set of the wrong size, grid < 1."""
    if grid < 1:
        raise T2IError(f"grid must be >= 1, got {grid}")
    model, ck = load_autoencoder(autoencoder)
    ss = image_set(images)
    check_size(ss, model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    metrics = heldout_metrics(model, ss.location, n=n, batch_size=batch_size, device=device)
    arch = (ck.get("train_config") or {}).get("arch") or ck["kind"]
    step = ck.get("step")
    originals = np.stack(list(iter_images(ss, grid)))
    with torch.no_grad():
        recons = decode_tokens(model, model.encode(to_input(originals, device)))  # rounded to 8 bits, as a PNG holds
    title = f"{arch} ({ck['kind']}), step {step:,}" if step is not None else f"{arch} ({ck['kind']}), step unknown"
    title += f" - {ss.manifest.get('dataset')}/{ss.split}: originals above reconstructions"
    outdir = Path(out)
    out_folder(outdir, "the figures")
    reconstruction_grid(originals, recons, title).save(outdir / "reconstructions.png", format="PNG", optimize=False)
    report = {**metrics, "autoencoder": str(autoencoder), "fingerprint": ck["fingerprint"], "kind": ck["kind"], "arch": arch,
              "step": step, "image_set": str(images), "images_digest": ss.manifest["digest"], "dataset": ss.manifest.get("dataset"),
              "split": ss.split, "reconstructions": "reconstructions.png"}
    (outdir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report
