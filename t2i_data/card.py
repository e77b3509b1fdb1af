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

The header's one ``datasets`` config is ``<dataset>-<kind>-<16 hex>`` (``config_name``), the hex a
sha256 over the manifest digests and every shard's sha256. ``datasets`` 5.2 caches a folder loaded
through its card under ``<cache>/<folder name>/<config name>/<version>/<hash of the card's YAML>``:
no path, mtime or file hash. Named ``default``, over relative shard names that aligned sets share
by design and a rebuild with another seed keeps, two sets in folders of the same name shared one
entry, and the second load returned the first set's rows (issue 15).

A build folder (``out/train``, ``out/test``) gets a card of its own (``write_build_card``) that
lists each split's tar shards: without it ``datasets`` picks a builder per split by the commonest
extension, and a split folder with one shard has as many ``.json`` as ``.tar`` files.
``license: other`` comes with the ``license_name`` and ``license_link`` the hub's card spec asks
for then; the link is ``LICENSE.md``, written beside the card from the same licence table.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from pathlib import Path

from .digest import canonical_json
from .errors import T2IError
from .manifest import MANIFEST_NAME, atomic_write, load_manifest
from .quarantine import quarantine_counts
from .schema import declared, feature_list, levels_of, schema_of, yaml_lines
from .sources import registry

CARD_NAME = "README.md"
LICENCE_FILE = "LICENSE.md"  # the hub's card spec: license_link names "LICENSE" or "LICENSE.md" in the repo, or a URL

# The one licence table, from the datasets' declarations (sources/<name>.py). Where the terms are
# not stated by the source, the entry says so.
LICENCES: dict[str, dict[str, str]] = {
    key: {"source": lic.source, "licence": lic.licence, "url": lic.url, "note": lic.note}
    for ds in registry.datasets().values() for key, lic in ds.licences.items()
}
KINDS = {
    "images": "image shards",
    "text_tokens": "text-token shards",
    "image_tokens": "image-token shards",
    "text_emb": "text-embedding shards",
}


def write_card(out_dir: str | Path, manifest: dict) -> Path:
    """Write LICENSE.md and README.md beside the shards (atomically); their bytes depend on the manifest only."""
    out = Path(out_dir)
    atomic_write(out / LICENCE_FILE, licence_text([manifest]).encode("utf-8"))
    atomic_write(out / CARD_NAME, card_text(manifest).encode("utf-8"))
    return out / CARD_NAME


def write_build_card(out_dir: str | Path, manifests: dict[str, dict]) -> Path:
    """Write the card of a build folder holding one shard set per split (``out/train``, ``out/test``).

    ``manifests`` is what a producer returns ({split: manifest}); each split's folder is found by
    its manifest's digest (``out/<split>`` first), and the card is written from the manifests read
    there. A build whose one set is ``out`` itself already has its card: nothing is written, and
    that card's path is returned."""
    out = Path(out_dir)
    # one split order whatever the producer's dict order (tokenize follows folder names: test, train)
    order = sorted(manifests, key=lambda s: (next((i for i, p in enumerate(("train", "val", "test")) if s.startswith(p)), 3), s))
    sets = [_split_folder(out, split, manifests[split]["digest"]) for split in order]
    if len(sets) == 1 and sets[0][0] == ".":
        return out / CARD_NAME
    if any(folder == "." for folder, _ in sets):
        raise T2IError(f"{out}: holds a shard set of its own and split folders; write each split into its own folder")
    atomic_write(out / LICENCE_FILE, licence_text([m for _, m in sets]).encode("utf-8"))
    atomic_write(out / CARD_NAME, build_card_text(sets).encode("utf-8"))
    return out / CARD_NAME


def _split_folder(out: Path, split: str, digest: str) -> tuple[str, dict]:
    """(folder under ``out``, relative, ``"."`` for ``out`` itself; its manifest) for this digest."""
    for d in [out / split, *sorted(p.parent for p in out.glob(f"*/{MANIFEST_NAME}")), out]:
        if (d / MANIFEST_NAME).is_file() and (m := load_manifest(d / MANIFEST_NAME))["digest"] == digest:
            return d.relative_to(out).as_posix(), m
    raise T2IError(f"{out}: no folder in it holds the {split} manifest with digest {digest}; "
                   "give write_build_card the manifests this build wrote there")


