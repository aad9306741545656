"""Stage-1 training of L2M: fine-tune the encoder on features lifted to 3D (``l2m train stage1``).

L2M (ICCV 2025, Sec. 3.2) makes the matcher's encoder 3D-aware before training the
decoder: each single photo is lifted with its depth, novel views are synthesised, a field
of feature Gaussians is fitted to the frozen encoder's features of all views
(:mod:`l2m_plugin.lifting`), and the encoder is fine-tuned so that its features on each
view match the multi-view-consistent features rendered from the field (L1), as FiT3D
(Yue et al., ECCV 2024) does with captured scenes. The authors did not release this code;
this follows the method as the paper and FiT3D describe it.

A run lives in one folder (``train.out``), like stage 2
(:class:`~l2m_plugin.training.Trainer`: ``config.yaml``, ``log.csv``, ``checkpoints/``,
``model.pth``), plus ``fields/`` (the lifted scenes, :mod:`l2m_plugin.lifting.dataset`).
The run first lifts every photo that has no scene yet (resumable; under ``torchrun``
each rank lifts its share), then trains. ``model.pth`` is the whole matcher with the
fine-tuned encoder (its decoder is the one it started with); train a decoder on it with
``l2m train stage2 ... train.encoder_init=RUN/model.pth train.freeze_encoder=true``.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from l2m_plugin.config import MatcherConfig
from l2m_plugin.files import read_jsonl
from l2m_plugin.lifting import FitConfig, LiftedViews, lift_photos
from l2m_plugin.lifting.dataset import encoder_level_features
from l2m_plugin.models.matcher import load_matcher
from l2m_plugin.synthesis import SYNTH_PRESETS
from l2m_plugin.synthesis.generate import RunSettings, SourceLoader, source_listing
from l2m_plugin.training.trainer import RUN_CONTROL_KEYS, TrainConfigError, Trainer, merge_conf

__all__ = ["STAGE1_DEFAULT_CONF", "load_stage1_conf", "Stage1Trainer", "train_stage1"]

logger = logging.getLogger(__name__)

#: Every key a stage-1 configuration may set, with its default (``???``: required).
STAGE1_DEFAULT_CONF: dict[str, Any] = {
    "model": {},                    # MatcherConfig overrides of the loaded matcher ({}: its own config)
    "data": {
        "images": "???",            # folder of single photos (searched recursively)
        "depth": "synthetic",       # synthetic | transformers | a folder of disparity files (as l2m synth)
        "size": [256, 256],         # (H, W) of every view = the encoder's input size in training
        "views": 4,                 # views per photo, the source included
        "preset": "l2m",            # l2m synth preset of the novel views
        "split": "train",           # all | train | heldout (every holdout_every-th photo held out)
        "holdout_every": 10,
        "max_images": None,
        "hflip": 0.5,
        "num_workers": 0,
    },
    "fit": {},                      # l2m_plugin.lifting.FitConfig fields
    "train": {
        "out": "???",
        "init_weights": "l2m-tiny", # the matcher whose encoder is made 3D-aware (registry name or path)
        "level": 8,                 # encoder level lifted and regressed (16: coarse features; l2m-tiny has none)
        "trainable": "all",         # coarse (the stride-16 module / DINOv2) | all (the whole encoder)
        "steps": 500,
        "batch_size": 8,            # views per process
        "seed": 0,
        "loss": "l1",               # l1 (FiT3D) | cosine: 1 - cosine similarity per cell (ours; the metric of matching)
        "lr": 1.0e-5,               # FiT3D fine-tuning: AdamW, lr 1e-5, weight decay 1e-4
        "weight_decay": 1.0e-4,
        "warmup_steps": 0,
        "schedule": "cosine",       # step | cosine | constant
        "milestones": [0.9],
        "gamma": 0.1,
        "min_lr_ratio": 0.0,
        "grad_clip": 1.0,
        "amp": "auto",              # auto | bf16 | fp16 | none
        "device": "auto",
        "checkpoint_every": 100,
        "keep_checkpoints": 2,
        "log_every": 10,
        "threads": None,
        "progress": True,
        "tensorboard": True,
        "stop_at": None,
    },
}

_STAGE1_CONTROL = RUN_CONTROL_KEYS | {"data.images", "data.max_images"}


def load_stage1_conf(path=None, overrides: list[str] | None = None):
    """:data:`STAGE1_DEFAULT_CONF`, then the YAML file, then ``key=value`` overrides.

    Raises:
        TrainConfigError: unknown keys, bad values, or ``data.images`` / ``train.out`` unset.
    """
    from omegaconf import OmegaConf

    conf = merge_conf(STAGE1_DEFAULT_CONF, path, overrides, required=(("data", "images"), ("train", "out")),
                      free=("model", "fit"))
    try:
        FitConfig.from_dict(OmegaConf.to_container(conf.fit, resolve=True))
        if conf.model:
            MatcherConfig.from_dict(OmegaConf.to_container(conf.model, resolve=True))
    except (ValueError, TypeError) as exc:
        raise TrainConfigError(f"{path or 'configuration'} (model / fit section): {exc}") from None
    d, t = conf.data, conf.train
    if d.preset not in SYNTH_PRESETS:
        raise TrainConfigError(f"data.preset must be one of {sorted(SYNTH_PRESETS)}, got {d.preset!r}")
    if int(d.views) < 2:
        raise TrainConfigError(f"data.views must be >= 2 (the source and a novel view), got {d.views}")
    if t.trainable not in ("coarse", "all"):
        raise TrainConfigError(f"train.trainable must be coarse or all, got {t.trainable!r}")
    if int(t.level) not in (1, 2, 4, 8, 16):
        raise TrainConfigError(f"train.level must be 16 or a CNN stride (1, 2, 4, 8), got {t.level}")
    if t.trainable == "coarse" and int(t.level) != 16:
        raise TrainConfigError("train.trainable=coarse trains the stride-16 module: use train.level=16, or trainable=all")
    if t.loss not in ("l1", "cosine"):
        raise TrainConfigError(f"train.loss must be l1 or cosine, got {t.loss!r}")
    if t.amp not in ("auto", "bf16", "fp16", "none"):
        raise TrainConfigError(f"train.amp must be auto, bf16, fp16 or none, got {t.amp!r}")
    if t.schedule not in ("step", "cosine", "constant"):
        raise TrainConfigError(f"train.schedule must be step, cosine or constant, got {t.schedule!r}")
    if int(t.steps) < 1 or int(t.batch_size) < 1:
        raise TrainConfigError("train.steps and train.batch_size must be >= 1")
    return conf


class _EncoderLevel(nn.Module):
    """The encoder's features at one level for a batch of [0, 1] images (what DDP wraps)."""

    def __init__(self, model, level: int):
        super().__init__()
        self.model = model
        self.encoder = model.encoder
        self.level = level

    def forward(self, x: torch.Tensor) -> torch.Tensor:

        return encoder_level_features(self.encoder, self.model.preprocess(x, tuple(x.shape[-2:])), self.level)


