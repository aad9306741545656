"""Reading a COLMAP model (a ``pycolmap.Reconstruction``): camera poses by image name."""

from __future__ import annotations

import numpy as np

__all__ = ["poses_by_name"]


def _cam_from_world(image) -> tuple[np.ndarray, np.ndarray]:
    pose = image.cam_from_world() if callable(image.cam_from_world) else image.cam_from_world
    return np.asarray(pose.rotation.matrix()), np.asarray(pose.translation)


def poses_by_name(rec) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (R (3, 3), t (3,))}`` world-to-camera (``cam_from_world``) of the registered
    images of a ``pycolmap.Reconstruction`` (pycolmap 0.6 to 4.x)."""
    return {rec.images[i].name: _cam_from_world(rec.images[i]) for i in rec.reg_image_ids()}
