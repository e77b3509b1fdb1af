"""Weights others can open (issue 21, item 3): a checkpoint's weights as a folder of
``model.safetensors`` and ``config.json``, the layout Hugging Face model folders use, written by
``t2i export-weights`` (``checkpoint.export_weights``) and read back by every loader here
(``checkpoint.load_checkpoint_dict`` hands a folder to ``read_weights_folder``).

Why a second format beside ``last.pt``: ``last.pt`` is a ``torch.save`` pickle that only
``torch.load(weights_only=True)`` reads safely, and it carries the optimizer and the stream's
position, which nobody but a resume needs (the optimizer's two Adam moments triple the file).
safetensors is a flat header plus raw little-endian tensor bytes: any language opens it without
running code, and ``safetensors.torch.load_file`` gives the tensors back bit for bit.

``config.json`` (sorted keys, indent 2) holds what rebuilds and identifies the model:
``model_type`` ``t2i_<kind>`` (never ``transformers``' own types, so a transformers CLIP folder and
this one are told apart both ways: ``clip_score.load_clip`` refuses a ``t2i_*`` folder, this reader
a folder without ``export_format``), ``export_format`` (``EXPORT_FORMAT``), ``t2i_version``, the
checkpoint's ``format``, ``kind``, ``config`` (the architecture) and ``fingerprint`` (sha256 over
the state dict, ``weights.weights_fingerprint``: the loaders check it after loading), ``dtype``,
``tied``, ``token_spaces`` (image and text vocabularies, grid, length, pad id, BOS / EOS, for
readers; derived, not read back), ``trained_on`` (the fingerprints and manifest digests the
checkpoint records), ``source`` (the checkpoint file's name, bytes and sha256) and ``checkpoint``
(its other records: step, train_config, tokens, text_config...). The optimizer, the stream state,
the epoch and the batch in the epoch are left out: ``resume_checkpoint`` refuses a folder.

Tied tensors: safetensors refuses two names over one storage (G3's ``lm_head.weight`` is GPT-2's
``wte.weight``), so one copy is stored under the first name in name order and ``tied`` maps each
other name to it; the reader gives both names the same tensor and ``load_state_dict`` restores
the tie (the model ties them itself; the fingerprint covers both names, as in ``last.pt``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from t2i_data.errors import T2IError

from .weights import weights_fingerprint

EXPORT_FORMAT = "t2i-weights/1"
WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"
TRAINING_STATE = ("optimizer", "stream", "epoch", "batch_in_epoch")  # a resume's only: left out of the folder
TOP = ("format", "kind", "config", "fingerprint")  # checkpoint keys stored at config.json's top level
TRAINED_ON = ("fingerprints", "images_digest", "image_set", "autoencoder", "text_encoder", "rec_loss", "subset")
WEIGHTS_ONLY = "holds weights only, no optimizer state: resume from last.pt"
OTHER_CLIP = ("a transformers CLIP folder goes to 't2i sample --clip' and 't2i eval images --clip'; "
              "here give a t2i checkpoint (last.pt) or a folder from 't2i export-weights'")


def export_folder_of(path: str | Path) -> Path | None:
    """The weights folder ``path`` names: ``path`` itself when it is a folder (whatever it holds:
    ``read_weights_folder`` says what is wrong with it), its parent when it is a ``model.safetensors``
    beside a ``config.json`` written by ``t2i export-weights``; None for anything else (a ``last.pt``,
    a published tokenizer's file: a safetensors file beside another config.json stays theirs)."""
    path = Path(path)
    if path.is_dir():
        return path
    if path.name != WEIGHTS_FILE or not path.is_file():
        return None
    try:
        doc = json.loads((path.parent / CONFIG_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    return path.parent if isinstance(doc, dict) and "export_format" in doc else None


def _config_json(folder: Path, where: str) -> dict:
    """``folder/config.json`` as a dict of a t2i weights folder, or one ``T2IError`` saying what the
    folder is instead (a run folder, a transformers folder, another export version, nothing)."""
    cfg_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not cfg_path.is_file():
        if (folder / "last.pt").is_file():
            raise T2IError(f"{where} is a run folder: pass its checkpoint file {folder / 'last.pt'}, or a folder from 't2i export-weights'")
        if weights.is_file():
            raise T2IError(f"{where}: {WEIGHTS_FILE} without {CONFIG_FILE} beside it; a t2i weights folder holds both "
                           f"('t2i export-weights' writes them): export it again")
        raise T2IError(f"{where}: a folder without {WEIGHTS_FILE} + {CONFIG_FILE} (what 't2i export-weights' writes) "
                       f"or last.pt (a run folder); give a t2i checkpoint file or a weights folder")
    try:
        doc = json.loads(cfg_path.read_bytes())
    except (OSError, ValueError) as e:
        raise T2IError(f"{where}: {CONFIG_FILE} is not JSON ({' '.join(str(e).split())}); the folder is damaged: export it again") from None
    if not isinstance(doc, dict):
        raise T2IError(f"{where}: {CONFIG_FILE} holds a {type(doc).__name__}, not an object; the folder is damaged: export it again")
    if "export_format" not in doc:
        kind = doc.get("model_type")
        if kind == "clip":
            raise T2IError(f"{where}: a transformers CLIP folder ({CONFIG_FILE} model_type 'clip'), not a t2i weights folder; {OTHER_CLIP}")
        raise T2IError(f"{where}: {CONFIG_FILE} has no export_format (model_type {kind!r}): not a folder from 't2i export-weights'; "
                       f"give a t2i checkpoint (last.pt) or a folder 't2i export-weights' wrote")
    if doc["export_format"] != EXPORT_FORMAT:
        from t2i_data import __version__

        raise T2IError(f"{where}: {CONFIG_FILE} has export_format {doc['export_format']!r}; this t2i ({__version__}) reads "
                       f"{EXPORT_FORMAT}: it was written by another version")
    missing = [k for k in TOP if k not in doc]
    if missing:
        raise T2IError(f"{where}: {CONFIG_FILE} lacks {', '.join(missing)}; the folder is damaged: export it again")
    wrong = [k for k, types in (("config", dict), ("fingerprint", str), ("tied", dict), ("trained_on", dict), ("checkpoint", dict))
             if not isinstance(doc.get(k, {}), types) or (k == "tied" and not all(isinstance(v, str) for v in doc[k].values()))]
    if wrong:
        raise T2IError(f"{where}: {CONFIG_FILE} has {wrong[0]} of the wrong type ({type(doc[wrong[0]]).__name__}); "
                       f"the folder is damaged: export it again")
    if doc.get("model_type") != f"t2i_{doc['kind']}":
        raise T2IError(f"{where}: {CONFIG_FILE} has model_type {doc.get('model_type')!r} but kind {doc['kind']!r} "
                       f"(model_type t2i_{doc['kind']}); the folder is damaged: export it again")
    return doc


def read_weights_folder(path: str | Path, where: str = "") -> dict:
    """The checkpoint dict a ``last.pt`` gives (``format``, ``kind``, ``config``, ``fingerprint``,
    ``state_dict`` of CPU tensors, ``step``, ``train_config`` and the other records), read from the
    weights folder ``path`` (or its ``model.safetensors``), plus ``weights_folder``: its
    ``export_format``, ``t2i_version`` and ``source``. No training state: ``optimizer``,
    ``stream``, ``epoch`` and ``batch_in_epoch`` are absent. ``where`` prefixes every message
    (default: the path). The weights are checked against the fingerprint by the loaders
    (``checkpoint.restore_weights``), not here.

    Raises ``T2IError`` (one line) for a run folder (naming its last.pt), a folder without the two
    files, a transformers folder, a config.json that is not JSON or lacks a field, another
    ``export_format``, a model.safetensors that safetensors cannot read, a ``dtype`` other than
    the tensors', and a ``tied`` entry whose tensor the file does not hold."""
    folder = export_folder_of(path) or Path(path)
    where = where or str(path)
    doc = _config_json(folder, where)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise T2IError(f"{where}: no {WEIGHTS_FILE} beside {CONFIG_FILE}; a t2i weights folder holds both: export it again")
    from safetensors.torch import load_file

    try:
        state = load_file(weights, device="cpu")
    except Exception as e:  # safetensors_rust.SafetensorError for a cut or garbled header, OSError, ...
        first = (str(e).strip().splitlines() or [""])[0]
        raise T2IError(f"{where}: {WEIGHTS_FILE} cannot be read ({type(e).__name__}: {first}); the folder is damaged: export it again") from None
    if "dtype" not in doc:  # every export writes it
        raise T2IError(f"{where}: {CONFIG_FILE} lacks dtype; the folder is damaged: export it again")
    if doc["dtype"] != _dtype(state):
        raise T2IError(f"{where}: {CONFIG_FILE} says dtype {doc['dtype']!r} but {WEIGHTS_FILE} holds {_dtype(state)!r}; "
                       "the folder is damaged: export it again")
    tied = doc.get("tied", {})
    for alias, name in sorted(tied.items()):
        if name not in state:
            raise T2IError(f"{where}: {CONFIG_FILE} ties {alias} to {name}, which {WEIGHTS_FILE} does not hold; the folder is damaged")
        state[alias] = state[name]
    ck = {k: doc[k] for k in TOP}
    for part in ("trained_on", "checkpoint"):
        ck.update(doc.get(part) or {})
    ck["state_dict"] = state
    ck["weights_folder"] = {"path": str(folder), "export_format": doc["export_format"], "t2i_version": doc.get("t2i_version"),
                            "source": doc.get("source")}
    return ck


def split_tied(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors to store, {alias: stored name}): tensors that are the same view of one storage
    (same data pointer, shape, strides and dtype) are stored once, under the first name in name
    order; a tensor that shares storage otherwise (a slice of another) is stored as its own copy,
    since safetensors refuses overlapping storage."""
    keep: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: dict[int, int] = {}
    for name in sorted(state):
        t = state[name].detach().cpu()
        ident = (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype) if t.numel() else None
        if ident is not None and ident in seen:
            tied[name] = seen[ident]
            continue
        if ident is not None:
            seen[ident] = name
        keep[name] = t
        if t.numel():
            storages[t.untyped_storage().data_ptr()] = storages.get(t.untyped_storage().data_ptr(), 0) + 1
    for name, t in keep.items():
        if not t.is_contiguous() or (t.numel() and storages[t.untyped_storage().data_ptr()] > 1):
            keep[name] = t.contiguous().clone()
    return keep, tied


def _dtype(state: dict[str, torch.Tensor]) -> str | list[str]:
    """The floating dtype of the weights ("float32"), or the sorted names when they mix."""
    names = sorted({str(t.dtype).removeprefix("torch.") for t in state.values() if t.is_floating_point()})
    return names[0] if len(names) == 1 else names


def token_spaces(model, ck: dict) -> dict:
    """What the model's inputs and outputs index, for readers of config.json: ``image`` (codes,
    grid, image size; per level for VQ-VAE-2) and ``text`` (vocabulary, length, pad id, BOS / EOS)
    as the checkpoint records them (``tokens``, ``text_config``, ``level``) or its config defines
    them; a CVAE's condition and a regressor's embedding sizes. Empty parts are left out."""
    cfg = getattr(model, "cfg", None)
    out: dict = {}
    tokens = ck.get("tokens")
    if tokens:  # priors and the token CLIPs: the spaces of the shards they were trained on
        out["image"] = {"vocab_size": tokens.get("image_vocab"), "grid": tokens.get("grid")}
        out["text"] = {"vocab_size": tokens.get("text_vocab"), "length": tokens.get("text_len"), "pad_id": tokens.get("pad_id")}
        tc = ck.get("text_config") or {}
        out["text"].update({k: tc[k] for k in ("add_bos", "add_eos") if k in tc})
        if ck.get("level"):
            out["image"]["level"] = ck["level"]
    elif hasattr(model, "encode_levels"):  # VQ-VAE-2: one grid per level
        out["image"] = {"levels": {k: {"grid": g, "vocab_size": v} for k, (g, v) in cfg.levels.items()}, "image_size": cfg.image_size}
    elif cfg is not None and hasattr(cfg, "vocab_size") and hasattr(cfg, "grid"):  # dVAE, VQ-VAE, the VQ-VAE study
        out["image"] = {"vocab_size": cfg.vocab_size, "grid": cfg.grid, "image_size": cfg.image_size}
    if ck.get("text_input"):
        out.setdefault("text", {})["input"] = ck["text_input"]
    for field, part, key in (("num_classes", "condition", "classes"), ("text_dim", "condition", "text_embedding_dim"),
                             ("in_dim", "text", "embedding_dim"), ("out_dim", "image", "latent_dim")):
        if cfg is not None and getattr(cfg, field, None) is not None and not tokens:
            out.setdefault(part, {})[key] = getattr(cfg, field)
    return out


def _json_bytes(doc: dict, where: str) -> bytes:
    """config.json's bytes: sorted keys, indent 2, strict JSON (no NaN / Infinity, which many
    parsers refuse); ``T2IError`` naming the record that cannot be written."""
    for key, value in doc.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise T2IError(f"{where}: its record {key!r} cannot go into {CONFIG_FILE} ({e}); it was saved by another version") from None
    return (json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def _check_out(source: Path, out: Path, overwrite: bool) -> bool:
    """Refuse an ``out`` that holds the checkpoint (``--overwrite`` would delete it) or is not empty
    without ``overwrite``; True when an existing ``out`` is to be replaced."""
    src, dest = source.resolve(), out.resolve()
    if src == dest or dest in src.parents:
        raise T2IError(f"--out {out} holds the checkpoint {source}; choose an --out outside the run folder "
                       f"(replacing it would delete the checkpoint)")
    if not out.exists() and not out.is_symlink():
        return False
    if not out.is_dir() or out.is_symlink():  # --overwrite replaces an earlier export folder, never a file or a link
        raise T2IError(f"--out {out} is a {'symlink' if out.is_symlink() else 'file'}, not a folder; choose another --out")
    if not any(out.iterdir()):
        return True  # an empty folder: nothing of anyone's is lost
    if not overwrite:
        raise T2IError(f"--out {out} already exists and is not empty; choose another --out, or pass --overwrite to replace it")
    return True


def write_weights_folder(model: torch.nn.Module, ck: dict, source: str | Path, out: str | Path, overwrite: bool = False) -> dict:
    """Write ``out/model.safetensors`` (the state dict of ``model``, tied tensors once) and
    ``out/config.json`` (module docstring) for the checkpoint ``ck`` loaded from the file
    ``source`` (the loaders' dict, weights already checked against its fingerprint). Atomic:
    written to ``out.partial`` and renamed (``t2i_data.export.staged_dir``). Returns the
    config.json record.

    Raises ``T2IError`` for an ``out`` that holds ``source`` (with or without ``overwrite``), an
    ``out`` that exists and is not empty without ``overwrite``, and a record that JSON cannot hold
    (a ``step`` that is not a count was refused by the loader, ``checkpoint.check_step``)."""
    from safetensors.torch import save_file

    from t2i_data import __version__
    from t2i_data.digest import file_sha256
    from t2i_data.export import staged_dir

    source, out = Path(source), Path(out)
    replace = _check_out(source, out, overwrite)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    keep, tied = split_tied(state)
    doc = {"format": ck["format"], "kind": ck["kind"], "config": ck.get("config") or model.config_dict(),  # priors before issue 7: no config,
           "fingerprint": ck.get("fingerprint") or weights_fingerprint(model)}  # no fingerprint
    doc.update(model_type=f"t2i_{ck['kind']}", export_format=EXPORT_FORMAT, t2i_version=__version__, dtype=_dtype(state), tied=tied,
               token_spaces=token_spaces(model, ck), trained_on={k: ck[k] for k in TRAINED_ON if k in ck},
               source={"name": source.name, "bytes": source.stat().st_size, "sha256": file_sha256(source)},
               checkpoint={k: v for k, v in ck.items() if k not in (*TOP, *TRAINED_ON, *TRAINING_STATE, "state_dict")})
    body = _json_bytes(doc, str(source))
    with staged_dir(out, overwrite=replace) as tmp:
        save_file(keep, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "export_format": EXPORT_FORMAT, "fingerprint": doc["fingerprint"]})
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp / WEIGHTS_FILE, 0o666 & ~umask)  # safetensors 0.8 creates it 0600: others could not open it
        with open(tmp / CONFIG_FILE, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
    return doc


def describe(doc: dict, out: str | Path) -> str:
    """The command line's one-line summary of an export: kind, tensor count and size, fingerprint."""
    size = (Path(out) / WEIGHTS_FILE).stat().st_size
    tied = f", {len(doc['tied'])} tied tensor(s) stored once" if doc["tied"] else ""
    return (f"wrote {Path(out) / WEIGHTS_FILE} ({size:,} bytes) and {CONFIG_FILE}: {doc['kind']} at step "
            f"{doc['checkpoint'].get('step', '?')}, fingerprint {doc['fingerprint'][:16]}{tied}")

