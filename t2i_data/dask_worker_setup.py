"""Preloaded into the worker processes of the local clusters this package starts
(``distributed.worker.preload``, ``runner.DaskRunner``); dask calls ``dask_setup`` in each worker
as it starts. ``runner.LocalPool``'s processes call it too, before their first task. A function, not module-level code: a worker forked from this process
(``runner.LOCAL_START_METHOD``) may find this module already imported.

Ctrl-C at a terminal sends SIGINT to every process of the foreground group, the dask workers
included: each then died with a ``KeyboardInterrupt`` traceback of its own, and the scheduler
warned that it had lost their tasks, around the command's own message. The workers now ignore
SIGINT and leave it to the command, which cancels their tasks and closes the cluster (its nannies
stop them). A worker is still stopped by SIGTERM or SIGKILL, as the README's worker-death test
does.

torch runs on one thread in each worker (one worker process per core). A spawned worker gets that
from ``OMP_NUM_THREADS=1`` (``runner.WORKER_ENV``); a forked one has inherited this process's torch,
already initialised, so it is set here, before any task.
"""
import signal
import sys
import threading


def dask_setup(worker=None) -> None:
    """Ignore SIGINT, and run torch (when loaded) on one thread, in this worker process."""
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
