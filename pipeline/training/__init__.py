"""Training loops of the U-Net and MRNet, the device choice and the loops' logging hooks."""
