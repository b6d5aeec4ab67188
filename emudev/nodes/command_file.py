"""Files whose ioctls belong to one non-DRM family: dma-buf, sync_file, sw_sync."""

from __future__ import annotations

from typing import ClassVar

from emudev.drm.ioctl import CommandTable
from emudev.drm.usermem import UserMemory
from emudev.fuse import Deferred, IoctlResult, Request
from emudev.nodes.defer import PendingWaits, defer
from emudev.nodes.tree import OpenFile


class CommandFile(OpenFile):
    """Dispatches ioctls through the family's CommandTable (built once, when first used,
    after every handler module registered); a handler may finish later."""

    family: ClassVar[str]
    _tables: ClassVar[dict[str, CommandTable]] = {}

    def pending_waits(self) -> PendingWaits | None:
        """Where a deferred ioctl of this file is tracked, so that unplugging ends it."""
        return None

    def ioctl(self, req: Request, cmd: int, arg: int, in_data: memoryview, out_size: int) -> IoctlResult | Deferred:
        table = CommandFile._tables.get(self.family)
        if table is None:
            table = CommandFile._tables[self.family] = CommandTable(self.family)
        outcome = table.dispatch(self, cmd, arg, in_data, UserMemory(req.pid))
        if outcome.later is None:
            return IoctlResult(outcome.result, outcome.data)
        return defer(req, outcome, self.pending_waits())
