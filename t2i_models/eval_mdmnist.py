"""The thesis' MD-MNIST comparison of two priors (A, B), judged by a CLIP trained on reconstructions.

- CLIP accuracy: on the test split's reconstructions, the share of images whose true description
  scores strictly above all 12 of its variants (chance 1/13).
- CICS: N random descriptions (each attribute uniform; description i a pure function of
  (seed, i)); each prior draws one image per description; CLIP says which of the two images
  matches better (cosine of the unit features; exact equality is a tie, counted apart). Reported:
  the counts, their mean per batch of 100 descriptions (100 · wins / N; the spread over complete
  batches of 100), and the two-sided exact binomial sign test of A's wins against B's (ties
  left out, H0: p = 0.5).
- CTRS: for every generated image, its true description and 12 variants, variant m with exactly
  m of the 12 symbols changed (m distinct positions; each changed symbol takes another value of
  the same attribute; both drawn from (seed, i, m)). The thesis code drew positions *with*
  replacement, so its "m changes" could be fewer; here they are exactly m. Two 13-column
  histograms per prior: ``picked[m]``, the number of images whose highest-scoring description is
  the one with m changes (the thesis' table; column 0 = CLIP picks the true description), and
  ``true_rank[r]``, the number of images whose true description has r variants scoring at least as
  high. Ties count against the true description, so a CLIP that scores everything alike lands in
  column 12, never in column 0; ``picked`` breaks ties toward the larger m for the same reason.
- Loss: per-sample image-token cross-entropy (nats per token, mean over the h·w tokens) of each
  prior on the test split: mean, standard deviation, quantiles, and a log-scale histogram.

Outputs in ``out``: report.json (sorted keys), ctrs.png, ctrs_rank.png, loss_hist.png, samples.png.
The descriptions, their variants, CLIP's scores and the test-split pass come from ``clip_eval``,
which CLIP training uses for the same accuracy.
"""
from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from t2i_data.errors import T2IError
from t2i_data.figures import bar_chart, value_histogram
from t2i_data.rng import keyed_u64, stream_id
from t2i_data.text.mdmnist import MDMNISTTokenizer

from .checkpoint import load_autoencoder, load_clip, load_prior_checked
from .clip_eval import (M_MAX, add_counts, counts_summary, ctrs_counts, describe, prior_text, random_descriptions, split_pass,
                        variant_scores, variant_set)
from .encode import decode_tokens, reconstruct
from .sample import prompt_sheet

log = logging.getLogger(__name__)
QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)


# -- statistics ------------------------------------------------------------------------------------
def sign_test_p(wins_a: int, wins_b: int) -> float:
    """Two-sided exact binomial test of wins_a out of wins_a + wins_b against p = 1/2:
    P(X ≤ min) + P(X ≥ max) = min(1, 2 · Σ_{i ≤ min(k, n−k)} C(n, i) / 2^n), in exact arithmetic."""
    n, k = wins_a + wins_b, min(wins_a, wins_b)
    if n == 0:
        return 1.0
    tail, c = 0, 1
    for i in range(k + 1):  # C(n, i) by the exact recurrence: one pass, no factorials
        tail += c
        c = c * (n - i) // (i + 1)
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


# -- priors ----------------------------------------------------------------------------------------
def mdmnist_tokenizer_fingerprint() -> str:
    with tempfile.TemporaryDirectory() as d:
        return MDMNISTTokenizer().save(d)


@dataclass(frozen=True)
class EvalConfig:
    priors: tuple = ()  # two prior checkpoints, A then B
    clip: str = ""
    autoencoder: str = ""  # the checkpoint that made the priors' image tokens
    image_tokens: str = ""  # the test split's image-token shards
    text_tokens: str = ""  # ... and its text-token shards
    out: str = ""
    n: int = 1000  # CICS / CTRS descriptions
    batch_size: int = 100  # descriptions generated at once
    seed: int = 0
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    eval_samples: int = 0  # test samples for CLIP accuracy and losses; 0: all
    eval_batch_size: int = 64
    grid_prompts: int = 6
    grid_samples: int = 4
    bins: int = 40
    device: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "priors", tuple(self.priors))
        if len(self.priors) != 2:
            raise T2IError(f"--priors takes exactly two prior checkpoints (A and B), got {len(self.priors)}")
        missing = [k for k in ("clip", "autoencoder", "image_tokens", "text_tokens", "out") if not getattr(self, k)]
        if missing:
            raise T2IError(f"{', '.join(missing)} needed (flags or the [eval_mdmnist] table of --config)")
        for name in ("n", "batch_size", "eval_batch_size", "bins", "grid_prompts", "grid_samples"):
            if getattr(self, name) < 1:
                raise T2IError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise T2IError(f"device must be auto, cpu or cuda, got {self.device!r}")


def _generator(seed: int, what: str, index: int, device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(keyed_u64(seed, stream_id("eval-mdmnist", what), index, 0)) & (2**63 - 1))
    return g


