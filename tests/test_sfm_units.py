"""SfM building blocks: image lists, pairs, shards, track building, h5 files."""

from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from l2m_plugin.formats.hloc import pair_key, read_matches, write_matches
from l2m_plugin.formats.pair_store import PairMatchStore, merge_pair_files
from l2m_plugin.formats.pairs_txt import read_pairs
from l2m_plugin.io import list_images
from l2m_plugin.sfm.pairs import (
    exhaustive_pairs,
    parse_pairs_spec,
    retrieval_pairs,
    sequential_pairs,
    shard_pairs,
)
from l2m_plugin.sfm.pipeline import merge_rule
from l2m_plugin.sfm.tracks import DEFAULT_MERGE_RADIUS, build_tracks, cluster_by_radius, one_to_one


def _img(path, size=(32, 24)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(path)


def test_list_images_nested_and_hidden(tmp_path):
    for n in ("b.jpg", "a.PNG", "sub/c.jpg", "sub/deeper/d.jpeg", ".hidden/e.jpg"):
        _img(tmp_path / n)
    (tmp_path / "notes.txt").write_text("x")
    assert list_images(tmp_path) == ["a.PNG", "b.jpg", "sub/c.jpg", "sub/deeper/d.jpeg"]


def test_list_images_refuses_names_hloc_cannot_tell_apart(tmp_path):
    _img(tmp_path / "sub/a.jpg")
    _img(tmp_path / "sub-a.jpg")
    with pytest.raises(ValueError, match="collide"):
        list_images(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        list_images(tmp_path / "empty")


def test_pairs_generators():
    names = [f"{i}.jpg" for i in range(5)]
    assert len(exhaustive_pairs(names)) == 10
    assert sequential_pairs(names, 2) == [
        ("0.jpg", "1.jpg"), ("0.jpg", "2.jpg"), ("1.jpg", "2.jpg"), ("1.jpg", "3.jpg"),
        ("2.jpg", "3.jpg"), ("2.jpg", "4.jpg"), ("3.jpg", "4.jpg"),
    ]  # fmt: skip
    # Two clusters of descriptors: retrieval:1 pairs each image with its cluster mate.
    d = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.05, 1]], float)
    pairs = retrieval_pairs(names, d, 1)
    assert set(pairs) == {("0.jpg", "1.jpg"), ("2.jpg", "4.jpg"), ("3.jpg", "4.jpg")}
    with pytest.raises(ValueError, match="K must be an integer"):
        parse_pairs_spec("sequential:x", names)
    with pytest.raises(ValueError, match="neither"):
        parse_pairs_spec("nonsense", names)


def test_read_pairs_dedupes_and_reports_bad_lines(tmp_path):
    p = tmp_path / "pairs.txt"
    p.write_text("a.jpg b.jpg\n# comment\nb.jpg a.jpg\na.jpg a.jpg\n\na.jpg c.jpg  # trailing\n")
    assert read_pairs(p) == [("a.jpg", "b.jpg"), ("a.jpg", "c.jpg")]
    p.write_text("a.jpg b.jpg\nonly_one.jpg\n")
    with pytest.raises(ValueError, match=r"pairs.txt:2"):
        read_pairs(p)
    p.write_text("a.jpg z.jpg\n")
    with pytest.raises(ValueError, match="z.jpg"):
        read_pairs(p, names=["a.jpg", "b.jpg"])


def test_shards_are_disjoint_and_cover():
    pairs = exhaustive_pairs([f"{i}" for i in range(9)])
    shards = [shard_pairs(pairs, i, 4) for i in range(4)]
    assert sorted(p for s in shards for p in s) == sorted(pairs)
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1
    with pytest.raises(ValueError):
        shard_pairs(pairs, 4, 4)


