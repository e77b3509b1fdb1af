"""Pipeline configs: a TOML file's table, then command-line flags, over the dataclass defaults.

The dataclass (e.g. ``MDMNISTConfig``) is the one place each default lives; a file in
``pipelines/`` names only what it changes, and a flag given on the command line wins over both.
"""
from __future__ import annotations

import dataclasses
import json
import math
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, released as tomli before 3.11 took it in
    import tomli as tomllib
import typing
from pathlib import Path

from .errors import T2IError


def table(path: str | Path, section: str) -> dict:
    """The ``[section]`` table of a TOML pipeline file."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise T2IError(f"--config {path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise T2IError(f"--config {path}: not valid TOML ({e})") from None
    if section not in data:
        raise T2IError(f"--config {path}: no [{section}] table in it")
    return data[section]


def resolve(cls, path: str | Path | None, section: str, flags: dict):
    """Build ``cls`` from ``[section]`` of the TOML file at ``path`` and the flags that were given
    (``None`` means not given)."""
    values: dict = {}
    if path is not None:
        values = dict(table(path, section))
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise T2IError(f"--config {path}: unknown key(s) {', '.join(unknown)} in [{section}]; known: {', '.join(sorted(fields))}")
    values.update({k: v for k, v in flags.items() if v is not None})
    return construct(cls, values, section)


def construct(cls, values: dict, section: str | None = None, flag=lambda name: f"--{name.replace('_', '-')}"):
    """``cls(**values)``, after checking what a config file or ``key=value`` can get wrong: one
    ``T2IError`` naming every field that has no default and no value (``flag(name)`` says how
    the user gives it), then each value against its field's type (an ``int`` field takes an int
    of at least 0, never a bool; a ``float`` field a finite number; a ``str`` field a string;
    ``list[int]`` a list of whole numbers of at least 0; ``X | None`` also None). The dataclass's own ``__post_init__`` checks then run; a
    ``ValueError`` or ``TypeError`` from them is wrong use too, reported the same way."""
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise T2IError(" and ".join(flag(m) for m in missing) + " needed"
                       + (f" (or '{missing[0]}' in the [{section}] table of --config)" if section else "")
                       + f": {cls.__name__} has no default for {', '.join(missing)}")
    check_types(cls, values, flag)
    try:
        return cls(**values)
    except (ValueError, TypeError) as e:
        if isinstance(e, T2IError):
            raise
        raise T2IError(f"{cls.__name__}: {e}") from None


def check_types(cls, values: dict, flag) -> None:
    """``T2IError`` for the first value that does not fit its field's annotation in dataclass
    ``cls`` (see ``type_problem``), naming it as ``flag(name)``."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        problem = type_problem(hints.get(name), value)
        if problem:
            raise T2IError(f"{flag(name)}: {problem}, got {value!r}")


def type_problem(hint, value) -> str | None:
    """Why ``value`` does not fit the annotation ``hint``, or None (unknown annotations pass)."""
    args = typing.get_args(hint)
    if value is None:
        return None if type(None) in args else "a value is needed"
    if args and type(None) in args:  # X | None
        hint = next(a for a in args if a is not type(None))
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return "needs a whole number"
        return "needs a number of at least 0" if value < 0 else None
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return "needs a finite number"
        return None
    if hint is str and not isinstance(value, str):
        return "needs text"
    if hint is bool and not isinstance(value, bool):
        return "needs true or false"
    if typing.get_origin(hint) is tuple and not isinstance(value, (list, tuple)):
        # tuple[str, ...] settings (splits, layers): a bare string would be read as its characters;
        # their items are the config's own to check (layers may be negative)
        return "needs a list, e.g. [5, 10]"
    if typing.get_origin(hint) is list:
        if not isinstance(value, (list, tuple)):
            return "needs a list, e.g. [5, 10]"
        if typing.get_args(hint) == (int,) and any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value):
            return "needs a list of whole numbers of at least 0, e.g. [5, 10]"
        item = typing.get_args(hint)[0] if typing.get_args(hint) else None
        for v in value:
            problem = type_problem(item, v)
            if problem:
                return f"needs a list of items that fit {getattr(item, '__name__', item)} (item {v!r} {problem})"
    return None


def parse_overrides(items: list[str]) -> dict:
    """``key=value`` pairs -> a dict; ``model.X=v`` go into the model overrides. Values are read as
    JSON when they parse (numbers, true/false), else as strings. ``T2IError`` for an item with no ``=``."""
    out: dict = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise T2IError(f"override {item!r} is not key=value")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        if key.startswith("model."):
            out.setdefault("model", {})[key[len("model."):]] = parsed
        else:
            out[key] = parsed
    return out


def train_config(cls, path: str | Path | None, section: str, overrides: list[str]):
    """``cls`` (a trainer's config dataclass) from the ``[section]`` table of the pipeline file at
    ``path``, then the ``key=value`` overrides (``model.<field>`` merged into the table's ``model``);
    one ``T2IError`` naming every unknown setting, or an ``out`` that is a file."""
    values = dict(table(path, section)) if path else {}
    over = parse_overrides(overrides)
    values["model"] = {**values.get("model", {}), **over.pop("model", {})}
    values.update(over)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise T2IError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))} and model.<field>")
    out = values.get("out")
    if isinstance(out, str) and out and Path(out).exists() and not Path(out).is_dir():
        raise T2IError(f"out={out}: a file, not a folder for checkpoints")
    return construct(cls, values, section, flag=lambda name: name)
