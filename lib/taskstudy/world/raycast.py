"""The ray caster: rays of a pinhole camera cast analytically against the room box and every object piece, in float32
torch, one batch of scenes at a time; Lambertian shading with shadow rays, solid textures and analytic principal
curvatures. Every per-pixel computation is element-wise (no BLAS, no SIMD transcendental functions), so a pixel is
bit-identical whatever batch it is rendered in. `_render_params` gives every buffer the labels are computed from.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from taskstudy.world.scene_geometry import _camera_matrix, _layout, _pieces
from taskstudy.world.scene_sampling import FOV_DEG, MAX_OBJECTS, N_ROOM, N_SURF, SceneParams


# ---- torch ray casting ------------------------------------------------------------------------------------
def _t(a: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)


def _intersect(
    o: tuple[torch.Tensor, ...],
    d: tuple[torch.Tensor, ...],
    quad: torch.Tensor | None,
    planes: torch.Tensor,
    need_face: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Ray vs convex piece in the piece frame. o, d: xyz tensors broadcastable to (M,P).

    Returns entry t, exit t (entry = +inf when the ray misses) and the entry face (-1 quadric, else plane).
    """
    ox, oy, oz = o
    dx, dy, dz = d
    shape = torch.broadcast_shapes(ox.shape, dx.shape)
    p_in = torch.full(shape, -math.inf)
    p_out = torch.full(shape, math.inf)
    face = torch.full(shape, 0, dtype=torch.int8)
    for j in range(planes.shape[1]):
        nx, ny, nz, off = (planes[:, j, c : c + 1] for c in range(4))
        nd = nx * dx + ny * dy + nz * dz
        no = nx * ox + ny * oy + nz * oz
        t = (off - no) / nd  # nd == 0: t = +-inf, treated as an exit plane (inside or never inside)
        enter = nd < 0
        if need_face:
            better = enter & (t > p_in)
            p_in = torch.where(better, t, p_in)
            face = torch.where(better, torch.tensor(j, dtype=torch.int8), face)
        else:
            p_in = torch.maximum(p_in, torch.where(enter, t, -math.inf))
        p_out = torch.minimum(p_out, torch.where(enter, math.inf, t))
    if quad is None:
        lo, hi = p_in, p_out
    else:
        ax, ay, az, bx, by, bz, c = (quad[:, i : i + 1] for i in range(7))
        a = ax * dx * dx + ay * dy * dy + az * dz * dz
        b = 2.0 * (ax * ox * dx + ay * oy * dy + az * oz * dz) + bx * dx + by * dy + bz * dz
        cc = ax * ox * ox + ay * oy * oy + az * oz * oz + bx * ox + by * oy + bz * oz + c
        a = torch.where(a.abs() < 1e-9, torch.full_like(a, 1e-9), a)
        disc = b * b - 4.0 * a * cc
        sq = torch.sqrt(disc.clamp(min=0.0))
        r0 = (-b - sq) / (2.0 * a)
        r1 = (-b + sq) / (2.0 * a)
        t0 = torch.minimum(r0, r1)
        t1 = torch.maximum(r0, r1)
        hit_disc = disc >= 0
        pos = a > 0
        # a > 0: inside = [t0, t1]; a < 0 (cone nappes): (-inf, t0] or [t1, inf); disc < 0 & a < 0: all
        lo1 = torch.where(pos, torch.maximum(t0, p_in), p_in)
        hi1 = torch.where(
            pos, torch.minimum(t1, p_out), torch.where(hit_disc, torch.minimum(t0, p_out), p_out)
        )
        lo2 = torch.maximum(t1, p_in)
        ok1 = (lo1 < hi1) & (hit_disc | ~pos)
        use2 = ~ok1 & ~pos & hit_disc
        lo = torch.where(use2, lo2, torch.where(ok1, lo1, torch.full_like(lo1, math.inf)))
        hi = torch.where(use2, p_out, hi1)
        if need_face:
            f1 = torch.where(pos & (t0 >= p_in), torch.tensor(-1, dtype=torch.int8), face)
            f2 = torch.where(t1 >= p_in, torch.tensor(-1, dtype=torch.int8), face)
            face = torch.where(use2, f2, f1)
    valid = (lo < hi) & (lo > 1e-4)
    lo = torch.where(valid, lo, math.inf)
    return lo, hi, face if need_face else None


