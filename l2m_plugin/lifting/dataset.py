"""Lifted scenes on disk: the fitted feature targets of L2M stage 1, and their data set.

``lift_photos`` runs, for every source photo of a run: load it at the training size with
its depth (:class:`~l2m_plugin.synthesis.generate.SourceLoader`, as ``l2m synth``),
synthesise ``views`` views (:func:`~l2m_plugin.lifting.synthesize_views`), compute the
frozen encoder's features of each, fit a feature-Gaussian field
(:func:`~l2m_plugin.lifting.fit_scene`) and store the rendered targets. A folder::

    scenes/000123.npz     one photo: images (V, H, W, 3) uint8, targets (V, C, h, w)
                          float16, valid (V, h, w) bool, Ks (V, 3, 3), T_0to (V, 4, 4)
                          float64, source (str), stats (JSON str)
    failures.jsonl        photos that could not be lifted: {"index", "source", "error"}

Files are written atomically (a temporary name, then a rename), so an interrupted run
resumes by skipping the scenes that exist; a failing photo is recorded and skipped. The
folder's configuration is checked by its owner (the stage-1 run's ``config.yaml``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from l2m_plugin.files import append_jsonl, atomic_path
from l2m_plugin.lifting.fit import fit_scene
from l2m_plugin.lifting.views import synthesize_views
from l2m_plugin.models.features import encode_level
from l2m_plugin.synthesis import SynthesisError, synthetic_depth
from l2m_plugin.synthesis.errors import BackendUnavailableError

__all__ = ["lift_photos", "photo_views", "LiftedViews", "encoder_level_features"]

logger = logging.getLogger(__name__)


def encoder_level_features(encoder, x: torch.Tensor, level: int) -> torch.Tensor:
    """Features of one pyramid level of an :class:`~l2m_plugin.models.encoder.Encoder`,
    with gradients wherever its parameters require them (unlike ``Encoder.forward``, which
    runs a DINOv2 ViT under ``no_grad`` as RoMa does: stage 1 fine-tunes it).

    Args:
        encoder: the matcher's encoder.
        x: (B, 3, H, W) normalised input (the matcher's colour order and normalisation).
        level: 16 (the coarse features: stride 16 for a CNN, 14 for a ViT) or a CNN stride
            (1, 2, 4, 8).
    Returns:
        (B, C, H / s, W / s).
    Raises:
        ValueError: ``level`` is neither 16 nor a level of the CNN pyramid.
    """
    if level == 16 and encoder.coarse_kind == "dinov2":
        return encoder.dinov2(x)
    if level == 16 and encoder.coarse_kind == "vit":
        return encoder.coarse(x)
    feats = encoder.cnn(x.contiguous(memory_format=torch.channels_last))
    if level == 16:
        return encoder.coarse(feats[8])
    if level not in feats:
        raise ValueError(f"level must be 16 or one of {sorted(feats)}, got {level}")
    return feats[level]


def photo_views(model, loader, rel: str, index: int, *, views: int, synth_conf, level: int = 16,
                seed: int = 0):  # fmt: skip
    """The views of one photo and the frozen encoder's features of each: the input of the fit.

    Photo ``index`` (``rel``, a path relative to the loader's folder) is loaded at the
    run's size, given its depth (the loader's, else :func:`~l2m_plugin.synthesis.synthetic_depth`)
    and ``views`` views (:func:`synthesize_views`), all drawn from
    ``numpy.random.default_rng([seed, index])``: the same photo, index and seed give the
    same views, so a scene of :func:`lift_photos` can be made again (``benchmarks/stage1_targets.py``).

    Args:
        model: the :class:`~l2m_plugin.L2M` whose encoder gives the features.
        loader: a :class:`~l2m_plugin.synthesis.generate.SourceLoader`.
        rel, index: the photo and its index in the run's listing.
        views, synth_conf, level, seed: as :func:`lift_photos`.
    Returns:
        ``(sv, feats)``: :class:`~l2m_plugin.lifting.SceneViews` and (V, C, h, w) float32
        CPU features of each view at ``level`` (the views' own size, no resizing).
    Raises:
        SynthesisError, ValueError, OSError: the photo cannot be read or lifted.
    """
    img, depth, sky, _ = loader.load(rel)
    rng = np.random.default_rng([int(seed), int(index)])
    z = depth if depth is not None else synthetic_depth(img.shape[1::-1], rng, synth_conf.depth, img)
    sv = synthesize_views(img, z, views, synth_conf, rng, sky_mask=sky)
    x = torch.from_numpy(sv.images).permute(0, 3, 1, 2).float().div(255.0)
    return sv, encode_level(model, x, tuple(x.shape[-2:]), level)


def lift_photos(model, names: list[str], loader, out, *, views: int, synth_conf, fit_conf, level: int = 16,
                seed: int = 0, indices=None, progress: bool = True) -> dict:  # fmt: skip
    """Lift photos into fitted feature targets (see the module docstring).

    Args:
        model: the :class:`~l2m_plugin.L2M` whose (frozen) encoder gives the features to lift.
        names: the run's photos (relative paths, from ``source_listing``); scene ids are
            their indices.
        loader: a :class:`~l2m_plugin.synthesis.generate.SourceLoader`.
        out: the folder (created).
        views: views per photo, the source included.
        synth_conf: :class:`~l2m_plugin.synthesis.SynthConfig` of the novel views.
        fit_conf: :class:`~l2m_plugin.lifting.FitConfig`.
        level: the encoder level lifted (16: the coarse features).
        seed: photo ``i`` uses ``numpy.random.default_rng([seed, i])`` (depth, views).
        indices: only these photo indices (a rank's share); default all.
    Returns:
        summary: ``written``, ``skipped``, ``failed`` (records), ``seconds``.
    Raises:
        BackendUnavailableError, MemoryError: stop the run. A photo that cannot be read,
        lifted or fitted (SynthesisError, ValueError, OSError, RuntimeError) is recorded in
        ``failures.jsonl`` and skipped; the scenes written before it are kept.
    """
    import time

    from tqdm import tqdm

    out = Path(out)
    (out / "scenes").mkdir(parents=True, exist_ok=True)
    for stale in (out / "scenes").glob("*.partial*"):
        stale.unlink(missing_ok=True)
    todo = list(range(len(names))) if indices is None else list(indices)
    summary = {"written": 0, "skipped": 0, "failed": [], "seconds": 0.0}
    model.eval()
    bar = tqdm(total=len(todo), disable=not progress, desc="stage1 lift", unit="photo")
    for i in todo:
        path = out / "scenes" / f"{i:06d}.npz"
        if path.is_file():
            summary["skipped"] += 1
            bar.update(1)
            continue
        t0 = time.perf_counter()
        rel = names[i]
        try:
            sv, feats = photo_views(model, loader, rel, i, views=views, synth_conf=synth_conf, level=level, seed=seed)
            fitted = fit_scene(sv, feats, fit_conf)
        except (MemoryError, BackendUnavailableError, KeyboardInterrupt):
            raise
        except (SynthesisError, ValueError, OSError, RuntimeError) as exc:
            rec = {"index": i, "source": rel, "error": f"{type(exc).__name__}: {exc}"}
            logger.warning("stage 1: skipped %s: %s", rel, rec["error"])
            append_jsonl(out / "failures.jsonl", rec)
            summary["failed"].append(rec)
            bar.update(1)
            continue
        stats = {**fitted.stats, "source_view_feature_l1": float((fitted.targets[0] - feats[0]).abs().mean())}
        with atomic_path(path) as tmp:  # scenes/<id>.partial.npz until complete
            np.savez(
                tmp, images=sv.images, targets=fitted.targets.numpy().astype(np.float16), valid=fitted.valid.numpy(),
                Ks=sv.Ks, T_0to=sv.T_0to, source=np.array(rel), stats=np.array(json.dumps(stats)),
            )  # fmt: skip
        summary["written"] += 1
        summary["seconds"] += time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(feat_l1=f"{stats['feature_l1_init']:.3f}->{stats['feature_l1']:.3f}", psnr=f"{stats['psnr']:.1f}")
    bar.close()
    return summary


class LiftedViews(torch.utils.data.Dataset):
    """Every view of every lifted scene in a folder of :func:`lift_photos`, as training items.

    Args:
        root: the folder (``scenes/*.npz``).
        hflip: probability of flipping an item left-right (image, target and mask together),
            drawn from ``seed`` and the sampler's stream position (or the index).
        seed: see ``hflip``.
    Items: ``image`` (3, H, W) float32 RGB in [0, 1]; ``target`` (C, h, w) float32;
    ``valid`` (h, w) bool; ``scene`` int; ``view`` int.
    Raises:
        FileNotFoundError: no scene in ``root``.
    """

    def __init__(self, root, *, hflip: float = 0.0, seed: int = 0):
        self.root = Path(root)
        self.files = sorted((self.root / "scenes").glob("[0-9]*[0-9].npz"))
        if not self.files:
            raise FileNotFoundError(f"no lifted scene (scenes/*.npz) in {self.root}")
        with np.load(self.files[0]) as z:
            self.views = int(z["images"].shape[0])
        self.index = [(f, v) for f in self.files for v in range(self.views)]
        self.hflip, self.seed = float(hflip), int(seed)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key) -> dict:
        """``dataset[i]`` or ``dataset[(i, aug_seed)]`` (the form
        :class:`~l2m_plugin.training.data.StepSampler` yields: the flip is drawn from the
        stream position, so a resumed run flips the same items)."""
        i, aug = (key if isinstance(key, tuple) else (key, None))
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"view index {i} out of range [0, {len(self)})")
        f, v = self.index[i]
        with np.load(f) as z:
            image = torch.from_numpy(z["images"][v]).permute(2, 0, 1).float() / 255.0
            target = torch.from_numpy(z["targets"][v].astype(np.float32))
            valid = torch.from_numpy(z["valid"][v])
        if self.hflip > 0 and np.random.default_rng([self.seed, i if aug is None else int(aug)]).random() < self.hflip:
            image, target, valid = image.flip(-1), target.flip(-1), valid.flip(-1)
        return {"image": image, "target": target, "valid": valid, "scene": int(f.stem), "view": v}
