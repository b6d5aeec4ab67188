"""copy_{from,to}_user on another process: what process_vm_readv/writev reach, and EFAULT where they cannot."""

from __future__ import annotations

import errno
import subprocess
import sys
from collections.abc import Iterator

import pytest

from emudev.drm.usermem import SCRATCH_SIZE, UserMemory

CHILD = """
import ctypes, sys
buf = ctypes.create_string_buffer(bytes(range(256)) * 64)
print(ctypes.addressof(buf), len(buf.raw), flush=True)
sys.stdin.read()
"""


@pytest.fixture
def child() -> Iterator[tuple[UserMemory, int, int]]:
    """A process holding a 16 KiB buffer of a known pattern: its memory, the address and size."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        address, size = (int(v) for v in proc.stdout.readline().split())
        yield UserMemory(proc.pid), address, size
    finally:
        proc.kill()
        proc.wait()


PATTERN = bytes(range(256)) * 64


@pytest.mark.parametrize("size", [1, 16, SCRATCH_SIZE, SCRATCH_SIZE + 1, 3 * SCRATCH_SIZE])
def test_reads_and_writes_of_every_size_reach_the_caller(child, size):
    memory, address, _ = child
    assert memory.read(address + 5, size) == PATTERN[5: 5 + size]
    data = bytes((i * 7) & 0xFF for i in range(size))
    memory.write(address + 3, data)
    assert memory.read(address, size + 6) == PATTERN[:3] + data + PATTERN[3 + size: 6 + size]


@pytest.mark.parametrize("size", [8, SCRATCH_SIZE + 8])
def test_a_range_running_off_the_mapping_is_efault_and_writes_nothing_past_it(child, size):
    memory, address, _ = child
    with pytest.raises(OSError) as caught:
        memory.read(0x10, size)
    assert caught.value.errno == errno.EFAULT
    with pytest.raises(OSError) as caught:
        memory.write(0x10, b"x" * size)
    assert caught.value.errno == errno.EFAULT
    assert memory.read(address, 64) == PATTERN[:64]


def test_a_null_or_wrapping_address_is_efault_without_a_system_call(child):
    memory, _, _ = child
    for address, size in ((0, 8), (2**64 - 4, 8)):
        with pytest.raises(OSError) as caught:
            memory.read(address, size)
        assert caught.value.errno == errno.EFAULT


def test_a_process_that_is_gone_is_esrch():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with pytest.raises(OSError) as caught:
        UserMemory(proc.pid).read(0x1000, 8)
    assert caught.value.errno == errno.ESRCH
