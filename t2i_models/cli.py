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
    g.add_argument("--workers", type=int, default=None, help="0: in-process; N: local dask cluster of N processes (default: one per core)")
    g.add_argument("--scheduler", default=None, help="address of an existing dask scheduler, e.g. tcp://10.0.0.5:8786")


def cmd_mdmnist_build(args) -> int:
    from t2i_data.config import resolve
    from t2i_data.mdmnist import MDMNISTConfig, build
    from t2i_data.runner import make_runner
    from t2i_data.sources.mnist import load_mnist

    flags = {f: getattr(args, f) for f in ("seed", "train", "test", "shard_size", "mnist", "png_level")}
    cfg = resolve(MDMNISTConfig, args.config, "mdmnist", flags)
    log.info("mdmnist build: %s -> %s", json.dumps(cfg.identity() | {"mnist": cfg.mnist}, sort_keys=True), args.out)
    load_mnist(cfg.mnist)  # fail on a bad source before any cluster starts
    t0 = time.perf_counter()
    with make_runner(args.workers, args.scheduler) as runner:
        log.info("runner: %s", runner.description)
        manifests = build(cfg, args.out, runner)
    dt = time.perf_counter() - t0
    total = sum(m["totals"]["samples"] for m in manifests.values())
    for split, m in manifests.items():
        t = m["totals"]
        print(f"{split}: {t['samples']} samples in {t['shards']} shards, {t['bytes'] / 1e6:.1f} MB, "
              f"{m['_skipped']} shards reused, digest {m['digest'][:16]} -> {Path(args.out) / split / 'manifest.json'}")
    print(f"{total} samples in {dt:.1f} s ({total / dt:,.0f} samples/s)")
    return 0


def cmd_preprocess(args) -> int:
    from t2i_data.config import resolve, table
    from t2i_data.preprocess import PreprocessConfig, preprocess
    from t2i_data.runner import make_runner
    from t2i_data.quarantine import quarantine_counts

    flags = {f: getattr(args, f) for f in ("root", "regime", "size", "shard_size", "jpeg_quality", "seed", "cub_split",
                                           "bbox_crop", "captions", "limit", "max_aspect", "max_decoded_pixels", "max_target_pixels")}
    flags["dataset"] = args.dataset
    flags["splits"] = tuple(args.split.split(",")) if args.split else None
    flags["strict"] = args.strict or None
    named = table(args.config, "preprocess").get("dataset", args.dataset) if args.config else args.dataset
    if named != args.dataset:
        raise T2IError(f"--config {args.config} is a {named} pipeline; run it as 't2i preprocess {named}'")
    cfg = resolve(PreprocessConfig, args.config, "preprocess", flags)
    log.info("preprocess %s: %s -> %s", cfg.dataset, json.dumps(cfg.identity(), sort_keys=True), args.out)
    t0 = time.perf_counter()
    from t2i_data.preprocess import load_records

    records = load_records(cfg)  # read once, and fail on a bad --root or metadata before any cluster starts
    with make_runner(args.workers, args.scheduler) as runner:
        log.info("runner: %s", runner.description)
        manifests = preprocess(cfg, args.out, runner, records)
    dt = time.perf_counter() - t0
    total = 0
    for split, m in manifests.items():
        t = m["totals"]
        total += t["samples"] + t["quarantined"]
        print(f"{split}: {t['samples']} images in {t['shards']} shards, {t['bytes'] / 1e6:.1f} MB, {t['quarantined']} quarantined, "
              f"{m['_skipped']} shards reused -> {Path(args.out) / split / 'manifest.json'}")
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
    from t2i_data import text

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise T2IError(f"--out {args.out}: a file, not a folder for the tokenizer")
    if args.action == "train":
        captions, origin = text.training_captions(args.images)  # checked: a caption that is not a str stops here
        caps = {}
        for name in ("max_caption_chars", "max_word_chars"):
            value = getattr(args, name)
            if value is not None and value < 0:
                raise T2IError(f"--{name.replace('_', '-')} must be 0 (no cap) or more, got {value}")
            if value is not None:
                caps[name] = value or None
        limits = text.CaptionLimits(**caps)  # the defaults live there, with why
        tok = text.train(args.kind, captions, args.vocab_size, args.min_frequency, limits)
        tok.source = dict(tok.source, trained_on=origin)
        cut = tok.source.get("cut", {"captions_truncated": 0, "words_truncated": 0})
        over = lambda n: f"over {n:,} characters" if n else "(no cap)"  # noqa: E731
        print(f"{origin['captions']:,} training captions; cut before training: {cut['captions_truncated']:,} captions "
              f"{over(limits.max_caption_chars)}, {cut['words_truncated']:,} words {over(limits.max_word_chars)}")
    else:
        tok = text.load_pretrained(args.kind, getattr(args, "from"))
    fp = tok.save(args.out)
    print(f"{tok.kind} tokenizer: {tok.vocab_size} ids, pad {tok.pad_id}, bos {tok.bos_id}, eos {tok.eos_id}, unk {tok.unk_id}; "
          f"fingerprint {fp[:16]} -> {args.out}")
    return 0


