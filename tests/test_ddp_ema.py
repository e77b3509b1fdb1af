"""VQ-VAE codebooks under DDP (issue 21, item 5): 2 gloo processes on the halves of fixed global
batches end with the codebooks 1 process ends with on the whole batches.

tests/ddp_ema_worker.py is started twice (RANK 0 and 1, WORLD_SIZE 2, a free port on
127.0.0.1); this process runs the same functions with no process group, on the whole batches.
Everything is float64, and the only difference left between 1 and 2 processes is the order of
the sums (Σ over a batch against the sum of two half sums; DDP's mean of two mean gradients):
1e-16 relative where seen, so the float values are compared at 1e-10 and the counts exactly.
The comparison can fail: the worker also runs with the all-reduce of the statistics replaced by
the identity (the behaviour before it), and that run must differ from one process.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
CASES = ("book", "loss_book", "vqvae", "vqvae_loss", "vqvae2", "vqvae_study", "vqvae_study_loss")
BOOK_KEYS = ("codebook", "cluster_size", "embed_sum", "initialized")  # the codebook's state, any prefix


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(rank 0's results, rank 1's results, one process's results): ``ddp_ema_worker.run_all``'s
    dicts, the ranks' with "book_noreduce" and "vqvae_noreduce" added."""
    out = tmp_path_factory.mktemp("ddp_ema")
    port = _free_port()
    root = HERE.parent
    env = dict(os.environ, OMP_NUM_THREADS="1", WORLD_SIZE="2",
               PYTHONPATH=os.pathsep.join([str(root), str(HERE), os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, str(HERE / "ddp_ema_worker.py"), str(out), str(port)], env={**env, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    from ddp_ema_worker import run_all

    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return ranks[0], ranks[1], run_all(0, 1)


def _book_state(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.split(".")[-1] in BOOK_KEYS}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_two_gloo_processes_hold_the_codebooks_of_one_process_on_the_global_batch(runs, case):
    r0, r1, one = runs
    books = _book_state(one[case]["state"])
    levels = {k.rsplit(".", 1)[0] for k in books if "." in k}
    expect = {"vqvae2": {"codebook_top", "codebook_bottom"}, "book": set(), "loss_book": set()}.get(case, {"codebook"})
    assert levels == expect  # vqvae2: both levels; the codebook cases hold the book itself
    assert ("embed_sum" in {k.split(".")[-1] for k in books}) == ("loss" not in case)  # the EMA books have sums, the loss books none
    for k, v in one[case]["state"].items():
        assert torch.equal(r0[case]["state"][k], r1[case]["state"][k]), f"{case} {k}: the ranks differ"
        if k.split(".")[-1] in ("cluster_size", "initialized"):  # sums of whole counts: exact in float64
            assert torch.equal(r0[case]["state"][k], v), f"{case} {k}"
        else:  # the codebooks, the EMA sums and, for the models, every weight after 4 DDP steps
            torch.testing.assert_close(r0[case]["state"][k], v, rtol=1e-10, atol=1e-10, msg=f"{case} {k}")
    if "restarted" in one[case]:  # the same codes restart, at the same rows of the global batch
        assert torch.equal(r0[case]["restarted"], one[case]["restarted"]) and int(one[case]["restarted"].sum()) > 0


@pytest.mark.slow
def test_the_cases_use_codes_on_one_rank_only(runs):
    """The comparison is not empty: in the codebook cases some code is used by one rank's rows
    and not the other's in the same step (only an all-reduce brings it to the other rank)."""
    r0, r1, _ = runs
    c0, c1 = r0["book"]["counts"], r1["book"]["counts"]  # (steps, codes): each rank's n_i before the sum
    assert bool(((c0 > 0) & (c1 == 0)).any()) and bool(((c1 > 0) & (c0 == 0)).any())


@pytest.mark.slow
@pytest.mark.parametrize("case", ["book", "vqvae"])
def test_without_the_all_reduce_rank_0s_codebook_is_not_one_process_s(runs, case):
    """The worker's run with ``vqvae._sum_statistics`` made the identity (each rank's own counts
    and sums, as before the all-reduce): the counts and codewords then differ from one process."""
    r0, _, one = runs
    mine, ref = r0[f"{case}_noreduce"]["state"], one[case]["state"]
    for k in _book_state(ref):
        if k.split(".")[-1] in ("cluster_size", "embed_sum"):
            assert (mine[k] - ref[k]).abs().max() > 0.1, f"{case} {k} did not change without the all-reduce"
