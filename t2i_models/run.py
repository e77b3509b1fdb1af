"""``t2i run PIPELINE.toml``: every stage a pipeline file's tables name, in data-flow order, each
skipped when its outputs verify and were made with the same settings from the same inputs.

A stage is a table of the file (``[mdmnist]``, ``[preprocess]``, ``[tokenizer]``, ``[tokenize]``,
``[embed]``, ``[train_autoencoder]``, ``[encode]``, ``[train_prior]``, ``[train_clip]``, ``[eval_autoencoder]``,
``[eval_mdmnist]``, ``[eval_priors]``); ``[preprocess]`` and ``[train_prior]`` may hold named sub-tables
(``[train_prior.g1]``, ``[train_prior.g2]``), one stage each, whose keys go over the parent
table's (``model`` tables merged key by key). Each stage calls the library function its
subcommand calls (``t2i mdmnist build``, ``t2i preprocess``, ``t2i tokenizer``, ``t2i tokenize``,
``t2i train ...``, ``t2i encode``, ``t2i eval ...``), with the config resolved here as the
subcommand resolves it (``stage_config``): dataclass defaults, then the table, then the
``stage.key=value`` overrides.

Dependencies come from the paths: a stage that reads a path at or under (or above) another
stage's ``out`` runs after it and is redone when it is. Every stage leaves ``t2i-run.json`` in its
``out`` folder (``STATE_NAME``): its settings, the identity of the inputs it read (the upstream
stages' output identities) and of what it wrote (shard sets: their manifests' digests, after
``t2i_data.verify`` checks every shard's size and sha256; a tokenizer: its fingerprint; a model:
the checkpoint's weights fingerprint, checked against its tensors, and step; a report: the sha256
of report.json). States in the plan:

* ``done (verified)``: outputs verify, settings and inputs are those recorded; a trained model's
  ``out/last.pt`` is at the step its finished run ended at and holds the same ``train_config``;
* ``partly done``: a model whose checkpoint (same settings, same inputs) is short of its length,
  e.g. an interrupted run or a longer ``steps`` / ``epochs``: training resumes from it;
* ``to run``: anything else (the reason is printed). A model checkpoint trained with other settings
  is moved to ``<out>.replaced`` (one kept) when ``t2i run`` wrote it, and refused otherwise.

A stage planned to run because a stage it reads was due to run is checked again just before it
would run: when its inputs came out as before (e.g. a resumed model with nothing left to train) it
stays done.

Settings that change nothing in the outputs are left out of the comparison (``NOT_IDENTITY``: log
and checkpoint cadence, ``stop_after``, dask ``workers``, the evaluation's ``device``, a trainer's
``tracker``). Paths are taken as written, relative to the current directory, as every subcommand
takes them.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import time
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2i_data.config import construct, parse_overrides
from t2i_data.errors import T2IError

log = logging.getLogger(__name__)

STATE_NAME = "t2i-run.json"
KINDS = ("mdmnist", "preprocess", "tokenizer", "tokenize", "embed", "train_autoencoder", "encode", "train_prior", "train_clip", "train_cvae",
         "train_regress", "eval_autoencoder", "eval_mdmnist", "eval_priors")  # data-flow order
NAMED = ("preprocess", "train_prior", "train_regress", "embed")  # tables that may hold named sub-tables, one stage each
TRAIN_KINDS = ("train_autoencoder", "train_prior", "train_clip", "train_cvae", "train_regress")
SHARD_KINDS = ("mdmnist", "preprocess", "tokenize", "encode", "embed")
RUN_KEYS = {"mdmnist": ("out", "workers"), "preprocess": ("out", "workers"), "tokenize": ("workers",), "encode": ("workers",),
            "embed": ("workers",)}
NOT_IDENTITY = ("log_every", "ckpt_every", "grid_every", "stop_after", "workers", "device", "tracker")
LENGTH = ("steps", "epochs")
INPUTS = {  # the settings that name what a stage reads
    "mdmnist": ("mnist",), "preprocess": ("root", "captions"), "tokenizer": ("images", "pretrained"),
    "tokenize": ("tokenizer", "images"), "embed": ("encoder", "images"), "train_autoencoder": ("images", "eval_images"), "encode": ("autoencoder", "images"),
    "train_prior": ("image_tokens", "text_tokens", "eval_image_tokens", "eval_text_tokens"),
    "train_clip": ("image_tokens", "text_tokens", "autoencoder", "eval_image_tokens", "eval_text_tokens"),
    "train_cvae": ("images", "text_emb", "eval_images", "eval_text_emb"),
    "train_regress": ("text_emb", "image_tokens", "autoencoder", "eval_text_emb", "eval_image_tokens", "pair_images"),
    "eval_autoencoder": ("autoencoder", "images"), "eval_mdmnist": ("priors", "clip", "autoencoder", "image_tokens", "text_tokens"),
    "eval_priors": ("priors", "clip", "autoencoder", "tokenizer", "image_tokens", "text_tokens"),
}


# ---- the stages' settings that had no dataclass before ``t2i run`` -------------------------------------------------

@dataclass(frozen=True)
class TokenizerConfig:
    """``[tokenizer]`` / ``t2i tokenizer train|load``. ``action`` "train" (on ``images``' captions)
    or "load" (local pretrained files ``pretrained``, the ``--from`` flag; nothing for kind mdmnist);
    "" picks load for kind mdmnist or when ``pretrained`` is given, else train."""
    kind: str
    out: str
    action: str = ""
    images: str = ""
    pretrained: str = ""
    vocab_size: int | None = None
    min_frequency: int | None = None
    max_caption_chars: int | None = None  # None: the default of text.CaptionLimits; 0: no cap
    max_word_chars: int | None = None

    def __post_init__(self) -> None:
        action = self.action or ("load" if self.kind == "mdmnist" or self.pretrained else "train")
        object.__setattr__(self, "action", action)
        if action not in ("train", "load"):
            raise T2IError(f"tokenizer action must be train or load, got {action!r}")
        if action == "train" and not self.images:
            raise T2IError("training a tokenizer needs images= (an image shard set whose captions it learns)")
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise T2IError(f"--out {self.out}: a file, not a folder for the tokenizer")


@dataclass(frozen=True)
class TokenizeStage:
    """``[tokenize]`` / ``t2i tokenize``: captions of ``images`` -> text-token shards in ``out``."""
    tokenizer: str
    images: str
    out: str
    length: int
    add_bos: bool = False
    add_eos: bool = False


@dataclass(frozen=True)
class EncodeStage:
    """``[encode]`` / ``t2i encode``: ``images`` -> image-token shards of ``autoencoder`` in ``out``;
    ``check`` samples re-encoded in another batch order and compared (0: skip)."""
    autoencoder: str
    images: str
    out: str
    views: int = 1
    seed: int = 0
    batch_size: int = 64
    check: int = 32


@dataclass(frozen=True)
class EmbedStage:
    """``[embed]`` / ``t2i embed``: captions of ``images`` -> text-embedding shards of the local text
    encoder folder ``encoder`` in ``out`` (``embed.EmbedConfig``: ``pool`` None takes a
    Sentence-BERT folder's own pooling, else mean)."""
    encoder: str
    images: str
    out: str
    pool: str | None = None
    layers: tuple[int, ...] | None = None
    max_length: int = 512
    batch_size: int = 64
    device: str = "cpu"

    def embed_config(self):
        from .embed import EmbedConfig

        return EmbedConfig(pool=self.pool, layers=tuple(self.layers) if self.layers is not None else None,
                           max_length=self.max_length, batch_size=self.batch_size, device=self.device)


@dataclass(frozen=True)
class EvalAutoencoderConfig:
    """``[eval_autoencoder]`` / ``t2i eval autoencoder``: held-out figures of ``autoencoder`` on
    ``images`` (``n`` images, 0: all) and a grid of ``grid`` originals over reconstructions."""
    autoencoder: str
    images: str
    out: str
    n: int = 0
    batch_size: int = 64
    grid: int = 8


def config_class(kind: str):
    """The dataclass a stage kind's table resolves to."""
    if kind == "mdmnist":
        from t2i_data.mdmnist import MDMNISTConfig
        return MDMNISTConfig
    if kind == "preprocess":
        from t2i_data.preprocess import PreprocessConfig
        return PreprocessConfig
    if kind == "train_autoencoder":
        from .train_autoencoder import TrainConfig
        return TrainConfig
    if kind == "train_prior":
        from .train_prior import PriorTrainConfig
        return PriorTrainConfig
    if kind == "train_clip":
        from .train_clip import ClipTrainConfig
        return ClipTrainConfig
    if kind == "train_cvae":
        from .train_cvae import CVAETrainConfig
        return CVAETrainConfig
    if kind == "train_regress":
        from .train_regress import RegressTrainConfig
        return RegressTrainConfig
    if kind == "eval_mdmnist":
        from .eval_mdmnist import EvalConfig
        return EvalConfig
    if kind == "eval_priors":
        from .eval_priors import EvalPriorsConfig
        return EvalPriorsConfig
    return {"tokenizer": TokenizerConfig, "tokenize": TokenizeStage, "encode": EncodeStage, "embed": EmbedStage,
            "eval_autoencoder": EvalAutoencoderConfig}[kind]


# ---- reading the file ------------------------------------------------------------------------------------------------

def read_pipeline(path: str | Path, what: str = "") -> dict:
    """The TOML pipeline file at ``path``; ``what`` names it in errors (e.g. "--config")."""
    where = f"{what} {path}" if what else str(path)
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, IsADirectoryError):
        raise T2IError(f"{where}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise T2IError(f"{where}: not valid TOML ({e})") from None


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def sub_tables(kind: str, values: dict) -> dict[str, dict]:
    """The named sub-tables of a ``[preprocess]`` / ``[train_prior]`` table (dict values that are not
    a setting, such as ``model``)."""
    if kind not in NAMED:
        return {}
    fields = {f.name for f in dataclasses.fields(config_class(kind))}
    return {k: v for k, v in values.items() if isinstance(v, dict) and k not in fields}


def stage_tables(data: dict, where: str = "") -> dict[str, tuple[str, dict]]:
    """{stage name: (kind, merged table)} in data-flow order; ``T2IError`` for a table that is no stage."""
    unknown = sorted(set(data) - set(KINDS))
    if unknown:
        raise T2IError(f"{where}: [{'], ['.join(unknown)}] is no stage; the stages are {', '.join(KINDS)}")
    out: dict[str, tuple[str, dict]] = {}
    for kind in KINDS:
        if kind not in data:
            continue
        values = data[kind]
        subs = sub_tables(kind, values)
        base = {k: v for k, v in values.items() if k not in subs}
        if subs:
            for name, sub in subs.items():
                out[f"{kind}.{name}"] = (kind, _merge(base, sub))
        else:
            out[kind] = (kind, base)
    return out


def table_values(path: str | Path, kind: str, name: str | None = None) -> dict:
    """A subcommand's ``--config``: the ``[kind]`` table, or its ``[kind.name]`` sub-table over it.
    ``T2IError`` when the table is missing, or holds sub-tables and ``name`` picks none of them."""
    data = read_pipeline(path, "--config")
    if kind not in data:
        raise T2IError(f"--config {path}: no [{kind}] table in it")
    subs = sub_tables(kind, data[kind])
    base = {k: v for k, v in data[kind].items() if k not in subs}
    if name is None and not subs:
        return base
    if name not in subs:
        listed = ", ".join(subs) if subs else "none"
        raise T2IError(f"--config {path}: [{kind}] holds the sub-tables {listed}; pick one with --table NAME"
                       if name is None else f"--config {path}: no [{kind}.{name}] table (sub-tables: {listed})")
    return _merge(base, subs[name])


def resolve_values(kind: str, values: dict, flag=lambda name: name, where: str = ""):
    """(the stage's config dataclass, its run-only settings such as ``out`` and ``workers``) from the
    merged table ``values``; one ``T2IError`` naming every unknown setting. The trainers'
    ``model`` table stays one dict setting (``model.<field>`` of the architecture)."""
    cls = config_class(kind)
    values = dict(values)
    extra = {k: values.pop(k) for k in RUN_KEYS.get(kind, ()) if k in values}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise T2IError(f"{where}unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known | set(RUN_KEYS.get(kind, ()))))}"
                       + (" and model.<field>" if "model" in known else ""))
    if kind in TRAIN_KINDS:
        out = values.get("out")
        if isinstance(out, str) and out and Path(out).exists() and not Path(out).is_dir():
            raise T2IError(f"{where}out={out}: a file, not a folder for checkpoints")
    cfg = construct(cls, values, kind, flag=flag)
    if kind in TRAIN_KINDS and cfg.model:
        check_model_settings(kind, cfg.arch, cfg.model, where)
    return cfg, extra


def check_model_settings(kind: str, arch: str, model: dict, where: str = "") -> None:
    """The ``model.<field>`` settings of a training stage, checked when the plan is made (before
    ``t2i run`` moves any stale checkpoint aside): every name a field of the architecture's config,
    every value of its field's type; an autoencoder's whole config is built (its range checks run).
    ``T2IError`` naming the stage, the setting and the known fields."""
    from t2i_data.config import check_types

    from .builders import CONFIGS, config_with
    from .clip import CLIPConfig
    from .prior_builders import KINDS as PRIOR_KINDS

    if kind == "train_regress":
        from .regress import CONFIGS as REGRESS_CONFIGS

        fields = {"hidden", "layers", "head_dim"}  # in_dim and out_dim come from the sets
        unknown = sorted(set(model) - fields)
        if unknown:
            raise T2IError(f"{where}{', '.join('model.' + k for k in unknown)}: not a setting of {arch}; known: {', '.join(sorted(fields))}")
        check_types(type(REGRESS_CONFIGS[arch]), model, lambda name: f"model.{name}")
        return
    if kind == "train_cvae":
        from .cvae import CONFIGS as CVAE_CONFIGS

        base = CVAE_CONFIGS[arch]
        try:
            config_with(type(base), dataclasses.asdict(base), model, arch)
        except T2IError as e:
            raise T2IError(f"{where}{e}") from None
        return
    if kind == "train_autoencoder":
        base = CONFIGS[arch]
        try:
            config_with(type(base), dataclasses.asdict(base), model, arch)
        except T2IError as e:
            raise T2IError(f"{where}{e}") from None
        return
    cls = CLIPConfig if kind == "train_clip" else PRIOR_KINDS[arch.split("_")[0]][1]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(model) - fields)
    if unknown:
        raise T2IError(f"{where}{', '.join('model.' + k for k in unknown)}: not a setting of {arch}; known: {', '.join(sorted(fields))}")
    try:
        check_types(cls, model, lambda name: f"model.{name}")
    except T2IError as e:
        raise T2IError(f"{where}{e}") from None


def apply_overrides(values: dict, items: dict) -> dict:
    """``items`` from ``config.parse_overrides`` (``model`` merged key by key) over ``values``."""
    values = copy.deepcopy(values)
    items = dict(items)
    if "model" in items:
        values["model"] = {**values.get("model", {}), **items.pop("model")}
    values.update(items)
    return values


def split_overrides(items: list[str], names: list[str]) -> dict[str, list[str]]:
    """``stage.key=value`` -> {stage: ["key=value"]}. The longest stage name that prefixes the key
    wins (``train_prior.g1.model.layers=4``); a kind with named stages (``train_prior.lr=...``)
    sets it in each of them."""
    out: dict[str, list[str]] = {n: [] for n in names}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise T2IError(f"override {item!r} is not stage.key=value")
        match = max((n for n in names if key.startswith(n + ".")), key=len, default=None)
        if match is not None:
            out[match].append(f"{key[len(match) + 1:]}={value}")
            continue
        group = [n for n in names if "." in n and key.startswith(n.split(".")[0] + ".")]
        sub = key.split(".")[1] if key.count(".") >= 2 else None
        if group and sub is not None and sub not in {f.name for f in dataclasses.fields(config_class(group[0].split(".")[0]))} \
                and sub not in RUN_KEYS.get(group[0].split(".")[0], ()):
            raise T2IError(f"override {item!r}: no stage {key.split('.')[0]}.{sub} in this pipeline (stages: {', '.join(names)})")
        if group:
            for n in group:
                out[n].append(f"{key[len(n.split('.')[0]) + 1:]}={value}")
            continue
        stage = key.split(".")[0]
        raise T2IError(f"override {item!r}: no stage {stage!r} in this pipeline (stages: {', '.join(names)}); "
                       "write stage.key=value, e.g. train_autoencoder.lr=0.01")
    return out


# ---- the plan ----------------------------------------------------------------------------------------------------------

@dataclass
class Stage:
    name: str
    kind: str
    cfg: Any
    extra: dict
    out: str
    inputs: list[str]
    deps: list[str] = field(default_factory=list)
    state: str = "to run"  # "done (verified)", "partly done", "to run"
    reason: str = ""
    identity: Any = None  # the outputs' identity, when they verify
    replace: bool = False  # move the stale out folder aside before running
    blocked: str = ""  # why the stage cannot run as things are (a checkpoint t2i run did not write)

    @property
    def config(self) -> dict:
        """The settings as recorded and compared: JSON values, without the ones that change no output."""
        d = json.loads(json.dumps(dataclasses.asdict(self.cfg) | {k: v for k, v in self.extra.items()}, sort_keys=True, default=list))
        return {k: v for k, v in d.items() if k not in NOT_IDENTITY}


def stage_config(path: str | Path, name: str, overrides: list[str] = ()):
    """The config dataclass stage ``name`` of the pipeline file runs with (``t2i run``'s resolution):
    defaults, the table (a sub-table over its parent), then the ``stage.key=value`` overrides."""
    stages = load_stages(path, list(overrides))
    for s in stages:
        if s.name == name:
            return s.cfg
    raise T2IError(f"{path}: no stage {name} (stages: {', '.join(s.name for s in stages)})")


def load_stages(path: str | Path, overrides: list[str]) -> list[Stage]:
    tables = stage_tables(read_pipeline(path), str(path))
    if not tables:
        raise T2IError(f"{path}: no stage tables in it (stages: {', '.join(KINDS)})")
    per_stage = split_overrides(overrides, list(tables))
    stages = []
    for name, (kind, values) in tables.items():
        values = apply_overrides(values, parse_overrides(per_stage[name]))
        cfg, extra = resolve_values(kind, values, flag=lambda n, s=name: f"{s}.{n}", where=f"[{name}]: ")
        out = extra.get("out") if kind in ("mdmnist", "preprocess") else cfg.out
        if not out:
            raise T2IError(f"[{name}]: out needed (the folder the stage writes), e.g. {name}.out=DIR")
        ins = []
        for key in INPUTS[kind]:
            v = getattr(cfg, key, "")
            ins += [str(p) for p in v] if isinstance(v, (list, tuple)) else ([str(v)] if v else [])
        stages.append(Stage(name, kind, cfg, extra, str(out), ins))
    seen: dict[str, str] = {}
    for st in stages:  # two stages writing one folder would each move the other's outputs aside on every run
        key = os.path.normpath(st.out)
        if key in seen:
            raise T2IError(f"[{st.name}]: out={st.out} is also the out of [{seen[key]}]; give each stage its own folder")
        seen[key] = st.name
    for i, s in enumerate(stages):
        s.deps = [u.name for u in stages[:i] if any(_related(p, u.out) for p in s.inputs)]
    return stages


def _related(a: str, b: str) -> bool:
    """Path ``a`` is ``b``, inside it, or holds it."""
    pa, pb = Path(os.path.abspath(a)), Path(os.path.abspath(b))
    return pa == pb or pb in pa.parents or pa in pb.parents


def _read_state(out: str) -> dict | None:
    try:
        return json.loads((Path(out) / STATE_NAME).read_text())
    except (OSError, ValueError):
        return None


def _write_state(out: str, state: dict) -> None:
    p = Path(out) / STATE_NAME
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".partial")
    tmp.write_text(json.dumps(state, sort_keys=True, indent=1) + "\n")
    os.replace(tmp, p)


