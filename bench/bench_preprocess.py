"""CUB / COCO preprocessing speed and fidelity against a thesis-order reference, in the same run.

Rerun:  python bench/bench_preprocess.py [--size 128] [--repeat 5] [--out-png diff.png]
  Images: the real JPEGs in $T2I_REALDATA/{cub,coco} (default ../shared/realdata).

Per dataset and regime, one process (1 core), with the same random draws for both chains
(``Regime.draw(seed=0, key, index=1, ...)``; view 1, since view 0 is the identity):
  reference: full decode -> (prior: mirror-pad to square) -> rotate the FULL-SIZE image
             (bicubic, as ours) -> ONE LANCZOS resize -> crop N x N -> flip
  ours:      load_prepared (DCT-scaled decode + reduce + LANCZOS) -> JPEG q95 (the shard)
             -> decode -> Regime.apply_view (rotate + crop + flip in one affine resampling)
Prints images/s per core for both, their ratio (target >= 2.5x), ours split into the
preprocess step and the online view step, and the mean absolute pixel difference between the
N x N outputs in 1/255 (target <= 2/255). Then times the whole shard build (``preprocess``).
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
from t2i_data.regimes import Regime
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


def ours_pre(path: Path, regime: Regime) -> bytes:
    return encode_jpeg(load_prepared(path, regime)[0], 95)


def ours_view(data: bytes, regime: Regime, p) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(regime.apply_view(im.convert("RGB"), p))


def per_s(fn, items, repeat: int) -> float:
    t = time.perf_counter()
    for _ in range(repeat):
        for it in items:
            fn(*it)
    return repeat * len(items) / (time.perf_counter() - t)


def bench(dataset: str, files: list[Path], regime: Regime, repeat: int):
    keys = [f"{dataset}/{f.stem}" for f in files]
    stored = [ours_pre(f, regime) for f in files]  # also warms the page cache and imports
    sizes = [Image.open(io.BytesIO(b)).size for b in stored]
    params = [regime.draw(0, k, 1, s, False) for k, s in zip(keys, sizes)]
    ref_out = [reference(f, regime, p) for f, p in zip(files, params)]
    our_out = [ours_view(b, regime, p) for b, p in zip(stored, params)]
    mad = [np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() for a, b in zip(ref_out, our_out)]
    ident = [regime.draw(0, k, 0, s, False) for k, s in zip(keys, sizes)]  # view 0: no rotation, centred crop
    mad0 = [np.abs(reference(f, regime, p).astype(np.int16) - ours_view(b, regime, p).astype(np.int16)).mean()
            for f, b, p in zip(files, stored, ident)]
    r = {
        "ref": per_s(lambda f, p: reference(f, regime, p), list(zip(files, params)), repeat),
        "ours": per_s(lambda f, p: ours_view(ours_pre(f, regime), regime, p), list(zip(files, params)), repeat),
        "pre": per_s(lambda f: ours_pre(f, regime), [(f,) for f in files], repeat),
        "view": per_s(lambda b, p: ours_view(b, regime, p), list(zip(stored, params)), repeat),
        "mad": float(np.mean(mad)), "mad_max": float(np.max(mad)), "mad0": float(np.mean(mad0)),
    }
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128, help="N")
    ap.add_argument("--repeat", type=int, default=5, help="passes over the file list per measurement")
    ap.add_argument("--out-png", default=None, help="write reference | ours | 8x|diff| for a few images")
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    files = {d: sorted((REALDATA).glob(g)) for d, g in GLOBS.items()}
    if not all(files.values()):
        sys.exit(f"no CUB/COCO JPEGs under {REALDATA} (set T2I_REALDATA to the realdata folder)")
    n = args.size
    print(f"CUB/COCO preprocessing, N = {n}, 1 core, {args.repeat} passes "
          f"(python bench/bench_preprocess.py --size {n} --repeat {args.repeat})")
    print(f"{'':11} {'imgs':>4} {'ref/s':>7} {'ours/s':>7} {'speed-up':>8} {'pre/s':>7} {'view/s':>7} {'MAD/255':>8} {'max':>6} {'MAD@v0':>7}")
    pairs = {}
    for dataset, fs in files.items():
        for name in ("ae", "prior"):
            r, pairs[dataset, name] = bench(dataset, fs, Regime(name, n), args.repeat)
            print(f"{dataset + ' ' + name:11} {len(fs):4d} {r['ref']:7.0f} {r['ours']:7.0f} {r['ours'] / r['ref']:7.2f}x "
                  f"{r['pre']:7.0f} {r['view']:7.0f} {r['mad']:8.2f} {r['mad_max']:6.2f} {r['mad0']:7.2f}")
    print("  targets: speed-up >= 2.5x; MAD <= 2/255 (mean over images; 'max' is the worst image's mean)")
    print("  pre/s = load_prepared + JPEG q95 4:4:4 encode; view/s = JPEG decode + apply_view")
    print("  MAD@v0 = the same comparison for view 0 (no rotation): DCT-scaled decode + JPEG storage alone")
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
