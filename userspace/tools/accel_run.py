"""accel-run: compile an ONNX model for an accel device, run it, time it, and optionally check it against onnxruntime.

The quickest answer to "does my model run on the NPU, how fast, and is it right?" without
writing code: inputs come from .npy files or are drawn at random (seeded, so two runs see
the same data), every phase is timed apart (compile, upload, first run, steady state), and
--compare runs the same inputs through onnxruntime with the same thread count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx

PROG = "accel-run"
EXIT_OK = 0
EXIT_DEVICE = 1  # no device, the device refused or failed a job
EXIT_USAGE = 2  # bad arguments, model file or input file (argparse's own status too)
EXIT_UNSUPPORTED = 3  # the compiler cannot compile the model (an operator, attribute or shape)
EXIT_MISMATCH = 4  # --compare found outputs beyond the tolerance
SEED = 0
PROFILE_NODES = 10
TRACEBACK_ENV = "ACCEL_RUN_TRACEBACK"

EPILOG = f"""\
exit status: {EXIT_OK} ok; {EXIT_DEVICE} no device, or the device failed; {EXIT_USAGE} bad arguments, model or input \
file; {EXIT_UNSUPPORTED} the model cannot be compiled for the device (the message names the node and operator); \
{EXIT_MISMATCH} --compare found a difference beyond the tolerance."""


class UserError(Exception):
    """A problem with what the user gave (file, input, option): reported as one line, never a traceback."""

    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int | str, ...]  # str for a symbolic dim
    dtype: np.dtype


# -- the model and its inputs -----------------------------------------------------------------------

def load_model(path: str) -> onnx.ModelProto:
    import onnx
    from google.protobuf.message import DecodeError

    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, not an ONNX model")
    try:
        model = onnx.load(path)
    except (DecodeError, ValueError) as e:
        raise UserError(f"{path}: not an ONNX model ({e})") from e
    except OSError as e:
        raise UserError(f"{path}: {e.strerror or e}") from e
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise UserError(f"{path}: not a valid ONNX model: {str(e).strip().splitlines()[0]}") from e
    return model


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The graph inputs that are not initializers, with their static or symbolic dims."""
    from onnx import helper

    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim)
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        except KeyError:
            dtype = np.dtype(np.float32)
        specs.append(InputSpec(value.name, dims, dtype))
    return specs


def parse_inputs(pairs: Sequence[str], specs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    """NAME=FILE.npy pairs, each loaded and checked against the model's inputs."""
    names = [s.name for s in specs]
    given: dict[str, np.ndarray] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--input wants NAME=FILE.npy, got {pair!r}")
        if name not in names:
            raise UserError(f"--input {name}: the model has no input {name!r} (its inputs: {', '.join(names)})")
        try:
            array = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise UserError(f"--input {name}: {path}: no such file") from None
        except (OSError, ValueError) as e:
            raise UserError(f"--input {name}: {path}: not a .npy array ({e})") from e
        spec = next(s for s in specs if s.name == name)
        if len(array.shape) != len(spec.shape) or any(
                isinstance(want, int) and want > 0 and want != got for want, got in zip(spec.shape, array.shape,
                                                                                         strict=False)):
            raise UserError(f"--input {name}: {path} has shape {array.shape}, the model wants "
                            f"{_shape_text(spec.shape)}")
        given[name] = array.astype(spec.dtype, copy=False)
    return given


def random_input(spec: InputSpec, rng: np.random.Generator) -> np.ndarray:
    """Standard normal floats (ints in [0, 10)); symbolic dims are bound to 1, as the compiler does."""
    shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in spec.shape)
    if np.issubdtype(spec.dtype, np.floating):
        return rng.standard_normal(shape).astype(spec.dtype)
    if spec.dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(np.bool_)
    return rng.integers(0, 10, shape).astype(spec.dtype)


