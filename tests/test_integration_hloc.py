"""The hloc adapter: register(), the hloc.matchers.l2m contract, match_dense + pycolmap SfM.

Needs hloc, which is not on PyPI (git clone https://github.com/cvg/Hierarchical-Localization
&& pip install --no-deps -e Hierarchical-Localization); the whole module is skipped without it.
Geometry is checked with the oracle matcher on a synthetic scene with exact depth and poses:
any half-pixel convention error or wrong rescaling shows up as epipolar or pose error.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from l2m_plugin.integrations import hloc as l2m_hloc

match_dense = pytest.importorskip(
    "hloc.match_dense",
    reason=f"hloc is not installed ({l2m_hloc.INSTALL_HINT})",
)
import hloc.matchers  # noqa: E402
import pycolmap  # noqa: E402
from hloc import pairs_from_exhaustive  # noqa: E402
from hloc import reconstruction as hloc_reconstruction  # noqa: E402
from hloc.utils.base_model import dynamic_load  # noqa: E402
from hloc.utils.parsers import names_to_pair  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")

SIZE = (256, 192)  # (W, H) of the synthetic views
# hloc resizes to max side 200 (256 x 192 -> 200 x 150), then to multiples of dfactor = 8
# (200 x 144): different x and y scales, so the adapter's frame and hloc's rescaling
# ((k + 0.5) * scale - 0.5) are both exercised.
RESIZE = {"grayscale": False, "resize_max": 200, "dfactor": 8}
# A random-weight L2M with a ViT-S/14 encoder at a small resolution (as in
# test_matcher_api): the same network code as the official ViT-L model, seconds faster.
SMALL = {"encoder": "vits14", "coarse_res": (84, 112), "upsample_res": None}


def _hloc_model(conf: dict):
    l2m_hloc.register()
    return dynamic_load(hloc.matchers, "l2m")(conf)


def _epipolar(F: np.ndarray, k0: np.ndarray, k1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Point-to-epipolar-line distances (pixels) in image 1 and in image 0; x1^T F x0 = 0."""
    h0 = np.c_[k0, np.ones(len(k0))].astype(np.float64)
    h1 = np.c_[k1, np.ones(len(k1))].astype(np.float64)
    l1, l0 = h0 @ F.T, h1 @ F
    r = np.abs(np.sum(h1 * l1, axis=1))
    return r / np.linalg.norm(l1[:, :2], axis=1), r / np.linalg.norm(l0[:, :2], axis=1)


def _quantised_matches(features, matches, name0, name1):
    """hloc's final matches of a pair: (M, 2) keypoints in each image (features.h5 + matches0)."""
    import h5py

    with h5py.File(matches, "r") as fm, h5py.File(features, "r") as ff:
        m0 = fm[names_to_pair(name0, name1)]["matches0"][()]
        idx0 = np.flatnonzero(m0 >= 0)
        return ff[name0]["keypoints"][()][idx0], ff[name1]["keypoints"][()][m0[idx0]]


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def small_l2m():
    """Seeded random-weight L2M (ViT-S/14, 84 x 112 coarse pass, no refinement pass)."""
    from l2m_plugin import L2M, MatcherConfig

    torch.manual_seed(0)
    return L2M(MatcherConfig(**SMALL))


@pytest.fixture(scope="module")
def scene():
    from l2m_plugin.testing.scenes import make_scene

    return make_scene(num_views=5, size=SIZE, seed=0)


@pytest.fixture(scope="module")
def oracle_sfm(scene, tmp_path_factory):
    """hloc match_dense with the oracle on all 10 pairs of the scene, quantisation off.

    ``max_error = cell_size = 0`` makes hloc's keypoint assignment exact (``to_cpts``
    keeps the raw coordinates and a keypoint is only shared between pairs when its
    coordinates are bit-identical), so features.h5 + matches.h5 hold the adapter's
    keypoints unchanged and the epipolar test can use the 0.1 px tolerance on them too.
    """
    from l2m_plugin.matching.oracle import OracleMatcher

    d = tmp_path_factory.mktemp("hloc_oracle")
    images = d / "images"
    scene.write_images(images)
    pairs = d / "pairs.txt"
    pairs_from_exhaustive.main(pairs, image_list=[v.name for v in scene.views])
    l2m_hloc.register()
    conf = copy.deepcopy(match_dense.confs["l2m"])
    conf["model"] = {"name": "l2m", "matcher": OracleMatcher(scene.views), "max_num_matches": 1000}
    conf.update(preprocessing=RESIZE, max_error=0, cell_size=0, output="matches-oracle")
    features, matches = match_dense.main(conf, pairs, images, export_dir=d)
    return {"dir": d, "images": images, "pairs": pairs, "features": features, "matches": matches}


