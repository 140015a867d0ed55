"""Figures: slice choice, error maps (shared colour scale, files), forest, paired and curve plots."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib import image as mpimg
from matplotlib.backends.backend_agg import FigureCanvasAgg

from pipeline.figures import compare as fc
from pipeline.roi.boxes import box_mask
from pipeline.figures.error_maps import (ERROR_CMAP, ErrorPanel, choose_slices, error_map_figure, psnr_db,
                                         shared_error_scale, write_error_maps, zoom_window)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAN = float("nan")


def assert_png(path, shape=None) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4) and min(img.shape[:2]) > 100
    if shape is not None:
        assert img.shape[:2] == shape
    return img


def assert_fits(fig) -> None:
    """Everything drawn (titles, labels, legends, colour bars, side text) lies inside the canvas."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    box = fig.get_tightbbox(canvas.get_renderer())
    w, h = fig.get_size_inches()
    tol = 0.02
    assert box.x0 >= -tol and box.y0 >= -tol and box.x1 <= w + tol and box.y1 <= h + tol, (box, (w, h))


# ---- choose_slices --------------------------------------------------------------------------------

def pick(volumes, slices, area, n):
    rows = choose_slices(np.array(volumes), np.array(slices), np.array(area), n)
    return [(volumes[i], slices[i]) for i in rows]


def test_choose_slices_largest_box_first_one_per_volume():
    vols = ["a.h5"] * 3 + ["b.h5"] * 2
    assert pick(vols, [0, 1, 2, 0, 1], [0, 50, 10, 30, 40], 2) == [("a.h5", 1), ("b.h5", 1)]
    # a's second box (90) is larger than b's only box (10), but b comes first: one per volume while volumes last
    assert pick(["a", "a", "b"], [0, 1, 0], [100, 90, 10], 3) == [("a", 0), ("b", 0), ("a", 1)]


def test_choose_slices_ties_by_volume_name_then_slice():
    vols = ["c", "b", "a", "a"]
    assert pick(vols, [4, 2, 7, 3], [20, 20, 20, 20], 4) == [("a", 3), ("b", 2), ("c", 4), ("a", 7)]


def test_choose_slices_depends_only_on_the_boxes_not_row_order():
    rng = np.random.default_rng(0)
    vols = np.repeat([f"file{i}.h5" for i in range(5)], 6)
    slices = np.tile(np.arange(6), 5)
    area = rng.integers(0, 4, len(vols)) * 25  # many ties and zeros
    expected = pick(list(vols), list(slices), list(area), 7)
    perm = rng.permutation(len(vols))
    assert pick(list(vols[perm]), list(slices[perm]), list(area[perm]), 7) == expected
    assert len(expected) == 7 and len({v for v, _ in expected}) == 5


def test_choose_slices_fills_with_middle_slices_in_name_order():
    vols = ["c"] * 5 + ["a"] * 3 + ["b"] * 4
    slices = [4, 3, 2, 1, 0] + [0, 1, 2] + [0, 1, 2, 3]  # c's rows are stored in reverse slice order
    assert pick(vols, slices, [0] * 12, 2) == [("a", 1), ("b", 2)]
    area = [0] * 8 + [0, 9, 0, 0]  # b has a box on slice 1
    assert pick(vols, slices, area, 3) == [("b", 1), ("a", 1), ("c", 2)]
    assert pick(vols, slices, area, 4) == [("b", 1), ("a", 1), ("c", 2), ("b", 2)]
    assert pick(vols, slices, area, 10) == pick(vols, slices, area, 4)  # no more candidates
    assert pick(vols, slices, area, 0) == []


# ---- error-map numbers ----------------------------------------------------------------------------

def test_shared_error_scale_pools_all_panels_in_percent_of_maxval():
    target = np.zeros((20, 20))
    a = np.full((20, 20), 0.2)           # 10 % of maxval = 2 everywhere
    b = np.full((20, 20), 0.02)          # 1 % ...
    b[0, :4] = 1.0                       # ... but 50 % on 4 pixels
    # pooled 800 values: 396 x 1, 400 x 10, 4 x 50; 99.5th percentile at rank 795.005: 10 + 0.005 * 40
    assert shared_error_scale(target, {"a": a, "b": b}, maxval=2.0) == pytest.approx(10.2)
    assert shared_error_scale(target, [target], maxval=2.0) == 1.0  # no error: a usable scale


