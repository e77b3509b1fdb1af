import json
import pickle

import numpy as np
import pytest

from t2i_models.cli import main
from t2i_data.errors import T2IError
from t2i_data.preprocess import PreprocessConfig, preprocess
from t2i_data.pngio import decode_image
from t2i_data.runner import DaskRunner, InProcessRunner
from t2i_data.sources.cub import load_name_list
from t2i_data.tario import iter_samples

from fixtures_sources import COCO_CAPTIONS, CUB_BAD, captions_for, make_coco, make_cub


def samples_of(out, split):
    return [s for p in sorted((out / split).glob("*.tar")) for s in iter_samples(p)]


@pytest.fixture
def cub_root(tmp_path):
    return make_cub(tmp_path / "cub")


@pytest.fixture
def coco_root(tmp_path):
    return make_coco(tmp_path / "coco")


@pytest.mark.parametrize("regime", ["ae", "prior"])
def test_cub_every_bad_input_is_quarantined_and_every_other_sample_written(cub_root, tmp_path, regime):
    m = preprocess(PreprocessConfig("cub", str(cub_root), regime=regime, size=32, shard_size=4), tmp_path / "out", InProcessRunner())
    rejected = {r["key"]: r["reason"] for split in m.values() for r in split["quarantined"]}
    assert {k: v.split(":")[0] for k, v in rejected.items()} == CUB_BAD
    assert "images.txt line 14 (first at line 13)" in rejected["cub-00013"]
    written = {split: [s["__key__"] for s in samples_of(tmp_path / "out", split)] for split in ("train", "test")}
    assert written == {"train": ["cub-00001", "cub-00003", "cub-00013"], "test": ["cub-00002", "cub-00004"]}
    assert m["train"]["totals"]["samples"] == 3 and m["train"]["totals"]["quarantined"] == 6
    for split, keys in written.items():
        for s in samples_of(tmp_path / "out", split):
            meta = json.loads(s["json"])
            px = decode_image(s["jpg"])
            assert px.shape[2] == 3 and meta["split"] == split and meta["regime"] == regime
            assert list(px.shape[1::-1]) == meta["size"]
            assert (min(meta["size"]) == 42) if regime == "ae" else (meta["size"] == [52, 52])
            image_id = meta["image_id"]
            expected = captions_for(image_id)
            if image_id == 3:  # "\ufffd\ufffd" between words becomes a space, as in AttnGAN
                assert meta["caption_fixes"] == 10
            assert meta["captions"] == expected


def test_grayscale_and_cmyk_become_rgb(cub_root, coco_root, tmp_path):
    preprocess(PreprocessConfig("cub", str(cub_root), regime="ae", size=32, splits=("test",)), tmp_path / "c", InProcessRunner())
    gray = next(s for s in samples_of(tmp_path / "c", "test") if s["__key__"] == "cub-00002")
    px = decode_image(gray["jpg"]).astype(int)
    assert json.loads(gray["json"])["source_mode"] == "L" and np.abs(px[..., 0] - px[..., 1]).max() <= 2
    preprocess(PreprocessConfig("coco", str(coco_root), regime="prior", size=32), tmp_path / "o", InProcessRunner())
    cmyk = next(s for s in samples_of(tmp_path / "o", "val2017") if s["__key__"] == "coco-000000000285")
    assert json.loads(cmyk["json"])["source_mode"] == "CMYK"
    mean = decode_image(cmyk["jpg"]).reshape(-1, 3).mean(axis=0)
    assert mean[0] > 240 and mean[1] < 15 and mean[2] < 15  # CMYK (0, 255, 255, 0) is red


def test_strict_stops_at_the_first_bad_input(cub_root, tmp_path, capsys):
    with pytest.raises(T2IError, match=r"cub-00005: corrupt-image: .*without --strict"):
        preprocess(PreprocessConfig("cub", str(cub_root), size=32, splits=("train",), strict=True), tmp_path / "s", InProcessRunner())
    assert main(["preprocess", "cub", "--root", str(cub_root), "--out", str(tmp_path / "s2"), "--size", "32", "--strict", "--workers", "0"]) == 2
    assert "t2i: error: cub-00005: corrupt-image" in capsys.readouterr().err


