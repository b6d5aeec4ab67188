"""Importing descriptors of the mount's own files never makes the daemon wait on itself.

The daemon learns what a caller's fd is from /proc/<pid>/fdinfo; taking a copy instead
would mean closing a file of its own mount, a FLUSH only its (here: single, busy) worker
could answer.
"""

from __future__ import annotations

import os
import threading

import pytest

from userspace.libaccel import Device, Syncobj


@pytest.mark.emudev(args=("--workers", "1"))
def test_imports_with_a_single_worker_do_not_hang(emudev_mount):
    errors: list[BaseException] = []

    def imports() -> None:
        try:
            with Device(emudev_mount.node(0)) as dev, dev.create_bo(4096) as bo, bo.export() as buf:
                assert dev.import_dmabuf(buf.fd).handle == bo.handle
                with dev.create_syncobj(signaled=True) as syncobj:
                    fd = syncobj.export()
                    Syncobj.import_fd(dev, fd).destroy()
                    os.close(fd)
                    with syncobj.export_sync_file() as sync_file:
                        syncobj.import_sync_file(sync_file)
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=imports, daemon=True)
    thread.start()
    thread.join(15)
    assert not thread.is_alive(), "an fd import hung the daemon"
    assert not errors, errors
