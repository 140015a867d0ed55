"""Markdown tables of the defaults and the results, rendered from the parameters and the reports, and
the blocks of a Markdown page they fill, so that no table in the docs restates a number by hand.

A page marks each generated table with a pair of comment lines (invisible when rendered):

    <!-- generated:NAME -->
    ... written by `fill`, never by hand ...
    <!-- /generated:NAME -->

`BLOCKS` names every table and the sources it reads. Sources are plain dicts (the parameters as read
from YAML; each report JSON; {} for a file that does not exist yet), keyed as `SOURCES` lists, so this
module knows no file names. Every table renders whatever its sources hold: a value they lack is
"—", never an error, so the same code renders a fresh clone, an old run's reports and a new one's.
`fill` writes the blocks into a page; `stale` names the blocks a page holds that differ from what
the sources render (a test holds the committed pages to it).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

MISSING = "—"
MINUS = "−"   # typographic minus, as the prose uses

# every source a table may read: the parameters and the report JSONs (paths: the caller's business)
SOURCES = ("params", "metrics", "evaluation", "mrnet", "mrnet_detail", "gradcam", "gradcam_detail",
           "bench_gradcam_methods", "bench_mrnet_seeds", "bench_mrnet_long", "bench_mrnet_tune",
           "x8_metrics", "x8_evaluation",
           "bench_undersample", "bench_unet_training", "bench_stage_memory", "bench_gpu_training",
           "bench_mrnet_device", "bench_contention", "bench_roi_frontier", "bench_mrnet_evidence",
           "bench_mrnet_contrast")


# ---------------------------------------------------------------- values and cells

def lookup(d: Any, path: str, default: Any = None) -> Any:
    """`d["a"]["b"]` for path "a.b"; `default` when any step is missing or not a dict."""
    for key in path.split("."):
        if not isinstance(d, Mapping) or key not in d:
            return default
        d = d[key]
    return d


def merged(*reports: Mapping) -> dict:
    """Nested dicts merged left to right (later reports win): a tracked file and its detail."""
    out: dict = {}
    for r in reports:
        for k, v in (r or {}).items():
            out[k] = merged(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def num(x: Any, fmt: str = "{:.2f}") -> str:
    """A number in `fmt` with a typographic minus ("{:d}" takes a whole float too); "—" for a missing
    or non-finite value."""
    if not _finite(x):
        return MISSING
    if fmt.endswith("d}") and isinstance(x, float) and x.is_integer():
        x = int(x)
    try:
        return fmt.format(x).replace("-", MINUS)
    except ValueError:          # a fraction where a count was expected: show it as it is
        return f"{x:g}".replace("-", MINUS)


def interval(lo: Any, hi: Any, fmt: str = "{:.2f}") -> str:
    """"[lo, hi]"; "" when neither end is known."""
    return f"[{num(lo, fmt)}, {num(hi, fmt)}]" if _finite(lo) or _finite(hi) else ""


def estimate(mean: Any, lo: Any = None, hi: Any = None, p: Any = None, fmt: str = "{:.2f}") -> str:
    """"mean [lo, hi] p=…": the parts that are known; "—" without a mean."""
    if not _finite(mean):
        return MISSING
    return " ".join(x for x in (num(mean, fmt), interval(lo, hi, fmt), p_value(p)) if x)


def summary_cell(s: Any, fmt: str) -> str:
    """A {mean, ci95_low, ci95_high} summary (the localisation scores) as `estimate`."""
    return estimate(lookup(s, "mean"), lookup(s, "ci95_low"), lookup(s, "ci95_high"), fmt=fmt)


def p_value(p: Any) -> str:
    if not _finite(p):
        return ""
    return "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.01 else f"p={p:.2f}"


def param_value(x: Any) -> str:
    """A params.yaml value as a reader would type it: 4.0, 3e-3, none, [0, 1, 2], train 22, val 8."""
    if x is None:
        return "none"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, float):
        short = f"{x:.0e}"                                   # 3e-03
        if x and abs(x) < 0.01 and float(short) == x:
            mantissa, exponent = short.split("e")
            return f"{mantissa}e{int(exponent)}"
        return repr(x)
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(param_value(v) for v in x) + "]"
    if isinstance(x, Mapping):
        return ", ".join(f"{k} {param_value(v)}" for k, v in x.items())
    return str(x)


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- the tables

# (keys, what they do): the defaults a user reaches for (the README's table), in the order the docs explain them
PARAM_ROWS = (
    (("mask.type", "mask.acceleration", "mask.center_fraction"),
     "fastMRI's undersampling mask (one per volume, seeded from the file name)"),
    (("loss.roi_weight", "loss.roi_norm", "loss.roi_margin", "loss.roi_soft", "loss.background_weight"),
     "how the weighted and oracle losses weight the ROI maps (chosen on val by the frontier's rule: docs/tuning.md)"),
    (("unet.seeds",), "one training per variant and seed; more seeds narrow the seed noise"),
    (("unet.chans", "unet.num_pool_layers", "unet.epochs", "unet.lr"),
     "U-Net size and training (sized for 2 CPU cores; fastMRI's knee U-Net uses 32 channels)"),
    (("evaluate.split",), "`val` for tuning runs; test only for the final numbers"),
    (("data.raw_dir", "data.challenge", "data.crop", "data.annotations", "data.test_from_val"),
     "where the fastMRI files and fastMRI+ boxes are, and the share of val carved out as the test split "
     "(docs/fastmri-and-gpus.md)"),
    (("synthetic.volumes", "synthetic.eval_lesion_rate"),
     "size of the embedded splits and the share of val/test volumes with lesions"),
    (("mrnet.epochs", "mrnet.lr", "mrnet.norm", "mrnet.schedule", "mrnet.pretrained"),
     "the classifier's training (`mrnet.pretrained`: ImageNet AlexNet weights, none = from scratch)"),
    (("gradcam.method", "gradcam.layer", "gradcam.smooth_sigma"),
     "its maps (`gradcam.method`: `gradcam`, `hirescam` or `layercam`, all through captum)"),
)


def params_table(params: Mapping) -> str:
    """The defaults that matter, read from the parameters: key | default | what it does."""
    absent = object()
    rows = [(", ".join(f"`{k}`" for k in keys),
             ", ".join(MISSING if (v := lookup(params, k, absent)) is absent else param_value(v) for k in keys), what)
            for keys, what in PARAM_ROWS]
    return table(("key", "default", "what it does"), rows)


VARIANT_LABELS = {"zero_filled": "zero-filled", "baseline": "baseline", "weighted": "Grad-CAM weighted",
                  "oracle": "oracle weighted"}
# (key, header, a mean's format, a difference's format)
RESULT_METRICS = (("roi_psnr", "ROI PSNR (dB)", "{:.2f}", "{:+.2f}"), ("psnr", "PSNR (dB)", "{:.2f}", "{:+.2f}"),
                  ("roi_ssim", "ROI SSIM", "{:.3f}", "{:+.4f}"), ("ssim", "SSIM", "{:.3f}", "{:+.4f}"))
COMPARISON_LABELS = {"weighted_vs_baseline": f"Grad-CAM weighted {MINUS} baseline",
                     "oracle_vs_baseline": f"oracle {MINUS} baseline"}


def _seeds(evaluation: Mapping) -> str:
    seeds = lookup(evaluation, "seeds")
    return ", ".join(map(str, seeds)) if isinstance(seeds, list) and seeds else MISSING


def variants_table(metrics: Mapping, evaluation: Mapping) -> str:
    """Each variant's mean over volumes of its seed-averaged values, with the 95% bootstrap interval
    over volumes (evaluate's detail; the tracked means where the detail is missing)."""
    e = evaluation
    caption = (f"{lookup(e, 'split', MISSING)} split: {num(lookup(e, 'n_volumes'), '{:d}')} volumes "
               f"({num(lookup(e, 'n_roi_volumes'), '{:d}')} with boxes; {num(lookup(e, 'n_roi_slices'), '{:d}')} "
               f"annotated slices of {num(lookup(e, 'n_slices'), '{:d}')}), seeds {_seeds(e)}. Mean over volumes "
               f"of the seed-averaged values, 95% bootstrap interval over volumes.")
    rows = []
    for v, label in VARIANT_LABELS.items():
        cells = []
        for m, _, fmt, _ in RESULT_METRICS:
            mean = lookup(e, f"means.{v}.{m}", lookup(metrics, f"{v}.{m}"))
            ci = lookup(e, f"means_ci95.{v}.{m}") or [None, None]
            cells.append(estimate(mean, ci[0], ci[1], fmt=fmt))
        rows.append((label, *cells))
    return caption + "\n\n" + table(("variant", *(h for _, h, _, _ in RESULT_METRICS)), rows)


def _comparison_names(metrics: Mapping, evaluation: Mapping) -> list[str]:
    """The two comparisons with the baseline, then any other the reports hold."""
    found = {k for k in (*metrics, *lookup(evaluation, "comparisons", {})) if "_vs_" in k}
    return list(COMPARISON_LABELS) + sorted(found - set(COMPARISON_LABELS))


def _label(name: str) -> str:
    return COMPARISON_LABELS.get(name, name.replace("_vs_", f" {MINUS} ").replace("_", " "))


def comparisons_table(metrics: Mapping, evaluation: Mapping) -> str:
    """Each comparison with the baseline, per metric: the two-level interval over seeds and volumes
    and its t-test p (tracked), the volume-only interval and Wilcoxon p beside it, and each seed's own
    mean difference with their SD."""
    rows = []
    for name in _comparison_names(metrics, evaluation):
        two, vol, seeds = [], [], []
        for m, _, fmt, dfmt in RESULT_METRICS:
            c = lookup(evaluation, f"comparisons.{name}.{m}", {})
            t = merged(c, lookup(metrics, f"{name}.{m}", {}))
            two.append(estimate(t.get("delta"), t.get("ci95_low"), t.get("ci95_high"), t.get("p"), dfmt))
            v = c.get("volume_only", {})
            vol.append(estimate(v.get("delta"), v.get("ci95_low"), v.get("ci95_high"), v.get("p_wilcoxon"), dfmt))
            per_seed = c.get("by_seed") or {}
            order = sorted(per_seed, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
            seeds.append(", ".join(num(per_seed[k], dfmt) for k in order)
                         + (f" (SD {num(c.get('seed_sd'), fmt)})" if _finite(c.get("seed_sd")) else "")
                         if per_seed else MISSING)
        rows += [(_label(name), "seeds × volumes", *two), ("", "volumes only", *vol), ("", "each seed", *seeds)]
    share = lookup(evaluation, "weighted_share_of_oracle_gain.roi_psnr", {})
    note = ("seeds × volumes: delta, 95% two-level t interval over training seeds and test volumes, t-test p "
            "(the tracked numbers); volumes only: seeds averaged, 95% BCa bootstrap interval over volumes, "
            "Wilcoxon p; each seed: that seed's mean difference (SD across seeds).")
    if share:
        note += (f" Grad-CAM weighted's share of the oracle's ROI PSNR gain: "
                 f"{estimate(share.get('share'), share.get('ci95_low'), share.get('ci95_high'))} "
                 f"(volumes only, {num(share.get('n_volumes'), '{:d}')} volumes).")
    return table(("comparison", "interval", *(h for _, h, _, _ in RESULT_METRICS)), rows) + "\n\n" + note


CONTRAST_METRICS = tuple(r for r in RESULT_METRICS if r[0] in ("roi_psnr", "psnr"))   # what evaluate splits


def contrast_comparisons_table(evaluation: Mapping) -> str:
    """Each comparison with the baseline on the volumes of one contrast at a time (evaluate's
    `comparisons_by_acquisition`): ROI PSNR and PSNR, the two-level interval and its t-test p."""
    groups = evaluation.get("comparisons_by_acquisition") or {}
    rows = []
    for acq, g in groups.items():
        comparisons = g.get("comparisons") or {}
        for i, name in enumerate(n for n in _comparison_names({}, {"comparisons": comparisons}) if n in comparisons):
            cells = []
            for m, _, _, dfmt in CONTRAST_METRICS:
                c = lookup(comparisons, f"{name}.{m}", {})
                cells.append(estimate(c.get("delta"), c.get("ci95_low"), c.get("ci95_high"), c.get("p"), dfmt))
            label = (f"`{acq}` ({num(g.get('n_volumes'), '{:d}')} volumes, "
                     f"{num(g.get('n_roi_volumes'), '{:d}')} with boxes)") if i == 0 else ""
            rows.append((label, _label(name), *cells))
    headers = [h for _, h, _, _ in CONTRAST_METRICS]
    note = ("Each contrast's volumes alone (the fastMRI files' `acquisition`: `CORPD_FBK` proton density, "
            "`CORPDFS_FBK` with fat suppression); delta, 95% two-level t interval over training seeds and "
            "those volumes, t-test p. A split made after the maps' own split by contrast, not planned before.")
    return table(("contrast", "comparison", *headers), rows or [(MISSING, MISSING, MISSING, MISSING)]) + "\n\n" + note


POWER_METRICS = (("roi_psnr", "ROI PSNR"), ("psnr", "PSNR"))


def _power_rows(metrics: Mapping, evaluation: Mapping):
    for m, metric_label in POWER_METRICS:
        for name in _comparison_names(metrics, evaluation):
            yield f"{_label(name)}, {metric_label}", lookup(evaluation, f"comparisons.{name}.{m}", {})


def components_table(metrics: Mapping, evaluation: Mapping) -> str:
    """The variance components (dB²) of each tracked comparison: volume, seed, seed × volume (an
    estimate clipped at 0: not measurable from these seeds and volumes)."""
    def cell(x: Any) -> str:
        return "0 (not measurable)" if x == 0 else num(x, "{:.2g}")

    rows = [(label, *(cell(lookup(c, f"variance_components.{k}")) for k in ("volume", "seed", "residual")),
             f"{num(c.get('n_seeds'), '{:d}')} × {num(c.get('n_volumes'), '{:d}')}")
            for label, c in _power_rows(metrics, evaluation)]
    return table(("comparison", "volume", "seed", "seed × volume", "seeds × volumes"), rows)


PROJECTIONS = ((3, 1), (4, 1), (5, 1), (6, 1), (3, 2), (3, 4), (5, 2))   # (seeds, × volumes)


def projection_table(metrics: Mapping, evaluation: Mapping) -> str:
    """The expected 95% half-width (dB) of each tracked comparison with more seeds or volumes, from
    its measured variance components (`pipeline.stats.projected_half_width`)."""
    from pipeline.stats import projected_half_width

    def cell(c: Mapping, seeds: int, times: int) -> str:
        comp, n = c.get("variance_components"), c.get("n_volumes")
        if not isinstance(comp, Mapping) or not _finite(n) or not all(_finite(comp.get(k)) for k in
                                                                      ("volume", "seed", "residual")):
            return MISSING
        return num(projected_half_width(comp, seeds, times * n))

    header = [f"{s} seeds" if k == 1 else f"{s} seeds, {k}× volumes" for s, k in PROJECTIONS]
    rows = [(label, *(cell(c, s, k) for s, k in PROJECTIONS)) for label, c in _power_rows(metrics, evaluation)]
    return table(("comparison", *header), rows)


def _method_name(method: Optional[str]) -> str:
    from pipeline.roi.gradcam import METHOD_NAMES
    return METHOD_NAMES.get(method, method) if method else MISSING


LOCALISATION = (("pointing_game", "pointing game", "{:.2f}"), ("pointing_game_15px", "at 15 px", "{:.2f}"),
                ("energy_in_box", "energy in box", "{:.3f}"))
CHANCE_OF = {"pointing_game": "chance", "pointing_game_15px": "chance_15px", "energy_in_box": "chance"}
CHANCE_FMT = "{:.3f}"


def _scores_caption(overall: Mapping, split: Any) -> str:
    return (f"{split or MISSING} split: {num(lookup(overall, 'n_slices'), '{:d}')} annotated slices in "
            f"{num(lookup(overall, 'n_volumes'), '{:d}')} volumes; 95% bootstrap intervals over volumes; chance: "
            f"the boxes' area share (at 15 px: the area within 15 px of a box).")


def gradcam_methods_table(bench: Mapping, params: Mapping) -> str:
    """Every class-activation method × trunk layer scored on val (benchmarks/gradcam_methods.py), the
    default (params) in bold, and the chance levels."""
    results = [r for r in bench.get("results") or [] if isinstance(r, Mapping)]
    default = (lookup(params, "gradcam.method"), lookup(params, "gradcam.layer"))
    rows = []
    for r in results:
        bold = (r.get("method"), r.get("layer")) == default
        mark = (lambda s: f"**{s}**") if bold else (lambda s: s)
        rows.append((mark(_method_name(r.get("method"))), mark(f"`{r.get('layer', MISSING)}`"),
                     *(summary_cell(lookup(r, f"overall.{q}"), fmt) for q, _, fmt in LOCALISATION)))
    first = results[0].get("overall", {}) if results else {}
    rows.append(("chance", "", *(summary_cell(first.get(CHANCE_OF[q]), CHANCE_FMT) for q, _, _ in LOCALISATION)))
    caption = _scores_caption(first, bench.get("split")) + " Bold: the default (`gradcam.*` in params.yaml)."
    return caption + "\n\n" + table(("method", "layer", *(h for _, h, _ in LOCALISATION)), rows)


def localisation_table(gradcam: Mapping, gradcam_detail: Mapping) -> str:
    """The committed maps on the annotated test slices against the location prior of the training
    boxes and chance (gradcam's detail; the tracked means where it is missing). Where the detail
    splits the maps' scores by MRNet's call on each volume (`by_call`), the volumes it calls
    abnormal and those it calls normal get a row each after the maps' row, each followed by the
    location prior on the same volumes where the detail has it (`location_prior_by_call`); the same
    for each contrast (the fastMRI `acquisition`) where it splits them by that (`by_acquisition`)."""
    d = gradcam_detail
    overall, prior = d.get("overall", {}), d.get("location_prior", {})
    tracked = lookup(gradcam, "test", {})

    def cells(scores: Mapping, fallback: Mapping, chance: bool = False) -> list[str]:
        keys = [(CHANCE_OF[q], CHANCE_FMT) if chance else (q, fmt) for q, _, fmt in LOCALISATION]
        return [summary_cell(scores[k], fmt) if isinstance(scores.get(k), Mapping) else num(fallback.get(k), fmt)
                for k, fmt in keys]

    def counted(label: str, scores: Mapping) -> str:
        return (f"{label} ({num(scores.get('n_volumes'), '{:d}')} volumes, "
                f"{num(scores.get('n_slices'), '{:d}')} slices)")

    maps = f"MRNet {_method_name(d.get('method'))}, `{d.get('layer', MISSING)}`" if d.get("method") else "MRNet maps"
    by_call = d.get("by_call") if isinstance(d.get("by_call"), Mapping) else {}
    by_acquisition = d.get("by_acquisition") if isinstance(d.get("by_acquisition"), Mapping) else {}
    groups = [("by_call", "abnormal", "MRNet maps, volumes MRNet calls abnormal"),
              ("by_call", "normal", "MRNet maps, volumes it calls normal")] if by_call else []
    groups += [("by_acquisition", acq, f"MRNet maps, `{acq}` volumes") for acq in by_acquisition]
    split_rows = []
    for key, group, label in groups:
        split_rows.append((counted(label, d[key].get(group) or {}), *cells(d[key].get(group) or {}, {})))
        prior_groups = d.get(f"location_prior_{key}")
        if isinstance(prior_groups, Mapping):
            split_rows.append(("location prior, the same volumes", *cells(prior_groups.get(group) or {}, {})))
    rows = [(maps, *cells(overall, tracked)), *split_rows,
            ("location prior (mean box mask of the training slices)", *cells(prior, tracked.get("location_prior", {}))),
            ("chance", *cells(overall, {}, chance=True))]
    caption = _scores_caption(overall, d.get("split"))
    if by_call:
        caption += (f" MRNet calls a volume abnormal at P(abnormal) ≥ {num(lookup(d, 'calls.threshold'), '{:.3f}')}"
                    f" (its threshold, chosen on its tune hold-out).")
    if by_acquisition:
        caption += (" Contrast: the fastMRI files' `acquisition` (knee: `CORPD_FBK` proton density, `CORPDFS_FBK`"
                    " the same with fat suppression).")
    return caption + "\n\n" + table(("map", *(h for _, h, _ in LOCALISATION)), rows)


def classifier_table(mrnet: Mapping, mrnet_detail: Mapping) -> str:
    """MRNet on its tune hold-out (model selection) and its test exams (the `valid` split)."""
    m = merged(mrnet, mrnet_detail)
    t = m.get("test") or {}
    rows = [(f"tune hold-out (best epoch {num(m.get('best_epoch'), '{:d}')})",
             num(m.get("n_tune"), "{:d}"), num(m.get("tune_auc")), MISSING, MISSING, MISSING),
            (f"test (`valid`; threshold {num(t.get('threshold'), '{:.3f}')}, chosen on tune)",
             f"{num(t.get('n'), '{:d}')} ({num(t.get('n_positive'), '{:d}')})",
             *(num(t.get(k)) for k in ("auc", "accuracy", "sensitivity", "specificity")))]
    caption = f"Trained on {num(m.get('n_train'), '{:d}')} exams ({num(m.get('parameters'), '{:,d}')} parameters)."
    return caption + "\n\n" + table(("MRNet", "exams (abnormal)", "AUC", "accuracy", "sensitivity", "specificity"),
                                    rows)


def mrnet_seeds_table(seeds: Mapping, long: Mapping) -> str:
    """MRNet retrained per seed (benchmarks/mrnet_seeds.py: `mrnet_seeds` at the default epochs and
    `mrnet_long` with more): test and tune AUC, AUC on the exams with small and large lesions and
    within each contrast where measured, and the maps' pointing game at 15 px where measured."""
    runs = [(bench, k, r) for bench in (seeds, long)
            for k, r in sorted((bench.get("runs") or {}).items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0)]
    acquisitions = sorted({a for _, _, r in runs for a in (r.get("auc_by_acquisition") or {})})
    rows = []
    for bench in (seeds, long):
        for _, k, r in (run for run in runs if run[0] is bench):
            by_acq = r.get("auc_by_acquisition") or {}
            rows.append((k, num(bench.get("epochs"), "{:d}"), num(r.get("test_auc")), num(r.get("tune_auc")),
                         num(r.get("best_epoch"), "{:d}"), num(r.get("auc_small_lesions")),
                         num(r.get("auc_large_lesions")), *(num(lookup(by_acq, f"{a}.auc")) for a in acquisitions),
                         num(r.get("test_pointing_game_15px"))))
        if len(bench.get("runs") or {}) > 1:
            rows.append(("mean ± SD", num(bench.get("epochs"), "{:d}"),
                         f"{num(bench.get('test_auc_mean'))} ± {num(bench.get('test_auc_sd'), '{:.3f}')}",
                         "", "", "", "", *("" for _ in acquisitions), ""))
    n = seeds.get("n_test_exams") or long.get("n_test_exams")
    maps = [f"{_method_name(lookup(b, 'gradcam.method'))} at `{lookup(b, 'gradcam.layer')}` ({b.get('epochs')} epochs)"
            for b in (seeds, long) if lookup(b, "gradcam.layer")]
    caption = (f"Test AUC on {num(n, '{:d}')} exams; small and large lesions: the abnormal exams whose largest "
               f"box is below or above the median, each against all normal exams."
               + (" Per contrast: the exams drawn with that `acquisition` only, normal and abnormal." if acquisitions else "")
               + (f" Maps: {'; '.join(maps)}." if maps else ""))
    return caption + "\n\n" + table(("seed", "epochs", "test AUC", "tune AUC", "best epoch", "AUC, small lesions",
                                     "AUC, large lesions", *(f"AUC, `{a}`" for a in acquisitions),
                                     "pointing game at 15 px"), rows)


def mrnet_tune_table(tune: Mapping) -> str:
    """MRNet's recipe sweep on its tune hold-out (benchmarks/mrnet_tune.py), the chosen row in bold."""
    chosen = tune.get("chosen")
    rows = []
    for r in tune.get("rows") or []:
        s = r.get("setting") or {}
        run0 = next(iter((r.get("runs") or {}).values()), {})
        cells = [str(s.get("norm", "—")), num(s.get("lr"), "{:g}"), str(s.get("schedule", "—")),
                 num(s.get("epochs"), "{:d}"), num(r.get("exam_passes"), "{:,d}"), num(r.get("tune_auc_mean")),
                 num(run0.get("fit_auc_last_epoch")), num(r.get("seconds_mean"), "{:.0f}")]
        rows.append([f"**{c}**" for c in cells] if s == chosen else cells)
    caption = (f"Tune hold-out of {num(tune.get('n_train_exams'), '{:,d}')} training exams, seeds "
               f"{', '.join(sorted({k for r in tune.get('rows') or [] for k in r.get('runs', {})})) or '—'}; "
               f"rule: {tune.get('rule', '—')}. Fit AUC: the running AUC over the last training epoch's "
               f"exams (does it fit its own data?). Seconds: wall time beside other work, not comparable "
               f"across rows.")
    return caption + "\n\n" + table(("norm", "lr", "schedule", "epochs", "exam passes", "tune AUC",
                                      "fit AUC", "seconds"), rows)


# every benchmark's JSON (its `SOURCES` key, file stem under reports/bench/), what it measures and
# the reference it is compared with; `_bench_latest` reads the latest number from it
BENCHMARKS = (
    ("bench_undersample", "undersample", "`benchmarks/undersample_throughput.py`: the undersample stage's "
     "throughput on fastMRI-sized slices (640 × 368 k-space, crop 320), single-coil and 15 coils, store written",
     "fastMRI's `SliceDataset` + `UnetDataTransform` loop, and the bare `ifft2c`, same run and cores"),
    ("bench_unet_training", "unet_training", "`benchmarks/unet_training.py`: a U-Net training epoch "
     "streamed from the stores, and inference latency per slice",
     "a bare loop over in-memory tensors (same model, batch, optimiser, loss), same run"),
    ("bench_stage_memory", "stage_memory", "`benchmarks/stage_memory.py`: peak memory (largest process) "
     "of prepare, undersample, train-unet and evaluate at N and 4N volumes, 320², single-coil",
     "the same stage at N volumes (goal: 4N/N ≤ 1.2)"),
    ("bench_contention", "contention", "`benchmarks/contention.py`: one train-unet epoch alone, beside a busy "
     "single-threaded process and two at once; two evaluates at once",
     "the same stage alone or the two in sequence, same run; alone: the code before (`--reference-code`)"),
    ("bench_gpu_training", "gpu_training", "`benchmarks/gpu_training.py`: U-Net training at 320² on one GPU",
     "a bare loop over tensors already on the GPU"),
    ("bench_mrnet_device", "mrnet_device", "`benchmarks/mrnet_device.py`: MRNet's default recipe on each "
     "device at hand (time per exam step, tune and test AUC)", "the same recipe on the CPU"),
    ("bench_mrnet_tune", "mrnet_tune", "`benchmarks/mrnet_tune.py`: MRNet recipes (norm, lr, schedule, "
     "epochs) on its tune hold-out", "the other settings of the sweep (rule fixed before it)"),
    ("bench_mrnet_seeds", "mrnet_seeds", "`benchmarks/mrnet_seeds.py --maps`: MRNet retrained per seed, "
     "test AUC and the maps' pointing game", "the goals of #21 (mean AUC ≥ 0.90, SD ≤ 0.03; pointing game at "
     "15 px ≥ 0.6) and the location prior"),
    ("bench_mrnet_long", "mrnet_long", "`benchmarks/mrnet_seeds.py --epochs N --out …/mrnet_long.json`: "
     "MRNet trained longer", "`mrnet_seeds` at the default epochs"),
    ("bench_gradcam_methods", "gradcam_methods", "`benchmarks/gradcam_methods.py`: every Grad-CAM method × "
     "layer on the val split", "chance (the boxes' area share) and the other pairs (rule fixed before it)"),
    ("bench_mrnet_evidence", "mrnet_evidence", "`benchmarks/mrnet_evidence.py`: MRNet's logit with the val "
     "boxes occluded and with same-size regions elsewhere occluded; the maps' pointing game on the volumes it "
     "calls abnormal and normal", "the same volume unoccluded; occlusion elsewhere"),
    ("bench_mrnet_contrast", "mrnet_contrast", "`benchmarks/mrnet_contrast.py`: MRNet's default recipe trained "
     "on all the training exams and on those of one contrast only; tune AUC within each contrast, fit AUC",
     "the other contrast; the same recipe on all the exams"),
    ("bench_roi_frontier", "roi_frontier", "`benchmarks/roi_frontier.py`: the ROI weighting's settings on val, "
     "oracle and Grad-CAM against the baseline", "the baseline of the same capacity and loss, same seeds "
     "(rule fixed before it)"),
)


def _frontier_cell(c: Any) -> str:
    return estimate(lookup(c, "delta"), lookup(c, "ci95_low"), lookup(c, "ci95_high"), fmt="{:+.2f}")


def _overrides(o: Mapping) -> str:
    return ", ".join(f"`{k}` {param_value(v)}" for k, v in o.items()) or "params.yaml as committed"


def frontier_table(bench: Mapping) -> str:
    """The ROI weighting's settings on val (benchmarks/roi_frontier.py): oracle and Grad-CAM in-box and
    whole-image PSNR change against the baseline of the same capacity and loss; the rule's choice in bold."""
    rows_in = bench.get("settings") or [{}]
    chosen = bench.get("chosen")
    rows = []
    for r in rows_in:
        cells = [r.get("name", MISSING), _overrides(r.get("overrides") or {}) if r else MISSING,
                 _frontier_cell(lookup(r, "oracle.roi_psnr")), _frontier_cell(lookup(r, "oracle.psnr")),
                 _frontier_cell(lookup(r, "weighted.roi_psnr")), _frontier_cell(lookup(r, "weighted.psnr")),
                 num(r.get("seconds_per_training"), "{:.0f}")]
        rows.append([f"**{c}**" for c in cells] if chosen and r.get("name") == chosen else cells)
    first = rows_in[0]
    caption = (f"val split, {lookup(first, 'oracle.roi_psnr.n_volumes', MISSING)} volumes with boxes, seeds "
               f"{', '.join(str(s) for s in bench.get('seeds') or [])}; each cell: mean change (dB) against the "
               f"baseline of the same capacity and loss, 95% two-level interval over seeds and volumes. Seconds: "
               f"training wall time per run, one thread, two at once. Bold: chosen by the rule "
               f"({chosen or 'no setting qualified'}).")
    return caption + "\n\n" + table(("setting", "changes", "oracle in-box", "oracle whole-image",
                                       "Grad-CAM in-box", "Grad-CAM whole-image", "seconds"), rows)


def _bench_latest(key: str, b: Mapping) -> str:
    """The headline number of one benchmark's JSON ("—" when it has not been run)."""
    if not b:
        return MISSING
    if key == "bench_undersample":
        multi = b.get("multicoil") or {}
        multi_text = (f"; 15 coils {num(multi.get('slices_per_s', {}).get('ours'), '{:.1f}')} slices/s: "
                      f"{num(multi.get('ratio_vs_fastmri'))}×, {num(multi.get('ratio_vs_bare_fft'))}×" if multi else "")
        return (f"{num(lookup(b, 'slices_per_s.ours'), '{:.0f}')} slices/s: {num(b.get('ratio_vs_fastmri'))}× "
                f"fastMRI's loop, {num(b.get('ratio_vs_bare_fft'))}× the bare FFT{multi_text} "
                f"(targets {lookup(b, 'targets.ratio_vs_fastmri', MISSING)}, {lookup(b, 'targets.ratio_vs_bare_fft', MISSING)})")
    if key == "bench_unet_training":
        return (f"{num(b.get('ratio_vs_bare'), '{:.3f}')}× the bare loop ({num(b.get('ratio_vs_bare_with_validation'), '{:.3f}')}× "
                f"with validation); data wait {num(100 * b['data_wait_share'] if _finite(b.get('data_wait_share')) else None, '{:.1f}')}% "
                f"of step time; inference {num(b.get('inference_ms_per_slice_median'), '{:.0f}')} ms per slice")
    if key == "bench_stage_memory":
        res = lookup(b, "results.singlecoil") or {}
        parts = [f"{s} {num(lookup(res, f'{s}.ratio_peak_rss_mb'))}×" for s in b.get("stages") or []]
        return ("4N/N: " + ", ".join(parts)) if parts else MISSING
    if key == "bench_contention":
        r = b.get("ratios") or {}
        out = (f"beside a busy process {num(r.get('beside_busy_vs_alone'))}× alone, two at once "
               f"{num(r.get('two_at_once_vs_sequential'))}× in sequence, two evaluates "
               f"{num(r.get('two_evaluates_at_once_vs_sequential'))}×")
        if _finite(r.get("alone_speed_vs_reference")):
            out += f"; alone {num(r['alone_speed_vs_reference'])}× the earlier code's speed"
        return out + " (goals ≤ 2.2, ≤ 1.25, ≥ 0.95)"
    if key == "bench_gpu_training":
        return (f"{num(b.get('ratio_vs_bare'), '{:.3f}')}× the bare loop on {b.get('device', MISSING)}; "
                f"data wait {num(b.get('data_wait_share'), '{:.3f}')}")
    if key == "bench_mrnet_device":
        runs = b.get("runs") or {}
        return "; ".join(f"{d}: {num(r.get('ms_per_exam_step'), '{:.0f}')} ms per exam step, test AUC "
                         f"{num(r.get('test_auc'))}" for d, r in runs.items()) or MISSING
    if key == "bench_mrnet_tune":
        chosen = b.get("chosen") or {}
        row = next((r for r in b.get("rows") or [] if r.get("setting") == chosen), {})
        return (f"chosen: {', '.join(f'{k} {param_value(v)}' for k, v in chosen.items()) or MISSING}; "
                f"tune AUC {num(row.get('tune_auc_mean'))}")
    if key in ("bench_mrnet_seeds", "bench_mrnet_long"):
        runs = b.get("runs") or {}
        auc = (f"{num(b.get('test_auc_mean'))} ± {num(b.get('test_auc_sd'), '{:.3f}')}" if len(runs) > 1
               else num(next(iter(runs.values()), {}).get("test_auc")))
        out = f"test AUC {auc} ({len(runs)} seed{'s' if len(runs) != 1 else ''}, {num(b.get('epochs'), '{:d}')} epochs)"
        if _finite(b.get("pointing_game_15px_mean")):
            sd = f" ± {num(b['pointing_game_15px_sd'])}" if _finite(b.get("pointing_game_15px_sd")) else ""
            out += f"; pointing game at 15 px {num(b['pointing_game_15px_mean'])}{sd}"
        return out
    if key == "bench_gradcam_methods":
        def score(r):
            o = r.get("overall") or {}
            return tuple(lookup(o, f"{k}.mean", -1) for k in ("pointing_game_15px", "pointing_game", "energy_in_box"))
        best = max(b.get("results") or [], key=score, default=None)
        if not best:
            return MISSING
        return (f"best by the rule: {best.get('method')} at `{best.get('layer')}`, pointing game at 15 px "
                f"{num(lookup(best, 'overall.pointing_game_15px.mean'))} (chance "
                f"{num(lookup(best, 'overall.chance_15px.mean'), '{:.3f}')})")
    if key == "bench_mrnet_evidence":
        parts = []
        for name, label in (("called_abnormal", "called abnormal"), ("called_normal", "called normal"),
                            ("confident", f"logit > {num(b.get('confident_logit'), '{:g}')}"),
                            ("not_confident", "the rest")):
            g = lookup(b, f"groups.{name}") or {}
            parts.append(f"{label}: {num(g.get('n_volumes'), '{:d}')} volumes, logit change "
                         f"{num(lookup(g, 'change_boxes_occluded.median'), '{:+.2f}')} (boxes occluded) vs "
                         f"{num(lookup(g, 'change_elsewhere_occluded.median'), '{:+.2f}')} (elsewhere), pointing game "
                         f"at 15 px {num(lookup(g, 'maps.pointing_game_15px.mean'))} (the prior "
                         f"{num(lookup(g, 'location_prior.pointing_game_15px.mean'))})")
        return "; ".join(parts) + " (medians, val)"
    if key == "bench_mrnet_contrast":
        parts = []
        for trained_on, r in (b.get("runs") or {}).items():
            within = ", ".join(f"`{a}` {num(g.get('auc'))}" for a, g in (r.get("tune_auc_by_acquisition") or {}).items())
            parts.append(f"trained on {'every exam' if trained_on == 'all' else f'`{trained_on}` only'}: tune AUC "
                         f"{within}, fit AUC {num(r.get('fit_auc_last_epoch'))}")
        return "; ".join(parts) or MISSING
    if key == "bench_roi_frontier":
        chosen = b.get("chosen")
        row = next((r for r in b.get("settings") or [] if r.get("name") == chosen), {})
        return (f"{len(b.get('settings') or [])} settings; chosen: {chosen or 'none qualified'}, oracle in-box "
                f"{_frontier_cell(lookup(row, 'oracle.roi_psnr'))} dB at whole-image "
                f"{_frontier_cell(lookup(row, 'oracle.psnr'))} dB on val")
    return MISSING


def benchmarks_table(*benches: Mapping) -> str:
    """Every benchmark (`BENCHMARKS`, in that order): its JSON, what it measures, the reference it is
    compared with and its latest number; "—" for one not run yet."""
    rows = [(f"`reports/bench/{stem}.json`", what, ref, _bench_latest(key, b))
            for (key, stem, what, ref), b in zip(BENCHMARKS, benches)]
    return table(("file", "measures", "compared with", "latest"), rows)


@dataclass(frozen=True)
class Block:
    render: Callable[..., str]
    sources: tuple[str, ...]        # keys of SOURCES, passed in this order


BLOCKS: dict[str, Block] = {
    "params": Block(params_table, ("params",)),
    "results-variants": Block(variants_table, ("metrics", "evaluation")),
    "results-comparisons": Block(comparisons_table, ("metrics", "evaluation")),
    "results-by-contrast": Block(contrast_comparisons_table, ("evaluation",)),
    "power-components": Block(components_table, ("metrics", "evaluation")),
    "power-projection": Block(projection_table, ("metrics", "evaluation")),
    "gradcam-methods": Block(gradcam_methods_table, ("bench_gradcam_methods", "params")),
    "localisation": Block(localisation_table, ("gradcam", "gradcam_detail")),
    "classifier": Block(classifier_table, ("mrnet", "mrnet_detail")),
    "mrnet-seeds": Block(mrnet_seeds_table, ("bench_mrnet_seeds", "bench_mrnet_long")),
    "mrnet-tune": Block(mrnet_tune_table, ("bench_mrnet_tune",)),
    # the same comparison at 8x (`dvc exp run -S mask.acceleration=8`, its reports kept under reports/x8/)
    "results-comparisons-8x": Block(comparisons_table, ("x8_metrics", "x8_evaluation")),
    "roi-frontier": Block(frontier_table, ("bench_roi_frontier",)),
    "benchmarks": Block(benchmarks_table, tuple(key for key, *_ in BENCHMARKS)),
}


def render(name: str, sources: Mapping[str, Mapping]) -> str:
    """The Markdown of block `name` from `sources` (a missing source is {})."""
    if name not in BLOCKS:
        raise KeyError(f"generated:{name}: no such table (known: {', '.join(BLOCKS)})")
    b = BLOCKS[name]
    return b.render(*(sources.get(s) or {} for s in b.sources))


# ---------------------------------------------------------------- pages

OPEN = re.compile(r"^(?P<indent>[ \t]*)<!-- generated:(?P<name>[\w-]+) -->[ \t]*$")
CLOSE = "<!-- /generated:{name} -->"


def blocks_in(text: str) -> list[tuple[str, str, int, int]]:
    """(name, indent, first body line, closing line) of each marked block, line indices of
    `text.splitlines()`; an unclosed, nested or stray marker is a ValueError naming it and its line."""
    lines, found, i = text.splitlines(), [], 0
    while i < len(lines):
        m = OPEN.match(lines[i])
        if not m and "<!-- /generated:" in lines[i]:
            raise ValueError(f"line {i + 1}: {lines[i].strip()} closes no open block")
        if m:
            name, close = m["name"], CLOSE.format(name=m["name"])
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == close or OPEN.match(lines[j])), None)
            if end is None or lines[end].strip() != close:
                raise ValueError(f"line {i + 1}: generated:{name} is not closed by {close}")
            found.append((name, m["indent"], i + 1, end))
            i = end
        i += 1
    return found


