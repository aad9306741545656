"""An oracle dense matcher: exact warps from ground-truth depth and poses.

:class:`OracleMatcher` has the interface of :class:`l2m_plugin.models.matcher.L2M`
(``forward`` returning ``warp0``/``certainty0``/``warp1``/``certainty1``, ``sample``,
``device``), so it can be dropped into every code path that runs a dense matcher:
the hloc and kornia adapters and ``l2m reconstruct``. Its matches are exact up to
float precision, so any coordinate-convention error in those paths shows up as
epipolar or pose error (issue "conventions proven by geometry").

The oracle receives only image tensors, as a network would; it recognises which
view each input is by comparing a small thumbnail with the thumbnails of its views,
so it keeps working after a library resizes the images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from l2m_plugin.geometry import warp_from_depth
from l2m_plugin.sampling import sample_matches

__all__ = ["OracleMatcher"]

_THUMB = (24, 32)


def _thumbnail(x: torch.Tensor) -> torch.Tensor:
    """(3, H, W) float in [0, 1] -> (3 * 24 * 32,) thumbnail."""
    return F.interpolate(x[None].float(), size=_THUMB, mode="area")[0].reshape(-1)


class OracleMatcher(nn.Module):
    """Dense matcher that returns the ground-truth warp between known views.

    Args:
        views: objects with ``image`` (H, W, 3) uint8, ``depth`` (H, W) z-depth,
            ``K`` (3, 3) COLMAP-convention intrinsics and ``T_w2c`` (4, 4), e.g.
            :class:`l2m_plugin.testing.scenes.View` (or any data set with depth and poses).
        output_res: (H, W) of the warp grid; default: each view's own resolution
            (exact depth). At another resolution, depth is taken from the nearest
            pixel: matches stay exactly on epipolar lines, positions along them move
            by the depth change within one pixel.
        symmetric: also return ``warp1``/``certainty1``.
        sample_thresh: as ``MatcherConfig.sample_thresh`` (certainty is 0 or 1 here).
        max_thumbnail_error: mean absolute thumbnail difference above which an input
            is not recognised (ValueError).
    """

    def __init__(
        self,
        views: Sequence,
        output_res: tuple[int, int] | None = None,
        *,
        symmetric: bool = True,
        sample_thresh: float = 0.05,
        max_thumbnail_error: float = 0.03,
    ):
        super().__init__()
        if len(views) < 2:
            raise ValueError(f"the oracle needs at least 2 views, got {len(views)}")
        self.views = list(views)
        self.output_res = output_res
        self.symmetric = symmetric
        self.sample_thresh = sample_thresh
        self.max_thumbnail_error = max_thumbnail_error
        self.weights_name = "oracle"
        thumbs = [
            _thumbnail(torch.from_numpy(v.image).permute(2, 0, 1).float() / 255) for v in self.views
        ]
        self.register_buffer("_thumbs", torch.stack(thumbs), persistent=False)
        self.eval()

    @property
    def device(self) -> torch.device:
        return self._thumbs.device

    def identify(self, image: torch.Tensor) -> int:
        """Index of the view shown by ``image`` (3, H, W) float in [0, 1]; ValueError if none."""
        err = (self._thumbs.to(image.device) - _thumbnail(image)).abs().mean(dim=1)
        best = int(err.argmin())
        if float(err[best]) > self.max_thumbnail_error:
            raise ValueError(
                f"input image is none of the oracle's {len(self.views)} views "
                f"(closest thumbnail error {float(err[best]):.3f} > {self.max_thumbnail_error})"
            )
        return best

    def _warp(self, i: int, j: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        v0, v1 = self.views[i], self.views[j]
        depth0 = torch.from_numpy(v0.depth).float()
        K0 = torch.as_tensor(v0.K, dtype=torch.float64).clone()
        h, w = depth0.shape
        if self.output_res is not None and tuple(self.output_res) != (h, w):
            ho, wo = self.output_res
            depth0 = F.interpolate(depth0[None, None], size=(ho, wo), mode="nearest")[0, 0]
            K0[0] *= wo / w
            K0[1] *= ho / h
        T = torch.as_tensor(v1.T_w2c, dtype=torch.float64) @ torch.linalg.inv(
            torch.as_tensor(v0.T_w2c, dtype=torch.float64)
        )
        warp, valid = warp_from_depth(
            depth0.double(), K0, torch.as_tensor(v1.K, dtype=torch.float64), T,
            depth1=torch.from_numpy(v1.depth).double()[None],
        )  # fmt: skip
        return warp[0].float().clamp(-1, 1).to(device), valid[0].float().to(device)

    @torch.inference_mode()
    def forward(self, data: dict) -> dict:
        """Ground-truth warps for a batch of pairs; same inputs and outputs as ``L2M.forward``.

        Args:
            data: ``image0``, ``image1``: (B, 3, H, W) float in [0, 1], each one of
                the views (possibly resized).
        Returns:
            ``warp0`` (B, Ho, Wo, 2) normalised coordinates in image 1, ``certainty0``
            (B, Ho, Wo) 1 where the surface point is visible in image 1 else 0,
            ``warp1``/``certainty1`` (symmetric), ``size0``/``size1`` (W, H) of the inputs.
            Inputs within a batch must share the output resolution (they do when
            ``output_res`` is set or all views have one size).
        Raises:
            ValueError: an input is none of the views.
        """
        x0, x1 = data["image0"], data["image1"]
        out: dict = {"warp0": [], "certainty0": [], "warp1": [], "certainty1": []}
        for b in range(x0.shape[0]):
            i, j = self.identify(x0[b]), self.identify(x1[b])
            w, c = self._warp(i, j, x0.device)
            out["warp0"].append(w)
            out["certainty0"].append(c)
            if self.symmetric:
                w, c = self._warp(j, i, x0.device)
                out["warp1"].append(w)
                out["certainty1"].append(c)
        result = {k: torch.stack(v) for k, v in out.items() if v}
        result["size0"] = (int(x0.shape[-1]), int(x0.shape[-2]))
        result["size1"] = (int(x1.shape[-1]), int(x1.shape[-2]))
        return result

    def sample(
        self, out: dict, num: int = 5000, *, generator: torch.Generator | None = None, **kwargs
    ) -> dict:
        """Sparse matches, as :meth:`l2m_plugin.models.matcher.L2M.sample` (COLMAP pixels of the inputs)."""
        return sample_matches(out, num, self.sample_thresh, generator=generator, **kwargs)