def _to_local(pc: dict[str, torch.Tensor], sl: slice, vx, vy, vz, point: bool):  # noqa: ANN001, ANN202
    """World vectors/points (broadcastable to (M,P)) to piece frames of pieces ``sl``."""
    cos, sin = pc["cos"][sl, None], pc["sin"][sl, None]
    if point:
        vx = vx - pc["centre"][sl, 0:1]
        vy = vy - pc["centre"][sl, 1:2]
        vz = vz - pc["centre"][sl, 2:3]
    return cos * vx - sin * vz, vy, sin * vx + cos * vz


def _cast(
    pc: dict[str, torch.Tensor],
    n_scenes: int,
    o: tuple[torch.Tensor, ...],
    d: tuple[torch.Tensor, ...],
    kmax: int,
    limit: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | torch.Tensor:
    """Cast one ray per pixel (N,P) against every scene's pieces.

    Returns (nearest t, winning piece index, its face) or, with ``limit`` (shadow rays), an occlusion mask.
    """
    m = pc["scene"].shape[0]
    npix = d[0].shape[1]
    if m == 0:
        if limit is not None:
            return torch.zeros((n_scenes, npix), dtype=torch.bool)
        inf = torch.full((n_scenes, npix), math.inf)
        return (
            inf,
            torch.zeros((n_scenes, npix), dtype=torch.long),
            torch.zeros((n_scenes, npix), dtype=torch.int8),
        )
    bnd = pc["bounds"]
    los, faces = [], []
    for g, n_planes in ((0, 0), (1, 2), (2, 6)):
        sl = slice(bnd[g], bnd[g + 1])
        if sl.stop - sl.start == 0:
            continue
        sc = pc["scene"][sl]
        dw = [c[sc] for c in d]
        ow = [c[sc] for c in o]
        ol = _to_local(pc, sl, *ow, point=True)
        dl = _to_local(pc, sl, *dw, point=False)
        quad = pc["quad"][sl] if g < 2 else None
        lo, _, face = _intersect(ol, dl, quad, pc["planes"][sl, :n_planes], need_face=limit is None)
        los.append(lo)
        faces.append(face)
    lo = torch.cat(los)
    if limit is not None:
        hit = (lo < limit[pc["scene"]]).to(torch.float32)
        occ = torch.zeros((n_scenes, npix))
        occ.index_add_(0, pc["scene"], hit)
        return occ > 0
    face = torch.cat(faces)
    tb = torch.full((n_scenes, kmax, npix), math.inf)
    tb[pc["scene"], pc["rank"]] = lo
    fb = torch.zeros((n_scenes, kmax, npix), dtype=torch.int8)
    fb[pc["scene"], pc["rank"]] = face
    tmin, rk = tb.min(dim=1)
    ptab = torch.zeros((n_scenes, kmax), dtype=torch.long)
    ptab[pc["scene"], pc["rank"]] = torch.arange(m)
    pid = ptab.gather(1, rk)
    fwin = fb.gather(1, rk[:, None]).squeeze(1)
    return tmin, pid, fwin


def _hash01(ix: torch.Tensor, iy: torch.Tensor, iz: torch.Tensor) -> torch.Tensor:
    """Deterministic integer hash of lattice cells to [0,1]."""
    h = (ix * 73856093) ^ (iy * 19349663) ^ (iz * 83492791)
    h = h & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 1274126177) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    return (h & 1023).to(torch.float32) / 1023.0


