"""Lift an image with depth to a triangle mesh; render it from another camera on the CPU.

The mesh is the ground truth of a synthetic pair: its vertices are the pixel centres of
image 0 lifted with their depth, so the novel view, its depth and both warps are exact
functions of the mesh and the relative pose, with no tolerance anywhere except the
visibility test of :func:`warps` (documented there).

Conventions (:mod:`l2m_plugin.geometry`): COLMAP pixels, the centre of pixel (row i,
column j) is (j + 0.5, i + 0.5); ``K`` maps camera coordinates to those pixels;
``T_0to1`` maps camera-0 coordinates to camera-1 coordinates; depth is the camera z,
0 where there is no surface; warps are normalised [-1, 1] coordinates of the other image
(``align_corners=False``, :func:`l2m_plugin.coords.pixel_to_normalized`).

Mesh (as in the authors' generator, Sharpiless/L2M ``warp_utils.py``
``RGBDRenderer.get_faces``): two triangles per 2 x 2 block of pixel centres, split along
the top-left / bottom-right diagonal, ``(tl, bl, br)`` and ``(br, tr, tl)``. Unlike the
authors (who keep every triangle and mask stretched ones as holes through a Sobel test on
the disparity), triangles that span a depth discontinuity are *dropped*: they are not a
surface, so they neither show colour nor occlude, and what they would have covered is a
disocclusion (a hole, inpainted, invalid).

Rasteriser: vectorised z-buffer in plain torch (float64 geometry). Every triangle
enumerates the pixel centres inside its bounding box, keeps those whose barycentric
coordinates are all >= -1e-9 (so centres exactly on an edge or vertex are covered, by
both neighbours; ties go to the lower face id), and the nearest one per pixel wins
through one ``scatter_reduce(amin)`` on a packed (float32 depth bits, face id) key.
Depth and the surface point at every covered pixel centre are then recomputed exactly
(ray-plane intersection with the winning triangle, which is perspective-correct
interpolation). Triangles seen from behind occlude but are holes (their side facing
camera 1 was never seen).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from l2m_plugin.coords import (
    index_to_pixel,
    pixel_arange,
    pixel_to_hloc,
    pixel_to_index,
    pixel_to_normalized,
)

__all__ = [
    "Mesh",
    "Raster",
    "RasterBudgetError",
    "lift",
    "grid_faces",
    "project",
    "rasterize",
    "render",
    "sample_image",
    "warps",
]

#: barycentric tolerance of the coverage test: centres on an edge belong to the triangle
BARY_EPS = 1e-9
_KEY_NONE = torch.iinfo(torch.int64).max


class RasterBudgetError(RuntimeError):
    """The view needs more pixel-centre candidates than the budget (extreme magnification)."""


@dataclass(frozen=True)
class Mesh:
    """A depth map of image 0 as a triangle mesh in camera-0 coordinates.

    Attributes:
        vertices: (H*W, 3) float64 camera-0 coordinates of every pixel centre lifted with
            its depth; vertex id ``i * W + j`` is pixel (row i, column j). Pixels without
            depth are vertices at the origin used by no face.
        faces: (F, 3) int64 vertex ids of the kept triangles, ordered ``(tl, bl, br)`` /
            ``(br, tr, tl)`` (clockwise on screen, front-facing for camera 0).
        depth: (H, W) float64 z-depth of image 0 (0 = no surface).
        K: (3, 3) float64 intrinsics of image 0 (COLMAP pixels).
        texture: optional (H, W, 3) uint8 or float32 image 0: the surface colour is image 0
            sampled bilinearly at the surface point's position in image 0.
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    depth: torch.Tensor
    K: torch.Tensor
    texture: np.ndarray | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of image 0 in pixels."""
        return int(self.depth.shape[1]), int(self.depth.shape[0])


@dataclass(frozen=True)
class Raster:
    """Visibility buffers of a mesh seen by camera 1, one entry per pixel of image 1.

    Attributes:
        face: (H1, W1) int64 index into ``mesh.faces`` of the nearest triangle covering the
            pixel centre, -1 where none does.
        backface: (H1, W1) bool, True where that triangle is seen from behind (it occludes,
            but its colour is unknown: a hole).
        depth: (H1, W1) float64 camera-1 z of the surface at the pixel centre (0 where
            ``face < 0``; also set on back faces).
        points0: (H1, W1, 3) float64 that surface point in camera-0 coordinates.
        candidates: number of (triangle, pixel centre) pairs tested.
    """

    face: torch.Tensor
    backface: torch.Tensor
    depth: torch.Tensor
    points0: torch.Tensor
    candidates: int

    @property
    def hole(self) -> torch.Tensor:
        """(H1, W1) bool: no visible front-facing surface (to be inpainted)."""
        return (self.face < 0) | self.backface


def _as_tensor(x, dtype=torch.float64) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not torch.is_tensor(x):
        x = torch.as_tensor(x)
    return x.to(dtype)


def _check_K(K: torch.Tensor, name: str) -> torch.Tensor:
    if tuple(K.shape) != (3, 3):
        raise ValueError(f"{name} must have shape (3, 3), got {tuple(K.shape)}")
    if not torch.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"{name} must be finite with positive focal lengths, got {K.tolist()}")
    return K


def _check_T(T: torch.Tensor) -> torch.Tensor:
    if tuple(T.shape) != (4, 4):
        raise ValueError(f"T_0to1 must have shape (4, 4), got {tuple(T.shape)}")
    R = T[:3, :3]
    if (R @ R.T - torch.eye(3, dtype=T.dtype)).abs().max() > 1e-6 or torch.det(R) < 0:
        raise ValueError("T_0to1[:3, :3] must be a rotation matrix (orthonormal, det +1)")
    return T


def grid_faces(height: int, width: int) -> torch.Tensor:
    """All triangles of a ``height`` x ``width`` grid of pixel centres.

    Returns:
        (2 * (H-1) * (W-1), 3) int64 vertex ids (``i * W + j``): first every block's
        ``(tl, bl, br)``, then every block's ``(br, tr, tl)``, blocks in row-major order
        (the authors' ``get_faces`` layout).
    """
    idx = torch.arange(height * width, dtype=torch.int64).reshape(height, width)
    tl, tr = idx[:-1, :-1].reshape(-1), idx[:-1, 1:].reshape(-1)
    bl, br = idx[1:, :-1].reshape(-1), idx[1:, 1:].reshape(-1)
    return torch.cat((torch.stack((tl, bl, br), 1), torch.stack((br, tr, tl), 1)))


def lift(image, depth, K, *, max_rel_depth_jump: float = 0.1) -> Mesh:
    """Back-project every pixel centre of image 0 with its depth and triangulate the grid.

    Args:
        image: (H, W, 3) uint8 or float image 0 (kept as the mesh texture), or None.
        depth: (H, W) z-depth in scene units at the pixel centres (numpy or torch);
            <= 0 or non-finite = no surface (sky, unknown).
        K: (3, 3) intrinsics of image 0, COLMAP pixels (centres at j + 0.5, i + 0.5).
        max_rel_depth_jump: a triangle is dropped when ``(z_max - z_min) / z_min`` over its
            three vertices exceeds this (a depth discontinuity between neighbouring
            pixels; at 0.1, a ground plane loses only the rows within 10 px of its
            horizon). Triangles touching a pixel without depth are dropped too.
    Returns:
        :class:`Mesh`.
    Raises:
        ValueError: shapes, a non-positive threshold, or an image smaller than 2 x 2.
    """
    z = _as_tensor(depth)
    if z.ndim != 2 or min(z.shape) < 2:
        raise ValueError(f"depth must have shape (H, W) with H, W >= 2, got {tuple(z.shape)}")
    K = _check_K(_as_tensor(K), "K")
    if not max_rel_depth_jump > 0:
        raise ValueError(f"max_rel_depth_jump must be > 0, got {max_rel_depth_jump}")
    h, w = z.shape
    if image is not None:
        image = np.asarray(image)
        if image.shape[:2] != (h, w) or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"image must have shape (H, W, 3) = ({h}, {w}, 3) like depth, got {image.shape}"
            )
    z = torch.where(torch.isfinite(z) & (z > 0), z, torch.zeros_like(z))
    ys, xs = torch.meshgrid(
        pixel_arange(h),
        pixel_arange(w),
        indexing="ij",
    )
    pix = torch.stack((xs, ys, torch.ones_like(xs)), -1).reshape(-1, 3)
    verts = (pix @ torch.linalg.inv(K).T) * z.reshape(-1, 1)
    faces = grid_faces(h, w)
    fz = z.reshape(-1)[faces]
    zmin, zmax = fz.min(1).values, fz.max(1).values
    keep = (zmin > 0) & ((zmax - zmin) <= max_rel_depth_jump * zmin)
    return Mesh(verts, faces[keep].contiguous(), z, K, image)


def project(points: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pinhole projection of (..., 3) camera points: ((..., 2) pixels, (..., ) z)."""
    z = points[..., 2]
    zs = torch.where(z.abs() > 1e-300, z, torch.full_like(z, 1e-300))
    uv = (points @ K.T)[..., :2] / zs.unsqueeze(-1)
    return uv, z


def _edge(ax, ay, bx, by, px, py):
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax)


