"""The uapi spec, its generated outputs, the linter, and the ABI against real C headers."""

from __future__ import annotations

import copy
import ctypes
import shutil
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from emudev.uapi import defs, gen, lint
from emudev.uapi.types import IOC_READ, IOC_WRITE, UapiStruct, ioc, ioc_dir, ioc_nr, ioc_size, ioc_type

GCC = shutil.which("gcc")
needs_gcc = pytest.mark.skipif(GCC is None, reason="gcc is missing")
LIBDRM_INCLUDE = "/usr/include/libdrm"
HEADER_DIR = gen.REPO_ROOT / "include/uapi/drm"

# Fields added to kernel structs after older headers were published, and a macro
# that appeared with each one, so the probe can tell "absent" from "wrong".
FIELD_GUARDS = {
    ("drm_syncobj_wait", "deadline_nsec"): "DRM_SYNCOBJ_WAIT_FLAGS_WAIT_DEADLINE",
    ("drm_syncobj_timeline_wait", "deadline_nsec"): "DRM_SYNCOBJ_WAIT_FLAGS_WAIT_DEADLINE",
    ("drm_syncobj_handle", "point"): "DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_TIMELINE",
}
# What an older system header may lack; anything else missing is a transcription error.
RECENT_ADDITIONS = {
    "DRM_IOCTL_SYNCOBJ_EVENTFD",
    "DRM_IOCTL_SET_CLIENT_NAME",
    "DRM_IOCTL_GEM_CHANGE_HANDLE",
    "DRM_CLIENT_NAME_MAX_LEN",
    "DRM_CAP_ATOMIC_ASYNC_PAGE_FLIP",
    "DRM_CLIENT_CAP_CURSOR_PLANE_HOTSPOT",
    "DRM_CLIENT_CAP_PLANE_COLOR_PIPELINE",
    "DRM_SYNCOBJ_WAIT_FLAGS_WAIT_DEADLINE",
    "DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_TIMELINE",
    "DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_TIMELINE",
    "drm_syncobj_eventfd",
    "drm_set_client_name",
    "drm_gem_change_handle",
    "drm_syncobj_wait.deadline_nsec",
    "drm_syncobj_timeline_wait.deadline_nsec",
    "drm_syncobj_handle.point",
    "SYNC_IOC_SET_DEADLINE",
    "sync_set_deadline",
}
SYSTEM_HEADERS = {
    "drm": '#include "drm.h"',
    "dma_buf": "#include <linux/dma-buf.h>",
    "sync_file": "#include <linux/sync_file.h>",
}


@pytest.fixture(scope="module")
def documents() -> list[tuple[str, dict[str, Any]]]:
    return gen.load_documents()


@pytest.fixture(scope="module")
def model(documents: list[tuple[str, dict[str, Any]]]) -> gen.Model:
    return gen.build_model(documents)


# --------------------------------------------------------------------------- generated files


def test_committed_outputs_are_what_the_generator_writes(documents: list[tuple[str, dict[str, Any]]]) -> None:
    assert gen.stale_outputs(gen.render_all(documents)) == []


def test_stale_output_is_named(documents: list[tuple[str, dict[str, Any]]], tmp_path: Path) -> None:
    outputs = gen.render_all(documents)
    for relative, text in outputs.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    (tmp_path / gen.DOCS_PATH).write_text("edited by hand\n")
    assert gen.stale_outputs(outputs, tmp_path) == [gen.DOCS_PATH]


def test_generation_is_deterministic(documents: list[tuple[str, dict[str, Any]]]) -> None:
    assert gen.render_all(documents) == gen.render_all(copy.deepcopy(documents))


def test_check_mode_passes_on_the_repository() -> None:
    assert gen.main(["--check"]) == 0


# --------------------------------------------------------------------------- Python bindings


def _struct_classes() -> list[type[UapiStruct]]:
    classes = [
        value for value in vars(defs).values() if isinstance(value, type) and issubclass(value, UapiStruct)
    ]
    return [value for value in classes if value is not UapiStruct]


def test_every_spec_struct_has_a_class(model: gen.Model) -> None:
    assert sorted(struct.__name__ for struct in _struct_classes()) == sorted(model.structs)


