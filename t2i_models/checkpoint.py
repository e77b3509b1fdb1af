"""Checkpoints of every model here (autoencoders, priors, CLIP), and the one home of their formats:
config, weights and training state in one ``torch.save`` file that ``torch.load(weights_only=True)``
reads (plain dicts, lists, numbers, strings and tensors only), written by ``save_checkpoint`` and
read back by ``load_checkpoint_dict`` / ``restore_weights``; ``resume_checkpoint`` is every
trainer's resume. Each model family has its format string and a save / load pair here
(``save_autoencoder`` / ``load_autoencoder``, ``save_prior`` / ``load_prior``, ``save_clip`` /
``load_clip``), so this module imports the model builders and never the other way round.
Every loader also reads a weights folder (``model.safetensors`` + ``config.json``) that
``export_weights`` (``t2i export-weights``) writes: ``weights_folder``.

The weights fingerprint is the sha256 over the state dict (names, dtypes, shapes and bytes, in
name order): the same weights give the same fingerprint on any machine.

A save goes to ``<name>.partial`` (a leftover one from an interrupted save is removed first: it
holds the space the new one needs), is flushed to disk, then renamed over the old file; a save
that fails (a full disk) removes its partial file and stops with one ``T2IError`` naming the
path, the free space and that the previous checkpoint is still there.
"""
from __future__ import annotations


import logging
import os
import shutil
from dataclasses import asdict, fields
from pathlib import Path

import torch

from t2i_data.errors import T2IError
from t2i_data.tokenize import TokenizeConfig

from .clip import CLIP, CLIPConfig
from .dvae import DVAE, DVAEConfig
from .pretrained import known_layouts, load_pretrained
from .prior_builders import PRIORS, prior_from_config
from .vqvae import VQVAE, VQVAEConfig
from .vqvae2 import VQVAE2, VQVAE2Config
from .vqvae_study import VQVAEStudy, VQVAEStudyConfig
from .weights import weights_fingerprint
from .weights_folder import WEIGHTS_ONLY, export_folder_of, read_weights_folder, write_weights_folder

log = logging.getLogger(__name__)
AUTOENCODER_FORMAT = "t2i-autoencoder/1"
PRIOR_FORMAT = "t2i-prior/1"
CLIP_FORMAT = "t2i-clip/1"
CVAE_FORMAT = "t2i-cvae/1"
KINDS = {"dvae": (DVAE, DVAEConfig), "vqvae": (VQVAE, VQVAEConfig), "vqvae2": (VQVAE2, VQVAE2Config)}
KINDS["vqvae_study"] = (VQVAEStudy, VQVAEStudyConfig)  # the 128x128 VQ-VAE study (seeds/001)


def save_checkpoint(path: str | Path, model, fmt: str, **state) -> str:
    """Write {format, kind, config, state_dict, fingerprint} plus ``state`` (step, optimizer,
    stream position...) atomically: to ``path.partial``, then renamed. Returns the fingerprint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": fmt, "kind": model.kind, "config": model.config_dict(),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "fingerprint": weights_fingerprint(model)}
    payload.update(state)
    tmp = path.with_name(path.name + ".partial")
    try:
        tmp.unlink(missing_ok=True)
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        try:
            free = f"{shutil.disk_usage(path.parent).free:,} bytes free there"
        except OSError:
            free = "free space unknown"
        kept = f"the previous {path.name} is unchanged" if path.exists() else f"no {path.name} was written"
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise T2IError(f"{path}: could not write the checkpoint ({reason}; {free}); {kept}. Free space (or fix the folder) "
                       f"and rerun: training resumes from the last checkpoint") from None
    return payload["fingerprint"]


def load_checkpoint_dict(path: str | Path, what: str = "", map_location: str = "cpu") -> dict:
    """A t2i checkpoint as a plain dict (``torch.load(weights_only=True)``), or one clear error;
    ``what`` names the argument in that error (e.g. "--clip"). A folder (or its
    ``model.safetensors``) is read as a weights folder from ``t2i export-weights``
    (``weights_folder.read_weights_folder``: the same dict without the training state; a run
    folder is refused naming its last.pt), tensors on CPU."""
    where = f"{what} {path}" if what else str(path)
    if export_folder_of(path) is not None:
        return check_step(read_weights_folder(path, where), where)
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise T2IError(f"{where}: no such checkpoint") from None
    except Exception as e:  # pickle errors, a non-checkpoint file, a disallowed global
        first = (str(e).strip().splitlines() or [""])[0]  # torch's weights_only message runs to a dozen lines
        raise T2IError(f"{where}: not a loadable t2i checkpoint ({type(e).__name__}: {first})") from None
    if not isinstance(ck, dict) or "format" not in ck:
        raise T2IError(f"{where}: not a t2i checkpoint")
    return check_step(ck, where)


def check_step(ck: dict, where: str) -> dict:
    """``ck`` when its ``step`` record (if any: checkpoints of untrained models have none) is a
    count of optimizer steps, an int >= 0; otherwise one ``T2IError``. Every loader and a resume
    read it: a string or negative step edited into a file stopped them with a traceback."""
    step = ck.get("step", 0)
    if type(step) is not int or step < 0:
        raise T2IError(f"{where}: its step record is {step!r}, not a count of steps; the checkpoint was changed by hand")
    return ck


def build_model(where: str, kind: str, make):
    """``make()``, the model a checkpoint's recorded config describes; its config read from a file
    may hold a field of the wrong type or value (a hand-edited config.json): the ``TypeError`` or
    ``ValueError`` the model's own checks raise becomes one ``T2IError`` naming the file."""
    try:
        return make()
    except T2IError:
        raise
    except (TypeError, ValueError) as e:
        raise T2IError(f"{where}: its {kind} config does not make a model ({type(e).__name__}: {' '.join(str(e).split())}); "
                       "it was changed by hand or saved by another version") from None


