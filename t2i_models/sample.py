"""Prompts → image tokens with a trained prior → pixels with the autoencoder → a PNG grid, or an
image shard set of the samples that every metric reads as it reads data (issue 19).

The prompt is tokenized exactly as the training captions were (same tokenizer, whose fingerprint
must equal the checkpoint's, same L and BOS/EOS settings); the autoencoder must be the one that
made the training image tokens (fingerprint checked too).

A prior of a VQ-VAE-2's top level (``t2i train prior ... level=top``) samples the top grid; there
is no bottom prior, so the bottom codes come from the top ones by the rule
``vqvae2.VQVAE2.bottom_from_top`` states (the bottom quantizer's pick with the bottom encoder's
features at zero, then one round of re-encoding the decoded image with the top held), and the
pixels are ``decode_levels`` of the two. The manifest's ``models.prior`` names the level and the
rule. A prior of the bottom level is refused: it needs top codes that nothing here samples.

Prompts come from ``--prompt`` / ``--prompts`` (keys ``prompt-000000``, ... in list order) or from
an image shard set (``--prompts-from``: ``captions[--caption]`` of each key, in the set's key order,
the first ``--limit`` keys; a key without that caption is quarantined with its reason, counted and
shown, and no key having it stops the run).

Shard set (``--out DIR``): dataset ``samples``, the prompt set's split (``prompts`` for a list).
Sample j of prompt key K is ``<K>-s<j:05d>``: ``<key>.png`` (lossless RGB, the decoded pixels
exactly: no JPEG round trip, which would bias FID) and ``<key>.json`` (``captions`` [the prompt],
``prompt_key``, ``sample`` j, ``draw``, ``split``, ``clip_score`` and ``clip_similarity``: null
without ``--rerank``).
Output shard i holds the samples of the prompts of prompt shard i (``PROMPTS_PER_SHARD`` prompts
per shard for a list), prompts in order, samples in order, so each shard is a pure function of
(config, shard index), written, resumed and reused by ``t2i_data.build.write_shards``.

Determinism. Draws are rows (prompt, draw index) in prompt-major order, generated ``--batch-size``
rows at a time, never across an output shard; a batch's tokens come from one ``torch.Generator``
seeded by ``batch_seed(seed, key of its first row, its first draw index)``. The same command and
seed give the same bytes on the same device type (a CUDA generator draws other numbers, so the
device type is in the manifest's config). ``--batch-size`` changes the draws: ``generate`` takes one
generator for its whole batch (``attention.sample_next`` calls ``torch.multinomial`` over the
batch), so a row's draw depends on the rows beside it. With ``--batch-size 1`` every draw is a
function of (seed, prompt key, draw index) alone: the same prompt gives the same samples in any
prompt set or ``--limit``. Making that hold at any batch size needs per-row generators in
``sample_next``, which this module does not own.

Reranking (``--rerank N --keep K``): draw N per prompt, score each decoded image against its
prompt with a pretrained CLIP (``clip_score.load_clip``: a local transformers CLIP folder), keep
the K highest (ties: the lower draw index), as DALL·E does (Ramesh et al. 2021, "Sample
Generation": candidates reranked by a pretrained contrastive model, CLIP; the thesis,
seeds/003 §2.6: "drawn samples are reranked according to the pretrained contrastive model called
CLIP"). The ranking key is the unfloored 100·cos (``clip_similarity``): the CLIP score's floor at 0
would tie every draw below it. Kept sample j is the j-th best; its JSON has ``clip_similarity``,
``clip_score`` (= max(it, 0)) and ``draw``; the manifest's ``rerank`` summarises all N·P draws and
the kept ones (count, mean and std of 100·cos, mean CLIP score, 5-point histogram) and
``stats.clip_texts_cut`` counts draws whose prompt CLIP saw cut to its context.
"""
from __future__ import annotations