def _shard_identity(out: str):
    """{manifest path relative to out: digest} when every shard of every manifest under ``out``
    checks (size and sha256), else a str saying what does not."""
    from t2i_data.manifest import load_manifest
    from t2i_data.verify import verify_path

    if not Path(out).is_dir():
        return "no outputs"
    try:
        found = verify_path(out)
    except T2IError as e:
        return f"outputs do not verify ({e})"
    ident = {}
    for mpath, _, checks in found:
        bad = [c for c in checks if c.status != "ok"]
        if bad:
            return f"{len(bad)} shard(s) of {mpath} do not verify ({bad[0].name}: {bad[0].status})"
        ident[str(mpath.relative_to(out))] = load_manifest(mpath)["digest"]
    return ident


def _state_fingerprint(state_dict: dict) -> str:
    """checkpoint.weights_fingerprint over a saved state dict, without building the model."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(state_dict.items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _checkpoint(out: str):
    """(checkpoint dict without tensors, or None, or a str saying why it does not verify)."""
    from .checkpoint import load_checkpoint_dict

    last = Path(out) / "last.pt"
    if not last.exists():
        return None
    try:
        ck = load_checkpoint_dict(last)
    except T2IError as e:
        return str(e)
    if "fingerprint" in ck and _state_fingerprint(ck["state_dict"]) != ck["fingerprint"]:
        return f"{last}: weights do not match its recorded fingerprint"
    return {k: ck.get(k) for k in ("step", "epoch", "fingerprint", "train_config")}


def _output_identity(s: Stage):
    """The identity of a finished stage's outputs (a dict), or a str saying why they do not verify."""
    if s.kind in SHARD_KINDS:
        return _shard_identity(s.out)
    if s.kind == "tokenizer":
        from t2i_data.text import load_tokenizer

        if not Path(s.out).is_dir():
            return "no outputs"
        try:
            return {"fingerprint": load_tokenizer(s.out).fingerprint}
        except (T2IError, OSError, ValueError, KeyError) as e:
            return f"the tokenizer does not load ({e})"
    if s.kind in TRAIN_KINDS:
        ck = _checkpoint(s.out)
        return "no checkpoint" if ck is None else ck if isinstance(ck, str) else {"fingerprint": ck["fingerprint"], "step": ck["step"]}
    report = Path(s.out) / "report.json"
    return {"report_sha256": hashlib.sha256(report.read_bytes()).hexdigest()} if report.is_file() else "no report.json"


