"""The Dask worker plugin of the study (its own module: importing it imports dask.distributed)."""

from __future__ import annotations

from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from taskstudy.engine.parallel import _one_torch_thread, restore_malloc_thresholds


class StudyWorker(WorkerPlugin):
    """Every worker of the client's cluster, those that join or are restarted later included, trains with one
    torch thread and glibc's usual malloc thresholds (`parallel.restore_malloc_thresholds`)."""

    name = "taskstudy-worker"

    def setup(self, worker: Any) -> None:
        _one_torch_thread()
        restore_malloc_thresholds()
