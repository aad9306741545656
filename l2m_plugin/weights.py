"""Weights: the registry of released checkpoints, download into the torch hub cache,
and strict loading of every checkpoint layout into :class:`l2m_plugin.L2M`.

Layouts understood by :func:`load_weights`:

``official`` (RoMa / L2M release)
    The matcher file holds RoMa's ``RegressionMatcher`` state dict (keys
    ``encoder.cnn.layers.*`` and ``decoder.*``) *without* the ViT, which RoMa keeps
    outside its state dict; the ViT comes from a second file in DINOv2's own key
    layout (``cls_token``, ``pos_embed``, ``mask_token``, ``patch_embed.proj.*``,
    ``blocks.<i>.*`` or chunked ``blocks.<c>.<i>.*``, ``norm.*``), mapped here onto
    the timm model (``mask_token`` is dropped: it is only used for masked training).
``lightning``
    The same dicts nested under ``state_dict`` (PyTorch Lightning ``.ckpt``, e.g.
    ``l2m++_560x560v2.pth.ckpt``), possibly with ``model.`` or ``module.`` prefixes.
``l2m_plugin``
    Our own single file: ``{"format": "l2m_plugin", "config": {...},
    "weights_name": str, "state_dict": {...}}`` with the whole model.
``l2m_plugin-train``
    A training checkpoint (``train.out/checkpoints/step_XXXXXXX.pt``, written by
    :class:`l2m_plugin.training.trainer.Trainer` to resume): ``{"format": "l2m_plugin-train",
    "conf": {...}, "model": {...}, "optimizer": ..., "step": int, ...}``. The matcher is
    built from the run's ``conf["model"]`` and named ``<run folder>-step<N>``, as the
    run's own export (``model.pth``) would be, so a run is measured at any checkpoint
    while it trains.

Loading is strict: missing, unexpected and mis-shaped keys are all listed in
the :class:`WeightsError`. Files are read with ``torch.load(weights_only=True)``;
only if that refuses the file (pickled Python objects, as some Lightning
checkpoints hold) is it read again with ``weights_only=False`` and a warning.

Nothing here touches the network except :func:`download`, which
:func:`load_weights` calls only for registry names whose file is not cached.

One entry ships inside the package and needs no download: ``l2m-tiny``
(:data:`DEFAULT_WEIGHTS`), a small matcher this project trained offline from single
photos (``configs/train/stage2_tiny_ds.yaml``; README, "l2m-tiny"). It is what every entry
point loads when no weights are named, so matching works without a network.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from l2m_plugin.config import PRESETS, MatcherConfig
from l2m_plugin.files import atomic_path

__all__ = [
    "WeightsEntry",
    "WeightsError",
    "ArchitectureMismatchError",
    "REGISTRY",
    "cache_path",
    "download",
    "resolve",
    "read_checkpoint",
    "UntrustedCheckpointError",
    "unwrap_state_dict",
    "map_dinov2_keys",
    "split_official_layout",
    "LoadedWeights",
    "load_weights",
    "load_state_strict",
    "encoder_state_dict",
    "save_checkpoint",
    "save_official_layout",
    "TRAIN_FORMAT",
    "atomic_torch_save",
    "OFFLINE_ENV",
    "DEFAULT_WEIGHTS",
    "packaged_path",
]

logger = logging.getLogger(__name__)

#: Set this environment variable to 1 to forbid downloads (cached files still load).
OFFLINE_ENV = "L2M_OFFLINE"

_VIT_PREFIX = "encoder.dinov2.vit."
_HF = "https://huggingface.co/datasets/Liangyingping/L2Mpp-checkpoints/resolve/main/"
_FORMAT = "l2m_plugin"
#: the ``format`` of a training checkpoint (the trainer's resumable state; see the module docstring)
TRAIN_FORMAT = "l2m_plugin-train"


class WeightsError(RuntimeError):
    """A checkpoint could not be found, downloaded, read or matched to the model."""


class ArchitectureMismatchError(WeightsError):
    """The config asks for another network than the one the weights are.

    Attributes:
        weights: the weights' label (registry name or file name).
        weights_arch, config_arch: :attr:`MatcherConfig.arch_name` of each side.
        presets: names in :data:`PRESETS` written for the weights' network.
        weights_for_config: registry matchers of the config's network.
    """

    def __init__(self, weights: str, weights_config: MatcherConfig, config: MatcherConfig):
        self.weights = weights
        self.weights_arch, self.config_arch = weights_config.arch_name, config.arch_name
        self.presets = sorted(
            (n for n, p in PRESETS.items() if p.same_network(weights_config)),
            key=lambda n: PRESETS[n] != weights_config,  # the weights' own config first
        )
        self.weights_for_config = [
            e.name for e in REGISTRY.values()
            if e.kind == "matcher" and e.preset and PRESETS[e.preset].same_network(config)
        ]  # fmt: skip
        fix = f"preset {' / '.join(self.presets)}, or " if self.presets else ""
        other = f"; or weights of arch {self.config_arch}: {', '.join(self.weights_for_config)}" if self.weights_for_config else ""
        super().__init__(
            f"weights {weights!r} are arch {self.weights_arch} but the config is for arch "
            f"{self.config_arch} (its resolution and normalisation were chosen for that network; "
            f"nothing of it was applied).\nUse a config for arch {self.weights_arch}: {fix}no config "
            f"(the weights' own){other}."
        )


@dataclass(frozen=True)
class WeightsEntry:
    """One released file.

    Attributes:
        name: registry name.
        kind: ``"matcher"`` (decoder + VGG) or ``"encoder"`` (ViT only).
        url: download URL (each name has its own).
        filename: the file name as released.
        encoder: for matchers, the registry name of the ViT weights they pair with.
        preset: for matchers, the :data:`l2m_plugin.config.PRESETS` entry the
            authors evaluate them with.
        sha256, size: checksum and byte size when published (None when unknown:
            the L2M release publishes neither).
        source: where the URL comes from.
        packaged: path of the file inside the ``l2m_plugin`` package for weights that
            ship with it (then ``url`` is empty and nothing is downloaded).
    """

    name: str
    kind: str
    url: str
    filename: str
    encoder: str | None = None
    preset: str | None = None
    sha256: str | None = None
    size: int | None = None
    source: str = ""
    packaged: str | None = None


REGISTRY: dict[str, WeightsEntry] = {
    e.name: e
    for e in (
        WeightsEntry(
            "l2m-tiny", "matcher", "", "l2m_tiny.pth", packaged="assets/l2m_tiny.pth", preset="l2m-tiny",
            sha256="16b13b2be7709f1ce910a91f3890fe0b7e5d22f080cbc56e2bafd54f25c644e7", size=5183691,
            source="trained by l2m-plugin: configs/train/stage2_tiny_ds.yaml (1,600 steps), then "
            "configs/train/stage2_tiny_ds_ft.yaml (2,400 steps), then configs/train/stage2_tiny_ds_384.yaml "
            "(1,600 steps) on l2m synth and homography pairs from ../shared/data/single_view; inference: "
            "co-visible crop pass with a scale search at 2x and a zoom search at 2x, sample_thresh 0.5 with the "
            "sampling cutoff (README, l2m-tiny)",
        ),
        WeightsEntry(
            "l2mpp-v1", "matcher", _HF + "l2m%2B%2B_560x560.pth", "l2m++_560x560.pth",
            encoder="dinov2l-distilled", preset="l2m",
            source="Sharpiless/L2M romatch/models/model_zoo/__init__.py (weight_urls)",
        ),
        WeightsEntry(
            "l2mpp-v2", "matcher", _HF + "l2m%2B%2B_560x560v2.pth.ckpt", "l2m++_560x560v2.pth.ckpt",
            encoder="dinov2l-distilled", preset="l2m",
            source="Sharpiless/L2M romatch/models/model_zoo/__init__.py (weight_urlsv2, which upstream never loads)",
        ),
        WeightsEntry(
            "dinov2l-distilled", "encoder", _HF + "dinov2l_distilled.pth", "dinov2l_distilled.pth",
            source="Sharpiless/L2M romatch/models/encoders.py (L2M's 3D-aware DINOv2 ViT-L/14)",
        ),
        WeightsEntry(
            "dinov2-vitl14", "encoder",
            "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth",
            "dinov2_vitl14_pretrain.pth",
            source="facebookresearch/dinov2 (original DINOv2 ViT-L/14, as romatch 0.1.2 uses)",
        ),
        WeightsEntry(
            "roma-outdoor", "matcher",
            "https://github.com/Parskatt/storage/releases/download/roma/roma_outdoor.pth",
            "roma_outdoor.pth", encoder="dinov2-vitl14", preset="romatch",
            source="romatch 0.1.2 models/model_zoo/__init__.py (RoMa outdoor, for comparison)",
        ),
    )
}


#: the weights loaded when none are named: shipped with the package, no download
DEFAULT_WEIGHTS = "l2m-tiny"


def packaged_path(entry: WeightsEntry | str) -> Path:
    """The file of a packaged entry inside the installed ``l2m_plugin`` package."""
    entry = _entry(entry) if isinstance(entry, str) else entry
    if entry.packaged is None:
        raise WeightsError(f"{entry.name!r} is not shipped with the package; it downloads from {entry.url}")
    return Path(__file__).resolve().parent / entry.packaged


def _entry(name: str) -> WeightsEntry:
    if name not in REGISTRY:
        raise WeightsError(
            f"Unknown weights name {name!r}. Known names: {', '.join(sorted(REGISTRY))}; "
            "or pass a path to a checkpoint file."
        )
    return REGISTRY[name]


def cache_path(entry: WeightsEntry | str) -> Path:
    """Where a registry file is cached: ``<torch hub dir>/checkpoints/<basename of the URL>``.

    This is the path ``torch.hub.load_state_dict_from_url`` uses, so files fetched
    by the upstream code are reused.
    """
    entry = _entry(entry) if isinstance(entry, str) else entry
    if entry.packaged is not None:  # shipped inside the package: nothing is cached
        return packaged_path(entry)
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(entry.url).path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verify(entry: WeightsEntry, path: Path) -> None:
    if entry.size is not None and path.stat().st_size != entry.size:
        raise WeightsError(
            f"{path} has {path.stat().st_size} bytes, expected {entry.size} for {entry.name!r} "
            f"({entry.url}). Delete the file and download it again."
        )
    if entry.sha256 is not None and _sha256(path) != entry.sha256:
        raise WeightsError(
            f"{path} does not match the SHA-256 of {entry.name!r} ({entry.url}). "
            "Delete the file and download it again."
        )


def _local_file_hint(entry: WeightsEntry) -> str:
    if entry.kind == "encoder":
        return f"L2M.from_pretrained(..., encoder_weights='/path/to/{entry.filename}') or `l2m match --encoder-weights PATH`"
    return f"L2M.from_pretrained('/path/to/{entry.filename}') or `l2m match --weights PATH`"


def download(name: str | WeightsEntry, progress: bool = True) -> Path:
    """Return the cached file of a registry entry, downloading it on first use.

    The download goes to a temporary file beside the cache path and is moved into
    place only when complete (``torch.hub.download_url_to_file``); size and
    checksum are verified where known, and a file failing them is removed.

    Raises:
        WeightsError: unknown name; downloads disabled (``L2M_OFFLINE=1``) or the
            URL unreachable: the message names the URL, the cache path expected
            and how to pass a local file instead.
    """
    entry = _entry(name) if isinstance(name, str) else name
    dst = cache_path(entry)
    if entry.packaged is not None:
        if not dst.is_file():
            raise WeightsError(
                f"{entry.name!r} ships with l2m_plugin at {dst}, but the file is missing: the package "
                "was installed without its data files. Reinstall it from a complete clone (pip install -e .), "
                "or name other weights (--weights / weights=)."
            )
        _verify(entry, dst)
        return dst
    if dst.is_file():
        _verify(entry, dst)
        return dst
    how = (
        f"Download it yourself from {entry.url} and either put it at {dst} or pass the file: "
        f"{_local_file_hint(entry)}."
    )
    if os.environ.get(OFFLINE_ENV, "0") not in ("", "0"):
        raise WeightsError(f"Weights {entry.name!r} are not cached at {dst} and downloads are disabled ({OFFLINE_ENV}=1). {how}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Downloading %s to %s", entry.url, dst)
    try:
        torch.hub.download_url_to_file(entry.url, str(dst), progress=progress)
    except Exception as exc:  # network errors come in many types (URLError, HTTPError, OSError, ...)
        raise WeightsError(f"Could not download weights {entry.name!r} from {entry.url} ({type(exc).__name__}: {exc}). {how}") from exc
    try:
        _verify(entry, dst)
    except WeightsError:
        dst.unlink(missing_ok=True)
        raise
    return dst


def resolve(weights: str | os.PathLike, progress: bool = True) -> Path:
    """A registry name (downloaded if needed) or an existing file path, as a Path.

    Raises:
        WeightsError: neither a known name nor an existing file.
    """
    if isinstance(weights, str) and weights in REGISTRY:
        return download(weights, progress=progress)
    path = Path(weights)
    if path.is_file():
        return path
    raise WeightsError(
        f"Weights {str(weights)!r} are neither a registry name ({', '.join(sorted(REGISTRY))}) "
        "nor an existing checkpoint file."
    )


class UntrustedCheckpointError(WeightsError):
    """A checkpoint holds pickled Python objects (code runs when it loads) and was not trusted."""


def read_checkpoint(path: str | os.PathLike, trust: bool = False) -> Any:
    """``torch.load`` a checkpoint on CPU with ``weights_only=True`` (tensors only, no code runs).

    A file that holds pickled Python objects besides tensors (some Lightning checkpoints do)
    can run code when it loads; it is read with ``weights_only=False`` only when ``trust``
    (registry files, from their entry's URL and checked where a SHA-256 is published, are
    trusted by :func:`load_weights`; a user
    passes ``trust_checkpoint=True`` / ``--trust-checkpoint`` for a file they know).

    Raises:
        UntrustedCheckpointError: pickled objects and not ``trust`` (the message names the
            file and the opt-in).
        WeightsError: file missing, empty, truncated or not a PyTorch checkpoint
            (the message names the file and the fix).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Checkpoint file not found: {path}")
    if path.stat().st_size == 0:
        raise WeightsError(f"Checkpoint file {path} is empty. Delete it and download or copy it again.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if not isinstance(exc, pickle.UnpicklingError) or "Unsupported global" not in str(exc):
            raise WeightsError(
                f"Checkpoint file {path} is truncated or is not a PyTorch checkpoint "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
                "Delete it and download or copy it again."
            ) from exc
        if not trust:
            raise UntrustedCheckpointError(
                f"{path} holds pickled Python objects besides tensors, and loading them runs code "
                f"({str(exc).splitlines()[0][:160]}). Refused. If you trust the file's origin, pass "
                "trust_checkpoint=True (CLI: --trust-checkpoint); or re-save its tensors only."
            ) from None
    warnings.warn(
        f"{path} holds pickled Python objects besides tensors; loading it with weights_only=False "
        "because it is trusted (a registry file, or trust_checkpoint=True).",
        stacklevel=2,
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise WeightsError(f"Checkpoint file {path} could not be read ({type(exc).__name__}: {exc}).") from exc


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Extract a flat tensor state dict from a checkpoint object.

    Unwraps ``state_dict`` (Lightning) and ``model`` nesting, then strips leading
    ``module.`` (DDP) and ``model.`` (Lightning module attribute) prefixes.

    Raises:
        WeightsError: no tensor state dict inside.
    """
    if isinstance(obj, Mapping) and obj.get("format") == _FORMAT:
        obj = obj["state_dict"]
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(torch.is_tensor(v) for v in obj.values()):
            inner = obj.get("state_dict", obj.get("model"))
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise WeightsError("Checkpoint holds no tensor state dict (expected a dict of tensors, or one under 'state_dict' or 'model').")
    out = {}
    for k, v in obj.items():
        while k.startswith(("module.", "model.")):
            k = k.split(".", 1)[1]
        out[k] = v
    return out


_CHUNKED = re.compile(r"^blocks\.\d+\.(\d+)\.(.*)$")


def map_dinov2_keys(sd: Mapping[str, torch.Tensor], prefix: str = _VIT_PREFIX) -> dict[str, torch.Tensor]:
    """Map a DINOv2 state dict (facebookresearch layout) onto our timm ViT keys.

    ``blocks.<chunk>.<i>.*`` (FSDP-chunked) becomes ``blocks.<i>.*``;
    ``mask_token`` is dropped; everything else keeps its name under ``prefix``.
    """
    out = {}
    for k, v in sd.items():
        if k == "mask_token":
            continue
        m = _CHUNKED.match(k)
        if m:
            k = f"blocks.{m.group(1)}.{m.group(2)}"
        out[prefix + k] = v
    return out


def split_official_layout(sd: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """Inverse of :func:`map_dinov2_keys`: split our model's state dict into the released files.

    Returns:
        ``(matcher, encoder)``: RoMa's matcher state dict (every key not under the
        ViT) and the ViT in DINOv2's key layout, with a zero ``mask_token`` (1, D)
        as DINOv2 files carry one.
    """
    matcher = {k: v for k, v in sd.items() if not k.startswith("encoder.dinov2.")}
    encoder = {k[len(_VIT_PREFIX):]: v for k, v in sd.items() if k.startswith(_VIT_PREFIX)}
    encoder["mask_token"] = torch.zeros(1, encoder["cls_token"].shape[-1])
    return matcher, encoder


def _has_encoder(sd: Mapping[str, Any]) -> bool:
    return any(k.startswith("encoder.dinov2.") for k in sd)


def load_state_strict(model, sd: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``sd`` into ``model`` (any ``nn.Module``, also on the meta device: ``assign=True``),
    strictly.

    Raises:
        WeightsError: every missing, unexpected and mis-shaped key listed, ``what`` named.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(sd) & set(expected)
        if tuple(sd[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:

        def fmt(title, items):
            if not items:
                return ""
            shown = "\n    ".join(items[:15])
            more = f"\n    ... and {len(items) - 15} more" if len(items) > 15 else ""
            return f"\n  {title} ({len(items)}):\n    {shown}{more}"

        raise WeightsError(
            f"Weights from {what} do not fit the model (arch {getattr(getattr(model, 'config', None), 'arch_name', '?')}):"
            + fmt("missing keys", missing)
            + fmt("unexpected keys", unexpected)
            + fmt("shape mismatches", shapes)
            + "\nCheck that the file is an L2M/RoMa matcher checkpoint (and that the ViT weights, "
            "passed as encoder_weights, are a DINOv2 state dict of the configured size)."
        )
    model.load_state_dict(sd, strict=True, assign=True)


def _registry_file(entry: WeightsEntry | None) -> bool:
    """A registry entry: its file comes from the entry's URL (the authors' release) and is checked
    against the entry's size and SHA-256 where they are published; trusted like the code."""
    return entry is not None


