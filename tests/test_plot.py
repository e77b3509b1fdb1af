"""t2i plot: one PNG per logged quantity, runs overlaid, and clear refusals of bad run folders."""
import json

import numpy as np
import pytest
from PIL import Image

from t2i_data.errors import T2IError
from t2i_models.plot import COLORS, HEIGHT, MA_WINDOW, WIDTH, moving_average, plot_runs, read_metrics, series


def write_run(folder, rows):
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(folder)


def dvae_rows(n=300, lr=1e-2):
    rng = np.random.default_rng(0)
    rows = []
    for s in range(1, n + 1):
        rows.append({"step": s, "epoch": 0, "split": "train", "loss": float(1 / s + rng.random()), "rec": 0.5, "kl": 0.1, "lr": lr if s < 200 else lr / 100,
                     "tau": 5 - s / n, "lambda": 0.01, "used": 0.5, "perplexity": 20.0, "images_per_s": 10.0})
        if s % 100 == 0:
            rows.append({"step": s, "split": "test", "mse": 0.01, "psnr": 20.0, "bce": 0.2, "codes_used": 0.6, "perplexity": 30.0, "images": 8})
    rows.append({"step": 5, "epoch": 0, "lost": 1, "lost_in_epoch": 1, "lost_shards": {"a.tar": 1}})  # LostSamples' row: plotted nowhere
    return rows


def test_one_png_per_logged_quantity_with_runs_overlaid(tmp_path):
    a = write_run(tmp_path / "a", dvae_rows())
    b = write_run(tmp_path / "b", [{"step": s, "loss": 3.0 - s / 100, "lr": 1e-3, "valid": 12} for s in range(1, 101)]
                  + [{"step": 50, "split": "test", "test_loss": 2.0}, {"step": 100, "split": "test", "test_loss": 1.5}])  # a prior
    paths = plot_runs([a, b], str(tmp_path / "plots"))
    names = ["loss", "rec", "kl", "lr", "tau", "kl_weight", "codes_used", "perplexity", "mse", "psnr", "bce"]
    assert [p.name for p in paths] == [f"{n}.png" for n in names]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(f"{n}.png" for n in names)
    for p in paths:
        with Image.open(p) as im:
            assert (im.format, im.size) == ("PNG", (WIDTH, HEIGHT))
    with Image.open(tmp_path / "plots" / "loss.png") as im:
        colors = {c for _, c in im.convert("RGB").getcolors(WIDTH * HEIGHT)}
    assert COLORS[0] in colors and COLORS[1] in colors  # both runs drawn
    with Image.open(tmp_path / "plots" / "tau.png") as im:
        colors = {c for _, c in im.convert("RGB").getcolors(WIDTH * HEIGHT)}
    assert COLORS[0] in colors and COLORS[1] not in colors  # only the dVAE logs tau
    before = [p.read_bytes() for p in paths]
    assert [p.read_bytes() for p in plot_runs([a, b], str(tmp_path / "plots"))] == before  # same rows, same bytes


def test_series_split_last_row_wins_and_moving_average():
    rows = [{"step": 1, "loss": 4.0}, {"step": 2, "split": "train", "loss": 3.0}, {"step": 2, "split": "test", "test_loss": 9.0},
            {"step": 3, "loss": float("nan")}, {"step": 2, "loss": 2.5}, {"step": 4, "loss": True}]  # step 2 again: a resumed run
    steps, values = series(rows, ("loss",), held_out=False)
    assert steps.tolist() == [1, 2] and values.tolist() == [4.0, 2.5]
    assert series(rows, ("test_loss",), held_out=True)[1].tolist() == [9.0]
    v = np.random.default_rng(1).random(250)
    ma = moving_average(np.arange(1.0, 251.0), v)  # logged every step: a window of 100 rows
    assert MA_WINDOW == 100 and ma[0] == v[0] and ma[9] == pytest.approx(v[:10].mean())
    assert np.allclose(ma[99:], np.convolve(v, np.ones(100) / 100, mode="valid"))
    every50 = moving_average(np.arange(50.0, 401.0, 50), v[:8])  # logged every 50 steps: the rows of the last 100 steps
    assert every50[0] == v[0] and np.allclose(every50[1:], (v[:7] + v[1:8]) / 2)
    assert np.allclose(moving_average(np.arange(100.0, 801.0, 100), v[:8]), v[:8], rtol=0, atol=1e-12)  # log_every 100: the raw curve


def test_bad_run_folders_are_named(tmp_path):
    good = write_run(tmp_path / "good", dvae_rows(10))
    with pytest.raises(T2IError, match="nowhere: no such folder"):
        plot_runs([good, str(tmp_path / "nowhere")], str(tmp_path / "p"))
    (tmp_path / "bare").mkdir()
    with pytest.raises(T2IError, match="bare: no metrics.jsonl"):
        plot_runs([str(tmp_path / "bare")], str(tmp_path / "p"))
    (tmp_path / "bare" / "metrics.jsonl").write_text("\n")
    with pytest.raises(T2IError, match="bare: metrics.jsonl is empty"):
        plot_runs([str(tmp_path / "bare")], str(tmp_path / "p"))
    (tmp_path / "bare" / "metrics.jsonl").write_text('{"step": 1, "loss": 2}\n{"step": 2, "loss": \n')
    with pytest.raises(T2IError, match=r"bare/metrics.jsonl, line 2: not JSON"):
        read_metrics(tmp_path / "bare")
    (tmp_path / "bare" / "metrics.jsonl").write_text('{"step": 1, "loss": 2}\n[1, 2]\n')
    with pytest.raises(T2IError, match=r"metrics.jsonl, line 2: not a metrics row"):
        read_metrics(tmp_path / "bare")
    (tmp_path / "bare" / "metrics.jsonl").write_text('{"step": 1, "images_per_s": 2}\n')
    with pytest.raises(T2IError, match="none of the plotted quantities .* found images_per_s"):
        plot_runs([str(tmp_path / "bare")], str(tmp_path / "p"))
    assert not (tmp_path / "p").exists()
    with pytest.raises(T2IError, match="at least one run"):
        plot_runs([], str(tmp_path / "p"))
