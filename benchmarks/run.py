"""The study's benchmark suite: every figure with its target and pass/fail, written into the results store.

    .venv/bin/python benchmarks/run.py [--params params/default.yaml] [--quick]

Each measurement runs against a naive baseline measured in the same run. The table goes to the store entry
`benchmarks` (read by chapter 12_performance) and to results/<profile>/benchmarks.csv.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))

from bench_taxonomy import bench_taxonomy  # noqa: E402

from taskstudy import benchmarks, task_networks  # noqa: E402
from taskstudy.params import load  # noqa: E402
from taskstudy.store import Store  # noqa: E402

SOURCES = ["normals", "autoencoding", "segment_semantic"]
TARGETS = ["depth_zbuffer", "edge2d", "class_scene"]


def row(bench: str, measure: str, value: float, target: str = "", ok: bool | None = None, **extra) -> dict:
    return {"benchmark": bench, "measure": measure, "value": float(value), "target": target,
            "pass": "" if ok is None else ("pass" if ok else "FAIL"), **extra}


def run(params_file: str, quick: bool = False, overrides: tuple[str, ...] = ()) -> pd.DataFrame:
    P = load(params_file, overrides)
    rows = []
    sizes = (32,) if quick else (32, 64, 128)
    for r in benchmarks.bench_render(sizes, n=256 if quick else 1024, repeats=1 if quick else 3):
        ok = r["median"] >= benchmarks.TARGET_32PX if r["image_size"] == 32 else None
        rows.append(row("renderer", f"scenes/s at {r['image_size']} px (median; min {r['min']:.0f}, "
                        f"max {r['max']:.0f})", r["median"], ">= 1000 at 32 px" if ok is not None else "", ok))
    task_networks.task_networks(P, tasks=sorted(set(SOURCES + TARGETS)))
    tr = benchmarks.bench_transfer(P, SOURCES[:2] if quick else SOURCES, TARGETS[:2] if quick else TARGETS)
    rows.append(row("Step II", "as built vs naive (speed-up)", tr["speedup"], ">= 3x", tr["speedup"] >= 3))
    rows.append(row("Step II", "readouts per minute, as built", tr["readouts_per_min_built"]))
    rows.append(row("Step II", "largest |mean score| difference, built vs naive", tr["max_score_diff"]))
    tn = benchmarks.bench_training(P, repeats=1 if quick else 3)
    rows.append(row("training", f"task network images/s (median; min {tn['min']:.0f}, max {tn['max']:.0f})",
                    tn["median"]))
    rows.append(row("training", "matmul GFLOP/s of this machine", tn["matmul_gflops"]))
    rows.append(row("training", "fraction of matmul FLOP/s reached", tn["fraction_of_matmul"]))
    for r in bench_taxonomy((5, 10) if quick else (5, 10, 15, 20, 25), (1, 2, 3),
                            budgets=(1, 3) if quick else None):
        rows.append(row("BIP", f"{r['n_tasks']} tasks, order {r['order']}: worst solve s", r["bip_s"], "<= 1 s",
                        r["bip_s"] <= 1.0, brute_s=r.get("brute_s")))
    for r in benchmarks.bench_scaleout(P, SOURCES[:2], TARGETS[:2] if quick else TARGETS):
        rows.append(row("Dask", f"Step II on {r['workers']} workers (0 = in-process): speed-up", r["speedup"],
                        wall_s=r["wall_s"], max_score_diff=r["max_score_diff"]))
    table = pd.DataFrame(rows)
    store = Store.for_params(P)
    store.save("benchmarks", {"profile": P.profile, "quick": quick}, table, fmt="parquet")
    table.to_csv(store.root / "benchmarks.csv", index=False)
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params/default.yaml")
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repeats (for tests)")
    ap.add_argument("-p", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    a = ap.parse_args()
    table = run(a.params, a.quick, tuple(a.overrides))
    with pd.option_context("display.width", 200, "display.max_colwidth", 80):
        print(table.drop(columns=[c for c in ("brute_s", "wall_s", "max_score_diff") if c in table]).to_string(
            index=False, float_format=lambda v: f"{v:.3g}"))
    failed = int((table["pass"] == "FAIL").sum())
    print(f"{failed} of {int((table['pass'] != '').sum())} targets missed" if failed else "every target met")


if __name__ == "__main__":
    main()
