"""Step I's schedule calibrated on val loss (issue 17): which ceiling, patience and learning rate train the task
networks to convergence?

    .venv/bin/python benchmarks/calibrate_step1.py [--params params/default.yaml] [--seeds 0 1]
        [--tasks edge2d normals ... (default: all)] [--grid 16/3/0.002 32/6/0.002 16/3/0.002/32 ...]

Every setting `EPOCHS/PATIENCE/LR[/BATCH]` retrains the listed tasks' networks (all else as the profile says: the same
rendered splits, `common.split_seed` held at the profile's, only the training seed varied) through the study's own
Step I (taskstudy.taskonomy.task_networks), so what it trains lands in the results store and a study run with the chosen
setting reuses it. Prints, per task and setting, the mean val loss per image (all val images) relative to the first
setting's, seed-averaged, with the seed spread |seed a - seed b| / mean beside it, the epochs kept and the
network's training seconds (the rows also go to results/<profile>/calibrate_step1.csv). Chooses nothing: the
choice, and why, is written in the profile's comments.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from taskstudy.engine.parallel import shared_cluster
from taskstudy.engine.params import load
from taskstudy.engine.store import Store
from taskstudy.taskonomy.task_networks import study_tasks, task_networks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params/default.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--tasks", nargs="+", default=None, help="default: every Step I task of the profile")
    ap.add_argument("--grid", nargs="+", default=["16/3/0.002", "16/3/0.004", "16/3/0.008", "32/6/0.002"])
    ap.add_argument("-p", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    a = ap.parse_args()
    base = load(a.params, a.overrides)
    a.tasks = a.tasks or study_tasks(base.common)
    split_seed = base.common.split_seed if base.common.split_seed is not None else base.common.seed
    rows = []
    with shared_cluster(base.common.workers):
        for setting in a.grid:
            epochs, patience, lr, *batch = setting.split("/")
            for s in a.seeds:
                p = load(a.params, [*a.overrides, f"common.seed={s}", f"common.split_seed={split_seed}",
                                    f"task_networks.epochs={epochs}", f"task_networks.patience={patience}",
                                    f"task_networks.lr={lr}", *(f"task_networks.batch_size={b}" for b in batch)])
                step = task_networks(p, a.tasks)
                for t in a.tasks:
                    r = step.results[t]
                    rows.append({"setting": setting, "seed": s, "task": t,
                                 "val_loss": float(-np.mean(r["val_scores"]["network"])),
                                 "kept": r["network"]["log"]["best_epoch"], "ran": len(r["network"]["history"]),
                                 "train_s": r["network"]["wall_s"]})
                print(f"{setting} seed {s}: {len(step.computed)} trained, {step.wall_s:.0f} s", flush=True)
    df = pd.DataFrame(rows)
    out = Store.for_params(base).root / "calibrate_step1.csv"
    df.to_csv(out, index=False)
    print("rows in", out)
    g = df.groupby(["task", "setting"])
    mean = g["val_loss"].mean().unstack()
    spread = (g["val_loss"].max() - g["val_loss"].min()).unstack() / mean
    ref = a.grid[0]
    rel = mean.div(mean[ref], axis=0)[a.grid]
    with pd.option_context("display.width", 200):
        print("\nval loss relative to", ref, "(seed mean)\n", rel.round(3).to_string())
        print("\nmedian over tasks\n", rel.median().round(3).to_string())
        print("\nseed spread |a - b| / mean\n", spread[a.grid].round(3).to_string())
        print("\nepochs kept (seed mean)\n", g["kept"].mean().unstack()[a.grid].round(1).to_string())
        print("\ntraining s per network (seed mean)\n", g["train_s"].mean().unstack()[a.grid].round(1).to_string())


if __name__ == "__main__":
    main()
