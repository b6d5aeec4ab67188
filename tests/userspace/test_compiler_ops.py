"""Every operator the compiler lowers, on the device, against onnxruntime on random data, with
edge shapes: 1x1, odd sizes, padding larger than the kernel, stride larger than the kernel."""

from __future__ import annotations

import numpy as np
import pytest
from compiler_helpers import check, make_model, node, rand

# -- Conv -------------------------------------------------------------------------------------

CONV_CASES = [
    # (input NCHW, weight OIHW, attrs, bias)
    ((1, 3, 7, 9), (8, 3, 3, 3), dict(pads=[1, 1, 1, 1]), True),
    ((2, 4, 5, 5), (6, 4, 1, 1), dict(), False),  # 1x1 kernel, batch 2
    ((1, 1, 1, 1), (3, 1, 1, 1), dict(), True),  # 1x1 everything
    ((1, 3, 11, 13), (5, 3, 3, 3), dict(strides=[2, 3]), True),  # odd sizes, strides
    ((1, 2, 9, 9), (4, 2, 1, 1), dict(strides=[3, 3]), True),  # stride > kernel
    ((1, 2, 5, 6), (4, 2, 3, 3), dict(pads=[4, 4, 4, 4]), True),  # padding larger than the kernel
    ((1, 2, 6, 7), (3, 2, 3, 2), dict(pads=[0, 1, 2, 0]), True),  # asymmetric pads
    ((1, 3, 12, 12), (4, 3, 3, 3), dict(dilations=[2, 3], pads=[2, 3, 2, 3]), True),
    ((1, 4, 8, 8), (6, 2, 3, 3), dict(group=2, pads=[1, 1, 1, 1]), True),  # groups
    ((1, 6, 7, 7), (6, 1, 3, 3), dict(group=6, pads=[1, 1, 1, 1], strides=[2, 2]), True),  # depthwise
    ((1, 3, 7, 7), (6, 1, 3, 3), dict(group=3), True),  # depthwise, multiplier 2
    ((1, 3, 7, 10), (4, 3, 3, 4), dict(auto_pad="SAME_UPPER", strides=[2, 2]), True),
    ((1, 3, 8, 9), (4, 3, 2, 4), dict(auto_pad="SAME_LOWER"), False),
    ((1, 3, 8, 9), (4, 3, 3, 3), dict(auto_pad="VALID"), True),
]


@pytest.mark.parametrize("x_shape, w_shape, attrs, bias", CONV_CASES)
def test_conv(device, x_shape, w_shape, attrs, bias):
    inits = {"W": rand(*w_shape)}
    inputs = ["x", "W"]
    if bias:
        inits["B"] = rand(w_shape[0])
        inputs.append("B")
    model = make_model([node("Conv", inputs, ["y"], **attrs)], {"x": x_shape}, ["y"], inits)
    check(device, model, {"x": rand(*x_shape)})


def test_conv1d(device):
    model = make_model([node("Conv", ["x", "W", "B"], ["y"], pads=[2, 1], strides=[2])], {"x": (2, 3, 17)}, ["y"],
                       {"W": rand(5, 3, 4), "B": rand(5)})
    check(device, model, {"x": rand(2, 3, 17)})


@pytest.mark.parametrize("act, attrs", [("Relu", {}), ("LeakyRelu", {"alpha": 0.2}), ("Sigmoid", {}), ("Tanh", {}),
                                        ("Clip", {})])
def test_conv_fused_activation(device, act, attrs):
    inits = {"W": rand(4, 3, 3, 3), "B": rand(4)}
    inputs = ["c"]
    if act == "Clip":
        inits.update(lo=np.array(-0.5, np.float32), hi=np.array(0.7, np.float32))
        inputs += ["lo", "hi"]
    model = make_model([node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]), node(act, inputs, ["y"], **attrs)],
                       {"x": (1, 3, 6, 6)}, ["y"], inits)
    check(device, model, {"x": rand(1, 3, 6, 6)})