def config_name(manifests: list[dict]) -> str:
    """``<dataset>-<kind>-<16 hex>``: the hex covers every manifest digest and shard sha256, so sets
    with other data or other bytes never share a ``datasets`` cache entry (module docstring)."""
    ident = [[m["digest"], [[s["name"], s["sha256"]] for s in m["shards"]]] for m in manifests]
    return f"{_plain(manifests[0]['dataset'])}-{manifests[0]['kind'].replace('_', '-')}-{hashlib.sha256(canonical_json(ident)).hexdigest()[:16]}"


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # no glob character: datasets reads data_files as patterns


def _plain(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise T2IError(f"{name!r}: a shard, split or dataset name in a card must be letters, digits, '.', '_' and '-'")
    return name


def licences_for(manifest: dict) -> list[str]:
    """The keys of ``LICENCES`` that apply to the set, as its dataset declares them (none for an undeclared one)."""
    ds = registry.lookup(manifest["dataset"])
    return ds.licence_keys(manifest) if ds else []


def licence_name(m: dict) -> str:
    """The hub's ``license_name`` for ``license: other``: an id of lower-case letters, digits and '-'."""
    return re.sub(r"[^a-z0-9]+", "-", m["dataset"].lower()).strip("-") + "-source-licences"


def _licence_table(ms: list[dict]) -> list[str]:
    keys = list(dict.fromkeys(k for m in ms for k in licences_for(m)))
    out = ["| source | licence | where | note |", "|---|---|---|---|"]
    out += [f"| {LICENCES[k]['source']} | {LICENCES[k]['licence']} | {LICENCES[k]['url']} | {LICENCES[k]['note']} |" for k in keys]
    if any(m["kind"] != "images" for m in ms):
        out += ["", "Derived from the image set named in the card: its sources' licences apply here too."]
    return out


_LICENCE_NOTE = f"The same table is in `{LICENCE_FILE}` (the header's `license_link`)."


def is_t2i_card(path: str | Path) -> bool:
    """Whether ``path`` is a card this package wrote: YAML front matter tagged ``t2i-data``
    (``_yaml_header``). The header lists every shard, so it is read to its end, however long."""
    head = Path(path).read_bytes().decode("utf-8", "replace")
    end = head.find("\n---\n", 4)
    return head.startswith("---\n") and end > 0 and "\n- t2i-data\n" in head[: end + 1]


def is_t2i_licence(path: str | Path) -> bool:
    """Whether ``path`` is a LICENSE.md this package wrote (``licence_text``)."""
    with open(path, "rb") as f:
        head = f.read(4096).decode("utf-8", "replace")
    return head.startswith("# Licences: ") and "\nThis data is derived from the sources below, and each keeps its own terms." in head


def refuse_foreign_card(out: str | Path) -> None:
    """Stop a build before it starts when ``out`` holds a README.md or LICENSE.md that this package
    did not write (the user's own notes): the build would replace them with its card. ``T2IError``
    naming the file; a folder or other non-file under either name is refused too."""
    for name, ours in ((CARD_NAME, is_t2i_card), (LICENCE_FILE, is_t2i_licence)):
        p = Path(out) / name
        if not os.path.lexists(p):
            continue
        if p.is_symlink() or not p.is_file():
            kind = "a link" if p.is_symlink() else "a folder" if p.is_dir() else "not a file"
            raise T2IError(f"{p}: {kind}, where the build writes its {name}; move it, or build into another folder")
        if not ours(p):
            raise T2IError(f"{p}: a {name} that t2i did not write, where the build writes its own; "
                           "move it, or build into another folder")


def licence_text(ms: list[dict]) -> str:
    """LICENSE.md, the card's ``license_link``: the terms of the sources, as far as they state any."""
    lines = [f"# Licences: {licence_name(ms[0])}", "",
             "This data is derived from the sources below, and each keeps its own terms. The table gives them as the "
             "sources state them; where a source states none, it says so rather than guessing.", ""]
    if not any(licences_for(m) for m in ms):
        lines += [f"No licence is recorded for the {ms[0]['dataset']} sources: check their terms before using or redistributing this data.", ""]
    return "\n".join(lines + _licence_table(ms)).rstrip("\n") + "\n"


def reconstructed_command(m: dict) -> list[str] | None:
    """The ``t2i`` command that builds this set, from its config; UPPER-CASE words stand for paths."""
    c = m.get("config") or {}
    ds = registry.lookup(m["dataset"])
    try:
        if m["kind"] == "images" and ds and ds.command:  # a dataset with a build command of its own (mdmnist)
            return ds.command(c)
        if m["kind"] == "images":
            cmd = ["t2i", "preprocess", m["dataset"], "--root", f"{m['dataset'].upper()}_ROOT", "--out", "OUT", "--regime", c["regime"],
                   "--size", str(c["size"]), *(["--split", ",".join(c["splits"])] if c["splits"] else []), "--shard-size", str(c["shard_size"]),
                   *(["--jpeg-quality", str(c["jpeg_quality"])] if "jpeg_quality" in c else []),  # absent: a PNG dataset
                   "--seed", str(c["seed"])]
            for flag, key in ds.flags if ds else ():  # the dataset's own settings (cub: --cub-split)
                cmd += [flag, str(c[key])]
            for flag, key in (("--scale", "scale"), ("--bbox-crop", "bbox_crop"), ("--limit", "limit"), ("--max-aspect", "max_aspect"),
                              ("--max-decoded-pixels", "max_decoded_pixels"), ("--max-target-pixels", "max_target_pixels")):
                if c.get(key) is not None:
                    cmd += [flag, str(c[key])]
            return cmd
        if m["kind"] == "text_tokens":
            return (["t2i", "tokenize", "--tokenizer", "TOKENIZER_DIR", "--images", "IMAGES_DIR", "--out", "OUT", "--length", str(c["length"])]
                    + (["--bos"] if c.get("add_bos") else []) + (["--eos"] if c.get("add_eos") else []))
        if m["kind"] == "text_emb":  # t2i_models/embed.py
            return ["t2i", "embed", "--encoder", "ENCODER_DIR", "--images", "IMAGES_DIR", "--out", "OUT", "--pool", c["pool"],
                    "--layers", *map(str, c["layers"]), "--max-length", str(c["max_length"])]
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


def _yaml_header(pretty: str, sets: list[tuple[str, dict]]) -> list[str]:
    """Hugging Face card metadata for one set (folder ``"."``) or a build's split folders; strings
    are JSON-quoted, which YAML reads as they are."""
    q = json.dumps
    ms = [m for _, m in sets]
    m0 = ms[0]
    lines = ["---", f"pretty_name: {q(pretty)}", "license: other", f"license_name: {q(licence_name(m0))}",
             f"license_link: {q(LICENCE_FILE)}", "task_categories:", "- text-to-image", "tags:", "- webdataset", "- t2i-data",
             f"- {q(m0['kind'])}", "size_categories:", f"- {q(size_category(sum(m['totals']['samples'] for m in ms)))}"]
    # Shards without samples add no rows, so they are left out, and so is a split with none. With no
    # samples at all, every split is listed with no files: datasets then refuses ("No (supported)
    # data files found"), where without a config it would read manifest.json as the data.
    splits = [(_plain(m["split"]), [("" if folder == "." else _plain(folder) + "/") + _plain(s["name"]) for s in m["shards"] if s["samples"]])
              for folder, m in sets]
    splits = [(split, files) for split, files in splits if files] or splits
    name = config_name(ms)
    lines += ["configs:", f"- config_name: {q(name)}", "  default: true", "  data_files:"]
    for split, files in splits:
        lines += [f"  - split: {q(split)}", "    path:" + ("" if files else " []")] + [f"    - {q(f)}" for f in files]
    if declared(m0):  # declared features: datasets then infers nothing from the first shard's samples
        lines += ["dataset_info:", f"  config_name: {q(name)}", "  features:"]
        # no dataset_info.splits: datasets requires num_bytes there, the size of its own Arrow output, unknown here
        lines += yaml_lines(feature_list(schema_of(m0)), "  ")
    return lines + ["---", ""]


def title(m: dict, splits: str | None = None) -> str:
    ds = registry.lookup(m["dataset"])
    name = ds.pretty if ds else m["dataset"]
    regime = f", {m['regime']}-{m['size']}" if m.get("regime") else ""
    return f"{name} {splits or m['split']}{regime}: {KINDS.get(m['kind'], m['kind'])}"


def _what(m: dict) -> list[str]:
    ds = registry.lookup(m["dataset"])
    out = [_summary(m), ""]
    kind = m["kind"]
    if kind == "images":
        ext, extra = _image_ext(m), ds.fields if ds else "the source id"
        stored = "RGB"
        if ext == "png" and ds and ds.preprocessed:  # preprocess.stored_png (mdmnist's PNGs are RGB)
            stored = "lossless PNG, 1-channel grayscale where the source is grayscale, else RGB"
        out.append(f"Each sample is `<key>.{ext}` ({stored}) and `<key>.json`: `captions` (every caption of the image, in source order), "
                   f"`split`, {extra}.")
        if m.get("regime") == "ae":
            out.append(f"Regime ae-{m['size']}: the shorter side is resized to {m['size'] + 10}; a training stream adds rotation "
                       f"U(-2°, 2°), a random {m['size']}×{m['size']} crop and a flip (p = 0.5).")
        elif m.get("regime") == "prior":
            out.append(f"Regime prior-{m['size']}: mirror-padded to a square and resized to {m['size'] + 20}²; views add rotation "
                       f"U(-2°, 2°), a centre {m['size']}×{m['size']} crop and a flip (p = 0.5).")
        elif m.get("regime") == "center":
            out.append(f"Regime center-{m['size']}: the shorter side is resized to {m['size']} by exact area averaging and the centre "
                       f"{m['size']}×{m['size']} is kept (an odd remainder puts the extra pixel right / bottom); the stored image is view 0. "
                       "Views 1.. and training streams add rotation U(-2°, 2°) (black corners: there is no margin) and a flip (p = 0.5).")
    elif kind == "text_tokens":
        t = m.get("tokenizer", {})
        out.append(f"Each sample is `<key>.text_tokens.npy`: {t.get('dtype')}, shape (captions, {t.get('length')}), every caption "
                   f"of the image tokenized and right-padded with id {t.get('pad_id')}.")
    elif kind == "text_emb":
        t = m.get("text_encoder", {})
        out.append(f"Each sample is `<key>.text_emb.npy`: {t.get('dtype')}, shape (captions, {t.get('dim')}), every caption of the "
                   f"image embedded by the {t.get('family')} encoder {t.get('name')} ({t.get('pool')} pooling of hidden states "
                   f"{t.get('layers')}, fp32, then float16), in source order; (0, {t.get('dim')}) for an image without captions.")
    elif kind == "image_tokens" and levels_of(m):  # VQ-VAE-2: one member per token level
        a, k = m.get("autoencoder", {}), (m.get("config") or {}).get("views")
        per = "; ".join(f"`<key>.image_tokens.{lv}.npy`: {a.get('dtype')}, shape ({k}, {d['grid']}, {d['grid']}), {d['vocab_size']} codes"
                        for lv, d in levels_of(m).items())
        out.append(f"Each sample holds one token grid per level of a {a.get('kind')}, coarse to fine: {per}; one grid per view and level "
                   "(view 0 the identity), and `<key>.json` with each view's parameters.")
    elif kind == "image_tokens":
        a = m.get("autoencoder", {})
        k = (m.get("config") or {}).get("views")
        out.append(f"Each sample is `<key>.image_tokens.npy`: {a.get('dtype')}, shape ({k}, {a.get('grid')}, {a.get('grid')}), "
                   f"codes of a {a.get('kind')} with {a.get('vocab_size')} codewords, one grid per view (view 0 the identity), and "
                   "`<key>.json` with each view's parameters.")
    if m.get("aligned_to"):
        out.append(f"Aligned with the image set of digest `{m['aligned_to']}`: shard i holds the keys of its shard i, in the same order.")
    return out + [""] + _fields(m)


def _summary(m: dict) -> str:
    ds = registry.lookup(m["dataset"])
    return ds.summary if ds else ""


def _image_ext(m: dict) -> str:
    """The image member of the set's samples: as its dataset declares it, ``jpg`` for an undeclared one."""
    ds = registry.lookup(m["dataset"])
    return ds.image_member if ds else "jpg"


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
           f"| {t['samples']:,} | {t['shards']:,} | {t['bytes']:,} | {t.get('quarantined', 0):,} | {empty} |", ""]

    reasons = quarantine_counts(m.get("quarantined", []))
    if reasons:
        out += ["Quarantined inputs by reason (keys and details in manifest.json, `quarantined`):", "", "| reason | inputs |", "|---|---|"]
        out += [f"| {k} | {n:,} |" for k, n in reasons.items()] + [""]
    st = m.get("stats") or {}
    if m["kind"] == "text_tokens" and st:
        cap = st.get("captions", 0) or 1
        out += [f"Captions: {st.get('captions', 0):,}; truncated to L: {st.get('truncated', 0):,} ({st.get('truncated', 0) / cap:.2%}); "
                f"empty: {st.get('empty', 0):,}; control characters removed in {st.get('control', 0):,}; repaired UTF-8 in "
                f"{st.get('repaired', 0):,} samples.", ""]
    if m["kind"] == "text_emb" and st:
        out += [f"Captions: {st.get('captions', 0):,}; truncated to the max length: {st.get('truncated', 0):,}; control characters "
                f"removed in {st.get('control', 0):,}; repaired UTF-8 in {st.get('repaired', 0):,} samples.", ""]
    if m["kind"] == "image_tokens" and st and levels_of(m):
        used = "; ".join(f"{lv} level {len(st.get('code_usage', {}).get(lv, {})):,} of {d['vocab_size']}" for lv, d in levels_of(m).items())
        out += [f"Views: {st.get('views', 0):,}; codes used: {used}.", ""]
    elif m["kind"] == "image_tokens" and st:
        used, vocab = len(st.get("code_usage", {})), m.get("autoencoder", {}).get("vocab_size")
        out += [f"Views: {st.get('views', 0):,}; codes used: {used:,} of {vocab}.", ""]
    return out