@pytest.mark.parametrize("struct", _struct_classes(), ids=lambda struct: struct.__name__)
def test_ctypes_layout_matches_the_spec(struct: type[UapiStruct], model: gen.Model) -> None:
    spec = model.structs[struct.__name__]
    assert ctypes.sizeof(struct) == spec.size
    assert [(f.name, f.offset, f.size) for f in struct._specs_] == [
        (f.name, f.offset, f.size) for f in spec.fields
    ]
    for field in struct._specs_:
        assert getattr(struct, field.name).offset == field.offset


def test_reference_request_numbers() -> None:
    assert defs.DRM_IOCTL_VERSION == 0xC0406400
    assert defs.DRM_IOCTL_SYNCOBJ_WAIT == 0xC02864C3
    assert defs.DRM_IOCTL_EMUDEV_GET_PARAM == 0xC0106440
    assert defs.DMA_BUF_IOCTL_SYNC == 0x40086200
    assert (defs.DMA_BUF_SET_NAME_A, defs.DMA_BUF_SET_NAME_B) == (0x40046201, 0x40086201)
    assert defs.SYNC_IOC_SET_DEADLINE == 0x40103E05
    assert (defs.SW_SYNC_IOC_CREATE_FENCE, defs.SW_SYNC_IOC_INC) == (0xC0285700, 0x40045701)


def test_ioctl_specs_are_consistent() -> None:
    wait = defs.IOCTLS_BY_NAME["DRM_IOCTL_SYNCOBJ_WAIT"]
    assert wait.sizes == (32, 40) and wait.cmds == (0xC02064C3, 0xC02864C3)
    assert wait.requires == {"syncobj"} and wait.permissions == {"render_allow"}
    assert defs.IOCTLS_BY_NAME["DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT"].requires == {"syncobj", "syncobj_timeline"}
    assert defs.IOCTLS_BY_NAME["SW_SYNC_IOC_INC"].struct is defs.sw_sync_inc_arg
    for spec in defs.IOCTLS:
        assert getattr(defs, spec.name) == spec.cmd
        assert (ioc_dir(spec.cmd), ioc_type(spec.cmd), ioc_nr(spec.cmd), ioc_size(spec.cmd)) == (
            spec.dir,
            spec.type,
            spec.nr,
            spec.size,
        )
        assert spec.type == defs.FAMILIES[spec.family].type


def test_driver_identity() -> None:
    assert defs.DRIVER == {
        "name": "emudev",
        "desc": "emudev NPU",
        "date": "0",
        "major": 0,
        "minor": 1,
        "patchlevel": 0,
    }
    assert defs.DRM_EMUDEV_UAPI_VERSION == 0 << 16 | 1


def test_flag_sets_and_enums() -> None:
    prime = defs.FLAGSETS["drm_prime_handle_flags"]
    assert prime.mask == defs.DRM_CLOEXEC | defs.DRM_RDWR == 0x80002
    assert prime.invalid(defs.DRM_CLOEXEC | 0x4) == 0x4
    assert defs.FLAGSETS["dma_buf_sync_flags"].mask == defs.DMA_BUF_SYNC_VALID_FLAGS_MASK
    assert defs.ENUMS["drm_emudev_param_id"].name_of(5) == "DRM_EMUDEV_PARAM_PAGE_SIZE"


def test_from_bytes_zero_extends_and_truncates_like_drm_ioctl() -> None:
    old = bytes(range(1, 33))
    wait = defs.drm_syncobj_wait.from_bytes(old)
    assert wait.deadline_nsec == 0 and wait.to_bytes()[:32] == old
    longer = defs.drm_emudev_param.from_bytes(b"\x04" + b"\0" * 15 + b"\xff" * 8)
    assert longer.param == defs.DRM_EMUDEV_PARAM_UAPI_VERSION and len(longer.to_bytes()) == 16
    assert defs.sync_merge_data(name=b"merged", fd2=7).fields_dict()["name"] == b"merged"


def test_ioc_encoding() -> None:
    assert ioc(IOC_READ | IOC_WRITE, ord("d"), 0x00, 64) == 0xC0406400
    with pytest.raises(ValueError):
        ioc(IOC_WRITE, ord("d"), 0x100, 8)


