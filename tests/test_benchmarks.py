"""The benchmark suite runs on smoke sizes and writes its table (no timing is asserted here)."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest


@pytest.mark.slow
def test_benchmark_suite_runs_on_smoke(tmp_path, repo_root):
    proc = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--params", "params/smoke.yaml", "--quick",
         "-p", f"common.results_dir={tmp_path}"],
        cwd=repo_root, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = pd.read_csv(tmp_path / "smoke" / "benchmarks.csv")
    missed = (table["pass"] == "FAIL").any()  # the printed verdict follows the table's
    assert ("targets missed" in proc.stdout) == missed and ("every target met" in proc.stdout) == (not missed)
    assert set(table.benchmark) == {"renderer", "Step II", "training", "BIP", "Dask"}
    assert table.value.notna().all()


def test_chapter_targets_hold_each_chapter_to_its_cpu_seconds():
    from taskstudy.report import budgets

    runs = pd.DataFrame({"chapter": ["08_layer_transfer", "02_task_networks", "12_robustness"],
                         "wall s": [200.0, 900.0, 700.0], "CPU s": [500.0, 1800.0, 900.0]})
    out = budgets.chapter_targets(runs, cores=2).set_index("chapter")
    assert list(out.index) == ["08_layer_transfer", "12_robustness"]  # 02 has no target of its own
    # 08: 200 s of wall but 500 CPU-s > 2 x 240; 12: 700 s of wall (beside another chapter), 900 CPU-s <= 2 x 480
    assert not out.loc["08_layer_transfer", "pass"] and out.loc["12_robustness", "pass"]
    assert out.loc["12_robustness", "target_cpu_s"] == 2 * budgets.CHAPTER_TARGETS_S["12_robustness"]


def test_study_wall_counts_chapters_side_by_side_once():
    from taskstudy.report import budgets

    runs = pd.DataFrame({"chapter": ["a", "b", "c", "d"], "wall s": [60.0, 50.0, 30.0, 7.0],
                         "run": ["1000.0", "1000.0", "2000.0", None],
                         "start": [1001.0, 1005.0, 2000.0, 0.0], "end": [1061.0, 1055.0, 2030.0, 7.0]})
    # run 1000: a and b side by side, 61 s from its start; run 2000: 30 s; d has no run: its wall
    assert budgets.study_wall_s(runs) == pytest.approx(61 + 30 + 7)
    # the run in progress counts up to now
    assert budgets.study_wall_s(runs, current_run="2000.0", now=2100.0) == pytest.approx(61 + 100 + 7)


def test_time_targets_double_without_native_bf16():
    from taskstudy.report import budgets

    runs = pd.DataFrame({"chapter": ["12_robustness"], "wall s": [700.0], "CPU s": [1500.0], "run": [None],
                         "start": [0.0], "end": [700.0], "peak memory MB": [100.0]})
    fast = budgets.study_targets(runs, native_bf16=True)
    slow = budgets.study_targets(runs, native_bf16=False)
    assert (fast["target_min"], slow["target_min"]) == (30.0, 60.0)
    assert not fast["per_chapter"].iloc[0]["pass"] and slow["per_chapter"].iloc[0]["pass"]  # 1500 vs 960 / 1920
    assert "without native bf16: 60 minutes" in budgets.study_report(slow)
