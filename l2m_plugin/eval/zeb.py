"""ZEB, GIM's zero-shot evaluation benchmark: 12 sub-sets, 45,916 pairs, pose AUC@5.

On-disk layout (GIM's ``data/ZEB`` zip, ``benchmarks/zeb/README.md``)::

    DATA_ROOT/<subset>/*.txt      one pair per file (its first line), 38 tokens
    DATA_ROOT/<subset>/*.png      images, named from the pair file (below)

Sub-set folders: gl3d, blendedmvs, eth3di, eth3do, kitti, robotcarweather,
robotcarseason, robotcarnight, multifov, scenenet, iclnuim, gtasfm.

A pair line is ``name0 name1 covisible0 covisible1 K0 (9, row-major) K1 (9) T_0to1
(16, row-major)``. As in GIM's loaders (``datasets/*/``), the scene id is the pair
file's stem up to the first ``_`` (gl3d, blendedmvs, robotcar*) or ``-`` (the
others), and the image file is ``<scene><sep><name>.png`` with the name's
extension stripped (gl3d, blendedmvs, eth3d*, kitti) or kept (the others), ``sep``
being that same character. Pairs are sorted by their line and duplicates
(same scene and names) are dropped, as GIM's ``analysis.py`` does.

Protocol ``gim`` (default; GIM's ``tools/metrics.py`` and ``analysis.py``): keypoints
at the original resolution, no pixel offset, LoFTR's estimator (0.5 px /
mean(fx0, fy1, fx0, fy1), conf 0.99999, one run), error = max(rotation,
folded translation angle), a failed estimate counts as 180 degrees; AUC@5 per
sub-set; the headline is the plain mean of the 12 sub-set AUCs (not a mean over pairs).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from l2m_plugin.eval.base import BenchmarkDataError, BenchmarkPair
from l2m_plugin.eval.pose import POSE_EVAL_DEFAULTS, PoseBenchmark

__all__ = ["ZEB", "ZEB_SUBSETS", "parse_zeb_line"]

log = logging.getLogger(__name__)

#: folder -> (scene-id separator, strip the image name's extension, column label of GIM's table)
ZEB_SUBSETS = {
    "gl3d": ("_", True, "GL3"),
    "blendedmvs": ("_", True, "BLE"),
    "eth3di": ("-", True, "ETI"),
    "eth3do": ("-", True, "ETO"),
    "kitti": ("-", True, "KIT"),
    "robotcarweather": ("_", False, "WEA"),
    "robotcarseason": ("_", False, "SEA"),
    "robotcarnight": ("_", False, "NIG"),
    "multifov": ("-", False, "MUL"),
    "scenenet": ("-", False, "SCE"),
    "iclnuim": ("-", False, "ICL"),
    "gtasfm": ("-", False, "GTA"),
}


def parse_zeb_line(line: str, where: str = "<line>") -> dict:
    """One 38-token pair line -> ``name0, name1, covisible0, covisible1, K0, K1, T_0to1``.

    Raises:
        BenchmarkDataError: not 38 tokens or not numbers (names ``where``).
    """
    tok = line.split()
    if len(tok) != 38:
        raise BenchmarkDataError(f"{where}: a ZEB pair line has 38 tokens, this one has {len(tok)}")
    try:
        v = np.array(tok[2:], np.float64)
    except ValueError as e:
        raise BenchmarkDataError(f"{where}: {e}") from e
    return {
        "name0": tok[0], "name1": tok[1], "covisible0": float(v[0]), "covisible1": float(v[1]),
        "K0": v[2:11].reshape(3, 3), "K1": v[11:20].reshape(3, 3), "T_0to1": v[20:36].reshape(4, 4),
    }  # fmt: skip


class ZEB(PoseBenchmark):
    """GIM's ZEB (see the module docstring)."""

    name = "zeb"
    columns = ["mean"] + [v[2] for v in ZEB_SUBSETS.values()]
    default_conf = {
        "data": {"subsets": list(ZEB_SUBSETS)},
        "predict": {"num_matches": 5000, "seed": 0, "samples_per_pair": 1},
        "eval": dict(POSE_EVAL_DEFAULTS),
    }
    protocols = {
        "gim": {"frame": "original", "pixel_offset": 0.0, "focal_mode": "loftr", "runs": 1,
                "failure_error_deg": 180.0, "auc_thresholds": [5]},
    }  # fmt: skip

    def load_pairs(self) -> list[BenchmarkPair]:
        found = [s for s in self.conf["data"]["subsets"] if (self.data_root / s).is_dir()]
        unknown = [s for s in self.conf["data"]["subsets"] if s not in ZEB_SUBSETS]
        if unknown:
            raise ValueError(f"unknown ZEB sub-sets {unknown}; known: {list(ZEB_SUBSETS)}")
        if not found:
            raise BenchmarkDataError(
                f"no ZEB sub-set folder ({', '.join(ZEB_SUBSETS)}) under {self.data_root}; "
                "see benchmarks/zeb/README.md"
            )
        pairs = []
        for subset in found:
            sep, strip, _ = ZEB_SUBSETS[subset]
            lines, seen = [], set()
            for txt in sorted((self.data_root / subset).glob("*.txt")):
                first = txt.read_text().strip().splitlines()
                if not first:
                    raise BenchmarkDataError(f"{txt} is empty (a ZEB pair file holds one 38-token line)")
                scene = txt.stem.split(sep)[0]
                lines.append((scene, first[0], txt))
            for scene, line, txt in sorted(lines, key=lambda x: [x[0]] + x[1].split()):
                d = parse_zeb_line(line, str(txt))
                ident = (scene, d["name0"], d["name1"])
                if ident in seen:
                    continue
                seen.add(ident)
                n0, n1 = (f"{subset}/{scene}{sep}{Path(n).stem if strip else n}.png" for n in (d["name0"], d["name1"]))
                pairs.append(
                    BenchmarkPair(
                        name0=n0, name1=n1, subset=subset, index=len(pairs),
                        K0=d["K0"], K1=d["K1"], T_0to1=d["T_0to1"],
                        info={"covisible0": d["covisible0"], "covisible1": d["covisible1"], "pair_file": txt.name},
                    )
                )  # fmt: skip
        return pairs

    def table_note(self, metrics: dict) -> str:
        n = metrics["num_subsets"]
        return f" (mean over {n} of {len(ZEB_SUBSETS)} sub-sets: not comparable)" if n < len(ZEB_SUBSETS) else ""

    def summarize(self, records, pairs) -> dict:
        metrics = super().summarize(records, pairs)
        per = metrics["per_subset"]
        values = [per[s]["AUC@5"] for s in ZEB_SUBSETS if s in per]
        metrics["mean"] = float(np.mean(values)) if values else float("nan")
        metrics["num_subsets"] = len(values)
        if len(values) < len(ZEB_SUBSETS):
            log.warning("ZEB mean over %d of %d sub-sets: not comparable with published means", len(values), len(ZEB_SUBSETS))
        for s, (_, _, label) in ZEB_SUBSETS.items():
            metrics[label] = per[s]["AUC@5"] if s in per else None
        return metrics
