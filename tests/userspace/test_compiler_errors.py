"""What the compiler and runtime say when things go wrong: unsupported operators and attributes
(named with their node), device memory exhausted (ENOMEM), a job that faults (EFAULT with the ONNX
node of the faulting packet) or hangs (ETIME, then the model recovers)."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from compiler_helpers import make_model, node, rand, reference
from compiler_nets import lenet, mlp

from emudev.testing import MountedEmudev
from emudev.uapi import defs
from userspace.compiler import CompileError, JobError, UnsupportedOperator, compile
from userspace.libaccel import Device, SwSyncTimeline, isa_compatible


def test_unsupported_operator_is_named(device):
    model = make_model([node("Relu", ["x"], ["r"]), node("Erf", ["r"], ["e"], name="my_gelu_erf"),
                        node("Relu", ["e"], ["y"])], {"x": (2, 3)}, ["y"])
    with pytest.raises(UnsupportedOperator) as info:
        compile(model, device)
    message = str(info.value)
    assert "Erf" in message and "my_gelu_erf" in message and "#1" in message
    assert info.value.node is not None and info.value.op == "Erf"


@pytest.mark.parametrize("nodes, inputs, inits, words", [
    ([node("MaxPool", ["x"], ["y"], name="pool_dil", kernel_shape=[2, 2], dilations=[2, 2])], {"x": (1, 2, 8, 8)},
     {}, ["pool_dil", "dilations"]),
    ([node("LRN", ["x"], ["y"], name="lrn_even", size=4)], {"x": (1, 6, 3, 3)}, {}, ["lrn_even", "even"]),
    ([node("Conv", ["x", "w"], ["y"], name="conv_dyn")], {"x": (1, 2, 5, 5), "w": (3, 2, 3, 3)}, {},
     ["conv_dyn", "non-constant weights"]),
    ([node("Div", ["x", "z"], ["y"], name="div_act")], {"x": (2, 3), "z": (2, 3)}, {}, ["div_act", "Div"]),
    ([node("Pad", ["x", "pads"], ["y"], name="pad_reflect", mode="reflect")], {"x": (1, 2, 4, 4)},
     {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)}, ["pad_reflect", "reflect"]),
    ([node("MaxPool", ["x"], ["y"], name="pool_big_pad", kernel_shape=[2, 2], pads=[2, 2, 2, 2])],
     {"x": (1, 1, 7, 7)}, {}, ["pool_big_pad", "padding"]),
])
def test_unsupported_attributes_are_named(device, nodes, inputs, inits, words):
    with pytest.raises(CompileError) as info:
        compile(make_model(nodes, inputs, ["y"], inits), device)
    for word in words:
        assert word in str(info.value)


def test_data_dependent_shape_is_refused(device):
    model = make_model([node("NonZero", ["x"], ["nz"], name="nonzero"), node("Shape", ["nz"], ["s"]),
                        node("ConstantOfShape", ["s"], ["c"]), node("Cast", ["c"], ["y"], to=1)],
                       {"x": (3, 4)}, ["y"])
    with pytest.raises(CompileError, match=r"nonzero|NonZero|static"):
        compile(model, device)


def test_int8_needs_calibration(device):
    with pytest.raises(CompileError, match="calibration"):
        compile(mlp(2), device, dtype="int8")
    with pytest.raises(CompileError, match="dtype"):
        compile(mlp(2), device, dtype="fp16")


class OlderIsa:
    """The device as one of ISA 1.0 would answer: everything else asked of it is the real one's."""

    def __init__(self, device: Device) -> None:
        self.device = device

    def get_param(self, param: int, index: int = 0) -> int:
        if param == defs.DRM_EMUDEV_PARAM_ISA_VERSION:
            return 1 << 16
        return self.device.get_param(param, index)


def test_older_isa_is_refused_before_anything_is_uploaded(device):
    assert isa_compatible(defs.DRM_EMUDEV_ISA_VERSION) and not isa_compatible(2 << 16)
    with pytest.raises(CompileError, match=r"the device runs ISA 1\.0; the compiler's streams need ISA 1\.1"):
        compile(mlp(), OlderIsa(device))


def test_too_little_device_memory_is_enomem():
    """A 2 MiB weight matrix on a device with 1 MiB: ENOMEM naming the BO, and nothing left allocated."""
    model = make_model([node("Gemm", ["x", "w"], ["y"])], {"x": (1, 1024)}, ["y"], {"w": rand(1024, 512)})
    small = make_model([node("Gemm", ["x", "w"], ["y"])], {"x": (1, 16)}, ["y"], {"w": rand(16, 8)})
    with MountedEmudev(devices=1, extra_args=("--memory", "1M")) as mount, Device(mount.node(0)) as dev:
        with pytest.raises(OSError) as info:
            compile(model, dev)
        assert info.value.errno == errno.ENOMEM
        assert "weights BO" in str(info.value) and "2097152 bytes" in str(info.value)
        assert "total: 0 objects" in mount.debug("accel0", "gem_objects")
        x = rand(1, 16)
        with compile(small, dev) as compiled:  # the failed compile released what it had taken
            np.testing.assert_allclose(compiled.run(x)[0], reference(small, {"x": x})[0], atol=1e-5, rtol=1e-5)
        assert not mount.violations(), mount.violations()


def test_faulting_job_names_the_node(compiler_mount, device):
    """The first job waits for a sw_sync fence; before it is released the weights BO's handle is closed,
    so the device address is gone when the CONV reads its weights: an IOMMU fault."""
    model = lenet(1)
    with compile(model, device) as compiled, SwSyncTimeline(compiler_mount.mountpoint) as timeline:
        gate = device.create_syncobj()
        with timeline.fence(1) as fence:
            gate.import_sync_file(fence)
        pending = compiled.start(rand(1, 1, 28, 28), wait=[(gate, 0)])
        compiled.weights.close()
        timeline.inc(1)
        with pytest.raises(JobError) as info:
            pending.result()
        gate.destroy()
    error = info.value
    assert error.errno == errno.EFAULT and error.faulted
    assert error.engine == "conv" and error.node is not None and "conv_c1" in error.node
    assert "faulted" in str(error) and f"{error.va:#x}" in str(error)


def test_hung_job_times_out_and_the_model_recovers(compiler_mount, device):
    inject = os.path.join(compiler_mount.mountpoint, "debug", "accel0", "inject")
    assert os.path.exists(inject), "every emudev device has debug/accelN/inject"
    model = mlp(4)
    x = rand(4, 64)
    with compile(model, device) as compiled:
        fd = os.open(inject, os.O_WRONLY)  # a control file: no O_TRUNC
        try:
            os.write(fd, b"hang conv\n")
        finally:
            os.close(fd)
        with pytest.raises(JobError) as info:
            compiled.run(x)
        assert info.value.errno == errno.ETIME and not info.value.faulted
        assert "timed out" in str(info.value)
        # the context was banned; the next run gets a new one
        np.testing.assert_allclose(compiled.run(x)[0], reference(model, {"x": x})[0], atol=1e-4, rtol=1e-4)
