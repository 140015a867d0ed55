"""Paired comparisons of reconstruction variants over test volumes and training seeds.

Input is the long per-volume table evaluate writes: one row per (variant, seed, volume) with the
metric columns (`seed` is empty for seedless variants such as zero_filled). A comparison of a
variant against a reference answers "does the method help", not "did these trained networks
differ on these volumes", so its interval holds two sources of noise, the test volumes and the
training seeds (`two_level_interval`):

1. the runs are paired by seed (both variants of a seed start from the same initialisation and see
   the same shuffling, so their difference is what the seed measures; a seedless variant pairs
   with every seed) and by volume name, z[s, v] = variant[s, v] - reference[s, v], over the seeds
   both have and the volumes with a value in every one of those runs (a volume without boxes drops
   out of the ROI metrics);
2. z is a crossed random-effects table, z = delta + a_v + b_s + e_sv, whose grand mean has variance
   var(a)/V + var(b)/S + var(e)/(S V); the two-way ANOVA mean squares estimate it without bias as
   (MS_volume + MS_seed - MS_residual) / (S V) (the seed term left out when MS_seed <= MS_residual,
   i.e. no seed variance is measurable: the interval is then the one-sample t interval of the
   seed-averaged differences), with Satterthwaite's degrees of freedom;
3. it reports delta = mean(z), the 95% t interval delta +- t(df) SE and the two-sided t-test p with
   the same SE and df (so p < 0.05 exactly when the interval excludes 0), SE, df and the variance
   components. One seed cannot measure training noise: with fewer than 2 shared seeds (or 2 volumes)
   the interval and p are NaN.

With 3 seeds a bootstrap over seeds has 10 distinct resamples and its percentiles undercover; the t
interval with Satterthwaite df widens with the few seeds as it should (`simulated_coverage`
measures both intervals' coverage; tests/test_stats.py holds them to it).

Alongside, the volume-only analysis the interval replaces (`volume_only`): each variant averaged
over its seeds per volume, paired by volume (an inner join), a 95% BCa bootstrap interval of the
mean over volumes (scipy.stats.bootstrap, seeded, so the same table always gives the same
interval) and the two-sided Wilcoxon signed-rank p-value. It treats the trained networks as fixed:
the per-seed mean differences and their SD across seeds (ddof 1) show what it leaves out.
`projected_half_width` and `seeds_needed` size a study from measured variance components.
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


def seed_volume_differences(table: pd.DataFrame, variant: str, reference: str, metric: str) -> pd.DataFrame:
    """variant - reference per (seed, volume): rows the seeds both were trained with (a seedless
    variant pairs with every seed of the other), columns the volumes with a value in every one of
    those runs, both sorted. Empty when they share no seed or no volume."""
    a, b = _runs(table, variant, metric), _runs(table, reference, metric)
    if isinstance(a, pd.Series) and isinstance(b, pd.Series):
        z = (a - b).to_frame().T                      # two seedless variants: one row
    elif isinstance(a, pd.Series):
        z = b.rsub(a, axis=1)                         # a - b, a broadcast over b's seeds
    else:
        z = a.sub(b, axis=1) if isinstance(b, pd.Series) else a - b
    z = z.dropna(how="all").dropna(axis=1, how="any")
    return z.sort_index().sort_index(axis=1)


def _runs(table: pd.DataFrame, variant: str, metric: str) -> pd.DataFrame | pd.Series:
    """The variant's metric as seed x volume (a Series by volume when it has no seeds)."""
    rows = table.loc[(table["variant"] == variant) & table[metric].notna(), ["seed", "volume", metric]]
    if rows["seed"].isna().all():
        return rows.set_index("volume")[metric].astype(np.float64)
    return rows.pivot(index="seed", columns="volume", values=metric).astype(np.float64)


def mean_squares(z: np.ndarray) -> tuple[float, float, float]:
    """(MS_seed, MS_volume, MS_residual) of a seed x volume table (two-way ANOVA without
    replication; df S-1, V-1, (S-1)(V-1))."""
    z = np.asarray(z, dtype=np.float64)
    s, v = z.shape
    rows, cols, grand = z.mean(axis=1), z.mean(axis=0), z.mean()
    resid = z - rows[:, None] - cols[None, :] + grand
    return (float(v * np.sum((rows - grand) ** 2) / (s - 1)), float(s * np.sum((cols - grand) ** 2) / (v - 1)),
            float(np.sum(resid ** 2) / ((s - 1) * (v - 1))))


def _se_df(ms_seed: float, ms_volume: float, ms_residual: float, n_seeds: int, n_volumes: int) -> tuple[float, float]:
    """(SE, Satterthwaite df) of the grand mean of an S x V crossed table from its mean squares:
    SE^2 = (MS_volume + MS_seed - MS_residual) / (S V), the seed terms dropped when MS_seed <=
    MS_residual (SE is then the seed-averaged differences' SD / sqrt(V), df V - 1)."""
    s, v = n_seeds, n_volumes
    terms = [(ms_volume / (s * v), v - 1)]
    if ms_seed > ms_residual:
        terms += [(ms_seed / (s * v), s - 1), (-ms_residual / (s * v), (s - 1) * (v - 1))]
    se2 = sum(x for x, _ in terms)
    if se2 <= 0:
        return 0.0, float(v - 1)
    return math.sqrt(se2), se2 ** 2 / sum(x * x / d for x, d in terms)


