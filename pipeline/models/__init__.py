"""The networks (MRNet, the U-Net), their weights files, the registry that builds and loads them,
and U-Net inference in fp32."""
