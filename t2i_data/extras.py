"""Optional dependencies: which extra installs each, and the one message when one is missing.

The core install builds, verifies, tokenizes and encodes shard sets. Two families of commands
need more, and pulling them into every install would cost far more than they are used:
``transformers`` (the ``bert`` / Hugging Face folder tokenizers and the G3 prior) comes with
``pip install 't2i-data[hf]'``; ``datasets`` (``t2i export``'s feature metadata,
``schema.features``) and ``webdataset`` (only named in cards and tests) with
``pip install 't2i-data[interop]'``; ``tensorboard`` (a trainer's ``tracker = "tensorboard"``)
with ``pip install 't2i-data[tracking]'`` and ``wandb`` (``tracker = "wandb"``) with
``pip install 't2i-data[wandb]'``; fsspec and aiohttp (shard sets by ``http(s)://`` URL,
``t2i_data/remote.py``, which names the package for each protocol itself) with
``pip install 't2i-data[remote]'``; dask-jobqueue (the README's SLURM recipe) with
``pip install 't2i-data[cluster]'``. ``pip install 't2i-data[test]'`` installs all but wandb, so
every test runs (the wandb path is tested against a stand-in module). An import site calls
``require`` instead of letting a bare ``ModuleNotFoundError`` through.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import T2IError

EXTRAS = {  # top-level module -> the extra of pyproject.toml that installs it
    "transformers": "hf",
    "datasets": "interop",
    "webdataset": "interop",
    "tensorboard": "tracking",  # trainers' tracker = "tensorboard" (t2i_models.tracking)
    "wandb": "wandb",  # trainers' tracker = "wandb"; not in [test]: the tests use a stand-in module
}


def require(module: str, needed_by: str) -> ModuleType:
    """Import ``module`` (a key of ``EXTRAS``); when it is not installed, ``T2IError`` saying what
    needs it and the pip command for its extra. A module that is installed but fails on import
    of something else raises as it is: reinstalling the extra would not be the fix to suggest."""
    extra = EXTRAS[module]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        raise T2IError(f"{needed_by} needs {module}, which is not installed: pip install 't2i-data[{extra}]'") from None
