"""Runs you can watch (t2i_models/tracking.py): every trainer with ``tracker = "tensorboard"`` writes
event files whose scalars are the rows of its ``metrics.jsonl`` (tag ``<split>/<key>``, the row's
step, the value as float32) and whose images are the PNGs it writes, pixel for pixel; the default
writes none; wandb goes through a stand-in module; a tracker asked for and not installed stops the
run with one line naming the package."""
from __future__ import annotations

import dataclasses
import io
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from t2i_data.errors import T2IError  # noqa: E402
from t2i_data.preprocess import PreprocessConfig, preprocess  # noqa: E402
from t2i_data.runner import InProcessRunner  # noqa: E402
from t2i_models import tracking  # noqa: E402
from t2i_models.cli import main  # noqa: E402
from t2i_models.train_autoencoder import TrainConfig, train  # noqa: E402
from t2i_models.train_clip import ClipTrainConfig, train_clip  # noqa: E402
from t2i_models.train_common import append_metrics  # noqa: E402
from t2i_models.train_cvae import CVAETrainConfig, train_cvae  # noqa: E402
from t2i_models.train_prior import PriorTrainConfig, train_prior  # noqa: E402

from fixtures_sources import coco_shards  # noqa: E402


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def events(out: Path) -> EventAccumulator:
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def expected_scalars(rows: list[dict]) -> dict[tuple[str, int], np.float32]:
    """Written out here, not with tracking.row_scalars: every int / float of a row but step and
    split, as <split>/<key> at the row's step (the rows of these runs hold no nested dicts)."""
    want = {}
    for r in rows:
        for k, v in r.items():
            if k not in ("step", "split") and isinstance(v, (int, float)) and not isinstance(v, bool):
                want[(f"{r['split']}/{k}", r["step"])] = np.float32(v)
    return want


def check_scalars_equal_metrics(out: Path) -> EventAccumulator:
    """The event files' scalars are exactly metrics.jsonl's: the same (tag, step) pairs, once each,
    the same values (float32, TensorBoard's type); the learning rate among them."""
    acc = events(out)
    got, seen = {}, []
    for tag in acc.Tags()["scalars"]:
        for e in acc.Scalars(tag):
            got[(tag, e.step)] = np.float32(e.value)
            seen.append((tag, e.step))
    assert len(seen) == len(set(seen))  # no step of a tag twice
    want = expected_scalars(rows_of(out))
    assert sorted(got) == sorted(want)
    assert all(got[k] == want[k] for k in want), [(k, got[k], want[k]) for k in want if got[k] != want[k]]
    assert ("train/lr", rows_of(out)[0]["step"]) in got
    return acc


def image_pixels(acc: EventAccumulator, tag: str) -> list[tuple[int, np.ndarray]]:
    return [(e.step, np.asarray(Image.open(io.BytesIO(e.encoded_image_string)).convert("RGB"))) for e in acc.Images(tag)]


def png_pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def ae_images(tmp_path_factory):
    return coco_shards(tmp_path_factory)


def ae_cfg(ae_images, out, **kw) -> TrainConfig:
    base = dict(arch="dvae_tiny", images=str(ae_images), out=str(out), steps=4, batch_size=2, num_workers=0, log_every=1, grid_every=2)
    return TrainConfig(**{**base, **kw})


def test_autoencoder_scalars_lr_heldout_rows_and_grids_reach_tensorboard(ae_images, tmp_path):
    out = tmp_path / "ae"
    train(ae_cfg(ae_images, out, eval_images=str(ae_images), eval_every=2, eval_n=2, tracker="tensorboard"))
    acc = check_scalars_equal_metrics(out)
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "test/psnr", "test/mse"} <= tags
    assert [r["step"] for r in rows_of(out) if r["split"] == "test"] == [2, 4]
    grids = image_pixels(acc, "train/reconstructions")  # grid-0000002, grid-0000004, grid-last: the PNGs' pixels
    assert [s for s, _ in grids] == [2, 4, 4]
    for (_, got), name in zip(grids, ("grid-0000002.png", "grid-0000004.png", "grid-last.png")):
        assert np.array_equal(got, png_pixels(out / name))
    config = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"tracker": "tensorboard"' in config and '"arch": "dvae_tiny"' in config