def restore_weights(model: torch.nn.Module, ck: dict, where: str, required: bool = True) -> torch.nn.Module:
    """Load ``ck``'s weights into ``model`` (strict) and check them against the recorded fingerprint;
    ``required=False`` accepts checkpoints written before they carried one. Returns the model in eval mode."""
    try:
        model.load_state_dict(ck["state_dict"], strict=True)
    except RuntimeError as e:  # missing / unexpected / mis-shaped tensors: the weights are not of this architecture
        raise T2IError(f"{where}: its weights do not fit the model its config describes "
                       f"({' '.join(str(e).split())[:300]}); the file is damaged or was saved by another version") from None
    if required and ck.get("fingerprint") is None:
        raise T2IError(f"{where}: records no weights fingerprint, which every t2i checkpoint carries; it was changed by hand "
                       "or written by another program")
    if (required or "fingerprint" in ck) and weights_fingerprint(model) != ck.get("fingerprint"):
        raise T2IError(f"{where}: weights do not match the fingerprint recorded in the checkpoint; the file is damaged")
    return model.eval()


def resume_checkpoint(last: Path, arch: str, map_location="cpu") -> dict | None:
    """A trainer's ``out/last.pt`` if there is one, refused when it belongs to a run of another arch."""
    if not last.exists():
        return None
    if export_folder_of(last) is not None:  # a weights folder put where the run's last.pt goes
        raise T2IError(f"{last}: a weights folder from 't2i export-weights', which {WEIGHTS_ONLY}")
    ck = load_checkpoint_dict(last, map_location=map_location)
    found = (ck.get("train_config") or {}).get("arch")
    if found != arch:
        raise T2IError(f"{last} is a {found} run; use another out= for {arch}")
    return ck


def check_resumed_config(ck: dict, model, last: Path, what: str, hint: str = "") -> None:
    """Refuse to resume ``last`` when the model it holds was built with other settings than
    ``model`` (``config_dict()``): one ``T2IError`` naming ``what`` and each differing field as
    ``field old -> new``, then ``hint`` (why the fields may differ), then what to do."""
    saved, now = ck.get("config") or {}, model.config_dict()
    if saved != now:
        diff = "; ".join(f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k))
        raise T2IError(f"{last} holds {what} ({diff}{hint}); train on sets that fit it, or start fresh with another out=")


def warn_changed_settings(where: Path, saved: dict, now: dict, keys: tuple[str, ...]) -> list[str]:
    """Log one warning listing the settings among ``keys`` (schedule: steps, lr, warmup...) whose
    value differs between the checkpoint's train_config and this run; returns the changes."""
    changed = [f"{k} {saved[k]!r} → {now[k]!r}" for k in keys if k in saved and k in now and saved[k] != now[k]]
    if changed:
        log.warning("resuming %s with other schedule settings: %s; the schedule (learning rate, steps) follows the new values "
                    "from here on, so the run is no longer the one the checkpoint started", where, "; ".join(changed))
    return changed


