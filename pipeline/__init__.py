"""roirecon's library: what the DVC stages run, grouped by concern (docs/architecture.md).

Sub-packages: `io` (raw formats), `synthetic` (the embedded dataset), `stores` (zarr stores and the
streaming dataset), `models`, `roi` (ROI maps and their scores), `training`, `figures`, `evaluation`.
Single modules: the cross-cutting pieces (errors, k-space, losses, metrics, stats, process pools,
threads, portable math), `slice_stores` (prepare and undersample) and `reconstruct`."""
