"""``t2i train cvae``: the CVAE study's two models (``cvae``) on streaming shards (seed 002).

- ``cvae_mlp_*`` on a labelled image set (Fashion-MNIST): each sample's ``class_id`` from its JSON,
  checked against the classes its manifest names (``sources.<dataset>.classes``); the images
  reach the model as the stored 28×28 pixels converted to grayscale (``channels = 1``), /255.
  ``pipelines/cvae-fashion-mnist.toml`` stores them with ``--regime center --size 28`` as lossless
  1-channel PNG (Fashion-MNIST's declared image member), so the model sees the IDX bytes / 255
  exactly (``tests/test_cvae.py::test_fashion_mnist_pixels_reach_the_model_exactly``).
- ``cvae_conv_*`` on a 64×64 image set zipped with an aligned text-embedding set (``text_emb``,
  ``embed.text_emb_decode``: one caption's embedding per sample, drawn from (seed, key, epoch));
  the model's ``text_dim`` is the set's D (manifest ``text_encoder.dim``).

The machinery is the autoencoder trainer's: ``ShardStream`` (here ``SubsetShardStream`` with
``fraction``: a seeded subset of the keys, ``t2i_data.subset``), ``last.pt`` every ``ckpt_every``
steps with the stream's state and a resume at the exact next batch, ``metrics.jsonl`` rows
``{"step", "epoch", "split": "train", "lr", "loss", "bce" (or "mse"), "kl", "images_per_s", ...}``
(the loss and both terms in nats per image), ``LostSamples``, DDP through ``distributed``, the
schedule and optimizer of ``train_common``. No augmentation: the study trains on the images as
they are (its ``transforms`` are a resize and ``ToTensor``), so the stored image must already be
the model's size (``--regime center --size N`` stores N×N). At the end rank 0 writes the figures
of ``cvae_figures`` into ``out`` from the held-out split (``eval_images``; the train split, with a
warning and titles saying so, when none is given) and a held-out row ``{"split": "test", ...}``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from t2i_data.errors import T2IError
from t2i_data.manifest import split_manifest
from t2i_data.rng import keyed_u64, stream_id
from t2i_data.stream import LostSamples, close_loaders, loader
from t2i_data.subset import SubsetShardStream, check_fraction

from .checkpoint import check_resumed_config, restore_training, resume_checkpoint, save_cvae, training_state, weights_fingerprint
from .cvae import CONFIGS, build_cvae, kind_of
from .cvae_data import class_decode, image_decode, manifest_classes, stored_size, text_dim_of  # noqa: F401 (re-exported)
from .distributed import setup_distributed, wait_for_all, wrap_ddp
from .train_autoencoder import to_float_images
from .tracking import log_figures, tracked
from .train_common import (Progress, after_restore, append_metrics, check_train_config, clip_gradients, compiled,
                           make_optimizer, set_lr, torch_settings, total_steps, use_bf16, warn_if_not_heldout)

log = logging.getLogger(__name__)
SCHEDULE = ("steps", "epochs", "optimizer", "lr", "lr_schedule", "milestones", "lr_gamma", "warmup", "weight_decay", "grad_clip")


@dataclass(frozen=True)
class CVAETrainConfig:
    """``[train_cvae]`` / ``t2i train cvae``. The defaults are the Fashion-MNIST study's (seed §4.1:
    Adam, lr 1e-3, batch 128); ``pipelines/`` give each study's full settings."""
    arch: str = "cvae_mlp_fmnist"  # cvae.CONFIGS
    images: str = ""  # the train split of an image shard set stored at the model's size (--regime center --size N)
    text_emb: str = ""  # conv CVAE: the text-embedding set aligned with images (t2i embed)
    out: str = ""
    eval_images: str = ""  # the held-out split for the figures and the held-out row
    eval_text_emb: str = ""  # conv CVAE: the text-embedding set aligned with eval_images
    fraction: float = 1.0  # a seeded subset of the train keys, (0, 1] (t2i_data.subset); seed §4.2 uses 0.3 for COCO
    steps: int = 0
    epochs: int = 0
    batch_size: int = 128  # seed §4.1
    optimizer: str = "adam"  # seed §4.1 / §4.2: Adam
    lr: float = 1e-3  # seed §4.1 (COCO: 1e-4, §4.2)
    lr_schedule: str = "constant"  # the seed names no schedule
    milestones: list[int] = field(default_factory=list)
    lr_gamma: float = 0.1
    warmup: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    compile: bool = False
    num_workers: int = 2
    seed: int = 0
    shuffle_buffer: int = 256
    log_every: int = 50
    ckpt_every: int = 500
    precision: str = "auto"
    tracker: str = "none"  # "none" | "tensorboard" | "wandb": scalars and figures beside metrics.jsonl (tracking.py)
    max_lost: float = 0.001
    grid_cols: int = 8  # samples per row of the sample grid
    grid_rows: int = 6  # conv CVAE: held-out captions in the sample grid (the MLP's rows are its classes)
    latent_n: int = 2000  # held-out images whose μ the t-SNE / PCA figure shows; 0: no figure
    model: dict = field(default_factory=dict)  # overrides of the architecture's config fields

    def __post_init__(self) -> None:
        check_train_config(self, CONFIGS, ("images", "out"), "images=DIR and out=DIR are needed (the train split, and where "
                           "checkpoints and figures go)", ("batch_size", "ckpt_every", "log_every", "grid_cols", "grid_rows"))
        object.__setattr__(self, "milestones", list(self.milestones))
        check_fraction(self.fraction)
        if self.latent_n < 0:
            raise T2IError(f"latent_n must be >= 0 (0 = no latent figure), got {self.latent_n}")
        conv = kind_of(self.arch) == "cvae_conv"
        if conv and not self.text_emb:
            raise T2IError(f"{self.arch} is conditioned on text embeddings: give text_emb=DIR (a text-embedding set aligned with "
                           f"images, from t2i embed)")
        if not conv and (self.text_emb or self.eval_text_emb):
            raise T2IError(f"{self.arch} is conditioned on classes, not text: drop text_emb / eval_text_emb (or use a cvae_conv_* arch)")
        if conv and bool(self.eval_images) != bool(self.eval_text_emb):
            raise T2IError("eval_images and eval_text_emb go together for a conv CVAE (the held-out images and their aligned embeddings)")


