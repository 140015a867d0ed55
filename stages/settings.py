"""Typed, validated settings read from params.yaml (YAML 1.2, as DVC reads it).

Each section of params.yaml is one model; missing keys, unknown keys, wrong types and
out-of-range values are reported as one line naming the key, e.g. `params.yaml: loss.roi_weight:
missing`. No field has a default here: params.yaml is the only home of every setting's value.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from pipeline.errors import InputError


class Section(BaseModel):
    # Every field is required: params.yaml is the one home of the defaults, so a missing key is an
    # error naming it, never a value chosen here.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


def _all_keys(v: dict, keys: tuple[str, ...]) -> dict:
    missing = [k for k in keys if k not in v]
    if missing:
        raise ValueError(f"missing count for {', '.join(repr(k) for k in missing)}")
    for k, n in v.items():
        if n < 1:
            raise ValueError(f"count for '{k}' must be >= 1, got {n}")
    return v


class DataSettings(Section):
    raw_dir: str
    challenge: Literal["singlecoil", "multicoil"]
    crop: int = Field(ge=8)
    annotations: Optional[str]
    annotation_frame: Optional[int] = Field(ge=1, description="recon frame of the boxes; None = target shape")
    workers: int = Field(ge=0, description="worker processes; 0 = one per core")
    test_from_val: float = Field(ge=0, lt=1, description="0: raw_dir/test as it is; else the share of "
                                 "val's files (by patient) carved out to be the test split")

    def annotations_path(self, override: Optional[Path] = None) -> Optional[Path]:
        """--annotations when given, else data.annotations (None: no boxes)."""
        return override if override is not None else (Path(self.annotations) if self.annotations else None)


class SyntheticSettings(Section):
    volumes: dict[Literal["train", "val", "test"], int]
    slices: int = Field(ge=1)
    recon_size: int = Field(ge=16)
    coils: int = Field(ge=1)
    lesion_rate: float = Field(ge=0, le=1)
    eval_lesion_rate: float = Field(ge=0, le=1)
    noise: float = Field(ge=0)
    exams: dict[Literal["train", "valid"], int]
    exam_slices: int = Field(ge=1)

    @field_validator("volumes")
    @classmethod
    def _volume_counts(cls, v: dict) -> dict:
        return _all_keys(v, ("train", "val", "test"))

    @field_validator("exams")
    @classmethod
    def _exam_counts(cls, v: dict) -> dict:
        return _all_keys(v, ("train", "valid"))


# fastMRI builds these masks from an integer number of lines per step: 2.5x has no meaning there
INTEGER_ACCELERATION_MASKS = ("equispaced", "magic")


class MaskSettings(Section):
    type: Literal["random", "equispaced", "equispaced_fraction", "magic", "magic_fraction"]
    acceleration: float = Field(gt=1)  # finite (Section forbids inf/nan); 1 would undersample nothing
    center_fraction: float = Field(gt=0, lt=1)

    @field_validator("acceleration")
    @classmethod
    def _integer_acceleration(cls, v: float, info: ValidationInfo) -> float:
        mask_type = info.data.get("type")
        if mask_type in INTEGER_ACCELERATION_MASKS and not float(v).is_integer():
            raise ValueError(f"{mask_type} masks need an integer acceleration")
        return v


class MRNetSettings(Section):
    source: Literal["synthetic", "mrnet", "kneemri"]
    data_dir: str
    plane: Literal["axial", "coronal", "sagittal"]
    task: str
    pretrained: Optional[str]
    kneemri_roi_crop: bool
    image_size: int = Field(ge=32)
    epochs: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    tune_fraction: float = Field(gt=0, lt=1)
    kneemri_valid_fraction: float = Field(gt=0, lt=1)
    augment: bool
    norm: Literal["none", "batch", "group", "instance"]
    schedule: Literal["constant", "cosine"]
    device: Literal["auto", "cpu", "cuda"]


class GradCAMSettings(Section):
    # the class-activation methods of pipeline.roi.gradcam.METHODS (spelled out here: importing the
    # library would put torch and captum in every stage's import closure; tests/test_settings.py
    # checks the two lists agree)
    method: Literal["gradcam", "hirescam", "layercam"]
    layer: str
    smooth_sigma: float = Field(ge=0)
    n_overlays: int = Field(ge=0)


class UNetSettings(Section):
    arch: Literal["fastmri", "seed"]
    chans: int = Field(ge=1)
    num_pool_layers: int = Field(ge=1)
    drop_prob: float = Field(ge=0, lt=1)
    residual: bool
    seeds: list[int] = Field(min_length=1)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    device: Literal["auto", "cpu", "cuda"]
    nproc: int = Field(ge=1, description="processes (GPUs) per training run; > 1 runs under torchrun")
    num_workers: int = Field(ge=0, description="DataLoader worker processes per rank")
    val_volumes: int = Field(ge=0, description="val volumes scored each epoch to pick the best (0: all)")
    deterministic: bool
    compile: bool

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v) or min(v) < 0:
            raise ValueError(f"seeds must be distinct integers >= 0, got {v}")
        return v


class LossSettings(Section):
    kind: Literal["mse", "l1"]
    roi_weight: float = Field(ge=0)
    roi_norm: Literal["mean", "none"]
    roi_margin: int = Field(ge=0, description="pixels of the training image the ROI map is grown by")
    roi_soft: float = Field(ge=0, description="Gaussian sigma (pixels) of the ROI map's edges")
    background_weight: float = Field(gt=0, le=1, description="loss weight outside the knee (ROI variants)")
    ssim_weight: float = Field(ge=0, le=1)

    def weighting_for(self, uses_roi_map: bool) -> dict[str, float | int | str]:
        """The ROI weighting a training run gets (TrainConfig's fields): these keys for a variant
        whose loss is weighted by an ROI map (weighted, oracle); the neutral values for the baseline,
        which weights nothing and does not depend on these keys (dvc.yaml), so its checkpoint records
        the same values whatever they hold."""
        if not uses_roi_map:
            return {"roi_weight": 0.0, "roi_norm": "mean", "roi_margin": 0, "roi_soft": 0.0, "background_weight": 1.0}
        return {"roi_weight": self.roi_weight, "roi_norm": self.roi_norm, "roi_margin": self.roi_margin,
                "roi_soft": self.roi_soft, "background_weight": self.background_weight}


class EvaluateSettings(Section):
    split: Literal["val", "test"]
    n_figures: int = Field(ge=0)
    bootstrap_resamples: int = Field(ge=1000)
    device: Literal["auto", "cpu", "cuda"]
    num_workers: int = Field(ge=0, description="DataLoader worker processes")


class Params(Section):
    seed: int
    data: DataSettings
    synthetic: SyntheticSettings
    mask: MaskSettings
    mrnet: MRNetSettings
    gradcam: GradCAMSettings
    unet: UNetSettings
    loss: LossSettings
    evaluate: EvaluateSettings


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate params.yaml; any problem is one InputError naming the key."""
    path = Path(path)
    try:
        raw = YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: params file not found") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the params file ({exc.strerror or exc})") from None
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
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            # a section or key absent from the file: params.yaml holds every setting, none is defaulted
            raise InputError(f"{path}: {key}: missing") from None
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        raise InputError(f"{path}: {key}: {msg} (got {value!r})") from None
