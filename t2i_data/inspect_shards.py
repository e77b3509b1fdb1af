"""``t2i inspect``: what a shard set holds, printed as a table and drawn as PNG histograms.

From the manifest: samples, shards (and how many hold no samples) and bytes per split, the
quarantined inputs by reason (duplicate images among them), for image sets the samples also in
another split (``leakage``), the captions dropped, the images whose annotated size differs from
their pixels and those turned upright by EXIF, and the truncation count the tokenizer recorded. From the shards, each
checked against its sha256 before it is read: captions per image and caption length in words
(image sets), token lengths and the padding rate (text-token sets), embeddings per sample, D and the rows' L2 norms (text-embedding sets), code usage (image-token
sets; one histogram per token level for a VQ-VAE-2 set, ``code_usage_<level>``). A set may be given by URL
(``remote.py``): each shard is fetched into the local cache and checked there before it is read. (Named ``inspect_shards`` so that it can never shadow the standard library's ``inspect``.)
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from .errors import T2IError
from .export import staged_dir
from .manifest import ShardSet, checked_samples, open_shard_sets
from .npyio import load_npy
from .figures import histogram_png
from .quarantine import quarantine_counts
from .schema import levels_of
from .text.captions import sample_captions

REPORT_NAME = "inspect.json"


def _add(hist: dict, values) -> None:
    for v, n in zip(*np.unique(np.asarray(values, dtype=np.int64), return_counts=True)):
        hist[int(v)] = hist.get(int(v), 0) + int(n)


def hist_summary(hist: dict) -> dict:
    """min, p50, mean, p95, max of a {value: count} histogram."""
    if not hist:
        return {"count": 0}
    values = np.array(sorted(hist), dtype=np.int64)
    counts = np.array([hist[v] for v in sorted(hist)], dtype=np.int64)
    cum = np.cumsum(counts)
    q = lambda p: int(values[np.searchsorted(cum, p * cum[-1])])  # noqa: E731
    return {"count": int(cum[-1]), "min": int(values[0]), "p50": q(0.5), "mean": float((values * counts).sum() / cum[-1]),
            "p95": q(0.95), "max": int(values[-1])}


def _count(ss: ShardSet, stats: dict, name: str) -> int:
    """A count the manifest's ``stats`` records (0 when absent), checked to be one."""
    value = stats.get(name, 0) if isinstance(stats, dict) else stats
    if type(value) is not int or value < 0:
        raise T2IError(f"{ss.location}: its manifest's stats.{name} is {value!r}, not a count; rebuild the set")
    return value


def _leakage(ss: ShardSet) -> list[dict]:
    leak = ss.manifest.get("leakage") or []
    fields = ("key", "other_key", "other_split", "by")
    if not isinstance(leak, list) or not all(isinstance(e, dict) and all(isinstance(e.get(f), str) for f in fields) for e in leak):
        raise T2IError(f"{ss.location}: its manifest's leakage is not a list of {{{', '.join(fields)}}} records; rebuild the set")
    return leak


def _tokens(ss: ShardSet, shard: dict, sample: dict, field: str, ndim: int) -> np.ndarray:
    """The integer array ``field`` of a sample, of ``ndim`` dimensions, or one T2IError naming it."""
    where = f"{ss.where(shard['name'])}: {sample['__key__']}.{field}"
    if field not in sample:
        raise T2IError(f"{where} is missing; not a {ss.kind} shard set")
    arr = load_npy(sample[field], where)
    if arr.ndim != ndim or arr.dtype.kind not in "iu":
        raise T2IError(f"{where}: {arr.dtype} array of shape {arr.shape}, expected {ndim} dimensions of integers; rebuild the set")
    return arr