def body(rendered: str, indent: str) -> list[str]:
    """The lines between the markers: a blank line, the rendered Markdown indented as the marker is
    (inside a list item), a blank line."""
    return ["", *(f"{indent}{ln}" if ln else "" for ln in rendered.splitlines()), ""]


def fill(text: str, sources: Mapping[str, Mapping]) -> str:
    """`text` with every marked block rendered from `sources`."""
    lines = text.splitlines()
    for name, indent, start, end in reversed(blocks_in(text)):
        lines[start:end] = body(render(name, sources), indent)
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


def stale(text: str, sources: Mapping[str, Mapping]) -> list[str]:
    """One line per marked block whose content differs from what `sources` render: the block's name,
    its line and the first line that differs (committed, then rendered)."""
    lines, out = text.splitlines(), []
    for name, indent, start, end in blocks_in(text):
        want, have = body(render(name, sources), indent), lines[start:end]
        if want != have:
            k = next((k for k, (a, b) in enumerate(zip(have, want)) if a != b), min(len(have), len(want)))
            got = have[k].strip() if k < len(have) else "(end of block)"
            exp = want[k].strip() if k < len(want) else "(end of block)"
            out.append(f"line {start + k + 1}: generated:{name} is stale: has {got!r}, renders {exp!r}")
    return out
