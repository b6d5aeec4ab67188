"""Events as `emudev trace` prints them: filters, and one readable line (or JSON) per event."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

Fields = dict[str, Any]


@dataclass(frozen=True)
class Filter:
    """Which events to keep; empty sets keep everything. "lost" markers always pass."""

    pids: frozenset[int] = frozenset()
    clients: frozenset[int] = frozenset()
    ioctls: tuple[str, ...] = ()
    errors_only: bool = False
    _names: frozenset[str] = field(init=False, default=frozenset())

    def __post_init__(self) -> None:
        object.__setattr__(self, "_names", frozenset(name.upper() for name in self.ioctls))

    def __call__(self, event: Fields) -> bool:
        if event["type"] == "lost":
            return True
        if self.pids and not {event.get("pid"), event.get("tgid")} & self.pids:
            return False
        if self.clients and event.get("client") not in self.clients:
            return False
        if self._names and not (event["type"] == "ioctl" and _named(event.get("ioctl"), self._names)):
            return False
        return not self.errors_only or bool(event.get("errno"))


def _named(ioctl: str | None, names: frozenset[str]) -> bool:
    """A full name (DRM_IOCTL_EMUDEV_SUBMIT) or its tail (SUBMIT, EMUDEV_SUBMIT) matches."""
    return ioctl is not None and any(ioctl == name or ioctl.endswith("_" + name) for name in names)


def json_line(event: Fields) -> str:
    """The event without what only a replay needs."""
    return json.dumps({k: v for k, v in event.items() if k != "raw"}, separators=(",", ":"))


def _value(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, str) and (not value or " " in value):
        return repr(value)
    return str(value)


def _result(event: Fields) -> str:
    if event.get("errno"):
        code = -event["result"]
        return f"= -1 {event['errno']} ({os.strerror(code)})"
    return f"= {event['result']}"


def text_lines(event: Fields, t0: float) -> list[str]:
    """One line per event, and indented lines for pointer contents and SUBMIT's packets."""
    kind = event["type"]
    if kind == "lost":
        return [f"*** lost {event['count']} events: the reader fell behind ***"]
    head = f"{event['t'] - t0:+11.6f} {event['comm']}({event['pid']}) "
    where = event.get("file") or "?"
    if kind == "ioctl":
        name = event["ioctl"] or f"ioctl {event['cmd']}"
        line = f"{head}{where} {name}{_value(event.get('args', {}))} {_result(event)} <{event['us']}us>"
        if event.get("out"):
            line += f" → {_value(event['out'])}"
        lines = [line]
        lines += [f"    {k} → {_value(v)}" for k, v in event.get("ptr", {}).items()]
        lines += [f"    {k} ← {_value(v)}" for k, v in event.get("ptr_out", {}).items()]
        packets = event.get("packets")
        if isinstance(packets, str):
            lines.append(f"    stream {packets}")
        else:
            lines += [f"    packet {i}: {p}" for i, p in enumerate(packets or ())]
        return lines
    if kind in ("read", "write"):
        # A page fault or write-back of a mapping, or the caller's read(2)/write(2), which may sleep.
        name = kind if event.get("page_cache", True) else f"{kind}(2)"
        result = (f"= -1 {event['errno']}" if event.get("errno")
                  else "= ? (blocked)" if event.get("blocked") else "= 0")
        return [f"{head}{where} {name} offset={event['offset']:#x} size={event['size']} {result} <{event['us']}us>"]
    if kind == "poll":
        return [f"{head}{where} poll events={event['events']} revents={event['revents']}"]
    detail = f" ticket {event['ticket']}" if "ticket" in event else ""
    return [f"{head}{kind} {where}{detail} [fh {event['fh']}]"]


def render(events: Iterable[Fields], as_json: bool) -> Iterable[str]:
    t0: float | None = None
    for event in events:
        if as_json:
            yield json_line(event)
            continue
        if t0 is None and "t" in event:
            t0 = event["t"]
        yield from text_lines(event, t0 or 0.0)
