"""Grad-CAM ROI heatmaps from a trained MRNet, one per slice of the slices store.

Per-slice scheme. MRNet's exam logit takes, per feature channel, the max over slices, so its
gradient reaches only the slices that win that max; every other slice would get an empty map.
We instead explain a per-slice logit `s_i = w . GAP(features(x_i)) + b`: the same trunk, pooling
and linear unit, applied to one slice as if it were a one-slice exam (the exam logit is the
linear unit applied to the channel-wise max of the very same pooled descriptors). Each slice thus
gets the map of the evidence for "abnormal" that it holds itself, and a slice with a lesion gets
a non-zero map whether or not it wins the max. The slices are independent in this forward pass,
so one backward pass gives every slice's own gradient.

Class-activation maps are taken at `layer` (e.g. `features.10`, AlexNet's last convolution),
with gradient g and activation A of that layer's output, per `method`, all through captum:
- `gradcam` (Selvaraju et al. 2017; captum's `LayerGradCam`): channel weights = spatial mean of g,
  map = ReLU(sum_k mean(g_k) A_k);
- `hirescam` (Draelos & Carin 2020; captum's `LayerGradientXActivation`): map = ReLU(sum_k g_k * A_k),
  element-wise, so the map keeps the gradient's own spatial pattern instead of its mean;
- `layercam` (Jiang et al. 2021; the gradient from `LayerGradientXActivation` without the
  multiplication, A from `LayerActivation`): map = ReLU(sum_k ReLU(g_k) * A_k), only the
  positive gradients count.
Maps are upsampled (bilinear, each cell at its receptive-field centre) to the crop size,
optionally Gaussian-smoothed, and divided by the volume's maximum, so they lie in [0, 1] per
volume and a slice with little evidence stays low.

Inputs are the fully sampled targets, one volume per pass, prepared as the classifier's exams
(`pipeline.models.mrnet.exam_input`: per-volume min/max to 0..255, the training statistics stored
in the model config); a per-exam BatchNorm MRNet normalises each volume's slices together, as it
did each exam's in training.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from scipy.ndimage import gaussian_filter

from pipeline.errors import BadValue, InputError
from pipeline.models.mrnet import ExamBatchNorm2d, MRNet, exam_input, exam_logit
from pipeline.stores.zarr_store import SPLITS, ShardedWriter, as_str, finish_store, open_store, read_rows, split_group

Progress = Optional[Callable[[int], None]]


METHODS = ("gradcam", "hirescam", "layercam")
METHOD_NAMES = {"gradcam": "Grad-CAM", "hirescam": "HiResCAM", "layercam": "LayerCAM"}


@dataclass(frozen=True)
class GradCAMSpec:
    layer: str = "features.10"
    method: str = "gradcam"         # one of METHODS
    smooth_sigma: float = 1.0       # Gaussian sigma in pixels of the crop; 0 = none
    batch: int = 64                 # slices per forward/backward pass


def check_layer(model: MRNet, layer: str) -> torch.nn.Module:
    """The trunk layer named `layer`; a BadValue when MRNet's trunk has no such layer."""
    names = dict(model.named_modules())
    if layer not in names or not layer.startswith("features."):
        convs = [n for n, m in model.features.named_children()]
        raise BadValue("layer", f"{layer!r} is not a layer of MRNet's trunk (features.0 .. features.{convs[-1]})")
    return names[layer]


def explainable(model: MRNet) -> MRNet:
    """A copy without in-place ReLUs (captum hooks the layer's output, and an in-place ReLU after
    it would overwrite the activations the attribution needs) whose per-exam BatchNorm takes the
    volume's statistics as constants (`ExamBatchNorm2d.detach_stats`: each slice's own map)."""
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
        if isinstance(m, ExamBatchNorm2d):
            m.detach_stats = True
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def check_method(method: str) -> str:
    if method not in METHODS:
        raise BadValue("method", f"{method!r} is not one of {', '.join(METHODS)}")
    return method


