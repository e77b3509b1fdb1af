"""Duplicate images and split leakage (issue 14, kind 4), on COCO trees in the source format."""
import json

import pytest

from t2i_models.cli import main
from t2i_data.dedup import find_duplicates, find_leakage
from t2i_data.preprocess import PreprocessConfig, preprocess
from t2i_data.runner import DaskRunner, InProcessRunner
from t2i_data.tario import iter_samples

from fixtures_sources import jpeg_bytes


def with_comment(jpeg: bytes, text: bytes) -> bytes:
    """The same JPEG with a COM segment after SOI: other bytes, the same pixels."""
    return jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


def make_tree(root, train: dict, val: dict):
    """``{id: file name or bytes}`` per split; a name reuses that file of the split folder."""
    (root / "annotations").mkdir(parents=True)
    for split, spec in (("train2017", train), ("val2017", val)):
        (root / split).mkdir()
        images, anns = [], []
        for n, (image_id, data) in enumerate(sorted(spec.items())):
            name = data if isinstance(data, str) else f"{image_id:012d}.jpg"
            if not isinstance(data, str):
                (root / split / name).write_bytes(data)
            images.append({"id": image_id, "file_name": name, "width": 64, "height": 48, "license": 1})
            anns.append({"id": 1000 * image_id + n, "image_id": image_id, "caption": f"image {image_id}"})
        (root / "annotations" / f"captions_{split}.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return root


@pytest.fixture
def coco(tmp_path):
    a, b, c = jpeg_bytes(64, 48, seed=1), jpeg_bytes(64, 48, seed=2), jpeg_bytes(64, 48, seed=3)
    train = {10: a, 11: b, 12: "000000000010.jpg", 13: with_comment(b, b"re-saved"), 14: c}
    val = {20: c, 21: jpeg_bytes(64, 48, seed=4)}  # 20: train 14's bytes under another name
    return make_tree(tmp_path / "coco", train, val)


def keys(out, split):
    return [s["__key__"] for p in sorted((out / split).glob("*.tar")) for s in iter_samples(p)]


def test_duplicates_are_quarantined_naming_the_key_they_repeat_and_leakage_is_listed(coco, tmp_path):
    m = preprocess(PreprocessConfig("coco", str(coco), size=32, shard_size=2), tmp_path / "out", InProcessRunner())
    rejected = {r["key"]: r["reason"] for r in m["train2017"]["quarantined"]}
    assert rejected.keys() == {"coco-000000000012", "coco-000000000013"}
    assert rejected["coco-000000000012"].startswith("duplicate-image: same source bytes as coco-000000000010")
    assert rejected["coco-000000000013"] == "duplicate-image: same stored pixels as coco-000000000011"
    assert keys(tmp_path / "out", "train2017") == ["coco-000000000010", "coco-000000000011", "coco-000000000014"]
    assert keys(tmp_path / "out", "val2017") == ["coco-000000000020", "coco-000000000021"]
    t = m["train2017"]["totals"]
    assert (t["samples"], t["quarantined"], t["shards"]) == (3, 2, 3)
    assert m["train2017"]["stats"]["captions"] == 3  # the dropped copies' counts are taken off
    assert m["train2017"]["leakage"] == [{"key": "coco-000000000014", "other_split": "val2017", "other_key": "coco-000000000020", "by": "file"}]
    assert m["val2017"]["leakage"] == [{"key": "coco-000000000020", "other_split": "train2017", "other_key": "coco-000000000014", "by": "file"}]
    for split in ("train2017", "val2017"):  # the rewritten shards still verify against the manifest
        assert main(["verify", str(tmp_path / "out" / split)]) == 0
    for p in (tmp_path / "out" / "train2017").glob("*.tar"):
        for s in iter_samples(p):
            meta = json.loads(s["json"])
            assert len(meta["source_sha256"]) == 64 and len(meta["pixel_digest"]) == 32


def test_the_check_is_deterministic_and_a_rerun_reuses_the_rewritten_shards(coco, tmp_path):
    cfg = PreprocessConfig("coco", str(coco), size=32, shard_size=2)
    preprocess(cfg, tmp_path / "a", InProcessRunner())
    with DaskRunner(workers=2) as runner:
        preprocess(cfg, tmp_path / "b", runner)
    again = preprocess(cfg, tmp_path / "a", InProcessRunner())
    assert again["train2017"]["_skipped"] == 3
    files = lambda root: {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}  # noqa: E731
    assert files(tmp_path / "a") == files(tmp_path / "b")


def test_strict_refuses_duplicates_and_leakage(coco, tmp_path, capsys):
    args = ["preprocess", "coco", "--root", str(coco), "--size", "32", "--workers", "0", "--strict"]
    assert main(args + ["--out", str(tmp_path / "s1")]) == 2
    assert "coco-000000000012: duplicate-image: same source bytes as coco-000000000010" in capsys.readouterr().err
    leak_only = make_tree(tmp_path / "coco2", {10: jpeg_bytes(64, 48, seed=1)}, {20: jpeg_bytes(64, 48, seed=1)})
    assert main(["preprocess", "coco", "--root", str(leak_only), "--size", "32", "--workers", "0", "--strict", "--out", str(tmp_path / "s2")]) == 2
    err = capsys.readouterr().err
    assert "train/test leakage" in err and "coco-000000000010" in err and "coco-000000000020" in err and "Traceback" not in err


def test_cli_and_inspect_report_duplicates_and_leakage(coco, tmp_path, capsys):
    assert main(["-q", "preprocess", "coco", "--root", str(coco), "--out", str(tmp_path / "o"), "--size", "32", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "quarantined duplicate-image: 2" in out and "also in another split (leakage, kept; see the manifest): 1" in out
    assert main(["-q", "inspect", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "duplicate images quarantined                 2" in out
    assert "also in another split (leakage)              1" in out
    assert "coco-000000000014 = coco-000000000020 (val2017, same source bytes)" in out


@pytest.mark.parametrize("rows, expected", [
    ([["a", "f1", "p1"], ["b", "f1", "p2"]], {"b": "same source bytes as a"}),
    ([["a", "f1", "p1"], ["b", "f2", "p1"]], {"b": "same stored pixels as a"}),
    ([["a", "f1", "p1"], ["b", "f2", "p2"], ["c", "f1", "p1"], ["d", "f3", "p2"]], {"c": "same source bytes as a", "d": "same stored pixels as b"}),
    ([["a", "f1", "p1"], ["b", "f2", "p2"]], {}),
])
def test_find_duplicates_keeps_the_first_in_key_order(rows, expected):
    got = find_duplicates(rows)
    assert {k: v.split(": ", 1)[1].split(" (")[0] for k, v in got.items()} == expected


def test_find_leakage_lists_both_sides():
    rows = {"train": [["t1", "f1", "p1"], ["t2", "f2", "p2"]], "test": [["s1", "f9", "p2"], ["s2", "f8", "p8"]]}
    got = find_leakage(rows)
    assert got == {"train": [{"key": "t2", "other_split": "test", "other_key": "s1", "by": "pixels"}],
                   "test": [{"key": "s1", "other_split": "train", "other_key": "t2", "by": "pixels"}]}


@pytest.mark.parametrize("size", [(1, 1), (41, 30), (184, 138)])
def test_pixel_digest_is_xxh3_of_the_canonical_pixels(size):
    import numpy as np
    import xxhash
    from PIL import Image

    from t2i_data.digest import canonical_pixels
    from t2i_data.preprocess import pixel_digest

    im = Image.fromarray(np.random.default_rng(size[0]).integers(0, 256, (size[1], size[0], 3)).astype(np.uint8))
    assert pixel_digest(im) == xxhash.xxh3_128_hexdigest(canonical_pixels(np.asarray(im)))
