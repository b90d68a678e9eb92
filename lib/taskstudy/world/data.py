"""Scene splits for the experiments: rendered once, cached in the results store, loaded as torch tensors.

Splits follow the paper's protocol (Zamir et al. 2018, Sec. 4): `train` for the task-specific networks (Step I),
a smaller `transfer` split for the readouts (Step II; the paper's 16k vs 120k images), `val` for every selection
(early stopping, the beam search, the AHP affinities and with them the BIP's choice) and `test` for evaluation
only (Gain, Quality, significance, the novel-task tables): what chose a policy never also judges it. A split's
store key holds every generator parameter (split, size, seed, image size) and a
hash of the renderer and task-dictionary code, so a change to either re-renders. Real data (Taskonomy folders,
CIFAR-100) is in `taskstudy.world.realdata`.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from taskstudy.engine.codehash import computation_hash
from taskstudy.engine.store import Store
from taskstudy.world import objects, scenes
from taskstudy.world import tasks as taskdict

if TYPE_CHECKING:
    import pandas as pd

    from taskstudy.engine.sections import Common

SPLITS = ("train", "transfer", "val", "test")
_SMALL_INTS = ("instance", "semantic", "label_segment_semantic", "label_shadow")


def code_version() -> str:
    """Hash of what renders a split (the renderer and the labels it computes): part of every split's key."""
    return computation_hash(_render_split)


def split_size(common: Common, split: str) -> int:
    sizes = {"train": common.n_train, "transfer": common.n_transfer, "val": common.n_val, "test": common.n_test}
    if split not in sizes:
        raise ValueError(f"unknown split '{split}' (one of {SPLITS})")
    return sizes[split]


def split_seed(common: Common) -> int:
    """The seed the scene splits are rendered from: `common.split_seed`, or `common.seed` when unset."""
    return common.seed if common.split_seed is None else common.split_seed


def split_key(common: Common, split: str) -> dict[str, Any]:
    """What determines a split: the rendered world's generator parameters and code, or (`common.dataset:
    taskonomy`) the Taskonomy folder's (`taskonomy_data.split_key`)."""
    if common.dataset == "taskonomy":
        from taskstudy.world import taskonomy_data

        return taskonomy_data.split_key(common, split, split_size(common, split), split_seed(common))
    return {"split": split, "n": split_size(common, split), "seed": split_seed(common),
            "image_size": common.image_size, "code": code_version()}


