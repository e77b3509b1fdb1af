"""bench/gpu_suite.py: the smoke mode (tiny models on the CPU) writes every row with numbers, and
the budget keeps one failure or one slow measurement from stopping the rest. CI has no GPU: the
CUDA figures themselves come from the GPU run."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_suite  # noqa: E402

MODELS = ["dvae_mdmnist", "dvae_cub128", "g1_mdmnist", "g2_mdmnist", "g2_cub128"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite") / "smoke.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_suite.py"), "--smoke", "--quiet", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and v >= 0


def test_smoke_run_writes_every_row_with_numbers(smoke):
    result, stdout = smoke
    assert result["smoke"] is True and result["peak_tflops_bf16_dense"] is None and result["tests"] is None
    assert result["errors"] == [] and result["skipped"] == []
    assert result["cub_tokens"] == {"text_vocab": 5000, "text_len": 64, "pad_id": 0, "image_vocab": 512, "grid": 32}
    assert [r["model"] for r in result["rows"]] == MODELS
    for r in result["rows"]:
        assert r["errors"] == [], r
        for key in ("params_m", "batch", "step_ms", "samples_per_s", "gflop_per_step", "tflops", "data_wait"):
            assert number(r[key]), (r["model"], key, r.get(key))
        assert r["peak_fraction"] is None  # no peak on a CPU
        assert 0 <= r["data_wait"] <= 1 and r["data_wait_workers"] == 1
        assert r["gflop_per_step"] > 0 and r["samples_per_s"] == pytest.approx(r["batch"] / r["step_ms"] * 1e3, rel=0.01)  # 4 significant digits, step_ms to 0.01 ms
        if r["kind"] == "autoencoder":
            assert number(r["encode_fp32_images_per_s"])
        else:
            assert number(r["tokens_per_s"]) and number(r["sample_tokens_per_s"])
            assert r["sample_batch"] == 2 and r["sdpa_kernels"] == "cpu" and isinstance(r["flash_only"], str)
    cub = result["rows"][-1]
    assert cub["overrides"]["text_len"] == 64 and cub["tokens_per_s"] == pytest.approx(cub["samples_per_s"] * (64 + 16), rel=0.01)
    # one table: a header and one line per model, then the peak and total lines
    lines = stdout.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("model "))
    assert [ln.split()[0] for ln in lines[head + 1: head + 6]] == MODELS
    assert "peak assumed: - TFLOP/s" in stdout and "wrote " in stdout


def test_peaks_from_device_names():
    assert gpu_suite.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_suite.peak_tflops("NVIDIA H200") == 989.0
    assert gpu_suite.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_suite.peak_tflops("NVIDIA H100 NVL") == 835.0
    assert gpu_suite.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_suite.peak_tflops("Tesla T4") is None


def test_budget_reports_a_failure_and_skips_what_does_not_fit():
    b = gpu_suite.Budget(100.0, verbose=False)
    assert b.run("ok", 1, lambda: {"x": 1}) == {"x": 1}
    assert b.run("bad", 1, lambda: 1 / 0) == {"error": "ZeroDivisionError: division by zero"}
    assert b.run("big", 500, lambda: {"x": 2}) == {"skipped": "~500 s needed, 100 s left"}
    assert b.errors == ["bad: ZeroDivisionError: division by zero"]
    assert b.skipped == ["big (needs ~500 s, 100 s left)"]


def test_budget_stops_a_measurement_that_runs_past_its_cap():
    b = gpu_suite.Budget(6.5, verbose=False)  # cap: what is left minus the 5 s kept for writing the results
    t = time.monotonic()
    out = b.run("slow", 0, lambda: time.sleep(30))
    assert out == {"error": "Overtime: ran past its time cap"} and time.monotonic() - t < 10


def test_a_tiny_budget_still_writes_the_table_and_json(tmp_path):
    threads = torch.get_num_threads()
    try:
        result = gpu_suite.main(["--smoke", "--quiet", "--budget-s", "0.5", "--out", str(tmp_path / "r.json")])
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["rows"] == result["rows"] and [r["model"] for r in saved["rows"]] == MODELS
    assert all("skipped" in r for r in saved["rows"]) and len(saved["skipped"]) >= 5
    assert saved["rows"][0]["data_wait"] is None
