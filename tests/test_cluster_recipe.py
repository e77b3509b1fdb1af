"""The README's cluster recipe, run as written on a 2-process LocalCluster (only SLURMCluster is
swapped, after dask-jobqueue renders the real job script from the recipe's arguments), and a
worker killed mid-shard: its shard is redone with the same bytes."""
from __future__ import annotations

import json
import os
import re
import signal
import sys
from functools import partial
from pathlib import Path

import cloudpickle
import pytest

from t2i_data.build import build_shard_set
from t2i_data.mdmnist import MDMNISTConfig, produce_shard
from t2i_data.preprocess import PreprocessConfig, load_records, preprocess
from t2i_data.runner import DaskRunner, InProcessRunner
from t2i_data.tario import PARTIAL_SUFFIX

dask_jobqueue = pytest.importorskip("dask_jobqueue")  # in [test] and [cluster]
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # dask workers get this module's functions by value

ROOT = Path(__file__).resolve().parents[1]
COCO = ROOT.parent / "shared" / "realdata" / "coco"
pytestmark = pytest.mark.slow


def tree_bytes(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def recipe() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- cluster-recipe -->\n```python\n(.*?)```", text, re.S)
    assert m, "README.md has no <!-- cluster-recipe --> python block"
    return m.group(1)


@pytest.mark.skipif(not COCO.is_dir(), reason="needs ../shared/realdata/coco")
def test_the_readme_recipe_builds_coco_on_a_local_cluster_with_the_in_process_bytes(tmp_path, monkeypatch):
    from dask.distributed import LocalCluster

    code = recipe()
    for needle in ('COCO = "/shared/datasets/coco2017"', 'OUT = "/shared/t2i/coco-prior-256"', 'size=256)'):
        assert needle in code, needle
    out = tmp_path / "cluster"
    code = (code.replace('COCO = "/shared/datasets/coco2017"', f"COCO = {str(COCO)!r}")
                .replace('OUT = "/shared/t2i/coco-prior-256"', f"OUT = {str(out)!r}")
                .replace("size=256)", "size=64, shard_size=1000)"))  # 5,000 records (33 images there) -> 5 shards
    made = {}
    real_slurm = dask_jobqueue.SLURMCluster

    class TwoLocalProcesses(LocalCluster):
        """What the recipe gets for SLURMCluster(...): its arguments went through dask-jobqueue first."""

        def __init__(self, **kwargs):
            real = real_slurm(**kwargs)  # the recipe's arguments, as dask-jobqueue reads them
            try:
                made["script"] = real.job_script()
            finally:
                real.close()
            super().__init__(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)

        def scale(self, n=0, jobs=None, **kw):
            if jobs is None:  # close() scales to 0 workers
                return super().scale(n, **kw)
            made["jobs"] = jobs  # SLURM jobs; the 2 local workers are already up

    monkeypatch.setattr(dask_jobqueue, "SLURMCluster", TwoLocalProcesses)
    exec(compile(code, "README.md cluster recipe", "exec"), {"__name__": "__main__"})

    script = made["script"]
    for line in ("#SBATCH -p cpu", "#SBATCH -A myproject", "#SBATCH --cpus-per-task=16", "#SBATCH -t 04:00:00",
                 "source /shared/envs/t2i/bin/activate", "--nthreads 1", "--nworkers 16", "--nanny",
                 """export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON='{"MALLOC_TRIM_THRESHOLD_": None}'"""):
        assert line in script, line
    assert made["jobs"] == 4
    cfg = PreprocessConfig("coco", str(COCO), regime="prior", size=64, shard_size=1000)
    preprocess(cfg, tmp_path / "inproc", InProcessRunner(), load_records(cfg))
    got, want = tree_bytes(out), tree_bytes(tmp_path / "inproc")
    assert sorted(got) == sorted(want) and len([k for k in got if k.endswith(".tar")]) == 5
    assert got == want


def _dies_once(cfg: MDMNISTConfig, marker: str, index: int):
    """produce_shard, except that the first attempt at shard 1 SIGKILLs its worker after writing
    3 samples into the shard's .partial (a node lost mid-shard)."""
    for n, sample in enumerate(produce_shard(cfg, "train", index)):
        if index == 1 and n == 3 and not os.path.exists(marker):
            partial_file = Path(marker).parent / "set" / f"mdmnist-train-000001.tar{PARTIAL_SUFFIX}"
            Path(marker).write_text(json.dumps({"pid": os.getpid(), "partial_exists": partial_file.is_file()}))
            os.kill(os.getpid(), signal.SIGKILL)
        yield sample


def test_a_worker_killed_mid_shard_has_its_shard_redone_with_the_same_bytes(tmp_path):
    from dask.distributed import Client, LocalCluster

    cfg = MDMNISTConfig(seed=5, train=48, test=0, shard_size=12)  # 4 shards
    identity = {"kind": "images", "dataset": "mdmnist", "split": "train", "config": cfg.identity(), "seed": cfg.seed}
    sizes = [12, 12, 12, 12]
    marker = tmp_path / "died.json"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client, DaskRunner(client=client) as runner:
        pids_before = set(client.run(os.getpid).values())
        m = build_shard_set(partial(_dies_once, cfg, str(marker)), tmp_path / "set", "mdmnist-train", sizes, identity, runner)
        pids_after = set(client.run(os.getpid).values())
    died = json.loads(marker.read_text())
    assert died["pid"] in pids_before and died["pid"] not in pids_after  # that worker was killed and replaced
    assert died["partial_exists"]  # it died with the shard's .partial open, 3 samples in
    assert not list((tmp_path / "set").glob(f"*{PARTIAL_SUFFIX}"))
    ref = build_shard_set(partial(produce_shard, cfg, "train"), tmp_path / "ref", "mdmnist-train", sizes, identity, InProcessRunner())
    assert m["totals"]["samples"] == 48 and [s["sha256"] for s in m["shards"]] == [s["sha256"] for s in ref["shards"]]
    assert tree_bytes(tmp_path / "set") == tree_bytes(tmp_path / "ref")
