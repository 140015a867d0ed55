"""Readers of the raw formats: fastMRI HDF5 files (and their validation), classifier exams
(MRNet, KneeMRI) and fastMRI+ annotation boxes."""
