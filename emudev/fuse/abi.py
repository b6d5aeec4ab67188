"""The FUSE wire ABI: opcodes, flags and struct layouts of ``include/uapi/linux/fuse.h``.

Only what this layer speaks is declared, under the kernel's names (without the
``FUSE_`` prefix where it would stutter). Layouts are little-endian ``struct``
formats because the daemon and the kernel always share a machine; each is
checked against the size the kernel header gives, so a typo fails at import.
"""

from __future__ import annotations

import enum
import struct

KERNEL_VERSION = 7
# 7.40 brought FOPEN_PASSTHROUGH/backing_id and max_stack_depth, the newest thing spoken here.
KERNEL_MINOR_VERSION = 40
# 7.31 is the oldest minor whose structs (max_pages in init_out, fuse_attr.flags) match ours.
MIN_KERNEL_MINOR_VERSION = 31

ROOT_ID = 1


class Opcode(enum.IntEnum):
    LOOKUP = 1
    FORGET = 2
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41
    BATCH_FORGET = 42
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48
    REMOVEMAPPING = 49
    SYNCFS = 50
    TMPFILE = 51
    STATX = 52


def opcode_name(opcode: int) -> str:
    try:
        return Opcode(opcode).name
    except ValueError:
        return str(opcode)


class NotifyCode(enum.IntEnum):
    POLL = 1
    INVAL_INODE = 2
    INVAL_ENTRY = 3
    STORE = 4
    RETRIEVE = 5
    DELETE = 6


# INIT flags. Bits 32..63 travel in init_in/init_out.flags2 when INIT_EXT is set.
ASYNC_READ = 1 << 0
HAS_IOCTL_DIR = 1 << 11
WRITEBACK_CACHE = 1 << 16
PARALLEL_DIROPS = 1 << 18
MAX_PAGES = 1 << 22
INIT_EXT = 1 << 30
DIRECT_IO_ALLOW_MMAP = 1 << 36
PASSTHROUGH = 1 << 37

# fuse_open_out.open_flags
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_NONSEEKABLE = 1 << 2
FOPEN_PASSTHROUGH = 1 << 7

# fuse_read_in.read_flags, fuse_write_in.write_flags: the kernel names a lock owner only for
# read(2)/write(2); page-cache fills never do, and write-back says WRITE_CACHE.
READ_LOCKOWNER = 1 << 1
WRITE_CACHE = 1 << 0

GETATTR_FH = 1 << 0
FSYNC_FDATASYNC = 1 << 0
POLL_SCHEDULE_NOTIFY = 1 << 0

# fuse_ioctl_in.flags, handed to Operations.ioctl as ``flags``
IOCTL_COMPAT = 1 << 0
IOCTL_32BIT = 1 << 3
IOCTL_DIR = 1 << 4


def _ioc(direction: int, magic: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (magic << 8) | nr


_IOC_WRITE = 1
DEV_IOC_MAGIC = 229
DEV_IOC_BACKING_OPEN = _ioc(_IOC_WRITE, DEV_IOC_MAGIC, 1, 16)
DEV_IOC_BACKING_CLOSE = _ioc(_IOC_WRITE, DEV_IOC_MAGIC, 2, 4)


def _layout(fmt: str, size: int) -> struct.Struct:
    layout = struct.Struct("<" + fmt)
    if layout.size != size:
        raise AssertionError(f"layout {fmt!r} is {layout.size} bytes, fuse.h says {size}")
    return layout


_ATTR = "QQQQQQIIIIIIIIII"  # ino size blocks atime mtime ctime *nsec mode nlink uid gid rdev blksize flags

IN_HEADER = _layout("IIQQIIIHH", 40)  # len opcode unique nodeid uid gid pid total_extlen padding
OUT_HEADER = _layout("IiQ", 16)  # len error unique

INIT_IN = _layout("IIII", 16)  # major minor max_readahead flags
INIT_IN_FLAGS2 = _layout("I", 4)  # follows INIT_IN when the kernel sets INIT_EXT
INIT_OUT = _layout("IIIIHHIIHHII24x", 64)
ENTRY_OUT = _layout("QQQQII" + _ATTR, 128)  # nodeid generation entry_valid attr_valid *_nsec attr
ATTR_OUT = _layout("QII" + _ATTR, 104)  # attr_valid attr_valid_nsec dummy attr
GETATTR_IN = _layout("IIQ", 16)  # getattr_flags dummy fh
FORGET_IN = _layout("Q", 8)  # nlookup
BATCH_FORGET_IN = _layout("II", 8)  # count dummy
FORGET_ONE = _layout("QQ", 16)  # nodeid nlookup
OPEN_IN = _layout("II", 8)  # flags open_flags
OPEN_OUT = _layout("QIi", 16)  # fh open_flags backing_id
RELEASE_IN = _layout("QIIQ", 24)  # fh flags release_flags lock_owner
FLUSH_IN = _layout("QIIQ", 24)  # fh unused padding lock_owner
FSYNC_IN = _layout("QII", 16)  # fh fsync_flags padding
READ_IN = _layout("QQIIQII", 40)  # fh offset size read_flags lock_owner flags padding
WRITE_IN = _layout("QQIIQII", 40)  # fh offset size write_flags lock_owner flags padding
WRITE_OUT = _layout("II", 8)  # size padding
STATFS_OUT = _layout("QQQQQIII28x", 80)  # blocks bfree bavail files ffree bsize namelen frsize
ACCESS_IN = _layout("II", 8)  # mask padding
INTERRUPT_IN = _layout("Q", 8)  # unique
IOCTL_IN = _layout("QIIQII", 32)  # fh flags cmd arg in_size out_size
IOCTL_OUT = _layout("iIII", 16)  # result flags in_iovs out_iovs
POLL_IN = _layout("QQII", 24)  # fh kh flags events
POLL_OUT = _layout("II", 8)  # revents padding
DIRENT = _layout("QQII", 24)  # ino off namelen type, then the name padded to 8 bytes

NOTIFY_POLL_WAKEUP_OUT = _layout("Q", 8)  # kh
NOTIFY_INVAL_INODE_OUT = _layout("Qqq", 24)  # ino off len
NOTIFY_STORE_OUT = _layout("QQII", 24)  # nodeid offset size padding
NOTIFY_INVAL_ENTRY_OUT = _layout("QII", 16)  # parent namelen flags

BACKING_MAP = _layout("iIQ", 16)  # fd flags padding
