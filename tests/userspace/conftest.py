"""Fixtures of the compiler tests: a daemon of their own (the checkers are on: races between jobs
and with the CPU, fence order, deadlocks must find nothing), and one device of it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from emudev.testing import MountedEmudev
from userspace.libaccel import Device


@pytest.fixture(scope="module")
def compiler_mount() -> Iterator[MountedEmudev]:
    with MountedEmudev(devices=1) as mount:
        yield mount
        assert not mount.violations(), f"the checkers found violations:\n{mount.violations()}"


@pytest.fixture(scope="module")
def device(compiler_mount: MountedEmudev) -> Iterator[Device]:
    with Device(compiler_mount.node(0)) as dev:
        yield dev