# --------------------------------------------------------------------------- linter


def test_the_spec_is_lint_clean(documents: list[tuple[str, dict[str, Any]]]) -> None:
    assert [str(problem) for problem in lint.lint_documents(documents)] == []


TOY_DRIVER = """
family: toy
type: "d"
origin: driver
dispatch: nr
unknown-errno: EINVAL
doc: A toy driver.
prefix: DRM_TOY
version: {major: 1, minor: 0}
driver: {name: toy, desc: toy NPU, date: "0"}
flags:
  - name: toy_flags
    doc: Flags.
    mask: all
    members:
      - {name: TOY_F_A, value: 0x1, doc: A.}
structs:
  - name: toy_arg
    doc: Argument.
    fields:
      - {name: handle, type: u32, doc: Handle.}
      - {name: flags, type: u32, flags: toy_flags, doc: Flags.}
      - {name: data, type: ptr, points-to: "u8[size]", doc: Data.}
      - {name: size, type: u64, doc: Size of data.}
ioctls:
  - name: DRM_IOCTL_TOY_DO
    index: 0
    dir: iowr
    struct: toy_arg
    doc: Do it.
    errors:
      - {errno: EINVAL, when: flags has unknown bits}
"""


def _toy_driver() -> dict[str, Any]:
    """A minimal clean driver spec for seeding one mistake at a time."""
    return gen.parse_document(TOY_DRIVER, "toy.yaml")


