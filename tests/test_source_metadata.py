"""Issue 14: every field of every source is type-checked where it is read.

Each fault kind is tried with several members, on tiny inputs in the exact source format, and
the records are compared whole: key, quarantine reason, captions, captions_dropped, normalized."""
import json
import logging
import os

import pytest

from t2i_models.cli import main
from t2i_data.errors import T2IError
from t2i_data.sources.coco import load_coco
from t2i_data.sources.cub import load_cub
from t2i_data.sources.mnist import load_mnist
from t2i_data.sources.records import ImageRecord
from t2i_data.tario import iter_samples

from fixtures_metadata import (CUB_BOXES, CUB_IMAGES, CUB_LABELS, CUB_SPLIT, coco_image, make_coco_json, make_cub_meta,
                               make_mnist_idx)

COCO_META = {"image_id": int, "file": str, "license": (int, type(None)), "annotated_size": (list, type(None))}
CUB_META = {"image_id": int, "class_id": int, "class_name": str, "file": str, "bbox": (list, type(None))}


def good_coco(image_id=7, captions=("a red square",), normalized=(), dropped=0, name="a.jpg"):
    return ImageRecord(key=f"coco-{image_id:012d}", split="val2017", image=f"val2017/{name}",
                       meta={"image_id": image_id, "file": f"val2017/{name}", "license": 1, "annotated_size": [64, 48]},
                       captions=tuple(captions), captions_dropped=dropped, normalized=tuple(normalized))


def assert_meta_types(records, schema):
    for r in records:
        assert list(r.meta) == list(schema), r.key
        if r.quarantine is None:
            assert all(isinstance(r.meta[k], t) and not isinstance(r.meta[k], bool) for k, t in schema.items()), r.meta
            assert all(isinstance(c, str) and c.strip() and c != "None" for c in (r.captions or ()))


# --- COCO ------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw,note", [("7", "'7' -> 7"), (7.0, "7.0 -> 7"), ("007", "'007' -> 7")])
def test_coco_integer_id_in_another_form_is_normalised_and_recorded(tmp_path, raw, note):
    make_coco_json(tmp_path, [coco_image(raw)], [{"image_id": raw, "id": 1, "caption": "a red square"}])
    records = load_coco(tmp_path, "val2017")
    assert records == [good_coco(normalized=[f"images[0].id: {note}", f"annotations[0].image_id: {note}"])]
    assert_meta_types(records, COCO_META)


@pytest.mark.parametrize("raw,detail", [
    ([7], "images[1].id is a list"),
    ({"v": 7}, "images[1].id is a dict"),
    (True, "images[1].id is a bool (True)"),
    (-7, "images[1].id is -7, negative"),
    ("-7", "images[1].id is '-7', negative"),
    (None, "images[1].id is null"),
    (7.5, "images[1].id is 7.5, not an integer"),
    ("7a", "images[1].id is '7a', not an integer"),
    (10**12, "images[1].id is 1000000000000, more than 12 digits"),
])
def test_coco_bad_id_is_quarantined_naming_index_and_field(tmp_path, raw, detail, caplog):
    make_coco_json(tmp_path, [coco_image(3), coco_image(raw, "b.jpg")],
                   [{"image_id": 3, "id": 1, "caption": "a red square"}, {"image_id": raw, "id": 2, "caption": "lost"}])
    with caplog.at_level(logging.WARNING, logger="t2i_data.sources.coco"):
        records = load_coco(tmp_path, "val2017")
    bad = ImageRecord(key="coco-images[1]", split="val2017", image="val2017/b.jpg", quarantine=f"bad-metadata: {detail}", captions=(),
                      meta={"image_id": None, "file": "val2017/b.jpg", "license": 1, "annotated_size": [64, 48]})
    assert records == [good_coco(3), bad]
    assert_meta_types(records, COCO_META)
    assert "skipped 1 of 2 annotations: 1 malformed (first: annotations[1].image_id is" in caplog.text


