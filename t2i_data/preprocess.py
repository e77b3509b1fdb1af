"""CUB-200-2011 and MS-COCO → image shards holding the deterministic part of a regime.

Per image: open, let the JPEG decoder scale by 1/2, 1/4 or 1/8 in the DCT (``Image.draft``)
while staying at least as large as the output needs, optionally crop to the enlarged bounding
box (CUB), convert to RGB, apply the regime's deterministic part (``Regime.prepare``: box
reduce then LANCZOS), and store as JPEG (quality 95 by default, 4:4:4 chroma). Every problem with an input
becomes a ``Rejected`` record with its reason, or stops the run with ``strict``.
"""
from __future__ import annotations

import dataclasses
import io
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator

from PIL import Image

from .digest import canonical_json
from .errors import T2IError
from .regimes import Regime, to_rgb
from .shardset import Quarantine, Rejected, build_shard_set
from .sources import coco, cub
from .sources.records import ImageRecord, clean_caption_lines
from .tario import WRITER_ID

log = logging.getLogger(__name__)
DATASETS = ("cub", "coco")


@dataclass(frozen=True)
class PreprocessConfig:
    dataset: str
    root: str
    regime: str = "ae"
    size: int = 128
    splits: tuple[str, ...] = ()  # empty: every split the source has
    shard_size: int = 1000
    jpeg_quality: int = 95
    seed: int = 0  # for the random part applied downstream; recorded so consumers agree
    cub_split: str = "official"
    bbox_crop: float | None = None  # CUB: crop to the bounding box enlarged by this factor (AttnGAN: 1.5)
    captions: str | None = None  # CUB caption folder; default <root>/birds/text
    limit: int | None = None  # only the first N records of each split (smoke runs)
    strict: bool = False  # stop at the first bad input instead of quarantining it

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise T2IError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.regime not in ("ae", "prior"):
            raise T2IError(f"--regime must be ae or prior, got {self.regime!r}")
        if self.size < 1:
            raise T2IError(f"--size must be a positive N, got {self.size}")
        if self.shard_size < 1:
            raise T2IError(f"--shard-size must be >= 1, got {self.shard_size}")
        if not 1 <= self.jpeg_quality <= 100:
            raise T2IError(f"--jpeg-quality must be in 1..100, got {self.jpeg_quality}")
        if self.bbox_crop is not None and (self.dataset != "cub" or self.bbox_crop <= 0):
            raise T2IError(f"--bbox-crop takes a positive factor and applies to cub only, got {self.bbox_crop} for {self.dataset}")
        if self.limit is not None and self.limit < 0:
            raise T2IError(f"--limit must be >= 0, got {self.limit}")
        object.__setattr__(self, "splits", tuple(self.splits))

    def identity(self) -> dict:
        """The config as manifests record it: no host paths, nothing that leaves the bytes alone."""
        d = dataclasses.asdict(self)
        for k in ("root", "captions", "strict"):
            d.pop(k)
        d["splits"] = list(self.splits)
        return d


def read_captions(rec: ImageRecord) -> tuple[list[str], int]:
    if rec.captions is not None:
        return list(rec.captions), 0
    path = Path(rec.caption_file)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise Quarantine("missing-captions", f"no caption file {path}") from None
    try:
        caps, fixes = clean_caption_lines(data, replace_fffd=True)
    except UnicodeDecodeError as e:
        raise Quarantine("non-utf8-captions", f"{path.name} is not UTF-8 (byte {e.start}: {data[e.start:e.start + 4]!r})") from None
    if not caps:
        raise Quarantine("empty-captions", f"{path.name} has no non-empty line")
    return caps, fixes


def bbox_square(bbox, factor: float, w: int, h: int) -> tuple[int, int, int, int]:
    """AttnGAN's crop: a square of side factor·max(bw, bh) centred on the box, clipped to the image."""
    x, y, bw, bh = bbox
    r = int(max(bw, bh) * factor / 2)
    cx, cy = int((2 * x + bw) / 2), int((2 * y + bh) / 2)
    return max(0, cx - r), max(0, cy - r), min(w, cx + r), min(h, cy + r)


