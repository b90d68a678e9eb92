"""Labelled image sets for classification: the object world's renders or a CIFAR-100 copy, as arrays with their
train / val / test splits, and the two ways of halving their classes (Yosinski et al. 2014, Sec. 4.1 and 4.2):
a random half and the natural / man-made split. Read by the layer-transfer chapter and by the outside probe of
Taskonomy's Sec. 5.1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from taskstudy.engine.store import Store


def raw_images(key: Mapping[str, Any], store_root: str) -> tuple[Any, ...]:
    """(xtr, ytr, xva, yva, xte, yte, n_classes) of the whole data set (key: data_key's fields), images as
    float32 (N, 3, H, W) in [0, 1]. CIFAR-100's validation images come from its training set (disjoint from the
    training images drawn), its test images from its test set."""
    if key["dataset"] == "objects":
        from taskstudy.world import data, objects

        store = Store(store_root)
        out: list[Any] = []
        for split, n in (("train", key["n_images"]), ("val", key["n_val"]), ("test", key["n_test"])):
            d = data.object_split(store, split, n, key["seed"], key["image_size"])
            out += [d["rgb"], d["label"]]
        return (*out, objects.num_classes())
    from taskstudy.world.cifar import cifar100

    out = []
    for train, sizes in ((True, (key["n_images"], key["n_val"])), (False, (key["n_test"],))):
        ds = cifar100(key["cifar_root"], train=train)
        rng = np.random.default_rng([key["seed"], 808, int(train)])
        perm = rng.permutation(len(ds))
        start = 0
        for n in sizes:
            idx = np.sort(perm[start:start + min(n, len(ds) - start)])
            start += len(idx)
            x = torch.from_numpy(ds.data[idx].transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
            if key["image_size"] != x.shape[-1]:
                x = F.interpolate(x, size=key["image_size"], mode="bilinear", antialias=True, align_corners=False)
            out += [x.numpy(), ds.labels[idx]]
    return (*out, 100)


def class_splits(key: Mapping[str, Any], store_root: str) -> dict[str, dict[str, np.ndarray]]:
    """{"similar": {"A", "B"}, "dissimilar": {"A", "B"}}: class ids of each half."""
    if key["dataset"] == "objects":
        from taskstudy.world import objects

        return objects.class_splits(key["seed"])
    from taskstudy.world.cifar import cifar100, cifar100_split

    ds = cifar100(key["cifar_root"], train=True)
    perm = np.random.default_rng([key["seed"], 4242]).permutation(100)
    nat, man = cifar100_split(ds, "natural"), cifar100_split(ds, "man_made")
    return {"similar": {"A": np.sort(perm[:50]), "B": np.sort(perm[50:])},
            "dissimilar": {"A": np.asarray(nat.fine_ids), "B": np.asarray(man.fine_ids)}}  # as in the paper's logs