def inspect_set(ss: ShardSet, progress=None) -> dict:
    """The report of one split: counts, histograms ({value: count}; code usage a list) and rates."""
    m = ss.manifest
    rep = {"set": f"{m['dataset']}/{ss.split}", "kind": ss.kind, "dataset": m["dataset"], "split": ss.split, "digest": m["digest"],
           "samples": m["totals"]["samples"], "shards": m["totals"]["shards"], "empty_shards": sum(1 for s in m["shards"] if not s["samples"]),
           "bytes": m["totals"]["bytes"], "quarantined": quarantine_counts(m.get("quarantined", [])), "histograms": {}, "rates": {}}
    hists = rep["histograms"]
    if ss.kind == "images":
        st = m.get("stats") or {}
        leak = _leakage(ss)
        rep["checks"] = {"duplicates": rep["quarantined"].get("duplicate-image", 0), "leakage": len(leak),
                         "leakage_examples": leak[:5], **{k: _count(ss, st, k) for k in ("size_mismatch", "exif_rotated", "captions_dropped")}}
        per_sample, words = {}, {}
        for shard in ss.shards():
            for sample in checked_samples(ss, shard):
                caps, _ = sample_captions(sample, ss.where(shard["name"]))  # as t2i tokenize reads it: captions must be text
                _add(per_sample, [len(caps)])
                _add(words, [len(c.split()) for c in caps])
                if progress is not None:
                    progress.update(1)
        hists.update(captions_per_sample=per_sample, caption_words=words)
    elif ss.kind == "text_tokens":
        pad, length = ss.field("tokenizer", "pad_id"), ss.field("tokenizer", "length")
        lengths, pads, cells, full = {}, 0, 0, 0
        for shard in ss.shards():
            for sample in checked_samples(ss, shard):
                arr = _tokens(ss, shard, sample, "text_tokens.npy", 2)
                n = (arr != pad).sum(axis=1)
                _add(lengths, n)
                pads += int(arr.size - n.sum())
                cells += arr.size
                full += int((n == length).sum())
                if progress is not None:
                    progress.update(1)
        hists["token_length"] = lengths
        st = m.get("stats") or {}
        rows = sum(lengths.values())
        truncated, captions = _count(ss, st, "truncated"), _count(ss, st, "captions")
        rep["rates"] = {"padding": pads / cells if cells else 0.0, "full_rows": full / rows if rows else 0.0,
                        "truncation": truncated / captions if captions else 0.0}
    elif ss.kind == "text_emb":
        _inspect_text_emb(ss, rep, progress)
    else:
        # one histogram per token level (VQ-VAE-2: "code_usage_top", ...; schema.levels_of), or the one grid's "code_usage"
        levels = levels_of(m)
        specs = ({lv: (f"image_tokens.{lv}.npy", d["vocab_size"], f"_{lv}", f"the {lv} level's") for lv, d in levels.items()} if levels
                 else {None: ("image_tokens.npy", ss.field("autoencoder", "vocab_size"), "", "the autoencoder's")})
        usages = {lv: np.zeros(spec[1], np.int64) for lv, spec in specs.items()}
        for shard in ss.shards():
            for sample in checked_samples(ss, shard):
                for lv, (member, vocab, _, whose) in specs.items():
                    arr = _tokens(ss, shard, sample, member, 3)
                    if arr.size and (arr.min() < 0 or arr.max() >= vocab):  # never clipped: a code outside V is bad data
                        raise T2IError(f"{ss.where(shard['name'])}: {sample['__key__']} holds code {int(arr.max()) if arr.max() >= vocab else int(arr.min())}, "
                                       f"outside {whose} {vocab} codes; rebuild the set")
                    usages[lv] += np.bincount(arr.ravel().astype(np.int64), minlength=vocab)
                if progress is not None:
                    progress.update(1)
        for lv, (_, vocab, suffix, _) in specs.items():
            usage = usages[lv]
            hists["code_usage" + suffix] = usage.tolist()
            p = usage[usage > 0] / max(int(usage.sum()), 1)
            rep["rates"].update({"codes_used" + suffix: int((usage > 0).sum()) / vocab,
                                 "perplexity" + suffix: float(math.exp(-(p * np.log(p)).sum())) if p.size else 0.0})
    return rep