def test_coco_missing_id_and_non_object_entry(tmp_path):
    make_coco_json(tmp_path, [{"file_name": "a.jpg"}, ["not", "an", "object"]], [])
    assert [(r.key, r.quarantine) for r in load_coco(tmp_path, "val2017")] == [
        ("coco-images[0]", "bad-metadata: images[0].id is missing"),
        ("coco-images[1]", "bad-metadata: images[1] is a list, not an object"),
    ]


@pytest.mark.parametrize("bad", [None, 5, 2.5, [], ["a caption in a list"], {}, "", "   ", "\n\t", False, "MISSING"])
def test_coco_non_string_or_blank_caption_is_dropped_and_counted(tmp_path, bad):
    ann = {"image_id": 7, "id": 1} if bad == "MISSING" else {"image_id": 7, "id": 1, "caption": bad}
    make_coco_json(tmp_path, [coco_image(7)], [ann, {"image_id": 7, "id": 2, "caption": "a blue square"}])
    assert load_coco(tmp_path, "val2017") == [good_coco(captions=["a blue square"], dropped=1)]


def test_coco_image_whose_every_caption_is_bad_is_no_captions(tmp_path):
    anns = [{"image_id": 7, "id": j, "caption": c} for j, c in enumerate([None, 5, "  "])]
    make_coco_json(tmp_path, [coco_image(7), coco_image(8, "b.jpg")], anns)
    assert [(r.key, r.quarantine, r.captions, r.captions_dropped) for r in load_coco(tmp_path, "val2017")] == [
        ("coco-000000000007", "no-captions: no caption for image id 7 in captions_val2017.json (3 dropped: not text or blank)", (), 3),
        ("coco-000000000008", "no-captions: no caption for image id 8 in captions_val2017.json", (), 0),
    ]


@pytest.mark.parametrize("name,detail", [
    ("../x.jpg", "images[0].file_name '../x.jpg' is not a plain relative name (empty, '.' or '..' part)"),
    ("/abs.jpg", "images[0].file_name '/abs.jpg' is not a plain relative name"),
    ("/etc/passwd", "images[0].file_name '/etc/passwd' is not a plain relative name"),
    ("a\\b.jpg", "images[0].file_name 'a\\\\b.jpg' is not a plain relative name"),
    ("sub/./a.jpg", "images[0].file_name 'sub/./a.jpg' is not a plain relative name (empty, '.' or '..' part)"),
    ("", "images[0].file_name '' is not a plain relative name"),
    (7, "images[0].file_name is int, not a string"),
    (None, "images[0].file_name is NoneType, not a string"),
])
def test_coco_file_name_must_be_plain_and_confined(tmp_path, name, detail):
    make_coco_json(tmp_path, [coco_image(7, name)], [{"image_id": 7, "id": 1, "caption": "a red square"}])
    (rec,) = load_coco(tmp_path, "val2017")
    assert (rec.key, rec.quarantine, rec.image, rec.meta["file"]) == ("coco-000000000007", f"bad-metadata: {detail}", "", None)


def test_coco_file_name_through_a_symlink_out_of_the_split_folder(tmp_path):
    make_coco_json(tmp_path, [coco_image(7, "link/a.jpg"), coco_image(8, "inside/b.jpg"), coco_image(9, "loop/c.jpg")],
                   [{"image_id": i, "id": i, "caption": "c"} for i in (7, 8, 9)])
    (tmp_path / "outside").mkdir()
    (tmp_path / "val2017" / "link").symlink_to(tmp_path / "outside")
    (tmp_path / "val2017" / "inside").symlink_to(tmp_path / "val2017")  # a link that stays inside is fine
    (tmp_path / "val2017" / "loop").symlink_to(tmp_path / "val2017" / "loop")
    first, second, third = load_coco(tmp_path, "val2017")
    assert first.quarantine.startswith("bad-metadata: images[0].file_name 'link/a.jpg' resolves to ")
    assert first.quarantine.endswith(", outside " + str((tmp_path / "val2017").resolve()))
    assert second.quarantine is None and second.image == "val2017/inside/b.jpg"
    assert third.quarantine.startswith("bad-metadata: images[2].file_name 'loop/c.jpg' cannot be resolved (")


