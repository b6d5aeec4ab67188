"""emudev: an emulated Linux compute-accelerator (DRM accel) device served over FUSE."""
