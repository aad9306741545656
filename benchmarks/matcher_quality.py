#!/usr/bin/env python
"""Quality of a matcher against OpenCV SIFT: held-out synthetic pairs, real pairs, SfM.

Three measurements, each optional, all with the same model:

1. ``--synth DIR``: pairs in the ``l2m-synth`` format (``l2m synth``) made from photos
   *not* used in training. For each pair the dense ``warp0`` is resized to image 0's
   pixel grid (bilinear, pixel centres at i + 0.5) and compared with the exact
   ground-truth ``warp0`` wherever ``valid0``: end-point error (EPE) in pixels of
   image 1 and dense PCK@1/3/5 px. The sampled matches (``--num-matches``) and
   SIFT's matches (ratio test + mutual check, :class:`~l2m_plugin.matching.dense.SiftPairMatcher`)
   are scored the same way: the share of matches whose keypoint in image 1 lies
   within 1/3/5 px of the ground truth at its keypoint in image 0 (matches on
   pixels without ground truth are left out and counted).
2. ``--pairs-dir DIR``: real pairs ``<name>_A.*`` / ``<name>_B.*``; RANSAC inliers of a
   fundamental matrix (OpenCV USAC_MAGSAC, ``--ransac-px``, confidence 0.9999,
   10,000 iterations, seeded) for the model's sampled matches and for SIFT's, their
   coverage of image A, and a cross-check, since these pairs have no ground truth:
   the median epipolar distance of each method's inliers under the *other* method's
   F (a degenerate F can collect many inliers from wrong matches; it fails this).
   All of the model's sampled matches (what ``l2m match`` draws, not only the
   inliers) are also scored under SIFT's F, overall and by certainty: the median
   symmetric epipolar distance and the share within 2 / 5 px. This is a lower bound
   of their error (a wrong match along its epipolar line passes).
3. ``--self-match IMAGE [IMAGE ...]``: each photo matched with itself (the exact answer is
   the identity): median error of the dense warp at the output resolution (pixels of that
   grid) and of the sampled matches in the original image (``||kp1 - kp0||``), their share
   within 0.5 / 1 px, and the median certainty of the dense output and of the samples.
4. ``--sfm DIR``: ``l2m_plugin.sfm.pipeline.reconstruct`` on the folder (exhaustive
   pairs, one camera per image, the defaults of ``l2m reconstruct``) with the model
   and with SIFT: registered images, 3D points, mean track length, reprojection error.

Example (l2m-tiny, about 10 minutes on 2 cores)::

    python benchmarks/matcher_quality.py --weights l2m-tiny \\
        --synth outputs/synth_heldout --pairs-dir ../shared/data/pairs \\
        --sfm ../shared/data/sacre_coeur/mapping --json outputs/quality/l2m-tiny.json

Results are printed as Markdown tables and written to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

_ROOT = Path(__file__).resolve().parents[1]
_SHARED = _ROOT.parent / "shared" / "data"
_THRESH = (1.0, 3.0, 5.0)


def _parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=None, help="registry name or checkpoint (default: the package default model)")
    p.add_argument("--config", default=None, help="matcher config: a configs/matcher/*.yaml file (as `l2m match --config`)")
    p.add_argument("--coarse-res", type=int, default=None)
    p.add_argument("--upsample-res", type=int, default=None, help="0 for none")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    p.add_argument("--synth", type=Path, default=None, help="held-out l2m-synth folder")
    p.add_argument("--max-synth-pairs", type=int, default=200)
    p.add_argument("--pairs-dir", type=Path, default=None, help="folder of <name>_A / <name>_B real pairs")
    p.add_argument("--sfm", type=Path, default=None, help="image folder to reconstruct")
    p.add_argument("--self-match", type=Path, nargs="+", default=None, help="photos to match with themselves")
    p.add_argument("--num-matches", type=int, default=5000)
    p.add_argument("--ransac-px", type=float, default=1.0)
    p.add_argument("--sift-features", type=int, default=8000)
    p.add_argument("--sift-ratio", type=float, default=0.8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="work folder for the SfM runs (default: temporary)")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def _load_model(args):
    from l2m_plugin.config import resolve_config
    from l2m_plugin.models.matcher import load_matcher

    overrides = {}
    if args.coarse_res:
        overrides["coarse_res"] = args.coarse_res
    if args.upsample_res is not None:
        overrides["upsample_res"] = args.upsample_res or None
    if args.dtype:
        overrides["dtype"] = args.dtype
    weights = args.weights
    if weights is None:
        from l2m_plugin.weights import DEFAULT_WEIGHTS

        weights = DEFAULT_WEIGHTS
    return load_matcher(weights, config=resolve_config(config=args.config), **overrides)


def _precision(kp0: np.ndarray, kp1: np.ndarray, gt_px: np.ndarray, valid: np.ndarray) -> dict:
    """Share of matches within each threshold of the ground truth at their pixel of image 0."""
    h, w = valid.shape
    col = np.clip(np.floor(kp0[:, 0]).astype(int), 0, w - 1)
    row = np.clip(np.floor(kp0[:, 1]).astype(int), 0, h - 1)
    ok = valid[row, col]
    err = np.linalg.norm(kp1[ok] - gt_px[row[ok], col[ok]], axis=1)
    res = {"matches": int(len(kp0)), "with_ground_truth": int(ok.sum())}
    for t in _THRESH:
        res[f"precision@{t:g}px"] = float((err <= t).mean()) if len(err) else float("nan")
    return res


def synthetic_quality(model, sift_cls, root: Path, max_pairs: int, num: int, seed: int, sift_kw: dict) -> dict:
    """Dense EPE / PCK of ``model`` and match precision of model and SIFT on l2m-synth pairs."""
    ids = [json.loads(line)["id"] for line in (root / "pairs.jsonl").read_text().splitlines() if line.strip()]
    ids = sorted(ids)[:max_pairs]
    if not ids:
        raise ValueError(f"{root / 'pairs.jsonl'} lists no pairs")
    errs, per_pair = [], []
    prec_model, prec_sift = [], []
    for k, pid in enumerate(ids):
        d = root / "pairs" / pid
        g = np.load(d / "geometry.npz")
        valid0, warp_gt = g["valid0"].astype(bool), g["warp0"].astype(np.float32)
        h, w = valid0.shape
        scale = np.array([w / 2.0, h / 2.0], np.float32)  # same size images: normalised -> pixels
        gt_px = (warp_gt + 1.0) * scale
        with torch.inference_mode():
            out = model.match(str(d / "image0.png"), str(d / "image1.png"))
            pred = F.interpolate(out["warp0"].permute(0, 3, 1, 2).float(), size=(h, w), mode="bilinear", align_corners=False)
            pred_px = (pred[0].permute(1, 2, 0).numpy() + 1.0) * scale
            e = np.linalg.norm(pred_px - gt_px, axis=-1)[valid0]
            errs.append(e)
            m = model.sample(out, num=num, generator=torch.Generator().manual_seed(seed + k))
        pm = _precision(m["keypoints0"].numpy(), m["keypoints1"].numpy(), gt_px, valid0)
        prec_model.append(pm)
        sift = sift_cls(d, **sift_kw)
        k0, k1, _ = sift("image0.png", "image1.png")
        ps = _precision(k0, k1, gt_px, valid0)
        prec_sift.append(ps)
        per_pair.append({"id": pid, "epe_median": float(np.median(e)) if len(e) else None, "model": pm, "sift": ps})
    allerr = np.concatenate(errs)

    def _agg(rows):
        res = {"matches_mean": float(np.mean([r["matches"] for r in rows]))}
        for t in _THRESH:
            vals = [r[f"precision@{t:g}px"] for r in rows if r["with_ground_truth"]]
            res[f"precision@{t:g}px"] = float(np.mean(vals)) if vals else float("nan")
        return res

    return {
        "pairs": len(ids),
        "dense": {
            "valid_pixels": int(len(allerr)),
            "epe_mean_px": float(allerr.mean()),
            "epe_median_px": float(np.median(allerr)),
            **{f"pck@{t:g}px": float((allerr <= t).mean()) for t in _THRESH},
        },
        "model_matches": _agg(prec_model),
        "sift_matches": _agg(prec_sift),
        "per_pair": per_pair,
    }


def self_match(model, images: list[Path], num: int, seed: int) -> dict:
    """Each image against itself: errors of the dense warp and of the sampled matches, certainty."""
    from l2m_plugin.coords import normalized_grid

    res = {}
    for k, path in enumerate(images):
        with torch.inference_mode():
            out = model.match(str(path), str(path))
            warp = out["warp0"][0].float()
            h, w = warp.shape[:2]
            dense = ((warp - normalized_grid(h, w)) * torch.tensor([w / 2, h / 2])).norm(dim=-1)
            m = model.sample(out, num=num, generator=torch.Generator().manual_seed(seed + k))
        e = (m["keypoints1"] - m["keypoints0"]).norm(dim=-1).numpy()
        res[path.name] = {
            "output_res": [h, w],
            "dense_median_px": float(dense.median()),
            "dense_within_1px": float((dense < 1).float().mean()),
            "certainty_median": float(out["certainty0"].median()),
            "matches": int(len(e)),
            "match_median_px": float(np.median(e)) if len(e) else float("nan"),
            "match_within_0.5px": float((e < 0.5).mean()) if len(e) else float("nan"),
            "match_within_1px": float((e < 1).mean()) if len(e) else float("nan"),
            "match_certainty_median": float(m["certainty"].median()) if len(e) else float("nan"),
        }
    return res


def _ransac(kp0: np.ndarray, kp1: np.ndarray, px: float, seed: int):
    """``(F (3, 3) or None, inlier mask (N,) bool)`` of OpenCV USAC_MAGSAC."""
    import cv2

    if len(kp0) < 8:
        return None, np.zeros(len(kp0), bool)
    cv2.setRNGSeed(seed)
    Fm, mask = cv2.findFundamentalMat(kp0.astype(np.float64), kp1.astype(np.float64), cv2.USAC_MAGSAC, px, 0.9999, 10000)
    if Fm is None or mask is None:
        return None, np.zeros(len(kp0), bool)
    return Fm[:3], mask.ravel().astype(bool)


def _sym_epipolar_px(Fm, kp0: np.ndarray, kp1: np.ndarray) -> np.ndarray:
    """Symmetric point-to-epipolar-line distance in pixels, (N,)."""
    x0 = np.c_[kp0, np.ones(len(kp0))]
    x1 = np.c_[kp1, np.ones(len(kp1))]
    l1, l0 = x0 @ Fm.T, x1 @ Fm
    num = np.abs((x1 * l1).sum(1))
    return 0.5 * (num / np.hypot(l1[:, 0], l1[:, 1]) + num / np.hypot(l0[:, 0], l0[:, 1]))


CERT_BINS = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.01))


def _epipolar_precision(e: np.ndarray) -> dict:
    """Count, median and share within 2 / 5 px of symmetric epipolar distances ``e`` (N,)."""
    if not len(e):
        return {"matches": 0}
    return {"matches": int(len(e)), "median_px": float(np.median(e)),
            "within_2px": float((e <= 2).mean()), "within_5px": float((e <= 5).mean())}  # fmt: skip


def _coverage(kp: np.ndarray, size: tuple[int, int], cells: int = 10) -> float:
    """Share of a cells x cells grid over the image that holds at least one keypoint."""
    if not len(kp):
        return 0.0
    w, h = size
    c = np.clip((kp[:, 0] / w * cells).astype(int), 0, cells - 1)
    r = np.clip((kp[:, 1] / h * cells).astype(int), 0, cells - 1)
    return len(set(zip(r.tolist(), c.tolist(), strict=True))) / cells**2


def real_pairs(model, sift_cls, pairs_dir: Path, num: int, px: float, seed: int, sift_kw: dict) -> dict:
    """RANSAC inliers of the model's and SIFT's matches on ``<name>_A`` / ``<name>_B`` pairs."""
    from l2m_plugin.io import list_images

    names = list_images(pairs_dir)
    stems = sorted({n.rsplit("_", 1)[0] for n in names if n.rsplit(".", 1)[0].endswith(("_A", "_B"))})
    res = {}
    for stem in stems:
        a = next(n for n in names if n.startswith(stem + "_A."))
        b = next(n for n in names if n.startswith(stem + "_B."))
        with torch.inference_mode():
            out = model.match(str(pairs_dir / a), str(pairs_dir / b))
            m = model.sample(out, num=num, generator=torch.Generator().manual_seed(seed))
        k0, k1 = m["keypoints0"].numpy(), m["keypoints1"].numpy()
        sift = sift_cls(pairs_dir, **sift_kw)
        s0, s1, _ = sift(a, b)
        size0 = sift.image(a).image.size
        F_m, in_m = _ransac(k0, k1, px, seed)
        F_s, in_s = _ransac(s0, s1, px, seed)
        row = {
            "model_matches": int(len(k0)),
            "model_inliers": int(in_m.sum()),
            "model_inlier_coverage": _coverage(k0[in_m], size0),
            "sift_matches": int(len(s0)),
            "sift_inliers": int(in_s.sum()),
            "sift_inlier_coverage": _coverage(s0[in_s], size0),
        }
        # Cross-check without ground truth: each method's F against the other's inliers.
        if F_m is not None and in_s.any():
            row["sift_inliers_under_model_F_median_px"] = float(np.median(_sym_epipolar_px(F_m, s0[in_s], s1[in_s])))
        if F_s is not None and in_m.any():
            row["model_inliers_under_sift_F_median_px"] = float(np.median(_sym_epipolar_px(F_s, k0[in_m], k1[in_m])))
        if F_s is not None and len(k0):
            # All sampled matches (what `l2m match` draws), not only RANSAC's inliers, under
            # SIFT's F: a lower bound of their error (a wrong match along its epipolar line
            # passes), overall and by certainty.
            e = _sym_epipolar_px(F_s, k0, k1)
            c = m["certainty"].float().numpy()
            row["model_matches_under_sift_F"] = _epipolar_precision(e)
            row["model_matches_under_sift_F_by_certainty"] = {
                f"[{lo:.2f},{hi:.2f})": _epipolar_precision(e[(c >= lo) & (c < hi)]) for lo, hi in CERT_BINS
            }
        res[stem] = row
    return res


def sfm(model, image_dir: Path, work: Path, num: int, seed: int, sift_kw: dict) -> dict:
    """``reconstruct`` with the model and with SIFT on the same folder."""
    from l2m_plugin.matching.dense import DensePairMatcher
    from l2m_plugin.matching.sift import SiftPairMatcher
    from l2m_plugin.sfm.pipeline import reconstruct

    res = {}
    for name, pm in (
        ("model", DensePairMatcher(model, image_dir, num_matches=num, seed=seed)),
        ("sift", SiftPairMatcher(image_dir, **sift_kw)),
    ):
        t0 = time.perf_counter()
        summary = reconstruct(image_dir, work / name, pm, overwrite=True, seed=seed, progress=False)
        m = summary["model"]
        res[name] = {k: m.get(k) for k in ("registered_images", "num_images", "points3D", "mean_track_length", "mean_reprojection_error_px")}
        res[name]["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def _report(r: dict) -> str:
    lines = [f"model: {r['model']}  ({r['config']})", ""]
    if "synthetic" in r:
        s = r["synthetic"]
        d = s["dense"]
        lines += [
            f"### Held-out synthetic pairs ({s['pairs']} pairs, {d['valid_pixels']} pixels with ground truth)",
            "",
            "| | EPE mean | EPE median | PCK@1 | PCK@3 | PCK@5 |",
            "|---|---|---|---|---|---|",
            f"| dense warp | {d['epe_mean_px']:.2f} px | {d['epe_median_px']:.2f} px | "
            f"{100 * d['pck@1px']:.1f}% | {100 * d['pck@3px']:.1f}% | {100 * d['pck@5px']:.1f}% |",
            "",
            "| matches | per pair | within 1 px | within 3 px | within 5 px |",
            "|---|---|---|---|---|",
        ]
        for key, label in (("model_matches", "model (sampled)"), ("sift_matches", "SIFT")):
            m = s[key]
            lines.append(
                f"| {label} | {m['matches_mean']:.0f} | {100 * m['precision@1px']:.1f}% | "
                f"{100 * m['precision@3px']:.1f}% | {100 * m['precision@5px']:.1f}% |"
            )
        lines.append("")
    if "real_pairs" in r:
        lines += [
            "### Real pairs: fundamental-matrix RANSAC inliers",
            "",
            "Coverage: share of a 10 x 10 grid over image A holding an inlier. Cross-check (no ground truth):",
            "median epipolar distance of SIFT's inliers under the model's F, and of the model's inliers under SIFT's F.",
            "",
            "| pair | model inliers / matches | coverage | SIFT inliers / matches | coverage | SIFT inl. under model F | model inl. under SIFT F |",
            "|---|---|---|---|---|---|---|",
        ]
        for stem, v in r["real_pairs"].items():
            a = v.get("sift_inliers_under_model_F_median_px")
            b = v.get("model_inliers_under_sift_F_median_px")
            lines.append(
                f"| {stem} | {v['model_inliers']} / {v['model_matches']} | {100 * v['model_inlier_coverage']:.0f}% | "
                f"{v['sift_inliers']} / {v['sift_matches']} | {100 * v['sift_inlier_coverage']:.0f}% | "
                f"{'-' if a is None else f'{a:.2f} px'} | {'-' if b is None else f'{b:.2f} px'} |"
            )
        lines += [
            "",
            "All of the model's sampled matches (what `l2m match` draws) under SIFT's F, by certainty:",
            "symmetric epipolar distance (a lower bound of the error: a wrong match along its epipolar line passes).",
            "",
            "| pair | certainty | matches | median | within 2 px | within 5 px |",
            "|---|---|---|---|---|---|",
        ]
        for stem, v in r["real_pairs"].items():
            if "model_matches_under_sift_F" not in v:
                continue
            rows = [("all", v["model_matches_under_sift_F"]), *v["model_matches_under_sift_F_by_certainty"].items()]
            for label, q in rows:
                if q["matches"]:
                    lines.append(
                        f"| {stem} | {label} | {q['matches']} | {q['median_px']:.2f} px | "
                        f"{100 * q['within_2px']:.1f}% | {100 * q['within_5px']:.1f}% |"
                    )
        lines.append("")
    if "self_match" in r:
        lines += [
            "### Each photo matched with itself (exact answer: the identity)",
            "",
            "| photo | dense median (output grid) | dense < 1 px | certainty median | matches | match median (original px) | < 0.5 px | < 1 px | match certainty median |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, v in r["self_match"].items():
            lines.append(
                f"| {name} | {v['dense_median_px']:.2f} px at {v['output_res'][1]}x{v['output_res'][0]} | {100 * v['dense_within_1px']:.0f}% | "
                f"{v['certainty_median']:.2f} | {v['matches']} | {v['match_median_px']:.2f} px | {100 * v['match_within_0.5px']:.0f}% | "
                f"{100 * v['match_within_1px']:.0f}% | {v['match_certainty_median']:.2f} |"
            )
        lines.append("")
    if "sfm" in r:
        lines += ["### SfM", "", "| matcher | registered | points | track length | reproj. error | time |", "|---|---|---|---|---|---|"]
        for k, v in r["sfm"].items():
            tl = f"{v['mean_track_length']:.2f}" if v.get("mean_track_length") else "-"
            re = f"{v['mean_reprojection_error_px']:.2f} px" if v.get("mean_reprojection_error_px") else "-"
            lines.append(f"| {k} | {v['registered_images']}/{v['num_images']} | {v['points3D']} | {tl} | {re} | {v['seconds']} s |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    from l2m_plugin.matching.sift import SiftPairMatcher

    for flag in ("synth", "pairs_dir", "sfm"):
        path = getattr(args, flag)
        if path is not None and not path.is_dir():
            print(f"matcher_quality.py: error: --{flag.replace('_', '-')} {path} is not a folder", file=sys.stderr)
            return 2
    model = _load_model(args)
    sift_kw = {"max_features": args.sift_features, "ratio": args.sift_ratio}
    res = {"model": model.weights_name, "config": model.config.to_dict(), "threads": args.threads}
    t0 = time.perf_counter()
    if args.synth:
        res["synthetic"] = synthetic_quality(model, SiftPairMatcher, args.synth, args.max_synth_pairs, args.num_matches, args.seed, sift_kw)
    if args.pairs_dir:
        res["real_pairs"] = real_pairs(model, SiftPairMatcher, args.pairs_dir, args.num_matches, args.ransac_px, args.seed, sift_kw)
    if args.self_match:
        missing = [str(p) for p in args.self_match if not p.is_file()]
        if missing:
            print(f"matcher_quality.py: error: --self-match: no such file {missing[0]}", file=sys.stderr)
            return 2
        res["self_match"] = self_match(model, args.self_match, args.num_matches, args.seed)
    if args.sfm:
        with tempfile.TemporaryDirectory() as tmp:
            work = args.out if args.out else Path(tmp)
            res["sfm"] = sfm(model, args.sfm, work, args.num_matches, args.seed, sift_kw)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    print(_report(res))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(res, indent=2))
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
