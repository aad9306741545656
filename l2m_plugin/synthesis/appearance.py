"""Appearance change between the two views: relighting, photometric jitter, hole filling.

Relighting replaces the authors' Blender pass (Sharpiless/L2M ``relight.py``: a diffuse
mesh lit by 2-5 random point lights plus ambient light) by the same model evaluated in
numpy: normals from the depth map, Lambertian shading by point lights with inverse-square
fall-off, a Blinn-Phong highlight that depends on the viewing camera, and no shadows.
The shading is a property of the surface, so it is computed for image 0's pixels in
camera-0 coordinates and carried to image 1 through the exact warp: the two images of a
pair differ by their own lights, not by inconsistent geometry.

Hole filling: OpenCV inpainting (default) or the authors' choice, Stable Diffusion
inpainting through ``diffusers`` (optional; imported only when selected).
"""

from __future__ import annotations

import functools
import logging

import cv2
import numpy as np

from l2m_plugin.coords import pixel_mgrid
from l2m_plugin.synthesis.config import InpaintConf
from l2m_plugin.synthesis.errors import BackendUnavailableError

__all__ = [
    "normals_from_depth",
    "backproject",
    "sample_lights",
    "shade",
    "relight",
    "photometric_jitter",
    "inpaint",
    "DiffusersInpainter",
]

logger = logging.getLogger(__name__)


