"""Novel-view synthesis: training pairs with exact dense correspondences from single photos.

L2M ("Lift to Match", ICCV 2025) trains its matcher on pairs made from single-view
images (paper Sec. 3.3; the authors' generator is Sharpiless/L2M ``get_data.py``): a
photo is lifted to a 3D mesh with a monocular depth map, rendered from a random nearby
camera, relit, and its holes are inpainted. This package does the same on the CPU, in
plain numpy/torch, with pure seeded functions:

- :func:`lift` ``(image, depth, K) -> Mesh``; :func:`render` ``(mesh, K1, T_0to1) ->
  (image, depth)``; :func:`rasterize` and :func:`warps` (exact warps and validity);
- :func:`synthesize_pair` ``(image, depth, conf, rng) -> SynthPair``;
- depth sources: :func:`disparity_to_depth`, :func:`load_depth_file`,
  :func:`synthetic_depth`, :class:`TransformersDepth` (optional ``transformers``);
- appearance: :func:`relight` / :func:`shade`, :func:`photometric_jitter`,
  :func:`inpaint` (OpenCV, or optional ``diffusers``);
- the generator of the on-disk format "l2m-synth" v1 (:mod:`l2m_plugin.formats.synth_pairs`):
  :func:`run_synthesis` (``l2m synth``); :func:`read_pair`, :func:`list_pairs` re-exported;
- configuration: :class:`SynthConfig`, :data:`SYNTH_PRESETS` ("l2m", "hard"), :func:`load_config`.

Conventions are those of :mod:`l2m_plugin.geometry`: COLMAP pixels (centre of pixel (row
i, column j) at (j + 0.5, i + 0.5)), ``T_0to1`` maps camera-0 to camera-1 coordinates,
z-depth with 0 = no surface, warps in normalised [-1, 1] coordinates of the other image
(``align_corners=False``).
"""

from l2m_plugin.formats.synth_pairs import FORMAT, VERSION, list_pairs, read_pair
from l2m_plugin.synthesis.appearance import inpaint, photometric_jitter, relight, shade
from l2m_plugin.synthesis.config import SYNTH_PRESETS, SynthConfig, load_config
from l2m_plugin.synthesis.depth import (
    TransformersDepth,
    disparity_to_depth,
    load_depth_file,
    normalize_depth,
    synthetic_depth,
)
from l2m_plugin.synthesis.errors import (
    BackendUnavailableError,
    ConfigMismatchError,
    DepthFileError,
    SynthesisError,
)
from l2m_plugin.synthesis.generate import RunSettings, run_synthesis
from l2m_plugin.synthesis.mesh import Mesh, Raster, lift, rasterize, render, warps
from l2m_plugin.synthesis.pair import SynthPair, sample_intrinsics, sample_motion, synthesize_pair

__all__ = [
    "FORMAT",
    "VERSION",
    "SYNTH_PRESETS",
    "SynthConfig",
    "load_config",
    "Mesh",
    "Raster",
    "lift",
    "rasterize",
    "render",
    "warps",
    "SynthPair",
    "sample_intrinsics",
    "sample_motion",
    "synthesize_pair",
    "disparity_to_depth",
    "normalize_depth",
    "load_depth_file",
    "synthetic_depth",
    "TransformersDepth",
    "relight",
    "shade",
    "photometric_jitter",
    "inpaint",
    "RunSettings",
    "run_synthesis",
    "read_pair",
    "list_pairs",
    "SynthesisError",
    "DepthFileError",
    "BackendUnavailableError",
    "ConfigMismatchError",
]
