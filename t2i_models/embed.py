"""Captions of an image shard set → aligned text-embedding shards from a local BERT / Sentence-BERT.

Shard i of the output holds, for each key of image shard i in order, ``<key>.text_emb.npy``: float16,
(captions, D), row r the embedding of caption r: the captions ``t2i tokenize`` encodes, in the same
order (``text.sample_captions``, then ``tokenize.clean_caption``). A sample without captions gets a
(0, D) array, so alignment holds. The manifest's ``text_encoder`` records the encoder's family, name,
fingerprint, hidden size and layers, and the pooling, layers, D, dtype, max length and precision.

Pools (``layers`` index the encoder's hidden states as transformers returns them with
``output_hidden_states``: 0 is the embedding layer's output, 1..N the N transformer layers, -1 the
last; they are recorded non-negative):

- ``mean``: the mean of the token states, each caption's [CLS] and [SEP] included, as
  sentence-transformers' mean pooling takes them (``sum(h · mask) / sum(mask)``), of the last layer;
  with ``layers``, of each of those layers, then averaged over them. D = hidden.
- ``cls``: the [CLS] (first) token's state of the last layer, or of the one layer given. D = hidden.
- ``last4-concat``: four layers (default the last four, -4..-1) each mean-pooled as above and
  concatenated in the order given: D = 4 · hidden, 4096 for BERT-large (Kumar & Adeli, "A Picture
  is Worth a Thousand Words", Methods: "we mean-pool and concatenate the output of four distinct
  layers ... a vector of size 4096"; the seed's 768-d Sentence-BERT is ``mean`` on a
  sentence-transformers folder, Reimers & Gurevych 2019).

A sentence-transformers folder (``modules.json``: Transformer, Pooling, optionally Normalize; the
transformer in the root or a sub-folder such as ``0_Transformer/``) is pooled as its
``<pooling>/config.json`` says when no pool is given (mean or cls; other modes are refused), and
L2-normalised when it lists a Normalize module. A pool given that differs from the folder's is used
and recorded (``text_encoder.folder_pool``, ``pool_source``).

Determinism. Each caption is embedded at its own length, never padded: the captions of a shard are
grouped by token length and each group is cut into batches of ``batch_size`` in caption order,
attention mask all ones; the forward runs on one torch thread. Measured on this CPU (torch 2.13,
transformers 5.2, a 4-layer 32-wide and a 2-layer 768-wide random BERT, 64 captions): padded
batches differ from one caption alone by up to 1e-6 in fp32 (the attention's reduction runs over
the padded length), and on two threads even unpadded batches of any size differ from one caption
alone (the GEMM splits its work by the batch's rows); on one thread, unpadded batches of 1, 2, 7 and
64 captions gave bit-identical fp32 states. So the bytes do not depend on ``batch_size`` or on the
number of workers (a shard is one task), tested in ``tests/test_embed.py``. One thread per process
is what the dask runner gives each worker anyway (``runner.py``); the in-process runner is slower
for it. On CUDA (``device``) no such guarantee is made or tested.

Truncation: a caption over ``max_length`` tokens (specials included) keeps its first
``max_length - 2`` WordPieces between [CLS] and [SEP], as transformers' ``truncation=True`` does;
counted in ``stats.truncated``. A non-finite value (fp32, or past float16's ±65,504 when cast) stops
the run with one ``T2IError`` naming the key and caption: it is never written.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict, dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from safetensors import SafetensorError

from t2i_data.build import ShardStats
from t2i_data.derived import build_derived_sets
from t2i_data.digest import canonical_array
from t2i_data.errors import T2IError
from t2i_data.extras import require
from t2i_data.manifest import ShardSet, checked_samples
from t2i_data.npyio import npy_bytes
from t2i_data.tario import WRITER_ID
from t2i_data.text import sample_captions
from t2i_data.text_emb import caption_index, text_emb_decode, text_emb_row  # noqa: F401 (re-exported)
from t2i_data.tokenize import clean_caption

POOLS = ("mean", "cls", "last4-concat")
CONCAT_LAYERS = 4  # last4-concat: four layers (Kumar & Adeli, Methods)
MAX_LENGTH = 1 << 16
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "added_tokens.json")
ST_TRANSFORMER, ST_POOLING, ST_NORMALIZE = ("sentence_transformers.models." + n for n in ("Transformer", "Pooling", "Normalize"))
ST_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}


@dataclass(frozen=True)
class EmbedConfig:
    """``t2i embed``'s settings. ``pool``: mean, cls or last4-concat (module docstring); None: a
    sentence-transformers folder's own pooling, else mean. ``layers``: hidden-state indexes (0 the
    embedding output, -1 the last layer), None for the pool's default. ``max_length``: tokens per
    caption, specials included (BERT's 512 positions). ``batch_size``: captions per forward (does not
    change the bytes). ``device``: cpu or cuda. ``T2IError`` for values out of range; pool/layer
    combinations are checked against the encoder (``resolve_pooling``)."""

    pool: str | None = "mean"
    layers: tuple[int, ...] | None = None
    max_length: int = 512
    batch_size: int = 64
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.pool is not None and self.pool not in POOLS:
            raise T2IError(f"--pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
            if not self.layers or not all(type(i) is int for i in self.layers):
                raise T2IError(f"--layers takes one or more layer indexes (0 the embedding output, -1 the last layer), got {self.layers!r}")
        if not 3 <= self.max_length <= MAX_LENGTH:
            raise T2IError(f"--max-length must be in 3..{MAX_LENGTH} ([CLS], one token, [SEP]), got {self.max_length}")
        if self.batch_size < 1:
            raise T2IError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise T2IError(f"--device must be cpu or cuda[:N], got {self.device!r}")
        if self.device != "cpu" and not torch.cuda.is_available():
            raise T2IError(f"--device {self.device}: this torch sees no CUDA device; use --device cpu")


# ---- the encoder folder ---------------------------------------------------------------------------------------------

def _read_json(path: Path, folder: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise T2IError(f"--encoder {folder}: {path.relative_to(folder)} is not readable JSON ({e})") from None


def sentence_transformers_layout(folder: Path) -> dict | None:
    """A sentence-transformers folder's layout, or None without ``modules.json``: ``{"transformer":
    its sub-path ("" for the root), "pool": "mean"|"cls", "normalize": bool, "files": the layout's
    own files, "lower_case": bool}``. ``T2IError`` for modules this module does not run (Dense, a
    second Transformer...) and pooling modes other than one of mean / cls."""
    if not (folder / "modules.json").is_file():
        return None
    mods = _read_json(folder / "modules.json", folder)
    if not isinstance(mods, list) or not all(isinstance(m, dict) and isinstance(m.get("path"), str) for m in mods):
        raise T2IError(f"--encoder {folder}: modules.json is not a list of sentence-transformers modules")
    types = [m.get("type") for m in mods]
    other = [t for t in types if t not in (ST_TRANSFORMER, ST_POOLING, ST_NORMALIZE)]
    if other or types.count(ST_TRANSFORMER) != 1 or types.count(ST_POOLING) != 1 or types.index(ST_TRANSFORMER) > types.index(ST_POOLING):
        raise T2IError(f"--encoder {folder}: modules.json lists {', '.join(str(t).rsplit('.', 1)[-1] for t in types)}; "
                       f"t2i embed runs Transformer, Pooling and an optional Normalize, in that order")
    by = {t: m["path"] for t, m in zip(types, mods)}
    for t in (ST_TRANSFORMER, ST_POOLING):
        p = by[t]
        if Path(p).is_absolute() or ".." in Path(p).parts:
            raise T2IError(f"--encoder {folder}: modules.json names {p!r}, outside the folder")
    pcfg_path = folder / by[ST_POOLING] / "config.json"
    if not pcfg_path.is_file():
        raise T2IError(f"--encoder {folder}: {by[ST_POOLING]}/config.json (the Pooling module's settings) is missing")
    pcfg = _read_json(pcfg_path, folder)
    on = sorted(k for k, v in (pcfg.items() if isinstance(pcfg, dict) else ()) if k.startswith("pooling_mode") and v is True)
    if len(on) != 1 or on[0] not in ST_MODES:
        raise T2IError(f"--encoder {folder}: {by[ST_POOLING]}/config.json turns on {', '.join(on) or 'no pooling mode'}; "
                       f"t2i embed pools with mean tokens or the CLS token, one of them")
    files = ["modules.json", str(Path(by[ST_POOLING]) / "config.json")]
    sb = folder / by[ST_TRANSFORMER] / "sentence_bert_config.json"
    sb = sb if sb.is_file() else folder / "sentence_bert_config.json"
    lower = False
    if sb.is_file():
        files.append(str(sb.relative_to(folder)))
        lower = bool((_read_json(sb, folder) or {}).get("do_lower_case", False))
    return {"transformer": by[ST_TRANSFORMER], "pool": ST_MODES[on[0]], "normalize": ST_NORMALIZE in types, "files": files, "lower_case": lower}


def encoder_files(folder: Path, sub: str) -> list[str]:
    """The files of the transformer folder ``folder / sub`` the encoder is read from, relative to
    ``folder``: config.json, the safetensors weights (one file, or the index and its shards), the
    tokenizer files present. ``T2IError`` naming what is missing."""
    t = folder / sub
    if not (t / "config.json").is_file():
        raise T2IError(f"--encoder {folder}: no config.json in {sub or 'the folder'}; give a folder written by save_pretrained")
    if (t / "model.safetensors").is_file():
        weights = ["model.safetensors"]
    elif (t / "model.safetensors.index.json").is_file():
        index = _read_json(t / "model.safetensors.index.json", folder)
        shards = sorted(set((index or {}).get("weight_map", {}).values())) if isinstance(index, dict) else []
        lost = [s for s in shards if Path(s).name != s or not (t / s).is_file()]
        if not shards or lost:
            raise T2IError(f"--encoder {folder}: model.safetensors.index.json names missing weight files ({', '.join(lost[:3]) or 'none'})")
        weights = ["model.safetensors.index.json", *shards]
    elif any((t / n).is_file() for n in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")):
        raise T2IError(f"--encoder {folder}: weights only in a pickle / TF / Flax file; t2i reads model.safetensors "
                       f"(save the model again with save_pretrained(safe_serialization=True))")
    else:
        raise T2IError(f"--encoder {folder}: no model.safetensors in {sub or 'the folder'}: the folder holds no weights")
    toks = [n for n in TOKENIZER_FILES if (t / n).is_file()]
    if not ({"tokenizer.json", "vocab.txt"} & set(toks)):
        raise T2IError(f"--encoder {folder}: no tokenizer.json or vocab.txt in {sub or 'the folder'}; save the tokenizer beside the model")
    return [str(Path(sub) / n) for n in ["config.json", *weights, *toks]]


def fingerprint(folder: Path, files: list[str]) -> str:
    """sha256 over the encoder's files, sorted by relative path: for each, its path (UTF-8), a NUL,
    the sha256 hex of its bytes and a newline. The files are those the encoder is read from
    (``encoder_files``, plus a sentence-transformers layout's own), so a README or another
    framework's weights beside them do not change it."""
    h = hashlib.sha256()
    for rel in sorted(files):
        d = hashlib.sha256()
        with open(folder / rel, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                d.update(chunk)
        h.update(rel.encode("utf-8") + b"\0" + d.hexdigest().encode() + b"\n")
    return h.hexdigest()


@contextlib.contextmanager
def _quiet_transformers():
    tf = require("transformers", "t2i embed (a BERT or Sentence-BERT text encoder)")
    level, bars = tf.logging.get_verbosity(), tf.logging.is_progress_bar_enabled()
    tf.logging.set_verbosity_error()  # its load report goes to the log; the checks below say what matters, once
    tf.logging.disable_progress_bar()
    try:
        yield tf
    finally:
        tf.logging.set_verbosity(level)
        if bars:
            tf.logging.enable_progress_bar()


def usable_positions(model) -> int:
    """The longest input the model takes: ``max_position_embeddings``, less the ``padding_idx + 1``
    positions RoBERTa-type embeddings skip (their position ids start after the pad id, so a 514-row
    table holds 512 tokens); BERT's start at 0."""
    n = int(getattr(model.config, "max_position_embeddings", MAX_LENGTH))
    pad = getattr(getattr(model, "embeddings", None), "padding_idx", None)
    return n - (int(pad) + 1) if isinstance(pad, int) else n


def load_text_encoder(folder: str | Path):
    """(model, tokenizer, record) of a local BERT-family / Sentence-BERT folder, read by transformers'
    ``AutoModel`` / ``AutoTokenizer`` with ``local_files_only=True``, in eval mode and fp32 on the CPU.

    ``record``: {"family" (config model_type), "name" (the folder's name), "fingerprint"
    (``fingerprint``), "files", "hidden_size", "num_layers", "max_positions", "format"
    ("transformers" or "sentence-transformers"), "folder_pool" (the layout's pooling, or None),
    "normalize", "lower_case", "unused_weights" (checkpoint tensors of heads the encoder does not
    use, e.g. BERT's pre-training ``cls.*``)}. ``T2IError`` naming the folder for missing files, a
    folder transformers cannot read, weights that do not fit the config (tensors of the encoder
    missing, its own tensors unexpected, or other shapes: transformers would fill them with random
    values), and a tokenizer with more ids than the embedding table."""
    folder = Path(folder)
    if not folder.is_dir():
        raise T2IError(f"--encoder {folder}: no such folder; nothing is downloaded: save the encoder there with save_pretrained")
    st = sentence_transformers_layout(folder)
    sub = st["transformer"] if st else ""
    files = encoder_files(folder, sub) + (st["files"] if st else [])
    tdir = str(folder / sub)
    with _quiet_transformers() as tf:
        try:
            model, info = tf.AutoModel.from_pretrained(tdir, local_files_only=True, output_loading_info=True, use_safetensors=True,
                                                       dtype=torch.float32)
            tok = tf.AutoTokenizer.from_pretrained(tdir, local_files_only=True)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError) as e:  # SafetensorError: a damaged weights file
            first = " ".join(str(e).split("\n")[0].split())[:200]
            raise T2IError(f"--encoder {folder}: transformers cannot load it ({type(e).__name__}: {first})") from None
    own = ("embeddings.", "encoder.", "layers.", "layer.")
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))  # the pooler is never used here
    unexpected = sorted(k for k in info.get("unexpected_keys", ()) if k.startswith(own))
    mismatched = sorted(str(k) for k in info.get("mismatched_keys", ()))
    if missing or unexpected or mismatched:
        what = (f"{len(missing)} tensors missing (e.g. {missing[0]})" if missing else
                f"{len(unexpected)} tensors its config has no place for (e.g. {unexpected[0]})" if unexpected else
                f"{len(mismatched)} tensors of other shapes (e.g. {mismatched[0]})")
        raise T2IError(f"--encoder {folder}: its weights do not fit its config.json: {what}; transformers would fill the "
                       f"gaps with random values. Give the config the weights were saved with")
    cfg = model.config
    if len(tok) > cfg.vocab_size:
        raise T2IError(f"--encoder {folder}: the tokenizer has {len(tok)} ids but the model's embedding table {cfg.vocab_size} rows")
    model = model.float().eval()
    record = {
        "family": cfg.model_type, "name": folder.resolve().name, "fingerprint": fingerprint(folder, files), "files": sorted(files),
        "hidden_size": int(cfg.hidden_size), "num_layers": int(cfg.num_hidden_layers),
        "max_positions": usable_positions(model),
        "format": "sentence-transformers" if st else "transformers", "folder_pool": st["pool"] if st else None,
        "normalize": bool(st and st["normalize"]), "lower_case": bool(st and st["lower_case"]),
        "unused_weights": len(info.get("unexpected_keys", ())),
    }
    return model, tok, record


