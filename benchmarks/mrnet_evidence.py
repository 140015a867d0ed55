"""Where MRNet's evidence is, and what that means for its maps: an occlusion test and the pointing
game split by the classifier's own call, on the val split of a finished run (test is never read).

For every val volume with boxes (`data/slices.zarr`, the boxes of `data.annotations`, `models/mrnet.pt`):
- the exam logit of the volume as it is;
- with its boxes occluded: each box, padded by `PAD` px, replaced by the mean of the volume's
  slices that have no box, at those pixels (the knee without the lesion, as far as the volume tells);
- with the same boxes moved `SHIFT` px away (seeded direction and distance, kept in the image)
  and occluded the same way: a control of the same area that holds no lesion.
If the classifier's evidence is the lesion, occluding the boxes takes the logit down to the normal
volumes' level and occluding elsewhere changes nothing.

The maps (`gradcam.*` of params) and the location prior of the train boxes are scored
(`pipeline.roi.scores`) on the annotated slices of the volumes MRNet calls abnormal (probability at
or above the threshold it chose on its tune hold-out) and of those it calls normal, apart: a map
can only point at a lesion that the classifier sees, so the first group says how well the maps
localise and the second how often the classifier misses. The same split at a higher cut
(`confident`: exam logit above CONFIDENT_LOGIT, against `not_confident`) shows how the maps'
quality follows the classifier's confidence.

    python benchmarks/mrnet_evidence.py        # after dvc repro of gradcam's deps

Writes reports/bench/mrnet_evidence.json.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.models.mrnet import exam_logit, load_mrnet  # noqa: E402
from pipeline.roi.boxes import Box, check_boxes, split_boxes  # noqa: E402
from pipeline.roi.gradcam import (GradCAMSpec, abnormal_probability, call_threshold, explainable,  # noqa: E402
                                  volume_heatmaps, volume_runs)
from pipeline.roi.scores import frame_tolerances, location_prior, slice_scores, summarise  # noqa: E402
from pipeline.stores.zarr_store import open_store, read_rows, split_group  # noqa: E402

SPLIT = "val"
PAD = 2                 # px around each box that the occlusion also covers
SHIFT = (20, 40)        # px, the control region's offset along each axis (sign seeded)
# a confident call: exam logit above 1 (P(abnormal) >= 0.73). Read off val's logits in a first,
# exploratory look (they fell into a group above 1 and one below 0.8), not tuned on any score.
CONFIDENT_LOGIT = 1.0
# the groups of volumes with boxes that are scored apart
GROUPS = {"called_abnormal": lambda v: v["called_abnormal"], "called_normal": lambda v: not v["called_abnormal"],
          "confident": lambda v: v["logit"] > CONFIDENT_LOGIT, "not_confident": lambda v: v["logit"] <= CONFIDENT_LOGIT}


def occluded(volume: np.ndarray, boxes: dict[int, Sequence[Box]], shift: Optional[np.random.Generator] = None
             ) -> np.ndarray:
    """A copy of `volume` `(S, H, W)` with each slice's boxes (padded by PAD) replaced by the mean of
    the slices without boxes at those pixels; with `shift`, the boxes are first moved by a random
    SHIFT offset (kept inside the image): the same area, elsewhere."""
    out = volume.copy()
    S, H, W = volume.shape
    clean = [s for s in range(S) if s not in boxes] or list(range(S))
    reference = volume[clean].mean(axis=0)
    for s, slice_boxes in boxes.items():
        for r0, c0, h, w in slice_boxes:
            h, w = min(h + 2 * PAD, H), min(w + 2 * PAD, W)
            r0, c0 = r0 - PAD, c0 - PAD
            if shift is not None:
                dr, dc = shift.integers(SHIFT[0], SHIFT[1] + 1, 2) * shift.choice([-1, 1], 2)
                r0, c0 = r0 + dr, c0 + dc
            r0, c0 = int(np.clip(r0, 0, H - h)), int(np.clip(c0, 0, W - w))
            out[s, r0:r0 + h, c0:c0 + w] = reference[r0:r0 + h, c0:c0 + w]
    return out


def measure(net, config: dict, slices: Path | str, annotations: Path | str, spec: GradCAMSpec, *,
            frame: Optional[int] = None, split: str = SPLIT, n_resamples: int = 10000, seed: int = 0) -> dict:
    """Per volume with boxes: logit, call, logit change with the boxes and with the control regions
    occluded; the maps' scores on the volumes called abnormal and normal; the unboxed volumes' logits."""
    checked = check_boxes(annotations, slices, frame, "data.annotation_frame")
    group = split_group(open_store(slices, kind="slices"), split, slices)
    crop = int(group["target"].shape[-1])
    boxes = split_boxes(checked, slices, split, crop, frame, "data.annotation_frame")
    train_boxes = split_boxes(checked, slices, "train", crop, frame, "data.annotation_frame")
    prior = location_prior((crop, crop), {k: [b for b, _ in v] for k, v in train_boxes.items()})
    tolerances = frame_tolerances(checked.frames)
    names, idx = read_rows(group["volume"]), read_rows(group["slice"])
    threshold = call_threshold(config)
    explained = explainable(net)
    rng = np.random.default_rng(seed)
    volumes, unboxed_logits = [], []
    maps, priors = {}, {}                      # volume -> its annotated slices' scores
    for name, a, b in volume_runs(names, slices, split):
        target = np.asarray(read_rows(group["target"], a, b), dtype=np.float32)
        logit = exam_logit(net, target, config)
        found = {r - a: boxes[(name, int(idx[r]))] for r in range(a, b) if (name, int(idx[r])) in boxes}
        if not found:
            unboxed_logits.append(logit)
            continue
        plain = {s: [bx for bx, _ in v] for s, v in found.items()}
        volumes.append({"volume": name, "logit": logit, "called_abnormal": abnormal_probability(logit) >= threshold,
                        "change_boxes_occluded": exam_logit(net, occluded(target, plain), config) - logit,
                        "change_elsewhere_occluded": exam_logit(net, occluded(target, plain, rng), config) - logit})
        heat = volume_heatmaps(explained, config, target, spec)
        maps[name] = [slice_scores(heat[s], v, tolerances[name]) for s, v in plain.items()]
        if prior is not None:
            priors[name] = [slice_scores(prior, v, tolerances[name]) for v in plain.values()]
    return {"volumes": volumes, "threshold": threshold, "confident_logit": CONFIDENT_LOGIT,
            "unboxed_logits": unboxed_logits,
            "groups": {key: _group([v for v in volumes if member(v)], maps, priors, n_resamples, seed)
                       for key, member in GROUPS.items()}}


def _group(mine: list[dict], maps: dict, priors: dict, n_resamples: int, seed: int) -> dict:
    """The logit changes (median, mean) and the maps' and the prior's scores of one group of volumes."""
    out: dict = {"n_volumes": len(mine)}
    for key in ("logit", "change_boxes_occluded", "change_elsewhere_occluded"):
        values = [v[key] for v in mine]
        out[key] = {"median": statistics.median(values), "mean": statistics.fmean(values)} if values else None
    for key, scores in (("maps", maps), ("location_prior", priors)):
        rows = [(v["volume"], s) for v in mine for s in scores.get(v["volume"], [])]
        out[key] = summarise(rows, n_resamples, seed) if rows else None
    return out


def summary_line(grp: dict) -> str:
    """One group's volumes, median logit changes and the maps' pointing game at 15 px."""
    if not grp["n_volumes"]:
        return "no volumes"
    pg = grp["maps"]["pointing_game_15px"]
    return (f"{grp['n_volumes']} volumes; logit change (median), boxes occluded "
            f"{grp['change_boxes_occluded']['median']:+.2f}, elsewhere {grp['change_elsewhere_occluded']['median']:+.2f}; "
            f"maps' pointing game at 15 px {pg['mean']:.2f} [{pg['ci95_low']:.2f}, {pg['ci95_high']:.2f}]"
            + (f", the location prior's {grp['location_prior']['pointing_game_15px']['mean']:.2f}"
               if grp.get("location_prior") else ""))


def main(argv: Optional[Sequence[str]] = None) -> int:
    from pipeline.evaluation.reports import write_json
    from stages.settings import load_params

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=Path, default=Path("data/slices.zarr"))
    ap.add_argument("--model", type=Path, default=Path("models/mrnet.pt"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--resamples", type=int, default=10000, help="bootstrap resamples")
    ap.add_argument("--out", type=Path, default=REPO / "reports/bench/mrnet_evidence.json")
    args = ap.parse_args(argv)
    p = load_params(args.params)
    annotations = p.data.annotations_path(None)
    if annotations is None:
        ap.error("no annotations: set data.annotations")
    net, config = load_mrnet(args.model)
    g = p.gradcam
    spec = GradCAMSpec(layer=g.layer, smooth_sigma=g.smooth_sigma, method=g.method)
    result = measure(net, config, args.slices, annotations, spec, frame=p.data.annotation_frame,
                     n_resamples=args.resamples)
    write_json(args.out, {"benchmark": "mrnet_evidence", "split": SPLIT, "python": platform.python_version(),
                          "torch_threads": torch.get_num_threads(), "model": str(args.model),
                          "gradcam": {"method": g.method, "layer": g.layer, "smooth_sigma": g.smooth_sigma},
                          "pad_px": PAD, "shift_px": list(SHIFT), **result})
    for key, grp in result["groups"].items():
        print(f"{key}: {summary_line(grp)}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
