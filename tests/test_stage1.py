"""Stage 1 (L2M Sec. 3.2): views of a lifted photo, the feature-Gaussian field, its fitting,
and the encoder's fine-tuning run (``l2m train stage1``)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from l2m_plugin import L2M
from l2m_plugin.lifting import FeatureGaussians, FitConfig, SceneViews, fit_scene, synthesize_views
from l2m_plugin.synthesis import SynthConfig, synthesize_pair, synthetic_depth
from l2m_plugin.training import Stage1Trainer, TrainConfigError, load_stage1_conf

from .conftest import free_port

REPO = Path(__file__).resolve().parents[1]
SIZE = 64  # views of 64 x 64: the tiny encoder's coarse grid is 4 x 4


def _photo(seed: int, size: int = SIZE) -> np.ndarray:
    """A smooth random colour texture (uint8 RGB)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, 6, 6, generator=g)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    x = x + 0.15 * torch.rand(1, 3, size, size, generator=g)
    return (x.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def test_synthesize_pair_with_a_given_K0_keeps_it_and_the_random_stream():
    img = _photo(0)
    conf = SynthConfig()
    depth = synthetic_depth((SIZE, SIZE), np.random.default_rng(5), conf.depth, img)
    a = synthesize_pair(img, depth, conf, np.random.default_rng(1))
    K0 = a.K0.copy()
    K0[0, 0] *= 1.3
    K0[1, 1] *= 1.3
    b = synthesize_pair(img, depth, conf, np.random.default_rng(1), K0=K0)
    assert np.array_equal(b.K0, K0)
    zoom = a.K1[0, 0] / a.K0[0, 0]
    assert b.K1[0, 0] == pytest.approx(K0[0, 0] * zoom) and b.K1[1, 1] == pytest.approx(K0[1, 1] * zoom)
    assert np.array_equal(a.T_0to1, b.T_0to1)  # same motion drawn: the stream did not shift
    with pytest.raises(ValueError, match="K0"):
        synthesize_pair(img, depth, conf, 1, K0=np.eye(2))


def test_views_share_the_source_camera_and_show_the_same_surface():
    img = _photo(1)
    conf = SynthConfig()
    depth = synthetic_depth((SIZE, SIZE), np.random.default_rng(2), conf.depth, img)
    sv = synthesize_views(img, depth, 3, conf, np.random.default_rng(3))
    assert sv.images.shape == (3, SIZE, SIZE, 3) and np.array_equal(sv.images[0], img)
    assert np.array_equal(sv.T_0to[0], np.eye(4)) and sv.masks[0].all()
    for v in (1, 2):
        zoom = sv.Ks[v, 0, 0] / sv.Ks[0, 0, 0]
        assert sv.Ks[v, 0, 2] == sv.Ks[0, 0, 2] and sv.Ks[v, 1, 1] == pytest.approx(sv.Ks[0, 1, 1] * zoom)
        assert 0.2 < sv.masks[v].mean() <= 1.0
    # a source pixel with depth, moved by T_0to[v] and projected with Ks[v], has the colour it
    # has in the source wherever it lands on the surface (the relighting/jitter of the view
    # changes colours smoothly: compare with a loose tolerance on the median)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    X = np.stack(((xs - sv.Ks[0, 0, 2]) / sv.Ks[0, 0, 0] * depth, (ys - sv.Ks[0, 1, 2]) / sv.Ks[0, 1, 1] * depth, depth), -1)
    R, t = sv.T_0to[1, :3, :3], sv.T_0to[1, :3, 3]
    Xc = X.reshape(-1, 3) @ R.T + t
    uv = Xc[:, :2] / Xc[:, 2:] * np.diag(sv.Ks[1])[:2] + sv.Ks[1, :2, 2]
    j, i = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    inside = (j >= 0) & (j < SIZE) & (i >= 0) & (i < SIZE)
    on = inside.copy()
    on[inside] = sv.masks[1][i[inside], j[inside]]
    assert on.mean() > 0.2
    src = img.reshape(-1, 3)[on].astype(float)
    dst = sv.images[1][i[on], j[on]].astype(float)
    random_pairs = np.abs(src - np.roll(src, 997, 0)).mean()
    assert np.median(np.abs(src - dst).mean(1)) < 0.5 * random_pairs


def test_gaussians_start_on_the_back_projected_block_centres():
    img = _photo(2, 32)
    z = np.full((32, 32), 2.0, np.float32)
    z[:8, :8] = 0.0  # no surface: no Gaussian for those blocks
    K = np.array([[40.0, 0, 16.0], [0, 40.0, 16.0], [0, 0, 1]])
    g = FeatureGaussians.from_depth(img, z, K, stride=4, feature_dim=5)
    assert len(g) == 64 - 4 and g.feature_dim == 5
    m = g.means.detach().double()
    uv = (m @ torch.from_numpy(K).T)[:, :2] / m[:, 2:]
    assert torch.allclose(((uv - 2.0) / 4.0), ((uv - 2.0) / 4.0).round(), atol=1e-5)  # centres 4 (j + 0.5)
    assert torch.allclose(m[:, 2], torch.full_like(m[:, 2], 2.0))
    assert torch.allclose(g.activated()["scales"], torch.full((60, 3), 4 * 2.0 / 40.0), rtol=1e-5)
    with pytest.raises(ValueError, match="no pixel has depth"):
        FeatureGaussians.from_depth(img, np.zeros((32, 32)), K)


def _plane_scene(num_views: int = 4, size: int = 48, grid: int = 6, channels: int = 8, noise: float = 0.0, seed=0):
    """A textured fronto-parallel plane at depth 1 seen from cameras translated along x and y,
    with per-view 'encoder features' that are a smooth function of the surface point plus
    independent per-view noise. Returns (views, noisy features, true features)."""
    g = torch.Generator().manual_seed(seed)
    f = 0.9 * size
    K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])
    shifts = [(0.0, 0.0), (0.08, 0.0), (-0.06, 0.05), (0.0, -0.07)][:num_views]
    freq = torch.randn(channels, 2, generator=g) * 3.0
    phase = torch.rand(channels, generator=g) * 6.28

    def feat(X, Y):  # (C, ...) smooth features of the surface point
        return torch.cos(freq[:, 0, None, None] * X + freq[:, 1, None, None] * Y + phase[:, None, None])

    def texture(X, Y):
        return 0.5 + 0.4 * torch.stack((torch.sin(9 * X), torch.cos(7 * Y), torch.sin(5 * (X + Y))), -1)

    images, Ts, true, noisy = [], [], [], []
    for tx, ty in shifts:
        T = np.eye(4)
        T[:3, 3] = (tx, ty, 0.0)  # X_v = X_0 + t: on the plane z = 1, X_0 = (u - cx) / f - tx
        c = (torch.arange(size) + 0.5 - size / 2) / f
        Y, X = torch.meshgrid(c - ty, c - tx, indexing="ij")
        images.append((texture(X, Y).clamp(0, 1) * 255).round().to(torch.uint8).numpy())
        cc = ((torch.arange(grid) + 0.5) * size / grid - size / 2) / f
        Yc, Xc = torch.meshgrid(cc - ty, cc - tx, indexing="ij")
        t_ = feat(Xc, Yc)
        true.append(t_)
        noisy.append(t_ + noise * torch.randn(t_.shape, generator=g))
        Ts.append(T)
    V = len(shifts)
    views = SceneViews(images=np.stack(images), Ks=np.stack([K] * V), T_0to=np.stack(Ts),
                       masks=np.ones((V, size, size), bool), depth0=np.ones((size, size), np.float32),
                       info=[{}] * V)  # fmt: skip
    return views, torch.stack(noisy), torch.stack(true)


