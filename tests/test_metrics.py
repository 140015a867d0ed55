"""Metrics equal fastMRI's evaluate.py; ROI-restricted and heatmap-weighted ones follow their definitions;
the ROI-weighted losses keep their scale."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastmri import evaluate as fm_eval
from fastmri.losses import SSIMLoss
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline.errors import BadValue
from pipeline.losses import ReconLoss, RoiWeighting, ssim_map
from pipeline.metrics import ALL, mean_over_volumes, ssim_valid, volume_metrics, volume_slices


def _volume(seed: int, shape=(4, 40, 40)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[1], :shape[2]]
    gt = np.stack([np.exp(-((yy - 20 - k) ** 2 + (xx - 18) ** 2) / 120.0) * (1 + 0.1 * k) for k in range(shape[0])])
    gt = (gt + 0.05 * rng.random(shape)).astype(np.float32)
    pred = (gt + 0.04 * rng.standard_normal(shape)).astype(np.float32)
    return gt, pred


def test_whole_image_metrics_equal_fastmri_evaluate():
    for seed in range(3):
        gt, pred = _volume(seed)
        m = volume_metrics(gt, pred)
        # evaluate.py calls nmse(target, recons), psnr(target, recons), ssim(target, recons): maxval = target max
        assert m["nmse"] == float(fm_eval.nmse(gt, pred))
        assert m["psnr"] == float(fm_eval.psnr(gt, pred))
        assert m["ssim"] == float(fm_eval.ssim(gt, pred)[0])
        assert 0 < m["nmse"] < 0.2 and 15 < m["psnr"] < 40 and 0 < m["ssim"] < 1


def test_roi_metrics_follow_their_definitions():
    gt, pred = _volume(7)
    roi = np.zeros(gt.shape, dtype=bool)
    roi[1, 10:20, 12:30] = True
    roi[2, 0:6, 0:6] = True          # partly in the 3-pixel border SSIM leaves out
    m = volume_metrics(gt, pred, roi)
    d = (gt.astype(np.float64) - pred)[roi]
    assert m["roi_nmse"] == pytest.approx((d ** 2).sum() / (gt[roi].astype(np.float64) ** 2).sum(), rel=1e-12)
    assert m["roi_psnr"] == pytest.approx(peak_signal_noise_ratio(gt[roi], pred[roi], data_range=gt.max()), rel=1e-9)
    maps = [structural_similarity(gt[i], pred[i], data_range=gt.max(), full=True)[1] for i in range(len(gt))]
    inside = roi & ssim_valid(roi.shape)
    assert inside.sum() == 10 * 18 + 3 * 3
    assert m["roi_ssim"] == pytest.approx(np.stack(maps)[inside].mean(), rel=1e-12)
    # the ROI is a different region: its values differ from the whole-image ones
    assert m["roi_psnr"] != pytest.approx(m["psnr"], abs=0.1)


@pytest.mark.filterwarnings("ignore:divide by zero")
def test_perfect_reconstruction_and_no_roi():
    gt, _ = _volume(1)
    roi = np.zeros(gt.shape, dtype=bool)
    roi[0, 8:16, 8:16] = True
    m = volume_metrics(gt, gt.copy(), roi, heatmap=np.ones_like(gt))
    assert m["nmse"] == 0 and m["roi_nmse"] == 0 and m["heatmap_nmse"] == 0
    assert math.isinf(m["psnr"]) and math.isinf(m["roi_psnr"])
    assert m["ssim"] == pytest.approx(1.0) and m["roi_ssim"] == pytest.approx(1.0)
    empty = volume_metrics(gt, gt + 0.1, np.zeros(gt.shape, bool), heatmap=np.zeros_like(gt))
    assert all(math.isnan(empty[k]) for k in ("roi_nmse", "roi_psnr", "roi_ssim", "heatmap_nmse"))


def test_heatmap_nmse():
    gt, pred = _volume(3)
    uniform = volume_metrics(gt, pred, heatmap=np.full(gt.shape, 0.5, np.float32))
    assert uniform["heatmap_nmse"] == pytest.approx(uniform["nmse"], rel=1e-6)
    h = np.zeros(gt.shape, np.float32)
    h[:, 5:15, 5:15] = 1.0
    m = volume_metrics(gt, pred, heatmap=h)
    sel = h > 0
    expect = ((gt.astype(np.float64) - pred)[sel] ** 2).sum() / (gt[sel].astype(np.float64) ** 2).sum()
    assert m["heatmap_nmse"] == pytest.approx(expect, rel=1e-12)


def test_mean_over_volumes_leaves_out_nan_and_volume_slices():
    rows = [{k: 1.0 for k in ALL}, {**{k: 3.0 for k in ALL}, "roi_psnr": float("nan")}]
    m = mean_over_volumes(rows)
    assert m["psnr"] == 2.0 and m["roi_psnr"] == 1.0
    assert math.isnan(mean_over_volumes([{"roi_psnr": float("nan")}], ["roi_psnr"])["roi_psnr"])
    vols = np.array(["a.h5", "a.h5", "b.h5", "c.h5", "c.h5", "c.h5"])
    assert volume_slices(vols) == [("a.h5", slice(0, 2)), ("b.h5", slice(2, 3)), ("c.h5", slice(3, 6))]


def test_shape_mismatch_is_an_error():
    gt, pred = _volume(0)
    with pytest.raises(ValueError):
        volume_metrics(gt, pred[:, :-1])


# ---------------------------------------------------------------- losses

def test_roi_weights_have_mean_one_and_follow_the_heatmap():
    h = torch.zeros(2, 1, 16, 16)
    h[0, 0, 4:8, 4:8] = 1.0
    w = RoiWeighting(4.0).weights(h)
    assert torch.allclose(w.mean(dim=(-2, -1)), torch.ones(2, 1))
    assert w[0, 0, 5, 5] / w[0, 0, 0, 0] == pytest.approx(5.0)
    assert torch.allclose(w[1], torch.ones(1, 16, 16))  # empty heatmap: plain loss
    assert torch.allclose(RoiWeighting(0.0).weights(h), torch.ones_like(h))


def test_roi_margin_and_soft_edges_match_scipy_filters():
    from scipy import ndimage
    h = torch.zeros(2, 1, 24, 24)
    h[0, 0, 6:10, 8:15] = 1.0
    h[1, 0, 20:, 0:3] = 0.5                               # at the border: zero beyond the image
    grown = RoiWeighting(4.0, margin=2).weights(h)
    ref = ndimage.maximum_filter(h.numpy(), size=(1, 1, 5, 5), mode="constant")
    w_ref = 1 + 4 * ref
    assert np.allclose(grown.numpy(), w_ref / w_ref.mean(axis=(-2, -1), keepdims=True), atol=1e-6)
    soft = RoiWeighting(4.0, norm="none", soft=1.5).weights(h)
    ref = ndimage.gaussian_filter(h.numpy(), sigma=(0, 0, 1.5, 1.5), mode="constant", truncate=3.0)
    assert np.allclose(soft.numpy(), 1 + 4 * ref, atol=1e-5)
    before = 1.0 + 4.0 * h                                  # the weights before the knobs, bit for bit
    assert torch.equal(RoiWeighting(4.0).weights(h), before / before.mean(dim=(-2, -1), keepdim=True))


def test_pure_up_weighting_and_background_down_weighting():
    h = torch.zeros(1, 1, 8, 8)
    h[0, 0, 2:4, 2:4] = 1.0
    target = torch.full((1, 1, 8, 8), 5.0)
    target[..., :, 6:] = 0.01                              # air: two columns
    assert torch.equal(RoiWeighting(3.0, norm="none").weights(h), 1 + 3 * h)
    w = RoiWeighting(3.0, norm="none", background=0.25).weights(h, target)
    assert w[0, 0, 0, 7] == 0.25 and w[0, 0, 0, 0] == 1.0 and w[0, 0, 2, 2] == 4.0
    wn = RoiWeighting(3.0, background=0.25).weights(h, (target - 2.0) / 3.0)   # any affine units
    assert torch.allclose(wn, w / w.mean()) and torch.allclose(wn.mean(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="needs the target"):
        RoiWeighting(3.0, background=0.5).weights(h)


@pytest.mark.parametrize("kw,name", [({"norm": "sum"}, "roi_norm"), ({"margin": -1}, "roi_margin"),
                                     ({"soft": -0.5}, "roi_soft"), ({"background": 0.0}, "background_weight")])
def test_roi_weighting_refuses_bad_values_naming_the_param(kw, name):
    with pytest.raises(BadValue, match=name):
        RoiWeighting(2.0, **kw)


def test_weighted_loss_scale_does_not_depend_on_the_weights():
    torch.manual_seed(0)
    target = torch.randn(3, 1, 20, 20)
    pred = target + 0.3  # the same error everywhere
    heat = torch.rand(3, 1, 20, 20)
    for kind in ("mse", "l1"):
        loss = ReconLoss(kind, 0.0)
        plain = loss(pred, target)
        assert float(loss(pred, target, RoiWeighting(10.0).weights(heat))) == pytest.approx(float(plain), rel=1e-5)
    pred = target + torch.randn_like(target)
    assert float(ReconLoss("mse", 0.0)(pred, target)) == pytest.approx(float(F.mse_loss(pred, target)), rel=1e-6)
    assert float(ReconLoss("l1", 0.0)(pred, target)) == pytest.approx(float(F.l1_loss(pred, target)), rel=1e-6)
    # errors inside the heatmap count more
    err_in = target.clone()
    err_in[..., 2:6, 2:6] += 1.0
    h = torch.zeros_like(target)
    h[..., 2:6, 2:6] = 1.0
    assert float(ReconLoss("mse", 0.0)(err_in, target, RoiWeighting(4.0).weights(h))) > float(ReconLoss("mse", 0.0)(err_in, target))


def test_ssim_term_matches_fastmri_ssimloss():
    torch.manual_seed(1)
    y = torch.rand(2, 1, 24, 24)
    x = y + 0.1 * torch.randn_like(y)
    dr = torch.tensor([1.0, 1.0])
    s = ssim_map(x, y, dr)
    ref = SSIMLoss()(x, y, dr, reduced=False)
    assert torch.allclose(1 - s, ref, atol=1e-6)
    loss = ReconLoss("l1", ssim_weight=0.5)
    flat = y.flatten(1)
    expect = 0.5 * F.l1_loss(x, y) + 0.5 * (1 - ssim_map(x, y, flat.amax(1) - flat.amin(1)).mean())
    assert float(loss(x, y)) == pytest.approx(float(expect), rel=1e-5)
    assert float(loss(x, y, torch.ones_like(y))) == pytest.approx(float(expect), rel=1e-5)
    with pytest.raises(ValueError, match=r"^kind: expected one of mse, l1, got 'huber'"):
        ReconLoss("huber", 0.0)
    with pytest.raises(ValueError, match=r"^ssim_weight: must be in \[0, 1\], got 1.5"):
        ReconLoss("l1", 1.5)
