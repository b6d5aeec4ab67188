"""The userspace tools (accel-info, -run, -top, -demo) as a user runs them: a process, its output, its exit status.

Each tool runs as `python -m userspace.tools.X` in a child process, the way its console
script would, so exit statuses and "no traceback for user errors" are checked for real.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from emudev.uapi import defs
from userspace.demo import digits, models
from userspace.libaccel import Device
from userspace.tools import accel_top

TOOLS = {
    "accel-info": "userspace.tools.accel_info",
    "accel-run": "userspace.tools.accel_run",
    "accel-top": "userspace.tools.accel_top",
    "accel-smoke": "userspace.tools.accel_smoke",
    "accel-demo": "userspace.demo.digits",
}
TIMEOUT = 120


def tool(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "EMUDEV_MOUNT"}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", TOOLS[name], *args], capture_output=True, text=True,
                          timeout=TIMEOUT, env=environment)


def assert_clean_failure(result: subprocess.CompletedProcess[str], status: int, *words: str) -> None:
    """A user error: the expected status, one message naming the tool, and no traceback."""
    assert result.returncode == status, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("models") / "tiny.onnx"
    onnx.save(models.tiny(), str(path))
    return str(path)


@pytest.fixture(scope="module")
def unsupported_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Relu then Erf: the compiler has no lowering for Erf."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="act"), helper.make_node("Erf", ["r"], ["y"], name="the_erf")],
        "unsupported", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path_factory.mktemp("models") / "erf.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return str(path)


# -- help and user errors, no device needed -------------------------------------------------------

@pytest.mark.parametrize("name", sorted(TOOLS))
def test_help(name: str) -> None:
    result = tool(name, "--help")
    assert result.returncode == 0, result.stderr
    assert f"usage: {name}" in result.stdout


def test_no_device(tmp_path) -> None:
    assert_clean_failure(tool("accel-info", "--mount", str(tmp_path)), 1, "accel-info: no accel devices found")
    assert_clean_failure(tool("accel-top", "--once", "--mount", str(tmp_path)), 1, "not an emudev mount")
    assert_clean_failure(tool("accel-top", "--once"), 1, "no mount given")
    assert_clean_failure(tool("accel-demo", "--mount", str(tmp_path)), 1, "no accel0")


def test_accel_run_no_device(tmp_path, tiny_model: str) -> None:
    assert_clean_failure(tool("accel-run", tiny_model, "--mount", str(tmp_path)), 1, "no accel0")


def test_accel_run_bad_model_and_inputs(tmp_path, tiny_model: str) -> None:
    assert_clean_failure(tool("accel-run", str(tmp_path / "missing.onnx")), 2, "missing.onnx: no such file")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    assert_clean_failure(tool("accel-run", str(garbage)), 2, "not an ONNX model")
    assert_clean_failure(tool("accel-run", tiny_model, "--input", "nope=x.npy"), 2, "no input 'nope'")
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((5, 3, 8, 8), np.float32))
    assert_clean_failure(tool("accel-run", tiny_model, "--input", f"input={wrong}"), 2, "has shape (5, 3, 8, 8)")
    assert tool("accel-run", tiny_model, "--dtype", "fp64").returncode == 2


# -- against a mounted device ---------------------------------------------------------------------

def test_accel_info_shows_engines(emudev_shared_mount) -> None:
    result = tool("accel-info", "--mount", emudev_shared_mount.mountpoint)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("engines       cs conv sdp pdp cdp bdma rubik") == 2
    assert "dtypes        fp32 fp16 int8 int32" in result.stdout
    assert "job timeout   500 ms" in result.stdout
    isa = defs.DRM_EMUDEV_ISA_VERSION
    assert f"ISA {isa >> 16}.{isa & 0xFFFF}" in result.stdout


def test_accel_top_once_shows_engines_and_client(emudev_shared_mount) -> None:
    with Device(emudev_shared_mount.node(0)) as dev:
        dev.set_client_name("accel-top-test")
        with dev.create_context():
            result = tool("accel-top", "--once", "--interval", "0.2",
                          env={"EMUDEV_MOUNT": emudev_shared_mount.mountpoint})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for engine in ("cs", "conv", "sdp", "pdp", "cdp", "bdma", "rubik"):
        assert f"\n  {engine} " in out
    line = next(line for line in out.splitlines() if "accel-top-test" in line)
    assert f" {os.getpid()} " in line
    assert "busy%" in out and "jobs:" in out


def test_accel_top_parses_debug_files() -> None:
    sample = accel_top.DeviceSample("accel0", 0.0)
    accel_top.parse_engines(
        "engine    busy_ms  packets  busy_ms by file\n"
        "    cs        0.0        0  \n"
        "  conv       12.5       40  3:10.0 4:2.5\n"
        "  file  ctx prio queued submitted banned\n"
        "     3    1    1      2        17     no\n"
        "jobs: completed 15, failed 1, queued 2, running job 16 of context 1 (file 3, pid 99)\n", sample)
    assert [e.name for e in sample.engines] == ["cs", "conv"]
    assert sample.engines[1].busy_ms_by_file == {3: 10.0, 4: 2.5}
    assert sample.contexts == [accel_top.ContextRow(3, 1, 1, 2, 17, False)]
    assert (sample.completed, sample.failed, sample.queued) == (15, 1, 2)
    clients = accel_top.parse_clients(
        "             command    tgid     pid   uid a   ioctls    id name\n"
        "     Web Content       12      13     0 y       42     3 <unset>\n")
    assert clients == [accel_top.ClientRow(3, "Web Content", 12, 13, 0, 42, "<unset>")]


def test_accel_run_compare(emudev_shared_mount, tiny_model: str, tmp_path) -> None:
    result = tool("accel-run", tiny_model, "--compare", "--runs", "3", "--output-dir", str(tmp_path),
                  "--mount", emudev_shared_mount.mountpoint)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for phase in ("compile", "upload", "first run", "steady run p50"):
        assert phase in out
    assert "argmax agrees 2/2  ok" in out
    assert np.load(tmp_path / "output.npy").shape == (2, 5)


def test_accel_run_profile(emudev_shared_mount, tiny_model: str) -> None:
    result = tool("accel-run", tiny_model, "--runs", "1", "--profile", "2", "--mount", emudev_shared_mount.mountpoint)
    assert result.returncode == 0, result.stdout + result.stderr
    profile = result.stdout[result.stdout.index("profile of the last run"):].splitlines()
    assert any(line.split()[:1] == ["conv"] and line.endswith("%") for line in profile)
    slowest = profile[profile.index(next(line for line in profile if "slowest of" in line)) + 1:]
    assert len(slowest) == 2 and all(" node '" in line for line in slowest)
    assert "CONV on conv" in result.stdout
    assert tool("accel-run", tiny_model, "--profile", "0").returncode == 2


def test_accel_run_int8_and_given_input(emudev_shared_mount, tiny_model: str, tmp_path) -> None:
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32))
    result = tool("accel-run", tiny_model, "--dtype", "int8", "--compare", "--runs", "2", "--input", f"input={x}",
                  "--device", "1", "--mount", emudev_shared_mount.mountpoint)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(random)" not in result.stdout
    assert "argmax agrees" in result.stdout


def test_accel_run_model_zoo_file(emudev_shared_mount, tmp_path) -> None:
    """A shipped network saved to a file, as a user would hand it over: accel-run accepts what onnx.checker does."""
    if models.model_zoo_path("squeezenet") is None:
        pytest.skip("the onnx package ships no backend test data")
    path = tmp_path / "squeezenet.onnx"
    onnx.save(models.model_zoo("squeezenet"), str(path))
    result = tool("accel-run", str(path), "--compare", "--runs", "1", "--mount", emudev_shared_mount.mountpoint)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "max abs error" in result.stdout and " ok (≤" in result.stdout


def test_accel_run_unsupported_op_names_node(emudev_shared_mount, unsupported_model: str) -> None:
    result = tool("accel-run", unsupported_model, "--mount", emudev_shared_mount.mountpoint)
    assert_clean_failure(result, 3, "the_erf", "Erf")


# -- the digits demo ------------------------------------------------------------------------------

def test_digits_training_exports_a_good_onnx_model() -> None:
    """A few epochs already classify well; the exported model passes the checker and onnxruntime agrees with numpy."""
    data = digits.load_digits()
    trained = digits.train(data.x_train, data.y_train, epochs=4)
    assert trained.seconds < 20
    model = digits.to_onnx(trained.params)  # runs onnx.checker (full check)
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu", "MaxPool", "Conv", "Relu", "Flatten", "Gemm",
                                                     "Softmax"]
    session = digits.ort_session(model, threads=1)
    probs = session.run(None, {digits.INPUT: data.x_test})[0]
    assert probs.shape == (len(data.y_test), 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    assert (probs.argmax(axis=1) == data.y_test).mean() >= 0.9
    np.testing.assert_array_equal(probs.argmax(axis=1), digits.predict(trained.params, data.x_test))


def test_digits_training_is_seeded() -> None:
    data = digits.load_digits()
    first = digits.train(data.x_train[:256], data.y_train[:256], epochs=1)
    second = digits.train(data.x_train[:256], data.y_train[:256], epochs=1)
    for name, value in first.params.items():
        np.testing.assert_array_equal(value, second.params[name])


def test_accel_demo_on_device(emudev_shared_mount) -> None:
    result = tool("accel-demo", "--epochs", "4", "--repeats", "0", "--mount", emudev_shared_mount.mountpoint)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for row in ("accuracy", "agrees with onnxruntime", "per image", "device fp32", "device int8", "onnxruntime"):
        assert row in out