def encoder_state_dict(encoder_weights: Any, progress: bool = True, trust: bool = False) -> tuple[dict, str]:
    """A DINOv2 ViT state dict (DINOv2's own key layout) and where it came from.

    Args:
        encoder_weights: registry name, path, or a state dict.
    Returns:
        ``(state dict, description)``.
    """
    if isinstance(encoder_weights, Mapping):
        return unwrap_state_dict(encoder_weights), "<encoder state dict>"
    path = resolve(encoder_weights, progress)
    entry = REGISTRY.get(encoder_weights) if isinstance(encoder_weights, str) else None
    return unwrap_state_dict(read_checkpoint(path, trust=trust or _registry_file(entry))), str(path)


@dataclass(frozen=True)
class LoadedWeights:
    """What :func:`load_weights` returns: everything needed to build a matcher, no model.

    Attributes:
        config: the :class:`~l2m_plugin.config.MatcherConfig` to build (after overrides).
        state_dict: the whole model's state dict (matcher and, for DINOv2 networks, the ViT
            mapped to timm keys).
        name: the weights' name (registry name, saved ``weights_name`` or file name).
        source: the file(s) read, for error messages.
    """

    config: MatcherConfig
    state_dict: dict
    name: str
    source: str


def load_weights(
    weights: Any = DEFAULT_WEIGHTS,
    config: MatcherConfig | None = None,
    encoder_weights: Any = None,
    progress: bool = True,
    trust_checkpoint: bool = False,
    **overrides,
) -> LoadedWeights:
    """Resolve, download (registry names only, when not cached) and read weights: the weights
    hub. The model is built from the result by :func:`l2m_plugin.models.matcher.load_matcher`.

    Args:
        weights: registry name (``REGISTRY``), path to a checkpoint file (any layout in the
            module docstring), or a state dict. Default: :data:`DEFAULT_WEIGHTS`
            (``l2m-tiny``, shipped with the package).
        config: matcher config; default: the one saved in an ``l2m_plugin`` checkpoint, else
            the registry entry's preset, else ``PRESETS["l2m"]``. A config carries an
            architecture (``arch``, and ``encoder`` for DINOv2 networks): when the weights'
            own architecture is known (saved config or registry preset) and differs, nothing
            of the config is applied and :class:`ArchitectureMismatchError` names the presets
            that fit (checked before any download).
        encoder_weights: ViT weights for official-layout matchers (which do not contain the
            ViT): registry name, path or state dict. Default: the registry entry's encoder
            (``dinov2l-distilled`` for L2M++).
        progress: show download progress.
        trust_checkpoint: load a file that holds pickled Python objects (runs code; see
            :func:`read_checkpoint`). Registry files are trusted without it.
        **overrides: MatcherConfig fields to change.
    Returns:
        :class:`LoadedWeights`.
    Raises:
        WeightsError: see :func:`download` and :func:`read_checkpoint`.
        ArchitectureMismatchError: ``config`` (after ``overrides``) is for another
            architecture than the weights' known one.
    """
    entry = REGISTRY.get(weights) if isinstance(weights, str) else None
    if entry is not None and entry.kind != "matcher":
        raise WeightsError(f"{weights!r} is a ViT encoder checkpoint, not a matcher; pass it as encoder_weights=.")
    known = PRESETS[entry.preset] if entry is not None and entry.preset else None
    if known is not None and (config is not None or overrides):  # before any download
        wanted = (config or known).replace(**overrides)
        if not wanted.same_network(known):
            raise ArchitectureMismatchError(weights, known, wanted)
    saved_config = None
    if isinstance(weights, Mapping):
        obj, what, label = weights, "<state dict>", "state-dict"
    else:
        path = resolve(weights, progress)
        obj, what = read_checkpoint(path, trust=trust_checkpoint or _registry_file(entry)), str(path)
        label = weights if entry is not None else path.name
    if isinstance(obj, Mapping) and obj.get("format") == _FORMAT:
        saved_config = MatcherConfig.from_dict(obj["config"])
        label = obj.get("weights_name", label)
    elif isinstance(obj, Mapping) and obj.get("format") == TRAIN_FORMAT:
        conf = obj.get("conf") or {}
        saved_config = MatcherConfig.from_dict(conf.get("model") or {})
        run = Path(str((conf.get("train") or {}).get("out") or what)).name
        label = f"{run}-step{int(obj.get('step', 0))}"
    sd = unwrap_state_dict(obj)
    if config is None:
        config = saved_config or PRESETS[entry.preset if entry is not None and entry.preset else "l2m"]
    if overrides:
        config = config.replace(**overrides)
    if saved_config is not None and not config.same_network(saved_config):
        raise ArchitectureMismatchError(str(label), saved_config, config)
    if not any(k.startswith("decoder.") for k in sd):
        shown = ", ".join(sorted(sd)[:5]) + (", ..." if len(sd) > 5 else "")
        raise WeightsError(
            f"{what} is not an L2M / RoMa matcher checkpoint: none of its {len(sd)} keys is a decoder key "
            f"(decoder.*); it holds {shown}. Pass a matcher checkpoint as weights (encoder-only files go "
            "to encoder_weights)."
        )
    uses_dinov2 = config.arch_config.coarse == "dinov2"
    if encoder_weights is None and uses_dinov2 and not _has_encoder(sd):  # official layout: the ViT is a second file
        encoder_weights = entry.encoder if entry is not None else REGISTRY["l2mpp-v2"].encoder
    if encoder_weights is not None:
        enc_sd, enc_what = encoder_state_dict(encoder_weights, progress, trust=trust_checkpoint)
        sd.update(map_dinov2_keys(enc_sd))
        what = f"{what} + {enc_what}"
    return LoadedWeights(config=config, state_dict=sd, name=str(label), source=what)