@lru_cache(maxsize=2)
def cached_text_encoder(folder: str):
    """One load per process (dask workers included)."""
    return load_text_encoder(folder)


# ---- pooling --------------------------------------------------------------------------------------------------------

def resolve_pooling(cfg: EmbedConfig, record: dict) -> dict:
    """{"pool", "layers" (non-negative, as used), "dim", "normalize", and for a sentence-transformers
    folder "pool_source" (its Pooling config, or "given" when ``cfg.pool`` overrides it)} for ``cfg`` on the
    encoder of ``record``; ``T2IError`` (one line) for a layer out of range, a layer given twice,
    cls over several layers, last4-concat over other than four layers, and a max length past the
    encoder's positions."""
    n, hidden = record["num_layers"], record["hidden_size"]
    pool, source = cfg.pool, "given"
    if pool is None:
        pool, source = (record["folder_pool"], "sentence-transformers Pooling config") if record["folder_pool"] else ("mean", None)
    if not record["folder_pool"]:
        source = None  # a plain folder has no pooling of its own: mean given or by default is the same data
    layers = cfg.layers
    if layers is not None:
        bad = [i for i in layers if not -(n + 1) <= i <= n]
        if bad:
            raise T2IError(f"--layers {bad[0]}: {record['name']} has hidden states 0..{n} (0 the embedding output, {n} or -1 the last "
                           f"layer), so indexes run from {-(n + 1)} to {n}")
        layers = tuple(i % (n + 1) for i in layers)
        if len(set(layers)) != len(layers):
            raise T2IError(f"--layers {' '.join(map(str, cfg.layers))} names a hidden state twice (negative indexes count from {n + 1})")
    if pool == "cls" and layers is not None and len(layers) != 1:
        raise T2IError(f"--pool cls takes the [CLS] state of one layer; --layers gives {len(layers)}")
    if pool == "last4-concat":
        if layers is None:
            if n + 1 < CONCAT_LAYERS:
                raise T2IError(f"--pool last4-concat needs four hidden states; {record['name']} has {n + 1}")
            layers = tuple(range(n + 1 - CONCAT_LAYERS, n + 1))
        elif len(layers) != CONCAT_LAYERS:
            raise T2IError(f"--pool last4-concat concatenates four layers; --layers gives {len(layers)}")
    layers = layers if layers is not None else (n,)
    if cfg.max_length > record["max_positions"]:
        raise T2IError(f"--max-length {cfg.max_length}: {record['name']} has {record['max_positions']} positions; give at most that")
    dim = hidden * (len(layers) if pool == "last4-concat" else 1)
    return {"pool": pool, "layers": list(layers), "dim": dim, "normalize": record["normalize"]} | ({"pool_source": source} if source else {})