import hashlib
import logging
import math
import re
import textwrap
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from t2i_data.build import LOCK_NAME, STATS_DIR, ShardStats, build_lock, finish_shard_set, merge_stats, refuse_overwrite, write_shards
from t2i_data.card import CARD_NAME, LICENCE_FILE
from t2i_data.digest import canonical_json, canonical_pixels
from t2i_data.errors import T2IError
from t2i_data.figures import font
from t2i_data.manifest import MANIFEST_NAME, checked_samples, load_manifest, open_one_split
from t2i_data.pngio import encode_png, encoder_id
from t2i_data.quarantine import Quarantined
from t2i_data.rng import stream_id
from t2i_data.runner import InProcessRunner
from t2i_data.tario import INDEX_DIR, PARTIAL_SUFFIX, WRITER_ID
from t2i_data.text import load_tokenizer
from t2i_data.text.captions import sample_captions
from t2i_data.tokenize import encode_rows

from .checkpoint import load_autoencoder, load_prior, prompt_config
from .encode import decode_tokens

log = logging.getLogger(__name__)
DATASET = "samples"
PROMPTS_PER_SHARD = 1000  # prompts per output shard for a --prompt / --prompts list
KEY_DIGITS = 5  # sample j of key K is K-s<j:05d>: up to 100,000 samples per prompt
PNG_LEVEL = 1  # zlib level of the PNGs (MD-MNIST's default; the pixels do not depend on it)


@dataclass(frozen=True)
class PromptSet:
    """Prompts in order with their keys; ``shards[i]`` = (start, stop) of output shard i's prompts
    and ``quarantined[i]`` its keys set aside; ``source``: the manifest's ``sources.prompts``;
    ``selection``: how they were chosen (recorded in the manifest's config); ``folder``: the
    prompt set's folder (None for a list)."""

    keys: list[str]
    texts: list[str]
    split: str
    shards: list[tuple[int, int]]
    quarantined: list[list[Quarantined]]
    source: dict
    read: int  # keys read (those quarantined included)
    selection: dict
    folder: Path | None = None


def prompt_list(prompts: list[str]) -> PromptSet:
    """A --prompt / --prompts list: keys ``prompt-000000``, ... in list order, ``PROMPTS_PER_SHARD`` per shard."""
    if not prompts:
        raise T2IError("no prompts given: --prompt TEXT, --prompts FILE (one per line) or --prompts-from SHARDS")
    n = len(prompts)
    shards = [(s, min(s + PROMPTS_PER_SHARD, n)) for s in range(0, n, PROMPTS_PER_SHARD)]
    sha = hashlib.sha256(canonical_json(prompts)).hexdigest()
    return PromptSet([f"prompt-{i:06d}" for i in range(n)], list(prompts), "prompts", shards, [[] for _ in shards],
                     {"kind": "prompt list", "files": {"prompts (canonical JSON list)": sha}}, n, {"from": "list"})


def prompts_from_shards(path, caption: int, limit: int | None) -> PromptSet:
    """``captions[caption]`` of each key of the image shard set at ``path`` (one split), in the
    set's key order, the first ``limit`` keys only (None: all), every shard checked against its
    manifest as it is read. A key with fewer captions is quarantined (``no-caption: ...``).
    ``T2IError`` for several splits, a set that is not an image set, or no key with that caption."""
    ss = open_one_split(path, "images", "--prompts-from ", "prompts come from an image shard set's captions")
    keys, texts, shards, quarantined, read, most, repaired = [], [], [], [], 0, 0, 0
    for shard in ss.manifest["shards"]:
        if limit is not None and read >= limit:
            break
        start, held = len(keys), []
        for sample in checked_samples(ss, shard):
            caps, fixed = sample_captions(sample, ss.dir / shard["name"])  # invalid UTF-8 read as U+FFFD, counted
            most, read, repaired = max(most, len(caps)), read + 1, repaired + fixed
            if caption < len(caps):
                keys.append(sample["__key__"])
                texts.append(caps[caption])
            else:
                held.append(Quarantined(sample["__key__"], f"no-caption: it has {len(caps)} caption(s), --caption {caption} asks for the "
                                                           f"{caption + 1}-th"))
            if limit is not None and read >= limit:
                break
        shards.append((start, len(keys)))
        quarantined.append(held)
    if not keys:
        raise T2IError(f"--caption {caption}: none of the {read} keys read from {ss.dir} has a caption {caption} (the most any has is "
                       f"{most}); give --caption below {most}" if read else f"--prompts-from {path}: the set holds no samples")
    if repaired:
        log.warning("--prompts-from %s: %d of the %d keys read have JSON that is not valid UTF-8, read with U+FFFD", path, repaired, read)
    m = ss.manifest
    return PromptSet(keys, texts, m["split"], shards, quarantined, {"dataset": m["dataset"], "split": m["split"], "digest": m["digest"]}, read,
                     {"from": "shards", "caption": caption, "limit": limit, "repaired_utf8": repaired}, ss.dir)


