"""Contact sheets: samples in a grid with each caption written under its image."""
from __future__ import annotations

import json
import logging
import textwrap
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .digest import IMAGE_EXTS
from .errors import T2IError
from .figures import font
from .manifest import MANIFEST_NAME, find_manifests, load_manifest
from .npyio import load_npy
from .pngio import decode_image
from .tario import iter_samples
from .text.captions import sample_captions

log = logging.getLogger(__name__)


def iter_previews(shards: list[str | Path], decode_tokens=None):
    """(key, pixels, caption) per sample; image-token samples are decoded (view 0) with
    ``decode_tokens``, a function from (B, h, w) tokens to (B, S, S, 3) uint8 images. Images are
    decoded within ``pngio.MAX_SHARD_PIXELS``; a damaged sample stops with one ``T2IError``
    naming the shard and key."""
    for shard in shards:
        if not Path(shard).is_file():
            raise T2IError(f"{shard}: no such shard file")
        for sample in iter_samples(shard):
            key = sample["__key__"]
            ext = next((e for e in IMAGE_EXTS if e in sample), None)
            if ext is not None:
                caps = sample_captions(sample, shard)[0] if "json" in sample else []
                yield key, decode_image(sample[ext], f"{shard}: {key}.{ext}"), (caps or [""])[0]
            elif "image_tokens.npy" in sample:
                if decode_tokens is None:
                    raise T2IError(f"{shard}: image-token shards need --autoencoder CKPT to be decoded for a preview")
                tokens = load_npy(sample["image_tokens.npy"], f"{shard}: {key}.image_tokens.npy")
                try:
                    meta = json.loads(sample["json"]) if "json" in sample else {}
                    views = meta.get("views") if isinstance(meta, dict) else None
                except ValueError as e:  # a damaged .npy, JSON or UTF-8
                    raise T2IError(f"{shard}: sample {key} does not decode ({e}); the shard is damaged") from None
                if tokens.ndim != 3 or not tokens.shape[0]:
                    raise T2IError(f"{shard}: sample {key} image tokens have shape {tokens.shape}, expected (views, h, w)")
                view = views[0] if isinstance(views, list) and views else {}
                yield key, decode_tokens(tokens[:1])[0], "view 0 decoded: " + json.dumps(view, sort_keys=True)
            elif any(m.startswith("image_tokens.") and m.endswith(".npy") for m in sample):  # one grid per level (VQ-VAE-2)
                if decode_tokens is None:
                    raise T2IError(f"{shard}: image-token shards need --autoencoder CKPT to be decoded for a preview")
                levels = {m[len("image_tokens."):-len(".npy")]: load_npy(sample[m], f"{shard}: {key}.{m}") for m in sample
                          if m.startswith("image_tokens.") and m.endswith(".npy")}
                if any(t.ndim != 3 or not t.shape[0] for t in levels.values()):
                    raise T2IError(f"{shard}: sample {key} image tokens have shapes "
                                   f"{ {k: t.shape for k, t in levels.items()} }, expected (views, g, g) per level")
                yield key, decode_tokens({k: t[:1] for k, t in levels.items()})[0], f"view 0 decoded from levels {', '.join(levels)}"
            else:
                raise T2IError(f"{shard}: sample {key} has no image field ({', '.join(IMAGE_EXTS)}) and no image tokens")


def _thumbnail(pixels: np.ndarray, cell: int) -> Image.Image:
    im = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).convert("RGB")
    scale = cell / max(im.size)  # fit the cell, keep the aspect; nearest when enlarging keeps pixels crisp
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    return im.resize(size, Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS)


def contact_sheet(shards: list[str | Path], out: str | Path, n: int = 16, cols: int = 4, cell: int = 256, decode_tokens=None) -> Path:
    """Write a PNG grid of the first ``n`` samples; images are scaled to ``cell`` px wide."""
    # each image shrinks to its cell as it is read: n full images are never held at once
    items = [(key, _thumbnail(pixels, cell), caption) for key, pixels, caption in islice(iter_previews(shards, decode_tokens), n)]
    if not items:
        raise T2IError("the shards given hold no samples to preview")
    fnt = font(max(10, cell // 18))
    line_h = fnt.getbbox("Ag")[3] + 2
    wrap = max(10, int(cell / (fnt.getlength("x") or 6)))
    text_lines = 4
    cols = min(cols, len(items))
    rows = -(-len(items) // cols)
    cell_h = cell + (text_lines + 1) * line_h
    sheet = Image.new("RGB", (cols * (cell + 8) + 8, rows * (cell_h + 8) + 8), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (key, im, caption) in enumerate(items):
        x, y = 8 + (i % cols) * (cell + 8), 8 + (i // cols) * (cell_h + 8)
        sheet.paste(im, (x, y))
        lines = [key] + textwrap.wrap(caption, wrap)[: text_lines - 1]
        for j, line in enumerate(lines):
            draw.text((x, y + cell + 2 + j * line_h), line, fill=(0, 0, 0) if j else (90, 90, 90), font=fnt)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def preview_shards(paths: list[str], fingerprint: str | None) -> list[str]:
    """The shard files ``t2i preview`` shows: a tar as given; a split or build folder as the
    shards its manifests list (those holding samples). With ``fingerprint`` (the autoencoder's),
    an image-token set made by another autoencoder is refused, naming both fingerprints."""
    shards = []
    for p in map(Path, paths):
        if p.is_dir():
            for mpath in find_manifests(p):
                m = load_manifest(mpath)
                _check_token_maker(m, mpath, fingerprint)
                shards += [str(mpath.parent / s["name"]) for s in m["shards"] if s["samples"]]
        else:
            beside = p.parent / MANIFEST_NAME
            if fingerprint is not None and beside.is_file():
                _check_token_maker(load_manifest(beside), beside, fingerprint)
            elif fingerprint is not None:
                log.warning("%s: no manifest beside it, so the autoencoder's fingerprint cannot be checked", p)
            shards.append(str(p))
    if not shards:
        raise T2IError(f"{', '.join(paths)}: no shard holds a sample")
    return shards


def _check_token_maker(m: dict, where: Path, fingerprint: str | None) -> None:
    made_by = (m.get("autoencoder") or {}).get("fingerprint")
    if fingerprint is not None and m.get("kind") == "image_tokens" and made_by != fingerprint:
        raise T2IError(f"{where}: these image tokens were made by the autoencoder with fingerprint {str(made_by)[:16]}, "
                       f"not by --autoencoder ({fingerprint[:16]}); pass the checkpoint that encoded them")