# --------------------------------------------------------------------------- register
def test_register_is_idempotent_and_adds_confs():
    names = l2m_hloc.register()
    assert names == ["l2m", "l2m-tiny", "l2m-fast"]
    confs_before = copy.deepcopy(match_dense.confs)
    path_before = list(hloc.matchers.__path__)
    assert l2m_hloc.register() == names
    assert list(hloc.matchers.__path__) == path_before
    assert path_before.count(str(l2m_hloc._MATCHERS_DIR)) == 1
    assert match_dense.confs == confs_before
    for name in names:
        conf = match_dense.confs[name]
        assert conf == l2m_hloc.CONFS[name] and conf is not l2m_hloc.CONFS[name]
        assert conf["model"]["name"] == "l2m"
        assert conf["preprocessing"]["grayscale"] is False
        assert conf["max_error"] >= 1 and conf["cell_size"] >= conf["max_error"]
    assert (
        match_dense.confs["l2m-fast"]["model"]["max_num_matches"]
        < match_dense.confs["l2m"]["model"]["max_num_matches"]
    )
    # A conf already present (e.g. edited by the user) is left alone.
    match_dense.confs["l2m"]["max_error"] = 3
    try:
        l2m_hloc.register()
        assert match_dense.confs["l2m"]["max_error"] == 3
    finally:
        match_dense.confs["l2m"] = copy.deepcopy(l2m_hloc.CONFS["l2m"])
    # hloc's loader finds exactly one BaseModel defined in hloc.matchers.l2m.
    cls = dynamic_load(hloc.matchers, "l2m")
    assert cls.__module__ == "hloc.matchers.l2m" and cls.__name__ == "L2MDense"


