"""One way to run independent units of work: `run_units(fn, units, store=..., kind=..., key=...)`, over `map_units`.

Step II is N^2 readouts, Standley is 2^N groupings, Yosinski is 4L runs; each unit is a pure function of its
arguments and upstream store entries. `map_units` runs them in-process (`workers=0`), on a Dask LocalCluster
of single-threaded worker processes (torch set to one thread each), or on an existing Dask scheduler
(`cluster.address`). Workers only return results; the caller (the client) writes the store, through
`on_result` as each unit finishes, so an interrupted run keeps every finished unit. Each unit run on a worker
reports the CPU seconds it took (`cpu_account`: a chapter's cost is its kernel's CPU plus its units').
`run_units` adds what every unit kind of the study needs on top: a unit whose store entry exists is not run, and
one that runs is claimed by its entry's file lock first (`map_claimed`), so concurrent runs compute it once.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import resource
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from tqdm.auto import tqdm as _tqdm

U = TypeVar("U")
R = TypeVar("R")


def progress(*args: Any, **kwargs: Any) -> Any:
    """A tqdm bar (a widget in Jupyter, text in a terminal), off when TQDM_DISABLE=1 (set by `taskstudy run`:
    progress belongs to the terminal, not to the book's pages)."""
    if os.environ.get("TQDM_DISABLE") == "1":
        kwargs["disable"] = True
    return _tqdm(*args, **kwargs)


log = logging.getLogger(__name__)
_CLIENTS: dict[tuple[int, str | None], Any] = {}
_CLIENTS_LOCK = threading.Lock()


#: Set by `shared_cluster` (the CLI, for a run of several chapters): "<workers>@<scheduler address>". A chapter's
#: kernel that asks for that many local workers joins this cluster instead of starting its own.
SHARED_ENV = "TASKSTUDY_DASK_CLUSTER"


def _local_cluster(workers: int) -> Any:
    import dask
    from dask.distributed import LocalCluster

    # Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which turns off glibc's dynamic mmap
    # threshold: every large tensor is then mmap'ed and unmapped anew, and training ran 1.65x slower in a
    # worker than in a plain process (measured on this study's networks). Unset it, keep the thread limits.
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                            silence_logs=logging.ERROR)


def _shared_address(workers: int) -> str | None:
    n, _, address = os.environ.get(SHARED_ENV, "").partition("@")
    return address if address and n == str(workers) else None


def get_client(workers: int, address: str | None = None) -> Any:
    """A Dask client, created once per process and reused: the scheduler at `address`, else the run's shared
    cluster when it has `workers` workers (`shared_cluster`), else a LocalCluster of `workers` single-threaded
    processes."""
    from dask.distributed import Client

    address = address or _shared_address(workers)
    key = (workers, address)
    with _CLIENTS_LOCK:  # threads of one process (robustness.run_variations) share one client
        client = _CLIENTS.get(key)
        if client is not None and client.status == "running":
            return client
        client = Client(address) if address else Client(_local_cluster(workers))
        _prepare_workers(client)
        _CLIENTS[key] = client
        return client


def _prepare_workers(client: Any) -> None:
    """Register StudyWorker with the cluster (run on every current worker and on each one that joins)."""
    from taskstudy.engine.dask_plugin import StudyWorker

    client.register_plugin(StudyWorker(), name=StudyWorker.name)


@contextlib.contextmanager
def shared_cluster(workers: int) -> Iterator[Any]:
    """One LocalCluster for a run of several chapters: started once, joined by every chapter's kernel (through
    SHARED_ENV, which the kernels inherit) instead of one start-up and teardown per chapter, and closed once at
    the end, workers first, so no worker outlives its scheduler. Yields the client (None for workers=0)."""
    if workers <= 0:
        yield None
        return
    from dask.distributed import Client

    cluster = _local_cluster(workers)
    client = Client(cluster)
    os.environ[SHARED_ENV] = f"{workers}@{cluster.scheduler_address}"
    try:
        yield client
    finally:
        os.environ.pop(SHARED_ENV, None)
        client.close()
        cluster.close()


def workers_peak_rss_mb(client: Any) -> float:
    """The largest resident set any worker of `client` has reached (MB); 0 without a client."""
    if client is None:
        return 0.0
    import resource

    peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return max(peaks.values(), default=0.0)


def close_clients() -> None:
    """Close every client (and LocalCluster) this process started; a shared cluster is left to its owner."""
    for client in list(_CLIENTS.values()):
        cluster = getattr(client, "cluster", None)
        client.close()
        if cluster is not None:
            cluster.close()
    _CLIENTS.clear()


