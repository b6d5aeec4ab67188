"""This driver's own ioctls (DRM_COMMAND_BASE and up), the part a drivers/accel/<name>/ would hold."""
