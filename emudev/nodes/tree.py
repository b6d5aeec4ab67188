"""Nodes of the mounted tree and the inode table that names them.

A node knows its attributes and how to open itself; what an open file does (read,
ioctl, poll) belongs to the object it returns, so device semantics stay out of the
FUSE adapter.
"""

from __future__ import annotations

import errno
import itertools
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from emudev.fuse import IoctlResult, Request

ROOT_INO = 1


class OpenFile:
    """What an open() of a node returns; the defaults are those of a file without the op."""

    direct_io = True
    shared_mmap = False
    keep_cache = False
    backing_id: int | None = None

    def read(self, req: Request, offset: int, size: int) -> bytes:
        raise OSError(errno.EINVAL, "not readable")

    def write(self, req: Request, offset: int, data: memoryview) -> int:
        raise OSError(errno.EINVAL, "not writable")

    def ioctl(self, req: Request, cmd: int, arg: int, in_data: memoryview, out_size: int) -> IoctlResult:
        raise OSError(errno.ENOTTY, "no ioctls")

    def poll(self, req: Request, kh: int | None, events: int) -> int:
        return 0

    def release(self) -> None:
        """Drop what the open held; called once, when the last fd to it is closed."""


@dataclass(eq=False)
class Node:
    """`transient` nodes (per-open device nodes, fd tickets) leave the inode table once
    the kernel has forgotten every lookup of them and they are no longer reachable."""

    name: str
    mode: int
    ino: int = 0
    parent: Directory | None = None
    transient: bool = False
    nlookup: int = 0
    entry_timeout: float = 1.0

    def size(self) -> int:
        return 0


@dataclass(eq=False)
class Directory(Node):
    mode: int = stat.S_IFDIR | 0o755
    children: dict[str, Node] = field(default_factory=dict)


@dataclass(eq=False)
class DeviceFile(Node):
    """A regular file whose opens are served by `opener` (a device node)."""

    mode: int = stat.S_IFREG | 0o666
    opener: Callable[[Request, int], OpenFile] | None = None
    file_size: int = 0
    target: object = None  # the object (dma-buf, syncobj, sync_file) a ticket's file stands for

    def open(self, req: Request, flags: int) -> OpenFile:
        assert self.opener is not None
        return self.opener(req, flags)

    def size(self) -> int:
        return self.file_size


@dataclass(eq=False)
class Symlink(Node):
    """A link whose target is computed for each READLINK, i.e. for each path walk."""

    mode: int = stat.S_IFLNK | 0o777
    target: Callable[[Request], str] | None = None

    def readlink(self, req: Request) -> str:
        assert self.target is not None
        return self.target(req)


class _Snapshot(OpenFile):
    """A debugfs-style read-only text: rendered once at open so reads see one consistent state."""

    def __init__(self, text: str) -> None:
        self.data = text.encode()

    def read(self, req: Request, offset: int, size: int) -> bytes:
        return self.data[offset:offset + size]


def text_file(name: str, render: Callable[[], str]) -> DeviceFile:
    return DeviceFile(name=name, mode=stat.S_IFREG | 0o444, opener=lambda req, flags: _Snapshot(render()))


class InodeTable:
    """Assigns inode numbers and resolves them; nodes can be added while the mount is live."""

    def __init__(self) -> None:
        self._next = itertools.count(ROOT_INO + 1)
        self._lock = threading.Lock()
        self.root = Directory(name="", ino=ROOT_INO)
        self._nodes: dict[int, Node] = {ROOT_INO: self.root}
        self._hidden: dict[int, dict[str, Node]] = {}
        # Tells the kernel a name is gone (FUSE_NOTIFY_INVAL_ENTRY) once the mount is live.
        self.on_unlink: Callable[[int, str], None] | None = None

    def add(self, parent: Directory, node: Node, *, listed: bool = True) -> Node:
        """Give `node` an inode under `parent`; unlisted nodes are found by lookup only."""
        with self._lock:
            node.ino = next(self._next)
            node.parent = parent
            if listed:
                parent.children[node.name] = node
            else:
                self._hidden.setdefault(parent.ino, {})[node.name] = node
            self._nodes[node.ino] = node
        return node

    def unlink(self, node: Node) -> None:
        """Make `node` unreachable by name; its inode lives on until the kernel forgets it,
        which it is told to do by dropping the name from its dentry cache."""
        with self._lock:
            if node.parent is not None:
                for names in (node.parent.children, self._hidden.get(node.parent.ino, {})):
                    if names.get(node.name) is node:
                        del names[node.name]
            if node.transient and node.nlookup == 0:
                self._nodes.pop(node.ino, None)
        if node.parent is not None and self.on_unlink is not None:
            self.on_unlink(node.parent.ino, node.name)

    def looked_up(self, node: Node) -> None:
        with self._lock:
            node.nlookup += 1

    def forget(self, ino: int, count: int) -> None:
        """The kernel dropped `count` lookups; a transient node nobody can reach then goes."""
        with self._lock:
            node = self._nodes.get(ino)
            if node is None:
                return
            node.nlookup = max(0, node.nlookup - count)
            if node.transient and node.nlookup == 0 and not self._reachable(node):
                del self._nodes[ino]

    def _reachable(self, node: Node) -> bool:
        parent = node.parent
        if parent is None:
            return False
        return (parent.children.get(node.name) is node
                or self._hidden.get(parent.ino, {}).get(node.name) is node)

    def __len__(self) -> int:
        with self._lock:
            return len(self._nodes)

    def mkdir(self, parent: Directory, name: str) -> Directory:
        existing = parent.children.get(name)
        if isinstance(existing, Directory):
            return existing
        node = self.add(parent, Directory(name=name))
        assert isinstance(node, Directory)
        return node

    def get(self, ino: int) -> Node:
        node = self._nodes.get(ino)
        if node is None:
            raise OSError(errno.ENOENT, "no such node")
        return node

    def child(self, parent_ino: int, name: str) -> Node:
        parent = self.get(parent_ino)
        if not isinstance(parent, Directory):
            raise OSError(errno.ENOTDIR, "not a directory")
        with self._lock:
            node = parent.children.get(name) or self._hidden.get(parent_ino, {}).get(name)
        if node is None:
            raise OSError(errno.ENOENT, "no such node")
        return node
