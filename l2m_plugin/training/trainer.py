"""Stage-2 training of the L2M matcher: the decoder (and optionally the CNN) on dense pairs.

L2M (ICCV 2025, Sec. 3.3) trains, in its second stage, a RoMa-architecture decoder on
pairs synthesised from single images, with the (stage-1, 3D-aware) encoder frozen; the
objective and optimisation follow RoMa (``romatch/train/train.py`` ``train_step``,
``experiments/train_roma_outdoor.py``): AdamW with an encoder and a decoder parameter
group whose learning rates scale with the global batch (``lr * batch / 8``), weight
decay 0.01, gradient-norm clipping, mixed precision, a step decay at 90% of training.

A run lives in one folder (``train.out``)::

    config.yaml               the resolved configuration (glue-factory style)
    log.csv                   one row per logged step (rank 0)
    tensorboard/              when torch.utils.tensorboard imports
    checkpoints/step_XXXXXXX.pt   full training state (atomic writes, the last few kept)
    model.pth                 the final model for inference: ``L2M.from_pretrained(path)``
    model_step_XXXXXXX.pth    the model where a run stopped early (``train.stop_at``), same format

A folder holding a run of another configuration is refused unless ``overwrite``; one
with the same configuration is resumed from its last checkpoint. A resumed run ends
with the same weights as an uninterrupted one: the data of a step depend only on the
seed and the step (:class:`~l2m_plugin.training.data.StepSampler`) and every RNG state
is checkpointed.

Distributed: launched by ``torchrun`` (``WORLD_SIZE`` > 1) the trainer joins a process
group (gloo on CPU, nccl on CUDA), wraps the model in DistributedDataParallel and gives
each rank its own block of every global batch; only rank 0 writes files and shows a
progress bar.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from l2m_plugin.config import MatcherConfig
from l2m_plugin.files import atomic_text, config_diff
from l2m_plugin.hardware import cpu_bf16_support
from l2m_plugin.models.matcher import L2M, load_matcher
from l2m_plugin.synthesis.homography import HomographyConfig
from l2m_plugin.training.data import (
    ConcatPairs,
    HomographyPairs,
    MegaDepthPairs,
    StepSampler,
    SynthPairs,
)
from l2m_plugin.training.losses import LossConfig, RobustLoss
from l2m_plugin.weights import (
    TRAIN_FORMAT,
    atomic_torch_save,
    encoder_state_dict,
    map_dinov2_keys,
    save_checkpoint,
)

__all__ = ["TrainConfigError", "DEFAULT_CONF", "load_conf", "build_model", "build_dataset", "Trainer", "train_stage2"]

logger = logging.getLogger(__name__)

#: Every key a stage-2 configuration may set, with its default (``???``: required).
DEFAULT_CONF: dict[str, Any] = {
    "model": {},                    # MatcherConfig fields (the exported model's config); {}: its defaults
    "data": {
        "kind": "synth",            # synth | megadepth
        "root": "???",
        "size": [320, 320],         # (H, W) training size
        "hflip": 0.0,
        "num_workers": 0,
        "scene_info": None,         # megadepth: file, folder or list
        "min_overlap": 0.0,
        "max_overlap": 1.0,
        "max_pairs_per_scene": None,
        "rel_depth_tol": 0.05,
        "homography": {             # planar pairs made on the fly, mixed into the synth pairs
            "images": None,         # a folder of photos (None: no homography pairs)
            "share": 0.0,           # fraction of the mixed data set's items
            "split": "train",       # the l2m synth --split rule: never the held-out photos
            "scale": [0.5, 2.0],    # HomographyConfig ranges
            "rotation_deg": 30.0,
            "perspective": 0.1,
        },
    },
    "loss": {"ce_weight": 0.01, "alpha": 0.5, "c": 1.0e-4, "local_dist": {1: 4.0, 2: 4.0, 4: 8.0, 8: 8.0},
             "local_largest_scale": 8, "scale_weights": {16: 1.0, 8: 1.0, 4: 1.0, 2: 1.0, 1: 1.0},
             "coarse_weight": 1.0},
    "train": {
        "out": "???",
        "steps": 1000,
        "batch_size": 8,            # per process
        "seed": 0,
        "lr_decoder": 1.0e-4,       # per 8 samples of global batch (RoMa)
        "lr_encoder": 5.0e-6,
        "scale_lr_with_batch": True,
        "weight_decay": 0.01,
        "warmup_steps": 0,
        "schedule": "step",         # step | cosine | constant
        "milestones": [0.9],        # fractions of steps (step schedule)
        "gamma": 0.1,
        "min_lr_ratio": 0.0,        # cosine floor
        "grad_clip": 0.01,
        "amp": "auto",              # auto | bf16 | fp16 | none
        "freeze_encoder": False,
        "symmetric": False,
        "init_weights": None,       # a matcher to start from: registry name or path
        "encoder_init": None,       # a matcher whose encoder (only) starts this run, e.g. a stage-1 result
        "encoder_weights": None,    # DINOv2 weights for arch roma (name or path)
        "cnn_init": "none",         # none | imagenet (VGG19-BN from torchvision, RoMa's start)
        "device": "auto",
        "checkpoint_every": 500,
        "keep_checkpoints": 2,
        "log_every": 10,
        "threads": None,
        "progress": True,
        "tensorboard": True,
        "stop_at": None,            # stop (with a checkpoint) after this step: simulates an interruption
    },
}

#: Keys that do not change what is computed: ignored when comparing with a run's saved config.
RUN_CONTROL_KEYS = frozenset(
    {"data.root", "data.num_workers", "train.out", "train.checkpoint_every", "train.keep_checkpoints",
     "train.log_every", "train.threads", "train.progress", "train.tensorboard", "train.stop_at"}
)  # fmt: skip


class TrainConfigError(ValueError):
    """An invalid training configuration, or an output folder holding another run."""


def load_conf(path=None, overrides: list[str] | None = None):
    """The resolved configuration: :data:`DEFAULT_CONF`, then the YAML file, then ``key=value`` overrides.

    Returns:
        an OmegaConf ``DictConfig``.
    Raises:
        TrainConfigError: unknown keys (the message names the file or override), or
            a required key (``data.root``, ``train.out``) left unset.
    """
    from omegaconf import OmegaConf

    conf = merge_conf(DEFAULT_CONF, path, overrides, required=(("data", "root"), ("train", "out")))
    try:
        MatcherConfig.from_dict(OmegaConf.to_container(conf.model, resolve=True))
        LossConfig.from_dict(OmegaConf.to_container(conf.loss, resolve=True))
    except (ValueError, TypeError) as exc:
        raise TrainConfigError(f"{path or 'configuration'} (model / loss section): {exc}") from None
    t = conf.train
    if t.cnn_init not in ("none", "imagenet"):
        raise TrainConfigError(f"train.cnn_init must be none or imagenet, got {t.cnn_init!r}")
    if t.amp not in ("auto", "bf16", "fp16", "none"):
        raise TrainConfigError(f"train.amp must be auto, bf16, fp16 or none, got {t.amp!r}")
    if t.schedule not in ("step", "cosine", "constant"):
        raise TrainConfigError(f"train.schedule must be step, cosine or constant, got {t.schedule!r}")
    if conf.data.kind not in ("synth", "megadepth"):
        raise TrainConfigError(f"data.kind must be synth or megadepth, got {conf.data.kind!r}")
    for key in ("steps", "batch_size", "warmup_steps", "checkpoint_every", "log_every", "stop_at"):
        value = t.get(key)
        if value is None and key == "stop_at":
            continue
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise TrainConfigError(f"train.{key} must be an integer, got {value!r}") from None
        if number < (0 if key == "warmup_steps" else 1):
            raise TrainConfigError(f"train.{key} must be >= {0 if key == 'warmup_steps' else 1}, got {number}")
    for key in ("lr_decoder", "lr_encoder", "weight_decay", "grad_clip"):
        try:
            float(t.get(key))
        except (TypeError, ValueError):
            raise TrainConfigError(f"train.{key} must be a number, got {t.get(key)!r}") from None
    return conf


def merge_conf(defaults: dict, path=None, overrides: list[str] | None = None, *, required=(), free=("model",)):
    """``defaults``, then the YAML file at ``path``, then ``key=value`` overrides, as an
    OmegaConf ``DictConfig`` in struct mode (unknown keys refused), except the sections in
    ``free`` (e.g. ``model``: MatcherConfig fields), which the caller checks.

    Raises:
        TrainConfigError: unknown keys or unreadable YAML (the message names the file or
            override), or a ``(section, key)`` of ``required`` left unset.
    """
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    conf = OmegaConf.create(defaults)
    OmegaConf.set_struct(conf, True)
    for section in free:
        OmegaConf.set_struct(conf[section], False)
    try:
        if path is not None:
            conf = OmegaConf.merge(conf, OmegaConf.load(path))
        if overrides:
            conf = OmegaConf.merge(conf, OmegaConf.from_dotlist(list(overrides)))
    except (OmegaConfBaseException, OSError, yaml.YAMLError) as exc:
        where = " with ".join(x for x in (str(path) if path else "", f"overrides {overrides}" if overrides else "") if x)
        raise TrainConfigError(f"{where}: {exc}".replace("\n", " ")) from None
    for section, key in required:
        if OmegaConf.is_missing(conf[section], key):
            raise TrainConfigError(f"{section}.{key} is required: pass {section}.{key}=PATH")
    return conf


def imagenet_vgg19_bn_state_dict(progress: bool = True) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet VGG19-BN weights (``IMAGENET1K_V1``, downloaded to the torch hub
    cache) as ``encoder.cnn.layers.<i>.*`` keys: RoMa's VGG is ``vgg19_bn().features[:40]``."""
    from torchvision.models import VGG19_BN_Weights

    sd = VGG19_BN_Weights.IMAGENET1K_V1.get_state_dict(progress=progress)
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] == "features" and int(parts[1]) < 40:
            out["encoder.cnn.layers." + ".".join(parts[1:])] = v
    return out