def sample_key(prompt_key: str, j: int) -> str:
    """The key of sample ``j`` (0-based, below 10**KEY_DIGITS) of prompt ``prompt_key``: ``<key>-s<j:05d>``."""
    return f"{prompt_key}-s{j:0{KEY_DIGITS}d}"


def check_keys(prompts: PromptSet, n: int) -> None:
    """The sample keys must make ustar member names (``<key>.json`` at most 100 bytes) and increase
    within a shard (``tario.TarWriter``); prompt keys that increase give increasing sample keys
    unless one is a prefix of the next followed by '-' or a character below it. ``T2IError`` naming them."""
    longest = max(prompts.keys, key=lambda k: len(k.encode("utf-8")))
    if len(f"{sample_key(longest, n - 1)}.json".encode("utf-8")) > 100:
        raise T2IError(f"prompt key {longest!r}: its sample keys ({sample_key(longest, n - 1)!r}) make tar member names over 100 bytes; "
                       "shorten the prompt set's keys")
    for a, b in prompts.shards:
        for k1, k2 in zip(prompts.keys[a:b], prompts.keys[a + 1 : b]):
            if not sample_key(k1, n - 1) < sample_key(k2, 0):
                raise T2IError(f"prompt keys {k1!r} then {k2!r}: their sample keys ({sample_key(k1, n - 1)!r}, {sample_key(k2, 0)!r}) do not "
                               "increase, which a shard needs; give a prompt set whose keys are not prefixes of the next")


def batch_seed(seed: int, key: str, draw: int) -> int:
    """The 64-bit seed of the generator of a batch whose first row is (``key``, ``draw``):
    the first 8 bytes of sha256 of ("t2i sample", seed, key, draw) (``rng.stream_id``)."""
    return stream_id("t2i sample", seed, key, draw)