@pytest.mark.parametrize("fields,size,license,normalized,detail", [
    ({"width": "64", "height": 48.0}, [64, 48], 1, ["images[0].width: '64' -> 64", "images[0].height: 48.0 -> 48"], None),
    ({"license": "3"}, [64, 48], 3, ["images[0].license: '3' -> 3"], None),
    ({"width": None}, None, 1, [], None),
    ({"height": "DROP"}, None, 1, [], None),
    ({"license": None}, [64, 48], None, [], None),
    ({"license": "DROP"}, [64, 48], None, [], None),
    ({"width": 0}, None, 1, [], "images[0].width is 0, less than 1"),
    ({"height": -48}, None, 1, [], "images[0].height is -48, less than 1"),
    ({"width": [64]}, None, 1, [], "images[0].width is a list"),
    ({"width": True, "license": "x"}, None, None, [], "images[0].width is a bool (True); images[0].license is 'x', not an integer"),
    ({"license": 1.5}, [64, 48], None, [], "images[0].license is 1.5, not an integer"),
])
def test_coco_sizes_and_license(tmp_path, fields, size, license, normalized, detail):
    img = coco_image(7)
    img.update({k: v for k, v in fields.items() if v != "DROP"})
    for k in [k for k, v in fields.items() if v == "DROP"]:
        del img[k]
    make_coco_json(tmp_path, [img], [{"image_id": 7, "id": 1, "caption": "a red square"}])
    (rec,) = load_coco(tmp_path, "val2017")
    assert rec.meta == {"image_id": 7, "file": "val2017/a.jpg", "license": license, "annotated_size": size}
    assert rec.normalized == tuple(normalized)
    assert rec.quarantine == (f"bad-metadata: {detail}" if detail else None)


@pytest.mark.parametrize("top,field", [
    ([{"images": [], "annotations": []}], "the top level is a list, not an object"),
    ("a string", "the top level is a str, not an object"),
    ({"images": {"0": {}}, "annotations": []}, "'images' is a dict, not a list"),
    ({"images": [], "annotations": "none"}, "'annotations' is a str, not a list"),
    ({"images": None, "annotations": []}, "'images' is a NoneType, not a list"),
    ({"annotations": []}, "not a COCO captions file: no 'images'"),
])
def test_coco_malformed_file_stops_with_one_message(tmp_path, top, field):
    make_coco_json(tmp_path, [], [], top=top)
    with pytest.raises(T2IError) as e:
        load_coco(tmp_path, "val2017")
    assert str(e.value).startswith(f"{tmp_path / 'annotations' / 'captions_val2017.json'}: {field}")


def test_coco_not_json_and_huge_integer(tmp_path):
    make_coco_json(tmp_path, [], [])
    path = tmp_path / "annotations" / "captions_val2017.json"
    path.write_text('{"images": [{"id": ' + "9" * 5000 + "}], \"annotations\": []}")
    with pytest.raises(T2IError, match="captions_val2017.json: not valid JSON"):
        load_coco(tmp_path, "val2017")


def test_coco_annotations_that_reach_no_image_are_counted_in_one_warning(tmp_path, caplog):
    anns = ["not an object", {"image_id": [7], "caption": "x"}, {"caption": "no id"}, {"image_id": 99, "caption": "x"},
            {"image_id": 99, "caption": "y"}, {"image_id": 7, "caption": "a red square"}]
    make_coco_json(tmp_path, [coco_image(7)], anns)
    with caplog.at_level(logging.WARNING, logger="t2i_data.sources.coco"):
        assert load_coco(tmp_path, "val2017") == [good_coco()]
    assert ("captions_val2017.json: skipped 5 of 6 annotations: 3 malformed (first: annotations[0] is a str, not an object), "
            "2 naming no image in 'images' (first: annotations[3] names image id 99)") in caplog.text


