"""Stage-2 training of the L2M matcher (``l2m train stage2``).

Public API::

    from l2m_plugin.training import SynthPairs, MegaDepthPairs, RobustLoss, Trainer, load_conf
    conf = load_conf("configs/train/stage2_tiny.yaml", ["data.root=DATA", "train.out=runs/tiny"])
    model_path = Trainer(conf).run()          # runs/tiny/model.pth
    model = L2M.from_pretrained(model_path)

Modules: :mod:`.data` (data sets and the step-indexed sampler), :mod:`.losses` (RoMa's
losses), :mod:`.trainer` (optimisation, checkpoints, resume, DDP), :mod:`.fixtures`
(tiny data sets for tests).
"""

from .data import DataError, MegaDepthPairs, StepSampler, SynthPairs
from .losses import LossConfig, RobustLoss
from .trainer import DEFAULT_CONF, TrainConfigError, Trainer, build_model, load_conf, train_stage2

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
]
