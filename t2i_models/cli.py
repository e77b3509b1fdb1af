"""The ``t2i`` command: one subcommand per stage.

The command line sits on top of both packages (imports flow t2i_data -> t2i_models -> this module,
and no module imports it back; tests/test_architecture.py). Each ``cmd_*`` reads its flags, calls
the stage's library function and prints what it did; the stage's logic lives in the library."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

from t2i_data.errors import DISK_FULL, T2IError

log = logging.getLogger("t2i")


def _add_runner_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workers", type=int, default=None, help="0: in-process; N: local dask cluster of N processes (default: in-process, joined by a local cluster of one process per other core when the timed work ahead is worth its start; README, Workers)")
    g.add_argument("--scheduler", default=None, help="address of an existing dask scheduler, e.g. tcp://10.0.0.5:8786")


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _resolve(kind: str, args, flags: dict, name: str | None = None):
    """(config, run-only settings such as out and workers) of a stage as ``t2i run`` resolves it: the
    dataclass defaults, the ``[kind]`` table of ``--config`` (its ``[kind.NAME]`` sub-table with
    ``--table NAME``), then the flags given (None: not given)."""
    from t2i_models.run import resolve_values, table_values

    values = table_values(args.config, kind, name) if getattr(args, "config", None) else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    where = f"--config {args.config}: [{kind}{'.' + name if name else ''}]: " if getattr(args, "config", None) else ""
    return resolve_values(kind, values, flag=_flag, where=where)


def _needs_out(extra: dict, kind: str) -> str:
    if not extra.get("out"):
        raise T2IError(f"--out needed (or 'out' in the [{kind}] table of --config)")
    return extra["out"]


def cmd_mdmnist_build(args) -> int:
    from t2i_data.mdmnist import build
    from t2i_data.runner import make_runner
    from t2i_data.sources.mnist import load_mnist

    flags = {f: getattr(args, f) for f in ("seed", "train", "test", "shard_size", "mnist", "png_level", "out", "workers")}
    cfg, extra = _resolve("mdmnist", args, flags)
    out = _needs_out(extra, "mdmnist")
    log.info("mdmnist build: %s -> %s", json.dumps(cfg.identity() | {"mnist": cfg.mnist}, sort_keys=True), out)
    load_mnist(cfg.mnist)  # fail on a bad source before any cluster starts
    t0 = time.perf_counter()
    with make_runner(extra.get("workers"), args.scheduler) as runner:
        log.info("runner: %s", runner.description)
        manifests = build(cfg, out, runner)
    dt = time.perf_counter() - t0
    total = sum(m["totals"]["samples"] for m in manifests.values())
    for split, m in manifests.items():
        t = m["totals"]
        print(f"{split}: {t['samples']} samples in {t['shards']} shards, {t['bytes'] / 1e6:.1f} MB, "
              f"{m['_skipped']} shards reused, digest {m['digest'][:16]} -> {Path(out) / split / 'manifest.json'}")
    print(f"{total} samples in {dt:.1f} s ({total / dt:,.0f} samples/s)")
    return 0


def cmd_preprocess(args) -> int:
    from t2i_data.preprocess import preprocess
    from t2i_data.runner import make_runner
    from t2i_data.quarantine import quarantine_counts
    from t2i_models.run import sub_tables, read_pipeline

    flags = {f: getattr(args, f) for f in ("root", "regime", "size", "shard_size", "jpeg_quality", "scale", "seed", "cub_split", "out", "workers",
                                           "bbox_crop", "captions", "limit", "max_aspect", "max_decoded_pixels", "max_target_pixels")}
    flags["dataset"] = args.dataset
    flags["splits"] = tuple(args.split.split(",")) if args.split else None
    flags["strict"] = args.strict or None
    name = args.table
    if args.config and name is None and args.regime:  # [preprocess.ae] / [preprocess.prior] picked by --regime
        if args.regime in sub_tables("preprocess", read_pipeline(args.config, "--config").get("preprocess", {})):
            name = args.regime
    if args.config:
        from t2i_models.run import table_values

        named = table_values(args.config, "preprocess", name).get("dataset", args.dataset)
        if named != args.dataset:
            raise T2IError(f"--config {args.config} is a {named} pipeline; run it as 't2i preprocess {named}'")
    cfg, extra = _resolve("preprocess", args, flags, name)
    out = _needs_out(extra, "preprocess")
    log.info("preprocess %s: %s -> %s", cfg.dataset, json.dumps(cfg.identity(), sort_keys=True), out)
    t0 = time.perf_counter()
    from t2i_data.preprocess import load_records

    records = load_records(cfg)  # read once, and fail on a bad --root or metadata before any cluster starts
    with make_runner(extra.get("workers"), args.scheduler) as runner:
        log.info("runner: %s", runner.description)
        manifests = preprocess(cfg, out, runner, records)
    dt = time.perf_counter() - t0
    total = 0
    for split, m in manifests.items():
        t = m["totals"]
        total += t["samples"] + t["quarantined"]
        print(f"{split}: {t['samples']} images in {t['shards']} shards, {t['bytes'] / 1e6:.1f} MB, {t['quarantined']} quarantined, "
              f"{m['_skipped']} shards reused -> {Path(out) / split / 'manifest.json'}")
        for kind, n in quarantine_counts(m["quarantined"]).items():
            print(f"  quarantined {kind}: {n}")
        st = m.get("stats", {})
        for what, n in (("captions dropped (not text, or blank)", st.get("captions_dropped", 0)),
                        ("annotated size differs from the image", st.get("size_mismatch", 0)),
                        ("turned upright by EXIF orientation", st.get("exif_rotated", 0)),
                        ("also in another split (leakage, kept; see the manifest)", len(m["leakage"]))):
            if n:
                print(f"  {what}: {n}")
    print(f"{total} inputs in {dt:.1f} s ({total / dt:,.0f}/s)")
    return 0


def cmd_tokenizer(args) -> int:
    from t2i_models.run import make_tokenizer

    for name in ("max_caption_chars", "max_word_chars"):
        value = getattr(args, name, None)
        if value is not None and value < 0:
            raise T2IError(f"--{name.replace('_', '-')} must be 0 (no cap) or more, got {value}")
    flags = {f: getattr(args, f, None) for f in ("kind", "out", "images", "vocab_size", "min_frequency", "max_caption_chars", "max_word_chars")}
    flags["pretrained"] = getattr(args, "from", None)
    flags["action"] = args.action
    cfg, _ = _resolve("tokenizer", args, flags)
    tok, fp, lines = make_tokenizer(cfg)
    for line in lines:
        print(line)
    print(f"{tok.kind} tokenizer: {tok.vocab_size} ids, pad {tok.pad_id}, bos {tok.bos_id}, eos {tok.eos_id}, unk {tok.unk_id}; "
          f"fingerprint {fp[:16]} -> {cfg.out}")
    return 0


def cmd_tokenize(args) -> int:
    from t2i_data.runner import make_runner
    from t2i_data.tokenize import TokenizeConfig, tokenize

    flags = {"tokenizer": args.tokenizer, "images": args.images, "out": args.out, "length": args.length,
             "add_bos": args.bos or None, "add_eos": args.eos or None, "workers": args.workers}
    st, extra = _resolve("tokenize", args, flags)
    cfg = TokenizeConfig(length=st.length, add_bos=st.add_bos, add_eos=st.add_eos)
    with make_runner(extra.get("workers"), args.scheduler) as runner:
        manifests = tokenize(st.tokenizer, st.images, st.out, cfg, runner)
    for split, m in manifests.items():
        st = m["stats"]
        print(f"{split}: {st['samples']} samples, {st['captions']} captions in {m['totals']['shards']} shards; "
              f"truncated {st['truncated']}, empty {st['empty']}, control characters removed in {st['control']}, "
              f"repaired UTF-8 in {st['repaired']}; aligned to {m['aligned_to'][:16]}")
    return 0


def cmd_embed(args) -> int:
    from t2i_data.runner import make_runner
    from t2i_models.embed import embed

    flags = {f: getattr(args, f) for f in ("encoder", "images", "out", "pool", "max_length", "batch_size", "device", "workers")}
    flags["layers"] = tuple(args.layers) if args.layers is not None else None
    st, extra = _resolve("embed", args, flags)
    with make_runner(extra.get("workers"), args.scheduler) as runner:
        manifests = embed(st.encoder, st.images, st.out, st.embed_config(), runner)
    for split, m in manifests.items():
        s, t = m["stats"], m["text_encoder"]
        print(f"{split}: {s['samples']} samples, {s['captions']} captions -> {t['dim']}-d float16 embeddings ({t['pool']} of hidden "
              f"states {', '.join(map(str, t['layers']))} of {t['family']} {t['name']}, {t['fingerprint'][:16]}); truncated to "
              f"{t['max_length']} tokens: {s['truncated']}; aligned to {m['aligned_to'][:16]}")
    return 0


def _train_config(args, section: str, cls=None):
    """A trainer's config: defaults, the ``[section]`` table of --config (``[section.NAME]`` with
    --table NAME), then the key=value overrides, resolved as ``t2i run`` resolves it."""
    from t2i_data.config import parse_overrides
    from t2i_models.run import apply_overrides, resolve_values, table_values

    values = table_values(args.config, section, getattr(args, "table", None)) if args.config else {}
    values = apply_overrides(values, parse_overrides(args.overrides))
    if getattr(args, "tracker", None):  # --tracker wins over tracker= and the table
        values["tracker"] = args.tracker
    return resolve_values(section, values)[0]


def cmd_train_autoencoder(args) -> int:
    from t2i_models.train_autoencoder import train

    cfg = _train_config(args, "train_autoencoder")
    log.info("train autoencoder: %s", json.dumps(dataclasses.asdict(cfg), sort_keys=True))
    result = train(cfg)
    print(f"trained {cfg.arch} to step {result['step']} (epoch {result['epoch']}); weights {result['fingerprint'][:16]} -> {result['checkpoint']}")
    return 0


def cmd_train_prior(args) -> int:
    from t2i_models.train_prior import train_prior

    cfg = _train_config(args, "train_prior")
    result = train_prior(cfg)
    print(f"trained {cfg.arch} to step {result['step']} (epoch {result['epoch']}) -> {result['checkpoint']}")
    return 0


def cmd_train_cvae(args) -> int:
    from t2i_models.train_cvae import train_cvae

    cfg = _train_config(args, "train_cvae")
    log.info("train cvae: %s", json.dumps(dataclasses.asdict(cfg), sort_keys=True))
    r = train_cvae(cfg)
    print(f"trained {cfg.arch} to step {r['step']} (epoch {r['epoch']}) on {r['kept']:,} of {r['total']:,} train samples "
          f"(fraction {cfg.fraction:g}, seed {cfg.seed}); weights {r['fingerprint'][:16]} -> {r['checkpoint']}")
    for path in r["figures"]:
        print(f"figure: {path}")
    return 0


def cmd_train_regress(args) -> int:
    from t2i_models.train_regress import train_regress

    cfg = _train_config(args, "train_regress")
    log.info("train regress: %s", json.dumps(dataclasses.asdict(cfg), sort_keys=True))
    r = train_regress(cfg)
    print(f"trained {cfg.arch} ({cfg.mode}) to step {r['step']} (epoch {r['epoch']}); weights {r['fingerprint'][:16]} -> {r['checkpoint']}")
    if r["report"]:
        print(f"report: {r['report']}")
    return 0


def cmd_train_clip(args) -> int:
    from t2i_models.train_clip import train_clip

    cfg = _train_config(args, "train_clip")
    log.info("train clip: %s", json.dumps(dataclasses.asdict(cfg), sort_keys=True))
    result = train_clip(cfg)
    print(f"trained {cfg.arch} to step {result['step']} (epoch {result['epoch']}) -> {result['checkpoint']}")
    if "test_accuracy" in result:
        a = result["test_accuracy"]
        print(f"{a['split']} split: true description picked among 13 for {a['accuracy']:.1%} of {a['samples']} reconstructions "
              f"(chance {a['chance']:.1%})")
    return 0


def cmd_eval_mdmnist(args) -> int:
    from t2i_models.eval_mdmnist import EvalConfig, evaluate

    from t2i_data.config import resolve

    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(EvalConfig) if hasattr(args, f.name)}  # the settings with a flag
    flags["priors"] = tuple(args.priors) if args.priors else None
    cfg = resolve(EvalConfig, args.config, "eval_mdmnist", flags)
    r = evaluate(cfg)
    c, acc = r["cics"], r["clip"]["test"]
    print(f"CLIP on {r['eval_set']['samples']} {r['eval_set']['split']} reconstructions: true description picked among 13 "
          f"for {acc['accuracy']:.1%} (chance {acc['chance']:.1%})")
    print(f"CICS over {c['n']} descriptions: A {c['a_wins']}, B {c['b_wins']}, ties {c['ties']} "
          f"(per 100: {c['per_100']['a_mean']:g} / {c['per_100']['b_mean']:g}); two-sided sign test p = {c['p_value']:.3g}")
    for s in ("a", "b"):
        print(f"CTRS {s.upper()} ({r['priors'][s]['arch']}): picked m = 0..12: {r['ctrs'][s]['picked']}; "
              f"test loss {r['loss'][s]['mean']:.4f} (median {r['loss'][s]['quantiles']['0.5']:.4f})")
    for w in r["warnings"]:
        print(f"WARNING: {w}")
    print(f"wrote {Path(cfg.out) / 'report.json'} and figures {', '.join(sorted(r['figures'].values()))}")
    return 0


def cmd_sample(args) -> int:
    from t2i_models.sample import cli_main

    return cli_main(args)


def cmd_eval_images(args) -> int:
    from t2i_models.image_metrics import cli_main

    return cli_main(args)


def cmd_eval_priors(args) -> int:
    from t2i_models.eval_priors import cli_main

    return cli_main(args)


def cmd_encode(args) -> int:
    from t2i_models.encode import EncodeConfig, check_reencode, encode

    from t2i_data.runner import make_runner

    flags = {f: getattr(args, f) for f in ("autoencoder", "images", "out", "views", "seed", "batch_size", "check", "workers")}
    st, extra = _resolve("encode", args, flags)
    cfg = EncodeConfig(views=st.views, seed=st.seed, batch_size=st.batch_size)
    with make_runner(extra.get("workers"), args.scheduler) as runner:
        manifests = encode(st.autoencoder, st.images, st.out, cfg, runner)
    for split, m in manifests.items():
        ae, usage = m["autoencoder"], m["stats"]["code_usage"]
        if "levels" in ae:  # VQ-VAE-2: code_usage is {level: {code: count}}, one grid per level
            grids = ", ".join(f"{lv} {r['grid']}x{r['grid']} ({len(usage[lv])} of {r['vocab_size']} codes used)" for lv, r in ae["levels"].items())
        else:
            grids = f"{ae['grid']}x{ae['grid']} tokens, {len(usage)} of {ae['vocab_size']} codes used"
        print(f"{split}: {m['stats']['samples']} images x {cfg.views} views -> {grids}; aligned to {m['aligned_to'][:16]}")
        if st.check:
            n = check_reencode(st.autoencoder, m["_images"], m["_out"], n=st.check)
            print(f"  re-encoded {n} samples in another batch order: identical tokens")
    return 0


def cmd_eval_autoencoder(args) -> int:
    from t2i_models.eval_autoencoder import evaluate_autoencoder

    flags = {f: getattr(args, f) for f in ("autoencoder", "images", "out", "n", "batch_size", "grid")}
    cfg, _ = _resolve("eval_autoencoder", args, flags)
    r = evaluate_autoencoder(cfg.autoencoder, cfg.images, cfg.out, n=cfg.n, batch_size=cfg.batch_size, grid=cfg.grid)
    shown = [f"{k} {r[k]:.4g}" for k in ("mse", "psnr", "bce", "codes_used", "perplexity") if isinstance(r.get(k), (int, float))]
    print(f"{r.get('images', cfg.n or 'all')} held-out images: " + ", ".join(shown))
    print(f"wrote {Path(cfg.out) / 'report.json'} and {Path(cfg.out) / 'reconstructions.png'}")
    return 0


def cmd_plot(args) -> int:
    from t2i_models.plot import plot_runs

    for d in args.runs:
        if not (Path(d) / "metrics.jsonl").is_file():
            raise T2IError(f"{d}: no metrics.jsonl in it; give the out folders of 't2i train' runs")
    for p in plot_runs(list(args.runs), args.out):
        print(f"wrote {p}")
    return 0


def cmd_run(args) -> int:
    from t2i_models.run import run_pipeline

    run_pipeline(args.pipeline, args.overrides, until=args.until, only=args.only, dry_run=args.dry_run)
    return 0


def cmd_verify(args) -> int:
    from t2i_data.verify import verify_path

    counts: dict[str, int] = {}
    for mpath, data_dir, checks in verify_path(args.path, args.data, deep=args.deep):
        print(f"{mpath}  ({len(checks)} shards, data in {data_dir})")
        for c in checks:
            counts[c.status] = counts.get(c.status, 0) + 1
            print(f"  {c.status:<10} {c.name}  {c.detail}".rstrip())
    good = {"ok"} | ({"content-ok"} if args.accept_content else set())
    bad = sum(n for s, n in counts.items() if s not in good)
    print("summary: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if bad and counts.get("content-ok") and not args.accept_content:
        print("content-ok shards hold the same decoded data written by another encoder version; --accept-content accepts them")
    return 1 if bad else 0


def cmd_preview(args) -> int:
    from t2i_data.preview import contact_sheet, preview_shards

    decode, fingerprint = None, None
    if args.autoencoder:
        from t2i_models.checkpoint import load_autoencoder
        from t2i_models.encode import decode_tokens

        model, ck = load_autoencoder(args.autoencoder)
        fingerprint = ck["fingerprint"]
        decode = lambda tokens: decode_tokens(model, tokens)  # noqa: E731
    out = contact_sheet(preview_shards(args.shards, fingerprint), args.out, n=args.n, cols=args.cols, decode_tokens=decode)
    print(f"wrote {out}")
    return 0


def cmd_export(args) -> int:
    from t2i_data.export import export

    record = export(args.shards, args.out, args.format, overwrite=args.overwrite)
    for split, rec in record["splits"].items():
        f = rec["files"][0]
        print(f"{split}: {rec['rows']:,} rows, {len(rec['schema'])} columns -> {Path(args.out) / f['name']} ({f['bytes'] / 1e6:,.1f} MB)")
    print(f"schema, row counts and source digests: {Path(args.out) / 'export.json'}")
    return 0


def cmd_export_weights(args) -> int:
    from t2i_models.checkpoint import export_weights
    from t2i_models.weights_folder import describe

    print(describe(export_weights(args.checkpoint, args.out, overwrite=args.overwrite), args.out))
    return 0


def cmd_inspect(args) -> int:
    from t2i_data.inspect_shards import REPORT_NAME, inspect

    reports, text = inspect(args.shards, args.out)
    print(text)
    if args.out:
        print(f"\nfigures and {REPORT_NAME} -> {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from t2i_data.mdmnist import MDMNISTConfig
    from t2i_data.sources import registry  # the datasets t2i preprocess builds: one declaration each, sources/<name>.py
    from t2i_data.text.captions import MAX_CAPTION_CHARS, MAX_WORD_CHARS

    d = MDMNISTConfig()
    parser = argparse.ArgumentParser(prog="t2i", description="Datasets and token shards for discrete-token text-to-image models.")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    md = sub.add_parser("mdmnist", help="Multi-Descriptive MNIST").add_subparsers(dest="action", required=True, metavar="ACTION")
    b = md.add_parser("build", help="build MD-MNIST image shards from a seed")
    b.add_argument("--out", help="output folder; gets train/ and test/ shard sets (or 'out' in the [mdmnist] table)")
    b.add_argument("--config", help="a pipeline file, e.g. pipelines/mdmnist.toml; flags given here override it")
    b.add_argument("--seed", type=int, help=f"default {d.seed}")
    b.add_argument("--train", type=int, help=f"train samples (default {d.train})")
    b.add_argument("--test", type=int, help=f"test samples (default {d.test})")
    b.add_argument("--shard-size", type=int, help=f"samples per shard (default {d.shard_size})")
    b.add_argument("--mnist", help="'embedded' (the 5,000 real MNIST digits shipped in t2i-data, the default) or a folder of MNIST IDX files")
    b.add_argument("--png-level", type=int, help=f"zlib level of the PNGs, 0-9 (default {d.png_level})")
    _add_runner_args(b)
    b.set_defaults(func=cmd_mdmnist_build)

    built = [registry.lookup(name) for name in registry.preprocess_names()]
    pp = sub.add_parser("preprocess", help=f"{', '.join(ds.pretty for ds in built)} -> image shards for regime ae, prior or center")
    pp.add_argument("dataset", choices=[ds.name for ds in built])
    pp.add_argument("--root", help="the download: " + "; ".join(f"for {ds.name} {ds.root}" for ds in built))
    pp.add_argument("--out", help="output folder (or 'out' in the [preprocess] table)")
    pp.add_argument("--config", help="a pipeline file, e.g. pipelines/cub-128.toml; flags given here override it")
    pp.add_argument("--table", help="use the [preprocess.NAME] sub-table of --config (default: the one named as --regime, if any)")
    pp.add_argument("--regime", choices=("ae", "prior", "center"), help="ae: shorter side N+10; prior: mirror-pad square, (N+20)^2; "
                    "center: shorter side N (area average), centre NxN crop stored as view 0 (pre-encoding at a tokenizer's size)")
    pp.add_argument("--size", type=int, help="N, the final crop size")
    pp.add_argument("--split", help=f"comma-separated splits ({'; '.join(f'{ds.name}: ' + ','.join(ds.splits) for ds in built)}); default all present")
    pp.add_argument("--shard-size", type=int)
    pp.add_argument("--jpeg-quality", type=int)
    pp.add_argument("--scale", type=int, choices=(1, 2), help="2: store at twice N and rotate there (within 2/255 of the thesis order, "
                    "about 3x the bytes, slower views); default 1")
    pp.add_argument("--seed", type=int, help="seed recorded for the random part applied downstream")
    pp.add_argument("--cub-split", choices=("official", "attngan"))
    pp.add_argument("--bbox-crop", type=float, help="cub: crop to the bounding box enlarged by this factor (AttnGAN: 1.5)")
    pp.add_argument("--captions", help="cub: the text_c10 caption folder (default ROOT/birds/text)")
    pp.add_argument("--limit", type=int, help="only the first N images of each split")
    pp.add_argument("--strict", action="store_true", help="stop at the first bad input (or duplicate, or leakage) instead of quarantining it")
    pp.add_argument("--max-aspect", type=float, help="quarantine images wider or taller than this ratio (default 10)")
    pp.add_argument("--max-decoded-pixels", type=int, help="quarantine images whose decode needs more pixels (default 2**25)")
    pp.add_argument("--max-target-pixels", type=int, help="quarantine images whose stored form would be larger (default 2**24)")
    _add_runner_args(pp)
    pp.set_defaults(func=cmd_preprocess)

    tk = sub.add_parser("tokenizer", help="train a tokenizer on training captions, or load local pretrained files")
    tka = tk.add_subparsers(dest="action", required=True, metavar="ACTION")
    tr = tka.add_parser("train", help="train bpe, wordpiece or word on the training split's captions")
    tr.add_argument("--kind", choices=("bpe", "wordpiece", "word"))
    tr.add_argument("--images", help="an image shard set (a build folder, or its train split)")
    tr.add_argument("--out")
    tr.add_argument("--config", help="a pipeline file with a [tokenizer] table; flags given here override it")
    tr.add_argument("--vocab-size", type=int, help="needed for bpe and wordpiece; caps the word vocabulary")
    tr.add_argument("--min-frequency", type=int, help="default 2 (bpe, wordpiece), 1 (word)")
    tr.add_argument("--max-caption-chars", type=int, help=f"cut longer captions before training (default {MAX_CAPTION_CHARS}; 0: no cap)")
    tr.add_argument("--max-word-chars", type=int, help=f"then cut longer words, runs of non-space characters (default {MAX_WORD_CHARS}; 0: no cap)")
    tr.set_defaults(func=cmd_tokenizer)
    ld = tka.add_parser("load", help="local pretrained files -> a saved tokenizer")
    ld.add_argument("--kind", choices=("bpe", "wordpiece", "mdmnist"))
    ld.add_argument("--from", help="bpe: tokenizer.json, a GPT-2 folder (vocab.json + merges.txt) or CLIP's bpe_simple_vocab_16e6.txt.gz; "
                    "wordpiece: vocab.txt, tokenizer.json or a Hugging Face tokenizer folder; mdmnist: nothing")
    ld.add_argument("--out")
    ld.add_argument("--config", help="a pipeline file with a [tokenizer] table; flags given here override it")
    ld.set_defaults(func=cmd_tokenizer)

    tz = sub.add_parser("tokenize", help="captions of an image shard set -> aligned text-token shards")
    tz.add_argument("--tokenizer", help="a folder made by 't2i tokenizer train|load'")
    tz.add_argument("--images", help="an image shard set: a split folder, or a build folder of splits")
    tz.add_argument("--out")
    tz.add_argument("--length", type=int, help="L, tokens per caption (DALL·E 256, CUB 64, MD-MNIST 12)")
    tz.add_argument("--config", help="a pipeline file with a [tokenize] table (tokenizer, images, out, length, add_bos, add_eos)")
    tz.add_argument("--bos", action="store_true", help="start each caption with the tokenizer's BOS")
    tz.add_argument("--eos", action="store_true", help="end each caption with the tokenizer's EOS")
    _add_runner_args(tz)
    tz.set_defaults(func=cmd_tokenize)

    emb = sub.add_parser("embed", help="captions of an image shard set -> aligned text-embedding shards from a local BERT / Sentence-BERT")
    emb.add_argument("--encoder", help="a local BERT-family folder (save_pretrained: config.json, model.safetensors, tokenizer) or a "
                     "sentence-transformers folder; nothing is downloaded")
    emb.add_argument("--images", help="an image shard set: a split folder, or a build folder of splits")
    emb.add_argument("--out")
    emb.add_argument("--config", help="a pipeline file with an [embed] table; flags given here override it")
    emb.add_argument("--pool", help="mean (default; a Sentence-BERT folder's own pooling when not given), cls, or last4-concat "
                     "(four layers mean-pooled and concatenated: 4 x hidden)")
    emb.add_argument("--layers", type=int, nargs="+", help="hidden-state indexes: 0 the embedding output, -1 the last layer "
                     "(mean: averaged; cls: one; last4-concat: four, default -4 -3 -2 -1)")
    emb.add_argument("--max-length", type=int, help="tokens per caption with [CLS] and [SEP]; longer ones are cut (default 512)")
    emb.add_argument("--batch-size", type=int, help="captions per forward; does not change the bytes (default 64)")
    emb.add_argument("--device", help="cpu (default) or cuda")
    _add_runner_args(emb)
    emb.set_defaults(func=cmd_embed)

    trn = sub.add_parser("train", help="train a model on streaming shards").add_subparsers(dest="what", required=True, metavar="MODEL")
    ta = trn.add_parser("autoencoder", help="dVAE / VQ-VAE on ae-regime image shards (torchrun for several GPUs)")
    ta.add_argument("--config", help="a pipeline file with a [train_autoencoder] table")
    ta.add_argument("overrides", nargs="*", help="key=value settings (arch, images, out, steps, batch_size, lr, num_workers, seed, "
                    "ckpt_every, ...) and model.<field>=value for the architecture")
    ta.set_defaults(func=cmd_train_autoencoder)

    tp = trn.add_parser("prior", help="G1 / G2 on aligned image-token and text-token shards (torchrun for several GPUs)")
    tp.add_argument("--config", help="a pipeline file with a [train_prior] table")
    tp.add_argument("--table", help="use the [train_prior.NAME] sub-table of --config (e.g. g1, g2)")
    tp.add_argument("overrides", nargs="*", help="key=value settings (arch, image_tokens, text_tokens, out, steps, batch_size, "
                    "grad_accum, lr, warmup, ...) and model.<field>=value")
    tp.set_defaults(func=cmd_train_prior)

    tcl = trn.add_parser("clip", help="the evaluation CLIP on an autoencoder's reconstructions of MD-MNIST train images")
    tcl.add_argument("--config", help="a pipeline file with a [train_clip] table")
    tcl.add_argument("overrides", nargs="*", help="key=value settings (arch, image_tokens, text_tokens, autoencoder, out, epochs, "
                     "batch_size, lr, milestones, eval_image_tokens, eval_text_tokens, ...) and model.<field>=value")
    tcl.set_defaults(func=cmd_train_clip)

    tcv = trn.add_parser("cvae", help="the CVAE study's MLP (Fashion-MNIST classes) or conv CVAE (COCO 64x64 + text embeddings)")
    tcv.add_argument("--config", help="a pipeline file with a [train_cvae] table")
    tcv.add_argument("overrides", nargs="*", help="key=value settings (arch, images, text_emb, out, eval_images, eval_text_emb, "
                     "fraction, epochs, steps, batch_size, lr, ...) and model.<field>=value")
    tcv.set_defaults(func=cmd_train_cvae)

    trg = trn.add_parser("regress", help="the Transformer/VAE study's regression baselines: text embeddings -> a VQ-VAE's latent "
                         "(MLP or Siamese triplet), with the similar/dissimilar caption histograms")
    trg.add_argument("--config", help="a pipeline file with a [train_regress] table")
    trg.add_argument("--table", help="use the [train_regress.NAME] sub-table of --config (e.g. mlp, siamese)")
    trg.add_argument("overrides", nargs="*", help="key=value settings (mode, arch, text_emb, image_tokens, autoencoder, out, "
                     "eval_text_emb, eval_image_tokens, pair_images, steps, epochs, batch_size, lr, margin, ...) and model.<field>=value")
    trg.set_defaults(func=cmd_train_regress)
    for p in (ta, tp, tcl, tcv, trg):
        p.add_argument("--tracker", choices=("none", "tensorboard", "wandb"),
                       help="also log metrics, learning rate and figures to TensorBoard (OUT/tensorboard) or wandb (default none)")

    ev = sub.add_parser("eval", help="evaluate trained models").add_subparsers(dest="what", required=True, metavar="DATASET")
    em = ev.add_parser("mdmnist", help="compare two priors on MD-MNIST: CLIP accuracy, CICS, CTRS, test losses -> report.json + PNGs")
    em.add_argument("--priors", nargs=2, metavar=("CKPT_A", "CKPT_B"), help="the two prior checkpoints to compare")
    em.add_argument("--clip", help="a checkpoint from 't2i train clip' (on the same autoencoder's reconstructions)")
    em.add_argument("--autoencoder", help="the checkpoint that made the priors' image tokens")
    em.add_argument("--image-tokens", help="the test split's image-token shards")
    em.add_argument("--text-tokens", help="the test split's text-token shards (mdmnist tokenizer)")
    em.add_argument("--out", help="folder for report.json and the figures")
    em.add_argument("--config", help="a pipeline file with an [eval_mdmnist] table; flags given here override it")
    em.add_argument("--n", type=int, help="random descriptions for CICS and CTRS (default 1000)")
    em.add_argument("--batch-size", type=int, help="descriptions generated at once (default 100)")
    em.add_argument("--seed", type=int, help="descriptions, variants and sampling noise (default 0)")
    em.add_argument("--temperature", type=float)
    em.add_argument("--top-k", type=int, help="0: off")
    em.add_argument("--top-p", type=float, help="1: off")
    em.add_argument("--eval-samples", type=int, help="test samples for CLIP accuracy and losses (default 0: all)")
    em.add_argument("--grid-prompts", type=int, help="prompts in samples.png (default 6)")
    em.add_argument("--grid-samples", type=int, help="samples per prior and prompt in samples.png (default 4)")
    em.add_argument("--device", choices=("auto", "cpu", "cuda"))
    em.set_defaults(func=cmd_eval_mdmnist)
    ea = ev.add_parser("autoencoder", help="held-out MSE, PSNR, BCE, codes used, perplexity and a reconstruction grid -> report.json + PNG")
    ea.add_argument("--autoencoder", help="an autoencoder checkpoint (last.pt, or its 't2i export-weights' folder)")
    ea.add_argument("--images", help="the held-out split of its image shard set (e.g. data/mdmnist/test)")
    ea.add_argument("--out", help="folder for report.json and reconstructions.png")
    ea.add_argument("--config", help="a pipeline file with an [eval_autoencoder] table; flags given here override it")
    ea.add_argument("--n", type=int, help="images to evaluate (default 0: all)")
    ea.add_argument("--batch-size", type=int, help="default 64")
    ea.add_argument("--grid", type=int, help="originals over reconstructions in the grid (default 8)")
    ea.set_defaults(func=cmd_eval_autoencoder)
    ei = ev.add_parser("images", help="FID, KID, IS and CLIP score of image sets (shards, folders or 't2i sample' output) -> report.json + PNG")
    ei.add_argument("--real", required=True, metavar="SHARDS|DIR", help="the reference images: an image shard set or a folder of PNG/JPEG files")
    ei.add_argument("--fake", required=True, action="append", metavar="[NAME=]SHARDS|DIR",
                    help="images to score, e.g. samples from 't2i sample --out DIR' (repeatable: one bar per model)")
    ei.add_argument("--metrics", default="fid,kid,is", help="comma-separated: fid, kid, is, clipscore (default fid,kid,is)")
    ei.add_argument("--inception", metavar="PATH", help="the FID Inception weights (pt_inception-2015-12-05-6726825d.pth)")
    ei.add_argument("--clip", metavar="DIR", help="a local CLIP folder (transformers CLIPModel) for clipscore")
    ei.add_argument("--splits", type=int, default=10, help="IS splits (default 10)")
    ei.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default 100)")
    ei.add_argument("--kid-subset-size", type=int, default=1000, help="KID subset size (default 1000, capped at the set sizes)")
    ei.add_argument("--n", type=int, default=0, help="images per set (default 0: all); a set with fewer stops the run")
    ei.add_argument("--batch-size", type=int, help="images per Inception batch (default 8, the fastest measured on a 2-core CPU; pass more on a GPU)")
    ei.add_argument("--seed", type=int, default=0, help="which N images with --n, KID subsets")
    ei.add_argument("--out", required=True, help="folder for report.json and metrics.png")
    ei.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ei.set_defaults(func=cmd_eval_images)
    ep = ev.add_parser("priors", help="compare two priors on any captions (CUB, COCO, MD-MNIST) with the evaluation CLIP: CICS, CTRS -> report.json + PNGs")
    ep.add_argument("--priors", nargs=2, metavar=("CKPT_A", "CKPT_B"), help="the two prior checkpoints to compare")
    ep.add_argument("--clip", help="a checkpoint from 't2i train clip' (on the same autoencoder's reconstructions)")
    ep.add_argument("--autoencoder", help="the checkpoint that made the priors' image tokens")
    ep.add_argument("--tokenizer", help="the tokenizer of the text-token shards")
    ep.add_argument("--image-tokens", help="the test split's image-token shards")
    ep.add_argument("--text-tokens", help="the test split's text-token shards")
    ep.add_argument("--variants", help="how CTRS changes a caption: cub (colour and bird-part words) or mdmnist")
    ep.add_argument("--out", help="folder for report.json and the figures")
    ep.add_argument("--config", help="a pipeline file with an [eval_priors] table; flags given here override it")
    ep.add_argument("--n", type=int, help="test captions for CICS and CTRS (default 1000)")
    ep.add_argument("--batch-size", type=int, help="captions generated at once (default 100)")
    ep.add_argument("--seed", type=int, help="caption choice, variants and sampling noise (default 0)")
    ep.add_argument("--temperature", type=float)
    ep.add_argument("--top-k", type=int, help="0: off")
    ep.add_argument("--top-p", type=float, help="1: off")
    ep.add_argument("--device", choices=("auto", "cpu", "cuda"))
    ep.set_defaults(func=cmd_eval_priors)

    pl = sub.add_parser("plot", help="training and held-out curves of one or more runs, overlaid, as PNG")
    pl.add_argument("runs", nargs="+", metavar="RUN_DIR", help="out folders of 't2i train' runs (with metrics.jsonl)")
    pl.add_argument("--out", required=True, help="folder for the PNG files")
    pl.set_defaults(func=cmd_plot)

    rn = sub.add_parser("run", help="every stage of a pipeline file in data-flow order, skipping the done ones")
    rn.add_argument("pipeline", help="a pipeline file, e.g. pipelines/mdmnist-cpu.toml")
    rn.add_argument("--until", metavar="STAGE", help="stop after this stage (a kind such as train_prior: after all of them)")
    rn.add_argument("--only", metavar="S1,S2", help="run only these stages (their inputs must be done)")
    rn.add_argument("--dry-run", action="store_true", help="print the plan with each stage's state; run nothing")
    rn.add_argument("overrides", nargs="*", metavar="stage.key=value", help="settings over the file's, e.g. train_autoencoder.lr=0.01, "
                    "train_prior.g1.model.layers=4 (train_prior.lr=...: every prior)")
    rn.set_defaults(func=cmd_run)

    sm = sub.add_parser("sample", help="images from prompts with a trained prior: a PNG grid, or an image shard set for the metrics")
    sm.add_argument("--prior", required=True, help="a prior checkpoint (last.pt, or its 't2i export-weights' folder)")
    sm.add_argument("--autoencoder", required=True, help="the checkpoint that made the prior's image tokens")
    sm.add_argument("--tokenizer", required=True, help="the tokenizer the prior's captions were tokenized with")
    sm.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    sm.add_argument("--prompts", help="a file of prompts, one per line")
    sm.add_argument("--prompts-from", metavar="SHARDS", help="an image shard set whose captions are the prompts (keys kept)")
    sm.add_argument("--caption", type=int, default=0, help="with --prompts-from: which caption of each image (default 0)")
    sm.add_argument("--limit", type=int, default=0, help="with --prompts-from: the first N keys only (default 0: all)")
    sm.add_argument("--out", required=True, help="a .png file: a grid; otherwise a folder: an image shard set of the samples")
    sm.add_argument("-n", "--n", type=int, default=4, help="samples kept per prompt")
    sm.add_argument("--rerank", type=int, metavar="N", help="draw N per prompt and keep the --keep K that --clip scores highest")
    sm.add_argument("--keep", type=int, metavar="K", help="with --rerank: samples kept per prompt (default: -n)")
    sm.add_argument("--clip", metavar="DIR", help="a local CLIP folder (transformers CLIPModel) for --rerank")
    sm.add_argument("--batch-size", type=int, default=64, help="prompts × samples generated at once")
    sm.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    sm.add_argument("--top-k", type=int)
    sm.add_argument("--top-p", type=float)
    sm.add_argument("--seed", type=int, default=0)
    sm.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    sm.set_defaults(func=cmd_sample)

    en = sub.add_parser("encode", help="image shards -> aligned image-token shards, K views per image")
    en.add_argument("--autoencoder", help="a t2i autoencoder checkpoint (last.pt, or its 't2i export-weights' folder)")
    en.add_argument("--images", help="an image shard set (regime prior, ae or center, size = the autoencoder's)")
    en.add_argument("--out")
    en.add_argument("--config", help="a pipeline file with an [encode] table; flags given here override it")
    en.add_argument("--views", type=int, help="K views per image; view 0 is the identity (default 1)")
    en.add_argument("--seed", type=int, help="seed of the views' random part (default 0)")
    en.add_argument("--batch-size", type=int, help="default 64")
    en.add_argument("--check", type=int, help="re-encode this many samples in another batch order and compare (0: skip; default 32)")
    _add_runner_args(en)
    en.set_defaults(func=cmd_encode)

    v = sub.add_parser("verify", help="check shards against their manifest; exit 0 only if all match")
    v.add_argument("path", help="a manifest.json, a shard folder, or a build folder of split subfolders")
    v.add_argument("--data", help="where the shards are, when the manifest lies elsewhere (e.g. a committed one)")
    v.add_argument("--deep", action="store_true", help="also decode every shard and check its content digest")
    v.add_argument("--accept-content", action="store_true", help="count content-ok shards (same decoded data, other encoder) as passing")
    v.set_defaults(func=cmd_verify)

    p = sub.add_parser("preview", help="contact sheet of samples with their captions")
    p.add_argument("shards", nargs="+", help="tar shards, or split / build folders of shard sets")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("-n", type=int, default=16, help="samples to show")
    p.add_argument("--cols", type=int, default=4)
    p.add_argument("--autoencoder", help="checkpoint that decodes image-token shards for the preview")
    p.set_defaults(func=cmd_preview)

    ex = sub.add_parser("export", help="shard sets -> Arrow (memory-mapped, datasets.load_from_disk) or Parquet, one row per sample")
    ex.add_argument("shards", nargs="+", help="a shard set (split or build folder); several aligned sets (images, text tokens, "
                    "image tokens) become one table zipped by key")
    ex.add_argument("--format", choices=("arrow", "parquet"), default="arrow")
    ex.add_argument("--out", required=True, help="output folder: <split>/data-00000-of-00001.<format> and export.json")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing --out once the new export is complete")
    ex.set_defaults(func=cmd_export)

    ew = sub.add_parser("export-weights", help="a checkpoint -> model.safetensors + config.json (architecture, token spaces, "
                        "fingerprints), a folder every t2i loader and any safetensors reader opens")
    ew.add_argument("checkpoint", metavar="CKPT", help="a t2i checkpoint file (a run's last.pt) of any model")
    ew.add_argument("--out", required=True, help="the folder to write (must not exist, or be empty, unless --overwrite)")
    ew.add_argument("--overwrite", action="store_true", help="replace an existing --out once the new folder is complete")
    ew.set_defaults(func=cmd_export_weights)

    ins = sub.add_parser("inspect", help="counts, quarantined inputs, caption/token-length and code-usage histograms")
    ins.add_argument("shards", nargs="+", help="shard sets: split folders or build folders of splits")
    ins.add_argument("--out", help="folder for the PNG figures and inspect.json")
    ins.set_defaults(func=cmd_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value after a flag (t2i run FILE --dry-run a.b=1): argparse fills a nargs="*" positional only once
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except T2IError as e:
        print("t2i: error: " + " ".join(str(e).split("\n")), file=sys.stderr)  # one line, always
        return 2
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        print(f"t2i: error: {e.filename or 'writing output'}: {os.strerror(e.errno)}; free space and rerun the same command", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, as for every other stop; 130 = 128 + SIGINT, as shells report it
        print("t2i: interrupted; rerun the same command to go on from what was finished (complete shards, the last checkpoint)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