def _generate(cfg: EvalConfig, prior, ck, symbols: np.ndarray, what: str, index: int, device) -> torch.Tensor:
    return prior.generate(prior_text(ck, symbols).to(device), temperature=cfg.temperature, top_k=cfg.top_k or None,
                          top_p=cfg.top_p if cfg.top_p < 1 else None, generator=_generator(cfg.seed, what, index, device))


@torch.no_grad()
def cics_ctrs(cfg: EvalConfig, priors, clip, ae, device) -> tuple[dict, dict]:
    wins = np.zeros((cfg.n, 3), dtype=np.int64)  # per description: A wins, B wins, tie
    ctrs = [{}, {}]
    for start in tqdm(range(0, cfg.n, cfg.batch_size), desc="CICS / CTRS", unit="batch", disable=None):
        idx = np.arange(start, min(start + cfg.batch_size, cfg.n))
        symbols = random_descriptions(cfg.seed, idx)
        sets = variant_set(symbols, cfg.seed, "ctrs", idx)
        scores = []
        for slot, (prior, ck) in enumerate(priors):
            images = reconstruct(ae, _generate(cfg, prior, ck, symbols, f"cics-{slot}", start, device))
            scores.append(variant_scores(clip, images, sets))  # (n, 13); column 0 is the CICS score
            ctrs[slot] = add_counts(ctrs[slot], ctrs_counts(scores[-1]))
        a, b = scores[0][:, 0], scores[1][:, 0]
        wins[idx] = torch.stack([a > b, b > a, a == b], dim=1).numpy()
    return cics_summary(wins), {"a": counts_summary(ctrs[0]), "b": counts_summary(ctrs[1])}


def cics_summary(wins: np.ndarray) -> dict:
    """(n, 3) 0/1 rows, one per prompt in prompt order: A wins, B wins, tie → the CICS counts, their
    mean per batch of 100 prompts (100 · wins / n) with the sample standard deviation over the
    complete batches of 100 (the thesis' Table 9 shape: 546 batches of 100), and the two-sided
    exact sign test of A's wins against B's (ties left out)."""
    n = len(wins)
    per100 = [wins[i : i + 100].sum(0) for i in range(0, n - 99, 100)]  # complete batches of 100
    a_w, b_w, ties = (int(x) for x in wins.sum(0))
    spread = np.std(np.stack(per100), axis=0, ddof=1).round(4).tolist() if len(per100) > 1 else [None] * 3  # sample sd
    return {"n": n, "a_wins": a_w, "b_wins": b_w, "ties": ties,
            "per_100": {"a_mean": round(100 * a_w / n, 4), "b_mean": round(100 * b_w / n, 4), "ties_mean": round(100 * ties / n, 4),
                        "complete_batches": len(per100), "a_std": spread[0], "b_std": spread[1], "ties_std": spread[2]},
            "p_value": sign_test_p(a_w, b_w), "test": "two-sided exact binomial sign test on A's wins among A + B wins (ties left out), H0 p = 1/2"}


def loss_summary(values: np.ndarray) -> dict:
    q = np.quantile(values, QUANTILES)
    return {"n": int(len(values)), "mean": round(float(values.mean()), 6), "std": round(float(values.std()), 6),
            "quantiles": {f"{p:g}": round(float(v), 6) for p, v in zip(QUANTILES, q)}}


def _check_compatible(cfg: EvalConfig, priors, clip_ck, ae_ck) -> dict:
    fa, fb = priors[0][1]["fingerprints"], priors[1][1]["fingerprints"]
    ae_fp, clip_ae = ae_ck["fingerprint"], clip_ck["fingerprints"]["autoencoder"]
    for name, path, f in zip("AB", cfg.priors, (fa, fb)):
        if f["autoencoder"] != ae_fp:
            raise T2IError(f"prior {name} ({path}) was trained on image tokens of autoencoder {f['autoencoder'][:16]}, "
                           f"but --autoencoder is {ae_fp[:16]}; pass the autoencoder that made its tokens")
    if clip_ae != ae_fp:
        raise T2IError(f"the CLIP ({cfg.clip}) was trained on reconstructions by autoencoder {clip_ae[:16]}, the priors' tokens come from "
                       f"{ae_fp[:16]}; train a CLIP on this autoencoder's reconstructions ('t2i train clip')")
    if fa["tokenizer"] != fb["tokenizer"]:
        raise T2IError(f"prior A was trained on text from tokenizer {fa['tokenizer'][:16]}, prior B on {fb['tokenizer'][:16]}; "
                       f"compare priors trained on the same MD-MNIST token shards")
    md = mdmnist_tokenizer_fingerprint()
    if fa["tokenizer"] != md:
        raise T2IError(f"the priors' tokenizer {fa['tokenizer'][:16]} is not the MD-MNIST symbol tokenizer ({md[:16]}); "
                       f"this evaluation writes its prompts as MD-MNIST descriptions")
    return {"autoencoder": ae_fp, "tokenizer": md, "clip": clip_ck["fingerprint"]}


