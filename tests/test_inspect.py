"""t2i inspect: counts, quarantined inputs by reason, histograms and rates that match the shards,
printed as a table and drawn as PNG figures."""
import io
import re
import json

import numpy as np
import pytest
from PIL import Image

from fixtures_interop import build_sets, md_sets, our_samples

from fixtures_sources import CUB_BAD
from t2i_models.cli import main
from t2i_data.figures import histogram_png
from t2i_data.inspect_shards import hist_summary, inspect


@pytest.fixture(scope="module")
def sets(md_tokens, tmp_path_factory):
    return md_sets(md_tokens) | build_sets(tmp_path_factory.mktemp("inspect"))


def test_image_sets_quarantine_and_caption_histograms(sets, tmp_path):
    reports, text = inspect([sets["cub"], sets["coco"]], tmp_path / "fig")
    by = {r["set"]: r for r in reports}
    assert list(by) == ["cub/test", "cub/train", "coco/val2017"]
    for r in reports:
        m = json.loads((sets["cub"] / r["split"] / "manifest.json").read_bytes()) if r["dataset"] == "cub" else \
            json.loads((sets["coco"] / "manifest.json").read_bytes())
        assert (r["samples"], r["shards"], r["bytes"]) == (m["totals"]["samples"], m["totals"]["shards"], m["totals"]["bytes"])
        assert r["empty_shards"] == sum(1 for s in m["shards"] if s["samples"] == 0)
    quarantined = {**by["cub/train"]["quarantined"]}
    for k, n in by["cub/test"]["quarantined"].items():
        quarantined[k] = quarantined.get(k, 0) + n
    expected: dict = {}
    for reason in CUB_BAD.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert quarantined == expected
    assert by["coco/val2017"]["quarantined"] == {"duplicate-id": 1, "missing-image": 1, "no-captions": 1}
    captions = [c for s in our_samples(sets["coco"]) for c in json.loads(s["json"])["captions"]]
    words: dict = {}
    for c in captions:
        words[len(c.split())] = words.get(len(c.split()), 0) + 1
    assert by["coco/val2017"]["histograms"]["caption_words"] == words
    assert by["coco/val2017"]["histograms"]["captions_per_sample"] == {1: 3, 3: 1}
    assert by["cub/train"]["histograms"]["captions_per_sample"] == {10: 3}
    assert re.search(r"cub/train +images +3 +5 +3 ", text) and "quarantined: corrupt-image 1, duplicate-id 1, empty-image 1" in text
    saved = json.loads((tmp_path / "fig" / "inspect.json").read_bytes())
    assert saved[2]["histograms"]["caption_words"] == {str(k): v for k, v in sorted(words.items())}
    pngs = sorted(p.name for p in (tmp_path / "fig").glob("*.png"))
    assert pngs == sorted(f"{d}-{k}.png" for d in ("cub-test-images", "cub-train-images", "coco-val2017-images")
                          for k in ("caption-length", "captions-per-sample"))


def test_text_tokens_padding_and_truncation(sets):
    (r,), text = inspect([sets["coco_text"]])
    rows = [row for s in our_samples(sets["coco_text"]) for row in np.load(io.BytesIO(s["text_tokens.npy"]))]
    m = json.loads((sets["coco_text"] / "manifest.json").read_bytes())
    pad = m["tokenizer"]["pad_id"]
    lengths = [int((row != pad).sum()) for row in rows]
    assert r["histograms"]["token_length"] == {n: lengths.count(n) for n in set(lengths)}
    assert r["rates"]["padding"] == pytest.approx(sum(6 - n for n in lengths) / (6 * len(rows)))
    assert r["rates"]["truncation"] == pytest.approx(m["stats"]["truncated"] / m["stats"]["captions"])
    assert 0 < r["rates"]["padding"] < 1 and 0 < r["rates"]["truncation"] < 1  # the fixture has both
    assert f"{r['rates']['padding']:.2%} of token slots" in text


def test_image_token_code_usage_and_cli_table(sets, tmp_path, capsys):
    assert main(["-q", "inspect", str(sets["image_tokens"]), str(sets["text_tokens"]), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"mdmnist/train +image_tokens +103 +7 +0 ", out) and "codes used" in out
    saved = json.loads((tmp_path / "o" / "inspect.json").read_bytes())
    usage = np.zeros(16, np.int64)
    for s in our_samples(sets["image_tokens"]):
        usage += np.bincount(np.load(io.BytesIO(s["image_tokens.npy"])).ravel(), minlength=16)
    assert saved[0]["histograms"]["code_usage"] == usage.tolist() and usage.sum() == 103 * 32 * 32
    assert saved[1]["histograms"]["token_length"] == {"12": 103} and saved[1]["rates"]["padding"] == 0
    with Image.open(tmp_path / "o" / "mdmnist-train-image_tokens-code-usage.png") as im:
        px = np.asarray(im.convert("RGB"))
    assert im.size == (900, 460) and (px == (52, 101, 164)).all(axis=2).sum() > 500  # bars drawn
    assert (px[:, :80].min(axis=2) < 100).sum() > 50  # y-axis labels drawn left of the plot


def test_histogram_png_is_deterministic_and_bins_wide_ranges(tmp_path):
    a = histogram_png(tmp_path / "a.png", {3: 2, 4: 2, 10: 1}, "t", "x")
    b = histogram_png(tmp_path / "b.png", {10: 1, 4: 2, 3: 2}, "t", "x")
    assert a.read_bytes() == b.read_bytes()
    histogram_png(tmp_path / "c.png", list(range(8192)), "wide", "code id")
    with Image.open(tmp_path / "c.png") as im:
        assert im.size == (900, 460)
    assert hist_summary({1: 1, 2: 2, 10: 1}) == {"count": 4, "min": 1, "p50": 2, "mean": 3.75, "p95": 10, "max": 10}
