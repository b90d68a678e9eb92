"""map_units: the same results in-process and on a Dask LocalCluster, in order, with on_result per unit."""

from __future__ import annotations

from taskstudy.parallel import map_units


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
