"""The open userspace stack of emudev: libaccel, tools, and (later) the model compiler."""