def _shape_text(shape: Sequence[int | str]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


# -- running ----------------------------------------------------------------------------------------

@dataclass
class Measured:
    first_s: float
    steady_s: list[float]
    outputs: list[np.ndarray]

    @property
    def p50(self) -> float:
        return statistics.median(self.steady_s) if self.steady_s else self.first_s


def measure(run: Any, runs: int) -> Measured:
    """One untimed-apart first run (it pays for first-touch costs), then `runs` steady-state runs."""
    started = time.perf_counter()
    outputs = run()
    first = time.perf_counter() - started
    steady = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        steady.append(time.perf_counter() - started)
    return Measured(first, steady, outputs)


def ort_session(model: onnx.ModelProto, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def compare(ours: Sequence[np.ndarray], theirs: Sequence[np.ndarray], names: Sequence[str]) -> list[dict[str, Any]]:
    """Per output: max abs error, its scale, and how often the argmax over the last axis agrees."""
    rows = []
    for name, a, b in zip(names, ours, theirs, strict=True):
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        row: dict[str, Any] = {"name": name, "shape": b.shape, "max_abs": float(np.abs(a - b).max()) if b.size else 0.0,
                               "scale": float(np.abs(b).max()) if b.size else 0.0}
        if a.shape != b.shape:
            row["error"] = f"shape {a.shape} vs onnxruntime {b.shape}"
        elif b.ndim >= 1 and b.shape[-1] > 1:
            agree = a.argmax(axis=-1) == b.argmax(axis=-1)
            row["argmax"] = (int(agree.sum()), int(agree.size))
        rows.append(row)
    return rows


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:9.3f} ms"


def _print_profile(rows: list[dict[str, Any]], top: int) -> None:
    """Busy time per engine against the span of the run's packets (what ran concurrently shows as a
    sum above 100 %), then the ONNX nodes whose packets took longest."""
    span_ns = max(r["end_ns"] for r in rows) - min(r["start_ns"] for r in rows)
    engines: Counter[str] = Counter()
    nodes: Counter[str] = Counter()
    kinds: dict[str, Counter[str]] = {}  # node -> its packets, as "PACKET on engine"
    for r in rows:
        engines[r["engine"]] += r["busy_ns"]
        nodes[r["node"]] += r["busy_ns"]
        kinds.setdefault(r["node"], Counter())[f"{r['packet']} on {r['engine']}"] += 1
    share = (lambda ns: f"{100 * ns / span_ns:5.1f} %") if span_ns > 0 else (lambda ns: "    - %")
    print()
    print(f"profile of the last run: {len(rows)} packet(s), {_ms(span_ns / 1e9).strip()} from the first one's start "
          "to the last one's end")
    print("  engine        busy      of that span")
    for engine, ns in engines.most_common():
        print(f"  {engine:8s} {_ms(ns / 1e9)}   {share(ns)}")
    print(f"  the {min(top, len(nodes))} slowest of {len(nodes)} node(s)")
    for name, ns in nodes.most_common(top):
        packets = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds[name].items()))
        print(f"  {_ms(ns / 1e9)}   {share(ns)}   node {name}: {packets}")


def _describe(array: np.ndarray) -> str:
    flat = array.reshape(-1)
    head = ", ".join(f"{v:.4g}" for v in flat[:6]) + (", …" if flat.size > 6 else "")
    extra = f", argmax {int(array.reshape(-1, array.shape[-1])[0].argmax())}" if array.ndim and array.shape[-1] > 1 \
        else ""
    return f"{_shape_text(array.shape)} {array.dtype}: [{head}]{extra}"


