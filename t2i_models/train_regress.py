"""``t2i train regress``: the regression baselines of the Transformer/VAE study (seed 000, ``regress``)
on an image-token set and a text-embedding set of the same image set.

Each step reads a batch from ``ShardStream([image_tokens, text_emb])`` (both derived from one image
set: ``align.check_same_image_set``; no pixels are read). Per sample and epoch: one caption row, the
one ``t2i_data.text_emb.caption_index`` draws from (seed, key, epoch) (the caption a token stream
picks), one token view uniform over the K stored views (``regress.draw_view``), and for the Siamese
mode a second caption row of the same image (``regress.draw_captions``'s positive). The target is
the autoencoder's z_q = codebook[tokens] (``regress.LatentSpace``), computed on the device.

Losses: ``mode = "mlp"``: MSE between the predicted and the target latent (mean over its entries;
the seed names no loss, MSE is the plain regression one). ``mode = "siamese"``: the same MSE of the
MLP on the head's output, detached, plus ``triplet_weight`` × Sentence-BERT's triplet loss on the
head's outputs (``regress.triplet_loss``, Euclidean, ``margin`` 1): anchor = the caption, positive =
another caption of the same image, negative = the anchor caption of the next sample of the batch
(another image: a stream never holds one image twice in an epoch).

The machinery is the other trainers': ``train_common``'s length, schedule, optimizer and clipping;
``last.pt`` every ``ckpt_every`` steps with the stream's state and a resume at the exact next batch;
``metrics.jsonl`` rows ``{"step", "epoch", "split": "train", "lr", "loss", "mse", "triplet"
(siamese), "samples_per_s", "lost_in_epoch"}`` and held-out rows ``{"split": "test", "mse",
"mse_mean", "triplet", "samples"}`` (``eval_text_emb`` / ``eval_image_tokens``, every ``eval_every``
steps and at the end); ``LostSamples``; DDP through ``distributed``. At the end rank 0 writes
``report.json``, the histograms and the decoded grid (``regress_eval``).

Refused with one line (``T2IError``): sets of different image sets, a set of another kind, a
VQ-VAE-2 set (two grids), tokens of a dVAE (no codebook vectors), an autoencoder checkpoint that
did not make the tokens, a held-out pair of another D or autoencoder, and a resume whose model
(D, latent size, mode, sizes), autoencoder or margin differs from the checkpoint's.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from t2i_data.align import check_autoencoder, check_same_image_set
from t2i_data.errors import T2IError
from t2i_data.manifest import split_manifest
from t2i_data.npyio import load_npy
from t2i_data.schema import levels_of
from t2i_data.stream import LostSamples, ShardStream, close_loaders, loader

from .checkpoint import check_resumed_config, load_autoencoder, restore_training, resume_checkpoint, save_regress, training_state, weights_fingerprint
from .distributed import setup_distributed, wait_for_all, wrap_ddp
from .regress import CONFIGS, MODES, STUDY_MARGIN, LatentSpace, build_regressor, draw_captions, draw_view, triplet_loss
from .tracking import log_figures, tracked
from .train_common import (Progress, after_restore, append_metrics, check_train_config, clip_gradients, compiled,
                           make_optimizer, set_lr, torch_settings, total_steps, use_bf16, warn_if_not_heldout)

log = logging.getLogger(__name__)
SCHEDULE = ("steps", "epochs", "optimizer", "lr", "lr_schedule", "milestones", "lr_gamma", "warmup", "weight_decay", "grad_clip",
            "triplet_weight")


@dataclass(frozen=True)
class RegressTrainConfig:
    """``[train_regress]`` / ``t2i train regress``. The seed gives the model, not its training: the
    optimizer, rate, batch and length here are chosen (``pipelines/regress-coco.toml`` says why)."""
    mode: str = "mlp"  # "mlp" (seed: BERT Encoder with VQ-VAE) | "siamese" (seed: Siamese-BERT with VQ-VAE)
    arch: str = "regress_study"  # regress.CONFIGS
    text_emb: str = ""  # a text-embedding set (t2i embed) of the train split
    image_tokens: str = ""  # the image-token set (t2i encode) of the same image set
    autoencoder: str = ""  # the VQ-VAE checkpoint that made image_tokens: its codebook gives the target
    out: str = ""
    eval_text_emb: str = ""  # the held-out split's text embeddings ...
    eval_image_tokens: str = ""  # ... and image tokens: held-out rows, histograms and the decoded grid
    pair_images: str = ""  # the image set the histogram pairs come from: its caption texts pick dissimilar pairs with no word in common
    steps: int = 0
    epochs: int = 0
    batch_size: int = 64  # chosen (the seed gives none)
    optimizer: str = "adam"  # chosen
    lr: float = 1e-4  # chosen
    lr_schedule: str = "constant"
    milestones: list[int] = field(default_factory=list)
    lr_gamma: float = 0.1
    warmup: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    margin: float = STUDY_MARGIN  # siamese: the triplet margin (Reimers & Gurevych 2019 §3: 1, Euclidean)
    triplet_weight: float = 1.0  # siamese: loss = mse + triplet_weight × triplet
    compile: bool = False
    eval_every: int = 0  # steps between held-out rows; 0: at the end only
    eval_n: int = 0  # held-out samples per evaluation; 0: all
    pairs_n: int = 1000  # images whose caption pairs the histograms take
    bins: int = 40
    grid_n: int = 8  # held-out samples in the decoded grid; 0: none
    stop_after: int = 0  # > 0: stop (with a checkpoint, no report) after this many steps of this run, to resume later
    num_workers: int = 2
    seed: int = 0
    shuffle_buffer: int = 256
    log_every: int = 50
    ckpt_every: int = 500
    precision: str = "auto"
    tracker: str = "none"  # "none" | "tensorboard" | "wandb": scalars and figures beside metrics.jsonl (tracking.py)
    max_lost: float = 0.001
    model: dict = field(default_factory=dict)  # overrides of the arch's fields (hidden, layers, head_dim)

    def __post_init__(self) -> None:
        check_train_config(self, CONFIGS, ("text_emb", "image_tokens", "autoencoder", "out"),
                           "text_emb=DIR, image_tokens=DIR, autoencoder=CKPT and out=DIR are needed (the train split's text embeddings "
                           "and image tokens, the VQ-VAE that made the tokens, and where checkpoints go)",
                           ("batch_size", "ckpt_every", "log_every", "bins"))
        object.__setattr__(self, "milestones", list(self.milestones))
        if self.mode not in MODES:
            raise T2IError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "siamese" and self.batch_size < 2:
            raise T2IError(f"mode=siamese takes its negatives from the other captions of the batch: batch_size >= 2, got {self.batch_size}")
        if not self.margin > 0 or self.triplet_weight < 0:
            raise T2IError(f"margin must be > 0 and triplet_weight >= 0, got {self.margin} and {self.triplet_weight}")
        for name in ("eval_n", "pairs_n", "grid_n", "stop_after"):
            if getattr(self, name) < 0:
                raise T2IError(f"{name} must be >= 0, got {getattr(self, name)}")
        if bool(self.eval_text_emb) != bool(self.eval_image_tokens):
            raise T2IError("eval_text_emb and eval_image_tokens go together (the held-out split's embeddings and tokens)")


def open_pair(text_emb: str, image_tokens: str, what: str = "") -> tuple[dict, dict, int]:
    """(image-token manifest, text-embedding manifest, D) of an aligned pair, after the checks of
    kinds, levels and image set. ``what``: "eval_" for the held-out pair's names in errors."""
    img_m = split_manifest(image_tokens)  # folders or URLs, as the stream reads
    txt_m = split_manifest(text_emb)
    ti, tt = f"{what}image_tokens={image_tokens}", f"{what}text_emb={text_emb}"
    if img_m.get("kind") != "image_tokens":
        raise T2IError(f"{ti}: a {img_m.get('kind')} set, not an image-token set (t2i encode writes those)")
    if txt_m.get("kind") != "text_emb":
        raise T2IError(f"{tt}: a {txt_m.get('kind')} set, not a text-embedding set (t2i embed writes those)")
    if levels_of(img_m):
        raise T2IError(f"{ti}: VQ-VAE-2 tokens (levels {', '.join(levels_of(img_m))}); the regression baselines regress onto one "
                       f"VQ-VAE grid: encode with a VQ-VAE")
    kind = (img_m.get("autoencoder") or {}).get("kind", "")
    if "dvae" in kind:
        raise T2IError(f"{ti}: tokens of a {kind}, whose codes index no codebook vectors (its decoder reads one-hot codes): no "
                       f"continuous latent to regress onto; encode with a VQ-VAE")
    check_same_image_set(img_m, txt_m, ti, tt, fix="embed and encode the same image set")
    dim = (txt_m.get("text_encoder") or {}).get("dim")
    if not isinstance(dim, int) or dim < 1:
        raise T2IError(f"{tt}: its manifest records no text_encoder.dim; rebuild it with t2i embed")
    return img_m, txt_m, dim