def cam_function(model: MRNet, layer: str, method: str = "gradcam") -> Callable[[torch.Tensor], torch.Tensor]:
    """x `(S, 1, H, W)` -> raw maps `(S, h, w)` (>= 0) of each slice's own logit by `method`."""
    from captum.attr import LayerActivation, LayerGradCam, LayerGradientXActivation

    module = check_layer(model, layer)
    check_method(method)
    if method == "gradcam":
        cam = LayerGradCam(model.slice_logits, module)
        return lambda xb: cam.attribute(xb, target=0, relu_attributions=True)[:, 0]
    if method == "hirescam":
        gxa = LayerGradientXActivation(model.slice_logits, module)
        return lambda xb: torch.relu(gxa.attribute(xb, target=0).sum(dim=1))
    grad = LayerGradientXActivation(model.slice_logits, module, multiply_by_inputs=False)
    act = LayerActivation(model.slice_logits, module)
    return lambda xb: torch.relu((torch.relu(grad.attribute(xb, target=0)) * act.attribute(xb)).sum(dim=1))


def slice_cams(model: MRNet, x: torch.Tensor, layer: str, batch: int = 64, method: str = "gradcam") -> torch.Tensor:
    """Raw class-activation maps `(S, h, w)` (>= 0) of each slice's own logit, at `layer`
    resolution, by `method` (see the module doc). `x` is one volume; a model whose normalisation
depends on the batch (`MRNet.batch_dependent`) sees it whole, whatever `batch` says."""
    cam = cam_function(model, layer, method)
    if model.batch_dependent:   # per-exam BatchNorm: the volume's slices must be normalised together
        batch = len(x)
    out = []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch].clone().requires_grad_(True)
        out.append(cam(xb).detach())
    return torch.cat(out)


def feature_geometry(model: MRNet, layer: str) -> tuple[float, float]:
    """(a, b): cell n of `layer`'s output is centred on input pixel a * n + b (its receptive
    field's centre), composed through the trunk's convolutions and poolings up to `layer`."""
    a, b = 1.0, 0.0
    for name, m in model.features.named_children():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.MaxPool2d)):
            k, st, p = (v if isinstance(v, int) else v[0] for v in (m.kernel_size, m.stride, m.padding))
            b += a * ((k - 1) / 2 - p)
            a *= st
        if f"features.{name}" == layer:
            break
    return a, b


def upsample_aligned(cams: torch.Tensor, geometry: tuple[float, float], input_size: int,
                     size: tuple[int, int]) -> torch.Tensor:
    """Maps `(S, h, w)` at feature resolution (of a square model input of side `input_size`, the
    crop resized) -> `(S, H, W)` on the crop, bilinear, with each
    feature cell placed at its receptive-field centre. A plain resize spreads the cells evenly over
    the image, off by up to half a cell (8 px for AlexNet's last conv) towards the borders, since
    AlexNet's unpadded poolings leave the cell centres inside a narrower band of the input."""
    a, b = geometry
    S, h, w = cams.shape
    H, W = size

    def coords(n_out: int, n_feat: int, n_in: int) -> torch.Tensor:
        # crop pixel centre -> model input pixel -> feature index -> grid_sample's [-1, 1]
        y = (torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5
        n = (y - b) / a
        return (2.0 * n / max(n_feat - 1, 1) - 1.0).float()

    gy, gx = coords(H, h, input_size), coords(W, w, input_size)
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)
    grid = grid.expand(S, H, W, 2)
    return F.grid_sample(cams[:, None], grid, mode="bilinear", padding_mode="border",
                         align_corners=True)[:, 0]


def volume_heatmaps(model: MRNet, config: dict, volume: np.ndarray, spec: GradCAMSpec) -> np.ndarray:
    """Heatmaps `(S, C, C)` float32 in [0, 1] for one volume `(S, C, C)` in any units."""
    S, H, W = volume.shape
    size = int(config["image_size"])
    x = exam_input(volume, config)
    cams = slice_cams(model, x, spec.layer, spec.batch, spec.method)
    up = upsample_aligned(cams.float(), feature_geometry(model, spec.layer), size, (H, W))
    heat = up.clamp_min(0).numpy().astype(np.float32)
    if spec.smooth_sigma > 0:
        heat = gaussian_filter(heat, sigma=(0, spec.smooth_sigma, spec.smooth_sigma), mode="nearest")
    peak = float(heat.max())
    return heat / peak if peak > 0 else np.zeros_like(heat)