@dataclass(frozen=True)
class SampleConfig:
    """What decides the samples. ``n``: samples kept per prompt (K with ``rerank``); ``rerank``:
    N draws per prompt scored by CLIP (None: no reranking, n draws); ``top_k`` 0/None: off."""

    n: int = 4
    rerank: int | None = None
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    batch_size: int = 64
    device: str = "cpu"  # the resolved device type: cpu or cuda

    def __post_init__(self) -> None:
        if self.n < 1 or self.n >= 10**KEY_DIGITS:
            raise T2IError(f"-n must be at least 1 and below {10**KEY_DIGITS:,} (samples per prompt), got {self.n}")
        if self.rerank is not None and self.rerank < self.n:
            raise T2IError(f"{self.n} samples kept per prompt (--keep K, or -n) is more than the --rerank {self.rerank} draws: reranking keeps "
                           "K of N draws; give K <= N")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise T2IError(f"--temperature must be 0 (greedy) or more, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise T2IError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise T2IError(f"--top-k must be 0 (off) or more, got {self.top_k}")
        if self.batch_size < 1:
            raise T2IError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.seed < 0:
            raise T2IError(f"--seed must be 0 or more, got {self.seed}")

    @property
    def draws(self) -> int:
        return self.rerank or self.n


@dataclass
class Sampler:
    """A prior with its autoencoder and tokenizer (fingerprints checked), and a CLIP for reranking."""

    prior: torch.nn.Module
    ck: dict
    ae: torch.nn.Module
    ae_ck: dict
    tok: object
    clip: object = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def load(cls, prior_ckpt, autoencoder_ckpt, tokenizer_dir, clip_dir=None, device: str = "cpu") -> "Sampler":
        """Everything on ``device`` ("cpu" or "cuda"), in eval mode. ``T2IError`` for a checkpoint or
        folder that does not load, a tokenizer or autoencoder whose fingerprint is not the one the
        prior records, and a CLIP folder ``clip_score.load_clip`` refuses."""
        prior, ck = load_prior(prior_ckpt)
        tok = load_tokenizer(tokenizer_dir)
        want = ck["fingerprints"]
        if tok.fingerprint != want["tokenizer"]:
            raise T2IError(f"tokenizer {tok.fingerprint[:16]} is not the one the prior was trained with ({want['tokenizer'][:16]}); pass that tokenizer")
        ae, ae_ck = load_autoencoder(autoencoder_ckpt)
        if ae_ck["fingerprint"] != want["autoencoder"]:
            raise T2IError(f"autoencoder {ae_ck['fingerprint'][:16]} did not make the prior's image tokens ({want['autoencoder'][:16]}); pass that checkpoint")
        if ck.get("level") is not None and ck["level"] != "top":  # a VQ-VAE-2 level prior: the top one decodes alone (module docstring)
            raise T2IError(f"{prior_ckpt} models the {ck['level']} level of a vqvae2's tokens, which decodes only with the levels above it, "
                           "and no prior here samples those; sample from a prior trained with level=top")
        clip = None
        if clip_dir is not None:
            from .clip_score import load_clip

            clip = load_clip(clip_dir, device)
        d = torch.device(device)
        return cls(prior.to(d).eval(), ck, ae.to(d).eval(), ae_ck, tok, clip, d)

    def record(self, cfg: SampleConfig) -> dict:
        """The manifest's ``models``: what made the samples, by fingerprint."""
        out = {"prior": {"kind": self.ck["kind"], "fingerprint": self.ck["fingerprint"], "tokens": self.ck["tokens"]}
               | ({"level": self.ck["level"], "bottom_codes": "vqvae2.bottom_from_top (refine 1)"} if self.ck.get("level") else {}),
               "autoencoder": {"kind": self.ae_ck["kind"], "fingerprint": self.ae_ck["fingerprint"]},
               "tokenizer": {"kind": self.tok.kind, "fingerprint": self.tok.fingerprint, **asdict(prompt_config(self.ck))}}
        if self.clip is not None:
            out["clip"] = dict(self.clip.info)  # its fingerprint (weights sha256), architecture, sizes, preprocessing
        return out

    def rows(self, prompts: list[str]) -> tuple[np.ndarray, dict]:
        """Prompts → (P, L) int64 rows as the training captions were tokenized, and the counts of what
        the prior will not see (prompts cut to L, with unknown tokens, empty), the first 5 logged."""
        cfg = prompt_config(self.ck)
        rows, stats = encode_rows(self.tok, prompts, cfg, "int64")
        room = cfg.length - cfg.add_bos - cfg.add_eos
        warnings = prompt_warnings(self.tok, prompts, rows, stats["lengths"], room)
        for w in warnings[:5]:
            log.warning("%s", w)
        lengths = np.asarray(stats["lengths"])
        unknown = (rows == self.tok.unk_id).sum(axis=1) if self.tok.unk_id is not None else np.zeros(len(prompts), int)
        counts = {"prompts": len(prompts), "cut": int((lengths > room).sum()), "with_unknown": int((unknown > 0).sum()),
                  "unknown_tokens": int(unknown.sum()), "empty": int((lengths == 0).sum())}
        if len(warnings) > 5:
            log.warning("... %d more prompt warnings", len(warnings) - 5)
        return rows, counts

    @torch.inference_mode()
    def samples(self, keys: list[str], rows: np.ndarray, cfg: SampleConfig, texts: list[str], where: str = ""):
        """For each prompt in order: (its index, kept pixels (K, S, S, 3) uint8, their draw indices,
        their CLIP scores or None, all N scores or None). Module docstring: batches and seeds."""
        g, d_n = self.ck["tokens"]["grid"], cfg.draws
        order = [(p, d) for p in range(len(keys)) for d in range(d_n)]  # prompt-major: prompts complete in order
        pending: list[np.ndarray] = []
        top_k = cfg.top_k or None
        t0, done, p = time.perf_counter(), 0, 0  # p: the next prompt to complete
        for b in range(0, len(order), cfg.batch_size):
            batch = order[b : b + cfg.batch_size]
            gen = torch.Generator(device=self.device).manual_seed(batch_seed(cfg.seed, keys[batch[0][0]], batch[0][1]))
            text = torch.from_numpy(rows[[row for row, _ in batch]]).to(self.device)  # (B, L)
            tokens = self.prior.generate(text, temperature=cfg.temperature, top_k=top_k, top_p=cfg.top_p, generator=gen)  # (B, g·g)
            grids = tokens.view(-1, g, g)
            if self.ck.get("level") == "top":  # VQ-VAE-2: the bottom codes by the rule of vqvae2.bottom_from_top
                grids = {"top": grids, "bottom": self.ae.bottom_from_top(grids)}
            pending += list(decode_tokens(self.ae, grids))  # B × (S, S, 3) uint8
            done += len(batch)
            log.info("%sdraws %d/%d (%.1f draws/s)", f"{where}: " if where else "", done, len(order), done / (time.perf_counter() - t0))
            while len(pending) >= d_n:
                draws, pending = np.stack(pending[:d_n]), pending[d_n:]
                yield (p, *self._keep(draws, texts[p], cfg))
                p += 1

    def _keep(self, draws: np.ndarray, text: str, cfg: SampleConfig):
        if cfg.rerank is None:
            return draws, list(range(cfg.n)), None, None
        # ranked by 100·cos unfloored: the CLIP score's floor at 0 would tie every draw below it
        sims = self.clip.similarity(draws, [text] * len(draws))  # (N,) float64
        best = np.argsort(-sims, kind="stable")[: cfg.n]  # highest first; ties: the lower draw index
        return draws[best], [int(i) for i in best], sims[best], sims


def produce_shard(sampler: Sampler, prompts: PromptSet, rows: np.ndarray, cfg: SampleConfig, index: int):
    """Output shard ``index`` (module docstring): its quarantined prompt keys, its samples, and a
    ``ShardStats`` with the rerank score sums and 5-point histograms."""
    start, stop = prompts.shards[index]
    yield from prompts.quarantined[index]
    keys, texts = prompts.keys[start:stop], prompts.texts[start:stop]
    st = {"prompts": len(keys), "samples": 0}
    cut_before = sampler.clip.truncated if sampler.clip is not None else 0
    for p, pixels, draws, kept, every in sampler.samples(keys, rows[start:stop], cfg, texts, where=f"shard {index}"):
        if every is not None:
            _add_scores(st, "draws", every)
            _add_scores(st, "kept", kept)
        for j, px in enumerate(pixels):
            meta = canonical_json({"captions": [texts[p]], "prompt_key": keys[p], "sample": j, "draw": draws[j], "split": prompts.split,
                                   "clip_score": None if kept is None else max(float(kept[j]), 0.0),
                                   "clip_similarity": None if kept is None else float(kept[j])})
            st["samples"] += 1
            yield {"__key__": sample_key(keys[p], j), "png": encode_png(px, PNG_LEVEL), "json": meta,
                   "__content__": {"png": canonical_pixels(px), "json": meta}}
    if sampler.clip is not None:
        st["clip_texts_cut"] = sampler.clip.truncated - cut_before  # draws whose prompt CLIP saw cut to its context
    yield ShardStats(st)


def _add_scores(st: dict, name: str, sims: np.ndarray) -> None:
    """Sums that add up over shards (``build.merge_stats``): count, sum and sum of squares of the
    100·cos similarities, sum of the CLIP scores (floored at 0), counts per 5-point bin."""
    s = st.setdefault("rerank", {}).setdefault(name, {"n": 0, "sum": 0.0, "sum_sq": 0.0, "score_sum": 0.0, "histogram": {}})
    s["n"] += len(sims)
    s["sum"] += float(sims.sum())
    s["sum_sq"] += float((sims**2).sum())
    s["score_sum"] += float(np.maximum(sims, 0).sum())
    for b in (np.floor(sims / 5) * 5).astype(int).tolist():
        s["histogram"][str(b)] = s["histogram"].get(str(b), 0) + 1


def rerank_summary(stats: dict) -> dict:
    """{draws, kept} from the summed stats: count, mean and (population) std of the 100·cos
    similarities, mean CLIP score, and [bin start, count] for 5-point bins in order."""
    out = {}
    for name, s in (stats.get("rerank") or {}).items():
        mean = s["sum"] / s["n"]
        out[name] = {"n": s["n"], "similarity_mean": mean, "similarity_std": math.sqrt(max(s["sum_sq"] / s["n"] - mean**2, 0.0)),
                     "score_mean": s["score_sum"] / s["n"], "histogram_5pt": sorted([int(b), c] for b, c in s["histogram"].items())}
    return out


def check_out_folder(out: Path, prefix: str, source_dir: Path | None = None) -> None:
    """``--out`` may be new, empty, or hold what this command writes for this split (a rerun resumes
    and reuses complete shards): ``.stats``, ``.index``, the lock, ``<prefix>-NNNNNN.tar`` shards,
    and with a manifest its card and licence. Anything else, a manifest of another kind of set, or the
    prompt set's own folder stops the run with one ``T2IError``: nothing of it is overwritten."""
    if source_dir is not None:
        refuse_overwrite(source_dir, out)
    if not out.is_dir():
        return
    ours = {STATS_DIR, INDEX_DIR, LOCK_NAME}
    if (out / MANIFEST_NAME).is_file():  # a finished set: its card too (anyone else's README.md is not ours to replace)
        ours |= {MANIFEST_NAME, CARD_NAME, LICENCE_FILE}
    shard = re.compile(re.escape(prefix) + r"-\d{6}\.tar(" + re.escape(PARTIAL_SUFFIX) + ")?")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in ours and not shard.fullmatch(p.name))
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise T2IError(f"--out {out}: holds {', '.join(foreign[:3])}{more}, which is not part of a t2i sample set of these prompts "
                       f"({prefix}-*.tar); give a new or empty folder")
    if (out / MANIFEST_NAME).is_file():
        m = load_manifest(out / MANIFEST_NAME)
        if (m["kind"], m["dataset"]) != ("images", DATASET):
            raise T2IError(f"--out {out}: holds a {m['kind']} set of {m['dataset']}, not t2i sample output; give a new or empty folder")


