"""CUB / COCO preprocessing speed and fidelity against the thesis order and a naive chain, in one process.

Rerun:  python bench/bench_preprocess.py [--size 128] [--repeat 5] [--threads 1] [--shard-build] [--out-png diff.png]
  Images: the real JPEGs in $T2I_REALDATA/{cub,coco} (default ../shared/realdata).

Per dataset, regime and stored scale, with the same random draws for every chain
(``Regime.draw(seed=0, key, index=1, ...)``; view 1, since view 0 is the identity):
  reference: the thesis order: full decode -> (prior: mirror-pad to square) -> rotate the
             FULL-SIZE image (bicubic) -> ONE LANCZOS resize -> crop N x N -> flip
  naive:     the fair plain chain: full decode -> (pad) -> ONE LANCZOS resize to the stored size
             -> rotate, crop, flip (Regime.apply_view at scale 1)
  ours:      load_prepared (DCT-scaled decode + LANCZOS) -> JPEG q95 (the shard) -> decode
             -> Regime.apply_view; scale 1 stores N+10 / (N+20)^2, scale 2 twice that
The sides alternate pass by pass in this one process; each figure is the best of --repeat
passes; torch's thread count is pinned (--threads) when torch is installed, and Pillow runs
on one core. Prints images/s for each side, ours against naive (target >= 2.5x), ours' view
step alone against naive (the per-epoch cost once the shards exist), and the mean absolute
difference (MAD) from the reference in 1/255 (target <= 2/255).
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from t2i_data.preprocess import PreprocessConfig, encode_jpeg, load_prepared, preprocess
from t2i_data.regimes import Regime, _mirror_pad_square
from t2i_data.runner import InProcessRunner

REALDATA = Path(os.environ.get("T2I_REALDATA", Path(__file__).resolve().parents[2] / "shared" / "realdata"))
GLOBS = {"cub": "cub/CUB_200_2011/images/**/*.jpg", "coco": "coco/val2017/*.jpg"}


def reference(path: Path, regime: Regime, p) -> np.ndarray:
    """The thesis order, written plainly: rotation at full resolution, then one LANCZOS resize."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    if regime.name == "prior":
        d = abs(w - h)
        pad = ((d // 2, d - d // 2), (0, 0), (0, 0)) if h < w else ((0, 0), (d // 2, d - d // 2), (0, 0))
        im = Image.fromarray(np.pad(np.asarray(im), pad, mode="symmetric"))
    im = im.rotate(p.angle, resample=Image.Resampling.BICUBIC)  # the kernel apply_view uses
    im = im.resize(regime.target_size(w, h), Image.Resampling.LANCZOS)
    n = regime.size
    im = im.crop((p.x, p.y, p.x + n, p.y + n))
    if p.flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(im)


def naive(path: Path, regime: Regime, p) -> np.ndarray:
    """Full decode, pad, one LANCZOS resize to the stored size, then rotate, crop, flip."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    if regime.name == "prior":
        im = _mirror_pad_square(im)
    im = im.resize(regime.target_size(w, h), Image.Resampling.LANCZOS)
    return np.asarray(Regime(regime.name, regime.size).apply_view(im, p))


def ours_pre(path: Path, regime: Regime) -> bytes:
    return encode_jpeg(load_prepared(path, regime)[0], 95)


def ours_view(data: bytes, regime: Regime, p) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(regime.apply_view(im.convert("RGB"), p))


def alternate(sides: dict, repeat: int) -> dict:
    """images/s of each side: the sides take turns, one pass over their items each, ``repeat``
    rounds; the best pass counts (the least disturbed by other work on the machine)."""
    best = {name: float("inf") for name in sides}
    for _ in range(repeat):
        for name, (fn, items) in sides.items():
            t = time.perf_counter()
            for it in items:
                fn(*it)
            best[name] = min(best[name], time.perf_counter() - t)
    return {name: len(sides[name][1]) / best[name] for name in sides}


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def bench(dataset: str, files: list[Path], regime: Regime, repeat: int):
    keys = [f"{dataset}/{f.stem}" for f in files]
    stored = [ours_pre(f, regime) for f in files]  # also warms the page cache and imports
    sizes = [Image.open(io.BytesIO(b)).size for b in stored]
    params = [regime.draw(0, k, 1, s, False) for k, s in zip(keys, sizes)]
    ref_out = [reference(f, regime, p) for f, p in zip(files, params)]
    our_out = [ours_view(b, regime, p) for b, p in zip(stored, params)]
    naive_out = [naive(f, regime, p) for f, p in zip(files, params)]
    mads = [mad(a, b) for a, b in zip(ref_out, our_out)]
    ident = [regime.draw(0, k, 0, s, False) for k, s in zip(keys, sizes)]  # view 0: no rotation, centred crop
    fp = list(zip(files, params))
    r = alternate({
        "ref": (lambda f, p: reference(f, regime, p), fp),
        "naive": (lambda f, p: naive(f, regime, p), fp),
        "ours": (lambda f, p: ours_view(ours_pre(f, regime), regime, p), fp),
        "view": (lambda b, p: ours_view(b, regime, p), list(zip(stored, params))),
    }, repeat)
    r.update(mad=float(np.mean(mads)), mad_max=float(np.max(mads)),
             mad_naive=float(np.mean([mad(a, b) for a, b in zip(ref_out, naive_out)])),
             mad0=float(np.mean([mad(reference(f, regime, p), ours_view(b, regime, p)) for f, b, p in zip(files, stored, ident)])),
             kb=float(np.mean([len(b) for b in stored])) / 1000)
    return r, list(zip(ref_out, our_out))


def shard_build(dataset: str, regime: str, n: int) -> tuple[int, int, float]:
    cfg = PreprocessConfig(dataset=dataset, root=str(REALDATA / dataset), regime=regime, size=n, shard_size=1000)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        manifests = preprocess(cfg, tmp, InProcessRunner())
        dt = time.perf_counter() - t
    written = sum(m["totals"]["samples"] for m in manifests.values())
    quarantined = sum(m["totals"]["quarantined"] for m in manifests.values())
    return written, quarantined, dt


def figure(pairs: dict, path: str, per: int = 3, gain: int = 8) -> None:
    """Rows: dataset/regime; per image: reference | ours | |difference| x gain."""
    tiles = []
    for outs in pairs.values():
        row = []
        for a, b in outs[:per]:
            d = np.clip(np.abs(a.astype(np.int16) - b.astype(np.int16)) * gain, 0, 255).astype(np.uint8)
            row.append(np.concatenate([a, b, d, np.full((a.shape[0], 4, 3), 255, np.uint8)], axis=1))
        tiles.append(np.concatenate(row, axis=1))
    Image.fromarray(np.concatenate(tiles, axis=0)).save(path)


def pin_threads(n: int) -> str:
    try:
        import torch
    except ImportError:
        return "torch not installed"
    torch.set_num_threads(n)
    return f"torch threads {torch.get_num_threads()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128, help="N")
    ap.add_argument("--repeat", type=int, default=5, help="passes over the file list per side; the best counts")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--scales", default="1,2", help="stored scales to measure")
    ap.add_argument("--shard-build", action="store_true", help="also time the whole shard build (preprocess)")
    ap.add_argument("--out-png", default=None, help="write reference | ours | 8x|diff| for a few images")
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    files = {d: sorted((REALDATA).glob(g)) for d, g in GLOBS.items()}
    if not all(files.values()):
        sys.exit(f"no CUB/COCO JPEGs under {REALDATA} (set T2I_REALDATA to the realdata folder)")
    n = args.size
    scales = [int(k) for k in args.scales.split(",")]
    print(f"CUB/COCO preprocessing, N = {n}, 1 process, best of {args.repeat} alternated passes, {pin_threads(args.threads)} "
          f"(python bench/bench_preprocess.py --size {n} --repeat {args.repeat} --threads {args.threads})")
    print(f"{'':15} {'imgs':>4} {'ref/s':>6} {'naive/s':>7} {'ours/s':>6} {'vs ref':>6} {'vs naive':>8} {'view/s':>6} "
          f"{'view/naive':>10} {'MAD':>5} {'max':>5} {'naive':>5} {'MAD@v0':>6} {'kB':>4}")
    pairs = {}
    for dataset, fs in files.items():
        for name in ("ae", "prior"):
            for k in scales:
                r, pairs[dataset, name, k] = bench(dataset, fs, Regime(name, n, k), args.repeat)
                print(f"{f'{dataset} {name} x{k}':15} {len(fs):4d} {r['ref']:6.0f} {r['naive']:7.0f} {r['ours']:6.0f} "
                      f"{r['ours'] / r['ref']:5.2f}x {r['ours'] / r['naive']:7.2f}x {r['view']:6.0f} {r['view'] / r['naive']:9.2f}x "
                      f"{r['mad']:5.2f} {r['mad_max']:5.2f} {r['mad_naive']:5.2f} {r['mad0']:6.2f} {r['kb']:4.0f}")
    print("  x1 / x2: stored scale (Regime.scale). ours/s = load_prepared + JPEG q95 encode + decode + apply_view (one view);")
    print("  view/s = JPEG decode + apply_view alone (each epoch's cost once the shards exist).")
    print("  MAD, max, naive: mean absolute difference from the thesis-order reference in 1/255 at view 1 (mean over images,")
    print("  the worst image, the naive chain's mean); MAD@v0: ours at view 0 (no rotation); kB: mean stored JPEG size.")
    print("  targets: MAD <= 2/255, ours >= 2.5x naive")
    if args.shard_build:
        for dataset in files:
            for name in ("ae", "prior"):
                written, quarantined, dt = shard_build(dataset, name, n)
                print(f"shard build {dataset} {name}: {written} written, {quarantined} quarantined, {dt:.2f} s "
                      f"-> {written / dt:.0f} written images/s (quarantine included)")
    if args.out_png:
        figure(pairs, args.out_png)
        print(f"figure: {args.out_png}")


if __name__ == "__main__":
    main()