@pytest.mark.parametrize("fit_geometry", [False, True])
def test_fitted_field_renders_multi_view_consistent_features(fit_geometry):
    """Per-view features = the surface's true features + independent noise per view: the
    field holds one feature per surface point, so its rendered targets are closer to the
    truth than any single view's features (the consensus of the views)."""
    views, noisy, true = _plane_scene(noise=0.3)
    conf = FitConfig(stride=2, feature_dim=8, feature_render_factor=8, iters=150 if not fit_geometry else 60,
                     fit_geometry=fit_geometry, backend="torch")  # fmt: skip
    fitted = fit_scene(views, noisy, conf)
    assert fitted.targets.shape == noisy.shape and fitted.valid.shape == (4, 6, 6)
    v = fitted.valid
    assert v[0].float().mean() > 0.9 and v.float().mean() > 0.6  # the translated views leave the plane's edge
    m = v[:, None].expand_as(noisy)
    err_in = (noisy - true).abs()[m].mean()
    err_out = (fitted.targets - true).abs()[m].mean()
    assert err_out < 0.65 * err_in, (float(err_out), float(err_in))
    assert fitted.stats["feature_l1"] < fitted.stats["feature_l1_init"]
    assert fitted.stats["psnr"] > 20.0  # the colours are fitted too (the geometry is exact)