def _diff(old: dict, new: dict, skip=()) -> list[str]:
    keys = sorted((set(old) | set(new)) - set(skip))
    return [f"{k} {json.dumps(old.get(k))} → {json.dumps(new.get(k))}" for k in keys if old.get(k) != new.get(k)]


def assess(stages: list[Stage]) -> None:
    """Set each stage's state, reason and identity, in order (a stage after one that runs runs too)."""
    by = {s.name: s for s in stages}
    for s in stages:
        assess_one(s, by)


def assess_one(s: Stage, by: dict[str, Stage]) -> None:
    """Set ``s``'s state from its outputs, its record and the states of the stages it reads (``by``)."""
    s.state, s.reason, s.identity, s.replace, s.blocked = "to run", "", None, False, ""
    waiting = [d for d in s.deps if by[d].state != "done (verified)"]
    rec = _read_state(s.out)
    inputs = {d: by[d].identity for d in s.deps}
    if s.kind in TRAIN_KINDS:
        _assess_model(s, rec, inputs, waiting)
        return
    if waiting:
        s.reason = f"after {', '.join(waiting)}"
        return
    ident = _output_identity(s)
    if isinstance(ident, str):
        s.reason = ident
    elif rec is None or rec.get("status") != "done":
        s.reason = "no finished run recorded" if rec is None else "its last run did not finish"
    elif rec.get("output") != ident:
        s.reason = "outputs differ from those its run recorded"
    elif rec.get("config") != s.config:
        s.reason = "settings changed: " + "; ".join(_diff(rec.get("config", {}), s.config))
    elif rec.get("inputs") != inputs:
        s.reason = "inputs changed: " + ", ".join(k for k in sorted(set(inputs) | set(rec.get("inputs", {})))
                                                   if inputs.get(k) != rec.get("inputs", {}).get(k))
    else:
        s.state, s.identity = "done (verified)", ident


