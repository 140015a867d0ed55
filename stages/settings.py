"""Typed, validated settings read from params.yaml (YAML 1.2, as DVC reads it).

Each section of params.yaml is one model; unknown keys, wrong types and out-of-range values
are reported as one line naming the key, e.g. `params.yaml: mask.acceleration: ...`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from pipeline.errors import InputError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataSettings(Section):
    raw_dir: str = "data/synthetic/fastmri"
    challenge: Literal["singlecoil", "multicoil"] = "singlecoil"
    crop: int = Field(128, ge=8)
    annotations: Optional[str] = "data/synthetic/annotations.csv"
    annotation_frame: Optional[int] = Field(None, ge=1, description="recon frame of the boxes; None = target shape")
    workers: int = Field(0, ge=0, description="worker processes; 0 = one per core")


class SyntheticSettings(Section):
    volumes: dict[Literal["train", "val", "test"], int] = {"train": 22, "val": 8, "test": 40}
    slices: int = Field(16, ge=1)
    recon_size: int = Field(128, ge=16)
    coils: int = Field(1, ge=1)
    lesion_rate: float = Field(0.5, ge=0, le=1)
    eval_lesion_rate: float = Field(0.9, ge=0, le=1)
    noise: float = Field(0.02, ge=0)
    exams: dict[Literal["train", "valid"], int] = {"train": 120, "valid": 40}
    exam_slices: int = Field(8, ge=1)

    @field_validator("volumes", "exams")
    @classmethod
    def _positive_counts(cls, v: dict) -> dict:
        for k, n in v.items():
            if n < 1:
                raise ValueError(f"count for '{k}' must be >= 1, got {n}")
        return v


class MaskSettings(Section):
    type: Literal["random", "equispaced", "equispaced_fraction", "magic", "magic_fraction"] = "random"
    acceleration: float = Field(4, ge=1)
    center_fraction: float = Field(0.08, gt=0, lt=1)


class MRNetSettings(Section):
    source: Literal["synthetic", "mrnet", "kneemri"] = "synthetic"
    data_dir: str = "data/synthetic/mrnet"
    plane: Literal["axial", "coronal", "sagittal"] = "coronal"
    task: str = "abnormal"
    pretrained: Optional[str] = None
    kneemri_roi_crop: bool = False
    image_size: int = Field(128, ge=32)
    epochs: int = Field(8, ge=1)
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    tune_fraction: float = Field(0.2, gt=0, lt=1)
    kneemri_valid_fraction: float = Field(0.25, gt=0, lt=1)
    augment: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"


class GradCAMSettings(Section):
    layer: str = "features.10"
    smooth_sigma: float = Field(1.0, ge=0)
    n_overlays: int = Field(4, ge=0)


class UNetSettings(Section):
    arch: Literal["fastmri", "seed"] = "fastmri"
    chans: int = Field(8, ge=1)
    num_pool_layers: int = Field(4, ge=1)
    drop_prob: float = Field(0.0, ge=0, lt=1)
    residual: bool = True
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(3e-3, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v) or min(v) < 0:
            raise ValueError(f"seeds must be distinct integers >= 0, got {v}")
        return v


class LossSettings(Section):
    kind: Literal["mse", "l1"] = "mse"
    roi_weight: float = Field(4.0, ge=0)
    ssim_weight: float = Field(0.0, ge=0, le=1)


class EvaluateSettings(Section):
    split: Literal["val", "test"] = "test"
    n_figures: int = Field(4, ge=0)
    bootstrap_resamples: int = Field(10000, ge=1000)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class Params(Section):
    seed: int = 0
    data: DataSettings = DataSettings()
    synthetic: SyntheticSettings = SyntheticSettings()
    mask: MaskSettings = MaskSettings()
    mrnet: MRNetSettings = MRNetSettings()
    gradcam: GradCAMSettings = GradCAMSettings()
    unet: UNetSettings = UNetSettings()
    loss: LossSettings = LossSettings()
    evaluate: EvaluateSettings = EvaluateSettings()


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate params.yaml; any problem is one InputError naming the key."""
    path = Path(path)
    try:
        raw = YAML(typ="safe", pure=True).load(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: params file not found") from None
    except YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping of sections at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        value = err.get("input")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        raise InputError(f"{path}: {key}: {msg} (got {value!r})") from None
