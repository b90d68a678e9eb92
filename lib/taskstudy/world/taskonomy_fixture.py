"""A tiny Taskonomy-format folder rendered from the study's own scenes (issue 21's fixture).

`write_fixture` lays out `root/<building>/<folder>/point_<p>_view_<v>_domain_<domain>.png` with the release's
folder and domain names (`realdata.TASKONOMY_DOMAINS`) and encodings: 8-bit RGB; depth as uint16 metres x 512 with
65535 where there is no geometry; normals as 8-bit (n + 1) x 127.5; edges and keypoints as uint16 fractions of
65535; principal curvature as 8-bit codes around 127; segmentations as 8-bit label maps. Its labels are the
renderer's, so a study run on the folder can be checked against the same scenes rendered directly; some images get a
hole (depth 65535), which the study must leave out of its losses. A building is a run of consecutive scenes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from taskstudy.world import labels, scenes
from taskstudy.world.realdata import DEPTH_INVALID, DEPTH_UNITS_PER_M
from taskstudy.world.taskonomy_data import FIXTURE_MARK

#: folder, file domain, encoder of the study label (one image) -> uint8/uint16 array (H, W[, C])
_U16 = 65535


def _u16(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x[0], 0, 1) * _U16).astype(np.uint16)


def _depth(log_m: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.exp(log_m[0]) * DEPTH_UNITS_PER_M), 1, DEPTH_INVALID - 1).astype(np.uint16)


def _normals(n: np.ndarray) -> np.ndarray:
    return np.clip(np.round((np.moveaxis(n, 0, -1) + 1) * 127.5), 0, 255).astype(np.uint8)


def _curvature(k: np.ndarray) -> np.ndarray:
    codes = np.clip(np.round(127 + 127 * np.moveaxis(k, 0, -1)), 0, 255).astype(np.uint8)
    return np.concatenate([codes, np.zeros_like(codes[..., :1])], -1)


def _grey8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x[0], 0, 1) * 255).astype(np.uint8)


WRITTEN = {  # study label -> (release folder, file domain, encoder)
    "depth_zbuffer": ("depth_zbuffer", "depth_zbuffer", _depth),
    "depth_euclidean": ("depth_euclidean", "depth_euclidean", _depth),
    "normals": ("normal", "normal", _normals),
    "reshading": ("reshading", "reshading", _grey8),
    "curvature": ("principal_curvature", "principal_curvature", _curvature),
    "edge2d": ("edge_texture", "edge_texture", _u16),
    "edge_occlusion": ("edge_occlusion", "edge_occlusion", _u16),
    "keypoints2d": ("keypoints2d", "keypoints2d", _u16),
    "keypoints3d": ("keypoints3d", "keypoints3d", _u16),
}


def write_fixture(root: str | Path, buildings: int = 6, per_building: int = 24, image_size: int = 32,
                  seed: int = 0, holes: bool = True) -> Path:
    """Write `buildings` x `per_building` rendered scenes as a Taskonomy folder under `root`; returns `root`.

    `segment_unsup2d` is written as the colour clustering whose boundaries are the study's label, and
    `segment_unsup25d` as the scene's surfaces (instance map); `holes` puts a 3 x 3 patch of invalid depth into
    every fourth image."""
    root = Path(root)
    n = buildings * per_building
    d = scenes.generate_split("taskonomy_fixture", n, seed, image_size, progress=False)
    clusters = labels.colour_clusters(torch.from_numpy(d["rgb"]))[:, 0].numpy().astype(np.uint8)
    for b in range(buildings):
        name = f"building{b:02d}"
        for i in range(b * per_building, (b + 1) * per_building):
            point, view = divmod(i - b * per_building, 3)
            stem = f"point_{point}_view_{view}_domain_"

            def save(folder: str, domain: str, arr: np.ndarray, stem: str = stem, name: str = name) -> None:
                path = root / name / folder / f"{stem}{domain}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(path)

            save("rgb", "rgb", np.round(np.moveaxis(d["rgb"][i], 0, -1) * 255).astype(np.uint8))
            for task, (folder, domain, encode) in WRITTEN.items():
                arr = encode(d[scenes.LABEL_PREFIX + task][i])
                if holes and i % 4 == 0 and task.startswith("depth"):
                    arr[1:4, 1:4] = DEPTH_INVALID
                save(folder, domain, arr)
            save("segment_semantic", "segmentsemantic", d["semantic"][i].astype(np.uint8))
            save("segment_unsup2d", "segment_unsup2d", clusters[i])
            save("segment_unsup25d", "segment_unsup25d", (d["instance"][i] % 256).astype(np.uint8))
    (root / FIXTURE_MARK).write_text(f"A Taskonomy-format fixture: {buildings} buildings x {per_building} of the "
                                     f"study's rendered scenes at {image_size} px (seed {seed}), written by "
                                     "taskstudy.world.taskonomy_fixture.write_fixture.\n")
    return root
