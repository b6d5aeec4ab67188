"""Attaching a FUSE connection to a directory, and detaching it.

Root mounts with mount(2) directly and keeps the /dev/fuse descriptor it
opened. Anyone else goes through the setuid ``fusermount3``, which opens the
device, mounts, and hands the descriptor back over the unix socket named by
``_FUSE_COMMFD`` (SCM_RIGHTS), as libfuse does. Failures become ``MountError``
with a sentence that says what to do about them.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import socket
import stat
import subprocess

_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MNT_DETACH = 0x2
_FUSE_DEVICE = "/dev/fuse"
_FUSERMOUNT = "fusermount3"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class MountError(OSError):
    """Mounting or unmounting failed; ``str()`` says why and what to do, ``errno`` is set."""

    def __str__(self) -> str:
        return str(self.strerror)


def is_mounted(mountpoint: str) -> bool:
    """Whether something is mounted exactly at ``mountpoint``, per /proc/self/mountinfo."""
    target = os.fsencode(os.path.realpath(mountpoint))
    with open("/proc/self/mountinfo", "rb") as f:
        return any(_unescape(line.split(b" ")[4]) == target for line in f)


def _unescape(field: bytes) -> bytes:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes (\\040)."""
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), field)


def mount(mountpoint: str, *, fsname: str = "emudev", subtype: str = "emudev", allow_other: bool = True,
          default_permissions: bool = True, use_fusermount: bool | None = None) -> int:
    """Mount a new FUSE connection on ``mountpoint`` and return its /dev/fuse descriptor.

    ``use_fusermount`` defaults to "not root"; root can force it to test the
    unprivileged path.
    """
    path = os.path.realpath(mountpoint)
    _check_mountpoint(path)
    flags = ["allow_other"] * allow_other + ["default_permissions"] * default_permissions
    if _through_fusermount(use_fusermount):
        return _mount_with_fusermount(path, [f"fsname={fsname}", f"subtype={subtype}", *flags])
    return _mount_with_syscall(path, fsname, subtype, flags)


def unmount(mountpoint: str, *, lazy: bool = False, use_fusermount: bool | None = None) -> None:
    """Detach the mount; ``lazy`` detaches it now even while files on it are still open."""
    path = os.path.realpath(mountpoint)
    if _through_fusermount(use_fusermount):
        _run_fusermount(["-u", *(["-z"] * lazy), "--", path], f"unmounting {path}")
        return
    if _libc.umount2(os.fsencode(path), _MNT_DETACH if lazy else 0) != 0:
        raise _umount_error(ctypes.get_errno(), path)


def _through_fusermount(use_fusermount: bool | None) -> bool:
    return os.geteuid() != 0 if use_fusermount is None else use_fusermount


def _check_mountpoint(path: str) -> None:
    if is_mounted(path):
        raise MountError(errno.EBUSY, f"{path} is already a mount point (another daemon, or a stale mount "
                                      f"left by one that died): unmount it first, e.g. umount -l {path}")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MountError(errno.ENOENT, f"mountpoint {path} does not exist: create the directory first") \
            from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(errno.ENOTDIR, f"mountpoint {path} is not a directory")


def _open_device() -> int:
    try:
        return os.open(_FUSE_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise MountError(errno.ENOENT, f"{_FUSE_DEVICE} does not exist: load the fuse module "
                                       f"(modprobe fuse), or pass the device into the container") from None
    except PermissionError as e:
        raise MountError(e.errno, f"permission denied opening {_FUSE_DEVICE}: run as root, or mount "
                                  f"through {_FUSERMOUNT} as an ordinary user") from None
    except OSError as e:
        raise MountError(e.errno, f"{_FUSE_DEVICE} is unusable ({e.strerror}): the kernel may lack FUSE "
                                  f"support") from None


def _mount_with_syscall(path: str, fsname: str, subtype: str, flags: list[str]) -> int:
    fd = _open_device()
    data = ",".join([f"fd={fd}", "rootmode=40000", f"user_id={os.getuid()}", f"group_id={os.getgid()}",
                     *flags])
    fstype = f"fuse.{subtype}" if subtype else "fuse"
    if _libc.mount(fsname.encode(), os.fsencode(path), fstype.encode(), _MS_NOSUID | _MS_NODEV,
                   data.encode()) == 0:
        return fd
    err = ctypes.get_errno()
    os.close(fd)
    if err == errno.EPERM:
        raise MountError(err, f"mounting {path} needs CAP_SYS_ADMIN: run as root, or use {_FUSERMOUNT}")
    raise MountError(err, f"mount(2) of {path} failed: {os.strerror(err)}")


def _fusermount() -> str:
    found = shutil.which(_FUSERMOUNT)
    if found is None:
        raise MountError(errno.ENOENT, f"{_FUSERMOUNT} not found in PATH: install the fuse3 package")
    return found


def _mount_with_fusermount(path: str, options: list[str]) -> int:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours:
        with theirs:
            proc = subprocess.Popen(
                [_fusermount(), "-o", ",".join(options), "--", path],
                env={**os.environ, "_FUSE_COMMFD": str(theirs.fileno())}, pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, fds, _, _ = socket.recv_fds(ours, 1, 1, socket.MSG_CMSG_CLOEXEC)
    _, stderr = proc.communicate()
    if proc.returncode != 0 or not fds:
        for fd in fds:
            os.close(fd)
        raise MountError(errno.EIO, f"{_FUSERMOUNT} could not mount {path}: {stderr.decode().strip()}")
    return fds[0]


def _run_fusermount(args: list[str], what: str) -> None:
    done = subprocess.run([_fusermount(), *args], stdin=subprocess.DEVNULL, capture_output=True)
    if done.returncode != 0:
        raise MountError(errno.EIO, f"{what} failed: {done.stderr.decode().strip()}")


def _umount_error(err: int, path: str) -> MountError:
    messages = {
        errno.EINVAL: f"{path} is not a mount point",
        errno.ENOENT: f"{path} does not exist",
        errno.EBUSY: f"{path} is busy (open files or a working directory on it): close them, "
                     f"or unmount lazily",
        errno.EPERM: f"unmounting {path} needs CAP_SYS_ADMIN: run as root, or use {_FUSERMOUNT} -u",
    }
    return MountError(err, messages.get(err, f"umount2 of {path} failed: {os.strerror(err)}"))


def _mountinfo(mountpoint: str) -> list[bytes]:
    """The fields of the newest /proc/self/mountinfo line of `mountpoint`.

    `mountpoint` must be absolute and free of symlinks: resolving it here would stat the
    mount, a request that the daemon asking may not be able to serve yet."""
    target = os.fsencode(mountpoint)
    with open("/proc/self/mountinfo", "rb") as f:
        lines = [line.split(b" ") for line in f if _unescape(line.split(b" ")[4]) == target]
    if not lines:
        raise MountError(errno.ENOENT, f"{mountpoint} is not mounted")
    return lines[-1]


def mount_id(mountpoint: str) -> int:
    """The mount's id as /proc/*/fdinfo reports it (mnt_id) for files opened through it."""
    return int(_mountinfo(mountpoint)[0])


def mount_device(mountpoint: str) -> int:
    """The st_dev of files on the mount, without a stat() the daemon would have to answer."""
    major, minor = _mountinfo(mountpoint)[2].split(b":")
    return os.makedev(int(major), int(minor))
