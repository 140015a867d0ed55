"""MRNet (Bien et al. 2018): AlexNet features on every slice, global average pooling, max over
slices, one linear unit giving the exam's abnormality logit.

The convolutional trunk is exactly torchvision's `alexnet().features` (same layers, same parameter
names `features.{0,3,6,8,10}.{weight,bias}`), so ImageNet-pretrained AlexNet weights load from a
plain state dict without torchvision. AlexNet's fully connected head is not part of MRNet: with it
the seed report counts 61,101,097 parameters, without it MRNet has 2,469,953.

Normalisation (`norm`): `none` is AlexNet as it is. Otherwise each ReLU slot of the trunk becomes
`Sequential(norm, ReLU)`, so the convolutions keep their names (`features.0, 3, 6, 8, 10`) and
pretrained AlexNet weights still load (the norm layers start fresh). `batch` is BatchNorm with
**per-exam statistics**: no running averages, every forward pass normalises with the statistics of
the slices it is given, in training and in evaluation alike. A forward pass must therefore get
exactly one exam (or one fastMRI volume): `exam_input` prepares one and `batch_dependent` tells
callers (Grad-CAM) never to split or pool volumes. With one exam per step, BatchNorm's running
averages do not reproduce what training saw (the network learns "this slice differs from the
rest of this knee"), and a model run under them scores near chance (README: the classifier).
`group` (32 groups) and `instance` normalise each slice alone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import BadValue, InputError, first_line
from pipeline.models.torch_files import read_model_file, read_torch_file

ARCH = "mrnet-alexnet"
# Bien et al.: each exam is scaled to 0..255 by its own min/max, then mean/std normalised
# (their constants were 58.09 / 49.73 on MRNet-v1.0; we measure them on the training exams).
PIXEL_MAX = 255.0


NORMS = ("none", "batch", "group", "instance")


class ExamBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that always normalises with the statistics of the batch it is given (one exam),
    in training and evaluation alike, and keeps no running averages.

    With `detach_stats` the statistics are still the batch's but enter as constants: the forward
    values are the same, and each slice's gradient is its own evidence given the exam's
    statistics, not also its pull on the other slices through them (what per-slice Grad-CAM
    needs: without it, a slice with no lesion gets the negative of the lesion slice's gradient)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, track_running_stats=False)
        self.detach_stats = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.detach_stats:
            return super().forward(x)
        with torch.no_grad():
            mean = x.mean(dim=(0, 2, 3))
            var = x.var(dim=(0, 2, 3), unbiased=False)
        return F.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, self.eps)


def norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return ExamBatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(32, channels)
    if norm == "instance":
        return nn.GroupNorm(channels, channels)
    raise BadValue("norm", f"{norm!r} is not one of {', '.join(NORMS)}")


def activation(norm: str, channels: int) -> nn.Module:
    """The ReLU slot after a convolution: a plain ReLU, or `Sequential(norm, ReLU)`."""
    if norm == "none":
        return nn.ReLU(inplace=True)
    return nn.Sequential(norm_layer(norm, channels), nn.ReLU(inplace=True))


def alexnet_features(norm: str = "none") -> nn.Sequential:
    """torchvision.models.alexnet().features, layer for layer (with `norm` in the ReLU slots)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        activation(norm, 64),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        activation(norm, 192),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        activation(norm, 384),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        activation(norm, 256),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        activation(norm, 256),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


class MRNet(nn.Module):
    """Input: one exam as a batch of slices `(S, 1, H, W)` (grey, normalised) or `(S, 3, H, W)`.

    `forward` gives the exam logit `(1,)`; `slice_logits` gives one logit per slice `(S, 1)`
    through the same pooling and linear unit (used for per-slice Grad-CAM).
    """

    min_size = 63  # smallest input side for which AlexNet's trunk yields a feature map

    def __init__(self, norm: str = "none") -> None:
        super().__init__()
        if norm not in NORMS:
            raise BadValue("norm", f"{norm!r} is not one of {', '.join(NORMS)}")
        self.norm = norm
        self.features = alexnet_features(norm)
        self.classifier = nn.Linear(256, 1)
        # From scratch, PyTorch's default conv init (kaiming_uniform, a=sqrt(5)) shrinks the signal
        # through five BN-free layers and MRNet barely learns in a few epochs on CPU (synthetic test
        # AUC 0.62 after 2 epochs); He init (fan_out, as torchvision's VGG) reaches 0.9 in 4 epochs.
        # Pretrained trunks overwrite these weights.
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    @property
    def batch_dependent(self) -> bool:
        """True when a forward pass normalises with its own batch: give it one exam, whole."""
        return self.norm == "batch"

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Per-slice 256-d descriptors: AlexNet features, global average pooling."""
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected slices (S, 1|3, H, W), got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey replicated to AlexNet's three channels
        return self.features(x).mean(dim=(2, 3))

    def slice_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pooled(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pooled(x).max(dim=0).values)


def to_pixels(volume: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Scale one volume `(S, H, W)` to 0..255 by its own min/max (float32), as Bien et al. did."""
    v = torch.as_tensor(np.asarray(volume, dtype=np.float32) if isinstance(volume, np.ndarray) else volume)
    v = v.float()
    lo, hi = v.min(), v.max()
    return (v - lo) * (PIXEL_MAX / (hi - lo)) if hi > lo else torch.zeros_like(v)