def placeholders(m: dict) -> list[str]:
    """What each upper-case word of the reconstructed command stands for."""
    src = (m.get("sources") or {}).get("images") or {}
    out = {"OUT": "the output folder"}
    ds = registry.lookup(m["dataset"])
    if m["kind"] == "images" and not (ds and ds.command):  # built by t2i preprocess from a download
        out[f"{m['dataset'].upper()}_ROOT"] = f"the {m['dataset']} download (its metadata files' sha256 are listed under Sources)"
    if (m.get("config") or {}).get("mnist") not in (None, "embedded"):
        out["MNIST_IDX_DIR"] = "the folder of the official MNIST IDX files (sha256 under Sources)"
    if "tokenizer" in m:
        out["TOKENIZER_DIR"] = f"the saved tokenizer with fingerprint `{m['tokenizer'].get('fingerprint')}`"
    if "text_encoder" in m:
        out["ENCODER_DIR"] = f"the text encoder folder with fingerprint `{m['text_encoder'].get('fingerprint')}`"
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
    return out + [""] + _licence_table([m]) + ["", _LICENCE_NOTE, ""]


def _model(m: dict) -> list[str]:
    for key, label in (("tokenizer", "Tokenizer"), ("autoencoder", "Autoencoder"), ("text_encoder", "Text encoder")):
        if key in m:
            fields = {k: v for k, v in sorted(m[key].items()) if not isinstance(v, (dict, list))}
            return [f"## {label}", "", "| field | value |", "|---|---|"] + [f"| {k} | `{v}` |" for k, v in fields.items()] + [""]
    return []


