"""What the fastMRI+ knee boxes look like: the statistics the synthetic lesions are drawn from.

Measured once from microsoft/fastmri-plus `Annotations/knee.csv` (MIT licence; 16,154 slice-level
rows over 969 volumes and 9,581 slices, labels stripped of blanks) in its 320 x 320 recon frame.
Per label:
- `share`: the label's share of the box rows;
- `ln_area`: the natural logarithm of the 10th, 50th and 90th percentile of the box area as a
  fraction of the frame (written as numbers, so no libm `log` runs: see `pipeline.portable_math`);
- `aspect`: the median width / height of its boxes;
- `run`: the median number of consecutive slices a lesion of that label spans (runs of one label
  in one volume; real volumes have ~35 slices).
Over all rows the area percentiles are 0.18% (p10), 0.53% (p50) and 4.66% (p90) of the frame, and
37% of the boxes are under 400 px^2 in the 320 frame (`FRAME_AREA_QUANTILES`).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LabelStats:
    share: float
    ln_area: tuple[float, float, float]
    aspect: float
    run: float


_S = LabelStats
KNEE_LABELS: dict[str, LabelStats] = {
    "Meniscus Tear": _S(0.3503, (-6.5738, -5.6097, -4.6961), 1.67, 7.0),
    "Cartilage - Partial Thickness loss/defect": _S(0.1848, (-6.6508, -5.7528, -5.0204), 2.44, 2.0),
    "Joint Effusion": _S(0.0812, (-3.3141, -2.6756, -1.5229), 0.41, 7.0),
    "Bone-Fracture/Contusion/dislocation": _S(0.0656, (-4.9830, -3.9285, -2.8418), 0.98, 6.0),
    "Bone- Subchondral edema": _S(0.0610, (-6.1250, -5.0767, -4.0741), 1.03, 3.0),
    "Periarticular cysts": _S(0.0535, (-5.3733, -3.4459, -2.2857), 0.62, 4.0),
    "Ligament - ACL Low Grade sprain": _S(0.0474, (-5.4627, -4.9827, -4.4979), 0.53, 4.0),
    "Ligament - ACL High Grade Sprain": _S(0.0420, (-5.6804, -5.0242, -4.5792), 0.58, 6.0),
    "Cartilage - Full Thickness loss/defect": _S(0.0381, (-6.3077, -5.3546, -4.7387), 3.22, 3.5),
    "Ligament - MCL Low-Mod Grade Sprain": _S(0.0176, (-5.0426, -4.5945, -4.2420), 0.31, 2.0),
    "Displaced Meniscal Tissue": _S(0.0144, (-6.4565, -5.7888, -5.0206), 0.94, 3.0),
    "Bone - Lesion": _S(0.0113, (-5.6071, -4.4219, -2.8664), 0.91, 5.0),
    "Ligament - PCL Low-Mod grade sprain": _S(0.0088, (-5.2366, -4.4974, -3.8284), 0.64, 3.5),
    "LCL Complex - Low-Mod Grade Sprain": _S(0.0080, (-5.6736, -4.9219, -4.0246), 0.52, 2.5),
    "Soft Tissue Lesion": _S(0.0056, (-4.4253, -3.1893, -2.2148), 0.59, 9.5),
    "Muscle Strain": _S(0.0040, (-4.3364, -3.7328, -2.4613), 0.85, 4.0),
    "Joint Bodies": _S(0.0024, (-5.6395, -4.3946, -3.9696), 0.49, 3.0),
    "Patellar Retinaculum - High grade sprain": _S(0.0015, (-4.5779, -4.2098, -3.7676), 0.44, 6.0),
    "Ligament - PCL High Grade": _S(0.0011, (-4.8734, -4.4391, -3.9354), 0.73, 6.0),
    "LCL Complex- High Grade Sprain": _S(0.0009, (-5.8947, -5.3141, -5.0121), 0.48, 4.0),
    "Ligament - MCL High Grade sprain": _S(0.0007, (-5.0399, -4.5744, -4.0889), 0.36, 3.0),
}
# the 22nd fastMRI+ knee label, "artifact", is study-level only (no box)

FRAME_AREA_QUANTILES = {0.1: 0.00176, 0.5: 0.00533, 0.9: 0.04658}   # box area / frame area, all rows
SHARE_UNDER_400_PX_AT_320 = 0.366
REAL_SLICES = 35                                                   # slices of a fastMRI knee volume