def regress_decode(seed: int, dim: int, vocab: int, grid: int, positive: bool):
    """decode(sample, epoch) → {"text_emb": float32 (D,), "tokens": int64 (h, w), "key"} and, with
    ``positive``, "positive": float32 (D,) (module docstring). ``T2IError`` naming the key for an
    array of another dtype or shape, or a token id outside the autoencoder's vocabulary."""
    from t2i_data.text_emb import MEMBER, text_emb_row

    def decode(sample: dict, epoch: int) -> dict:
        key = sample["__key__"]
        where = f"{sample.get('__url__', 'image-token set')}: {key}"
        row, a = text_emb_row(sample, seed, epoch, dim)
        tokens = load_npy(sample["image_tokens.npy"], f"{where}.image_tokens.npy") if "image_tokens.npy" in sample else None
        if tokens is None or tokens.ndim != 3 or tokens.shape[1:] != (grid, grid) or tokens.dtype.kind not in "ui" or not len(tokens):
            got = "missing" if tokens is None else f"{tokens.dtype} {tokens.shape}"
            raise T2IError(f"{where}.image_tokens.npy is {got}; the autoencoder's tokens are (views, {grid}, {grid}) integers")
        view = tokens[draw_view(len(tokens), seed, key, epoch)].astype(np.int64)
        if int(view.max()) >= vocab or int(view.min()) < 0:
            raise T2IError(f"{where}: token id {int(view.max())} outside the autoencoder's {vocab} codes; the set is damaged: rebuild it")
        out = {"text_emb": torch.from_numpy(row), "tokens": torch.from_numpy(view), "key": key}
        if positive:
            rows = load_npy(sample[MEMBER], where)
            out["positive"] = torch.from_numpy(rows[draw_captions(len(rows), seed, key, epoch, anchor=a)[1]].astype(np.float32))
        return out

    return decode