# --------------------------------------------------------------------------- adapter contract
class _Spy(torch.nn.Module):
    """Wraps a matcher and records what the adapter passes to it and gets back."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, []

    @property
    def device(self):
        return self.net.device

    def forward(self, data):
        out = self.net(data)
        self.calls.append((data, out))
        return out

    def sample(self, out, num, **kwargs):
        return self.net.sample(out, num, **kwargs)


def test_adapter_output_contract_and_hloc_convention(small_l2m):
    spy = _Spy(small_l2m)
    model = _hloc_model({"matcher": spy, "max_num_matches": 300, "seed": 7}).eval()
    x0, x1 = torch.rand(1, 3, 100, 130), torch.rand(1, 3, 90, 120)
    pred = model({"image0": x0, "image1": x1})

    assert set(pred) == {"keypoints0", "keypoints1", "scores"}
    n = pred["scores"].shape[0]
    assert 0 < n <= 300
    assert pred["keypoints0"].shape == pred["keypoints1"].shape == (n, 2)
    assert pred["scores"].shape == (n,)
    assert all(v.dtype == torch.float32 for v in pred.values())
    # hloc frame of the input tensors: pixel centres on integers, so [-0.5, W - 0.5].
    for k, (w, h) in ((pred["keypoints0"], (130, 100)), (pred["keypoints1"], (120, 90))):
        assert k[:, 0].min() >= -0.5 and k[:, 0].max() <= w - 0.5
        assert k[:, 1].min() >= -0.5 and k[:, 1].max() <= h - 0.5

    # Against the matcher called directly, with the same seed: keypoints - 0.5, raw certainty.
    ((data, out),) = spy.calls
    assert data["image0"] is x0 and data["image1"] is x1
    ref = small_l2m.sample(out, 300, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(pred["keypoints0"], ref["keypoints0"] - 0.5, rtol=0, atol=1e-6)
    torch.testing.assert_close(pred["keypoints1"], ref["keypoints1"] - 0.5, rtol=0, atol=1e-6)
    torch.testing.assert_close(pred["scores"], ref["certainty"], rtol=0, atol=0)
    assert float(pred["scores"].min()) >= 0 and float(pred["scores"].max()) <= 1

    # Grayscale input (hloc conf grayscale: True) is repeated to RGB: same result.
    gray = model({"image0": x0[:, :1], "image1": x1[:, :1]})
    seen = spy.calls[-1][0]["image0"]
    assert seen.shape == (1, 3, 100, 130) and torch.equal(seen, x0[:, :1].repeat(1, 3, 1, 1))
    rgb = model({"image0": x0[:, :1].repeat(1, 3, 1, 1), "image1": x1[:, :1].repeat(1, 3, 1, 1)})
    torch.testing.assert_close(gray["keypoints0"], rgb["keypoints0"], rtol=0, atol=1e-6)

    with pytest.raises(ValueError, match="one pair at a time"):
        model({"image0": x0.repeat(2, 1, 1, 1), "image1": x1.repeat(2, 1, 1, 1)})
    with pytest.raises(ValueError, match="cannot be applied"):
        _hloc_model({"matcher": spy, "coarse_res": 280})


def test_adapter_loads_weights_with_config_overrides(small_l2m, tmp_path):
    from l2m_plugin.weights import save_checkpoint

    path = save_checkpoint(small_l2m, tmp_path / "small.pt")
    # preset None: the config saved with the checkpoint, then the overrides.
    model = _hloc_model(
        {"weights": str(path), "preset": None, "coarse_res": 56, "dtype": "bfloat16"}
    )
    cfg = model.net.config
    assert cfg.encoder == "vits14" and cfg.coarse_res == (56, 56) and cfg.dtype == "bfloat16"
    assert cfg.upsample_res is None and cfg.sample_thresh == small_l2m.config.sample_thresh
    for k, v in small_l2m.state_dict().items():
        assert torch.equal(model.net.state_dict()[k], v), k
    with pytest.raises(ValueError, match="unknown preset"):
        _hloc_model({"weights": str(path), "preset": "nope"})


def test_adapter_presets_and_configs_with_l2m_tiny(monkeypatch):
    """The default weights (l2m-tiny) with no preset, its preset or its YAML: the shipped
    config; a preset / config of another architecture: a short ArchitectureMismatchError."""
    from pathlib import Path

    from l2m_plugin import PRESETS
    from l2m_plugin.weights import ArchitectureMismatchError

    monkeypatch.setenv("L2M_OFFLINE", "1")
    root = Path(__file__).resolve().parents[1] / "configs" / "matcher"
    for extra in ({}, {"preset": "l2m-tiny"}, {"config": str(root / "l2m_tiny.yaml")}):
        net = _hloc_model(extra).net
        assert net.weights_name == "l2m-tiny" and net.config == PRESETS["l2m-tiny"], extra
    assert _hloc_model({"preset": "l2m-tiny", "coarse_res": 128}).net.config.coarse_res == (128, 128)
    for extra in ({"preset": "romatch"}, {"config": str(root / "l2m.yaml")}):
        with pytest.raises(ArchitectureMismatchError, match="are arch tiny-ds but the config is for arch roma") as err:
            _hloc_model(extra)
        assert len(str(err.value).splitlines()) <= 3 and "preset l2m-tiny" in str(err.value)
    with pytest.raises(ValueError, match="cannot be applied"):
        _hloc_model({"matcher": object(), "preset": "l2m-tiny"})


def test_readme_example_runs_offline_with_the_l2m_tiny_conf(tmp_path, monkeypatch):
    """README "hloc": register, match_dense.main(confs["l2m-tiny"]), l2m_hloc.reconstruction,
    on the real pair with downloads disabled and an empty torch hub cache."""
    import shutil

    from .conftest import shared_pair

    a, b = shared_pair()
    monkeypatch.setenv("L2M_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    images, outputs = tmp_path / "images", tmp_path / "outputs"
    images.mkdir()
    for src in (a, b):
        shutil.copy(src, images / src.name)
    pairs = outputs / "pairs.txt"
    outputs.mkdir()
    pairs_from_exhaustive.main(pairs, image_list=[a.name, b.name])

    l2m_hloc.register()  # hloc.matchers.l2m + match_dense.confs["l2m"], ["l2m-tiny"], ["l2m-fast"]
    features, matches = match_dense.main(match_dense.confs["l2m-tiny"], pairs, images, export_dir=outputs)
    model = l2m_hloc.reconstruction(outputs / "sfm", images, pairs, features, matches)

    assert not (tmp_path / "hub").exists()
    with pycolmap.Database.open(outputs / "sfm" / "database.db") as db:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        assert len(db.read_matches(ids[a.name], ids[b.name])) > 500
    assert model is None or model.num_reg_images() <= 2


def test_match_dense_and_reconstruction_with_the_network(small_l2m, scene, tmp_path):
    """The real network through hloc end to end (random weights: formats, not accuracy)."""
    import h5py

    images = tmp_path / "images"
    scene.write_images(images)
    names = [v.name for v in scene.views[:2]]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"{names[0]} {names[1]}\n")
    l2m_hloc.register()
    conf = copy.deepcopy(match_dense.confs["l2m"])
    conf["model"] = {"name": "l2m", "matcher": small_l2m, "max_num_matches": 400}
    conf["preprocessing"] = dict(RESIZE, resize_max=160)
    features, matches = match_dense.main(conf, pairs, images, export_dir=tmp_path)

    with h5py.File(matches, "r") as fm, h5py.File(features, "r") as ff:
        g = fm[names_to_pair(*names)]
        assert set(g) == {"keypoints0", "keypoints1", "scores", "matches0", "matching_scores0"}
        raw0, scores = g["keypoints0"][()], g["scores"][()]
        assert raw0.shape == (400, 2) and scores.shape == (400,) and raw0.dtype == np.float32
        # Rescaled to the original 320 x 240 images (hloc convention: [-0.5, W - 0.5]).
        for k in (raw0, g["keypoints1"][()]):
            assert (
                k.min() >= -0.5
                and k[:, 0].max() <= SIZE[0] - 0.5
                and k[:, 1].max() <= SIZE[1] - 0.5
            )
            assert k[:, 0].max() > SIZE[0] * 0.6  # not left in the 160 px frame
        m0 = g["matches0"][()]
        num_matches = int((m0 >= 0).sum())
        assert num_matches > 100
        kps = {n: ff[n]["keypoints"][()] for n in names}

    rec = hloc_reconstruction.main(
        tmp_path / "sfm", images, pairs, features, matches, image_list=names
    )
    # Random weights: verification may reject the pair; the database must hold our data.
    assert rec is None or rec.num_reg_images() <= 2
    with pycolmap.Database.open(tmp_path / "sfm" / "database.db") as db:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        for n in names:  # hloc adds 0.5 on import: COLMAP convention again
            np.testing.assert_allclose(db.read_keypoints(ids[n])[:, :2], kps[n] + 0.5, atol=1e-5)
        assert len(db.read_matches(ids[names[0]], ids[names[1]])) == num_matches


# --------------------------------------------------------------------------- oracle geometry
def test_hloc_oracle_epipolar(scene, oracle_sfm, tmp_path):
    """Every match hloc writes lies on the true epipolar line (hloc convention F)."""
    pairs = [line.split() for line in oracle_sfm["pairs"].read_text().splitlines()]
    assert len(pairs) == 10
    import h5py

    worst_raw = worst_q = 0.0
    for name0, name1 in pairs:
        F = scene.fundamental(name0, name1, convention="hloc")
        # 1. hloc's raw dense matches (written by match_dense before quantisation),
        #    rescaled by hloc from the 248 x 184 frame to 320 x 240.
        with h5py.File(oracle_sfm["matches"], "r") as fm:
            g = fm[names_to_pair(name0, name1)]
            k0, k1 = g["keypoints0"][()], g["keypoints1"][()]
        assert len(k0) == 1000
        d1, d0 = _epipolar(F, k0, k1)
        worst_raw = max(worst_raw, d1.max(), d0.max())
        # 2. the final matches (features.h5 + matches0): exact with max_error = cell_size = 0.
        q0, q1 = _quantised_matches(oracle_sfm["features"], oracle_sfm["matches"], name0, name1)
        assert len(q0) > 900  # only n-to-1 duplicates are removed
        e1, e0 = _epipolar(F, q0, q1)
        worst_q = max(worst_q, e1.max(), e0.max())
    assert worst_raw < 0.1 and worst_q < 0.1, (worst_raw, worst_q)
    # The check resolves a half-pixel convention slip: the last pair's raw matches with
    # image 1's keypoints in COLMAP convention (+0.5) are mostly off by more than 0.1 px.
    slip, _ = _epipolar(F, k0, k1 + 0.5)
    assert np.median(slip) > 0.2, np.median(slip)

    # 3. The shipped "l2m" conf quantises keypoints (cell_size = max_error = 1 px). hloc
    #    then reassigns every raw keypoint to a kept keypoint at most max_error away
    #    (assign_matches, as max_kps is set), plus 0.005 px from to_cpts rounding. Moving
    #    x1 by delta moves its distance to a line by <= delta; moving x0 by delta turns the
    #    epipolar line in image 1, which moves its distance by <= L * delta with
    #    L = |d dist / d x0| (computed below by finite differences). Hence the bound
    #    0.1 + delta * (1 + L) on the quantised matches.
    from l2m_plugin.matching.oracle import OracleMatcher

    conf = copy.deepcopy(match_dense.confs["l2m"])
    conf["model"] = {"name": "l2m", "matcher": OracleMatcher(scene.views), "max_num_matches": 1000}
    conf.update(preprocessing=RESIZE, output="matches-oracle-l2m")
    sub = tmp_path / "pairs.txt"
    sub.write_text("".join(f"{a} {b}\n" for a, b in pairs[:4]))
    features, matches = match_dense.main(conf, sub, oracle_sfm["images"], export_dir=tmp_path)
    delta = conf["max_error"] + 0.01
    for name0, name1 in pairs[:4]:
        F = scene.fundamental(name0, name1, convention="hloc")
        q0, q1 = _quantised_matches(features, matches, name0, name1)
        assert len(q0) > 500
        e1, e0 = _epipolar(F, q0, q1)
        L1 = _line_lipschitz(F, q0, q1)
        L0 = _line_lipschitz(F.T, q1, q0)
        assert np.all(e1 <= 0.1 + delta * (1 + L1)), float((e1 - delta * (1 + L1)).max())
        assert np.all(e0 <= 0.1 + delta * (1 + L0)), float((e0 - delta * (1 + L0)).max())
        # Quantisation really moved the points (else this part would test nothing).
        assert e1.max() > 0.1


def _line_lipschitz(F: np.ndarray, k0: np.ndarray, k1: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """|gradient over x0| of the signed distance of x1 to the line F x0, per match (N,)."""

    def signed(p0):
        h0 = np.c_[p0, np.ones(len(p0))]
        l1 = h0 @ F.T
        return np.sum(np.c_[k1, np.ones(len(k1))] * l1, axis=1) / np.linalg.norm(l1[:, :2], axis=1)

    k0 = k0.astype(np.float64)
    gx = (signed(k0 + [eps, 0]) - signed(k0 - [eps, 0])) / (2 * eps)
    gy = (signed(k0 + [0, eps]) - signed(k0 - [0, eps])) / (2 * eps)
    return np.hypot(gx, gy) * 1.05 + 1e-3


def _pose_errors(rec, scene) -> tuple[float, float]:
    """Largest relative-rotation and translation-direction errors (degrees) over image pairs."""
    images = {im.name: im for im in rec.images.values()}
    names = sorted(images)
    rot, trans = [], []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            pa, pb = images[a].cam_from_world(), images[b].cam_from_world()
            R = pb.rotation.matrix() @ pa.rotation.matrix().T
            t = pb.translation - R @ pa.translation
            T = scene.relative_pose(a, b)
            cos_r = (np.trace(R @ T[:3, :3].T) - 1) / 2
            cos_t = t @ T[:3, 3] / (np.linalg.norm(t) * np.linalg.norm(T[:3, 3]))
            rot.append(np.degrees(np.arccos(np.clip(cos_r, -1, 1))))
            trans.append(np.degrees(np.arccos(np.clip(cos_t, -1, 1))))
    return max(rot), max(trans)


def test_hloc_oracle_reconstruction(scene, oracle_sfm):
    """match_dense + pycolmap verification and mapping recover the true poses.

    The true intrinsics are given to COLMAP and fixed, so the only error source left
    is the keypoints: a 0.5 px convention error would bias every pose.
    """
    K = scene.views[0].K  # COLMAP convention, shared by all views
    image_options = {
        "camera_model": "PINHOLE",
        "camera_params": f"{K[0, 0]},{K[1, 1]},{K[0, 2]},{K[1, 2]}",
    }
    fixed = {
        "ba_refine_focal_length": False,
        "ba_refine_principal_point": False,
        "ba_refine_extra_params": False,
    }
    args = (
        oracle_sfm["images"],
        oracle_sfm["pairs"],
        oracle_sfm["features"],
        oracle_sfm["matches"],
    )
    kwargs = {
        "camera_mode": pycolmap.CameraMode.SINGLE,
        "image_options": image_options,
        "mapper_options": fixed,
    }

    rec = hloc_reconstruction.main(oracle_sfm["dir"] / "sfm", *args, **kwargs)
    assert rec is not None and rec.num_reg_images() == 5
    assert rec.num_points3D() > 500
    # Exact matches: observed ~1e-5 px and ~1e-5 degrees. Shifting every keypoint by
    # +0.5 px (a convention slip) gives 0.004 px, 0.08 and 0.13 degrees on this scene.
    assert rec.compute_mean_reprojection_error() < 1e-3
    rot, trans = _pose_errors(rec, scene)
    assert rot < 0.005 and trans < 0.01, (rot, trans)

    # Known poses: hloc's pose-based verification also writes UNDEFINED geometries
    # (hloc.triangulation.main then triangulates 0 points with pycolmap 4).
    tri = l2m_hloc.triangulation(oracle_sfm["dir"] / "tri", oracle_sfm["dir"] / "sfm", *args)
    assert tri.num_reg_images() == 5 and tri.num_points3D() > 500
    assert tri.compute_mean_reprojection_error() < 1e-3

    # Unverified matches: hloc writes UNDEFINED two-view geometries, which pycolmap 4
    # ignores; l2m_hloc.reconstruction labels them and mapping works.
    rec = l2m_hloc.reconstruction(
        oracle_sfm["dir"] / "sfm_noverif", *args, skip_geometric_verification=True, **kwargs
    )
    assert rec is not None and rec.num_reg_images() == 5
    rot, trans = _pose_errors(rec, scene)
    assert rot < 0.005 and trans < 0.01, (rot, trans)
    with pycolmap.Database.open(oracle_sfm["dir"] / "sfm_noverif" / "database.db") as db:
        _, geometries = db.read_two_view_geometries()
        assert len(geometries) == 10
        assert all(
            g.config == pycolmap.TwoViewGeometryConfiguration.UNCALIBRATED for g in geometries
        )


def test_hloc_reconstruction_reads_l2m_reconstruct_outputs(tmp_path):
    """features.h5 / matches.h5 / pairs.txt written by `l2m reconstruct` are valid hloc inputs."""
    from l2m_plugin.matching.sift import SiftPairMatcher
    from l2m_plugin.sfm.pipeline import reconstruct
    from l2m_plugin.testing.scenes import make_scene

    scene = make_scene(4, (320, 240), seed=2)
    images = tmp_path / "images"
    scene.write_images(images)
    out = tmp_path / "ours"
    ours = reconstruct(images, out, SiftPairMatcher(images), progress=False)
    rec = hloc_reconstruction.main(
        tmp_path / "hloc_sfm", images, out / "pairs.txt", out / "features.h5", out / "matches.h5"
    )
    assert rec is not None and rec.num_reg_images() == ours["model"]["registered_images"] == 4
    # hloc imported the same keypoints (it adds 0.5 to features.h5, as we subtracted it).
    db = pycolmap.Database.open(tmp_path / "hloc_sfm" / "database.db")
    ours_db = pycolmap.Database.open(out / "database.db")
    try:
        for im in db.read_all_images():
            ref = ours_db.read_image_with_name(im.name)
            np.testing.assert_allclose(
                db.read_keypoints(im.image_id)[:, :2], ours_db.read_keypoints(ref.image_id)[:, :2], atol=1e-4
            )
    finally:
        db.close()
        ours_db.close()
