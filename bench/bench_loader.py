"""How much of an autoencoder training step waits for data: the old loader against the new, in one process.

Rerun:  t2i mdmnist build --out /tmp/t2i-bench-md --train 32 --test 0 --shard-size 8 --workers 0
        python bench/bench_loader.py --data /tmp/t2i-bench-md/train
        (without --data the set is built there first; --arch / --model for another model)

Training loop as ``train_autoencoder`` runs it (set_epoch, then the stream's batches, every
epoch), timed per step: the time blocked waiting for the next batch (including, at each epoch
start, building the DataLoader and starting its workers) against the whole run, and the same
without the run's first batch (the workers' start, which a real run pays once). Sides, alternated
``--repeat`` times in this process, best (fastest) run of each reported:

- old: a new DataLoader (new worker processes) every epoch, float32 images (3, N, N) in [0, 1]
  made in the workers (the stream before issue 17);
- new: ``stream.loader``, one DataLoader with persistent workers, uint8 images, scaled to
  floats by the training process (``x.float().div_(255)``, as the trainers do on their device).

Both share the thread rule: with C cores and W loader workers, torch runs max(1, C − W) threads
in the training process and 1 in each worker (``stream.loader``'s worker_init; torch's own
default in workers), so trainer and workers never ask for more cores than there are. On this
2-core machine: W = 1, 1 torch thread. ``--oversubscribed`` adds the new loader with torch's
default C threads beside the worker, the setting the issue measured at 19% waiting.

Also printed: the same steps on one batch already in memory (no loading at all), and each side's
slowdown against it, 1 − t_memory / t_side (the figure ``bench_autoencoder`` reports), which
also counts what the workers take from the trainer's cores. The model is ``--arch`` with
``--model`` overrides; the default, dvae_mdmnist with hidden 32 and one block per stage, keeps
the thesis' 128-px input and stack shape at a size that runs in about a minute here.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from t2i_data.stream import ShardStream, decode_and_augment, loader  # noqa: E402
from t2i_models.builders import build_autoencoder  # noqa: E402


def old_decode():
    """The decode before uint8 images: float32 (3, N, N) in [0, 1], made in the worker."""
    new = decode_and_augment(None, 0)

    def decode(sample, epoch):
        out = new(sample, epoch)
        out["image"] = out["image"].float().div_(255)
        return out

    return decode


def old_loader(ds, workers: int):
    """A new DataLoader, so new worker processes, each epoch (``stream.loader`` before issue 17)."""
    for batch in DataLoader(ds, batch_size=None, num_workers=workers):
        batch.pop("verified", None)
        yield batch


def make_model(args):
    torch.manual_seed(0)
    model = build_autoencoder(args.arch, **args.overrides)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def train_step(model, opt, x, i):
    out = model(x, step=i)
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    opt.step()


def run_side(args, side: str, threads: int) -> dict:
    """One timed run of ``args.epochs`` epochs: {"total", "wait", "first" (the run's first batch), "steps"}, seconds."""
    torch.set_num_threads(threads)
    model, opt = make_model(args)
    train_step(model, opt, torch.rand(args.batch, 3, model.cfg.image_size, model.cfg.image_size), 0)  # warm-up, not timed
    old = side == "old"
    ds = ShardStream(args.data, old_decode() if old else decode_and_augment(None, 0), args.batch, seed=0, shuffle_buffer=16)
    wait, first, steps = 0.0, 0.0, 0
    start = time.perf_counter()
    for epoch in range(args.epochs):
        ds.set_epoch(epoch, 0, args.workers)
        t = time.perf_counter()
        for batch in (old_loader(ds, args.workers) if old else loader(ds, args.workers)):
            got = time.perf_counter()
            wait += got - t
            first = first or got - t
            x = batch["image"]
            if x.dtype == torch.uint8:
                x = x.float().div_(255)
            train_step(model, opt, x, steps + 1)
            steps += 1
            t = time.perf_counter()
    total = time.perf_counter() - start
    ds.__dict__.pop("_loaders", None)  # let this run's persistent workers go before the next run
    return {"total": total, "wait": wait, "first": first, "steps": steps}


def run_memory(args, steps: int, threads: int) -> float:
    """Seconds for ``steps`` steps on one batch already in memory."""
    torch.set_num_threads(threads)
    model, opt = make_model(args)
    size = model.cfg.image_size
    x = torch.rand(args.batch, 3, size, size)
    train_step(model, opt, x, 0)
    t = time.perf_counter()
    for i in range(steps):
        train_step(model, opt, x, i + 1)
    return time.perf_counter() - t


def parse_overrides(text: str) -> dict:
    out = {}
    for part in filter(None, text.split(",")):
        k, v = part.split("=")
        out[k.strip()] = int(v) if v.strip().lstrip("-").isdigit() else float(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="", help="an MD-MNIST train shard set (default: built in /tmp/t2i-bench-md)")
    ap.add_argument("--arch", default="dvae_mdmnist")
    ap.add_argument("--model", default="hidden=32,n_rd=1,n_rb=1", help="model overrides, k=v,k=v ('' for the arch as it is)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each side, alternated; the fastest counts")
    ap.add_argument("--oversubscribed", action="store_true", help="also the new loader with torch's default threads")
    args = ap.parse_args()
    args.overrides = parse_overrides(args.model)
    if not args.data:
        root = Path("/tmp/t2i-bench-md")
        if not (root / "train" / "manifest.json").exists():
            cmd = ["t2i", "mdmnist", "build", "--out", str(root), "--train", "32", "--test", "0", "--shard-size", "8", "--workers", "0"]
            print("building the data:", " ".join(cmd), flush=True)
            subprocess.run([sys.executable, "-m", "t2i_models.cli", *cmd[1:]], check=True)
        args.data = str(root / "train")
    cores = len(os.sched_getaffinity(0))
    threads = max(1, cores - args.workers)
    sides = [("old", threads), ("new", threads)] + ([("new", cores)] if args.oversubscribed else [])
    probe = ShardStream(args.data, decode_and_augment(None, 0), args.batch, seed=0)
    per_epoch = probe.batches_per_epoch(args.workers)
    model, _ = make_model(args)
    print(f"CPU, {cores} cores; {args.workers} loader worker(s) with 1 torch thread each, {threads} torch thread(s) in training "
          f"(rule: max(1, cores - workers)); {args.arch} {args.model or ''} ({sum(p.numel() for p in model.parameters()):,} "
          f"parameters, {model.cfg.image_size} px), batch {args.batch}, {args.epochs} epochs of {per_epoch} steps, best of {args.repeat}")
    print("  (python bench/bench_loader.py " + " ".join(sys.argv[1:]) + ")")
    runs: dict = {s: [] for s in sides}
    mem: dict = {t: [] for _, t in sides}
    for _ in range(args.repeat):
        for s in sides:
            runs[s].append(run_side(args, *s))
        for t in mem:
            mem[t].append(run_memory(args, per_epoch * args.epochs, t))
    for (name, t), rs in runs.items():
        best = min(rs, key=lambda r: r["total"])
        ref = min(mem[t])
        label = {"old": "old: DataLoader per epoch, float32", "new": "new: persistent workers, uint8"}[name]
        if t != threads:
            label += f", {t} torch threads"
        n = best["steps"]
        print(f"  {label:48} {1000 * best['total'] / n:7.1f} ms/step  waiting {1000 * best['wait'] / n:6.1f} ms/step = "
              f"{best['wait'] / best['total']:5.1%} of step time   vs batches in memory ({1000 * ref / n:.1f} ms/step, "
              f"{t} threads): {max(0.0, 1 - ref / best['total']):5.1%} slower")
        later = (best["wait"] - best["first"]) / (best["total"] - best["first"])
        print(f"  {'':48} of the waiting, the run's first batch (workers starting) {1000 * best['first']:.0f} ms; "
              f"after it: {later:.1%} of step time")
        waits = ", ".join(f"{r['wait'] / r['total']:.1%}" for r in rs)
        times = ", ".join(f"{1000 * r['total'] / r['steps']:.1f}" for r in rs)
        print(f"  {'':48} every run: waiting {waits}; ms/step {times}")


if __name__ == "__main__":
    main()