def _compact(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Smaller arrays, same values: labels equal to the RGB image are dropped (listed in `rgb_targets`),
    integer maps stored as uint8."""
    out: dict[str, np.ndarray] = {}
    same_as_rgb = []
    for k, v in d.items():
        if k.startswith(scenes.LABEL_PREFIX) and v.shape == d["rgb"].shape and np.array_equal(v, d["rgb"]):
            same_as_rgb.append(k[len(scenes.LABEL_PREFIX):])
        elif k in _SMALL_INTS:
            assert v.min() >= 0 and v.max() < 256, k
            out[k] = v.astype(np.uint8)
        else:
            out[k] = v
    out["rgb_targets"] = np.array(sorted(same_as_rgb), dtype="U32")
    return out


def scene_split(store: Store, common: Common, split: str) -> dict[str, np.ndarray]:
    """The whole split (render buffers kept for the chapters and every task's label), from the store; with
    `common.dataset: taskonomy`, the split read from the Taskonomy folder (its buildings, the tasks it serves)."""
    key = split_key(common, split)
    return _cached_split(store.root, json.dumps(key, sort_keys=True))


@lru_cache(maxsize=6)
def _cached_split(root: Path, key_json: str) -> dict[str, np.ndarray]:
    key = json.loads(key_json)
    store = Store(root)
    if key.get("dataset") == "taskonomy":
        from taskstudy.world import taskonomy_data

        return store.get_or_compute("taskonomy", key, lambda: taskonomy_data.load_split(key), fmt="npz")

    return store.get_or_compute("scenes", key, lambda: _render_split(key), fmt="npz")


def _render_split(key: dict[str, Any]) -> dict[str, np.ndarray]:
    """A split of the rendered world, as stored (`_compact`)."""
    return _compact(scenes.generate_split(key["split"], key["n"], key["seed"], key["image_size"]))


def target(split_data: dict[str, np.ndarray], task: str) -> torch.Tensor:
    """The task's labels for a split: float32, or int64 for class targets."""
    t = taskdict.get_task(task)
    if task in set(split_data["rgb_targets"].tolist()):
        arr = split_data["rgb"]
    else:
        arr = split_data[scenes.LABEL_PREFIX + task]
    x = torch.from_numpy(np.asarray(arr))
    return x.long() if t.loss_name == "ce" else x.float()


def task_input(split_data: dict[str, np.ndarray], task: str, seed: int) -> torch.Tensor:
    """The task's network input (its input transform applied to the clean images, seeded per sample). `seed`
    must be the seed the split was rendered from (`split_seed`): jigsaw's label is drawn from it, and the
    shuffled input has to show that label's permutation."""
    return taskdict.make_input(task, split_data["rgb"], index=split_data["index"], seed=seed)


def network_input(common: Common, split_data: dict[str, np.ndarray], task: str) -> torch.Tensor:
    """`task_input` seeded with the split's own render seed (the input and the label always agree, whatever
    `common.seed` is)."""
    return task_input(split_data, task, split_seed(common))


def rgb(split_data: dict[str, np.ndarray]) -> torch.Tensor:
    """The clean images (N, 3, H, W): the query images I of every transfer E_s(I)."""
    return torch.from_numpy(np.asarray(split_data["rgb"]))


def split_table(store: Store, common: Common) -> pd.DataFrame:
    """One row per split: its role, scenes, image size and stored size."""
    import pandas as pd

    roles = {"train": "Step I task networks", "transfer": "Step II readouts and scratch networks",
             "val": "selection: early stopping, beam, AHP, BIP", "test": "evaluation: Gain, Quality, significance"}
    rows = []
    for split in SPLITS:
        d = scene_split(store, common, split)
        mb = round(sum(v.nbytes for v in d.values()) / 2**20, 1)
        rows.append({"split": split, "used for": roles[split], "scenes": len(d["rgb"]),
                     "image size": common.image_size, "MB in memory": mb})
    return pd.DataFrame(rows)


def class_balance(split_data: dict[str, np.ndarray]) -> pd.DataFrame:
    """Tidy counts of room types (scene classes) and of objects per class (visible or not)."""
    import pandas as pd

    rooms = np.bincount(split_data["room_type"], minlength=len(scenes.ROOM_TYPES))
    objs = split_data["obj_class"]
    objects = np.bincount(objs[objs >= 0], minlength=len(scenes.OBJECT_CLASSES))
    pairs = [("room type", scenes.ROOM_TYPES, rooms), ("object", scenes.OBJECT_CLASSES, objects)]
    rows = [{"kind": kind, "class": n, "count": int(c)} for kind, names, counts in pairs
            for n, c in zip(names, counts, strict=True)]
    return pd.DataFrame(rows)


def object_split(store: Store, split: str, n: int, seed: int, image_size: int,
                 world: str = "study") -> dict[str, np.ndarray]:
    """Images 0..n-1 of a split of the object world (objects.render_objects), cached in the store.

    The classification set of the layer-transfer (Yosinski et al. 2014), Task2Vec (Achille et al. 2019), novel-task
    (the ImageNet-like encoder: ``world="pretrain"``) and robustness (the outside set) chapters; labels are balanced
    over the world's classes."""
    key = {"world": world, "split": split, "n": n, "seed": seed, "image_size": image_size,
           "code": computation_hash(objects.render_objects)}
    return _cached_objects(store.root, tuple(sorted(key.items())))


@lru_cache(maxsize=6)
def _cached_objects(root: Path, key_items: tuple) -> dict[str, np.ndarray]:
    key = dict(key_items)

    def render() -> dict[str, np.ndarray]:
        parts = [objects.render_objects(key["split"], np.arange(s, min(key["n"], s + 256)), key["seed"],
                                        key["image_size"], key["world"]) for s in range(0, key["n"], 256)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    return Store(root).get_or_compute("objects", key, render, fmt="npz")