def test_batchnorm_folded_and_standalone(device):
    c = 4
    stats = {f"{p}{i}": v for i in (1, 2) for p, v in (("g", rand(c)), ("b", rand(c)), ("m", rand(c)),
                                                         ("v", np.abs(rand(c)) + 0.5))}
    model = make_model([
        node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        node("BatchNormalization", ["c", "g1", "b1", "m1", "v1"], ["bn1"], epsilon=1e-3),  # folds into the conv
        node("Relu", ["bn1"], ["r"]),
        node("BatchNormalization", ["r", "g2", "b2", "m2", "v2"], ["y"]),  # after a Relu: SDP scale + bias
    ], {"x": (1, 3, 5, 5)}, ["y"], {"W": rand(c, 3, 3, 3), **stats})
    check(device, model, {"x": rand(1, 3, 5, 5)})


# -- Gemm / MatMul ----------------------------------------------------------------------------

@pytest.mark.parametrize("trans_a, trans_b, alpha, beta, c_shape", [
    (0, 0, 1.0, 1.0, (5,)),
    (1, 0, 0.5, 2.0, (1, 5)),
    (0, 1, 1.0, 0.0, None),
    (1, 1, 2.0, 0.5, (3, 5)),  # full C matrix: a separate SDP add
    (0, 0, 1.0, 1.0, ()),  # scalar C
])
def test_gemm(device, trans_a, trans_b, alpha, beta, c_shape):
    m, k, n = 3, 7, 5
    a_shape = (k, m) if trans_a else (m, k)
    inits = {"B": rand(*((n, k) if trans_b else (k, n)))}
    inputs = ["a", "B"]
    if c_shape is not None:
        inits["C"] = rand(*c_shape)
        inputs.append("C")
    model = make_model([node("Gemm", inputs, ["y"], transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)],
                       {"a": a_shape}, ["y"], inits)
    check(device, model, {"a": rand(*a_shape)})


def test_gemm_two_activations(device):
    model = make_model([node("Gemm", ["a", "b", "c"], ["y"], transB=1)], {"a": (4, 6), "b": (3, 6), "c": (4, 3)},
                       ["y"])
    check(device, model, {"a": rand(4, 6), "b": rand(3, 6), "c": rand(4, 3)})


@pytest.mark.parametrize("a_shape, b_shape, b_const", [
    ((4, 6), (6, 3), True),
    ((2, 5, 6), (6, 4), True),  # batched x weights
    ((2, 3, 4, 5), (2, 3, 5, 2), False),  # two batch dims, both activations
    ((3, 4, 5), (1, 5, 6), False),  # broadcast batch of b
    ((1, 4, 5), (3, 5, 6), False),  # broadcast batch of a
    ((6,), (6, 4), True),  # vector x matrix
    ((3, 6), (6,), False),  # matrix x vector
])
def test_matmul(device, a_shape, b_shape, b_const):
    inits = {"b": rand(*b_shape)} if b_const else {}
    inputs = {"a": a_shape} if b_const else {"a": a_shape, "b": b_shape}
    model = make_model([node("MatMul", ["a", "b"], ["y"])], inputs, ["y"], inits)
    feeds = {"a": rand(*a_shape)}
    if not b_const:
        feeds["b"] = rand(*b_shape)
    check(device, model, feeds)


def test_matmul_add_bias_relu(device):
    model = make_model([node("MatMul", ["a", "W"], ["m"]), node("Add", ["m", "B"], ["s"]), node("Relu", ["s"], ["y"])],
                       {"a": (2, 3, 8)}, ["y"], {"W": rand(8, 5), "B": rand(5)})
    check(device, model, {"a": rand(2, 3, 8)})


