"""The file tree a mount shows: accel/accelN device nodes and the debug/ directory."""
