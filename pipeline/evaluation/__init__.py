"""Evaluation and what it reports: the U-Nets on a split (`evaluate`), the Grad-CAM stage's scores and
overlays (`gradcam_report`), the figures evaluate writes (`report_figures`), report JSON files
(`reports`), the Markdown tables of the docs (`doc_tables`), and the ROI weighting's frontier on val
with the rule that picks the default (`frontier`)."""