def test_fitting_noise_free_features_reproduces_them():
    views, noisy, true = _plane_scene(noise=0.0, seed=1)
    fitted = fit_scene(views, noisy, FitConfig(stride=2, feature_dim=8, feature_render_factor=8, iters=150,
                                               backend="torch"))  # fmt: skip
    m = fitted.valid[:, None].expand_as(true)
    # the field blurs over its Gaussians' footprint and is rank-limited: small, not zero
    assert (fitted.targets - true).abs()[m].mean() < 0.12 * true.abs().mean()


# ---------------------------------------------------------------- the training run


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    import cv2

    root = tmp_path_factory.mktemp("photos")
    for i in range(3):
        cv2.imwrite(str(root / f"p{i}.png"), _photo(10 + i, 96)[..., ::-1])
    return root


def _tiny_init(images: Path) -> Path:
    """A random-init matcher of the ``tiny`` architecture (the one with a stride-16 coarse
    module, which these tests tune), written once beside the test photos."""
    from l2m_plugin.config import PRESETS
    from l2m_plugin.weights import save_checkpoint

    path = images.parent / f"{images.name}_tiny_init.pth"
    if not path.is_file():
        torch.manual_seed(1234)  # not the seed a fresh stage-2 decoder gets
        save_checkpoint(L2M(PRESETS["tiny"].replace(coarse_res=SIZE)), path)
    return path


def _s1conf(images: Path, out: Path, shipped: bool = False, **train):
    # shipped: stage1_tiny.yaml as it is (l2m-tiny, arch tiny-ds, its whole CNN at stride 8);
    # else the stride-16 module of a random tiny-architecture matcher (cheap, and the
    # machinery is the same)
    over = [] if shipped else [f"train.init_weights={_tiny_init(images)}", "train.level=16",
                               "train.trainable=coarse", "fit.feature_render_factor=4"]
    over += [
        f"data.images={images}", f"train.out={out}", f"data.size=[{SIZE},{SIZE}]", "data.views=2",
        "data.split=all", "fit.iters=3", "fit.stride=8", "fit.feature_dim=8", "train.batch_size=2",
        "train.progress=false", "train.tensorboard=false", "train.log_every=1", "train.amp=none",
        "train.warmup_steps=0", "train.lr=1e-3",
    ]  # fmt: skip
    over += [f"train.{k}={v}" for k, v in train.items()]
    return load_stage1_conf(REPO / "configs" / "train" / "stage1_tiny.yaml", over)


def _sd(path) -> dict:
    return L2M.from_pretrained(path).state_dict()


def test_stage1_run_tunes_only_the_encoder_and_lowers_the_loss(photos, tmp_path):
    """The shipped config on l2m-tiny: only the encoder's CNN moves, and the loss falls."""
    path = Stage1Trainer(_s1conf(photos, tmp_path / "run", shipped=True, steps=24)).run()
    assert path == tmp_path / "run" / "model.pth"
    assert len(list((tmp_path / "run" / "fields" / "scenes").glob("*.npz"))) == 3
    start, end = L2M.from_pretrained().state_dict(), _sd(path)
    changed = {k for k in start if not torch.equal(start[k], end[k])}
    assert changed and all(k.startswith("encoder.cnn.") for k in changed), sorted(changed)[:5]
    _loss_falls(tmp_path)
    _scene_is_reproducible(photos, tmp_path / "run")


