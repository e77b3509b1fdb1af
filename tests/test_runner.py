"""The default runner (``AutoRunner``): in-process while a pool of more processes would not pay,
one local pool per command when it would, the same bytes either way; every split's shards in one
map; one runner per ``t2i run``; the local dask clusters' forked workers."""
from __future__ import annotations

import os
import re
import sys
import time

import cloudpickle
import pytest

from t2i_data import runner as runner_mod
from t2i_data.build import ShardJob, run_shard_jobs
from t2i_data.errors import T2IError
from t2i_data.mdmnist import MDMNISTConfig, build
from t2i_data.runner import AutoRunner, DaskRunner, InProcessRunner, make_runner

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # dask workers get this module's functions by value
SMALL = MDMNISTConfig(seed=3, train=60, test=20, shard_size=10)  # 6 + 2 shards


def tree_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and ".lock" not in p.name}


def test_make_runner_picks_auto_when_workers_are_unset():
    assert isinstance(make_runner(), AutoRunner) and make_runner().workers >= 1
    assert type(make_runner(workers=0)) is InProcessRunner
    with pytest.raises(T2IError, match="^--workers must be 0"):
        make_runner(workers=-1)


@pytest.mark.parametrize("seconds, done, left, tasks_left, workers, start", [
    (0.1, 1, 19, 19, 2, False),   # 1.9 s left: 0.95 s saved < 1 s start cost
    (0.1, 1, 21, 21, 2, True),    # 2.1 s left: 1.05 s saved > 1 s
    (1.0, 1, 100, 1, 2, False),   # one task left: nothing to share
    (1.0, 1, 100, 99, 1, False),  # one core: a cluster never pays
    (0.1, 1, 14, 14, 4, True),    # 4 workers save 3/4 of 1.4 s = 1.05 s > 1 s
    (0.0, 5, 5, 5, 2, False),     # reused shards take no time: no work ahead
])
def test_the_rule_starts_a_cluster_when_the_time_it_saves_exceeds_its_start_cost(seconds, done, left, tasks_left, workers, start):
    assert AutoRunner(workers=workers)._worth_a_cluster(seconds, done, left, tasks_left) is start


@pytest.mark.parametrize("seconds, done, weight, left, tasks_left, workers, at", [
    (0.0, 0, 5000, 100_000, 20, 2, 2 * 5000 / 100_000),  # the full MD-MNIST build: 0.1 s into its second shard (the first untimed)
    (0.9, 5000, 5000, 95_000, 19, 2, 0.0),  # had the second shard ended first (0.9 s): at once in the third
    (0.0, 0, 5000, 10_000, 2, 2, 2 * 5000 / 10_000),  # 20,000 samples: 1 s into the second shard
    (0.6, 5000, 5000, 5_000, 1, 2, None),  # ... and at its third shard only one is left: nothing to share
    (30.0, 10, 10, 10, 5, 2, 0.0),  # already due (30 s on 10 samples, 10 left): at once
    (0.0, 0, 8, 33, 1, 2, None),  # one task left after this one: nothing to share
    (0.0, 0, 8, 33, 5, 1, None),  # one core
])
def test_a_running_task_starts_the_cluster_once_the_rule_holds_on_the_time_so_far(seconds, done, weight, left, tasks_left, workers, at):
    got = AutoRunner(workers=workers)._start_at(seconds, done, weight, left, tasks_left)
    assert got == pytest.approx(at) if at is not None else got is None


def _long_second(i):
    time.sleep(2.0 if i == 1 else 0.05)
    return i, time.time()


@pytest.fixture
def pool_starts(monkeypatch):
    """The times at which AutoRunner started a LocalPool (a real one) during the test."""
    began = []

    class Noting(runner_mod.LocalPool):
        def __init__(self, n):
            began.append(time.time())
            super().__init__(n)

    monkeypatch.setattr(runner_mod, "LocalPool", Noting)
    return began