def test_tracks_merge_observations_across_pairs_into_one_track():
    sizes = {"A": (100, 80), "B": (100, 80), "C": (100, 80)}
    # The same point seen at slightly different positions of A in pairs (A,B) and (A,C),
    # plus a lower-score stray match that lands in the same cell of A.
    pm = [
        (
            "A",
            "B",
            np.array([[10.2, 20.3], [10.9, 21.0]]),
            np.array([[30.5, 40.5], [70.5, 70.5]]),
            np.array([0.9, 0.2]),
        ),
        ("A", "C", np.array([[11.0, 21.5]]), np.array([[50.5, 60.5]]), np.array([0.6])),
        ("B", "C", np.array([[30.7, 40.2]]), np.array([[50.2, 60.9]]), np.array([0.8])),
    ]
    t = build_tracks(pm, sizes, cell_size=4.0)
    assert len(t.keypoints["A"]) == 1  # one keypoint at the most confident observation
    np.testing.assert_allclose(t.keypoints["A"][0], [10.2, 20.3], atol=1e-6)
    # One-to-one: the stray (A0 -> B(70, 70)) loses against the better match of A0.
    idx, scores = t.matches[("A", "B")]
    assert idx.tolist() == [[0, 0]] and scores.tolist() == pytest.approx([0.9])
    assert np.array_equal(t.matches[("A", "C")][0], [[0, 0]])
    assert np.array_equal(t.matches[("B", "C")][0], [[0, 0]])
    assert t.track_lengths().tolist() == [3]
    # Sub-pixel: the certainty-weighted mean of the cell's observations.
    ts = build_tracks(pm, sizes, cell_size=4.0, subpixel=True)
    w = np.array([0.9, 0.2, 0.6])
    pts = np.array([[10.2, 20.3], [10.9, 21.0], [11.0, 21.5]])
    np.testing.assert_allclose(ts.keypoints["A"][0], (w[:, None] * pts).sum(0) / w.sum(), atol=1e-4)


def test_tracks_drop_points_outside_and_keep_distinct_cells():
    sizes = {"A": (20, 20), "B": (20, 20)}
    k0 = np.array([[1.0, 1.0], [9.0, 1.0], [25.0, 5.0], [3.0, 3.0]])
    k1 = np.array([[2.0, 2.0], [12.0, 2.0], [5.0, 5.0], [15.0, 15.0]])
    t = build_tracks([("A", "B", k0, k1, np.array([0.5, 0.5, 0.9, 0.1]))], sizes, cell_size=4.0)
    assert len(t.keypoints["A"]) == 2  # (1,1) and (3,3) share a cell; (25,5) is outside
    idx, _ = t.matches[("A", "B")]
    assert len(idx) == 2  # (3,3) lost the shared cell to the better (1,1) match
    with pytest.raises(ValueError, match="cell_size"):
        build_tracks([], sizes, cell_size=0)


def _leader_rule(xy, s, r):
    """The sequential rule, written out: in decreasing score (stable), a point opens a cluster
    unless an opened one lies within r."""
    centres = []
    for k in np.argsort(-s, kind="stable"):
        if all(((xy[k] - xy[c]) ** 2).sum() > r * r for c in centres):
            centres.append(k)
    return sorted(centres)


def test_cluster_by_radius_is_the_sequential_leader_rule():
    rng = np.random.default_rng(3)
    for trial in range(12):
        n = int(rng.integers(2, 400))
        xy = rng.uniform(0, rng.uniform(4, 40), (n, 2))
        if trial % 3 == 0:
            xy = np.round(xy)  # repeated positions
        s = np.round(rng.uniform(0, 1, n), 1) if trial % 2 else rng.uniform(0, 1, n)  # ties
        r = float(rng.uniform(0.5, 3.0))
        labels, centres = cluster_by_radius(xy, s, r)
        assert centres.tolist() == _leader_rule(xy, s, r), trial
        d2 = ((xy[:, None] - xy[centres][None]) ** 2).sum(-1)
        np.testing.assert_allclose(d2[np.arange(n), labels], d2.min(1))  # the nearest centre
        assert d2[np.arange(n), labels].max() <= r * r + 1e-12  # nothing moves more than r
        assert labels[centres].tolist() == list(range(len(centres)))
    labels, centres = cluster_by_radius(np.zeros((0, 2)), np.zeros(0), 1.0)
    assert labels.shape == (0,) and centres.shape == (0,)
    with pytest.raises(ValueError, match="radius"):
        cluster_by_radius(np.zeros((2, 2)), np.ones(2), 0.0)