def save_checkpoint(model, path: str | os.PathLike) -> Path:
    """Save a model as a single ``l2m_plugin`` checkpoint (config + full state dict), atomically."""
    obj = {
        "format": _FORMAT,
        "config": model.config.to_dict(),
        "weights_name": model.weights_name,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return atomic_torch_save(obj, Path(path))


def save_official_layout(model, matcher_path: str | os.PathLike, encoder_path: str | os.PathLike, lightning: bool = False) -> tuple[Path, Path]:
    """Write a model as the authors release it: a RoMa-layout matcher file and a
    DINOv2-layout ViT file (with ``mask_token``). ``lightning=True`` nests the
    matcher under ``state_dict`` with ``model.`` prefixes, like ``l2m++_560x560v2.pth.ckpt``.
    Used to make offline test and demo checkpoints that exercise the official loading path.
    """
    matcher, enc = split_official_layout({k: v.detach().cpu() for k, v in model.state_dict().items()})
    if lightning:
        matcher = {"epoch": 0, "global_step": 0, "state_dict": {"model." + k: v for k, v in matcher.items()}}
    return atomic_torch_save(matcher, Path(matcher_path)), atomic_torch_save(enc, Path(encoder_path))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`l2m_plugin.files.atomic_path` (no half-written file). Returns the path."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)
