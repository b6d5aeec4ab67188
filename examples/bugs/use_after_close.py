"""Bug: a GEM handle is used after GEM_CLOSE."""

from userspace.libaccel import Device

EXPECT = ("use-after-close", "was already closed")

with Device.open(0) as dev:
    bo = dev.create_bo(4096)
    handle = bo.handle
    bo.close()
    bo.handle = handle  # BUG: keeps using the closed handle
    try:
        bo.info()
    except OSError as e:
        print("BO_INFO failed:", e)
    bo.handle = 0
