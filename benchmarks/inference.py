"""Inference: whole networks end to end through the mounted device, next to onnxruntime on the same CPU.

What a user of the stack feels is model.run(): inputs written into the arena, the command
streams submitted, the engines run, the fence waited on, outputs read back. That is timed
here for whole networks and set against onnxruntime's session.run() of the same ONNX
model, on the same inputs, with as many intra-op threads as the CPU has (what the
daemon's numpy uses), so the ratio compares like with like. Runs of the two are
alternated in blocks, so that drift on a shared VM hits both alike while each runs warm, as
it would in a loop of inferences: run for run, the two evict each other's weights from the
caches and onnxruntime's spinning threads take the CPUs from the daemon's engines. Each block
starts with one untimed run, which also outlasts the other side's threads spinning down.

Networks: the digits CNN of `accel-demo` (trained here on scikit-learn's digits, so int8
accuracy means something), an MLP (the GEMM path alone), a ResNet-ish CNN on
1x3x64x64 with random weights (convolutions, folded BatchNorm, residual adds, pooling),
and model-zoo networks at 1x3x224x224 from the onnx package's test data with random
weights (SqueezeNet, Inception v1, ResNet-50). The small ones show the fixed cost of a
run through the node (a few round trips and Python per kernel), the zoo ones the
engines' arithmetic.
Each runs fp32 and int8 on the device; the baseline is onnxruntime fp32, what a user would
otherwise run. The target is a device latency ≤ 1.5x onnxruntime's. Outputs are checked
against onnxruntime: an fp32 result beyond tolerance fails the run (a wrong answer makes
its time meaningless); int8 error is reported. The daemon runs as `emudev mount` starts it,
without the checkers the tests turn on: like lockdep in a kernel, they are not what a user runs.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from emudev.testing import DaemonStartError, MountedEmudev
from userspace.demo import digits, models
from userspace.libaccel import Device

TARGET = 1.5
REPS = 30
QUICK_REPS = 5
WARMUP = 2
BLOCK = 5  # runs of one side before the other's
DIGITS_EPOCHS = 15
QUICK_DIGITS_EPOCHS = 4
DIGITS_BATCH = 64
FP32_TOLERANCE = 1e-3
SEED = 20240607
ZOO = (("squeezenet", "SqueezeNet 1.0"), ("inception_v1", "Inception v1"), ("resnet50", "ResNet-50"))
QUICK_ZOO = ZOO[:1]
LABEL_WIDTH = 34
TIMES = "\N{MULTIPLICATION SIGN}"


@dataclass
class Case:
    """One network at one batch size, with the inputs every run of it uses."""

    label: str
    model: object  # onnx.ModelProto
    inputs: dict[str, np.ndarray]
    calibration: list[dict[str, np.ndarray]]


@dataclass
class Row:
    label: str
    dtype: str
    device_ms: list[float] = field(default_factory=list)
    ort_ms: list[float] = field(default_factory=list)
    max_abs: float | None = None
    max_ref: float = 0.0
    argmax: tuple[int, int] | None = None
    error: str | None = None
    wrong: str | None = None

    @property
    def ratio(self) -> float | None:
        if not self.device_ms or not self.ort_ms:
            return None
        return statistics.median(self.device_ms) / statistics.median(self.ort_ms)


# -- the workloads --------------------------------------------------------------------------------

def build_cases(quick: bool, trained: digits.Training, data: digits.Digits) -> list[Case]:
    rng = np.random.default_rng(SEED)
    cases = []
    for batch in (1, DIGITS_BATCH):
        x = data.x_test[:batch]
        cal = [{digits.INPUT: data.x_train[i * batch:(i + 1) * batch]} for i in range(4)]
        cases.append(Case(f"digits CNN 1x8x8, batch {batch}", digits.to_onnx(trained.params, batch=batch),
                          {digits.INPUT: x}, cal))
    mlp = models.mlp(batch=1)
    cases.append(Case("MLP 256-512-256-10, batch 1", mlp, {"input": _normal(rng, (1, 256))},
                      [{"input": _normal(rng, (1, 256))} for _ in range(8)]))
    resnet = models.resnet(batch=1, size=64)
    cases.append(Case("ResNet-ish 3x64x64, batch 1", resnet, {"input": _normal(rng, (1, 3, 64, 64))},
                      [{"input": _normal(rng, (1, 3, 64, 64))} for _ in range(4 if quick else 8)]))
    for name, label in (QUICK_ZOO if quick else ZOO):
        if models.model_zoo_path(name) is None:
            continue
        model = models.model_zoo(name)
        data, shape = models.model_input(model)
        cases.append(Case(f"{label} 3x224x224, batch 1", model, {data: _normal(rng, shape)},
                          [{data: _normal(rng, shape)} for _ in range(2)]))
    return cases


def _normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


# -- measuring ------------------------------------------------------------------------------------

def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1e3


def measure_case(dev: Device, case: Case, dtype: str, threads: int, reps: int) -> Row:
    """Compile, check the outputs once against onnxruntime, then time both, in alternating blocks."""
    from userspace.compiler import CompileError, compile

    row = Row(case.label, dtype)
    session = digits.ort_session(case.model, threads)  # type: ignore[arg-type]
    try:
        compiled = compile(case.model, dev, dtype=dtype,  # type: ignore[arg-type]
                           calibration=case.calibration if dtype == "int8" else None)
    except (CompileError, OSError) as e:
        row.error = f"compile: {e}"
        return row
    try:
        ours = compiled.run(case.inputs)[0]
        theirs = session.run(None, case.inputs)[0]
        row.max_abs = float(np.abs(ours - theirs).max())
        row.max_ref = float(np.abs(theirs).max())
        agree = ours.argmax(axis=-1) == theirs.argmax(axis=-1)
        row.argmax = (int(agree.sum()), int(agree.size))
        if dtype == "fp32" and row.max_abs > FP32_TOLERANCE * max(1.0, row.max_ref):
            row.wrong = f"max abs error {row.max_abs:.3g} against onnxruntime"
        for start in range(0, reps, BLOCK):
            block = min(BLOCK, reps - start)
            for times, run in ((row.device_ms, lambda: compiled.run(case.inputs)),
                               (row.ort_ms, lambda: session.run(None, case.inputs))):
                for _ in range(WARMUP if start == 0 else 1):
                    run()
                times.extend(_timed(run) for _ in range(block))
    except OSError as e:
        row.error = f"run: {e}"
    finally:
        compiled.close()
    return row


@dataclass
class Accuracy:
    label: str
    accuracy: float | None
    agree: int | None = None
    error: str | None = None


def digits_accuracy(dev: Device, trained: digits.Training, data: digits.Digits, threads: int) -> list[Accuracy]:
    """The whole held-out set through the device (fp32, int8) and onnxruntime, batch by batch."""
    from userspace.compiler import CompileError, compile

    model = digits.to_onnx(trained.params, batch=DIGITS_BATCH)
    session = digits.ort_session(model, threads)
    reference = np.concatenate([session.run(None, {digits.INPUT: chunk})[0][:n]
                                for chunk, n in digits.batches(data.x_test, DIGITS_BATCH)])
    ref_pred = reference.argmax(axis=1)
    results = []
    for dtype in ("fp32", "int8"):
        calibration = [data.x_train[i * DIGITS_BATCH:(i + 1) * DIGITS_BATCH] for i in range(4)]
        try:
            with compile(model, dev, dtype=dtype, calibration=calibration if dtype == "int8" else None) as compiled:
                probs = np.concatenate([compiled.run({digits.INPUT: chunk})[0][:n]
                                        for chunk, n in digits.batches(data.x_test, DIGITS_BATCH)])
        except (CompileError, OSError) as e:
            results.append(Accuracy(f"device {dtype}", None, error=str(e)))
            continue
        pred = probs.argmax(axis=1)
        results.append(Accuracy(f"device {dtype}", float((pred == data.y_test).mean()), int((pred == ref_pred).sum())))
    results.append(Accuracy("onnxruntime fp32", float((ref_pred == data.y_test).mean()), len(ref_pred)))
    return results


# -- report ---------------------------------------------------------------------------------------

def _p50(values: list[float]) -> str:
    return f"{statistics.median(values):10.3f}" if values else f"{'n/a':>10}"


def _ratio(ratio: float | None) -> str:
    return f"{ratio:10.2f}" if ratio is not None else f"{'n/a':>10}"


def table(rows: list[Row], reps: int, threads: int) -> list[str]:
    lines = [f"model.run() vs onnxruntime session.run() ({threads} intra-op threads), median of {reps} "
             f"runs in alternating blocks of {BLOCK}, ms",
             f"{'network':{LABEL_WIDTH}}{'dtype':>6}{'device':>10}{'onnxrt':>10}{TIMES + ' onnxrt':>10}"
             f"{'≤ ' + format(TARGET, 'g') + TIMES:>10}  outputs vs onnxruntime fp32"]
    for row in rows:
        ratio = row.ratio
        verdict = "n/a" if ratio is None else ("met" if ratio <= TARGET else "NOT met")
        check = ""
        if row.max_abs is not None:
            check = f"max abs {row.max_abs:.2g} ({100 * row.max_abs / max(row.max_ref, 1e-30):.2g}% of max |out|)"
            if row.argmax:
                check += f", argmax {row.argmax[0]}/{row.argmax[1]}"
        if row.wrong:
            check += "  WRONG"
        lines.append(f"{row.label:{LABEL_WIDTH}}{row.dtype:>6}{_p50(row.device_ms)}{_p50(row.ort_ms)}"
                     f"{_ratio(ratio)}{verdict:>10}  {check}".rstrip())
    lines += [f"  {row.label} {row.dtype}: {row.error}" for row in rows if row.error]
    return lines


def accuracy_table(results: list[Accuracy], test_images: int) -> list[str]:
    lines = [f"digits CNN accuracy on the {test_images} held-out images (batches of {DIGITS_BATCH})",
             f"{'':{LABEL_WIDTH}}{'accuracy':>10}{'agrees with onnxruntime':>26}"]
    for r in results:
        if r.accuracy is None:
            lines.append(f"{r.label:{LABEL_WIDTH}}{'n/a':>10}  {r.error}")
        else:
            lines.append(f"{r.label:{LABEL_WIDTH}}{100 * r.accuracy:9.2f}%{f'{r.agree}/{test_images}':>26}")
    return lines


def verdict(rows: list[Row]) -> str:
    measured = [r for r in rows if r.ratio is not None]
    if not measured:
        return f"target device ≤ {TARGET:g}{TIMES} onnxruntime: not measured"
    met = [r for r in measured if r.ratio is not None and r.ratio <= TARGET]
    worst = max(measured, key=lambda r: r.ratio or 0.0)
    best = min(measured, key=lambda r: r.ratio or 0.0)
    return (f"target device ≤ {TARGET:g}{TIMES} onnxruntime: met for {len(met)} of {len(measured)} "
            f"(best {best.ratio:.2f}{TIMES} {best.label} {best.dtype}, worst {worst.ratio:.2f}{TIMES} {worst.label} "
            f"{worst.dtype}): {'met' if len(met) == len(measured) else 'NOT met'}")


def run(quick: bool) -> int:
    """Print the latency table, the digits accuracy table and the target line; wrong fp32 outputs fail the run."""
    reps = QUICK_REPS if quick else REPS
    threads = os.cpu_count() or 1
    data = digits.load_digits(SEED)
    started = time.perf_counter()
    trained = digits.train(data.x_train, data.y_train, epochs=QUICK_DIGITS_EPOCHS if quick else DIGITS_EPOCHS,
                           seed=SEED)
    print(f"digits CNN trained in {time.perf_counter() - started:.1f} s "
          f"({trained.epochs} epochs, training accuracy {100 * trained.train_accuracy:.1f} %)")
    cases = build_cases(quick, trained, data)
    try:
        with MountedEmudev(devices=1, check=False) as mount, Device(mount.node(0)) as dev:
            dev.set_client_name("bench-inference")
            rows = [measure_case(dev, case, dtype, threads, reps) for case in cases for dtype in ("fp32", "int8")]
            accuracy = digits_accuracy(dev, trained, data, threads)
    except DaemonStartError as e:
        print(f"emudev did not start: {e}")
        return 1
    print("\n".join([*table(rows, reps, threads), "", *accuracy_table(accuracy, len(data.y_test)), "",
                     verdict(rows)]))
    failures = [f"!! WRONG, {r.label} {r.dtype}: {r.wrong}" for r in rows if r.wrong]
    if failures:
        print("\n".join(failures))
    errors = [r for r in rows if r.error] + [a for a in accuracy if a.error]
    return 1 if failures or errors else 0
