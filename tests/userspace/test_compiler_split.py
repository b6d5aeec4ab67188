"""Work cut into many jobs and packets: with a cost model that finds every kernel too long, each CONV
and PDP is cut into one band of output rows per packet (each reading its own input rows and padding)
and every kernel becomes a job of its own, ordered by the context and the carried-over semaphores."""

from __future__ import annotations

import pytest
from compiler_helpers import check, make_model, node, rand
from compiler_nets import branches, lenet

from userspace.compiler import lower


@pytest.fixture
def slow_device(device, monkeypatch):
    monkeypatch.setattr(lower, "MACS_PER_SECOND", 1e3)
    monkeypatch.setattr(lower, "SECONDS_PER_ELEMENT", 1.0)
    return device


@pytest.mark.parametrize("x_shape, attrs", [
    ((1, 3, 9, 7), dict(pads=[1, 1, 1, 1])),
    ((1, 2, 11, 6), dict(pads=[2, 0, 1, 3], strides=[2, 1], dilations=[2, 1])),
    ((1, 2, 5, 5), dict(pads=[4, 4, 4, 4], kernel_shape=[1, 1])),  # bands of padding only: kept whole
    ((2, 4, 10, 10), dict(strides=[3, 3], group=2)),
])
def test_conv_bands(slow_device, x_shape, attrs):
    kernel = attrs.pop("kernel_shape", [3, 3])
    w_shape = (4, x_shape[1] // attrs.get("group", 1), *kernel)
    model = make_model([node("Conv", ["x", "w", "b"], ["y"], **attrs)], {"x": x_shape}, ["y"],
                       {"w": rand(*w_shape), "b": rand(4)})
    check(slow_device, model, {"x": rand(*x_shape)})


@pytest.mark.parametrize("op, attrs", [
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)),
    ("AveragePool", dict(kernel_shape=[3, 2], strides=[1, 2], pads=[1, 0, 1, 1], count_include_pad=1)),
])
def test_pool_bands(slow_device, op, attrs):
    model = make_model([node(op, ["x"], ["y"], **attrs)], {"x": (1, 3, 9, 8)}, ["y"])
    check(slow_device, model, {"x": rand(1, 3, 9, 8)})


@pytest.mark.parametrize("build, shape", [(lenet, (2, 1, 28, 28)), (branches, (1, 3, 12, 12))])
def test_networks_as_many_jobs(slow_device, build, shape):
    from userspace.compiler import compile

    model = build(shape[0])
    with compile(model, slow_device) as compiled:
        assert compiled.stats["jobs"] >= len(compiled.kernels) - 1
        assert sum(k.packet == "CONV" for k in compiled.kernels) > sum(
            n.op_type == "Conv" for n in model.graph.node)
    check(slow_device, model, {"x": rand(*shape)}, atol=1e-4, rtol=1e-3)
