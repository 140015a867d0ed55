"""The zarr stores: layouts, atomic writes and integrity (`zarr_store`), the temporaries of atomic
outputs and their sweep (`tmp_sweep`), and the streaming dataset that reads the stores slice by
slice for the U-Net (`unet_data`)."""