def _inspect_text_emb(ss: ShardSet, rep: dict, progress=None) -> None:
    """A text-embedding set (``t2i embed``): embeddings per sample, D, and the rows' L2 norms
    (min, mean, max over every stored row, computed in float32 from the float16 rows)."""
    dim = ss.field("text_encoder", "dim")
    per_sample, count, lo, hi, total = {}, 0, math.inf, -math.inf, 0.0
    for shard in ss.shards():
        for sample in checked_samples(ss, shard):
            where = f"{ss.where(shard['name'])}: {sample['__key__']}.text_emb.npy"
            if "text_emb.npy" not in sample:
                raise T2IError(f"{where} is missing; not a text_emb shard set")
            arr = load_npy(sample["text_emb.npy"], where)
            if arr.dtype != np.float16 or arr.ndim != 2 or arr.shape[1] != dim:
                raise T2IError(f"{where}: {arr.dtype} array of shape {arr.shape}, the manifest says float16 (captions, {dim}); rebuild the set")
            _add(per_sample, [len(arr)])
            if len(arr):
                norms = np.linalg.norm(arr.astype(np.float32), axis=1)
                count, total = count + len(arr), total + float(norms.sum(dtype=np.float64))
                lo, hi = min(lo, float(norms.min())), max(hi, float(norms.max()))
            if progress is not None:
                progress.update(1)
    rep["histograms"]["embeddings_per_sample"] = per_sample
    rep["embeddings"] = {"count": count, "dim": dim, "norm": {"min": lo, "mean": total / count, "max": hi} if count else None}


FIGURES = {  # histogram -> (file suffix, title, x label, y label)
    "captions_per_sample": ("captions-per-sample", "captions per image", "captions", "images"),
    "caption_words": ("caption-length", "caption length in words", "words per caption", "captions"),
    "token_length": ("token-length", "token length (non-pad tokens per caption)", "tokens", "captions"),
    "embeddings_per_sample": ("embeddings-per-sample", "embeddings (captions) per image", "embeddings", "images"),
    "code_usage": ("code-usage", "code usage over all views", "code id", "tokens"),
}


def _figure(name: str) -> tuple[str, str, str, str]:
    """FIGURES' entry, or a token level's code usage (``code_usage_<level>``)."""
    if name in FIGURES:
        return FIGURES[name]
    level = name.removeprefix("code_usage_")
    return (f"code-usage-{level}", f"code usage of the {level} level over all views", "code id", "tokens")


