"""The ROI weighting's frontier figure: each setting's whole-image against in-box PSNR change, oracle
and Grad-CAM variant, with their 95% intervals (the table of `pipeline.evaluation.frontier`)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from pipeline.figures.error_maps import DPI, write_png

STYLE = {"oracle": ("o", "#1f77b4", "oracle (ground-truth boxes as the map)"),
         "weighted": ("s", "#d62728", "Grad-CAM (MRNet maps)")}


def write_frontier(t: pd.DataFrame, floor_db: float, path: Path | str, default: str = "default") -> None:
    """x: whole-image PSNR change, y: in-box PSNR change (dB, against the baseline of the same
    capacity and loss, val), both with interval bars; one labelled marker per setting and variant
    (rows of `t`: setting, variant, chosen, in_box[_low|_high], whole[_low|_high]); the committed
    default ringed, the rule's choice starred; the rule's floor `floor_db` as a dotted line."""
    fig = Figure(figsize=(13.0, 6.0), dpi=DPI)
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    for ax, (variant, (marker, color, label)) in zip(axes, STYLE.items()):
        ax.axhline(0, color="0.3", lw=0.8)
        ax.axvline(0, color="0.3", lw=0.8)
        ax.axvline(floor_db, color="0.5", lw=0.8, ls=":",
                   label=f"rule: the oracle's whole-image interval must reach {floor_db} dB")
        d = t[t["variant"] == variant]
        ax.errorbar(d["whole"], d["in_box"], xerr=[d["whole"] - d["whole_low"], d["whole_high"] - d["whole"]],
                    yerr=[d["in_box"] - d["in_box_low"], d["in_box_high"] - d["in_box"]], fmt=marker, color=color,
                    ecolor=color, elinewidth=0.8, alpha=0.8, capsize=2, label=label)
        for _, r in d.iterrows():
            ax.annotate(r["setting"], (r["whole"], r["in_box"]), xytext=(4, 3), textcoords="offset points",
                        fontsize=7, color="0.15")
            if r["setting"] == default:
                ax.plot(r["whole"], r["in_box"], marker="o", ms=14, mfc="none", mec="k", mew=1.2)
            if r["chosen"]:
                ax.plot(r["whole"], r["in_box"], marker="*", ms=16, color="gold", mec="k", zorder=5)
        ax.plot([], [], marker="o", ms=10, mfc="none", mec="k", ls="none",
                label=f"'{default}': params.yaml before the sweep")
        ax.plot([], [], marker="*", ms=12, color="gold", mec="k", ls="none", label="chosen by the rule (oracle)")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("whole-image PSNR change against the baseline (dB)")
        ax.legend(fontsize=7, loc="lower left")
        ax.grid(alpha=0.25)
    axes[0].set_ylabel("in-box PSNR change against the baseline (dB)")
    fig.suptitle("ROI weighting settings on val: in-box gain against whole-image cost (mean over seeds and "
                 "volumes; bars: 95% intervals over seeds and volumes)", fontsize=10)
    write_png(fig, path)
