"""Figures as PNGs, written atomically and deterministically: error maps of chosen slices
(`error_maps`, with the shared drawing helpers), comparisons of the variants (`compare`), and
Grad-CAM overlays (`overlays`), and the ROI weighting's frontier (`frontier`)."""
