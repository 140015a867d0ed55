"""Class-activation methods x MRNet layers on the val split: how well each map finds the lesions.

On the stores and the MRNet of a finished run (`data/slices.zarr`, `models/mrnet.pt`, the boxes of
`data.annotations`), every method of `gradcam.method` (`pipeline.roi.gradcam.METHODS`) is taken at
every layer of `--layers`, with the run's `gradcam.smooth_sigma`, on the VAL split only (the test
split is read once, by the gradcam stage, for the chosen default). The rule, fixed before each
sweep: the default is the pair with the largest pointing game at 15 px, ties broken by the
pointing game at 0 px, then by the energy in the boxes. For each pair: the pointing game
at tolerance 0 and at 15 px of the 320 frame (scaled to the recon frame), the energy in the boxes
and the uniform-map chance level, each with a 95% cluster-bootstrap interval over volumes
(`pipeline.roi.scores.score_slices`, the numbers the gradcam stage reports for test).

Only volumes with boxes are explained: both scores are per slice and invariant to the per-volume
scaling of the maps, so the other volumes change nothing. Writes reports/bench/gradcam_methods.json
and prints a markdown table (docs/tuning.md renders it from the JSON). Run it after `dvc repro` of train-mrnet:

    python benchmarks/gradcam_methods.py            # params.yaml's data.annotations, smooth_sigma
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.roi.boxes import check_boxes, split_boxes  # noqa: E402
from pipeline.roi.gradcam import (METHOD_NAMES, METHODS, GradCAMSpec, check_layer, explainable,  # noqa: E402
                                  volume_heatmaps, volume_runs)
from pipeline.models.mrnet import load_mrnet  # noqa: E402
from pipeline.roi.scores import frame_tolerances, score_slices  # noqa: E402
from pipeline.stores.zarr_store import open_store, read_rows, split_group  # noqa: E402

# each convolution's output and, with a norm layer, the normalised activation after it
# (`Sequential(norm, ReLU)` in the ReLU slot; the mean-gradient Grad-CAM of a convolution that a
# BatchNorm follows is near zero: BatchNorm's gradient has zero mean over the exam)
LAYERS = ("features.3", "features.4", "features.6", "features.7", "features.8", "features.9", "features.10",
          "features.11")
SPLIT = "val"


def run(slices: Path | str, model: Path | str, annotations: Path | str, *, frame: Optional[int] = None,
        smooth_sigma: float = 1.0, methods: Sequence[str] = METHODS, layers: Sequence[str] = LAYERS,
        split: str = SPLIT, n_resamples: int = 10000, seed: int = 0) -> dict:
    """Scores of every (method, layer) on the annotated slices of `split` (see the module doc)."""
    net, config = load_mrnet(model)
    results = score_maps(net, config, slices, annotations, frame=frame, smooth_sigma=smooth_sigma, methods=methods,
                         layers=layers, split=split, n_resamples=n_resamples, seed=seed)
    return {"benchmark": "gradcam_methods", "split": split, "slices": str(slices), "model": str(model),
            "annotations": str(annotations), "smooth_sigma": smooth_sigma, "bootstrap_resamples": n_resamples,
            "seed": seed, "results": results}


def score_maps(net, config: dict, slices: Path | str, annotations: Path | str, *, frame: Optional[int] = None,
               smooth_sigma: float = 1.0, methods: Sequence[str] = METHODS, layers: Sequence[str] = LAYERS,
               split: str = SPLIT, n_resamples: int = 10000, seed: int = 0) -> list[dict]:
    """For a loaded MRNet: per (method, layer), its maps' `score_slices` on the annotated slices of
    `split` and the seconds the maps took. Only volumes with boxes are explained."""
    net = explainable(net)
    for layer in layers:
        check_layer(net, layer)
    checked = check_boxes(annotations, slices, frame, "data.annotation_frame")
    group = split_group(open_store(slices, kind="slices"), split, slices)
    crop = int(group["target"].shape[-1])
    boxes = split_boxes(checked, slices, split, crop, frame, "data.annotation_frame")
    tolerances = frame_tolerances(checked.frames)
    names, idx = read_rows(group["volume"]), read_rows(group["slice"])
    items: dict[tuple[str, str], list] = {(m, lay): [] for m in methods for lay in layers}
    seconds: dict[tuple[str, str], float] = {k: 0.0 for k in items}
    for name, a, b in volume_runs(names, slices, split):
        rows = [(r, boxes[(name, int(idx[r]))]) for r in range(a, b) if (name, int(idx[r])) in boxes]
        if not rows:
            continue
        target = np.asarray(read_rows(group["target"], a, b), dtype=np.float32)
        for (method, layer), out in items.items():
            t0 = time.perf_counter()
            heat = volume_heatmaps(net, config, target, GradCAMSpec(layer=layer, smooth_sigma=smooth_sigma,
                                                                    method=method))
            seconds[(method, layer)] += time.perf_counter() - t0
            for r, found in rows:
                out.append((name, heat[r - a], [bx for bx, _ in found], [lab for _, lab in found], tolerances[name]))
    return [{"method": method, "layer": layer, "seconds": round(seconds[(method, layer)], 3),
             **score_slices(its, n_resamples=n_resamples, seed=seed)} for (method, layer), its in items.items()]


def markdown(result: dict) -> str:
    """One row per (method, layer): pointing game at 0 and 15 px, energy in box, chance, with intervals."""
    def cell(q: dict, digits: int = 2) -> str:
        if q["mean"] is None or not np.isfinite(q["mean"]):
            return "n/a"
        ci = "" if q["ci95_low"] is None or not np.isfinite(q["ci95_low"]) else \
            f" [{q['ci95_low']:.{digits}f}, {q['ci95_high']:.{digits}f}]"
        return f"{q['mean']:.{digits}f}{ci}"

    lines = [f"{result['split']} split, {result['results'][0]['overall']['n_slices'] if result['results'] else 0} "
             f"annotated slices; 95% bootstrap intervals over volumes", "",
             "| method | layer | pointing game | pointing game at 15 px | energy in box | chance (box area) |",
             "|---|---|---|---|---|---|"]
    for r in result["results"]:
        o = r["overall"]
        lines.append(f"| {METHOD_NAMES.get(r['method'], r['method'])} | `{r['layer']}` | {cell(o['pointing_game'])} | "
                     f"{cell(o['pointing_game_15px'])} | {cell(o['energy_in_box'], 3)} | {cell(o['chance'], 3)} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from pipeline.evaluation.reports import write_json
    from stages.settings import load_params

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=Path, default=Path("data/slices.zarr"))
    ap.add_argument("--model", type=Path, default=Path("models/mrnet.pt"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--annotations", type=Path, default=None, help="default: data.annotations")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--layers", default=",".join(LAYERS))
    ap.add_argument("--resamples", type=int, default=10000, help="bootstrap resamples")
    ap.add_argument("--out", type=Path, default=REPO / "reports/bench/gradcam_methods.json")
    args = ap.parse_args(argv)
    p = load_params(args.params)
    annotations = p.data.annotations_path(args.annotations)
    if annotations is None:
        ap.error("no annotations: set data.annotations or pass --annotations")
    methods = [m for m in args.methods.split(",") if m]
    if bad := [m for m in methods if m not in METHODS]:
        ap.error(f"unknown method(s): {', '.join(bad)} (known: {', '.join(METHODS)})")
    result = run(args.slices, args.model, annotations, frame=p.data.annotation_frame,
                 smooth_sigma=p.gradcam.smooth_sigma, methods=methods,
                 layers=[x for x in args.layers.split(",") if x], n_resamples=args.resamples, seed=0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    print(markdown(result))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
