"""Pipeline configs: a TOML file's table, then command-line flags, over the dataclass defaults.

The dataclass (e.g. ``MDMNISTConfig``) is the one place each default lives; a file in
``pipelines/`` names only what it changes, and a flag given on the command line wins over both.
"""
from __future__ import annotations

import dataclasses
import tomllib
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
    """``cls(**values)``, after one ``T2IError`` naming every field that has no default and no
    value (``flag(name)`` says how the user gives it)."""
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise T2IError(" and ".join(flag(m) for m in missing) + " needed"
                       + (f" (or '{missing[0]}' in the [{section}] table of --config)" if section else "")
                       + f": {cls.__name__} has no default for {', '.join(missing)}")
    return cls(**values)