def cmd_tokenize(args) -> int:
    from t2i_data.runner import make_runner
    from t2i_data.tokenize import TokenizeConfig, tokenize

    cfg = TokenizeConfig(length=args.length, add_bos=args.bos, add_eos=args.eos)
    with make_runner(args.workers, args.scheduler) as runner:
        manifests = tokenize(args.tokenizer, args.images, args.out, cfg, runner)
    for split, m in manifests.items():
        st = m["stats"]
        print(f"{split}: {st['samples']} samples, {st['captions']} captions in {m['totals']['shards']} shards; "
              f"truncated {st['truncated']}, empty {st['empty']}, control characters removed in {st['control']}, "
              f"repaired UTF-8 in {st['repaired']}; aligned to {m['aligned_to'][:16]}")
    return 0


def _train_config(args, section: str, cls):
    from t2i_data.config import train_config

    return train_config(cls, args.config, section, args.overrides)


def cmd_train_autoencoder(args) -> int:
    from t2i_models.train_autoencoder import TrainConfig, train

    cfg = _train_config(args, "train_autoencoder", TrainConfig)
    log.info("train autoencoder: %s", json.dumps(dataclasses.asdict(cfg), sort_keys=True))
    result = train(cfg)
    print(f"trained {cfg.arch} to step {result['step']} (epoch {result['epoch']}); weights {result['fingerprint'][:16]} -> {result['checkpoint']}")
    return 0


def cmd_train_prior(args) -> int:
    from t2i_models.train_prior import PriorTrainConfig, train_prior

    cfg = _train_config(args, "train_prior", PriorTrainConfig)
    result = train_prior(cfg)
    print(f"trained {cfg.arch} to step {result['step']} (epoch {result['epoch']}) -> {result['checkpoint']}")
    return 0


