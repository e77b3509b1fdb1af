"""Every kind of shard set opens unmodified in webdataset and in Hugging Face datasets, and both
return the keys and values this package's own reader returns (real libraries, offline)."""
import io
import json

import numpy as np
import pytest

from fixtures_interop import build_sets, md_sets, our_samples, shard_paths  # sets HF_*_OFFLINE first

import datasets  # noqa: E402
import webdataset as wds  # noqa: E402

from t2i_data.manifest import data_files  # noqa: E402
from t2i_data.pngio import decode_image  # noqa: E402

KINDS = ["mdmnist", "cub", "coco", "text_tokens", "image_tokens"]
FIELDS = {"mdmnist": {"png", "json"}, "cub": {"jpg", "json"}, "coco": {"jpg", "json"}, "text_tokens": {"text_tokens.npy"},
          "image_tokens": {"image_tokens.npy", "json"}}


@pytest.fixture(scope="module")
def sets(md_tokens, tmp_path_factory):
    built = build_sets(tmp_path_factory.mktemp("interop"))
    return md_sets(md_tokens) | {"cub": built["cub"] / "train", "coco": built["coco"]}


@pytest.mark.parametrize("kind", KINDS)
def test_webdataset_yields_every_sample_with_our_keys_and_bytes(sets, kind):
    ours = our_samples(sets[kind])
    urls = [str(p) for p in shard_paths(sets[kind])]  # every shard, those left empty by quarantined inputs too
    theirs = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert len(theirs) == len(ours) == json.loads((sets[kind] / "manifest.json").read_bytes())["totals"]["samples"] > 0
    for a, b in zip(theirs, ours):
        assert {k for k in a if not k.startswith("__")} == FIELDS[kind]
        assert a["__key__"] == b["__key__"] and all(a[f] == b[f] for f in FIELDS[kind])
    if kind == "cub":
        assert 0 in [json.loads((sets[kind] / "manifest.json").read_bytes())["shards"][i]["samples"] for i in range(len(urls))]


def _json_equal(hf: dict, ours: dict) -> bool:
    """Arrow gives a JSON column one struct type for all rows: a field some other sample has reads
    back as None here. Everything this sample has must come back equal."""
    return {k: v for k, v in hf.items() if v is not None or k in ours} == ours


@pytest.mark.parametrize("kind", KINDS)
def test_datasets_webdataset_loader_gives_our_rows_columns_and_values(sets, kind, tmp_path):
    ours = our_samples(sets[kind])
    files = data_files(sets[kind])
    ds = datasets.load_dataset("webdataset", data_files=files, split=next(iter(files)), cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == len(ours)
    assert set(ds.column_names) == FIELDS[kind] | {"__key__", "__url__"}
    image = next((f for f in ("png", "jpg") if f in FIELDS[kind]), None)
    if image:
        assert isinstance(ds.features[image], datasets.Image)
        raw = ds.cast_column(image, datasets.Image(decode=False))
    if kind == "text_tokens":
        assert str(ds.data.schema.field("text_tokens.npy").type) == "list<item: list<item: uint16>>"
    if kind == "image_tokens":
        assert str(ds.data.schema.field("image_tokens.npy").type) == "list<item: list<item: list<item: uint16>>>"
    for i, (row, s) in enumerate(zip(ds, ours)):
        assert row["__key__"] == s["__key__"]
        if image:
            assert raw[i][image]["bytes"] == s[image]  # the very bytes of the tar member
            assert np.array_equal(np.asarray(row[image].convert("RGB")), decode_image(s[image]))
        if "json" in s:
            assert _json_equal(row["json"], json.loads(s["json"]))
        for f in ("text_tokens.npy", "image_tokens.npy"):
            if f in s:
                arr = np.load(io.BytesIO(s[f]))
                assert np.array_equal(np.asarray(row[f], dtype=arr.dtype), arr) and np.asarray(row[f]).shape == arr.shape


def test_webdataset_decodes_the_token_arrays_with_their_dtype(sets):
    ds = wds.WebDataset([str(p) for p in shard_paths(sets["text_tokens"])], shardshuffle=False).decode()
    first = next(iter(ds))
    assert first["text_tokens.npy"].dtype == np.uint16 and first["text_tokens.npy"].shape == (1, 12)
