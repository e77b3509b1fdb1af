import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from t2i_models.cli import main
from t2i_data.errors import T2IError
from t2i_data.runner import InProcessRunner
from t2i_models.checkpoint import load_autoencoder
from t2i_data.config import parse_overrides
from t2i_models.train_autoencoder import TrainConfig, train

from fixtures_sources import coco_shards


@pytest.fixture(scope="module")
def ae_images(tmp_path_factory):
    return coco_shards(tmp_path_factory)


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_run_continues_exactly_like_an_uninterrupted_one(ae_images, tmp_path, workers):
    common = dict(arch="dvae_tiny", images=str(ae_images), batch_size=1, num_workers=workers, ckpt_every=2, log_every=1, grid_every=100)
    whole = train(TrainConfig(out=str(tmp_path / "whole"), steps=8, **common))
    train(TrainConfig(out=str(tmp_path / "cut"), steps=4, **common))  # "killed" after step 4
    resumed = train(TrainConfig(out=str(tmp_path / "cut"), steps=8, **common))
    a, b = metrics(tmp_path / "whole"), metrics(tmp_path / "cut")
    assert [r["step"] for r in b] == list(range(1, 9))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert resumed["fingerprint"] == whole["fingerprint"]  # the same weights, bit for bit
    ck = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert (ck["step"], ck["train_config"]["arch"]) == (8, "dvae_tiny") and "optimizer" in ck


def test_checkpoint_feeds_encode_and_grids_show_originals_above_reconstructions(ae_images, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["-q", "train", "autoencoder", "arch=vqvae_tiny", f"images={ae_images}", f"out={out}", "steps=3", "batch_size=2",
                 "num_workers=0", "grid_every=3", "model.restart_threshold=0.5"]) == 0
    assert "trained vqvae_tiny to step 3" in capsys.readouterr().out
    model, ck = load_autoencoder(out / "last.pt")
    assert model.cfg.restart_threshold == 0.5 and ck["images_digest"] == json.loads((ae_images / "manifest.json").read_text())["digest"]
    with Image.open(out / "grid-0000003.png") as im:
        assert im.size == (2 * 32, 2 * 32)
    row = metrics(out)[-1]
    assert {"loss", "rec", "commit", "perplexity", "used", "images_per_s"} <= set(row)
    assert main(["-q", "encode", "--autoencoder", str(out / "last.pt"), "--images", str(ae_images), "--out", str(tmp_path / "tok"),
                 "--views", "2", "--workers", "0", "--check", "2"]) == 0


def test_settings_are_checked(ae_images, tmp_path, capsys):
    assert parse_overrides(["steps=5", "lr=0.01", "model.vocab=64", "arch=dvae_tiny"]) == {"steps": 5, "lr": 0.01, "model": {"vocab": 64}, "arch": "dvae_tiny"}
    assert main(["train", "autoencoder", "arch=dvae_tiny", "stepz=3", f"images={ae_images}", f"out={tmp_path}"]) == 2
    assert "unknown setting(s) stepz" in capsys.readouterr().err
    with pytest.raises(T2IError, match="ae-32 images; dvae_mdmnist takes 128x128"):
        train(TrainConfig(arch="dvae_mdmnist", images=str(ae_images), out=str(tmp_path / "x"), steps=1))
    with pytest.raises(T2IError, match="arch must be one of"):
        TrainConfig(arch="dvae_huge", images="a", out="b")