def _loading(m: dict) -> list[str]:
    shards = m["shards"]
    n = len(shards)
    prefix = shards[0]["name"].rsplit("-", 1)[0] if shards else f"{m['dataset']}-{m['split']}"
    pattern = f"{prefix}-{{000000..{n - 1:06d}}}.tar" if n > 1 else (shards[0]["name"] if shards else f"{prefix}-000000.tar")
    decode = {"images": '.decode("pil")', "text_tokens": ".decode()", "image_tokens": ".decode()", "text_emb": ".decode()"}[m["kind"]]
    fields = {"images": f'"{_image_ext(m)}", "json"', "text_tokens": '"text_tokens.npy"',
              "image_tokens": '"image_tokens.npy", "json"', "text_emb": '"text_emb.npy"'}[m["kind"]]
    if m["kind"] == "image_tokens" and levels_of(m):
        fields = ", ".join(f'"image_tokens.{lv}.npy"' for lv in levels_of(m)) + ', "json"'
    out = ["## Loading", "", "`DIR` is this folder.", "", "webdataset:", "", "```python", "import webdataset as wds", "",
           f'ds = wds.WebDataset(DIR + "/{pattern}", shardshuffle=False){decode}',
           f"for sample in ds:  # keys __key__, {fields}", "    ...", "```", "",
           "Hugging Face `datasets` (the YAML header of this card lists the shards that hold samples and declares their features):",
           "", "```python",
           "from datasets import load_dataset", "", f'ds = load_dataset(DIR, split="{m["split"]}")  # config {config_name([m])}',
           "# or, naming the files (pass the features, or datasets infers them from the first shard's samples):",
           "# load_dataset(\"webdataset\", data_files=t2i_data.manifest.data_files(DIR), features=t2i_data.schema.features_of(DIR))",
           "```", "", _CONFIG_NOTE, "",
           "This package (every shard's sha256 checked against the manifest first):", "", "```python",
           "from t2i_data.manifest import data_files", "from t2i_data.tario import iter_samples", "",
           f'for path in data_files(DIR)["{m["split"]}"]:', "    for sample in iter_samples(path):  # {\"__key__\": ..., field: bytes}",
           "        ..."]
    if m["kind"] != "images":
        out += ["", "from t2i_data.token_stream import TokenStream  # image tokens zipped with text tokens, for prior training",
                "stream = TokenStream(IMAGE_TOKENS_DIR, TEXT_TOKENS_DIR, batch_size=64, seed=0)"]
    out += ["```", "", "Arrow / Parquet (memory-mapped random access) and a summary with figures:", "", "```bash",
            "t2i export --format arrow DIR --out DIR-arrow   # datasets.load_from_disk(\"DIR-arrow\")",
            "t2i inspect DIR --out DIR-inspect", "```", ""]
    return out


