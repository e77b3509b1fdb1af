"""Train a prior (G1, G2 or G3) on streaming image-token + text-token shards.

Same command on CPU, one GPU (bf16 autocast; fused attention through scaled_dot_product_attention)
or several through ``torchrun`` (DDP). Each optimizer step takes ``grad_accum`` micro-batches; the
loss is the mean image-token cross-entropy over the *valid* samples of the whole window (padding
entries from ``TokenStream`` weigh nothing), so accumulating k micro-batches of B equals one batch
of k·B — the thesis code summed micro-batch means without rescaling. Length, optimizer and
learning rate are ``train_common``'s (``steps`` or ``epochs``; AdamW by default, Adam for the
thesis' Table 7; cosine to 10% after a linear warmup by default, multistep with milestones in
epochs, or linear with restarts, the DALL·E reproduction's). The per-sample loss is the one the
model's forward computes (``loss_per_sample``: image cross-entropy, plus G1's weighted text
term), so the (B, h·w, V) logits pass through one
cross-entropy; nothing per micro-batch reads a device value back to the host (the window's loss
and count are read on logging steps only). With ``eval_image_tokens`` / ``eval_text_tokens`` (the
test split) rank 0 writes ``{"step", "split": "test", "test_loss"}`` rows (image-token
cross-entropy in nats per token) every ``eval_every`` steps and at the end. ``out/last.pt`` holds the config, weights, optimizer, step, the
stream's state with its plan (batch size, world size, workers, seed, shuffle buffer, the sets'
digests) and the tokenizer and autoencoder fingerprints (and ``level``, the token level of a
VQ-VAE-2 set it models: ``level=top`` gives G1 the top grid with the text, DALL·E-style; a resume
with another level is refused); a rerun resumes at the exact next batch,
for any number of dataloader workers. A rerun that would change the plan mid-epoch stops naming
the setting (``plan.check_plan``); one that changes the schedule (``SCHEDULE``: steps, epochs,
lr, its schedule, warmup, weight decay, grad_accum...) says so in a warning. Samples the stream could not read are logged, written
to ``metrics.jsonl`` and stop the run above ``max_lost`` of an epoch (``stream.LostSamples``).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from t2i_data.errors import T2IError
from t2i_data.stream import LostSamples, close_loaders, loader
from t2i_data.token_stream import TokenStream

from .checkpoint import restore_training, resume_checkpoint, save_prior, training_state
from .distributed import setup_distributed, wait_for_all, wrap_ddp
from .prior_builders import PRIORS, prior_from_config
from .tracking import tracked
from .train_common import (Progress, after_restore, append_metrics, check_train_config, clip_gradients, compiled,
                           make_optimizer, normal_restarts, set_lr, torch_settings, total_steps, use_bf16, warn_if_not_heldout)

log = logging.getLogger(__name__)
SCHEDULE = ("steps", "epochs", "optimizer", "lr", "lr_schedule", "milestones", "lr_gamma", "restarts", "warmup", "weight_decay",
            "grad_clip", "grad_accum")


@dataclass(frozen=True)
class PriorTrainConfig:
    arch: str = "g1_mdmnist"
    image_tokens: str = ""
    text_tokens: str = ""
    out: str = ""
    steps: int = 0  # optimizer steps; > 0 wins over epochs
    epochs: int = 0  # epochs of the train split (steps = epochs × ⌈micro-batches per epoch / grad_accum⌉); one is needed
    batch_size: int = 16
    grad_accum: int = 1
    optimizer: str = "adamw"  # "adam" | "adamw" (the thesis: Adam, Table 7)
    lr: float = 3e-4
    lr_schedule: str = "cosine"  # "multistep" | "cosine" | "constant" | "linear" (train_common)
    milestones: list[int] = field(default_factory=list)  # epochs at which lr is multiplied by lr_gamma (multistep)
    lr_gamma: float = 0.1
    restarts: list[list[float]] = field(default_factory=list)  # [[step, rate], ...]: new peaks of the linear schedule
    warmup: int = 500  # steps of linear warmup (any schedule)
    weight_decay: float = 0.01
    grad_clip: float = 0.0  # max global gradient norm; 0 = off
    compile: bool = False  # torch.compile the training forward
    eval_image_tokens: str = ""  # the test split's image-token shards: held-out rows in metrics.jsonl
    eval_text_tokens: str = ""  # ... and its text-token shards
    eval_every: int = 0  # steps between held-out evaluations; 0 = only at the end (with eval tokens)
    eval_n: int = 0  # held-out samples per evaluation; 0 = all
    num_workers: int = 1
    seed: int = 0
    precision: str = "auto"
    tracker: str = "none"  # "none" | "tensorboard" | "wandb": scalars and figures beside metrics.jsonl (tracking.py)
    log_every: int = 50
    ckpt_every: int = 500
    stop_after: int = 0  # > 0: stop (with a checkpoint) after this many steps of this run, to resume later
    max_lost: float = 0.001  # share of an epoch's samples that may be unreadable before the run stops
    model: dict = field(default_factory=dict)
    level: str = ""  # a multi-level image-token set's level to model (VQ-VAE-2: "top" or "bottom"); "" = a single-grid set

    def __post_init__(self) -> None:
        check_train_config(self, PRIORS, ("image_tokens", "text_tokens", "out"),
                           "image_tokens=DIR, text_tokens=DIR and out=DIR are needed",
                           ("batch_size", "grad_accum", "ckpt_every", "log_every"))
        object.__setattr__(self, "milestones", list(self.milestones))
        object.__setattr__(self, "restarts", normal_restarts(self.restarts))
        if bool(self.eval_image_tokens) != bool(self.eval_text_tokens):
            raise T2IError("eval_image_tokens and eval_text_tokens go together (the test split's two token sets)")
        if self.eval_n < 0:
            raise T2IError(f"eval_n must be >= 0 (0 = the whole held-out split), got {self.eval_n}")


def window_loss(model, micro: list[dict], device, bf16: bool, world: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Losses to backpropagate for one optimizer step's micro-batches, each already divided by the
    number of valid samples in the whole window (all ranks); the window's mean loss (0-dim,
    detached, on ``device``) and its valid samples over all ranks (0-dim tensor). The valid
    counts are summed on the batches' CPU masks, and nothing is read back from the device here:
    callers read the two tensors on logging steps only (each read is a host-device sync)."""
    local = sum(int(b["valid"].sum()) for b in micro)  # CPU tensors: no device sync
    if world > 1:
        valid = torch.tensor([float(local)]).to(device, non_blocking=True)
        torch.distributed.all_reduce(valid)
        valid = valid[0]
        denom = valid.clamp(min=1.0)
    else:
        valid, denom = torch.tensor(local), float(max(local, 1))
    losses, total = [], torch.zeros((), device=device)
    for b in micro:
        # int32 from the stream (half the bytes to copy and send), int64 once on the device
        text, image = b["text"].to(device, non_blocking=True).long(), b["image"].to(device, non_blocking=True).long()
        ok = b["valid"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            res = model(text, image)
        per_sample = res.get("loss_per_sample")
        if per_sample is None:  # a model whose forward does not give it: the image cross-entropy, computed here
            per_sample = F.cross_entropy(res["image_logits"].float().transpose(1, 2), image, reduction="none").mean(dim=1)  # (B,)
        summed = (per_sample.float() * ok).sum()
        losses.append(summed * world / denom)  # DDP averages gradients over ranks: undo that
        total = total + summed.detach()
    return losses, total / denom, valid


@torch.no_grad()
def heldout_loss(model, ds: TokenStream, device, bf16: bool, n: int = 0) -> dict:
    """The image-token cross-entropy of ``model`` on a held-out token set (the test split), in
    nats per image token, over its first ``n`` valid samples in stream order (epoch 0; 0 = all):
    ``{"test_loss", "samples"}``. Model in eval mode (no dropout), no gradients; one host read at
    the end. ``T2IError`` when the set holds no samples."""
    model.eval()
    ds.set_epoch(0)
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    for b in ds:
        ok = b["valid"]
        take = int(ok.sum()) if not n else min(int(ok.sum()), n - count)
        if take <= 0:
            if n and count >= n:
                break
            continue
        text, image = b["text"][ok][:take], b["image"][ok][:take]
        text, image = text.to(device, non_blocking=True).long(), image.to(device, non_blocking=True).long()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(text, image)["image_logits"]
        ce = F.cross_entropy(logits.float().transpose(1, 2), image, reduction="none").mean(dim=1)  # (take,)
        total += ce.double().sum()
        count += take
    if not count:
        raise T2IError(f"{ds.img_dir}: no samples to evaluate the prior on")
    return {"test_loss": round(float(total) / count, 6), "samples": count}


def build_prior(cfg: PriorTrainConfig, tokens: dict, resume: dict | None, last: Path):
    """The run's prior: its builder with the token spaces and ``model.<field>`` settings, except
    when resuming one that started from pretrained folders (G3's ``model.bert`` / ``model.gpt2``):
    then the checkpoint's own config rebuilds it, as ``checkpoint.load_prior`` does, and its
    weights replace the initial ones, so the folders need not be there (nor be read again)."""
    saved = (resume or {}).get("config") or {}
    if saved.get("pretrained"):
        return prior_from_config(resume["kind"], saved, str(last))
    return PRIORS[cfg.arch](**tokens, **cfg.model)


def train_prior(cfg: PriorTrainConfig) -> dict:
    rank, world, device = setup_distributed()
    with torch_settings(device, cfg.num_workers), tracked(cfg, rank):
        return _train_prior(cfg, rank, world, device)


def _train_prior(cfg: PriorTrainConfig, rank: int, world: int, device: torch.device) -> dict:
    if rank == 0:
        log.info("train prior: %s", json.dumps(asdict(cfg), sort_keys=True))
    cuda = device.type == "cuda"
    bf16 = use_bf16(cfg.precision, device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last.pt"
    resume = resume_checkpoint(last, cfg.arch)
    expect = (resume or {}).get("fingerprints", {})
    was = ((resume or {}).get("train_config") or {}).get("level", "")
    if resume is not None and was != cfg.level:
        raise T2IError(f"{last} models image-token level {was or '(single grid)'!s}; level={cfg.level!r} is another grid: resume with "
                       f"level={was!r}, or start fresh with another out=")
    ds = TokenStream(cfg.image_tokens, cfg.text_tokens, cfg.batch_size, cfg.seed,
                     expect_tokenizer=expect.get("tokenizer"), expect_autoencoder=expect.get("autoencoder"), level=cfg.level or None)
    tok, ae = ds.txt_m["tokenizer"], ds.img_m["autoencoder"]
    tokens = dict(text_vocab=tok["vocab_size"], text_len=tok["length"], pad_id=tok["pad_id"], image_vocab=ds.image_vocab, grid=ds.grid)
    clash = sorted(set(tokens) & set(cfg.model))
    if clash:
        raise T2IError(f"model.{', model.'.join(clash)} come from the token shards' manifests and cannot be overridden")
    heldout = None
    if cfg.eval_image_tokens and rank == 0:  # the same tokenizer and autoencoder as the train split, checked by fingerprint
        heldout = TokenStream(cfg.eval_image_tokens, cfg.eval_text_tokens, cfg.batch_size, cfg.seed,
                              expect_tokenizer=tok["fingerprint"], expect_autoencoder=ae["fingerprint"], level=cfg.level or None)
        warn_if_not_heldout("eval_image_tokens", cfg.eval_image_tokens, heldout.img_m.get("split"), ds.img_m.get("split"))
    torch.manual_seed(cfg.seed)
    model = build_prior(cfg, tokens, resume, last).to(device)
    opt = make_optimizer(cfg, [{"params": list(model.parameters()), "lr": cfg.lr}], device)
    step, epoch, in_epoch, lost_before = 0, 0, 0, 0
    if resume is not None:
        step, epoch, in_epoch, lost_before = restore_training(resume, last, ds, cfg, model, opt, SCHEDULE)
        after_restore(opt, device)
    ddp = wrap_ddp(model, world, device)
    forward = compiled(ddp, cfg.compile)
    per_epoch = -(-ds.batches_per_epoch(cfg.num_workers) // cfg.grad_accum)  # optimizer steps: the last window may be short
    total = total_steps(cfg, per_epoch)
    progress = Progress(total, step, rank, "train prior")
    fingerprints = {"tokenizer": tok["fingerprint"], "autoencoder": ae["fingerprint"]}
    t0, tokens_seen = time.perf_counter(), 0
    end = min(total, step + cfg.stop_after) if cfg.stop_after > 0 else total
    metrics_path = out / "metrics.jsonl"
    lost = LostSamples(ds.epoch_samples(cfg.num_workers), cfg.max_lost, world, rank, device, metrics_path)
    lost.start_epoch(epoch, lost_before)
    first_step, evaluated = step, -1

    def checkpoint() -> None:
        if rank == 0:
            save_prior(last, model, **training_state(opt, step, epoch, in_epoch, ds, cfg, lost.total), fingerprints=fingerprints,
                       tokens=tokens, text_config=ds.txt_m["config"], **({"level": cfg.level} if cfg.level else {}))

    def evaluate() -> None:
        nonlocal evaluated
        evaluated = step
        if heldout is None:
            return
        m = heldout_loss(model, heldout, device, bf16, cfg.eval_n)
        append_metrics(metrics_path, {"step": step, "epoch": epoch, "split": "test", **m})
        log.info("step %d held-out loss %.4f nats per image token (%d samples)", step, m["test_loss"], m["samples"])

    while step < end:
        ds.set_epoch(epoch, in_epoch, cfg.num_workers)
        it = loader(ds, cfg.num_workers, pin_memory=cuda)
        exhausted = False
        while step < end:
            micro = []
            for _ in range(cfg.grad_accum):
                b = next(it, None)
                if b is None:
                    exhausted = True
                    break
                micro.append(b)
            if not micro:
                break
            lost.add(micro, step + 1)
            rates = set_lr(opt, cfg, step, epoch, total)
            model.train()
            losses, mean_loss, valid = window_loss(forward, micro, device, bf16, world)
            opt.zero_grad(set_to_none=True)
            for i, loss in enumerate(losses):
                if world > 1 and i < len(losses) - 1:
                    with ddp.no_sync():
                        loss.backward()
                else:
                    loss.backward()
            grad_norm = clip_gradients(model.parameters(), cfg.grad_clip)
            opt.step()
            step, in_epoch = step + 1, in_epoch + len(micro)
            tokens_seen = tokens_seen + valid * (tokens["text_len"] + tokens["grid"] ** 2)  # a tensor: read on logging steps
            progress.update()
            if rank == 0 and (step % cfg.log_every == 0 or step == total):
                rate = float(tokens_seen) / (time.perf_counter() - t0)
                row = {"step": step, "epoch": epoch, "split": "train", "loss": round(float(mean_loss), 6), "lr": rates[0],
                       "valid": int(valid), "lost_in_epoch": lost.total, "tokens_per_s": round(rate, 1)}
                if grad_norm is not None:
                    row["grad_norm"] = round(float(grad_norm), 6)  # before clipping
                append_metrics(metrics_path, row)
                progress.show(step, loss=row["loss"], tok_s=f"{rate:,.0f}", lr=row["lr"])
            if step % cfg.ckpt_every == 0 or step == end:  # any batch: a resume is exact for every worker count
                checkpoint()
            if cfg.eval_every and step % cfg.eval_every == 0:
                evaluate()
            if exhausted:
                break
        else:
            break
        if step < end:
            epoch, in_epoch = epoch + 1, 0
            lost.start_epoch(epoch)
    progress.close()
    if step >= total and step > first_step and evaluated != step:
        evaluate()
    close_loaders(ds)  # the persistent loader workers end with the run
    wait_for_all(world)
    return {"step": step, "epoch": epoch, "checkpoint": str(last)}