def pool_states(hidden_states, mask: torch.Tensor, spec: dict) -> torch.Tensor:
    """(B, D) fp32 sentence embeddings from transformers' ``hidden_states`` (N + 1 tensors (B, T, H))
    and ``mask`` (B, T) as ``spec`` (``resolve_pooling``) says; L2-normalised when ``spec["normalize"]``
    (a sentence-transformers Normalize module)."""
    m = mask.to(torch.float32).unsqueeze(-1)  # (B, T, 1)

    def mean(h):  # sentence-transformers' mean pooling: sum over real tokens / their count
        return (h * m).sum(1) / m.sum(1)

    hs = [hidden_states[i].float() for i in spec["layers"]]
    if spec["pool"] == "cls":
        out = hs[0][:, 0]
    elif spec["pool"] == "mean":
        out = mean(hs[0]) if len(hs) == 1 else torch.stack([mean(h) for h in hs]).mean(0)
    else:
        out = torch.cat([mean(h) for h in hs], dim=-1)
    if spec["normalize"]:
        out = torch.nn.functional.normalize(out, p=2, dim=-1)  # sentence-transformers' Normalize
    return out


@contextlib.contextmanager
def one_thread(device: torch.device):
    """One torch thread on the CPU for the forward (module docstring: bit-identical rows whatever
    the batch); nothing changes on CUDA."""
    from t2i_data.runner import one_torch_thread

    with one_torch_thread() if device.type == "cpu" else contextlib.nullcontext():
        yield


