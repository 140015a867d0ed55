"""The embedded synthetic dataset: the knee phantom (anatomy, lesions, drawing kit), the acquisition
(k-space, coils, noise, header), the fastMRI+ box statistics the lesions follow, and the writer of
the fastMRI, fastMRI+ and MRNet-format files (`dataset`)."""
