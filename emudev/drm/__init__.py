"""The DRM core: devices, open files (drm_file) and the ioctl dispatcher (drm_ioctl)."""