def test_tracks_by_distance_ignore_cell_borders_and_bound_the_move():
    sizes = {"A": (100, 80), "B": (100, 80), "C": (100, 80)}
    # One point of A seen 0.1 px apart through (A,B) and (A,C), across the x = 4 border of a
    # 4-px grid; and two points of A 1.4 px apart inside one grid cell (x in [8, 12)).
    pm = [
        ("A", "B", np.array([[3.95, 10.0], [8.3, 30.0]]), np.array([[50.0, 50.0], [60.0, 20.0]]), np.array([0.9, 0.9])),
        ("A", "C", np.array([[4.05, 10.0], [9.7, 30.0]]), np.array([[20.0, 70.0], [30.0, 10.0]]), np.array([0.8, 0.8])),
    ]  # fmt: skip
    grid = build_tracks(pm, sizes, cell_size=4.0)
    assert len(grid.keypoints["A"]) == 3  # split by the border, merged inside the cell
    assert sorted(grid.track_lengths().tolist()) == [2, 2, 3]
    near = build_tracks(pm, sizes, merge_radius=1.25)
    kp = near.keypoints["A"]
    assert len(kp) == 3  # the 0.1-px pair merged, the 1.4-px pair kept apart
    np.testing.assert_allclose(kp, [[3.95, 10.0], [8.3, 30.0], [9.7, 30.0]], atol=1e-6)
    assert sorted(near.track_lengths().tolist()) == [2, 2, 3]
    assert near.matches[("A", "C")][0].tolist() == [[0, 0], [2, 1]]
    # sub-pixel: the score-weighted mean of the merged pair
    sub = build_tracks(pm, sizes, merge_radius=1.25, subpixel=True)
    np.testing.assert_allclose(sub.keypoints["A"][0], [(0.9 * 3.95 + 0.8 * 4.05) / 1.7, 10.0], atol=1e-4)
    with pytest.raises(ValueError, match="merge_radius"):
        build_tracks(pm, sizes, merge_radius=-1.0)


def test_merge_rule_is_one_rule():
    assert merge_rule() == {"cell_size": None, "merge_radius": DEFAULT_MERGE_RADIUS}
    assert merge_rule(cell_size=2) == {"cell_size": 2.0, "merge_radius": None}
    assert merge_rule(merge_radius=0.5) == {"cell_size": None, "merge_radius": 0.5}
    with pytest.raises(ValueError, match="cell_size=2 and merge_radius=1"):
        merge_rule(2, 1)
    with pytest.raises(ValueError, match="merge_radius must be > 0"):
        merge_rule(merge_radius=0)
    with pytest.raises(ValueError, match="cell_size must be > 0"):
        merge_rule(cell_size=-2)


def test_one_to_one_is_greedy_by_score():
    keep = one_to_one(
        np.array([0, 0, 1, 2]), np.array([5, 6, 5, 7]), np.array([0.5, 0.9, 0.8, 0.1])
    )
    assert sorted(keep.tolist()) == [1, 2, 3]