def test_coco_same_id_in_two_forms_is_a_duplicate_and_order_is_by_id(tmp_path):
    images = [coco_image("9", "c.jpg"), coco_image([1], "x.jpg"), coco_image(7), coco_image(9.0, "d.jpg")]
    make_coco_json(tmp_path, images, [{"image_id": i, "caption": "c"} for i in (7, 9)])
    records = load_coco(tmp_path, "val2017")
    assert [(r.key, (r.quarantine or "").split(":")[0]) for r in records] == [
        ("coco-000000000007", ""), ("coco-000000000009", "duplicate-id"), ("coco-000000000009", "duplicate-id"), ("coco-images[1]", "bad-metadata")]
    assert records[2].normalized == ("images[3].id: 9.0 -> 9",)
    assert "names 2 different files" in records[1].quarantine and "captions cannot be attributed" in records[1].quarantine


def test_coco_an_id_listed_twice_with_the_same_file_keeps_the_first(tmp_path):
    make_coco_json(tmp_path, [coco_image(9, "c.jpg"), coco_image("9", "c.jpg")], [{"image_id": 9, "caption": "c"}])
    records = load_coco(tmp_path, "val2017")
    assert [(r.key, r.quarantine) for r in records] == [("coco-000000000009", None),
                                                    ("coco-000000000009", "duplicate-id: image id 9 again in captions_val2017.json")]


def test_cli_preprocess_coco_with_a_string_id(tmp_path, capsys):
    root = make_coco_json(tmp_path / "coco", [coco_image("7")],
                          [{"image_id": "7", "id": 1, "caption": None}, {"image_id": "7", "id": 2, "caption": "a blue square"}], jpegs=True)
    out = tmp_path / "out"
    argv = ["preprocess", "coco", "--root", str(root), "--out", str(out), "--regime", "ae", "--size", "32", "--workers", "0"]
    assert main(argv) == 0, capsys.readouterr().err
    (sample,) = [s for p in sorted((out / "val2017").glob("*.tar")) for s in iter_samples(p)]
    meta = json.loads(sample["json"])
    assert sample["__key__"] == "coco-000000000007" and meta["image_id"] == 7 and meta["captions"] == ["a blue square"]
    assert meta["file"] == "val2017/a.jpg" and meta["annotated_size"] == [64, 48] and meta["license"] == 1


def test_real_coco_records_are_clean(realdata):
    path = realdata / "coco"
    if not (path / "annotations" / "captions_val2017.json").is_file():
        pytest.skip(f"no COCO captions in {path}")
    records = load_coco(path, "val2017")
    assert len(records) == 5000 and not any(r.quarantine or r.normalized or r.captions_dropped for r in records)
    assert_meta_types(records, COCO_META)


# --- CUB -------------------------------------------------------------------------------------

def cub_records(root, scheme="official"):
    return {r.key: r for recs in load_cub(root, scheme).values() for r in recs}


def test_cub_good_records_have_the_exact_meta(tmp_path):
    records = load_cub(make_cub_meta(tmp_path), "official")
    assert [r.key for r in records["train"]] == ["cub-00001", "cub-00003"] and [r.key for r in records["test"]] == ["cub-00002"]
    two = records["test"][0]
    assert two == ImageRecord(
        key="cub-00002", split="test", image="CUB_200_2011/images/001.Alpha_bird/Alpha_0002.jpg",
        meta={"image_id": 2, "class_id": 1, "class_name": "001.Alpha_bird", "file": "CUB_200_2011/images/001.Alpha_bird/Alpha_0002.jpg",
              "bbox": [3.5, 4.5, 20.0, 10.0]},
        caption_file=os.path.join(str(tmp_path / "birds" / "text"), "001.Alpha_bird/Alpha_0002.txt"), bbox=(3.5, 4.5, 20.0, 10.0))
    assert_meta_types([r for s in records.values() for r in s], CUB_META)