def test_default_run_writes_no_tensorboard_folder_and_the_setting_is_checked(ae_images, tmp_path):
    out = tmp_path / "plain"
    train(ae_cfg(ae_images, out, steps=2))
    assert not (out / "tensorboard").exists() and not (out / "wandb").exists() and rows_of(out)
    with pytest.raises(T2IError, match=r"^tracker must be one of none, tensorboard, wandb, got 'mlflow'$"):
        ae_cfg(ae_images, out, tracker="mlflow")


def prior_args(md_tokens, out, *extra):
    return ["-q", "train", "prior", "arch=g1_tiny", f"image_tokens={md_tokens / 'img'}", f"text_tokens={md_tokens / 'text'}", f"out={out}",
            "batch_size=4", "num_workers=0", "warmup=2", "lr=3e-3", "log_every=1", "ckpt_every=2", "steps=4", *extra]


def test_prior_through_the_cli_flag_with_heldout_rows_and_a_resume(md_tokens, tmp_path, capsys):
    """--tracker tensorboard on ``t2i train prior``; a run stopped at step 2 and resumed to 4 gives
    each step once, equal to metrics.jsonl; the prior writes no figures, so no images."""
    out = tmp_path / "g1"
    ev = [f"eval_image_tokens={md_tokens / 'img'}", f"eval_text_tokens={md_tokens / 'text'}", "eval_every=2", "eval_n=8"]
    assert main(prior_args(md_tokens, out, "stop_after=2", *ev, "--tracker", "tensorboard")) == 0
    assert main(prior_args(md_tokens, out, *ev, "--tracker", "tensorboard")) == 0
    acc = check_scalars_equal_metrics(out)
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("test/test_loss")] == [2, 4]
    assert [e.step for e in acc.Scalars("train/lr")] == [1, 2, 3, 4] and acc.Tags()["images"] == []
    assert torch.load(out / "last.pt", weights_only=True)["train_config"]["tracker"] == "tensorboard"


def test_a_resume_after_a_crash_hides_the_events_the_crashed_run_wrote_past_its_checkpoint(md_tokens, tmp_path):
    """A run that logged steps 3 and 4 and "crashed" before saving them (last.pt put back to its
    step-2 copy) is resumed with another lr: TensorBoard shows steps 3 and 4 once, with the resumed
    run's values (the last rows of those steps in metrics.jsonl, which keeps both)."""
    import shutil

    out = tmp_path / "crash"
    common = dict(arch="g1_tiny", image_tokens=str(md_tokens / "img"), text_tokens=str(md_tokens / "text"), out=str(out), batch_size=4,
                  num_workers=0, warmup=2, log_every=1, ckpt_every=2, steps=4, tracker="tensorboard")
    train_prior(PriorTrainConfig(lr=3e-3, stop_after=2, **common))
    shutil.copy(out / "last.pt", tmp_path / "at2.pt")
    train_prior(PriorTrainConfig(lr=3e-3, **common))
    shutil.copy(tmp_path / "at2.pt", out / "last.pt")  # the checkpoint of step 4 was never written
    train_prior(PriorTrainConfig(lr=1e-2, **common))
    rows = rows_of(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 3, 4] and rows[3]["loss"] != rows[5]["loss"] and rows[2]["lr"] != rows[4]["lr"]
    last = {r["step"]: r for r in rows}
    acc = events(out)
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(s, np.float32(last[s]["loss"])) for s in (1, 2, 3, 4)]
    assert [(e.step, e.value) for e in acc.Scalars("train/lr")] == [(s, np.float32(last[s]["lr"])) for s in (1, 2, 3, 4)]