def volume_runs(names: np.ndarray, path: Path | str, split: str) -> list[tuple[str, int, int]]:
    """(volume, start, stop) for each volume of a split; each volume must be one contiguous run."""
    runs: list[tuple[str, int, int]] = []
    names = as_str(names)
    start = 0
    for i in range(1, len(names) + 1):
        if i == len(names) or names[i] != names[start]:
            runs.append((str(names[start]), start, i))
            start = i
    seen = [r[0] for r in runs]
    if len(set(seen)) != len(seen):
        raise InputError(f"{path}: split '{split}': slices of one volume are not contiguous")
    return runs


def check_slices_split(group: zarr.Group, path: Path | str, split: str) -> tuple[int, int]:
    """Validate one split of the slices store; returns (N, C)."""
    for key in ("volume", "slice", "target"):
        if key not in group:
            raise InputError(f"{path}: split '{split}' has no '{key}' array")
    t = group["target"]
    if t.ndim != 3 or t.shape[1] != t.shape[2]:
        raise InputError(f"{path}: split '{split}': target must have rank 3 (N, C, C), got shape {t.shape}")
    n = t.shape[0]
    if n == 0:
        raise InputError(f"{path}: split '{split}' is empty")
    if group["volume"].shape != (n,) or group["slice"].shape != (n,):
        raise InputError(f"{path}: split '{split}': volume/slice/target lengths differ")
    return n, t.shape[1]


def write_heatmaps(path: Path | str, slices_path: Path | str, model: MRNet, config: dict,
                   spec: GradCAMSpec, progress: Progress = None, attrs: Optional[dict] = None
                   ) -> dict[str, int]:
    """Heatmaps store at `path` (not atomic: give it a temporary path): per split `volume`,
    `slice` (copied from the slices store, same order) and `heatmap` float32 (N, C, C)."""
    slices = open_store(slices_path, kind="slices")
    shapes = {s: check_slices_split(split_group(slices, s, slices_path), slices_path, s) for s in SPLITS}
    model = explainable(model)
    check_layer(model, spec.layer)
    check_method(spec.method)
    root = zarr.open_group(str(path), mode="w")
    root.attrs.update({"kind": "heatmaps", "slices": str(slices_path), **asdict(spec),
                       "scheme": f"per-slice logit {METHOD_NAMES[spec.method]}, bilinear upsampling, "
                                 "normalised to [0, 1] per volume", **(attrs or {})})
    counts = {}
    for split in SPLITS:
        g = slices[split]
        n, c = shapes[split]
        names, idx = read_rows(g["volume"]), read_rows(g["slice"]).astype(np.int32)
        group = root.create_group(split)
        writer = ShardedWriter(group, n, {"volume": ((), str), "slice": ((), "int32"),
                                          "heatmap": ((c, c), "float32")})
        for name, a, b in volume_runs(names, slices_path, split):
            target = np.asarray(read_rows(g["target"], a, b), dtype=np.float32)
            if not np.isfinite(target).all():
                raise InputError(f"{slices_path}: split '{split}': volume {name} holds NaN or Inf")
            writer.append(volume=as_str(names[a:b]), slice=idx[a:b],
                          heatmap=volume_heatmaps(model, config, target, spec))
            if progress:
                progress(b - a)
        writer.close()
        counts[split] = n
    finish_store(root)
    return counts


