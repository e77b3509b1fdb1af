"""A dataset of the registry (CUB-200-2011, MS-COCO, ...: ``sources/registry.py``) → image shards
holding the deterministic part of a regime.

The dataset's declaration gives the records (its ``loader``), the splits ``--split`` may name, and
how an image's bytes are read when an image is not a file of its own (``read_image``).

Per image: read the file once (its sha256 is the sample's ``source_sha256``), check and decode
it (``decode.py``: bounds from the header, a strict decode at the DCT scale the output needs,
EXIF orientation, transparency onto white, optionally AttnGAN's bounding-box crop), apply the
regime's deterministic part (``Regime.prepare``: box reduce then LANCZOS for ae and prior; for
center an exact area average to N×N of the centre crop), and store it as the dataset declares
its image member (``Dataset.image_member``): ``jpg``, JPEG (quality 95 by default, 4:4:4 chroma),
or ``png``, a lossless PNG (``pngio.encode_png`` at ``PNG_LEVEL``; Fashion-MNIST, whose 8-bit
pixels must reach a model exactly), 1-channel L for a grayscale source. ``--jpeg-quality`` is
refused for a PNG dataset and not recorded in its config. Every step, encoding included, runs inside
the quarantine: a problem with an input becomes a ``Quarantined`` record with its reason (or stops the
run with ``strict``), and the shard's other samples are written. After all shards are written,
``dedup.py`` quarantines duplicate images and lists images shared between splits.

Every sample's JSON has the same keys (``schema.py``): source values that are absent are null,
counts are 0.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import stat
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np
import xxhash
from PIL import Image

from .card import write_build_card
from .decode import ImageLimits, decode_source
from .dedup import deduplicate
from .digest import canonical_json, canonical_pixels
from .errors import T2IError
from .pngio import encode_png, encoder_id
from .regimes import REGIMES, Regime
from .schema import SCHEMAS, check_meta
from .quarantine import Quarantine, Quarantined
from .build import ShardStats, finish_shard_set, locks_out, merge_stats, plan_shards, run_shard_jobs
from .sources import registry
from .sources.records import ImageRecord, clean_caption_lines, plain_relative
from .tario import WRITER_ID

log = logging.getLogger(__name__)
JPEG_QUALITY = 95  # --jpeg-quality of a JPEG dataset when none is given
# zlib level of a PNG dataset's members (MD-MNIST's default). With filter 0 and Z_RLE the level
# barely matters: 257.5 bytes per MNIST test image at 1, 6 and 9 alike (README, "Lossless members").
PNG_LEVEL = 1


@dataclass(frozen=True)
class PreprocessConfig:
    dataset: str
    root: str
    regime: str = "ae"
    size: int = 128
    splits: tuple[str, ...] = ()  # empty: every split the source has
    shard_size: int = 1000
    jpeg_quality: int | None = None  # JPEG datasets: None means JPEG_QUALITY; PNG datasets: must stay None
    scale: int = 1  # stored pixels per output pixel: 2 stores at 2x and rotates there (<= 2/255 from the thesis order; regimes.py)
    seed: int = 0  # for the random part applied downstream; recorded so consumers agree
    cub_split: str = "official"
    bbox_crop: float | None = None  # CUB: crop to the bounding box enlarged by this factor (AttnGAN: 1.5)
    captions: str | None = None  # CUB caption folder; default <root>/birds/text
    limit: int | None = None  # only the first N records of each split (smoke runs)
    strict: bool = False  # stop at the first bad input instead of quarantining it
    max_aspect: float = ImageLimits.max_aspect  # bounds per image, see decode.ImageLimits
    max_decoded_pixels: int = ImageLimits.max_decoded_pixels
    max_target_pixels: int = ImageLimits.max_target_pixels

    def __post_init__(self) -> None:
        names = registry.preprocess_names()
        if self.dataset not in names:
            raise T2IError(f"dataset must be one of {', '.join(names)}, got {self.dataset!r}")
        if self.regime not in REGIMES:
            raise T2IError(f"--regime must be one of {', '.join(REGIMES)}, got {self.regime!r}")
        if self.size < 1:
            raise T2IError(f"--size must be a positive N, got {self.size}")
        if self.shard_size < 1:
            raise T2IError(f"--shard-size must be >= 1, got {self.shard_size}")
        if self.image_member == "png" and self.jpeg_quality is not None:  # recorded, it would change nothing
            raise T2IError(f"--jpeg-quality / jpeg_quality does not apply to {self.dataset}: its images are stored as lossless PNG; drop it")
        if self.image_member == "jpg" and self.jpeg_quality is None:
            object.__setattr__(self, "jpeg_quality", JPEG_QUALITY)
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise T2IError(f"--jpeg-quality must be in 1..100, got {self.jpeg_quality}")
        if self.scale not in (1, 2):
            raise T2IError(f"--scale must be 1 (store at the output resolution) or 2 (store at twice it), got {self.scale}")
        if self.regime == "center" and self.scale != 1:
            raise T2IError(f"--scale {self.scale} does not apply to --regime center: it stores the N×N image that view 0 is; drop --scale")
        boxed = [name for name in names if registry.lookup(name).bbox]  # whose records carry bounding boxes
        if self.bbox_crop is not None and self.dataset not in boxed:
            raise T2IError(f"--bbox-crop applies to {', '.join(boxed)} only (datasets with bounding boxes), not to {self.dataset}")
        if self.bbox_crop is not None and not (0 < self.bbox_crop <= 100 and math.isfinite(self.bbox_crop)):
            raise T2IError(f"--bbox-crop takes a factor in (0, 100] (AttnGAN: 1.5), got {self.bbox_crop}")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for key in ("cub_split", "captions"):  # dataset-only settings: a value given to another dataset would change nothing
            takers = [name for name in names if key in registry.lookup(name).settings]
            if getattr(self, key) != defaults[key] and self.dataset not in takers:
                raise T2IError(f"--{key.replace('_', '-')} applies to {', '.join(takers)} only, not to {self.dataset}")
        if len(set(self.splits)) != len(tuple(self.splits)):
            raise T2IError(f"--split names a split twice: {','.join(self.splits)}")
        if self.limit is not None and self.limit < 0:
            raise T2IError(f"--limit must be >= 0, got {self.limit}")
        try:
            self.limits()
        except ValueError as e:
            raise T2IError(f"--max-aspect / --max-decoded-pixels / --max-target-pixels: {e}") from None
        object.__setattr__(self, "splits", tuple(self.splits))

    @property
    def image_member(self) -> str:
        """The tar member the dataset declares for its images: ``jpg`` or ``png``."""
        return registry.lookup(self.dataset).image_member

    def limits(self) -> ImageLimits:
        return ImageLimits(self.max_aspect, self.max_decoded_pixels, self.max_target_pixels)

    def identity(self) -> dict:
        """The config as manifests record it: no host paths, nothing that leaves the bytes alone."""
        d = dataclasses.asdict(self)
        for k in ("root", "captions", "strict"):
            d.pop(k)
        if self.scale == 1:  # absent at 1: sets built before the setting existed keep their digest (same bytes)
            d.pop("scale")
        if self.jpeg_quality is None:  # a PNG dataset: no JPEG is written
            d.pop("jpeg_quality")
        d["splits"] = list(self.splits)
        return d


def read_captions(rec: ImageRecord) -> tuple[list[str], int, int]:
    """(captions, lines repaired, blank lines dropped) of a record: inline (COCO, already
    type-checked by the source) or from its caption file (CUB)."""
    if rec.captions is not None:
        return list(rec.captions), 0, 0
    path = Path(rec.caption_file)
    data = read_regular(path, "missing-captions", "unreadable-captions", f"caption file {path}")
    try:
        caps, fixes = clean_caption_lines(data, replace_fffd=True)
    except UnicodeDecodeError as e:
        raise Quarantine("non-utf8-captions", f"{path.name} is not UTF-8 (byte {e.start}: {data[e.start:e.start + 4]!r})") from None
    lines = data.decode("utf-8").split("\n")
    blank = sum(1 for line in (lines[:-1] if lines[-1] == "" else lines) if not line.strip())
    if not caps:
        raise Quarantine("empty-captions", f"{path.name} has no non-empty line")
    return caps, fixes, blank


def read_regular(path: Path, missing: str, unreadable: str, what: str) -> bytes:
    """The bytes of a regular file, or ``Quarantine``: ``missing`` when nothing is there,
    ``unreadable`` for a folder, a FIFO or a device (never opened: a FIFO blocks forever), a name
    the file system refuses (too long) or a file it will not let us read."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise Quarantine(missing, f"{what} is listed but not there") from None
    except OSError as e:
        raise Quarantine(unreadable, f"{what}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise Quarantine(unreadable, f"{what} is {kind}")
    try:
        return path.read_bytes()
    except OSError as e:
        raise Quarantine(unreadable, f"{what}: {e.strerror}") from None


def source_stamp(cfg: "PreprocessConfig", records: list[ImageRecord]) -> str:
    """What a shard's inputs look like on disk now: size and modification time of every image
    and caption file it reads. A rerun rewrites a shard whose stamp changed, so an image or a CUB
    caption file replaced since the last build is read again (the config digest covers only the
    metadata files, and hashing every image again would cost as much as the build)."""
    root = str(cfg.root)
    parts = []
    for rec in records:
        for p in (os.path.join(root, rec.image) if rec.image else None, rec.caption_file):
            try:
                st = os.stat(p) if p is not None else None  # os.stat on a str: pathlib costs 3x more here
                parts.append(f"{st.st_size}:{st.st_mtime_ns}" if st else "-")
            except OSError as e:
                parts.append(f"error:{e.errno}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    """The stored form: baseline JPEG, 4:4:4 chroma (no halving of the colour resolution)."""
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def stored_png(image: Image.Image, source_mode: str) -> tuple[bytes, bytes]:
    """(PNG bytes, canonical pixels for the content digest) of a prepared RGB image: 1-channel
    (colour type 0) when the source was grayscale (``source_mode`` "L"), whose three channels the
    regime leaves equal, else RGB. An L source whose channels differ here is a bug: ``ValueError``
    (it becomes ``encode-failed`` in the quarantine, and stops a ``--strict`` run)."""
    arr = np.asarray(image)
    if source_mode == "L":
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            raise ValueError("a grayscale source came out of the regime with unequal R, G, B")
        arr = np.ascontiguousarray(arr[..., 0])
    return encode_png(arr, PNG_LEVEL), canonical_pixels(arr)


def pixel_digest(image: Image.Image) -> str:
    """XXH3-128 of an RGB image's canonical pixels (``digest.canonical_pixels``: shape, then RGB
    bytes), streamed from ``tobytes()``: one copy instead of three (27 µs against 43 µs for a
    184×138 image, measured here)."""
    h = xxhash.xxh3_128()
    h.update(b"pixels %d %d %d\n" % (image.height, image.width, 3))
    h.update(image.tobytes())
    return h.hexdigest()


def sample_stats(meta: dict) -> dict:
    """What one written sample adds to its manifest's ``stats``."""
    return {"captions": len(meta["captions"]), "captions_dropped": meta["captions_dropped"], "size_mismatch": int(meta["size_mismatch"]),
            "exif_rotated": int(meta["exif_orientation"] != 1), "caption_fixes": meta["caption_fixes"]}


def stats_of_sample(sample: dict) -> dict:
    return sample_stats(json.loads(sample["json"]))


def load_prepared(path: str | Path, regime: Regime, bbox=None, bbox_crop: float | None = None,
                  limits: ImageLimits = ImageLimits()) -> tuple[Image.Image, dict]:
    """One image file → (stored image, decode info): ``decode.decode_source`` then the regime's
    deterministic part. Raises ``Quarantine`` as ``decode_source`` does."""
    dec = decode_source(Path(path).read_bytes(), regime, limits, bbox, bbox_crop)
    return regime.prepare(dec.image, dec.box, dec.scale), dec.info


def read_image_file(root: Path, rec: ImageRecord) -> bytes:
    """The bytes of the record's image file ``root/rec.image``, or ``Quarantine`` (``read_regular``);
    what preprocess reads for a dataset that declares no ``read_image`` of its own."""
    return read_regular(root / rec.image, "missing-image", "unreadable-image", rec.image)


def _process(cfg: PreprocessConfig, regime: Regime, root: Path, rec: ImageRecord, read_image=read_image_file) -> dict:
    """One record → its sample, or ``Quarantine``. The source confined ``rec.image`` to its split
    folder, symlinks resolved (a split folder that is itself a symlink is fine); here it must
    still be a plain relative name. ``read_image(root, rec)``: the image's bytes."""
    if rec.quarantine:
        kind, _, detail = rec.quarantine.partition(": ")
        raise Quarantine(kind, detail)
    captions, fixes, blank = read_captions(rec)
    try:
        plain_relative(rec.image, "image path")
    except ValueError as e:
        raise Quarantine("bad-metadata", str(e)) from None
    data = read_image(root, rec)
    if not data:
        raise Quarantine("empty-image", f"{rec.image} is 0 bytes")
    dec = decode_source(data, regime, cfg.limits(), rec.bbox, cfg.bbox_crop)
    image = regime.prepare(dec.image, dec.box, dec.scale)
    member, content = cfg.image_member, {}
    try:
        if member == "png":
            stored, content[member] = stored_png(image, dec.info["source_mode"])
        else:
            stored = encode_jpeg(image, cfg.jpeg_quality)
    except Exception as e:  # Pillow raises OSError / ValueError from the encoder
        raise Quarantine("encode-failed", f"{type(e).__name__}: {e}") from None
    upright = dec.info["source_size"][::-1] if dec.info["exif_orientation"] in (5, 6, 7, 8) else dec.info["source_size"]
    annotated = rec.meta.get("annotated_size")
    meta = dict(rec.meta, **dec.info, captions=captions, split=rec.split, regime=cfg.regime, size=list(image.size),
                caption_fixes=fixes, captions_dropped=rec.captions_dropped + blank, normalized=list(rec.normalized),
                size_mismatch=annotated is not None and list(annotated) != list(upright),
                source_sha256=hashlib.sha256(data).hexdigest(), pixel_digest=pixel_digest(image))
    check_meta(meta, SCHEMAS[("images", cfg.dataset)], rec.key)  # outside the quarantine: a failure here is a bug, not bad input
    try:
        meta_json = canonical_json(meta)
    except UnicodeEncodeError as e:  # a lone surrogate ("\ud800", valid JSON) in a source string
        raise Quarantine("bad-metadata", f"a text field holds a character UTF-8 cannot encode ({e.reason} at {e.start})") from None
    out = {"__key__": rec.key, member: stored, "json": meta_json, "__stats__": sample_stats(meta),
           "__digests__": {"file": meta["source_sha256"], "pixels": meta["pixel_digest"]}}
    if content:  # the PNG's pixels are known: the content digest need not decode it again (as mdmnist.py does)
        out["__content__"] = dict(content, json=meta_json)
    return out


def produce_shard(cfg: PreprocessConfig, records: list[ImageRecord]) -> Iterator[dict | Quarantined]:
    regime = Regime(cfg.regime, cfg.size, cfg.scale)
    root = Path(cfg.root)
    read_image = registry.lookup(cfg.dataset).read_image or read_image_file
    totals: dict = {}
    for rec in records:
        try:
            sample = _process(cfg, regime, root, rec, read_image)
        except Quarantine as e:
            if cfg.strict:
                raise T2IError(f"{rec.key}: {e} (without --strict it would be quarantined and the run would go on)") from None
            yield Quarantined(rec.key, str(e))
            continue
        totals = merge_stats(totals, sample["__stats__"])  # not parsed again from the JSON just written
        yield sample
    yield ShardStats(totals)


def load_records(cfg: PreprocessConfig) -> tuple[dict[str, list[ImageRecord]], dict]:
    """({split: records}, source fingerprint) from the dataset's declared loader: the splits
    ``cfg.splits`` in that order (every split the source has when empty), each cut to
    ``cfg.limit``. ``T2IError`` when ``--root`` is not a folder, ``--split`` names a split the
    dataset does not declare or its source does not have, or as the loader raises."""
    ds = registry.lookup(cfg.dataset)
    root = Path(cfg.root)
    if not root.is_dir():
        raise T2IError(f"--root {root}: not a folder; point it at the {cfg.dataset} download")
    unknown = [s for s in cfg.splits if s not in ds.splits]
    if unknown:
        raise T2IError(f"--split {','.join(unknown)}: {ds.pretty} splits are {', '.join(ds.splits)}")
    by_split, source = ds.loader(cfg)
    missing = [s for s in cfg.splits if s not in by_split]
    if missing:
        raise T2IError(f"--split {','.join(missing)}: not in {root}; it has {', '.join(by_split) or 'no split'}")
    splits = list(cfg.splits) or list(by_split)
    by_split = {s: by_split[s][: cfg.limit] if cfg.limit is not None else by_split[s] for s in splits}
    return by_split, source


def encoder_record(cfg: PreprocessConfig) -> dict:
    """The manifest's ``encoder``: what the stored bytes depend on besides the pixels."""
    if cfg.image_member == "png":
        return {"png": encoder_id(PNG_LEVEL), "tar": WRITER_ID}
    return {"jpeg": f"pillow-{Image.__version__} quality={cfg.jpeg_quality} subsampling=4:4:4", "tar": WRITER_ID}


@locks_out
def preprocess(cfg: PreprocessConfig, out: str | Path, runner, records: tuple | None = None) -> dict[str, dict]:
    """Every split's shards, then the duplicate check over all of them, then the manifests.

    ``records``: what ``load_records(cfg)`` returned, when the caller has already read it.
    Each manifest gets ``leakage``: its samples whose source bytes or stored pixels are also in
    another split of this build (``dedup.py``)."""
    by_split, source = records if records is not None else load_records(cfg)
    identities, jobs, dirs = {}, {}, {}
    for split, recs in by_split.items():
        chunks = [recs[i : i + cfg.shard_size] for i in range(0, len(recs), cfg.shard_size)]
        identities[split] = {
            "kind": "images",
            "dataset": cfg.dataset,
            "split": split,
            "regime": cfg.regime,
            "size": cfg.size,
            "config": cfg.identity(),
            "seed": cfg.seed,
            "sources": {cfg.dataset: source},
            "aligned_to": None,
            "encoder": encoder_record(cfg),
        }
        dirs[split] = Path(out) / split
        jobs[split] = plan_shards(
            partial(produce_shard, cfg), dirs[split], f"{cfg.dataset}-{split}", [len(c) for c in chunks],
            identities[split], desc=f"{cfg.dataset} {split} {cfg.regime}-{cfg.size}", payloads=chunks,
            stamp=partial(source_stamp, cfg),
        )
    # every split's shards in one map: no worker waits at the end of one split for the next
    written = dict(zip(jobs, run_shard_jobs(list(jobs.values()), runner, desc=f"{cfg.dataset} {cfg.regime}-{cfg.size}")))
    for split in jobs:
        first = next((r for rec in written[split] for r in rec["quarantined"]), None)
        if cfg.strict and first:  # shards reused from a build without --strict hold quarantined inputs
            raise T2IError(f"{first['key']}: {first['reason']} (kept from an earlier build without --strict; "
                           "without --strict it is quarantined and the run goes on)")
    written, leakage = deduplicate(dirs, written, stats_of_sample, cfg.strict)
    manifests = {split: finish_shard_set(dirs[split], identities[split], written[split], {"leakage": leakage[split]}) for split in by_split}
    write_build_card(out, manifests)  # out/README.md: every split, loadable with datasets
    return manifests
