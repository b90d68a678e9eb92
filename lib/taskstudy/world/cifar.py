"""CIFAR-100 from a local copy (Krizhevsky 2009): `cifar100` reads the python version's files (``download=False``)
and `cifar100_split` splits its 20 superclasses into natural and man-made, as in Yosinski et al. (2014, Sec. 4.2),
for the layer-transfer chapter and the outside probe. Every problem with the files raises RealDataError naming
the file concerned.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torchvision
from torch.utils.data import Dataset

from taskstudy.engine.errors import RealDataError

#: Man-made CIFAR-100 superclasses (``coarse_label_names`` spelling); the other 14 are natural.
#: Natural vs man-made split of the superclasses as in Yosinski et al. (2014), sec. 4.
CIFAR100_MAN_MADE: frozenset[str] = frozenset(
    {
        "food_containers",
        "household_electrical_devices",
        "household_furniture",
        "large_man-made_outdoor_things",
        "vehicles_1",
        "vehicles_2",
    }
)


def _unpickle(path: Path) -> dict[str, Any]:
    """Load a CIFAR python pickle the way torchvision does (``encoding="latin1"``), str keys."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise RealDataError(f"cannot read CIFAR-100 file {path}: {err}") from err
    if not isinstance(entry, dict):
        raise RealDataError(f"CIFAR-100 file {path} does not hold a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _readable(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return len(f.read(1)) == 1
    except OSError:
        return False


class _CIFAR100Files(torchvision.datasets.CIFAR100):
    """torchvision's CIFAR100 with the md5 check replaced by a presence/readability check.

    torchvision compares md5 sums of ``train``/``test``/``meta`` with the official archive; this
    subclass only requires that the files exist and are readable, so that copies re-pickled by
    other tools and the tests' small fixtures load. Data loading is torchvision's own.
    """

    def _check_integrity(self) -> bool:
        names = [n for n, _ in self.train_list + self.test_list] + [self.meta["filename"]]
        return all(_readable(Path(self.root, self.base_folder, n)) for n in names)

    def _load_meta(self) -> None:
        meta = _unpickle(Path(self.root, self.base_folder, self.meta["filename"]))
        for key in ("fine_label_names", "coarse_label_names"):
            if key not in meta:
                raise RealDataError(f"{Path(self.root, self.base_folder, 'meta')} lacks {key!r}")
        self.classes = list(meta["fine_label_names"])
        self.coarse_classes = list(meta["coarse_label_names"])
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class Cifar100Dataset(Dataset):
    """CIFAR-100 as sample dicts: ``rgb`` float32 (3,32,32) in [0,1], ``label`` (fine, int64),
    ``coarse`` (superclass, int64) and ``index``. Built by :func:`cifar100`."""

    def __init__(self, tv: torchvision.datasets.CIFAR100, coarse: np.ndarray) -> None:
        self.tv = tv
        self.data = tv.data  # (N,32,32,3) uint8, HWC as torchvision stores it
        self.labels = np.asarray(tv.targets, dtype=np.int64)
        self.coarse = np.asarray(coarse, dtype=np.int64)
        self.classes: list[str] = list(tv.classes)
        self.coarse_classes: list[str] = list(tv.coarse_classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rgb = torch.from_numpy(np.ascontiguousarray(self.data[index].transpose(2, 0, 1))).float() / 255.0
        return {
            "rgb": rgb,
            "label": torch.tensor(self.labels[index], dtype=torch.int64),
            "coarse": torch.tensor(self.coarse[index], dtype=torch.int64),
            "index": int(index),
        }

    def fine_to_coarse(self) -> dict[int, int]:
        """Fine -> coarse id, read from the data (CIFAR-100 nests each fine class in one superclass)."""
        mapping: dict[int, int] = {}
        for f, c in zip(self.labels.tolist(), self.coarse.tolist(), strict=True):
            if mapping.setdefault(f, c) != c:
                raise RealDataError(f"fine class {f} appears under superclasses {mapping[f]} and {c}")
        return mapping


class Cifar100Split(Dataset):
    """Subset of a :class:`Cifar100Dataset` whose ``label`` is remapped to 0..K-1.

    ``classes`` lists the K fine names in new-label order, ``fine_ids`` the original fine ids.
    """

    def __init__(self, base: Cifar100Dataset, which: str, fine_ids: list[int]) -> None:
        self.base = base
        self.which = which
        self.fine_ids = fine_ids
        self.classes = [base.classes[i] for i in fine_ids]
        remap = np.full(max(len(base.classes), int(base.labels.max(initial=0)) + 1), -1, dtype=np.int64)
        remap[fine_ids] = np.arange(len(fine_ids))
        self.remap = remap
        self.indices = np.flatnonzero(remap[base.labels] >= 0)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.base[int(self.indices[index])]
        sample["label"] = torch.tensor(self.remap[int(sample["label"])], dtype=torch.int64)
        sample["index"] = int(index)
        return sample


def cifar100(
    root: str | os.PathLike[str], train: bool, split: Literal["natural", "man_made"] | None = None
) -> Cifar100Dataset | Cifar100Split:
    """CIFAR-100 from ``root/cifar-100-python/{train,test,meta}`` via torchvision (``download=False``).

    Files are the python pickles of the official archive (keys read: ``data`` uint8 (N,3072),
    ``fine_labels``, ``coarse_labels``; meta ``fine_label_names``, ``coarse_label_names``), as read
    by ``torchvision.datasets.CIFAR100``; md5 sums are not checked (see ``_CIFAR100Files``).
    With ``split`` the result is :func:`cifar100_split` of it.
    """
    base = Path(root) / _CIFAR100Files.base_folder
    data_file = base / ("train" if train else "test")
    if not Path(root).is_dir():
        raise RealDataError(f"CIFAR-100 root not found: {root} (expected {base})")
    for name in ("train" if train else "test", "meta"):
        path = base / name
        if not path.is_file():
            raise RealDataError(f"CIFAR-100 file missing: {path}")
        if not _readable(path):
            raise RealDataError(f"CIFAR-100 file unreadable or empty: {path}")
    # torchvision's integrity check also wants the other split's file to be present.
    other = base / ("test" if train else "train")
    if not _readable(other):
        raise RealDataError(f"CIFAR-100 file missing or unreadable: {other}")
    try:
        tv = _CIFAR100Files(str(root), train=train, download=False)
    except RealDataError:
        raise
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, OSError) as err:
        raise RealDataError(f"cannot load CIFAR-100 from {data_file}: {err}") from err
    entry = _unpickle(data_file)
    if "coarse_labels" not in entry:
        raise RealDataError(f"{data_file} lacks 'coarse_labels'")
    coarse = np.asarray(entry["coarse_labels"], dtype=np.int64)
    if len(coarse) != len(tv.targets):
        raise RealDataError(f"{base} has {len(coarse)} coarse labels for {len(tv.targets)} images")
    ds = Cifar100Dataset(tv, coarse)
    return ds if split is None else cifar100_split(ds, split)


def cifar100_split(dataset: Cifar100Dataset, which: Literal["natural", "man_made"]) -> Cifar100Split:
    """Natural or man-made half of CIFAR-100 (Yosinski et al. 2014): fine classes whose superclass
    is (``man_made``) or is not (``natural``) in :data:`CIFAR100_MAN_MADE`, relabelled 0..K-1 in
    ascending original fine id. Fine->superclass comes from the data's ``coarse_labels``."""
    if which not in ("natural", "man_made"):
        raise ValueError(f"which must be 'natural' or 'man_made', got {which!r}")
    names = dataset.coarse_classes
    missing = sorted(CIFAR100_MAN_MADE - set(names))
    if missing:
        raise RealDataError(f"CIFAR-100 meta coarse_label_names lacks man-made superclasses {missing}")
    man_made = {i for i, n in enumerate(names) if n in CIFAR100_MAN_MADE}
    f2c = dataset.fine_to_coarse()
    want_man_made = which == "man_made"
    fine_ids = sorted(f for f, c in f2c.items() if (c in man_made) == want_man_made)
    return Cifar100Split(dataset, which, fine_ids)