def two_level_interval(z: np.ndarray, confidence: float = CONFIDENCE) -> dict:
    """The two-level comparison of a seed x volume table of paired differences (see the module doc):
    delta, ci95_low, ci95_high, p (t-test, same SE and df), se, df and the variance components
    {volume, seed, residual} (variances, method of moments, clipped at 0). A constant table gives
    (delta, delta) and p 1 for delta 0 (else 0); fewer than 2 seeds or volumes NaN."""
    z = np.asarray(z, dtype=np.float64)
    nan = math.nan
    out = {"delta": float(z.mean()) if z.size else nan, "ci95_low": nan, "ci95_high": nan, "p": nan,
           "se": nan, "df": nan, "components": {"volume": nan, "seed": nan, "residual": nan}}
    if z.ndim != 2 or min(z.shape) < 2:
        return out
    s, v = z.shape
    ms_seed, ms_volume, ms_residual = mean_squares(z)
    se, df = _se_df(ms_seed, ms_volume, ms_residual, s, v)
    delta = out["delta"]
    if se == 0:
        lo = hi = delta
        p = 1.0 if delta == 0 else 0.0
    else:
        half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
        lo, hi = delta - half, delta + half
        p = float(2 * stats.t.sf(abs(delta) / se, df))
    out.update(ci95_low=lo, ci95_high=hi, p=p, se=se, df=df, components={
        "volume": max(0.0, (ms_volume - ms_residual) / s), "seed": max(0.0, (ms_seed - ms_residual) / v),
        "residual": ms_residual})
    return out


def compare(table: pd.DataFrame, variant: str, reference: str, metric: str, *,
            n_resamples: int = 10000, seed: int = 0) -> dict:
    """The paired comparison of `variant` against `reference` on `metric` (see the module doc):
    the two-level delta, interval and p with its SE, df, components and counts, the per-seed means
    and their SD, and under `volume_only` the seed-averaged BCa interval and Wilcoxon p."""
    z = seed_volume_differences(table, variant, reference, metric)
    two = two_level_interval(z.to_numpy())
    d = paired_differences(table, variant, reference, metric).to_numpy()
    lo, hi = bootstrap_interval(d, n_resamples, seed)
    per_seed = per_seed_deltas(table, variant, reference, metric)
    seed_values = list(per_seed.values())
    return {
        "delta": two["delta"], "ci95_low": two["ci95_low"], "ci95_high": two["ci95_high"], "p": two["p"],
        "se": two["se"], "df": two["df"], "variance_components": two["components"],
        "n_volumes": int(z.shape[1]), "n_seeds": int(z.shape[0]),
        "sd_volumes": float(d.std(ddof=1)) if d.size > 1 else math.nan,
        "seed_sd": float(np.std(seed_values, ddof=1)) if len(seed_values) > 1 else math.nan,
        "by_seed": {str(k): v for k, v in per_seed.items()},
        "volume_only": {"delta": float(d.mean()) if d.size else math.nan, "ci95_low": lo, "ci95_high": hi,
                        "p_wilcoxon": wilcoxon_p(d), "n_volumes": int(d.size)},
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


def projected_half_width(components: dict, n_seeds: int, n_volumes: int, confidence: float = CONFIDENCE) -> float:
    """Expected half-width of the two-level interval with `n_seeds` seeds and `n_volumes` volumes,
    given variance components {volume, seed, residual} (as `two_level_interval` reports them): the
    mean squares at their expectations, Satterthwaite df, t quantile. More volumes alone cannot
    bring it below about t(df) * sqrt(seed / n_seeds). NaN for fewer than 2 seeds or volumes."""
    a, b, e = (float(components[k]) for k in ("volume", "seed", "residual"))
    s, v = int(n_seeds), int(n_volumes)
    if min(s, v) < 2 or not all(map(math.isfinite, (a, b, e))):
        return math.nan
    se, df = _se_df(e + v * b, e + s * a, e, s, v)
    return float(stats.t.ppf(0.5 + confidence / 2, df)) * se


def seeds_needed(components: dict, half_width: float, n_volumes: int, max_seeds: int = 50,
                 confidence: float = CONFIDENCE) -> int | None:
    """Fewest seeds (>= 2) whose `projected_half_width` on `n_volumes` volumes is at most
    `half_width`; None if not within `max_seeds`."""
    return next((s for s in range(2, max_seeds + 1)
                 if projected_half_width(components, s, n_volumes, confidence) <= half_width), None)


def simulated_coverage(components: dict, n_seeds: int, n_volumes: int, delta: float = 0.2, n_datasets: int = 400,
                       seed: int = 0, n_resamples: int = 2000) -> dict[str, float]:
    """Share of `n_datasets` simulated seed x volume tables of paired differences
    (delta + a_v + b_s + e_sv, normal with the given variance components) whose 95% interval holds
    the true `delta`: the two-level interval and the volume-only BCa interval of the seed-averaged
    differences (`n_resamples` each), {'two_level': .., 'volume_only': ..}. Seeded."""
    rng = np.random.default_rng(seed)
    sd = {k: math.sqrt(float(components[k])) for k in ("volume", "seed", "residual")}
    hits = np.zeros(2)
    for i in range(n_datasets):
        z = (delta + rng.normal(0, sd["volume"], n_volumes)[None, :] + rng.normal(0, sd["seed"], n_seeds)[:, None]
             + rng.normal(0, sd["residual"], (n_seeds, n_volumes)))
        two = two_level_interval(z)
        lo, hi = bootstrap_interval(z.mean(axis=0), n_resamples, seed=i)
        hits += [two["ci95_low"] <= delta <= two["ci95_high"], lo <= delta <= hi]
    return {"two_level": float(hits[0] / n_datasets), "volume_only": float(hits[1] / n_datasets)}


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