def write_sample_set(sampler: Sampler, prompts: PromptSet, out, cfg: SampleConfig) -> dict:
    """The shard set of the module docstring under ``out``; returns its manifest (``_skipped``: shards
    reused). ``T2IError`` for an ``out`` that ``check_out_folder`` refuses."""
    out = Path(out)
    prefix = f"{DATASET}-{prompts.split}"
    check_out_folder(out, prefix, prompts.folder)
    check_keys(prompts, cfg.n)
    rows, counts = sampler.rows(prompts.texts)
    identity = {
        "kind": "images", "dataset": DATASET, "split": prompts.split, "regime": None, "size": int(sampler.ae.cfg.image_size), "aligned_to": None,
        "config": {**asdict(cfg), "keep": cfg.n if cfg.rerank else None, "keys": f"<prompt key>-s<sample:0{KEY_DIGITS}d>",
                   "prompts": {**prompts.selection, "read": prompts.read, "used": len(prompts.keys), "tokens": counts}},
        "seed": cfg.seed,
        "sources": {"prompts": prompts.source},
        "models": sampler.record(cfg),
        "encoder": {"png": encoder_id(PNG_LEVEL), "tar": WRITER_ID},
    }
    with build_lock(out):
        records = write_shards(partial(produce_shard, sampler, prompts, rows, cfg), out, prefix, [(b - a) * cfg.n for a, b in prompts.shards],
                               identity, InProcessRunner(), desc=f"sample {prompts.split}")
        stats: dict = {}
        for r in records:
            stats = merge_stats(stats, r.get("stats", {}))
        return finish_shard_set(out, identity, records, {"rerank": rerank_summary(stats)} if "rerank" in stats else None)


