"""The small models of ONNX's own backend test data (PyTorch-exported layers and operators), with their
reference inputs and outputs: each either runs on the device and matches, or is refused with a
CompileError naming the node. Never a crash, never a wrong answer."""

from __future__ import annotations

import glob
import os

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from userspace.compiler import CompileError, compile

DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
CASES = sorted(d for kind in ("pytorch-converted", "pytorch-operator", "simple")
               for d in glob.glob(os.path.join(DATA, kind, "*"))
               if os.path.exists(os.path.join(d, "test_data_set_0")))
# what the device must run (a regression guard: these passed when the suite was written)
MUST_RUN = {"test_Conv2d", "test_Conv2d_depthwise_with_multiplier", "test_Conv2d_groups", "test_Conv1d_dilated",
            "test_AvgPool2d_stride", "test_MaxPool1d_stride", "test_BatchNorm1d_3d_input_eval", "test_Linear",
            "test_PReLU_2d_multiparam", "test_GLU_dim", "test_PixelShuffle", "test_ZeroPad2d",
            "test_softmax_functional_dim3", "test_operator_addmm", "test_operator_flatten", "test_operator_chunk",
            "test_operator_permute2", "test_operator_index", "test_single_relu_model"}


@pytest.mark.skipif(not CASES, reason="the onnx package ships no backend test data")
@pytest.mark.parametrize("path", CASES, ids=os.path.basename)
def test_onnx_backend_model(device, path):
    name = os.path.basename(path)
    model = onnx.load(os.path.join(path, "model.onnx"))
    data = os.path.join(path, "test_data_set_0")
    inputs = [numpy_helper.to_array(onnx.load_tensor(p)) for p in sorted(glob.glob(os.path.join(data, "input_*.pb")))]
    outputs = [numpy_helper.to_array(onnx.load_tensor(p))
               for p in sorted(glob.glob(os.path.join(data, "output_*.pb")))]
    initializers = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    try:
        compiled = compile(model, device, input_shapes={n: x.shape for n, x in zip(names, inputs, strict=True)})
    except CompileError as e:  # models with integer, float64 or string inputs all end here
        assert name not in MUST_RUN, f"{name} no longer compiles: {e}"
        assert "node" in str(e) or "input" in str(e), str(e)  # says where
        return
    assert all(x.dtype == np.float32 for x in inputs), f"{name}: compiled with non-float32 inputs"
    with compiled:
        got = compiled.run(dict(zip(names, inputs, strict=True)))
    for g, expected in zip(got, outputs, strict=True):
        np.testing.assert_allclose(g, expected, atol=1e-4, rtol=1e-3)