def _assess_model(s: Stage, rec: dict | None, inputs: dict, waiting: list[str]) -> None:
    ck = _checkpoint(s.out)
    ours = rec is not None
    if isinstance(ck, str):
        s.reason, s.replace = ck, ours
        return
    if ck is None:
        s.reason = "after " + ", ".join(waiting) if waiting else "no checkpoint"
        return
    saved = json.loads(json.dumps(ck["train_config"] or {}, sort_keys=True, default=list))
    saved = {k: v for k, v in saved.items() if k not in NOT_IDENTITY}
    changed = _diff(saved, s.config, skip=LENGTH)
    if waiting or changed or (ours and rec.get("inputs") != inputs):
        why = (f"after {', '.join(waiting)}" if waiting else "settings changed: " + "; ".join(changed) if changed else "inputs changed")
        s.reason, s.replace = why, True
        if not ours:
            s.blocked = (f"{s.out}/last.pt was not written by t2i run and does not fit this pipeline ({why}); "
                         f"move it away or give the stage another out ({s.name}.out=DIR)")
        return
    length = _diff(saved, s.config, skip=[k for k in saved if k not in LENGTH])
    steps, epochs = s.config.get("steps", 0), s.config.get("epochs", 0)
    finished = ours and rec.get("status") == "done" and (rec.get("output") or {}).get("step") == ck["step"]
    if not length and (finished or (steps > 0 and ck["step"] >= steps)):
        s.state, s.identity = "done (verified)", {"fingerprint": ck["fingerprint"], "step": ck["step"]}
        return
    longer = (steps > 0 and steps > ck["step"]) or (steps == 0 and epochs > (saved.get("epochs") or 0)) if length else True
    if not longer:
        s.reason, s.replace = "length changed: " + "; ".join(length), True
        if not ours:
            s.blocked = (f"{s.out}/last.pt is past the new length ({'; '.join(length)}) and was not written by t2i run; "
                         f"move it away or give the stage another out ({s.name}.out=DIR)")
        return
    s.state = "partly done"
    s.reason = f"checkpoint at step {ck['step']}" + (f"; length changed: {'; '.join(length)}" if length else "") + ", resumes"


