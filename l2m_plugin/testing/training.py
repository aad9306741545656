"""Tiny training data sets for tests and trying the trainer: exact synthetic pairs in the
stage-2 generator's format (:class:`~l2m_plugin.training.data.SynthPairs`) and in the
MegaDepth training layout (:class:`~l2m_plugin.training.data.MegaDepthPairs`).

Views come from :func:`l2m_plugin.testing.scenes.make_scene` (exact ray casting, z-depth and
poses in the project's conventions); warps from :func:`l2m_plugin.geometry.warp_from_depth`
with the other view's depth as the occlusion test, so the ground truth is exact.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import torch

from l2m_plugin.geometry import warp_from_depth
from l2m_plugin.testing.scenes import make_scene
from l2m_plugin.training.data import SYNTH_FORMAT, SYNTH_VERSION

__all__ = ["write_synth_fixture", "write_megadepth_train_fixture"]


def _views(num_views: int, size: tuple[int, int], seed: int):

    return make_scene(num_views=num_views, size=size, seed=seed).views


def _warps(v0, v1):

    T = torch.from_numpy(v1.T_w2c @ np.linalg.inv(v0.T_w2c))
    d0, d1 = torch.from_numpy(v0.depth).double(), torch.from_numpy(v1.depth).double()
    K0, K1 = torch.from_numpy(v0.K), torch.from_numpy(v1.K)
    w0, m0 = warp_from_depth(d0, K0, K1, T, depth1=d1)
    w1, m1 = warp_from_depth(d1, K1, K0, torch.linalg.inv(T), depth1=d0)
    return T.numpy(), (w0[0].float().numpy(), m0[0].numpy()), (w1[0].float().numpy(), m1[0].numpy())


def write_synth_fixture(root, num_pairs: int = 3, size: tuple[int, int] = (96, 64), seed: int = 0) -> Path:
    """Write ``num_pairs`` exact synthetic pairs in the ``l2m-synth`` version-1 format under ``root``.

    Pairs are consecutive views of one :func:`~l2m_plugin.testing.scenes.make_scene` scene
    (about 10 degrees apart); invalid warp entries are set to 2.0, as the generator does.

    Args:
        root: output folder (created).
        num_pairs: number of pairs (>= 1).
        size: (W, H) of the images in pixels.
        seed: scene seed.
    Returns:
        ``root`` as a Path.
    """
    from PIL import Image

    root = Path(root)
    views = _views(num_pairs + 1, size, seed)
    lines = []
    for k in range(num_pairs):
        v0, v1 = views[k], views[k + 1]
        T, (w0, m0), (w1, m1) = _warps(v0, v1)
        pid = f"scene{seed:03d}_{k:03d}"
        d = root / "pairs" / pid
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(v0.image).save(d / "image0.png")
        Image.fromarray(v1.image).save(d / "image1.png")
        w0 = np.where(m0[..., None], w0, 2.0).astype(np.float32)
        w1 = np.where(m1[..., None], w1, 2.0).astype(np.float32)
        np.savez(
            d / "geometry.npz", K0=v0.K, K1=v1.K, T_0to1=T, depth0=v0.depth, depth1=v1.depth,
            valid0=m0, valid1=m1, warp0=w0, warp1=w1,
        )  # fmt: skip
        lines.append(json.dumps({"id": pid, "source": "l2m_plugin.testing.scenes.make_scene", "size": list(size),
                                 "depth_source": "ray-cast"}))  # fmt: skip
    (root / "synth_conf.yaml").write_text(
        f"format: {SYNTH_FORMAT}\nversion: {SYNTH_VERSION}\n"
        f"generator: l2m_plugin.testing.training.write_synth_fixture\nseed: {seed}\n"
    )
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return root


def write_megadepth_train_fixture(root, num_pairs: int = 2, size: tuple[int, int] = (96, 64), seed: int = 0) -> Path:
    """A MegaDepth-layout training set from one synthetic scene: JPEG images, depth h5 files
    and two scene-info files listing the same pairs, one in RoMa's ``prep_scene_info``
    layout (``scene_info/0000.npy``: ``pairs``, ``overlaps``) and one in LoFTR's
    (``scene_info/0001.npz``: ``pair_infos``).

    Args:
        root: output folder; images under ``Undistorted_SfM/0000/images/``, depth under
            ``phoenix/S6/zl548/MegaDepth_v1/0000/dense0/depths/``.
        num_pairs: consecutive-view pairs listed.
        size: (W, H) of the images.
        seed: scene seed.
    Returns:
        ``root`` as a Path.
    """
    import h5py
    from PIL import Image

    root = Path(root)
    views = _views(num_pairs + 1, size, seed)
    image_paths, depth_paths = [], []
    for k, v in enumerate(views):
        ip = f"Undistorted_SfM/0000/images/{k:04d}.jpg"
        dp = f"phoenix/S6/zl548/MegaDepth_v1/0000/dense0/depths/{k:04d}.h5"
        (root / ip).parent.mkdir(parents=True, exist_ok=True)
        (root / dp).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(v.image).save(root / ip, "JPEG", quality=95)
        with h5py.File(root / dp, "w") as f:
            f.create_dataset("depth", data=v.depth.astype(np.float32))
        image_paths.append(ip)
        depth_paths.append(dp)
    pairs = np.array([(k, k + 1) for k in range(num_pairs)])
    overlaps = np.full(num_pairs, 0.5)
    common = {
        "image_paths": np.array(image_paths, dtype=object),
        "depth_paths": np.array(depth_paths, dtype=object),
        "intrinsics": np.stack([v.K for v in views]),
        "poses": np.stack([v.T_w2c for v in views]),
    }
    (root / "scene_info").mkdir(parents=True, exist_ok=True)
    np.save(root / "scene_info" / "0000.npy", {**common, "pairs": pairs, "overlaps": overlaps}, allow_pickle=True)
    with open(root / "scene_info" / "0001.npz", "wb") as f:
        pickle.dump({**common, "pair_infos": [((int(i), int(j)), 0.5, None) for i, j in pairs]}, f)
    return root
