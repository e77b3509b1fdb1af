"""The center regime: shorter side to N by exact area averaging, centre N×N crop stored as view 0,
views rotate (±2°) and flip that image (regimes.py, "The center regime")."""
import glob
import io
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from t2i_data.augment import augment, regime_of, views
from t2i_data.decode import ImageLimits, decode_source
from t2i_data.errors import T2IError
from t2i_data.pngio import decode_image
from t2i_data.preprocess import PreprocessConfig, preprocess
from t2i_data.regimes import Regime, ViewParams, area_resize, center_crop_box
from t2i_data.runner import DaskRunner
from t2i_data.stream import decode_and_augment
from t2i_data.tario import iter_samples
from t2i_models.cli import main

ROUNDING = 0.5 + 1e-9  # area_resize rounds a float64 average once: at most half a level from it


def area_reference(arr: np.ndarray, box, n: int) -> np.ndarray:
    """Float64 area average written another way than area_resize: a dense matrix per axis holding
    each source pixel's overlap with each output cell, (n, H) @ image @ (W, n)."""
    def weights(lo, hi, size):
        d = (hi - lo) / n
        a = lo + d * np.arange(n)[:, None]
        j = np.arange(size)[None, :]
        return np.clip(np.minimum(a + d, j + 1) - np.maximum(a, j), 0, None) / d

    a = arr.astype(np.float64)
    ay, ax = weights(box[1], box[3], a.shape[0]), weights(box[0], box[2], a.shape[1])
    rows = np.tensordot(ay, a, axes=(1, 0))  # (n, W, 3)
    return np.tensordot(rows, ax, axes=(1, 1)).transpose(0, 2, 1)  # (n, n, 3)