def rasterize(
    mesh: Mesh,
    K1,
    T_0to1,
    size1: tuple[int, int] | None = None,
    *,
    near_clip: float = 1e-3,
    max_candidates_per_pixel: float = 24.0,
) -> Raster:
    """Z-buffer the mesh into camera 1 at every pixel centre of image 1.

    Args:
        mesh: from :func:`lift`.
        K1: (3, 3) intrinsics of image 1 (COLMAP pixels).
        T_0to1: (4, 4) rigid camera-0 -> camera-1 transform.
        size1: (W1, H1) of image 1; default: image 0's size.
        near_clip: triangles with a vertex at camera-1 z <= this (scene units) are
            dropped (no clipping); pixels they would cover show what lies behind.
        max_candidates_per_pixel: budget of (triangle, pixel centre) tests per pixel of
            image 1 (about 1-3 for ordinary views).
    Returns:
        :class:`Raster`.
    Raises:
        RasterBudgetError: the view magnifies the mesh beyond the budget (camera almost
            touching a surface); callers resample the motion.
        ValueError: bad K1, T_0to1 or size1.
    """
    K1 = _check_K(_as_tensor(K1), "K1")
    T = _check_T(_as_tensor(T_0to1))
    w1, h1 = size1 if size1 is not None else mesh.size
    if int(w1) < 1 or int(h1) < 1:
        raise ValueError(f"size1 must be two positive ints (W, H), got {size1}")
    w1, h1 = int(w1), int(h1)
    R, t = T[:3, :3], T[:3, 3]
    v1 = mesh.vertices @ R.T + t
    uv, z = project(v1, K1)
    faces = mesh.faces
    in_front = (z[faces] > near_clip).all(1)
    fidx = torch.nonzero(in_front).squeeze(1)
    fv = faces[fidx]
    fx, fy = uv[fv, 0], uv[fv, 1]  # (F', 3)
    # pixel centres c + 0.5 inside [min, max]: c in [ceil(min - 0.5), floor(max - 0.5)],
    # widened by 1e-6 px so that centres on a bounding edge (round-off) are tested
    c0 = torch.ceil(pixel_to_index(fx.min(1).values) - 1e-6).clamp(min=0)
    c1 = torch.floor(pixel_to_index(fx.max(1).values) + 1e-6).clamp(max=w1 - 1)
    r0 = torch.ceil(pixel_to_index(fy.min(1).values) - 1e-6).clamp(min=0)
    r1 = torch.floor(pixel_to_index(fy.max(1).values) + 1e-6).clamp(max=h1 - 1)
    nx = (c1 - c0 + 1).clamp(min=0).to(torch.int64)
    ny = (r1 - r0 + 1).clamp(min=0).to(torch.int64)
    cnt = nx * ny
    sel = cnt > 0
    fidx, fx, fy, nx, cnt = fidx[sel], fx[sel], fy[sel], nx[sel], cnt[sel]
    c0, r0, fv = c0[sel].to(torch.int64), r0[sel].to(torch.int64), fv[sel]
    total = int(cnt.sum())
    budget = int(max_candidates_per_pixel * w1 * h1)
    if total > budget:
        raise RasterBudgetError(
            f"the view needs {total} pixel-centre tests, over the budget of {budget} "
            f"({max_candidates_per_pixel} per pixel): the camera is too close to a surface"
        )
    face_buf = torch.full((h1 * w1,), -1, dtype=torch.int64)
    if total:
        which = torch.repeat_interleave(torch.arange(len(cnt)), cnt)
        start = torch.cumsum(cnt, 0) - cnt
        local = torch.arange(total, dtype=torch.int64) - start[which]
        nxw = nx[which]
        # row-major position inside the box; float division (exact here: (2 l + 1) / (2 n) is
        # never within rounding of an integer)
        # is much faster than int64 division on CPUs
        q = torch.floor((2 * local.double() + 1) / (2 * nxw.double())).to(torch.int64)
        col = c0[which] + (local - q * nxw)
        row = r0[which] + q
        del q
        del local, nxw
        px, py = index_to_pixel(col.double()), index_to_pixel(row.double())
        ax, bx, cx = fx.unbind(1)
        ay, by, cy = fy.unbind(1)
        area = _edge(ax, ay, bx, by, cx, cy)  # < 0: front-facing (clockwise on screen)
        good = area.abs() > 1e-12
        inv_area = torch.where(good, 1.0 / area, torch.zeros_like(area))
        # one gather of every per-face quantity the candidates need
        per_face = torch.stack((ax, ay, bx, by, cx, cy, inv_area), 1)[which]
        ax, ay, bx, by, cx, cy, ia = per_face.unbind(1)
        l0 = _edge(bx, by, cx, cy, px, py) * ia
        l1 = _edge(cx, cy, ax, ay, px, py) * ia
        l2 = 1.0 - l0 - l1
        inside = (l0 >= -BARY_EPS) & (l1 >= -BARY_EPS) & (l2 >= -BARY_EPS) & good[which]
        del per_face, ax, ay, bx, by, cx, cy, ia, px, py
        inv_fz = 1.0 / z[fv]
        which, l0, l1, l2 = which[inside], l0[inside], l1[inside], l2[inside]
        pix = row[inside] * w1 + col[inside]
        izf = inv_fz[which]
        inv_z = l0 * izf[:, 0] + l1 * izf[:, 1] + l2 * izf[:, 2]
        zc = (1.0 / inv_z).float()
        key = (zc.view(torch.int32).to(torch.int64) << 32) | fidx[which]
        keys = torch.full((h1 * w1,), _KEY_NONE, dtype=torch.int64)
        keys.scatter_reduce_(0, pix, key, reduce="amin", include_self=True)
        hit = keys != _KEY_NONE
        face_buf[hit] = keys[hit] & 0xFFFFFFFF
    face_buf = face_buf.reshape(h1, w1)
    depth1 = torch.zeros(h1, w1, dtype=torch.float64)
    points0 = torch.zeros(h1, w1, 3, dtype=torch.float64)
    backface = torch.zeros(h1, w1, dtype=torch.bool)
    hit = face_buf >= 0
    if hit.any():
        rows, cols = torch.nonzero(hit, as_tuple=True)
        f = faces[face_buf[rows, cols]]
        a, b, c = v1[f[:, 0]], v1[f[:, 1]], v1[f[:, 2]]
        n = torch.linalg.cross(b - a, c - a)
        ray = torch.stack(
            (index_to_pixel(cols.double()), index_to_pixel(rows.double()), torch.ones_like(cols.double())), 1
        )
        ray = ray @ torch.linalg.inv(K1).T  # z = 1: the ray parameter is the z-depth
        zz = (n * a).sum(1) / (n * ray).sum(1)
        p1 = ray * zz[:, None]
        depth1[rows, cols] = zz
        points0[rows, cols] = (p1 - t) @ R  # R^T (p1 - t)
        # front faces have their normal (b - a) x (c - a) towards the camera: n . a < 0
        backface[rows, cols] = (n * a).sum(1) > 0
    return Raster(face_buf, backface, depth1, points0, total)


