"""Fixtures shared by the mounted-node tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from emudev.testing import MountedEmudev
from userspace.libaccel import Device


@pytest.fixture
def dev(emudev_shared_mount: MountedEmudev) -> Iterator[Device]:
    """accel0 of the session's shared daemon, opened for one test (a file of its own: its handles,
    contexts and syncobjs end with the test)."""
    with Device(emudev_shared_mount.node(0)) as d:
        yield d