# -- the command ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Compile an ONNX model for an accel device, run it and time "
                                "every phase; --compare checks the outputs against onnxruntime.", epilog=EPILOG)
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX model")
    p.add_argument("--input", "-i", action="append", default=[], metavar="NAME=FILE.npy",
                   help="an input from a .npy file (repeatable); inputs not given are random, seeded")
    p.add_argument("--dtype", choices=["fp32", "int8"], default="fp32", help="precision on the device (default fp32)")
    p.add_argument("--runs", type=int, default=10, help="steady-state runs after the first (default 10)")
    p.add_argument("--compare", action="store_true", help="run the same inputs through onnxruntime and compare")
    p.add_argument("--tolerance", type=float, metavar="ABS",
                   help="largest max-abs error --compare accepts (default fp32: 1e-3 x the output's magnitude, "
                        "at least 1e-3; int8: reported only)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="onnxruntime intra-op threads (default the CPU count, as the device's numpy uses)")
    p.add_argument("--calibration", type=int, default=8, metavar="N",
                   help="int8: random samples to calibrate on when no --input is given (default 8)")
    p.add_argument("--seed", type=int, default=SEED, help=f"seed of the random inputs (default {SEED})")
    p.add_argument("--output-dir", metavar="DIR", help="save each output as DIR/NAME.npy")
    p.add_argument("--profile", type=int, nargs="?", const=PROFILE_NODES, metavar="N",
                   help="time every packet on the device (TIMESTAMPs around each) and show each engine's busy "
                        f"time and the N slowest ONNX nodes of the last run (default {PROFILE_NODES})")
    p.add_argument("--device", type=int, default=0, metavar="N", help="use accelN (default 0)")
    p.add_argument("--mount", metavar="DIR", help="emudev mountpoint (default $EMUDEV_MOUNT, then /dev/accel)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except UserError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _main(args: argparse.Namespace) -> int:
    if args.runs < 0 or args.threads < 1 or args.calibration < 1 or (args.profile is not None and args.profile < 1):
        raise UserError("--runs must be ≥ 0, --threads, --calibration and --profile ≥ 1")
    from userspace.libaccel import Device, find_devices

    model = load_model(args.model)
    specs = input_specs(model)
    given = parse_inputs(args.input, specs)
    nodes = find_devices(args.mount)
    if args.device >= len(nodes) or args.device < 0:
        where = args.mount or os.environ.get("EMUDEV_MOUNT") or "/dev/accel"
        raise UserError(f"no accel{args.device} under {where} ({len(nodes)} device(s) found; mount one with "
                        "`emudev mount DIR` and pass --mount DIR)", EXIT_DEVICE)
    rng = np.random.default_rng(args.seed)
    inputs = {s.name: given[s.name] if s.name in given else random_input(s, rng) for s in specs}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), "?")
    print(f"{PROG}: {args.model}: {len(model.graph.node)} nodes, opset {opset}, inputs "
          + ", ".join(f"{n} {_shape_text(a.shape)} {a.dtype}{'' if n in given else ' (random)'}"
                      for n, a in inputs.items()), flush=True)
    calibration = None
    if args.dtype == "int8":
        calibration = [inputs] if given else [inputs] + [{s.name: random_input(s, rng) for s in specs}
                                                         for _ in range(args.calibration - 1)]
    try:
        with Device(nodes[args.device]) as device:
            device.set_client_name(PROG)
            return _run(args, model, inputs, calibration, device)
    except OSError as e:
        print(f"{PROG}: {nodes[args.device]}: {e.strerror or e}", file=sys.stderr)
        return EXIT_DEVICE


def _run(args: argparse.Namespace, model: onnx.ModelProto, inputs: dict[str, np.ndarray],
         calibration: list[dict[str, np.ndarray]] | None, device: Any) -> int:
    from userspace.compiler import CompileError, compile
    from userspace.compiler.runtime import RUN_PHASES

    shapes = {name: array.shape for name, array in inputs.items()}
    print(f"{PROG}: compiling for {device.path} ({args.dtype}"
          f"{f', calibrating on {len(calibration)} sample(s)' if calibration else ''}) and uploading …", flush=True)
    started = time.perf_counter()
    try:
        compiled = compile(model, device, dtype=args.dtype, calibration=calibration, input_shapes=shapes,
                           profile=args.profile is not None)
    except CompileError as e:
        print(f"{PROG}: {args.model}: cannot compile for the device: {e}", file=sys.stderr)
        return EXIT_UNSUPPORTED
    except (OSError, KeyboardInterrupt):
        raise
    except Exception as e:  # the compiler should raise CompileError; anything else is a bad model or its bug
        if os.environ.get(TRACEBACK_ENV):
            raise
        print(f"{PROG}: {args.model}: the compiler failed on this model: {type(e).__name__}: {e} "
              f"(an invalid model, or a compiler bug: {TRACEBACK_ENV}=1 shows the traceback)", file=sys.stderr)
        return EXIT_UNSUPPORTED
    wall = time.perf_counter() - started
    t = compiled.timings
    try:
        print(f"{PROG}: compiled in {t.compile * 1e3:.1f} ms, uploaded in {t.upload * 1e3:.1f} ms "
              f"({wall * 1e3:.1f} ms in all): {compiled.summary()}", flush=True)
        print(f"{PROG}: running: 1 first run + {args.runs} steady-state", flush=True)
        phases: dict[str, list[float]] = {}

        def run_device() -> list[np.ndarray]:
            out = compiled.run(inputs)
            for name in RUN_PHASES:
                phases.setdefault(name, []).append(getattr(compiled.timings, name))
            return out

        try:
            measured = measure(run_device, args.runs)
        except ValueError as e:
            raise UserError(str(e)) from e
        output_names = [p.name for p in compiled.outputs]
        profile = compiled.profile() if args.profile is not None else []
    finally:
        compiled.close()
    print()
    for name, array in zip(output_names, measured.outputs, strict=True):
        print(f"output {name}: {_describe(array)}")
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
        for name, array in zip(output_names, measured.outputs, strict=True):
            np.save(os.path.join(args.output_dir, f"{name.replace('/', '_')}.npy"), array)
        print(f"outputs saved in {args.output_dir}")
    print()
    print("timings (device)")
    print(f"  compile              {_ms(t.compile)}")
    print(f"  upload               {_ms(t.upload)}")
    print(f"  first run            {_ms(measured.first_s)}")
    print(f"  steady run p50       {_ms(measured.p50)}   over {len(measured.steady_s)} run(s)"
          + (f", min {min(measured.steady_s) * 1e3:.3f} max {max(measured.steady_s) * 1e3:.3f} ms"
             if measured.steady_s else ""))
    steady = {k: v[1:] or v for k, v in phases.items()}
    print("    inputs in {} | on the device {} | outputs out {}".format(
        *(f"{statistics.median(steady[k]) * 1e3:.3f} ms" for k in RUN_PHASES)))
    if profile:
        _print_profile(profile, args.profile)
    if not args.compare:
        return EXIT_OK
    return _compare(args, model, inputs, output_names, measured)


def _compare(args: argparse.Namespace, model: onnx.ModelProto, inputs: dict[str, np.ndarray],
             output_names: list[str], measured: Measured) -> int:
    try:
        import onnxruntime
    except ImportError:
        raise UserError("--compare needs onnxruntime (pip install onnxruntime)") from None
    print()
    print(f"onnxruntime {onnxruntime.__version__} ({args.threads} intra-op thread(s))")
    try:
        started = time.perf_counter()
        session = ort_session(model, args.threads)
        created = time.perf_counter() - started
        ort_names = [o.name for o in session.get_outputs()]
        reference = measure(lambda: session.run(None, inputs), args.runs)
    except Exception as e:  # onnxruntime raises its own exception types for models it refuses
        raise UserError(f"onnxruntime cannot run {args.model}: {e}", EXIT_USAGE) from e
    print(f"  session              {_ms(created)}")
    print(f"  first run            {_ms(reference.first_s)}")
    print(f"  steady run p50       {_ms(reference.p50)}   device / onnxruntime = "
          f"{measured.p50 / reference.p50:.2f}\N{MULTIPLICATION SIGN}")
    by_name = dict(zip(ort_names, reference.outputs, strict=True))
    rows = compare(measured.outputs, [by_name[n] for n in output_names], output_names)
    failed = False
    print()
    print("comparison with onnxruntime")
    for row in rows:
        tolerance = args.tolerance
        if tolerance is None and args.dtype == "fp32":
            tolerance = 1e-3 * max(1.0, row["scale"])
        if "error" in row:
            verdict, failed = f"MISMATCH: {row['error']}", True
        elif tolerance is None:
            verdict = "(int8: not checked; pass --tolerance to check)"
        elif row["max_abs"] <= tolerance:
            verdict = f"ok (≤ {tolerance:.3g})"
        else:
            verdict, failed = f"EXCEEDS the tolerance {tolerance:.3g}", True
        argmax = f", argmax agrees {row['argmax'][0]}/{row['argmax'][1]}" if "argmax" in row else ""
        print(f"  {row['name']}: max abs error {row['max_abs']:.3g} (values up to {row['scale']:.3g})"
              f"{argmax}  {verdict}")
    return EXIT_MISMATCH if failed else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
