"""Taskonomy folders as the data of Steps I-IV (`common.dataset: taskonomy`, `common.taskonomy_root`).

The splits are drawn by building, as the paper's are (Zamir et al. 2018, Sec. 4: no building in two splits): whole
buildings go to `train`, `transfer`, `val` and `test` in proportion to the images each split asks for, then each
split takes a seeded sample of its buildings' images. A split is the same dictionary `data.scene_split` gives for the
rendered world (`rgb`, `label_<task>`, `index`, `rgb_targets`), decoded by `realdata.TaskonomyFolder` to the study's
label conventions, so every chapter downstream reads it unchanged.

Which study tasks a folder serves:
* from the RGB image alone: autoencoding, denoising, colorization, inpainting, jigsaw (their labels are the image,
  or the permutation drawn for it);
* from the release's folders (`realdata.TASKONOMY_DOMAINS`): the 2D and 3D pixel tasks and semantic segmentation;
  the release's unsupervised segmentations are label maps, which the study's tasks read as their boundaries;
* not at all: room layout and vanishing points (the release keeps them in point-info JSON, which is not read) and
  the two classification tasks (the release scores ImageNet's and Places' classes, the study's tasks the renderer's
  objects and rooms): left out with one line saying so.
Pixels the release marks invalid (depth 65535: no geometry) are NaN in the geometric labels and IGNORE in the
semantic map, and `tasks.Task` leaves them out of losses and scores.
"""

from __future__ import annotations

import os
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from taskstudy.world import labels, realdata
from taskstudy.world import tasks as taskdict
from taskstudy.world.realdata import RealDataError, TaskonomyFolder

if TYPE_CHECKING:
    from taskstudy.engine.sections import Common

FROM_RGB = ("autoencoding", "denoising", "colorization", "inpainting", "jigsaw")
FROM_FOLDERS = ("depth_zbuffer", "depth_euclidean", "normals", "reshading", "curvature", "edge2d", "edge_occlusion",
                "keypoints2d", "keypoints3d", "segment_unsup2d", "segment_unsup25d", "segment_semantic")
#: study tasks the release cannot serve, and why
NOT_SERVED = {
    "room_layout": "the release keeps room layout in point-info JSON, which the study does not read",
    "vanishing_point": "the release keeps vanishing points in point-info JSON, which the study does not read",
    "class_object": "the release scores ImageNet's 1,000 classes; the study's task is the renderer's objects",
    "class_scene": "the release scores Places' 365 classes; the study's task is the renderer's room types",
}
#: labels that need geometry: NaN where the release's depth is invalid
GEOMETRIC = ("depth_zbuffer", "depth_euclidean", "normals", "reshading", "curvature", "edge_occlusion", "keypoints3d",
             "segment_unsup25d")
BOUNDARY_TASKS = ("segment_unsup2d", "segment_unsup25d")
IGNORE = taskdict.IGNORE_INDEX
SPLIT_ORDER = ("train", "transfer", "val", "test")
FIXTURE_MARK = "TASKSTUDY_FIXTURE.md"  # written by taskonomy_fixture: pages say their numbers are a fixture's


def root_of(common: Common) -> Path:
    """`common.taskonomy_root`, resolved against the study root; a clear error when unset or missing."""
    from taskstudy.engine.paths import find_root

    if not common.taskonomy_root:
        raise RealDataError("common.dataset is 'taskonomy' but common.taskonomy_root is not set "
                            "(-p common.taskonomy_root=/path/to/taskonomy)")
    root = Path(common.taskonomy_root).expanduser()
    root = root if root.is_absolute() else find_root() / root
    if not root.is_dir():
        raise RealDataError(f"Taskonomy root not found: {root} (common.taskonomy_root)")
    return root


@lru_cache(maxsize=8)
def _folder_tasks(root: Path) -> tuple[str, ...]:
    """The FROM_FOLDERS tasks every building of `root` has a folder for."""
    buildings = realdata.taskonomy_buildings(root)
    if not buildings:
        raise RealDataError(f"no buildings with an rgb folder under {root}")
    have = []
    for task in FROM_FOLDERS:
        try:
            for b in buildings:
                realdata.taskonomy_task_dir(root, b, task)
        except RealDataError:
            continue
        have.append(task)
    return tuple(have)


def served(root: Path, wanted: list[str]) -> tuple[list[str], dict[str, str]]:
    """(the wanted tasks the folder serves, {left-out task: why})."""
    folder = set(_folder_tasks(root))
    keep, left = [], {}
    for t in wanted:
        if t in FROM_RGB or t in folder:
            keep.append(t)
        elif t in NOT_SERVED:
            left[t] = NOT_SERVED[t]
        else:
            left[t] = f"no folder for it under {root}"
    return keep, left


_SAID: set[tuple[str, ...]] = set()


def tasks_served(common: Common, wanted: list[str]) -> list[str]:
    """The wanted dictionary tasks this folder serves; the left-out ones named in one line (once per process)."""
    root = root_of(common)
    keep, left = served(root, wanted)
    said = (str(root), *sorted(left))
    if left and said not in _SAID:
        _SAID.add(said)
        print(f"Taskonomy data ({root.name}): {len(left)} task(s) left out: "
              + "; ".join(f"{t} ({why})" for t, why in left.items()))
    if not [t for t in keep if not taskdict.get_task(t).source_only]:
        raise RealDataError(f"the Taskonomy folder {root} serves none of the target tasks {wanted}")
    return keep