def training_state(opt: torch.optim.Optimizer, step: int, epoch: int, in_epoch: int, ds, cfg, lost: int) -> dict:
    """The training state every trainer saves beside its weights: the optimizer, the step, the
    position in the epoch, the stream's state with its plan (``ds.state_dict``: batch size, world
    size, workers, seed, the sets' digests; ``lost`` samples so far this epoch) and the run's config.
    ``restore_training`` reads it back."""
    return dict(optimizer=opt.state_dict(), step=step, epoch=epoch, batch_in_epoch=in_epoch,
                stream=ds.state_dict(in_epoch, cfg.num_workers, lost), train_config=asdict(cfg))


def restore_training(ck: dict, last: Path, ds, cfg, model: torch.nn.Module, opt: torch.optim.Optimizer,
                     schedule: tuple[str, ...]) -> tuple[int, int, int, int]:
    """Put a trainer back where its ``out/last.pt`` (``ck``, from ``resume_checkpoint``) stopped:
    the stream at the exact next batch (``ds.load_state_dict`` stops with a ``T2IError`` naming the
    setting if this run would change the plan mid-epoch; checkpoints older than the stream state
    resume from their epoch and batch), one warning for changed ``schedule`` settings, then the
    weights and the optimizer. Returns (step, epoch, batch in epoch, samples lost so far this epoch)."""
    if "optimizer" not in ck:
        raise T2IError(f"{last} {WEIGHTS_ONLY}")
    state = ck.get("stream") or {"epoch": ck["epoch"], "batches_done": ck["batch_in_epoch"]}
    epoch, in_epoch, lost_before = ds.load_state_dict(state, cfg.num_workers, where=str(last))
    warn_changed_settings(last, ck.get("train_config", {}), asdict(cfg), schedule)
    model.load_state_dict(ck["state_dict"])
    opt.load_state_dict(ck["optimizer"])
    return ck["step"], epoch, in_epoch, lost_before


def save_autoencoder(path: str | Path, model, **state) -> str:
    """Write atomically; ``state`` holds training state (step, optimizer, stream position...)."""
    return save_checkpoint(path, model, AUTOENCODER_FORMAT, **state)