def _toy_fields(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return spec["structs"][0]["fields"]


def _lint_toy(
    documents: list[tuple[str, dict[str, Any]]], mutate: Callable[[dict[str, Any]], None]
) -> list[str]:
    toy = _toy_driver()
    mutate(toy)
    drm = next(data for path, data in documents if path.endswith("drm.yaml"))
    return [f"{p.rule}: {p.message}" for p in lint.lint_documents([("drm.yaml", drm), ("toy.yaml", toy)])]


def test_toy_driver_is_clean(documents: list[tuple[str, dict[str, Any]]]) -> None:
    assert _lint_toy(documents, lambda toy: None) == []


def _hole(toy: dict[str, Any]) -> None:
    del _toy_fields(toy)[1]


def _tail_padding(toy: dict[str, Any]) -> None:
    _toy_fields(toy).append({"name": "extra", "type": "u32", "doc": "Extra."})


def _u32_pointer(toy: dict[str, Any]) -> None:
    _toy_fields(toy)[0]["points-to"] = "u32[size]"


def _mask_missing(toy: dict[str, Any]) -> None:
    del toy["flags"][0]["mask"]


def _flags_without_set(toy: dict[str, Any]) -> None:
    del _toy_fields(toy)[1]["flags"]


def _undocumented_field(toy: dict[str, Any]) -> None:
    del _toy_fields(toy)[3]["doc"]


def _duplicate_nr(toy: dict[str, Any]) -> None:
    toy["ioctls"].append({**toy["ioctls"][0], "name": "DRM_IOCTL_TOY_AGAIN"})


def _outside_driver_range(toy: dict[str, Any]) -> None:
    toy["ioctls"][0]["index"] = 0x60


def _driver_waiver(toy: dict[str, Any]) -> None:
    toy["structs"][0]["kernel-abi"] = {"waive": ["explicit-padding"], "why": "no reason"}


def _bool_field(toy: dict[str, Any]) -> None:
    _toy_fields(toy)[0]["type"] = "bool"


def _kernel_c_type(toy: dict[str, Any]) -> None:
    _toy_fields(toy)[3]["kernel-c-type"] = "unsigned long"


def _output_of_iow(toy: dict[str, Any]) -> None:
    toy["ioctls"][0]["dir"] = "iow"
    _toy_fields(toy)[0]["dir"] = "out"


def _late_field_in_the_middle(toy: dict[str, Any]) -> None:
    _toy_fields(toy)[1]["since"] = "v2"


def _unknown_permission(toy: dict[str, Any]) -> None:
    toy["ioctls"][0]["permissions"] = ["render"]


def _packets(toy: dict[str, Any]) -> None:
    toy["packets"] = []


TOY_HELPER = {
    "name": "toy_zero",
    "doc": "Return zero.\n@fd: Ignored.\n\nReturn: 0.",
    "code": "static inline int toy_zero(int fd)\n{\n\t(void)fd;\n\treturn 0;\n}\n",
}


def _undocumented_helper(toy: dict[str, Any]) -> None:
    toy["c-helpers"] = [{key: value for key, value in TOY_HELPER.items() if key != "doc"}]


def _helper_not_inline(toy: dict[str, Any]) -> None:
    toy["c-helpers"] = [{**TOY_HELPER, "code": TOY_HELPER["code"].replace("static inline ", "")}]


def _helper_misnamed(toy: dict[str, Any]) -> None:
    toy["c-helpers"] = [{**TOY_HELPER, "name": "toy_one"}]


SEEDED_MISTAKES = [
    (_hole, "explicit-padding: struct toy_arg: 4-byte hole before data"),
    (_hole, "u64-alignment: struct toy_arg: data (ptr) at packed offset 4"),
    (_tail_padding, "explicit-padding: struct toy_arg: 4 bytes of tail padding"),
    (_u32_pointer, "user-pointer: struct toy_arg: handle points to u32[size] but is u32"),
    (_mask_missing, "flags-mask: flag set toy_flags has no mask"),
    (_flags_without_set, "flags-mask: struct toy_arg: flags field does not name a flag set"),
    (_undocumented_field, "documented: field toy_arg.size has no doc"),
    (_duplicate_nr, "unique-nr: nr 0x40 used by DRM_IOCTL_TOY_DO, DRM_IOCTL_TOY_AGAIN; declare variants"),
    (_outside_driver_range, "driver-range: DRM_IOCTL_TOY_DO: nr 0xa0 outside 0x40..0x9f"),
    (_driver_waiver, "kernel-abi: struct toy_arg: the driver's own uapi waives nothing"),
    (_bool_field, "c-types: struct toy_arg field handle: 'bool' is not a uapi type"),
    (
        _kernel_c_type,
        "c-types: struct toy_arg: size is unsigned long in C, whose size depends on the ABI",
    ),
    (_output_of_iow, "direction: DRM_IOCTL_TOY_DO: field handle is out but the ioctl is _IOW"),
    (
        _late_field_in_the_middle,
        "append-only: struct toy_arg: fields added later (since) must all come last",
    ),
    (_unknown_permission, "vocabulary: DRM_IOCTL_TOY_DO: unknown permission render"),
    (_packets, "schema: packets: reserved for the command-stream ISA"),
    (_undocumented_helper, "documented: C helper toy_zero has no doc"),
    (_helper_not_inline, "schema: C helper toy_zero: code must be the static inline definition"),
    (_helper_misnamed, "schema: C helper toy_one: code must be the static inline definition of toy_one()"),
]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [pytest.param(mutate, expected, id=expected.split(":")[0]) for mutate, expected in SEEDED_MISTAKES],
)
def test_linter_catches_seeded_mistakes(
    documents: list[tuple[str, dict[str, Any]]], mutate: Callable[[dict[str, Any]], None], expected: str
) -> None:
    problems = _lint_toy(documents, mutate)
    assert any(problem.startswith(expected) for problem in problems), problems


def test_kernel_waivers_must_be_needed(documents: list[tuple[str, dict[str, Any]]]) -> None:
    edited = copy.deepcopy(documents)
    drm = next(data for path, data in edited if path.endswith("drm.yaml"))
    gem_close = next(struct for struct in drm["structs"] if struct["name"] == "drm_gem_close")
    gem_close["kernel-abi"] = {"waive": ["u64-alignment"], "why": "none"}
    problems = [str(problem) for problem in lint.lint_documents(edited)]
    assert problems == [
        "emudev/uapi/spec/drm.yaml: kernel-abi: struct drm_gem_close: waives u64-alignment but keeps it"
    ]


def test_kernel_waiver_removal_exposes_the_rule(documents: list[tuple[str, dict[str, Any]]]) -> None:
    edited = copy.deepcopy(documents)
    drm = next(data for path, data in edited if path.endswith("drm.yaml"))
    del next(struct for struct in drm["structs"] if struct["name"] == "drm_version")["kernel-abi"]
    rules = {problem.rule for problem in lint.lint_documents(edited)}
    assert rules == {"explicit-padding", "c-types"}


