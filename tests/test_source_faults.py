"""Source faults found by trying t2i preprocess as a new user (issue 14): changed files on a rerun,
symlinked folders, files that are not regular files, text UTF-8 cannot hold, integers Arrow cannot
hold, --strict on a rerun, and whole files that are folders, FIFOs or nested too deeply."""
import json
import os

import pytest

from t2i_models.cli import main
from t2i_data.tario import iter_samples

from fixtures_sources import jpeg_bytes


def tree(root, images: dict, captions: dict | None = None, split: str = "val2017", extra: dict | None = None):
    """A COCO root: ``images`` {id: bytes or None (no file)}; captions {id: [caption, ...]}."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(exist_ok=True)
    entries, anns = [], []
    for image_id, data in sorted(images.items()):
        name = f"{image_id:012d}.jpg"
        if data is not None:
            (root / split / name).write_bytes(data)
        entries.append({"id": image_id, "file_name": name, **(extra or {}).get(image_id, {})})
        for j, c in enumerate((captions or {}).get(image_id, [f"picture {image_id}"])):
            anns.append({"id": 100 * image_id + j, "image_id": image_id, "caption": c})
    (root / "annotations" / f"captions_{split}.json").write_text(json.dumps({"images": entries, "annotations": anns}))
    return root


def build(root, out, *extra, split="val2017"):
    rc = main(["-q", "preprocess", "coco", "--root", str(root), "--out", str(out), "--size", "16", "--workers", "0", *extra])
    if rc:
        return rc, None, None
    m = json.loads((out / split / "manifest.json").read_text())
    samples = {s["__key__"]: s for p in sorted((out / split).glob("*.tar")) for s in iter_samples(p)}
    return rc, samples, {r["key"]: r["reason"] for r in m["quarantined"]}


def files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and ".stats" not in p.parts}


def test_a_rerun_reads_images_changed_since_the_last_build(tmp_path):
    root = tree(tmp_path / "coco", {1: jpeg_bytes(40, 30, seed=1), 2: jpeg_bytes(40, 30, seed=2)})
    _, before, _ = build(root, tmp_path / "out")
    (root / "val2017" / "000000000001.jpg").write_bytes(jpeg_bytes(40, 30, seed=9))  # another picture
    (root / "val2017" / "000000000002.jpg").write_bytes(b"")  # emptied
    _, after, rejected = build(root, tmp_path / "out")
    assert rejected == {"coco-000000000002": "empty-image: 000000000002.jpg is 0 bytes".replace("000000000002.jpg", "val2017/000000000002.jpg")}
    assert after["coco-000000000001"]["jpg"] != before["coco-000000000001"]["jpg"]
    build(root, tmp_path / "fresh")
    assert files(tmp_path / "out") == files(tmp_path / "fresh")


def test_a_split_folder_that_is_a_symlink_is_read(tmp_path):
    real = tree(tmp_path / "elsewhere", {1: jpeg_bytes(40, 30), 2: jpeg_bytes(30, 40)})
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "captions_val2017.json").write_bytes((real / "annotations" / "captions_val2017.json").read_bytes())
    (root / "val2017").symlink_to(real / "val2017")
    _, samples, rejected = build(root, tmp_path / "out")
    assert sorted(samples) == ["coco-000000000001", "coco-000000000002"] and rejected == {}


@pytest.mark.parametrize("make, reason", [
    (lambda p: p.mkdir(), "unreadable-image: val2017/000000000002.jpg is a folder"),
    (lambda p: os.mkfifo(p), "unreadable-image: val2017/000000000002.jpg is not a regular file"),  # opening it would block
    (lambda p: None, "missing-image: val2017/000000000002.jpg is listed but not there"),
])
def test_an_image_path_that_is_not_a_regular_file_is_quarantined(tmp_path, make, reason):
    root = tree(tmp_path / "coco", {1: jpeg_bytes(40, 30), 2: None})
    make(root / "val2017" / "000000000002.jpg")
    _, samples, rejected = build(root, tmp_path / "out")
    assert list(samples) == ["coco-000000000001"] and rejected == {"coco-000000000002": reason}


def test_a_file_name_the_file_system_refuses_is_quarantined(tmp_path):
    root = tree(tmp_path / "coco", {1: jpeg_bytes(40, 30), 2: None})
    doc = json.loads((root / "annotations" / "captions_val2017.json").read_text())
    doc["images"][1]["file_name"] = "x" * 300 + ".jpg"
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps(doc))
    _, samples, rejected = build(root, tmp_path / "out")
    assert list(samples) == ["coco-000000000001"] and "File name too long" in rejected["coco-000000000002"]


@pytest.mark.parametrize("bad", ["a cat \ud800", "\u200b", "\u200b \u2060 \t", "\x00"])
def test_captions_utf8_cannot_hold_or_with_nothing_visible_are_dropped_and_counted(tmp_path, bad):
    root = tree(tmp_path / "coco", {1: jpeg_bytes(40, 30), 2: jpeg_bytes(40, 30, seed=3)}, {1: [bad, "a red square"], 2: [bad]})
    _, samples, rejected = build(root, tmp_path / "out")
    meta = json.loads(samples["coco-000000000001"]["json"])
    assert meta["captions"] == ["a red square"] and meta["captions_dropped"] == 1
    assert rejected["coco-000000000002"].startswith("no-captions: no caption for image id 2") and "(1 dropped" in rejected["coco-000000000002"]


@pytest.mark.parametrize("field, value", [("license", 10**23), ("width", 10**30), ("height", 2**63)])
def test_integers_arrow_cannot_hold_are_bad_metadata(tmp_path, field, value):
    extra = {2: {"width": 40, "height": 30, "license": 1, field: value}}
    root = tree(tmp_path / "coco", {1: jpeg_bytes(40, 30), 2: jpeg_bytes(40, 30, seed=2)}, extra=extra)
    _, samples, rejected = build(root, tmp_path / "out")
    assert list(samples) == ["coco-000000000001"]
    assert rejected["coco-000000000002"].startswith(f"bad-metadata: images[1].{field} is") and "more than 18 digits" in rejected["coco-000000000002"]


def test_strict_on_a_rerun_refuses_what_the_first_build_quarantined(tmp_path, capsys):
    root = tree(tmp_path / "coco", {1: jpeg_bytes(40, 30), 2: b""})
    assert build(root, tmp_path / "out")[0] == 0
    assert build(root, tmp_path / "out", "--strict")[0] == 2
    err = capsys.readouterr().err
    assert "coco-000000000002: empty-image" in err and "kept from an earlier build without --strict" in err


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p.unlink(), p.mkdir()), "not a regular file"),
    (lambda p: (p.unlink(), os.mkfifo(p)), "not a regular file"),
    (lambda p: p.write_text("[" * 100_000 + "]" * 100_000), "nested too deeply"),
])
def test_a_captions_file_that_cannot_be_read_stops_with_one_line(tmp_path, capsys, damage, message):
    root = tree(tmp_path / "coco", {1: jpeg_bytes(40, 30)})
    damage(root / "annotations" / "captions_val2017.json")
    assert build(root, tmp_path / "out")[0] == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "captions_val2017.json" in err[0] and message in err[0]


@pytest.mark.parametrize("flags, message", [
    (["--split", "val2017,val2017"], "names a split twice"),
])
def test_wrong_flags_stop_with_one_line(tmp_path, capsys, flags, message):
    root = tree(tmp_path / "coco", {1: jpeg_bytes(40, 30)})
    assert build(root, tmp_path / "out", *flags)[0] == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("factor, message", [("inf", "--bbox-crop: needs a finite number"), ("nan", "--bbox-crop: needs a finite number"),
                                             ("1e308", "--bbox-crop takes a factor in (0, 100]"), ("0", "--bbox-crop takes a factor in (0, 100]"),
                                             ("-1", "--bbox-crop takes a factor in (0, 100]")])
def test_cub_bbox_crop_must_be_a_sane_factor(tmp_path, capsys, factor, message):
    assert main(["preprocess", "cub", "--root", str(tmp_path), "--out", str(tmp_path / "o"), "--bbox-crop", factor]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("what", ["folder", "fifo"])
def test_a_cub_caption_file_that_is_not_a_regular_file_is_quarantined(tmp_path, what):
    from fixtures_sources import make_cub

    root = make_cub(tmp_path / "cub")
    cap = root / "birds" / "text" / "001.Alpha_bird" / "Alpha_0001.txt"
    cap.unlink()
    cap.mkdir() if what == "folder" else os.mkfifo(cap)
    assert main(["-q", "preprocess", "cub", "--root", str(root), "--out", str(tmp_path / "o"), "--size", "16", "--workers", "0"]) == 0
    m = json.loads((tmp_path / "o" / "train" / "manifest.json").read_text())
    reason = {r["key"]: r["reason"] for r in m["quarantined"]}["cub-00001"]
    assert reason.startswith("unreadable-captions: caption file") and ("is a folder" if what == "folder" else "not a regular file") in reason
