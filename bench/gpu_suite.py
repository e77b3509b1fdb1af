"""The GPU run's figures in one script: CUDA tests, then training throughput, FLOP/s against the
GPU's bf16 peak, data stalls, encoding and KV-cached sampling speed for the thesis-size models.

Rerun:  python bench/gpu_suite.py --out gpu_suite.json [--budget-s 450] [--rounds 3] [--steps 10]
        python bench/gpu_suite.py --smoke --out smoke.json      (tiny models on the CPU, seconds; the default without CUDA)

What it runs, in this order, each measurement on its own (an error is written into its row and
the table, and the rest still run); a measurement that would not fit in what is left of
``--budget-s`` (wall seconds from the start, default 450 = 7.5 minutes) is skipped and listed:

1. The CUDA tests: ``pytest -q -m gpu`` (the marker tests/ uses for the tests that need a CUDA
   device), at most ``--tests-timeout-s`` seconds; pass / fail / skip / error counts.
2. For each model (thesis sizes, Tables 5-7; batch = the thesis' batch size of that model):
   ``dvae_mdmnist`` (128 px, batch 32, Table 6), ``dvae_cub128`` (batch 16, Table 7),
   ``g1_mdmnist`` and ``g2_mdmnist`` (MD-MNIST token spaces: 24 text ids, L = 12, 256 codes on a
   32 × 32 grid, batch 12, Table 6), ``g2_cub128`` (batch 32, Table 7) with CUB token spaces
   chosen here and printed: 5,000 text ids (a word vocabulary of CUB's captions is ~5k), L = 64,
   pad id 0, 512 codes on a 32 × 32 grid:
   - training step time as the trainers take it (bf16 autocast on CUDA, channels_last for the
     autoencoders, fused Adam / AdamW, TF32 on for fp32 matmuls): ``--warmup`` steps, then
     ``--rounds`` rounds of ``--steps`` steps between ``torch.cuda.synchronize()`` calls, best
     round; samples/s and, for priors, tokens/s (text + image tokens, as train_prior counts);
   - FLOPs of one training step (forward + backward) counted by ``torch.utils.flop_counter.
     FlopCounterMode`` (matmuls, convolutions, attention; attention counted over the full T × T
     even when causal), achieved TFLOP/s = FLOPs / best step time, and the fraction of the GPU's
     bf16 dense peak (an H100 SXM or H200: 989 TFLOP/s; the table below, or ``--peak-tflops``);
   - the share of step time spent waiting for data: the same steps fed from a real loader
     against from one batch already on the device, rounds alternating, best of each:
     1 − t_memory / t_streamed. Autoencoders: an MD-MNIST shard set built here with the project's
     own build (PNG, 128 px), through ``ShardStream`` + ``stream.loader`` as train_autoencoder
     reads it, with the trainer's default number of loader workers (and more, ``--workers``);
     the CUB-128 dVAE reads the same MD-MNIST PNGs (CUB's JPEGs are not here). Priors: a
     synthetic aligned token-shard pair of the model's shape through ``TokenStream``;
   - encoding images/s (autoencoders): ``model.encode`` in batches of 64 on the device, fp32 (as
     ``t2i encode``) and under bf16 autocast;
   - KV-cached sampling tokens/s (priors): ``model.generate`` of the whole 32 × 32 grid for
     ``--sample-batch`` prompts, bf16 autocast;
   - which scaled_dot_product_attention kernel runs (priors): the CUDA kernels of one training
     forward named from the profiler (flash / efficient / cudnn / math), and whether a forward +
     backward runs with only FlashAttention allowed (``sdpa_kernel(SDPBackend.FLASH_ATTENTION)``).
3. One table on stdout, and everything as JSON in ``--out``.

On CPU (``--smoke``) the same measurements run on the tiny builders (dvae_tiny at 128 px, g1_tiny,
g2_tiny; the CUB row on g2_tiny with L = 64) with 2 timed steps: a check that every path works,
not figures; there is no peak, so the fraction of peak is null.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

# bf16 dense (no sparsity) tensor-core peak, TFLOP/s, from NVIDIA's data sheets, matched in this
# order against torch.cuda.get_device_name(): H100 SXM5 and H200 (the same GH100 compute) 989;
# H100 PCIe 756; H100 NVL 835; A100 312; L40S 362. Any other device: --peak-tflops, else no fraction.
PEAKS = (("GH200", 989.0), ("H200", 989.0), ("H100 PCIE", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H800", 989.0),
         ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0))

CUB_TOKENS = dict(text_vocab=5000, text_len=64, pad_id=0, image_vocab=512, grid=32)


def peak_tflops(name: str) -> float | None:
    """The bf16 dense peak (TFLOP/s) assumed for a device name, or None when unknown."""
    up = name.upper()
    for key, value in PEAKS:
        if key in up:
            return value
    return None


@dataclass
class Model:
    """One row of the table: ``name`` is the thesis configuration, ``arch`` the builder that runs
    (the same, except in smoke mode), ``over`` its overrides / token spaces."""
    name: str
    kind: str  # "autoencoder" or "prior"
    arch: str
    batch: int
    over: dict = field(default_factory=dict)
    captions: int = 1  # token shards for the data-wait measurement: captions and views per sample
    views: int = 1


def models(smoke: bool) -> list[Model]:
    from t2i_models.prior_builders import MDMNIST_TOKENS

    if not smoke:
        return [Model("dvae_mdmnist", "autoencoder", "dvae_mdmnist", 32),
                Model("dvae_cub128", "autoencoder", "dvae_cub128", 16),
                Model("g1_mdmnist", "prior", "g1_mdmnist", 12, dict(MDMNIST_TOKENS)),
                Model("g2_mdmnist", "prior", "g2_mdmnist", 12, dict(MDMNIST_TOKENS)),
                Model("g2_cub128", "prior", "g2_cub128", 32, dict(CUB_TOKENS), captions=10, views=4)]
    tiny = dict(MDMNIST_TOKENS, image_vocab=32, grid=4)
    small = dict(image_size=128, hidden=8)  # the MD-MNIST shards hold 128 px images
    return [Model("dvae_mdmnist", "autoencoder", "dvae_tiny", 4, small),
            Model("dvae_cub128", "autoencoder", "dvae_tiny", 2, small),
            Model("g1_mdmnist", "prior", "g1_tiny", 4, tiny),
            Model("g2_mdmnist", "prior", "g2_tiny", 4, tiny),
            Model("g2_cub128", "prior", "g2_tiny", 4, dict(CUB_TOKENS, image_vocab=32, grid=4), captions=10, views=4)]


# -- running one measurement under the deadline --------------------------------------------------
class Overtime(Exception):
    pass


def _alarm(signum, frame):
    raise Overtime("ran past its time cap")


class Budget:
    """Wall-clock budget from the start; ``run(label, cost, fn)`` runs ``fn`` when ``cost``
    seconds (an estimate) still fit, under a SIGALRM cap of what is left, and returns its result
    or ``{"error": ...}`` / ``{"skipped": ...}``; errors never propagate."""

    def __init__(self, seconds: float, verbose: bool = True) -> None:
        self.t0 = time.monotonic()
        self.seconds = seconds
        self.skipped: list[str] = []
        self.errors: list[str] = []
        self.verbose = verbose

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.t0)

    def run(self, label: str, cost: float, fn):
        left = self.left()
        if left < cost:
            self.skipped.append(f"{label} (needs ~{cost:.0f} s, {max(left, 0):.0f} s left)")
            return {"skipped": f"~{cost:.0f} s needed, {max(left, 0):.0f} s left"}
        # a hung measurement (a stuck loader, say) costs at most max(4 × its estimate, 60 s), and
        # never the last few seconds, kept to print and write the results
        cap = max(1.0, min(left - 5.0, max(4 * cost, 60.0)))
        use_alarm = hasattr(signal, "setitimer")
        if use_alarm:
            old = signal.signal(signal.SIGALRM, _alarm)
            signal.setitimer(signal.ITIMER_REAL, cap)
        t = time.monotonic()
        try:
            out = fn()
        except BaseException as e:  # noqa: BLE001 — one failure is reported; the suite goes on (Ctrl-C still stops it)
            if isinstance(e, KeyboardInterrupt):
                raise
            msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
            self.errors.append(f"{label}: {msg}")
            if self.verbose:
                print(f"  [{label}] failed: {msg}", file=sys.stderr)
                traceback.print_exc(limit=3, file=sys.stderr)
            out = {"error": msg}
            if torch.cuda.is_available():
                with contextlib.suppress(Exception):
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
        finally:
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)
        if self.verbose:
            print(f"  [{label}] {time.monotonic() - t:.1f} s", file=sys.stderr)
        return out


# -- the CUDA tests ------------------------------------------------------------------------------
def cuda_tests(timeout: float) -> dict:
    """``pytest -q -m gpu`` in a subprocess, at most ``timeout`` seconds; counts from its JUnit XML."""
    import xml.etree.ElementTree as ET

    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "--continue-on-collection-errors",
               f"--junitxml={xml}", "tests"]  # a machine without the test extras (datasets) still runs the CUDA tests
        t = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
            rc, tail = proc.returncode, (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        except subprocess.TimeoutExpired:
            rc, tail = None, [f"timed out after {timeout:.0f} s"]
        res = {"command": " ".join(cmd[2:]), "rc": rc, "seconds": round(time.monotonic() - t, 1), "tail": tail}
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        if xml.is_file():
            for suite in ET.parse(xml).getroot().iter("testsuite"):
                for k in counts:
                    counts[k] += int(suite.get(k, 0))
        res.update(passed=counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"], failed=counts["failures"],
                   errors=counts["errors"], skipped=counts["skipped"])
        return res


# -- models and steps ----------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(m: Model, device: torch.device):
    torch.manual_seed(0)
    if m.kind == "autoencoder":
        from t2i_models.builders import build_autoencoder

        model = build_autoencoder(m.arch, **m.over).to(device)
        if device.type == "cuda":
            model.to(memory_format=torch.channels_last)
    else:
        from t2i_models.prior_builders import PRIORS

        model = PRIORS[m.arch](**m.over).to(device)
    return model


def optimizer(model, device: torch.device, prior: bool):
    """Adam (autoencoders) / AdamW (priors), fused on CUDA, as the trainers make them."""
    kw = {"fused": True} if device.type == "cuda" else {}
    cls = torch.optim.AdamW if prior else torch.optim.Adam
    try:
        return cls(model.parameters(), lr=1e-4, **kw)
    except (RuntimeError, TypeError):
        return cls(model.parameters(), lr=1e-4)


def to_images(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch's images on the device as float [0, 1] (the stream ships uint8 or float)."""
    x = x.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def make_step(m: Model, model, opt, device: torch.device):
    """``step(batch)``: one training step as the trainer takes it; ``batch`` is the model's input
    already on the device (an image tensor, or a (text, image) pair of int64)."""
    bf16 = device.type == "cuda"
    counter = [0]

    def step(batch) -> None:
        model.train()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if m.kind == "autoencoder":
                out = model(batch, step=counter[0])
            else:
                out = model(*batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        counter[0] += 1

    return step


def synthetic_batch(m: Model, model, device: torch.device, batch: int | None = None):
    b = batch or m.batch
    g = torch.Generator().manual_seed(0)
    if m.kind == "autoencoder":
        s = model.cfg.image_size
        return to_images(torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8, generator=g), device)
    c = model.cfg
    text = torch.randint(0, c.text_vocab, (b, c.text_len), generator=g)
    text[:, c.text_len // 2:] = c.pad_id  # half the caption padding, as short captions are
    text[:, 0] = (c.pad_id + 1) % c.text_vocab
    image = torch.randint(0, c.image_vocab, (b, c.grid * c.grid), generator=g)
    return text.to(device), image.to(device)


def time_steps(step, batches, n: int, device: torch.device) -> float:
    """Seconds for ``n`` steps, ``batches()`` giving each step's input."""
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        step(batches())
    sync(device)
    return time.perf_counter() - t


def count_flops(step, batch) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        step(batch)
    return float(fc.get_total_flops())


def tokens_per_sample(model) -> int:
    c = model.cfg
    return c.text_len + c.grid * c.grid


def train_measure(m: Model, device: torch.device, args, peak: float | None) -> dict:
    model = build(m, device)
    opt = optimizer(model, device, m.kind == "prior")
    step = make_step(m, model, opt, device)
    batch = synthetic_batch(m, model, device)
    for _ in range(args.warmup):
        step(batch)
    sync(device)
    flops = count_flops(step, batch)
    times = [time_steps(step, lambda: batch, args.steps, device) / args.steps for _ in range(args.rounds)]
    best = min(times)
    res = {"params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2), "batch": m.batch,
           "step_ms": round(best * 1e3, 2), "step_ms_rounds": [round(t * 1e3, 2) for t in times],
           "samples_per_s": float(f"{m.batch / best:.4g}"), "gflop_per_step": round(flops / 1e9, 2),
           "tflops": round(flops / best / 1e12, 3), "peak_fraction": round(flops / best / 1e12 / peak, 4) if peak else None}
    if m.kind == "prior":
        res["tokens_per_s"] = round(m.batch * tokens_per_sample(model) / best, 1)
    return res


# -- data waits ----------------------------------------------------------------------------------
def md_shards(root: Path, n: int) -> Path:
    """An MD-MNIST train split of ``n`` samples (embedded digits, seed 0) built with the project's build."""
    from t2i_data.mdmnist import MDMNISTConfig, build as build_md
    from t2i_data.runner import InProcessRunner

    out = root / f"md-{n}"
    if not (out / "train" / "manifest.json").is_file():
        build_md(MDMNISTConfig(seed=0, train=n, test=0, shard_size=max(16, n // 16)), out, InProcessRunner(), splits=("train",))
    return out / "train"


def token_shards(root: Path, m: Model, model, n: int) -> tuple[Path, Path]:
    from bench_token_stream import write_sets

    c = model.cfg
    d = root / f"tok-{m.name}-{n}"
    if not (d / "img" / "manifest.json").is_file():
        for k in ("img", "txt", "both"):
            (d / k).mkdir(parents=True, exist_ok=True)
        write_sets(d, n, m.captions, c.text_len, m.views, text_vocab=c.text_vocab, image_vocab=c.image_vocab, grid=c.grid,
                   pad_id=c.pad_id, shard=max(16, n // 16), both=False)
    return d / "img", d / "txt"


def wait_measure(m: Model, device: torch.device, args, tmp: Path, workers: int) -> dict:
    """Share of step time spent waiting for data: streamed rounds against in-memory rounds,
    alternating, best of each; also the time blocked in the loader's ``next`` per streamed step."""
    from t2i_data.stream import ShardStream, decode_and_augment, loader

    model = build(m, device)
    opt = optimizer(model, device, m.kind == "prior")
    step = make_step(m, model, opt, device)
    # one epoch per round; each round takes steps + 1 batches of it (the loader's workers share its shards)
    need = max(256, 2 * (args.steps + 1) * m.batch + 4 * m.batch * max(workers, 1))
    need = 1 << (need - 1).bit_length()  # a few sizes only, so models of one kind share a set
    if m.kind == "autoencoder":
        ds = ShardStream(md_shards(tmp, need), decode_and_augment(None, 0), m.batch, seed=0)

        def to_input(b):
            return to_images(b["image"], device)
    else:
        from t2i_data.token_stream import TokenStream

        img, txt = token_shards(tmp, m, model, need)
        ds = TokenStream(img, txt, batch_size=m.batch, seed=0)

        def to_input(b):
            return b["text"].to(device, non_blocking=True).long(), b["image"].to(device, non_blocking=True).long()

    pin = device.type == "cuda"
    fixed = None
    streamed, memory, blocked = [], [], []
    for r in range(args.rounds + 1):  # round 0 warms up both sides (workers, allocator, kernels)
        ds.set_epoch(r, 0, workers)
        it = loader(ds, workers, pin_memory=pin)
        first = to_input(next(it))
        fixed = fixed if fixed is not None else first
        step(first)
        wait = [0.0]

        def next_batch():
            t = time.perf_counter()
            b = to_input(next(it))
            wait[0] += time.perf_counter() - t
            return b

        ts = time_steps(step, next_batch, args.steps, device)
        tm = time_steps(step, lambda: fixed, args.steps, device)
        it.close()  # the rest of the epoch is not needed; the next round starts the next epoch
        if r:
            streamed.append(ts)
            memory.append(tm)
            blocked.append(wait[0] / ts)
    it = None
    ds.__dict__.pop("_loaders", None)  # a loader that keeps its workers: shut them down here,
    gc.collect()  # not in a worker forked later for another stream
    s, mem = min(streamed), min(memory)
    return {"workers": workers, "data_wait": round(max(0.0, 1 - mem / s), 4), "blocked_in_next": round(min(blocked), 4),
            "streamed_samples_per_s": round(args.steps * m.batch / s, 1), "memory_samples_per_s": round(args.steps * m.batch / mem, 1)}


# -- encoding, sampling, attention kernels -------------------------------------------------------
def encode_measure(m: Model, device: torch.device, args) -> dict:
    model = build(m, device).eval()
    n, bs = args.encode_n, 64 if device.type == "cuda" else 4
    x = synthetic_batch(m, model, device, batch=bs)
    res = {}
    for label, bf16 in (("encode_fp32_images_per_s", False), ("encode_bf16_images_per_s", True)):
        if bf16 and device.type != "cuda":
            continue
        best = math.inf
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            model.encode(x)
            for _ in range(args.rounds):
                sync(device)
                t = time.perf_counter()
                for _ in range(max(1, n // bs)):
                    model.encode(x)
                sync(device)
                best = min(best, time.perf_counter() - t)
        res[label] = round(max(1, n // bs) * bs / best, 1)
    return res


def sample_measure(m: Model, device: torch.device, args) -> dict:
    model = build(m, device).eval()
    text, _ = synthetic_batch(m, model, device, batch=args.sample_batch)
    n = model.cfg.grid * model.cfg.grid
    bf16 = device.type == "cuda"
    best = math.inf
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        # warm-up at the measured batch: on an H200 the first generate of a batch shape took 42.7 s and
        # the next 4.8 s (g1_mdmnist, 16 x 1,024 tokens; the 2026-12-01 run), so a batch-1 warm-up left
        # the timed call paying it and ran past its cap
        model.generate(text, temperature=1.0)
        for _ in range(1):
            sync(device)
            t = time.perf_counter()
            out = model.generate(text, temperature=1.0)
            sync(device)
            best = min(best, time.perf_counter() - t)
    assert out.shape == (len(text), n)
    return {"sample_batch": len(text), "sample_s": round(best, 3), "sample_tokens_per_s": round(len(text) * n / best, 1)}


def kernel_kind(name: str) -> str | None:
    n = name.lower()
    if "flash" in n:
        return "flash"
    if "cudnn" in n and ("sdpa" in n or "attn" in n or "attention" in n or "fmha" in n):
        return "cudnn"
    if "fmha" in n or "efficient_attention" in n or "mem_efficient" in n or "cutlassf" in n or "cutlassb" in n:
        return "efficient"
    return None


def sdpa_measure(m: Model, device: torch.device, args) -> dict:
    """Kernels one training forward + backward runs (profiler), and whether it runs with only
    FlashAttention allowed."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = build(m, device)
    opt = optimizer(model, device, True)
    step = make_step(m, model, opt, device)
    batch = synthetic_batch(m, model, device)
    step(batch)
    res = {}
    if device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step(batch)
            sync(device)
        kinds = sorted({k for e in prof.key_averages() if (k := kernel_kind(e.key))})
        res["sdpa_kernels"] = ",".join(kinds) or "math"
    else:
        res["sdpa_kernels"] = "cpu"
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            step(batch)
            sync(device)
        res["flash_only"] = "ok"
    except RuntimeError as e:
        res["flash_only"] = "refused: " + (str(e).strip().splitlines() or [""])[0][:160]
    return res


def default_workers() -> tuple[int, int]:
    """The autoencoder and prior trainers' default ``num_workers`` (2 and 1 when unreadable)."""
    try:
        from t2i_models.train_autoencoder import TrainConfig
        from t2i_models.train_prior import PriorTrainConfig

        return (int(TrainConfig.__dataclass_fields__["num_workers"].default),
                int(PriorTrainConfig.__dataclass_fields__["num_workers"].default))
    except Exception:  # noqa: BLE001 — a renamed field costs the default, not the run
        return 2, 1


# -- the suite -----------------------------------------------------------------------------------
COSTS = {"train": (25, 1.5), "wait": (30, 2), "encode": (10, 0.5), "sample": (45, 1), "sdpa": (10, 0.5)}  # GPU s, smoke s


def run_suite(args) -> dict:
    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    smoke = not cuda
    if smoke:
        args.steps, args.rounds, args.warmup = 1, min(args.rounds, 2), 1
        args.encode_n, args.sample_batch = min(args.encode_n, 8), min(args.sample_batch, 2)
    threads = args.threads or (min(8, os.cpu_count() or 1) if cuda else 1)
    torch.set_num_threads(threads)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # as the trainers: TF32 for fp32 matmuls
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()})"
    peak = args.peak_tflops or (peak_tflops(name) if cuda else None)
    budget = Budget(args.budget_s, verbose=not args.quiet)
    result = {"device": name, "smoke": smoke, "peak_tflops_bf16_dense": peak, "torch": torch.__version__,
              "cuda": torch.version.cuda if cuda else None, "threads": threads, "cudnn_benchmark": torch.backends.cudnn.benchmark,
              "budget_s": args.budget_s, "settings": {k: getattr(args, k) for k in ("warmup", "steps", "rounds", "encode_n", "sample_batch")},
              "cub_tokens": CUB_TOKENS, "tests": None, "rows": []}
    print(f"{name}: bf16 dense peak assumed {peak if peak else 'unknown'} TFLOP/s; torch {torch.__version__}, {threads} threads; "
          f"{'SMOKE (tiny models, CPU)' if smoke else 'thesis-size models'}; budget {args.budget_s:.0f} s", flush=True)
    print(f"CUB-128 token spaces (chosen here): {CUB_TOKENS}", flush=True)
    if cuda and not args.skip_tests:
        result["tests"] = budget.run("cuda tests", 20, lambda: cuda_tests(min(args.tests_timeout_s, max(10.0, budget.left() - 60))))
    # the trainers' default loader workers first (their figure is the row's), then --workers
    ae_default, prior_default = default_workers()
    ae_workers = [1] if smoke else [ae_default] + [w for w in args.workers if w >= 0 and w != ae_default]
    prior_workers = [1] if smoke else [prior_default]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for m in models(smoke):
            if args.only and m.name not in args.only:
                continue
            row = {"model": m.name, "arch": m.arch, "kind": m.kind, "overrides": m.over}
            k = 1 if smoke else 0
            row.update(budget.run(f"{m.name} train", COSTS["train"][k], lambda: train_measure(m, device, args, peak)))
            waits = {}
            workers = ae_workers if m.kind == "autoencoder" else prior_workers
            for w in workers:
                waits[str(w)] = budget.run(f"{m.name} data wait ({w} workers)", COSTS["wait"][k],
                                           lambda: wait_measure(m, device, args, tmp, w))
            row["data_wait_by_workers"] = waits
            first = waits[str(workers[0])] if waits else {}
            row["data_wait"] = first.get("data_wait")
            row["data_wait_workers"] = first.get("workers")
            if m.kind == "autoencoder":
                row.update(budget.run(f"{m.name} encode", COSTS["encode"][k], lambda: encode_measure(m, device, args)))
            else:
                row.update(budget.run(f"{m.name} sample", COSTS["sample"][k], lambda: sample_measure(m, device, args)))
                row.update(budget.run(f"{m.name} sdpa", COSTS["sdpa"][k], lambda: sdpa_measure(m, device, args)))
            row["errors"] = [e for e in budget.errors if e.startswith(m.name + " ")]
            result["rows"].append(row)
            print(f"  {m.name}: done, {budget.left():.0f} s of the budget left", file=sys.stderr, flush=True)
    result["skipped"] = budget.skipped
    result["errors"] = budget.errors
    result["seconds"] = round(time.monotonic() - budget.t0, 1)
    return result


def fmt(v, spec: str = ",.0f") -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return format(v, spec)


def table(result: dict) -> str:
    cols = [("model", 13), ("batch", 5), ("step ms", 8), ("samples/s", 10), ("tokens/s", 10), ("TFLOP/s", 8), ("% peak", 7),
            ("data wait", 10), ("encode img/s", 12), ("sample tok/s", 12), ("SDPA kernels", 14), ("flash only", 10)]
    lines = [" ".join(f"{c:>{w}}" if i else f"{c:<{w}}" for i, (c, w) in enumerate(cols))]
    for r in result["rows"]:
        pf = r.get("peak_fraction")
        wait = r.get("data_wait")
        enc = r.get("encode_bf16_images_per_s", r.get("encode_fp32_images_per_s"))
        flash = r.get("flash_only")
        vals = [r["model"], fmt(r.get("batch"), "d"), fmt(r.get("step_ms"), ".1f"), fmt(r.get("samples_per_s"), ",.1f"),
                fmt(r.get("tokens_per_s")), fmt(r.get("tflops"), ".3g"), "-" if pf is None else f"{pf:.1%}",
                "-" if wait is None else f"{wait:.1%} ({r.get('data_wait_workers')}w)", fmt(enc), fmt(r.get("sample_tokens_per_s")),
                r.get("sdpa_kernels") or "-", "-" if flash is None else ("ok" if flash == "ok" else "refused")]
        lines.append(" ".join(f"{str(v):>{w}}" if i else f"{str(v):<{w}}" for i, (v, (_, w)) in enumerate(zip(vals, cols))))
        if r.get("errors"):
            lines += [f"    ! {e}" for e in r["errors"]]
        extra = [f"{w} workers {d['data_wait']:.1%}" for w, d in r.get("data_wait_by_workers", {}).items() if "data_wait" in d]
        if len(extra) > 1:
            lines.append(f"    data wait by loader workers: {', '.join(extra)}")
    t = result.get("tests")
    if t:
        if "passed" in t:
            lines.append(f"CUDA tests ({t['command']}): {t['passed']} passed, {t['failed']} failed, {t['errors']} errors, "
                         f"{t['skipped']} skipped in {t['seconds']} s (rc {t['rc']})")
        else:
            lines.append(f"CUDA tests: {t}")
    lines.append(f"peak assumed: {fmt(result['peak_tflops_bf16_dense'], '.0f')} TFLOP/s bf16 dense ({result['device']}); "
                 f"encode column: bf16 autocast on GPU, fp32 on CPU; data wait = 1 - t(from memory) / t(from the loader), best rounds")
    if result["skipped"]:
        lines.append("skipped for the budget: " + "; ".join(result["skipped"]))
    lines.append(f"total {result['seconds']} s")
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_suite.json", help="JSON results file")
    ap.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget; measurements that do not fit are skipped")
    ap.add_argument("--smoke", action="store_true", help="tiny models on the CPU (the default when CUDA is unavailable)")
    ap.add_argument("--skip-tests", action="store_true", help="do not run the CUDA tests")
    ap.add_argument("--tests-timeout-s", type=float, default=120.0)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the best counts")
    ap.add_argument("--encode-n", type=int, default=1024, help="images per encoding round")
    ap.add_argument("--sample-batch", type=int, default=16, help="prompts sampled at once")
    ap.add_argument("--workers", type=int, nargs="*", default=[8], help="loader workers besides the trainer's default")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: min(8, cores) on GPU, 1 on CPU)")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="bf16 dense peak to assume (0: from the device name)")
    ap.add_argument("--only", nargs="*", default=[], help="model names to run (default all)")
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = run_suite(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")  # first: the figures survive a table that fails
    try:
        print(table(result), flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"(the table could not be printed: {type(e).__name__}: {e}; the JSON has everything)")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
