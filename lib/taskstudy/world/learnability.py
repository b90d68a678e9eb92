"""How learnable the object world is (issue 18): the table chapter 01 shows.

For each (task, training images) row, the layer-transfer chapter's network (nn.layernet.LayerNet, with that chapter's
width, schedule and early stopping) is trained from scratch on the study world's training images relabelled for
the task (objects.task_families: the 48 classes, the super-category, the shape, the colour) and scored on its test
images: top-1 against chance, and the CPU seconds it took. Rows run as units (parallel.run_units) and are kept in
the store, keyed by everything that determines them; chapter 08 renders the same splits and reads them back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from taskstudy.engine.codehash import computation_hash
from taskstudy.engine.store import Store, stable_hash
from taskstudy.nn import layernet, train
from taskstudy.world import data, objects

if TYPE_CHECKING:
    from taskstudy.engine.params import StudyParams

VERSION = "1"
TASKS = ("class", "supercategory", "shape", "colour")


@dataclass(frozen=True)
class Row:
    store_root: str
    task: str  # a name of objects.task_families() over every class
    n_images: int  # training images (the first n of the train split)
    pool: int  # images rendered for the train split (the largest n of the table)
    n_val: int
    n_test: int
    seed: int
    image_size: int
    net: tuple  # sorted items of the layer-transfer net's settings

    def key(self) -> dict[str, Any]:
        return {"task": self.task, "n_images": self.n_images, "pool": self.pool, "n_val": self.n_val,
                "n_test": self.n_test, "seed": self.seed, "image_size": self.image_size, "net": dict(self.net),
                "code": computation_hash(run_row)}


def _relabel(task: str, label: np.ndarray) -> tuple[np.ndarray, int]:
    spec = {name: new for name, used, new in objects.task_families() if len(used) == objects.num_classes()}
    if task not in spec:
        raise ValueError(f"unknown learnability task {task!r} (one of {sorted(spec)})")
    return spec[task][label], int(spec[task].max()) + 1


def run_row(row: Row) -> dict[str, float]:
    """Train and score one row: top-1 on the test split, chance, epochs run, CPU seconds."""
    t0 = time.process_time()
    store, net = Store(row.store_root), dict(row.net)
    d = {s: data.object_split(store, s, n, row.seed, row.image_size)
         for s, n in (("train", row.pool), ("val", row.n_val), ("test", row.n_test))}
    x = {s: torch.from_numpy(v["rgb"]) for s, v in d.items()}
    x["train"] = x["train"][: row.n_images]
    mean = x["train"].mean(dim=(0, 2, 3), keepdim=True)
    std = x["train"].std(dim=(0, 2, 3), keepdim=True) + 1e-6
    x = {s: (v - mean) / std for s, v in x.items()}
    y, n_classes = {}, 0
    for s, v in d.items():
        lab, n_classes = _relabel(row.task, v["label"])
        y[s] = torch.from_numpy(lab)
    y["train"] = y["train"][: row.n_images]
    seed = int(stable_hash([row.seed, row.task, row.n_images], 8), 16)
    train.seed_everything(seed)
    model = layernet.LayerNet(layernet.NetConfig(net["layers"], net["width"], net["hidden"], row.image_size, n_classes))
    cfg = train.TrainConfig(net["epochs"], net["batch_size"], net["lr"], seed=seed, precision=net["precision"],
                            channels_last=net["channels_last"])
    log = train.fit_validated(model, x["train"], y["train"], F.cross_entropy, cfg, (x["val"], y["val"]),
                              patience=net["patience"])
    acc = float((train.predict(model, x["test"]).argmax(1) == y["test"]).float().mean())
    return {"top1": acc, "chance": 1 / n_classes, "classes": n_classes, "epochs": log.epochs_run,
            "cpu_s": time.process_time() - t0}


def learnability_table(P: StudyParams, sizes: list[int], tasks: list[str] | tuple[str, ...] = TASKS) -> pd.DataFrame:
    """One row per (task, training images): the class task at every size in `sizes`, the other tasks at the
    largest. Columns: task, classes, training images, images per class, top-1, chance, x chance, epochs, CPU s."""
    if not sizes:
        raise ValueError("learnability needs at least one training-set size")
    V, store = P.values("layer_transfer"), Store.for_params(P)
    net = tuple(sorted([(k, V[k]) for k in ("layers", "width", "hidden", "epochs", "patience", "batch_size", "lr")]
                       + list(train.kernels(P.common).items())))
    pool = max(sizes)
    common = {"store_root": str(store.root), "pool": pool, "n_val": V["n_val"], "n_test": V["n_test"],
              "seed": P.common.seed, "image_size": V["image_size"], "net": net}
    rows = [Row(task="class", n_images=n, **common) for n in sorted(sizes)]
    rows += [Row(task=t, n_images=pool, **common) for t in tasks if t != "class"]
    for s, n in (("train", pool), ("val", V["n_val"]), ("test", V["n_test"])):  # render once, before workers
        data.object_split(store, s, n, P.common.seed, V["image_size"])
    from taskstudy.engine.parallel import run_units

    run_units(run_row, rows, store=store, kind="learnability", key=Row.key, version=VERSION, common=P.common,
              save=lambda r, out: store.save("learnability", r.key(), out, VERSION, fmt="json"))
    results = {r: store.load("learnability", r.key(), VERSION) for r in rows}
    return pd.DataFrame([{"task": r.task, "classes": int(results[r]["classes"]), "training images": r.n_images,
                          "images per class": r.n_images / int(results[r]["classes"]),
                          "top-1": results[r]["top1"], "chance": results[r]["chance"],
                          "x chance": results[r]["top1"] / results[r]["chance"], "epochs": results[r]["epochs"],
                          "CPU s": results[r]["cpu_s"]} for r in rows])