def test_lint_command_line() -> None:
    assert lint.main([]) == 0


def test_c_helpers_belong_to_the_driver(documents: list[tuple[str, dict[str, Any]]]) -> None:
    edited = copy.deepcopy(documents)
    drm = next(data for path, data in edited if path.endswith("drm.yaml"))
    drm["c-helpers"] = [TOY_HELPER]
    with pytest.raises(gen.SpecError, match="only the driver's own header carries C helpers"):
        gen.build_model(edited)


def _toy_model(documents: list[tuple[str, dict[str, Any]]], helpers: list[dict[str, str]]) -> gen.Model:
    toy = _toy_driver()
    if helpers:
        toy["c-helpers"] = helpers
    drm = next(data for path, data in documents if path.endswith("drm.yaml"))
    return gen.build_model([("drm.yaml", drm), ("toy.yaml", toy)])


def test_c_helpers_close_the_header(documents: list[tuple[str, dict[str, Any]]]) -> None:
    header = gen.render_header(_toy_model(documents, [TOY_HELPER]))
    comment = "/**\n * toy_zero() - Return zero.\n * @fd: Ignored.\n *\n * Return: 0.\n */\n"
    helper = comment + TOY_HELPER["code"]
    assert helper in header
    assert header.index("#undef DRM_EMUDEV_STATIC_ASSERT") < header.index(helper)
    assert header.index(helper) < header.rindex("#if defined(__cplusplus)\n}")
    assert header.index("#define DRM_EMUDEV_HAVE_C_HELPERS 1") < header.index('extern "C" {')


def test_c_helpers_are_documented(documents: list[tuple[str, dict[str, Any]]]) -> None:
    docs = gen.render_docs(_toy_model(documents, [TOY_HELPER]))
    section = docs[docs.index("### C helpers") :]
    assert "#### `toy_zero()`\n\nReturn zero.\n\n@fd: Ignored.\n\nReturn: 0.\n" in section
    assert "```c\n" + TOY_HELPER["code"] + "```" in section


def test_no_c_helpers_no_section(documents: list[tuple[str, dict[str, Any]]]) -> None:
    model = _toy_model(documents, [])
    assert "HAVE_C_HELPERS" not in gen.render_header(model) and "C helpers" not in gen.render_docs(model)


# --------------------------------------------------------------------------- C header


def _compile(
    tmp_path: Path, source: str, flags: list[str], compiler: str = "gcc"
) -> subprocess.CompletedProcess[str]:
    suffix = ".cc" if compiler == "g++" else ".c"
    path = tmp_path / f"probe{suffix}"
    path.write_text(source)
    command = [compiler, *flags, str(path), "-o", str(tmp_path / "probe")]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def _run(tmp_path: Path) -> str:
    return subprocess.run([str(tmp_path / "probe")], capture_output=True, text=True, check=True).stdout


HEADER_PROBE = """#include <stdio.h>
#include "emudev_accel.h"

int main(void)
{
	printf("ioctl %lu\\n", (unsigned long)DRM_IOCTL_EMUDEV_GET_PARAM);
	printf("size %lu\\n", (unsigned long)sizeof(struct drm_emudev_param));
	printf("value %lu\\n", (unsigned long)offsetof(struct drm_emudev_param, value));
	return 0;
}
"""
STRICT = ["-Wall", "-Wextra", "-Werror", "-pedantic"]
# libdrm's own drm_mode.h uses anonymous unions, which -std=c99 -pedantic rejects;
# -isystem keeps that diagnostic out while our header stays under -pedantic.
C_DIALECTS = {
    "c99": ["-std=c99", *STRICT, "-isystem", LIBDRM_INCLUDE],
    "c11": ["-std=c11", *STRICT, f"-I{LIBDRM_INCLUDE}"],
}