def prepare(cfg: RegressTrainConfig):
    """(model, latent space, decode, facts to record) after every check of the sets against each
    other and the autoencoder (module docstring)."""
    img_m, txt_m, dim = open_pair(cfg.text_emb, cfg.image_tokens)
    model_ae, ck = load_autoencoder(cfg.autoencoder)
    check_autoencoder(img_m, ck["fingerprint"], f"autoencoder={cfg.autoencoder}")
    space = LatentSpace(model_ae, f"autoencoder={cfg.autoencoder}")
    if cfg.eval_text_emb:
        em, et, edim = open_pair(cfg.eval_text_emb, cfg.eval_image_tokens, "eval_")
        if edim != dim:
            raise T2IError(f"eval_text_emb={cfg.eval_text_emb} holds {edim}-d embeddings, text_emb={cfg.text_emb} {dim}-d; embed both "
                           f"with the same encoder")
        if (et.get("text_encoder") or {}).get("fingerprint") != (txt_m.get("text_encoder") or {}).get("fingerprint"):
            log.warning("eval_text_emb=%s was made by another text encoder than text_emb=%s", cfg.eval_text_emb, cfg.text_emb)
        check_autoencoder(em, ck["fingerprint"], f"autoencoder={cfg.autoencoder}")
        warn_if_not_heldout("eval_image_tokens", cfg.eval_image_tokens, em.get("split"), img_m.get("split"))
    if cfg.pair_images:
        pm = split_manifest(cfg.pair_images)
        against = split_manifest(cfg.eval_image_tokens or cfg.image_tokens)
        check_same_image_set(against, pm, "eval_image_tokens" if cfg.eval_image_tokens else "image_tokens", f"pair_images={cfg.pair_images}",
                             fix="give the image set the histogram's tokens were encoded from")
    model = build_regressor(cfg.arch, cfg.mode, dim, space.size, **cfg.model)
    decode = regress_decode(cfg.seed, dim, space.vocab, space.grid, cfg.mode == "siamese")
    facts = {"autoencoder": {"fingerprint": ck["fingerprint"], "kind": space.kind, "codes": space.vocab, "dim": space.dim,
                             "grid": space.grid, "path": str(cfg.autoencoder)},
             "text_encoder": txt_m.get("text_encoder"), "image_set": txt_m.get("aligned_to"), "margin": cfg.margin, "mode": cfg.mode}
    return model, space, decode, facts