def load_autoencoder(path: str | Path, map_location: str = "cpu"):
    """(model in eval mode, the checkpoint dict) for this project's autoencoder checkpoints and for
    the published image tokenizers ``pretrained`` reads (OpenAI's dVAE ``encoder.pkl`` /
    ``decoder.pkl``, taming VQGAN ``last.ckpt`` + ``model.yaml``, or their state dicts): those give
    a record of the same shape ({format, kind, config, fingerprint, source}), and for a weights
    folder from ``t2i export-weights`` (recognised first: never read as a published tokenizer).
    Refuses any other file with one ``T2IError`` listing what it takes."""
    folder = export_folder_of(path)
    # a weights folder is never a published tokenizer; a folder holding none of its files (nor a
    # last.pt) may be a published file's name given as a folder, which the family reader explains
    bare = folder is not None and not any((folder / n).exists() for n in ("config.json", "model.safetensors", "last.pt"))
    got = load_pretrained(path, map_location) if folder is None or bare else None
    if got is not None:
        return got
    try:
        ck = load_checkpoint_dict(path, map_location=map_location)
    except T2IError as e:
        raise T2IError(f"{e}; --autoencoder takes a t2i autoencoder checkpoint (last.pt, or a folder from 't2i export-weights') "
                       f"or a published tokenizer ({known_layouts()})") from None
    if ck.get("format") != AUTOENCODER_FORMAT or ck.get("kind") not in KINDS:
        raise T2IError(f"{path}: not a t2i autoencoder checkpoint (format {ck.get('format')!r}); --autoencoder also takes "
                       f"a published tokenizer ({known_layouts()})")
    model_cls, cfg_cls = KINDS[ck["kind"]]
    if not isinstance(ck.get("config"), dict):
        raise T2IError(f"{path}: its {ck['kind']} checkpoint has no config record (got {type(ck.get('config')).__name__}); "
                       "it was changed by hand or saved by another version")
    config = dict(ck["config"])
    if "vocab" in config and "vocab_size" not in config:  # saved before the field took the tokenizers' name (issue 16)
        config["vocab_size"] = config.pop("vocab")
        ck = dict(ck, config=config)
    known = {f.name for f in fields(cfg_cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise T2IError(f"{path}: its {ck['kind']} config has field(s) {', '.join(unknown)} that this t2i does not know (known: "
                       f"{', '.join(sorted(known))}); it was saved by another version")
    return restore_weights(build_model(str(path), ck["kind"], lambda: model_cls(cfg_cls(**config))), ck, str(path)), ck


def save_prior(path: str | Path, model, **state) -> str:
    """Write a prior (G1, G2, G3) atomically; ``state`` holds its training state. Returns the fingerprint."""
    return save_checkpoint(path, model, PRIOR_FORMAT, **state)


def load_prior(path: str | Path, map_location: str = "cpu"):
    """(model in eval mode, checkpoint dict); ``torch.load(weights_only=True)``."""
    ck = load_checkpoint_dict(path, map_location=map_location)
    if ck["format"] != PRIOR_FORMAT:
        raise T2IError(f"{path}: not a t2i prior checkpoint (format {ck['format']!r})")
    if "config" in ck:  # the architecture as saved: a builder's later defaults (issue 17's MLP 512 / ReLU) do not change it
        model = build_model(str(path), ck["kind"], lambda: prior_from_config(ck["kind"], ck["config"], str(path)))
    else:
        model = PRIORS[ck["train_config"]["arch"]](**ck["tokens"], **ck["train_config"].get("model", {}))
    return restore_weights(model, ck, str(path), required=False), ck  # prior checkpoints carry a fingerprint since issue 7


def prompt_config(ck: dict) -> TokenizeConfig:
    """How a prior's prompts are tokenized: exactly as its training captions were (the text length L
    from its token spaces, BOS / EOS as its text-token shards had them; off for checkpoints that
    predate ``text_config``)."""
    tc = ck.get("text_config", {})
    return TokenizeConfig(length=ck["tokens"]["text_len"], add_bos=tc.get("add_bos", False), add_eos=tc.get("add_eos", False))


def load_prior_checked(path: str):
    """``load_prior`` for the ``--priors`` argument: a CLIP or any other t2i checkpoint given there
    stops with a message that names the flag and the command that writes priors."""
    ck = load_checkpoint_dict(path, "--priors")
    if ck["format"] == CLIP_FORMAT:
        raise T2IError(f"--priors {path} is a CLIP checkpoint; --priors takes two prior checkpoints ('t2i train prior') and --clip the CLIP")
    if ck["format"] != PRIOR_FORMAT:
        raise T2IError(f"--priors {path}: a {ck['format']} checkpoint, not a prior ('t2i train prior' writes those)")
    return load_prior(path)


def save_clip(path: str | Path, model: CLIP, **state) -> str:
    """Write the evaluation CLIP atomically; ``state`` holds its training state. Returns the fingerprint."""
    return save_checkpoint(path, model, CLIP_FORMAT, **state)


def load_clip(path: str | Path, map_location: str = "cpu"):
    """(CLIP in eval mode, checkpoint dict); refuses prior and autoencoder checkpoints by name."""
    ck = load_checkpoint_dict(path, "--clip")
    if ck["format"] != CLIP_FORMAT:
        raise T2IError(f"--clip {path}: a {ck['format']} checkpoint ({ck.get('kind')}), not a CLIP; train one with 't2i train clip'")
    return restore_weights(build_model(str(path), "clip", lambda: CLIP(CLIPConfig(**ck["config"]))), ck, f"--clip {path}").to(map_location), ck


def save_cvae(path: str | Path, model, **state) -> str:
    """Write a CVAE (``cvae.MLPCVAE`` / ``ConvCVAE``) atomically; ``state`` holds its training state. Returns the fingerprint."""
    return save_checkpoint(path, model, CVAE_FORMAT, **state)


def load_cvae(path: str | Path, map_location: str = "cpu", what: str = ""):
    """(CVAE in eval mode, checkpoint dict), weights-only; ``T2IError`` for another kind of
    checkpoint, or a config with fields this version does not know."""
    from .cvae import MODELS

    ck = load_checkpoint_dict(path, what, map_location=map_location)
    if ck["format"] != CVAE_FORMAT or ck.get("kind") not in MODELS:
        raise T2IError(f"{what + ' ' if what else ''}{path}: a {ck['format']} checkpoint ({ck.get('kind')}), not a CVAE; "
                       f"train one with 't2i train cvae'")
    model_cls, cfg_cls = MODELS[ck["kind"]]
    known = {f.name for f in fields(cfg_cls)}
    unknown = sorted(set(ck["config"]) - known)
    if unknown:
        raise T2IError(f"{path}: its {ck['kind']} config has field(s) {', '.join(unknown)} that this t2i does not know; "
                       f"it was saved by another version")
    return restore_weights(build_model(str(path), ck["kind"], lambda: model_cls(cfg_cls(**ck["config"]))), ck, str(path)).to(map_location), ck


REGRESS_FORMAT = "t2i-regress/1"  # the regression baselines of the Transformer/VAE study (regress.py)


def save_regress(path: str | Path, model, **state) -> str:
    """Write a ``regress.Regressor`` atomically; ``state`` holds its training state and what it was
    trained against (autoencoder fingerprint, text encoder, image set, mode, margin). Returns the fingerprint."""
    return save_checkpoint(path, model, REGRESS_FORMAT, **state)


def load_regress(path: str | Path, map_location: str = "cpu", what: str = ""):
    """(``regress.Regressor`` in eval mode, checkpoint dict), weights-only; ``T2IError`` for another
    kind of checkpoint, or a config with fields this version does not know."""
    from .regress import RegressConfig, Regressor

    ck = load_checkpoint_dict(path, what, map_location=map_location)
    if ck["format"] != REGRESS_FORMAT:
        raise T2IError(f"{what + ' ' if what else ''}{path}: a {ck['format']} checkpoint ({ck.get('kind')}), not a regressor; "
                       f"train one with 't2i train regress'")
    known = {f.name for f in fields(RegressConfig)}
    unknown = sorted(set(ck["config"]) - known)
    if unknown:
        raise T2IError(f"{path}: its regress config has field(s) {', '.join(unknown)} that this t2i does not know; it was saved by another version")
    return restore_weights(build_model(str(path), "regress", lambda: Regressor(RegressConfig(**ck["config"]))), ck, str(path)).to(map_location), ck


def export_weights(ckpt: str | Path, out: str | Path, overwrite: bool = False) -> dict:
    """``t2i export-weights``: the checkpoint file ``ckpt`` of any family here (autoencoder,
    prior, CLIP, CVAE, regressor), loaded by its loader (so its weights are checked against its
    fingerprint first), written as ``out/model.safetensors`` + ``out/config.json``
    (``weights_folder.write_weights_folder``, atomic; the training state left out). Returns the
    config.json record.

    Raises ``T2IError`` (one line) for a missing or unloadable file, a run folder (naming its
    last.pt), a weights folder, a published tokenizer's file (its own files are what others open
    already), a format of no family here, an ``out`` that holds ``ckpt`` or is not empty (without
    ``overwrite``)."""
    from .pretrained import claiming_family

    ckpt = Path(ckpt)
    if ckpt.is_dir() and (ckpt / "last.pt").is_file():
        raise T2IError(f"{ckpt} is a run folder: pass its checkpoint file {ckpt / 'last.pt'}")
    if export_folder_of(ckpt) is not None:
        read_weights_folder(ckpt)  # says what the folder is, if it is not a weights folder
        raise T2IError(f"{ckpt} is already an export of 't2i export-weights'; pass the last.pt it was exported from")
    family = claiming_family(ckpt) if ckpt.is_file() else None
    if family is not None:
        raise T2IError(f"{ckpt}: a published {family.KIND} tokenizer, not a t2i checkpoint; its record has no state dict of this "
                       f"project to export (its published files are what others open): pass a t2i checkpoint (a run's last.pt)")
    loaders = {AUTOENCODER_FORMAT: load_autoencoder, PRIOR_FORMAT: load_prior, CLIP_FORMAT: load_clip, CVAE_FORMAT: load_cvae,
               REGRESS_FORMAT: load_regress}
    fmt = load_checkpoint_dict(ckpt).get("format")
    if fmt not in loaders:
        raise T2IError(f"{ckpt}: a {fmt!r} checkpoint; export-weights takes {', '.join(loaders)}")
    model, ck = loaders[fmt](ckpt)
    if "state_dict" not in ck:
        raise T2IError(f"{ckpt}: a published {ck.get('kind')} tokenizer record without a state dict; pass a t2i checkpoint (a run's last.pt)")
    return write_weights_folder(model, ck, ckpt, out, overwrite)