def volume_calls(model: MRNet, config: dict, slices_path: Path | str, split: str) -> dict[str, float]:
    """{volume: MRNet's probability of "abnormal"} for each volume of one split of the slices store:
    the sigmoid of its exam logit (`exam_logit`) on the volume's fully sampled targets, prepared as
    the classifier's exams, as `write_heatmaps` reads them. `model` as `load_mrnet` gives it (eval
    mode, not `explainable`). What the classifier says of the volumes whose maps are scored."""
    group = split_group(open_store(slices_path, kind="slices"), split, slices_path)
    names = read_rows(group["volume"])
    calls = {}
    for name, a, b in volume_runs(names, slices_path, split):
        target = np.asarray(read_rows(group["target"], a, b), dtype=np.float32)
        calls[name] = abnormal_probability(exam_logit(model, target, config))
    return calls


def abnormal_probability(logit: float) -> float:
    """MRNet's probability of "abnormal" from its exam logit (float64), as `call_threshold` is read."""
    return float(torch.sigmoid(torch.tensor(logit, dtype=torch.float64)))


# a model file that records no threshold (one written before training chose it on the tune hold-out)
DEFAULT_THRESHOLD = 0.5


def call_threshold(config: dict) -> float:
    """MRNet calls a volume abnormal when its probability is at least this: the cut the model chose
    on its tune hold-out (`threshold` in the model config), DEFAULT_THRESHOLD for a model without one."""
    return float(config.get("threshold", DEFAULT_THRESHOLD))


def annotated_slices(group: zarr.Group, boxes: dict[tuple[str, int], list]) -> list[tuple[int, str, int, list, list]]:
    """(row, volume, slice, boxes, labels) of the rows of a store split that have boxes."""
    names = as_str(group["volume"][:])
    idx = group["slice"][:]
    out = []
    for row, (name, k) in enumerate(zip(names, idx)):
        found = boxes.get((str(name), int(k)))
        if found:
            out.append((row, str(name), int(k), [b for b, _ in found], [lab for _, lab in found]))
    return out


# --------------------------------------------------------------------------- data sources
# The synthetic fastMRI files carry `<institutionName>roirecon synthetic</institutionName>` in their
# ISMRMRD header (`pipeline.synthetic.acquisition`); real fastMRI headers name a real institution or none.
SYNTHETIC_MARKER = b"<institutionName>roirecon synthetic</institutionName>"


def raw_files_synthetic(raw_dir: Path | str | None) -> Optional[bool]:
    """Whether the fastMRI files under `raw_dir` (`{split}/*.h5`) are the synthetic ones, judged by
    the ISMRMRD header of the first file; None when there is no readable file to tell."""
    import h5py

    if raw_dir is None:
        return None
    files = sorted(Path(str(raw_dir)).glob("*/*.h5"))
    if not files:
        return None
    try:
        with h5py.File(files[0], "r") as f:
            header = bytes(np.asarray(f["ismrmrd_header"][()]).tobytes())
    except (OSError, KeyError):
        return None
    return SYNTHETIC_MARKER in header


def source_mismatch(model_config: dict, raw_dir: Path | str | None) -> Optional[str]:
    """One warning line when the classifier and the slices come from different kinds of data, else None.

    The rule: the checkpoint records the classifier's exams as `source` (`synthetic` for the
    embedded exams; `mrnet` or `kneemri` for real ones); the slices store records the fastMRI files
    it was built from as `raw_dir`, and those files say whether they are synthetic through their
    ISMRMRD header (`raw_files_synthetic`). A synthetic-trained MRNet on real slices (or a real-trained
    one on synthetic slices) explains a different distribution than it learnt; its maps are unlikely
    to find the lesions. When either side cannot be told (a checkpoint without `source`, raw files
    not on this machine) nothing is said."""
    source = model_config.get("source")
    slices_synthetic = raw_files_synthetic(raw_dir)
    if source is None or slices_synthetic is None:
        return None
    model_synthetic = source == "synthetic"
    if model_synthetic == slices_synthetic:
        return None
    model_kind = "synthetic exams" if model_synthetic else f"real exams ({source})"
    slices_kind = "synthetic fastMRI files" if slices_synthetic else "real fastMRI files"
    return (f"warning: MRNet was trained on {model_kind} but the slices come from {slices_kind} ({raw_dir}): "
            f"its heatmaps explain data unlike what it learnt")
