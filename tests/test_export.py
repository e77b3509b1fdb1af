"""t2i export: Arrow / Parquet tables with one row per sample in shard order, typed columns,
byte-identical reruns, loading in datasets, and nothing left behind on bad input."""
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from fixtures_interop import build_sets, md_sets, our_samples, shard_paths  # sets HF_*_OFFLINE first

import datasets  # noqa: E402

from t2i_models.cli import main  # noqa: E402
from t2i_data.errors import T2IError  # noqa: E402
from t2i_data.export import export, read_export
from t2i_data.manifest import data_files  # noqa: E402
from t2i_data.inspect_shards import inspect  # noqa: E402


@pytest.fixture(scope="module")
def sets(md_tokens, tmp_path_factory):
    return md_sets(md_tokens) | build_sets(tmp_path_factory.mktemp("export"))


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def manifest(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_bytes())


@pytest.mark.parametrize("fmt", ["arrow", "parquet"])
def test_zipped_image_text_and_image_token_export_equals_the_shards(sets, tmp_path, fmt):
    out = tmp_path / "x"
    rec = export([sets["mdmnist"], sets["text_tokens"], sets["image_tokens"]], out, fmt)
    t = read_export(out, "train")
    images, texts, tokens = (our_samples(sets[k]) for k in ("mdmnist", "text_tokens", "image_tokens"))
    assert t.num_rows == rec["splits"]["train"]["rows"] == len(images) == 103
    assert t.column("key").to_pylist() == [s["__key__"] for s in images]  # shard order
    assert t.column_names == ["key", "split", "captions", "image", "description", "symbols", "symbol_ids", "digits", "index", "json",
                              "text_tokens", "image_tokens", "views"]
    types = {f.name: str(f.type) for f in t.schema}
    assert types["text_tokens"] == "list<item: fixed_size_list<item: uint16>[12]>"
    assert types["image_tokens"] == "fixed_size_list<item: fixed_size_list<item: fixed_size_list<item: uint16>[32]>[32]>[1]"
    assert types["symbol_ids"] == "fixed_size_list<item: uint8>[12]" and types["image"] == "struct<bytes: binary, path: string>"
    rows = t.slice(0, 20).to_pylist()
    for row, img, txt in zip(rows, images, texts):
        meta = json.loads(img["json"])
        assert row["image"] == {"bytes": img["png"], "path": f"{img['__key__']}.png"} and row["split"] == "train"
        assert row["captions"] == meta["captions"] and row["json"] == img["json"].decode()
        assert row["digits"] == meta["digits"] and row["symbol_ids"] == meta["symbol_ids"] and row["index"] == meta["index"]
        assert row["text_tokens"] == np.load(io.BytesIO(txt["text_tokens.npy"])).tolist()
    flat = t.column("image_tokens").combine_chunks().flatten().flatten().flatten().to_numpy()
    assert flat.dtype == np.uint16
    assert np.array_equal(flat.reshape(-1, 1, 32, 32), np.stack([np.load(io.BytesIO(s["image_tokens.npy"])) for s in tokens]))
    assert t.column("views").to_pylist()[0] == [{"identity": True, "angle": None, "x": None, "y": None, "flip": None}]
    on_disk = json.loads((out / "export.json").read_bytes())
    assert on_disk == rec and on_disk["splits"]["train"]["schema"][-1] == {"name": "views", "type": str(t.schema.field("views").type)}
    assert [s["digest"] for s in rec["splits"]["train"]["sources"]] == [manifest(sets[k])["digest"] for k in ("mdmnist", "text_tokens", "image_tokens")]
    assert not (tmp_path / "x.partial").exists()


def test_arrow_export_is_memory_mapped_and_loads_in_datasets(sets, tmp_path):
    out = tmp_path / "a"
    main(["-q", "export", "--format", "arrow", str(sets["cub"]), "--out", str(out)])
    before = pa.total_allocated_bytes()
    t = read_export(out, "train")
    assert pa.total_allocated_bytes() - before < 4096  # the table points into the mapped file: nothing copied
    assert t.column("image_id").type == pa.int64() and t.column("bbox").type == pa.list_(pa.float64(), 4)
    dd = datasets.load_from_disk(str(out))
    assert sorted(dd) == ["test", "train"] and dd["train"].num_rows == 3 and dd["test"].num_rows == 2
    one = datasets.Dataset.from_file(str(out / "train" / "data-00000-of-00001.arrow"))
    ours = our_samples(sets["cub"] / "train")
    assert one["key"] == [s["__key__"] for s in ours]
    assert isinstance(one.features["image"], datasets.Image) and one[0]["image"].size == (36, 36)  # prior-16: (16 + 20)²
    assert one[0]["class_name"] == json.loads(ours[0]["json"])["class_name"]