def test_box_mask_psnr_and_zoom_window():
    assert box_mask((10, 10), [(-2, 8, 5, 5)]).sum() == 3 * 2  # clipped to the image
    target = np.zeros((10, 10))
    recon = np.zeros((10, 10))
    recon[2:4, 2:4] = 0.1
    mask = box_mask((10, 10), [(2, 2, 2, 2), (2, 3, 2, 2)])  # union: 2 x 3 pixels
    assert mask.sum() == 6
    assert psnr_db(target, recon, 1.0, mask) == pytest.approx(10 * math.log10(1 / (0.01 * 4 / 6)))
    assert psnr_db(target, recon, 1.0) == pytest.approx(10 * math.log10(1 / (0.01 * 4 / 100)))
    assert math.isnan(psnr_db(target, recon, 1.0, np.zeros((10, 10), bool)))
    assert zoom_window((10, 20, 8, 4), (64, 64)) == (6, 22, 18, 26)
    assert zoom_window((0, 60, 8, 4), (64, 64)) == (0, 12, 58, 64)


def make_panel(volume="file1.h5", slice_=3, boxes=((4, 18, 8, 6),), heat=True, size=32) -> ErrorPanel:
    rng = np.random.default_rng(slice_)
    target = rng.random((size, size)).astype(np.float32) * 2.0
    recons = {label: target + rng.normal(0, s, target.shape).astype(np.float32)
              for label, s in [("zero-filled", 0.3), ("baseline (seed 0)", 0.1),
                               ("Grad-CAM weighted (seed 0)", 0.08), ("oracle weighted (seed 0)", 0.05)]}
    return ErrorPanel(volume, slice_, target, recons, rng.random((size, size)) if heat else None,
                      list(boxes), float(target.max()) * 1.25)