@needs_gcc
@pytest.mark.parametrize("dialect", sorted(C_DIALECTS))
def test_header_compiles_and_matches_the_bindings(tmp_path: Path, dialect: str) -> None:
    result = _compile(tmp_path, HEADER_PROBE, [*C_DIALECTS[dialect], f"-I{HEADER_DIR}"])
    assert result.returncode == 0, result.stderr
    expected = (
        defs.DRM_IOCTL_EMUDEV_GET_PARAM,
        ctypes.sizeof(defs.drm_emudev_param),
        defs.drm_emudev_param.value.offset,
    )
    assert _run(tmp_path).split() == [
        "ioctl",
        str(expected[0]),
        "size",
        str(expected[1]),
        "value",
        str(expected[2]),
    ]


@needs_gcc
@pytest.mark.parametrize("dialect", sorted(C_DIALECTS))
def test_layout_checks_fire(tmp_path: Path, dialect: str) -> None:
    header = (HEADER_DIR / "emudev_accel.h").read_text()
    broken = header.replace("== 16, drm_emudev_param_size", "== 24, drm_emudev_param_size")
    assert broken != header
    (tmp_path / "emudev_accel.h").write_text(broken)
    result = _compile(tmp_path, HEADER_PROBE, [*C_DIALECTS[dialect], f"-I{tmp_path}"])
    assert result.returncode != 0 and "drm_emudev_param_size" in result.stderr


@needs_gcc
def test_header_compiles_as_cxx(tmp_path: Path) -> None:
    if shutil.which("g++") is None:
        pytest.skip("g++ is missing")
    flags = ["-std=c++11", *STRICT, "-isystem", LIBDRM_INCLUDE, f"-I{HEADER_DIR}"]
    result = _compile(tmp_path, HEADER_PROBE.replace("<stdio.h>", "<cstdio>"), flags, "g++")
    assert result.returncode == 0, result.stderr


# The header comes first: it must bring in everything its C helpers use.
HELPER_PROBE = """#include "emudev_accel.h"

#if !defined(DRM_EMUDEV_HAVE_C_HELPERS)
#error no C helpers
#endif

int main(int argc, char **argv)
{
	int prime_fd = -1;

	(void)argv;
	if (emudev_prime_handle_to_fd(argc, 1, DRM_CLOEXEC | DRM_RDWR, &prime_fd) != 0)
		return 1;
	return emudev_claim_fd(argc, DRM_EMUDEV_FD_TICKET_MAX, DRM_RDWR) < 0;
}
"""
# Builds that select POSIX.1-2008, and so get the helpers; compiled, not run (no device here).
HELPER_BUILDS = {
    "c99-gnu-source": ("gcc", ["-std=c99", "-D_GNU_SOURCE"]),
    "c99-posix-2008": ("gcc", ["-std=c99", "-D_POSIX_C_SOURCE=200809L"]),
    "c11-gnu-source": ("gcc", ["-std=c11", "-D_GNU_SOURCE"]),
    "gnu11-default": ("gcc", ["-std=gnu11"]),
    "cxx11": ("g++", ["-std=c++11"]),
}


@needs_gcc
@pytest.mark.parametrize("build", sorted(HELPER_BUILDS))
def test_c_helpers_compile_warning_free(tmp_path: Path, build: str) -> None:
    compiler, dialect = HELPER_BUILDS[build]
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} is missing")
    # -O2: some warnings (format truncation, maybe-uninitialized) only show when optimising.
    flags = [*dialect, "-O2", *STRICT, "-isystem", LIBDRM_INCLUDE, f"-I{HEADER_DIR}", "-c"]
    result = _compile(tmp_path, HELPER_PROBE, flags, compiler)
    assert result.returncode == 0, result.stderr


@needs_gcc
def test_strict_c99_without_posix_gets_no_c_helpers(tmp_path: Path) -> None:
    result = _compile(tmp_path, HELPER_PROBE, [*C_DIALECTS["c99"], f"-I{HEADER_DIR}", "-c"])
    assert result.returncode != 0 and "no C helpers" in result.stderr


# --------------------------------------------------------------------------- kernel headers


def _guarded(guard: str | None, body: list[str], absent: str) -> list[str]:
    if guard is None:
        return body
    return [f"#ifdef {guard}", *body, "#else", f'\tputs("absent {absent}");', "#endif"]


