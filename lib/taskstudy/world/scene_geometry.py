"""The geometry of a batch of scenes: each object as convex pieces (quadrics clipped by planes, or polyhedra), the
camera's rotation and the room layout in the camera frame (the layout task's labels)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from taskstudy.world.scene_sampling import SceneParams

# ---- geometry: object pieces ------------------------------------------------------------------------------
_BIG = 1.0e3


def _pieces(p: SceneParams) -> dict[str, Any]:
    """Decompose objects into convex pieces: quadric pieces (quadric + 2 y-planes) and polyhedra (6 planes).

    Sizes: sphere r; ellipsoid semi-axes; capsule (r, total height); cylinder (r, h); cone (r, h);
    box (half x, height, half z); pyramid (half base, height); prism (half width, height, half length).
    A piece is given in a frame centred at ``centre`` and yawed like its object; planes are (nx, ny, nz, d)
    meaning n.p <= d, and the quadric is sum(A p^2) + b.p + c <= 0. Groups: 0 unclipped quadrics (spheres,
    ellipsoids, capsule ends), 1 quadrics clipped by 2 planes (cylinders, cones, capsule bodies), 2 polyhedra.
    """
    rows: list[tuple] = []  # (scene, slot, group, cy, A(3), b(3), c, planes(6x4))
    n_idx, k_idx = np.nonzero(p.obj_class >= 0)
    big = [(0, 1, 0, _BIG), (0, -1, 0, _BIG)]
    for n, k in zip(n_idx.tolist(), k_idx.tolist(), strict=True):
        c = int(p.obj_class[n, k])
        sx, sy, sz = (float(v) for v in p.obj_size[n, k])
        if c == 0:
            rows.append((n, k, 0, sx, (1, 1, 1), (0, 0, 0), -sx * sx, big))
        elif c == 1:
            rows.append((n, k, 0, sy, (1 / sx**2, 1 / sy**2, 1 / sz**2), (0, 0, 0), -1.0, big))
        elif c == 2:
            r, ln = sx, sy - 2 * sx
            rows.append((n, k, 0, 0.0, (1, 0, 1), (0, 0, 0), -r * r, [(0, 1, 0, r + ln), (0, -1, 0, -r)]))
            rows.append((n, k, 0, r, (1, 1, 1), (0, 0, 0), -r * r, big))
            rows.append((n, k, 0, r + ln, (1, 1, 1), (0, 0, 0), -r * r, big))
            rows[-3] = rows[-3][:2] + (1,) + rows[-3][3:]
        elif c == 3:
            rows.append((n, k, 1, 0.0, (1, 0, 1), (0, 0, 0), -sx * sx, [(0, 1, 0, sy), (0, -1, 0, 0)]))
        elif c == 4:
            q = (sx / sy) ** 2
            rows.append(
                (n, k, 1, 0.0, (1, -q, 1), (0, 2 * q * sy, 0), -q * sy * sy, [(0, 1, 0, sy), (0, -1, 0, 0)])
            )
        elif c == 5:
            pl = [(1, 0, 0, sx), (-1, 0, 0, sx), (0, 0, 1, sz), (0, 0, -1, sz), (0, 1, 0, sy), (0, -1, 0, 0)]
            rows.append((n, k, 2, 0.0, None, None, None, pl))
        elif c == 6:
            a, h = sx, sy
            ln = math.hypot(a, h)
            e, f, d = h / ln, a / ln, h * a / ln
            pl = [(e, f, 0, d), (-e, f, 0, d), (0, f, e, d), (0, f, -e, d), (0, -1, 0, 0), (0, -1, 0, 0)]
            rows.append((n, k, 2, 0.0, None, None, None, pl))
        else:
            a, h = sx, sy
            ln = math.hypot(a, h)
            e, f, d = h / ln, a / ln, h * a / ln
            pl = [(e, f, 0, d), (-e, f, 0, d), (0, 0, 1, sz), (0, 0, -1, sz), (0, -1, 0, 0), (0, -1, 0, 0)]
            rows.append((n, k, 2, 0.0, None, None, None, pl))
    rows.sort(key=lambda r: (r[2], r[0]))  # group, then scene
    m = len(rows)
    scene = np.array([r[0] for r in rows], np.int64)
    slot = np.array([r[1] for r in rows], np.int64)
    group = np.array([r[2] for r in rows], np.int64)
    planes = np.zeros((m, 6, 4))
    quad = np.zeros((m, 7))
    quad[:, 6] = -1.0
    cy = np.array([r[3] for r in rows], float)
    for i, r in enumerate(rows):
        pl = np.array(r[7], float)
        planes[i, : len(pl)] = pl
        if r[2] <= 1:
            quad[i] = [*r[4], *r[5], r[6]]
    # rank of each piece within its scene (for the per-scene depth buffer)
    order = np.lexsort((np.arange(m), scene))
    rank = np.zeros(m, np.int64)
    if m:
        s_sorted = scene[order]
        starts = np.r_[0, np.nonzero(np.diff(s_sorted))[0] + 1]
        counts = np.diff(np.r_[starts, m])
        rank[order] = np.arange(m) - np.repeat(starts, counts)
    cos = np.array([math.cos(a) for a in p.obj_yaw[scene, slot]]) if m else np.zeros(0)
    sin = np.array([math.sin(a) for a in p.obj_yaw[scene, slot]]) if m else np.zeros(0)
    centre = (
        np.stack([p.obj_pos[scene, slot, 0], cy, p.obj_pos[scene, slot, 1]], -1) if m else np.zeros((0, 3))
    )
    return {
        "scene": scene,
        "slot": slot,
        "group": group,
        "rank": rank,
        "planes": planes,
        "quad": quad,
        "centre": centre,
        "cos": cos,
        "sin": sin,
        "bounds": np.searchsorted(group, [0, 1, 2, 3]).tolist(),  # piece ranges of groups 0, 1, 2
    }


def _camera_matrix(p: SceneParams) -> np.ndarray:
    """(N,3,3) camera-to-world rotation: columns right, down, forward (camera x right, y down, z forward)."""
    out = np.zeros((len(p), 3, 3))
    for i in range(len(p)):
        cy, sy = math.cos(p.cam_yaw[i]), math.sin(p.cam_yaw[i])
        cp, sp = math.cos(p.cam_pitch[i]), math.sin(p.cam_pitch[i])
        cr, sr = math.cos(p.cam_roll[i]), math.sin(p.cam_roll[i])
        f = np.array([sy * cp, sp, cy * cp])
        r0 = np.array([-cy, 0.0, sy])
        d0 = np.array([sp * sy, -cp, sp * cy])
        out[i, :, 0] = cr * r0 + sr * d0
        out[i, :, 1] = -sr * r0 + cr * d0
        out[i, :, 2] = f
    return out


def _layout(p: SceneParams, rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Room layout vector (N,9) (see LAYOUT_FIELDS) and canonical vanishing directions (N,3,3).

    The room axis nearest to the camera heading is "front" (k = round(yaw / 90deg)); vanishing rows are the
    camera-frame directions of the room's right-hand horizontal axis, up, and front axis.
    """
    n = len(p)
    lay = np.zeros((n, 9))
    van = np.zeros((n, 3, 3))
    for i in range(n):
        yaw = float(p.cam_yaw[i])
        k = round(yaw / (math.pi / 2))
        psi = yaw - k * math.pi / 2
        w, h, d = p.room[i]
        cx, ch, cz = p.cam_pos[i]
        walls = [d - cz, w - cx, cz, cx]
        lay[i] = [
            p.cam_pitch[i],
            p.cam_roll[i],
            psi,
            ch,
            h - ch,
            walls[k % 4],
            walls[(k - 1) % 4],
            walls[(k + 2) % 4],
            walls[(k + 1) % 4],
        ]
        hk = k * math.pi / 2
        fwd = np.array([math.sin(hk), 0.0, math.cos(hk)])
        right = np.array([-math.cos(hk), 0.0, math.sin(hk)])
        up = np.array([0.0, 1.0, 0.0])
        for j, v in enumerate((right, up, fwd)):
            van[i, j] = rot[i].T @ v
    return lay, van