class Stage1Trainer(Trainer):
    """One stage-1 run (see the module docstring); the interface of :class:`Trainer`.

    Args:
        conf: from :func:`load_stage1_conf` (or a plain dict merged onto the defaults).
        overwrite: delete an earlier run in ``train.out`` (its lifted scenes too).

    Raises:
        TrainConfigError: ``train.out`` holds a run of another configuration.
    """

    default_conf = STAGE1_DEFAULT_CONF
    stage = "stage1"
    rate_name = "views"

    def _prepare_out(self) -> None:
        import shutil

        if self.overwrite and self.rank == 0 and (self.out / "config.yaml").is_file():
            shutil.rmtree(self.out / "fields", ignore_errors=True)
        super()._prepare_out()

    def _load_init(self):
        """The matcher of ``train.init_weights`` with the ``model`` overrides (same architecture)."""
        from omegaconf import OmegaConf

        overrides = OmegaConf.to_container(self.conf.model, resolve=True) if self.conf.model else {}
        if "arch" in overrides:
            raise TrainConfigError("model.arch: stage 1 keeps the architecture of train.init_weights")
        return load_matcher(self.conf.train.init_weights, **overrides)

    def _build(self, device: torch.device) -> list[dict]:
        t = self.conf.train
        torch.manual_seed(int(t.seed))
        model = self._load_init()
        self.model = model.to(device)
        # the whole matcher in eval mode: BatchNorm statistics stay those of the start
        # (the gradients still flow); the decoder is not used
        self.model.eval()
        self.model.requires_grad_(False)
        enc = self.model.encoder
        if t.trainable == "all":
            trainable = enc
        elif enc.coarse_kind == "none":
            raise TrainConfigError(
                f"train.trainable=coarse: the {self.model.config.arch_name} architecture has no stride-16 "
                "module (its coarse matcher works on the stride-8 CNN level); use train.level=8 train.trainable=all"
            )
        else:
            trainable = enc.dinov2 if enc.coarse_kind == "dinov2" else enc.coarse
        trainable.requires_grad_(True)
        params = list(trainable.parameters())
        self.level = int(t.level)
        return [{"params": params, "lr": float(t.lr), "name": "encoder"}]

    def _prepare_data(self, device: torch.device, distributed: bool) -> None:
        """Lift every photo without a scene in ``fields/`` (each rank its share), with the
        *initial* encoder: the targets do not move while the encoder trains."""
        from omegaconf import OmegaConf

        d = self.conf.data
        fields = self.out / "fields"
        h, w = (int(v) for v in d.size)
        settings = RunSettings(images=str(d.images), depth=str(d.depth), size=f"{w}x{h}",
                               max_images=d.max_images, seed=int(self.conf.train.seed), split=str(d.split),
                               holdout_every=int(d.holdout_every))  # fmt: skip
        names = source_listing(settings)
        have = {int(p.stem) for p in (fields / "scenes").glob("[0-9]*[0-9].npz")}
        failed = {rec["index"] for rec in read_jsonl(fields / "failures.jsonl")}  # [] when absent
        todo = [i for i in range(len(names)) if i not in have and i not in failed and i % self.world == self.rank]
        if todo:
            # lift with the initial encoder (a copy: a resumed run's model holds trained weights)
            teacher = self._load_init() if self._resumed else copy.deepcopy(self.model)
            teacher = teacher.to(device).eval()
            synth_conf = SYNTH_PRESETS[str(d.preset)]
            loader = SourceLoader(settings, synth_conf)
            fit_conf = FitConfig.from_dict(OmegaConf.to_container(self.conf.fit, resolve=True))
            s = lift_photos(teacher, names, loader, fields, views=int(d.views), synth_conf=synth_conf,
                            fit_conf=fit_conf, level=int(self.conf.train.level), seed=int(self.conf.train.seed),
                            indices=todo, progress=self.rank == 0 and bool(self.conf.train.progress))  # fmt: skip
            logger.info("stage 1 lifting (rank %d): %d scenes written, %d failed, %.1f s per scene", self.rank,
                        s["written"], len(s["failed"]), s["seconds"] / max(1, s["written"]))  # fmt: skip
            del teacher
        if distributed:
            dist.barrier()

    def _load_checkpoint(self, path):
        self._resumed = True
        return super()._load_checkpoint(path)

    _resumed = False

    def _make_dataset(self, seed: int):

        return LiftedViews(self.out / "fields", hflip=float(self.conf.data.hflip), seed=seed)

    def _make_net(self) -> nn.Module:
        return _EncoderLevel(self.model, self.level)

    def _compute_loss(self, net: nn.Module, batch: dict, device: torch.device, autocast) -> tuple:
        x = batch["image"].to(device, non_blocking=True)
        target = batch["target"].to(device)
        valid = batch["valid"].to(device)
        with autocast:
            pred = net(x)
        pred = pred.float()
        if pred.shape != target.shape:
            raise TrainConfigError(
                f"encoder features {tuple(pred.shape)} and lifted targets {tuple(target.shape)} differ: "
                "the scenes in fields/ were made for another size or level"
            )
        m = valid[:, None].float()
        n = (m.sum() * pred.shape[1]).clamp_min(1.0)
        l1 = ((pred - target).abs() * m).sum() / n
        use_cos = self.conf.train.loss == "cosine"
        with torch.set_grad_enabled(torch.is_grad_enabled() and use_cos):  # logged only, under train.loss=l1
            cos_map = torch.nn.functional.cosine_similarity(pred, target, dim=1)
            cos = (cos_map * valid).sum() / valid.sum().clamp_min(1)
        loss = 1.0 - cos if use_cos else l1
        stats = {"loss": float(loss.detach()), "l1": float(l1.detach()), "cosine": float(cos.detach()),
                 "valid_fraction": float(valid.float().mean())}  # fmt: skip
        return loss, stats, x.shape[0]

    @staticmethod
    def _postfix(stats: dict) -> dict:
        return {"l1": f"{stats['l1']:.4f}", "cos": f"{stats['cosine']:.3f}"}


def train_stage1(conf_path=None, overrides: list[str] | None = None, overwrite: bool = False):
    """Load a configuration (:func:`load_stage1_conf`) and run it (:class:`Stage1Trainer`);
    returns the path of ``model.pth``."""
    return Stage1Trainer(load_stage1_conf(conf_path, overrides), overwrite=overwrite).run()
