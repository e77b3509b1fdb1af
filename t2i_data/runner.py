"""Runners: one shape for in-process and dask execution (img2dataset's distributors).

``runner.map(fn, items, weights)`` calls ``fn`` on every item and returns the results in item
order, showing a progress bar advanced by each item's weight (its sample count), so the bar's
rate is samples/s. A failure anywhere stops the run with that task's exception: nothing is
dropped. Which process ran which task cannot change a result, because every task is a pure
function of its item.

Which runner a command gets (``make_runner``): ``--workers 0`` in-process; ``--workers N`` a local
dask cluster of N processes; ``--scheduler ADDRESS`` an existing dask cluster; neither: an
``AutoRunner``, which runs tasks in this process and, only when the work still ahead, timed on
the samples and tasks run so far, is worth its start, starts one ``LocalPool`` of one process per
other core that shares the rest with it. The rule and the figures behind ``START_COST_S`` are in
``AutoRunner``'s docstring; why a pool and not a dask cluster, in ``LocalPool``'s.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import threading
import time
from typing import Callable, Sequence

from tqdm.auto import tqdm

from .errors import T2IError

log = logging.getLogger(__name__)
# One process per core already: a library's own thread pool in each (tokenizers' rayon, BLAS)
# would put several threads on every core.
# TOKENIZERS_PARALLELISM: a worker forked (below) after this process used tokenizers' thread pool
# runs it serially; set, it does so without printing a warning from every worker.
WORKER_ENV = {"RAYON_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "TOKENIZERS_PARALLELISM": "false"}
# How the local dask clusters and the LocalPool this package starts make their processes. A forked
# process starts as a copy of this one: its modules imported, its caches full (the MNIST pools, the
# resized glyphs, a loaded model). Measured here (bench/bench_runner.py, 2026-12-02): a 1-worker cluster
# started in 0.35 s against 0.9-1.0 s spawned, closed in 0.04 s against 0.16-0.25 s, and the
# worker's first MD-MNIST shard took as long as its others (0.92 / 0.94 s) against 1.71-1.95 s
# spawned (imports, loading the IDX files, filling the glyph cache). fork is Linux only here:
# macOS's system frameworks are not fork-safe (Python's own default there is spawn). A forked
# worker runs torch on one thread (dask_worker_setup), which keeps it clear of the OpenMP pool
# this process may have started, as torch's DataLoader workers do.
LOCAL_START_METHOD = "fork" if sys.platform.startswith("linux") else "spawn"


def _bar(total: int, desc: str):
    return tqdm(total=total, desc=desc, unit="sample", unit_scale=True, smoothing=0.1, disable=None)


_here = threading.local()  # .hook: what sample_done calls for the task a runner runs in this thread


def sample_done(n: int = 1) -> None:
    """Say that the task running in this thread has written ``n`` more samples
    (``build.write_shard`` calls it per sample). The runner that called the task here advances its
    progress bar within the task, and ``AutoRunner`` times the samples (its rule). Nothing when no
    runner of this package called the task in this thread (a dask worker's task thread)."""
    hook = getattr(_here, "hook", None)
    if hook is not None:
        hook(n)


@contextlib.contextmanager
def _reporting(hook: Callable[[int], None]):
    """``sample_done`` calls ``hook`` in this thread for the block."""
    before = getattr(_here, "hook", None)
    _here.hook = hook
    try:
        yield
    finally:
        _here.hook = before


class InProcessRunner:
    """Runs tasks one after another in this process: for tests, debugging and profiling."""

    description = "in-process"

    def map(self, fn: Callable, items: Sequence, weights: Sequence[int] | None = None, desc: str = "",
            did_work: Callable | None = None) -> list:
        """``fn`` on each item, results in item order. ``did_work(result)``: whether a task did its
        work rather than find it done (a shard a resumed build reuses); only ``AutoRunner`` uses it."""
        weights = weights or [1] * len(items)
        out = []
        with _bar(sum(weights), desc) as bar:
            for item, w in zip(items, weights):
                reported = [0]

                def hook(n: int) -> None:
                    reported[0] += n
                    bar.update(n)

                with _reporting(hook):
                    out.append(fn(item))
                bar.update(w - reported[0])  # the rest of the task's weight (quarantined samples, unreported tasks)
        return out

    def close(self, summary: bool = True) -> None:
        """Ends what the runner started; ``summary``: say in a log line where the tasks ran (the
        runners that choose: ``AutoRunner``), false after a failure."""

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
            # The workers' own ERROR lines ("Compute Failed" with a traceback) are silenced: a failed
            # task's exception is re-raised here, where the command says it in one line. Ctrl-C is left
            # to this process (dask_worker_setup). The dashboard takes any free port: the fixed 8787
            # warned whenever another cluster (or anything) held it.
            with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                                  "distributed.worker.profile.enabled": False, "distributed.admin.tick.interval": "1s",
                                  "distributed.admin.system-monitor.interval": "5s",
                                  "distributed.worker.preload": ["t2i_data.dask_worker_setup"],
                                  "distributed.worker.multiprocessing-method": LOCAL_START_METHOD}):
                self._cluster = LocalCluster(
                    n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.CRITICAL,
                    env=WORKER_ENV,
                )
            self._client = Client(self._cluster)
            self.description = f"dask local cluster, {n} worker process{'es' if n != 1 else ''}"

    def map(self, fn: Callable, items: Sequence, weights: Sequence[int] | None = None, desc: str = "",
            did_work: Callable | None = None, bar=None) -> list:
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

    def close(self, summary: bool = True) -> None:
        if self._own_client:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()


