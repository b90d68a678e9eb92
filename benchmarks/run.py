"""The study's benchmark suite: every figure with its target and pass/fail, written into the results store.

    .venv/bin/python benchmarks/run.py [--params params/default.yaml] [--quick] [-p section.key=value]

Each measurement runs against a naive baseline measured in the same run (taskstudy.report.benchmarks.run_suite). The
table goes to the store entry `benchmarks` (chapter 15_performance) and to results/<profile>/benchmarks.csv.
"""

from __future__ import annotations

import argparse

import pandas as pd

from taskstudy.engine.params import load
from taskstudy.report.benchmarks import run_suite


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params/default.yaml")
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repeats (for tests)")
    ap.add_argument("-p", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    a = ap.parse_args()
    table = run_suite(load(a.params, a.overrides), a.quick)
    with pd.option_context("display.width", 200, "display.max_colwidth", 80):
        print(table.drop(columns=[c for c in ("brute_s", "wall_s", "max_score_diff") if c in table]).to_string(
            index=False, float_format=lambda v: f"{v:.3g}"))
    failed = int((table["pass"] == "FAIL").sum())
    print(f"{failed} of {int((table['pass'] != '').sum())} targets missed" if failed else "every target met")


if __name__ == "__main__":
    main()
