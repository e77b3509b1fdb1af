"""Issue 14: one sample schema per set, declared in the card, so datasets infers nothing.

Sets whose FIRST shard holds the nulls of the optional fields (one sample per shard, as
``--shard-size 1`` builds them) load through the card and through ``data_files`` + the declared
features, and every row equals, field by field and type by type, what ``iter_samples`` returns.
Without the declared features, datasets types those columns ``null`` from the first shard and
fails on the first value: that is the bug, and the first test checks the sets still reproduce it.
"""
import io
import json
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures_interop import md_sets, our_samples  # sets HF_*_OFFLINE first

import datasets  # noqa: E402

from t2i_data.digest import canonical_json  # noqa: E402
from t2i_data.manifest import data_files  # noqa: E402
from t2i_data.manifest import load_manifest  # noqa: E402
from t2i_data.runner import InProcessRunner  # noqa: E402
from t2i_data.schema import SCHEMAS, check_meta, features, features_of, schema_for, schema_of  # noqa: E402
from t2i_data.build import build_shard_set  # noqa: E402
from t2i_data.tario import WRITER_ID, iter_samples  # noqa: E402

SIZE = 32  # ae-32: the shorter side stored at 42

# --- sets whose first shard has the nulls ------------------------------------------------------

def jpeg(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def meta_of(dataset: str, split: str, i: int) -> dict:
    """A sample JSON as preprocess.py writes it (issue 14's keys); sample 0 has every optional null."""
    first = i == 0
    meta = {
        "captions": [f"a picture number {i}", "another caption"], "captions_dropped": i % 2, "caption_fixes": 0, "split": split,
        "regime": "ae", "size": [SIZE + 10 + i, SIZE + 10], "source_size": [640, 480 + i], "source_mode": "RGB", "source_format": "JPEG",
        "decoded_scale": 1.0 if first else 0.5, "crop": None if first else [1, 2, 600, 470], "exif_orientation": 1 if first else 6,
        "size_mismatch": not first, "source_sha256": f"{i:064x}", "pixel_digest": f"{i:032x}",
        "normalized": [] if first else [f"images[{i}].id: '{i}' -> {i}"],
        "image_id": 1000 + i, "file": f"{split}/{1000 + i:012d}.jpg",
    }
    if dataset == "coco":  # the first image lacks license, width and height in the annotations
        meta |= {"license": None if first else 3, "annotated_size": None if first else [640, 480 + i]}
    else:  # the first image has no bounding box
        meta |= {"class_id": 1 + i % 2, "class_name": ["Alpha", "Beta"][i % 2], "bbox": None if first else [10.0, 12.5, 300.25, 200.0]}
    return meta


def produce(dataset: str, split: str, i: int):
    key = f"coco-{1000 + i:012d}" if dataset == "coco" else f"cub-{1000 + i:05d}"
    meta = meta_of(dataset, split, i)
    check_meta(meta, SCHEMAS[("images", dataset)], key)  # what every producer does before writing
    yield {"__key__": key, "jpg": jpeg(SIZE + 10 + i, SIZE + 10, i), "json": canonical_json(meta)}


def build_images(dataset: str, out, n: int = 7) -> tuple:
    split = "val2017" if dataset == "coco" else "train"
    identity = {  # as preprocess.py builds it
        "kind": "images", "dataset": dataset, "split": split, "regime": "ae", "size": SIZE,
        "config": {"dataset": dataset, "regime": "ae", "size": SIZE, "splits": [split], "shard_size": 1, "jpeg_quality": 95, "seed": 0,
                   "cub_split": "official", "bbox_crop": None, "limit": None},
        "seed": 0, "sources": {dataset: {"kind": dataset, "files": {}}}, "aligned_to": None,
        "encoder": {"jpeg": "pillow quality=95 subsampling=4:4:4", "tar": WRITER_ID},
    }
    build_shard_set(partial(produce, dataset, split), out, f"{dataset}-{split}", [1] * n, identity, InProcessRunner())
    return out, split


@pytest.fixture(scope="module")
def sets(md_tokens, tmp_path_factory):
    from t2i_models.builders import build_autoencoder
    from t2i_models.checkpoint import save_autoencoder
    from t2i_models.encode import EncodeConfig, encode

    root = tmp_path_factory.mktemp("schema")
    out = {name: build_images(name, root / name)[0] for name in ("coco", "cub")}
    torch.manual_seed(0)
    save_autoencoder(root / "ae.pt", build_autoencoder("dvae_tiny", image_size=SIZE, hidden=8, vocab_size=16))
    encode(root / "ae.pt", out["coco"], root / "coco-img", EncodeConfig(views=2), InProcessRunner())  # views with a regime
    return out | {"coco_image_tokens": root / "coco-img"} | md_sets(md_tokens)


def same(hf, ours, path: str = "") -> None:
    """Equal, and of the same Python type, all the way down (1 == 1.0 would pass a plain ==)."""
    assert type(hf) is type(ours), f"{path}: {type(hf).__name__} {hf!r} vs ours {type(ours).__name__} {ours!r}"
    if isinstance(ours, dict):
        assert hf.keys() == ours.keys(), f"{path}: keys {sorted(hf)} vs ours {sorted(ours)}"
        for k in ours:
            same(hf[k], ours[k], f"{path}.{k}")
    elif isinstance(ours, list):
        assert len(hf) == len(ours), f"{path}: {len(hf)} items vs ours {len(ours)}"
        for i, (a, b) in enumerate(zip(hf, ours)):
            same(a, b, f"{path}[{i}]")
    else:
        assert hf == ours, f"{path}: {hf!r} vs ours {ours!r}"


def assert_rows_equal_ours(ds, folder) -> None:
    m = load_manifest(folder / "manifest.json")
    ours = [(sh["name"], s) for sh in m["shards"] for s in iter_samples(folder / sh["name"])]
    schema = schema_of(m)
    assert ds.features == features(schema)
    assert ds.num_rows == len(ours) == m["totals"]["samples"] > 0
    images = [c for c, t in schema.items() if t.kind == "image"]
    raw = ds.cast_column(images[0], datasets.Image(decode=False)) if images else ds
    for i, (shard, s) in enumerate(ours):
        row, raw_row = ds[i], raw[i]
        assert set(row) == set(s) | {"__url__"}
        same(row["__key__"], s["__key__"], "__key__")
        assert row["__url__"].endswith("/" + shard)
        for member in schema:
            if member == "json":
                same(row["json"], json.loads(s["json"]), f"{s['__key__']}.json")
            elif schema[member].kind == "image":
                assert raw_row[member]["bytes"] == s[member]
                assert np.array_equal(np.asarray(row[member].convert("RGB")), np.asarray(Image.open(io.BytesIO(s[member])).convert("RGB")))
            else:
                arr = np.load(io.BytesIO(s[member]))
                got = np.asarray(row[member], dtype=arr.dtype)
                assert got.shape == arr.shape and np.array_equal(got, arr) and str(arr.dtype) == schema[member].dtype


ALL = ["coco", "cub", "coco_image_tokens", "mdmnist", "text_tokens", "image_tokens"]


def test_the_sets_reproduce_issue_14_without_declared_features(sets, tmp_path):
    for name in ("coco", "cub"):
        first = json.loads(our_samples(sets[name])[0]["json"])
        assert first["crop"] is None and (first.get("license", 0) is None or first.get("bbox", 0) is None)
        files = data_files(sets[name])
        with pytest.raises(datasets.exceptions.DatasetGenerationError):  # inferred from shard 0: null columns
            datasets.load_dataset("webdataset", data_files=files, split=next(iter(files)), cache_dir=str(tmp_path / name))


@pytest.mark.parametrize("name", ALL)
def test_every_set_loads_through_its_card_with_the_declared_features(sets, name, tmp_path):
    folder = sets[name]
    m = load_manifest(folder / "manifest.json")
    builder = datasets.load_dataset_builder(str(folder), cache_dir=str(tmp_path / "hf"))
    assert builder.info.features == features(schema_of(m))  # read from the card's YAML, not inferred
    ds = datasets.load_dataset(str(folder), split=m["split"], cache_dir=str(tmp_path / "hf"))
    assert_rows_equal_ours(ds, folder)


@pytest.mark.parametrize("name", ALL)
def test_every_set_loads_through_data_files_with_features_of(sets, name, tmp_path):
    files = data_files(sets[name])
    ds = datasets.load_dataset("webdataset", data_files=files, features=features_of(sets[name]), split=next(iter(files)),
                               cache_dir=str(tmp_path / "hf"))
    assert_rows_equal_ours(ds, sets[name])


@pytest.mark.parametrize("name", ALL)
def test_every_sample_of_every_kind_follows_its_declared_schema(sets, name):
    """The declarations match what the producers write today (MD-MNIST's bytes are pinned)."""
    schema = schema_of(load_manifest(sets[name] / "manifest.json"))
    for s in our_samples(sets[name]):
        assert set(s) - {"__key__"} == set(schema)
        if "json" in schema:
            check_meta(json.loads(s["json"]), schema, s["__key__"])


def test_the_declared_arrow_types(sets):
    js = features(schema_of(load_manifest(sets["coco"] / "manifest.json"))).arrow_schema.field("json").type
    types = {js.field(i).name: str(js.field(i).type) for i in range(js.num_fields)}
    assert types["license"] == "int64" and types["decoded_scale"] == "double" and types["size_mismatch"] == "bool"
    assert types["annotated_size"] == "fixed_size_list<item: int64>[2]" and types["normalized"] == "list<item: string>"
    cub = features(schema_for("images", "cub")).arrow_schema.field("json").type
    assert str(cub.field(cub.get_field_index("bbox")).type) == "fixed_size_list<item: double>[4]"
    tok = features(schema_for("text_tokens", "coco", "int32")).arrow_schema.field("text_tokens.npy").type
    assert str(tok) == "list<item: list<item: int32>>"


# --- check_meta refusals ------------------------------------------------------------------------

_DROP = object()
MD = {"captions": ["4 30 g down 8 40 b up 6 40 b middle"], "description": "4 30 g down 8 40 b up 6 40 b middle",
      "digits": [{"value": 4, "size": 30, "color": "g", "position": "down", "mnist_index": 7}] * 3, "index": 0, "mnist_pool": "train",
      "split": "train", "symbol_ids": [4] * 12, "symbols": ["4"] * 12}

REFUSALS = [  # (schema, path, value, what the message names)
    ("coco", "license", _DROP, "lacks key 'license'"),
    ("coco", "licence", 3, "has key 'licence', which the schema does not declare"),
    ("coco", "image_id", "139", "'image_id' is str \"139\", the schema declares int"),
    ("coco", "image_id", True, "'image_id' is bool true, the schema declares int"),
    ("coco", "decoded_scale", 1, "'decoded_scale' is int 1, the schema declares float"),
    ("coco", "decoded_scale", float("nan"), "'decoded_scale' is nan"),
    ("coco", "size_mismatch", 0, "'size_mismatch' is int 0, the schema declares bool"),
    ("coco", "image_id", None, "'image_id' is null, the schema declares int (not nullable)"),
    ("coco", "captions", None, "'captions' is null, the schema declares list[str] (not nullable)"),
    ("coco", "size", [42], "'size' has 1 items, the schema declares list[int, 2]"),
    ("coco", "annotated_size", [640, None], "'annotated_size[1]' is null, the schema declares int (not nullable)"),
    ("coco", "captions", ["a", 3], "'captions[1]' is int 3, the schema declares str"),
    ("cub", "bbox", [1, 2, 3, 4], "'bbox[0]' is int 1, the schema declares float"),
    ("cub", "class_name", None, "'class_name' is null"),
    ("mdmnist", "digits.1", {"value": 4, "size": 30, "color": 2, "position": "down", "mnist_index": 7},
     "'digits[1].color' is int 2, the schema declares str"),
    ("mdmnist", "digits.2", {"value": 4, "size": 30, "color": "g", "position": "down"}, "lacks key 'digits[2].mnist_index'"),
    ("mdmnist", "symbols", ["4"] * 11, "'symbols' has 11 items"),
]


def _valid(name: str) -> dict:
    if name == "mdmnist":
        return json.loads(json.dumps(MD))
    return meta_of(name, "val2017" if name == "coco" else "train", 1)


@pytest.mark.parametrize("name,path,value,message", REFUSALS, ids=[f"{n}-{p}-{i}" for i, (n, p, _, _) in enumerate(REFUSALS)])
def test_check_meta_refuses_and_names_the_first_problem(name, path, value, message):
    schema = SCHEMAS[("images", name)]
    check_meta(_valid(name), schema, "k")  # the valid one passes
    meta = _valid(name)
    if path.startswith("digits."):  # one digit replaced: the message's path is digits[1].color
        meta["digits"][int(path.split(".")[1])] = value
    elif value is _DROP:
        del meta[path]
    else:
        meta[path] = value
    with pytest.raises(ValueError) as e:
        check_meta(meta, schema, "coco-000000000139")
    assert str(e.value).startswith("coco-000000000139: sample JSON ") and message in str(e.value), str(e.value)


def test_check_meta_takes_null_where_declared_and_a_struct_type():
    for name in ("coco", "cub"):
        check_meta(meta_of(name, "x", 0), SCHEMAS[("images", name)], "k")  # every nullable field null
    check_meta({"views": [{"identity": True}]}, SCHEMAS[("image_tokens", "mdmnist")]["json"], "k")
    with pytest.raises(ValueError, match="'views\\[0\\].angle' is int 0, the schema declares float"):
        check_meta({"views": [{"angle": 0, "x": 1, "y": 2, "flip": False}]}, SCHEMAS[("image_tokens", "coco")], "k")


def test_schema_for_refuses_an_undeclared_set_or_a_missing_array_dtype():
    with pytest.raises(ValueError, match="no sample schema is declared for images/laion"):
        schema_for("images", "laion")
    with pytest.raises(ValueError, match="array dtype must be one of uint16, int32, got None"):
        schema_for("text_tokens", "coco")


def test_the_issues_coco_set_built_by_preprocess_loads_through_its_card_and_data_files(tmp_path):
    """Issue 14's case through the real producer: the first image has no license, width or height,
    built with --shard-size 1; the rows equal the shards', field by field."""
    from t2i_models.cli import main

    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    images = [{"id": 5, "file_name": "000000000005.jpg"}]  # no license, width, height
    images += [{"id": i, "file_name": f"{i:012d}.jpg", "width": 40, "height": 30, "license": 2} for i in (6, 7)]
    for i in (5, 6, 7):
        (root / "val2017" / f"{i:012d}.jpg").write_bytes(jpeg(40, 30, i))
    anns = [{"id": i, "image_id": i, "caption": f"picture number {i}"} for i in (5, 6, 7)]
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps({"images": images, "annotations": anns}))
    out = tmp_path / "out"
    assert main(["-q", "preprocess", "coco", "--root", str(root), "--out", str(out), "--size", "16", "--shard-size", "1", "--workers", "0"]) == 0
    folder = out / "val2017"
    first = json.loads(our_samples(folder)[0]["json"])
    assert first["license"] is None and first["annotated_size"] is None and first["size_mismatch"] is False
    ds = datasets.load_dataset(str(folder), split="val2017", cache_dir=str(tmp_path / "hf1"))
    assert_rows_equal_ours(ds, folder)
    files = data_files(folder)
    ds = datasets.load_dataset("webdataset", data_files=files, features=features_of(folder), split=next(iter(files)),
                               cache_dir=str(tmp_path / "hf2"))
    assert_rows_equal_ours(ds, folder)
