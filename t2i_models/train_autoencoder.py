"""Train a dVAE or VQ-VAE on a streaming image shard set (regime ae, random part online).

The same command runs on CPU, one GPU, or several through ``torchrun`` (DistributedDataParallel,
NCCL on GPUs, gloo on CPU). On GPU: bf16 autocast and channels_last. ``out/last.pt`` is written
every ``ckpt_every`` steps and at the end, with the stream's state and plan; a rerun with the same
``out`` resumes from it at the exact next batch, for any number of dataloader workers, and stops
naming the setting if it would change the plan mid-epoch (a changed schedule is a warning). Every
random draw is a function of (seed, step) or (seed, key, epoch), so a resumed run continues as if
never stopped. Samples the stream could not read are logged, written to ``metrics.jsonl`` and stop
the run above ``max_lost`` of an epoch; a batch that holds padding for them trains on its valid
images only (an all-padding batch takes a zero-weighted step, so DDP's ranks stay in step).

Known limit: under DDP the VQ-VAE's EMA buffers are broadcast from rank 0 each step, so the
codebook follows rank 0's batches only (an all-reduce of the EMA statistics is the fix).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from t2i_data.augment import regime_of
from t2i_data.errors import T2IError
from t2i_data.manifest import MANIFEST_NAME, load_manifest
from t2i_data.rng import keyed_u64, stream_id
from t2i_data.stream import LostSamples, ShardStream, decode_and_augment, loader

from .builders import CONFIGS, build_autoencoder
from .checkpoint import restore_training, resume_checkpoint, save_autoencoder, training_state, weights_fingerprint
from .distributed import setup_distributed, wait_for_all, wrap_ddp
from .train_common import append_metrics, check_train_config, use_bf16

log = logging.getLogger(__name__)
SCHEDULE = ("steps", "lr", "model")  # model: the dVAE's τ / λ schedules and the VQ-VAE's settings live there


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "dvae_mdmnist"
    images: str = ""  # the train split of an image shard set prepared with --regime ae
    out: str = ""
    steps: int = 10_000
    batch_size: int = 32
    lr: float = 1e-3
    num_workers: int = 2
    seed: int = 0
    shuffle_buffer: int = 256
    log_every: int = 50
    grid_every: int = 1_000
    ckpt_every: int = 500
    precision: str = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU; or "fp32", "bf16"
    max_lost: float = 0.001  # share of an epoch's samples that may be unreadable before the run stops
    model: dict = field(default_factory=dict)  # overrides of the architecture's config fields

    def __post_init__(self) -> None:
        check_train_config(self, CONFIGS, ("images", "out"),
                           "images=DIR and out=DIR are needed (the ae-regime train split, and where checkpoints go)",
                           ("steps", "batch_size", "ckpt_every", "log_every", "grid_every"))


def _step_generator(seed: int, step: int, device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(keyed_u64(seed, stream_id("train-step"), step, 0)) & (2**63 - 1))
    return g


def _grid(x: torch.Tensor, recon: torch.Tensor, path: Path, n: int = 8) -> None:
    """Originals above reconstructions, as a PNG."""
    rows = [torch.cat(list(t[:n].float().clamp(0, 1)), dim=2) for t in (x, recon)]  # (3, S, n·S) each
    img = (torch.cat(rows, dim=1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    Image.fromarray(img).save(path)


def train(cfg: TrainConfig) -> dict:
    rank, world, device = setup_distributed()
    cuda = device.type == "cuda"
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    bf16 = use_bf16(cfg.precision, device)

    base = load_manifest(Path(cfg.images) / MANIFEST_NAME)
    regime = regime_of(base, allow_none=True)
    size = regime.size if regime else base["size"]
    torch.manual_seed(cfg.seed)  # the weights' initialisation; everything after draws from (seed, step)
    model = build_autoencoder(cfg.arch, **cfg.model)
    if size != model.cfg.image_size:
        what = f"{regime.name}-{size}" if regime else f"{size}x{size}"
        raise T2IError(f"{cfg.images} holds {what} images; {cfg.arch} takes {model.cfg.image_size}x{model.cfg.image_size}")
    if regime is not None and regime.name != "ae":
        log.warning("training an autoencoder on %s-regime shards; the thesis uses regime ae", regime.name)
    model.to(device)
    if cuda:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    ds = ShardStream(cfg.images, decode_and_augment(regime, cfg.seed), cfg.batch_size, cfg.seed, cfg.shuffle_buffer)
    per_epoch = ds.batches_per_epoch(cfg.num_workers)
    step, epoch, in_epoch, lost_before = 0, 0, 0, 0
    last = out / "last.pt"
    ck = resume_checkpoint(last, cfg.arch, map_location=device)
    if ck is not None:
        step, epoch, in_epoch, lost_before = restore_training(ck, last, ds, cfg, model, opt, SCHEDULE)
        log.info("resuming %s at step %d (epoch %d, batch %d)", last, step, epoch, in_epoch)
    ddp = wrap_ddp(model, world, device)
    metrics_path = out / "metrics.jsonl"
    bar = tqdm(total=cfg.steps, initial=step, unit="step", disable=None if rank == 0 else True)
    lost = LostSamples(ds.epoch_samples(cfg.num_workers), cfg.max_lost, world, rank, device, metrics_path)
    lost.start_epoch(epoch, lost_before)

    def checkpoint() -> None:
        if rank == 0:
            save_autoencoder(last, model, **training_state(opt, step, epoch, in_epoch, ds, cfg, lost.total), images_digest=base["digest"])

    t0, seen = time.perf_counter(), 0
    while step < cfg.steps:
        ds.set_epoch(epoch, in_epoch, cfg.num_workers)
        for batch in loader(ds, cfg.num_workers, pin_memory=cuda):
            lost.add([batch], step + 1)
            x = batch["image"].to(device, non_blocking=True)
            valid = batch["valid"]
            weight = 1.0
            if not valid.all():  # padding for unreadable samples: train on the valid ones
                x, weight = (x[valid.to(x.device)], 1.0) if valid.any() else (x, 0.0)
            if step == 0 and in_epoch == 0 and epoch == 0:
                model.init_output_bias(x)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            model.train()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                res = ddp(x, step=step, generator=_step_generator(cfg.seed, step, device))
            opt.zero_grad(set_to_none=True)
            (res["loss"] * weight).backward()
            if weight or world > 1:  # under DDP every rank steps on the averaged gradients
                opt.step()
            step, in_epoch, seen = step + 1, in_epoch + 1, seen + int(valid.sum())
            bar.update(1)
            if rank == 0 and (step % cfg.log_every == 0 or step == cfg.steps):
                rate = seen * world / (time.perf_counter() - t0)
                row = {"step": step, "epoch": epoch, "images_per_s": round(rate, 1), "lost_in_epoch": lost.total}
                row.update({k: round(float(v.detach()) if torch.is_tensor(v) else float(v), 6) for k, v in res.items() if k != "recon"})
                append_metrics(metrics_path, row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{rate:.0f}", ppl=f"{row['perplexity']:.1f}")
            if rank == 0 and step % cfg.grid_every == 0:
                _grid(x, res["recon"].detach(), out / f"grid-{step:07d}.png")
            if step % cfg.ckpt_every == 0 or step == cfg.steps:  # any batch: a resume is exact for every worker count
                checkpoint()
            if step >= cfg.steps:
                break
            if in_epoch == per_epoch:
                break
        if in_epoch >= per_epoch:
            epoch, in_epoch = epoch + 1, 0
            lost.start_epoch(epoch)
    bar.close()
    if rank == 0:
        _grid(x, res["recon"].detach(), out / "grid-last.png")
    wait_for_all(world)
    return {"step": step, "epoch": epoch, "fingerprint": weights_fingerprint(model), "checkpoint": str(last)}
