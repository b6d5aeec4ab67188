"""A thread of its own for the notifications that can make the kernel call back into the daemon.

INVAL_INODE may have to write dirty pages back and STORE may need to read
around the stored range: both can send FUSE requests that only this daemon
answers, and the kernel holds the writer until they are done. Written from a
worker, with every other worker busy, that is a deadlock; written from here,
the workers stay free to answer.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from emudev.fuse.request import Buffer, write_message

log = logging.getLogger("emudev.fuse")


class _Job:
    __slots__ = ("done", "error", "iov", "then")

    def __init__(self, iov: list[Buffer], wait: bool, then: Callable[[], None] | None) -> None:
        self.iov = iov
        self.done = threading.Event() if wait else None
        self.error: OSError | None = None
        self.then = then


class Notifier:
    """Writes queued notification messages to ``fd`` in order, on a thread started on first use."""

    def __init__(self, fd: int, may_block: Callable[[], bool]) -> None:
        self._fd = fd
        self._may_block = may_block
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def send(self, iov: list[Buffer], *, wait: bool, then: Callable[[], None] | None = None) -> None:
        """Queue one message; with ``wait``, return once the kernel took it (raising its error).

        ``then`` runs on the notifier thread once the kernel is done with the message,
        which lets a worker defer a reply until, say, dirty pages were written back.
        """
        if wait and not self._may_block():
            raise RuntimeError("a FUSE worker cannot wait for a notification: the kernel may need "
                               "that worker to answer the requests the notification causes")
        job = _Job(iov, wait, then)
        self._start()
        self._queue.put(job)
        if job.done is not None:
            job.done.wait()
            if job.error is not None:
                raise job.error

    def close(self) -> None:
        """Stop after the messages already queued; they are still written."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fuse-notifier", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                write_message(self._fd, job.iov)
            except OSError as e:
                job.error = e
                if job.done is None:
                    log.warning("notification not delivered: %s", e)
            if job.done is not None:
                job.done.set()
            if job.then is not None:
                try:
                    job.then()
                except Exception:
                    log.exception("notification follow-up failed")
