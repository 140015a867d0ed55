"""Paired comparisons of reconstruction variants over test volumes.

Input is the long per-volume table evaluate writes: one row per (variant, seed, volume) with the
metric columns (`seed` is empty for seedless variants such as zero_filled). A comparison of a
variant against a reference:

1. averages each variant over its seeds, per volume;
2. pairs the two by volume name (an inner join: a volume missing a value, e.g. a volume without
   boxes for the ROI metrics, drops out), d_v = variant_v - reference_v;
3. reports the mean of d, a 95% bootstrap interval over volumes (scipy.stats.bootstrap, BCa,
   seeded, so the same table always gives the same interval), the two-sided Wilcoxon signed-rank
   p-value (scipy.stats.wilcoxon), the number of volumes, and, for seeds both variants share,
   each seed's mean paired difference and their SD across seeds (ddof 1): the run-to-run noise
   that seed averaging removes.
"""
from __future__ import annotations

import math
import warnings
from typing import Iterable

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95


def seed_means(table: pd.DataFrame, variant: str, metric: str) -> pd.Series:
    """One value per volume: the variant's metric averaged over its seeds (NaN rows left out)."""
    rows = table[(table["variant"] == variant) & table[metric].notna()]
    return rows.groupby("volume")[metric].mean()


def paired_differences(table: pd.DataFrame, variant: str, reference: str, metric: str) -> pd.Series:
    """variant - reference per volume (seed-averaged), paired by volume name."""
    a, b = seed_means(table, variant, metric), seed_means(table, reference, metric)
    joined = pd.concat({"a": a, "b": b}, axis=1, join="inner")
    return (joined["a"] - joined["b"]).sort_index()


def per_seed_deltas(table: pd.DataFrame, variant: str, reference: str, metric: str) -> dict[int, float]:
    """Each shared seed's mean over volumes of (variant - reference), paired by volume."""
    out = {}
    seeds = set(table.loc[table["variant"] == variant, "seed"].dropna())
    seeds &= set(table.loc[table["variant"] == reference, "seed"].dropna())
    for s in sorted(seeds):
        d = paired_differences(table[table["seed"] == s], variant, reference, metric)
        if len(d):
            out[int(s)] = float(d.mean())
    return out


def bootstrap_interval(d: np.ndarray, n_resamples: int = 10000, seed: int = 0,
                       confidence: float = CONFIDENCE) -> tuple[float, float]:
    """BCa bootstrap interval of the mean of d; a constant d gives (d, d), fewer than 2 values NaN."""
    d = np.asarray(d, dtype=np.float64)
    if d.size < 2:
        return math.nan, math.nan
    if np.ptp(d) == 0:
        return float(d[0]), float(d[0])
    return _bca((d,), np.mean, n_resamples, seed, confidence)


def _bca(data: tuple, statistic, n_resamples: int, seed: int, confidence: float,
         paired: bool = False) -> tuple[float, float]:
    """scipy's seeded BCa bootstrap interval of `statistic` over `data`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa's degenerate-data warnings on near-constant input
        res = stats.bootstrap(data, statistic, n_resamples=n_resamples, confidence_level=confidence,
                              method="BCa", paired=paired, vectorized=True,
                              random_state=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    return float(lo), float(hi)


def wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of d against 0; all-zero d gives 1."""
    d = np.asarray(d, dtype=np.float64)
    if d.size == 0:
        return math.nan
    if not np.any(d != 0):
        return 1.0
    return float(stats.wilcoxon(d, alternative="two-sided").pvalue)


def compare(table: pd.DataFrame, variant: str, reference: str, metric: str, *,
            n_resamples: int = 10000, seed: int = 0) -> dict:
    """The paired comparison of `variant` against `reference` on `metric` (see the module doc)."""
    d = paired_differences(table, variant, reference, metric).to_numpy()
    lo, hi = bootstrap_interval(d, n_resamples, seed)
    per_seed = per_seed_deltas(table, variant, reference, metric)
    seed_values = list(per_seed.values())
    return {
        "delta": float(d.mean()) if d.size else math.nan,
        "ci95_low": lo, "ci95_high": hi,
        "p": wilcoxon_p(d),
        "n_volumes": int(d.size),
        "sd_volumes": float(d.std(ddof=1)) if d.size > 1 else math.nan,
        "seed_sd": float(np.std(seed_values, ddof=1)) if len(seed_values) > 1 else math.nan,
        "per_seed": {str(k): v for k, v in per_seed.items()},
    }


def share_of_gain(table: pd.DataFrame, variant: str, upper: str, reference: str, metric: str, *,
                  n_resamples: int = 10000, seed: int = 0) -> dict:
    """How much of `upper`'s gain over `reference` `variant` reaches on `metric`: the ratio of their
    mean paired differences over the volumes all three share (seed-averaged), a paired cluster
    bootstrap interval of that ratio over volumes (`ratio_bootstrap_interval`), and the direct paired
    comparison `variant` - `upper`. An interval is only meaningful while `upper`'s gain is clearly
    above zero (its resamples then keep a positive denominator)."""
    gain = paired_differences(table, variant, reference, metric)
    top = paired_differences(table, upper, reference, metric)
    both = pd.concat({"v": gain, "u": top}, axis=1, join="inner")
    lo, hi = ratio_bootstrap_interval(both["v"].to_numpy(), both["u"].to_numpy(), n_resamples, seed)
    total = float(both["u"].sum())
    return {"share": float(both["v"].sum()) / total if total else math.nan, "ci95_low": lo, "ci95_high": hi,
            "n_volumes": int(len(both)),
            f"{variant}_minus_{upper}": compare(table, variant, upper, metric, n_resamples=n_resamples, seed=seed)}


def compare_all(table: pd.DataFrame, variants: Iterable[str], reference: str, metrics: Iterable[str], *,
                n_resamples: int = 10000, seed: int = 0) -> dict[str, dict[str, dict]]:
    """{'<variant>_vs_<reference>': {metric: compare(...)}} for every variant present in the table."""
    present = set(table["variant"])
    return {f"{v}_vs_{reference}": {m: compare(table, v, reference, m, n_resamples=n_resamples, seed=seed)
                                    for m in metrics}
            for v in variants if v in present and reference in present}


def volumes_needed(sd: float, half_width: float, confidence: float = CONFIDENCE) -> int:
    """Volumes for a paired interval of +-half_width when the per-volume differences have SD `sd`."""
    z = stats.norm.ppf(0.5 + confidence / 2)
    return int(math.ceil((z * sd / half_width) ** 2))


def ratio_bootstrap_interval(num: np.ndarray, den: np.ndarray, n_resamples: int = 10000, seed: int = 0,
                             confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Cluster bootstrap interval of the pooled ratio sum(num) / sum(den), one (num, den) per cluster
    (e.g. per volume: hits and annotated slices): clusters are resampled with replacement and the
    ratio recomputed over the slices they pool (scipy.stats.bootstrap, paired, BCa, seeded).
    Equal per-cluster ratios give (r, r); fewer than 2 clusters NaN."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    if num.size < 2:
        return math.nan, math.nan
    per = num / den
    if np.ptp(per) == 0:
        return float(per[0]), float(per[0])

    def ratio(n: np.ndarray, d: np.ndarray, axis: int = -1) -> np.ndarray:
        return n.sum(axis=axis) / d.sum(axis=axis)

    return _bca((num, den), ratio, n_resamples, seed, confidence, paired=True)