def _scene_is_reproducible(photos, run):
    """photo_views (what benchmarks/stage1_targets.py re-lifts with) gives a stored scene's views."""
    from l2m_plugin.lifting.dataset import photo_views
    from l2m_plugin.synthesis import SYNTH_PRESETS
    from l2m_plugin.synthesis.generate import RunSettings, SourceLoader, source_listing

    st = RunSettings(images=str(photos), depth="synthetic", size=f"{SIZE}x{SIZE}", seed=0, split="all")
    names = source_listing(st)
    sv, feats = photo_views(L2M.from_pretrained(), SourceLoader(st, SYNTH_PRESETS["l2m"]), names[1], 1, views=2,
                            synth_conf=SYNTH_PRESETS["l2m"], level=8, seed=0)  # fmt: skip
    with np.load(run / "fields" / "scenes" / "000001.npz") as z:
        assert np.array_equal(sv.images, z["images"]) and np.array_equal(sv.T_0to, z["T_0to"])
    assert tuple(feats.shape) == (2, 128, SIZE // 8, SIZE // 8)


def test_stage1_tunes_only_the_coarse_module_when_asked(photos, tmp_path):
    path = Stage1Trainer(_s1conf(photos, tmp_path / "run", steps=2)).run()
    start, end = L2M.from_pretrained(_tiny_init(photos)).state_dict(), _sd(path)
    changed = {k for k in start if not torch.equal(start[k], end[k])}
    assert changed and all(k.startswith("encoder.coarse.") for k in changed), sorted(changed)[:5]


def _loss_falls(tmp_path):
    """The run's loss over its last 6 steps is below 0.85x that of its first 6."""
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    header = rows[0].split(",")
    loss = [float(r.split(",")[header.index("loss")]) for r in rows[1:]]
    assert len(loss) == 24 and math.isfinite(loss[-1])
    assert np.mean(loss[-6:]) < 0.85 * np.mean(loss[:6]), loss  # it regresses the lifted targets (0.75 seen)


def test_stage1_cosine_loss_is_one_minus_the_logged_cosine(photos, tmp_path):
    """train.loss=cosine optimises 1 - cosine (the logged cosine rises); L1 is still logged."""
    Stage1Trainer(_s1conf(photos, tmp_path / "run", steps=8, loss="cosine")).run()
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    header = rows[0].split(",")
    col = {k: [float(r.split(",")[header.index(k)]) for r in rows[1:]] for k in ("loss", "cosine", "l1")}
    assert len(col["loss"]) == 8
    assert np.allclose(col["loss"], 1.0 - np.array(col["cosine"]), atol=1e-6)
    assert np.mean(col["cosine"][-3:]) > np.mean(col["cosine"][:3]) and all(v > 0 for v in col["l1"])


def test_stage1_resume_equals_an_uninterrupted_run(photos, tmp_path):
    full = Stage1Trainer(_s1conf(photos, tmp_path / "full", steps=4)).run()
    cut = tmp_path / "cut"
    Stage1Trainer(_s1conf(photos, cut, steps=4, stop_at=2)).run()
    assert not (cut / "model.pth").exists()
    resumed = Stage1Trainer(_s1conf(photos, cut, steps=4)).run()
    a, b = _sd(full), _sd(resumed)
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point()) < 1e-6
    # the fields were lifted once, with the initial encoder, identically in both runs
    for f in sorted((tmp_path / "full" / "fields" / "scenes").glob("*.npz")):
        with np.load(f) as x, np.load(cut / "fields" / "scenes" / f.name) as y:
            assert np.array_equal(x["targets"], y["targets"])


