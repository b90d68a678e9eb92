"""The Dask worker side of the study (its own module: importing it imports dask.distributed): the plugin every
worker of the client's cluster runs, and what it sets up (one torch thread, glibc's usual malloc thresholds)."""

from __future__ import annotations

import os
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin


class StudyWorker(WorkerPlugin):
    """Every worker of the client's cluster, those that join or are restarted later included, trains with one
    torch thread and glibc's usual malloc thresholds (`restore_malloc_thresholds`)."""

    name = "taskstudy-worker"

    def setup(self, worker: Any) -> None:
        one_torch_thread()
        restore_malloc_thresholds()


def one_torch_thread() -> None:
    """Training on a worker uses one torch thread: the cluster's parallelism is its worker processes."""
    import torch

    torch.set_num_threads(1)


# glibc's mallopt parameters (malloc.h) and the values its dynamic thresholds settle at on 64-bit Linux
# (DEFAULT_MMAP_THRESHOLD_MAX = 32 MiB; the trim threshold follows at twice the mmap threshold).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 * 2**20


def restore_malloc_thresholds() -> bool:
    """Undo the nanny's MALLOC_TRIM_THRESHOLD_ in a worker this study did not start (`dask worker` on a cluster).

    The variable turns glibc's dynamic mmap threshold off for the process's whole life: every tensor above 128 KiB
    is then mmap'ed and unmapped anew (page faults on every batch): a Step I network trained 1.5x slower on such a
    worker than on the study's LocalCluster (benchmarks/bench_cluster.py; 0.98x once this ran). It cannot be unset
    after start-up, but `mallopt` can set the thresholds to where the dynamic ones settle. Returns whether anything
    was changed (False without the variable or outside glibc)."""
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
    return mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD) == 1 and ok


def large_buffers_mmapped(nbytes: int = 2**20) -> bool:
    """Whether this process still mmaps a buffer of `nbytes` after one such buffer was freed: the slow path of a
    worker under the nanny's MALLOC_TRIM_THRESHOLD_ (a plain process raises its threshold after the first free).
    glibc 2.33+ only (mallinfo2); False elsewhere."""
    import ctypes

    class _Mallinfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _Mallinfo2
    except (OSError, AttributeError):
        return False
    libc.malloc.restype = ctypes.c_void_p
    grew = []
    for _ in range(2):
        before = libc.mallinfo2().hblks
        buf = libc.malloc(nbytes)
        grew.append(libc.mallinfo2().hblks > before)
        libc.free(ctypes.c_void_p(buf))
    return grew[-1]
