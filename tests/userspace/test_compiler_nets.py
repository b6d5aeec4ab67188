"""Whole networks on the device against onnxruntime: small CNN/MLP/branching nets in fp32 and int8,
real model-zoo topologies shipped with the onnx package, and the runtime API around them."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from compiler_helpers import check, rand, reference
from compiler_nets import branches, lenet, mlp

from userspace.compiler import compile
from userspace.demo import models

NETS = {"lenet": (lenet, (4, 1, 28, 28)), "mlp": (mlp, (8, 64)), "branches": (branches, (2, 3, 12, 12))}


@pytest.mark.parametrize("name", NETS)
def test_fp32_network(device, name):
    build, shape = NETS[name]
    check(device, build(shape[0]), {"x": rand(*shape)}, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("name", NETS)
def test_int8_network(device, name):
    """Post-training int8 against the float model: errors of a few quantisation steps, same decisions."""
    build, shape = NETS[name]
    model = build(shape[0])
    rng = np.random.default_rng(7)  # data of its own: the bounds below hold for it whatever ran before
    calibration = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(8)]
    x = rng.standard_normal(shape).astype(np.float32)
    expected = reference(model, {"x": x})[0]
    with compile(model, device, dtype="int8", calibration=calibration) as compiled:
        got = compiled.run({"x": x})[0]
        assert compiled.dtype == "int8"
        assert any(k.packet in ("CONV", "GEMM") and k.writes[0].dtype == np.int8 for k in compiled.kernels)
    span = float(expected.max() - expected.min())
    error = np.abs(got - expected)
    # a value beyond the calibrated range saturates (as in any PTQ): bound the bulk, not the worst element
    assert np.percentile(error, 99) < 0.06 * span
    assert error.mean() < 0.015 * span
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.75


def test_int8_falls_back_to_fp32_for_softmax(device):
    """Softmax has no int8 form: the int8 CNN dequantises on the device's SDP before an fp32 CDP, in one job."""
    with compile(lenet(2), device, dtype="int8", calibration=[rand(2, 1, 28, 28) for _ in range(4)]) as compiled:
        kernels = compiled.kernels
        cdp = next(i for i, k in enumerate(kernels) if k.packet == "CDP")
        converts = [k for k in kernels[:cdp] if k.packet == "SDP" and k.fields["src"].dtype == np.int8
                    and k.fields["dst"].dtype == np.float32]
        assert len(converts) == 1 and compiled.stats["jobs"] == 1
        probs = compiled.run(rand(2, 1, 28, 28))[0]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_branches_run_engines_concurrently_and_reuse_memory(device):
    with compile(branches(1), device) as compiled:
        stats = compiled.stats
        assert stats["signals"] > 0 and stats["waits"] > 0  # cross-engine dependencies are synchronised
        assert stats["arena_bytes"] < stats["arena_unshared_bytes"]  # liveness reuse
        # concat inputs are produced in place: no BDMA copy
        assert not any(k.packet == "BDMA" for k in compiled.kernels)


def test_resubmission_many_runs(device):
    """The same command buffer runs again and again (semaphores reset each run) with fresh inputs; each
    run's outputs are the caller's own, not views of the arena the next run overwrites."""
    model = branches(1)
    with compile(model, device) as compiled:
        runs = []
        for _ in range(5):
            x = rand(1, 3, 12, 12)
            runs.append((compiled.run({"x": x})[0], reference(model, {"x": x})[0]))
        assert compiled.timings.runs == 5
    for got, expected in runs:
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)


def test_int8_outputs_outlive_the_run(device):
    """Dequantised outputs are copies: a later run leaves an earlier run's results as they were."""
    shape = NETS["mlp"][1]
    with compile(mlp(shape[0]), device, dtype="int8", calibration=[rand(*shape) for _ in range(4)]) as compiled:
        first = compiled.run(rand(*shape))[0]
        kept = first.copy()
        second = compiled.run(rand(*shape) * 3)[0]
    assert first.dtype == np.float32 and not np.array_equal(first, second)
    np.testing.assert_array_equal(first, kept)


def _bo_ids(mount) -> set[int]:
    """The ids of the live BOs: the first column of debug/accel0/gem_objects, between header and total."""
    return {int(line.split()[0]) for line in mount.debug("accel0", "gem_objects").splitlines()[1:-1]}


def test_runtime_api_and_timings(compiler_mount, device):
    model = mlp(8)
    x = rand(8, 64)
    expected = reference(model, {"x": x})[0]
    before = _bo_ids(compiler_mount)  # BO ids are never reused: earlier tests' BOs may come and go meanwhile
    compiled = compile(model, device)
    made = _bo_ids(compiler_mount) - before
    assert made  # weights, arena and command BOs
    try:
        assert [p.name for p in compiled.inputs] == ["x"] and [p.name for p in compiled.outputs] == ["y"]
        for inputs in ({"x": x}, [x], x):
            np.testing.assert_allclose(compiled.run(inputs)[0], expected, atol=1e-4, rtol=1e-4)
        t = compiled.timings
        assert t.compile > 0 and t.upload > 0 and t.run > 0 and t.device > 0 and t.device_busy > 0
        assert t.run >= t.device
        assert "GEMM" in compiled.summary()
        with pytest.raises(ValueError, match="shape"):
            compiled.run({"x": rand(4, 64)})
        with pytest.raises(ValueError, match="unknown model input"):
            compiled.run({"x": x, "z": x})
    finally:
        compiled.close()
    deadline = time.monotonic() + 5.0  # released files and unmapped BOs go asynchronously
    while (left := made & _bo_ids(compiler_mount)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not left  # every BO released
    compiled.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        compiled.run(x)


def test_profile_timestamps(device):
    with compile(lenet(1), device, profile=True) as compiled:
        compiled.run(rand(1, 1, 28, 28))
        rows = compiled.profile()
    assert {r["packet"] for r in rows} >= {"CONV", "PDP", "GEMM", "CDP"}
    assert all(0 < r["start_ns"] <= r["end_ns"] and r["busy_ns"] == r["end_ns"] - r["start_ns"] for r in rows)
    for engine in {r["engine"] for r in rows}:  # an engine runs its packets one after the other, in stream order
        runs = [(r["start_ns"], r["end_ns"]) for r in rows if r["engine"] == engine]
        assert all(end <= start for (_, end), (start, _) in itertools.pairwise(runs)), engine


@pytest.mark.parametrize("name", ["squeezenet", "shufflenet", "inception_v1", "resnet50"])
def test_model_zoo_topology(device, name):
    """Real networks (SqueezeNet's fire modules, ShuffleNet's channel shuffle through a rank-5 transpose,
    Inception's concats and LRN, ResNet-50's residual Sums and folded BatchNorms) at 224x224."""
    if models.model_zoo_path(name) is None:
        pytest.skip("the onnx package ships no backend test data")
    model = models.model_zoo(name)
    data, shape = models.model_input(model)
    x = rand(*shape)
    expected = reference(model, {data: x})[0]
    with compile(model, device) as compiled:
        got = compiled.run({data: x})[0]
    np.testing.assert_allclose(got, expected, atol=2e-4 * max(1.0, float(np.abs(expected).max())), rtol=1e-3)
