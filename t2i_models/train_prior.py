"""Train a prior (G1, G2 or G3) on streaming image-token + text-token shards.

Same command on CPU, one GPU (bf16 autocast; fused attention through scaled_dot_product_attention)
or several through ``torchrun`` (DDP). Each optimizer step takes ``grad_accum`` micro-batches; the
loss is the mean image-token cross-entropy over the *valid* samples of the whole window (padding
entries from ``TokenStream`` weigh nothing), so accumulating k micro-batches of B equals one batch
of k·B — the thesis code summed micro-batch means without rescaling. Learning rate: linear warmup,
then cosine decay to 10%. ``out/last.pt`` holds the config, weights, optimizer, step, the
stream's state with its plan (batch size, world size, workers, seed, shuffle buffer, the sets'
digests) and the tokenizer and autoencoder fingerprints; a rerun resumes at the exact next batch,
for any number of dataloader workers. A rerun that would change the plan mid-epoch stops naming
the setting (``plan.check_plan``); one that changes the schedule (steps, lr, warmup, weight
decay, grad_accum) says so in a warning. Samples the stream could not read are logged, written
to ``metrics.jsonl`` and stop the run above ``max_lost`` of an epoch (``stream.LostSamples``).
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from t2i_data.errors import T2IError
from t2i_data.stream import LostSamples, loader
from t2i_data.token_stream import TokenStream

from .checkpoint import restore_training, resume_checkpoint, save_prior, training_state
from .distributed import setup_distributed, wait_for_all, wrap_ddp
from .prior_builders import PRIORS
from .train_common import append_metrics, check_train_config, use_bf16

log = logging.getLogger(__name__)
SCHEDULE = ("steps", "lr", "warmup", "weight_decay", "grad_accum")


@dataclass(frozen=True)
class PriorTrainConfig:
    arch: str = "g1_mdmnist"
    image_tokens: str = ""
    text_tokens: str = ""
    out: str = ""
    steps: int = 10_000
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 3e-4
    warmup: int = 500
    weight_decay: float = 0.01
    num_workers: int = 1
    seed: int = 0
    precision: str = "auto"
    log_every: int = 50
    ckpt_every: int = 500
    stop_after: int = 0  # > 0: stop (with a checkpoint) after this many steps of this run, to resume later
    max_lost: float = 0.001  # share of an epoch's samples that may be unreadable before the run stops
    model: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_train_config(self, PRIORS, ("image_tokens", "text_tokens", "out"),
                           "image_tokens=DIR, text_tokens=DIR and out=DIR are needed",
                           ("steps", "batch_size", "grad_accum", "ckpt_every", "log_every"))


def lr_at(cfg: PriorTrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    f = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * f)))


def window_loss(model, micro: list[dict], device, bf16: bool, world: int) -> tuple[list[torch.Tensor], float, int]:
    """Losses to backpropagate for one optimizer step's micro-batches, each already divided by the
    number of valid samples in the whole window (all ranks), and the window's mean loss."""
    valid = torch.tensor(float(sum(int(b["valid"].sum()) for b in micro)), device=device)
    if world > 1:
        torch.distributed.all_reduce(valid)
    denom = valid.clamp(min=1.0)
    losses, total = [], 0.0
    for b in micro:
        # int32 from the stream (half the bytes to copy and send), int64 once on the device
        text, image = b["text"].to(device, non_blocking=True).long(), b["image"].to(device, non_blocking=True).long()
        ok = b["valid"].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(text, image)["image_logits"]
        per_sample = F.cross_entropy(logits.float().transpose(1, 2), image, reduction="none").mean(dim=1)  # (B,)
        loss = (per_sample * ok).sum() * world / denom  # DDP averages gradients over ranks: undo that
        losses.append(loss)
        total += float((per_sample.detach() * ok).sum())
    return losses, total / max(float(valid), 1.0), int(valid)


def train_prior(cfg: PriorTrainConfig) -> dict:
    rank, world, device = setup_distributed()
    if rank == 0:
        log.info("train prior: %s", json.dumps(asdict(cfg), sort_keys=True))
    cuda = device.type == "cuda"
    bf16 = use_bf16(cfg.precision, device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last.pt"
    resume = resume_checkpoint(last, cfg.arch)
    expect = (resume or {}).get("fingerprints", {})
    ds = TokenStream(cfg.image_tokens, cfg.text_tokens, cfg.batch_size, cfg.seed,
                     expect_tokenizer=expect.get("tokenizer"), expect_autoencoder=expect.get("autoencoder"))
    tok, ae = ds.txt_m["tokenizer"], ds.img_m["autoencoder"]
    tokens = dict(text_vocab=tok["vocab_size"], text_len=tok["length"], pad_id=tok["pad_id"], image_vocab=ae["vocab_size"], grid=ae["grid"])
    clash = sorted(set(tokens) & set(cfg.model))
    if clash:
        raise T2IError(f"model.{', model.'.join(clash)} come from the token shards' manifests and cannot be overridden")
    torch.manual_seed(cfg.seed)
    model = PRIORS[cfg.arch](**tokens, **cfg.model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, epoch, in_epoch, lost_before = 0, 0, 0, 0
    if resume is not None:
        step, epoch, in_epoch, lost_before = restore_training(resume, last, ds, cfg, model, opt, SCHEDULE)
    ddp = wrap_ddp(model, world, device)
    bar = tqdm(total=cfg.steps, initial=step, unit="step", disable=None if rank == 0 else True)
    fingerprints = {"tokenizer": tok["fingerprint"], "autoencoder": ae["fingerprint"]}
    t0, tokens_seen = time.perf_counter(), 0
    end = min(cfg.steps, step + cfg.stop_after) if cfg.stop_after > 0 else cfg.steps
    lost = LostSamples(ds.epoch_samples(cfg.num_workers), cfg.max_lost, world, rank, device, out / "metrics.jsonl")
    lost.start_epoch(epoch, lost_before)

    def checkpoint() -> None:
        if rank == 0:
            save_prior(last, model, **training_state(opt, step, epoch, in_epoch, ds, cfg, lost.total), fingerprints=fingerprints,
                       tokens=tokens, text_config=ds.txt_m["config"])

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
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, step)
            model.train()
            losses, mean_loss, valid = window_loss(ddp, micro, device, bf16, world)
            opt.zero_grad(set_to_none=True)
            for i, loss in enumerate(losses):
                if world > 1 and i < len(losses) - 1:
                    with ddp.no_sync():
                        loss.backward()
                else:
                    loss.backward()
            opt.step()
            step, in_epoch = step + 1, in_epoch + len(micro)
            tokens_seen += valid * (tokens["text_len"] + tokens["grid"] ** 2)
            bar.update(1)
            if rank == 0 and (step % cfg.log_every == 0 or step == cfg.steps):
                rate = tokens_seen / (time.perf_counter() - t0)
                append_metrics(out / "metrics.jsonl", {"step": step, "epoch": epoch, "loss": round(mean_loss, 6), "lr": lr_at(cfg, step - 1),
                                                       "valid": valid, "lost_in_epoch": lost.total, "tokens_per_s": round(rate, 1)})
                bar.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{rate:,.0f}")
            if step % cfg.ckpt_every == 0 or step == end:  # any batch: a resume is exact for every worker count
                checkpoint()
            if exhausted:
                break
        else:
            break
        if step < end:
            epoch, in_epoch = epoch + 1, 0
            lost.start_epoch(epoch)
    bar.close()
    wait_for_all(world)
    return {"step": step, "epoch": epoch, "checkpoint": str(last)}