def _pattern(qx: torch.Tensor, qy: torch.Tensor, qz: torch.Tensor, tex: torch.Tensor) -> torch.Tensor:
    """Texture pattern value in [0,1] for coordinates already divided by the texture period."""

    def par(v: torch.Tensor) -> torch.Tensor:
        return torch.remainder(torch.floor(v), 2.0)

    fx, fy, fz = torch.floor(qx), torch.floor(qy), torch.floor(qz)
    rx, ry, rz = qx - fx - 0.5, qy - fy - 0.5, qz - fz - 0.5
    pats = [
        torch.zeros_like(qx),
        torch.remainder(fx + fy + fz, 2.0),
        par(2 * qx) + par(2 * qy) + par(2 * qz),
        par(1.5 * qy),
        par(1.5 * qx + 1.5 * qz),
        par(qx + qy + qz),
        par(1.5 * torch.sqrt(qx * qx + qy * qy + qz * qz)),
        (rx * rx + ry * ry + rz * rz < 0.09).to(torch.float32),
        ((rx.abs() > 0.38) | (ry.abs() > 0.38) | (rz.abs() > 0.38)).to(torch.float32),
        _hash01(fx.to(torch.int64), fy.to(torch.int64), fz.to(torch.int64)),
        (qx > 0).to(torch.float32),
        _hash01(
            torch.floor(4 * qx).to(torch.int64),
            torch.floor(4 * qy).to(torch.int64),
            torch.floor(4 * qz).to(torch.int64),
        ),
    ]
    pats[2] = torch.remainder(pats[2], 2.0)
    stack = torch.stack(pats)
    return stack.gather(0, tex[None].long()).squeeze(0)


