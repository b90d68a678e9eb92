"""Reliability on the smoke profile with real processes and files: interruption, Ctrl-C, concurrent runs,
determinism, a Dask worker dying mid-unit."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, copy_study

FOUR = "common.tasks=[autoencoding, normals, depth_zbuffer, class_scene]"
RUN = ["run", "02", "03", "--params", "params/smoke.yaml", "--quiet", "-p", FOUR,
       "-p", "common.n_train=400", "-p", "task_networks.epochs=3", "-p", "transfers.beam=2"]


def start(study: Path, args=RUN) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "taskstudy"), *args], cwd=study, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def kill_tree(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the run and every process under it (papermill starts the kernel in its own process group)."""
    import psutil

    parent = psutil.Process(proc.pid)
    for p in [parent, *parent.children(recursive=True)]:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def entries(study: Path, name: str) -> list[Path]:
    return sorted((study / "results/smoke" / name).glob("*.meta.json"))


def wait_for(cond, timeout: float = 300) -> None:
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise TimeoutError("condition not reached")
        time.sleep(0.2)


def trained_in_logs(study: Path) -> int:
    """Task networks trained, summed over every run's log (the chapter prints 'K trained in this run')."""
    total = 0
    for log in (study / "results/smoke/logs").glob("*.log"):
        total += sum(int(m) for m in re.findall(r"task networks; (\d+) trained in this run", log.read_text()))
    return total


def tables(study: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (study / "results/smoke/transfer_scores").glob("*.parquet")}


@pytest.mark.slow
def test_sigkill_during_training_then_rerun_matches_uninterrupted(tmp_path):
    a = copy_study(tmp_path / "a")
    proc = start(a)
    wait_for(lambda: len(entries(a, "task_network")) >= 1)
    kill_tree(proc)
    proc.wait()
    time.sleep(1)
    done_before = len(entries(a, "network_scores"))  # units with both of their entries written
    assert done_before < 4 and not (a / "book/chapters/03_transfers.ipynb").exists()
    code, out, err = finish(start(a))
    assert code == 0, err
    trained = re.search(r"(\d+) trained in this run", (a / "book/chapters/02_task_networks.ipynb").read_text())
    assert int(trained.group(1)) == 4 - done_before  # only the unfinished units were recomputed

    b = copy_study(tmp_path / "b")
    code, _, err = finish(start(b))
    assert code == 0, err
    assert tables(a) and tables(a) == tables(b)  # byte-identical per-image score tables
    assert not list((a / "results/smoke").rglob(".*.tmp"))


@pytest.mark.slow
def test_ctrl_c_stops_cleanly(tmp_path):
    s = copy_study(tmp_path / "s")
    proc = start(s)
    wait_for(lambda: len(entries(s, "task_network")) >= 1)
    os.killpg(proc.pid, signal.SIGINT)
    code, out, err = finish(proc, timeout=120)
    assert code != 0
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("taskstudy:")]
    assert len(lines) == 1 and "interrupted" in lines[0], err[-2000:]
    assert not list((s / "results/smoke").rglob(".*.tmp"))  # no partial store entries
    for meta in (s / "results/smoke").rglob("*.meta.json"):
        assert any(meta.parent.glob(meta.name.replace(".meta.json", ".*[!n]")))  # its data file is there


@pytest.mark.slow
def test_two_concurrent_runs_compute_each_unit_once(tmp_path):
    s = copy_study(tmp_path / "s")
    procs = [start(s), start(s)]
    results = [finish(p) for p in procs]
    assert all(code == 0 for code, _, _ in results), [err[-1500:] for _, _, err in results]
    assert trained_in_logs(s) == 4  # four task networks, each trained by exactly one of the two runs

    single = copy_study(tmp_path / "single")
    assert finish(start(single))[0] == 0
    assert tables(s) == tables(single)


@pytest.mark.slow
def test_different_seed_gives_different_numbers(tmp_path):
    a = copy_study(tmp_path / "a")
    assert finish(start(a, [*RUN, "-p", "common.seed=1"]))[0] == 0
    b = copy_study(tmp_path / "b")
    assert finish(start(b))[0] == 0
    assert tables(a) and tables(a) != tables(b)


def _dies_once(marker: str) -> int:
    if not os.path.exists(marker):
        Path(marker).write_text("died")
        os._exit(1)  # the worker process dies mid-unit
    return 42


@pytest.mark.slow
def test_dask_worker_killed_mid_unit_is_retried(tmp_path):
    from taskstudy.parallel import close_clients, map_units

    try:
        out = map_units(_dies_once, [str(tmp_path / "marker")], workers=1)
    finally:
        close_clients()
    assert out == [42] and (tmp_path / "marker").exists()
