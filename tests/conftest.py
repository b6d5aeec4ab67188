pytest_plugins = ["emudev.testing"]