def print_plan(stages: list[Stage], chosen: set[str], path: str, file=None) -> None:
    file = file or sys.stdout
    print(f"plan for {path} ({len(stages)} stages; {STATE_NAME} in each out folder records its run):", file=file)
    w = max(len(s.name) for s in stages)
    for i, s in enumerate(stages, 1):
        state = s.state + (f" ({s.reason})" if s.reason else "")
        mark = "" if s.name in chosen else "  [not selected]"
        print(f"  {i:2d}. {s.name:<{w}}  {state}  -> {s.out}{mark}", file=file)
        if s.blocked:
            print(f"      refused: {s.blocked}", file=file)


# ---- running -----------------------------------------------------------------------------------------------------------

def select(stages: list[Stage], until: str | None, only: str | None) -> set[str]:
    """The stage names ``--until`` / ``--only`` choose (a kind such as ``train_prior`` names all of its stages)."""
    names = [s.name for s in stages]

    def match(word: str, flag: str) -> list[str]:
        found = [n for n in names if n == word or n.split(".")[0] == word]
        if not found:
            raise T2IError(f"{flag} {word}: no such stage in this pipeline (stages: {', '.join(names)})")
        return found

    chosen = set(names)
    if until:
        last = max(names.index(n) for n in match(until, "--until"))
        chosen = set(names[: last + 1])
    if only:
        picked = {n for w in only.split(",") if w.strip() for n in match(w.strip(), "--only")}
        chosen &= picked
    return chosen