def test_pair_store_resume_settings_and_merge(tmp_path):
    s = PairMatchStore(tmp_path / "a.h5", {"matcher": "x"})
    s.write("a.jpg", "sub/b.jpg", np.ones((3, 2)), np.zeros((3, 2)), np.ones(3), (10, 8), (12, 9))
    assert ("a.jpg", "sub/b.jpg") in s and ("sub/b.jpg", "a.jpg") in s and len(s) == 1
    with h5py.File(tmp_path / "a.h5") as f:
        assert pair_key("a.jpg", "sub/b.jpg") == "a.jpg/sub-b.jpg" and "a.jpg/sub-b.jpg" in f
    k1, k0, _ = PairMatchStore(tmp_path / "a.h5", {"matcher": "x"}).read("sub/b.jpg", "a.jpg")
    assert k1.sum() == 0 and k0.sum() == 6
    with pytest.raises(ValueError, match="another matcher setting"):
        PairMatchStore(tmp_path / "a.h5", {"matcher": "y"})
    assert len(PairMatchStore(tmp_path / "a.h5", {"matcher": "y"}, overwrite=True)) == 0
    s1 = PairMatchStore(tmp_path / "s1.h5", {"m": 1})
    s2 = PairMatchStore(tmp_path / "s2.h5", {"m": 1})
    s1.write("a", "b", np.ones((2, 2)), np.ones((2, 2)), np.ones(2), (4, 4), (4, 4))
    s2.write("a", "c", np.ones((1, 2)), np.ones((1, 2)), np.ones(1), (4, 4), (5, 5))
    assert merge_pair_files([tmp_path / "s1.h5", tmp_path / "s2.h5"], tmp_path / "m.h5") == 2
    merged = PairMatchStore(tmp_path / "m.h5", {"m": 1})
    assert len(merged) == 2 and merged.image_sizes() == {"a": (4, 4), "b": (4, 4), "c": (5, 5)}
    s3 = PairMatchStore(tmp_path / "s3.h5", {"m": 2})
    with pytest.raises(ValueError, match="other settings"):
        merge_pair_files([tmp_path / "s1.h5", tmp_path / "s3.h5"], tmp_path / "m2.h5")
    del s3


def test_matches_h5_roundtrip_in_hloc_layout(tmp_path):
    write_matches(
        tmp_path / "m.h5",
        {("x/a.jpg", "b.jpg"): (np.array([[0, 2], [3, 1]]), np.array([0.5, 0.7]))},
        {"x/a.jpg": 5, "b.jpg": 3},
    )
    with h5py.File(tmp_path / "m.h5") as f:
        assert f["x-a.jpg/b.jpg/matches0"][()].tolist() == [2, -1, -1, 1, -1]
    idx, sc = read_matches(tmp_path / "m.h5", "b.jpg", "x/a.jpg")
    assert idx.tolist() == [[2, 0], [1, 3]] and sc.tolist() == pytest.approx([0.5, 0.7])


def test_cli_shard_spec(monkeypatch):
    import argparse

    from l2m_plugin.cli import _parse_shard

    assert _parse_shard("2/5") == (2, 5)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert _parse_shard("env") == (3, 4)
    for bad in ("5/5", "x/2", "1"):
        with pytest.raises(argparse.ArgumentTypeError, match="i/N"):
            _parse_shard(bad)


def test_pair_store_written_before_a_config_field_existed_reopens_at_its_default(tmp_path):
    """A store whose settings lack a matcher-config field added later (e.g. covisible_zooms)
    is resumed when the new setting is that field's default (the old behaviour), and refused
    when it is not; the refusal names the field."""
    from l2m_plugin import L2M
    from l2m_plugin.config import PRESETS
    from l2m_plugin.matching.dense import DensePairMatcher

    pm = DensePairMatcher(L2M(PRESETS["l2m-tiny"].replace(covisible_zooms=())), tmp_path)
    old = pm.settings()
    del old["config"]["covisible_zooms"]  # as written before the field existed
    s = PairMatchStore(tmp_path / "a.h5", old)
    s.write("a", "b", np.ones((2, 2)), np.ones((2, 2)), np.ones(2), (4, 4), (4, 4))
    defaults = pm.settings_defaults()
    assert defaults["config.covisible_zooms"] == [] and defaults["config.sample_cutoff"] is False
    assert len(PairMatchStore(tmp_path / "a.h5", pm.settings(), defaults=defaults)) == 1
    with pytest.raises(ValueError, match="another matcher setting"):  # without defaults: refused
        PairMatchStore(tmp_path / "a.h5", pm.settings())
    zoom = DensePairMatcher(L2M(PRESETS["l2m-tiny"]), tmp_path)  # covisible_zooms [2.0]
    with pytest.raises(ValueError, match=r"config\.covisible_zooms: \[\] -> \[2\.0\]"):
        PairMatchStore(tmp_path / "a.h5", zoom.settings(), defaults=zoom.settings_defaults())