def with_line(lines, index, line):
    return [line if i == index else x for i, x in enumerate(lines)]


@pytest.mark.parametrize("box,detail", [
    ("nan 1 2 3", "bounding_boxes.txt line 2: box 'nan 1 2 3' is not four numbers"),
    ("1 inf 2 3", "bounding_boxes.txt line 2: box '1 inf 2 3' is not four numbers"),
    ("1_0 \u0663 50 \uff130", "bounding_boxes.txt line 2: box '1_0 \u0663 50 \uff130' is not four numbers"),  # float() reads all three
    ("0 0 1.7e308 1.7e308", "bounding_boxes.txt line 2: box [0.0, 0.0, 1.7e+308, 1.7e+308] is not finite or beyond 1e+06 pixels"),
    ("1 2 -3 4", "bounding_boxes.txt line 2: box [1.0, 2.0, -3.0, 4.0] has a width or height <= 0"),
    ("1 2 3 0", "bounding_boxes.txt line 2: box [1.0, 2.0, 3.0, 0.0] has a width or height <= 0"),
    ("1 2 3", "bounding_boxes.txt line 2: 3 values after the id, expected 4"),
    ("1 2 3 4 5", "bounding_boxes.txt line 2: 5 values after the id, expected 4"),
    ("1 2 x 4", "bounding_boxes.txt line 2: box '1 2 x 4' is not four numbers"),
])
def test_cub_bad_bounding_box_quarantines_that_image(tmp_path, box, detail):
    records = cub_records(make_cub_meta(tmp_path, boxes=with_line(CUB_BOXES, 1, f"2 {box}")))
    assert {k: r.quarantine for k, r in records.items()} == {"cub-00001": None, "cub-00002": f"bad-metadata: {detail}", "cub-00003": None}
    assert records["cub-00002"].bbox is None and records["cub-00002"].meta["bbox"] is None


def test_cub_image_without_a_box_line_has_null_bbox(tmp_path):
    records = cub_records(make_cub_meta(tmp_path, boxes=CUB_BOXES[:2]))
    assert records["cub-00003"].quarantine is None and records["cub-00003"].meta["bbox"] is None and records["cub-00003"].bbox is None


@pytest.mark.parametrize("flag,detail", [
    ("2", "train_test_split.txt line 2: is_training is '2', not 0 or 1"),
    ("yes", "train_test_split.txt line 2: is_training is 'yes', not 0 or 1"),
    ("-1", "train_test_split.txt line 2: is_training is '-1', not 0 or 1"),
    ("0 1", "train_test_split.txt line 2: 2 values after the id, expected 1"),
])
def test_cub_bad_is_training(tmp_path, flag, detail):
    root = make_cub_meta(tmp_path, split=with_line(CUB_SPLIT, 1, f"2 {flag}"))
    assert cub_records(root)["cub-00002"].quarantine == f"bad-metadata: {detail}"
    assert cub_records(root, "attngan")["cub-00002"].quarantine is None  # the attngan split does not read it


@pytest.mark.parametrize("label,detail", [
    ("2 9", "image_class_labels.txt line 2: class '9' names no class in classes.txt"),
    ("2 x", "image_class_labels.txt line 2: class 'x' names no class in classes.txt"),
    ("2 1 2", "image_class_labels.txt line 2: 2 values after the id, expected 1"),
    (None, "image_class_labels.txt has no line for image id 2"),
])
def test_cub_class_that_names_no_class(tmp_path, label, detail):
    labels = [x for x in with_line(CUB_LABELS, 1, label) if x is not None]
    records = cub_records(make_cub_meta(tmp_path, labels=labels))
    assert {k: r.quarantine for k, r in records.items()} == {"cub-00001": None, "cub-00002": f"bad-metadata: {detail}", "cub-00003": None}
    assert records["cub-00002"].meta["class_id"] is None and records["cub-00002"].meta["class_name"] is None