def backproject(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(H, W) z-depth and (3, 3) K -> (H, W, 3) float64 camera points of the pixel centres
    (COLMAP pixels, centres at j + 0.5, i + 0.5); 0 where depth is 0."""
    h, w = depth.shape
    ys, xs = pixel_mgrid(h, w)
    pix = np.stack((xs, ys, np.ones_like(xs)), -1)
    return (pix @ np.linalg.inv(K).T) * np.asarray(depth, np.float64)[..., None]


def normals_from_depth(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Unit surface normals of a depth map, pointing towards the camera.

    Args:
        depth: (H, W) z-depth (0 = none).
        K: (3, 3) intrinsics (COLMAP pixels).
    Returns:
        (H, W, 3) float32 unit normals in camera coordinates with ``n . X < 0`` (facing
        the camera), from one-sided differences of the back-projected points (per pixel
        the side with the smaller depth change, so a depth edge does not bend the normals
        of either surface); (0, 0, -1) where depth or a neighbour's depth is missing.
    """
    pts = backproject(depth, K)

    def one_sided(axis):
        d = np.diff(pts, axis=axis)
        pad = [(0, 0)] * 3
        pad[axis] = (1, 0)
        back = np.pad(d, pad, mode="edge")
        pad[axis] = (0, 1)
        fwd = np.pad(d, pad, mode="edge")
        use_fwd = np.abs(fwd[..., 2]) < np.abs(back[..., 2])
        return np.where(use_fwd[..., None], fwd, back)

    dx, dy = one_sided(1), one_sided(0)
    n = np.cross(dx, dy)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    valid = (depth > 0) & (norm[..., 0] > 1e-12)
    valid &= cv2.erode((depth > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    n = np.where(valid[..., None], n / np.maximum(norm, 1e-12), np.array([0.0, 0.0, -1.0]))
    flip = (n * pts).sum(-1) > 0
    n[flip] *= -1
    return n.astype(np.float32)


def sample_lights(conf, rng: np.random.Generator) -> dict:
    """Draw a light rig.

    Args:
        conf: :class:`~l2m_plugin.synthesis.config.RelightConf`.
        rng: numpy Generator.
    Returns:
        dict with ``positions`` (L, 3) float64 in camera-0 coordinates (x right, y down,
        z forward, scene units), ``colors`` (L, 3) in [0.5, 1] normalised to max 1,
        ``intensity`` (L,), ``ambient``, ``strength``, ``specular``, ``shininess`` floats.
    """
    n = int(rng.integers(conf.num_lights[0], conf.num_lights[1] + 1))
    pos = np.stack(
        [
            rng.uniform(*conf.light_x, n),
            rng.uniform(*conf.light_y, n),
            rng.uniform(*conf.light_z, n),
        ],
        axis=1,
    ).reshape(n, 3)
    col = np.where(
        rng.random((n, 3)) < conf.colored_probability, rng.uniform(0.5, 1.0, (n, 3)), 0.5
    )
    col = col / col.max(axis=1, keepdims=True) if n else col
    return {
        "positions": pos,
        "colors": col,
        "intensity": rng.uniform(*conf.intensity, n),
        "ambient": float(rng.uniform(*conf.ambient)),
        "strength": float(rng.uniform(*conf.strength)),
        "specular": float(rng.uniform(*conf.specular)),
        "shininess": float(rng.uniform(*conf.shininess)),
    }


def shade(points: np.ndarray, normals: np.ndarray, lights: dict, eye=(0.0, 0.0, 0.0)):
    """Diffuse and specular light arriving at surface points.

    Args:
        points: (H, W, 3) surface points in camera-0 coordinates.
        normals: (H, W, 3) unit normals (facing camera 0).
        lights: from :func:`sample_lights`.
        eye: (3,) centre of the viewing camera in camera-0 coordinates (for highlights).
    Returns:
        ``(diffuse, specular)``: (H, W, 3) float32 each; diffuse includes the ambient term.
    """
    h, w = points.shape[:2]
    pts = np.asarray(points, np.float32).reshape(-1, 3)
    nrm = np.asarray(normals, np.float32).reshape(-1, 3)
    diffuse = np.full((h * w, 3), lights["ambient"], np.float32)
    specular = np.zeros((h * w, 3), np.float32)
    view = np.asarray(eye, np.float32) - pts
    view /= np.maximum(np.sqrt(np.einsum("ij,ij->i", view, view)), 1e-9)[:, None]
    for p, c, e in zip(lights["positions"], lights["colors"], lights["intensity"], strict=True):
        to_l = np.asarray(p, np.float32) - pts
        d2 = np.maximum(np.einsum("ij,ij->i", to_l, to_l), 0.25)  # no closer than 0.5
        ldir = to_l / np.sqrt(d2)[:, None]
        ndotl = np.clip(np.einsum("ij,ij->i", nrm, ldir), 0.0, None)
        fall = np.float32(e) / d2
        diffuse += np.outer(ndotl * fall, c).astype(np.float32)
        half = ldir + view
        half /= np.maximum(np.sqrt(np.einsum("ij,ij->i", half, half)), 1e-9)[:, None]
        nh = np.clip(np.einsum("ij,ij->i", nrm, half), 0.0, None)
        spec = np.where(ndotl > 0, nh ** np.float32(lights["shininess"]), 0.0) * fall
        specular += np.outer(spec, c).astype(np.float32)
    diffuse, specular = diffuse.reshape(h, w, 3), specular.reshape(h, w, 3)
    return diffuse.astype(np.float32), specular.astype(np.float32)


def relight(image: np.ndarray, diffuse: np.ndarray, specular: np.ndarray, lights: dict, mask=None):
    """Apply shading to a photo.

    The photo is taken as albedo under its original light; the relit colour is
    ``image * min(D / mean(D), 2.5) + 255 * k * min(S, 1)`` (``D`` the diffuse shading,
    normalised to mean 1 over ``mask`` so the exposure stays put; ``S`` the highlight,
    ``k = lights["specular"]``), blended with the photo by ``lights["strength"]``.

    Args:
        image: (H, W, 3) uint8 (or float in [0, 255]).
        diffuse, specular: (H, W, 3) from :func:`shade` (sampled into this image's grid).
        lights: from :func:`sample_lights`.
        mask: optional (H, W) bool: pixels with a surface (others keep their colour).
    Returns:
        (H, W, 3) float32 in [0, 255].
    """
    img = np.asarray(image, np.float32)
    m = np.ones(img.shape[:2], bool) if mask is None else np.asarray(mask, bool)
    if not m.any():
        return img.copy()
    norm = float(diffuse[m].mean()) if m.any() else 1.0
    gain = np.clip(diffuse / max(norm, 1e-6), 0.0, 2.5)  # no blown-out spots next to a lamp
    lit = img * gain + 255.0 * lights["specular"] * np.clip(specular, 0.0, 1.0)
    s = lights["strength"]
    out = np.where(m[..., None], (1 - s) * img + s * lit, img)
    return np.clip(out, 0, 255).astype(np.float32)


def photometric_jitter(image: np.ndarray, conf, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast, saturation, hue, gamma, blur and noise.

    Args:
        image: (H, W, 3) uint8 RGB (or float32 in [0, 255]).
        conf: :class:`~l2m_plugin.synthesis.config.JitterConf`.
        rng: numpy Generator.
    Returns:
        (H, W, 3) uint8, same shape. With probability ``1 - conf.probability`` the input
        unchanged (as uint8).
    """
    img = np.asarray(image, np.float32) / 255.0
    if rng.random() >= conf.probability:
        return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    b = rng.uniform(*conf.brightness)
    c = rng.uniform(*conf.contrast)
    s = rng.uniform(*conf.saturation)
    hue = rng.uniform(*conf.hue_deg)
    g = float(np.exp(rng.uniform(np.log(conf.gamma[0]), np.log(conf.gamma[1]))))
    img = img * b
    grey = img.mean()
    img = (img - grey) * c + grey
    img = np.clip(img, 0, 1)
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)  # float: H in degrees [0, 360)
    hsv[..., 0] = (hsv[..., 0] + hue) % 360.0
    hsv[..., 1] = np.clip(hsv[..., 1] * s, 0, 1)
    img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    img = np.clip(img, 0, 1) ** g
    if rng.random() < conf.blur_probability:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(*conf.blur_sigma)))
    sigma = rng.uniform(*conf.noise_std)
    if sigma > 0:
        img = img + rng.normal(0.0, sigma, img.shape).astype(np.float32)
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def inpaint(image: np.ndarray, mask: np.ndarray, conf=None, seed: int = 0) -> np.ndarray:
    """Fill the masked pixels of an image.

    Args:
        image: (H, W, 3) uint8 RGB.
        mask: (H, W) bool, True = fill.
        conf: :class:`~l2m_plugin.synthesis.config.InpaintConf` (default: OpenCV Telea,
            radius 3).
        seed: seed of the diffusion sampler (diffusers only).
    Returns:
        (H, W, 3) uint8; pixels outside the mask unchanged. An all-hole image is filled
        with mid grey (nothing to propagate from).
    Raises:
        BackendUnavailableError: method "diffusers" without the package or its weights.
    """

    conf = conf if conf is not None else InpaintConf()
    img = np.ascontiguousarray(image, dtype=np.uint8)
    m = np.asarray(mask, bool)
    if m.shape != img.shape[:2]:
        raise ValueError(f"mask shape {m.shape} != image shape {img.shape[:2]}")
    if not m.any():
        return img.copy()
    if m.all():
        return np.full_like(img, 128)
    if conf.method == "diffusers":
        pipe = DiffusersInpainter.get(conf.model, conf.device)
        out = pipe(img, m, prompt=conf.prompt, steps=conf.steps, seed=seed)
    else:
        flag = cv2.INPAINT_TELEA if conf.method == "opencv-telea" else cv2.INPAINT_NS
        out = cv2.inpaint(img, m.astype(np.uint8) * 255, float(conf.radius), flag)
    return np.where(m[..., None], out, img).astype(np.uint8)


class DiffusersInpainter:
    """Stable Diffusion inpainting through ``diffusers`` (optional backend).

    The authors inpaint novel views with ``StableDiffusionInpaintPipeline`` (their
    README's fine-tuned ``Liangyingping/L2M-Inpainting``, or
    ``stabilityai/stable-diffusion-2-inpainting`` in ``get_data.py``) and the prompt
    "a realistic photo". Weights are loaded with ``local_files_only=True``: nothing is
    downloaded during synthesis.

    Raises:
        BackendUnavailableError: ``diffusers`` is not installed, or the weights of
            ``model`` are not in the local Hugging Face cache.
    """

    def __init__(self, model: str, device: str = "auto"):
        try:
            import diffusers
            import torch
        except ImportError as exc:
            raise BackendUnavailableError(
                "inpaint.method='diffusers' needs the 'diffusers' package, which is not "
                "installed: pip install diffusers transformers accelerate, and put the "
                f"weights of {model!r} in the Hugging Face cache; or use "
                "inpaint.method=opencv-telea (the default)"
            ) from exc
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        try:
            pipe = diffusers.StableDiffusionInpaintPipeline.from_pretrained(
                model, torch_dtype=dtype, local_files_only=True
            )
        except (OSError, ValueError) as exc:
            raise BackendUnavailableError(
                f"the diffusers inpainting weights {model!r} are not available locally "
                f"({exc}). Download them once with `huggingface-cli download {model}` or set "
                "inpaint.model to a local folder"
            ) from exc
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(device)
        self.device = device

    @classmethod
    def get(cls, model: str, device: str = "auto") -> DiffusersInpainter:
        """A cached instance per (model, device)."""
        return _cached_inpainter(cls, model, device)

    def __call__(self, image: np.ndarray, mask: np.ndarray, prompt: str, steps: int, seed: int = 0):
        """(H, W, 3) uint8 + (H, W) bool mask -> (H, W, 3) uint8 filled image."""
        import torch
        from PIL import Image

        h, w = image.shape[:2]
        side = 512  # the SD-2 inpainting resolution (authors: h=512, w=512)
        im = Image.fromarray(image).resize((side, side), Image.BICUBIC)
        mk = Image.fromarray(mask.astype(np.uint8) * 255).resize((side, side), Image.NEAREST)
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        out = self.pipe(prompt=prompt, image=im, mask_image=mk, num_inference_steps=steps,
                        generator=gen, height=side, width=side).images[0]  # fmt: skip
        return np.asarray(out.resize((w, h), Image.BICUBIC).convert("RGB"), dtype=np.uint8)


@functools.lru_cache(maxsize=1)
def _cached_inpainter(cls, model: str, device: str):
    return cls(model, device)
