"""map_units: the same results in-process and on a Dask LocalCluster, in order, with on_result per unit."""

from __future__ import annotations

from taskstudy.engine.parallel import close_clients, map_units


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


def test_a_claim_rechecks_what_another_run_finished_meanwhile(tmp_path):
    """The caller saw units 1-3 missing; before this run claims them, another one finished unit 2 and let go of
    its lock. The claim checks again: unit 2 is not computed twice (its entries not rewritten)."""
    import filelock

    from taskstudy.engine.parallel import map_claimed

    finished_elsewhere = {2}
    ran = []
    done = map_claimed(lambda u: ran.append(u) or u, [1, 2, 3], lambda u: filelock.FileLock(tmp_path / f"{u}.lock"),
                       lambda u: None if u in finished_elsewhere else u, on_result=lambda u, r: None)
    assert ran == [1, 3] and done == [1, 3]
    for u in (1, 2, 3):  # every claim was let go: another holder can take each lock at once
        with filelock.FileLock(tmp_path / f"{u}.lock", thread_local=False).acquire(timeout=0):
            pass
