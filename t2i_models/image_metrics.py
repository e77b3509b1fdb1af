"""``t2i eval images``: FID, KID and IS (and CLIP score) of image sets, from local weights only.

**What computes what.** The network is torch-fidelity 0.4.0's ``FeatureExtractorInceptionV3``
(the 2015-12-05 TF Inception that pytorch-fid and torch-fidelity use for FID, its forward and its
resize unchanged). KID and IS are torchmetrics 1.9.0's ``KernelInceptionDistance`` and
``InceptionScore``, given the features through an identity ``feature`` module. FID is the same
formula in float64 with its matrix square root taken as a nuclear norm (``fid_from_factors``: exact
below 2,049 images, where torchmetrics' eigenvalue form is off by up to 2.5e-4 for identical sets,
and 0.02 s instead of 17-84 s per pair for small sets on this CPU), held to torchmetrics'
``FrechetInceptionDistance`` and to scipy's ``sqrtm`` by the tests. Why not torchmetrics' own
network: in 1.9.0 only its FID class passes ``feature_extractor_weights_path`` on
(``KernelInceptionDistance`` and ``InceptionScore`` build ``NoTrainInceptionV3`` without it, i.e.
they would download), its ``NoTrainInceptionV3`` defaults to ``antialias=True`` (torch's
antialiased bilinear, not the TF1 resize FID scores were published with), and three metric objects
would run the network three times. One pass per set gives the pool3 features (2048, for FID and
KID) and ``logits_unbiased`` (1008, for IS) together.

**Resize policy** (``RESIZE_POLICY``, written into every report): images are decoded to uint8 RGB
(PNG by Pillow, JPEG by Pillow / libjpeg-turbo: no JPEG re-encoding anywhere in this command) and
handed at their stored size to the extractor, which resizes to 299×299 with torch-fidelity's
``interpolate_bilinear_2d_like_tensorflow1x`` (TF1's ``resize_bilinear``, align_corners=False, no
antialias), then maps [0, 255] to [-1, 1). clean-fid's documentation stresses that FID moves with
the resize filter and with JPEG round trips: numbers from another resize are not comparable.

**Importing torch-fidelity without torchvision.** ``torch_fidelity/__init__.py`` imports its CLIP,
VGG16 and DINOv2 extractors, which import torchvision; torchvision 0.29 fails beside torch 2.13
("operator torchvision::nms does not exist"), and without it ``import torch_fidelity`` stops with
"No module named 'torchvision'" (measured here). torchmetrics' fid module imports
``torch_fidelity.feature_extractor_inceptionv3``, which runs that ``__init__`` first, and a bare
``import torchmetrics`` reaches it too (``torchmetrics/__init__`` -> ``image._deprecated`` ->
``image`` -> ``image.fid``: the same error, measured), so any torchmetrics import in this process
must come after ``torch_fidelity_inception``. The Inception
extractor and its helpers (``feature_extractor_base``, ``helpers``, ``defaults``,
``deprecations``, ``interpolate_compat_tensorflow``) import only torch and the standard library
(read from their sources and checked after import: torchvision is not in ``sys.modules``). So
``torch_fidelity_inception`` tries the normal import first and only when it fails because of
torchvision registers ``torch_fidelity`` as a bare package (its ``__path__`` only, ``__init__`` not
run) before importing that one submodule; torchmetrics' imports then find it.

**Trust.** torch-fidelity's constructor reads its weights with ``torch.load(weights_only=False)``,
which would run any pickle. So the file is read here through ``restricted_load`` (torch's
weights-only unpickler), its keys and shapes are checked against the network, and the extractor is
built from an empty dict this module serialised itself, its weights then loaded from the checked
tensors. Nothing is downloaded.

Published weights: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (torch-fidelity's
``weights-inception-2015-12-05-6726825d.pth`` is the same file), 95,628,359 bytes, sha256
``INCEPTION_SHA256``. Neither project states the full digest or checks it (both call
``load_state_dict_from_url`` without ``check_hash``; by torch.hub's convention the 8 hex digits in
the name begin the sha256); the full value is the one several public repositories pin for that file
(found by a code search). Other weights are accepted (tests use random ones) and the report then
says ``published_weights: false``.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import io
import json
import logging
import math
import os
import stat
import sys
import traceback
import types
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from t2i_data.digest import IMAGE_EXTS, file_sha256
from t2i_data.errors import T2IError
from t2i_data.figures import SERIES_COLORS, TEXT, font
from t2i_data.manifest import MANIFEST_NAME, ShardSet, atomic_write, checked_samples, checked_shard_path, open_one_split
from t2i_data.pngio import MAX_SHARD_PIXELS, load_image
from t2i_data.regimes import to_rgb
from t2i_data.sources.records import confiner
from t2i_data.text.captions import sample_captions

log = logging.getLogger(__name__)

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
INCEPTION_BYTES = 95_628_359
METRICS = ("fid", "kid", "is", "clipscore")
INCEPTION_METRICS = ("fid", "kid", "is")
POOL, LOGITS = "2048", "logits_unbiased"  # torch-fidelity's feature names: pool3, fc without bias (IS, as its isc)
POOL_DIM, LOGITS_DIM = 2048, 1008
TORCH_FIDELITY_PIN = "torch-fidelity==0.4.0"
RESIZE_POLICY = ("decoded to uint8 RGB (PNG and JPEG by Pillow; no JPEG re-encoding by this command), given at the stored "
                 "size to torch-fidelity 0.4.0's FeatureExtractorInceptionV3, which resizes to 299x299 with "
                 "interpolate_bilinear_2d_like_tensorflow1x (TF1 resize_bilinear, align_corners=False, no antialias) "
                 "and maps [0, 255] to [-1, 1) as (x - 128) / 128")
THUMBS = 6  # images per set kept for the figure's strip
PUBLISHED_HINT = (f"the FID Inception weights {INCEPTION_FILE} (pytorch-fid's fid_weights release; torch-fidelity's "
                  f"weights-inception-2015-12-05-6726825d.pth is the same file), {INCEPTION_BYTES:,} bytes, sha256 "
                  f"{INCEPTION_SHA256}; nothing is downloaded: put the file on this machine and pass --inception PATH")


# --- torch-fidelity and torchmetrics --------------------------------------------------------------

def _caused_by_torchvision(e: BaseException) -> bool:
    """True when ``e`` came from importing torchvision: missing (ModuleNotFoundError naming it) or
    present but broken (any exception raised from a frame inside a ``torchvision`` folder)."""
    if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == "torchvision":
        return True
    return any("torchvision" in Path(f.filename).parts for f in traceback.extract_tb(e.__traceback__))


def torch_fidelity_inception() -> types.ModuleType:
    """``torch_fidelity.feature_extractor_inceptionv3``, importable without torchvision (module
    docstring). Raises ``T2IError`` saying what to install when torch-fidelity is missing."""
    try:
        import torch_fidelity  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name == "torch_fidelity":
            raise T2IError(f"fid, kid and is need torch-fidelity, which is not installed: pip install --no-deps {TORCH_FIDELITY_PIN} "
                           "(--no-deps: it declares torchvision, which does not import beside this torch)") from None
        if not _caused_by_torchvision(e):
            raise
        _register_bare_package()
    except Exception as e:  # torchvision installed but broken: RuntimeError "operator torchvision::nms does not exist"
        if not _caused_by_torchvision(e):
            raise
        _register_bare_package()
    return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")


def _register_bare_package() -> None:
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None or not spec.submodule_search_locations:
        raise T2IError(f"torch-fidelity is not installed as a package: pip install --no-deps {TORCH_FIDELITY_PIN}")
    pkg = types.ModuleType("torch_fidelity", "torch-fidelity without its __init__ (t2i_models.image_metrics)")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = importlib.machinery.ModuleSpec("torch_fidelity", None, is_package=True)
    pkg.__spec__.submodule_search_locations = pkg.__path__
    sys.modules["torch_fidelity"] = pkg


def metric_classes():
    """torchmetrics' (FrechetInceptionDistance, KernelInceptionDistance, InceptionScore), after
    ``torch_fidelity_inception``. ``T2IError`` when torchmetrics is missing, or when a broken
    torchvision is installed (torchmetrics then imports it itself)."""
    torch_fidelity_inception()
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.inception import InceptionScore
        from torchmetrics.image.kid import KernelInceptionDistance
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "torchmetrics":
            raise
        raise T2IError("fid, kid and is need torchmetrics, a dependency of t2i-data: pip install 'torchmetrics>=1.9.0'") from None
    except Exception as e:
        if not _caused_by_torchvision(e):
            raise
        raise T2IError(f"torchvision is installed but does not import beside torch {torch.__version__} ({type(e).__name__}: "
                       f"{str(e)[:120]}); uninstall it (pip uninstall torchvision): eval images does not need it") from None
    return FrechetInceptionDistance, KernelInceptionDistance, InceptionScore


class _Given(torch.nn.Module):
    """The torchmetrics ``feature`` module for features computed beforehand: (N, D) in, the same out."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim  # read by FrechetInceptionDistance instead of running a dummy image

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