def test_t2i_run_takes_tracker_from_the_table_and_does_not_redo_a_stage_for_it(md_tokens, tmp_path, capsys):
    """A pipeline's [train_prior] table with tracker = "tensorboard" writes the event files; turning
    the tracker off afterwards leaves the stage done (tracker is not part of a stage's identity)."""
    toml = tmp_path / "p.toml"
    toml.write_text(f"""[train_prior]
arch = "g1_tiny"
image_tokens = "{md_tokens / 'img'}"
text_tokens = "{md_tokens / 'text'}"
out = "{tmp_path / 'run'}"
steps = 2
batch_size = 4
num_workers = 0
warmup = 0
log_every = 1
tracker = "tensorboard"
""")
    assert main(["-q", "run", str(toml)]) == 0
    check_scalars_equal_metrics(tmp_path / "run")
    capsys.readouterr()
    assert main(["-q", "run", str(toml), "train_prior.tracker=none", "--dry-run"]) == 0
    assert "train_prior  done (verified)" in capsys.readouterr().out


def test_clip_scalars_reach_tensorboard(md_tokens, tmp_path):
    out = tmp_path / "clip"
    train_clip(ClipTrainConfig(arch="clip_tiny", image_tokens=str(md_tokens / "img"), text_tokens=str(md_tokens / "text"),
                               autoencoder=str(md_tokens / "ae.pt"), out=str(out), batch_size=8, num_workers=0, log_every=1, steps=3,
                               tracker="tensorboard"))
    acc = check_scalars_equal_metrics(out)
    assert {"train/loss", "train/batch_acc", "train/logit_scale", "train/lr"} <= set(acc.Tags()["scalars"])


def idx(arr: np.ndarray, magic: int) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape) + arr.astype(np.uint8).tobytes()


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    """A Fashion-MNIST layout of random 28x28 images (32 train, 16 test), stored center-28."""
    base = tmp_path_factory.mktemp("fm")
    rng = np.random.default_rng(0)
    (base / "src").mkdir()
    for split, n in (("train", 32), ("t10k", 16)):
        (base / "src" / f"{split}-images-idx3-ubyte").write_bytes(idx(rng.integers(0, 256, (n, 28, 28)), 2051))
        (base / "src" / f"{split}-labels-idx1-ubyte").write_bytes(idx(np.arange(n) % 10, 2049))
    preprocess(PreprocessConfig("fashion_mnist", str(base / "src"), regime="center", size=28, shard_size=16), base / "shards",
               InProcessRunner())
    return base / "shards"


def test_cvae_rows_and_its_figures_reach_tensorboard(fmnist, tmp_path):
    out = tmp_path / "cvae"
    r = train_cvae(CVAETrainConfig(arch="cvae_mlp_tiny", images=str(fmnist / "train"), eval_images=str(fmnist / "test"), out=str(out),
                                   steps=3, batch_size=8, num_workers=0, log_every=1, latent_n=16, tracker="tensorboard"))
    acc = check_scalars_equal_metrics(out)
    assert [e.step for e in acc.Scalars("test/kl")] == [3]  # cvae_figures' held-out row, through append_metrics
    names = sorted(Path(p).stem for p in r["figures"])
    assert names and sorted(t.split("/", 1)[1] for t in acc.Tags()["images"]) == names
    for p in r["figures"]:
        [(step, got)] = image_pixels(acc, f"figures/{Path(p).stem}")
        assert step == 3 and np.array_equal(got, png_pixels(Path(p)))


def test_regress_rows_and_its_figures_reach_tensorboard(tmp_path):
    reg = pytest.importorskip("test_regress")
    pytest.importorskip("transformers")
    d = _regress_data(reg, tmp_path)
    out = tmp_path / "mlp"
    assert main(reg.args(d, out, "steps=3", "eval_every=2", "grid_n=2", "pairs_n=8", "--tracker", "tensorboard")) == 0
    acc = check_scalars_equal_metrics(out)
    assert [e.step for e in acc.Scalars("test/mse")] == [2, 3]
    report = json.loads((out / "report.json").read_text())
    assert sorted(acc.Tags()["images"]) == sorted(f"figures/{Path(p).stem}" for p in report["figures"]) == ["figures/decoded",
                                                                                                           "figures/histograms"]
    for p in report["figures"]:
        assert np.array_equal(image_pixels(acc, f"figures/{Path(p).stem}")[0][1], png_pixels(Path(p)))


