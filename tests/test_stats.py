"""Paired statistics on constructed data with known answers (pipeline/stats.py)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from pipeline.stats import compare, compare_all, paired_differences, share_of_gain, volumes_needed


def _table(n_volumes=40, shift=0.5, noise=0.3, seeds=(0, 1, 2), seed_offsets=None, rng_seed=1) -> pd.DataFrame:
    """baseline and weighted per (seed, volume); weighted = baseline + shift + seed offset + noise."""
    rng = np.random.default_rng(rng_seed)
    base = 30 + rng.normal(0, 2, n_volumes)          # volumes differ a lot: only pairing removes that
    rows = []
    for j, s in enumerate(seeds):
        off = 0.0 if seed_offsets is None else seed_offsets[j]
        for v in range(n_volumes):
            b = base[v] + rng.normal(0, 0.05)
            rows.append({"variant": "baseline", "seed": s, "volume": f"file{v:03d}.h5", "roi_psnr": b})
            rows.append({"variant": "weighted", "seed": s, "volume": f"file{v:03d}.h5",
                         "roi_psnr": b + shift + off + rng.normal(0, noise)})
    t = pd.DataFrame(rows)
    t["seed"] = t["seed"].astype("Int64")
    return t


def test_a_half_db_shift_is_found_with_an_interval_that_excludes_zero():
    r = compare(_table(), "weighted", "baseline", "roi_psnr")
    assert r["n_volumes"] == 40
    assert r["delta"] == pytest.approx(0.5, abs=0.1)
    assert r["ci95_low"] < 0.5 < r["ci95_high"]
    assert r["ci95_low"] > 0
    assert r["ci95_high"] - r["ci95_low"] < 0.3   # sd of the seed-averaged difference ~0.17 over 40 volumes
    assert r["p"] < 1e-6


def test_identical_variants_give_zero_delta_and_p_one():
    t = _table()
    same = t[t["variant"] == "baseline"].assign(variant="weighted")
    t = pd.concat([t[t["variant"] == "baseline"], same])
    r = compare(t, "weighted", "baseline", "roi_psnr")
    assert r["delta"] == 0 and r["p"] == 1.0
    assert (r["ci95_low"], r["ci95_high"]) == (0.0, 0.0)
    assert r["seed_sd"] == 0.0


def test_pairing_is_by_volume_not_by_row_position():
    t = _table(noise=0.0)
    shuffled = pd.concat([t[t["variant"] == "baseline"],
                          t[t["variant"] == "weighted"].sample(frac=1.0, random_state=3)])
    a = compare(t, "weighted", "baseline", "roi_psnr")
    b = compare(shuffled, "weighted", "baseline", "roi_psnr")
    assert a == b
    # paired by volume the differences are all ~0.5; paired by position they would spread by ~2 dB
    d = paired_differences(shuffled, "weighted", "baseline", "roi_psnr")
    assert d.std() < 0.2
    assert list(d.index) == sorted(d.index)


def test_seeds_are_averaged_per_volume_and_their_spread_reported():
    t = _table(noise=0.0, seed_offsets=(-0.2, 0.0, 0.2))
    r = compare(t, "weighted", "baseline", "roi_psnr")
    assert r["delta"] == pytest.approx(0.5, abs=1e-9)
    assert r["per_seed"] == pytest.approx({"0": 0.3, "1": 0.5, "2": 0.7}, abs=1e-9)
    assert r["seed_sd"] == pytest.approx(0.2, abs=1e-9)          # SD (ddof 1) of 0.3, 0.5, 0.7
    # seed averaging happens per volume before pairing: one baseline seed against three weighted ones
    one_base = t[(t["variant"] == "weighted") | (t["seed"] == 1)]
    r1 = compare(one_base, "weighted", "baseline", "roi_psnr")
    assert r1["delta"] == pytest.approx(0.5, abs=0.02)
    assert list(r1["per_seed"]) == ["1"]


def test_wilcoxon_and_bootstrap_are_scipys_and_reproducible():
    t = _table(n_volumes=25, shift=0.1, noise=0.5, rng_seed=7)
    r = compare(t, "weighted", "baseline", "roi_psnr", n_resamples=10000, seed=0)
    d = paired_differences(t, "weighted", "baseline", "roi_psnr").to_numpy()
    assert r["p"] == pytest.approx(sps.wilcoxon(d).pvalue)
    ci = sps.bootstrap((d,), np.mean, n_resamples=10000, method="BCa",
                       random_state=np.random.default_rng(0)).confidence_interval
    assert (r["ci95_low"], r["ci95_high"]) == pytest.approx((ci.low, ci.high))
    assert compare(t, "weighted", "baseline", "roi_psnr") == r          # same table, same numbers


def test_volumes_without_a_value_drop_out_of_the_pairs():
    t = _table(n_volumes=10)
    t.loc[t["volume"].isin(["file000.h5", "file001.h5"]), "roi_psnr"] = np.nan      # no boxes there
    t.loc[(t["variant"] == "weighted") & (t["volume"] == "file002.h5"), "roi_psnr"] = np.nan
    assert compare(t, "weighted", "baseline", "roi_psnr")["n_volumes"] == 7


def test_compare_all_names_each_comparison_and_skips_absent_variants():
    out = compare_all(_table(n_volumes=8), ("weighted", "oracle"), "baseline", ("roi_psnr",), n_resamples=1000)
    assert list(out) == ["weighted_vs_baseline"]
    assert set(out["weighted_vs_baseline"]["roi_psnr"]) >= {"delta", "ci95_low", "ci95_high", "p", "n_volumes",
                                                             "seed_sd", "per_seed"}


def test_too_few_volumes_give_nan_not_a_crash():
    r = compare(_table(n_volumes=1), "weighted", "baseline", "roi_psnr")
    assert r["n_volumes"] == 1 and math.isnan(r["ci95_low"]) and math.isnan(r["sd_volumes"])


def test_volumes_needed_for_a_paired_interval():
    # half-width = 1.96 sd / sqrt(n): sd 0.61 dB, +-0.3 dB -> 16 volumes (the oracle measurement)
    assert volumes_needed(0.61, 0.3) == 16
    assert volumes_needed(0.61, 0.2) == 36


def _with_oracle(t: pd.DataFrame, factor, noise=0.0, rng_seed=3) -> pd.DataFrame:
    """An oracle whose gain over the baseline is the weighted gain times `factor` (per row), + noise."""
    rng = np.random.default_rng(rng_seed)
    base = t[t.variant == "baseline"].set_index(["seed", "volume"])["roi_psnr"]
    w = t[t.variant == "weighted"].set_index(["seed", "volume"])["roi_psnr"]
    o = (base + (w - base) * factor + rng.normal(0, noise, len(base))).rename("roi_psnr").reset_index()
    o["variant"] = "oracle"
    return pd.concat([t, o], ignore_index=True)


def test_share_of_gain_is_the_ratio_of_paired_mean_gains():
    t = _with_oracle(_table(n_volumes=12, shift=0.5, noise=0.0), factor=4.0)
    r = share_of_gain(t, "weighted", "oracle", "baseline", "roi_psnr", n_resamples=2000)
    # every volume's weighted gain is a quarter of its oracle gain: the ratio and both ends are 0.25
    assert r["share"] == pytest.approx(0.25, abs=1e-9)
    assert r["ci95_low"] == pytest.approx(0.25, abs=1e-9) and r["ci95_high"] == pytest.approx(0.25, abs=1e-9)
    assert r["n_volumes"] == 12
    gap = r["weighted_minus_oracle"]
    d_w = paired_differences(t, "weighted", "baseline", "roi_psnr")
    assert gap["delta"] == pytest.approx(-3.0 * d_w.mean())


def test_share_of_gain_interval_holds_the_volume_noise():
    t = _with_oracle(_table(n_volumes=30, shift=0.3, noise=0.3), factor=2.0, noise=0.3)
    r = share_of_gain(t, "weighted", "oracle", "baseline", "roi_psnr", n_resamples=2000)
    d_w = paired_differences(t, "weighted", "baseline", "roi_psnr")
    d_o = paired_differences(t, "oracle", "baseline", "roi_psnr")
    assert r["share"] == pytest.approx(d_w.sum() / d_o.sum())
    assert r["ci95_low"] < r["share"] < r["ci95_high"]
    assert 0.05 < r["ci95_high"] - r["ci95_low"] < 0.5            # not degenerate, not unbounded
