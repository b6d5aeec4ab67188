"""accel-demo: a real network on the device — a CNN trained here on scikit-learn's digits, next to onnxruntime.

Nothing is downloaded: the 1,797 8x8 digit images ship with scikit-learn. A small CNN
(Conv 3x3x8 → Relu → MaxPool 2 → Conv 3x3x16 → Relu → Flatten → Gemm 10 → Softmax) is
trained in a second or two by a numpy loop of our own (hand-written backprop, Adam,
seeded), exported with onnx.helper and checked with onnx.checker, then compiled with
userspace.compiler and run on the device over the held-out images in batches, fp32 and
int8 (calibrated on training images). onnxruntime runs the same ONNX file with the same
thread count, so accuracy, agreement and speed are compared on equal terms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

if TYPE_CHECKING:
    import onnx
    import onnxruntime

    from userspace.libaccel import Device

IMAGE = 8
CLASSES = 10
CONV1 = 8
CONV2 = 16
FLAT = CONV2 * (IMAGE // 2) ** 2
INPUT = "image"
OUTPUT = "probabilities"
SEED = 20240607
EPOCHS = 15
TRAIN_BATCH = 32
LEARNING_RATE = 0.01
INFER_BATCH = 64
CALIBRATION_BATCHES = 4
TIMES = "\N{MULTIPLICATION SIGN}"
ARCHITECTURE = "Conv3x3x8 → Relu → MaxPool2 → Conv3x3x16 → Relu → Flatten → Gemm10 → Softmax"

Params = dict[str, np.ndarray]


# -- data ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Digits:
    """scikit-learn's digits, scaled to [0, 1] as NCHW float32, split into stratified train and test sets."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits(seed: int = SEED, test_fraction: float = 0.2) -> Digits:
    """The bundled dataset (no download); a stratified split so every class is in the test set."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    data = sk_load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    y = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_fraction, random_state=seed % 2**32,
                                                        stratify=y)
    return Digits(x_train, y_train, x_test, y_test)


# -- the network in numpy: forward and hand-written backward ---------------------------------------

def init_params(rng: np.random.Generator) -> Params:
    """He initialisation for the Relu layers, Xavier-like for the classifier; biases zero."""
    def normal(shape: tuple[int, ...], fan_in: int, gain: float = 2.0) -> np.ndarray:
        return (rng.standard_normal(shape) * np.sqrt(gain / fan_in)).astype(np.float32)

    return {
        "conv1.weight": normal((CONV1, 1, 3, 3), 9), "conv1.bias": np.zeros(CONV1, np.float32),
        "conv2.weight": normal((CONV2, CONV1, 3, 3), CONV1 * 9), "conv2.bias": np.zeros(CONV2, np.float32),
        "fc.weight": normal((CLASSES, FLAT), FLAT, 1.0), "fc.bias": np.zeros(CLASSES, np.float32),
    }


def _im2col(x: np.ndarray) -> np.ndarray:
    """3x3 windows of x (NCHW, padding 1) as rows (N*H*W, C*9), the layout a Conv's matmul wants."""
    n, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = sliding_window_view(padded, (3, 3), axis=(2, 3))  # N C H W 3 3
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * h * w, c * 9)


def _conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, _, h, w = x.shape
    cols = _im2col(x)
    out = cols @ weight.reshape(weight.shape[0], -1).T + bias
    return out.reshape(n, h, w, -1).transpose(0, 3, 1, 2), cols


