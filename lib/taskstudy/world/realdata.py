"""Real-data loaders that give the renderer's sample dictionary (design/scenes.md, "Real data").

Two sources plug into the study next to the procedural renderer:

* :class:`TaskonomyFolder` reads the public Taskonomy PNG folders (Zamir et al. 2018) for the tasks
  the release stores and decodes each to the study's target convention.
* :func:`cifar100` / :func:`cifar100_split` wrap ``torchvision.datasets.CIFAR100`` (``download=False``)
  and split its 20 superclasses into natural and man-made, as in Yosinski et al. (2014), for the
  layer-transfer chapter.

Sample dictionaries follow the renderer: ``rgb`` float32 (3,H,W) in [0,1], one entry per task
(float32 (C,H,W) for pixel regression, int64 (H,W) for pixel classification, int64 scalar for
image classification) and ``index`` (int). Every problem with the files on disk raises
:class:`RealDataError` naming the folder or file concerned.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch.utils.data import Dataset

from taskstudy.engine.errors import RealDataError

__all__ = [
    "CIFAR100_MAN_MADE",
    "DEPTH_MAX_M",
    "DEPTH_UNITS_PER_M",
    "TASKONOMY_DOMAINS",
    "Cifar100Dataset",
    "Cifar100Split",
    "RealDataError",
    "TaskonomyFolder",
    "cifar100",
    "cifar100_split",
    "taskonomy_buildings",
    "taskonomy_task_dir",
]




# --------------------------------------------------------------------------------------------------
# Taskonomy
# --------------------------------------------------------------------------------------------------

#: study task name -> (folder names to look for, ``domain_`` suffix in the file names, decoder kind).
#: Folder/suffix names follow the public release as read by EPFL-VILAB/MultiMAE
#: ``utils/taskonomy/{taskonomy_dataset,task_configs}.py`` and omnidata-tools; the older names
#: (``depth``, ``mist``, ``edge2d``, ...) are those of the 2017 sample building
#: (StanfordVL "taskonomy-sample-model-1" README). Semantic segmentation lives in folder
#: ``segment_semantic`` but its files end in ``_domain_segmentsemantic.png``.
TASKONOMY_DOMAINS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "rgb": (("rgb",), ("rgb",), "rgb"),
    "depth_zbuffer": (("depth_zbuffer", "depth"), ("depth_zbuffer", "depth"), "depth"),
    "depth_euclidean": (("depth_euclidean", "mist"), ("depth_euclidean", "mist"), "depth"),
    "normals": (("normal", "normals"), ("normal", "normals"), "normals"),
    "reshading": (("reshading", "reshade"), ("reshading", "reshade"), "gray8"),
    "edge2d": (("edge_texture", "edge2d"), ("edge_texture", "edge2d"), "unit16"),
    "edge_occlusion": (("edge_occlusion", "edge"), ("edge_occlusion", "edge"), "unit16"),
    "keypoints2d": (("keypoints2d", "keypoint2d"), ("keypoints2d", "keypoint2d"), "unit16"),
    "keypoints3d": (("keypoints3d", "keypoint"), ("keypoints3d", "keypoint"), "unit16"),
    "curvature": (("principal_curvature", "curvature"), ("principal_curvature", "curvature"), "curv"),
    "segment_unsup2d": (("segment_unsup2d", "segment2d"), ("segment_unsup2d", "segment2d"), "label"),
    "segment_unsup25d": (("segment_unsup25d", "segment25d"), ("segment_unsup25d", "segment25d"), "label"),
    "segment_semantic": (("segment_semantic", "segmentsemantic"), ("segmentsemantic",), "label"),
    "class_object": (("class_object",), ("class_object",), "class"),
    "class_scene": (("class_scene",), ("class_scene",), "class"),
}

#: Taskonomy depth PNGs store metres * 512 as uint16 (README of the release: "units of 1/512 m,
#: max range 128 m"); 65535 marks pixels without geometry (sky, holes in the mesh).
DEPTH_UNITS_PER_M = 512.0
DEPTH_INVALID = 65535
DEPTH_MAX_M = DEPTH_INVALID / DEPTH_UNITS_PER_M
_DEPTH_MIN_M = 1.0 / DEPTH_UNITS_PER_M

_FILE_RE = re.compile(r"^point_(\d+)_view_(\d+)_domain_(.+)\.(png|npy)$")

SampleId = tuple[str, int, int]


def _read_png(path: Path, colour: bool = False) -> np.ndarray:
    """Decode a PNG to a numpy array, keeping 16-bit depth; RealDataError naming the file.

    ``colour`` converts palette/CMYK/LA images to RGB (for rgb and normals); label maps stay raw.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if colour and im.mode not in ("RGB", "RGBA", "L"):
                im = im.convert("RGB")
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.array(im, dtype=np.int64)
            else:
                arr = np.array(im)
    except (OSError, ValueError, SyntaxError) as err:
        raise RealDataError(f"cannot read PNG {path}: {err}") from err
    return arr


