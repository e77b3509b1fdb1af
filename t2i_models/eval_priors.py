"""``t2i eval priors``: the thesis' comparison of two priors (A, B) judged by the evaluation CLIP,
on any captions (CUB, COCO, MD-MNIST): the §4.3.2 / §4.3.3 metrics that ``eval_mdmnist`` computes
on random MD-MNIST descriptions, here on the test split's real captions (issue 19).

- Captions: ``n`` of the test split's (key, caption index) pairs, a seeded choice: every pair is
  ranked by a hash of (seed, key, index) and the first ``n`` taken in that order (not the first n
  of the set). The text of a caption is the tokenizer's decode of its stored row (the text the
  priors saw, truncation included; ``caption_variants`` says why); a caption whose decode does not
  tokenize back to its stored row (a WordPiece ``[UNK]`` the decode drops) is passed over and
  counted (``eval_set.skipped_not_round_trip``), since its variants would differ from it in more
  than the swapped words.
- CICS: each prior draws one image per caption (its prompt tokenized exactly as its training
  captions were, ``checkpoint.prompt_config``), the CLIP scores both reconstructions against the
  caption (cosine of unit features); the higher wins, equality is a tie. Reported as
  ``eval_mdmnist.cics_summary`` reports it: counts, mean per 100 captions with the spread over
  complete batches of 100, two-sided exact sign test.
- CTRS: the caption and its variants m = 1..M (``caption_variants``: ``cub`` swaps colour and
  bird-part words within their class, ``mdmnist`` the 12 symbols), re-tokenized with the CLIP's
  tokenizer and settings, scored against each generated image. A caption with fewer than m
  swappable words has no variant m: ``without_variant[m-1]`` counts them. Per prior and per m:
  ``true_above`` = captions whose true text scores strictly above variant m (ties against it),
  over the ``captions`` that have variant m; and the MD-MNIST report's ``picked`` / ``true_rank``
  histograms (``clip_eval.ctrs_counts``) over the captions that have every variant 1..M.
- CLIP on the test split: the same CTRS counts on the reconstructions of the test images (view 0),
  one caption per image drawn from (seed, key); a warning when the CLIP picks the true caption at
  or below chance (1 / (M + 1)): CICS and CTRS are then noise.
- Loss: each prior's per-sample image-token cross-entropy on the same (image, caption) pairs, in
  the same pass (nats per token).

Refusals (one ``T2IError`` each, naming both sides): a prior, the CLIP or the image-token set made
with another autoencoder than ``--autoencoder``; a prior, the CLIP or the text-token set made with
another tokenizer than ``--tokenizer``; a CLIP whose text length, pad id, vocabulary or BOS / EOS
settings differ from the text-token set's, or whose image size is not the autoencoder's; a CLIP
checkpoint that predates the token settings (retrain it with ``t2i train clip``).

Outputs in ``out``: report.json (sorted keys), captions.jsonl (per caption: key, index, text, its
variants, and each prior's CLIP scores, true caption first, null for an absent variant: every
count in the report can be recomputed from it), cics.png, ctrs.png, ctrs_per_m.png, loss_hist.png,
samples.png.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from t2i_data.align import check_autoencoder, check_same_image_set, check_tokenizer
from t2i_data.errors import T2IError
from t2i_data.figures import bar_chart, value_histogram
from t2i_data.manifest import checked_samples, open_split
from t2i_data.npyio import load_npy
from t2i_data.rng import key_ids, keyed_u64, stream_id
from t2i_data.text import load_tokenizer
from t2i_data.tokenize import TokenizeConfig, encode_rows

from .caption_variants import make_variants, variant_sets
from .checkpoint import load_autoencoder, load_clip, load_prior_checked, prompt_config
from .clip import clip_text
from .clip_eval import counts_summary, ctrs_counts, variant_scores
from .encode import decode_tokens, reconstruct
from .eval_mdmnist import cics_summary, loss_summary
from .sample import prompt_sheet

log = logging.getLogger(__name__)
FORMAT = "t2i-eval-priors/1"


@dataclass(frozen=True)
class EvalPriorsConfig:
    priors: tuple = ()  # two prior checkpoints, A then B
    clip: str = ""  # from 't2i train clip' on the same autoencoder and tokenizer
    autoencoder: str = ""  # the checkpoint that made the priors' image tokens
    tokenizer: str = ""  # the tokenizer folder of the text-token shards (re-tokenizes the variants)
    image_tokens: str = ""  # the test split's image-token shards
    text_tokens: str = ""  # ... and its text-token shards
    variants: str = ""  # "cub" | "mdmnist" (caption_variants)
    out: str = ""
    n: int = 1000  # CICS / CTRS captions
    batch_size: int = 100  # captions generated at once
    seed: int = 0
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    m_max: int = 0  # variants per caption; 0: the mode's default (cub 4, mdmnist 12)
    eval_samples: int = 0  # test images for CLIP's check and the losses; 0: all
    eval_batch_size: int = 64
    grid_prompts: int = 6
    grid_samples: int = 4
    bins: int = 40
    device: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "priors", tuple(self.priors))
        if len(self.priors) != 2:
            raise T2IError(f"--priors takes exactly two prior checkpoints (A and B), got {len(self.priors)}")
        missing = [k for k in ("clip", "autoencoder", "tokenizer", "image_tokens", "text_tokens", "variants", "out") if not getattr(self, k)]
        if missing:
            raise T2IError(f"{', '.join(missing)} needed (flags or the [eval_priors] table of --config)")
        for name in ("n", "batch_size", "eval_batch_size", "bins", "grid_prompts", "grid_samples"):
            if getattr(self, name) < 1:
                raise T2IError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise T2IError(f"temperature >= 0, top_k >= 0 and top_p in (0, 1] needed, got {self.temperature}, {self.top_k}, {self.top_p}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise T2IError(f"device must be auto, cpu or cuda, got {self.device!r}")


# -- the test split ---------------------------------------------------------------------------------
@dataclass
class EvalSet:
    """The test split as read by ``read_test_set``: keys, text rows, view-0 image tokens, the text manifest."""

    keys: list  # sample keys in set order
    text: list  # per sample, its (C, L) int64 text-token rows
    image: np.ndarray  # (N, h·w) int64, view 0 of each sample's image tokens
    manifest: dict  # the text-token set's manifest

    @property
    def text_config(self) -> TokenizeConfig:
        return TokenizeConfig(**self.manifest["config"])


def read_test_set(image_tokens: str, text_tokens: str, tok_fp: str, ae_fp: str) -> EvalSet:
    """Every sample of an aligned (image-token, text-token) pair of sets, each shard checked against
    its manifest (size, sha256, count), the sets against the tokenizer and autoencoder fingerprints
    and each other, every array's shape against the manifests ((C, L) text rows, (views, g, g)
    image tokens) and every id against its vocabulary; one ``T2IError`` naming the set otherwise."""
    img_ss, txt_ss = open_split(image_tokens), open_split(text_tokens)  # folders or URLs
    img_m, txt_m = img_ss.manifest, txt_ss.manifest
    if img_m.get("kind") != "image_tokens" or txt_m.get("kind") != "text_tokens":
        raise T2IError(f"--image-tokens / --text-tokens: expected an image_tokens and a text_tokens set, got {img_m.get('kind')} and {txt_m.get('kind')}")
    check_same_image_set(img_m, txt_m, image_tokens, text_tokens)
    check_tokenizer(txt_m, tok_fp, "--tokenizer")
    check_autoencoder(img_m, ae_fp, "--autoencoder")
    length, grid = int(txt_m["tokenizer"]["length"]), int(img_m["autoencoder"]["grid"])
    keys, text, image = [], [], []
    for a, b in zip(img_m["shards"], txt_m["shards"]):
        for si, st in zip(checked_samples(img_ss, a), checked_samples(txt_ss, b), strict=True):
            if si["__key__"] != st["__key__"]:
                raise T2IError(f"{a['name']}: key {si['__key__']} meets {st['__key__']} in the text-token set; rebuild them")
            keys.append(si["__key__"])
            t = load_npy(st["text_tokens.npy"], f"{text_tokens}/{b['name']}:{st['__key__']}")
            v = load_npy(si["image_tokens.npy"], f"{image_tokens}/{a['name']}:{si['__key__']}")
            if t.ndim != 2 or t.shape[1] != length or v.ndim != 3 or v.shape[0] < 1 or v.shape[1:] != (grid, grid):
                raise T2IError(f"{b['name']}: {si['__key__']} holds text rows {t.shape} and image tokens {v.shape}; the manifests say "
                               f"(captions, {length}) and (views, {grid}, {grid}); rebuild the sets")
            text.append(t.astype(np.int64))
            image.append(v[0].reshape(-1).astype(np.int64))
    if not keys:
        raise T2IError(f"{text_tokens}: no samples to evaluate on")
    for what, rows, vocab in (("text token", np.concatenate(text), txt_m["tokenizer"]["vocab_size"]),
                              ("image token", np.stack(image), img_m["autoencoder"]["vocab_size"])):
        if rows.size and (rows.min() < 0 or rows.max() >= vocab):
            raise T2IError(f"{text_tokens if what == 'text token' else image_tokens}: {what} ids outside 0..{vocab - 1}; rebuild the set")
    return EvalSet(keys, text, np.stack(image), txt_m)


def round_trips(tok, row: np.ndarray, cfg: TokenizeConfig) -> str | None:
    """The caption text of a stored row (the tokenizer's decode), or None when re-tokenizing that
    text with ``cfg`` does not give the row back."""
    text = tok.decode(row.tolist())
    again, _ = encode_rows(tok, [text], cfg, "int64")
    return text if np.array_equal(again[0], row) else None


def choose_captions(ts: EvalSet, tok, seed: int, n: int) -> tuple[list, int]:
    """``n`` (sample index, caption index, text) of the test set in the order of a hash of (seed,
    key, caption index), passing over captions that do not round-trip; (chosen, passed over)."""
    kid = key_ids(ts.keys)
    counts = np.array([len(t) for t in ts.text])
    sid = stream_id("eval-priors", "caption-choice")
    pairs = [(int(keyed_u64(seed, sid, kid[i], j)), ts.keys[i], j, i) for i in range(len(ts.keys)) for j in range(counts[i])]
    pairs.sort()
    chosen, skipped = [], 0
    for _, _, j, i in pairs:
        if len(chosen) == n:
            break
        text = round_trips(tok, ts.text[i][j], ts.text_config)
        if text is None:
            skipped += 1
        else:
            chosen.append((i, j, text))
    if len(chosen) < n:
        raise T2IError(f"{len(pairs)} captions in the test set, {len(chosen)} of them usable ({skipped} do not tokenize back to their "
                       f"stored row); --n at most {len(chosen)}")
    return chosen, skipped


def clip_input(clip, sets: np.ndarray) -> np.ndarray:
    """(b, k, L) text-token rows → the CLIP's own text input (b, k, L or 12), ``clip.clip_text``."""
    b, k, L = sets.shape
    return clip_text(clip.cfg, torch.from_numpy(sets.reshape(-1, L))).numpy().reshape(b, k, -1)


def ctrs_report(scores: np.ndarray, present: np.ndarray) -> dict:
    """Per-caption scores (n, 1 + M), NaN where a variant is absent → the CTRS report: ``picked``
    / ``true_rank`` / ``ties`` over the complete sets (``clip_eval.counts_summary``, ``images`` =
    their number) and per m: captions with variant m, those without it, and how often the true
    caption scores strictly above it."""
    full = present.all(axis=1)
    out = counts_summary(ctrs_counts(torch.from_numpy(scores[full]), torch.from_numpy(present[full])))
    per_m = []
    for m in range(1, scores.shape[1]):
        have = present[:, m]
        above = int((scores[have, 0] > scores[have, m]).sum())
        per_m.append({"m": m, "captions": int(have.sum()), "without_variant": int((~have).sum()), "true_above": above,
                      "share": round(above / have.sum(), 6) if have.any() else None})
    return dict(out, complete_sets=int(full.sum()), per_m=per_m)


# -- the models ----------------------------------------------------------------------------------------
def check_compatible(cfg: EvalPriorsConfig, priors, clip, clip_ck, ae, ae_ck, tok, ts: EvalSet) -> dict:
    """The refusals of the module docstring; returns the fingerprints the report records."""
    ae_fp = ae_ck["fingerprint"]
    for name, path, (_, ck) in zip("AB", cfg.priors, priors):
        f = ck["fingerprints"]
        if f["autoencoder"] != ae_fp:
            raise T2IError(f"prior {name} ({path}) was trained on image tokens of autoencoder {f['autoencoder'][:16]}, but --autoencoder "
                           f"is {ae_fp[:16]}; pass the autoencoder that made its tokens")
        if f["tokenizer"] != tok.fingerprint:
            raise T2IError(f"prior {name} ({path}) was trained on text of tokenizer {f['tokenizer'][:16]}, but --tokenizer is "
                           f"{tok.fingerprint[:16]}; pass the tokenizer of its text-token shards")
    cf = clip_ck.get("fingerprints", {})
    if cf.get("autoencoder") != ae_fp:
        raise T2IError(f"the CLIP ({cfg.clip}) was trained on reconstructions by autoencoder {str(cf.get('autoencoder'))[:16]}, the priors' "
                       f"tokens come from {ae_fp[:16]}; train a CLIP on this autoencoder's reconstructions ('t2i train clip')")
    if cf.get("tokenizer") != tok.fingerprint:
        raise T2IError(f"the CLIP ({cfg.clip}) was trained on text of tokenizer {str(cf.get('tokenizer'))[:16]}, but --tokenizer is "
                       f"{tok.fingerprint[:16]}; train a CLIP on this tokenizer's text-token shards ('t2i train clip')")
    if "tokens" not in clip_ck or "text_config" not in clip_ck:
        raise T2IError(f"the CLIP ({cfg.clip}) records no token settings (written before 't2i eval priors' existed); retrain it with 't2i train clip'")
    want = {"text_len": ts.manifest["tokenizer"]["length"], "pad_id": ts.manifest["tokenizer"]["pad_id"],
            "text_vocab": ts.manifest["tokenizer"]["vocab_size"]}
    have = {k: clip_ck["tokens"].get(k) for k in want}
    if have != want or TokenizeConfig(**clip_ck["text_config"]) != ts.text_config:
        raise T2IError(f"the CLIP ({cfg.clip}) read text rows {have} tokenized {clip_ck['text_config']}, the test set's are {want} "
                       f"tokenized {ts.manifest['config']}; tokenize the test split as the CLIP's train split was")
    if clip.cfg.image_size != ae.cfg.image_size:
        raise T2IError(f"the CLIP ({cfg.clip}) reads {clip.cfg.image_size}x{clip.cfg.image_size} images, the autoencoder makes "
                       f"{ae.cfg.image_size}x{ae.cfg.image_size}")
    return {"autoencoder": ae_fp, "tokenizer": tok.fingerprint, "clip": clip_ck["fingerprint"]}


def prompt_rows(tok, texts: list[str], rows: np.ndarray, set_cfg: TokenizeConfig, ck: dict) -> torch.Tensor:
    """A prior's text input for captions: the stored rows when the prior was trained with the set's
    settings, else the texts tokenized as its training captions were."""
    want = prompt_config(ck)
    return torch.from_numpy(rows if want == set_cfg else encode_rows(tok, texts, want, "int64")[0]).long()


def _generate(cfg: EvalPriorsConfig, prior, text: torch.Tensor, what: str, index: int, device) -> torch.Tensor:
    g = torch.Generator(device=device)
    g.manual_seed(int(keyed_u64(cfg.seed, stream_id("eval-priors", what), index, 0)) & (2**63 - 1))
    return prior.generate(text.to(device), temperature=cfg.temperature, top_k=cfg.top_k or None,
                          top_p=cfg.top_p if cfg.top_p < 1 else None, generator=g)


@torch.no_grad()
def cics_ctrs(cfg: EvalPriorsConfig, chosen, ts: EvalSet, priors, clip, ae, tok, maker, m_max: int, device):
    """CICS and CTRS on the chosen captions → (per-caption records, wins (n, 3), scores per prior
    (n, 1 + M) with NaN for absent variants, present (n, 1 + M), truncated (M,))."""
    n = len(chosen)
    scores = [np.full((n, 1 + m_max), np.nan), np.full((n, 1 + m_max), np.nan)]
    present = np.zeros((n, 1 + m_max), dtype=bool)
    wins = np.zeros((n, 3), dtype=np.int64)
    truncated = np.zeros(m_max, dtype=np.int64)
    records = []
    for start in tqdm(range(0, n, cfg.batch_size), desc="CICS / CTRS", unit="batch", disable=None):
        part = chosen[start : start + cfg.batch_size]
        rows = np.stack([ts.text[i][j] for i, j, _ in part])
        texts, keys, js = [t for _, _, t in part], [ts.keys[i] for i, _, _ in part], [j for _, j, _ in part]
        sets, pres, var, trunc = variant_sets(maker, tok, ts.text_config, rows, texts, keys, js, cfg.seed, m_max)
        truncated += trunc
        sl = slice(start, start + len(part))
        present[sl] = pres
        sets = clip_input(clip, sets)
        for slot, (prior, ck) in enumerate(priors):
            images = reconstruct(ae, _generate(cfg, prior, prompt_rows(tok, texts, rows, ts.text_config, ck), f"cics-{slot}", start, device))
            s = variant_scores(clip, images, sets).numpy().astype(np.float64)
            scores[slot][sl] = np.where(pres, s, np.nan)
        a, b = scores[0][sl, 0], scores[1][sl, 0]
        wins[sl] = np.stack([a > b, b > a, a == b], axis=1)
        for r, (k, j, t) in enumerate(zip(keys, js, texts)):
            records.append({"key": k, "caption": j, "text": t, "variants": var[r], "swappable": maker.count(t),
                            "a": [None if np.isnan(x) else float(x) for x in scores[0][start + r]],
                            "b": [None if np.isnan(x) else float(x) for x in scores[1][start + r]]})
    return records, wins, scores, present, truncated


@torch.no_grad()
def heldout_pass(cfg: EvalPriorsConfig, ts: EvalSet, priors, clip, ae, tok, maker, m_max: int, device):
    """CLIP's CTRS counts on the test images' reconstructions and each prior's per-sample loss,
    one caption per image drawn from (seed, key); → (CLIP report, [losses A, losses B], info)."""
    kid = key_ids(ts.keys)
    order = np.argsort(keyed_u64(cfg.seed, stream_id("eval-priors", "test-order"), kid, 0), kind="stable")
    if cfg.eval_samples:
        order = order[: cfg.eval_samples]
    order = np.sort(order)  # key order: the losses come out in it
    draw = keyed_u64(cfg.seed, stream_id("eval-priors", "test-caption"), kid, 0) >> np.uint64(32)  # 32 random bits per key
    all_scores, all_present, losses, skipped = [], [], [[], []], 0
    for start in tqdm(range(0, len(order), cfg.eval_batch_size), desc="test split", unit="batch", disable=None):
        idx = order[start : start + cfg.eval_batch_size]
        if any(len(ts.text[i]) == 0 for i in idx):
            raise T2IError(f"{ts.keys[next(i for i in idx if len(ts.text[i]) == 0)]}: a sample without captions in the text-token set; rebuild it")
        pick = [int(draw[i]) * len(ts.text[i]) >> 32 for i in idx]  # uniform caption index by multiply-shift, as rng.uniform_int
        rows = np.stack([ts.text[i][j] for i, j in zip(idx, pick)])
        image = torch.from_numpy(ts.image[idx]).to(device)
        texts = [tok.decode(r.tolist()) for r in rows]
        for slot, (prior, ck) in enumerate(priors):
            logits = prior(prompt_rows(tok, texts, rows, ts.text_config, ck).to(device), image)["image_logits"]
            losses[slot] += F.cross_entropy(logits.float().transpose(1, 2), image, reduction="none").mean(dim=1).cpu().tolist()
        ok = [r for r in range(len(idx)) if round_trips(tok, rows[r], ts.text_config) is not None]
        skipped += len(idx) - len(ok)
        if not ok:
            continue
        sets, pres, _, _ = variant_sets(maker, tok, ts.text_config, rows[ok], [texts[r] for r in ok], [ts.keys[idx[r]] for r in ok],
                                        [pick[r] for r in ok], cfg.seed, m_max)
        s = variant_scores(clip, reconstruct(ae, image[ok]), clip_input(clip, sets)).numpy().astype(np.float64)
        all_scores.append(np.where(pres, s, np.nan))
        all_present.append(pres)
    if not all_scores:
        raise T2IError(f"{cfg.text_tokens}: no test caption tokenizes back to its stored row; CLIP cannot be checked on it")
    report = ctrs_report(np.concatenate(all_scores), np.concatenate(all_present))
    report.update(chance=round(1 / (m_max + 1), 6), skipped_not_round_trip=skipped)
    return report, [np.array(x) for x in losses], {"samples": int(len(order))}


# -- the whole evaluation ---------------------------------------------------------------------------------
def evaluate_priors(cfg: EvalPriorsConfig) -> dict:
    """Run the comparison of the module docstring and write its outputs; returns the report."""
    device = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu")
    priors = [load_prior_checked(p) for p in cfg.priors]
    clip, clip_ck = load_clip(cfg.clip)
    ae, ae_ck = load_autoencoder(cfg.autoencoder)
    tok = load_tokenizer(cfg.tokenizer)
    ts = read_test_set(cfg.image_tokens, cfg.text_tokens, tok.fingerprint, ae_ck["fingerprint"])
    fingerprints = check_compatible(cfg, priors, clip, clip_ck, ae, ae_ck, tok, ts)
    maker = make_variants(cfg.variants, tok)
    m_max = cfg.m_max or maker.default_m_max
    priors = [(m.to(device).eval(), ck) for m, ck in priors]
    clip, ae = clip.to(device).eval(), ae.to(device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    labels = [f"{s}: {ck['train_config']['arch']}" for s, (_, ck) in zip("AB", priors)]

    test, losses, info = heldout_pass(cfg, ts, priors, clip, ae, tok, maker, m_max, device)
    warnings = []
    if not test["complete_sets"]:
        warnings.append(f"no test caption has all {m_max} variants, so CLIP's accuracy on the test split is unknown; lower m_max "
                        f"in [eval_priors] (per-m counts are in clip.test.per_m)")
        log.warning("%s", warnings[-1])
    elif test["top1"] <= test["chance"]:
        warnings.append(f"CLIP picks the true caption among it and its {m_max} variants for {test['top1']:.1%} of {test['complete_sets']} "
                        f"test images, at or below chance ({test['chance']:.1%}): CICS and CTRS below are noise; train CLIP longer "
                        f"('t2i train clip') before comparing priors")
        log.warning("%s", warnings[-1])
    chosen, skipped = choose_captions(ts, tok, cfg.seed, cfg.n)
    records, wins, scores, present, truncated = cics_ctrs(cfg, chosen, ts, priors, clip, ae, tok, maker, m_max, device)
    with open(out / "captions.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n")
    cics = cics_summary(wins)
    ctrs = {"a": ctrs_report(scores[0], present), "b": ctrs_report(scores[1], present)}
    _figures(cfg, out, labels, cics, ctrs, losses, m_max)
    _sample_grid(cfg, chosen, ts, priors, ae, tok, labels, device).save(out / "samples.png")
    img, edges, counts = value_histogram([(labels[0], losses[0].tolist()), (labels[1], losses[1].tolist())], cfg.bins,
                                         f"Per-sample image-token cross-entropy on the {ts.manifest.get('split')} split",
                                         "loss (nats per image token)")
    img.save(out / "loss_hist.png")
    report = {
        "format": FORMAT,
        "config": {k: v for k, v in asdict(cfg).items() if k != "out"} | {"priors": list(cfg.priors), "m_max": m_max},
        "priors": {s: {"checkpoint": p, "arch": ck["train_config"]["arch"], "kind": ck["kind"], "step": ck.get("step")}
                   for s, p, (_, ck) in zip("ab", cfg.priors, priors)},
        "fingerprints": fingerprints,
        "eval_set": {"split": ts.manifest.get("split"), "dataset": ts.manifest.get("dataset"), "digest": ts.manifest.get("aligned_to"),
                     "samples": len(ts.keys), "captions": int(sum(len(t) for t in ts.text)), "chosen": len(chosen),
                     "skipped_not_round_trip": skipped, "test_pass_samples": info["samples"]},
        "variants": dict(maker.describe(), mode=cfg.variants, m_max=m_max, without_variant=[int((~present[:, m]).sum()) for m in range(1, m_max + 1)],
                         truncated=truncated.tolist()),
        "clip": {"checkpoint": cfg.clip, "arch": clip_ck["train_config"]["arch"], "step": clip_ck.get("step"), "test": test},
        "cics": cics,
        "ctrs": dict(ctrs, columns=f"picked / true_rank: 0..{m_max} over complete sets; per_m: every caption that has variant m"),
        "loss": {"a": loss_summary(losses[0]), "b": loss_summary(losses[1]),
                 "histogram": {"edges": [round(e, 6) for e in edges], "a": counts[0], "b": counts[1]}},
        "figures": {"cics": "cics.png", "ctrs": "ctrs.png", "ctrs_per_m": "ctrs_per_m.png", "loss": "loss_hist.png", "samples": "samples.png"},
        "files": {"captions": "captions.jsonl"},
        "warnings": warnings,
    }
    (out / "report.json").write_text(json.dumps(report, sort_keys=True, indent=2) + "\n")
    return report


def _figures(cfg: EvalPriorsConfig, out: Path, labels, cics: dict, ctrs: dict, losses, m_max: int) -> None:
    bar_chart([("captions", [cics["a_wins"], cics["b_wins"], cics["ties"]])], [labels[0], labels[1], "tie"],
              f"CICS: whose image CLIP scores higher against the caption ({cics['n']} captions, p = {cics['p_value']:.3g})",
              "winner", "captions").save(out / "cics.png")
    bar_chart([(labels[0], ctrs["a"]["picked"]), (labels[1], ctrs["b"]["picked"])], [str(m) for m in range(m_max + 1)],
              f"CTRS: which caption CLIP scores highest ({ctrs['a']['complete_sets']} captions with all {m_max} variants)",
              "m = words changed in the highest-scoring caption (0 = the true one)", "captions").save(out / "ctrs.png")
    share = lambda c: [100 * (p["share"] or 0) for p in c["per_m"]]  # noqa: E731
    bar_chart([(labels[0], share(ctrs["a"])), (labels[1], share(ctrs["b"]))], [str(m) for m in range(1, m_max + 1)],
              "CTRS per m: the true caption scored above its variant with m words changed", "m = words changed",
              "% of captions with that variant").save(out / "ctrs_per_m.png")


@torch.no_grad()
def _sample_grid(cfg: EvalPriorsConfig, chosen, ts: EvalSet, priors, ae, tok, labels, device):
    """Both priors' samples for the first chosen captions: A's on the left, B's on the right, the caption under each row."""
    k, s = min(cfg.grid_prompts, len(chosen)), cfg.grid_samples
    rows = np.stack([ts.text[i][j] for i, j, _ in chosen[:k]])
    texts = [t for _, _, t in chosen[:k]]
    cells: list[list] = [[] for _ in range(k)]
    for slot, (prior, ck) in enumerate(priors):
        text = prompt_rows(tok, texts, rows, ts.text_config, ck).repeat_interleave(s, dim=0)
        pix = decode_tokens(ae, _generate(cfg, prior, text, f"grid-{slot}", 0, device))
        for p in range(k):
            cells[p] += list(pix[p * s : (p + 1) * s])
    header = f"left {s}: {labels[0]}   |   right {s}: {labels[1]}   (temperature {cfg.temperature}, seed {cfg.seed})"
    return prompt_sheet(cells, texts, gap_after=s, header=header)


def cli_main(args) -> int:
    """``t2i eval priors``: the config from ``--config``'s [eval_priors] table and the flags, the
    evaluation, then a summary on stdout."""
    from dataclasses import fields

    from t2i_data.config import resolve

    flags = {f.name: getattr(args, f.name) for f in fields(EvalPriorsConfig) if hasattr(args, f.name)}
    flags["priors"] = tuple(args.priors) if args.priors else None
    cfg = resolve(EvalPriorsConfig, args.config, "eval_priors", flags)
    r = evaluate_priors(cfg)
    c, t, m = r["cics"], r["clip"]["test"], r["variants"]["m_max"]
    print(f"CLIP on {r['eval_set']['test_pass_samples']} {r['eval_set']['split']} reconstructions: true caption picked among it and "
          f"its {m} variants for {t['top1']:.1%} of {t['complete_sets']} with every variant (chance {t['chance']:.1%})")
    print(f"CICS over {c['n']} captions: A {c['a_wins']}, B {c['b_wins']}, ties {c['ties']} "
          f"(per 100: {c['per_100']['a_mean']:g} / {c['per_100']['b_mean']:g}); two-sided sign test p = {c['p_value']:.3g}")
    print(f"captions without variant m = 1..{m}: {r['variants']['without_variant']}")
    for s in ("a", "b"):
        ct = r["ctrs"][s]
        print(f"CTRS {s.upper()} ({r['priors'][s]['arch']}): true caption above variant m = 1..{m}: "
              f"{[p['true_above'] for p in ct['per_m']]} of {[p['captions'] for p in ct['per_m']]}; picked m = 0..{m}: {ct['picked']}; "
              f"test loss {r['loss'][s]['mean']:.4f}")
    for w in r["warnings"]:
        print(f"WARNING: {w}")
    print(f"wrote {Path(cfg.out) / 'report.json'}, {r['files']['captions']} and figures {', '.join(sorted(r['figures'].values()))}")
    return 0
