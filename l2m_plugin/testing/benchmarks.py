"""Tiny data sets in the official benchmark layouts, for tests, CI and trying a harness.

Each writer renders a textured scene (:mod:`l2m_plugin.testing.scenes`'s ray caster)
*from the listed cameras*: the pair lists, intrinsics and poses are the real ones
(for MegaDepth-1500 and ScanNet-1500, read from the official files), the images,
depth maps and homographies are synthetic but exactly consistent with them, so an
oracle matcher must score (almost) perfectly and every convention error shows.

- :func:`write_megadepth_fixture`: ``scene_info/*.npz`` (the official pickled dicts,
  pair lists cut to the first ``pairs_per_scene`` usable pairs), JPEG images at the
  listed paths (size from the principal point: 2 cx x 2 cy), depth h5 files;
- :func:`write_scannet_fixture`: ``test.npz`` / ``intrinsics.npz`` (cut), RoMa's
  ``scans_test/`` layout, 640 x 480 JPEGs, uint16 millimetre depth PNGs;
- :func:`write_zeb_fixture`: ZEB sub-set folders and 38-token pair files, cameras
  taken from the ScanNet-1500 list;
- :func:`write_hpatches_fixture`: sequences with ``1.ppm`` ... ``6.ppm`` and
  ``H_1_k`` made by warping a rendered image with random homographies;
- :func:`write_colmap_fixture`: a COLMAP text model (cameras, images, points3D) whose
  observations are the exact projections of random 3D points (with the camera model's
  distortion), and noise images of the cameras' size: for ``l2m bench colmap``'s oracle.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from l2m_plugin.coords import hloc_to_pixel
from l2m_plugin.eval.megadepth import SCENES, read_scene_info
from l2m_plugin.eval.zeb import ZEB_SUBSETS
from l2m_plugin.testing.scenes import _box, _render, _texture

__all__ = [
    "render_pair",
    "write_megadepth_fixture",
    "write_scannet_fixture",
    "write_zeb_fixture",
    "write_hpatches_fixture",
    "write_colmap_fixture",
]

_LOCAL_DISTANCE = 5.0  # scene units between the cameras and the scene centre (as make_scene)


def _scene_quads(rng: np.random.Generator):
    """A room corner with two boxes around the origin, cameras at z ~ -5 (local units)."""
    quads = [
        (2, 4.0, (-9.0, 9.0), (-7.0, 4.0)),  # back wall
        (1, 2.5, (-9.0, 9.0), (-9.0, 4.0)),  # floor
        (0, -6.0, (-7.0, 2.5), (-9.0, 4.0)),  # left wall
        (0, 6.0, (-7.0, 2.5), (-9.0, 4.0)),  # right wall
        (1, -5.0, (-9.0, 9.0), (-9.0, 4.0)),  # ceiling
    ]
    quads += _box((-1.8, -0.2), (0.5, 2.5), (-0.5, 1.0)) + _box((0.6, 2.0), (-1.0, 2.5), (1.2, 2.4))
    return quads, [_texture(rng, 512) for _ in quads]


def render_pair(K0, T0, size0, K1, T1, size1, *, seed: int = 0, supersample: int = 1):
    """Render one synthetic scene seen by two real cameras.

    The scene (walls, floor, ceiling and two boxes) is placed around the point
    nearest to both optical axes and scaled to the cameras' distance from it.

    Args:
        K0, K1: (3, 3) intrinsics in COLMAP's pixel convention.
        T0, T1: (4, 4) world-to-camera poses (only their relative pose matters).
        size0, size1: (W, H).
    Returns:
        ``(image0, depth0, image1, depth1)``: (H, W, 3) uint8 and (H, W) float32
        z-depth in the poses' units (0 where nothing is hit).
    """
    T0, T1 = np.asarray(T0, np.float64), np.asarray(T1, np.float64)
    C = [-T[:3, :3].T @ T[:3, 3] for T in (T0, T1)]
    d = [T[2, :3] / np.linalg.norm(T[2, :3]) for T in (T0, T1)]
    baseline = max(np.linalg.norm(C[1] - C[0]), 1e-6)
    # closest points of the two optical axes
    a = np.array([[d[0] @ d[0], -d[0] @ d[1]], [d[0] @ d[1], -d[1] @ d[1]]])
    b = np.array([(C[1] - C[0]) @ d[0], (C[1] - C[0]) @ d[1]])
    try:
        s = np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        s = np.array([-1.0, -1.0])
    dist = float(np.clip(np.mean(s), 2.0 * baseline, 20.0 * baseline)) if (s > 0).all() else 5.0 * baseline
    target = (C[0] + dist * d[0] + C[1] + dist * d[1]) / 2
    z = d[0] + d[1]
    z /= np.linalg.norm(z)
    y_down = T0[1, :3] + T1[1, :3]
    x = np.cross(y_down, z)
    x /= np.linalg.norm(x)
    M = np.stack((x, np.cross(z, x), z))  # world -> local rotation
    scale = _LOCAL_DISTANCE / dist
    rng = np.random.default_rng(seed)
    quads, textures = _scene_quads(rng)
    out = []
    for K, T, size in ((K0, T0, size0), (K1, T1, size1)):
        R = T[:3, :3] @ M.T
        c_local = scale * M @ (-T[:3, :3].T @ T[:3, 3] - target)
        T_local = np.eye(4)
        T_local[:3, :3] = R
        T_local[:3, 3] = -R @ c_local
        image, depth = _render(quads, textures, np.asarray(K, np.float64), T_local, tuple(size), supersample)
        out += [image, depth / scale]
    return tuple(out)


def _save_jpeg(image: np.ndarray, path: Path, fmt: str = "JPEG") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def _usable(depth0: np.ndarray, depth1: np.ndarray, min_fraction: float = 0.2) -> bool:
    return float((depth0 > 0).mean()) > min_fraction and float((depth1 > 0).mean()) > min_fraction


def write_megadepth_fixture(root: str | Path, index_dir: str | Path, pairs_per_scene: int = 1,
                            scenes=SCENES, *, seed: int = 0) -> Path:  # fmt: skip
    """A MegaDepth-1500 fixture in the official layout under ``root``; returns ``root``.

    Args:
        index_dir: the official scene-info folder (``../shared/data/megadepth1500/scene_info``).
        pairs_per_scene: pairs kept per scene (the first ones of the list whose
            render covers both images).
    """
    import h5py

    root = Path(root)
    (root / "scene_info").mkdir(parents=True, exist_ok=True)
    for si, scene in enumerate(scenes):
        info = read_scene_info(Path(index_dir) / f"{scene}.npz")
        kept = []
        for pi, pair in enumerate(info["pair_infos"]):
            if len(kept) == pairs_per_scene:
                break
            i, j = (int(v) for v in pair[0])
            Ks = [np.asarray(info["intrinsics"][k], np.float64) for k in (i, j)]
            sizes = [(int(round(2 * K[0, 2])), int(round(2 * K[1, 2]))) for K in Ks]
            im0, d0, im1, d1 = render_pair(
                Ks[0], info["poses"][i], sizes[0], Ks[1], info["poses"][j], sizes[1], seed=seed + 100 * si + pi
            )  # fmt: skip
            if not _usable(d0, d1):
                continue
            for k, im, dep in ((i, im0, d0), (j, im1, d1)):
                _save_jpeg(im, root / str(info["image_paths"][k]))
                dp = root / str(info["depth_paths"][k])
                dp.parent.mkdir(parents=True, exist_ok=True)
                with h5py.File(dp, "w") as f:
                    f.create_dataset("depth", data=dep.astype(np.float32))
            kept.append(pair)
        if len(kept) < pairs_per_scene:
            raise RuntimeError(f"only {len(kept)} usable pairs rendered for {scene}")
        cut = dict(info)
        cut["pair_infos"] = kept
        with open(root / "scene_info" / f"{scene}.npz", "wb") as f:
            pickle.dump(cut, f)
    return root


def _scannet_cameras(index_dir: str | Path):
    """The official ScanNet-1500 list as a function: pair index -> (scene name, frame0, frame1,
    K (COLMAP convention: the listed K has pixel centres on integers, so cx, cy + 0.5), T_0to1),
    plus the raw ``name`` / ``rel_pose`` arrays and the per-scene intrinsics."""
    with np.load(Path(index_dir) / "test.npz") as t:
        names, rel = t["name"], t["rel_pose"]
    with np.load(Path(index_dir) / "intrinsics.npz") as i:
        intr = {k: i[k] for k in i.files}

    def camera(idx: int):
        scene, sub, f0, f1 = (int(v) for v in names[idx])
        sname = f"scene{scene:04d}_{sub:02d}"
        K = np.asarray(intr[sname], np.float64).copy()
        K[:2, 2] = hloc_to_pixel(K[:2, 2])
        T = np.eye(4)
        T[:3] = rel[idx].reshape(3, 4)
        return sname, f0, f1, K, T

    return camera, names, rel, intr


def write_scannet_fixture(root: str | Path, index_dir: str | Path, num_pairs: int = 4, *, seed: int = 0,
                          stride: int = 15) -> Path:  # fmt: skip
    """A ScanNet-1500 fixture (RoMa's ``scans_test/`` layout) with pairs 0, stride, 2 stride, ...

    ``test.npz`` and ``intrinsics.npz`` are the official arrays cut to those pairs;
    intrinsics put pixel centres on integers, so the renders use ``cx + 0.5``.
    """
    from PIL import Image

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    camera, names, rel, intr = _scannet_cameras(index_dir)
    keep, used = [], {}
    idx = 0
    while len(keep) < num_pairs and idx < len(names):
        sname, f0, f1, K, T1 = camera(idx)
        im0, d0, im1, d1 = render_pair(K, np.eye(4), (640, 480), K, T1, (640, 480), seed=seed + idx)
        if _usable(d0, d1):
            for f, im, dep in ((f0, im0, d0), (f1, im1, d1)):
                _save_jpeg(im, root / "scans_test" / sname / "color" / f"{f}.jpg")
                dp = root / "scans_test" / sname / "depth" / f"{f}.png"
                dp.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.clip(dep * 1000.0, 0, 65535).round().astype(np.uint16)).save(dp)
            keep.append(idx)
            used[sname] = intr[sname]
        idx += stride
    np.savez(root / "test.npz", name=names[keep], rel_pose=rel[keep])
    np.savez(root / "intrinsics.npz", **used)
    return root


def write_zeb_fixture(root: str | Path, scannet_index_dir: str | Path, subsets=("gl3d", "kitti"),
                      pairs_per_subset: int = 2, *, seed: int = 0) -> Path:  # fmt: skip
    """A ZEB fixture in GIM's layout: ``root/<subset>/<scene><sep><k>.txt`` (one 38-token pair
    line each: name0 name1 covisible0 covisible1 K0 (9) K1 (9) T_0to1 (16)) and the images
    ``root/<subset>/<scene><sep><name>.png`` named by :mod:`l2m_plugin.eval.zeb`'s rules.
    Cameras come from the ScanNet-1500 list (640 x 480; K shifted to COLMAP's convention)."""

    root = Path(root)
    camera = _scannet_cameras(scannet_index_dir)[0]
    idx = 0
    for subset in subsets:
        sep, strip, _ = ZEB_SUBSETS[subset]
        made = 0
        while made < pairs_per_subset:
            _, _, _, K, T = camera(idx)
            im0, d0, im1, d1 = render_pair(K, np.eye(4), (640, 480), K, T, (640, 480), seed=seed + idx)
            idx += 37
            if not _usable(d0, d1):
                continue
            scene_id = f"scene{made}"
            n0, n1 = f"{2 * made:06d}.jpg", f"{2 * made + 1:06d}.jpg"
            for n, im in ((n0, im0), (n1, im1)):
                _save_jpeg(im, root / subset / f"{scene_id}{sep}{Path(n).stem if strip else n}.png", fmt="PNG")
            tok = [n0, n1, "0.5", "0.5"] + [f"{v:.10g}" for v in (*K.ravel(), *K.ravel(), *T.ravel())]
            (root / subset / f"{scene_id}{sep}{made:04d}.txt").write_text(" ".join(tok) + "\n")
            made += 1
    return root


def _random_homography(rng: np.random.Generator, w: int, h: int, strength: float) -> np.ndarray:
    src = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    dst = src + rng.uniform(-strength, strength, src.shape) * np.array([w, h])
    import cv2

    return cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32)).astype(np.float64)