def test_a_long_task_has_the_cluster_started_while_it_runs(pool_starts):
    began = pool_starts
    with AutoRunner(workers=2, start_cost_s=1.0) as r:  # task 0 is not timed; due 2 s x 1/8 = 0.25 s into task 1 of 10
        got = r.map(_long_second, list(range(10)))
        assert r.started
    assert [g[0] for g in got] == list(range(10))
    assert len(began) == 1 and began[0] < got[1][1]  # started before that task ended


def test_the_first_tasks_one_time_cost_is_not_taken_for_the_rate(monkeypatch):
    # a first task of 1 s (imports, a source loaded) then 19 of 10 ms: 0.19 s of work left, not 19 s
    monkeypatch.setattr(runner_mod, "LocalPool", lambda n: pytest.fail("a cluster was started for 0.19 s of work"))
    with AutoRunner(workers=2, start_cost_s=1.0) as r:
        assert r.map(lambda i: time.sleep(1.0 if i == 0 else 0.01) or i, list(range(20))) == list(range(20))
        assert not r.started


def test_tasks_that_found_their_work_done_are_not_timed(monkeypatch):
    # 4 reused shards (instant) then 8 of 0.2 s: timed on the working ones, 1.2 s is left after the second: more than 1 s
    made = []

    def started(n):
        made.append(n)
        raise RuntimeError("a cluster was started")

    monkeypatch.setattr(runner_mod, "LocalPool", started)

    def task(i):
        if i >= 4:
            time.sleep(0.2)
        return {"skipped": i < 4}

    with AutoRunner(workers=2, start_cost_s=0.5) as r:
        with pytest.raises(RuntimeError, match="a cluster was started"):  # the stand-in's start, re-raised by the map
            r.map(task, list(range(12)), did_work=lambda rec: not rec["skipped"])
    assert made == [1]
    with AutoRunner(workers=2, start_cost_s=0.5) as r:  # counted as work done, the reused shards hid what was left
        r.map(task, list(range(12)))
        assert not r.started


