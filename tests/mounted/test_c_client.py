"""A C program built against the generated header uses the node like a kernel driver's."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bo_client(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    binary = tmp_path_factory.mktemp("c") / "bo_client"
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2",
                    f"-I{REPO / 'include/uapi/drm'}", "-I/usr/include/libdrm",
                    str(Path(__file__).parent / "c" / "bo_client.c"), "-o", str(binary)], check=True)
    return binary


def test_c_client_maps_through_dmabuf_and_device_fd(bo_client, emudev_shared_mount):
    result = subprocess.run([str(bo_client), emudev_shared_mount.node(0)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