@lru_cache(maxsize=8)
def listing(root: Path) -> str:
    """A fingerprint of the folder tree (every folder's name, entry count and modification time): part of every
    split's key, so new, removed or renamed files re-read the data."""
    import hashlib

    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        st = os.stat(dirpath)
        h.update(f"{os.path.relpath(dirpath, root)}|{len(filenames)}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def building_splits(counts: dict[str, int], wanted: dict[str, int], seed: int) -> dict[str, list[str]]:
    """Whole buildings per split (no building in two splits): buildings in a seeded order, each to the split
    furthest below its share of the images (its share: its requested images over all requested)."""
    if len(counts) < len(wanted):
        raise RealDataError(f"splitting by building needs at least {len(wanted)} buildings (one per split: "
                            f"{', '.join(wanted)}); the folder has {len(counts)}: {', '.join(sorted(counts))}")
    names = sorted(counts)
    order = [names[i] for i in np.random.default_rng([seed, 0x7A5C]).permutation(len(names))]
    total, asked = sum(counts.values()), sum(wanted.values())
    share = {s: total * n / asked for s, n in wanted.items()}
    out: dict[str, list[str]] = {s: [] for s in wanted}
    got = dict.fromkeys(wanted, 0)
    for i, b in enumerate(order):
        empty = [s for s in wanted if not out[s]]
        left = len(order) - i
        pool = empty if len(empty) >= left else list(wanted)  # every split gets a building
        s = max(pool, key=lambda k: (share[k] - got[k], -list(wanted).index(k)))
        out[s].append(b)
        got[s] += counts[b]
    return out


@lru_cache(maxsize=8)
def _per_building(root: Path, fingerprint: str) -> dict[str, int]:
    """Images per building (indexed once per folder state: every split of a run asks for it)."""
    return dict(Counter(b for b, _, _ in TaskonomyFolder(root, []).samples))


def split_key(common: Common, split: str, n: int, seed: int) -> dict[str, Any]:
    """What determines a Taskonomy split: the folder (path and listing), the split's buildings and size, the tasks
    read, the image size and the decoding code."""
    from taskstudy.engine.codehash import computation_hash

    root = root_of(common)
    tasks = sorted(t for t in served(root, list(common.tasks or taskdict.dictionary_tasks()))[0]
                   if t in FROM_FOLDERS)
    return {"dataset": "taskonomy", "root": str(root), "listing": listing(root), "split": split, "n": n,
            "seed": seed, "image_size": common.image_size, "tasks": tasks,
            "sizes": [common.n_train, common.n_transfer, common.n_val, common.n_test],
            "code": computation_hash(load_split)}


def load_split(key: dict[str, Any]) -> dict[str, np.ndarray]:
    """Read one split (a `split_key`) from the folder into the study's split dictionary."""
    root = Path(key["root"])
    wanted = dict(zip(SPLIT_ORDER, key["sizes"], strict=True))
    buildings = building_splits(_per_building(root, key["listing"]), wanted, key["seed"])[key["split"]]
    ds = TaskonomyFolder(root, key["tasks"], buildings=buildings, image_size=key["image_size"])
    rng = np.random.default_rng([key["seed"], SPLIT_ORDER.index(key["split"]), 0x7A5D])
    n = min(key["n"], len(ds))
    if n < key["n"]:
        print(f"Taskonomy split {key['split']}: {n} images in its buildings ({', '.join(buildings)}), "
              f"fewer than the {key['n']} asked for")
    pick = np.sort(rng.permutation(len(ds))[:n])
    samples = [ds[int(i)] for i in pick]
    return assemble(samples, key["tasks"], key["seed"], [ds.samples[int(i)] for i in pick])


def assemble(samples: list[dict[str, Any]], tasks: list[str], seed: int,
             ids: list[tuple[str, int, int]]) -> dict[str, np.ndarray]:
    """Stack decoded samples into a split dictionary: labels in the study's conventions, invalid pixels marked,
    and each image's (building, point, view)."""
    out: dict[str, np.ndarray] = {"rgb": torch.stack([s["rgb"] for s in samples]).numpy()}
    index = np.arange(len(samples), dtype=np.int64)
    out["index"] = index
    out["building"] = np.array([b for b, _, _ in ids], dtype="U64")
    out["point"] = np.array([p for _, p, _ in ids], dtype=np.int64)
    out["view"] = np.array([v for _, _, v in ids], dtype=np.int64)
    valid = torch.stack([s["mask_valid"] for s in samples]) if "mask_valid" in samples[0] else None
    for t in tasks:
        y = torch.stack([s[t] for s in samples])
        if t in BOUNDARY_TASKS:
            y = labels.label_boundaries(y[:, None].float())
        if t == "segment_semantic":
            n_cls = taskdict.get_task(t).channels
            if int(y.max()) >= n_cls:
                raise RealDataError(f"segment_semantic: the folder's labels go up to {int(y.max())}, the study's task "
                                    f"has {n_cls} classes; leave the task out (common.tasks) or map the labels")
            if valid is not None:
                y = torch.where(valid[:, 0], y, torch.full_like(y, IGNORE))
        elif t in GEOMETRIC and valid is not None:
            y = torch.where(valid.expand_as(y), y, torch.full_like(y, float("nan")))
        out["label_" + t] = y.numpy()
    out["label_jigsaw"] = labels.jigsaw_class(index, seed)
    out["rgb_targets"] = np.array(sorted(t for t in FROM_RGB if t != "jigsaw"), dtype="U32")
    return out