class StageRunners:
    """The runners of one ``t2i run``: one per ``workers`` setting, made when a shard stage first
    needs it and kept for the next shard stages, so a local cluster starts at most once per
    command rather than once per stage. ``close`` ends them; ``run_pipeline`` calls it before a
    stage that is not a shard stage (a trainer's loader processes fork this process) and at the end."""

    def __init__(self) -> None:
        self._by: dict = {}

    def get(self, workers: int | None):
        from t2i_data.runner import make_runner

        if workers not in self._by:
            self._by[workers] = make_runner(workers, None)
        return self._by[workers]

    def close(self, summary: bool = True) -> None:
        """``summary``: each runner's line on where its tasks ran (false after a failure)."""
        for r in self._by.values():
            r.close(summary)
        self._by.clear()


def execute(s: Stage, runners: StageRunners) -> str:
    """Run one stage through its library function; returns a one-line summary. Shard stages take
    their runner from ``runners``, which the caller closes."""
    cfg, k = s.cfg, s.kind
    if k in SHARD_KINDS:
        runner = runners.get(s.extra.get("workers"))
        if k == "mdmnist":
            from t2i_data.mdmnist import build

            ms = build(cfg, s.out, runner)
        elif k == "preprocess":
            from t2i_data.preprocess import load_records, preprocess

            ms = preprocess(cfg, s.out, runner, load_records(cfg))
        elif k == "tokenize":
            from t2i_data.tokenize import TokenizeConfig, tokenize

            ms = tokenize(cfg.tokenizer, cfg.images, s.out, TokenizeConfig(cfg.length, cfg.add_bos, cfg.add_eos), runner)
        elif k == "embed":
            from .embed import embed

            ms = embed(cfg.encoder, cfg.images, s.out, cfg.embed_config(), runner)
        else:
            from .encode import EncodeConfig, check_reencode, encode

            ms = encode(cfg.autoencoder, cfg.images, s.out, EncodeConfig(cfg.views, cfg.seed, cfg.batch_size), runner)
            if cfg.check:
                for m in ms.values():
                    check_reencode(cfg.autoencoder, m["_images"], m["_out"], n=cfg.check)
        return ", ".join(f"{split} {m['totals']['shards']} shards" for split, m in ms.items())
    if k == "tokenizer":
        tok, fp, _ = make_tokenizer(cfg)
        return f"{tok.kind} tokenizer, {tok.vocab_size} ids, fingerprint {fp[:16]}"
    if k == "train_autoencoder":
        from .train_autoencoder import train

        r = train(cfg)
    elif k == "train_prior":
        from .train_prior import train_prior

        r = train_prior(cfg)
    elif k == "train_clip":
        from .train_clip import train_clip

        r = train_clip(cfg)
    elif k == "train_cvae":
        from .train_cvae import train_cvae

        r = train_cvae(cfg)
    elif k == "train_regress":
        from .train_regress import train_regress

        r = train_regress(cfg)
    elif k == "eval_autoencoder":
        from .eval_autoencoder import evaluate_autoencoder

        r = evaluate_autoencoder(cfg.autoencoder, cfg.images, cfg.out, n=cfg.n, batch_size=cfg.batch_size, grid=cfg.grid)
        return "; ".join(f"{key} {r[key]:.4g}" for key in ("mse", "psnr", "bce", "codes_used", "perplexity") if key in r)
    elif k == "eval_priors":
        from .eval_priors import evaluate_priors

        r = evaluate_priors(cfg)
        c = r["cics"]
        return f"CICS A {c['a_wins']} / B {c['b_wins']} / ties {c['ties']} (p = {c['p_value']:.3g})"
    else:
        from .eval_mdmnist import evaluate

        r = evaluate(cfg)
        acc = r["clip"]["test"]
        return f"CLIP picks the true description for {acc['accuracy']:.1%} (chance {acc['chance']:.1%})"
    return f"step {r['step']} -> {r['checkpoint']}"