def test_stage2_starts_from_a_stage1_encoder_with_a_fresh_decoder(photos, tmp_path):
    from l2m_plugin.training import build_model, load_conf

    s1 = Stage1Trainer(_s1conf(photos, tmp_path / "s1", steps=2)).run()
    conf = load_conf(REPO / "configs" / "train" / "stage2_tiny.yaml",
                     ["data.root=D", "train.out=O", f"train.encoder_init={s1}"])  # fmt: skip
    model = build_model(conf)
    tuned = _sd(s1)
    enc = {k: v for k, v in model.state_dict().items() if k.startswith("encoder.")}
    assert all(torch.equal(v, tuned[k]) for k, v in enc.items())
    dec_w = "decoder.embedding_decoder.to_out.weight"
    assert not torch.equal(model.state_dict()[dec_w], tuned[dec_w])  # the decoder is new
    with pytest.raises(TrainConfigError, match="exclude"):
        build_model(load_conf(REPO / "configs" / "train" / "stage2_tiny.yaml",
                              ["data.root=D", "train.out=O", f"train.encoder_init={s1}", f"train.init_weights={s1}"]))


def test_stage1_config_errors_name_the_key(tmp_path):
    with pytest.raises(TrainConfigError, match="data.images"):
        load_stage1_conf(REPO / "configs" / "train" / "stage1_tiny.yaml", [f"train.out={tmp_path}"])
    with pytest.raises(TrainConfigError, match="trainable"):
        load_stage1_conf(None, ["data.images=I", "train.out=O", "train.trainable=decoder"])
    with pytest.raises(TrainConfigError, match="itrs"):
        load_stage1_conf(None, ["data.images=I", "train.out=O", "fit.itrs=3"])
    with pytest.raises(TrainConfigError, match="train.loss must be l1 or cosine"):
        load_stage1_conf(None, ["data.images=I", "train.out=O", "train.loss=l2"])
    big = REPO / "configs" / "train" / "stage1_l2m.yaml"
    conf = load_stage1_conf(big, ["data.images=I", "train.out=O"])
    assert conf.data.depth == "transformers"  # the GPU recipe: real monocular depth, not synthetic
    assert conf.train.lr == 1e-5 and conf.train.weight_decay == 1e-4 and conf.fit.fit_geometry


def test_cli_train_stage1(photos, tmp_path, capsys):
    from l2m_plugin.cli import main

    args = ["train", "stage1", "--conf", str(REPO / "configs" / "train" / "stage1_tiny.yaml"),
            f"data.images={photos}", f"train.out={tmp_path / 'run'}", f"data.size=[{SIZE},{SIZE}]", "data.views=2",
            "data.split=all", "data.max_images=1", "fit.iters=2", "fit.stride=8", "train.steps=1",
            "train.batch_size=2", "train.progress=false", "train.tensorboard=false"]  # fmt: skip
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "run" / "model.pth")
    assert main(["train", "stage1", f"data.images={tmp_path / 'none'}", f"train.out={tmp_path / 'r2'}"]) == 2
    assert "does not exist" in capsys.readouterr().err


def _ddp_worker(rank: int, world: int, port: int, images: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    trainer = Stage1Trainer(_s1conf(Path(images), Path(out), steps=2, batch_size=1))
    trainer.run()
    torch.save(trainer.model.state_dict(), Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_stage1_ddp_two_gloo_processes_share_the_lifting_and_agree(photos, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, free_port(), str(photos), str(tmp_path)), nprocs=2, join=True)
    assert len(list((tmp_path / "fields" / "scenes").glob("*.npz"))) == 3  # ranks lifted 2 + 1
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)


def test_stage1_refuses_the_coarse_module_of_a_network_without_one(photos, tmp_path):
    """l2m-tiny (tiny-ds) has no stride-16 module: asking to tune it names the fix."""
    with pytest.raises(TrainConfigError, match="no stride-16 module.*train.level=8 train.trainable=all"):
        Stage1Trainer(_s1conf(photos, tmp_path / "run", shipped=True, steps=1, level=16, trainable="coarse")).run()