def test_model_statistics_name_suspect_images():
    """Registered images without 3D points or with bogus cameras are named (pycolmap counts them)."""
    import pycolmap

    from l2m_plugin.sfm.colmap import model_statistics

    from .conftest import SHARED_DATA

    model = SHARED_DATA / "colmap_maupertuis" / "reconstruction"
    if not model.is_dir():
        pytest.skip(f"{model} not found (tests expect ../shared/data beside the repo)")
    rec = pycolmap.Reconstruction(str(model))
    names = sorted(im.name for im in rec.images.values())
    stats = model_statistics(rec, names)
    assert stats["registered_images"] == 4 and stats["suspect_images"] == {}
    by_name = {im.name: i for i, im in rec.images.items()}
    seen = {p2.point3D_id for p2 in rec.images[by_name["02.jpg"]].points2D if p2.has_point3D()}
    assert len(seen) > 10
    for pid in seen:
        rec.delete_point3D(pid)
    stats = model_statistics(rec, names)
    assert stats["registered_images"] == 4  # pycolmap still counts it
    assert stats["suspect_images"] == {"02.jpg": "observes no 3D point"}
    cam = next(iter(rec.cameras.values()))  # the four photos share one camera
    cam.params = [11 * cam.width if k in cam.focal_length_idxs() else v for k, v in enumerate(cam.params)]
    stats = model_statistics(rec, names)
    assert sorted(stats["suspect_images"]) == names
    assert "out of COLMAP's bounds" in stats["suspect_images"]["00.jpg"]
    assert stats["suspect_images"]["02.jpg"].startswith("observes no 3D point; camera parameters out of")
    assert stats["points3D"] == rec.num_points3D() > 0


