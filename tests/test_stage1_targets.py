"""``benchmarks/stage1_targets.py``: stage-1 targets scored against the encoder's features.

One textured photo, 2 views at 64 px, a short fit: every row is scored on the same query
cells, the nearest-cell ceiling is exact at stride 8 (a cell centre is at most 4 sqrt(2)
px from any point, so PCK@8 is 1), and the teacher compared with itself scores exactly
the "encoder" row.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from .conftest import benchmark_script


def _script():
    return benchmark_script("stage1_targets")


def test_parse_variant():
    mod = _script()
    assert mod.parse_variant("dim128:feature_dim=128,iters=20") == ("dim128", {"feature_dim": 128, "iters": 20})
    with pytest.raises(ValueError, match="NAME:key=value"):
        mod.parse_variant("feature_dim=128")
    with pytest.raises(ValueError, match="not key=value"):
        mod.parse_variant("a:feature_dim")


def test_missing_photo_folder_is_named(tmp_path, capsys):
    assert _script().main(["--images", str(tmp_path / "none"), "--out", str(tmp_path / "out")]) == 2
    assert f"--images {tmp_path / 'none'} is not a folder" in capsys.readouterr().err


def test_rows_share_queries_and_the_ceiling_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    photos.mkdir()
    img = (rng.random((48, 48, 3)) * 255).astype(np.uint8)  # blocky texture: distinctive cells
    Image.fromarray(img).resize((96, 96), Image.NEAREST).save(photos / "a.png")
    conf = tmp_path / "s1.yaml"
    conf.write_text(
        "data: {images: '???', size: [64, 64], views: 2, split: all}\n"
        "fit: {stride: 4, feature_dim: 8, feature_render_factor: 2, iters: 5}\n"
        "train: {out: '???', init_weights: l2m-tiny, level: 8}\n"
    )
    out = tmp_path / "out"
    mod = _script()
    rc = mod.main(["--images", str(photos), "--conf", str(conf), "--max-images", "1", "--threads", "1",
                   "--variant", "dim16:feature_dim=16", "--compare", "l2m-tiny", "--out", str(out)])  # fmt: skip
    assert rc == 0
    res = json.loads((out / "stage1_targets.json").read_text())
    rows = res["rows"]
    assert set(rows) == {"encoder", "targets:default", "targets:dim16", "encoder:l2m-tiny"}
    points = {r["points"] for r in rows.values()}
    assert len(points) == 1 and points.pop() > 0
    for r in rows.values():
        assert r["ceiling_pck"]["8"] == 1.0 and 0.0 <= r["pck"]["4"] <= r["pck"]["8"] <= r["pck"]["16"] <= 1.0
        assert -1.0 <= r["consistency"] <= 1.0
    # the same encoder through --compare gives the same numbers as the teacher row
    for key in ("median_px", "mutual_share", "consistency"):
        assert rows["encoder:l2m-tiny"][key] == pytest.approx(rows["encoder"][key], abs=1e-6)
    assert rows["targets:dim16"]["fit"] == {"feature_dim": 16}
    assert rows["targets:default"]["fit_feature_l1"] <= rows["targets:default"]["fit_feature_l1_init"] + 1e-6
    assert "| targets:dim16 |" in (out / "stage1_targets.md").read_text()
