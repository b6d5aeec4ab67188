"""Tracing the requests of a mount: what `emudev trace`, `record`, `replay` and the uapi coverage gate see.

Off by default. The device calls the tracer only through `active`, which is set while
someone reads MOUNT/debug/trace or while the daemon records uapi coverage
(`emudev mount --coverage`): a daemon nobody traces pays one attribute test per request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emudev.trace.tracer import Tracer

active: Tracer | None = None
