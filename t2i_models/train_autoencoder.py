"""Train a dVAE, VQ-VAE or VQ-VAE-2 on a streaming image shard set (regime ae, random part online).

The same command runs on CPU, one GPU, or several through ``torchrun`` (DistributedDataParallel,
NCCL on GPUs, gloo on CPU). On GPU: bf16 autocast and channels_last. ``out/last.pt`` is written
every ``ckpt_every`` steps and at the end, with the stream's state and plan; a rerun with the same
``out`` resumes from it at the exact next batch, for any number of dataloader workers, and stops
naming the setting if it would change the plan mid-epoch (a changed schedule is a warning). Every
random draw is a function of (seed, step) or (seed, key, epoch), so a resumed run continues as if
never stopped. Length, optimizer and learning-rate schedule are ``train_common``'s (``steps`` or
``epochs``, Adam / AdamW, multistep / cosine / constant with milestones in epochs, warmup, gradient
clipping, ``compile``). With ``codebook_lr`` > 0 a VQ-VAE with ``codebook = "loss"`` trains its
codebook in its own optimizer group at that rate (thesis Table 5's "separate codebook learning
rate"), scaled by the same schedule. Images come from the stream as uint8 and become [0, 1] floats
on the device (a quarter of the bytes through the loader and the host-device copy). With
``eval_images`` (the test split) ``eval_autoencoder.heldout_metrics`` writes held-out rows
``{"step", "split": "test", "mse", "psnr", "bce", "codes_used", "perplexity"}`` every
``eval_every`` steps and at the end. Samples the stream could not read are logged, written to ``metrics.jsonl`` and stop
the run above ``max_lost`` of an epoch; a batch that holds padding for them trains on its valid
images only (an all-padding batch takes a zero-weighted step, so DDP's ranks stay in step).

``loss = "perceptual"`` (VQ-VAEs only) trains on ``perceptual.PerceptualLoss`` instead of the pixel MSE: a frozen
ResNet-18 from ``perceptual_weights`` (a local state dict), its ``perceptual_layers`` weighted; the checkpoint's
``rec_loss`` records the loss, the layers and the ResNet file's sha256, a resume with other ones is refused, and
train rows add the pixel MSE as "mse".

Under DDP the VQ-VAE's EMA codebook statistics (counts and sums) are all-reduced across ranks
before each update, and its start and restart draws come from the global batch with rank 0's draw
(``vqvae._sum_statistics``): 2 processes hold the codebook of 1 process on the same global batch
(tests/test_ddp_ema.py).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from t2i_data.augment import regime_of
from t2i_data.errors import T2IError
from t2i_data.manifest import split_manifest
from t2i_data.rng import keyed_u64, stream_id
from t2i_data.stream import LostSamples, close_loaders, ShardStream, decode_and_augment, loader

from .builders import CONFIGS, build_autoencoder
from .checkpoint import restore_training, resume_checkpoint, save_autoencoder, training_state, weights_fingerprint
from .distributed import setup_distributed, wait_for_all, wrap_ddp
from .perceptual import DEFAULT_LAYERS, check_loss_settings, check_resumed_rec_loss, training_rec_loss
from .tracking import Tracker, tracked
from .train_common import (Progress, after_restore, append_metrics, check_train_config, clip_gradients, compiled,
                           make_optimizer, set_lr, torch_settings, total_steps, use_bf16, warn_if_not_heldout)

log = logging.getLogger(__name__)
# model: the dVAE's τ / λ schedules and the VQ-VAE's settings live there
SCHEDULE = ("steps", "epochs", "optimizer", "lr", "lr_schedule", "milestones", "lr_gamma", "warmup", "weight_decay", "grad_clip",
            "codebook_lr", "model")


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "dvae_mdmnist"
    images: str = ""  # the train split of an image shard set prepared with --regime ae
    out: str = ""
    steps: int = 0  # optimizer steps; > 0 wins over epochs
    epochs: int = 0  # epochs of the train split (steps = epochs × batches per epoch); one of the two is needed
    batch_size: int = 32
    optimizer: str = "adam"  # "adam" | "adamw" (the thesis: Adam, Table 5)
    lr: float = 1e-3
    lr_schedule: str = "constant"  # "multistep" | "cosine" | "constant" (train_common)
    milestones: list[int] = field(default_factory=list)  # epochs at which lr is multiplied by lr_gamma (multistep)
    lr_gamma: float = 0.1
    warmup: int = 0  # steps of linear warmup (any schedule)
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max global gradient norm; 0 = off
    codebook_lr: float = 0.0  # > 0: the loss-trained VQ-VAE codebook's own rate (model.codebook = "loss")
    compile: bool = False  # torch.compile the training forward
    eval_images: str = ""  # the test split of the same image shard set: held-out rows in metrics.jsonl
    eval_every: int = 0  # steps between held-out evaluations; 0 = only at the end (with eval_images)
    eval_n: int = 0  # held-out images per evaluation; 0 = all
    num_workers: int = 2
    seed: int = 0
    shuffle_buffer: int = 256
    log_every: int = 50
    grid_every: int = 1_000
    ckpt_every: int = 500
    precision: str = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU; or "fp32", "bf16"
    tracker: str = "none"  # "none" | "tensorboard" | "wandb": scalars and figures beside metrics.jsonl (tracking.py)
    max_lost: float = 0.001  # share of an epoch's samples that may be unreadable before the run stops
    model: dict = field(default_factory=dict)  # overrides of the architecture's config fields
    loss: str = "mse"  # a VQ-VAE's reconstruction loss: "mse" (pixels) | "perceptual" (ResNet-18 features, perceptual.py)
    perceptual_weights: str = ""  # loss=perceptual: a local torchvision ResNet-18 state dict (resnet18-f37072fd.pth)
    perceptual_layers: dict = field(default_factory=lambda: dict(DEFAULT_LAYERS))  # loss=perceptual: {ResNet-18 layer: weight}

    def __post_init__(self) -> None:
        check_train_config(self, CONFIGS, ("images", "out"),
                           "images=DIR and out=DIR are needed (the ae-regime train split, and where checkpoints go)",
                           ("batch_size", "ckpt_every", "log_every", "grid_every"))
        object.__setattr__(self, "milestones", list(self.milestones))
        if self.codebook_lr < 0:
            raise T2IError(f"codebook_lr must be >= 0 (0 = the codebook trains at lr), got {self.codebook_lr}")
        if self.eval_n < 0:
            raise T2IError(f"eval_n must be >= 0 (0 = the whole held-out split), got {self.eval_n}")
        check_loss_settings(self.loss, self.perceptual_weights, self.perceptual_layers)


def _step_generator(seed: int, step: int, device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(keyed_u64(seed, stream_id("train-step"), step, 0)) & (2**63 - 1))
    return g


def _grid(x: torch.Tensor, recon: torch.Tensor, path: Path, n: int = 8) -> np.ndarray:
    """Originals above reconstructions, as a PNG; returns its pixels, uint8 (2·S, n·S, 3)."""
    rows = [torch.cat(list(t[:n].float().clamp(0, 1)), dim=2) for t in (x, recon)]  # (3, S, n·S) each
    img = (torch.cat(rows, dim=1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    Image.fromarray(img).save(path)
    return img


def param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """The optimizer's groups: every parameter at ``lr``; with ``codebook_lr`` > 0 the model's
    codebook parameters (``codebook_parameters()``: a VQ-VAE with ``codebook = "loss"``) in a
    second group at that rate. ``T2IError`` when ``codebook_lr`` > 0 and the model has none."""
    book = list(getattr(model, "codebook_parameters", lambda: [])())
    if cfg.codebook_lr <= 0:
        return [{"params": list(model.parameters()), "lr": cfg.lr}]
    if not book:
        raise T2IError(f"codebook_lr={cfg.codebook_lr}: {cfg.arch} has no codebook trained by the loss (a VQ-VAE with "
                       f"model.codebook=\"loss\" has one); drop codebook_lr or set model.codebook=\"loss\"")
    ids = {id(p) for p in book}
    return [{"params": [p for p in model.parameters() if id(p) not in ids], "lr": cfg.lr}, {"params": book, "lr": cfg.codebook_lr}]


def to_float_images(x: torch.Tensor) -> torch.Tensor:
    """Stream images on the device as float [0, 1]: uint8 (B, 3, N, N) is divided by 255 here
    (after the copy, so a quarter of the bytes cross to the device); float input passes unchanged."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def _check_eval_images(cfg: TrainConfig, size: int) -> None:
    m = split_manifest(cfg.eval_images)
    regime = regime_of(m, allow_none=True)
    got = regime.size if regime else m["size"]
    if got != size:
        raise T2IError(f"eval_images={cfg.eval_images} holds {got}x{got} images; the train split {cfg.images} holds {size}x{size}")
    warn_if_not_heldout("eval_images", cfg.eval_images, m.get("split"), split_manifest(cfg.images).get("split"))