def _call(payload: bytes):
    """In a ``LocalPool`` process: the task ``cloudpickle`` packed (a lambda or a test's function
    travels as it does to a dask worker)."""
    import cloudpickle

    fn, item = cloudpickle.loads(payload)
    return fn(item)


def _pool_process_setup(parent: int) -> None:
    """In each ``LocalPool`` process, before its first task: ``WORKER_ENV``, what the local dask
    clusters' workers get (``dask_worker_setup``: Ctrl-C left to the command, one torch thread),
    and a watch on ``parent`` (the command's pid): when the command dies without closing the pool
    (``kill -9``, SIGTERM), the pool process ends within ``PARENT_CHECK_S`` rather than live on.
    A forked pool process holds copies of the pool's pipes, so it never sees them close; it held
    the command's stdout and stderr open for good, hanging a ``| tee`` pipeline (break test)."""
    from .dask_worker_setup import dask_setup

    os.environ.update(WORKER_ENV)
    dask_setup()
    _here.hook = None  # a process forked during a task here must not report to this process's bar

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)  # the command is gone: its shards are redone by the rerun

    threading.Thread(target=watch, daemon=True, name="t2i-parent-watch").start()


PARENT_CHECK_S = 0.25


class LocalPool:
    """The processes ``AutoRunner`` shares its items with: a ``concurrent.futures``
    ``ProcessPoolExecutor`` of ``n`` processes made with ``LOCAL_START_METHOD`` (forked from this
    process on Linux, so they start with its modules and caches).

    Why not a dask ``LocalCluster`` (what ``--workers N`` starts): on the full MD-MNIST build, 2
    forked pool processes took 12.21-12.97 s against 12.81-13.46 s for a 2-worker forked dask
    cluster (alternating, cold, 2026-12-02), and the default runner sharing with a 1-worker dask
    cluster took 14.06-16.27 s against 12.64-13.28 s for the 2-process pool: the scheduler, client
    and nanny run on an event loop in this process, which computes too, and each worker runs one
    beside its task. A pool process runs its task alone; this process only has the executor's
    management thread, which waits on pipes.

    A process that dies mid-task (killed, out of memory) breaks the pool: ``run_again`` tells the
    caller whether to start a new pool and resubmit, up to ``ALLOWED_DEATHS`` deaths per pool
    (dask's ``allowed-failures`` is 3), after which ``T2IError`` says so in one line."""

    ALLOWED_DEATHS = 3

    def __init__(self, n: int) -> None:
        import multiprocessing

        self.n, self.deaths, self.generation = n, 0, 0
        self._ctx = multiprocessing.get_context(LOCAL_START_METHOD)
        self._executor = self._new()
        self.description = (f"a local pool of {n} {'forked' if LOCAL_START_METHOD == 'fork' else 'spawned'} "
                            f"process{'es' if n != 1 else ''}")

    def _new(self):
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(self.n, mp_context=self._ctx, initializer=_pool_process_setup, initargs=(os.getpid(),))

    def submit(self, fn: Callable, item, what: str):
        """A ``concurrent.futures.Future`` of ``fn(item)`` in a pool process, and the pool generation
        it went to. A pool found broken here (a process died between tasks) is replaced first, as in
        ``run_again``."""
        import cloudpickle
        from concurrent.futures.process import BrokenProcessPool

        payload = cloudpickle.dumps((fn, item))
        try:
            return self._executor.submit(_call, payload), self.generation
        except BrokenProcessPool as e:
            self.run_again(e, self.generation, what)
            return self._executor.submit(_call, payload), self.generation

    def run_again(self, error: BaseException, generation: int, what: str) -> bool:
        """After ``error`` from the future of a task sent to the pool of ``generation``: whether it was
        a pool process's death, in which case a new pool is started (once per death: every task in
        flight in the broken pool fails with it) and the task should be resubmitted. ``T2IError``
        after ``ALLOWED_DEATHS`` deaths."""
        from concurrent.futures.process import BrokenProcessPool

        if not isinstance(error, BrokenProcessPool):
            return False
        if generation != self.generation:
            return True  # the pool it went to was already replaced
        self.deaths += 1
        if self.deaths > self.ALLOWED_DEATHS:
            raise T2IError(f"{what}: the local pool's worker processes died {self.deaths} times (killed, or out of "
                           "memory?); rerun with --workers 0 to run in this process, or with fewer samples per shard") from None
        log.warning("%s: a local pool process died (killed, or out of memory?); its task runs again in a new pool "
                    "(death %d of %d allowed)", what, self.deaths, self.ALLOWED_DEATHS)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor, self.generation = self._new(), self.generation + 1
        return True

    def close(self, stop: bool = False) -> None:
        """Wait for the pool's processes to end; ``stop``: end their running tasks at once (after a
        failure or Ctrl-C) rather than wait for them."""
        if stop:
            for proc in list((getattr(self._executor, "_processes", None) or {}).values()):  # no public call in 3.11-3.13
                proc.terminate()
        self._executor.shutdown(wait=True, cancel_futures=True)