def cmd_train_clip(args) -> int:
    from t2i_models.train_clip import ClipTrainConfig, train_clip

    cfg = _train_config(args, "train_clip", ClipTrainConfig)
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
    from t2i_models.sample import sample_grid

    if args.n < 1:
        raise T2IError(f"-n must be at least 1 (samples per prompt), got {args.n}")
    if args.temperature < 0 or args.temperature != args.temperature:
        raise T2IError(f"--temperature must be 0 (greedy) or more, got {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise T2IError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.top_k is not None and args.top_k < 0:
        raise T2IError(f"--top-k must be 0 (off) or more, got {args.top_k}")

    prompts = list(args.prompt or [])
    if args.prompts:
        try:
            prompts += [ln.strip() for ln in Path(args.prompts).read_text(encoding="utf-8").splitlines() if ln.strip()]
        except FileNotFoundError:
            raise T2IError(f"--prompts {args.prompts}: no such file") from None
    out = sample_grid(args.prior, args.autoencoder, args.tokenizer, prompts, args.out, n=args.n, temperature=args.temperature,
                      top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    print(f"wrote {out} ({len(prompts)} prompts x {args.n} samples)")
    return 0


def cmd_encode(args) -> int:
    from t2i_models.encode import EncodeConfig, check_reencode, encode

    from t2i_data.runner import make_runner

    cfg = EncodeConfig(views=args.views, seed=args.seed, batch_size=args.batch_size)
    with make_runner(args.workers, args.scheduler) as runner:
        manifests = encode(args.autoencoder, args.images, args.out, cfg, runner)
    for split, m in manifests.items():
        used = len(m["stats"]["code_usage"])
        print(f"{split}: {m['stats']['samples']} images x {cfg.views} views -> {m['autoencoder']['grid']}x{m['autoencoder']['grid']} tokens, "
              f"{used} of {m['autoencoder']['vocab_size']} codes used; aligned to {m['aligned_to'][:16]}")
        if args.check:
            n = check_reencode(args.autoencoder, m["_images"], m["_out"], n=args.check)
            print(f"  re-encoded {n} samples in another batch order: identical tokens")
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
    b.add_argument("--out", required=True, help="output folder; gets train/ and test/ shard sets")
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
    pp = sub.add_parser("preprocess", help=f"{', '.join(ds.pretty for ds in built)} -> image shards for regime ae or prior")
    pp.add_argument("dataset", choices=[ds.name for ds in built])
    pp.add_argument("--root", help="the download: " + "; ".join(f"for {ds.name} {ds.root}" for ds in built))
    pp.add_argument("--out", required=True)
    pp.add_argument("--config", help="a pipeline file, e.g. pipelines/cub-128.toml; flags given here override it")
    pp.add_argument("--regime", choices=("ae", "prior"), help="ae: shorter side N+10; prior: mirror-pad square, (N+20)^2")
    pp.add_argument("--size", type=int, help="N, the final crop size")
    pp.add_argument("--split", help=f"comma-separated splits ({'; '.join(f'{ds.name}: ' + ','.join(ds.splits) for ds in built)}); default all present")
    pp.add_argument("--shard-size", type=int)
    pp.add_argument("--jpeg-quality", type=int)
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
    tr.add_argument("--kind", required=True, choices=("bpe", "wordpiece", "word"))
    tr.add_argument("--images", required=True, help="an image shard set (a build folder, or its train split)")
    tr.add_argument("--out", required=True)
    tr.add_argument("--vocab-size", type=int, help="needed for bpe and wordpiece; caps the word vocabulary")
    tr.add_argument("--min-frequency", type=int, help="default 2 (bpe, wordpiece), 1 (word)")
    tr.add_argument("--max-caption-chars", type=int, help=f"cut longer captions before training (default {MAX_CAPTION_CHARS}; 0: no cap)")
    tr.add_argument("--max-word-chars", type=int, help=f"then cut longer words, runs of non-space characters (default {MAX_WORD_CHARS}; 0: no cap)")
    tr.set_defaults(func=cmd_tokenizer)
    ld = tka.add_parser("load", help="local pretrained files -> a saved tokenizer")
    ld.add_argument("--kind", required=True, choices=("bpe", "wordpiece", "mdmnist"))
    ld.add_argument("--from", help="bpe: tokenizer.json, a GPT-2 folder (vocab.json + merges.txt) or CLIP's bpe_simple_vocab_16e6.txt.gz; "
                    "wordpiece: vocab.txt, tokenizer.json or a Hugging Face tokenizer folder; mdmnist: nothing")
    ld.add_argument("--out", required=True)
    ld.set_defaults(func=cmd_tokenizer)

    tz = sub.add_parser("tokenize", help="captions of an image shard set -> aligned text-token shards")
    tz.add_argument("--tokenizer", required=True, help="a folder made by 't2i tokenizer train|load'")
    tz.add_argument("--images", required=True, help="an image shard set: a split folder, or a build folder of splits")
    tz.add_argument("--out", required=True)
    tz.add_argument("--length", type=int, required=True, help="L, tokens per caption (DALL·E 256, CUB 64, MD-MNIST 12)")
    tz.add_argument("--bos", action="store_true", help="start each caption with the tokenizer's BOS")
    tz.add_argument("--eos", action="store_true", help="end each caption with the tokenizer's EOS")
    _add_runner_args(tz)
    tz.set_defaults(func=cmd_tokenize)

    trn = sub.add_parser("train", help="train a model on streaming shards").add_subparsers(dest="what", required=True, metavar="MODEL")
    ta = trn.add_parser("autoencoder", help="dVAE / VQ-VAE on ae-regime image shards (torchrun for several GPUs)")
    ta.add_argument("--config", help="a pipeline file with a [train_autoencoder] table")
    ta.add_argument("overrides", nargs="*", help="key=value settings (arch, images, out, steps, batch_size, lr, num_workers, seed, "
                    "ckpt_every, ...) and model.<field>=value for the architecture")
    ta.set_defaults(func=cmd_train_autoencoder)

    tp = trn.add_parser("prior", help="G1 / G2 on aligned image-token and text-token shards (torchrun for several GPUs)")
    tp.add_argument("--config", help="a pipeline file with a [train_prior] table")
    tp.add_argument("overrides", nargs="*", help="key=value settings (arch, image_tokens, text_tokens, out, steps, batch_size, "
                    "grad_accum, lr, warmup, ...) and model.<field>=value")
    tp.set_defaults(func=cmd_train_prior)

    tcl = trn.add_parser("clip", help="the evaluation CLIP on an autoencoder's reconstructions of MD-MNIST train images")
    tcl.add_argument("--config", help="a pipeline file with a [train_clip] table")
    tcl.add_argument("overrides", nargs="*", help="key=value settings (arch, image_tokens, text_tokens, autoencoder, out, epochs, "
                     "batch_size, lr, lr_step, eval_image_tokens, eval_text_tokens, ...) and model.<field>=value")
    tcl.set_defaults(func=cmd_train_clip)

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

    sm = sub.add_parser("sample", help="images from prompts with a trained prior, as a PNG grid")
    sm.add_argument("--prior", required=True)
    sm.add_argument("--autoencoder", required=True, help="the checkpoint that made the prior's image tokens")
    sm.add_argument("--tokenizer", required=True, help="the tokenizer the prior's captions were tokenized with")
    sm.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    sm.add_argument("--prompts", help="a file of prompts, one per line")
    sm.add_argument("--out", required=True)
    sm.add_argument("-n", type=int, default=4, help="samples per prompt")
    sm.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    sm.add_argument("--top-k", type=int)
    sm.add_argument("--top-p", type=float)
    sm.add_argument("--seed", type=int, default=0)
    sm.set_defaults(func=cmd_sample)

    en = sub.add_parser("encode", help="image shards -> aligned image-token shards, K views per image")
    en.add_argument("--autoencoder", required=True, help="a t2i autoencoder checkpoint")
    en.add_argument("--images", required=True, help="an image shard set (regime prior or ae, size = the autoencoder's)")
    en.add_argument("--out", required=True)
    en.add_argument("--views", type=int, default=1, help="K views per image; view 0 is the identity")
    en.add_argument("--seed", type=int, default=0, help="seed of the views' random part")
    en.add_argument("--batch-size", type=int, default=64)
    en.add_argument("--check", type=int, default=32, help="re-encode this many samples in another batch order and compare (0: skip)")
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

    ins = sub.add_parser("inspect", help="counts, quarantined inputs, caption/token-length and code-usage histograms")
    ins.add_argument("shards", nargs="+", help="shard sets: split folders or build folders of splits")
    ins.add_argument("--out", help="folder for the PNG figures and inspect.json")
    ins.set_defaults(func=cmd_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