def _has_heldout_row(metrics_path: Path, step: int) -> bool:
    """Whether ``metrics.jsonl`` holds a held-out (``split`` "test") row for ``step``."""
    if not metrics_path.is_file():
        return False
    from .plot import read_metrics

    return any(r.get("split") == "test" and r["step"] == step for r in read_metrics(metrics_path.parent))


def train(cfg: TrainConfig) -> dict:
    rank, world, device = setup_distributed()
    with torch_settings(device, cfg.num_workers), tracked(cfg, rank) as tracker:
        return _train(cfg, rank, world, device, tracker)


def _train(cfg: TrainConfig, rank: int, world: int, device: torch.device, tracker: Tracker) -> dict:
    cuda = device.type == "cuda"
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    bf16 = use_bf16(cfg.precision, device)

    base = split_manifest(cfg.images)  # a folder or a URL (s3://, https://, ...), as ShardStream reads
    regime = regime_of(base, allow_none=True)
    size = regime.size if regime else base["size"]
    if cfg.eval_images:
        _check_eval_images(cfg, size)
    torch.manual_seed(cfg.seed)  # the weights' initialisation; everything after draws from (seed, step)
    model = build_autoencoder(cfg.arch, **cfg.model)
    if cfg.eval_images and hasattr(model, "encode_levels"):  # before any step, not after the last
        raise T2IError(f"eval_images: the held-out figures read one token grid; {cfg.arch} is a VQ-VAE-2 with levels "
                       f"{', '.join(model.cfg.levels)}: drop eval_images (its train rows log rec, commit and perplexity per level)")
    if size != model.cfg.image_size:
        what = f"{regime.name}-{size}" if regime else f"{size}x{size}"
        raise T2IError(f"{cfg.images} holds {what} images; {cfg.arch} takes {model.cfg.image_size}x{model.cfg.image_size}")
    if regime is not None and regime.name != "ae":
        log.warning("training an autoencoder on %s-regime shards; the thesis uses regime ae", regime.name)
    rec_loss, rec_record = training_rec_loss(cfg, model, device)  # (None, {"loss": "mse"}) for the pixel MSE
    rec_kw = {} if rec_loss is None else {"rec_loss": rec_loss}
    model.to(device)
    if cuda:
        model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, param_groups(model, cfg), device)

    ds = ShardStream(cfg.images, decode_and_augment(regime, cfg.seed), cfg.batch_size, cfg.seed, cfg.shuffle_buffer)
    per_epoch = ds.batches_per_epoch(cfg.num_workers)
    total = total_steps(cfg, per_epoch)
    step, epoch, in_epoch, lost_before = 0, 0, 0, 0
    last = out / "last.pt"
    ck = resume_checkpoint(last, cfg.arch, map_location=device)
    if ck is not None:
        was = (ck.get("train_config") or {}).get("codebook_lr", 0.0)
        if (was > 0) != (cfg.codebook_lr > 0):
            raise T2IError(f"{last} was trained with codebook_lr={was}; codebook_lr={cfg.codebook_lr} changes the optimizer's "
                           f"parameter groups: resume with codebook_lr={was}, or start fresh with another out=")
        check_resumed_rec_loss(ck, rec_record, last)
        step, epoch, in_epoch, lost_before = restore_training(ck, last, ds, cfg, model, opt, SCHEDULE)
        after_restore(opt, device)
        log.info("resuming %s at step %d (epoch %d, batch %d)", last, step, epoch, in_epoch)
    ddp = wrap_ddp(model, world, device)
    forward = compiled(ddp, cfg.compile)
    metrics_path = out / "metrics.jsonl"
    progress = Progress(total, step, rank, "train autoencoder")
    lost = LostSamples(ds.epoch_samples(cfg.num_workers), cfg.max_lost, world, rank, device, metrics_path)
    lost.start_epoch(epoch, lost_before)
    first_step, evaluated = step, -1

    def checkpoint() -> None:
        if rank == 0:
            save_autoencoder(last, model, **training_state(opt, step, epoch, in_epoch, ds, cfg, lost.total), images_digest=base["digest"],
                             rec_loss=rec_record)

    def evaluate() -> None:
        nonlocal evaluated
        evaluated = step
        if rank != 0:
            return
        from .eval_autoencoder import heldout_metrics

        m = heldout_metrics(model.eval(), cfg.eval_images, n=cfg.eval_n, device=device)
        row = {"step": step, "epoch": epoch, "split": "test", **{k: m[k] for k in ("mse", "psnr", "bce", "codes_used", "perplexity")},
               "images": m.get("images")}
        append_metrics(metrics_path, row)
        log.info("step %d held-out (%s images): mse %.5f psnr %.2f bce %.4f codes used %.3f perplexity %.1f", step, row["images"],
                 row["mse"], row["psnr"], row["bce"], row["codes_used"], row["perplexity"])

    t0, seen, x, res = time.perf_counter(), 0, None, None
    while step < total:
        ds.set_epoch(epoch, in_epoch, cfg.num_workers)
        for batch in loader(ds, cfg.num_workers, pin_memory=cuda):
            lost.add([batch], step + 1)
            x = batch["image"]
            valid = batch["valid"]  # on the CPU: counting and masking here cost no host-device sync
            weight = 1.0
            if not valid.all():  # padding for unreadable samples: train on the valid ones
                x, weight = (x[valid], 1.0) if valid.any() else (x, 0.0)
            x = to_float_images(x.to(device, non_blocking=True))
            if step == 0 and in_epoch == 0 and epoch == 0:
                model.init_output_bias(x)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            rates = set_lr(opt, cfg, step, epoch, total)
            model.train()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                res = forward(x, step=step, generator=_step_generator(cfg.seed, step, device), **rec_kw)
            opt.zero_grad(set_to_none=True)
            (res["loss"] * weight).backward()
            grad_norm = clip_gradients(model.parameters(), cfg.grad_clip)
            if weight or world > 1:  # under DDP every rank steps on the averaged gradients
                opt.step()
            step, in_epoch, seen = step + 1, in_epoch + 1, seen + int(valid.sum())
            progress.update()
            if rank == 0 and (step % cfg.log_every == 0 or step == total):
                rate = seen * world / (time.perf_counter() - t0)
                row = {"step": step, "epoch": epoch, "split": "train", "lr": rates[0], "images_per_s": round(rate, 1),
                       "lost_in_epoch": lost.total}
                if cfg.codebook_lr > 0:
                    row["codebook_lr"] = rates[1]
                row.update({k: round(float(v.detach()) if torch.is_tensor(v) else float(v), 6) for k, v in res.items() if k != "recon"})
                if grad_norm is not None:
                    row["grad_norm"] = round(float(grad_norm), 6)  # before clipping
                append_metrics(metrics_path, row)
                progress.show(step, loss=row["loss"], img_s=round(rate), ppl=row.get("perplexity", float("nan")), lr=row["lr"])
            if rank == 0 and step % cfg.grid_every == 0:
                tracker.log_image("train/reconstructions", step, _grid(x, res["recon"].detach(), out / f"grid-{step:07d}.png"))
            if step % cfg.ckpt_every == 0 or step == total:  # any batch: a resume is exact for every worker count
                checkpoint()
            if cfg.eval_images and cfg.eval_every and step % cfg.eval_every == 0:
                evaluate()
            if step >= total:
                break
            if in_epoch == per_epoch:
                break
        if in_epoch >= per_epoch:
            epoch, in_epoch = epoch + 1, 0
            lost.start_epoch(epoch)
    progress.close()
    # A run resumed at its last step (its final evaluation had failed after the last checkpoint)
    # trains nothing and still owes the held-out row when metrics.jsonl lacks it.
    if cfg.eval_images and evaluated != step and (step > first_step or not _has_heldout_row(metrics_path, step)):
        evaluate()
    if rank == 0 and res is not None:
        tracker.log_image("train/reconstructions", step, _grid(x, res["recon"].detach(), out / "grid-last.png"))
    elif rank == 0 and not (out / "grid-last.png").exists():
        log.warning("%s: not drawn: it shows the last training batch before its step, and this run resumed at the last "
                    "step (%d) and trained none; the grid-*.png of earlier steps stand", out / "grid-last.png", step)
    close_loaders(ds)  # the persistent loader workers end with the run
    wait_for_all(world)
    return {"step": step, "epoch": epoch, "fingerprint": weights_fingerprint(model), "checkpoint": str(last), "rec_loss": rec_record}
