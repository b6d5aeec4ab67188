"""Errors of the model compiler and runtime.

CompileError is for what the compiler cannot do (an operator, attribute or shape the
device has no lowering for), always naming the ONNX node; device failures stay OSErrors
with their errno, so callers can tell "fix the model" from "the device said no".
"""

from __future__ import annotations

import errno
import os


class CompileError(Exception):
    """The model cannot be compiled for the device; the message names the node."""

    def __init__(self, message: str, node: str | None = None, op: str | None = None) -> None:
        where = f"node {node}" + (f" ({op})" if op else "") + ": " if node else ""
        super().__init__(where + message)
        self.node = node
        self.op = op


class UnsupportedOperator(CompileError):
    """An operator with no lowering on the device."""


class JobError(OSError):
    """A job of the model failed on the device: fault, timeout, cancellation.

    errno is the job's error (EFAULT for a fault, ETIME for a timeout); for a fault,
    engine, packet, va and node say where, node being the ONNX node whose packet faulted.
    """

    def __init__(self, error: int, message: str, *, faulted: bool = False, engine: str | None = None,
                 packet: int | None = None, va: int | None = None, node: str | None = None) -> None:
        super().__init__(error, f"{message}: {os.strerror(error) if error else 'error'}")
        self.faulted = faulted
        self.engine = engine
        self.packet = packet
        self.va = va
        self.node = node


def out_of_memory(what: str, size: int, device_memory: int, cause: OSError) -> OSError:
    """ENOMEM with the size that did not fit, since the bare errno hides which allocation it was."""
    return OSError(errno.ENOMEM, f"device memory exhausted allocating the {what} ({size} bytes; the device has "
                                 f"{device_memory} bytes in all): {cause.strerror or cause}")