def _maxval(arr: np.ndarray) -> float:
    """Full-scale value of a decoded PNG: 255 for 8-bit, 65535 for 16-bit."""
    return 255.0 if arr.dtype == np.uint8 else 65535.0


def _chw(arr: np.ndarray) -> np.ndarray:
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)


def decode_taskonomy(kind: str, arr: np.ndarray) -> torch.Tensor:
    """Decode one Taskonomy array to the study's target convention.

    * ``rgb``: 8-bit RGB -> float (3,H,W) in [0,1] (alpha dropped, grey expanded).
    * ``depth``: uint16 metres*512 -> float (1,H,W) **log metres** (natural log, like the
      renderer's depth tasks); the invalid code 65535 decodes to log(128 m), see ``mask_valid``.
    * ``normals``: 8-bit RGB, [0,255] -> [-1,1] per channel (value/127.5 - 1), (3,H,W); the axes are
      the release's camera frame, not re-oriented.
    * ``gray8`` (reshading): first channel / full scale -> (1,H,W) in [0,1].
    * ``unit16`` (edges, keypoints): single channel / 65535 (or /255 if stored 8-bit) -> (1,H,W).
    * ``curv`` (principal curvature): first two channels, zero curvature coded at 127 (README of the
      2017 release) -> (v - 127) / 127 (or (v - 32767) / 32767 if 16-bit), (2,H,W), relative units.
    * ``label`` (semantic / unsupervised segments): first channel as int64 ids (H,W), unmapped.
    """
    if kind == "label":
        lab = arr if arr.ndim == 2 else arr[..., 0]
        return torch.from_numpy(lab.astype(np.int64))
    full = _maxval(arr)
    x = _chw(arr).astype(np.float64)
    if kind == "rgb":
        if x.shape[0] == 1:
            x = np.repeat(x, 3, axis=0)
        out = x[:3] / full
    elif kind == "depth":
        raw = x[:1]
        metres = np.maximum(raw / DEPTH_UNITS_PER_M, _DEPTH_MIN_M)
        metres = np.where(raw >= DEPTH_INVALID, DEPTH_MAX_M, metres)
        out = np.log(metres)
    elif kind == "normals":
        out = x[:3] / (full / 2.0) - 1.0
    elif kind in ("gray8", "unit16"):
        out = x[:1] / full
    elif kind == "curv":
        half = math.floor(full / 2.0)
        out = (x[:2] - half) / half
    else:  # pragma: no cover - guarded by TASKONOMY_DOMAINS
        raise ValueError(f"unknown decoder kind {kind!r}")
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def _resize(t: torch.Tensor, size: int, kind: str) -> torch.Tensor:
    """Square resize: bilinear+antialias for smooth maps, nearest for depth/labels/masks."""
    if tuple(t.shape[-2:]) == (size, size):
        return t
    if kind == "label" or t.dtype == torch.bool:
        src = t if t.ndim == 3 else t[None]
        out = F.interpolate(src[None].float(), size=(size, size), mode="nearest")[0].to(t.dtype)
        return out if t.ndim == 3 else out[0]
    if kind == "depth":
        return F.interpolate(t[None], size=(size, size), mode="nearest")[0]
    out = F.interpolate(t[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    if kind == "normals":
        norm = out.norm(dim=0, keepdim=True)
        out = torch.where(norm > 1e-6, out / norm.clamp_min(1e-6), out)
    return out


def taskonomy_buildings(root: Path) -> list[str]:
    """The buildings of a Taskonomy root: per-building folders holding `rgb`, or the omnitools layout's
    `rgb/[taskonomy/]<building>`."""
    per_building = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "rgb").is_dir())
    if per_building:
        return per_building
    for base in (root / "rgb" / "taskonomy", root / "rgb"):
        if base.is_dir():
            return sorted(p.name for p in base.iterdir() if p.is_dir())
    return []