def make_tokenizer(cfg: TokenizerConfig):
    """``t2i tokenizer train|load``: (tokenizer, fingerprint, lines to print); the tokenizer is saved in ``cfg.out``."""
    from t2i_data import text

    lines = []
    if cfg.action == "train":
        captions, origin = text.training_captions(cfg.images)  # checked: a caption that is not a str stops here
        caps = {}
        for name in ("max_caption_chars", "max_word_chars"):
            value = getattr(cfg, name)
            if value is not None:
                caps[name] = value or None
        limits = text.CaptionLimits(**caps)  # the defaults live there, with why
        tok = text.train(cfg.kind, captions, cfg.vocab_size, cfg.min_frequency, limits)
        tok.source = dict(tok.source, trained_on=origin)
        cut = tok.source.get("cut", {"captions_truncated": 0, "words_truncated": 0})
        over = lambda n: f"over {n:,} characters" if n else "(no cap)"  # noqa: E731
        lines.append(f"{origin['captions']:,} training captions; cut before training: {cut['captions_truncated']:,} captions "
                     f"{over(limits.max_caption_chars)}, {cut['words_truncated']:,} words {over(limits.max_word_chars)}")
    else:
        tok = text.load_pretrained(cfg.kind, cfg.pretrained or None)
    fp = tok.save(cfg.out)
    return tok, fp, lines


