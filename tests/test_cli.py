from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from t2i_models.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_build_preview_and_verify_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "md"
    assert main(["-q", "mdmnist", "build", "--out", str(out), "--train", "30", "--test", "10", "--shard-size", "16", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "train: 30 samples in 2 shards" in printed and "test: 10 samples in 1 shards" in printed
    grid = tmp_path / "grid.png"
    assert main(["preview", str(out / "train" / "mdmnist-train-000000.tar"), str(out / "train" / "mdmnist-train-000001.tar"),
                 "--out", str(grid), "-n", "6", "--cols", "3"]) == 0
    with Image.open(grid) as im:
        px = np.asarray(im.convert("RGB"))
    assert im.size[0] == 3 * (256 + 8) + 8 and im.size[1] > 2 * 256
    # each 256-px cell holds a black MD-MNIST image (mostly black, some colour), text below it is dark on white
    cell = px[8 : 8 + 256, 8 : 8 + 256]
    assert (cell.sum(axis=2) == 0).mean() > 0.7 and cell.max() > 100
    caption_band = px[8 + 256 : 8 + 256 + 40, 8 : 8 + 256]
    assert (caption_band.min(axis=2) < 100).sum() > 50 and (caption_band == 255).all(axis=2).mean() > 0.5
    assert main(["verify", str(out)]) == 0


@pytest.mark.parametrize(
    "argv,message",
    [
        (["mdmnist", "build", "--out", "X", "--shard-size", "0"], "--shard-size must be >= 1, got 0"),
        (["mdmnist", "build", "--out", "X", "--workers", "-1"], "--workers must be 0"),
        (["mdmnist", "build", "--out", "X", "--mnist", "/nonexistent/mnist"], "not a folder; give 'embedded' or the folder"),
        (["verify", "/nonexistent/shards"], "no manifest.json in it or in its subfolders"),
        (["preview", "/nonexistent/a.tar", "--out", "g.png"], "no such shard file"),
    ],
)
def test_wrong_use_stops_with_one_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("t2i: error: ") and message in err and err.count("\n") == 1


def test_workers_and_scheduler_are_exclusive(capsys):
    with pytest.raises(SystemExit) as e:
        main(["mdmnist", "build", "--out", "X", "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_pipeline_file_then_flags_over_dataclass_defaults(tmp_path, capsys):
    from t2i_data.config import resolve
    from t2i_data.errors import T2IError
    from t2i_data.mdmnist import MDMNISTConfig
    from t2i_models.run import resolve_values, table_values

    shipped, extra = resolve_values("mdmnist", table_values(ROOT / "pipelines" / "mdmnist.toml", "mdmnist"))
    assert shipped == MDMNISTConfig() and extra == {"out": "data/mdmnist"}  # the shipped pipeline is the embedded default
    full = resolve(MDMNISTConfig, ROOT / "pipelines" / "mdmnist-full.toml", "mdmnist", {"mnist": "/data/mnist", "seed": None})
    assert (full.mnist, full.train, full.test, full.seed) == ("/data/mnist", 100_000, 10_000, 0)
    cfg = tmp_path / "p.toml"
    cfg.write_text("[mdmnist]\ntrain = 20\ntest = 4\nshard_size = 8\n")
    assert main(["-q", "mdmnist", "build", "--config", str(cfg), "--test", "9", "--out", str(tmp_path / "o"), "--workers", "0"]) == 0
    assert "train: 20 samples in 3 shards" in capsys.readouterr().out and len(list((tmp_path / "o" / "test").glob("*.tar"))) == 2
    # out and workers may come from the table too; a flag still wins
    cfg.write_text(f"[mdmnist]\ntrain = 8\ntest = 4\nshard_size = 8\nout = '{tmp_path / 't'}'\nworkers = 0\n")
    assert main(["-q", "mdmnist", "build", "--config", str(cfg)]) == 0
    assert "train: 8 samples in 1 shards" in capsys.readouterr().out and (tmp_path / "t" / "train" / "manifest.json").is_file()
    cfg.write_text("[mdmnist]\ntrain = 8\n")
    assert main(["-q", "mdmnist", "build", "--config", str(cfg), "--workers", "0"]) == 2
    assert "--out needed (or 'out' in the [mdmnist] table of --config)" in capsys.readouterr().err
    cfg.write_text("[mdmnist]\ntrian = 20\n")
    with pytest.raises(T2IError, match="unknown key\\(s\\) trian in \\[mdmnist\\]; known: mnist, png_level, seed"):
        resolve(MDMNISTConfig, cfg, "mdmnist", {})
    with pytest.raises(T2IError, match="unknown setting\\(s\\) trian; known: mnist, out, png_level, seed, shard_size, test, train, workers"):
        resolve_values("mdmnist", table_values(cfg, "mdmnist"))
    cfg.write_text("[other]\n")
    with pytest.raises(T2IError, match="no \\[mdmnist\\] table"):
        resolve(MDMNISTConfig, cfg, "mdmnist", {})
    with pytest.raises(T2IError, match="no \\[mdmnist\\] table"):
        table_values(cfg, "mdmnist")


def test_each_stage_subcommand_reads_its_table_of_a_pipeline_file(tmp_path, capsys, monkeypatch):
    """t2i run's tables work as --config for the stages' own subcommands, flags over the table:
    mdmnist build, tokenizer load, tokenize, train autoencoder, encode, eval autoencoder; then
    t2i plot draws the run's curves."""
    import json

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    try:
        p = tmp_path / "p.toml"
        p.write_text("""
[mdmnist]
out = "md"
train = 16
test = 4
shard_size = 16
workers = 0
[tokenizer]
kind = "mdmnist"
out = "tok"
[tokenize]
tokenizer = "tok"
images = "md"
out = "txt"
length = 99
workers = 0
[train_autoencoder]
arch = "dvae_mdmnist"
images = "md/train"
out = "ae"
steps = 1
batch_size = 8
num_workers = 0
model = { hidden = 16, downsamples = 4, vocab_size = 32 }
[encode]
autoencoder = "ae/last.pt"
images = "md"
out = "img"
check = 2
workers = 0
[eval_autoencoder]
autoencoder = "ae/last.pt"
images = "md/test"
out = "ev"
""")
        assert main(["-q", "mdmnist", "build", "--config", str(p)]) == 0
        assert main(["-q", "tokenizer", "load", "--config", str(p)]) == 0
        assert main(["-q", "tokenize", "--config", str(p), "--length", "12"]) == 0  # the flag wins over the table's 99
        assert json.loads((tmp_path / "txt" / "train" / "manifest.json").read_text())["tokenizer"]["length"] == 12
        assert main(["-q", "train", "autoencoder", "--config", str(p), "steps=2"]) == 0
        assert main(["-q", "encode", "--config", str(p)]) == 0
        printed = capsys.readouterr().out
        assert "train: 16 images x 1 views -> 8x8 tokens" in printed and "re-encoded 2 samples in another batch order" in printed
        assert main(["-q", "eval", "autoencoder", "--config", str(p), "--n", "4"]) == 0
        report = json.loads((tmp_path / "ev" / "report.json").read_text())
        assert {"mse", "psnr", "bce", "codes_used", "perplexity"} <= set(report) and (tmp_path / "ev" / "reconstructions.png").is_file()
        assert "wrote ev/report.json and ev/reconstructions.png" in capsys.readouterr().out
        assert main(["-q", "plot", "ae", "--out", "curves"]) == 0
        pngs, printed = sorted((tmp_path / "curves").glob("*.png")), capsys.readouterr().out
        assert pngs and all(f"wrote {q.relative_to(tmp_path)}" in printed for q in pngs), printed
        assert main(["-q", "plot", "md", "--out", "curves"]) == 2
        assert "md: no metrics.jsonl in it" in capsys.readouterr().err
    finally:
        torch.set_num_threads(threads)