def taskonomy_task_dir(root: Path, building: str, task: str) -> Path:
    """The folder of one task of one building (any of the layouts above); RealDataError naming where it looked."""
    folders = TASKONOMY_DOMAINS[task][0]
    candidates = [root / building / f for f in folders]
    candidates += [root / f / building for f in folders]
    candidates += [root / f / "taskonomy" / building for f in folders]
    for c in candidates:
        if c.is_dir():
            return c
    raise RealDataError(
        f"building {building!r} has no folder for task {task!r} "
        f"(looked for {', '.join(str(c) for c in candidates[: len(folders)])}, "
        f"or the same under {root}/<task>/[taskonomy/]{building})"
    )


class TaskonomyFolder(Dataset):
    """Taskonomy folders as a torch ``Dataset`` of renderer-style sample dicts.

    Layout (public release, per building): ``root/<building>/<folder>/point_<p>_view_<v>_domain_<d>.png``
    with folder/domain names from :data:`TASKONOMY_DOMAINS`. The omnitools download layout
    ``root/<folder>/<building>/...`` and ``root/<folder>/taskonomy/<building>/...`` is accepted too.
    ``class_object`` / ``class_scene`` are ``.npy`` score vectors (omnidata); their argmax is the
    int64 label. Value encodings relied on are documented in :func:`decode_taskonomy`.

    Samples are the (building, point, view) triples of the rgb folder. If a requested task folder
    holds a different set of ids, ``on_mismatch="error"`` (default) raises RealDataError naming
    both folders, their counts and a few missing ids; ``"intersect"`` keeps the common triples.
    When a depth task is requested the dict also holds ``mask_valid`` (bool (1,H,W), False where
    the depth PNG held 65535).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        tasks: Sequence[str],
        buildings: Sequence[str] | None = None,
        image_size: int | None = None,
        on_mismatch: Literal["error", "intersect"] = "error",
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise RealDataError(f"Taskonomy root not found: {self.root}")
        unknown = [t for t in tasks if t not in TASKONOMY_DOMAINS]
        if unknown:
            raise RealDataError(
                f"tasks {unknown} are not stored in the Taskonomy release under {self.root}; "
                f"supported: {sorted(TASKONOMY_DOMAINS)}"
            )
        if on_mismatch not in ("error", "intersect"):
            raise ValueError(f"on_mismatch must be 'error' or 'intersect', got {on_mismatch!r}")
        self.tasks = [t for t in dict.fromkeys(tasks) if t != "rgb"]
        self.image_size = image_size
        self.buildings = list(buildings) if buildings is not None else self._discover_buildings()
        if not self.buildings:
            raise RealDataError(f"no buildings with an rgb folder under {self.root}")
        self._dirs: dict[tuple[str, str], Path] = {}
        self._files: dict[tuple[str, str], dict[tuple[int, int], Path]] = {}
        samples: list[SampleId] = []
        for b in self.buildings:
            keys = set(self._index_folder(b, "rgb"))
            for task in self.tasks:
                have = set(self._index_folder(b, task))
                if have != keys:
                    if on_mismatch == "error":
                        self._raise_mismatch(b, task, keys, have)
                    keys &= have
            samples.extend((b, p, v) for p, v in sorted(keys))
        self.samples: list[SampleId] = samples
        self._depth_task = next((t for t in ("depth_zbuffer", "depth_euclidean") if t in self.tasks), None)

    # -- discovery ---------------------------------------------------------------------------------
    def _discover_buildings(self) -> list[str]:
        return taskonomy_buildings(self.root)

    def _task_dir(self, building: str, task: str) -> Path:
        return taskonomy_task_dir(self.root, building, task)

    def _index_folder(self, building: str, task: str) -> dict[tuple[int, int], Path]:
        folder = self._task_dir(building, task)
        domains = TASKONOMY_DOMAINS[task][1]
        ext = "npy" if TASKONOMY_DOMAINS[task][2] == "class" else "png"
        files: dict[tuple[int, int], Path] = {}
        for entry in os.scandir(folder):
            m = _FILE_RE.match(entry.name)
            if m and m.group(3) in domains and m.group(4) == ext:
                files[(int(m.group(1)), int(m.group(2)))] = Path(entry.path)
        if not files:
            raise RealDataError(f"no point_*_view_*_domain_{domains[0]}.{ext} files in {folder}")
        self._dirs[(building, task)] = folder
        self._files[(building, task)] = files
        return files

    def _raise_mismatch(self, building: str, task: str, want: set, have: set) -> None:
        rgb_dir, task_dir = self._dirs[(building, "rgb")], self._dirs[(building, task)]
        lacking = sorted(want - have)[:5]
        extra = sorted(have - want)[:5]
        fmt = ", ".join(f"point_{p}_view_{v}" for p, v in lacking)
        fmt_extra = ", ".join(f"point_{p}_view_{v}" for p, v in extra)
        raise RealDataError(
            f"image ids differ between {rgb_dir} ({len(want)} images) and {task_dir} ({len(have)} images)"
            + (f"; missing from {task_dir}: {fmt}" if lacking else "")
            + (f"; missing from {rgb_dir}: {fmt_extra}" if extra else "")
            + " (pass on_mismatch='intersect' to keep the common ids)"
        )

    # -- loading -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, building: str, task: str, key: tuple[int, int]) -> torch.Tensor:
        path = self._files[(building, task)][key]
        kind = TASKONOMY_DOMAINS[task][2]
        if kind == "class":
            try:
                scores = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as err:
                raise RealDataError(f"cannot read class scores {path}: {err}") from err
            return torch.tensor(int(np.argmax(scores)), dtype=torch.int64)
        out = decode_taskonomy(kind, _read_png(path, colour=kind in ("rgb", "normals")))
        return out if self.image_size is None else _resize(out, self.image_size, kind)

    def __getitem__(self, index: int) -> dict[str, Any]:
        building, point, view = self.samples[index]
        key = (point, view)
        sample: dict[str, Any] = {"rgb": self._load(building, "rgb", key)}
        for task in self.tasks:
            sample[task] = self._load(building, task, key)
        if self._depth_task is not None:
            raw = _read_png(self._files[(building, self._depth_task)][key])
            mask = torch.from_numpy(_chw(raw)[:1] < DEPTH_INVALID)
            if self.image_size is not None:
                mask = _resize(mask, self.image_size, "label")
            sample["mask_valid"] = mask
        sample["index"] = int(index)
        return sample


# --------------------------------------------------------------------------------------------------
# CIFAR-100
# --------------------------------------------------------------------------------------------------

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
