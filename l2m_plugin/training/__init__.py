"""Training of the L2M matcher: stage 1 (``l2m train stage1``, the 3D-aware encoder) and
stage 2 (``l2m train stage2``, the decoder on dense pairs).

Public API::

    from l2m_plugin.training import SynthPairs, MegaDepthPairs, RobustLoss, Trainer, load_conf
    conf = load_conf("configs/train/stage2_tiny.yaml", ["data.root=DATA", "train.out=runs/tiny"])
    model_path = Trainer(conf).run()          # runs/tiny/model.pth
    model = L2M.from_pretrained(model_path)

Modules: :mod:`.data` (data sets and the step-indexed sampler), :mod:`.losses` (RoMa's
losses), :mod:`.trainer` (optimisation, checkpoints, resume, DDP), :mod:`.stage1` (the
encoder's fine-tuning on lifted features, :mod:`l2m_plugin.lifting`), :mod:`.fixtures`
(tiny data sets for tests).
"""

from l2m_plugin.training.data import DataError, MegaDepthPairs, StepSampler, SynthPairs
from l2m_plugin.training.losses import LossConfig, RobustLoss
from l2m_plugin.training.stage1 import (
    STAGE1_DEFAULT_CONF,
    Stage1Trainer,
    load_stage1_conf,
    train_stage1,
)
from l2m_plugin.training.trainer import (
    DEFAULT_CONF,
    TrainConfigError,
    Trainer,
    build_model,
    load_conf,
    train_stage2,
)

__all__ = [
    "DataError",
    "SynthPairs",
    "MegaDepthPairs",
    "StepSampler",
    "LossConfig",
    "RobustLoss",
    "DEFAULT_CONF",
    "Trainer",
    "TrainConfigError",
    "build_model",
    "load_conf",
    "train_stage2",
    "STAGE1_DEFAULT_CONF",
    "Stage1Trainer",
    "load_stage1_conf",
    "train_stage1",
]