def _conv_backward(grad: np.ndarray, cols: np.ndarray, weight: np.ndarray,
                   x_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of a 3x3 padding-1 Conv: input (col2im by the nine shifted adds), weight, bias."""
    n, c, h, w = x_shape
    out_channels = weight.shape[0]
    rows = grad.transpose(0, 2, 3, 1).reshape(-1, out_channels)
    d_weight = (rows.T @ cols).reshape(weight.shape)
    d_cols = (rows @ weight.reshape(out_channels, -1)).reshape(n, h, w, c, 3, 3)
    d_padded = np.zeros((n, c, h + 2, w + 2), np.float32)
    for i in range(3):
        for j in range(3):
            d_padded[:, :, i:i + h, j:j + w] += d_cols[..., i, j].transpose(0, 3, 1, 2)
    return d_padded[:, :, 1:-1, 1:-1], d_weight, rows.sum(0)


def forward(params: Params, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Logits (before Softmax) and what the backward pass needs."""
    n = x.shape[0]
    z1, cols1 = _conv(x, params["conv1.weight"], params["conv1.bias"])
    a1 = np.maximum(z1, 0)
    blocks = a1.reshape(n, CONV1, IMAGE // 2, 2, IMAGE // 2, 2)
    p1 = blocks.max(axis=(3, 5))
    z2, cols2 = _conv(p1, params["conv2.weight"], params["conv2.bias"])
    a2 = np.maximum(z2, 0)
    flat = a2.reshape(n, -1)
    logits = flat @ params["fc.weight"].T + params["fc.bias"]
    cache = {"x": x, "z1": z1, "cols1": cols1, "blocks": blocks, "p1": p1, "z2": z2, "cols2": cols2, "flat": flat}
    return logits, cache


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def loss_and_grads(params: Params, x: np.ndarray, y: np.ndarray) -> tuple[float, Params]:
    """Mean cross-entropy of the batch and its gradient for every parameter."""
    n = x.shape[0]
    logits, c = forward(params, x)
    probs = softmax(logits)
    loss = float(-np.log(probs[np.arange(n), y] + 1e-12).mean())
    d_logits = probs
    d_logits[np.arange(n), y] -= 1
    d_logits /= n
    grads = {"fc.weight": d_logits.T @ c["flat"], "fc.bias": d_logits.sum(0)}
    d_z2 = (d_logits @ params["fc.weight"]).reshape(c["z2"].shape) * (c["z2"] > 0)
    d_p1, grads["conv2.weight"], grads["conv2.bias"] = _conv_backward(d_z2, c["cols2"], params["conv2.weight"],
                                                                       c["p1"].shape)
    # MaxPool: the gradient goes to the maximum of each 2x2 block
    winners = c["blocks"] == c["p1"][:, :, :, None, :, None]
    d_a1 = (winners * d_p1[:, :, :, None, :, None]).reshape(c["z1"].shape)
    _, grads["conv1.weight"], grads["conv1.bias"] = _conv_backward(d_a1 * (c["z1"] > 0), c["cols1"],
                                                                    params["conv1.weight"], c["x"].shape)
    return loss, grads


def predict(params: Params, x: np.ndarray) -> np.ndarray:
    return forward(params, x)[0].argmax(axis=1)


@dataclass
class Training:
    params: Params
    seconds: float
    epochs: int
    losses: list[float] = field(default_factory=list)
    train_accuracy: float = 0.0


def train(x: np.ndarray, y: np.ndarray, epochs: int = EPOCHS, batch: int = TRAIN_BATCH, lr: float = LEARNING_RATE,
          seed: int = SEED, progress: Callable[[int, float], None] | None = None) -> Training:
    """Mini-batch Adam with a cosine learning-rate decay; seeded, so every run trains the same network."""
    rng = np.random.default_rng(seed)
    params = init_params(rng)
    first = {k: np.zeros_like(v) for k, v in params.items()}
    second = {k: np.zeros_like(v) for k, v in params.items()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    steps_per_epoch = -(-len(x) // batch)
    total_steps = epochs * steps_per_epoch
    step = 0
    started = time.perf_counter()
    losses = []
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        epoch_loss = 0.0
        for start in range(0, len(order), batch):
            index = order[start:start + batch]
            loss, grads = loss_and_grads(params, x[index], y[index])
            epoch_loss += loss * len(index)
            step += 1
            rate = lr * 0.5 * (1 + np.cos(np.pi * step / total_steps))
            for name, value in params.items():
                first[name] = beta1 * first[name] + (1 - beta1) * grads[name]
                second[name] = beta2 * second[name] + (1 - beta2) * grads[name] ** 2
                m_hat = first[name] / (1 - beta1 ** step)
                v_hat = second[name] / (1 - beta2 ** step)
                value -= (rate * m_hat / (np.sqrt(v_hat) + eps)).astype(np.float32)
        losses.append(epoch_loss / len(x))
        if progress:
            progress(epoch + 1, losses[-1])
    result = Training(params, time.perf_counter() - started, epochs, losses)
    result.train_accuracy = float((predict(params, x) == y).mean())
    return result


# -- ONNX export ----------------------------------------------------------------------------------

def to_onnx(params: Params, batch: int | None = None) -> onnx.ModelProto:
    """The trained network as a checked ONNX model; `batch` None leaves the batch dim symbolic."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    dim: int | str = batch if batch else "batch"
    nodes = [
        helper.make_node("Conv", [INPUT, "conv1.weight", "conv1.bias"], ["conv1"], name="conv1",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node("MaxPool", ["relu1"], ["pool1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pool1", "conv2.weight", "conv2.bias"], ["conv2"], name="conv2",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
        helper.make_node("Flatten", ["relu2"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], [OUTPUT], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "digits_cnn",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [dim, 1, IMAGE, IMAGE])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [dim, CLASSES])],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(v, np.float32), k) for k, v in params.items()],
        doc_string=f"scikit-learn digits classifier: {ARCHITECTURE}; input 8x8 grey levels scaled to [0, 1]",
    )
    model = helper.make_model(graph, producer_name="emudev accel-demo", opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # opset 13 needs no newer IR; older onnxruntimes load it too
    onnx.checker.check_model(model, full_check=True)
    return model


def ort_session(model: onnx.ModelProto, threads: int) -> onnxruntime.InferenceSession:
    """An onnxruntime CPU session pinned to `threads` intra-op threads, one inter-op: a like-for-like baseline."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def batches(x: np.ndarray, size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Fixed-size batches (the compiled model has a static shape); the last is zero-padded, with its real count."""
    for start in range(0, len(x), size):
        chunk = x[start:start + size]
        count = len(chunk)
        if count < size:
            chunk = np.concatenate([chunk, np.zeros((size - count, *x.shape[1:]), x.dtype)])
        yield chunk, count


# -- running it on the device and on onnxruntime ----------------------------------------------------

@dataclass
class Runner:
    """One way of running the model over the test set: its outputs and its timings."""

    label: str
    probs: np.ndarray | None = None
    prepare_s: float = 0.0  # compile (+ upload) or session creation
    upload_s: float | None = None
    batch_ms: list[float] = field(default_factory=list)
    first_ms: float = 0.0
    phases: dict[str, list[float]] = field(default_factory=dict)
    """Per-run milliseconds by phase of the compiled model's timings (device runs only)."""
    error: str | None = None

    def accuracy(self, y: np.ndarray) -> float:
        assert self.probs is not None
        return float((self.probs.argmax(axis=1) == y).mean())

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.batch_ms) if self.batch_ms else float("nan")


def run_batches(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int, runner: Runner,
                repeats: int) -> None:
    """The whole test set once for the outputs (its first batch timed apart), then `repeats` more passes timed."""
    outputs = []
    for index, (chunk, count) in enumerate(batches(x, batch)):
        started = time.perf_counter()
        out = run(chunk)
        if index == 0:
            runner.first_ms = (time.perf_counter() - started) * 1e3
        else:
            runner.batch_ms.append((time.perf_counter() - started) * 1e3)
        outputs.append(out[:count])
    runner.probs = np.concatenate(outputs)
    for _ in range(repeats):
        for chunk, _ in batches(x, batch):
            started = time.perf_counter()
            run(chunk)
            runner.batch_ms.append((time.perf_counter() - started) * 1e3)


def on_device(model: str, device: Device, dtype: str, x: np.ndarray, batch: int, repeats: int,
              calibration: list[np.ndarray] | None, log: Callable[[str], None]) -> Runner:
    """Compile, upload, run: a compile or device error is reported in the table, not raised."""
    from userspace.compiler import CompileError, compile
    from userspace.compiler.runtime import RUN_PHASES

    runner = Runner(f"device {dtype}")
    log(f"compiling the model for the device ({dtype}{', calibrated on training images' if calibration else ''})")
    started = time.perf_counter()
    try:
        compiled = compile(model, device, dtype=dtype, calibration=calibration)
    except (CompileError, OSError) as e:
        runner.error = f"compile failed: {e}"
        log(runner.error)
        return runner
    runner.prepare_s = time.perf_counter() - started
    timings = getattr(compiled, "timings", None)
    runner.upload_s = getattr(timings, "upload", None)
    log(f"compiled and uploaded in {runner.prepare_s:.2f} s: {_summary(compiled)}")

    def run(chunk: np.ndarray) -> np.ndarray:
        out = compiled.run({INPUT: chunk})[0]
        for name in RUN_PHASES:
            runner.phases.setdefault(name, []).append(getattr(compiled.timings, name, 0.0) * 1e3)
        return out

    try:
        run_batches(run, x, batch, runner, repeats)
    except (OSError, ValueError) as e:
        runner.error = f"run failed: {e}"
        log(runner.error)
    finally:
        compiled.close()
    return runner


def on_onnxruntime(model: onnx.ModelProto, threads: int, x: np.ndarray, batch: int, repeats: int) -> Runner:
    runner = Runner(f"onnxruntime ({threads} thr)")
    started = time.perf_counter()
    session = ort_session(model, threads)
    runner.prepare_s = time.perf_counter() - started
    run_batches(lambda chunk: session.run(None, {INPUT: chunk})[0], x, batch, runner, repeats)
    return runner


def _phase(runner: Runner, *names: str) -> str:
    """p50 over runs of the sum of some phases of a device run, or '-' where there are none (onnxruntime)."""
    if not all(runner.phases.get(n) for n in names):
        return "-"
    return f"{statistics.median(sum(v) for v in zip(*(runner.phases[n] for n in names), strict=True)):.2f} ms"


def _summary(compiled: object) -> str:
    summary = getattr(compiled, "summary", None)
    return summary() if callable(summary) else type(compiled).__name__


# -- the report ---------------------------------------------------------------------------------

def _ascii(image: np.ndarray) -> list[str]:
    """An 8x8 digit as eight lines of shades, so the samples can be checked by eye."""
    shades = " .:-=+*#%@"
    return ["".join(shades[min(int(v * (len(shades) - 1) + 0.5), len(shades) - 1)] * 2 for v in row)
            for row in image.reshape(IMAGE, IMAGE)]


def samples_text(digits: Digits, runners: Sequence[Runner], count: int = 6) -> list[str]:
    """A few test images drawn side by side with each runner's prediction and confidence under them."""
    done = [e for e in runners if e.probs is not None]
    picks = np.linspace(0, len(digits.y_test) - 1, count).astype(int)
    lines = ["   ".join(_ascii(digits.x_test[i])[r] for i in picks) for r in range(IMAGE)]
    lines.append("   ".join(f"{'true ' + str(digits.y_test[i]):<16}" for i in picks).rstrip())
    for runner in done:
        assert runner.probs is not None
        short = runner.label.split(" (")[0].replace("device ", "")
        cells = [f"{short[:7]:<7} {int(runner.probs[i].argmax())} {runner.probs[i].max():4.2f}" for i in picks]
        lines.append("   ".join(f"{c:<16}" for c in cells).rstrip())
    return lines


def results_text(digits: Digits, runners: Sequence[Runner], reference: Runner, batch: int) -> list[str]:
    """Accuracy, agreement with onnxruntime and timings, one column per runner."""
    y = digits.y_test
    width = 20
    head = f"{'':26}" + "".join(f"{e.label:>{width}}" for e in runners)

    def row(label: str, cell: Callable[[Runner], str]) -> str:
        return f"{label:26}" + "".join(f"{(cell(e) if e.probs is not None else 'n/a'):>{width}}" for e in runners)

    ref = reference.probs
    assert ref is not None
    ref_pred = ref.argmax(axis=1)
    lines = [f"results on the {len(y)} held-out test images, batches of {batch}", head,
             row("accuracy", lambda e: f"{100 * e.accuracy(y):.2f} %"),
             row("agrees with onnxruntime", lambda e: f"{int((e.probs.argmax(1) == ref_pred).sum())}/{len(y)}"),
             row("max |p - p_onnxruntime|", lambda e: f"{np.abs(e.probs - ref).max():.2e}"),
             row("compile + upload / session", lambda e: f"{e.prepare_s * 1e3:.1f} ms"),
             row("  of which upload", lambda e: f"{e.upload_s * 1e3:.1f} ms" if e.upload_s is not None else "-"),
             row("first batch", lambda e: f"{e.first_ms:.2f} ms"),
             row("per batch (p50)", lambda e: f"{e.p50_ms:.2f} ms"),
             row("  of which on the device", lambda e: _phase(e, "device")),
             row("  of which host in/out", lambda e: _phase(e, "write_inputs", "read_outputs")),
             row("per image (p50 / batch)", lambda e: f"{e.p50_ms * 1e3 / batch:.1f} µs"),
             row(f"{TIMES} onnxruntime (p50)", lambda e: f"{e.p50_ms / reference.p50_ms:.2f}{TIMES}")]
    lines += [f"  {e.label}: {e.error}" for e in runners if e.error]
    return lines


# -- the command ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="accel-demo",
        description="Train a small CNN on scikit-learn's bundled 8x8 digits (nothing downloaded), export it to "
                    "ONNX, compile it for the accel device and classify the held-out images on it, fp32 and int8, "
                    "next to onnxruntime with the same thread count.")
    p.add_argument("demo", nargs="?", default="digits", choices=["digits"], help="which demo (default digits)")
    p.add_argument("--mount", help="emudev mountpoint (default $EMUDEV_MOUNT, then /dev/accel)")
    p.add_argument("--device", type=int, default=0, help="device index N of accelN (default 0)")
    p.add_argument("--epochs", type=int, default=EPOCHS, help=f"training epochs (default {EPOCHS})")
    p.add_argument("--batch", type=int, default=INFER_BATCH, help=f"inference batch size (default {INFER_BATCH})")
    p.add_argument("--repeats", type=int, default=3, help="extra timed passes over the test set (default 3)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="onnxruntime intra-op threads (default: the CPU count, what the device's numpy uses)")
    p.add_argument("--no-int8", action="store_true", help="skip the int8 path")
    p.add_argument("--seed", type=int, default=SEED, help="seed of the split, the initialisation and the batches")
    p.add_argument("--save", metavar="FILE.onnx", help="also keep the exported ONNX model here")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch < 1 or args.repeats < 0 or args.threads < 1:
        p.error("--epochs, --batch and --threads must be ≥ 1, --repeats ≥ 0")

    def log(message: str) -> None:
        print(f"accel-demo: {message}", flush=True)

    from userspace.libaccel import Device, find_devices

    nodes = find_devices(args.mount)
    if args.device >= len(nodes):
        where = args.mount or os.environ.get("EMUDEV_MOUNT") or "/dev/accel"
        print(f"accel-demo: no accel{args.device} under {where} ({len(nodes)} device(s) found; mount one with "
              "`emudev mount DIR` and pass --mount DIR)", file=sys.stderr)
        return 1
    try:
        import onnx
        import onnxruntime
        import sklearn  # noqa: F401
    except ImportError as e:
        print(f"accel-demo: {e.name} is not installed (run `make setup`)", file=sys.stderr)
        return 1

    digits = load_digits(args.seed)
    log(f"scikit-learn digits: {len(digits.y_train)} training and {len(digits.y_test)} test images, 8x8, 10 classes")
    log(f"training {ARCHITECTURE}, {args.epochs} epochs of Adam, batch {TRAIN_BATCH}")
    training = train(digits.x_train, digits.y_train, epochs=args.epochs, seed=args.seed)
    test_acc = float((predict(training.params, digits.x_test) == digits.y_test).mean())
    n_params = sum(v.size for v in training.params.values())
    log(f"trained in {training.seconds:.2f} s: loss {training.losses[-1]:.4f}, training accuracy "
        f"{100 * training.train_accuracy:.2f} %, test accuracy (numpy) {100 * test_acc:.2f} %, {n_params} parameters")
    model = to_onnx(training.params, batch=args.batch)
    with tempfile.TemporaryDirectory(prefix="accel-demo-") as tmp:
        path = args.save or os.path.join(tmp, "digits.onnx")
        try:
            onnx.save(model, path)
        except OSError as e:
            print(f"accel-demo: cannot write {path}: {e.strerror or e}", file=sys.stderr)
            return 1
        saved = f": {path}" if args.save else ""
        log(f"exported to ONNX ({os.path.getsize(path)} bytes, checked by onnx.checker){saved}")
        rng = np.random.default_rng(args.seed + 1)
        picks = rng.choice(len(digits.x_train), CALIBRATION_BATCHES * args.batch, replace=False)
        calibration = [digits.x_train[picks[i * args.batch:(i + 1) * args.batch]] for i in range(CALIBRATION_BATCHES)]
        try:
            with Device(nodes[args.device]) as device:
                device.set_client_name("accel-demo")
                log(f"device {nodes[args.device]}")
                runners = [on_device(path, device, "fp32", digits.x_test, args.batch, args.repeats, None, log)]
                if not args.no_int8:
                    runners.append(on_device(path, device, "int8", digits.x_test, args.batch, args.repeats,
                                             calibration, log))
        except OSError as e:
            print(f"accel-demo: {nodes[args.device]}: {e.strerror or e}", file=sys.stderr)
            return 1
        log(f"onnxruntime {onnxruntime.__version__}, {args.threads} intra-op thread(s)")
        reference = on_onnxruntime(model, args.threads, digits.x_test, args.batch, args.repeats)
    runners.append(reference)
    print()
    print("\n".join(samples_text(digits, runners)))
    print()
    print(f"training (numpy, hand-written backprop): {training.seconds:.2f} s for {args.epochs} epochs")
    print("\n".join(results_text(digits, runners, reference, args.batch)))
    fp32 = runners[0]
    if fp32.probs is None:
        return 1
    if fp32.accuracy(digits.y_test) < 0.9:
        print("accel-demo: the device's fp32 accuracy is below 90 %: something is wrong", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
