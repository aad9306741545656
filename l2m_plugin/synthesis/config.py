"""Frozen configuration of novel-view synthesis, its presets and ``key=value`` overrides.

Every range is a ``(lo, hi)`` pair sampled uniformly; a symmetric quantity (a translation,
a rotation angle) is sampled as ``sign * U(lo, hi)`` with a random sign, as the authors'
``rand_tensor`` does. Lengths are in scene units (the near surface is at depth 1, see
:mod:`l2m_plugin.synthesis.depth`), angles in degrees.

Defaults follow the authors' generator (Sharpiless/L2M at commit d13402c), checked in
their code:

- ``get_data.py``: ``focal = 0.45 + 0.3 * U(0, 1)`` in units of the (square, 512 px)
  image side, principal point at the centre -> ``camera.focal_range = (0.45, 0.75)``;
- ``get_data.py`` ``trans_range = {x: 0.4, y: 0.4, z: 0.8, a: 18, b: 18, c: 18}`` with
  ``rand_tensor(r) = sign * (r/2 + r/2 * U)``: translations ``|t_x|, |t_y|`` in
  [0.2, 0.4], ``|t_z|`` in [0.4, 0.8], and an axis-angle vector whose three components
  have magnitude in [pi/36, pi/18] = [5, 10] degrees; ``T_0to1 = [R | t]``
  (``transformation_from_parameters``: X1 = R X0 + t);
- ``relight.py``: 2-5 point lights, colour per channel 0.5 or U(0.5, 1), positions
  x in [-2, 3], height in [-2, 2], depth in {1, 2} (mesh units, near ~1), energy 400-2000 W
  and an ambient term -> ``relight.*``;
- ``get_data.py``: Stable Diffusion inpainting with the prompt "a realistic photo"
  (README: their fine-tuned ``Liangyingping/L2M-Inpainting``) -> ``inpaint.*``.

The ``hard`` preset widens the motions (orbits of up to 45 degrees around the scene
centre, zoom), the lighting and the photometric changes: pairs closer to real
wide-baseline ones, which a previous probe found to matter more than more training steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = [
    "CameraConf",
    "MotionConf",
    "MeshConf",
    "SyntheticDepthConf",
    "DepthConf",
    "RelightConf",
    "JitterConf",
    "InpaintConf",
    "SkyConf",
    "SynthConfig",
    "SYNTH_PRESETS",
    "load_config",
    "config_to_dict",
]

Range = tuple[float, float]
IntRange = tuple[int, int]


@dataclass(frozen=True)
class CameraConf:
    """Intrinsics of both views (square pixels, principal point at the image centre).

    Attributes:
        focal_range: focal length of image 0 in units of the image's long side (the
            authors' square crop side): f0 = U(lo, hi) * max(W, H).
        zoom_range: f1 / f0, sampled log-uniformly (scale change); (1, 1) = same camera
            (the authors' setting).
    """

    focal_range: Range = (0.45, 0.75)
    zoom_range: Range = (1.0, 1.0)


@dataclass(frozen=True)
class MotionConf:
    """Relative pose of camera 1 (``T_0to1``: camera-0 coordinates -> camera-1).

    Two motion models; each pair uses "orbit" with probability ``orbit_probability``,
    else "l2m".

    Attributes:
        orbit_probability: share of orbit motions (0: the authors' model only).
        translation_x, translation_y, translation_z: "l2m" model: magnitude range of each
            translation component (random sign), in scene units times the depth
            reference (the near surface, ~1).
        rotation_deg: "l2m" model: magnitude range of each axis-angle component (random
            sign), degrees.
        orbit_yaw_deg, orbit_pitch_deg, orbit_roll_deg: "orbit" model: the camera turns
            about a pivot (the median depth of the image centre, on the optical axis) by
            these angles (random sign), keeping the pivot in view, then rolls.
        orbit_distance_scale: "orbit" model: distance to the pivot of camera 1 over that of
            camera 0 (< 1: closer, larger scale), log-uniform.
        orbit_translation_jitter: "orbit" model: extra translation per axis, uniform in
            +- this times the pivot depth.
        depth_reference_percentile: translations scale with this percentile of the depth
            (1: the near surface, which is 1.0 for the built-in depth sources).
        min_covisible: a motion is redrawn (up to ``max_tries`` times) when the overlap is
            below this: the smaller of the share of image 0's pixels with depth that
            project inside image 1 in front of it, and the share of image 1 that shows the
            surface (not holes); after ``max_tries`` the best one is kept.
        max_tries: draws per pair.
    """

    orbit_probability: float = 0.0
    translation_x: Range = (0.2, 0.4)
    translation_y: Range = (0.2, 0.4)
    translation_z: Range = (0.4, 0.8)
    rotation_deg: Range = (5.0, 10.0)
    orbit_yaw_deg: Range = (10.0, 45.0)
    orbit_pitch_deg: Range = (5.0, 25.0)
    orbit_roll_deg: Range = (0.0, 10.0)
    orbit_distance_scale: Range = (0.6, 1.5)
    orbit_translation_jitter: float = 0.1
    depth_reference_percentile: float = 1.0
    min_covisible: float = 0.2
    max_tries: int = 8


@dataclass(frozen=True)
class MeshConf:
    """Lifting and rasterisation (:mod:`l2m_plugin.synthesis.mesh`).

    Attributes:
        max_rel_depth_jump: triangles whose vertex depths differ by more than this
            fraction of the smallest are dropped (discontinuities become disocclusions).
        near_clip: triangles with a vertex closer than this to camera 1 (scene units) are
            dropped.
        visibility_rel_tol: relative depth tolerance of the visibility test of valid0.
        max_candidates_per_pixel: rasteriser budget; views above it are redrawn.
    """

    max_rel_depth_jump: float = 0.1
    near_clip: float = 0.01
    visibility_rel_tol: float = 0.01
    max_candidates_per_pixel: float = 24.0


@dataclass(frozen=True)
class SyntheticDepthConf:
    """The synthetic depth generator (:func:`l2m_plugin.synthesis.depth.synthetic_depth`).

    Attributes:
        layouts: relative weights of the layout priors ``ground``, ``room``, ``facade``,
            ``object``.
        noise_amplitude: range of ``a`` in the multiplicative noise ``exp(a * noise)``.
        noise_cells: range (inclusive) of the noise grid size along the long side.
        num_layers: range (inclusive) of the number of occluding layers.
        layer_depth_ratio: depth of a layer over the median depth behind it.
        image_layer_probability: chance that a layer is a colour segment of the image.
    """

    layouts: dict[str, float] = field(
        default_factory=lambda: {"ground": 0.35, "room": 0.25, "facade": 0.2, "object": 0.2}
    )
    noise_amplitude: Range = (0.05, 0.35)
    noise_cells: IntRange = (2, 6)
    num_layers: IntRange = (1, 4)
    layer_depth_ratio: Range = (0.35, 0.8)
    image_layer_probability: float = 0.5


@dataclass(frozen=True)
class DepthConf:
    """Depth sources and their mapping to scene depth (:mod:`l2m_plugin.synthesis.depth`).

    Attributes:
        file_kind: what depth files hold: "disparity" (relative inverse depth, e.g. Depth
            Anything V2; the authors' input) or "depth" (z-depth of any scale).
        near, far: scene depth range: the nearest surfaces at ``near``, nothing beyond
            ``far`` (the authors' ``relight.py`` clips disparity at 0.01: far = 100).
        percentiles: disparity percentiles mapped to far and near (robust min/max).
        model: Hugging Face model id of the ``transformers`` source.
        device: device of the ``transformers`` model.
        synthetic: the synthetic generator.
    """

    file_kind: str = "disparity"
    near: float = 1.0
    far: float = 100.0
    percentiles: Range = (1.0, 99.0)
    model: str = "depth-anything/Depth-Anything-V2-Small-hf"
    device: str = "cpu"
    synthetic: SyntheticDepthConf = field(default_factory=SyntheticDepthConf)


@dataclass(frozen=True)
class RelightConf:
    """Relighting of each image with its own random point lights (no Blender).

    Lambertian shading from normals of the depth map plus a Blinn-Phong highlight; lights
    live in camera-0 coordinates (x right, y down, z forward; scene units).

    Attributes:
        probability: chance that an image is relit (each image independently).
        num_lights: range (inclusive) of the number of point lights (authors: 2-5).
        light_x, light_y, light_z: light position ranges (authors: x in [-2, 3], height in
            [-2, 2], depth 1 or 2).
        intensity: light intensity range at unit distance (authors' 400-2000 W / 1000).
        ambient: ambient term range.
        colored_probability: chance that a light's channel is U(0.5, 1) instead of 0.5
            (authors' colour rule; the colour is normalised to max 1).
        strength: blend weight between the photo and the relit photo.
        specular: Blinn-Phong highlight weight range; shininess: its exponent range.
    """

    probability: float = 0.8
    num_lights: IntRange = (2, 5)
    light_x: Range = (-2.0, 3.0)
    light_y: Range = (-2.0, 2.0)
    light_z: Range = (1.0, 2.0)
    intensity: Range = (0.4, 2.0)
    ambient: Range = (0.3, 0.7)
    colored_probability: float = 0.5
    strength: Range = (0.3, 0.8)
    specular: Range = (0.0, 0.15)
    shininess: Range = (8.0, 64.0)


@dataclass(frozen=True)
class JitterConf:
    """Photometric jitter, drawn independently for each image.

    Attributes:
        probability: chance that an image is jittered at all.
        brightness, contrast, saturation: multiplicative factor ranges.
        hue_deg: hue shift range in degrees.
        gamma: gamma exponent range (log-uniform).
        noise_std: Gaussian noise standard deviation range (fraction of 255).
        blur_probability: chance of a Gaussian blur; blur_sigma: its sigma range (px).
    """

    probability: float = 0.8
    brightness: Range = (0.8, 1.2)
    contrast: Range = (0.8, 1.2)
    saturation: Range = (0.8, 1.2)
    hue_deg: Range = (-8.0, 8.0)
    gamma: Range = (0.8, 1.25)
    noise_std: Range = (0.0, 0.02)
    blur_probability: float = 0.2
    blur_sigma: Range = (0.3, 1.2)


@dataclass(frozen=True)
class InpaintConf:
    """Hole filling of image 1 (disocclusions, outside the mesh, sky, back faces).

    Attributes:
        method: "opencv-telea" (default), "opencv-ns", or "diffusers" (Stable Diffusion
            inpainting; needs the ``diffusers`` package and the weights locally).
        radius: OpenCV inpainting radius in pixels.
        model: diffusers model id (the authors' fine-tuned SD-2 inpainting model).
        prompt: diffusers prompt (the authors' "a realistic photo").
        steps: diffusers denoising steps.
        device: diffusers device ("auto": cuda when available).
    """

    method: str = "opencv-telea"
    radius: int = 3
    model: str = "Liangyingping/L2M-Inpainting"
    prompt: str = "a realistic photo"
    steps: int = 25
    device: str = "auto"


@dataclass(frozen=True)
class SkyConf:
    """Sky masking (the authors' optional ``sky_seg.py`` step).

    Attributes:
        segmenter: ``"package.module:function"`` of a callable ``f(image) -> mask`` with
            ``image`` (H, W, 3) uint8 RGB and ``mask`` (H, W) bool, True = sky; or None
            (default: no sky masking). Sky pixels get no depth, hence no correspondences.
    """

    segmenter: str | None = None


_METHODS = ("opencv-telea", "opencv-ns", "diffusers")


@dataclass(frozen=True)
class SynthConfig:
    """Everything that decides how a pair is synthesised from an image and its depth.

    Sections: ``camera`` (:class:`CameraConf`), ``motion`` (:class:`MotionConf`), ``mesh``
    (:class:`MeshConf`), ``depth`` (:class:`DepthConf`), ``relight`` (:class:`RelightConf`),
    ``jitter`` (:class:`JitterConf`), ``inpaint`` (:class:`InpaintConf`), ``sky``
    (:class:`SkyConf`). Immutable; build variants with :func:`load_config` or
    ``dataclasses.replace``.

    Raises:
        ValueError: a range with lo > hi, a probability outside [0, 1], a non-positive
            focal length or threshold, or an unknown method / kind (names the key).
    """

    camera: CameraConf = field(default_factory=CameraConf)
    motion: MotionConf = field(default_factory=MotionConf)
    mesh: MeshConf = field(default_factory=MeshConf)
    depth: DepthConf = field(default_factory=DepthConf)
    relight: RelightConf = field(default_factory=RelightConf)
    jitter: JitterConf = field(default_factory=JitterConf)
    inpaint: InpaintConf = field(default_factory=InpaintConf)
    sky: SkyConf = field(default_factory=SkyConf)

    def __post_init__(self):
        _validate(self, "")
        c = self
        checks = [
            (c.camera.focal_range[0] > 0, "camera.focal_range must be > 0"),
            (c.camera.zoom_range[0] > 0, "camera.zoom_range must be > 0"),
            (c.motion.orbit_distance_scale[0] > 0, "motion.orbit_distance_scale must be > 0"),
            (c.motion.max_tries >= 1, "motion.max_tries must be >= 1"),
            (c.mesh.max_rel_depth_jump > 0, "mesh.max_rel_depth_jump must be > 0"),
            (c.mesh.near_clip > 0, "mesh.near_clip must be > 0"),
            (c.mesh.visibility_rel_tol > 0, "mesh.visibility_rel_tol must be > 0"),
            (c.mesh.max_candidates_per_pixel > 0, "mesh.max_candidates_per_pixel must be > 0"),
            (0 < c.depth.near < c.depth.far, "depth.near and depth.far need 0 < near < far"),
            (c.depth.file_kind in ("disparity", "depth"),
             f"depth.file_kind must be 'disparity' or 'depth', got {c.depth.file_kind!r}"),
            (c.jitter.gamma[0] > 0, "jitter.gamma must be > 0"),
            (c.inpaint.method in _METHODS,
             f"inpaint.method must be one of {_METHODS}, got {c.inpaint.method!r}"),
            (c.inpaint.radius >= 1, "inpaint.radius must be >= 1"),
            (c.relight.num_lights[0] >= 0, "relight.num_lights must be >= 0"),
            (c.depth.synthetic.num_layers[0] >= 0, "depth.synthetic.num_layers must be >= 0"),
            (c.depth.synthetic.noise_cells[0] >= 1, "depth.synthetic.noise_cells must be >= 1"),
        ]  # fmt: skip
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"invalid synthesis config: {msg}")


def _validate(obj, prefix: str) -> None:
    """Every (lo, hi) range ordered, every ``*probability`` in [0, 1]."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(v):
            _validate(v, key + ".")
        elif isinstance(v, tuple):
            if len(v) != 2 or v[0] > v[1]:
                raise ValueError(f"invalid synthesis config: {key} must be a range [lo, hi] "
                                 f"with lo <= hi, got {list(v)}")  # fmt: skip
        elif f.name.endswith("probability") and not 0 <= v <= 1:
            raise ValueError(f"invalid synthesis config: {key} must be in [0, 1], got {v}")


def _hard() -> SynthConfig:
    r = dataclasses.replace
    d = SynthConfig()
    return SynthConfig(
        camera=r(d.camera, zoom_range=(0.8, 1.25)),
        motion=r(
            d.motion,
            orbit_probability=0.7,
            translation_x=(0.2, 0.6),
            translation_y=(0.2, 0.6),
            rotation_deg=(5.0, 20.0),
            orbit_yaw_deg=(15.0, 45.0),
            orbit_pitch_deg=(5.0, 30.0),
            orbit_roll_deg=(0.0, 15.0),
            orbit_distance_scale=(0.6, 1.5),
            min_covisible=0.4,
        ),
        depth=d.depth,
        relight=r(
            d.relight,
            probability=1.0,
            intensity=(0.4, 3.0),
            ambient=(0.2, 0.6),
            strength=(0.4, 0.9),
            specular=(0.0, 0.25),
        ),
        jitter=r(
            d.jitter,
            probability=1.0,
            brightness=(0.65, 1.35),
            contrast=(0.7, 1.3),
            saturation=(0.5, 1.5),
            hue_deg=(-15.0, 15.0),
            gamma=(0.7, 1.5),
            noise_std=(0.0, 0.04),
            blur_probability=0.3,
            blur_sigma=(0.3, 1.5),
        ),
    )


#: named presets: "l2m" (the authors' ranges) and "hard" (wider motion and appearance change)
SYNTH_PRESETS: dict[str, SynthConfig] = {"l2m": SynthConfig(), "hard": _hard()}


def load_config(preset: str | SynthConfig = "l2m", overrides=(), path=None) -> SynthConfig:
    """A :class:`SynthConfig` from a preset, an optional YAML file and ``key=value`` overrides.

    Args:
        preset: a name in :data:`SYNTH_PRESETS` or a :class:`SynthConfig`.
        overrides: OmegaConf dot-list, e.g. ``["motion.rotation_deg=[10,20]",
            "inpaint.method=opencv-ns"]``; keys are relative to the synthesis config.
        path: optional YAML file (a ``synth:`` section of ``synth_conf.yaml`` or a bare
            synthesis config), merged before the overrides.
    Returns:
        the frozen config.
    Raises:
        ValueError: unknown preset or key, a value of the wrong type, or an invalid value
            (the message names the key).
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(preset, str):
        if preset not in SYNTH_PRESETS:
            raise ValueError(f"unknown synthesis preset {preset!r}; choose from {sorted(SYNTH_PRESETS)}")
        preset = SYNTH_PRESETS[preset]
    try:
        conf = OmegaConf.structured(preset)
        if path is not None:
            loaded = OmegaConf.load(path)
            conf = OmegaConf.merge(conf, loaded.get("synth", loaded))
        if overrides:
            conf = OmegaConf.merge(conf, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(conf)
    except OmegaConfBaseException as exc:
        msg = str(exc).splitlines()[0]
        raise ValueError(
            f"bad synthesis config override {list(overrides)}: {msg} (keys are relative to the "
            "synthesis config, e.g. motion.rotation_deg=[5,10]; see "
            "l2m_plugin.synthesis.config)"
        ) from exc


def config_to_dict(conf: SynthConfig) -> dict:
    """Plain nested dict (lists for ranges) of a config, for YAML/JSON."""
    import json

    from omegaconf import OmegaConf

    return json.loads(json.dumps(OmegaConf.to_container(OmegaConf.structured(conf))))
