"""The text form of page and read/write events in `emudev trace`."""

from __future__ import annotations

import pytest

from emudev.trace.text import text_lines

BASE = {"t": 1.5, "comm": "client", "pid": 7, "file": "accel0/1", "offset": 0x100000000, "size": 4096,
        "us": 3.0}


@pytest.mark.parametrize(("event", "shown"), [
    ({"type": "read", "page_cache": True, "errno": None}, "read offset=0x100000000 size=4096 = 0"),
    ({"type": "write", "page_cache": True, "errno": None}, "write offset=0x100000000 size=4096 = 0"),
    ({"type": "read", "page_cache": False, "errno": None, "blocked": True},
     "read(2) offset=0x100000000 size=4096 = ? (blocked)"),
    ({"type": "read", "page_cache": False, "errno": "EAGAIN"}, "read(2) offset=0x100000000 size=4096 = -1 EAGAIN"),
    ({"type": "write", "page_cache": False, "errno": "EINVAL"},
     "write(2) offset=0x100000000 size=4096 = -1 EINVAL"),
])
def test_faults_and_write_back_are_told_from_the_callers_read_and_write(event, shown):
    (line,) = text_lines({**BASE, **event}, t0=1.0)
    assert line == f"  +0.500000 client(7) accel0/1 {shown} <3.0us>"