def write_figures(rep: dict, out: Path) -> list[Path]:
    paths = []
    for name, hist in rep["histograms"].items():
        suffix, what, xlabel, ylabel = _figure(name)
        stem = f"{rep['dataset']}-{rep['split']}-{rep['kind']}-{suffix}"
        path, n = out / f"{stem}.png", 1
        while path.exists():  # two inputs with the same dataset, split and kind
            n += 1
            path = out / f"{stem}-{n}.png"
        paths.append(histogram_png(path, hist, f"{rep['set']} {rep['kind']}: {what}", xlabel, ylabel))
    return paths


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def format_reports(reports: list[dict]) -> str:
    head = f"{'set':<24} {'kind':<13} {'samples':>10} {'shards':>7} {'empty':>6} {'bytes':>12} {'quarantined':>12}"
    lines = [head, "-" * len(head)]
    for r in reports:
        lines.append(f"{r['set']:<24} {r['kind']:<13} {r['samples']:>10,} {r['shards']:>7,} {r['empty_shards']:>6,} "
                     f"{_mb(r['bytes']):>12} {sum(r['quarantined'].values()):>12,}")
    for r in reports:
        lines += ["", f"{r['set']} {r['kind']} (digest {r['digest'][:16]})"]
        if r["quarantined"]:
            lines.append("  quarantined: " + ", ".join(f"{k} {n:,}" for k, n in r["quarantined"].items()))
        if "checks" in r:
            c = r["checks"]
            lines.append(f"  {'duplicate images quarantined':<44} {c['duplicates']:,}")
            lines.append(f"  {'also in another split (leakage)':<44} {c['leakage']:,}" + "".join(
                f"\n    {e['key']} = {e['other_key']} ({e['other_split']}, same {'source bytes' if e['by'] == 'file' else 'pixels'})"
                for e in c["leakage_examples"]))
            lines.append(f"  {'annotated size differs from the pixels':<44} {c['size_mismatch']:,}")
            lines.append(f"  {'turned upright by EXIF orientation':<44} {c['exif_rotated']:,}")
            lines.append(f"  {'captions dropped (not text, or blank)':<44} {c['captions_dropped']:,}")
        for name, hist in r["histograms"].items():
            if name.startswith("code_usage"):
                continue
            s = hist_summary(hist)
            label = FIGURES[name][1]
            lines.append(f"  {label:<44} " + ("no samples" if not s["count"] else
                         f"min {s['min']}  p50 {s['p50']}  mean {s['mean']:.2f}  p95 {s['p95']}  max {s['max']}  (n = {s['count']:,})"))
        rates = r["rates"]
        if r["kind"] == "text_tokens":
            lines.append(f"  {'padding':<44} {rates['padding']:.2%} of token slots")
            lines.append(f"  {'truncated to L (as tokenized)':<44} {rates['truncation']:.2%} of captions")
            lines.append(f"  {'rows with no padding':<44} {rates['full_rows']:.2%} of captions")
        if r["kind"] == "text_emb":
            e, nm = r["embeddings"], r["embeddings"]["norm"]
            lines.append(f"  {'embeddings':<44} {e['count']:,} of dimension {e['dim']:,}" + (
                f", L2 norm min {nm['min']:.3f}  mean {nm['mean']:.3f}  max {nm['max']:.3f}" if nm else ""))
        if r["kind"] == "image_tokens":
            for name, usage in r["histograms"].items():  # "code_usage", or one "code_usage_<level>" per token level
                if not name.startswith("code_usage"):
                    continue
                suffix = name.removeprefix("code_usage")
                label = "codes used" + (f" ({suffix[1:]} level)" if suffix else "")
                lines.append(f"  {label:<44} {sum(1 for u in usage if u):,} of {len(usage):,} ({rates['codes_used' + suffix]:.1%}), "
                             f"perplexity {rates['perplexity' + suffix]:.1f}")
    return "\n".join(lines)


def inspect(inputs: list[str | os.PathLike], out: str | os.PathLike | None = None, cache=None) -> tuple[list[dict], str]:
    """Reports for every split of every input, the printable table, and with ``out`` the PNG
    figures and ``inspect.json`` written to ``out`` (built under ``out.partial``, then renamed).
    An input may be a URL (``manifest.open_shard_sets``): its shards are fetched into ``cache``
    (a ``shard_cache.ShardCache``; the default one when None), the next ones while one is read."""
    from tqdm.auto import tqdm

    sets = [ss for p in inputs for ss in open_shard_sets(p, cache)]
    total = sum(ss.manifest["totals"]["samples"] for ss in sets)
    with tqdm(total=total, desc="inspect", unit="sample", unit_scale=True, disable=None) as bar:
        reports = [inspect_set(ss, bar) for ss in sets]
    text = format_reports(reports)
    if out is not None:
        with staged_dir(out, overwrite=True) as tmp:
            for r in reports:
                write_figures(r, tmp)
            data = [dict(r, histograms={k: (v if isinstance(v, list) else {str(a): b for a, b in sorted(v.items())})
                                        for k, v in r["histograms"].items()}) for r in reports]
            (tmp / REPORT_NAME).write_text(json.dumps(data, sort_keys=True, indent=1) + "\n", encoding="utf-8")
    return reports, text
