"""Runners: one shape for in-process and dask execution (img2dataset's distributors).

``runner.map(fn, items, weights)`` calls ``fn`` on every item and returns the results in item
order, showing a progress bar advanced by each item's weight (its sample count), so the bar's
rate is samples/s. A failure anywhere stops the run with that task's exception: nothing is
dropped. Which process ran which task cannot change a result, because every task is a pure
function of its item.

Which runner a command gets (``make_runner``): ``--workers 0`` in-process; ``--workers N`` a local
dask cluster of N processes; ``--scheduler ADDRESS`` an existing dask cluster; neither: an
``AutoRunner``, which runs tasks in this process and starts one local cluster (one process per
core) only when the work still ahead, timed on the tasks done so far, is worth its start. The
rule and the figures behind ``START_COST_S`` are in ``AutoRunner``'s docstring.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Callable, Sequence

from tqdm.auto import tqdm

from .errors import T2IError

log = logging.getLogger(__name__)
# One process per core already: a library's own thread pool in each (tokenizers' rayon, BLAS)
# would put several threads on every core.
WORKER_ENV = {"RAYON_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _bar(total: int, desc: str):
    return tqdm(total=total, desc=desc, unit="sample", unit_scale=True, smoothing=0.1, disable=None)


class InProcessRunner:
    """Runs tasks one after another in this process: for tests, debugging and profiling."""

    description = "in-process"

    def map(self, fn: Callable, items: Sequence, weights: Sequence[int] | None = None, desc: str = "") -> list:
        weights = weights or [1] * len(items)
        out = []
        with _bar(sum(weights), desc) as bar:
            for item, w in zip(items, weights):
                out.append(fn(item))
                bar.update(w)
        return out

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DaskRunner(InProcessRunner):
    """Runs tasks on a dask.distributed cluster: a new local one of ``workers`` processes, an
    existing scheduler at ``address``, or the ``client`` of a cluster the caller made (a
    dask-jobqueue ``SLURMCluster``, a ``LocalCluster``: README, "On a cluster"). It closes only
    what it started: a ``client`` given to it stays open. Workers must see the task's inputs and
    the output folder at the same paths as this process. A worker that dies mid-task (killed,
    out of memory, its node gone) has its task run again by the scheduler on another worker, and
    the shard comes out with the same bytes (tests/test_cluster_recipe.py)."""

    def __init__(self, workers: int | None = None, address: str | None = None, client=None) -> None:
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError as e:  # never fall back silently to a serial run
            raise T2IError(f"dask.distributed is not importable ({e}); pip install 'dask[distributed]'") from None
        if sum(x is not None for x in (workers, address, client)) > 1:
            raise T2IError("DaskRunner takes one of workers (a new local cluster), address (a scheduler) or client, not several")
        self._cluster, self._own_client = None, client is None
        if client is not None:
            if not isinstance(client, Client):
                raise T2IError(f"DaskRunner(client=...) takes a dask.distributed.Client, got {type(client).__name__}: "
                               "Client(cluster) makes one from a cluster object")
            self._client = client
            self.description = f"dask cluster {client.scheduler.address if client.scheduler else client}"
        elif address:
            try:
                self._client = Client(address)
            except (ValueError, OSError, TimeoutError) as e:  # a malformed address, nothing listening, a timeout
                msg = " ".join(str(e).split())
                raise T2IError(f"--scheduler {address}: no dask scheduler reachable there ({type(e).__name__}: {msg}); "
                               "give the address 'dask scheduler' printed, e.g. tcp://host:8786") from None
            self.description = f"dask scheduler {address}"
        else:
            n = workers or os.cpu_count() or 1
            logging.getLogger("distributed").setLevel(logging.WARNING)  # its INFO chatter drowns the progress bar
            import dask

            # dask's nannies set MALLOC_TRIM_THRESHOLD_=65536 in every worker (to hand memory back
            # to the OS sooner). Any value set there also freezes glibc's mmap threshold, so each
            # sample's buffers were mapped and faulted in afresh: 141,395 minor page faults for one
            # 5,000-sample MD-MNIST shard against 1,440 unset, and 1.43 s a shard against 1.13 s
            # (25% on every task; measured here with resource.getrusage). Unset, the workers
            # allocate as this process does. The nanny keeps the env it read for restarts.
            # And a quieter event loop beside each worker's task thread: no statistical profiler
            # (a stack sample every 10 ms), ticks and system samples every 1 s and 5 s instead of
            # 20 ms and 500 ms. Two workers writing MD-MNIST shards at once: 1.20-1.32 s a shard
            # against 1.27-1.41 s with dask's defaults (two plain processes: 1.17-1.28 s).
            with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                                  "distributed.worker.profile.enabled": False, "distributed.admin.tick.interval": "1s",
                                  "distributed.admin.system-monitor.interval": "5s"}):
                self._cluster = LocalCluster(
                    n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR,
                    env=WORKER_ENV,
                )
            self._client = Client(self._cluster)
            self.description = f"dask local cluster, {n} worker processes"

    def map(self, fn: Callable, items: Sequence, weights: Sequence[int] | None = None, desc: str = "", bar=None) -> list:
        """As ``InProcessRunner.map``; ``bar``: an open progress bar to advance instead of a new one."""
        from dask.distributed import as_completed

        weights = weights or [1] * len(items)
        futures = self._client.map(fn, items, pure=False)
        weight_of = {f.key: w for f, w in zip(futures, weights)}
        try:
            with contextlib.nullcontext(bar) if bar is not None else _bar(sum(weights), desc) as b:
                for fut in as_completed(futures):
                    fut.result()  # re-raises the task's exception here
                    b.update(weight_of[fut.key])
            return [f.result() for f in futures]
        except BaseException:
            self._client.cancel(futures)  # stop the rest of the run; the first failure is re-raised
            raise

    def close(self) -> None:
        if self._own_client:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()


# Seconds a local cluster costs before it computes: starting 2 worker processes (0.7-0.9 s
# measured here, bench/bench_mdmnist.py) plus what each worker does once (imports, loading a source
# such as the MNIST IDX files, filling caches the parent already holds): a 110,000-sample MD-MNIST
# build took 3.8 s longer on a fresh 2-worker cluster than on a warm one (runner section, README).
START_COST_S = 5.0


class AutoRunner(InProcessRunner):
    """The default runner: in-process while a local cluster would not pay for itself, else one
    local dask cluster of ``workers`` processes, started at most once and kept for the rest of
    the command (every later ``map`` uses it).

    The rule, applied after each task run here: start the cluster when at least 2 tasks are
    left and the time they would take here, ``t · W_left / W_done`` (``t`` seconds spent on tasks
    of total weight ``W_done`` in this ``map``, weights being sample counts), exceeds
    ``start_cost_s / (1 − 1/workers)``: what ``workers`` processes would save on it is more than
    the cluster's start cost (``START_COST_S`` = 5 s; with 2 workers: more than 10 s of work
    left). So a single-shard command, a 20,000-sample MD-MNIST build (3 to 5 s here) or the CUB
    sample's 41 images never start one; the 110,000-sample build does after its first shard.
    Shards a resumed build reuses take milliseconds, so they do not count as work ahead.
    With ``workers`` <= 1 (a one-core machine) it never starts a cluster. ``description``
    says which it did.
    """

    def __init__(self, workers: int | None = None, start_cost_s: float = START_COST_S) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.start_cost_s = start_cost_s
        self._dask: DaskRunner | None = None
        self.description = f"in-process (a local cluster of {self.workers} processes if the work is large)"

    def _worth_a_cluster(self, seconds: float, done: int, left: int, tasks_left: int) -> bool:
        if self.workers <= 1 or tasks_left < 2 or done <= 0:
            return False
        return seconds * left / done > self.start_cost_s / (1 - 1 / self.workers)

    def map(self, fn: Callable, items: Sequence, weights: Sequence[int] | None = None, desc: str = "") -> list:
        weights = list(weights or [1] * len(items))
        if self._dask is not None:
            return self._dask.map(fn, items, weights, desc)
        out: list = []
        starting: threading.Thread | None = None
        failed: list[BaseException] = []
        t0, done, total = time.perf_counter(), 0, sum(weights)
        with _bar(total, desc) as bar:
            for i, (item, w) in enumerate(zip(items, weights)):
                if starting is not None and not starting.is_alive():
                    break  # the cluster is up: it takes the rest
                try:
                    out.append(fn(item))
                except BaseException:
                    if starting is not None:
                        starting.join()  # so that close() finds the cluster and stops it
                    raise
                bar.update(w)
                done += w
                left = total - done
                if starting is None and self._worth_a_cluster(time.perf_counter() - t0, done, left, len(items) - i - 1):
                    log.info("%s: about %.0f s of work left in-process; starting a local cluster of %d processes",
                             desc or "run", (time.perf_counter() - t0) * left / done, self.workers)
                    # started beside this loop, which goes on with the next tasks until it is up
                    starting = threading.Thread(target=self._start, args=(failed,), name="t2i-cluster-start", daemon=True)
                    starting.start()
            if starting is not None:
                starting.join()
                if failed:
                    raise failed[0]
                rest = len(out)
                if rest < len(items):
                    out += self._dask.map(fn, items[rest:], weights[rest:], bar=bar)
        return out

    def _start(self, failed: list) -> None:
        try:
            self._dask = DaskRunner(workers=self.workers)
            self.description = self._dask.description + " (started once the work was timed)"
        except BaseException as e:  # re-raised by map in the calling thread
            failed.append(e)

    @property
    def started(self) -> bool:
        """Whether this runner has started its local cluster."""
        return self._dask is not None

    def close(self) -> None:
        if self._dask is not None:
            self._dask.close()


def make_runner(workers: int | None = None, scheduler: str | None = None) -> InProcessRunner:
    """``workers=0``: in-process; ``workers=N``: a local dask cluster of N processes;
    ``scheduler``: that dask scheduler; neither: ``AutoRunner`` (in-process, or one local cluster
    of one process per core when the work is large). ``T2IError`` for a negative ``workers`` or
    both given."""
    if workers is not None and workers < 0:
        raise T2IError(f"--workers must be 0 (in-process) or more, got {workers}")
    if scheduler and workers:
        raise T2IError("give either --workers (local cluster) or --scheduler (existing cluster), not both")
    if scheduler:
        return DaskRunner(address=scheduler)
    if workers == 0:
        return InProcessRunner()
    if workers is None:
        return AutoRunner()
    return DaskRunner(workers=workers)