def token_ids(tok, captions: list[str], max_length: int) -> tuple[list[list[int]], int]:
    """(the tokenizer's ids per caption, specials included, cut to ``max_length`` by transformers'
    own ``truncation=True``; the number cut). Only the captions over the limit are tokenized twice."""
    if not captions:
        return [], 0
    ids = tok(captions)["input_ids"]
    long = [i for i, s in enumerate(ids) if len(s) > max_length]
    if long:
        for i, s in zip(long, tok([captions[i] for i in long], truncation=True, max_length=max_length)["input_ids"]):
            ids[i] = s
    return ids, len(long)


def embed_captions(model, tok, captions: list[str], spec: dict, max_length: int, batch_size: int) -> tuple[np.ndarray, int]:
    """(n, D) fp32 embeddings of ``captions`` in their order, and the number truncated. Captions are
    embedded unpadded, grouped by token length, in batches of ``batch_size`` (module docstring)."""
    ids, cut = token_ids(tok, captions, max_length)
    out = np.zeros((len(ids), spec["dim"]), np.float32)
    device = next(model.parameters()).device
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(ids):
        by_len.setdefault(len(s), []).append(i)
    with torch.inference_mode(), one_thread(device):
        for n in sorted(by_len):
            idx = by_len[n]
            for s in range(0, len(idx), batch_size):
                chunk = idx[s : s + batch_size]
                x = torch.tensor([ids[i] for i in chunk], dtype=torch.int64, device=device)  # (b, n)
                mask = torch.ones_like(x)
                hs = model(input_ids=x, attention_mask=mask, output_hidden_states=True).hidden_states
                out[chunk] = pool_states(hs, mask, spec).cpu().numpy()
    return out, cut


