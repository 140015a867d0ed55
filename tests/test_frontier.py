"""The ROI weighting's frontier: the rule that picks the default, the rows it reads, the figure."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.evaluation.frontier import WHOLE_FLOOR_DB, Setting, choose_default, frontier_rows, frontier_table
from pipeline.figures.frontier import write_frontier
from pipeline.stats import compare


def _row(name, box, whole_high, seconds=60.0):
    whole = whole_high - 0.05
    cmp = lambda d, lo, hi: {"delta": d, "ci95_low": lo, "ci95_high": hi}   # noqa: E731
    return {"name": name, "seconds_per_training": seconds,
            "oracle": {"roi_psnr": cmp(box, box - 0.2, box + 0.2), "psnr": cmp(whole, whole - 0.1, whole_high)},
            "weighted": {"roi_psnr": cmp(box / 2, box / 2 - 0.2, box / 2 + 0.2), "psnr": cmp(0.0, -0.05, 0.05)}}


def test_the_rule_takes_the_largest_in_box_gain_among_settings_whose_whole_image_interval_reaches_the_floor():
    rows = [_row("default", 0.15, 0.00), _row("lambda-16", 0.60, -0.20), _row("margin-4", 0.30, -0.05),
            _row("lambda-8", 0.25, -0.01)]
    # lambda-16 has the largest gain but its whole-image interval ends below -0.05 dB
    assert choose_default(rows) == "margin-4"
    # -0.0501 misses the floor
    rows[2] = _row("margin-4", 0.30, -0.0501)
    assert choose_default(rows) == "lambda-8"


def test_ties_within_two_hundredths_go_to_the_cheaper_setting():
    rows = [_row("chans-16", 0.40, 0.0, seconds=150.0), _row("default", 0.385, 0.0, seconds=60.0),
            _row("lambda-8", 0.37, 0.0, seconds=30.0)]
    assert choose_default(rows) == "default"          # lambda-8 is 0.03 below the best: not tied
    rows[1] = _row("default", 0.375, 0.0, seconds=60.0)
    assert choose_default(rows) == "chans-16"


def test_no_eligible_setting_gives_none():
    assert choose_default([_row("a", 0.5, -0.3), _row("b", 0.2, -0.06)]) is None


def _table(gain_box: float, gain_whole: float, seeds=(0, 1, 2), n=12, rng=0) -> pd.DataFrame:
    r = np.random.default_rng(rng)
    rows = []
    for v in range(n):
        base = r.normal(30, 2)
        for s in seeds:
            for variant, db, dw in (("baseline", 0, 0), ("oracle", gain_box, gain_whole),
                                    ("weighted", gain_box / 2, 0.0)):
                noise = r.normal(0, 0.05, 2)
                rows.append({"variant": variant, "seed": s, "volume": f"v{v}", "psnr": base + dw + noise[0],
                             "roi_psnr": base - 3 + db + noise[1], "ssim": 0.7, "roi_ssim": 0.6})
    t = pd.DataFrame(rows)
    t["seed"] = t["seed"].astype("Int64")
    return t


def test_rows_hold_the_two_level_comparison_of_each_variant_with_its_baseline():
    results = {"default": {"table": _table(0.3, -0.02), "seconds": 50.0},
               "lambda-8": {"table": _table(0.6, -0.3, rng=1), "seconds": 52.0}}
    rows = frontier_rows(results, [Setting("default"), Setting("lambda-8", {"loss.roi_weight": 8.0})])
    assert [r["name"] for r in rows] == ["default", "lambda-8"]
    assert rows[1]["overrides"] == {"loss.roi_weight": 8.0}
    ref = compare(results["default"]["table"], "oracle", "baseline", "roi_psnr")
    got = rows[0]["oracle"]["roi_psnr"]
    assert got["delta"] == pytest.approx(ref["delta"]) and got["ci95_low"] == pytest.approx(ref["ci95_low"])
    assert got["delta"] == pytest.approx(0.3, abs=0.03) and rows[1]["oracle"]["psnr"]["delta"] == pytest.approx(-0.3, abs=0.03)
    assert rows[0]["weighted"]["roi_psnr"]["delta"] == pytest.approx(0.15, abs=0.03)
    assert got["n_seeds"] == 3 and got["n_volumes"] == 12 and "volume_only" in got
    assert choose_default(rows) == "default"
    t = frontier_table(rows, "default")
    assert len(t) == 4 and t.loc[t["chosen"], "setting"].unique().tolist() == ["default"]


def test_the_figure_is_written(tmp_path):
    rows = [_row("default", 0.15, 0.00), _row("lambda-16", 0.60, -0.20)]
    write_frontier(frontier_table(rows, choose_default(rows)), WHOLE_FLOOR_DB, tmp_path / "f.png")
    with Image.open(tmp_path / "f.png") as im:
        assert im.size[0] > 600 and im.size[1] > 400
