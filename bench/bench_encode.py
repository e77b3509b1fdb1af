"""Pre-encoding speed with the published image tokenizers: JPEG decode and the model overlapped
(``t2i_models.encode.encode_arrays``: a thread decodes the next batches while the model encodes),
against decoding and encoding one batch after the other, in the same run.

Rerun:  python bench/bench_encode.py [--family openai_dvae,taming_vqgan] [--images 16] [--batch 8]
                                     [--threads 2] [--repeats 2] [--device cpu|cuda] [--quick]

Images: the real COCO val2017 JPEGs of ``$T2I_REALDATA`` (``../shared/realdata``), preprocessed
here to 256×256 (the tokenizers' native size, regime ``center``: view 0 is the stored JPEG
decoded), repeated to ``--images``. Models: random-init at the
published sizes (OpenAI dVAE: n_hid 256, 8192 codes; taming VQGAN f16: ch 128, ch_mult
1,1,2,2,4, attention at 16, 16384 codes; the speed of a forward does not depend on the values).
``--quick``: small widths and 8 images, a check that it runs.

Sides, alternated for ``--repeats`` rounds, each side's best counts (``benchkit``):
- decode, 1 thread and 2 threads: the stored JPEGs → (256, 256, 3) uint8 views (``sample_views``);
- model alone: ``encode_arrays`` on views decoded before the clock starts;
- sequential: decode a batch, then encode it, batch after batch;
- overlapped: ``encode_arrays`` fed by the decoding generator (what ``t2i encode`` runs).
Prints images/s for each; overlapped against the slower of (decode at 2 threads, model alone),
whose target is ≥ 0.85; overlapped against sequential; and the share of the overlapped run the
model waits for data, 1 − t_model / t_overlapped (on a GPU: the share of time the GPU waits).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import add_args, alternate, best, pin_threads, rounds, timed  # noqa: E402
from t2i_data.augment import regime_of  # noqa: E402
from t2i_data.manifest import load_manifest  # noqa: E402
from t2i_data.preprocess import PreprocessConfig, preprocess  # noqa: E402
from t2i_data.runner import InProcessRunner  # noqa: E402
from t2i_data.tario import iter_samples  # noqa: E402
from t2i_models.encode import encode_arrays, sample_views  # noqa: E402
from t2i_models.pretrained.openai_dvae import OpenAIDVAE, OpenAIDVAEConfig  # noqa: E402
from t2i_models.pretrained.taming_vqgan import TamingVQGAN, TamingVQGANConfig  # noqa: E402

SIZE = 256


def stored_samples(realdata: Path, work: Path, n: int):
    """(samples, regime): ``n`` stored 256-px COCO samples (the 33 real JPEGs, repeated)."""
    root = realdata / "coco"
    if not (root / "val2017").is_dir():
        raise SystemExit(f"{root}: no COCO sample; set T2I_REALDATA to the shared realdata folder")
    cfg = PreprocessConfig("coco", str(root), regime="center", size=SIZE, shard_size=64)
    preprocess(cfg, work, InProcessRunner())
    split = work / "val2017"
    regime = regime_of(load_manifest(split / "manifest.json"))
    samples = [s for shard in sorted(split.glob("*.tar")) for s in iter_samples(shard)]
    return [samples[i % len(samples)] for i in range(n)], regime, cfg.regime


def build(family: str, quick: bool, device: str):
    torch.manual_seed(0)
    if family == "openai_dvae":
        cfg = OpenAIDVAEConfig(vocab_size=512, enc_hid=64, dec_hid=64, dec_init=32) if quick else OpenAIDVAEConfig()
        model = OpenAIDVAE(cfg)
    elif family == "taming_vqgan":
        cfg = TamingVQGANConfig(vocab_size=1024, embed_dim=32, ch=32, z_channels=32) if quick else TamingVQGANConfig()
        model = TamingVQGAN(cfg)
    else:
        raise SystemExit(f"unknown family {family!r}: openai_dvae, taming_vqgan")
    return model.to(device).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default="openai_dvae,taming_vqgan")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true")
    add_args(ap, repeats=2, threads=2)
    args = ap.parse_args()
    if args.quick:
        args.images, args.repeats = 8, 1
    threads = pin_threads(args.threads)
    realdata = Path(os.environ.get("T2I_REALDATA", Path(__file__).resolve().parents[1].parent / "shared" / "realdata"))
    with tempfile.TemporaryDirectory() as tmp:
        samples, regime, regime_name = stored_samples(realdata, Path(tmp), args.images)
        n, b = len(samples), args.batch

        def views_of(s):
            return sample_views(s, regime, 0, 1)[0][1]

        def decoded():
            for s in samples:
                yield views_of(s)

        def decode_1():
            list(decoded())

        def decode_2():
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(views_of, samples))

        ready = list(decoded())
        print(f"{n} COCO images ({regime_name} regime, {SIZE}x{SIZE}), batch {b}, torch threads {threads}, device {args.device}, "
              f"{args.repeats} round(s), best of each")
        for family in args.family.split(","):
            model = build(family, args.quick, args.device)
            params = sum(p.numel() for p in model.parameters()) / 1e6

            def sequential():
                with torch.inference_mode():
                    for i in range(0, n, b):
                        batch = np.stack([views_of(s) for s in samples[i : i + b]])
                        x = torch.from_numpy(batch).to(args.device).permute(0, 3, 1, 2).float().div_(255)
                        model.encode(x).cpu()

            encode_arrays(model, ready[:b], b)  # warm-up: first-call allocations, cuDNN choices
            sides = {"decode, 1 thread": lambda: timed(decode_1), "decode, 2 threads": lambda: timed(decode_2),
                     "model alone": lambda: timed(lambda: encode_arrays(model, ready, b)),
                     "sequential": lambda: timed(sequential), "overlapped": lambda: timed(lambda: encode_arrays(model, decoded(), b))}
            times = alternate(sides, args.repeats)
            rate = {k: n / best(v) for k, v in times.items()}
            print(f"\n{family} ({params:.1f}M parameters, {model.cfg.vocab_size} codes, grid {model.cfg.grid}x{model.cfg.grid})")
            for k, v in times.items():
                print(f"  {k:18s} {rate[k]:8.2f} images/s   (rounds: {rounds(v, '.2f')} s)")
            slower = min(rate["decode, 2 threads"], rate["model alone"])
            which = "decode at 2 threads" if rate["decode, 2 threads"] < rate["model alone"] else "the model alone"
            print(f"  overlapped / slower part ({which}): {rate['overlapped'] / slower:.3f} (target >= 0.85)")
            print(f"  overlapped / sequential: {rate['overlapped'] / rate['sequential']:.3f}x")
            print(f"  share of the overlapped run the model waits for data: {max(0.0, 1 - best(times['model alone']) / best(times['overlapped'])):.1%}")


if __name__ == "__main__":
    main()
