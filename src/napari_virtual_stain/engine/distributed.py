"""Scale-out through dask.distributed: one task per job, in this process or on a cluster.

``--cluster`` takes ``local:N`` (a :class:`distributed.LocalCluster` of N worker processes,
one thread each, started and stopped here) or ``tcp://HOST:PORT`` (an existing scheduler: a
lab's cluster or a cloud deployment). Without a cluster the jobs run here, one after another,
through the same function, so the outputs are the same either way.

dask.distributed does the scheduling: ``submit(..., retries=)`` reruns the tasks of a lost
worker, ``as_completed`` drives the progress, ``Client.cancel`` stops the rest on Ctrl-C or a
cancel event. Nothing here schedules by itself. Each worker process keeps what it loads in
its own module state (the predictor cache), so a model is loaded once per worker, not per task.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
import time
import uuid
from typing import Any, Callable, Iterator, Sequence

from ..errors import Cancelled, InputError, VirtualStainError, check_cancel, plain_text


def reads_with_own_threads(task: Callable) -> Callable:
    """``task`` computing its lazy (zarr, dask) inputs with this process's threads.

    On a dask.distributed worker dask's default scheduler is the cluster's client: a task that
    computed its lazy input there would ship the chunks to other workers (and raced their
    imports of zarr). Every scale-out task function (one file, one field, one stack) wears this.
    """
    @functools.wraps(task)
    def run_here(*args, **kwargs):
        import dask

        with dask.config.set(scheduler="threads"):
            return task(*args, **kwargs)

    return run_here

# How long to wait for a scheduler that does not answer: the user hears about a typo in seconds.
CONNECT_TIMEOUT_S = 5
# Reruns of a task whose worker died (out of memory, a node lost) before the run gives up.
RETRIES = 2
# The workers a local:N cluster starts use one thread each for torch too: N workers share the cores.
LOCAL_WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
_ADDRESS = re.compile(r"^(tcp|tls|ucx|ws|wss)://[^\s:/]+:\d+$")


def parse_cluster(text: str | None) -> tuple[str, Any]:
    """``None`` -> ("here", None); ``local:N`` -> ("local", N); ``tcp://host:port`` -> ("remote", address)."""
    if text is None or str(text).strip() in ("", "none"):
        return "here", None
    text = str(text).strip()
    if text.startswith("local:"):
        count = text[len("local:"):]
        if not count.isdigit() or int(count) < 1:
            raise InputError(f"--cluster {text}: give the number of local workers, e.g. local:2.")
        return "local", int(count)
    if _ADDRESS.match(text):
        return "remote", text
    raise InputError(f"--cluster {text!r} is neither local:N nor a scheduler address like tcp://HOST:PORT.")


@contextlib.contextmanager
def connect(cluster: str | None, *, worker_env: dict | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``cluster`` (None: no client, run here), closed afterwards.

    ``worker_env`` is the environment of the workers a ``local:N`` cluster starts (e.g. one
    OpenMP thread each, so N workers do not fight over the same cores).
    """
    kind, value = parse_cluster(cluster)
    if kind == "here":
        yield None
        return
    from distributed import Client, LocalCluster

    if kind == "local":
        with LocalCluster(n_workers=value, threads_per_worker=1, processes=True, dashboard_address=None,
                          env=dict(worker_env or {})) as local, Client(local) as client:
            yield client
        return
    try:
        client = Client(value, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as err:
        raise InputError(f"Cannot reach the dask scheduler at {value} within {CONNECT_TIMEOUT_S} s: "
                         "is it running, and is the address right?") from err
    try:
        yield client
    finally:
        client.close()


def _worker_problem(err: BaseException, what: str) -> BaseException:
    """The sentence for an error a task brought back; the project's own errors pass unchanged."""
    if isinstance(err, (VirtualStainError, Cancelled)):
        return err
    if isinstance(err, ImportError):
        return VirtualStainError(f"A worker could not run {what}: {plain_text(err)}; install napari-virtual-stain "
                                 "and the model's dependencies on every worker.")
    if type(err).__name__ == "KilledWorker":
        return VirtualStainError(f"The workers running {what} died {RETRIES + 1} times (out of memory?); "
                                 "give the workers more memory or use smaller tiles.")
    return err


def check_environment(client, module: str) -> None:
    """Say, before any task is sent, when the cluster has no workers or cannot import ``module``.

    A worker that cannot unpickle a task (this package or torch missing) dies without the task
    ever failing, and the run would wait for ever; so the scheduler (which unpickles the task
    graph) and every worker first import the tasks' module through ``exec``, a builtin any
    Python can unpickle: a missing module comes back as an ordinary error.
    """
    address = client.scheduler.address
    try:
        client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
    except TimeoutError as err:
        raise InputError(f"The dask scheduler at {address} has no workers: start some (dask worker {address}) "
                         "and run again.") from err
    statement = f"import {module}"
    for where, run in (("The dask scheduler", client.run_on_scheduler), ("A dask worker", client.run)):
        try:
            run(exec, statement)
        except ImportError as err:
            raise VirtualStainError(f"{where} at {address} cannot import {module} ({plain_text(err)}); install "
                                    "napari-virtual-stain and the model's dependencies on the scheduler and every "
                                    "worker.") from err


def _reraise(err: BaseException, what: str):
    problem = _worker_problem(err, what)
    if problem is err:
        raise err
    raise problem from err


def run_jobs(function: Callable, jobs: Sequence[tuple], *, client=None, names: Sequence[str] | None = None,
             progress: Callable[[int, int], None] | None = None, cancel: threading.Event | None = None,
             retries: int = RETRIES) -> list:
    """``[function(*job) for job in jobs]``, here (``client`` None) or as one task per job on ``client``.

    Results come back in the order of ``jobs``. ``progress(done, total)`` follows completion;
    a set ``cancel`` event or Ctrl-C cancels every unfinished task and raises :class:`Cancelled`
    (or KeyboardInterrupt). The first failing task cancels the rest and its error is raised.
    """
    names = list(names or [str(i) for i in range(len(jobs))])
    total = len(jobs)
    if client is None:
        results = []
        for done, job in enumerate(jobs, start=1):
            check_cancel(cancel)
            try:
                results.append(function(*job))
            except Exception as err:
                _reraise(err, names[done - 1])
            if progress is not None:
                progress(done, total)
        return results

    from distributed import as_completed

    check_environment(client, function.__module__)
    run = uuid.uuid4().hex[:8]
    futures = [client.submit(function, *job, key=f"virtual-stain-{run}-{i}", retries=retries, pure=False)
               for i, job in enumerate(jobs)]
    index = {f.key: i for i, f in enumerate(futures)}
    results: list = [None] * total
    done = 0
    try:
        pending = as_completed(futures)
        while not pending.is_empty():
            check_cancel(cancel)
            if not pending.has_ready():
                time.sleep(0.05)  # the cancel event is checked 20 times a second
                continue
            for future in pending.next_batch(block=False):
                i = index[future.key]
                try:
                    results[i] = future.result()
                except Exception as err:
                    _reraise(err, names[i])
                done += 1
                if progress is not None:
                    progress(done, total)
    except BaseException:
        client.cancel(futures)  # Ctrl-C, cancel or a failed task: nothing keeps running for us
        raise
    return results