def test_error_panels_share_one_colour_scale_including_insets():
    panel = make_panel()
    fig = error_map_figure(panel)
    vmax = shared_error_scale(panel.target, panel.recons, panel.maxval)
    all_axes = fig.axes + [inset for ax in fig.axes for inset in ax.child_axes]
    error_images = [im for ax in all_axes for im in ax.images if im.get_cmap().name == ERROR_CMAP]
    assert len(error_images) == 2 * len(panel.recons)  # each error panel and its zoomed inset
    assert {im.get_clim() for im in error_images} == {(0.0, vmax)}
    zf = next(im for im in error_images if im.get_array().shape == panel.target.shape)
    np.testing.assert_allclose(zf.get_array(), 100 * np.abs(panel.recons["zero-filled"] - panel.target) / panel.maxval,
                               rtol=1e-5)
    titles = [ax.get_title() for ax in fig.axes]
    assert any(t.startswith("zero-filled\nPSNR") and "ROI" in t for t in titles)
    assert any(cb_ax.get_ylabel() == "absolute error (% of volume max)" for cb_ax in fig.axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["ground-truth lesion box"]
    assert_fits(fig)


def test_write_error_maps_named_valid_deterministic_pngs(tmp_path):
    out = tmp_path / "error_maps"
    out.mkdir()
    (out / "stale.png").write_bytes(b"old")
    panels = [make_panel(), make_panel("file2.h5", 12, boxes=(), heat=False)]
    names = write_error_maps(out, panels)
    assert names == ["file1_slice003.png", "file2_slice012.png"]
    assert sorted(p.name for p in out.iterdir()) == names  # the directory was replaced as a whole
    for name in names:
        assert_png(out / name, shape=(660, 1500))  # fixed size and dpi: 6.6 x 15 in at 100 dpi
    first = {n: (out / n).read_bytes() for n in names}
    write_error_maps(out, panels)
    assert {n: (out / n).read_bytes() for n in names} == first
    assert not list(tmp_path.glob(".tmp-*"))
    with pytest.raises(ValueError, match="same file"):
        write_error_maps(out, [panels[0], panels[0]])


# ---- forest plot ----------------------------------------------------------------------------------

def stats(delta, lo, hi, p, n):
    return {"delta": delta, "ci95_low": lo, "ci95_high": hi, "p": p, "n_volumes": n}


COMPARISONS = {
    "weighted_vs_baseline": {"roi_psnr": stats(0.31, 0.09, 0.71, 0.05, 36), "psnr": stats(0.02, -0.05, 0.08, 0.6, 36),
                             "roi_ssim": stats(0.0031, 0.0001, 0.006, 0.0004, 36),
                             "ssim": stats(NAN, NAN, NAN, NAN, NAN)},
    "oracle_vs_baseline": {"roi_psnr": stats(0.5, 0.2, 0.9, 0.01, 36), "psnr": stats(NAN, -0.3, 0.05, 0.2, 36),
                           "roi_ssim": stats(0.004, 0.001, 0.008, 0.02, 36), "ssim": {}},
}


def test_forest_text_formats_and_nan():
    assert fc.forest_text(stats(0.31, 0.09, 0.71, 0.05, 36)) == "Δ=+0.31 [+0.09, +0.71] p=0.05 n=36"
    assert fc.forest_text(stats(-0.001, -0.002, 0.0, 0.0001, 5), 4) == "Δ=-0.0010 [-0.0020, +0.0000] p<0.001 n=5"
    assert fc.forest_text(stats(NAN, None, NAN, NAN, NAN)) == "Δ=n/a [n/a, n/a] p=n/a n=n/a"
    assert fc.forest_text({}) == "Δ=n/a [n/a, n/a] p=n/a n=n/a"


def test_forest_groups_by_unit_and_tolerates_nan(tmp_path):
    groups = fc.forest_rows(COMPARISONS)
    assert [[(c, m) for c, m, _ in rows] for rows in groups.values()] == [
        [("weighted_vs_baseline", "roi_psnr"), ("weighted_vs_baseline", "psnr"),
         ("oracle_vs_baseline", "roi_psnr"), ("oracle_vs_baseline", "psnr")],
        [("weighted_vs_baseline", "roi_ssim"), ("weighted_vs_baseline", "ssim"),
         ("oracle_vs_baseline", "roi_ssim"), ("oracle_vs_baseline", "ssim")]]
    fig = fc.forest_figure(COMPARISONS)
    db, unitless = fig.axes
    assert "dB" in db.get_xlabel() and "dB" not in unitless.get_xlabel()
    texts = [t.get_text() for t in unitless.texts]
    assert "Δ=+0.0031 [+0.0001, +0.0060] p<0.001 n=36" in texts and "Δ=n/a [n/a, n/a] p=n/a n=n/a" in texts
    assert_fits(fig)
    fc.forest_plot(tmp_path / "forest.png", COMPARISONS)
    assert_png(tmp_path / "forest.png")
    fc.forest_plot(tmp_path / "empty.png", {})
    assert_png(tmp_path / "empty.png")


def test_forest_draws_the_two_level_interval_with_the_volume_only_one_inside():
    inner = {"ci95_low": 0.05, "ci95_high": 0.35}
    comparisons = {"oracle_vs_baseline": {"roi_psnr": {**stats(0.19, -0.11, 0.49, 0.15, 36), "volume_only": inner},
                                          "psnr": stats(-0.14, -0.34, 0.07, 0.11, 40)}}
    fig = fc.forest_figure(comparisons)
    ax = fig.axes[0]
    bars = [(c.get_segments()[0][:, 0].tolist(), c.get_segments()[0][0, 1], float(c.get_linewidth()[0]))
            for c in ax.collections]
    # row 0: the thick two-level bar, then the thin volume-only one inside it; row 1 has no volume-only
    assert bars == [([-0.11, 0.49], 0.0, fc.TWO_LEVEL_WIDTH), ([0.05, 0.35], 0.0, fc.VOLUME_ONLY_WIDTH),
                    ([-0.34, 0.07], 1.0, fc.TWO_LEVEL_WIDTH)]
    assert fc.VOLUME_ONLY_WIDTH < fc.TWO_LEVEL_WIDTH
    assert "Δ=+0.19 [-0.11, +0.49] p=0.15 n=36" in [t.get_text() for t in ax.texts]   # the two-level numbers
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "seeds and volumes" in legend[0] and "volume-only" in legend[1]
    assert_fits(fig)


# ---- paired per-volume plot -----------------------------------------------------------------------

def paired_table() -> pd.DataFrame:
    rows = [("weighted", "v3", 31.0), ("baseline", "v2", 20.0), ("weighted", "v1", 11.0), ("baseline", "v1", 10.0),
            ("weighted", "v4", 99.0), ("weighted", "v2", NAN), ("baseline", "v3", 30.0), ("oracle", "v2", 22.0)]
    return pd.DataFrame(rows, columns=["variant", "volume", "roi_psnr"])


def test_paired_values_pairs_by_volume_not_position():
    pairs = fc.paired_values(paired_table(), "baseline", "weighted", "roi_psnr")
    assert pairs.to_dict("list") == {"volume": ["v1", "v3"], "x": [10.0, 30.0], "y": [11.0, 31.0]}
    assert fc.paired_values(paired_table(), "baseline", "oracle", "roi_psnr").to_dict("list") == {
        "volume": ["v2"], "x": [20.0], "y": [22.0]}
    doubled = pd.concat([paired_table(), paired_table().iloc[[2]]])
    with pytest.raises(pd.errors.MergeError):
        fc.paired_values(doubled, "baseline", "weighted", "roi_psnr")


def test_paired_volume_plot(tmp_path):
    fig = fc.paired_volume_figure(paired_table())
    ax = fig.axes[0]
    assert ax.get_xlabel() == "baseline roi_psnr (dB)" and "(dB)" in ax.get_ylabel() and "roi_psnr" in ax.get_title()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["weighted (n=2)", "oracle (n=1)", "y = x (no change)"]
    assert ax.collections[0].get_offsets().tolist() == [[10.0, 11.0], [30.0, 31.0]]
    assert_fits(fig)
    table = paired_table().rename(columns={"roi_psnr": "ssim"})
    fc.paired_volume_plot(tmp_path / "paired.png", table, metric="ssim")
    assert_png(tmp_path / "paired.png")
    fc.paired_volume_plot(tmp_path / "none.png", table, variants=("absent",), metric="ssim")
    assert_png(tmp_path / "none.png")


# ---- training curves ------------------------------------------------------------------------------

def test_run_styles_colour_by_variant_line_by_seed():
    styles = fc.run_styles(["baseline s0", "baseline s1", "weighted s0", "weighted s1"])
    assert styles["baseline s0"][0] == styles["baseline s1"][0] != styles["weighted s0"][0]
    assert styles["baseline s0"][1] == styles["weighted s0"][1] != styles["baseline s1"][1]


def test_training_curves_plot_tolerates_missing_and_nan(tmp_path):
    histories = {
        "baseline s0": [{"train/loss": 1.0, "val/loss": 1.1, "val/psnr": 25.0},
                        {"train/loss": 0.5, "val/loss": 0.6, "val/psnr": 27.0, "lr": 1e-3}],
        "weighted s0": [{"train/loss": 0.9, "val/loss": NAN, "val/psnr": 25.5}, {"train/loss": 0.4}],
        "weighted s1": [],
    }
    fig = fc.training_curves_figure(histories)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["validation PSNR (dB)", "validation loss", "training loss"]
    psnr_lines = panels[0].get_lines()
    assert len(psnr_lines) == 3
    assert psnr_lines[0].get_xdata().tolist() == [1, 2] and psnr_lines[0].get_ydata().tolist() == [25.0, 27.0]
    assert psnr_lines[1].get_color() == psnr_lines[2].get_color() != psnr_lines[0].get_color()
    assert len(fig.legends) == 1 and len(fig.legends[0].get_texts()) == 3
    assert_fits(fig)
    fc.training_curves_plot(tmp_path / "curves.png", histories)
    assert_png(tmp_path / "curves.png")