def resize_slices(pixels: torch.Tensor, image_size: int) -> torch.Tensor:
    """`(S, H, W)` -> `(S, 1, image_size, image_size)`, bilinear (antialiased when shrinking)."""
    x = pixels[:, None]
    if tuple(x.shape[-2:]) != (image_size, image_size):
        shrink = min(x.shape[-2:]) > image_size
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False,
                          antialias=shrink)
    return x


def normalise(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return (x - mean) / std


def prepare_volume(volume: np.ndarray | torch.Tensor, image_size: int, mean: float, std: float) -> torch.Tensor:
    """A raw volume `(S, H, W)` in any units -> normalised MRNet input `(S, 1, size, size)`."""
    return normalise(resize_slices(to_pixels(volume), image_size), mean, std)


def exam_input(volume: np.ndarray | torch.Tensor, config: dict) -> torch.Tensor:
    """One exam (or fastMRI volume) `(S, H, W)` as the model saved with `config` was trained to see
    it: the one place where training, tune and test evaluation, Grad-CAM and the benchmarks
    prepare an exam. Run the model on it whole (see `MRNet.batch_dependent`)."""
    return prepare_volume(volume, int(config["image_size"]), float(config["mean"]), float(config["std"]))


def exam_logit(model: MRNet, volume: np.ndarray | torch.Tensor, config: dict) -> float:
    """The abnormality logit of one exam (no gradient)."""
    with torch.no_grad():
        return float(model(exam_input(volume, config).to(next(model.parameters()).device)).float())


def load_pretrained_features(model: MRNet, path: Path | str) -> None:
    """Load AlexNet convolutional weights from a local state dict file.

    Accepts torchvision's full `alexnet` state dict (`features.*` and `classifier.*`; the head is
    ignored) or the trunk alone (`features.*` or bare `0.weight`, ...). A file that is missing or
    holds no such weights is a BadValue naming `pretrained`.
    """
    try:
        state = read_torch_file(path, missing="file not found", unreadable="not a readable torch state dict")
    except InputError as exc:
        raise BadValue("pretrained", str(exc)) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BadValue("pretrained", f"{path}: expected a state dict, got {type(state).__name__}")
    feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    if not feats:
        feats = {k: v for k, v in state.items() if k.split(".")[0].isdigit()}
    expected = model.features.state_dict()
    missing = sorted(set(expected) - set(feats))
    if missing:
        raise BadValue("pretrained", f"{path}: no AlexNet feature weights for {', '.join(missing)}")
    for k, v in expected.items():
        if not isinstance(feats[k], torch.Tensor) or feats[k].shape != v.shape:
            got = tuple(feats[k].shape) if isinstance(feats[k], torch.Tensor) else type(feats[k]).__name__
            raise BadValue("pretrained", f"{path}: features.{k} has shape {got}, AlexNet's is {tuple(v.shape)}")
    model.features.load_state_dict({k: feats[k].float() for k in expected})


def save_mrnet(path: Path | str, model: MRNet, config: dict) -> None:
    """Plain state dict + JSON-able config (loadable with `torch.load(weights_only=True)`)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "config": {"arch": ARCH, **config}}, path)


def load_mrnet(path: Path | str, map_location: str | torch.device = "cpu") -> tuple[MRNet, dict]:
    """Read a model written by `save_mrnet`; any problem with the file is one InputError."""
    blob = read_model_file(path, missing="MRNet model file not found (run train-mrnet first)",
                           unreadable="not a readable MRNet model file", invalid="not an MRNet model file",
                           map_location=map_location)
    config = blob["config"]
    if config.get("arch") != ARCH:
        raise InputError(f"{path}: model architecture is {config.get('arch')!r}, expected {ARCH!r}")
    for key in ("image_size", "mean", "std"):
        if not isinstance(config.get(key), (int, float)):
            raise InputError(f"{path}: model config lacks '{key}'")
    norm = config.get("norm", "none")
    if norm not in NORMS:
        raise InputError(f"{path}: model config has norm {norm!r}, not one of {', '.join(NORMS)}")
    model = MRNet(norm)
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        raise InputError(f"{path}: weights do not fit MRNet ({first_line(exc)})") from None
    for name, t in model.state_dict().items():
        if not torch.isfinite(t).all():
            raise InputError(f"{path}: weight {name} holds NaN or Inf")
    return model.to(map_location).eval(), config