def test_cli_prints_quarantine_counts_and_preview_shows_first_caption(cub_root, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["-q", "preprocess", "cub", "--root", str(cub_root), "--out", str(out), "--size", "32", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "train: 3 images in 1 shards" in printed and "6 quarantined" in printed
    assert "  quarantined unreadable-image: 1" in printed and "  quarantined duplicate-id: 1" in printed
    from t2i_data.preview import iter_previews

    (key, pixels, caption), = list(iter_previews([out / "test" / "cub-test-000000.tar"]))[:1]
    assert key == "cub-00002" and caption == captions_for(2)[0] and pixels.shape == (50, 42, 3)  # 73x87 source, shorter side to 42
    assert main(["preview", str(out / "test" / "cub-test-000000.tar"), "--out", str(tmp_path / "g.png")]) == 0


def test_coco_captions_kept_in_source_order_byte_for_byte(coco_root, tmp_path):
    m = preprocess(PreprocessConfig("coco", str(coco_root), regime="ae", size=24, shard_size=3), tmp_path / "o", InProcessRunner())["val2017"]
    assert {r["key"]: r["reason"].split(":")[0] for r in m["quarantined"]} == {
        "coco-000000000139": "duplicate-id", "coco-000000000776": "no-captions", "coco-000000000885": "missing-image"}
    samples = samples_of(tmp_path / "o", "val2017")
    assert [s["__key__"] for s in samples] == ["coco-000000000139", "coco-000000000285", "coco-000000000632", "coco-000000000724"]
    metas = {s["__key__"]: json.loads(s["json"]) for s in samples}
    assert metas["coco-000000000139"]["captions"] == COCO_CAPTIONS[139]
    assert metas["coco-000000000632"]["source_size"] == [48, 64] and metas["coco-000000000632"]["size"] == [34, 45]
    assert m["shards"][0]["first_key"] == "coco-000000000139" and m["totals"]["shards"] == 3


def test_identical_bytes_in_process_and_on_two_dask_workers(cub_root, tmp_path):
    cfg = PreprocessConfig("cub", str(cub_root), regime="prior", size=24, shard_size=2, bbox_crop=1.5)
    preprocess(cfg, tmp_path / "a", InProcessRunner())
    with DaskRunner(workers=2) as runner:
        preprocess(cfg, tmp_path / "b", runner)
    files = lambda root: {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}  # noqa: E731
    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert len([k for k in a if k.endswith(".tar")]) == 8 and a == b


def test_bbox_crop_follows_attngan(cub_root, tmp_path):
    preprocess(PreprocessConfig("cub", str(cub_root), regime="prior", size=16, splits=("train",), bbox_crop=1.5), tmp_path / "o", InProcessRunner())
    meta = json.loads(samples_of(tmp_path / "o", "train")[0]["json"])
    x, y, w, h = meta["bbox"]  # 15.0 22.5 30.0 30.0 on a 60x90 image
    r = int(max(w, h) * 0.75)
    cx, cy = int((2 * x + w) / 2), int((2 * y + h) / 2)
    assert meta["crop"] == [max(0, cx - r), max(0, cy - r), min(60, cx + r), min(90, cy + r)]


def test_attngan_split_uses_the_pickles_and_refuses_other_objects(cub_root, tmp_path):
    m = preprocess(PreprocessConfig("cub", str(cub_root), size=16, cub_split="attngan"), tmp_path / "o", InProcessRunner())
    assert m["train"]["totals"]["samples"] == 3 and m["test"]["totals"]["samples"] == 2
    evil = tmp_path / "evil.pickle"
    evil.write_bytes(pickle.dumps([np.int64(3)], protocol=0))
    with pytest.raises(T2IError, match="refusing to load numpy"):
        load_name_list(evil)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["preprocess", "cub", "--root", "/nonexistent", "--out", "o"], "not a folder; point it at the cub download"),
        (["preprocess", "coco", "--root", ".", "--out", "o"], "no annotations/captions_{train2017,val2017}.json"),
        (["preprocess", "cub", "--root", ".", "--out", "o", "--size", "0"], "--size must be a positive N, got 0"),
        (["preprocess", "coco", "--root", ".", "--out", "o", "--bbox-crop", "1.5"], "applies to cub only"),
        (["preprocess", "coco", "--root", ".", "--out", "o", "--cub-split", "attngan"], "--cub-split applies to cub only, not to coco"),
        (["preprocess", "fashion_mnist", "--root", ".", "--out", "o", "--cub-split", "attngan"], "--cub-split applies to cub only"),
        (["preprocess", "coco", "--root", ".", "--out", "o", "--captions", "x"], "--captions applies to cub only, not to coco"),
        (["preprocess", "coco", "--root", ".", "--out", "o", "--split", "test2014"], "COCO splits are train2017, val2017"),
    ],
)
def test_wrong_use_messages(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("name,dataset,size", [("cub-64", "cub", 64), ("cub-128", "cub", 128), ("coco-256", "coco", 256)])
def test_shipped_pipeline_configs(name, dataset, size, tmp_path, capsys, cub_root, coco_root):
    from pathlib import Path

    from t2i_data.config import resolve

    path = Path(__file__).resolve().parents[1] / "pipelines" / f"{name}.toml"
    cfg = resolve(PreprocessConfig, path, "preprocess", {"regime": "prior"})
    assert (cfg.dataset, cfg.size, cfg.jpeg_quality, cfg.regime) == (dataset, size, 95, "prior")
    root = cub_root if dataset == "cub" else coco_root
    assert main(["-q", "preprocess", dataset, "--config", str(path), "--root", str(root), "--out", str(tmp_path / "o"), "--workers", "0"]) == 0
    other = "coco" if dataset == "cub" else "cub"
    assert main(["preprocess", other, "--config", str(path), "--root", str(root), "--out", str(tmp_path / "x")]) == 2
    assert f"is a {dataset} pipeline; run it as 't2i preprocess {dataset}'" in capsys.readouterr().err


@pytest.mark.parametrize("regime", ["ae", "prior"])
def test_scale_2_stores_twice_the_size_views_at_n_and_keeps_scale_1_digests(cub_root, tmp_path, regime):
    """--scale 2 stores each image at twice the regime's size (regimes.Regime.stored_size); the
    stream's views are N x N either way; the manifest's config records scale only when it is 2, so a
    scale-1 set keeps the digest it had before the setting existed; the card's rebuild command
    carries --scale 2."""
    from t2i_data.augment import regime_of
    from t2i_data.card import reconstructed_command
    from t2i_data.manifest import load_manifest

    one = preprocess(PreprocessConfig("cub", str(cub_root), regime=regime, size=16, splits=("train",)), tmp_path / "one", InProcessRunner())
    two = preprocess(PreprocessConfig("cub", str(cub_root), regime=regime, size=16, splits=("train",), scale=2), tmp_path / "two",
                     InProcessRunner())
    assert "scale" not in one["train"]["config"] and two["train"]["config"]["scale"] == 2
    assert one["train"]["digest"] != two["train"]["digest"]
    a, b = samples_of(tmp_path / "one", "train"), samples_of(tmp_path / "two", "train")
    assert [s["__key__"] for s in a] == [s["__key__"] for s in b] and a
    for sa, sb in zip(a, b):
        ia, ib = decode_image(sa["jpg"]), decode_image(sb["jpg"])  # (H, W, 3) uint8
        assert ib.shape == (2 * ia.shape[0], 2 * ia.shape[1], 3)
    m = load_manifest(tmp_path / "two" / "train" / "manifest.json")
    reg = regime_of(m)
    from PIL import Image

    stored = Image.fromarray(decode_image(b[0]["jpg"]))
    assert reg.apply_view(stored, reg.draw(0, b[0]["__key__"], 0, stored.size, online=True)).size == (16, 16)
    cmd = reconstructed_command(m)
    assert cmd[cmd.index("--scale") + 1] == "2" and "--scale" not in reconstructed_command(load_manifest(tmp_path / "one" / "train" / "manifest.json"))


def test_image_member_follows_the_declaration_and_jpeg_quality_only_jpeg_datasets():
    """cub / coco store JPEG at quality 95 unless told (recorded, as before); fashion_mnist stores a
    lossless PNG, records no jpeg_quality and refuses one, the JPEG default included."""
    from PIL import Image

    from t2i_data.pngio import encoder_id
    from t2i_data.preprocess import encoder_record
    from t2i_data.schema import SCHEMAS
    from t2i_data.sources.schema_types import preprocessed_schema
    from t2i_data.tario import WRITER_ID

    for ds in ("cub", "coco"):
        cfg = PreprocessConfig(ds, "/nonexistent")
        assert (cfg.image_member, cfg.jpeg_quality, cfg.identity()["jpeg_quality"]) == ("jpg", 95, 95)
        assert list(SCHEMAS[("images", ds)])[:1] == ["jpg"]
        assert encoder_record(PreprocessConfig(ds, "/nonexistent", jpeg_quality=80)) == {
            "jpeg": f"pillow-{Image.__version__} quality=80 subsampling=4:4:4", "tar": WRITER_ID}
    cfg = PreprocessConfig("fashion_mnist", "/nonexistent", regime="center", size=28)
    assert (cfg.image_member, cfg.jpeg_quality) == ("png", None) and "jpeg_quality" not in cfg.identity()
    assert list(SCHEMAS[("images", "fashion_mnist")])[:1] == ["png"]
    assert encoder_record(cfg) == {"png": encoder_id(1), "tar": WRITER_ID}
    for q in (95, 100, 1):
        with pytest.raises(T2IError, match=r"^--jpeg-quality / jpeg_quality does not apply to fashion_mnist: its images are stored as "
                                           r"lossless PNG; drop it$"):
            PreprocessConfig("fashion_mnist", "/nonexistent", jpeg_quality=q)
    with pytest.raises(T2IError, match=r"--jpeg-quality must be in 1\.\.100, got 0"):
        PreprocessConfig("coco", "/nonexistent", jpeg_quality=0)
    with pytest.raises(ValueError, match="image must be one of jpg, png, got 'gif'"):
        preprocessed_schema({}, image="gif")