def step_loss(model, space: LatentSpace, batch: dict, cfg: RegressTrainConfig, device, forward=None) -> dict:
    """The step's losses on the valid entries of ``batch`` (0-dim tensors): "loss", "mse" and, for
    the Siamese mode, "triplet" (0 when fewer than two valid entries: no negative)."""
    forward = forward or model
    valid = batch["valid"]
    x = batch["text_emb"][valid].to(device, non_blocking=True)
    target = space.target(batch["tokens"][valid].to(device, non_blocking=True))
    if cfg.mode == "mlp":
        mse = F.mse_loss(forward(x).float(), target)
        return {"loss": mse, "mse": mse.detach()}
    core = model.module if hasattr(model, "module") else model
    a, p = core.features(x), core.features(batch["positive"][valid].to(device, non_blocking=True))
    tri = triplet_loss(a.float(), p.float(), a.roll(1, 0).float(), cfg.margin) if len(a) > 1 else a.sum() * 0
    mse = F.mse_loss(core.mlp(a.detach()).float(), target)  # the head learns from the triplet loss only (regress docstring)
    return {"loss": mse + cfg.triplet_weight * tri, "mse": mse.detach(), "triplet": tri.detach()}


def train_regress(cfg: RegressTrainConfig) -> dict:
    """Train (or resume) one regression run; returns {"step", "epoch", "fingerprint", "checkpoint",
    "report"}. ``T2IError`` for wrong use (module docstring)."""
    rank, world, device = setup_distributed()
    with torch_settings(device, cfg.num_workers), tracked(cfg, rank) as tracker:
        return _train(cfg, rank, world, device, tracker)