def test_parquet_export_loads_with_datasets_parquet_builder(sets, tmp_path):
    out = tmp_path / "p"
    export([sets["coco"], sets["coco_text"]], out, "parquet")
    ds = datasets.load_dataset("parquet", data_files={"val2017": str(out / "val2017" / "*.parquet")}, split="val2017",
                               cache_dir=str(tmp_path / "hf"))
    ours = our_samples(sets["coco"])
    assert ds.num_rows == 4 and ds["key"] == [s["__key__"] for s in ours]
    assert isinstance(ds.features["image"], datasets.Image) and ds.features["license"] == datasets.Value("int64")
    assert ds[0]["captions"] == json.loads(ours[0]["json"])["captions"]
    txt = our_samples(sets["coco_text"])
    assert [np.asarray(r, dtype=np.uint16).tolist() for r in ds["text_tokens"]] == [np.load(io.BytesIO(s["text_tokens.npy"])).tolist() for s in txt]


@pytest.mark.parametrize("fmt", ["arrow", "parquet"])
def test_two_exports_of_the_same_input_are_byte_identical(sets, tmp_path, fmt):
    for name in ("a", "b"):
        export([sets["mdmnist"], sets["image_tokens"]], tmp_path / name, fmt)
    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert a == b and f"train/data-00000-of-00001.{fmt}" in a


def test_token_set_alone_and_refusals(sets, tmp_path):
    rec = export([sets["coco_text"]], tmp_path / "t", "arrow")
    assert [c["name"] for c in rec["splits"]["val2017"]["schema"]] == ["key", "split", "text_tokens"]
    assert rec["splits"]["val2017"]["schema"][2]["type"] == "list<item: fixed_size_list<item: uint16>[6]>"
    with pytest.raises(T2IError, match="already exists; remove it, choose another --out, or pass --overwrite"):
        export([sets["coco_text"]], tmp_path / "t", "arrow")
    assert export([sets["coco_text"]], tmp_path / "t", "parquet", overwrite=True)["format"] == "parquet"
    assert sorted(tree(tmp_path / "t")) == ["export.json", "val2017/data-00000-of-00001.parquet"]
    with pytest.raises(T2IError, match="belongs to image set .* export together only sets derived from the same image set"):
        export([sets["cub"] / "train", sets["text_tokens"]], tmp_path / "m", "arrow")
    with pytest.raises(T2IError, match="different splits \\(train; val2017\\)"):
        export([sets["mdmnist"], sets["coco_text"]], tmp_path / "m", "arrow")
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.partial").exists()


def _damage(sets, tmp_path, how: str) -> Path:
    """A copy of the MD-MNIST image set with one problem."""
    import shutil

    d = tmp_path / "bad"
    shutil.copytree(sets["mdmnist"], d)
    last = shard_paths(d)[-1]  # the last shard: an export has already written rows when it gets there
    if how == "missing":
        last.unlink()
    elif how == "checksum":
        data = bytearray(last.read_bytes())
        data[700] ^= 1
        last.write_bytes(bytes(data))
    else:
        (d / "manifest.json").unlink()
    return d


MESSAGES = {"missing": "mdmnist-train-000006.tar listed in its manifest is missing; restore it or rebuild",
            "checksum": "checksum does not match the manifest",
            "no-manifest": "no manifest.json here or in its subfolders, so it is not a t2i shard set"}


@pytest.mark.parametrize("how", sorted(MESSAGES))
@pytest.mark.parametrize("command", ["export-arrow", "export-parquet", "inspect"])
def test_bad_input_stops_with_one_message_and_leaves_nothing(sets, tmp_path, capsys, how, command):
    bad = _damage(sets, tmp_path, how)
    out = tmp_path / "out"
    argv = (["export", "--format", command.split("-")[1]] if command.startswith("export") else ["inspect"]) + [str(bad), "--out", str(out)]
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("t2i: error: ") and MESSAGES[how] in err and err.count("\n") == 1
    assert not out.exists() and not (tmp_path / "out.partial").exists()
    with pytest.raises(T2IError, match=MESSAGES[how]):
        data_files(bad)  # the loaders
    with pytest.raises(T2IError, match=MESSAGES[how]):
        inspect([bad])


def test_an_out_that_cannot_be_made_is_one_line(sets, tmp_path):
    (tmp_path / "a-file").write_text("mine")
    for out in (tmp_path / "a-file" / "x", tmp_path / "a-file" / "x" / "y"):  # under a file, one or two levels down
        with pytest.raises(T2IError, match=rf"^--out {out}: cannot make the folder \("):
            export([sets["mdmnist"]], out, "arrow")
    assert (tmp_path / "a-file").read_text() == "mine"