def _regress_data(reg, tmp_path: Path) -> Path:
    """test_regress's module fixture ``data`` built here (a smaller COCO-like set): a tiny VQ-VAE's
    tokens and tiny-BERT last4-concat embeddings of a train and a val split."""
    import fixtures_text_encoders as fx
    from t2i_models.embed import EmbedConfig, embed
    from t2i_models.encode import EncodeConfig, encode

    root = tmp_path / "data"
    src = reg.coco_captioned(root / "coco", n_train=8, n_val=4)
    assert main(["-q", "preprocess", "coco", "--root", str(src), "--out", str(root / "img"), "--regime", "prior", "--size", "32",
                 "--workers", "0", "--shard-size", "8"]) == 0
    vq = reg.tiny_vq(root / "img" / "train2017", root / "vq.pt")
    bert = fx.tiny_bert(root / "bert")
    for split in ("train2017", "val2017"):
        encode(vq, root / "img" / split, root / "tok" / split, EncodeConfig(views=2, seed=0), InProcessRunner())
        embed(bert, root / "img" / split, root / "emb" / split, EmbedConfig(pool="last4-concat"), InProcessRunner())
    return root


@dataclasses.dataclass(frozen=True)
class _Cfg:
    out: str
    tracker: str = "tensorboard"


def test_a_nan_loss_row_reaches_tensorboard_before_the_stop_and_only_rank_0_writes(tmp_path):
    out = tmp_path / "nan"
    out.mkdir()
    with tracking.tracked(_Cfg(str(out)), rank=0):
        append_metrics(out / "metrics.jsonl", {"step": 1, "epoch": 0, "split": "train", "loss": 0.5, "lr": 1e-3})
        with pytest.raises(T2IError, match="step 2: the train loss is nan"):
            append_metrics(out / "metrics.jsonl", {"step": 2, "epoch": 0, "split": "train", "loss": float("nan"), "lr": 1e-3})
    loss = [(e.step, e.value) for e in events(out).Scalars("train/loss")]
    assert loss[0] == (1, np.float32(0.5)) and loss[1][0] == 2 and np.isnan(loss[1][1])
    other = tmp_path / "rank1"
    other.mkdir()
    with tracking.tracked(_Cfg(str(other)), rank=1) as t:  # a DDP rank other than 0: the null tracker
        append_metrics(other / "metrics.jsonl", {"step": 1, "split": "train", "loss": 0.5})
        t.log_image("x", 1, np.zeros((2, 2, 3), np.uint8))
    assert type(t) is tracking.Tracker and not (other / "tensorboard").exists()
    append_metrics(out / "metrics.jsonl", {"step": 3, "split": "train", "loss": 0.25})  # after the run: no tracker attached
    assert [e.step for e in events(out).Scalars("train/loss")] == [1, 2]