def write_grid(sampler: Sampler, prompts: PromptSet, out, cfg: SampleConfig, cell: int = 128) -> Path:
    """A PNG grid: one row of ``cfg.n`` samples per prompt (with ``rerank``: the n best of N draws by
    CLIP, their scores under the row), drawn exactly as the shard set draws them."""
    rows, _ = sampler.rows(prompts.texts)
    cells, captions = [], []
    for p, pixels, _, kept, every in sampler.samples(prompts.keys, rows, cfg, prompts.texts):
        cells.append(list(pixels))
        captions.append(prompts.texts[p] if kept is None else
                        f"{prompts.texts[p]} [CLIP 100·cos {', '.join(f'{s:.1f}' for s in kept)}; best {len(kept)} of {len(every)}]")
    header = f"kept the {cfg.n} of {cfg.rerank} draws CLIP scores highest" if cfg.rerank else ""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    prompt_sheet(cells, captions, cell, header=header).save(out)
    return out


def prompt_warnings(tok, prompts: list[str], rows, lengths: list[int], room: int) -> list[str]:
    """What the prior will not see of each prompt: words the tokenizer maps to its unknown id (the
    MD-MNIST vocabulary knows 20 symbols, "a red cat" is three unknowns), tokens cut at the text
    length, and prompts that tokenize to nothing."""
    out = []
    for prompt, row, n in zip(prompts, rows, lengths):
        unknown = int((row == tok.unk_id).sum()) if tok.unk_id is not None else 0
        if unknown:
            out.append(f"prompt {prompt!r}: {unknown} of its {min(n, room)} tokens are unknown to the {tok.kind} tokenizer "
                       f"(id {tok.unk_id}); the prior sees no word there")
        if n > room:
            out.append(f"prompt {prompt!r}: {n} tokens, cut to the {room} the prior was trained with")
        if n == 0:
            out.append(f"prompt {prompt!r}: no tokens at all; the prior samples unconditionally")
    return out


