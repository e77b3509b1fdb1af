"""Train the evaluation CLIP on the autoencoder's reconstructions of the train split's images:
MD-MNIST (``clip_mdmnist``, ``clip_tiny``: the 12 description symbols) or any captions and any
tokenizer (``clip_tokens``, ``clip_tokens_tiny``: the text-token rows; issue 19).

Data: the train split's aligned image-token and text-token shards, streamed by ``TokenStream``;
each batch's tokens are decoded by the autoencoder that made them (``encode.reconstruct``). Of the
two ways to get reconstructions, this one fits the existing streams best: ``TokenStream`` already
zips the two token sets by key, checks their alignment and the autoencoder's fingerprint, splits
the samples over ranks × workers exactly once per epoch and resumes mid-epoch; and only the
decoder runs, not encoder + decoder over decoded PNGs as the image-shard route would need. The
reconstructions are the very pixels a prior's tokens turn into, so CLIP judges generated images
and test reconstructions on the same footing. The text is each caption's 12 symbols (the MD-MNIST
tokenizer's ids 0–19 are the symbols; BOS / EOS / padding are dropped) for the MD-MNIST archs, and
the stored text-token row for the token archs, whose V, L and pad id come from the text-token
manifest and whose image size comes from the autoencoder (none of them a ``model.<field>``).

Every checkpoint records what the evaluation must match: ``fingerprints`` (tokenizer, autoencoder),
``tokens`` (text_vocab, text_len, pad_id, image_size, grid, image_vocab), ``text_config`` (the
set's length and add_bos / add_eos, as a prior records it) and ``text_input``; ``t2i eval priors``
refuses a CLIP whose tokenizer, autoencoder or token settings differ from the priors' and the sets'.

Schedule (thesis, Table 8): 30 epochs, batch 64, Adam at 1e-3, × 0.1 from epoch 20 (``lr_schedule =
"multistep"``, ``milestones = [20]``; the rest of ``train_common``'s settings apply too).
Padding entries of a batch are left out of the contrastive loss; under DDP each rank contrasts
its own batch. ``out/last.pt`` resumes at the exact next batch, as the other trainers do (any
worker count; a changed stream plan mid-epoch stops the resume naming the setting, a changed
schedule is a warning); unreadable samples are logged, written to ``metrics.jsonl`` and stop the
run above ``max_lost`` of an epoch. With
``eval_image_tokens`` / ``eval_text_tokens`` (the test split) the end of training reports the
accuracy at picking the true description among it and 12 changed variants (MD-MNIST archs; for a
token arch that check needs the tokenizer to re-tokenize caption variants, and ``t2i eval priors``
reports it on the test split, so the token archs refuse ``eval_image_tokens``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from t2i_data.errors import T2IError
from t2i_data.stream import LostSamples, close_loaders, loader

from .checkpoint import load_autoencoder, restore_training, resume_checkpoint, save_clip, training_state
from .clip import CLIPS, TOKEN_CLIPS, TOKEN_SETTINGS, clip_text
from .clip_eval import clip_accuracy, open_stream
from .distributed import setup_distributed, wait_for_all, wrap_ddp
from .encode import reconstruct
from .tracking import tracked
from .train_common import (Progress, after_restore, append_metrics, check_train_config, clip_gradients, compiled,
                           make_optimizer, set_lr, torch_settings, total_steps, use_bf16)

log = logging.getLogger(__name__)
SCHEDULE = ("epochs", "steps", "optimizer", "lr", "lr_schedule", "milestones", "lr_gamma", "warmup", "weight_decay", "grad_clip")

@dataclass(frozen=True)
class ClipTrainConfig:
    arch: str = "clip_mdmnist"
    image_tokens: str = ""  # the train split's image-token shards
    text_tokens: str = ""  # ... and its text-token shards (mdmnist tokenizer for clip_mdmnist / clip_tiny; any for clip_tokens*)
    autoencoder: str = ""  # the checkpoint that made the image tokens; decodes them
    out: str = ""
    epochs: int = 30  # Table 8
    steps: int = 0  # > 0: the run's length in steps instead (smoke runs, tests)
    batch_size: int = 64  # Table 8
    optimizer: str = "adam"  # "adam" | "adamw" (Table 8: Adam)
    lr: float = 1e-3  # Table 8
    lr_schedule: str = "multistep"  # "multistep" | "cosine" | "constant" (train_common)
    milestones: list[int] = field(default_factory=lambda: [20])  # epochs at which lr is multiplied by lr_gamma (Table 8: 20)
    lr_gamma: float = 0.1  # Table 8
    warmup: int = 0  # steps of linear warmup (any schedule)
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max global gradient norm; 0 = off
    compile: bool = False  # torch.compile the training forward
    num_workers: int = 1
    seed: int = 0
    precision: str = "auto"
    tracker: str = "none"  # "none" | "tensorboard" | "wandb": scalars and figures beside metrics.jsonl (tracking.py)
    log_every: int = 50
    ckpt_every: int = 500
    stop_after: int = 0  # > 0: stop (with a checkpoint) after this many steps of this run, to resume later
    eval_image_tokens: str = ""  # optional: the test split, for the accuracy printed at the end
    eval_text_tokens: str = ""
    max_lost: float = 0.001  # share of an epoch's samples that may be unreadable before the run stops
    model: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_train_config(self, CLIPS, ("image_tokens", "text_tokens", "autoencoder", "out"),
                           "image_tokens=DIR, text_tokens=DIR, autoencoder=CKPT and out=DIR are needed (the train split's token shards)",
                           ("batch_size", "ckpt_every", "log_every"))
        object.__setattr__(self, "milestones", list(self.milestones))
        if bool(self.eval_image_tokens) != bool(self.eval_text_tokens):
            raise T2IError("eval_image_tokens and eval_text_tokens go together (the test split's two token sets)")
        if self.eval_image_tokens and self.arch in TOKEN_CLIPS:
            raise T2IError(f"{self.arch}: eval_image_tokens / eval_text_tokens are for the MD-MNIST CLIPs; a token CLIP's accuracy against "
                           f"caption variants needs the tokenizer and is reported by 't2i eval priors' on the test split")


def train_clip(cfg: ClipTrainConfig) -> dict:
    rank, world, device = setup_distributed()
    with torch_settings(device, cfg.num_workers), tracked(cfg, rank):
        return _train_clip(cfg, rank, world, device)


def _train_clip(cfg: ClipTrainConfig, rank: int, world: int, device: torch.device) -> dict:
    cuda = device.type == "cuda"
    bf16 = use_bf16(cfg.precision, device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last.pt"
    ae, ae_ck = load_autoencoder(cfg.autoencoder)
    ae = ae.to(device)
    tokens_route = cfg.arch in TOKEN_CLIPS
    ds = open_stream(cfg.image_tokens, cfg.text_tokens, cfg.batch_size, cfg.seed, ae_ck["fingerprint"], mdmnist=not tokens_route)
    if ds.txt_m.get("split") not in ("train", None):
        raise T2IError(f"{cfg.text_tokens} is the {ds.txt_m.get('split')} split; CLIP trains on the train split (the test split evaluates it)")
    if "image_size" in cfg.model:
        raise T2IError("model.image_size comes from the autoencoder and cannot be overridden")
    fixed = sorted(set(cfg.model) & (set(TOKEN_SETTINGS) | {"text_input"}))
    if fixed:
        raise T2IError(f"model.{', model.'.join(fixed)}: set by the arch and the text-token manifest ({cfg.text_tokens}), not overridable")
    tok = ds.txt_m["tokenizer"]
    tokens = {"text_vocab": int(tok["vocab_size"]), "text_len": int(tok["length"]), "pad_id": int(tok["pad_id"]),
              "image_size": int(ae.cfg.image_size), "grid": int(ae.cfg.grid), "image_vocab": int(ds.image_vocab)}
    with torch.random.fork_rng(devices=[]):  # seeded initialisation, without touching the caller's global generator
        torch.manual_seed(cfg.seed)
        if tokens_route:
            model = CLIPS[cfg.arch](**{k: tokens[k] for k in TOKEN_SETTINGS}, **cfg.model)
        else:
            model = CLIPS[cfg.arch](image_size=ae.cfg.image_size, **cfg.model)
    model.to(device)
    opt = make_optimizer(cfg, [{"params": list(model.parameters()), "lr": cfg.lr}], device)
    step, epoch, in_epoch, lost_before = 0, 0, 0, 0
    ck = resume_checkpoint(last, cfg.arch)
    if ck is not None:
        step, epoch, in_epoch, lost_before = restore_training(ck, last, ds, cfg, model, opt, SCHEDULE)
        after_restore(opt, device)
    ddp = wrap_ddp(model, world, device)
    forward = compiled(ddp, cfg.compile)
    per_epoch = ds.batches_per_epoch(cfg.num_workers)
    total = total_steps(cfg, per_epoch)
    end = min(total, step + cfg.stop_after) if cfg.stop_after > 0 else total
    lost = LostSamples(ds.epoch_samples(cfg.num_workers), cfg.max_lost, world, rank, device, out / "metrics.jsonl")
    lost.start_epoch(epoch, lost_before)
    fingerprints = {"autoencoder": ae_ck["fingerprint"], "tokenizer": tok["fingerprint"]}
    text_config = dict(ds.txt_m["config"])  # length, add_bos, add_eos: how the evaluation tokenizes captions for this CLIP
    progress = Progress(total, step, rank, "train clip")
    t0, seen = time.perf_counter(), 0

    def checkpoint(**extra) -> str:
        if rank == 0:
            return save_clip(last, model, **training_state(opt, step, epoch, in_epoch, ds, cfg, lost.total), fingerprints=fingerprints,
                             images_digest=ds.img_m["aligned_to"], tokens=tokens, text_config=text_config,
                             text_input=model.cfg.text_input, **extra)
        return ""

    while step < end:
        ds.set_epoch(epoch, in_epoch, cfg.num_workers)
        for batch in loader(ds, cfg.num_workers, pin_memory=cuda):
            lost.add([batch], step + 1)
            n_valid = int(batch["valid"].sum())  # counted on the CPU mask, before the copy: no host-device sync
            ok = batch["valid"].to(device, non_blocking=True)
            symbols = clip_text(model.cfg, batch["text"], batch["valid"]).to(device, non_blocking=True)  # (B, 12) or (B, L)
            images = reconstruct(ae, batch["image"].to(device, non_blocking=True))  # fp32, as evaluation decodes
            rates = set_lr(opt, cfg, step, epoch, total)
            model.train()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                res = forward(images, symbols, ok)  # padding entries are dropped from the loss inside
            loss = res["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = clip_gradients(model.parameters(), cfg.grad_clip)
            opt.step()
            step, in_epoch, seen = step + 1, in_epoch + 1, seen + n_valid
            progress.update()
            if rank == 0 and n_valid and (step % cfg.log_every == 0 or step == end):
                logits = res["logits_per_image"].detach()
                acc = float((logits.argmax(1) == torch.arange(len(logits), device=logits.device)).float().mean())
                rate = seen * world / (time.perf_counter() - t0)
                row = {"step": step, "epoch": epoch, "split": "train", "loss": round(loss.item(), 6), "batch_acc": round(acc, 4),
                       "lr": rates[0], "logit_scale": round(model.scale().item(), 4), "lost_in_epoch": lost.total,
                       "images_per_s": round(rate, 1)}
                if grad_norm is not None:
                    row["grad_norm"] = round(float(grad_norm), 6)  # before clipping
                append_metrics(out / "metrics.jsonl", row)
                progress.show(step, loss=row["loss"], acc=round(acc, 2), img_s=round(rate), lr=row["lr"])
            if step % cfg.ckpt_every == 0 or step == end:  # any batch: a resume is exact for every worker count
                checkpoint()
            if step >= end:
                break
        if step < end or in_epoch >= per_epoch:
            epoch, in_epoch = epoch + 1, 0
            lost.start_epoch(epoch)
    progress.close()
    result = {"step": step, "epoch": epoch, "checkpoint": str(last)}
    if rank == 0 and cfg.eval_image_tokens and step >= total:
        acc = clip_accuracy(model.eval(), ae, cfg.eval_image_tokens, cfg.eval_text_tokens, cfg.seed, device=device)
        result["test_accuracy"] = acc
        checkpoint(test_accuracy=acc)
    close_loaders(ds)  # the persistent loader workers end with the run
    wait_for_all(world)
    return result