# -- element-wise -----------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Max", "Min"])
@pytest.mark.parametrize("a_shape, b_shape, b_const", [
    ((1, 4, 5, 6), (1, 4, 5, 6), False),
    ((2, 4, 5, 6), (4, 1, 1), True),  # channel vector
    ((1, 4, 5, 6), (), True),  # scalar constant
    ((1, 4, 3, 3), (1, 4, 1, 1), False),  # broadcast activation
    ((3, 7), (7,), True),
    ((1, 1, 1, 1), (1, 1, 1, 1), False),
])
def test_binary(device, op, a_shape, b_shape, b_const):
    # the conv makes `a` an NHWC tensor, as in a real network
    c = a_shape[1] if len(a_shape) == 4 else None
    nodes, inits, inputs = [], {}, {"x": a_shape}
    a = "x"
    if c is not None:
        nodes.append(node("Conv", ["x", "W"], ["a"]))
        inits["W"] = rand(c, c, 1, 1)
        a = "a"
    if b_const:
        inits["b"] = rand(*b_shape)
    else:
        inputs["b"] = b_shape
    nodes.append(node(op, [a, "b"], ["y"]))
    model = make_model(nodes, inputs, ["y"], inits)
    feeds = {"x": rand(*a_shape)}
    if not b_const:
        feeds["b"] = rand(*b_shape)
    check(device, model, feeds)


def test_sub_broadcast_first_operand_and_div(device):
    model = make_model([node("Sub", ["v", "x"], ["s"]), node("Div", ["s", "d"], ["y"])], {"x": (1, 3, 4, 4)}, ["y"],
                       {"v": rand(3, 1, 1), "d": np.array([2.0, -4.0, 0.5], np.float32).reshape(3, 1, 1)})
    check(device, model, {"x": rand(1, 3, 4, 4)})


def test_sum_and_variadic_max(device):
    model = make_model([node("Sum", ["a", "b", "c"], ["s"]), node("Max", ["s", "a", "c"], ["y"])],
                       {"a": (2, 3, 4), "b": (2, 3, 4), "c": (3, 4)}, ["y"])
    check(device, model, {"a": rand(2, 3, 4), "b": rand(2, 3, 4), "c": rand(3, 4)})


@pytest.mark.parametrize("op, attrs", [("Relu", {}), ("LeakyRelu", {"alpha": 0.1}), ("Sigmoid", {}), ("Tanh", {}),
                                       ("Clip", {})])
def test_standalone_activation(device, op, attrs):
    inputs, inits = ["x"], {}
    if op == "Clip":
        inputs, inits = ["x", "", "hi"], {"hi": np.array(0.3, np.float32)}
    # two consumers: nothing to fuse into
    model = make_model([node(op, inputs, ["y"], **attrs), node("Add", ["x", "y"], ["z"])], {"x": (2, 3, 4, 5)},
                       ["y", "z"], inits)
    check(device, model, {"x": rand(2, 3, 4, 5)})


# -- pooling ----------------------------------------------------------------------------------

@pytest.mark.parametrize("op, attrs, shape", [
    ("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2]), (1, 3, 8, 8)),
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), (2, 4, 7, 9)),
    ("MaxPool", dict(kernel_shape=[1, 1], strides=[3, 2]), (1, 2, 7, 7)),  # stride > kernel
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1), (1, 2, 8, 8)),
    ("MaxPool", dict(kernel_shape=[3, 2], auto_pad="SAME_UPPER", strides=[2, 2]), (1, 2, 7, 5)),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]), (1, 3, 5, 6)),
    ("AveragePool", dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1), (1, 3, 5, 6)),
    ("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1), (1, 2, 7, 7)),
    ("AveragePool", dict(kernel_shape=[5, 5]), (1, 2, 5, 5)),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, count_include_pad=1, pads=[1, 1, 1, 1]),
     (1, 2, 6, 8)),  # the ceil-mode extra is not counted, the declared padding is
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, count_include_pad=1), (2, 3, 8, 8)),
    ("GlobalAveragePool", {}, (2, 5, 7, 3)),
    ("GlobalMaxPool", {}, (1, 5, 1, 1)),
    ("MaxPool", dict(kernel_shape=[3], strides=[2], pads=[1, 1]), (1, 3, 10)),  # 1-D
])
def test_pool(device, op, attrs, shape):
    model = make_model([node(op, ["x"], ["y"], **attrs)], {"x": shape}, ["y"])
    check(device, model, {"x": rand(*shape)})