def build_model(conf) -> nn.Module:
    """The :class:`~l2m_plugin.L2M` to train, from ``conf.model`` (a MatcherConfig) and
    ``train.init_weights`` (a whole matcher), else random weights seeded by ``train.seed``
    with ``train.encoder_weights`` (DINOv2), ``train.encoder_init`` (the encoder of another
    matcher of the same architecture, e.g. a stage-1 result: ``l2m train stage1``) and
    ``train.cnn_init`` (ImageNet VGG19-BN).

    Raises:
        TrainConfigError: weights that do not fit the architecture.
        l2m_plugin.weights.WeightsError: unreadable or mismatching weights.
    """
    from omegaconf import OmegaConf

    cfg = MatcherConfig.from_dict(OmegaConf.to_container(conf.model, resolve=True))
    arch = cfg.arch_config
    t = conf.train
    torch.manual_seed(int(t.seed))
    if t.get("encoder_init") and t.init_weights:
        raise TrainConfigError("train.encoder_init and train.init_weights exclude each other")
    if t.init_weights:
        return load_matcher(t.init_weights, config=cfg, encoder_weights=t.encoder_weights or None)
    model = L2M(cfg, weights_name="stage2")
    if t.encoder_weights:
        if arch.coarse != "dinov2":
            raise TrainConfigError("train.encoder_weights are DINOv2 weights: only for model.arch with coarse='dinov2'")
        sd, _ = encoder_state_dict(t.encoder_weights, progress=True)
        missing, unexpected = model.load_state_dict(map_dinov2_keys(sd), strict=False)
        if unexpected or any(k.startswith("encoder.dinov2.") for k in missing):
            raise TrainConfigError(f"train.encoder_weights={t.encoder_weights!r} do not fit the {cfg.encoder} ViT")
    if t.get("encoder_init"):
        src = load_matcher(t.encoder_init)
        if src.config.arch_config != arch or (arch.coarse == "dinov2" and src.config.encoder != cfg.encoder):
            raise TrainConfigError(
                f"train.encoder_init={t.encoder_init!r} has another architecture than model "
                f"({src.config.arch} / {src.config.encoder} vs {cfg.arch} / {cfg.encoder})"
            )
        model.encoder.load_state_dict(src.encoder.state_dict())
    if t.cnn_init == "imagenet":
        if arch.cnn != "vgg19":
            raise TrainConfigError("train.cnn_init=imagenet loads VGG19-BN weights: only for model.arch with cnn='vgg19'")
        model.load_state_dict(imagenet_vgg19_bn_state_dict(), strict=False)
    return model


