"""Training speed on workers the study did not start (`dask scheduler` + `dask worker`, as a cluster user starts
them) against the LocalCluster a run starts itself and a plain process.

Run ``python benchmarks/bench_cluster.py [--images N] [--repeats R]``. Each worker trains one Step I network
(normals, default sizes, random inputs) for one epoch of N images, R times; the figure is images per second per
worker (median). Three cases: the CLI cluster's workers as they start (the nanny's MALLOC_TRIM_THRESHOLD_), the
same workers after the study's worker plugin (taskstudy.engine.dask_plugin.StudyWorker), and a LocalCluster. Target: the
prepared CLI workers within 10% of the LocalCluster.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def train_rate(n_images: int = 1024, repeats: int = 3) -> float:
    """Median images/s of one epoch of a Step I network (normals, default widths, batch 64, bf16 + NHWC)."""
    import statistics

    import torch

    from taskstudy.nn.models import TaskNetwork
    from taskstudy.nn.train import TrainConfig, fit
    from taskstudy.world import tasks

    t = tasks.get_task("normals")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n_images, 3, 32, 32, generator=g), torch.randn(n_images, 3, 32, 32, generator=g)
    rates = []
    for r in range(repeats + 1):  # the first epoch warms up (allocator, kernels) and is not counted
        net = TaskNetwork(t.kind, t.channels)
        t0 = time.perf_counter()
        fit(net, x, y, t.loss, TrainConfig(1, 64, 1e-3, seed=r, precision="bf16", channels_last=True))
        if r:
            rates.append(n_images / (time.perf_counter() - t0))
    return statistics.median(rates)


def _on_every_worker(client, n: int, repeats: int) -> float:
    workers = list(client.scheduler_info()["workers"])
    futures = [client.submit(train_rate, n, repeats, workers=[w], pure=False) for w in workers]
    return min(f.result() for f in futures)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    from distributed import Client

    from taskstudy.engine.dask_plugin import StudyWorker, one_torch_thread
    from taskstudy.engine.parallel import _local_cluster

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        info = Path(tmp) / "scheduler.json"
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                                   "--dashboard-address", ":0", "--scheduler-file", str(info)], **quiet)]
        try:
            while not (info.exists() and "address" in info.read_text()):
                time.sleep(0.2)
            address = json.loads(info.read_text())["address"]
            procs.append(subprocess.Popen([str(BIN / "dask"), "worker", address, "--nworkers", "2", "--nthreads",
                                           "1", "--host", "127.0.0.1", "--no-dashboard"], cwd=tmp, **quiet))
            with Client(address) as client:
                client.wait_for_workers(2, timeout=60)
                client.run(one_torch_thread)
                rows["dask worker, as started"] = _on_every_worker(client, a.images, a.repeats)
                client.register_plugin(StudyWorker(), name=StudyWorker.name)
                rows["dask worker, prepared by the study"] = _on_every_worker(client, a.images, a.repeats)
        finally:
            for p in reversed(procs):
                p.terminate()
                p.wait(timeout=60)
    cluster = _local_cluster(2)
    with Client(cluster) as client:
        client.run(one_torch_thread)
        rows["LocalCluster of the study"] = _on_every_worker(client, a.images, a.repeats)
    cluster.close()
    base = rows["LocalCluster of the study"]
    for name, rate in rows.items():
        print(f"{name:<36} {rate:7.0f} images/s per worker ({rate / base:.2f}x the LocalCluster)")
    ok = rows["dask worker, prepared by the study"] >= 0.9 * base
    print("prepared workers " + ("meet" if ok else "MISS") + " the target (within 10% of the LocalCluster)")


if __name__ == "__main__":
    main()
