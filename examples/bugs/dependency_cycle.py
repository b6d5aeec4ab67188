"""Bug: job A waits on a semaphore that only job B signals, but B waits for A's fence."""

from emudev.uapi import defs
from userspace.libaccel import WRITE, CommandStream, Context, Device, upload_stream

EXPECT = ("deadlock", "cycle")

CS = defs.DRM_EMUDEV_ENGINE_CS

with Device.open(0) as dev, Context(dev) as first, Context(dev) as second:
    word = dev.create_bo(4096)
    a_done = dev.create_syncobj()
    wait_cmd, wait_size = upload_stream(dev, CommandStream().sem_wait(CS, word.device_va, 1))
    signal_cmd, signal_size = upload_stream(dev, CommandStream().sem_signal(CS, word.device_va, 1))
    first.submit(wait_cmd, wait_size, signal=[(a_done, 0)])
    second.submit(signal_cmd, signal_size, bos=[(word, WRITE)], wait=[(a_done, 0)])  # BUG: B waits for A
    a_done.wait()  # ends when the job timeout resets the engines