@pytest.mark.slow
def test_two_process_ddp_on_gloo(ae_images, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "t2i_models.cli", "-q", "train", "autoencoder", "arch=dvae_tiny",
           f"images={ae_images}", f"out={tmp_path / 'ddp'}", "steps=2", "batch_size=1", "num_workers=0"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    ck = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert ck["step"] == 2
    assert [r["step"] for r in metrics(tmp_path / "ddp")] == [2]  # rank 0 logs alone


def test_mdmnist_trains_and_encodes_with_the_identity_view(tmp_path, capsys):
    from t2i_data.mdmnist import MDMNISTConfig, build

    build(MDMNISTConfig(seed=0, train=8, test=0, shard_size=4), tmp_path / "md", InProcessRunner())
    out = tmp_path / "run"
    train(TrainConfig(arch="dvae_tiny", model={"image_size": 128, "downsamples": 2}, images=str(tmp_path / "md" / "train"),
                      out=str(out), steps=2, batch_size=2, num_workers=0))
    assert main(["-q", "encode", "--autoencoder", str(out / "last.pt"), "--images", str(tmp_path / "md" / "train"),
                 "--out", str(tmp_path / "tok"), "--workers", "0", "--check", "2"]) == 0
    assert "8 images x 1 views -> 32x32 tokens" in capsys.readouterr().out
    assert main(["encode", "--autoencoder", str(out / "last.pt"), "--images", str(tmp_path / "md" / "train"),
                 "--out", str(tmp_path / "tok2"), "--views", "3"]) == 2
    assert "there is one view; drop --views" in capsys.readouterr().err


@pytest.mark.parametrize("name,arch", [("mdmnist", "dvae_mdmnist"), ("cub-64", "dvae_cub64"), ("cub-128", "dvae_cub128")])
def test_shipped_pipelines_have_a_valid_training_table(name, arch):
    from pathlib import Path

    from t2i_data.config import table

    values = table(Path(__file__).resolve().parents[1] / "pipelines" / f"{name}.toml", "train_autoencoder")
    cfg = TrainConfig(**values)
    assert cfg.arch == arch and cfg.batch_size == 32


@pytest.mark.parametrize("arch", ["dvae_tiny", "vqvae_tiny"])
def test_bf16_autocast_path_runs(ae_images, tmp_path, arch):
    """The autocast code path the GPU takes, exercised on the CPU (losses stay fp32)."""
    train(TrainConfig(arch=arch, images=str(ae_images), out=str(tmp_path / "b"), steps=2, batch_size=2, num_workers=0, precision="bf16"))
    row = metrics(tmp_path / "b")[-1]
    assert row["step"] == 2 and row["loss"] == row["loss"]  # finite, not NaN


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_gpu_with_bf16_and_channels_last(ae_images, tmp_path):
    result = train(TrainConfig(arch="dvae_tiny", images=str(ae_images), out=str(tmp_path / "g"), steps=4, batch_size=2, num_workers=1))
    assert result["step"] == 4
    model, _ = load_autoencoder(tmp_path / "g" / "last.pt")
    assert next(model.parameters()).device.type == "cpu"  # checkpoints load on machines without a GPU


def test_resume_at_a_batch_that_is_not_a_multiple_of_the_workers_is_exact(ae_images, tmp_path, caplog):
    import logging

    common = dict(arch="dvae_tiny", images=str(ae_images), batch_size=1, num_workers=2, ckpt_every=100, log_every=1, grid_every=100)
    whole = train(TrainConfig(out=str(tmp_path / "whole"), steps=5, **common))
    train(TrainConfig(out=str(tmp_path / "cut"), steps=3, **common))  # checkpoint at batch 3 of the epoch, 2 workers
    with caplog.at_level(logging.WARNING):
        resumed = train(TrainConfig(out=str(tmp_path / "cut"), steps=5, **common))
    assert "other schedule settings: steps 3 → 5" in caplog.text
    assert [r["loss"] for r in metrics(tmp_path / "whole")] == [r["loss"] for r in metrics(tmp_path / "cut")]
    assert resumed["fingerprint"] == whole["fingerprint"]
    with pytest.raises(T2IError, match=r"stopped at batch 1 of epoch 1; this run changes the stream plan: shuffle_buffer 256 → 8"):
        train(TrainConfig(out=str(tmp_path / "cut"), steps=6, shuffle_buffer=8, **common))


def test_unreadable_images_are_counted_in_metrics_and_stop_above_max_lost(ae_images, tmp_path):
    shutil.copytree(ae_images, tmp_path / "img")
    first = sorted((tmp_path / "img").glob("*.tar"))[0]
    n = json.loads((tmp_path / "img" / "manifest.json").read_text())["shards"][0]["samples"]
    first.unlink()  # n of the 4 images
    common = dict(arch="dvae_tiny", images=str(tmp_path / "img"), batch_size=1, num_workers=0, log_every=1, grid_every=100)
    with pytest.raises(T2IError, match=rf"{n} of epoch 0's 4 samples could not be read \({first.name}: {n}\), more than max_lost"):
        train(TrainConfig(out=str(tmp_path / "stop"), steps=4, **common))
    train(TrainConfig(out=str(tmp_path / "go"), steps=4, max_lost=0.5, **common))
    rows = metrics(tmp_path / "go")
    assert sum(r.get("lost", 0) for r in rows) == n and all(r["lost_shards"] == {first.name: r["lost"]} for r in rows if "lost" in r)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]


def test_epochs_multistep_grad_clip_and_heldout_rows(ae_images, tmp_path):
    """4 images, batch 2: 2 steps per epoch, so epochs=3 is 6 steps; the rate halves at epochs 1
    and 2; every train row carries lr, τ and the KL weight and the norm before clipping; held-out
    rows at steps 3 and 6 (the end, not twice), the last equal to evaluating the final checkpoint."""
    from t2i_models.eval_autoencoder import heldout_metrics

    out = tmp_path / "e"
    res = train(TrainConfig(arch="dvae_tiny", images=str(ae_images), out=str(out), epochs=3, batch_size=2, num_workers=0, lr=0.01,
                            lr_schedule="multistep", milestones=[1, 2], lr_gamma=0.5, grad_clip=0.5, eval_images=str(ae_images),
                            eval_every=3, eval_n=3, log_every=1, grid_every=100))
    assert (res["step"], res["epoch"]) == (6, 3)
    rows = metrics(out)
    train_rows = [r for r in rows if r.get("split") == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6] and [r["epoch"] for r in train_rows] == [0, 0, 1, 1, 2, 2]
    assert [r["lr"] for r in train_rows] == [0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025]
    assert all({"tau", "lambda", "grad_norm", "loss"} <= set(r) and r["grad_norm"] > 0 for r in train_rows)
    test_rows = [r for r in rows if r.get("split") == "test"]
    assert [(r["step"], r["images"]) for r in test_rows] == [(3, 3), (6, 3)]
    model, _ = load_autoencoder(out / "last.pt")
    again = heldout_metrics(model, ae_images, n=3)
    assert all(test_rows[-1][k] == pytest.approx(again[k], rel=1e-6, abs=1e-9) for k in ("mse", "psnr", "bce", "codes_used", "perplexity"))


