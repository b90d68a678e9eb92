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
