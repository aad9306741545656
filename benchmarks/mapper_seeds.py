#!/usr/bin/env python
"""How stable is an ``l2m reconstruct`` model? Re-map finished runs' matches at several COLMAP seeds.

Each RUN is a finished ``l2m reconstruct`` output folder. Its ``pair_matches.h5`` and
``pairs.txt`` are copied into ``OUT/<run name>_s<seed>`` and ``l2m reconstruct`` runs there with
``--mapper-seed <seed>`` (COLMAP's seed for two-view verification and mapping; the matches are
reused, nothing is matched again) and the flags after ``--`` (e.g. a track rule:
``--merge-radius 1.25`` or ``--cell-size 2``). The matcher settings come from the run's
``summary.json``; a run without one is given as ``RUN=CONFIG.yaml`` (the matcher config it was
made with; the shipped weights). Prints, per run and seed: points, mean track length,
reprojection error, rotation errors against ``--reference`` (min / median / max, degrees) and
the images the summary calls suspect; then per track rule the counts over all runs. Writes
``OUT/seeds.json``. With ``-- --mapper-tries N`` each run tries seeds ``seed`` to
``seed + N - 1`` and keeps one (column ``kept``).

    # README, "Track building by distance; the mapper's seeds": both rules on one run, 3 seeds
    python benchmarks/mapper_seeds.py --runs OUT_RECON --seeds 0 1 2 --out SEEDS_GRID \
        --reference REF/sparse -- --cell-size 2
    python benchmarks/mapper_seeds.py --runs OUT_RECON --seeds 0 1 2 --out SEEDS_RADIUS \
        --reference REF/sparse          # the default rule
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

from l2m_plugin.files import atomic_json


def _matcher_flags(run: Path, config: str | None, tmp: Path) -> tuple[str, list[str]]:
    """``(image_dir, l2m reconstruct matcher flags)`` that reproduce the run's matcher settings."""
    summary_path = run / "summary.json"
    if config is not None:
        image_dir = (
            json.loads(summary_path.read_text())["image_dir"] if summary_path.exists() else None
        )
        return image_dir, ["--config", config]
    if not summary_path.exists():
        sys.exit(f"mapper_seeds: {run} has no summary.json: give it as {run}=CONFIG.yaml")
    summary = json.loads(summary_path.read_text())
    m = summary["matcher"]
    if m["matcher"] == "sift":
        return summary["image_dir"], ["--matcher", "sift"]
    cfg = tmp / f"{run.name}_config.yaml"
    cfg.write_text(yaml.safe_dump(m["config"]))
    flags = ["--config", str(cfg), "--num-matches", str(m["num_matches"]), "--seed", str(m["seed"])]
    if m["weights"] != "l2m-tiny":
        flags += ["--weights", m["weights"]]
    if not m.get("exif", True):
        flags.append("--no-exif")
    return summary["image_dir"], flags


def _one(job: dict) -> dict:
    out = Path(job["out"])
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for f in ("pair_matches.h5", "pairs.txt"):
        shutil.copy2(Path(job["run"]) / f, out / f)
    cmd = [
        sys.executable, "-m", "l2m_plugin.cli", "reconstruct", job["image_dir"], str(out),
        "--mapper-seed", str(job["seed"]), "--mapper", "num_threads=1", "--quiet",
        *job["flags"], *job["extra"],
    ]  # fmt: skip
    if job["reference"]:
        cmd += ["--reference", job["reference"]]
    r = subprocess.run(cmd, capture_output=True, text=True)
    row = {"run": job["name"], "seed": job["seed"], "returncode": r.returncode}
    if not (out / "summary.json").exists():
        row["error"] = r.stderr[-500:]
        return row
    s = json.loads((out / "summary.json").read_text())
    m = s["model"]
    row.update(
        registered=m["registered_images"],
        images=m["num_images"],
        points3D=m["points3D"],
        track_length=m["mean_track_length"],
        reprojection_error_px=m["mean_reprojection_error_px"],
        suspect_images=m.get("suspect_images", {}),
        reused_pairs=s["matching"]["reused_pairs"],
        rule=s["tracks"].get("rule", "grid"),
        kept_seed=m.get("colmap_seed", job["seed"]),  # differs from seed with --mapper-tries
        tries=len(m.get("tries", [None])),
    )
    if "reference" in s:
        rot = np.array(list(s["reference"]["rotation_error_deg"].values()))
        row["rotation_error_deg"] = [float(rot.min()), float(np.median(rot)), float(rot.max())]
    return row


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="finished l2m reconstruct folders (RUN or RUN=CONFIG.yaml)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", required=True, help="folder for the re-mapped runs and seeds.json")
    p.add_argument("--reference", default=None, help="COLMAP model of the same images (rotation errors)")
    p.add_argument("--image-dir", default=None, help="the images (default: from each run's summary.json)")
    p.add_argument("--jobs", type=int, default=2, help="runs at once (each maps on one thread)")
    args = p.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.runs:
            path, _, config = spec.partition("=")
            run = Path(path)
            if not (run / "pair_matches.h5").exists():
                sys.exit(f"mapper_seeds: {run} has no pair_matches.h5 (not an l2m reconstruct output folder)")
            image_dir, flags = _matcher_flags(run, config or None, Path(tmp))
            image_dir = args.image_dir or image_dir
            if image_dir is None:
                sys.exit(f"mapper_seeds: no image folder for {run}: give --image-dir")
            name = run.name
            for seed in args.seeds:
                jobs.append(dict(run=str(run), name=name, seed=seed, out=str(out / f"{name}_s{seed}"),
                                 image_dir=image_dir, flags=flags, extra=extra, reference=args.reference))  # fmt: skip
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            rows = list(pool.map(_one, jobs))

    print(f"{'run':<24} seed  kept  points  track  error px  rotation min/median/max deg  suspect")
    for r in rows:
        if "error" in r:
            print(f"{r['run']:<24} {r['seed']:>4}  failed: {r['error'].strip().splitlines()[-1:]}")
            continue
        rot = "/".join(f"{v:.2f}" for v in r.get("rotation_error_deg", [])) or "-"
        err = r["reprojection_error_px"]
        print(f"{r['run']:<24} {r['seed']:>4}  {r['kept_seed']:>4}  {r['points3D']:>6}  {r['track_length']:.2f}  "
              f"{err if err is None else format(err, '.3f'):>8}  {rot:>27}  {len(r['suspect_images'])}")  # fmt: skip
    ok = [r for r in rows if "error" not in r]
    if ok:
        err = np.array([r["reprojection_error_px"] or np.nan for r in ok])
        track = np.array([r["track_length"] for r in ok])
        line = (f"{len(ok)} models: error {np.nanmean(err):.3f} px (range {np.nanmin(err):.3f}-{np.nanmax(err):.3f}, "
                f"{int((err > 1).sum())} above 1 px), track length {track.min():.2f}-{track.max():.2f}, "
                f"{sum(r['registered'] < r['images'] for r in ok)} with unregistered images, "
                f"{sum(bool(r['suspect_images']) for r in ok)} with suspect images")  # fmt: skip
        if all("rotation_error_deg" in r for r in ok):
            mx = np.array([r["rotation_error_deg"][2] for r in ok])
            line += f", {int((mx > 2).sum())} with a camera > 2 deg off (worst {mx.max():.2f})"
        print(line)
    atomic_json(out / "seeds.json", {"extra_flags": extra, "rows": rows})
    print(out / "seeds.json")
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
