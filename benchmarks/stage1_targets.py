#!/usr/bin/env python
"""Are stage 1's targets better descriptors than the features they replace? (L2M stage 1)

Stage 1 (``l2m train stage1``, L2M ICCV 2025 Sec. 3.2) fine-tunes the encoder to regress
features rendered from a feature-Gaussian field fitted to several synthetic views of one
photo. That can only make the encoder better at matching if the rendered targets match
better than the encoder's own features. This script measures that directly, on the
views stage 1 trains on, with exact correspondences:

1. each photo (the stage-1 listing: ``--images``, ``--split``, the first ``--max-images``)
   is lifted as :func:`l2m_plugin.lifting.lift_photos` does: synthetic depth and
   ``--views`` views from ``numpy.random.default_rng([--seed, i])``, the frozen encoder's
   features at ``--level``, then one field per ``--variant`` (a :class:`FitConfig`
   override; ``default`` is the stage-1 config's fit);
2. for every novel view v the ground truth is the source view's depth projected into v
   (:func:`l2m_plugin.geometry.warp_from_depth`; no occlusion test: the synthetic views
   have no depth of their own, and the same points are scored for every row);
3. queries are the source-view cells whose warp holds and whose target is valid in both
   views; keys are the view's cells with a valid target (the others are zeroed for every
   row, so every row searches the same cells);
4. for the encoder's features, each variant's targets and any ``--compare`` encoder
   (e.g. the stage-1 model), :func:`l2m_plugin.eval.features.feature_nn_errors` gives the
   nearest-neighbour (cosine) error in pixels of the view; also the mean cosine between
   a query's feature and the view's feature at the ground truth (bilinear): the
   *consistency* that stage 1 optimises.

A row whose PCK is below the encoder's shows targets that are more consistent but less
distinctive: regressing them trades matching accuracy for consistency.

Example (40 photos, 3 fits, about 8 minutes on 2 cores)::

    python benchmarks/stage1_targets.py --images ../shared/data/single_view --max-images 40 \\
        --variant dim128:feature_dim=128 --variant stride4:feature_stride=4 \\
        --compare RUNS/train/stage1_ft2400/model.pth --out outputs/stage1_targets

Prints a Markdown table; writes ``stage1_targets.json`` and ``.md`` to ``--out`` (atomic).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

THRESHOLDS_PX = (4.0, 8.0, 16.0)


def _parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, required=True, help="photo folder (stage 1's data.images)")
    p.add_argument("--conf", type=Path, default=Path("configs/train/stage1_tiny.yaml"),
                   help="stage-1 config: data.size/views/preset/split, fit, train.level/init_weights/seed")  # fmt: skip
    p.add_argument("--weights", default=None, help="encoder to lift with (default: the config's train.init_weights)")
    p.add_argument("--compare", action="append", default=[], help="another matcher's encoder, scored on the same views")
    p.add_argument("--variant", action="append", default=[],
                   help="NAME:key=value[,key=value] FitConfig override (repeatable; 'default' is always run)")  # fmt: skip
    p.add_argument("--max-images", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("outputs/stage1_targets"))
    return p.parse_args(argv)


def parse_variant(spec: str) -> tuple[str, dict]:
    """``NAME:key=value,key=value`` -> (NAME, {key: value}) with values parsed as YAML scalars."""
    import yaml

    name, sep, body = spec.partition(":")
    if not sep or not name or not body:
        raise ValueError(f"--variant {spec!r}: expected NAME:key=value[,key=value]")
    over = {}
    for item in body.split(","):
        key, eq, val = item.partition("=")
        if not eq:
            raise ValueError(f"--variant {spec!r}: {item!r} is not key=value")
        over[key.strip()] = yaml.safe_load(val)
    return name, over


def _grid_valid_at(valid_v: torch.Tensor, warp: torch.Tensor) -> torch.Tensor:
    """(H, W) bool: the (h, w) cell mask ``valid_v`` at each warped position (nearest cell)."""
    g = F.grid_sample(valid_v[None, None].float(), warp[None].float(), mode="nearest", align_corners=False,
                      padding_mode="zeros")  # fmt: skip
    return g[0, 0] > 0.5


def _consistency(f0: torch.Tensor, fv: torch.Tensor, query: torch.Tensor, gt: torch.Tensor) -> float:
    """Mean cosine between query cells of f0 (C, h, w) and fv (C, h, w) bilinearly sampled at gt (Q, 2)."""
    a = F.normalize(f0.reshape(f0.shape[0], -1)[:, query].T, dim=1)
    b = F.grid_sample(fv[None], gt[None, None].float(), mode="bilinear", align_corners=False)[0, :, 0].T
    return float((a * F.normalize(b, dim=1)).sum(1).mean())


def score_view(feats: dict, warp: torch.Tensor, valid: torch.Tensor, cells_ok0: torch.Tensor, cells_ok1: torch.Tensor,
               size1: tuple[int, int]) -> dict:  # fmt: skip
    """Score every row of one (source view, novel view) pair on the same queries and keys.

    Args:
        feats: row name -> ((C, h, w), (C, h, w)) float features of the source and the novel view.
        warp: (H, W, 2) float normalised (x, y) in the novel view of each source pixel centre
            (``align_corners=False``); valid: (H, W) bool, where it holds and is scored.
        cells_ok0, cells_ok1: (h, w) float {0, 1}: cells kept (the others are zeroed).
        size1: (W, H) of the novel view in pixels.
    Returns:
        row name -> ``error_px`` (Q,) float32 pixels, ``mutual`` (Q,) bool, ``ceiling_px``
        (Q,) float32 (see :func:`~l2m_plugin.eval.features.feature_nn_errors`) and
        ``consistency`` (float, mean cosine).
    """
    from l2m_plugin.eval.features import feature_nn_errors

    out = {}
    for name, (f0, f1) in feats.items():
        f0 = f0 * cells_ok0
        f1 = f1 * cells_ok1
        r = feature_nn_errors(f0, f1, warp, valid, size1, thresholds_px=THRESHOLDS_PX)
        out[name] = {"error_px": r["error_px"], "mutual": r["mutual"], "ceiling_px": r["ceiling_px"],
                     "consistency": _consistency(f0, f1, r["query"], r["gt"])}  # fmt: skip
    return out


def main(argv=None) -> int:
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    from omegaconf import OmegaConf

    from l2m_plugin import L2M
    from l2m_plugin.files import atomic_text
    from l2m_plugin.geometry import warp_from_depth
    from l2m_plugin.lifting import FitConfig, fit_scene
    from l2m_plugin.lifting.dataset import photo_views
    from l2m_plugin.models.features import encode_level
    from l2m_plugin.synthesis import SYNTH_PRESETS
    from l2m_plugin.synthesis.generate import RunSettings, SourceLoader, source_listing
    from l2m_plugin.training.stage1 import load_stage1_conf

    if not args.images.is_dir():
        print(f"stage1_targets.py: error: --images {args.images} is not a folder", file=sys.stderr)
        return 2
    conf = load_stage1_conf(args.conf, [f"data.images={args.images}", f"data.max_images={args.max_images}",
                                          f"train.out={args.out}"])  # train.out: required, unused
    d, t = conf.data, conf.train
    variants = [("default", {})] + [parse_variant(s) for s in args.variant]
    base_fit = OmegaConf.to_container(conf.fit, resolve=True)
    fits = {name: FitConfig.from_dict({**base_fit, **over}) for name, over in variants}
    level = int(t.level)
    teacher_spec = args.weights or str(t.init_weights)
    teacher = L2M.from_pretrained(teacher_spec).eval()
    others = {spec: L2M.from_pretrained(spec).eval() for spec in args.compare}
    hh, ww = (int(v) for v in d.size)
    settings = RunSettings(images=str(d.images), depth=str(d.depth), size=f"{ww}x{hh}", max_images=d.max_images,
                           seed=int(t.seed), split=str(d.split), holdout_every=int(d.holdout_every))  # fmt: skip
    names = source_listing(settings)
    synth_conf = SYNTH_PRESETS[str(d.preset)]
    loader = SourceLoader(settings, synth_conf)
    rows: dict[str, dict] = {}
    fit_stats: dict[str, list] = {name: [] for name, _ in variants}
    t0 = time.perf_counter()
    for i, rel in enumerate(names):
        sv, feats = photo_views(teacher, loader, rel, i, views=int(d.views), synth_conf=synth_conf, level=level,
                                seed=int(t.seed))  # fmt: skip  # the views lift_photos made: (V, C, h, w)
        x = torch.from_numpy(sv.images).permute(0, 3, 1, 2).float().div(255.0)
        other_feats = {spec: encode_level(m, x, tuple(x.shape[-2:]), level) for spec, m in others.items()}
        targets = {}
        for name, _ in variants:
            fitted = fit_scene(sv, feats, fits[name])
            targets[name] = (fitted.targets.float(), fitted.valid)
            fit_stats[name].append(fitted.stats)
        # one query/key set for every row: cells valid under every variant's field
        valid_all = torch.stack([v for _, v in targets.values()]).all(dim=0)  # (V, h, w)
        depth0 = torch.from_numpy(sv.depth0).double()
        W, H = sv.size
        cell0 = F.interpolate(valid_all[:1, None].float(), size=(H, W), mode="nearest")[0, 0] > 0.5
        for v in range(1, sv.num_views):
            warp, ok = warp_from_depth(depth0, torch.from_numpy(sv.Ks[0]), torch.from_numpy(sv.Ks[v]),
                                       torch.from_numpy(sv.T_0to[v]), size1=(W, H))  # fmt: skip
            warp, ok = warp[0].float(), ok[0]
            ok = ok & cell0 & _grid_valid_at(valid_all[v], warp)
            pair = {"encoder": (feats[0], feats[v])}
            pair.update({f"targets:{name}": (tg[0], tg[v]) for name, (tg, _) in targets.items()})
            pair.update({f"encoder:{spec}": (f[0], f[v]) for spec, f in other_feats.items()})
            res = score_view(pair, warp, ok, valid_all[0].float(), valid_all[v].float(), (W, H))
            for name, r in res.items():
                acc = rows.setdefault(name, {"error_px": [], "mutual": [], "consistency": [], "ceiling_px": []})
                acc["error_px"].append(r["error_px"])
                acc["mutual"].append(r["mutual"])
                acc["ceiling_px"].append(r["ceiling_px"])
                acc["consistency"].append(r["consistency"])
        print(f"{i + 1}/{len(names)} {rel} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    summary = {}
    for name, acc in rows.items():
        err = torch.cat(acc["error_px"])
        summary[name] = {
            "points": int(err.numel()),
            "median_px": float(err.median()),
            "pck": {f"{th:g}": float((err <= th).float().mean()) for th in THRESHOLDS_PX},
            "mutual_share": float(torch.cat(acc["mutual"]).float().mean()),
            "consistency": float(np.mean(acc["consistency"])),
            "ceiling_pck": {f"{th:g}": float((torch.cat(acc["ceiling_px"]) <= th).float().mean()) for th in THRESHOLDS_PX},
        }
    for name, stats in fit_stats.items():
        key = f"targets:{name}"
        summary[key]["fit_feature_l1"] = float(np.mean([s["feature_l1"] for s in stats]))
        summary[key]["fit_feature_l1_init"] = float(np.mean([s["feature_l1_init"] for s in stats]))
        summary[key]["fit"] = dict(variants)[name]
    res = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "python": platform.python_version(), "threads": args.threads,
        "conf": str(args.conf), "teacher": teacher_spec, "level": level, "photos": len(names),
        "views": int(d.views), "size": [hh, ww], "seconds": round(time.perf_counter() - t0, 1), "rows": summary,
    }  # fmt: skip
    md = report(res)
    print(md)
    atomic_text(args.out / "stage1_targets.json", json.dumps(res, indent=2))
    atomic_text(args.out / "stage1_targets.md", md + "\n")
    return 0


def report(res: dict) -> str:
    """A Markdown table of a results dict (as written to stage1_targets.json)."""
    ts = [f"{th:g}" for th in THRESHOLDS_PX]
    head = "| row | points | median px | " + " | ".join(f"PCK@{th}" for th in ts)
    head += " | mutual NN | consistency (cosine) | fit feature L1 |"
    lines = [
        f"Stage-1 targets against the encoder's features: {res['photos']} photos x {res['views'] - 1} novel views, "
        f"level {res['level']}, {res['size'][1]} x {res['size'][0]} px, teacher {res['teacher']}",
        "",
        head,
        "|---|" + "---:|" * (len(ts) + 5),
    ]
    for name, r in res["rows"].items():
        fit = f"{r['fit_feature_l1_init']:.3f} -> {r['fit_feature_l1']:.3f}" if "fit_feature_l1" in r else "-"
        pck = " | ".join(f"{100 * r['pck'][th]:.1f}" for th in ts)
        lines.append(f"| {name} | {r['points']} | {r['median_px']:.1f} | {pck} | {100 * r['mutual_share']:.1f} | "
                     f"{r['consistency']:.3f} | {fit} |")  # fmt: skip
    any_row = next(iter(res["rows"].values()))
    lines.append("| (perfect features: nearest cell) | | | "
                 + " | ".join(f"{100 * any_row['ceiling_pck'][th]:.1f}" for th in ts) + " | | | |")  # fmt: skip
    return "\n".join(lines)



if __name__ == "__main__":
    sys.exit(main())
