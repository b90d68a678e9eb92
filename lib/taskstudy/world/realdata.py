"""Real-data loaders that give the renderer's sample dictionary (design/scenes.md, "Real data").

Two sources plug into the study next to the procedural renderer:

* :class:`TaskonomyFolder` reads the public Taskonomy PNG folders (Zamir et al. 2018) for the tasks
  the release stores and decodes each to the study's target convention.
* CIFAR-100 (the layer-transfer chapter's real data) is read by taskstudy.world.cifar.

Sample dictionaries follow the renderer: ``rgb`` float32 (3,H,W) in [0,1], one entry per task
(float32 (C,H,W) for pixel regression, int64 (H,W) for pixel classification, int64 scalar for
image classification) and ``index`` (int). Every problem with the files on disk raises
:class:`RealDataError` naming the folder or file concerned.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from taskstudy.engine.errors import RealDataError

__all__ = [
    "DEPTH_MAX_M",
    "DEPTH_UNITS_PER_M",
    "TASKONOMY_DOMAINS",
    "RealDataError",
    "TaskonomyFolder",
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
