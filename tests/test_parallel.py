"""map_units: the same results in-process and on a Dask LocalCluster, in order, with on_result per unit."""

from __future__ import annotations

from taskstudy.parallel import close_clients, map_units


def square_with_threads(x: int) -> tuple[int, int]:
    import torch

    return x * x, torch.get_num_threads()


def test_in_process_and_local_cluster_agree():
    units = list(range(7))
    seen = []
    serial = map_units(square_with_threads, units, workers=0, on_result=lambda u, r: seen.append(u))
    assert [r[0] for r in serial] == [u * u for u in units]
    assert sorted(seen) == units
    seen.clear()
    dask = map_units(square_with_threads, units, workers=2, on_result=lambda u, r: seen.append(u))
    assert [r[0] for r in dask] == [r[0] for r in serial]
    assert all(r[1] == 1 for r in dask)  # one torch thread per worker
    assert sorted(seen) == units


def test_existing_scheduler_address():
    """`cluster.address` sends units to a scheduler someone else started."""
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        out = map_units(square_with_threads, [3, 4], address=cluster.scheduler_address)
        close_clients()
    assert [r[0] for r in out] == [9, 16]