def build_dataset(conf, seed: int):
    """The training data set of ``conf.data`` (:class:`SynthPairs` or :class:`MegaDepthPairs`),
    with :class:`HomographyPairs` mixed in when ``data.homography.images`` is set: they make
    up ``data.homography.share`` of the items (:class:`ConcatPairs`)."""

    d = conf.data
    size = tuple(d.size) if not isinstance(d.size, int) else (d.size, d.size)
    if d.kind == "synth":
        from omegaconf import OmegaConf

        root = [str(r) for r in d.root] if OmegaConf.is_list(d.root) else d.root
        base = SynthPairs(root, size, hflip=d.hflip, seed=seed)
        hom = d.get("homography") or {}
        if not hom.get("images") or not float(hom.get("share", 0.0)) > 0:
            return base
        share = float(hom.share)
        if not share < 1:
            raise TrainConfigError(f"data.homography.share must be in [0, 1), got {share}")

        hconf = HomographyConfig(scale=tuple(hom.scale), rotation_deg=float(hom.rotation_deg), perspective=float(hom.perspective))
        n = max(1, round(len(base) * share / (1 - share)))
        return ConcatPairs([base, HomographyPairs(hom.images, size, split=hom.split, length=n, config=hconf, hflip=d.hflip, seed=seed)])
    scene_info = d.scene_info if d.scene_info is not None else Path(d.root) / "prep_scene_info"
    if not isinstance(scene_info, (str, Path)):
        scene_info = list(scene_info)
    return MegaDepthPairs(
        d.root, scene_info, size, min_overlap=d.min_overlap, max_overlap=d.max_overlap,
        max_pairs_per_scene=d.max_pairs_per_scene, rel_depth_tol=d.rel_depth_tol, hflip=d.hflip, seed=seed,
    )  # fmt: skip