atexit.register(close_clients)


_UNITS_CPU = {"s": 0.0, "units": 0}
_UNITS_CPU_LOCK = threading.Lock()

_PRIORITY = {"units": 0}  # the Dask priority of the units this process sends (higher: sooner); see set_priority


def set_priority(priority: int) -> None:
    """The priority the units this process sends from now on get on the cluster's scheduler (higher runs first,
    default 0). `taskstudy run` gives each chapter's kernel its place on the chapters' critical path
    (`catalog.priority`), so that when chapters share the workers, the one others wait on is not slowed by one
    nothing waits on: the idle turns of the first go to the second. The units and their results do not change."""
    _PRIORITY["units"] = int(priority)


class _CpuTimed:
    """`fn`, returning (its result, the CPU seconds of the thread that ran it): a worker runs one unit per
    thread with one torch thread, so that is the unit's CPU cost, whatever else shares the machine."""

    def __init__(self, fn: Callable[[Any], Any]):
        self.fn = fn

    def __call__(self, unit: Any) -> tuple[Any, float]:
        t0 = time.thread_time()
        result = self.fn(unit)
        return result, time.thread_time() - t0


def cpu_account() -> dict[str, float]:
    """This process's CPU seconds so far: its own (every thread, in-process units included) and those of the units
    it sent to workers. `pipeline.execute` reads it from a chapter's kernel at the chapter's end."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    with _UNITS_CPU_LOCK:
        return {"kernel_cpu_s": round(own.ru_utime + own.ru_stime, 2), "units_cpu_s": round(_UNITS_CPU["s"], 2),
                "units_sent": _UNITS_CPU["units"]}


def map_units(
    fn: Callable[[U], R],
    units: Sequence[U],
    *,
    workers: int = 0,
    address: str | None = None,
    on_result: Callable[[U, R], None] | None = None,
    desc: str | None = None,
    retries: int = 2,
) -> list[R]:
    """Apply `fn` to every unit and return the results in the order of `units`.

    workers=0 runs in this process; workers>0 uses a Dask LocalCluster of that many single-threaded
    processes; `address` sends the units to an existing scheduler. `on_result(unit, result)` is called in this
    process as each unit finishes (write the store there). A unit whose worker dies is retried `retries` times.
    """
    units = list(units)
    if not units:  # nothing to do: no progress bar, no cluster start-up
        return []
    results: list[Any] = [None] * len(units)
    bar = progress(total=len(units), desc=desc or getattr(fn, "__name__", "units"), unit="unit", leave=False)
    try:
        if workers == 0 and not address:
            for i, u in enumerate(units):
                results[i] = fn(u)
                if on_result:
                    on_result(u, results[i])
                bar.update()
            return results
        from dask.distributed import as_completed

        client = get_client(workers, address)
        name = getattr(fn, "__name__", "unit")
        futures = client.map(_CpuTimed(fn), units, key=[f"{name}-{uuid.uuid4().hex}" for _ in units],
                             retries=retries, priority=_PRIORITY["units"])
        index = {f.key: i for i, f in enumerate(futures)}
        try:
            for fut in as_completed(futures):
                i = index[fut.key]
                results[i], cpu = fut.result()
                with _UNITS_CPU_LOCK:
                    _UNITS_CPU["s"] += cpu
                    _UNITS_CPU["units"] += 1
                if on_result:
                    on_result(units[i], results[i])
                bar.update()
        except BaseException:
            client.cancel(futures)
            raise
        return results
    finally:
        bar.close()


def map_claimed(
    fn: Callable[[U], R],
    units: Sequence[U],
    lock_of: Callable[[U], Any],
    still_missing: Callable[[U], U | None],
    *,
    on_result: Callable[[U, R], None],
    **kwargs: Any,
) -> list[U]:
    """`map_units` for units that several processes may want at once (two `taskstudy run` on one profile).

    Each unit is claimed by a file lock (`lock_of(unit)`, a filelock.FileLock) held while it runs here; a unit
    whose lock another process holds is set aside, waited for after the others, and then run only for what
    `still_missing(unit)` says is left (None: the other process finished it); a unit claimed at once is checked the
    same way first (another process may have finished it and let go of its lock since the caller looked), so no
    finished unit is computed, or its entries rewritten, twice. Returns the units run here.
    """
    import filelock

    held, deferred = [], []
    for u in units:
        lock = lock_of(u)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            deferred.append((u, lock))
            continue
        left = still_missing(u)  # claimed: finished meanwhile by another run (or thread) that held the lock before?
        if left is None:
            lock.release()
        else:
            held.append((left, lock))
    try:
        map_units(fn, [u for u, _ in held], on_result=on_result, **kwargs)
    finally:
        for _, lock in held:
            lock.release()
    done = [u for u, _ in held]
    for u, lock in deferred:
        with lock:
            left = still_missing(u)
            if left is not None:
                map_units(fn, [left], on_result=on_result, **kwargs)
                done.append(left)
    return done


COMPUTED: dict[str, int] = {}  # units computed in this process, per store entry kind (run_units)


def run_units(
    fn: Callable[[U], R],
    units: Sequence[U],
    *,
    store: Any,
    kind: str,
    key: Callable[[U], dict[str, Any]],
    version: str,
    save: Callable[[U, R], None],
    common: Any,  # sections.Common: its workers and cluster.address (the runner takes nothing else of params)
    done: Callable[[U], bool] | None = None,
    left: Callable[[U], U | None] | None = None,
    desc: str | None = None,
) -> list[U]:
    """The one way the study runs its units of work (issue 19, item 2): every unit kind gets the same guarantees.

    A unit is done when its store entry `kind` under `key(unit)` at `version` exists, or when `done(unit)` says so
    (a unit with several entries); `left(unit)` instead gives what is left of a unit (None: nothing). The units not
    done are claimed by that entry's file lock (`store.lock`), so two runs on one store never compute a unit twice
    (map_claimed); they run in this process or on the Dask cluster of `common.workers` / `common.cluster.address`
    with a progress bar and retries (map_units); and the client writes their results as each one finishes
    (`save(unit, result)`), so an interrupted run keeps every finished unit. Returns the units computed here;
    `COMPUTED[kind]` counts them per process."""
    def remaining(u: U) -> U | None:
        if left is not None:
            return left(u)
        return None if (done(u) if done else store.exists(kind, key(u), version)) else u

    todo = [r for r in map(remaining, units) if r is not None]
    if not todo:
        return []
    ran = map_claimed(fn, todo, lambda u: store.lock(kind, key(u), version), remaining, on_result=save,
                      workers=common.workers, address=common.cluster.address, desc=desc or kind.replace("_", " "))
    with _UNITS_CPU_LOCK:  # chapters side by side share this process's counters
        COMPUTED[kind] = COMPUTED.get(kind, 0) + len(ran)
    return ran


@contextlib.contextmanager
def units_beside(
    fn: Callable[[U], R],
    units: Sequence[U],
    *,
    store: Any,
    kind: str,
    key: Callable[[U], dict[str, Any]],
    version: str,
    save: Callable[[U, R], None],
    common: Any,  # sections.Common: its workers and cluster.address
) -> Iterator[None]:
    """`run_units` for units that run beside the caller's own work, as a block: `with units_beside(...): ...`.

    A long unit that would otherwise wait for a chapter's many short ones (chapter 06's ImageNet-like network
    beside its Steps I-II) fills the workers' idle turns instead. On a cluster, each unit that is not stored and
    not claimed by another run is claimed (its entry's lock) and sent to the workers on entry; after the block its
    result is saved and its claim let go. What is left after the block (everything, in-process; a unit another run
    held, waited for on its claim) goes through `run_units`. An error in the block cancels the units sent and lets
    go of their claims. Units are counted in `COMPUTED[kind]` and their CPU time in `cpu_account` like any other."""
    import filelock

    sent: list[tuple[U, Any, Any]] = []
    if common.workers or common.cluster.address:
        client = get_client(common.workers, common.cluster.address)
        for u in units:
            lock = store.lock(kind, key(u), version)
            try:
                lock.acquire(timeout=0)
            except filelock.Timeout:
                continue  # another run computes it: waited for after the block
            if store.exists(kind, key(u), version):
                lock.release()
                continue
            name = getattr(fn, "__name__", "unit")
            sent.append((u, lock, client.submit(_CpuTimed(fn), u, key=f"{name}-{uuid.uuid4().hex}", retries=2,
                                                   priority=_PRIORITY["units"])))
    try:
        yield
        for u, _, fut in sent:
            result, cpu = fut.result()
            with _UNITS_CPU_LOCK:
                _UNITS_CPU["s"] += cpu
                _UNITS_CPU["units"] += 1
                COMPUTED[kind] = COMPUTED.get(kind, 0) + 1
            save(u, result)
    finally:
        for _, lock, fut in sent:
            fut.cancel()
            lock.release()
    run_units(fn, units, store=store, kind=kind, key=key, version=version, save=save, common=common)