# --- the Inception network ------------------------------------------------------------------------

def build_inception() -> torch.nn.Module:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` with features (pool3 2048, logits_unbiased
    1008), random init (PyTorch's defaults), float32, eval mode, on the CPU. Its constructor's own
    ``torch.load`` reads an empty dict serialised here; weights go in with ``load_inception``."""
    fe = torch_fidelity_inception()

    class InceptionV3(fe.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # the constructor's load of {}
            if state_dict:
                raise RuntimeError("load weights with torch.nn.Module.load_state_dict after the checks of load_inception")

    buf = io.BytesIO()
    torch.save({}, buf)
    buf.seek(0)
    return InceptionV3("inception-v3-compat", [POOL, LOGITS], feature_extractor_weights_path=buf)


def _check_layout(model: torch.nn.Module, sd, path: Path) -> None:
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise T2IError(f"{path}: holds a {type(sd).__name__}, not a state dict of tensors; pass {INCEPTION_FILE}")
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # BatchNorm's step counters are unused in eval and older state dicts lack them: only they may be missing
    missing = [k for k in want if k not in sd and not k.endswith("num_batches_tracked")]
    extra = [k for k in sd if k not in want]
    shapes = [f"{k} {tuple(sd[k].shape)} (expected {want[k]})" for k in want if k in sd and tuple(sd[k].shape) != want[k]]
    if missing or extra or shapes:
        parts = ([f"{len(missing)} of {len(want)} tensors missing (e.g. {', '.join(missing[:2])})"] if missing else []) + \
                ([f"{len(extra)} unexpected (e.g. {', '.join(extra[:2])})"] if extra else []) + (shapes[:2] if shapes else [])
        raise T2IError(f"{path}: not the FID Inception network's weights: {'; '.join(parts)}; pass {INCEPTION_FILE}")


def load_inception(path: str | os.PathLike | None, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """(network, record) for the weights file at ``path``. The network maps (B, 3, H, W) uint8 RGB
    to (pool3 (B, 2048), logits_unbiased (B, 1008)), float32. The record: file name, bytes, sha256,
    ``published_weights`` (sha256 equals ``INCEPTION_SHA256``, the module docstring's source).

    Raises ``T2IError`` naming the file needed (and its sha256) when ``path`` is None or missing,
    for a file torch's weights-only unpickler refuses or that is not a state dict, and for keys or
    shapes other than the network's (both sides named)."""
    from t2i_models.pretrained.safe_load import restricted_load

    if path is None:
        raise T2IError(f"--inception PATH needed for fid, kid and is: {PUBLISHED_HINT}")
    p = Path(path)
    if not p.is_file():
        raise T2IError(f"--inception {p}: {'a folder' if p.is_dir() else 'no such file'}; it must be {PUBLISHED_HINT}")
    with open(p, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save's zip archive, or a legacy pickle (PROTO)
        raise T2IError(f"--inception {p}: not a torch weights file (it starts with {head!r}); it must be {PUBLISHED_HINT}")
    sha = file_sha256(p)
    sd = restricted_load(p, (), "FID Inception weights")
    model = build_inception()
    _check_layout(model, sd, p)
    torch.nn.Module.load_state_dict(model, sd, strict=False)  # only num_batches_tracked may be absent (checked above)
    record = {"file": p.name, "bytes": p.stat().st_size, "sha256": sha, "published_sha256": INCEPTION_SHA256,
              "published_weights": sha == INCEPTION_SHA256, "features": f"pool3 ({POOL_DIM}) for FID and KID",
              "logits": f"logits_unbiased ({LOGITS_DIM}, fc without bias, as torch-fidelity's IS) for IS"}
    return model.to(device).eval(), record


def save_random_inception(path: str | os.PathLike, seed: int = 0, zero_fc: bool = False) -> str:
    """Write random-init weights in the published layout (the network's state dict: its 566
    float32 tensors, names and shapes, 23.9M values: the same cost per image as the real ones) to
    ``path``; returns their sha256. For tests and benchmarks.

    Conv weights N(0, 2 / fan_in) (He), so activations keep their scale through the 94 layers
    (PyTorch's default init shrinks pool3 features to ~3e-8, measured); BatchNorm scale 1, shift
    0, running mean 0, variance 1; fc N(0, 1 / 2048) with bias 0, or all zero with ``zero_fc``
    (uniform predictions: IS exactly 1)."""
    model = build_inception()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0.0, math.sqrt(2.0 / m.weight[0].numel()), generator=g)
            elif isinstance(m, torch.nn.Linear):
                m.weight.normal_(0.0, math.sqrt(1.0 / m.in_features), generator=g)
                m.bias.zero_()
                if zero_fc:
                    m.weight.zero_()
    torch.save(model.state_dict(), path)
    return file_sha256(Path(path))


# --- image sets -----------------------------------------------------------------------------------

@dataclass
class ImageSet:
    """One input set: an image shard set (one split) or a folder of PNG/JPEG files."""

    label: str
    path: Path
    kind: str  # "shards" or "folder"
    size: int
    fingerprint: dict
    shard_set: ShardSet | None = None
    files: list[Path] = field(default_factory=list)

    def record(self) -> dict:
        return {"path": str(self.path), "kind": self.kind, "images_in_set": self.size, "fingerprint": self.fingerprint}


def parse_fake(spec: str) -> tuple[str | None, str]:
    """``NAME=PATH`` -> (NAME, PATH); a spec whose part before '=' holds a '/' (or none) is a path."""
    name, sep, rest = spec.partition("=")
    if sep and name and "/" not in name and rest:
        return name, rest
    return None, spec


def open_image_set(path: str | os.PathLike, label: str | None = None) -> ImageSet:
    """An image shard set (a split folder with manifest.json, kind images; manifest checked) or a
    flat folder of .png/.jpg/.jpeg files (``list_image_folder``). The label defaults to the
    folder's name. Raises ``T2IError`` for a missing path, a build folder of several splits, a
    set of another kind, an empty set and a folder holding anything but image files."""
    p = Path(path)
    if not p.is_dir():
        raise T2IError(f"{p}: {'a file' if p.exists() else 'no such folder'}; give an image shard set (the folder with its "
                       f"{MANIFEST_NAME}) or a folder of .png/.jpg/.jpeg images")
    label = label or p.resolve().name
    if (p / MANIFEST_NAME).is_file() or any(p.glob(f"*/{MANIFEST_NAME}")):
        ss = open_one_split(p, "images", "", "eval images reads image shard sets (kind images) or image folders")
        total = ss.manifest["totals"]["samples"]
        fp = {"manifest_digest": ss.manifest["digest"], "dataset": ss.manifest["dataset"], "split": ss.split}
        s = ImageSet(label, ss.dir, "shards", total, fp, shard_set=ss)
    else:
        files = list_image_folder(p)
        s = ImageSet(label, p, "folder", len(files), {"sha256_names_and_bytes": folder_fingerprint(p, files)}, files=files)
    if s.size < 2:
        raise T2IError(f"{p}: {s.size} image(s); FID, KID and IS need at least 2 per set")
    return s


def list_image_folder(path: Path) -> list[Path]:
    """The image files of a folder, sorted by name, not recursing. Every other entry is refused
    in one ``T2IError`` listing each with its reason (another extension, a subfolder, a symlink
    leading out of the folder, not a regular file): nothing is skipped silently."""
    check = confiner(path)
    good, bad = [], []
    for name in sorted(os.listdir(path)):
        try:
            target = check(name, "entry")
        except ValueError as e:
            bad.append(f"{name} ({e})")
            continue
        try:
            st = os.stat(target)
        except OSError as e:  # a dangling symlink, a file gone since the listing
            bad.append(f"{name} (cannot be read: {e.strerror})")
            continue
        if stat.S_ISDIR(st.st_mode):
            bad.append(f"{name} (a folder: subfolders are not read)")
        elif name.rpartition(".")[2].lower() not in IMAGE_EXTS or "." not in name:
            bad.append(f"{name} (not a .png, .jpg or .jpeg file)")
        elif not stat.S_ISREG(st.st_mode):
            bad.append(f"{name} (not a regular file)")
        else:
            good.append(Path(path) / name)  # its own name (a symlink inside the folder is read through)
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise T2IError(f"{path}: {len(bad)} entr{'y is' if len(bad) == 1 else 'ies are'} not image files: {'; '.join(bad[:5])}{more}; "
                       "move them out (the folder must hold only the .png/.jpg/.jpeg images to score)")
    if not good:
        raise T2IError(f"{path}: no .png/.jpg/.jpeg files in it; give the folder holding the images")
    return good


def folder_fingerprint(root: Path, files: list[Path]) -> str:
    """sha256 over (name, byte count, bytes) of each file in the sorted list."""
    h = hashlib.sha256()
    for f in files:
        data = f.read_bytes()
        h.update(f"{f.name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def choose(total: int, n: int, seed: int, where: str) -> np.ndarray:
    """Positions read from a set of ``total`` images, ascending: all when ``n`` is 0, else ``n``
    drawn without replacement by ``np.random.default_rng(seed).choice``. ``T2IError`` when the
    set holds fewer than ``n``."""
    if n == 0:
        return np.arange(total)
    if n > total:
        raise T2IError(f"{where}: {total} images, fewer than --n {n}; lower --n or give a larger set")
    return np.sort(np.random.default_rng(seed).choice(total, n, replace=False))


def _decode_file(path: Path) -> np.ndarray:
    """A folder's image file -> (H, W, 3) uint8 RGB (``regimes.to_rgb``: alpha onto white), within
    ``pngio.MAX_SHARD_PIXELS``; one ``T2IError`` naming the file otherwise."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_SHARD_PIXELS:
                    raise T2IError(f"{path}: {im.width}x{im.height} pixels, above the {MAX_SHARD_PIXELS:,}-pixel limit; resize it")
                im.load()
                return np.asarray(to_rgb(im))
    except T2IError:
        raise
    except Exception as e:  # Pillow: UnidentifiedImageError, OSError (truncated), SyntaxError, ValueError (mode) ...
        raise T2IError(f"{path}: not an image Pillow can decode ({type(e).__name__}: {str(e)[:120]}); replace or remove it") from None


def iter_images(s: ImageSet, positions: np.ndarray, captions: bool = False):
    """(key, (H, W, 3) uint8 RGB, format, caption or None) for each position, in set order.
    Shards are read through ``checked_samples`` (sha256 and count checked against the manifest);
    shards holding no chosen position are not read. ``captions``: each sample's first caption
    (``T2IError`` for a folder, or a sample without one)."""
    if captions and s.kind == "folder":
        raise T2IError(f"{s.path}: a folder of images has no captions; clipscore needs an image shard set with captions "
                       "in <key>.json (t2i sample --out writes one)")
    if s.kind == "folder":
        for i in positions:
            f = s.files[i]
            yield f.name, _decode_file(f), f.suffix.lower().lstrip("."), None
        return
    wanted = set(int(i) for i in positions)
    for shard, start in chosen_shards(s, positions):
        for j, sample in enumerate(checked_samples(s.shard_set, shard), start):
            if j not in wanted:
                continue
            key = sample["__key__"]
            ext = next((e for e in IMAGE_EXTS if e in sample), None)
            if ext is None:
                raise T2IError(f"{s.path / shard['name']}: sample {key} has no image ({', '.join(IMAGE_EXTS)}); not an image shard set")
            with load_image(sample[ext], f"{s.path / shard['name']}: {key}.{ext}") as im:
                rgb = np.asarray(to_rgb(im))
            caption = None
            if captions:
                caps, _ = sample_captions(sample, s.path / shard["name"])
                if not caps:
                    raise T2IError(f"{s.path / shard['name']}: sample {key} has no caption; clipscore scores each image with its first caption")
                caption = caps[0]
            yield key, rgb, ext, caption


def chosen_shards(s: ImageSet, positions: np.ndarray) -> list[tuple[dict, int]]:
    """(manifest record, position of its first sample) of each shard holding a chosen position."""
    out, start = [], 0
    for shard in s.shard_set.manifest["shards"]:
        end = start + shard["samples"]
        if np.searchsorted(positions, end) > np.searchsorted(positions, start):
            out.append((shard, start))
        start = end
    return out


def verify_chosen(s: ImageSet, positions: np.ndarray) -> None:
    """Check the size and sha256 of every shard the chosen images lie in (``checked_shard_path``),
    so a damaged set stops the run before any image is scored, not after the sets before it."""
    if s.kind == "shards":
        for shard, _ in chosen_shards(s, positions):
            checked_shard_path(s.shard_set, shard)


# --- the pass over a set --------------------------------------------------------------------------

@dataclass
class SetPass:
    """What one pass over a set gives: per image (in set order) pool3 features (N, 2048) and
    logits_unbiased (N, 1008) as float64 (None without the network), CLIP similarities 100 cos
    (N,) float64, not floored (None without a scorer), plus image sizes and formats seen and the
    first images."""

    keys: list[str]
    pool: np.ndarray | None
    logits: np.ndarray | None
    clip: np.ndarray | None
    sizes: dict
    formats: dict
    thumbs: list[tuple[str, np.ndarray]]


def run_pass(s: ImageSet, positions: np.ndarray, model, scorer, batch_size: int, device: str) -> SetPass:
    """Decode the chosen images (``positions``: ascending indices into the set) and run the
    Inception network (``load_inception``'s, or None) and the CLIP scorer (or None; it needs
    captions) over them in batches of ``batch_size`` images of one size (a batch ends early where
    the size changes: the network takes one (B, 3, H, W) uint8 tensor). Features come back to the
    CPU as float64. Raises ``iter_images``' ``T2IError`` for a damaged shard, an undecodable image
    (naming it) or a missing caption; a tqdm bar on a terminal shows the images done."""
    from tqdm.auto import tqdm

    keys, pools, logits, clips, sizes, formats, thumbs, batch = [], [], [], [], Counter(), Counter(), [], []

    def flush():
        arrs = np.stack([a for _, a, _ in batch])  # (B, H, W, 3) uint8
        if model is not None:
            x = torch.from_numpy(arrs).permute(0, 3, 1, 2).contiguous().to(device)  # (B, 3, H, W) uint8
            with torch.inference_mode():
                p, lg = model(x)
            pools.append(p.double().cpu().numpy())
            logits.append(lg.double().cpu().numpy())
        if scorer is not None:  # 100 cos, unfloored: the per-image score and torchmetrics' set score both come from it
            clips.append(np.asarray(scorer.similarity(arrs, [c for _, _, c in batch], batch_size=len(batch)), dtype=np.float64))
        batch.clear()

    with tqdm(total=len(positions), desc=f"{'Inception' if model is not None else 'CLIP'}: {s.label}", unit="img", disable=None) as bar:
        for key, rgb, fmt, caption in iter_images(s, positions, captions=scorer is not None):
            if batch and (len(batch) == batch_size or batch[0][1].shape != rgb.shape):
                bar.update(len(batch))
                flush()
            keys.append(key)
            sizes[f"{rgb.shape[1]}x{rgb.shape[0]}"] += 1
            formats[fmt] += 1
            if len(thumbs) < THUMBS:
                thumbs.append((key, rgb))
            batch.append((key, rgb, caption))
        if batch:
            bar.update(len(batch))
            flush()
    cat = lambda xs: np.concatenate(xs) if xs else None  # noqa: E731
    return SetPass(keys, cat(pools), cat(logits), cat(clips), dict(sorted(sizes.items())), dict(sorted(formats.items())), thumbs)


# --- the statistics (torchmetrics) ----------------------------------------------------------------

def gaussian_factor(features: np.ndarray, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean (D,), R (k, D), N) of (N, D) features, float64, with R^T R = (N - 1) S (S: the
    unbiased covariance): the centred features themselves when N <= D (k = N), else the R of their
    QR decomposition (k = D). Nothing is squared or square-rooted: see ``fid_from_factors``."""
    x = torch.as_tensor(np.asarray(features, np.float64), device=device)
    if x.ndim != 2 or len(x) < 2:
        raise T2IError(f"FID needs (N >= 2, D) features, got shape {tuple(x.shape)}")
    mean = x.mean(0)
    centred = x - mean
    r = torch.linalg.qr(centred, mode="r")[1] if len(x) > x.shape[1] else centred
    return mean, r, len(x)


def fid_from_factors(real: tuple, fake: tuple) -> float:
    """FID = |mu_r - mu_f|^2 + tr(S_r) + tr(S_f) - 2 tr((S_r S_f)^(1/2)) from two ``gaussian_factor``
    results, in float64. The last trace is the nuclear norm of R_r R_f^T / sqrt((N_r - 1)(N_f - 1)):
    the eigenvalues of S_r S_f = R_r^T R_r R_f^T R_f / c are those of M M^T / c with M = R_r R_f^T,
    so their square roots are M's singular values (an identity, not an approximation).

    Why not torchmetrics' ``_compute_fid`` (sum of sqrt(eigvals(S_r S_f))): below D + 1 = 2049
    images the covariances are singular, and the ~2,000 eigenvalues that should be 0 come out as
    +-eps ||S||^2, whose square roots add up. Measured here on (N, 2048) features with tr S ~ 117,
    identical sets: torchmetrics -2.5e-4 (N = 8), -5.3e-5 (64), -1.2e-5 (512), -1.2e-12 (2,100);
    this form 0.0, 0.0, 0.0, -1.1e-13, and a mean shift d gives |d|^2 to 3e-13 relative at every N.
    torchmetrics' general eigensolver on the 2048 x 2048 product took 17-84 s per pair on this
    2-core CPU; this form 0.02 s (N = 8) to 40 s (N = 10,000, two QRs and one SVD). Tests hold it
    to torchmetrics' FrechetInceptionDistance and to scipy.linalg.sqrtm (pytorch-fid's formula).
    Not clamped: two identical sets give 0 up to rounding, of either sign."""
    (m1, r1, n1), (m2, r2, n2) = real, fake
    if r1.shape[1] != r2.shape[1]:
        raise T2IError(f"FID of features of different widths: {r1.shape[1]} and {r2.shape[1]}")
    traces = r1.square().sum() / (n1 - 1) + r2.square().sum() / (n2 - 1)
    cross = torch.linalg.svdvals(r1 @ r2.T).sum() / math.sqrt((n1 - 1) * (n2 - 1))
    return float((m1 - m2).square().sum() + traces - 2 * cross)


def fid_from_features(real: np.ndarray, fake: np.ndarray, device: str = "cpu") -> float:
    """FID between (N_r, D) and (N_f, D) features, float64 (``fid_from_factors``)."""
    return fid_from_factors(gaussian_factor(real, device), gaussian_factor(fake, device))


def kid_from_features(real: np.ndarray, fake: np.ndarray, subsets: int, subset_size: int, seed: int, device: str = "cpu") -> dict:
    """KID (torchmetrics' ``KernelInceptionDistance``: unbiased MMD^2 with the cubic polynomial
    kernel (x.y / D + 1)^3, over ``subsets`` random subsets of each set) in float64. The subset
    size is capped at the smaller set (recorded); the subsets come from torch's generator seeded
    with ``seed`` inside ``fork_rng`` (torchmetrics draws them with ``torch.randperm``)."""
    _, KID, _ = metric_classes()
    size = min(subset_size, len(real), len(fake))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer")
        m = KID(feature=_Given(real.shape[1]), subsets=subsets, subset_size=size).to(device)
    m.update(torch.from_numpy(np.asarray(real, np.float64)).to(device), real=True)
    m.update(torch.from_numpy(np.asarray(fake, np.float64)).to(device), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = m.compute()
    return {"mean": float(mean), "std": float(std), "subsets": subsets, "subset_size": size, "subset_size_requested": subset_size,
            "capped_at_set_size": size < subset_size, "std_definition": "population std over subsets (torchmetrics)",
            "kernel": f"polynomial (x.y / {real.shape[1]} + 1)^3"}


def is_from_logits(logits: np.ndarray, splits: int, seed: int, device: str = "cpu") -> dict:
    """IS (torchmetrics' ``InceptionScore``: exp(E_x KL(p(y|x) || p(y))) per split, mean and std
    over ``splits``) from (N, 1008) logits in float64. torchmetrics shuffles with ``torch.randperm``
    (seeded here as in ``kid_from_features``) and splits with ``torch.chunk``, which gives fewer
    groups than asked when N does not suit it: refused with a ``T2IError``. Its std is the sample
    std (n - 1); torch-fidelity and the original IS code use the population std."""
    _, _, IS = metric_classes()
    groups = split_sizes(len(logits), splits, "IS")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer")
        m = IS(feature=_Given(logits.shape[1]), splits=splits).to(device)
    m.update(torch.from_numpy(np.asarray(logits, np.float64)).to(device))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = m.compute()
    return {"mean": float(mean), "std": float(std) if splits > 1 else None, "splits": splits, "images_per_split": groups,
            "std_definition": "sample std (n - 1) over splits (torchmetrics); torch-fidelity uses the population std"}


def split_sizes(n: int, splits: int, where: str) -> list[int]:
    """The group sizes torchmetrics' ``torch.chunk`` gives ``n`` images in ``splits`` groups;
    ``T2IError`` when it gives fewer groups than ``splits`` (e.g. 12 images in 10 -> 6 groups of 2)."""
    groups = [len(c) for c in torch.arange(n).chunk(splits)]
    if len(groups) != splits:
        raise T2IError(f"{where}: --splits {splits} over {n} images: torchmetrics' torch.chunk makes {len(groups)} groups, not "
                       f"{splits}; use a number of images that is a multiple of {splits} (--n) or another --splits")
    return groups


# --- the command ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalConfig:
    """The settings of one ``t2i eval images`` run (flags of the same names). Defaults: IS over 10
    splits and KID over 100 subsets of 1000, the defaults of torchmetrics 1.9.0 and torch-fidelity
    0.4.0 (``isc_splits``, ``kid_subsets``, ``kid_subset_size``). ``batch_size`` 8: on this 2-core CPU the Inception forward ran at 6.3-6.8 images/s with
    batches of 2-8, 5.7 at 16 and 5.1-5.2 at 50 (``bench/bench_fid.py``, 2 threads); on a GPU
    pass a larger one. Threads: torch's default (one per core): 2 threads ran 1.7-1.9x 1 thread."""

    metrics: tuple[str, ...] = ("fid", "kid", "is")
    splits: int = 10
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    n: int = 0
    batch_size: int = 8
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise T2IError(f"--metrics {','.join(self.metrics)}: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(METRICS)}")
        for name, lo in (("splits", 1), ("kid_subsets", 1), ("kid_subset_size", 2), ("n", 0), ("batch_size", 1), ("seed", 0)):
            if getattr(self, name) < lo:
                raise T2IError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least {lo}")
        if self.n == 1:
            raise T2IError("--n 1: FID, KID and IS need at least 2 images per set")


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise T2IError("--device cuda: torch sees no CUDA device here; use --device cpu or auto")
    return device


def evaluate(real: str, fakes: list[str], out: str | os.PathLike, cfg: EvalConfig, inception: str | None = None,
             clip: str | None = None) -> dict:
    """Score each fake set against ``real``; write ``out/report.json`` and ``out/metrics.png``;
    return the report. Everything that can be refused (flags, weights, sets, --n) is checked
    before the first image is decoded."""
    device = resolve_device(cfg.device)
    need_inception = any(m in INCEPTION_METRICS for m in cfg.metrics)
    real_set = open_image_set(real, "real")
    fake_sets = []
    for spec in fakes:
        name, path = parse_fake(spec)
        fake_sets.append(open_image_set(path, name))
    labels = [f.label for f in fake_sets]
    dup = sorted({x for x in labels if labels.count(x) > 1} | ({"real"} & set(labels)))
    if dup:
        raise T2IError(f"--fake: more than one set is called {dup[0]!r} (or it is 'real'); name each as --fake NAME=PATH")
    where = Path(out).resolve()
    for s in [real_set, *fake_sets]:
        if where == s.path.resolve() or s.path.resolve() in where.parents:
            raise T2IError(f"--out {out}: inside the input set {s.path}; write the report to a folder of its own")
    chosen = {id(s): choose(s.size, cfg.n, cfg.seed, str(s.path)) for s in [real_set, *fake_sets]}
    for s in [real_set, *fake_sets]:
        verify_chosen(s, chosen[id(s)])
        if "is" in cfg.metrics:
            split_sizes(len(chosen[id(s)]), cfg.splits, str(s.path))
    kid_size = min(len(c) for c in chosen.values())
    if "kid" in cfg.metrics and kid_size < cfg.kid_subset_size:
        log.info("KID: subset size %d, capped at the smallest set (--kid-subset-size %d)", kid_size, cfg.kid_subset_size)
    model = weights = scorer = None
    if need_inception:
        metric_classes()  # a missing package is named before the weights are read
        model, weights = load_inception(inception, device)
        if not weights["published_weights"]:
            log.warning("WARNING: %s is not the published FID Inception file (sha256 %s…, expected %s…): the scores are not "
                        "comparable with papers'", weights["file"], weights["sha256"][:16], INCEPTION_SHA256[:16])
    if "clipscore" in cfg.metrics:
        for f in fake_sets:
            if f.kind == "folder":
                raise T2IError(f"{f.path}: a folder of images has no captions; clipscore needs an image shard set with captions "
                               "in <key>.json (t2i sample --out writes one)")
        scorer = _load_clip(clip, device)
    real_pass = run_pass(real_set, chosen[id(real_set)], model, None, cfg.batch_size, device) if need_inception else None
    report = {"command": "t2i eval images", "metrics": list(cfg.metrics), "device": device, "seed": cfg.seed, "n": cfg.n,
              "batch_size": cfg.batch_size, "torch_threads": torch.get_num_threads(), "resize_policy": RESIZE_POLICY,
              "inception": weights, "clip": {"path": str(clip), **scorer.info} if scorer else None,
              "versions": _versions(), "real": real_set.record() | _pass_record(real_pass), "models": {}, "warnings": []}
    if weights and not weights["published_weights"]:
        report["warnings"].append(f"{weights['file']} is not the published FID Inception file (sha256 {weights['sha256']}, "
                                  f"published {INCEPTION_SHA256}): the scores are not comparable with papers'")
    if "is" in cfg.metrics:
        report["real"]["is"] = is_from_logits(real_pass.logits, cfg.splits, cfg.seed, device)
    passes = {"real": real_pass}
    real_factor = gaussian_factor(real_pass.pool, device) if "fid" in cfg.metrics else None
    for f in fake_sets:
        fp = run_pass(f, chosen[id(f)], model, scorer, cfg.batch_size, device)
        passes[f.label] = fp
        rec = f.record() | _pass_record(fp)
        if "fid" in cfg.metrics:
            rec["fid"] = {"value": fid_from_factors(real_factor, gaussian_factor(fp.pool, device)), "dtype": "float64",
                          "images": [len(real_pass.keys), len(fp.keys)], "formula": "|mu_r - mu_f|^2 + tr S_r + tr S_f - "
                          "2 tr (S_r S_f)^(1/2), unbiased covariances; the last trace as the nuclear norm of R_r R_f^T (QR "
                          "factors of the centred features), float64"}
        if "kid" in cfg.metrics:
            rec["kid"] = kid_from_features(real_pass.pool, fp.pool, cfg.kid_subsets, cfg.kid_subset_size, cfg.seed, device)
        if "is" in cfg.metrics:
            rec["is"] = is_from_logits(fp.logits, cfg.splits, cfg.seed, device)
        if scorer is not None:
            from t2i_models.clip_score import set_score

            per_image = np.maximum(fp.clip, 0.0)
            rec["clipscore"] = {"mean": float(per_image.mean()), "std": float(per_image.std()), "images": len(per_image),
                                "set_score": set_score(fp.clip), "caption": "captions[0] of each sample's <key>.json",
                                "definition": "per image max(100 cos(image, caption), 0) (Hessel et al. 2021 at torchmetrics' "
                                "scale); mean and population std over images; set_score: torchmetrics' CLIPScore.compute(), "
                                "max(mean of the unfloored values, 0)"}
        report["models"][f.label] = rec
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "report.json", (json.dumps(report, sort_keys=True, indent=2, allow_nan=False) + "\n").encode())
    report["figure"] = str(metrics_figure(report, passes, out / "metrics.png"))
    return report


def _pass_record(p: SetPass | None) -> dict:
    if p is None:
        return {}
    return {"images": len(p.keys), "image_sizes": p.sizes, "formats": p.formats, "first_keys": p.keys[:THUMBS]}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"torch": torch.__version__}
    for dist in ("torchmetrics", "torch-fidelity"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def _load_clip(path: str | None, device: str):
    """The scorer of ``t2i_models.clip_score`` (``load_clip(path, device)``: ``similarity(images
    (N, H, W, 3) uint8, texts) -> (N,) float64`` 100 cos, ``info`` with the weights' fingerprint)."""
    if path is None:
        raise T2IError("--metrics clipscore needs --clip DIR, a local CLIP folder; nothing is downloaded")
    from t2i_models.clip_score import load_clip

    return load_clip(path, device)


# --- the figure -----------------------------------------------------------------------------------

def _value(rec: dict, metric: str) -> tuple[float, float | None] | None:
    r = rec.get(metric)
    if r is None:
        return None
    return (r["value"], None) if metric == "fid" else (r["mean"], r["std"])


def metrics_figure(report: dict, passes: dict, path: Path) -> Path:
    """One panel per metric (a bar per model, error bars: std over subsets / splits / images, the
    value written on each bar; IS also shows the real set as a grey reference bar), then a strip
    of the first images of every set, labelled. Pillow only; same values, same bytes."""
    names = {"fid": "FID (lower is better)", "kid": "KID (lower is better)", "is": "IS (higher is better)", "clipscore": "CLIP score"}
    panels = [m for m in report["metrics"] if m in names]
    pw, ph, thumb = 420, 300, 64
    sets = list(passes)
    strip_h = len(sets) * (thumb + 26) + 10
    img = Image.new("RGB", (max(pw * len(panels), 120 + THUMBS * (thumb + 6)), ph + strip_h + 30), (255, 255, 255))
    d = ImageDraw.Draw(img)
    big, small = font(15), font(12)
    w = report.get("inception") or {}
    sub = (f"n real {report['real'].get('images', '-')}, seed {report['seed']}, Inception sha256 {str(w.get('sha256', '-'))[:12]}"
           + ("" if not w or w.get("published_weights") else " (NOT the published weights: not comparable with papers)"))
    d.text((10, 6), sub, fill=(180, 0, 0) if w and not w.get("published_weights") else TEXT, font=small)
    for k, metric in enumerate(panels):
        bars = [(label, _value(rec, metric), SERIES_COLORS[i % len(SERIES_COLORS)]) for i, (label, rec) in enumerate(report["models"].items())]
        if metric == "is" and "is" in report["real"]:
            bars = [("real", _value(report["real"], "is"), (150, 150, 150))] + bars
        _panel(d, (k * pw, 24, (k + 1) * pw, 24 + ph), names[metric], [b for b in bars if b[1] is not None], big, small)
    y = ph + 40
    for label in sets:
        p = passes[label]
        if p is None:
            continue
        d.text((10, y), f"{label}: first {len(p.thumbs)} of {len(p.keys)} images scored", fill=TEXT, font=small)
        for i, (key, arr) in enumerate(p.thumbs):
            t = Image.fromarray(arr).resize((thumb, thumb), Image.Resampling.BILINEAR)
            img.paste(t, (10 + i * (thumb + 6), y + 16))
        y += thumb + 26
    path = Path(path)
    img.save(path, format="PNG", optimize=False)
    return path


def _panel(d: ImageDraw.ImageDraw, box, title: str, bars: list, big, small) -> None:
    x0, y0, x1, y1 = box
    left, right, top, bottom = x0 + 72, x1 - 15, y0 + 48, y1 - 40  # room for the value over the tallest bar
    d.text((x0 + (x1 - x0 - d.textlength(title, font=big)) / 2, y0 + 4), title, fill=TEXT, font=big)
    if not bars:
        return
    hi = max([v + (s or 0) for _, (v, s), _ in bars] + [0.0])
    lo = min([v - (s or 0) for _, (v, s), _ in bars] + [0.0])
    span = (hi - lo) or 1.0
    ypos = lambda v: bottom - (v - lo) / span * (bottom - top)  # noqa: E731
    d.line([(left, top), (left, bottom)], fill=TEXT, width=1)
    zero = ypos(0.0)
    d.line([(left, zero), (right, zero)], fill=TEXT, width=1)
    for v in (lo, hi):
        d.text((left - 6 - d.textlength(f"{v:.3g}", font=small), ypos(v) - 7), f"{v:.3g}", fill=TEXT, font=small)
    slot = (right - left) / len(bars)
    for i, (label, (v, s), color) in enumerate(bars):
        bx0, bx1 = left + i * slot + slot * 0.2, left + (i + 1) * slot - slot * 0.2
        d.rectangle([bx0, min(zero, ypos(v)), bx1, max(zero, ypos(v))], fill=color)
        cx = (bx0 + bx1) / 2
        if s:
            d.line([(cx, ypos(v - s)), (cx, ypos(v + s))], fill=TEXT, width=2)
            for e in (v - s, v + s):
                d.line([(cx - 6, ypos(e)), (cx + 6, ypos(e))], fill=TEXT, width=2)
        text = f"{v:.4g}" + (f" ± {s:.2g}" if s else "")
        d.text((cx - d.textlength(text, font=small) / 2, min(ypos(v), zero) - 16), text, fill=TEXT, font=small)
        d.text((cx - d.textlength(label, font=small) / 2, bottom + 6), label, fill=TEXT, font=small)


def cli_main(args) -> int:
    """``t2i eval images`` (flags: t2i_models/cli.py): prints one line per model and the paths."""
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    cfg = EvalConfig(metrics=metrics, splits=args.splits, kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size,
                     n=args.n, seed=args.seed, device=args.device,
                     **({} if args.batch_size is None else {"batch_size": args.batch_size}))
    r = evaluate(args.real, args.fake, args.out, cfg, inception=args.inception, clip=args.clip)
    if "images" in r["real"]:
        print(f"real: {r['real']['path']} ({r['real']['images']} images)" + (f", IS {r['real']['is']['mean']:.4f}" if "is" in r["real"] else ""))
    else:
        print(f"real: {r['real']['path']} (not read: clipscore scores the fake sets only)")
    for label, m in r["models"].items():
        parts = [f"{label}: {m.get('images', '-')} images"]
        if "fid" in m:
            parts.append(f"FID {m['fid']['value']:.4f}")
        if "kid" in m:
            parts.append(f"KID {m['kid']['mean']:.5f} ± {m['kid']['std']:.5f} ({m['kid']['subsets']} x {m['kid']['subset_size']})")
        if "is" in m:
            parts.append(f"IS {m['is']['mean']:.4f} ± {m['is']['std'] or 0:.4f} ({m['is']['splits']} splits)")
        if "clipscore" in m:
            parts.append(f"CLIP score {m['clipscore']['mean']:.3f} ± {m['clipscore']['std']:.3f}")
        print(", ".join(parts))
    print(f"wrote {Path(args.out) / 'report.json'} and {r['figure']}")
    return 0
