"""Shared fixtures: data paths, random weights in the official layout, the romatch reference."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("L2M_SHARED_DATA", REPO.parent / "shared" / "data"))
PAIRS = SHARED_DATA / "pairs"

# Tests use the machine's 2 cores; keep torch from oversubscribing.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def shared_pair(name: str = "sacre_coeur") -> tuple[Path, Path]:
    """The real image pair ../shared/data/pairs/<name>_A/B.jpg, or skip outside this layout."""
    a, b = PAIRS / f"{name}_A.jpg", PAIRS / f"{name}_B.jpg"
    if not (a.is_file() and b.is_file()):
        pytest.skip(f"real image pair not found at {PAIRS} (tests expect ../shared/data beside the repo; set L2M_SHARED_DATA)")
    return a, b


def benchmark_script(name: str):
    """The module ``benchmarks/<name>.py`` (a script, not a package), loaded from its file."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def random_state_dict() -> dict:
    """Full state dict of a seeded random ViT-L/14 L2M (our key layout), BatchNorm statistics
    calibrated on the real pair (synthetic images outside the shared-data layout) so that
    every decoder input visibly changes the output."""
    import numpy as np

    from l2m_plugin.config import PRESETS
    from l2m_plugin.testing.random_init import random_matcher

    a, b = PAIRS / "sacre_coeur_A.jpg", PAIRS / "sacre_coeur_B.jpg"
    if not (a.is_file() and b.is_file()):
        rng = np.random.default_rng(0)
        a, b = (rng.random((120, 160, 3)).astype(np.float32) for _ in range(2))
    # Calibrated with ImageNet-normalised input (the romatch preset): outputs stay
    # non-degenerate under both presets (checked in test_equivalence).
    model = random_matcher(PRESETS["romatch"], seed=0, calibration_images=(a, b), calibration_res=140)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="session")
def official_state_dicts(random_state_dict) -> tuple[dict, dict]:
    """(matcher state dict in RoMa's layout, DINOv2-layout ViT state dict) of the same weights."""
    from l2m_plugin.weights import split_official_layout

    return split_official_layout(random_state_dict)


@pytest.fixture(scope="session")
def official_checkpoint(tmp_path_factory, random_state_dict) -> tuple[Path, Path]:
    """The random weights written as the authors release them: Lightning v2 .ckpt + DINOv2 file."""
    from l2m_plugin.models.matcher import load_matcher
    from l2m_plugin.weights import save_official_layout

    model = load_matcher(random_state_dict)
    d = tmp_path_factory.mktemp("official")
    return save_official_layout(model, d / "l2m++_560x560v2.pth.ckpt", d / "dinov2l_distilled.pth", lightning=True)


def make_model(state_dict: dict, **config):
    """An L2M sharing ``state_dict``'s tensors (fast: no random init), with config overrides."""
    from l2m_plugin.config import MatcherConfig
    from l2m_plugin.models.matcher import load_matcher

    return load_matcher(state_dict, config=MatcherConfig(**config))


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the rendezvous of the DDP tests)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
