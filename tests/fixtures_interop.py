"""Tiny CUB and COCO image shard sets (with quarantined inputs and shards left empty by them) and a
COCO text-token set with both padding and truncation, for the interop, export, inspect and card tests.
MD-MNIST image, text-token and image-token sets come from conftest's ``md_tokens``."""
from __future__ import annotations

import json
import os
from pathlib import Path

# datasets must never reach the network: set before it is imported anywhere in the test session
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fixtures_sources import make_coco, make_cub  # noqa: E402

from t2i_data.preprocess import PreprocessConfig, preprocess  # noqa: E402
from t2i_data.runner import InProcessRunner  # noqa: E402
from t2i_data.tario import iter_samples  # noqa: E402


def build_sets(root: Path) -> dict[str, Path]:
    from t2i_data import text
    from t2i_data.tokenize import TokenizeConfig, tokenize

    preprocess(PreprocessConfig("cub", str(make_cub(root / "cub-src")), regime="prior", size=16, shard_size=2), root / "cub", InProcessRunner())
    preprocess(PreprocessConfig("coco", str(make_coco(root / "coco-src")), regime="ae", size=16, shard_size=2), root / "coco", InProcessRunner())
    captions = [c for p in sorted((root / "coco" / "val2017").glob("*.tar")) for s in iter_samples(p) for c in json.loads(s["json"])["captions"]]
    text.train("word", captions, None).save(root / "tk-word")
    # L = 6 with BOS and EOS leaves 4 words: the 3- and 4-word captions are padded, the longer ones cut
    tokenize(root / "tk-word", root / "coco" / "val2017", root / "coco-text", TokenizeConfig(length=6, add_bos=True, add_eos=True),
             InProcessRunner())
    return {"cub": root / "cub", "coco": root / "coco" / "val2017", "coco_text": root / "coco-text"}


def md_sets(md_tokens: Path) -> dict[str, Path]:
    return {"mdmnist": md_tokens / "md" / "train", "text_tokens": md_tokens / "text", "image_tokens": md_tokens / "img"}


def shard_paths(split_dir: Path) -> list[Path]:
    m = json.loads((split_dir / "manifest.json").read_bytes())
    return [split_dir / s["name"] for s in m["shards"]]


def our_samples(split_dir: Path) -> list[dict]:
    """What this package's own reader returns, shard after shard."""
    return [s for p in shard_paths(split_dir) for s in iter_samples(p)]
