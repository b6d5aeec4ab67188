"""The one place libaccel enters the kernel (or emudev): drmIoctl() in Python."""

from __future__ import annotations

import errno
import fcntl
import os

from emudev.uapi.types import IoctlSpec, UapiStruct


def drm_ioctl(fd: int, spec: IoctlSpec, args: UapiStruct) -> int:
    """Issue `spec` with `args` updated in place; retry EINTR/EAGAIN as drmIoctl() does.

    Every DRM ioctl is restartable with unchanged arguments (waits take absolute
    timeouts), so retrying is always safe. Failures raise OSError naming the ioctl.
    """
    while True:
        try:
            return fcntl.ioctl(fd, spec.cmd, args, True)
        except InterruptedError:
            continue
        except BlockingIOError:
            continue
        except OSError as e:
            code = e.errno or errno.EIO
            raise OSError(code, f"{spec.name}: {os.strerror(code)}") from None