def prompt_sheet(rows: list[list], captions: list[str], cell: int = 128, gap_after: int = 0, header: str = "") -> Image.Image:
    """One row of (S, S, 3) uint8 images per caption, the caption written under its row. With
    ``gap_after`` = k a wider gap follows the k-th image of each row (two groups side by side);
    ``header`` is a line of text above the grid."""
    fnt = font(12)
    line = fnt.getbbox("Ag")[3] + 3
    text_h = 3 * line + 6
    n = max((len(r) for r in rows), default=0)
    gap = 16 if 0 < gap_after < n else 0
    top = line + 6 if header else 0
    sheet = Image.new("RGB", (n * (cell + 4) + 4 + gap, top + len(rows) * (cell + text_h + 4) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if header:
        draw.text((4, 4), header, fill=(0, 0, 0), font=fnt)
    for p, (images, caption) in enumerate(zip(rows, captions)):
        y = top + 4 + p * (cell + text_h + 4)
        for j, pixels in enumerate(images):
            im = Image.fromarray(pixels).resize((cell, cell), Image.Resampling.NEAREST)
            sheet.paste(im, (4 + j * (cell + 4) + (gap if gap and j >= gap_after else 0), y))
        for k, ln in enumerate(textwrap.wrap(caption, max(20, n * cell // 7))[:3]):
            draw.text((4, y + cell + 3 + k * line), ln, fill=(0, 0, 0), font=fnt)
    return sheet


def _device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise T2IError("--device cuda: no CUDA device here; use --device cpu (or auto)")
    return device


def cli_main(args) -> int:
    """``t2i sample``: checks the flags, reads the prompts, then writes the PNG grid (``--out X.png``)
    or the shard set (``--out DIR``)."""
    if args.keep is not None and args.rerank is None:
        raise T2IError("--keep K applies to --rerank N (keep the K best of N draws); add --rerank N or drop --keep")
    if args.rerank is not None:
        if args.rerank < 1:
            raise T2IError(f"--rerank must be at least 1 (draws per prompt), got {args.rerank}")
        if args.keep is not None and args.keep < 1:
            raise T2IError(f"--keep must be at least 1 (samples kept per prompt), got {args.keep}")
        if args.keep is not None and args.n not in (4, args.keep):  # 4: -n's default, so -n was given
            raise T2IError(f"-n {args.n} and --keep {args.keep}: both set the samples kept per prompt; give one")
        if args.clip is None:
            raise T2IError("--rerank needs --clip DIR: a local CLIP folder (transformers CLIPModel files) to score the draws with")
    elif args.clip is not None:
        raise T2IError("--clip is used only by --rerank N; add --rerank N --keep K or drop --clip")
    if args.prompts_from and (args.prompt or args.prompts):
        raise T2IError("--prompts-from takes the prompts from a shard set; give it or --prompt / --prompts, not both")
    if not args.prompts_from and (args.caption or args.limit):
        raise T2IError("--caption and --limit apply to --prompts-from SHARDS")
    if args.caption < 0:
        raise T2IError(f"--caption must be 0 or more (the caption's index in each key's captions), got {args.caption}")
    if args.limit < 0:
        raise T2IError(f"--limit must be 0 (all keys) or more, got {args.limit}")
    n = args.keep if args.keep is not None else args.n
    cfg = SampleConfig(n=n, rerank=args.rerank, temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p, seed=args.seed,
                       batch_size=args.batch_size, device=_device(args.device))
    out = Path(args.out)
    grid = out.suffix.lower() == ".png"
    if out.suffix.lower() in (".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff"):
        raise T2IError(f"--out {out}: the grid is written as PNG; give a .png file for a grid, or a folder for a shard set")

    if args.prompts_from:
        prompts = prompts_from_shards(args.prompts_from, args.caption, args.limit or None)
    else:
        texts = list(args.prompt or [])
        if args.prompts:
            try:
                texts += [ln.strip() for ln in Path(args.prompts).read_text(encoding="utf-8").splitlines() if ln.strip()]
            except FileNotFoundError:
                raise T2IError(f"--prompts {args.prompts}: no such file") from None
        prompts = prompt_list(texts)
    held = sum(len(q) for q in prompts.quarantined)
    if held:
        print(f"{held} of the {prompts.read} keys read have no caption {args.caption}: quarantined (keys and reasons in the manifest)")
    if cfg.temperature == 0 and cfg.draws > 1:
        log.warning("--temperature 0 is greedy: the %d draws of a prompt are all the same image", cfg.draws)
    if not grid:  # before the models load
        check_out_folder(out, f"{DATASET}-{prompts.split}", prompts.folder)
        check_keys(prompts, cfg.n)
    sampler = Sampler.load(args.prior, args.autoencoder, args.tokenizer, args.clip, cfg.device)
    if grid:
        write_grid(sampler, prompts, out, cfg)
        print(f"wrote {out} ({len(prompts.keys)} prompts x {cfg.n} samples" + (f", best of {cfg.rerank} by CLIP)" if cfg.rerank else ")"))
        return 0
    m = write_sample_set(sampler, prompts, out, cfg)
    t = m["config"]["prompts"]["tokens"]
    print(f"wrote {out}: {m['totals']['samples']:,} samples ({len(prompts.keys):,} prompts x {cfg.n}) in {m['totals']['shards']} shards "
          f"({m['_skipped']} reused), {m['totals']['quarantined']} prompt keys quarantined; prompts cut to L: {t['cut']}, with unknown "
          f"tokens: {t['with_unknown']} ({t['unknown_tokens']} tokens), empty: {t['empty']}")
    if "rerank" in m:
        d, k = m["rerank"]["draws"], m["rerank"]["kept"]
        print(f"CLIP 100·cos: all {d['n']:,} draws {d['similarity_mean']:.2f} ± {d['similarity_std']:.2f} (CLIP score {d['score_mean']:.2f}); "
              f"the {k['n']:,} kept {k['similarity_mean']:.2f} ± {k['similarity_std']:.2f} (CLIP score {k['score_mean']:.2f}); "
              f"draws whose prompt was cut to CLIP's {sampler.clip.context} tokens: {m['stats']['clip_texts_cut']:,}")
    return 0
