import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from t2i_models.cli import main
from t2i_data.manifest import load_manifest
from t2i_data.mdmnist import MDMNISTConfig, build
from t2i_data.runner import DaskRunner, InProcessRunner
from t2i_data.verify import verify_manifest

SMALL = MDMNISTConfig(seed=1, train=1200, test=300, shard_size=250)


def tree_bytes(root: Path) -> dict:
    """Every shard and manifest under root, by relative path (the .stats records included)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    build(SMALL, out, InProcessRunner())
    return out


def test_identical_bytes_in_process_and_on_a_two_process_dask_cluster(reference, tmp_path):
    with DaskRunner(workers=2) as runner:
        assert runner.description == "dask local cluster, 2 worker processes"
        build(SMALL, tmp_path, runner)
    a, b = tree_bytes(reference), tree_bytes(tmp_path)
    assert list(a) == list(b) and len([k for k in a if k.endswith(".tar")]) == 7
    assert a == b


def test_identical_bytes_with_one_dask_worker(reference, tmp_path):
    with DaskRunner(workers=1) as runner:
        build(SMALL, tmp_path, runner)
    assert tree_bytes(reference) == tree_bytes(tmp_path)


def test_rerun_reuses_complete_shards_and_rebuilds_damaged_ones(reference, tmp_path):
    out = tmp_path / "set"
    shutil.copytree(reference, out)
    shard = out / "train" / "mdmnist-train-000002.tar"
    shard.write_bytes(shard.read_bytes()[:-5000])  # damaged: sha256 no longer matches the record
    manifests = build(SMALL, out, InProcessRunner())
    assert manifests["train"]["_skipped"] == 4 and manifests["test"]["_skipped"] == 2
    assert tree_bytes(out) == tree_bytes(reference)


def test_changed_config_rebuilds_and_drops_stale_shards(reference, tmp_path, caplog):
    out = tmp_path / "set"
    shutil.copytree(reference, out)
    (out / "train" / "mdmnist-train-000001.tar.partial").write_bytes(b"half a shard")  # an interrupted build's
    with caplog.at_level("INFO", logger="t2i_data.build"):
        m = build(MDMNISTConfig(seed=1, train=600, test=300, shard_size=250), out, InProcessRunner())
    assert m["train"]["_skipped"] == 0  # the config digest changed: nothing reused
    assert sorted(p.name for p in (out / "train").glob("*.tar")) == [f"mdmnist-train-00000{i}.tar" for i in range(3)]
    assert m["test"]["_skipped"] == 0
    removed = [m for m in caplog.messages if m.startswith("removing ")]
    assert f"removing {out / 'train' / 'mdmnist-train-000001.tar.partial'}, left unfinished by an earlier build" in removed
    assert f"removing {out / 'train' / 'mdmnist-train-000004.tar'}, which the current config does not produce" in removed


def test_resume_after_kill_9_ends_with_identical_bytes(reference, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "t2i_models.cli", "-q", "mdmnist", "build", "--out", str(out), "--seed", "1",
           "--train", "1200", "--test", "300", "--shard-size", "250", "--workers", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stats = out / "train" / ".stats"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(stats.glob("*.json"))) < 2:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(stats.glob("*.json")))
    assert 2 <= done < 6, "the build should have been killed mid-way through the train split"
    assert not (out / "train" / "manifest.json").exists()
    rerun = subprocess.run(cmd[:3] + cmd[4:], capture_output=True, text=True, check=True)
    reused = int(rerun.stdout.split("train: ")[1].split(" shards reused")[0].rsplit(" ", 1)[1])
    assert reused >= done
    assert tree_bytes(out) == tree_bytes(reference)
    assert not list(out.rglob("*.partial"))


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_verify_catches_one_flipped_byte(reference, tmp_path, capsys):
    out = tmp_path / "v"
    shutil.copytree(reference, out)
    assert main(["verify", str(out)]) == 0
    assert "summary: 7 ok" in capsys.readouterr().out

    json_shard = out / "train" / "mdmnist-train-000001.tar"
    data = json_shard.read_bytes()
    _flip(json_shard, data.index(b'"index":') + len(b'"index":') + 1)  # a digit of a JSON number
    pad_shard = out / "train" / "mdmnist-train-000003.tar"
    _flip(pad_shard, pad_shard.stat().st_size - 1)  # the archive's zero padding: bytes change, content does not
    png_shard = out / "test" / "mdmnist-test-000000.tar"
    _flip(png_shard, png_shard.read_bytes().index(b"IDAT") + 60)

    checks = {c.name: c for c in verify_manifest(out / "train" / "manifest.json")}
    assert checks["mdmnist-train-000001.tar"].status == "mismatch"
    assert "content_digest" in checks["mdmnist-train-000001.tar"].detail
    assert checks["mdmnist-train-000003.tar"].status == "content-ok"
    assert [c.status for n, c in sorted(checks.items())] == ["ok", "mismatch", "ok", "content-ok", "ok"]
    test_checks = verify_manifest(out / "test" / "manifest.json")
    assert test_checks[0].status in ("unreadable", "mismatch") and test_checks[1].status == "ok"

    assert main(["verify", str(out)]) == 1
    report = capsys.readouterr().out
    assert "mismatch   mdmnist-train-000001.tar" in report and "summary: 1 content-ok, 1 mismatch, 4 ok, 1 " in report
    shutil.copy(reference / "train" / "mdmnist-train-000001.tar", json_shard)
    shutil.copy(reference / "test" / "mdmnist-test-000000.tar", png_shard)
    assert main(["verify", str(out)]) == 1  # content-ok alone still fails without --accept-content
    assert main(["verify", str(out), "--accept-content"]) == 0


def test_verify_reports_missing_and_extra_shards_and_a_tampered_manifest(reference, tmp_path, capsys):
    out = tmp_path / "m"
    shutil.copytree(reference, out)
    (out / "train" / "mdmnist-train-000004.tar").unlink()
    (out / "train" / "mdmnist-train-000009.tar").write_bytes(b"")
    statuses = [c.status for c in verify_manifest(out / "train" / "manifest.json")]
    assert statuses == ["ok", "ok", "ok", "ok", "missing", "extra"]
    m = json.loads((out / "test" / "manifest.json").read_text())
    m["seed"] = 2
    (out / "test" / "manifest.json").write_text(json.dumps(m))
    assert main(["verify", str(out / "test")]) == 2
    assert "digest does not match its content" in capsys.readouterr().err


def test_manifest_records_what_the_design_asks(reference):
    m = load_manifest(reference / "train" / "manifest.json")
    assert (m["kind"], m["dataset"], m["split"], m["size"], m["seed"], m["regime"], m["aligned_to"]) == ("images", "mdmnist", "train", 128, 1, None, None)
    assert m["config"] == {"mnist": "embedded", "png_level": 1, "seed": 1, "shard_size": 250, "test": 300, "train": 1200}
    assert m["sources"]["mnist"]["kind"] == "embedded"
    assert m["totals"] == {"shards": 5, "samples": 1200, "bytes": sum(s["bytes"] for s in m["shards"]), "quarantined": 0}
    assert [(s["first_key"], s["last_key"], s["samples"]) for s in m["shards"]][-1] == ("mdmnist-train-00001000", "mdmnist-train-00001199", 200)
    text = (reference / "train" / "manifest.json").read_text()
    assert list(json.loads(text)) == sorted(json.loads(text))


def test_existing_scheduler_by_address(reference, tmp_path):
    from dask.distributed import LocalCluster

    from t2i_data.runner import make_runner

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with make_runner(scheduler=cluster.scheduler_address) as runner:
            assert runner.description == f"dask scheduler {cluster.scheduler_address}"
            build(SMALL, tmp_path, runner)
    assert tree_bytes(reference) == tree_bytes(tmp_path)