# -- CDP --------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 3, 5])
def test_lrn(device, size):
    model = make_model([node("LRN", ["x"], ["y"], size=size, alpha=0.01, beta=0.75, bias=1.5)], {"x": (1, 7, 4, 5)},
                       ["y"])
    check(device, model, {"x": rand(1, 7, 4, 5)})


@pytest.mark.parametrize("shape, axis, opset", [
    ((3, 10), -1, 17),
    ((1, 6, 4, 5), 1, 17),  # channel axis of an NHWC tensor
    ((2, 6, 4, 5), 2, 17),  # a spatial axis: just another view
    ((2, 3, 4), 0, 17),
    ((2, 6, 3, 3), 1, 11),  # old semantics: softmax over the flattened C*H*W
])
def test_softmax(device, shape, axis, opset):
    model = make_model([node("Softmax", ["x"], ["y"], axis=axis)], {"x": shape}, ["y"], opset=opset)
    check(device, model, {"x": rand(*shape, scale=3.0)}, atol=1e-5)


# -- data movement ----------------------------------------------------------------------------

def test_concat_channels_in_place(device):
    model = make_model([
        node("Conv", ["x", "W1"], ["a"], pads=[1, 1, 1, 1]),
        node("Conv", ["x", "W2"], ["b"]),
        node("MaxPool", ["x"], ["p"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
        node("Concat", ["a", "b", "p", "x"], ["y"], axis=1),  # x: a model input, copied by BDMA
    ], {"x": (1, 3, 5, 5)}, ["y"], {"W1": rand(4, 3, 3, 3), "W2": rand(2, 3, 1, 1)})
    check(device, model, {"x": rand(1, 3, 5, 5)})


@pytest.mark.parametrize("axis", [0, 2, 3, -1])
def test_concat_other_axes(device, axis):
    model = make_model([node("Relu", ["x"], ["r"]), node("Concat", ["r", "z", "x"], ["y"], axis=axis)],
                       {"x": (2, 3, 4, 5), "z": (2, 3, 4, 5)}, ["y"])
    check(device, model, {"x": rand(2, 3, 4, 5), "z": rand(2, 3, 4, 5)})


def test_flatten_after_conv_keeps_nchw_order(device):
    model = make_model([node("Conv", ["x", "W"], ["c"]), node("Flatten", ["c"], ["f"]),
                        node("Gemm", ["f", "F"], ["y"], transB=1)],
                       {"x": (2, 3, 4, 5)}, ["y", "f"], {"W": rand(6, 3, 2, 2), "F": rand(10, 6 * 3 * 4)})
    check(device, model, {"x": rand(2, 3, 4, 5)})


def test_reshape_transpose_squeeze(device):
    model = make_model([
        node("Conv", ["x", "W"], ["c"]),
        node("Reshape", ["c", "shape"], ["r"]),
        node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
        node("Unsqueeze", ["t", "axes"], ["u"]),
        node("Squeeze", ["u", "axes"], ["s"]),
        node("Transpose", ["c"], ["y2"], perm=[0, 3, 1, 2]),
    ], {"x": (1, 4, 3, 5)}, ["s", "y2"], {"W": rand(4, 4, 1, 1), "shape": np.array([1, 4, -1], np.int64),
                                          "axes": np.array([1], np.int64)})
    check(device, model, {"x": rand(1, 4, 3, 5)})


def test_slice_and_pad(device):
    model = make_model([
        node("Slice", ["x", "starts", "ends", "axes", "steps"], ["s"]),
        node("Pad", ["s", "pads", "value"], ["p"]),
        node("Relu", ["p"], ["y"]),
    ], {"x": (1, 4, 9, 8)}, ["y"], {"starts": np.array([1, 1], np.int64), "ends": np.array([4, 8], np.int64),
                                    "axes": np.array([1, 2], np.int64), "steps": np.array([2, 3], np.int64),
                                    "pads": np.array([0, 0, 1, 2, 0, 1, 0, 0], np.int64),
                                    "value": np.array(0.25, np.float32)})
    check(device, model, {"x": rand(1, 4, 9, 8)})


def test_constants_fold(device):
    model = make_model([
        node("Shape", ["x"], ["shp"]),
        node("ConstantOfShape", ["shp"], ["ones"], value=__import__("onnx").helper.make_tensor(
            "v", 1, [1], [1.5])),
        node("Constant", [], ["k"], value_float=2.0),
        node("Mul", ["ones", "k"], ["c"]),
        node("Add", ["x", "c"], ["y"]),
        node("Identity", ["c"], ["const_out"]),
        node("Dropout", ["y"], ["d"]),
    ], {"x": (2, 3)}, ["d", "const_out"])
    check(device, model, {"x": rand(2, 3)})


def test_symbolic_batch_and_input_shapes(device):
    model = make_model([node("Relu", ["x"], ["y"])], {"x": ("N", 3)}, ["y"])
    from compiler_helpers import compile

    with compile(model, device, input_shapes={"x": (4, 3)}) as compiled:
        x = rand(4, 3)
        np.testing.assert_array_equal(compiled.run([x])[0], np.maximum(x, 0))


def test_split_neg_prelu(device):
    model = make_model([
        node("Conv", ["x", "W"], ["c"]),
        node("Split", ["c", "sizes"], ["a", "b"], axis=1),
        node("Neg", ["a"], ["n"]),
        node("PRelu", ["b", "slope"], ["p"]),
        node("Concat", ["n", "p"], ["y"], axis=1),
    ], {"x": (2, 5, 4, 3)}, ["y"], {"W": rand(5, 5, 1, 1), "sizes": np.array([2, 3], np.int64),
                                    "slope": rand(3, 1, 1)})
    check(device, model, {"x": rand(2, 5, 4, 3)})


@pytest.mark.parametrize("op, keepdims, shape", [("ReduceMean", 1, (2, 3, 5, 4)), ("ReduceMax", 0, (1, 6, 3, 7)),
                                                 ("ReduceMean", 0, (2, 4, 9))])
def test_reduce_over_spatial_axes(device, op, keepdims, shape):
    axes = list(range(2, len(shape)))
    model = make_model([node(op, ["x"], ["y"], axes=axes, keepdims=keepdims)], {"x": shape}, ["y"], opset=13)
    check(device, model, {"x": rand(*shape)})


@pytest.mark.parametrize("also_relu", [False, True])
def test_flatten_into_weight_rows(device, also_relu):
    """A Flatten feeding only constant-weight products is free (weight rows permuted to the NHWC order);
    any other consumer needs ONNX's order, so the RUBIK reorder comes back."""
    from compiler_helpers import compile

    nodes = [node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), node("Flatten", ["c"], ["f"]),
             node("Gemm", ["f", "G", "b"], ["y1"], transB=1), node("MatMul", ["f", "M"], ["y2"])]
    outputs = ["y1", "y2"]
    if also_relu:
        nodes.append(node("Relu", ["f"], ["y3"]))
        outputs.append("y3")
    model = make_model(nodes, {"x": (2, 3, 3, 4)}, outputs,
                       {"W": rand(5, 3, 3, 3), "G": rand(7, 60), "b": rand(7), "M": rand(60, 3)})
    check(device, model, {"x": rand(2, 3, 3, 4)})
    with compile(model, device) as compiled:
        assert any(k.packet == "RUBIK" for k in compiled.kernels) == also_relu
