"""The FUSE operations of a mount: resolve inodes, keep open files by handle.

This is the only place where the FUSE adapter meets the device; promise 6 of the
design (the device core runs without FUSE) holds because everything below an
OpenFile takes plain arguments.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import threading
import time
from collections.abc import Iterable

from emudev import trace
from emudev.fuse import Attr, DirEntry, Entry, Opened, Operations, Request, StatFs
from emudev.fuse.ops import IoctlReply
from emudev.nodes.tree import DeviceFile, Directory, InodeTable, Node, OpenFile, Symlink

log = logging.getLogger("emudev.fs")

_DT = {stat.S_IFDIR: 4, stat.S_IFREG: 8, stat.S_IFLNK: 10}


class NodeFs(Operations):
    def __init__(self, inodes: InodeTable) -> None:
        self.inodes = inodes
        self._open: dict[int, OpenFile] = {}
        self._fh = itertools.count(1)
        self._lock = threading.Lock()
        self._mtime_ns = time.time_ns()

    def attr(self, node: Node) -> Attr:
        t = self._mtime_ns
        return Attr(ino=node.ino, mode=node.mode, size=node.size(), uid=0, gid=0,
                    nlink=2 if isinstance(node, Directory) else 1, atime_ns=t, mtime_ns=t, ctime_ns=t)

    def open_files(self) -> list[OpenFile]:
        with self._lock:
            return list(self._open.values())

    # lookups and attributes

    def lookup(self, req: Request, parent: int, name: bytes) -> Entry:
        directory = self.inodes.get(parent)
        resolver = getattr(directory, "resolve", None)
        node = resolver(req, os.fsdecode(name)) if resolver else self.inodes.child(parent, os.fsdecode(name))
        self.inodes.looked_up(node)
        return Entry(nodeid=node.ino, attr=self.attr(node), entry_timeout=node.entry_timeout)

    def forget(self, nodeid: int, nlookup: int) -> None:
        self.inodes.forget(nodeid, nlookup)

    def readlink(self, req: Request, nodeid: int) -> bytes:
        node = self.inodes.get(nodeid)
        if not isinstance(node, Symlink):
            raise OSError(errno.EINVAL, "not a symlink")
        return os.fsencode(node.readlink(req))

    def getattr(self, req: Request, nodeid: int, fh: int | None) -> Attr:
        return self.attr(self.inodes.get(nodeid))

    def access(self, req: Request, nodeid: int, mask: int) -> None:
        self.inodes.get(nodeid)

    def statfs(self, req: Request, nodeid: int) -> StatFs:
        return StatFs()

    # directories

    def opendir(self, req: Request, nodeid: int, flags: int) -> Opened:
        if not isinstance(self.inodes.get(nodeid), Directory):
            raise OSError(errno.ENOTDIR, "not a directory")
        return Opened(fh=0)

    def readdir(self, req: Request, nodeid: int, fh: int, offset: int) -> Iterable[DirEntry]:
        directory = self.inodes.get(nodeid)
        assert isinstance(directory, Directory)
        parent = directory.parent or directory
        entries = [(".", directory), ("..", parent), *directory.children.items()]
        for index, (name, node) in enumerate(entries[offset:], start=offset + 1):
            yield DirEntry(name=name.encode(), ino=node.ino, type=_DT[stat.S_IFMT(node.mode)], offset=index)

    def releasedir(self, req: Request, nodeid: int, fh: int) -> None:
        """Directory handles carry no state."""

    # files

    def open(self, req: Request, nodeid: int, flags: int) -> Opened:
        node = self.inodes.get(nodeid)
        if not isinstance(node, DeviceFile):
            raise OSError(errno.EISDIR, "is a directory")
        opened = node.open(req, flags)
        fh = next(self._fh)
        with self._lock:
            self._open[fh] = opened
        if (tracer := trace.active) is not None:
            tracer.file_opened(req, node, opened, fh, flags)
        return Opened(fh=fh, direct_io=opened.direct_io, shared_mmap=opened.shared_mmap, keep_cache=opened.keep_cache,
                      passthrough_backing_id=opened.backing_id)

    def _file(self, fh: int) -> OpenFile:
        opened = self._open.get(fh)  # a single dict read needs no lock
        if opened is None:
            raise OSError(errno.EBADF, "unknown file handle")
        return opened

    def read(self, req: Request, nodeid: int, fh: int, offset: int, size: int) -> bytes:
        file = self._file(fh)
        if (tracer := trace.active) is not None:
            return tracer.page_io("read", req, fh, offset, size, lambda: file.read(req, offset, size))
        return file.read(req, offset, size)

    def write(self, req: Request, nodeid: int, fh: int, offset: int, data: memoryview) -> int:
        file = self._file(fh)
        if (tracer := trace.active) is not None:
            return tracer.page_io("write", req, fh, offset, len(data), lambda: file.write(req, offset, data))
        return file.write(req, offset, data)

    def ioctl(self, req: Request, nodeid: int, fh: int, cmd: int, arg: int, in_data: memoryview,
              out_size: int, flags: int) -> IoctlReply:
        opened = self._open.get(fh)  # _file() without the call: ioctls are the hot path
        if opened is None:
            raise OSError(errno.EBADF, "unknown file handle")
        return opened.ioctl(req, cmd, arg, in_data, out_size)

    def poll(self, req: Request, nodeid: int, fh: int, kh: int | None, flags: int, events: int) -> int:
        revents = self._file(fh).poll(req, kh, events)
        if (tracer := trace.active) is not None:
            tracer.polled(req, fh, events, revents)
        return revents

    def flush(self, req: Request, nodeid: int, fh: int, lock_owner: int) -> None:
        """Nothing is buffered per close(); release does the work."""

    def fsync(self, req: Request, nodeid: int, fh: int, datasync: bool) -> None:
        """Nothing is cached in the daemon."""

    def release(self, req: Request, nodeid: int, fh: int, flags: int) -> None:
        with self._lock:
            opened = self._open.pop(fh, None)
        if opened is not None:
            if (tracer := trace.active) is not None:
                tracer.file_released(fh)
            opened.release()
