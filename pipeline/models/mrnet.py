"""MRNet (Bien et al. 2018): AlexNet features on every slice, global average pooling, max over
slices, one linear unit giving the exam's abnormality logit.

The convolutional trunk is exactly torchvision's `alexnet().features` (same layers, same parameter
names `features.{0,3,6,8,10}.{weight,bias}`), so ImageNet-pretrained AlexNet weights load from a
plain state dict without torchvision. AlexNet's fully connected head is not part of MRNet: with it
the seed report counts 61,101,097 parameters, without it MRNet has 2,469,953.
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


def alexnet_features() -> nn.Sequential:
    """torchvision.models.alexnet().features, layer for layer."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


class MRNet(nn.Module):
    """Input: one exam as a batch of slices `(S, 1, H, W)` (grey, normalised) or `(S, 3, H, W)`.

    `forward` gives the exam logit `(1,)`; `slice_logits` gives one logit per slice `(S, 1)`
    through the same pooling and linear unit (used for per-slice Grad-CAM).
    """

    min_size = 63  # smallest input side for which AlexNet's trunk yields a feature map

    def __init__(self) -> None:
        super().__init__()
        self.features = alexnet_features()
        self.classifier = nn.Linear(256, 1)
        # From scratch, PyTorch's default conv init (kaiming_uniform, a=sqrt(5)) shrinks the signal
        # through five BN-free layers and MRNet barely learns in a few epochs on CPU (synthetic test
        # AUC 0.62 after 2 epochs); He init (fan_out, as torchvision's VGG) reaches 0.9 in 4 epochs.
        # Pretrained trunks overwrite these weights.
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

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
    model = MRNet()
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        raise InputError(f"{path}: weights do not fit MRNet ({first_line(exc)})") from None
    for name, t in model.state_dict().items():
        if not torch.isfinite(t).all():
            raise InputError(f"{path}: weight {name} holds NaN or Inf")
    return model.to(map_location).eval(), config