# Seconds of this process's work a local pool costs before it pays. Its start is small: 1 forked
# process started and returned a first result in 15-24 ms, and closed in 10-14 ms (2026-12-02). But
# two processes slow each other on this shared machine (a shard 1.2x longer while both run:
# bench/bench_runner.py), and below a few seconds of work the gain is within the noise: the CUB
# sample's 41 images took 4.25-4.88 s with the pool against 3.66-5.43 s in-process (6 alternating
# rounds). So a pool starts only when more than 2 s of work are left (with 2 cores). A
# 20,000-sample MD-MNIST build: best of 3, 2.26 s against 4.24 s in-process. (With a dask cluster
# here it was 5 s: 0.9-1.0 s to start spawned workers, and a worker's first task 0.7-0.8 s longer
# than the others: imports, the IDX files, the glyph cache.)
START_COST_S = 1.0
# AutoRunner times the samples a task reports (sample_done) over at least RATE_WINDOW_S after its
# first report, checking the rule at most every CHECK_EVERY_S: a full MD-MNIST build so starts its
# pool about 0.2 s after its first shard's first sample rather than 0.1 s into its second shard.
RATE_WINDOW_S = 0.2
CHECK_EVERY_S = 0.05


class _Shared:
    """The items of one ``AutoRunner.map`` handed out one at a time to this process's loop and the
    pool's feeder thread, under one lock; the first failure on either side stops both."""

    def __init__(self, n: int, bar) -> None:
        self.n, self.bar, self.lock = n, bar, threading.Lock()
        self.next, self.error = 0, None
        self.futures: set = set()

    def take(self) -> int | None:
        with self.lock:
            if self.error is not None or self.next >= self.n:
                return None
            self.next += 1
            return self.next - 1

    def done(self, weight: int) -> None:
        with self.lock:
            self.bar.update(weight)

    def fail(self, e: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = e
            futures = list(self.futures)
        for f in futures:  # the pool's tasks not yet running are cancelled; the feeder then ends
            f.cancel()


class _Samples:
    """What the task running in ``AutoRunner.map``'s loop has reported through ``sample_done``."""

    __slots__ = ("n", "first_n", "first_at", "checked_at")

    def __init__(self) -> None:
        self.n, self.first_n, self.first_at, self.checked_at = 0, 0, 0.0, 0.0


@contextlib.contextmanager
def one_torch_thread():
    """torch on one CPU thread for the block, and back to its count after; nothing when torch is
    not loaded. ``AutoRunner``: this process computes beside the pool's processes (one process
    per core, each with one thread: ``WORKER_ENV``), so it uses one thread too."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class AutoRunner(InProcessRunner):
    """The default runner: in-process while more processes would not pay for themselves, else
    ``workers`` processes computing at once: this one and a ``LocalPool`` of ``workers − 1``
    processes (one process per core, this process being one of them), started at most once and
    kept for the rest of the command (every later ``map`` shares its items between this process
    and the pool from its start).

    The rule: start the pool when at least 2 tasks are left and the time they would take here,
    ``t · W_left / W_done``, exceeds ``start_cost_s / (1 − 1/workers)``: what ``workers``
    processes would save on it is more than the pool's start cost (``START_COST_S`` = 1 s; with
    2 workers: more than 2 s of work left). Weights are sample counts. ``t`` and ``W_done`` come
    from two sources:
    - the samples the running task reports (``sample_done``, which ``build.write_shard`` calls
      per sample) after its first report, once they span ``RATE_WINDOW_S``: what came before
      that report (loading a source or a model, filling caches) is left out. The 110,000-sample
      MD-MNIST build so starts its pool during its first shard;
    - whole tasks, checked after each one, leaving out the first task that did its work (its time
      holds the map's one-time costs: COCO preprocessing spent 0.3 s on its first shard of 8
      inputs and ~2 ms on each later one, and a rate taken from it would have started a pool for
      1.4 s of work) and tasks that found their work done (``did_work(result)`` false: shards a
      resumed build reuses, which take milliseconds and would make the work left look small).
      For tasks that report no samples, a timer also fires while each timed task runs, when the
      rule would hold if it ended then (``_start_at``); none is set for a task that would have to
      run 4x as long as the rate so far gives it (625 small COCO shards made a thread each for
      nothing).
    A single-shard command and the COCO sample's 625 shards of 8 (about 1.5 s in all) never start
    one; the CUB sample's 41 images (6 shards of 8) and a 20,000-sample build (4 shards) start
    one. With ``workers`` <= 1 (a one-core machine) it never starts a pool. ``description`` says
    which it did.

    Why this process computes too (rather than waiting on ``workers`` processes, as
    ``--workers N`` does): it keeps computing while the pool starts, and it takes the next item
    whenever it is free, as each pool process does (one task in flight per process), so neither
    side waits on a queue at the end. The pool's processes are forked from this process
    (``LOCAL_START_METHOD``), after the caches it has filled so far. Items are handed out in
    order and results are returned in item order; which process ran an item cannot change its
    result. Figures: README, "Workers" (bench/bench_runner.py).
    """

    def __init__(self, workers: int | None = None, start_cost_s: float = START_COST_S) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.start_cost_s = start_cost_s
        self._pool: LocalPool | None = None
        self.ran = {"here": 0, "cluster": 0}  # tasks run by each side over this runner's maps, for close()'s line
        more = self.workers - 1
        self.description = f"in-process (with a local pool of {more} more process{'es' if more != 1 else ''} if the work is large)"

    def _worth_a_cluster(self, seconds: float, done: int, left: int, tasks_left: int) -> bool:
        if self.workers <= 1 or tasks_left < 2 or done <= 0:
            return False
        return seconds * left / done > self.start_cost_s / (1 - 1 / self.workers)

    def _start_at(self, seconds: float, done: int, weight: int, left: int, tasks_left: int) -> float | None:
        """Seconds into the task now starting (``weight`` samples, after ``done`` samples took
        ``seconds``) at which the rule holds even if that task ended at that moment: the time
        spent over the samples started is then a lower bound on the time a sample takes, and
        ``left`` (samples not started) what it multiplies. ``None``: it cannot hold before the
        task ends."""
        if self.workers <= 1 or tasks_left < 2 or left <= 0:
            return None
        return max(0.0, self.start_cost_s / (1 - 1 / self.workers) * (done + weight) / left - seconds)

    def map(self, fn: Callable, items: Sequence, weights: Sequence[int] | None = None, desc: str = "",
            did_work: Callable | None = None) -> list:
        """As ``InProcessRunner.map``; the first exception raised on either side (a task here or
        in the pool, or the pool's start) is raised here after the other side's tasks in
        flight are cancelled or done."""
        weights = list(weights or [1] * len(items))
        out: list = [None] * len(items)
        launch_lock, helper = threading.Lock(), [None]
        done, total = 0, sum(weights)
        timed_s, timed_w, warm = 0.0, 0, False  # the time and samples the rule counts (module docstring)
        with _bar(total, desc) as bar, contextlib.ExitStack() as stack:
            shared = _Shared(len(items), bar)

            def share(start: bool) -> None:  # the helper thread: start the pool if asked, then feed it
                try:
                    if start:
                        self._pool = LocalPool(self.workers - 1)
                        self.description = f"this process + {self._pool.description} (started once the work was timed)"
                    self._feed(fn, items, weights, out, shared, desc or "run")
                except BaseException as e:  # re-raised by map in the calling thread
                    shared.fail(e)

            def launch(start: bool, estimate: float = 0.0) -> None:  # from this loop, a sample report or a task's timer
                with launch_lock:
                    if helper[0] is not None or shared.error is not None:
                        return
                    if start:
                        log.info("%s: at least %.0f s of work left in-process; starting a local pool of %d more "
                                 "process(es) to share it", desc or "run", estimate, self.workers - 1)
                    helper[0] = threading.Thread(target=share, args=(start,), daemon=True,
                                                 name="t2i-pool-start" if start else "t2i-pool-feed")
                    helper[0].start()

            one_thread = []

            def single_thread_here() -> None:  # in this thread: torch's thread count is per calling thread
                if not one_thread:
                    one_thread.append(stack.enter_context(one_torch_thread()))

            if self._pool is not None:
                single_thread_here()
                launch(False)
            try:
                while (i := shared.take()) is not None:
                    timer = None
                    if helper[0] is None and warm:  # the rule may hold while this task runs: a timer checks it then
                        left = total - done - weights[i]
                        at = self._start_at(timed_s, timed_w, weights[i], left, len(items) - shared.next)
                        usual = timed_s / timed_w * weights[i] if timed_w else None  # this task's time at the rate so far
                        if at is not None and (usual is None or at < 4 * usual):  # no thread per task where it cannot fire
                            estimate = (timed_s + at) * left / (timed_w + weights[i])
                            timer = threading.Timer(at, launch, args=(True, estimate))
                            timer.daemon = True
                            timer.start()
                    began = time.perf_counter()
                    seen = _Samples()
                    try:
                        with _reporting(functools.partial(self._on_sample, seen, shared, launch, helper,
                                                          total - done, len(items))):
                            out[i] = fn(items[i])
                    finally:
                        if timer is not None:
                            timer.cancel()
                    shared.done(weights[i] - seen.n)  # the rest of its weight: quarantined samples, or none reported
                    self.ran["here"] += 1
                    done += weights[i]
                    if did_work is None or did_work(out[i]):
                        if warm:
                            timed_s, timed_w = timed_s + time.perf_counter() - began, timed_w + weights[i]
                        warm = True  # the first task that worked carried the one-time costs: not timed
                    if helper[0] is None and self._worth_a_cluster(timed_s, timed_w, total - done, len(items) - shared.next):
                        launch(True, timed_s * (total - done) / timed_w)
                    if helper[0] is not None:  # the pool is starting or up: one torch thread here from now on
                        single_thread_here()
            except BaseException as e:
                shared.fail(e)
                with launch_lock:
                    h = helper[0]
                if h is not None:
                    h.join()  # its tasks cancelled; and close() then finds the pool and ends it
                raise
            with launch_lock:
                h = helper[0]
            if h is not None:
                h.join()
            if shared.error is not None:
                raise shared.error
        return out

    def _on_sample(self, seen: "_Samples", shared: _Shared, launch: Callable, helper: list, left_before: int,
                   n_items: int, n: int) -> None:
        """``sample_done(n)`` from the task running here (``left_before``: samples not done when it
        began): advance the bar, and start the pool once the rule holds on the samples this
        task wrote after its first report, over at least ``RATE_WINDOW_S``: what came before
        that report (loading a source or a model, filling caches) is left out."""
        now = time.perf_counter()
        if seen.n == 0:
            seen.first_at = seen.checked_at = now
            seen.first_n = n
        seen.n += n
        shared.done(n)
        if helper[0] is not None or now - seen.checked_at < CHECK_EVERY_S:
            return
        seen.checked_at = now
        seconds, counted = now - seen.first_at, seen.n - seen.first_n
        left = left_before - seen.n
        if seconds >= RATE_WINDOW_S and self._worth_a_cluster(seconds, counted, left, n_items - shared.next):
            launch(True, seconds * left / counted)

    def _feed(self, fn: Callable, items: Sequence, weights: list, out: list, shared: _Shared, what: str) -> None:
        """Keep one task in flight on each pool process, taking the next item as each finishes; a
        task whose process died runs again in a new pool (``LocalPool.run_again``)."""
        from concurrent.futures import FIRST_COMPLETED, wait

        pool, index = self._pool, {}  # future -> (item, the pool generation it went to)

        def submit(i: int | None = None) -> None:
            i = shared.take() if i is None else i
            if i is not None:
                f, generation = pool.submit(fn, items[i], what)
                index[f] = (i, generation)
                with shared.lock:
                    shared.futures.add(f)

        for _ in range(pool.n):
            submit()
        while index:
            finished, _ = wait(list(index), timeout=0.1, return_when=FIRST_COMPLETED)
            if shared.error is not None:
                return  # cancelled: this process re-raises the first failure
            for f in finished:
                i, generation = index.pop(f)
                with shared.lock:
                    shared.futures.discard(f)
                try:
                    out[i] = f.result()  # re-raises the task's exception here
                except BaseException as e:
                    if pool.run_again(e, generation, what):
                        submit(i)
                        continue
                    raise
                shared.done(weights[i])
                self.ran["cluster"] += 1
                submit()

    @property
    def started(self) -> bool:
        """Whether this runner has started its local cluster."""
        return self._pool is not None

    def __exit__(self, *exc) -> None:
        self.close(summary=exc[0] is None)  # a failure's one line is not followed by a summary

    def close(self, summary: bool = True) -> None:
        """Ends the pool if one was started (at once after a failure: ``summary`` false), and says in
        one log line (INFO) where the tasks ran unless ``summary`` is false."""
        here, there = self.ran["here"], self.ran["cluster"]
        if summary and self._pool is not None:
            log.info("runner: %d tasks ran in this process and %d in its local pool (%s)", here, there, self._pool.description)
        elif summary and here:
            why = "one core" if self.workers <= 1 else "a local pool would not have paid for its start: README, Workers"
            log.info("runner: all %d tasks ran in this process (%s)", here, why)
        if self._pool is not None:
            self._pool.close(stop=not summary)
            self._pool = None
        self.ran = {"here": 0, "cluster": 0}


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