def _grid_connectivity(faces: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor):
    """(H*W, 9) bool: entry ``(v, (di + 1) * 3 + (dj + 1))`` is True when vertex v and its
    grid neighbour at offset (di, dj) are corners of one kept triangle (the centre entry:
    v is used by a kept triangle). ``rows``/``cols``: (H*W,) grid position of each vertex."""
    conn = torch.zeros(len(rows), 9, dtype=torch.bool)
    fr, fc = rows[faces], cols[faces]
    for a in range(3):
        for b in range(3):
            k = (fr[:, b] - fr[:, a] + 1) * 3 + (fc[:, b] - fc[:, a] + 1)
            conn[faces[:, a], k] = True
    return conn


def warps(
    mesh: Mesh,
    raster: Raster,
    K1,
    T_0to1,
    *,
    near_clip: float = 1e-3,
    visibility_rel_tol: float = 0.01,
) -> dict[str, torch.Tensor]:
    """Exact dense warps in both directions and their validity.

    ``warp1``/``valid1``: each pixel centre of image 1 showing a front-facing surface
    (not a hole, so never an inpainted pixel) maps to that surface point's projection in
    image 0, which always lies inside image 0 (the mesh spans its pixel centres) and is
    visible there (the mesh is a height field of camera 0).

    ``warp0``/``valid0``: each pixel centre of image 0 with depth projects to ``p1`` in
    image 1. It is valid when ``p1`` is inside image 1 (``0 <= x < W1``, ``0 <= y < H1``),
    in front of camera 1, and the surface seen at each of the (up to 4) pixel centres
    around ``p1`` (the bilinear neighbourhood, clamped at the border) is the vertex's own
    surface, by the rasteriser's face-id buffer: the visible triangle there has a corner
    that is the vertex or is linked to it by a kept triangle (the surface is continuous
    from the vertex to that triangle, at most 2 px away in image 0), or else its plane
    passes through the vertex (camera-1 depth of the plane along the ray of ``p1`` within
    ``visibility_rel_tol`` of the vertex's depth; for minified views, whose neighbouring
    pixels are farther apart in image 0). Any hole or back face among those pixels makes
    it invalid, so valid0 never targets an inpainted pixel, and a point hidden by a
    nearer surface by less than a pixel is invalid too.

    Args:
        mesh, raster: from :func:`lift` and :func:`rasterize` with the same K1, T_0to1.
        K1, T_0to1: camera 1 intrinsics (3, 3) and the (4, 4) camera-0 -> camera-1 pose.
        near_clip: vertices at camera-1 z <= this are invalid.
        visibility_rel_tol: relative depth tolerance of the plane test (curved surfaces:
            the neighbouring triangle's plane is extrapolated by at most ~1.5 px).
    Returns:
        dict of torch tensors: ``warp0`` (H0, W0, 2) and ``warp1`` (H1, W1, 2) float64
        normalised coordinates in the other image (2.0 where invalid), ``valid0`` (H0, W0)
        and ``valid1`` (H1, W1) bool, ``uv0to1`` (H0, W0, 2) float64 pixel positions in
        image 1 of every vertex (unmasked), ``z0to1`` (H0, W0) their camera-1 depth.
    """
    K1 = _as_tensor(K1)
    T = _as_tensor(T_0to1)
    R, t = T[:3, :3], T[:3, 3]
    w0, h0 = mesh.size
    h1, w1 = raster.face.shape
    v1 = mesh.vertices @ R.T + t
    uv, z = project(v1, K1)
    faces = mesh.faces
    has = (mesh.depth.reshape(-1) > 0) & (z > near_clip)
    has &= (uv[:, 0] >= 0) & (uv[:, 0] < w1) & (uv[:, 1] >= 0) & (uv[:, 1] < h1)
    valid0 = has.clone()
    vid = torch.nonzero(has).squeeze(1)
    if len(vid):
        u, v = uv[vid, 0], uv[vid, 1]
        ray = torch.stack((u, v, torch.ones_like(u)), 1) @ torch.linalg.inv(K1).T
        zv = z[vid]
        # top-left of the bilinear neighbourhood; a landing point within 1e-6 px of a pixel
        # centre counts as on it (round-off of exact centre-to-centre motions)
        jx = torch.floor(pixel_to_index(u) + 1e-6).to(torch.int64)
        iy = torch.floor(pixel_to_index(v) + 1e-6).to(torch.int64)
        ok = torch.ones(len(vid), dtype=torch.bool)
        grid_r = torch.arange(h0 * w0) // w0
        grid_c = torch.arange(h0 * w0) - grid_r * w0
        conn = _grid_connectivity(faces, grid_r, grid_c)  # neighbours linked by a kept face
        vi, vj = grid_r[vid], grid_c[vid]
        for di in (0, 1):
            for dj in (0, 1):
                r = (iy + di).clamp(0, h1 - 1)
                c = (jx + dj).clamp(0, w1 - 1)
                f = raster.face[r, c]
                ok &= (f >= 0) & ~raster.backface[r, c]
                f = f.clamp(min=0)
                # same surface 1: a corner of the face is the vertex or linked to it by a
                # kept triangle (the surface is continuous between them)
                linked = torch.zeros(len(vid), dtype=torch.bool)
                for corner in faces[f].unbind(1):
                    ci, cj = grid_r[corner] - vi, grid_c[corner] - vj
                    near = (ci.abs() <= 1) & (cj.abs() <= 1)
                    k = ((ci + 1) * 3 + (cj + 1)).clamp(0, 8)
                    linked |= near & conn[vid, k]
                # same surface 2 (only where not linked): the face's plane, in camera-1
                # coordinates n . X = n . a, passes through the vertex
                rest = torch.nonzero(ok & ~linked).squeeze(1)
                if len(rest):
                    fv = faces[f[rest]]
                    a, b, cc = v1[fv[:, 0]], v1[fv[:, 1]], v1[fv[:, 2]]
                    n = torch.linalg.cross(b - a, cc - a)
                    rr = ray[rest]
                    den = (n * rr).sum(1)
                    stable = den.abs() > 1e-9 * n.norm(dim=1) * rr.norm(dim=1)
                    zp = (n * a).sum(1) / torch.where(stable, den, torch.ones_like(den))
                    zr = zv[rest]
                    ok[rest] = stable & ((zp - zr).abs() <= visibility_rel_tol * zr)
        valid0[vid] = ok
    valid0 = valid0.reshape(h0, w0)
    warp0 = pixel_to_normalized(uv, w1, h1).reshape(h0, w0, 2)
    warp0 = torch.where(valid0[..., None], warp0, torch.full_like(warp0, 2.0))
    valid1 = ~raster.hole
    uv1, _ = project(raster.points0, mesh.K)
    warp1 = pixel_to_normalized(uv1, w0, h0)
    warp1 = torch.where(valid1[..., None], warp1, torch.full_like(warp1, 2.0))
    return {
        "warp0": warp0,
        "valid0": valid0,
        "warp1": warp1,
        "valid1": valid1,
        "uv0to1": uv.reshape(h0, w0, 2),
        "z0to1": z.reshape(h0, w0),
    }