def test_a_run_whose_final_evaluation_failed_writes_the_held_out_row_when_rerun_and_only_once(ae_images, tmp_path, monkeypatch,
                                                                                             caplog):
    """The last checkpoint is saved before the final held-out evaluation; when that evaluation fails
    (a store gone, out of memory), the rerun resumes at the last step, trains nothing, and still
    writes the held-out row, equal to evaluating the final checkpoint. A further rerun adds none."""
    from t2i_models import eval_autoencoder

    out = tmp_path / "f"
    cfg = TrainConfig(arch="dvae_tiny", images=str(ae_images), out=str(out), steps=4, batch_size=2, num_workers=0,
                      eval_images=str(ae_images), eval_n=3, log_every=1, grid_every=100)
    real = eval_autoencoder.heldout_metrics

    def store_gone(*a, **kw):
        raise T2IError("the held-out store is unreachable")

    monkeypatch.setattr(eval_autoencoder, "heldout_metrics", store_gone)
    with pytest.raises(T2IError, match="unreachable"):
        train(cfg)
    assert [r["step"] for r in metrics(out) if r.get("split") == "test"] == []
    monkeypatch.setattr(eval_autoencoder, "heldout_metrics", real)
    with caplog.at_level("WARNING", logger="t2i_models.train_autoencoder"):
        assert train(cfg)["step"] == 4
    assert any("grid-last.png: not drawn" in m and "resumed at the last step (4)" in m for m in caplog.messages)
    test_rows = [r for r in metrics(out) if r.get("split") == "test"]
    assert [(r["step"], r["images"]) for r in test_rows] == [(4, 3)]
    model, _ = load_autoencoder(out / "last.pt")
    again = real(model, ae_images, n=3)
    assert all(test_rows[0][k] == pytest.approx(again[k], rel=1e-6, abs=1e-9) for k in ("mse", "psnr", "bce"))
    train(cfg)
    assert [r["step"] for r in metrics(out) if r.get("split") == "test"] == [4]


def test_codebook_lr_puts_the_loss_codebook_in_its_own_group(ae_images, tmp_path):
    common = dict(images=str(ae_images), batch_size=2, num_workers=0, log_every=1, grid_every=100, lr=1e-3)
    out = tmp_path / "vq"
    train(TrainConfig(arch="vqvae_tiny", out=str(out), steps=2, codebook_lr=0.05, model={"codebook": "loss"}, **common))
    ck = torch.load(out / "last.pt", weights_only=True)
    groups = ck["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [1e-3, 0.05] and len(groups[1]["params"]) == 1  # the (V, D) codewords alone
    assert [(r["lr"], r["codebook_lr"]) for r in metrics(out)] == [(1e-3, 0.05)] * 2
    with pytest.raises(T2IError, match="was trained with codebook_lr=0.05; codebook_lr=0.0 changes the optimizer.s parameter groups: resume with codebook_lr=0.05"):
        train(TrainConfig(arch="vqvae_tiny", out=str(out), steps=4, model={"codebook": "loss"}, **common))
    for arch, model in [("dvae_tiny", {}), ("vqvae_tiny", {"codebook": "ema"})]:
        with pytest.raises(T2IError, match=f"codebook_lr=0.05: {arch} has no codebook trained by the loss"):
            train(TrainConfig(arch=arch, out=str(tmp_path / arch), steps=1, codebook_lr=0.05, model=model, **common))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.compile takes minutes on a 2-core CPU (inductor's C++ build); "
                    "the compiled path is checked on a GPU")
def test_compiled_autoencoder_training_on_gpu(ae_images, tmp_path):
    """compile = true: the training forward goes through torch.compile (the dVAE's step and Gumbel
    generator arguments included); TF32 and the fused optimizer are on; checkpoints keep plain names."""
    res = train(TrainConfig(arch="dvae_tiny", images=str(ae_images), out=str(tmp_path / "c"), steps=3, batch_size=2, num_workers=1,
                            compile=True, optimizer="adamw", grad_clip=1.0))
    assert res["step"] == 3
    ck = torch.load(tmp_path / "c" / "last.pt", weights_only=True)
    assert not any(k.startswith("_orig_mod") for k in ck["state_dict"]) and ck["optimizer"]["param_groups"][0]["fused"]
    assert [r["step"] for r in metrics(tmp_path / "c")] == [3] and metrics(tmp_path / "c")[0]["loss"] == metrics(tmp_path / "c")[0]["loss"]
