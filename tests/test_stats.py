"""Paired statistics on constructed data with known answers (pipeline/stats.py): the two-level
interval over seeds and volumes (by hand, its limits, its coverage by simulation), the volume-only
interval beside it, the share of a gain and the sizing helpers."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from pipeline.stats import (compare, compare_all, mean_squares, paired_differences, projected_half_width,
                            seed_volume_differences, seeds_needed, share_of_gain, simulated_coverage,
                            two_level_interval, volumes_needed)


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
    v = r["volume_only"]
    assert (v["delta"], v["ci95_low"], v["ci95_high"], v["p_wilcoxon"]) == (0.0, 0.0, 0.0, 1.0)


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
    assert r["by_seed"] == pytest.approx({"0": 0.3, "1": 0.5, "2": 0.7}, abs=1e-9)
    assert r["seed_sd"] == pytest.approx(0.2, abs=1e-9)          # SD (ddof 1) of 0.3, 0.5, 0.7
    # every volume moves with its seed alone: the two-level interval is the t interval of the three
    # per-seed means (SE 0.2 / sqrt 3, df 2), while the volume-only one sees no spread at all
    assert r["n_seeds"] == 3 and r["df"] == pytest.approx(2.0, rel=1e-6)
    assert r["se"] == pytest.approx(0.2 / math.sqrt(3), rel=1e-6)
    half = sps.t.ppf(0.975, 2) * 0.2 / math.sqrt(3)                   # 0.497
    assert (r["ci95_low"], r["ci95_high"]) == pytest.approx((0.5 - half, 0.5 + half), rel=1e-6)
    assert r["variance_components"]["seed"] == pytest.approx(0.04, rel=1e-6)
    assert r["volume_only"]["ci95_high"] - r["volume_only"]["ci95_low"] < 1e-9
    # seed averaging happens per volume before pairing in the volume-only analysis: one baseline seed
    # against three weighted ones; the two-level one pairs by seed, so only seed 1 remains and one
    # seed cannot measure training noise
    one_base = t[(t["variant"] == "weighted") | (t["seed"] == 1)]
    r1 = compare(one_base, "weighted", "baseline", "roi_psnr")
    assert r1["volume_only"]["delta"] == pytest.approx(0.5, abs=0.02)
    assert r1["delta"] == pytest.approx(0.5, abs=1e-9) and r1["n_seeds"] == 1
    assert math.isnan(r1["ci95_low"]) and math.isnan(r1["p"])
    assert list(r1["by_seed"]) == ["1"]


def test_wilcoxon_and_bootstrap_are_scipys_and_reproducible():
    t = _table(n_volumes=25, shift=0.1, noise=0.5, rng_seed=7)
    r = compare(t, "weighted", "baseline", "roi_psnr", n_resamples=10000, seed=0)["volume_only"]
    d = paired_differences(t, "weighted", "baseline", "roi_psnr").to_numpy()
    assert r["p_wilcoxon"] == pytest.approx(sps.wilcoxon(d).pvalue)
    ci = sps.bootstrap((d,), np.mean, n_resamples=10000, method="BCa",
                       random_state=np.random.default_rng(0)).confidence_interval
    assert (r["ci95_low"], r["ci95_high"]) == pytest.approx((ci.low, ci.high))
    assert compare(t, "weighted", "baseline", "roi_psnr")["volume_only"] == r          # same table, same numbers


def test_volumes_without_a_value_drop_out_of_the_pairs():
    t = _table(n_volumes=10)
    t.loc[t["volume"].isin(["file000.h5", "file001.h5"]), "roi_psnr"] = np.nan      # no boxes there
    t.loc[(t["variant"] == "weighted") & (t["volume"] == "file002.h5"), "roi_psnr"] = np.nan
    r = compare(t, "weighted", "baseline", "roi_psnr")
    assert r["n_volumes"] == 7 and r["volume_only"]["n_volumes"] == 7


def test_compare_all_names_each_comparison_and_skips_absent_variants():
    out = compare_all(_table(n_volumes=8), ("weighted", "oracle"), "baseline", ("roi_psnr",), n_resamples=1000)
    assert list(out) == ["weighted_vs_baseline"]
    assert set(out["weighted_vs_baseline"]["roi_psnr"]) >= {"delta", "ci95_low", "ci95_high", "p", "n_volumes",
                                                             "n_seeds", "se", "df", "variance_components",
                                                             "seed_sd", "by_seed", "volume_only"}


def test_too_few_volumes_give_nan_not_a_crash():
    r = compare(_table(n_volumes=1), "weighted", "baseline", "roi_psnr")
    assert r["n_volumes"] == 1 and math.isnan(r["ci95_low"]) and math.isnan(r["sd_volumes"])
    assert math.isnan(r["volume_only"]["ci95_low"]) and math.isnan(r["p"])


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


# ---- the two-level interval over seeds and volumes --------------------------------------------------

# 2 seeds x 3 volumes, by hand: grand mean 3, seed means 2 and 4, volume means 1, 3, 5;
# MS_seed = 3 (1 + 1) / 1 = 6, MS_volume = 2 (4 + 0 + 4) / 2 = 8, residuals 0 -1 1 / 0 1 -1: MS_res = 4/2 = 2;
# SE^2 = (8 + 6 - 2) / 6 = 2; Satterthwaite df = 2^2 / ((8/6)^2/2 + (6/6)^2/1 + (2/6)^2/2) = 72/35
TINY = np.array([[0.0, 1.0, 5.0], [2.0, 5.0, 5.0]])


def test_mean_squares_and_two_level_interval_by_hand():
    assert mean_squares(TINY) == pytest.approx((6.0, 8.0, 2.0))
    r = two_level_interval(TINY)
    assert r["delta"] == 3.0 and r["se"] == pytest.approx(math.sqrt(2.0)) and r["df"] == pytest.approx(72 / 35)
    half = sps.t.ppf(0.975, 72 / 35) * math.sqrt(2.0)
    assert (r["ci95_low"], r["ci95_high"]) == pytest.approx((3 - half, 3 + half))
    assert r["p"] == pytest.approx(2 * sps.t.sf(3 / math.sqrt(2.0), 72 / 35))
    # components: volume (8 - 2) / 2 seeds, seed (6 - 2) / 3 volumes, residual 2
    assert r["components"] == pytest.approx({"volume": 3.0, "seed": 4 / 3, "residual": 2.0})


def test_a_table_becomes_the_seed_by_volume_differences():
    rows = [("baseline", s, f"v{v}", 10.0 * v) for s in (0, 1) for v in range(3)]
    rows += [("weighted", s, f"v{v}", 10.0 * v + TINY[s, v]) for s in (0, 1) for v in range(3)]
    rows += [("weighted", 2, "v0", 99.0), ("zero_filled", None, "v1", 7.0), ("zero_filled", None, "v2", 8.0)]
    t = pd.DataFrame(rows, columns=["variant", "seed", "volume", "roi_psnr"])
    t["seed"] = t["seed"].astype("Int64")
    z = seed_volume_differences(t, "weighted", "baseline", "roi_psnr")
    assert z.to_numpy().tolist() == TINY.tolist()          # seed 2: the baseline never trained with it
    assert compare(t, "weighted", "baseline", "roi_psnr")["ci95_high"] == two_level_interval(TINY)["ci95_high"]
    # a seedless variant pairs with every seed of the other, on the volumes it has
    z0 = seed_volume_differences(t, "baseline", "zero_filled", "roi_psnr")
    assert z0.to_numpy().tolist() == [[3.0, 12.0], [3.0, 12.0]] and list(z0.columns) == ["v1", "v2"]


def test_without_seed_variance_it_is_the_volume_t_interval():
    rng = np.random.default_rng(4)
    d = 0.2 + rng.normal(0, 0.5, 30)
    # each seed's row a permutation of the same values: equal seed means, MS_seed = 0
    z = np.stack([d, np.roll(d, 7), d[::-1]]) + rng.normal(0, 0.01, (1, 30))
    z -= z.mean(axis=1, keepdims=True) - z.mean()
    r = two_level_interval(z)
    ref = sps.ttest_1samp(z.mean(axis=0), 0.0)
    assert r["df"] == 29 and r["components"]["seed"] == 0.0
    assert (r["ci95_low"], r["ci95_high"]) == pytest.approx(tuple(ref.confidence_interval()), rel=1e-9)
    assert r["p"] == pytest.approx(ref.pvalue, rel=1e-9)


def test_p_below_005_exactly_when_the_interval_excludes_zero():
    rng = np.random.default_rng(5)
    for i in range(60):
        z = rng.normal(0, 0.3) + rng.normal(0, 0.3, 20)[None, :] + rng.normal(0, 0.2, 3)[:, None] \
            + rng.normal(0, 0.4, (3, 20))
        r = two_level_interval(z)
        assert (r["p"] < 0.05) == (r["ci95_low"] > 0 or r["ci95_high"] < 0)


# Variance components as measured on the committed 4x run (reports/per_volume.csv, 36 volumes with
# boxes, 40 in all, 3 seeds): the oracle's in-box difference and the Grad-CAM variant's whole-image one.
IN_BOX = {"volume": 0.0815, "seed": 0.0133, "residual": 0.3486}
WHOLE_IMAGE = {"volume": 0.0028, "seed": 0.0116, "residual": 0.0142}


def test_coverage_by_simulation():
    # the in-box components reproduce what was measured: per-seed mean differences with SD ~0.15 dB,
    # seed-averaged per-volume differences with SD ~0.44 dB
    assert math.sqrt(IN_BOX["seed"] + IN_BOX["residual"] / 36) == pytest.approx(0.15, abs=0.005)
    assert math.sqrt(IN_BOX["volume"] + IN_BOX["residual"] / 3) == pytest.approx(0.44, abs=0.005)
    in_box = simulated_coverage(IN_BOX, 3, 36, delta=0.19, n_datasets=1000, seed=1)
    whole = simulated_coverage(WHOLE_IMAGE, 3, 40, delta=0.2, n_datasets=1000, seed=2)
    no_seed = simulated_coverage({**IN_BOX, "seed": 0.0}, 3, 36, delta=0.19, n_datasets=400, seed=3)
    print(f"coverage two-level / volume-only: in-box {in_box}, whole-image {whole}, no seed variance {no_seed}")
    for c in (in_box, whole, no_seed):
        assert 0.92 <= c["two_level"] <= 0.98
    # the volume-only interval leaves the seed noise out and covers far less when it is as large as
    # measured (its SE is sqrt((a + e/3)/36) = 0.074 dB in the boxes against a true 0.100: ~85%; on the
    # whole image 0.015 against 0.064 dB: ~30%) ...
    assert in_box["volume_only"] < 0.88
    assert whole["volume_only"] < 0.5
    assert no_seed["volume_only"] >= 0.9                    # ... and is about right when there is none


def test_projected_half_width_and_seeds_needed():
    # no seed variance: the volume t interval of seed-averaged differences with variance a + e/S
    c0 = {"volume": 0.08, "seed": 0.0, "residual": 0.36}
    assert projected_half_width(c0, 3, 36) == pytest.approx(sps.t.ppf(0.975, 35) * math.sqrt((0.08 + 0.12) / 36))
    # with seed variance, more volumes alone stop helping: the limit is the t(S-1) interval of S seeds
    hw_many = projected_half_width(IN_BOX, 3, 10 ** 7)
    assert hw_many == pytest.approx(sps.t.ppf(0.975, 2) * math.sqrt(IN_BOX["seed"] / 3), rel=1e-3)
    assert projected_half_width(IN_BOX, 3, 72) > 0.25         # twice the volumes: still ~0.28 dB
    hw = [projected_half_width(IN_BOX, s, 36) for s in (3, 4, 5, 6)]
    assert hw == sorted(hw, reverse=True) and hw[0] == pytest.approx(0.304, abs=0.005)
    n = seeds_needed(IN_BOX, 0.3, 36)
    assert n == 4 and projected_half_width(IN_BOX, n - 1, 36) > 0.3 >= projected_half_width(IN_BOX, n, 36)
    assert seeds_needed(IN_BOX, 0.001, 36, max_seeds=10) is None
    assert math.isnan(projected_half_width(IN_BOX, 1, 36))