def test_small_work_stays_in_process_and_starts_nothing(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(runner_mod, "LocalPool", lambda n: pytest.fail("a cluster was started for a small build"))
    with caplog.at_level("INFO", logger="t2i_data.runner"), AutoRunner(workers=2) as r:
        build(SMALL, tmp_path / "a", r)
        assert not r.started and r.description.startswith("in-process")
    assert [m for m in caplog.messages if m.startswith("runner:")] == [
        "runner: all 8 tasks ran in this process (a local pool would not have paid for its start: README, Workers)"]
    build(SMALL, tmp_path / "b", InProcessRunner())
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")


def test_large_work_starts_one_cluster_for_the_whole_command_with_the_same_bytes(monkeypatch, tmp_path, caplog):
    made = []

    class Counting(runner_mod.LocalPool):
        def __init__(self, n):
            made.append(n)
            super().__init__(n)

    monkeypatch.setattr(runner_mod, "LocalPool", Counting)
    with caplog.at_level("INFO", logger="t2i_data.runner"), AutoRunner(workers=2, start_cost_s=0.0) as r:
        first = build(SMALL, tmp_path / "a", r)  # any work pays: the cluster starts during the first task
        assert r.started and re.match(r"this process \+ a local pool of 1 (forked|spawned) process \(started once", r.description)
        again = build(MDMNISTConfig(seed=4, train=30, test=0, shard_size=10), tmp_path / "c", r)  # a second command step
    assert made == [1]  # started once (this process is the other of the 2), kept for the second build
    line = [m for m in caplog.messages if m.startswith("runner:")]
    assert len(line) == 1 and re.search(r"in its local pool \(a local pool of 1 (forked|spawned) process\)$", line[0])
    here, there = (int(w) for w in re.match(r"runner: (\d+) tasks ran in this process and (\d+)", line[0]).groups())
    assert here + there == 8 + 3  # every shard of both builds, counted once
    build(SMALL, tmp_path / "b", InProcessRunner())
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    assert first["train"]["totals"]["shards"] == 6 and again["train"]["totals"]["shards"] == 3
    build(MDMNISTConfig(seed=4, train=30, test=0, shard_size=10), tmp_path / "d", InProcessRunner())
    assert tree_bytes(tmp_path / "c") == tree_bytes(tmp_path / "d")


def _slow(item):
    time.sleep(0.05)
    return item * 10


def test_results_come_back_in_item_order_across_the_switch_and_a_failure_is_raised(monkeypatch):
    with AutoRunner(workers=2, start_cost_s=0.0) as r:
        assert r.map(_slow, list(range(9)), weights=[1] * 9) == [i * 10 for i in range(9)]
        with pytest.raises(ZeroDivisionError):
            r.map(lambda i: 1 // (i - 4), list(range(8)))


def _where(item):
    import torch

    time.sleep(0.1)
    return item, os.getpid(), torch.get_num_threads()


def test_once_started_this_process_and_the_cluster_share_the_items_and_this_process_uses_one_torch_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with AutoRunner(workers=2, start_cost_s=0.0) as r:
            r.map(_slow, list(range(6)))  # starts the cluster (1 process beside this one) after the second task
            got = r.map(_where, list(range(30)))
            assert torch.get_num_threads() == 2  # restored after the map
    finally:
        torch.set_num_threads(threads)
    assert [g[0] for g in got] == list(range(30))  # item order, whoever ran what
    here = [g for g in got if g[1] == os.getpid()]
    there = [g for g in got if g[1] != os.getpid()]
    assert here and there, "both this process and the cluster's worker ran items"
    assert {g[2] for g in here} == {1} and {g[2] for g in there} == {1}  # one torch thread on each side


def _fails_in_a_worker(item):
    if os.getpid() != item[1]:
        raise ZeroDivisionError(f"item {item[0]} in a worker")
    time.sleep(0.05)
    return item[0]


def _fails_here(item):
    if os.getpid() == item[1] and item[0] >= 3:
        raise ValueError(f"item {item[0]} here")
    time.sleep(0.05)
    return item[0]


def test_a_failure_on_either_side_stops_the_map_with_that_exception(capfd):
    me = os.getpid()
    with AutoRunner(workers=2, start_cost_s=0.0) as r:
        r.map(_slow, list(range(6)))
        assert r.started
        capfd.readouterr()
        with pytest.raises(ZeroDivisionError, match="in a worker"):
            r.map(_fails_in_a_worker, [(i, me) for i in range(40)])
        time.sleep(0.5)  # the worker's own log line, had it printed one, would be out by now
        err = capfd.readouterr().err
        assert "Compute Failed" not in err and "Traceback" not in err, err  # the command says it, in one line
        t = time.perf_counter()
        with pytest.raises(ValueError, match="here"):
            r.map(_fails_here, [(i, me) for i in range(400)])
        assert time.perf_counter() - t < 10  # the rest was not run: 400 items take 20 s on one side, 10 s on two
        assert r.map(_slow, [4, 5]) == [40, 50]  # the cluster still serves the next map


def test_a_cluster_that_cannot_start_is_raised_not_skipped(monkeypatch):
    def broken(n):
        raise T2IError("the local pool cannot start (test)")

    monkeypatch.setattr(runner_mod, "LocalPool", broken)
    with pytest.raises(T2IError, match="the local pool cannot start"):
        AutoRunner(workers=2, start_cost_s=0.0).map(_slow, list(range(6)))


def test_every_split_runs_in_one_map_in_item_order():
    calls = []

    class Recording(InProcessRunner):
        def map(self, fn, items, weights=None, desc="", did_work=None):
            calls.append((len(items), list(weights), desc))
            return super().map(fn, items, weights, desc, did_work)

    jobs = [ShardJob(None, lambda it: {"skipped": False, "i": it}, [1, 2, 3], [5, 5, 2], "a train"),
            ShardJob(None, lambda it: {"skipped": False, "i": it * 100}, [4], [7], "a test")]
    out = run_shard_jobs(jobs, Recording())
    assert calls == [(4, [5, 5, 2, 7], "a train + a test")]
    assert [[r["i"] for r in recs] for recs in out] == [[1, 2, 3], [400]]


def test_a_given_client_is_used_and_left_open(tmp_path):
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        with DaskRunner(client=client) as r:
            assert r.map(_slow, [1, 2]) == [10, 20]
        assert client.status == "running"  # DaskRunner closes only what it started
    with pytest.raises(T2IError, match="takes a dask.distributed.Client, got LocalCluster"):
        with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
            DaskRunner(client=cluster)
    with pytest.raises(T2IError, match="one of workers"):
        DaskRunner(workers=2, address="tcp://127.0.0.1:1")


@pytest.mark.parametrize("address", ["x", "tcp://127.0.0.1:1"])
def test_a_scheduler_that_is_malformed_or_not_there_is_one_line(address, monkeypatch):
    import dask
    import distributed  # noqa: F401  (its config defaults loaded before the override, which would otherwise drop them on exit)

    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        with pytest.raises(T2IError, match=rf"^--scheduler {address}: no dask scheduler reachable there"):
            make_runner(scheduler=address)


def test_no_summary_line_follows_a_failure(caplog):
    with caplog.at_level("INFO", logger="t2i_data.runner"), pytest.raises(ZeroDivisionError):
        with AutoRunner(workers=2) as r:
            r.map(lambda i: 1 // (i - 2), [0, 1, 2])
    assert not [m for m in caplog.messages if m.startswith("runner:")]


def test_ctrl_c_is_left_to_the_command_the_local_clusters_workers_ignore_it():
    import signal

    with DaskRunner(workers=1) as r:
        (pid,) = r._client.run(os.getpid).values()
        os.kill(pid, signal.SIGINT)  # what a terminal's Ctrl-C sends every process of its group
        time.sleep(0.5)
        assert r.map(_slow, [1, 2]) == [10, 20]
        assert list(r._client.run(os.getpid).values()) == [pid]  # the same worker, not died and replaced


def test_an_interrupted_command_says_so_in_one_line(monkeypatch, capsys):
    from t2i_models import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_mdmnist_build", interrupted)  # the parser takes it by name when main builds it
    assert cli.main(["-q", "mdmnist", "build", "--out", "x"]) == 130
    err = capsys.readouterr().err
    assert err == ("t2i: interrupted; rerun the same command to go on from what was finished (complete shards, the last "
                   "checkpoint)\n")


def _worker_state(_=None):
    import signal

    import torch

    from t2i_data.mdmnist import glyph_table
    from t2i_data.sources.mnist import load_mnist

    return (os.getpid(), glyph_table.cache_info().currsize, load_mnist.cache_info().currsize, torch.get_num_threads(),
            signal.getsignal(signal.SIGINT) is signal.SIG_IGN)


@pytest.mark.skipif(runner_mod.LOCAL_START_METHOD != "fork", reason="local clusters fork their workers on Linux only")
def test_a_local_clusters_forked_workers_start_with_this_processs_caches_one_torch_thread_and_no_sigint():
    import signal

    import torch

    from t2i_data.mdmnist import glyph_table
    from t2i_data.sources.mnist import EMBEDDED, load_mnist

    glyph_table.cache_clear()
    load_mnist.cache_clear()  # other tests in this process may have loaded other sources
    glyph_table(EMBEDDED, "train")  # filled here, as a build's first shard fills it
    threads_here = torch.get_num_threads()
    torch.set_num_threads(2)  # what a 2-core machine's torch starts with
    try:
        with DaskRunner(workers=1) as r:
            ((pid, glyphs, sources, threads, no_sigint),) = r._client.run(_worker_state).values()
            assert pid != os.getpid()
            assert (glyphs, sources) == (1, 1)  # the worker did not load MNIST or fill the glyph table itself
            assert threads == 1 and no_sigint
            assert r.map(_worker_state, [0])[0][1:] == (1, 1, 1, True)  # and so in its tasks
        assert torch.get_num_threads() == 2  # this process's torch was left as it was
        assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
    finally:
        torch.set_num_threads(threads_here)


def _reporting_task(item):
    """``item = (i, pause_s, samples, each_s)``: a pause before the first sample (one-time costs) in
    task 0 only, then ``samples`` samples reported one by one; returns (i, end time)."""
    i, pause, samples, each = item
    if i == 0:
        time.sleep(pause)
    for _ in range(samples):
        time.sleep(each)
        runner_mod.sample_done()
    return i, time.time()


def test_samples_a_task_reports_start_the_cluster_within_its_first_task_after_its_one_time_cost(pool_starts):
    began = pool_starts
    t0 = time.time()
    # 6 tasks of 60 samples at 10 ms: 3.6 s of work, the first task's 0.5 s pause left out of the rate
    with AutoRunner(workers=2, start_cost_s=0.5) as r:
        got = r.map(_reporting_task, [(i, 0.5, 60, 0.01) for i in range(6)], weights=[60] * 6)
        assert r.started and r.ran["cluster"] >= 1
    assert [g[0] for g in got] == list(range(6))
    assert len(began) == 1
    # started after the pause and RATE_WINDOW_S of samples, before the first task ended (1.1 s in)
    assert t0 + 0.5 + runner_mod.RATE_WINDOW_S <= began[0] < got[0][1]


def test_a_pause_before_a_tasks_first_sample_is_not_taken_for_the_rate(monkeypatch):
    # 0.6 s before the first sample, then 20 tasks of 20 samples at 1 ms: 0.4 s of work. Taken with
    # the pause, the rate would say 0.6 s / 20 samples x 380 left = 11 s and start a cluster.
    monkeypatch.setattr(runner_mod, "LocalPool", lambda n: pytest.fail("a cluster was started for 0.4 s of work"))
    with AutoRunner(workers=2, start_cost_s=0.5) as r:
        got = r.map(_reporting_task, [(i, 0.6, 20, 0.001) for i in range(20)], weights=[20] * 20)
        assert not r.started
    assert [g[0] for g in got] == list(range(20))


class _Bar:
    updates: list = []

    def __init__(self, total, desc):
        _Bar.updates = []

    def update(self, n):
        _Bar.updates.append(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


@pytest.mark.parametrize("make", [InProcessRunner, lambda: AutoRunner(workers=2)])
def test_the_bar_advances_with_each_sample_a_task_reports_and_the_rest_of_its_weight_at_its_end(make, monkeypatch):
    monkeypatch.setattr(runner_mod, "_bar", _Bar)

    def task(item):
        for _ in range(item):  # reports 3 of its 5 samples (2 quarantined, say), then one that reports none
            runner_mod.sample_done()
        return item

    with make() as r:
        assert r.map(task, [3, 0], weights=[5, 4]) == [3, 0]
    assert _Bar.updates == [1, 1, 1, 2, 4]


def test_a_build_reports_each_sample_it_writes(monkeypatch, tmp_path):
    monkeypatch.setattr(runner_mod, "_bar", _Bar)
    build(SMALL, tmp_path / "a", InProcessRunner())
    assert [n for n in _Bar.updates if n] == [1] * 80  # 8 shards of 10, each sample as it is written


def _dies_in_the_pool(item):
    """``item = (i, this test's pid, marker folder, always)``: in a pool process, the task kills its
    own process (the first time only, or ``always``); in this process, a 50 ms task."""
    import signal

    i, parent, marker, always = item
    if os.getpid() != parent:
        flag = os.path.join(marker, "died")
        if always or not os.path.exists(flag):
            open(flag, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)  # what the out-of-memory killer does
    time.sleep(0.05)
    return i * 10


def test_a_pool_process_that_dies_mid_task_has_its_task_run_again_and_repeated_deaths_stop_in_one_line(tmp_path, caplog):
    me = os.getpid()
    with caplog.at_level("WARNING", logger="t2i_data.runner"), AutoRunner(workers=2, start_cost_s=0.0) as r:
        r.map(_slow, list(range(6)))  # the pool is up, and takes an item as soon as the next map starts
        assert r.started
        got = r.map(_dies_in_the_pool, [(i, me, str(tmp_path), False) for i in range(40)])
        assert got == [i * 10 for i in range(40)] and r.ran["cluster"] > 6  # the pool ran items after its death
    assert (tmp_path / "died").exists()
    assert [m for m in caplog.messages if "died" in m] == [
        "run: a local pool process died (killed, or out of memory?); its task runs again in a new pool (death 1 of 3 allowed)"]
    t = time.perf_counter()
    with AutoRunner(workers=2, start_cost_s=0.0) as r:
        r.map(_slow, list(range(6)))
        with pytest.raises(T2IError, match=r"^sample run: the local pool's worker processes died 4 times \(killed, or out of memory\?\); "
                                           r"rerun with --workers 0"):
            r.map(_dies_in_the_pool, [(i, me, str(tmp_path), True) for i in range(400)], desc="sample run")
    assert time.perf_counter() - t < 15  # stopped early: 400 items take 20 s in this process alone


def _long_in_the_pool(item):
    i, parent = item
    if os.getpid() != parent:
        time.sleep(60)
    elif i >= 3:
        raise ValueError("this side failed")
    time.sleep(0.05)
    return i


def test_a_failure_here_ends_the_pools_running_task_at_once():
    me = os.getpid()
    t = time.perf_counter()
    with pytest.raises(ValueError, match="this side failed"):
        with AutoRunner(workers=2, start_cost_s=0.0) as r:
            r.map(_long_in_the_pool, [(i, me) for i in range(10)])
    assert time.perf_counter() - t < 20  # not the pool's 60 s task


def _pid(_=None):
    time.sleep(0.05)
    return os.getpid()


def test_ctrl_c_is_left_to_the_command_the_local_pools_processes_ignore_it():
    import signal

    with AutoRunner(workers=2, start_cost_s=0.0) as r:
        pids = set(r.map(_pid, list(range(8)))) - {os.getpid()}
        assert len(pids) == 1  # the pool's one process ran some of them
        (pid,) = pids
        os.kill(pid, signal.SIGINT)  # what a terminal's Ctrl-C sends every process of its group
        time.sleep(0.3)
        assert pid in set(r.map(_pid, list(range(8))))  # the same process, not died and replaced


def test_a_pool_process_killed_between_maps_is_replaced_for_the_next(caplog):
    import signal

    with caplog.at_level("WARNING", logger="t2i_data.runner"), AutoRunner(workers=2, start_cost_s=0.0) as r:
        (pid,) = set(r.map(_pid, list(range(8)))) - {os.getpid()}
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)
        assert r.map(_slow, list(range(8)), desc="next") == [i * 10 for i in range(8)]
        assert pid not in set(r.map(_pid, list(range(8))))
    assert [m for m in caplog.messages if "died" in m] == [
        "next: a local pool process died (killed, or out of memory?); its task runs again in a new pool (death 1 of 3 allowed)"]


_ORPHAN_SCRIPT = """
import os, time
from t2i_data.runner import AutoRunner

def slow(i):
    time.sleep(0.05)
    return os.getpid()

if __name__ == "__main__":
    with AutoRunner(workers=2, start_cost_s=0.0) as r:
        print(*(set(r.map(slow, list(range(8)))) - {os.getpid()}), flush=True)
        time.sleep(60)
"""


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_a_pool_process_ends_when_the_command_dies_without_closing_it(tmp_path, signal_name):
    """kill -9 or SIGTERM to the command: its pool process ends too, and with it the last writer of
    the command's stdout (a `| tee` pipeline had hung on the orphan)."""
    import signal
    import subprocess

    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    (child,) = (int(x) for x in proc.stdout.readline().split())
    assert _running(child)
    proc.send_signal(getattr(signal, signal_name))
    proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(child), f"the pool process {child} outlived its command"
    assert proc.stdout.read() == ""  # end of file: no process holds the pipe any more