def step_generator(seed: int, step: int, device) -> torch.Generator:
    """The reparameterisation noise of optimizer step ``step``: a generator seeded by (seed, step)."""
    g = torch.Generator(device=device)
    g.manual_seed(int(keyed_u64(seed, stream_id("cvae-step"), step, 0)) & (2**63 - 1))
    return g


def prepare(cfg: CVAETrainConfig):
    """(model, decode, the set dirs to stream, facts for the figures) after every check of the sets
    against the arch. ``T2IError`` for a mismatch (module docstring)."""
    base = split_manifest(cfg.images)  # a folder or a URL, as the stream reads
    size = stored_size(base, f"images={cfg.images}")
    facts: dict = {"images_digest": base["digest"]}
    if kind_of(cfg.arch) == "cvae_mlp":
        classes = manifest_classes(base, f"images={cfg.images}")
        model = build_cvae(cfg.arch, **{"num_classes": len(classes), **cfg.model})
        if model.cfg.num_classes != len(classes):
            raise T2IError(f"images={cfg.images} names {len(classes)} classes; model.num_classes={model.cfg.num_classes}")
        decode = class_decode(size, model.cfg.channels, model.cfg.num_classes)
        dirs, facts["classes"] = [cfg.images], classes
    else:
        from .embed import text_emb_decode

        dim = text_dim_of(cfg.text_emb, "text_emb")
        if "text_dim" in cfg.model and cfg.model["text_dim"] != dim:
            raise T2IError(f"model.text_dim={cfg.model['text_dim']} but text_emb={cfg.text_emb} holds {dim}-d embeddings")
        model = build_cvae(cfg.arch, **{**cfg.model, "text_dim": dim})
        decode = text_emb_decode(cfg.seed, image_decode(size))
        dirs = [cfg.images, cfg.text_emb]
        if cfg.eval_text_emb and text_dim_of(cfg.eval_text_emb, "eval_text_emb") != dim:
            raise T2IError(f"eval_text_emb={cfg.eval_text_emb} holds {text_dim_of(cfg.eval_text_emb, 'eval_text_emb')}-d embeddings, "
                           f"text_emb={cfg.text_emb} {dim}-d; embed both with the same encoder")
    if size != model.cfg.image_size:
        raise T2IError(f"images={cfg.images} holds {size}x{size} images; {cfg.arch} takes {model.cfg.image_size}x{model.cfg.image_size} "
                       f"(preprocess with --regime center --size {model.cfg.image_size}, or set model.image_size)")
    if cfg.eval_images:
        em = split_manifest(cfg.eval_images)
        if stored_size(em, f"eval_images={cfg.eval_images}") != size:
            raise T2IError(f"eval_images={cfg.eval_images} holds {em['size']}x{em['size']} images; images={cfg.images} {size}x{size}")
        warn_if_not_heldout("eval_images", cfg.eval_images, em.get("split"), base.get("split"))
    return model, decode, dirs, facts


def train_cvae(cfg: CVAETrainConfig) -> dict:
    """Train (or resume) one CVAE run; returns {"step", "epoch", "fingerprint", "checkpoint", "kept",
    "total", "figures"}. ``T2IError`` for wrong use (module docstring, ``prepare``)."""
    rank, world, device = setup_distributed()
    with torch_settings(device, cfg.num_workers), tracked(cfg, rank) as tracker:
        return _train(cfg, rank, world, device, tracker)