def _replace(out: str) -> str:
    old = Path(out + ".replaced")
    if old.exists():
        shutil.rmtree(old)
    os.replace(out, old)
    return str(old)


def run_pipeline(path: str, overrides: list[str], until: str | None = None, only: str | None = None,
                 dry_run: bool = False, file=None) -> list[Stage]:
    """``t2i run``: print the plan, then run the chosen stages that are not done, in order. Each
    stage's failure stops the run with one ``T2IError`` naming it; stages finished before stay done."""
    file = file or sys.stdout
    stages = load_stages(path, overrides)
    chosen = select(stages, until, only)
    assess(stages)
    print_plan(stages, chosen, path, file)
    if dry_run:
        return stages
    by = {s.name: s for s in stages}
    for s in stages:  # --only: what the chosen stages read must be there, or be chosen too
        if s.name in chosen:
            missing = [d for d in s.deps if d not in chosen and by[d].state != "done (verified)"]
            if missing:
                raise T2IError(f"stage {s.name} reads the outputs of {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                               f"not done; run {'it' if len(missing) == 1 else 'them'} too (drop --only, or add {','.join(missing)})")
    todo = [s for s in stages if s.name in chosen and s.state != "done (verified)"]
    if not todo:
        print("nothing to run: every chosen stage is done", file=file)
        return stages
    t_all, ran = time.perf_counter(), set()
    runners = StageRunners()
    try:
        _run_stages(stages, todo, by, path, runners, ran, file)
    except BaseException:
        runners.close(summary=False)  # the failure's one line is the last word
        raise
    runners.close()
    print(f"ran {len(ran)} stage(s) in {time.perf_counter() - t_all:.1f} s", file=file)
    return stages


def _run_stages(stages: list[Stage], todo: list[Stage], by: dict, path: str, runners: StageRunners, ran: set, file) -> None:
    for i, s in enumerate(stages):
        if s not in todo:
            continue
        unfinished = [d for d in s.deps if by[d].state != "done (verified)"]
        if unfinished:
            raise T2IError(f"stage {s.name}: {', '.join(unfinished)} did not finish")
        if any(by[d] in todo for d in s.deps):  # what it reads was due to run: it may have come out as before
            assess_one(s, by)
            if s.state == "done (verified)":
                print(f"[{todo.index(s) + 1}/{len(todo)}] {s.name}: done (verified): its inputs came out as before", file=file)
                continue
        if s.blocked:
            raise T2IError(f"stage {s.name}: {s.blocked}")
        if s.state == "to run" and s.replace and Path(s.out).exists():
            print(f"{s.name}: outputs made with other settings moved to {_replace(s.out)}", file=file)
        inputs = {d: by[d].identity for d in s.deps}
        _write_state(s.out, {"stage": s.name, "status": "running", "config": s.config, "inputs": inputs})
        print(f"[{todo.index(s) + 1}/{len(todo)}] {s.name}: {'resuming' if s.state == 'partly done' else 'running'}", file=file, flush=True)
        t0 = time.perf_counter()
        if s.kind not in SHARD_KINDS and s.kind != "tokenizer":
            runners.close()  # a trainer's DataLoader forks this process: no cluster threads in it
        try:
            summary = execute(s, runners)
        except T2IError as e:
            msg = " ".join(str(e).split())
            raise T2IError(f"stage {s.name} failed: {msg}. Fix it (in {path} or with {s.name}.key=value) and rerun the same "
                           f"t2i run: stages already done are skipped") from None
        except BaseException:
            print(f"stage {s.name} stopped after {time.perf_counter() - t0:.1f} s; rerun the same t2i run to continue from it",
                  file=sys.stderr)
            raise
        ident = _output_identity(s)
        if isinstance(ident, str):
            raise T2IError(f"stage {s.name} ran but its outputs do not verify: {ident}")
        if s.kind in TRAIN_KINDS and getattr(s.cfg, "stop_after", 0) and ident["step"] < (s.config.get("steps") or 0):
            s.state, s.identity = "partly done", ident  # stop_after: a deliberate partial run
            _write_state(s.out, {"stage": s.name, "status": "running", "config": s.config, "inputs": inputs})
            print(f"[{todo.index(s) + 1}/{len(todo)}] {s.name}: stopped at step {ident['step']} (stop_after) "
                  f"after {time.perf_counter() - t0:.1f} s", file=file, flush=True)
            break
        s.state, s.identity, s.reason = "done (verified)", ident, ""
        ran.add(s.name)
        _write_state(s.out, {"stage": s.name, "status": "done", "config": s.config, "inputs": inputs, "output": ident,
                             "seconds": round(time.perf_counter() - t0, 1)})
        print(f"[{todo.index(s) + 1}/{len(todo)}] {s.name}: done in {time.perf_counter() - t0:.1f} s: {summary}", file=file, flush=True)
