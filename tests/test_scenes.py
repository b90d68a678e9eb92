"""Tests of the procedural scene renderer (taskstudy.world.scenes)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from taskstudy.world import raycast, scene_geometry, scene_sampling, scenes

PIXEL_KEYS = [
    "rgb",
    "distance",
    "depth",
    "normal",
    "point",
    "instance",
    "semantic",
    "albedo",
    "shading",
    "shadow",
    "curvature",
]


@pytest.fixture(scope="module")
def batch() -> dict[str, np.ndarray]:
    return scenes.render("train", np.arange(24), 3, 33)


def test_shapes_and_ranges(batch: dict[str, np.ndarray]) -> None:
    n, h = 24, 33
    assert batch["rgb"].shape == (n, 3, h, h) and batch["rgb"].dtype == np.float32
    assert batch["rgb"].min() >= 0 and batch["rgb"].max() <= 1
    for k in ("distance", "depth", "instance", "semantic", "shading", "shadow"):
        assert batch[k].shape == (n, h, h), k
    assert batch["curvature"].shape == (n, 2, h, h)
    assert batch["room_axes"].shape == (n, 3, 3) and batch["vanishing"].shape == (n, 3, 3)
    assert batch["camera"].shape == (n, len(scenes.LAYOUT_FIELDS))
    assert set(np.unique(batch["room_type"])) <= set(range(len(scenes.ROOM_TYPES)))
    assert ((batch["obj_count"] >= 1) & (batch["obj_count"] <= 6)).all()
    assert (batch["semantic"] >= 3).any(), "some objects should be visible"
    for k in PIXEL_KEYS:
        assert np.isfinite(batch[k]).all(), k
    cam = batch["camera"]
    assert (cam[:, 0] <= 1e-6).all() and (cam[:, 0] >= -math.radians(30) - 1e-6).all()
    assert ((cam[:, 3] >= 1.0) & (cam[:, 3] <= 1.8)).all()
    assert (cam[:, 4:] > 0).all()


def test_deterministic_and_batch_independent() -> None:
    a = scenes.render("val", np.arange(6), 11, 20)
    b = scenes.render("val", np.arange(6), 11, 20)
    alone = scenes.render("val", [4], 11, 20)
    other = scenes.render("val", [9, 4, 2], 11, 20)
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k
        assert a[k][4:5].tobytes() == alone[k].tobytes(), k
        assert a[k][4:5].tobytes() == other[k][1:2].tobytes(), k
    c = scenes.render("val", np.arange(6), 12, 20)
    assert not np.array_equal(a["rgb"], c["rgb"])
    d = scenes.render("test", np.arange(6), 11, 20)
    assert not np.array_equal(a["rgb"], d["rgb"])


def test_split_code_stable() -> None:
    assert scenes.split_code("train") == 1
    assert scenes.split_code("custom") == scenes.split_code("custom") >= 1000


def test_normals_unit_and_facing(batch: dict[str, np.ndarray]) -> None:
    nrm, ray = batch["normal"], batch["ray"]
    assert np.allclose(np.linalg.norm(nrm, axis=1), 1.0, atol=1e-4)
    dot = (nrm * ray).sum(1)
    assert (dot < 1e-6).all()
    assert (dot < 0).mean() > 0.999


def test_depth_vs_distance(batch: dict[str, np.ndarray]) -> None:
    dist, depth, ray = batch["distance"], batch["depth"], batch["ray"]
    assert (depth <= dist * (1 + 1e-6)).all() and (depth > 0).all()
    np.testing.assert_allclose(depth, dist * ray[:, 2], rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(batch["point"], axis=1), dist, rtol=1e-5)
    c = 33 // 2  # odd size: the centre pixel is on the optical axis
    np.testing.assert_array_equal(depth[:, c, c], dist[:, c, c])
    even = scenes.render("train", np.arange(3), 3, 32)  # even size: off-axis by half a pixel
    r = even["ray"][:, :, 16, 16]
    np.testing.assert_allclose(even["depth"][:, 16, 16], even["distance"][:, 16, 16] * r[:, 2], rtol=1e-6)
    assert (r[:, 2] < 1).all() and (r[:, 2] > 0.999).all()


def test_semantic_consistent_with_instance(batch: dict[str, np.ndarray]) -> None:
    inst, sem = batch["instance"], batch["semantic"]
    for i in range(len(inst)):
        for v in np.unique(inst[i]):
            classes = np.unique(sem[i][inst[i] == v])
            assert len(classes) == 1
            if v >= scenes.N_ROOM:
                assert classes[0] == 3 + batch["obj_class"][i, v - scenes.N_ROOM]
            else:
                assert classes[0] == {0: 0, 1: 2}.get(int(v), 1)


def test_vanishing_directions_orthonormal(batch: dict[str, np.ndarray]) -> None:
    for key in ("vanishing", "room_axes"):
        m = batch[key].astype(np.float64)
        np.testing.assert_allclose(
            m @ np.transpose(m, (0, 2, 1)), np.broadcast_to(np.eye(3), m.shape), atol=1e-5
        )
    # the up axis points up in the image (negative camera y) for a level-ish camera
    assert (batch["vanishing"][:, 1, 1] < 0).all()


def _one_object(cls: int, size: tuple[float, float, float], n: int = 2) -> scenes.SceneParams:
    p = scene_sampling._sample_scenes("train", np.arange(n), 0)
    p.obj_class[:] = -1
    p.obj_class[:, 0] = cls
    p.obj_size[:, 0] = size
    p.cam_pitch[:] = -0.3
    p.cam_roll[:] = 0.0
    p.cam_pos[:, 1] = 1.2
    fwd = np.stack([np.sin(p.cam_yaw), np.cos(p.cam_yaw)], 1)
    p.obj_pos[:, 0] = p.cam_pos[:, [0, 2]] + 2.0 * fwd
    p.room[:, [0, 2]] = 30.0  # big room so that the object fits
    p.cam_pos[:, [0, 2]] += 10.0
    p.obj_pos[:, 0] += 10.0
    return p


def test_curvature_planes_sphere_cylinder() -> None:
    r = 0.4
    buf = raycast._render_params(_one_object(0, (r, r, r)), 48)
    on = buf["instance"] == scenes.N_ROOM
    assert on.sum() > 50
    k = buf["curvature"]
    np.testing.assert_allclose(k[:, 0][on], 1 / r, rtol=1e-3)
    np.testing.assert_allclose(k[:, 1][on], 1 / r, rtol=1e-3)
    room = buf["semantic"] < 3  # floor, wall, ceiling are planes
    assert (k[:, 0][room] == 0).all() and (k[:, 1][room] == 0).all()
    cyl = raycast._render_params(_one_object(3, (0.3, 0.8, 0.3)), 48)
    on = cyl["instance"] == scenes.N_ROOM
    k = cyl["curvature"]
    side = on & (k[:, 0] > 0)
    assert side.sum() > 30
    np.testing.assert_allclose(k[:, 0][side], 1 / 0.3, rtol=1e-3)
    np.testing.assert_allclose(k[:, 1][side], 0.0, atol=1e-3)
    box = raycast._render_params(_one_object(5, (0.3, 0.6, 0.3)), 32)
    assert (box["curvature"] == 0).all()


def test_sphere_geometry_exact() -> None:
    r = 0.5
    p = _one_object(0, (r, r, r), n=1)
    buf = raycast._render_params(p, 40)
    on = buf["instance"][0] == scenes.N_ROOM
    # world hit points from the camera-frame points: distance to the sphere centre is r
    rot = scene_geometry._camera_matrix(p)[0]
    pts = buf["point"][0][:, on].T.astype(np.float64) @ rot.T + p.cam_pos[0]
    centre = np.array([p.obj_pos[0, 0, 0], r, p.obj_pos[0, 0, 1]])
    np.testing.assert_allclose(np.linalg.norm(pts - centre, axis=1), r, rtol=1e-4)


@pytest.mark.parametrize("size", [16, 17, 64])
def test_any_resolution(size: int) -> None:
    b = scenes.render("train", [0, 1], 0, size)
    assert b["rgb"].shape == (2, 3, size, size)


def test_bad_size() -> None:
    with pytest.raises(ValueError, match="16..256"):
        scenes.render("train", [0], 0, 8)


def test_generate_split_deterministic() -> None:
    a = scenes.generate_split("train", 7, 5, 16, batch_size=3, progress=False)
    b = scenes.generate_split("train", 7, 5, 16, batch_size=8, progress=False)
    assert set(a) == set(b)
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k
    assert a["rgb"].shape == (7, 3, 16, 16)
    assert "label_depth_euclidean" in a and "label_class_scene" in a