def test_a_tracker_that_is_not_installed_stops_with_one_line(ae_images, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # "import wandb" fails as when it is not installed
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    for name, extra in (("wandb", "wandb"), ("tensorboard", "tracking")):
        msg = f"tracker={name} needs {name}, which is not installed: pip install 't2i-data[{extra}]'"
        with pytest.raises(T2IError) as e:
            train(ae_cfg(ae_images, tmp_path / name, tracker=name))
        assert str(e.value) == msg
        assert not (tmp_path / name / "last.pt").exists()  # refused before any step
        assert main(["-q", "train", "autoencoder", "arch=dvae_tiny", f"images={ae_images}", f"out={tmp_path / name}", "steps=1",
                     "num_workers=0", "--tracker", name]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0]


class FakeWandb(types.ModuleType):
    """A stand-in ``wandb``: records init's arguments, every log call and finish."""

    def __init__(self, fail: str = "") -> None:
        super().__init__("wandb")
        self.inits, self.logs, self.finished, self.fail = [], [], 0, fail
        fake = self

        class Image:
            def __init__(self, data):
                self.data = np.asarray(data)

        class Run:
            def log(self, values, step=None):
                fake.logs.append((step, dict(values)))

            def finish(self):
                fake.finished += 1

        self.Image, self._run = Image, Run

    def init(self, **kw):
        if self.fail:
            raise RuntimeError(self.fail)
        self.inits.append(kw)
        return self._run()


def test_wandb_gets_the_same_rows_and_grids(ae_images, tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_PROJECT", "watch-me")
    out = tmp_path / "wb"
    train(ae_cfg(ae_images, out, eval_images=str(ae_images), eval_every=4, eval_n=2, tracker="wandb"))
    [kw] = fake.inits
    assert (kw["project"], kw["name"], kw["dir"]) == ("watch-me", "wb", str(out / "wandb"))
    assert kw["config"]["tracker"] == "wandb" and kw["config"]["steps"] == 4 and fake.finished == 1
    scalars = [(s, v) for s, v in fake.logs if not any(isinstance(x, fake.Image) for x in v.values())]
    want = {}
    for r in rows_of(out):
        want.setdefault(r["step"], []).append({f"{r['split']}/{k}": float(v) for k, v in r.items()
                                               if k not in ("step", "split") and isinstance(v, (int, float))})
    assert [(s, v) for s, vs in sorted(want.items()) for v in vs] == scalars
    images = [(s, k, v.data) for s, d in fake.logs for k, v in d.items() if isinstance(v, fake.Image)]
    assert [(s, k) for s, k, _ in images] == [(2, "train/reconstructions"), (4, "train/reconstructions"), (4, "train/reconstructions")]
    assert np.array_equal(images[-1][2], png_pixels(out / "grid-last.png"))
    assert not (out / "tensorboard").exists()


def test_wandb_init_failing_is_one_line(ae_images, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", FakeWandb(fail="api_key not configured (no-tty). call wandb.login(key=[your_api_key])\nmore"))
    with pytest.raises(T2IError, match=r"^tracker=wandb: wandb.init failed: api_key not configured \(no-tty\)\. call "
                                       r"wandb.login\(key=\[your_api_key\]\); run 'wandb login', or set WANDB_MODE=offline$"):
        train(ae_cfg(ae_images, tmp_path / "wf", steps=1, tracker="wandb"))


def test_row_scalars_and_image_arrays():
    row = {"step": 5, "epoch": 1, "split": "test", "mse": 0.5, "images": None, "name": "x", "ok": True, "levels": {"top": {"ppl": 3}},
           "keys": [1, 2]}
    assert tracking.row_scalars(row) == {"test/epoch": 1.0, "test/mse": 0.5, "test/levels/top/ppl": 3.0}
    assert tracking.row_scalars({"step": 1, "loss": 2}) == {"train/loss": 2.0}
    assert tracking.image_array(np.zeros((4, 5), np.uint8)).shape == (4, 5, 1)
    with pytest.raises(ValueError, match=r"uint8 \(H, W\[, 1\|3\|4\]\); got float32 \(4, 5, 3\)"):
        tracking.image_array(np.zeros((4, 5, 3), np.float32))


def test_a_file_where_the_tracker_writes_its_folder_stops_before_training(ae_images, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "tensorboard").write_text("mine")
    with pytest.raises(T2IError, match=r"tensorboard: a file where tracker=tensorboard writes its folder; move it away"):
        train(ae_cfg(ae_images, out, tracker="tensorboard"))
    assert not (out / "last.pt").exists() and (out / "tensorboard").read_text() == "mine"