_CONFIG_NOTE = ("The config's name comes from the manifest digests and the shards' sha256, so `datasets` keeps this set in a "
                "cache entry of its own, apart from its aligned sets (the same shard names) and from rebuilds with another seed.")


def card_text(m: dict) -> str:
    lines = _yaml_header(title(m), [(".", m)]) + [f"# {title(m)}", "", "## What it is", ""] + _what(m)
    lines += ["## Contents", ""] + _counts(m) + ["## How it was built", ""] + _build(m)
    lines += ["## Sources and licences", ""] + _sources(m) + _model(m) + _loading(m)
    return "\n".join(lines).rstrip("\n") + "\n"


def build_card_text(sets: list[tuple[str, dict]]) -> str:
    """The card of a build folder: ``sets`` are (split folder relative to it, manifest), in split order."""
    ms = [m for _, m in sets]
    m0 = ms[0]
    for m in ms[1:]:
        if (m["kind"], m["dataset"]) != (m0["kind"], m0["dataset"]) or (declared(m) and schema_of(m) != schema_of(m0)):
            raise T2IError(f"{m0['kind']}/{m0['dataset']} ({m0['split']}) and {m['kind']}/{m['dataset']} ({m['split']}): "
                           "a build card covers splits of one kind and schema; load the split folders one by one")
    head = title(m0, ", ".join(m["split"] for m in ms))
    loaded = [m["split"] for m in ms if m["totals"]["samples"]]
    lines = _yaml_header(head, sets) + [f"# {head}", "", "## What it is", "", _summary(m0), "",
             "One folder per split, each a shard set with its own `manifest.json` and card (`README.md`: what each sample holds, "
             "how the split was built and how to rebuild it, its sources' sha256). The YAML header of this card lists every split's "
             "tar shards that hold samples, so `datasets` reads nothing else here.", "",
             "## Splits", "", "| split | folder | samples | shards | bytes | quarantined inputs | manifest digest |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {m['split']} | `{folder}/` | {m['totals']['samples']:,} | {m['totals']['shards']:,} | {m['totals']['bytes']:,} | "
              f"{m['totals'].get('quarantined', 0):,} | `{m['digest']}` |" for folder, m in sets]
    lines += ["", "## Sources and licences", ""] + _licence_table(ms) + ["", _LICENCE_NOTE, "",
              "## Loading", "", "`DIR` is this folder.", "", "```python", "from datasets import load_dataset", "",
              f"ds = load_dataset(DIR)  # DatasetDict: {', '.join(loaded) or 'no split holds samples'}; config {config_name(ms)}",
              "", "from t2i_data.manifest import data_files  # {split: shard paths}, every shard's sha256 checked first",
              "files = data_files(DIR)", "```", "", _CONFIG_NOTE, ""]
    return "\n".join(lines).rstrip("\n") + "\n"
