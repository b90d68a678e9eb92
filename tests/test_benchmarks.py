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
    assert "targets missed" in proc.stdout or "every target met" in proc.stdout
    table = pd.read_csv(tmp_path / "smoke" / "benchmarks.csv")
    assert set(table.benchmark) == {"renderer", "Step II", "training", "BIP", "Dask"}
    assert table.value.notna().all()


def test_chapter_targets_compare_last_runs_with_their_targets():
    from taskstudy import benchmarks

    runs = pd.DataFrame({"chapter": ["08_layer_transfer", "02_task_networks", "12_robustness"],
                         "wall s": [250.0, 900.0, 300.0]})
    out = benchmarks.chapter_targets(runs).set_index("chapter")
    assert list(out.index) == ["08_layer_transfer", "12_robustness"]  # 02 has no target of its own
    assert not out.loc["08_layer_transfer", "pass"] and out.loc["12_robustness", "pass"]
    assert out.loc["12_robustness", "target_s"] == benchmarks.CHAPTER_TARGETS_S["12_robustness"]