def evaluate(cfg: EvalConfig) -> dict:
    device = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu")
    priors = [load_prior_checked(p) for p in cfg.priors]
    clip, clip_ck = load_clip(cfg.clip)
    if clip.cfg.text_input != "symbols":
        raise T2IError(f"--clip {cfg.clip} reads text-token rows ({clip_ck['train_config']['arch']}); 't2i eval mdmnist' scores random "
                       f"descriptions with a symbol CLIP (clip_mdmnist): use 't2i eval priors --variants mdmnist' for this one")
    ae, ae_ck = load_autoencoder(cfg.autoencoder)
    fingerprints = _check_compatible(cfg, priors, clip_ck, ae_ck)
    priors = [(m.to(device).eval(), ck) for m, ck in priors]
    clip, ae = clip.to(device), ae.to(device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    labels = [f"{s}: {ck['train_config']['arch']}" for s, (_, ck) in zip("AB", priors)]

    accuracy, losses, eval_set = split_pass(cfg.image_tokens, cfg.text_tokens, cfg.seed, cfg.eval_batch_size, cfg.eval_samples,
                                            clip, ae, priors, device, fingerprints["autoencoder"])
    warnings = []
    if accuracy["accuracy"] <= accuracy["chance"]:  # then CLIP cannot tell descriptions apart: CICS and CTRS are noise
        warnings.append(f"CLIP picks the true description for {accuracy['accuracy']:.1%} of {accuracy['samples']} test images, "
                        f"at or below chance ({accuracy['chance']:.1%}): CICS and CTRS below are noise; train CLIP longer "
                        f"('t2i train clip') before comparing priors")
        log.warning("%s", warnings[-1])
    cics, ctrs = cics_ctrs(cfg, priors, clip, ae, device)

    cols = [str(m) for m in range(M_MAX + 1)]
    bar_chart([(labels[0], ctrs["a"]["picked"]), (labels[1], ctrs["b"]["picked"])], cols,
              f"CTRS: which description CLIP scores highest ({cfg.n} generated images per prior)",
              "m = symbols changed in the highest-scoring description (0 = the true one)", "images").save(out / "ctrs.png")
    bar_chart([(labels[0], ctrs["a"]["true_rank"]), (labels[1], ctrs["b"]["true_rank"])], cols,
              "CTRS: rank of the true description among it and its 12 variants",
              "rank of the true description (0 = scored highest)", "images").save(out / "ctrs_rank.png")
    img, edges, counts = value_histogram([(labels[0], losses[0].tolist()), (labels[1], losses[1].tolist())], cfg.bins,
                                   f"Per-sample image-token cross-entropy on the {eval_set['split']} split",
                                   "loss (nats per image token)")
    img.save(out / "loss_hist.png")
    _sample_grid(cfg, priors, ae, labels, device).save(out / "samples.png")

    report = {
        "format": "t2i-eval-mdmnist/1",
        "config": {k: v for k, v in asdict(cfg).items() if k != "out"} | {"priors": list(cfg.priors)},
        "priors": {s: {"checkpoint": p, "arch": ck["train_config"]["arch"], "kind": ck["kind"], "step": ck.get("step")}
                   for s, p, (_, ck) in zip("ab", cfg.priors, priors)},
        "fingerprints": fingerprints,
        "eval_set": eval_set,
        "clip": {"checkpoint": cfg.clip, "arch": clip_ck["train_config"]["arch"], "step": clip_ck.get("step"), "test": accuracy},
        "cics": cics,
        "ctrs": dict(ctrs, columns="0..12: m changed symbols (picked) or the true description's rank (true_rank)"),
        "loss": {"a": loss_summary(losses[0]), "b": loss_summary(losses[1]),
                 "histogram": {"edges": [round(e, 6) for e in edges], "a": counts[0], "b": counts[1]}},
        "figures": {"ctrs": "ctrs.png", "ctrs_rank": "ctrs_rank.png", "loss": "loss_hist.png", "samples": "samples.png"},
        "warnings": warnings,
    }
    (out / "report.json").write_text(json.dumps(report, sort_keys=True, indent=2) + "\n")
    return report


@torch.no_grad()
def _sample_grid(cfg: EvalConfig, priors, ae, labels, device):
    """Both priors' samples for the same prompts (CICS descriptions 0..k−1): A's on the left, B's on
    the right of each row, the prompt under it."""
    k, s = cfg.grid_prompts, cfg.grid_samples
    symbols = random_descriptions(cfg.seed, np.arange(k))
    rows: list[list] = [[] for _ in range(k)]
    for slot, (prior, ck) in enumerate(priors):
        tokens = _generate(cfg, prior, ck, np.repeat(symbols, s, axis=0), f"grid-{slot}", 0, device)
        pix = decode_tokens(ae, tokens)
        for p in range(k):
            rows[p] += list(pix[p * s : (p + 1) * s])
    header = f"left {s}: {labels[0]}   |   right {s}: {labels[1]}   (temperature {cfg.temperature}, seed {cfg.seed})"
    return prompt_sheet(rows, [describe(x) for x in symbols], gap_after=s, header=header)