def _train(cfg: CVAETrainConfig, rank: int, world: int, device: torch.device, tracker) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    bf16 = use_bf16(cfg.precision, device)
    torch.manual_seed(cfg.seed)  # the weights' initialisation; every later draw comes from (seed, step) or (seed, key, epoch)
    model, decode, dirs, facts = prepare(cfg)
    model.to(device)
    opt = make_optimizer(cfg, [{"params": list(model.parameters()), "lr": cfg.lr}], device)
    ds = SubsetShardStream(dirs, decode, cfg.batch_size, cfg.seed, cfg.shuffle_buffer, fraction=cfg.fraction)
    if rank == 0:
        log.info("train cvae: %s of %s train samples kept (fraction %g, seed %d)", f"{ds.kept:,}", f"{ds.total:,}", cfg.fraction, cfg.seed)
    try:
        per_epoch = ds.batches_per_epoch(cfg.num_workers)
    except T2IError as e:
        raise T2IError(f"images={cfg.images}, fraction={cfg.fraction}: {ds.kept} samples kept; {e}") from None
    total = total_steps(cfg, per_epoch)
    step, epoch, in_epoch, lost_before = 0, 0, 0, 0
    last = out / "last.pt"
    ck = resume_checkpoint(last, cfg.arch, map_location=device)
    if ck is not None:
        check_resumed_config(ck, model, last, f"a {cfg.arch} with other settings")
        step, epoch, in_epoch, lost_before = restore_training(ck, last, ds, cfg, model, opt, SCHEDULE)
        after_restore(opt, device)
        log.info("resuming %s at step %d (epoch %d, batch %d)", last, step, epoch, in_epoch)
    forward = compiled(wrap_ddp(model, world, device), cfg.compile)
    metrics_path = out / "metrics.jsonl"
    progress = Progress(total, step, rank, "train cvae")
    lost = LostSamples(ds.epoch_samples(cfg.num_workers), cfg.max_lost, world, rank, device, metrics_path)
    lost.start_epoch(epoch, lost_before)
    cond_key = "label" if kind_of(cfg.arch) == "cvae_mlp" else "text_emb"
    rec_key = model.cfg.recon

    def checkpoint() -> None:
        if rank == 0:
            save_cvae(last, model, **training_state(opt, step, epoch, in_epoch, ds, cfg, lost.total), images_digest=facts["images_digest"],
                      subset={"fraction": cfg.fraction, "seed": cfg.seed, "kept": ds.kept, "total": ds.total})

    t0, seen = time.perf_counter(), 0
    while step < total:
        ds.set_epoch(epoch, in_epoch, cfg.num_workers)
        for batch in loader(ds, cfg.num_workers, pin_memory=device.type == "cuda"):
            lost.add([batch], step + 1)
            x, cond, valid = batch["image"], batch[cond_key], batch["valid"]
            weight = 1.0
            if not valid.all():  # padding for unreadable samples: train on the valid ones
                x, cond, weight = (x[valid], cond[valid], 1.0) if valid.any() else (x, cond, 0.0)
            x = to_float_images(x.to(device, non_blocking=True))
            cond = cond.to(device, non_blocking=True)
            rates = set_lr(opt, cfg, step, epoch, total)
            model.train()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                res = forward(x, cond, generator=step_generator(cfg.seed, step, device))
            opt.zero_grad(set_to_none=True)
            (res["loss"] * weight).backward()
            grad_norm = clip_gradients(model.parameters(), cfg.grad_clip)
            if weight or world > 1:
                opt.step()
            step, in_epoch, seen = step + 1, in_epoch + 1, seen + int(valid.sum())
            progress.update()
            if rank == 0 and (step % cfg.log_every == 0 or step == total):
                rate = seen * world / (time.perf_counter() - t0)
                row = {"step": step, "epoch": epoch, "split": "train", "lr": rates[0], "images_per_s": round(rate, 1),
                       "lost_in_epoch": lost.total, "loss": round(float(res["loss"].detach()), 6), rec_key: round(float(res["rec"].detach()), 6),
                       "kl": round(float(res["kl"].detach()), 6)}
                if grad_norm is not None:
                    row["grad_norm"] = round(float(grad_norm), 6)
                append_metrics(metrics_path, row)
                progress.show(step, loss=row["loss"], kl=row["kl"], img_s=round(rate), lr=row["lr"])
            if step % cfg.ckpt_every == 0 or step == total:
                checkpoint()
            if step >= total or in_epoch == per_epoch:
                break
        if in_epoch >= per_epoch:
            epoch, in_epoch = epoch + 1, 0
            lost.start_epoch(epoch)
    progress.close()
    close_loaders(ds)
    figures: list[str] = []
    if rank == 0:
        from .cvae_figures import write_figures

        figures = write_figures(model.eval(), cfg, facts, device, metrics_path, step, epoch)
        log_figures(tracker, step, figures)
    wait_for_all(world)
    return {"step": step, "epoch": epoch, "fingerprint": weights_fingerprint(model), "checkpoint": str(last),
            "kept": ds.kept, "total": ds.total, "figures": figures}