def _train(cfg: RegressTrainConfig, rank: int, world: int, device: torch.device, tracker) -> dict:
    bf16 = use_bf16(cfg.precision, device)
    torch.manual_seed(cfg.seed)  # the weights' initialisation; every later draw comes from (seed, key, epoch)
    model, space, decode, facts = prepare(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model.to(device)
    space.to(device)
    opt = make_optimizer(cfg, [{"params": list(model.parameters()), "lr": cfg.lr}], device)
    ds = ShardStream([cfg.image_tokens, cfg.text_emb], decode, cfg.batch_size, cfg.seed, cfg.shuffle_buffer)
    per_epoch = ds.batches_per_epoch(cfg.num_workers)
    total = total_steps(cfg, per_epoch)
    step, epoch, in_epoch, lost_before = 0, 0, 0, 0
    last = out / "last.pt"
    ck = resume_checkpoint(last, cfg.arch, map_location=device)
    if ck is not None:
        check_resumed_config(ck, model, last, "a regressor of other sizes",
                             "; in_dim is the text embeddings' D, out_dim the latent's, head_dim the mode's")
        was = {"autoencoder": (ck.get("autoencoder") or {}).get("fingerprint"), "margin": ck.get("margin"), "mode": ck.get("mode")}
        now_ = {"autoencoder": facts["autoencoder"]["fingerprint"], "margin": facts["margin"], "mode": facts["mode"]}
        for k in was:
            if was[k] != now_[k]:
                raise T2IError(f"{last} was trained with {k} {str(was[k])[:16]}, this run has {str(now_[k])[:16]}; resume with the same, "
                               f"or start fresh with another out=")
        step, epoch, in_epoch, lost_before = restore_training(ck, last, ds, cfg, model, opt, SCHEDULE)
        after_restore(opt, device)
        log.info("resuming %s at step %d (epoch %d, batch %d)", last, step, epoch, in_epoch)
    forward = compiled(wrap_ddp(model, world, device), cfg.compile)
    metrics_path = out / "metrics.jsonl"
    progress = Progress(total, step, rank, f"train regress ({cfg.mode})")
    lost = LostSamples(ds.epoch_samples(cfg.num_workers), cfg.max_lost, world, rank, device, metrics_path)
    lost.start_epoch(epoch, lost_before)
    first_step, evaluated, heldout = step, -1, None

    def checkpoint() -> None:
        if rank == 0:
            save_regress(last, model, **training_state(opt, step, epoch, in_epoch, ds, cfg, lost.total), **facts)

    def evaluate() -> None:
        nonlocal evaluated, heldout
        evaluated = step
        if rank == 0 and cfg.eval_text_emb:
            from .regress_eval import heldout_metrics

            m = heldout = heldout_metrics(model.eval(), space, cfg, cfg.eval_text_emb, cfg.eval_image_tokens, device)
            append_metrics(metrics_path, {"step": step, "epoch": epoch, "split": "test", **m})
            log.info("step %d held-out (%d samples): mse %.5g (the held-out mean latent: %.5g)", step, m["samples"], m["mse"], m["mse_mean"])

    t0, seen = time.perf_counter(), 0
    end = min(total, step + cfg.stop_after) if cfg.stop_after > 0 else total
    while step < end:
        ds.set_epoch(epoch, in_epoch, cfg.num_workers)
        for batch in loader(ds, cfg.num_workers, pin_memory=device.type == "cuda"):
            lost.add([batch], step + 1)
            rates = set_lr(opt, cfg, step, epoch, total)
            model.train()
            n_valid = int(batch["valid"].sum())
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                res = step_loss(model, space, batch, cfg, device, forward) if n_valid else None
            opt.zero_grad(set_to_none=True)
            if res is not None:  # an all-padding batch (every sample lost) takes no step
                res["loss"].backward()
                grad_norm = clip_gradients(model.parameters(), cfg.grad_clip)
                opt.step()
            step, in_epoch, seen = step + 1, in_epoch + 1, seen + n_valid
            progress.update()
            if rank == 0 and res is not None and (step % cfg.log_every == 0 or step == total):
                rate = seen * world / (time.perf_counter() - t0)
                row = {"step": step, "epoch": epoch, "split": "train", "lr": rates[0], "samples_per_s": round(rate, 1),
                       "lost_in_epoch": lost.total, **{k: round(float(v.detach()), 8) for k, v in res.items()}}
                if grad_norm is not None:
                    row["grad_norm"] = round(float(grad_norm), 6)
                append_metrics(metrics_path, row)
                progress.show(step, loss=row["loss"], mse=row["mse"], lr=row["lr"])
            if step % cfg.ckpt_every == 0 or step == end:
                checkpoint()
            if cfg.eval_every and step % cfg.eval_every == 0:
                evaluate()
            if step >= end or in_epoch == per_epoch:
                break
        if in_epoch >= per_epoch:
            epoch, in_epoch = epoch + 1, 0
            lost.start_epoch(epoch)
    progress.close()
    close_loaders(ds)
    report = None
    if step < total:  # stop_after: the rest of the run, its held-out row and its report come with the resume
        log.info("stopped at step %d of %d (stop_after); rerun with the same out= to resume", step, total)
    elif step > first_step and evaluated != step:
        evaluate()
    if rank == 0 and step == total:
        from .regress_eval import write_report

        report = write_report(model.eval(), space, cfg, device, out, step, heldout if evaluated == step else None)
        log_figures(tracker, step, json.loads(Path(report).read_text()).get("figures", []))
    wait_for_all(world)
    return {"step": step, "epoch": epoch, "fingerprint": weights_fingerprint(model), "checkpoint": str(last), "report": report}