def test_cub_two_lines_for_one_image_in_a_per_image_file(tmp_path):
    records = cub_records(make_cub_meta(tmp_path, boxes=CUB_BOXES + ["3 1 1 1 1"]))
    assert records["cub-00003"].quarantine == "bad-metadata: bounding_boxes.txt lines 3, 4 all give image id 3"
    assert records["cub-00001"].quarantine is None and records["cub-00002"].quarantine is None


@pytest.mark.parametrize("path,detail", [
    ("../x.jpg", "images.txt line 2: path '../x.jpg' is not a plain relative name (empty, '.' or '..' part)"),
    ("001.Alpha_bird/../../x.jpg", "images.txt line 2: path '001.Alpha_bird/../../x.jpg' is not a plain relative name (empty, '.' or '..' part)"),
    ("/etc/passwd", "images.txt line 2: path '/etc/passwd' is not a plain relative name"),
    ("a\\b.jpg", "images.txt line 2: path 'a\\\\b.jpg' is not a plain relative name"),
    ("001.Alpha_bird/Alpha 0002.jpg", "images.txt line 2: 2 values after the id, expected 1 (a path)"),
])
def test_cub_images_txt_path_must_be_plain(tmp_path, path, detail):
    rec = cub_records(make_cub_meta(tmp_path, images=with_line(CUB_IMAGES, 1, f"2 {path}")))["cub-00002"]
    assert (rec.quarantine, rec.image, rec.caption_file, rec.meta["file"]) == (f"bad-metadata: {detail}", "", None, None)


def test_cub_image_and_caption_paths_are_confined_against_symlinks(tmp_path):
    root = make_cub_meta(tmp_path / "cub", images=CUB_IMAGES + ["4 out/x.jpg"], labels=CUB_LABELS + ["4 1"], split=CUB_SPLIT + ["4 1"])
    (tmp_path / "elsewhere").mkdir()
    (root / "CUB_200_2011" / "images" / "out").symlink_to(tmp_path / "elsewhere")
    text = root / "birds" / "text" / "002.Beta_bird"
    text.rmdir()
    text.symlink_to(tmp_path / "elsewhere")
    records = cub_records(root)
    assert records["cub-00004"].quarantine.startswith("bad-metadata: images.txt line 4: path 'out/x.jpg' resolves to ")
    assert records["cub-00003"].quarantine.startswith("bad-metadata: images.txt line 3: caption file '002.Beta_bird/Beta_0003.txt' resolves to ")
    assert records["cub-00001"].quarantine is None


@pytest.mark.parametrize("line,key,detail", [
    ("123456 001.Alpha_bird/Alpha_0002.jpg", "cub-images.txt:2", "images.txt line 2: image id is 123456, more than 5 digits"),
    ("-2 001.Alpha_bird/Alpha_0002.jpg", "cub-images.txt:2", "images.txt line 2: image id is -2, negative"),
])
def test_cub_id_that_does_not_fit_the_key(tmp_path, line, key, detail, caplog):
    records = load_cub(make_cub_meta(tmp_path, images=with_line(CUB_IMAGES, 1, line)), "official")
    everything = [r for s in records.values() for r in s]
    bad = [r for r in everything if r.quarantine]
    assert [(r.key, r.quarantine) for r in bad] == [
        (key, f"bad-metadata: {detail}; image_class_labels.txt has no line for image id {line.split()[0]}")]
    assert records["test"][-1] is bad[0]  # after the ids that fit, in file order
    assert "skipped 1 lines naming no image in images.txt (first: line 2, id 2)" in caplog.text