def load_prepared(path: Path, regime: Regime, bbox=None, bbox_crop: float | None = None) -> tuple[Image.Image, dict]:
    """Decode (DCT-scaled where possible), convert to RGB and apply the deterministic part,
    resizing from the exact, possibly fractional, region the source (or its crop) occupies."""
    with Image.open(path) as im:
        src_w, src_h = im.size
        info = {"source_size": [src_w, src_h], "source_mode": im.mode, "source_format": im.format}
        box = bbox_square(bbox, bbox_crop, src_w, src_h) if bbox_crop and bbox else (0, 0, src_w, src_h)
        cw, ch = box[2] - box[0], box[3] - box[1]
        if cw < 1 or ch < 1:
            raise Quarantine("bad-bbox", f"bounding-box crop {box} is empty")
        if box != (0, 0, src_w, src_h):
            info["crop"] = list(box)
        scale = 1.0
        if im.format == "JPEG":
            rw, rh = regime.draft_request(cw, ch)
            drafted = im.draft(None, (max(1, rw * src_w // cw), max(1, rh * src_h // ch)))
            if drafted is not None:  # (mode, (0, 0, src_w / k, src_h / k)) for a 1/k decode
                scale = drafted[1][2] / src_w
        im.load()
        try:
            rgb = to_rgb(im)
        except ValueError as e:
            raise Quarantine("unsupported-mode", str(e)) from None
        out = regime.prepare(rgb, tuple(v * scale for v in box), scale)
    info["decoded_scale"] = scale
    return out, info


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    """The stored form: baseline JPEG, 4:4:4 chroma (no halving of the colour resolution)."""
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def produce_shard(cfg: PreprocessConfig, records: list[ImageRecord]) -> Iterator[dict | Rejected]:
    regime = Regime(cfg.regime, cfg.size)
    root = Path(cfg.root)
    for rec in records:
        try:
            if rec.reject:
                kind, detail = rec.reject.split(": ", 1)
                raise Quarantine(kind, detail)
            captions, fixes = read_captions(rec)
            path = root / rec.image
            if not path.is_file():
                raise Quarantine("missing-image", f"{rec.image} is listed but not there")
            if path.stat().st_size == 0:
                raise Quarantine("empty-image", f"{rec.image} is 0 bytes")
            try:
                image, info = load_prepared(path, regime, rec.bbox, cfg.bbox_crop)
            except Quarantine:
                raise
            except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError ... on bad files
                raise Quarantine("unreadable-image", f"{rec.image}: {type(e).__name__}: {e}") from None
        except Quarantine as e:
            if cfg.strict:
                raise T2IError(f"{rec.key}: {e} (without --strict it would be quarantined and the run would go on)") from None
            yield Rejected(rec.key, str(e))
            continue
        meta = dict(rec.meta, captions=captions, split=rec.split, regime=cfg.regime, size=list(image.size), **info)
        if fixes:
            meta["caption_fixes"] = fixes
        yield {"__key__": rec.key, "jpg": encode_jpeg(image, cfg.jpeg_quality), "json": canonical_json(meta)}


def load_records(cfg: PreprocessConfig) -> tuple[dict[str, list[ImageRecord]], dict]:
    root = Path(cfg.root)
    if not root.is_dir():
        raise T2IError(f"--root {root}: not a folder; point it at the {cfg.dataset} download")
    if cfg.dataset == "cub":
        by_split = cub.load_cub(root, cfg.cub_split, cfg.captions)
        source = cub.fingerprint(root)
        unknown = [s for s in cfg.splits if s not in by_split]
        if unknown:
            raise T2IError(f"--split {','.join(unknown)}: CUB splits are {', '.join(by_split)}")
        splits = list(cfg.splits) or list(by_split)
    else:
        unknown = [s for s in cfg.splits if s not in coco.SPLITS]
        if unknown:
            raise T2IError(f"--split {','.join(unknown)}: COCO splits are {', '.join(coco.SPLITS)}")
        splits = list(cfg.splits) or coco.available_splits(root)
        if not splits:
            raise T2IError(f"--root {root}: no annotations/captions_{{train2017,val2017}}.json in it")
        by_split = {s: coco.load_coco(root, s) for s in splits}
        source = coco.fingerprint(root, splits)
    by_split = {s: by_split[s][: cfg.limit] if cfg.limit is not None else by_split[s] for s in splits}
    return by_split, source


def preprocess(cfg: PreprocessConfig, out: str | Path, runner, records: tuple | None = None) -> dict[str, dict]:
    """``records``: what ``load_records(cfg)`` returned, when the caller has already read it."""
    by_split, source = records if records is not None else load_records(cfg)
    manifests = {}
    for split, records in by_split.items():
        chunks = [records[i : i + cfg.shard_size] for i in range(0, len(records), cfg.shard_size)]
        identity = {
            "kind": "images",
            "dataset": cfg.dataset,
            "split": split,
            "regime": cfg.regime,
            "size": cfg.size,
            "config": cfg.identity(),
            "seed": cfg.seed,
            "sources": {cfg.dataset: source},
            "aligned_to": None,
            "encoder": {"jpeg": f"pillow-{Image.__version__} quality={cfg.jpeg_quality} subsampling=4:4:4", "tar": WRITER_ID},
        }
        manifests[split] = build_shard_set(
            partial(produce_shard, cfg), Path(out) / split, f"{cfg.dataset}-{split}", [len(c) for c in chunks],
            identity, runner, desc=f"{cfg.dataset} {split} {cfg.regime}-{cfg.size}", payloads=chunks,
        )
    return manifests