def column_coded(w: int, h: int) -> np.ndarray:
    """R = 3·(x // 2) mod 256, G = 3·(y // 2) mod 256, B = 40: every 2×2 block constant, so a
    2× area reduction is exact and each output pixel names the source block it came from."""
    x, y = np.meshgrid(np.arange(w), np.arange(h))
    return np.stack([(3 * (x // 2)) % 256, (3 * (y // 2)) % 256, np.full_like(x, 40)], axis=-1).astype(np.uint8)


def noise(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# --- the stored image: which pixels, and how they are averaged --------------------------------

def test_bands_show_exactly_which_columns_and_rows_are_cropped():
    """400×300 at N = 150: shorter side 300 → 150 (2×), longer 400 → 200; (200 − 150) // 2 = 25
    output columns (source 0..49) go on the left, 25 (350..399) on the right, no row is cropped."""
    arr = column_coded(400, 300)
    arr[:, :50] = (255, 0, 0)  # left band: cropped away
    arr[:, 350:] = (0, 0, 255)  # right band: cropped away
    arr[:2, 50:350, 2] = 200  # top band (rows 0-1) and bottom band (298-299): kept as output rows 0 / 149
    arr[298:, 50:350, 2] = 120
    out = np.asarray(Regime("center", 150).prepare(Image.fromarray(arr)))
    assert out.shape == (150, 150, 3)
    assert center_crop_box(400, 300, 150) == (50.0, 0.0, 350.0, 300.0)
    i = np.arange(150)
    assert np.array_equal(out[0, :, 0], (3 * (i + 25)) % 256)  # output column i ← source columns 2i + 50, 2i + 51
    assert np.array_equal(out[:, 0, 1], (3 * i) % 256)  # output row i ← source rows 2i, 2i + 1
    assert set(np.unique(out[..., 2])) == {40, 200, 120}  # no trace of the left (B = 0) or right (B = 255) band
    assert (out[0, :, 2] == 200).all() and (out[149, :, 2] == 120).all() and (out[1:149, :, 2] == 40).all()


@pytest.mark.parametrize("w,h,lost_before,lost_after", [(402, 300, 50, 52), (300, 402, 50, 52), (400, 300, 50, 50)])
def test_an_odd_remainder_puts_the_extra_pixel_right_or_bottom(w, h, lost_before, lost_after):
    """402 → 201 at N = 150 leaves 51 columns: 25 on the left (source 0..49), 26 on the right
    (source 350..401); portrait the same with rows."""
    arr = column_coded(w, h) if w > h else column_coded(h, w).transpose(1, 0, 2)[:, :, [1, 0, 2]]
    out = np.asarray(Regime("center", 150).prepare(Image.fromarray(arr)))
    axis = 0 if w > h else 1  # the channel coding the longer axis
    line = out[0, :, axis] if w > h else out[:, 0, axis]
    assert np.array_equal(line, (3 * (np.arange(150) + lost_before // 2)) % 256)
    box = center_crop_box(w, h, 150)
    lo, hi = (box[0], box[2]) if w > h else (box[1], box[3])
    assert (lo, max(w, h) - hi) == (lost_before, lost_after)


@pytest.mark.parametrize("w,h,n", [(400, 300, 64), (300, 400, 77), (640, 427, 256), (500, 169, 100), (257, 256, 256)])
def test_area_resize_is_the_float64_area_average_within_rounding(w, h, n):
    """Non-integer ratios (300 → 64 is 4.6875; 427 → 256 is 1.67) with partial pixels at every
    cell edge: each output pixel within half a level of the exact area average."""
    im = noise(w, h, seed=w + h + n)
    box = center_crop_box(w, h, n)
    out = np.asarray(Regime("center", n).prepare(im), np.float64)
    diff = np.abs(out - area_reference(np.asarray(im), box, n))
    assert out.shape == (n, n, 3) and diff.max() <= ROUNDING and diff.mean() < 0.3
    assert np.array_equal(np.asarray(area_resize(im, box, n)), out.astype(np.uint8))


def test_a_source_under_n_is_upscaled_with_lanczos_as_the_other_regimes_do():
    im = noise(50, 40, seed=3)
    out = Regime("center", 64).prepare(im)
    ref = im.resize((64, 64), Image.Resampling.LANCZOS, box=center_crop_box(50, 40, 64))
    assert out.size == (64, 64) and np.array_equal(np.asarray(out), np.asarray(ref))
    assert Regime("center", 64).prepare(noise(64, 64)).size == (64, 64)  # exactly N: the image itself
    with pytest.raises(ValueError, match="reduces only"):
        area_resize(im, (0, 0, 40, 40), 64)


def test_a_dct_scaled_decode_gives_the_full_decode_s_region():
    """decode_source decodes at 1/2 when the shorter side stays >= 8·N; the box it reports maps
    the crop to the same source region, so the stored image is within a few levels of the full
    decode's (the reduced IDCT is the only difference)."""
    src = Image.fromarray(np.kron(np.random.default_rng(5).integers(0, 256, (60, 80, 3)), np.ones((8, 8, 1))).astype(np.uint8))
    buf = io.BytesIO()
    src.save(buf, "JPEG", quality=95)
    r = Regime("center", 16)  # 480 rows: 1/2 (240 >= 128), not 1/4 (120)
    dec = decode_source(buf.getvalue(), r, ImageLimits())
    assert dec.scale == 0.5
    full = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    a = np.asarray(r.prepare(dec.image, dec.box, dec.scale), int)
    b = np.asarray(r.prepare(full), int)
    assert np.abs(a - b).mean() < 1.0


# --- views -----------------------------------------------------------------------------------

def jpeg_sample(key: str, im: Image.Image) -> dict:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95, subsampling=0)
    return {"__key__": key, "jpg": buf.getvalue(), "json": json.dumps({"captions": ["c"]}).encode()}


def test_view_zero_is_the_stored_image_and_the_others_rotate_and_flip_it():
    r = Regime("center", 48)
    sample = jpeg_sample("coco-000000000001", r.prepare(noise(160, 120, seed=1)))
    stored = decode_image(sample["jpg"])
    vs = views(sample, r, seed=0, k=6)
    assert [a.shape for _, a in vs] == [(48, 48, 3)] * 6
    assert vs[0][0] == ViewParams(0.0, 0, 0, False) and np.array_equal(vs[0][1], stored)
    params = [p for p, _ in vs[1:]]
    assert all(p.x == 0 and p.y == 0 and -2 <= p.angle <= 2 and p.angle != 0 for p in params)
    assert len({p.angle for p in params}) == 5 and {p.flip for p in params} == {True, False}
    for i in range(6):
        for j in range(i + 1, 6):
            assert not np.array_equal(vs[i][1], vs[j][1])
    again = views(sample, r, seed=0, k=6)
    assert all(p == q and np.array_equal(a, b) for (p, a), (q, b) in zip(vs, again))
    assert [p for p, _ in views(sample, r, seed=1, k=6)][1:] != params  # the seed matters
    # the prior regime's draw with center's own stream: same machinery, different numbers
    assert [Regime("prior", 48).draw(0, sample["__key__"], v, (68, 68), False).angle for v in range(1, 6)] != [p.angle for p in params]


@pytest.mark.parametrize("n", [64, 256])
def test_a_2_degree_view_has_black_corners_on_1_7_percent_of_its_pixels(n):
    """The figure in regimes.py: center keeps no margin around its N×N image."""
    r = Regime("center", n)
    white = Image.new("RGB", (n, n), (255, 255, 255))
    for flip in (False, True):
        v = np.asarray(r.apply_view(white, ViewParams(2.0, 0, 0, flip)))
        assert 0.016 < (v.max(axis=2) < 128).mean() < 0.018 and (v[n // 4 : -n // 4, n // 4 : -n // 4] == 255).all()


def test_views_do_not_depend_on_which_process_computes_them():
    r = Regime("center", 32)
    samples = [jpeg_sample(f"cub-{i:05d}", r.prepare(noise(90 + i, 70, seed=i))) for i in range(6)]
    here = [[a for _, a in views(s, r, 7, 4)] for s in samples]
    with ProcessPoolExecutor(2) as pool:  # reversed: each worker sees other samples first
        there = list(pool.map(views, samples[::-1], [r] * 6, [7] * 6, [4] * 6))[::-1]
    assert all(np.array_equal(a, b) for x, y in zip(here, there) for a, (_, b) in zip(x, y))


def test_online_epochs_draw_the_random_part_per_epoch():
    r = Regime("center", 32)
    samples = [jpeg_sample(f"s{i}", r.prepare(noise(80, 60, seed=i))) for i in range(3)]
    e0, e0b, e1 = (list(augment(samples, r, seed=0, epoch=e)) for e in (0, 0, 1))
    assert all(s["image"].shape == (32, 32, 3) for s in e0)
    assert [s["view"] for s in e0] == [s["view"] for s in e0b] and [s["view"] for s in e0] != [s["view"] for s in e1]
    assert all(s["view"]["x"] == 0 and s["view"]["y"] == 0 for s in e0 + e1)
    decode = decode_and_augment(r, 0)  # ShardStream's decode for autoencoder training
    t = decode(samples[0], 1)["image"]
    assert tuple(t.shape) == (3, 32, 32) and np.array_equal(t.numpy().transpose(1, 2, 0), e1[0]["image"])


def test_wrong_use():
    with pytest.raises(ValueError, match="scale is 1"):
        Regime("center", 64, 2)
    with pytest.raises(ValueError, match="ae, prior, center"):
        Regime("centre", 64)
    with pytest.raises(T2IError, match="does not apply to --regime center"):
        PreprocessConfig("coco", "/nonexistent", regime="center", size=64, scale=2)
    with pytest.raises(T2IError, match="ae, prior, center"):
        PreprocessConfig("coco", "/nonexistent", regime="middle", size=64)
    with pytest.raises(T2IError, match="--regime ae, prior, center"):
        regime_of({"dataset": "coco", "split": "val2017", "regime": "middle", "size": 64})
    assert regime_of({"regime": "center", "size": 64}) == Regime("center", 64)


# --- on the real JPEGs -----------------------------------------------------------------------

def real_jpegs(root: Path) -> list[str]:
    return sorted(glob.glob(str(root / "coco" / "val2017" / "*.jpg"))) + sorted(glob.glob(str(root / "cub" / "CUB_200_2011" / "images" / "*" / "*.jpg")))


@pytest.mark.parametrize("n", [256, 16])
def test_area_resize_on_real_jpegs_is_within_rounding_of_float64_area_average(realdata, n, capsys):
    """The figures of regimes.py's docstring: the stored image (decode_source at the regime's DCT
    scale, then prepare; before JPEG storage) against the float64 area average of the full
    decode. N = 256 decodes every image whole (shorter side < 8·N): rounding only; at N = 16
    most decode at 1/2, which the area average nearly hides. Pillow's BOX and LANCZOS
    (reducing_gap 3) on the same box, for the docstring's comparison at N = 256."""
    files = real_jpegs(realdata)
    if not files:
        pytest.skip(f"no COCO / CUB JPEGs in {realdata}")
    r = Regime("center", n)
    mad, worst, box_mad, lanczos_mad = [], 0.0, [], []
    for f in files:
        data = Path(f).read_bytes()
        full = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        if min(full.size) < n:
            continue
        box = center_crop_box(*full.size, n)
        ref = area_reference(np.asarray(full), box, n)
        dec = decode_source(data, r, ImageLimits())
        d = np.abs(np.asarray(r.prepare(dec.image, dec.box, dec.scale), np.float64) - ref)
        mad.append(d.mean())
        worst = max(worst, d.max())
        if n == 256:
            box_mad.append(np.abs(np.asarray(full.resize((n, n), Image.Resampling.BOX, box=box), np.float64) - ref).mean())
            lanczos_mad.append(np.abs(np.asarray(full.resize((n, n), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0),
                                                 np.float64) - ref).mean())
    with capsys.disabled():
        print(f"\ncenter-{n}: {len(mad)} JPEGs, MAD {np.mean(mad):.3f}/255 (per image {min(mad):.3f}-{max(mad):.3f}), max {worst:.2f}/255"
              + (f"; Pillow BOX {np.mean(box_mad):.3f}/255, LANCZOS {np.mean(lanczos_mad):.3f}/255" if box_mad else ""))
    if n == 256:
        assert len(mad) >= 60 and worst <= ROUNDING and np.mean(mad) < 0.26
    else:
        assert np.mean(mad) < 0.3 and worst < 3
    if box_mad:
        assert np.mean(box_mad) > 1.5 and np.mean(lanczos_mad) > 1.0  # why neither Pillow filter is used


@pytest.fixture(scope="module")
def coco_center(realdata, tmp_path_factory):
    """``t2i preprocess coco --regime center --size 64`` on the real COCO sample (33 of val2017's
    5,000 images are present; the rest are quarantined as missing), in-process."""
    root = realdata / "coco"
    if not (root / "annotations" / "captions_val2017.json").is_file():
        pytest.skip(f"no COCO captions in {root}")
    out = tmp_path_factory.mktemp("center") / "o"
    assert main(["-q", "preprocess", "coco", "--root", str(root), "--out", str(out), "--regime", "center", "--size", "64",
                 "--workers", "0"]) == 0
    return root, out


def test_cli_preprocess_coco_center_64(coco_center):
    root, out = coco_center
    m = json.loads((out / "val2017" / "manifest.json").read_bytes())
    assert (m["regime"], m["size"], m["config"]["regime"]) == ("center", 64, "center") and "scale" not in m["config"]
    assert m["totals"]["samples"] == 33
    samples = [s for p in sorted((out / "val2017").glob("*.tar")) for s in iter_samples(p)]
    assert len(samples) == 33
    for s in samples:
        meta = json.loads(s["json"])
        assert meta["regime"] == "center" and meta["size"] == [64, 64] and decode_image(s["jpg"]).shape == (64, 64, 3)
    card = (out / "val2017" / "README.md").read_text()  # the split's own card
    assert "center-64" in card and "--regime center" in card and "exact area averaging" in card
    # view 0 of every sample is its stored image; K views for encode (t2i encode --views K)
    reg = regime_of(m)
    assert reg == Regime("center", 64)
    for s in samples[:4]:
        vs = views(s, reg, m["seed"], 3)
        assert [a.shape for _, a in vs] == [(64, 64, 3)] * 3
        assert np.array_equal(vs[0][1], decode_image(s["jpg"])) and not np.array_equal(vs[1][1], vs[2][1])


def test_coco_center_bytes_equal_on_two_dask_workers_and_through_a_pipeline_table(coco_center, tmp_path):
    root, out = coco_center
    cfg = PreprocessConfig("coco", str(root), regime="center", size=64)
    with DaskRunner(workers=2) as runner:
        preprocess(cfg, tmp_path / "dask", runner)
    toml = tmp_path / "coco-64.toml"
    toml.write_text('[preprocess]\ndataset = "coco"\nregime = "center"\nsize = 64\n')
    assert main(["-q", "preprocess", "coco", "--config", str(toml), "--root", str(root), "--out", str(tmp_path / "toml"), "--workers", "0"]) == 0
    files = lambda d: {p.name: p.read_bytes() for p in sorted((d / "val2017").iterdir()) if p.is_file()}  # noqa: E731
    assert {"manifest.json", "coco-val2017-000000.tar"} <= set(files(out))
    assert files(out) == files(tmp_path / "dask") == files(tmp_path / "toml")


def test_encode_views_of_a_center_set(coco_center, tmp_path):
    """t2i encode --views 3 on the center-64 set: view 0 the identity, views 1-2 a rotation and a
    flip with no crop offset, one token grid per view."""
    import torch

    from t2i_data.runner import InProcessRunner
    from t2i_models.builders import build_autoencoder
    from t2i_models.checkpoint import save_autoencoder
    from t2i_models.encode import EncodeConfig, encode

    _, out = coco_center
    torch.manual_seed(0)
    save_autoencoder(tmp_path / "ae.pt", build_autoencoder("dvae_tiny", image_size=64, hidden=8, vocab_size=16))
    encode(tmp_path / "ae.pt", out / "val2017", tmp_path / "tok", EncodeConfig(views=3), InProcessRunner())
    m = json.loads((tmp_path / "tok" / "manifest.json").read_bytes())
    assert (m["regime"], m["size"], m["totals"]["samples"]) == ("center", 64, 33)
    grid = m["autoencoder"]["grid"]
    for s in (s for p in sorted((tmp_path / "tok").glob("*.tar")) for s in iter_samples(p)):
        vs = json.loads(s["json"])["views"]
        assert np.load(io.BytesIO(s["image_tokens.npy"])).shape == (3, grid, grid)
        assert vs[0] == {"angle": 0.0, "x": 0, "y": 0, "flip": False} and all(v["x"] == v["y"] == 0 and v["angle"] != 0 for v in vs[1:])
