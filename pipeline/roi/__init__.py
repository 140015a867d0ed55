"""Regions of interest: Grad-CAM heatmaps from MRNet, lesion boxes in the crop frame, the oracle's box
maps, and how well a map finds the lesions (`scores`: pointing game, energy in box)."""
