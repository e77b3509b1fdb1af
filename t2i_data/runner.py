"""Runners: one shape for in-process and dask execution (img2dataset's distributors).

``runner.map(fn, items, weights)`` calls ``fn`` on every item and returns the results in item
order, showing a progress bar advanced by each item's weight (its sample count), so the bar's
rate is samples/s. A failure anywhere stops the run with that task's exception: nothing is
dropped. Which process ran which task cannot change a result, because every task is a pure
function of its item.
"""
from __future__ import annotations

import logging
import os
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
    """Runs tasks on a dask.distributed cluster: a new local one, or an existing scheduler."""

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError as e:  # never fall back silently to a serial run
            raise T2IError(f"dask.distributed is not importable ({e}); pip install 'dask[distributed]'") from None
        self._cluster = None
        if address:
            self._client = Client(address)
            self.description = f"dask scheduler {address}"
        else:
            n = workers or os.cpu_count() or 1
            logging.getLogger("distributed").setLevel(logging.WARNING)  # its INFO chatter drowns the progress bar
            self._cluster = LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR,
                env=WORKER_ENV,
            )
            self._client = Client(self._cluster)
            self.description = f"dask local cluster, {n} worker processes"

    def map(self, fn: Callable, items: Sequence, weights: Sequence[int] | None = None, desc: str = "") -> list:
        from dask.distributed import as_completed

        weights = weights or [1] * len(items)
        futures = self._client.map(fn, items, pure=False)
        weight_of = {f.key: w for f, w in zip(futures, weights)}
        try:
            with _bar(sum(weights), desc) as bar:
                for fut in as_completed(futures):
                    fut.result()  # re-raises the task's exception here
                    bar.update(weight_of[fut.key])
            return [f.result() for f in futures]
        except BaseException:
            self._client.cancel(futures)  # stop the rest of the run; the first failure is re-raised
            raise

    def close(self) -> None:
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()


def make_runner(workers: int | None = None, scheduler: str | None = None) -> InProcessRunner:
    """``workers=0``: in-process; ``scheduler``: that dask scheduler; else a local dask cluster."""
    if workers is not None and workers < 0:
        raise T2IError(f"--workers must be 0 (in-process) or more, got {workers}")
    if scheduler and workers:
        raise T2IError("give either --workers (local cluster) or --scheduler (existing cluster), not both")
    if scheduler:
        return DaskRunner(address=scheduler)
    if workers == 0:
        return InProcessRunner()
    return DaskRunner(workers=workers)