def _render_params(p: SceneParams, image_size: int) -> dict[str, np.ndarray]:
    """Render a batch of scenes given their parameters (all per-pixel buffers + per-scene arrays)."""
    n, hw = len(p), int(image_size)
    npix = hw * hw
    rot = _camera_matrix(p)
    rot_t = _t(rot)
    pcs = _pieces(p)
    pc: dict[str, Any] = {
        "scene": torch.from_numpy(pcs["scene"]),
        "rank": torch.from_numpy(pcs["rank"]),
        "planes": _t(pcs["planes"]),
        "quad": _t(pcs["quad"]),
        "centre": _t(pcs["centre"]),
        "cos": _t(pcs["cos"]),
        "sin": _t(pcs["sin"]),
        "bounds": pcs["bounds"],
    }
    kmax = int(pcs["rank"].max()) + 1 if len(pcs["rank"]) else 1

    # camera rays
    f = (hw / 2) / math.tan(math.radians(FOV_DEG) / 2)
    coords = (torch.arange(hw, dtype=torch.float32) + 0.5 - hw / 2) / f
    cxr = coords[None, :].expand(hw, hw).reshape(1, npix)
    cyr = coords[:, None].expand(hw, hw).reshape(1, npix)
    inv = 1.0 / torch.sqrt(cxr * cxr + cyr * cyr + 1.0)
    ux, uy, uz = cxr * inv, cyr * inv, inv  # camera-frame unit rays (1,P)
    r = [[rot_t[:, i, j : j + 1] for j in range(3)] for i in range(3)]
    dx = r[0][0] * ux + r[0][1] * uy + r[0][2] * uz
    dy = r[1][0] * ux + r[1][1] * uy + r[1][2] * uz
    dz = r[2][0] * ux + r[2][1] * uy + r[2][2] * uz
    cam = _t(p.cam_pos)
    ox, oy, oz = cam[:, 0:1], cam[:, 1:2], cam[:, 2:3]
    room = _t(p.room)

    # room box (camera inside): exit distance per axis
    def axis_t(o_: torch.Tensor, d_: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        d_ = torch.where(d_.abs() < 1e-9, torch.full_like(d_, 1e-9), d_)
        return torch.where(d_ > 0, (hi - o_) / d_, (0.0 - o_) / d_)

    tx, ty, tz = axis_t(ox, dx, room[:, 0:1]), axis_t(oy, dy, room[:, 1:2]), axis_t(oz, dz, room[:, 2:3])
    t_room = torch.minimum(torch.minimum(tx, ty), tz)
    inst_room = torch.where(
        (ty <= tx) & (ty <= tz),
        torch.where(dy < 0, 0, 1),
        torch.where(tx <= tz, torch.where(dx < 0, 2, 3), torch.where(dz < 0, 4, 5)),
    )
    tobj, pid, face = _cast(pc, n, (cam[:, 0:1], cam[:, 1:2], cam[:, 2:3]), (dx, dy, dz), kmax)
    is_obj = tobj < t_room
    t = torch.where(is_obj, tobj, t_room)
    px, py, pz = ox + t * dx, oy + t * dy, oz + t * dz

    # normals (world), curvature, texture coordinates
    zero = torch.zeros((n, npix))
    rnx = torch.where(inst_room == 2, 1.0, torch.where(inst_room == 3, -1.0, 0.0))
    rny = torch.where(inst_room == 0, 1.0, torch.where(inst_room == 1, -1.0, 0.0))
    rnz = torch.where(inst_room == 4, 1.0, torch.where(inst_room == 5, -1.0, 0.0))
    nx, ny, nz = rnx, rny, rnz
    k1, k2 = zero, zero.clone()
    floor_like = inst_room <= 1
    xwall = (inst_room == 2) | (inst_room == 3)
    qx = torch.where(xwall, pz, px)
    qy = torch.where(floor_like, pz, py)
    qz = zero
    slot = torch.zeros((n, npix), dtype=torch.long)
    sel = is_obj.reshape(-1).nonzero().squeeze(1)
    if sel.numel():
        q_pid = pid.reshape(-1)[sel]
        q_face = face.reshape(-1)[sel].long()
        sx_, sy_, sz_ = px.reshape(-1)[sel], py.reshape(-1)[sel], pz.reshape(-1)[sel]
        cos, sin = pc["cos"][q_pid], pc["sin"][q_pid]
        cen = pc["centre"][q_pid]
        vx, vy, vz = sx_ - cen[:, 0], sy_ - cen[:, 1], sz_ - cen[:, 2]
        lx, ly, lz = cos * vx - sin * vz, vy, sin * vx + cos * vz
        qd = pc["quad"][q_pid]
        ax, ay, az, bx, by, bz = (qd[:, i] for i in range(6))
        gx, gy, gz = 2 * ax * lx + bx, 2 * ay * ly + by, 2 * az * lz + bz
        pl = pc["planes"][q_pid, q_face.clamp(min=0)]
        on_q = q_face < 0
        g2 = gx * gx + gy * gy + gz * gz
        gn = torch.sqrt(g2).clamp(min=1e-12)
        hx, hy, hz = 2 * ax, 2 * ay, 2 * az
        ghg = hx * gx * gx + hy * gy * gy + hz * gz * gz
        s_mean = (g2 * (hx + hy + hz) - ghg) / (g2 * gn)  # k1 + k2
        k_gauss = (hy * hz * gx * gx + hx * hz * gy * gy + hx * hy * gz * gz) / (g2 * g2)
        half = 0.5 * s_mean
        root = torch.sqrt((half * half - k_gauss).clamp(min=0.0))
        q1 = torch.where(on_q, half + root, 0.0)
        q2 = torch.where(on_q, half - root, 0.0)
        lnx = torch.where(on_q, gx / gn, pl[:, 0])
        lny = torch.where(on_q, gy / gn, pl[:, 1])
        lnz = torch.where(on_q, gz / gn, pl[:, 2])
        wnx, wnz = cos * lnx + sin * lnz, -sin * lnx + cos * lnz
        nx, ny, nz = nx.reshape(-1).clone(), ny.reshape(-1).clone(), nz.reshape(-1).clone()
        nx[sel], ny[sel], nz[sel] = wnx, lny, wnz
        k1, k2 = k1.reshape(-1).clone(), k2.reshape(-1).clone()
        k1[sel], k2[sel] = q1, q2
        # texture coordinates: object frame (footprint centre, object yaw)
        oslot = _t(pcs["slot"], torch.long)[q_pid]
        scn = sel // npix
        opos = _t(p.obj_pos)[scn, oslot]
        ox_, oz_ = sx_ - opos[:, 0], sz_ - opos[:, 1]
        qx, qy, qz = qx.reshape(-1).clone(), qy.reshape(-1).clone(), qz.reshape(-1).clone()
        qx[sel], qy[sel], qz[sel] = cos * ox_ - sin * oz_, sy_, sin * ox_ + cos * oz_
        slot = slot.reshape(-1)
        slot[sel] = oslot
        nx, ny, nz, k1, k2, qx, qy, qz, slot = (
            v.reshape(n, npix) for v in (nx, ny, nz, k1, k2, qx, qy, qz, slot)
        )
    instance = torch.where(is_obj, N_ROOM + slot, inst_room)

    # camera-frame normal, made to face the camera
    cnx = r[0][0] * nx + r[1][0] * ny + r[2][0] * nz
    cny = r[0][1] * nx + r[1][1] * ny + r[2][1] * nz
    cnz = r[0][2] * nx + r[1][2] * ny + r[2][2] * nz
    inv_n = 1.0 / torch.sqrt(cnx * cnx + cny * cny + cnz * cnz)
    facing = cnx * ux + cny * uy + cnz * uz
    sgn = torch.where(facing > 0, -1.0, 1.0) * inv_n
    cnx, cny, cnz = cnx * sgn, cny * sgn, cnz * sgn
    sgn_w = torch.where(facing > 0, -1.0, 1.0)
    nx, ny, nz = nx * sgn_w, ny * sgn_w, nz * sgn_w

    # albedo from textures
    flat_inst = (torch.arange(n)[:, None] * N_SURF + instance).reshape(-1)
    tex = _t(p.surf_tex, torch.long).reshape(-1)[flat_inst].reshape(n, npix)
    scale = _t(p.surf_scale).reshape(-1)[flat_inst].reshape(n, npix)
    pat = _pattern(qx / scale, qy / scale, qz / scale, tex)
    ca = _t(p.surf_col_a).reshape(-1, 3)[flat_inst].reshape(n, npix, 3)
    cb = _t(p.surf_col_b).reshape(-1, 3)[flat_inst].reshape(n, npix, 3)
    albedo = ca + (cb - ca) * pat[..., None]  # (N,P,3)

    # lighting: point light + ambient, shadow rays
    light = _t(p.light_pos)
    lx_, ly_, lz_ = light[:, 0:1] - px, light[:, 1:2] - py, light[:, 2:3] - pz
    ldist = torch.sqrt(lx_ * lx_ + ly_ * ly_ + lz_ * lz_)
    lx_, ly_, lz_ = lx_ / ldist, ly_ / ldist, lz_ / ldist
    ndl = nx * lx_ + ny * ly_ + nz * lz_
    eps = 2e-3
    occ = _cast(pc, n, (px + eps * nx, py + eps * ny, pz + eps * nz), (lx_, ly_, lz_), kmax, limit=ldist)
    lit = ndl > 0
    shadow = lit & occ
    direct = torch.where(lit & ~occ, ndl, 0.0) * _t(p.light_power)[:, None] / (1.0 + 0.08 * ldist * ldist)
    shading = _t(p.ambient)[:, None] + direct
    rgb = (albedo * shading[..., None]).clamp(0.0, 1.0)

    lay, van = _layout(p, rot)
    dist = t
    depth = t * uz

    def img(x: torch.Tensor) -> np.ndarray:
        return x.reshape(n, hw, hw).numpy()

    def img3(x: torch.Tensor) -> np.ndarray:  # (N,P,3) -> (N,3,H,W)
        return x.reshape(n, hw, hw, 3).permute(0, 3, 1, 2).contiguous().numpy()

    sem = torch.where(
        is_obj,
        3 + _t(p.obj_class, torch.long).reshape(-1)[(torch.arange(n)[:, None] * MAX_OBJECTS + slot)],
        torch.where(inst_room == 0, 0, torch.where(inst_room == 1, 2, 1)),
    )
    return {
        "rgb": img3(rgb),
        "distance": img(dist),
        "depth": img(depth),
        "normal": np.stack([img(cnx), img(cny), img(cnz)], 1),
        "point": np.stack([img(dist * ux), img(dist * uy), img(depth)], 1),
        "instance": img(instance).astype(np.int64),
        "semantic": img(sem).astype(np.int64),
        "albedo": img3(albedo),
        "shading": img(shading),
        "shadow": img(shadow).astype(np.uint8),
        "curvature": np.stack([img(k1), img(k2)], 1),
        "ray": np.stack([img(ux.expand(n, npix)), img(uy.expand(n, npix)), img(uz.expand(n, npix))], 1),
        "room_type": p.room_type.astype(np.int64),
        "camera": lay.astype(np.float32),
        "room_axes": np.transpose(rot, (0, 2, 1)).astype(np.float32),
        "vanishing": van.astype(np.float32),
        "obj_class": p.obj_class.astype(np.int64),
        "obj_count": (p.obj_class >= 0).sum(1).astype(np.int64),
        "room_size": p.room.astype(np.float32),
        "index": p.index.astype(np.int64),
        "seed": np.full(n, p.seed, np.int64),
    }