def write_hpatches_fixture(root: str | Path, sequences=("i_fixture", "v_fixture", "v_talent"),
                           size: tuple[int, int] = (480, 360), *, seed: int = 0) -> Path:  # fmt: skip
    """HPatches-layout sequences under ``root/hpatches-sequences-release``.

    Image 1 is a rendered view; image k = image 1 warped by a random homography
    ``H_1_k`` (HPatches convention: pixel centres on integers), with a brightness
    change for ``i_*`` sequences. ``v_talent`` is on the official skip list, so a
    loader must leave it out.
    """
    import cv2

    rng = np.random.default_rng(seed)
    base = Path(root) / "hpatches-sequences-release"
    w, h = size
    K = np.array([[0.9 * w, 0, w / 2], [0, 0.9 * w, h / 2], [0, 0, 1]], np.float64)
    for si, seq in enumerate(sequences):
        T = np.eye(4)
        T[:3, 3] = [0.2 * si, 0.0, 0.0]
        im1, _, _, _ = render_pair(K, np.eye(4), size, K, T, size, seed=seed + si)
        _save_jpeg(im1, base / seq / "1.ppm", fmt="PPM")
        for k in range(2, 7):
            strength = 0.04 * (k - 1) if seq.startswith("v_") else 0.02
            H = _random_homography(rng, w, h, strength)
            imk = cv2.warpPerspective(im1, H, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            if seq.startswith("i_"):
                imk = np.clip(imk.astype(np.float32) * (0.6 + 0.15 * k), 0, 255).astype(np.uint8)
            _save_jpeg(imk, base / seq / f"{k}.ppm", fmt="PPM")
            np.savetxt(base / seq / f"H_1_{k}", H)
    return Path(root)


def write_colmap_fixture(root: str | Path, num_images: int = 4, num_points: int = 200, size: tuple[int, int] = (640, 480),
                         *, camera_model: str = "SIMPLE_RADIAL", seed: int = 0) -> Path:  # fmt: skip
    """A COLMAP text model with exact observations: ``root/images/NN.png``, ``root/sparse/*.txt``.

    Cameras (one shared camera of ``camera_model``: ``SIMPLE_RADIAL`` with k = 0.05, or
    ``SIMPLE_PINHOLE``; ``size`` (W, H), focal 0.7 W) stand on an arc around a cloud of
    ``num_points`` random points near the origin (as deep as wide: small, shallow scenes
    seen through narrow, low-resolution cameras let a wrong essential matrix fit every
    match within 0.5 px) and look at it; every observation is the point's exact
    projection through the camera model (COLMAP pixels), so any pose error comes from
    the estimator alone. The images are smoothed noise of the camera's size, as JPEG
    (the matchers need them for their size; they carry no geometry).

    Returns:
        ``root``.
    """
    import cv2
    import pycolmap

    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "sparse").mkdir(parents=True, exist_ok=True)
    w, h = size
    f = 0.7 * w
    params = {"SIMPLE_RADIAL": [f, w / 2, h / 2, 0.05], "SIMPLE_PINHOLE": [f, w / 2, h / 2]}[camera_model]
    cam = pycolmap.Camera(model=camera_model, width=w, height=h, params=params)
    X = rng.uniform(-1, 1, (num_points, 3)) * [2.0, 1.5, 2.0]
    images, tracks = [], {i: [] for i in range(num_points)}
    for k in range(num_images):
        a = np.deg2rad(-15 + 30 * k / max(1, num_images - 1))
        centre = np.array([5 * np.sin(a), 0.3 * k - 0.4, -5 * np.cos(a)])
        z = -centre / np.linalg.norm(centre)
        x = np.cross([0.0, 1.0, 0.0], z)
        x /= np.linalg.norm(x)
        R = np.stack((x, np.cross(z, x), z))  # rows: camera axes in world coordinates
        t = -R @ centre
        uv = cam.img_from_cam(X @ R.T + t)
        pts = []
        for i, (u, v) in enumerate(uv):
            if 0 <= u < w and 0 <= v < h:
                tracks[i].append((k + 1, len(pts)))
                pts.append((u, v, i + 1))
        qx, qy, qz, qw = pycolmap.Rotation3d(R).quat
        images.append((k + 1, (qw, qx, qy, qz), t, f"{k:02d}.jpg", pts))
        noise = cv2.GaussianBlur(rng.uniform(0, 255, (h, w, 3)).astype(np.float32), (0, 0), 3)
        noise = (noise - noise.mean()) * 4 + 128
        cv2.imwrite(str(root / "images" / f"{k:02d}.jpg"), np.clip(noise, 0, 255).astype(np.uint8))
    (root / "sparse" / "cameras.txt").write_text(f"1 {camera_model} {w} {h} " + " ".join(f"{v:.17g}" for v in params) + "\n")
    lines = []
    for iid, q, t, name, pts in images:
        lines.append(f"{iid} " + " ".join(f"{v:.17g}" for v in (*q, *t)) + f" 1 {name}")
        lines.append(" ".join(f"{u:.17g} {v:.17g} {pid}" for u, v, pid in pts))
    (root / "sparse" / "images.txt").write_text("\n".join(lines) + "\n")
    lines = []
    for i, tr in tracks.items():
        if len(tr) >= 2:
            lines.append(f"{i + 1} " + " ".join(f"{v:.17g}" for v in X[i]) + " 128 128 128 0 "
                         + " ".join(f"{iid} {idx}" for iid, idx in tr))  # fmt: skip
    (root / "sparse" / "points3D.txt").write_text("\n".join(lines) + "\n")
    return root
