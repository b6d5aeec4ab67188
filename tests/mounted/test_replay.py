"""`emudev record` a libaccel session, `emudev replay` it on a fresh device: no divergence;
tamper with one recorded result and the replay names that request.

The session runs in its own process (record starts it once tracing is on) on the shared
mount, so its tickets, offsets and fence names differ from the fresh replay device's: the
replay has to map them, not just repeat them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from emudev.uapi import defs

SESSION = r'''
import ctypes, errno, struct, sys
import numpy as np
from emudev.uapi import defs
from userspace.libaccel import WRITE, CommandStream, Context, Device, Tensor, abs_timeout, upload_stream

def fails(fn, expected):
    try:
        fn()
    except OSError as e:
        assert e.errno == expected, (e, expected)
    else:
        raise AssertionError(f"no {errno.errorcode[expected]}")

with Device(sys.argv[1]) as dev:
    dev.version()
    bo = dev.create_bo(4096)
    with bo.export() as dmabuf:
        again = dev.import_dmabuf(dmabuf.fd)
        assert again.handle == bo.handle
        dmabuf.sync(defs.DMA_BUF_SYNC_START | defs.DMA_BUF_SYNC_READ)
    a, b = dev.create_syncobj(), dev.create_syncobj()
    a.signal()
    a.wait(timeout_ns=abs_timeout(5))
    fails(lambda: b.wait(timeout_ns=0), errno.EINVAL)
    fails(lambda: dev.ioctl("DRM_IOCTL_EMUDEV_BO_INFO", defs.drm_emudev_bo_info(handle=999)), errno.ENOENT)
    fails(lambda: dev.ioctl("DRM_IOCTL_EMUDEV_BO_CREATE", defs.drm_emudev_bo_create(size=0)), errno.EINVAL)
    fails(lambda: dev.ioctl("DRM_IOCTL_SYNCOBJ_WAIT", defs.drm_syncobj_wait(flags=0x100)), errno.EINVAL)
    with Context(dev) as ctx:
        one = struct.unpack("<I", struct.pack("<f", 1.0))[0]
        stream = CommandStream().packet("BDMA", op=defs.DRM_EMUDEV_BDMA_FILL, fill_value=one,
                                        dst=Tensor.of(bo, (8,), np.float32))
        cmd, size = upload_stream(dev, stream)
        job = ctx.submit(cmd, size, bos=[(bo, WRITE)], signal=[(b, 0)])
        b.wait(timeout_ns=abs_timeout(5))
        assert job.status().done
        with b.export_sync_file() as sync_file:
            assert sync_file.info()[1] == 1
        fails(lambda: dev.ioctl("DRM_IOCTL_EMUDEV_SUBMIT", defs.drm_emudev_submit(ctx_id=77)), errno.ENOENT)
        cmd.close()
    bo.close()
'''


def emudev(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emudev", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def recording(emudev_shared_mount, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("replay")
    script, path = directory / "session.py", directory / "session.jsonl"
    script.write_text(SESSION)
    done = emudev("record", emudev_shared_mount.mountpoint, "-o", str(path), "--", sys.executable, str(script),
                  emudev_shared_mount.node(0))
    assert done.returncode == 0, done.stderr
    return path


def ioctls(path: Path) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return sorted((e for e in events if e["type"] == "ioctl"), key=lambda e: e["seq"])


def test_the_recording_holds_what_a_replay_needs(recording: Path) -> None:
    calls = ioctls(recording)
    names = [e["ioctl"] for e in calls]
    for name in ("DRM_IOCTL_EMUDEV_BO_CREATE", "DRM_IOCTL_PRIME_HANDLE_TO_FD", "DRM_IOCTL_PRIME_FD_TO_HANDLE",
                 "DMA_BUF_IOCTL_SYNC", "DRM_IOCTL_SYNCOBJ_SIGNAL", "DRM_IOCTL_EMUDEV_SUBMIT", "SYNC_IOC_FILE_INFO"):
        assert name in names
    assert {e["errno"] for e in calls} >= {None, "ENOENT", "EINVAL"}
    submit = next(e for e in calls if e["ioctl"] == "DRM_IOCTL_EMUDEV_SUBMIT" and e["result"] == 0)
    assert submit["raw"]["stream"] and submit["raw"]["reads"]
    imported = next(e for e in calls if e["ioctl"] == "DRM_IOCTL_PRIME_FD_TO_HANDLE")
    assert imported["raw"]["fds"] and imported["raw"]["fds"][0][1] is not None


def test_replay_without_divergence(recording: Path) -> None:
    done = emudev("replay", str(recording))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == f"no divergence in {len(ioctls(recording))} requests"


def _tamper_result(event: dict[str, Any]) -> str:
    event["result"] = -22 if event["result"] == 0 else 0
    return "result"


def _tamper_out(event: dict[str, Any]) -> str:
    out = defs.drm_emudev_bo_create.from_bytes(bytes.fromhex(event["raw"]["out"]))
    out.size = 12288
    event["raw"]["out"] = bytes(out).hex()
    return "out field size: recorded 12288, replayed 4096"


@pytest.mark.parametrize(("pick", "tamper"), [
    (lambda calls: next(i for i, e in enumerate(calls) if e["ioctl"] == "DRM_IOCTL_SYNCOBJ_SIGNAL"), _tamper_result),
    (lambda calls: next(i for i, e in enumerate(calls) if e["errno"] == "ENOENT"), _tamper_result),
    (lambda calls: next(i for i, e in enumerate(calls) if e["ioctl"] == "DRM_IOCTL_EMUDEV_BO_CREATE"), _tamper_out),
], ids=["a success", "an errno", "an out field"])
def test_a_tampered_result_is_reported_at_its_request(recording: Path, tmp_path: Path, pick, tamper) -> None:
    lines = [json.loads(line) for line in recording.read_text().splitlines()]
    calls = sorted((e for e in lines if e["type"] == "ioctl"), key=lambda e: e["seq"])
    index = pick(calls)
    what = tamper(calls[index])
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("".join(json.dumps(e) + "\n" for e in lines))
    done = emudev("replay", str(tampered))
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith(f"divergence at request {index} ({calls[index]['ioctl']}, "), done.stdout
    assert what in done.stdout