def sample_image(image: np.ndarray, warp_px: np.ndarray, mask: np.ndarray | None = None):
    """Bilinear lookup of ``image`` at COLMAP pixel positions (centres at i + 0.5).

    Args:
        image: (H, W, C) uint8 or float32 image.
        warp_px: (H', W', 2) float positions (x, y) in ``image``'s pixels.
        mask: optional (H', W') bool; where False the output is 0.
    Returns:
        (H', W', C) array of ``image``'s dtype (uint8 rounded).
    """
    import cv2

    src = np.asarray(image, dtype=np.float32)
    mx = np.ascontiguousarray(pixel_to_hloc(warp_px[..., 0]), dtype=np.float32)
    my = np.ascontiguousarray(pixel_to_hloc(warp_px[..., 1]), dtype=np.float32)
    out = cv2.remap(src, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if out.ndim == 2:
        out = out[..., None]
    if mask is not None:
        out = np.where(mask[..., None], out, 0.0)
    if np.asarray(image).dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(np.float32)


def render(mesh: Mesh, K1, T_0to1, size1: tuple[int, int] | None = None, **kwargs):
    """Render the textured mesh from camera 1.

    Args:
        mesh: from :func:`lift` with an image (its texture).
        K1, T_0to1, size1: camera 1, as in :func:`rasterize` (``kwargs`` go there too).
    Returns:
        ``(image, depth)``: (H1, W1, 3) image in the texture's dtype, 0 at holes; (H1, W1)
        float32 camera-1 z-depth, 0 at holes (no surface, disocclusion, back face).
    Raises:
        ValueError: the mesh has no texture; see :func:`rasterize` for the rest.
    """
    if mesh.texture is None:
        raise ValueError("render needs a textured mesh: pass the image to lift(image, depth, K)")
    raster = rasterize(mesh, K1, T_0to1, size1, **kwargs)
    hole = raster.hole.numpy()
    uv0, _ = project(raster.points0, mesh.K)
    image = sample_image(mesh.texture, uv0.numpy(), ~hole)
    depth = np.where(hole, 0.0, raster.depth.numpy()).astype(np.float32)
    return image, depth