# ---- the derived set ------------------------------------------------------------------------------------------------

def to_float16(rows: np.ndarray, key: str, captions: list[str], where: str) -> np.ndarray:
    """``rows`` as float16; ``T2IError`` naming the key and caption of the first non-finite value
    (fp32, or past float16's range)."""
    half = rows.astype(np.float16)
    bad = ~np.isfinite(half).all(axis=1)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise T2IError(f"{where}: {key} caption {r} ({captions[r][:60]!r}) embeds to a value float16 cannot hold "
                       f"(max |x| {float(np.abs(rows[r]).max()):.4g}); the encoder's outputs overflow, use another encoder or layer")
    return half


def produce_shard(encoder_dir: str, cfg: EmbedConfig, spec: dict, shard: tuple[str, dict]) -> Iterator:
    """One image shard → its text-embedding shard; ``shard``: (its folder, its manifest record),
    read only after its size, sha256 and sample count match (``manifest.checked_samples``)."""
    folder, record = shard
    image_shard = str(Path(folder) / record["name"])
    model, tok, rec = cached_text_encoder(encoder_dir)
    model.to(cfg.device)
    keys, counts, captions, repaired, control = [], [], [], 0, 0
    for sample in checked_samples(ShardSet(Path(folder), {"shards": [record]}), record):
        caps, fixed = sample_captions(sample, image_shard)
        repaired += fixed
        keys.append(sample["__key__"])
        counts.append(len(caps))
        for c in caps:
            c2, changed = clean_caption(c)
            control += changed
            captions.append(c2.lower() if rec["lower_case"] else c2)
    rows, cut = embed_captions(model, tok, captions, spec, cfg.max_length, cfg.batch_size)
    start = 0
    for key, n in zip(keys, counts):
        arr = to_float16(rows[start : start + n], key, captions[start : start + n], image_shard)
        start += n
        yield {"__key__": key, "text_emb.npy": npy_bytes(arr), "__content__": {"text_emb.npy": canonical_array(arr)}}
    yield ShardStats({"samples": len(keys), "captions": len(captions), "truncated": cut, "control": control, "repaired": repaired})


