"""CUB and COCO preprocessing on the real samples in $T2I_REALDATA (skipped when absent)."""
import json

import numpy as np
import pytest

from t2i_data.pngio import decode_image
from t2i_data.preprocess import PreprocessConfig, preprocess
from t2i_data.runner import InProcessRunner
from t2i_data.sources.cub import load_cub
from t2i_data.sources.records import clean_caption_lines
from t2i_data.tario import iter_samples


@pytest.fixture(scope="module")
def cub(realdata):
    root = realdata / "cub"
    if not (root / "CUB_200_2011" / "images.txt").is_file():
        pytest.skip(f"no CUB metadata in {root}")
    return root


@pytest.fixture(scope="module")
def coco(realdata):
    root = realdata / "coco"
    if not (root / "annotations" / "captions_val2017.json").is_file():
        pytest.skip(f"no COCO captions in {root}")
    return root


def test_official_and_attngan_split_counts(cub):
    official = load_cub(cub, "official")
    assert {s: len(r) for s, r in official.items()} == {"train": 5994, "test": 5794}
    attngan = load_cub(cub, "attngan")
    assert {s: len(r) for s, r in attngan.items()} == {"train": 8855, "test": 2933}
    for recs in (official, attngan):
        assert not {r.key for r in recs["train"]} & {r.key for r in recs["test"]}
        assert not any(r.quarantine for s in recs.values() for r in s)
    assert len({r.meta["class_id"] for r in attngan["test"]}) == 50


def test_real_cub_build(cub, tmp_path):
    m = preprocess(PreprocessConfig("cub", str(cub), regime="ae", size=64), tmp_path, InProcessRunner())
    assert (m["train"]["totals"]["samples"], m["test"]["totals"]["samples"]) == (18, 23)  # the 41 JPEGs present
    kinds = {r["reason"].split(":")[0] for s in m.values() for r in s["quarantined"]}
    assert kinds == {"missing-image", "missing-captions"}
    samples = {s["__key__"]: s for split in ("train", "test") for p in (tmp_path / split).glob("*.tar") for s in iter_samples(p)}
    meta = json.loads(samples["cub-00039"]["json"])  # Black_Footed_Albatross_0001_796111
    text = (cub / "birds" / "text" / "001.Black_footed_Albatross" / "Black_Footed_Albatross_0001_796111.txt").read_text()
    assert meta["captions"] == text.splitlines() and len(meta["captions"]) == 10
    gray = json.loads(samples["cub-00448"]["json"])  # Brewer_Blackbird_0028_2682, mode L
    assert gray["source_mode"] == "L" and decode_image(samples["cub-00448"]["jpg"]).shape[2] == 3
    assert all(min(json.loads(s["json"])["size"]) == 74 for s in samples.values())


def test_fffd_quirk_files(cub):
    data = (cub / "birds" / "text" / "003.Sooty_Albatross" / "Sooty_Albatross_0029_796357.txt").read_bytes()
    caps, fixes = clean_caption_lines(data, replace_fffd=True)
    assert len(caps) == 10 and fixes >= 1 and not any("\ufffd\ufffd" in c for c in caps)


def test_real_coco_build(coco, tmp_path):
    m = preprocess(PreprocessConfig("coco", str(coco), regime="prior", size=64), tmp_path, InProcessRunner())["val2017"]
    assert m["totals"]["samples"] == 33 and m["totals"]["quarantined"] == 4967
    assert {r["reason"].split(":")[0] for r in m["quarantined"]} == {"missing-image"}
    samples = {s["__key__"]: s for p in sorted((tmp_path / "val2017").glob("*.tar")) for s in iter_samples(p)}
    ann = json.loads((coco / "annotations" / "captions_val2017.json").read_bytes())
    expected = [a["caption"] for a in ann["annotations"] if a["image_id"] == 139]
    assert json.loads(samples["coco-000000000139"]["json"])["captions"] == expected and len(expected) == 5
    gray = samples["coco-000000431848"]
    assert json.loads(gray["json"])["source_mode"] == "L"
    px = decode_image(gray["jpg"]).astype(int)
    assert px.shape == (84, 84, 3) and np.abs(px[..., 0] - px[..., 2]).max() <= 3
    assert list(samples) == sorted(samples)
