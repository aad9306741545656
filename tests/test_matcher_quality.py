"""``benchmarks/matcher_quality.py``: the epipolar scores that check real pairs without ground truth.

A rectified stereo pair (F of a pure x-translation: epipolar lines are the image rows), so
the symmetric epipolar distance of a match is exactly its row difference.
"""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import benchmark_script

# x1^T F x0 = y0 - y1 for a camera moved along x (rectified pair).
F_RECTIFIED = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def _script():
    return benchmark_script("matcher_quality")


def test_symmetric_epipolar_distance_is_the_row_difference():
    mod = _script()
    rng = np.random.default_rng(0)
    kp0 = rng.uniform(0, 640, (50, 2))
    dy = rng.uniform(-6, 6, 50)
    kp1 = np.c_[kp0[:, 0] - rng.uniform(0, 80, 50), kp0[:, 1] + dy]  # any disparity along the row
    np.testing.assert_allclose(mod._sym_epipolar_px(F_RECTIFIED, kp0, kp1), np.abs(dy), atol=1e-9)
    # The distance does not depend on F's scale.
    np.testing.assert_allclose(mod._sym_epipolar_px(7.5 * F_RECTIFIED, kp0, kp1), np.abs(dy), atol=1e-9)


def test_epipolar_precision_counts_and_shares():
    mod = _script()
    e = np.array([0.5, 1.0, 2.0, 3.0, 5.0, 9.0, 20.0, 0.1])
    q = mod._epipolar_precision(e)
    assert q["matches"] == 8
    assert q["median_px"] == pytest.approx(2.5)
    assert q["within_2px"] == pytest.approx(4 / 8)  # 0.1, 0.5, 1, 2
    assert q["within_5px"] == pytest.approx(6 / 8)
    assert mod._epipolar_precision(np.zeros(0)) == {"matches": 0}