def _probe_ioctls(model: gen.Model, family: gen.Family) -> list[str]:
    lines = []
    for ioctl in (model.ioctls[name] for name in family.ioctls):
        for name in [ioctl.name, *(variant.name for variant in ioctl.variants)]:
            print_it = [f'\tprintf("ioctl {name} %lu\\n", (unsigned long)({name}));']
            lines += _guarded(name, print_it, name)
    return lines


def _probe_constants(model: gen.Model, family: gen.Family) -> list[str]:
    lines = []
    for name in gen._family_value_names(model, family):
        lines += _guarded(name, [f'\tprintf("const {name} %lld\\n", (long long)({name}));'], name)
    return lines


def _probe_struct(model: gen.Model, struct: gen.Struct) -> list[str]:
    users = [ioctl.name for ioctl in model.ioctls.values() if ioctl.struct == struct.name]
    body = [f'\tprintf("size {struct.name} %lu\\n", (unsigned long)sizeof(struct {struct.name}));']
    for field in struct.fields:
        if field.kernel_implicit:
            continue
        where = f"struct {struct.name}, {field.name}"
        show = f'\tprintf("field {struct.name}.{field.name} %lu %lu\\n", (unsigned long)offsetof({where}), '
        show += f"(unsigned long)sizeof(((struct {struct.name} *)0)->{field.name}));"
        guard = FIELD_GUARDS.get((struct.name, field.name))
        body += _guarded(guard, [show], f"{struct.name}.{field.name}")
    return _guarded(users[0] if users else None, body, struct.name)


def _probe_source(model: gen.Model) -> str:
    lines = ["#include <fcntl.h>", "#include <stddef.h>", "#include <stdio.h>", *SYSTEM_HEADERS.values()]
    lines += ["", "int main(void)", "{"]
    for family in (model.families[name] for name in SYSTEM_HEADERS):
        lines += _probe_ioctls(model, family) + _probe_constants(model, family)
        for struct in (model.structs[name] for name in family.structs):
            lines += [] if struct.scalar_of else _probe_struct(model, struct)
    return "\n".join([*lines, "\treturn 0;", "}", ""])


def _expected_values(model: gen.Model) -> dict[str, set[int]]:
    """What each probed name may print: an ioctl any of its sizes, a struct any of its sizes."""
    expected: dict[str, set[int]] = {}
    for family in (model.families[name] for name in SYSTEM_HEADERS):
        for ioctl in (model.ioctls[name] for name in family.ioctls):
            expected[f"ioctl {ioctl.name}"] = {
                ioc(ioctl.dir, ioctl.type, ioctl.nr, size) for size in ioctl.sizes
            }
            for variant in ioctl.variants:
                expected[f"ioctl {variant.name}"] = {ioctl.variant_cmd(variant)}
        for name in gen._family_value_names(model, family):
            expected[f"const {name}"] = {model.constants[name].value}
        for struct in (model.structs[name] for name in family.structs):
            expected[f"size {struct.name}"] = set(struct.sizes)
    return expected


@needs_gcc
def test_spec_matches_system_headers(model: gen.Model, tmp_path: Path) -> None:
    since_fields = {
        (struct.name, field.name)
        for struct in model.structs.values()
        if struct.family in SYSTEM_HEADERS
        for field in struct.fields
        if field.since
    }
    assert since_fields == set(FIELD_GUARDS)
    result = _compile(tmp_path, _probe_source(model), ["-std=gnu11", "-isystem", LIBDRM_INCLUDE])
    assert result.returncode == 0, result.stderr
    expected, absent, compared = _expected_values(model), [], 0
    for line in _run(tmp_path).splitlines():
        kind, name, *values = line.split()
        if kind == "absent":
            absent.append(name)
        elif kind == "field":
            struct, field = name.split(".")
            spec = next(f for f in model.structs[struct].fields if f.name == field)
            assert [int(value) for value in values] == [spec.offset, spec.size], name
        else:
            assert int(values[0]) in expected[f"{kind} {name}"], line
        compared += kind != "absent"
    if absent:
        warnings.warn(f"not in the system headers, not compared: {', '.join(absent)}", stacklevel=1)
    assert set(absent) <= RECENT_ADDITIONS
    assert compared > 100