def embed(encoder_dir: str | Path, images: str | Path, out: str | Path, cfg: EmbedConfig, runner) -> dict[str, dict]:
    """Text-embedding sets aligned with each split of ``images``, under ``out``
    (``t2i_data.derived.build_derived_sets``: {split: manifest}, with ``_images`` / ``_out``
    folders). ``T2IError`` for ``out`` at or inside ``images``, an encoder folder that does not load
    (``load_text_encoder``), a pool or layers that do not fit it (``resolve_pooling``), and whatever
    ``build_derived_sets`` refuses (not an image set, shards missing)."""
    tf = require("transformers", "t2i embed (a BERT or Sentence-BERT text encoder)")
    src = Path(images).resolve()
    src = src.parent if src.is_file() else src
    if Path(out).resolve() == src or src in Path(out).resolve().parents:
        raise T2IError(f"--out {out}: inside the input {images}, whose readers would then find the output's manifests among its "
                       f"own; give a folder outside it")
    _, _, record = load_text_encoder(encoder_dir)
    spec = resolve_pooling(cfg, record)
    own = {
        "config": asdict(cfg) | {"pool": spec["pool"], "layers": spec["layers"], "batch_size": None, "device": None},
        "seed": None,
        "text_encoder": record | {k: spec[k] for k in ("pool", "layers", "dim", "pool_source") if k in spec}
                        | {"dtype": "float16", "max_length": cfg.max_length, "precision": "fp32"},
        "encoder": {"npy": "numpy-format float16", "tar": WRITER_ID, "torch": torch.__version__, "transformers": tf.__version__},
    }
    produce = partial(produce_shard, str(Path(encoder_dir).resolve()), cfg, spec)
    return build_derived_sets(images, out, runner, "text_emb", "embed", "the captions of an image shard set",
                              lambda mpath, base: (own, produce))