class _TrainForward(nn.Module):
    """Makes :meth:`L2M.forward_train` the module's forward, so DistributedDataParallel sees it."""

    def __init__(self, model: nn.Module, symmetric: bool, train_encoder: bool):
        super().__init__()
        self.model = model
        self.symmetric = symmetric
        self.train_encoder = train_encoder

    def forward(self, image0: torch.Tensor, image1: torch.Tensor) -> dict:
        return self.model.forward_train(
            {"image0": image0, "image1": image1}, symmetric=self.symmetric, train_encoder=self.train_encoder
        )


def _lr_lambda(t) -> Any:
    steps, warm = int(t.steps), int(t.warmup_steps)
    milestones = [int(m * steps) if m <= 1 else int(m) for m in t.milestones]

    def f(step: int) -> float:
        w = min(1.0, (step + 1) / warm) if warm > 0 else 1.0
        if t.schedule == "constant":
            return w
        if t.schedule == "step":
            return w * float(t.gamma) ** sum(step >= m for m in milestones)
        progress = min(1.0, max(0, step - warm) / max(1, steps - warm))
        floor = float(t.min_lr_ratio)
        return w * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))

    return f


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """One stage-2 training run (see the module docstring).

    Args:
        conf: a configuration from :func:`load_conf` (an OmegaConf DictConfig) or a plain dict
            (merged onto :data:`DEFAULT_CONF`).
        overwrite: delete the outputs of an earlier run in ``train.out`` and start again
            (without it, a run of the same configuration is resumed and one of another
            configuration refused).

    ``run()`` trains to ``train.steps`` (or ``train.stop_at``) and returns the path of
    ``model.pth`` (or of the last checkpoint when stopped early).

    Raises:
        TrainConfigError: ``train.out`` holds a run of another configuration (the
            differing keys are listed) and ``overwrite`` is False.
    """

    def __init__(self, conf, overwrite: bool = False):
        from omegaconf import DictConfig, OmegaConf

        if not isinstance(conf, DictConfig):
            conf = OmegaConf.merge(OmegaConf.create(self.default_conf), OmegaConf.create(conf))
        self.conf = conf
        self.resolved = OmegaConf.to_container(conf, resolve=True)
        self.out = Path(conf.train.out)
        self.overwrite = overwrite
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    # ------------------------------------------------------------ set-up
    def _device(self) -> torch.device:
        want = self.conf.train.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if want == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return torch.device(want)

    def _amp(self, device: torch.device) -> tuple[torch.dtype | None, bool]:
        """(autocast dtype or None, use a GradScaler)."""
        amp = self.conf.train.amp
        if amp == "none":
            return None, False
        if device.type == "cuda":
            if amp == "auto":
                amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            return (torch.bfloat16, False) if amp == "bf16" else (torch.float16, True)
        if amp == "fp16":
            raise TrainConfigError("train.amp=fp16 needs CUDA; use bf16 or none on CPU")

        if amp == "auto" and cpu_bf16_support() not in ("amx", "avx512_bf16"):
            return None, False
        return torch.bfloat16, False

    def _prepare_out(self) -> None:
        """Check ``train.out`` against this configuration; with ``overwrite`` rank 0 deletes the
        outputs of an earlier run there (same configuration or not); rank 0 writes config.yaml."""
        from omegaconf import OmegaConf

        saved = self.out / "config.yaml"
        if saved.is_file() and not self.overwrite:
            old = OmegaConf.to_container(OmegaConf.load(saved), resolve=True)
            diff = config_diff(old, self.resolved, ignore=RUN_CONTROL_KEYS)
            if diff:
                raise TrainConfigError(
                    f"{self.out} holds a run of another configuration ({'; '.join(diff)}). "
                    "Choose another train.out, or pass --overwrite (overwrite=True) to delete that run."
                )
        if self.rank != 0:
            return
        if self.overwrite and saved.is_file():
            logger.warning("--overwrite: deleting the earlier run in %s", self.out)
            for name in ("checkpoints", "tensorboard"):
                shutil.rmtree(self.out / name, ignore_errors=True)
            for name in ("log.csv", "model.pth", "config.yaml"):
                (self.out / name).unlink(missing_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_text(saved, OmegaConf.to_yaml(OmegaConf.create(self.resolved)))

    def _checkpoints(self) -> list[Path]:
        return sorted((self.out / "checkpoints").glob("step_*.pt"))

    # ------------------------------------------------------------ state
    def _state(self, step: int) -> dict:
        return {
            "format": TRAIN_FORMAT,
            "conf": self.resolved,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": step,
            "rng": _rng_state(),
        }

    def save_checkpoint(self, step: int) -> Path:
        """Write the full training state at ``step`` (rank 0; atomic) and prune old checkpoints."""
        path = self.out / "checkpoints" / f"step_{step:07d}.pt"
        if self.rank == 0:
            atomic_torch_save(self._state(step), path)
            keep = max(1, int(self.conf.train.keep_checkpoints))
            for old in self._checkpoints()[:-keep]:
                old.unlink(missing_ok=True)
        return path

    def _load_checkpoint(self, path: Path) -> int:
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        return int(state["step"])

    def export(self, path: Path | None = None, step: int | None = None) -> Path:
        """Write the model for inference (config + weights, ``l2m_plugin`` format; loads with
        :meth:`L2M.from_pretrained`). Rank 0 writes; returns the path."""

        path = path or self.out / "model.pth"
        if self.rank == 0:
            self.model.weights_name = f"{self.out.name}-step{int(step if step is not None else self.conf.train.steps)}"
            save_checkpoint(self.model, path)
        return path

    # ------------------------------------------------------------ logging
    def _open_logs(self, start: int):
        self._csv_path = self.out / "log.csv"
        self._csv_fields: list[str] | None = None
        if self._csv_path.is_file():  # drop rows after the resumed step (written after the last checkpoint)
            with open(self._csv_path, newline="") as f:
                rows = list(csv.DictReader(f))
            if rows:
                self._csv_fields = list(rows[0].keys())
            kept = [r for r in rows if int(r["step"]) <= start]
            with open(self._csv_path, "w", newline="") as f:
                if self._csv_fields:
                    w = csv.DictWriter(f, fieldnames=self._csv_fields)
                    w.writeheader()
                    w.writerows(kept)
        self._tb = None
        if self.conf.train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=start + 1)
            except ImportError:
                logger.info("TensorBoard is not installed: logging to %s only", self._csv_path)

    def _log(self, step: int, row: dict) -> None:
        row = {"step": step, **row}
        if self._csv_fields is None:
            self._csv_fields = list(row)
            with open(self._csv_path, "w", newline="") as f:
                csv.DictWriter(f, fieldnames=self._csv_fields).writeheader()
        with open(self._csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self._csv_fields, extrasaction="ignore").writerow(row)
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    # ------------------------------------------------------------ stage hooks
    default_conf = DEFAULT_CONF
    stage = "stage2"
    rate_name = "pairs"

    def _build(self, device: torch.device) -> list[dict]:
        """Build ``self.model`` on ``device``, freeze what is not trained, and return the
        optimiser's parameter groups (dicts with ``params``, ``lr``, ``name``)."""
        from omegaconf import OmegaConf

        t = self.conf.train
        self.model = build_model(self.conf).to(device)
        self.model.train()
        self.train_encoder = not bool(t.freeze_encoder)
        enc = self.model.encoder
        for name, p in enc.named_parameters():
            if not self.train_encoder or name.startswith("dinov2."):  # RoMa never trains DINOv2
                p.requires_grad_(False)
        if not self.train_encoder:
            enc.eval()  # frozen BatchNorm statistics too
        scale = int(t.batch_size) * self.world / 8 if t.scale_lr_with_batch else 1.0
        enc_params = [p for p in enc.parameters() if p.requires_grad]
        groups = [{"params": list(self.model.decoder.parameters()), "lr": float(t.lr_decoder) * scale, "name": "decoder"}]
        if enc_params:
            groups.append({"params": enc_params, "lr": float(t.lr_encoder) * scale, "name": "encoder"})
        self.loss_fn = RobustLoss(LossConfig.from_dict(OmegaConf.to_container(self.conf.loss, resolve=True)))
        return groups

    def _prepare_data(self, device: torch.device, distributed: bool) -> None:
        """Make what the data set reads, before it is opened (stage 2: nothing)."""

    def _make_dataset(self, seed: int):
        return build_dataset(self.conf, seed)

    def _make_net(self) -> nn.Module:
        """The module whose forward the loop calls (what DistributedDataParallel wraps)."""
        return _TrainForward(self.model, bool(self.conf.train.symmetric), self.train_encoder)

    def _compute_loss(self, net: nn.Module, batch: dict, device: torch.device, autocast) -> tuple:
        """``(loss, stats dict of floats, items in the batch)`` of one step."""
        x0 = batch["image0"].to(device, non_blocking=True)
        x1 = batch["image1"].to(device, non_blocking=True)
        warp, valid = batch["warp0"].to(device), batch["valid0"].to(device)
        if self.conf.train.symmetric:
            warp = torch.cat((warp, batch["warp1"].to(device)))
            valid = torch.cat((valid, batch["valid1"].to(device)))
        with autocast:
            out = net(x0, x1)
        loss, stats = self.loss_fn(out, warp, valid)
        return loss, stats, x0.shape[0]

    @staticmethod
    def _postfix(stats: dict) -> dict:
        return {"loss": f"{stats['loss']:.3f}", "epe_px": f"{stats.get('epe_px', float('nan')):.2f}"}

    # ------------------------------------------------------------ run
    def run(self) -> Path:
        from tqdm import tqdm

        t = self.conf.train
        if t.threads:
            torch.set_num_threads(int(t.threads))
        distributed = self.world > 1
        device = self._device()
        if distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        self._prepare_out()
        if distributed:
            dist.barrier()

        seed = int(t.seed)
        random.seed(seed)
        np.random.seed(seed)
        groups = self._build(device)
        self.optimizer = torch.optim.AdamW(groups, weight_decay=float(t.weight_decay))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(t))
        amp_dtype, use_scaler = self._amp(device)
        self.scaler = torch.amp.GradScaler(device.type) if use_scaler else None

        start = 0
        for ckpt in reversed(self._checkpoints()):  # newest first; an unreadable one is skipped
            try:
                start = self._load_checkpoint(ckpt)
            except Exception as exc:  # truncated or corrupt (a crash or a full disk while copying)
                logger.warning("checkpoint %s is unreadable (%s: %s); trying the previous one",
                               ckpt, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")  # fmt: skip
                continue
            logger.info("resuming %s from %s (step %d)", self.out, ckpt.name, start)
            break
        steps = int(t.steps)
        if start >= steps and (self.out / "model.pth").is_file():
            logger.info("%s is complete (step %d); nothing to do", self.out, start)
            return self.out / "model.pth"
        stop = min(steps, int(t.stop_at)) if t.stop_at is not None else steps

        self._prepare_data(device, distributed)
        dataset = self._make_dataset(seed)
        sampler = StepSampler(len(dataset), int(t.batch_size), seed=seed, rank=self.rank, world_size=self.world,
                              start_step=start, steps=stop)  # fmt: skip
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler, num_workers=int(self.conf.data.num_workers),
            pin_memory=device.type == "cuda", persistent_workers=False,
        )  # fmt: skip
        net = self._make_net()
        if distributed:
            net = nn.parallel.DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=True
            )
        if self.rank == 0:
            self._open_logs(start)
        params = [p for g in groups for p in g["params"]]
        autocast = (
            torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
        )
        logger.info(
            "training %s: steps %d..%d, %d process(es) x batch %d, device %s, amp %s, %d trainable parameters",
            self.out, start, stop, self.world, int(t.batch_size), device, amp_dtype, sum(p.numel() for p in params),
        )  # fmt: skip
        bar = tqdm(total=stop - start, initial=0, disable=self.rank != 0 or not t.progress, desc=self.stage, dynamic_ncols=True)
        step, t_last, seen = start, time.perf_counter(), 0
        for batch in loader:
            loss, stats, n_items = self._compute_loss(net, batch, device, autocast)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, float(t.grad_clip)))
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            elif math.isfinite(grad_norm):
                self.optimizer.step()
            else:
                logger.warning("step %d: non-finite gradient norm, update skipped", step)
            self.scheduler.step()
            step += 1
            seen += n_items * self.world
            bar.update(1)
            if self.rank == 0 and (step % int(t.log_every) == 0 or step == stop):
                now = time.perf_counter()
                lrs = {f"lr_{g['name']}": g["lr"] for g in self.optimizer.param_groups}
                self._log(step, {**stats, "grad_norm": grad_norm, **lrs, f"{self.rate_name}_per_s": seen / max(now - t_last, 1e-9)})
                bar.set_postfix(self._postfix(stats))
                t_last, seen = now, 0
            if step % int(t.checkpoint_every) == 0 or step == stop:
                self.save_checkpoint(step)
        bar.close()
        if self._tb_open():
            self._tb.close()
        if distributed:  # BatchNorm statistics are per rank: take rank 0's everywhere
            for b in self.model.buffers():
                dist.broadcast(b, 0)
            dist.barrier()
        if step < steps:
            logger.info("stopped at step %d of %d (train.stop_at); resume with the same configuration", step, steps)
            # the model as it stands, for evaluation (l2m-tiny is such a model: README)
            return self.export(self.out / f"model_step_{step:07d}.pth", step=step)
        path = self.export()
        if distributed:
            dist.barrier()
        return path

    def _tb_open(self) -> bool:
        return self.rank == 0 and getattr(self, "_tb", None) is not None


def train_stage2(conf_path=None, overrides: list[str] | None = None, overwrite: bool = False) -> Path:
    """Load a configuration (:func:`load_conf`) and run it (:class:`Trainer`); returns ``model.pth``."""
    return Trainer(load_conf(conf_path, overrides), overwrite=overwrite).run()