def test_map_tries_keeps_the_model_with_most_trusted_images_then_lowest_error(tmp_path, monkeypatch):
    """map_tries verifies and maps at each seed and ranks the tries by their own statistics: a
    try with a suspect image loses to clean ones even at a lower reprojection error; among clean
    ones the lowest error wins (ties: the first seed); the kept model is written to ``output``
    and its verified database replaces the input."""
    import pycolmap

    from l2m_plugin.sfm import colmap

    from .conftest import SHARED_DATA

    model = SHARED_DATA / "colmap_maupertuis" / "reconstruction"
    if not model.is_dir():
        pytest.skip(f"{model} not found (tests expect ../shared/data beside the repo)")
    names = sorted(im.name for im in pycolmap.Reconstruction(str(model)).images.values())
    rng = np.random.default_rng(0)

    def fake_mapping(database, image_dir, output, *, seed, **kw):
        rec = pycolmap.Reconstruction(str(model))
        if seed == 0:  # 02.jpg keeps its pose but observes nothing: suspect
            by_name = {im.name: i for i, im in rec.images.items()}
            for p2 in rec.images[by_name["02.jpg"]].points2D:
                if p2.has_point3D() and p2.point3D_id in rec.points3D:
                    rec.delete_point3D(p2.point3D_id)
        if seed == 1:  # every point moved: a larger reprojection error
            for pid in list(rec.points3D):
                rec.points3D[pid].xyz = rec.points3D[pid].xyz + rng.normal(0, 0.05, 3)
            rec.update_point_3d_errors()  # the mean error reads each point's stored error
        Path(output).mkdir(parents=True, exist_ok=True)
        rec.write(str(output))
        return rec

    def fake_verification(database, *, max_error, seed):
        Path(database).write_text(f"verified at seed {seed}")

    monkeypatch.setattr(colmap, "run_mapping", fake_mapping)
    monkeypatch.setattr(colmap, "verify_pairs", fake_verification)
    monkeypatch.setattr(colmap, "verification_report", lambda database: {"of": Path(database).read_text()})
    db = tmp_path / "database.db"
    db.write_text("matches, not verified")
    out = tmp_path / "sfm"
    (out / "tries" / "seed_9").mkdir(parents=True)  # a stale try of an earlier run
    rec, tries = colmap.map_tries(db, "images", out, names, seeds=[0, 1, 2])
    assert [t["seed"] for t in tries] == [0, 1, 2]
    assert [t["chosen"] for t in tries] == [False, False, True]
    assert tries[0]["suspect_images"] == {"02.jpg": "observes no 3D point"}
    assert tries[1]["suspect_images"] == tries[2]["suspect_images"] == {}
    assert tries[1]["mean_reprojection_error_px"] > tries[2]["mean_reprojection_error_px"] + 0.5
    assert tries[0]["mean_reprojection_error_px"] < tries[1]["mean_reprojection_error_px"]
    assert sorted(p.name for p in (out / "tries").iterdir()) == ["seed_0", "seed_1", "seed_2"]
    assert [t["verification"]["of"] for t in tries] == [f"verified at seed {k}" for k in range(3)]
    assert db.read_text() == "verified at seed 2"  # the kept try's verified database
    kept = pycolmap.Reconstruction(str(out))
    assert kept.compute_mean_reprojection_error() == pytest.approx(tries[2]["mean_reprojection_error_px"], abs=1e-9)
    assert kept.num_points3D() == rec.num_points3D() == tries[2]["points3D"]
    # ties keep the first seed; one seed maps straight into output, with no tries folder
    _, tied = colmap.map_tries(db, "images", tmp_path / "tie", names, seeds=[5, 6])
    assert [t["chosen"] for t in tied] == [True, False] and db.read_text() == "verified at seed 5"
    _, single = colmap.map_tries(db, "images", tmp_path / "one", names, seeds=[3])
    assert single[0]["chosen"] and not (tmp_path / "one" / "tries").exists()
    assert db.read_text() == "verified at seed 3"  # one seed: verified in place
    with pytest.raises(ValueError, match="distinct seeds"):
        colmap.map_tries(db, "images", tmp_path / "x", names, seeds=[1, 1])
    # a try that raises is recorded and loses; when every try raises, the first error comes out
    def failing_mapping(database, image_dir, output, *, seed, **kw):
        if seed != 4:
            raise RuntimeError(f"mapper crashed at seed {seed}")
        return fake_mapping(database, image_dir, output, seed=seed, **kw)

    monkeypatch.setattr(colmap, "run_mapping", failing_mapping)
    rec, crashed = colmap.map_tries(db, "images", tmp_path / "crash", names, seeds=[3, 4, 5])
    assert [t["chosen"] for t in crashed] == [False, True, False] and rec is not None
    assert crashed[0]["error"] == "RuntimeError: mapper crashed at seed 3" and crashed[0]["registered_images"] == 0
    assert "error" not in crashed[1]
    with pytest.raises(RuntimeError, match="mapper crashed at seed 5"):
        colmap.map_tries(db, "images", tmp_path / "all", names, seeds=[5, 6])
    # the rank itself: trusted images first, then fewer suspects, then the error
    rank = colmap.try_rank
    a = {"registered_images": 10, "suspect_images": {"x": "?"}, "mean_reprojection_error_px": 0.5}
    b = {"registered_images": 9, "suspect_images": {}, "mean_reprojection_error_px": 1.5}
    c = {"registered_images": 9, "suspect_images": {}, "mean_reprojection_error_px": 0.9}
    d = {"registered_images": 0, "suspect_images": {}, "mean_reprojection_error_px": None}
    assert sorted([a, b, c, d], key=rank) == [d, a, b, c]
