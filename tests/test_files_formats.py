"""The core file helpers (atomic writes, JSON Lines, the config guard) and the file formats'
coordinate conventions: the Python side speaks COLMAP pixels, hloc's files hold hloc's."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pytest
import torch

from l2m_plugin.files import (
    append_jsonl,
    atomic_path,
    atomic_text,
    config_diff,
    read_jsonl,
    repair_jsonl,
)
from l2m_plugin.formats.correspondences import read_correspondences, write_correspondences
from l2m_plugin.formats.hloc import read_features, write_features
from l2m_plugin.formats.pair_store import STORE_NAME, PairMatchStore, pair_store_path
from l2m_plugin.matching import PairMatcher
from l2m_plugin.matching.baselines import RandomPairMatcher
from l2m_plugin.matching.build import build_matcher
from l2m_plugin.matching.sift import SiftPairMatcher


def test_atomic_path_keeps_the_old_file_and_no_partial_on_error(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]
    with atomic_path(target) as tmp:
        assert tmp.name == "a.partial.json"  # the suffix is kept (image writers pick formats by it)
        tmp.write_text("new")
    assert target.read_text() == "new" and not tmp.exists()


def test_jsonl_round_trip_and_a_cut_last_line(tmp_path):
    p = tmp_path / "r.jsonl"
    assert read_jsonl(p) == []
    append_jsonl(p, {"id": 1})
    append_jsonl(p, {"id": 2, "x": [1, 2]})
    with open(p, "a", encoding="utf-8") as f:
        f.write('{"id": 3, "x"')  # a crash in the middle of a line
    assert read_jsonl(p) == [{"id": 1}, {"id": 2, "x": [1, 2]}]
    repair_jsonl(p)
    assert p.read_text(encoding="utf-8").count("\n") == 2 and p.read_text().endswith("\n")
    p.write_text('{"id": 1}\nnot json\n{"id": 2}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"r\.jsonl line 2"):
        read_jsonl(p)


def test_config_diff_lists_dotted_keys_and_ignores_run_control():
    saved = {"train": {"lr": 1e-3, "out": "a", "steps": 10}, "data": {"root": "x"}}
    now = {"train": {"lr": 2e-3, "out": "b", "steps": 10}, "data": {"root": "x", "size": 256}}
    assert config_diff(saved, now, ignore={"train.out"}) == [
        "data.size: '<unset>' -> 256",
        "train.lr: 0.001 -> 0.002",
    ]
    assert config_diff(saved, saved) == []


def test_pair_store_speaks_colmap_pixels_and_stores_hloc_pixels(tmp_path):
    store = PairMatchStore(tmp_path / STORE_NAME, {"m": 1})
    k0 = np.array([[0.5, 0.5], [10.25, 3.5]], np.float32)  # COLMAP: centre of pixel (0, 0) at (0.5, 0.5)
    k1 = np.array([[1.5, 2.5], [4.0, 5.0]], np.float32)
    store.write("a.jpg", "b.jpg", k0, k1, np.array([0.9, 0.8]), (20, 10), (20, 10))
    with h5py.File(tmp_path / STORE_NAME) as f:  # hloc's convention on disk (centres on integers)
        np.testing.assert_array_equal(f["a.jpg/b.jpg/keypoints0"][()], k0 - 0.5)
    r1, r0, _ = store.read("b.jpg", "a.jpg")
    np.testing.assert_array_equal(r0, k0)
    np.testing.assert_array_equal(r1, k1)
    (_, _, i0, i1, _), = list(store.items())
    np.testing.assert_array_equal(i0, k0)
    with pytest.raises(ValueError, match="m: 1 -> 2"):
        PairMatchStore(tmp_path / STORE_NAME, {"m": 2})


def test_benchmark_caches_under_the_old_name_are_found(tmp_path):
    assert pair_store_path(tmp_path) == tmp_path / STORE_NAME
    old = tmp_path / "matches.h5"
    PairMatchStore(old, {"benchmark": "x"})
    assert pair_store_path(tmp_path) == old
    hloc_matches = tmp_path / "other"
    hloc_matches.mkdir()
    with h5py.File(hloc_matches / "matches.h5", "w") as f:  # hloc's matches.h5 is not a store
        f.create_group("a/b")
    assert pair_store_path(hloc_matches) == hloc_matches / STORE_NAME


def test_hloc_features_round_trip_through_the_convention(tmp_path):
    kp = {"x/a.jpg": np.array([[0.5, 0.5], [3.0, 4.0]], np.float32), "b.jpg": np.zeros((0, 2), np.float32)}
    write_features(tmp_path / "features.h5", kp, {"x/a.jpg": (8, 6), "b.jpg": (8, 6)})
    with h5py.File(tmp_path / "features.h5") as f:
        np.testing.assert_array_equal(f["x/a.jpg/keypoints"][()], [[0.0, 0.0], [2.5, 3.5]])
    back = read_features(tmp_path / "features.h5")
    np.testing.assert_array_equal(back["x/a.jpg"], kp["x/a.jpg"])
    assert back["b.jpg"].shape == (0, 2)


def test_correspondences_file_reads_the_old_name(tmp_path):
    arrays = {
        "keypoints0": np.ones((3, 2)), "keypoints1": np.zeros((3, 2)), "certainty": np.full(3, 0.5),
        "image_size0": np.array([4, 3]), "image_size1": np.array([4, 3]),
    }  # fmt: skip
    for name in ("correspondences.h5", "matches.h5"):
        write_correspondences(tmp_path / name, arrays, {"seed": 0, "config": {"a": 1}})
        got = read_correspondences(tmp_path / name)
        assert got["keypoints0"].shape == (3, 2) and got["attrs"]["config"] == {"a": 1}


def test_pair_matchers_follow_the_protocol(tmp_path):
    assert isinstance(SiftPairMatcher(tmp_path), PairMatcher)
    assert isinstance(RandomPairMatcher(tmp_path, 10, 0), PairMatcher)
    assert not isinstance(object(), PairMatcher)


class _DenseLike(torch.nn.Module):
    device = torch.device("cpu")

    def sample(self, dense, num, generator=None):
        return {}


def test_build_matcher_refuses_loading_arguments_with_a_given_matcher():
    given = _DenseLike()
    assert build_matcher(matcher=given) is given
    with pytest.raises(ValueError, match=r"\['coarse_res'\] cannot be applied to a matcher passed as matcher="):
        build_matcher(matcher=given, coarse_res=64)
    with pytest.raises(TypeError, match="has no 'sample'"):
        build_matcher(matcher=object())


def test_the_kornia_adapter_has_its_own_name_and_the_old_one_warns():
    import l2m_plugin.integrations.kornia as K

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert K.L2M is K.KorniaL2M
    assert any(issubclass(x.category, DeprecationWarning) for x in w)
    import l2m_plugin

    assert l2m_plugin.L2M is not K.KorniaL2M
