"""CIFAR-100 from a local copy (Krizhevsky 2009): `cifar100` reads the python version's files and `cifar100_split`
splits its 20 superclasses into natural and man-made, as in Yosinski et al. (2014, Sec. 4.2), for the
layer-transfer chapter and the outside probe. Every problem with the files raises RealDataError naming the file
concerned.

The files are pickles, and a pickle can run code when it is loaded. They are read by a restricted unpickler that
builds only what the archive holds (dicts, lists, strings, numbers and numpy arrays) and refuses anything else,
so a file that is not what it claims to be fails with an error instead of running; whether the copy is the
official archive (torchvision's md5 sums) is reported beside (`Cifar100Dataset.official`), not required, so that
copies re-pickled by other tools and the tests' small fixtures load.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from taskstudy.engine.errors import RealDataError
from taskstudy.engine.paths import find_root

BASE_FOLDER = "cifar-100-python"
#: md5 sums of the official archive's files (torchvision.datasets.CIFAR100's lists)
OFFICIAL_MD5 = {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
                "meta": "7973b15100ade9c7d40fb424638fde48"}
#: what a CIFAR pickle may name: numpy's array reconstruction (numpy 1 and 2 spellings) and bytes from latin-1
_ALLOWED = frozenset({("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                      ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                      ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")})

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


class _Restricted(pickle.Unpickler):
    """An unpickler that builds only the objects of `_ALLOWED` (and pickle's own dicts, lists, strings, numbers)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: not part of a CIFAR-100 file")
        return super().find_class(module, name)


def cifar_root(root: str | None, setting: str) -> Path:
    """The folder holding cifar-100-python/ named by the profile's `setting` (relative paths: to the study root)."""
    if not root:
        raise ValueError(f"the dataset is 'cifar100' but {setting} is not set")
    p = Path(root).expanduser()
    return (p if p.is_absolute() else find_root() / p).resolve()


def official(root: str | os.PathLike[str]) -> bool:
    """Whether the copy's train, test and meta files are the official archive's (their md5 sums)."""
    base = Path(root) / BASE_FOLDER
    for name, md5 in OFFICIAL_MD5.items():
        h = hashlib.md5()
        try:
            with open(base / name, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        except OSError:
            return False
        if h.hexdigest() != md5:
            return False
    return True


def _unpickle(path: Path) -> dict[str, Any]:
    """Load a CIFAR python pickle as torchvision does (``encoding="latin1"``), str keys, through `_Restricted`."""
    try:
        with open(path, "rb") as f:
            entry = _Restricted(f, encoding="latin1").load()
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


class Cifar100Dataset(Dataset):
    """CIFAR-100 as sample dicts: ``rgb`` float32 (3,32,32) in [0,1], ``label`` (fine, int64),
    ``coarse`` (superclass, int64) and ``index``. Built by :func:`cifar100`."""

    def __init__(self, data: np.ndarray, labels: Any, coarse: Any, classes: list[str], coarse_classes: list[str],
                 official: bool = False) -> None:
        self.data = data  # (N,32,32,3) uint8, HWC as torchvision stores it
        self.labels = np.asarray(labels, dtype=np.int64)
        self.coarse = np.asarray(coarse, dtype=np.int64)
        self.classes: list[str] = list(classes)
        self.coarse_classes: list[str] = list(coarse_classes)
        self.official = official  # the official archive's files (md5), or another copy

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
    """CIFAR-100 from ``root/cifar-100-python/{train,test,meta}``, read by the restricted unpickler.

    Files are the python pickles of the official archive (keys read: ``data`` uint8 (N,3072), ``fine_labels``,
    ``coarse_labels``; meta ``fine_label_names``, ``coarse_label_names``), laid out as
    ``torchvision.datasets.CIFAR100`` lays them out (images HWC). With ``split`` the result is
    :func:`cifar100_split` of it.
    """
    base = Path(root) / BASE_FOLDER
    data_file = base / ("train" if train else "test")
    if not Path(root).is_dir():
        raise RealDataError(f"CIFAR-100 root not found: {root} (expected {base})")
    for name in ("train" if train else "test", "meta"):
        path = base / name
        if not path.is_file():
            raise RealDataError(f"CIFAR-100 file missing: {path}")
        if not _readable(path):
            raise RealDataError(f"CIFAR-100 file unreadable or empty: {path}")
    meta = _unpickle(base / "meta")
    for key in ("fine_label_names", "coarse_label_names"):
        if key not in meta:
            raise RealDataError(f"{base / 'meta'} lacks {key!r}")
    entry = _unpickle(data_file)
    for key in ("data", "fine_labels", "coarse_labels"):
        if key not in entry:
            raise RealDataError(f"{data_file} lacks {key!r}")
    raw = np.asarray(entry["data"])
    if raw.dtype != np.uint8 or raw.ndim != 2 or raw.shape[1] != 3 * 32 * 32:
        raise RealDataError(f"{data_file}: 'data' is {raw.dtype} {raw.shape}, not uint8 (N, 3072)")
    fine, coarse = entry["fine_labels"], entry["coarse_labels"]
    if not len(fine) == len(coarse) == len(raw):
        raise RealDataError(f"{data_file} has {len(raw)} images, {len(fine)} fine and {len(coarse)} coarse labels")
    data = raw.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    ds = Cifar100Dataset(data, fine, coarse, meta["fine_label_names"], meta["coarse_label_names"], official(root))
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
