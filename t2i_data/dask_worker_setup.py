"""Preloaded into the worker processes of the local clusters this package starts
(``distributed.worker.preload``, ``runner.DaskRunner``).

Ctrl-C at a terminal sends SIGINT to every process of the foreground group, the dask workers
included: each then died with a ``KeyboardInterrupt`` traceback of its own, and the scheduler
warned that it had lost their tasks, around the command's own message. The workers now ignore
SIGINT and leave it to the command, which cancels their tasks and closes the cluster (its nannies
stop them). A worker is still stopped by SIGTERM or SIGKILL, as the README's worker-death test
does.
"""
import signal
import threading

if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
    signal.signal(signal.SIGINT, signal.SIG_IGN)