@pytest.mark.parametrize("name,lines,message", [
    ("images.txt", ["1 001.Alpha_bird/Alpha_0001.jpg", "x 001.Alpha_bird/Alpha_0002.jpg"], "images.txt:2: expected a line starting with an integer id"),
    ("images.txt", ["1 001.Alpha_bird/Alpha_0001.jpg", "\u00b2 a.jpg"], "images.txt:2: expected a line starting with an integer id"),
    ("classes.txt", ["1 001.Alpha_bird", "2 002.Beta bird"], "classes.txt:2: expected '<class id> <name>' for class 2"),
    ("classes.txt", ["1 001.Alpha_bird", "1 002.Beta_bird"], "classes.txt:2: a second line for class 1"),
    ("bounding_boxes.txt", ["1.0 2 3 4 5"], "bounding_boxes.txt:1: expected a line starting with an integer id"),
])
def test_cub_unattributable_line_stops_naming_file_and_line(tmp_path, name, lines, message):
    kwargs = {"images.txt": "images", "classes.txt": "classes", "bounding_boxes.txt": "boxes"}[name]
    root = make_cub_meta(tmp_path, **{kwargs: lines})
    with pytest.raises(T2IError, match=message) as e:
        load_cub(root, "official")
    assert str(root / "CUB_200_2011" / name) in str(e.value)


@pytest.mark.parametrize("names,message", [
    (["001.Alpha_bird/Alpha_0001", "../../etc/passwd"], "names\\[1\\] '../../etc/passwd' is not a plain relative name"),
    (["/abs"], "names\\[0\\] '/abs' is not a plain relative name"),
    (["ok", 7], "names\\[1\\] is int, not a string"),
])
def test_attngan_pickle_names_must_be_plain(tmp_path, names, message):
    root = make_cub_meta(tmp_path, train=names)
    with pytest.raises(T2IError, match=message) as e:
        load_cub(root, "attngan")
    assert str(root / "birds" / "train" / "filenames.pickle") in str(e.value)


def test_attngan_name_in_both_pickles(tmp_path):
    root = make_cub_meta(tmp_path, test=["001.Alpha_bird/Alpha_0002", "001.Alpha_bird/Alpha_0001"])
    assert cub_records(root, "attngan")["cub-00001"].quarantine == (
        "bad-metadata: 001.Alpha_bird/Alpha_0001 is in both birds/train and birds/test filenames.pickle")


# --- MNIST -----------------------------------------------------------------------------------

@pytest.mark.parametrize("labels,message", [
    ([0, 1, 11, 3], "train-labels-idx1-ubyte.gz: label 11 at index 2 is not a digit 0-9 \\(1 such labels\\)"),
    ([255, 10, 1, 3], "train-labels-idx1-ubyte.gz: label 255 at index 0 is not a digit 0-9 \\(2 such labels\\)"),
    ([0, 1, 2], "train-images-idx3-ubyte.gz: 4 images but train-labels-idx1-ubyte.gz has 3 labels"),
    ([0, 1, 2, 3, 4], "train-images-idx3-ubyte.gz: 4 images but train-labels-idx1-ubyte.gz has 5 labels"),
])
def test_mnist_label_values_and_counts(tmp_path, labels, message):
    with pytest.raises(T2IError, match=message) as e:
        load_mnist(str(make_mnist_idx(tmp_path, train_labels=labels)))
    assert str(tmp_path) in str(e.value)


def test_mnist_empty_split_and_corrupt_gzip(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(T2IError, match="train-images-idx3-ubyte.gz: 0 images; an MNIST split needs at least one digit"):
        load_mnist(str(make_mnist_idx(tmp_path / "empty", train_labels=[], n_train_images=0)))
    folder = make_mnist_idx(tmp_path)
    raw = (folder / "t10k-images-idx3-ubyte.gz").read_bytes()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(raw[:10] + bytes(20) + raw[30:])  # zlib.error, not OSError
    with pytest.raises(T2IError, match="t10k-images-idx3-ubyte.gz: not a readable gzip file"):
        load_mnist(str(folder))
