"""The uapi spec, its generated outputs, the linter, and the ABI against real C headers."""

from __future__ import annotations

import copy
import ctypes
import errno
import shutil
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from emudev.uapi import defs, gen, isa, lint
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
      - {name: handle, type: u32, handle: gem, doc: Handle.}
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


def _float_field(toy: dict[str, Any]) -> None:
    _toy_fields(toy)[0]["type"] = "f32"


def _handle_of_no_kind(toy: dict[str, Any]) -> None:
    del _toy_fields(toy)[0]["handle"]


def _fd_of_no_kind(toy: dict[str, Any]) -> None:
    _toy_fields(toy).extend([{"name": "in_fd", "type": "s32", "doc": "An fd."},
                             {"name": "pad", "type": "u32", "doc": "Zero."}])


def _element_handle_of_no_kind(toy: dict[str, Any]) -> None:
    """An array element struct is read without an ioctl: its own field must say the kind."""
    _toy_fields(toy)[2]["points-to"] = "toy_elem[size]"
    toy["structs"].insert(0, {"name": "toy_elem", "doc": "Element.", "fields": [
        {"name": "handles", "type": "u32", "doc": "Handles."}, {"name": "pad", "type": "u32", "doc": "Zero."}]})


def _unknown_handle_kind(toy: dict[str, Any]) -> None:
    _toy_fields(toy)[0]["handle"] = "bo"


def _unknown_fd_kind(toy: dict[str, Any]) -> None:
    _toy_fields(toy)[0] = {"name": "fd", "type": "s32", "fd": ["dma_buf", "pipe"], "doc": "An fd."}


def _new_without_handle(toy: dict[str, Any]) -> None:
    del _toy_fields(toy)[0]["handle"]
    _toy_fields(toy)[0]["new"] = True


def _new_on_out(toy: dict[str, Any]) -> None:
    _toy_fields(toy)[0].update({"dir": "out", "new": True})


def _handle_and_fd(toy: dict[str, Any]) -> None:
    _toy_fields(toy)[0]["fd"] = "sync_file"


def _fd_kind_on_out(toy: dict[str, Any]) -> None:
    _toy_fields(toy)[0] = {"name": "fd", "type": "s32", "dir": "out", "fd": "dma_buf", "doc": "An fd."}


def _override_of_a_missing_field(toy: dict[str, Any]) -> None:
    toy["ioctls"][0]["fields"] = {"nope": {"handle": "gem"}}


def _override_with_new(toy: dict[str, Any]) -> None:
    toy["ioctls"][0]["fields"] = {"handle": {"new": True}}


def _override_contradicting_dir(toy: dict[str, Any]) -> None:
    toy["ioctls"][0]["fields"] = {"handle": {"dir": "out"}}


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
    (_packets, "schema: packets: a document with packets is an ISA, which has no type, dispatch, unknown-errno"),
    (_float_field, "no-float: struct toy_arg: handle is f32; only the command-stream ISA carries floating point"),
    (_undocumented_helper, "documented: C helper toy_zero has no doc"),
    (_helper_not_inline, "schema: C helper toy_zero: code must be the static inline definition"),
    (_helper_misnamed, "schema: C helper toy_one: code must be the static inline definition of toy_one()"),
    (
        _handle_of_no_kind,
        "handle-kind: DRM_IOCTL_TOY_DO: toy_arg.handle looks like a handle of no declared kind; "
        "add handle: or fd: to the field or to the ioctl's fields",
    ),
    (_fd_of_no_kind, "handle-kind: DRM_IOCTL_TOY_DO: toy_arg.in_fd looks like an fd of no declared kind"),
    (
        _element_handle_of_no_kind,
        "handle-kind: struct toy_elem: toy_elem.handles looks like a handle of no declared kind; "
        "add handle: or fd: to the field",
    ),
    (
        _unknown_handle_kind,
        "schema: struct toy_arg field handle: handle 'bo' is not one of gem, syncobj, ctx, seqno, flink",
    ),
    (
        _unknown_fd_kind,
        "schema: struct toy_arg field fd: fd ['dma_buf', 'pipe'] is not one or a list of dma_buf, sync_file,",
    ),
    (_new_without_handle, "schema: struct toy_arg field handle: new marks a handle number the caller picks"),
    (_new_on_out, "schema: struct toy_arg field handle: new marks a handle number the caller picks"),
    (_handle_and_fd, "schema: struct toy_arg field handle: give handle or fd, not both"),
    (_fd_kind_on_out, "schema: struct toy_arg field fd: fd describes an input; an fd the device returns takes none"),
    (_override_of_a_missing_field, "schema: ioctl DRM_IOCTL_TOY_DO field nope: struct toy_arg has no field nope"),
    (_override_with_new, "schema: ioctl DRM_IOCTL_TOY_DO field handle: unknown key(s) new"),
    (
        _override_contradicting_dir,
        "schema: ioctl DRM_IOCTL_TOY_DO field handle: dir out contradicts the struct's in; an override only narrows",
    ),
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


def _shared_by_two_ioctls(toy: dict[str, Any], second: dict[str, Any] | None) -> None:
    """handle and a new fd become inout, shared by DO (handle in, fd out) and a second ioctl."""
    del _toy_fields(toy)[0]["handle"]
    _toy_fields(toy)[0]["dir"] = "inout"
    _toy_fields(toy).extend([{"name": "fd", "type": "s32", "dir": "inout", "doc": "An fd."},
                             {"name": "pad", "type": "u32", "doc": "Zero."}])
    toy["ioctls"][0]["fields"] = {"handle": {"dir": "in", "handle": "gem"}, "fd": {"dir": "out"}}
    again = {**toy["ioctls"][0], "name": "DRM_IOCTL_TOY_UNDO", "index": 1}
    toy["ioctls"].append({**again, "fields": second} if second is not None else
                         {key: value for key, value in again.items() if key != "fields"})


def test_ioctl_fields_declare_kinds_of_a_shared_struct(documents: list[tuple[str, dict[str, Any]]]) -> None:
    undo = {"handle": {"dir": "out", "handle": "gem"}, "fd": {"dir": "in", "fd": ["dma_buf", "sync_file"]}}
    assert _lint_toy(documents, lambda toy: _shared_by_two_ioctls(toy, undo)) == []
    toy = _toy_driver()
    _shared_by_two_ioctls(toy, undo)
    drm = next(data for path, data in documents if path.endswith("drm.yaml"))
    model = gen.build_model([("drm.yaml", drm), ("toy.yaml", toy)])
    handle, _, _, _, fd, _ = model.ioctl_fields("DRM_IOCTL_TOY_UNDO")
    assert (handle.direction, handle.handle, fd.direction, fd.fd) == ("out", "gem", "in", ("dma_buf", "sync_file"))
    assert model.structs["toy_arg"].fields[0].handle is None
    docs = gen.render_docs(model)
    assert "| Fields as used here | `handle` out, new GEM handle; `fd` in, fd: dma-buf or sync_file |" in docs


def test_an_ioctl_without_fields_leaves_a_shared_field_of_no_kind(
    documents: list[tuple[str, dict[str, Any]]],
) -> None:
    problems = _lint_toy(documents, lambda toy: _shared_by_two_ioctls(toy, None))
    assert problems == [
        "handle-kind: DRM_IOCTL_TOY_UNDO: toy_arg.handle looks like a handle of no declared kind; "
        "add handle: or fd: to the field or to the ioctl's fields",
        "handle-kind: DRM_IOCTL_TOY_UNDO: toy_arg.fd looks like an fd of no declared kind; "
        "add handle: or fd: to the field or to the ioctl's fields",
    ]


def test_field_kinds_in_the_model_and_the_reference(model: gen.Model) -> None:
    def field(struct: str, name: str) -> gen.Field:
        return next(f for f in model.structs[struct].fields if f.name == name)

    assert (field("drm_gem_change_handle", "new_handle").handle, field("drm_gem_change_handle", "new_handle").new) \
        == ("gem", True)
    assert field("drm_syncobj_wait", "handles").handle == "syncobj"
    assert field("sync_merge_data", "fd2").fd == ("sync_file",)
    assert field("dma_buf_export_sync_file", "fd").fd == (), "an fd the device returns has no kind"
    docs = gen.render_docs(model)
    assert "| 4 | `u32` | `new_handle` | in | Unused handle the object moves to; the old handle is closed. " \
        "(GEM handle not yet in use) |" in docs
    assert "| 4 | `u32` | `handle` | out | New handle for the object in this file. (new GEM handle) |" in docs


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


def _driver_header_structs(model: gen.Model) -> list[gen.Struct]:
    families = [model.driver_family(), *model.driver_isas()]
    return [model.structs[name] for family in families for name in family.structs]


def _layout_probe(model: gen.Model) -> str:
    """Every struct of the driver's header, ISA packets included: sizes and offsets as C sees them."""
    lines = ["#include <stdio.h>", '#include "emudev_accel.h"', "", "int main(void)", "{"]
    for struct in _driver_header_structs(model):
        lines.append(f'\tprintf("{struct.name} %lu\\n", (unsigned long)sizeof(struct {struct.name}));')
        for field in struct.fields:
            offset = f"offsetof(struct {struct.name}, {field.name})"
            lines.append(f'\tprintf("{struct.name}.{field.name} %lu\\n", (unsigned long){offset});')
    lines += ['\tprintf("ISA %lu\\n", (unsigned long)DRM_EMUDEV_ISA_VERSION);', "\treturn 0;", "}", ""]
    return "\n".join(lines)


@needs_gcc
@pytest.mark.parametrize("dialect", sorted(C_DIALECTS))
def test_header_layouts_match_the_bindings(model: gen.Model, tmp_path: Path, dialect: str) -> None:
    result = _compile(tmp_path, _layout_probe(model), [*C_DIALECTS[dialect], f"-I{HEADER_DIR}"])
    assert result.returncode == 0, result.stderr
    expected = {"ISA": defs.DRM_EMUDEV_ISA_VERSION}
    for struct in _driver_header_structs(model):
        cls = getattr(defs, struct.name)
        expected[struct.name] = ctypes.sizeof(cls)
        expected.update({f"{struct.name}.{field.name}": getattr(cls, field.name).offset for field in struct.fields})
    printed = {name: int(value) for name, value in (line.split() for line in _run(tmp_path).splitlines())}
    assert printed == expected
    assert "drm_emudev_pkt_conv.requant" in printed and "drm_emudev_submit.seqno" in printed


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


# --------------------------------------------------------------------------- command-stream ISA


def _isa_document(documents: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    return next(data for path, data in documents if path.endswith("isa.yaml"))


def test_isa_is_its_own_kind_of_family(model: gen.Model) -> None:
    family = model.families["emudev_isa"]
    assert (family.kind, family.type, family.ioctls) == ("isa", None, ())
    assert "emudev_isa" not in defs.FAMILIES
    assert model.driver_family().name == "emudev" and model.driver_isas() == [family]
    assert defs.DRM_EMUDEV_ISA_VERSION == 1 << 16 | 1
    assert defs.PACKETS_BY_NAME["CONV"].struct is defs.drm_emudev_pkt_conv


def test_opcode_enum_is_generated_from_the_packets(documents: list[tuple[str, dict[str, Any]]]) -> None:
    packets = _isa_document(documents)["packets"]
    opcodes = defs.ENUMS["drm_emudev_opcode"].members
    assert opcodes == {f"DRM_EMUDEV_OP_{packet['name']}": packet["opcode"] for packet in packets}
    assert defs.DRM_EMUDEV_OP_CONV == 0x10
    header = {spec.name: spec for spec in defs.drm_emudev_pkt_header._specs_}
    assert header["opcode"].enum == "drm_emudev_opcode"


def test_packet_registry_is_complete(documents: list[tuple[str, dict[str, Any]]]) -> None:
    packets = _isa_document(documents)["packets"]
    assert sorted(defs.PACKETS) == sorted(packet["opcode"] for packet in packets)
    for raw in packets:
        spec = defs.PACKETS[raw["opcode"]]
        assert spec.name == raw["name"] and spec.opcode == raw["opcode"]
        assert spec.struct is getattr(defs, f"drm_emudev_pkt_{raw['name'].lower()}")
        engine = raw.get("engine")
        assert spec.engine == (getattr(defs, engine) if engine else None)
        assert spec.variable_length == (raw["name"] == "NOP")
        assert spec.doc and defs.PACKETS_BY_NAME[spec.name] is spec
        names = [field.name for field in spec.struct._specs_]
        assert ("engine" in names) == (spec.engine is None), spec.name


@pytest.mark.parametrize("spec", defs.PACKETS.values(), ids=lambda spec: spec.name)
def test_packet_layout(spec: Any, model: gen.Model) -> None:
    struct = spec.struct
    assert ctypes.sizeof(struct) == spec.size == spec.dwords * 4
    assert spec.size % defs.DRM_EMUDEV_PKT_ALIGN == 0
    assert struct._fields_[0] == ("header", defs.drm_emudev_pkt_header) and struct.header.offset == 0
    assert [f.name for f in struct._specs_][1:] == [f.name for f in model.structs[struct.__name__].fields][1:]
    end = 0
    for field in struct._specs_:
        assert field.offset == end, f"{spec.name}.{field.name}: implicit hole"
        end = field.offset + field.size
    assert end == spec.size


def test_reference_packet_layouts() -> None:
    assert ctypes.sizeof(defs.drm_emudev_tensor) == 48 and ctypes.alignment(defs.drm_emudev_tensor) == 8
    assert ctypes.sizeof(defs.drm_emudev_activation) == 16 and defs.drm_emudev_activation.alpha.offset == 4
    conv = defs.drm_emudev_pkt_conv
    assert (conv.src.offset, conv.weight.offset, conv.dst.offset, conv.bias_va.offset) == (8, 56, 104, 152)
    assert (conv.act.offset, conv.requant.offset, ctypes.sizeof(conv)) == (200, 216, 240)
    assert (defs.drm_emudev_pkt_sdp.requant.offset, defs.drm_emudev_pkt_rubik.perm.offset) == (216, 112)
    assert {spec.name: spec.size for spec in defs.PACKETS.values()} == {
        "NOP": 8, "SEM_WAIT": 32, "SEM_SIGNAL": 32, "TIMESTAMP": 24, "CONV": 240, "GEMM": 208,
        "SDP": 240, "PDP": 144, "CDP": 128, "BDMA": 112, "RUBIK": 128,
    }  # fmt: skip
    cdp = {spec.name: spec for spec in defs.drm_emudev_pkt_cdp._specs_}
    assert cdp["alpha"].type == "f32" and isinstance(defs.drm_emudev_pkt_cdp(alpha=0.5).alpha, float)


def _sample(struct: type[ctypes.Structure], seed: int) -> dict[str, Any]:
    """Valid, mostly non-zero values for every field: enums their last member, flags their mask."""
    values: dict[str, Any] = {}
    for number, spec in enumerate(struct._specs_):  # type: ignore[attr-defined]
        ctype = dict(struct._fields_)[spec.name]  # type: ignore[arg-type]
        value = seed + number
        if spec.name.startswith("reserved") or spec.name == "header":
            continue
        if issubclass(ctype, ctypes.Structure):
            values[spec.name] = _sample(ctype, seed + 10 * number)
        elif spec.enum:
            values[spec.name] = max(defs.ENUMS[spec.enum].members.values())
        elif spec.flags:
            values[spec.name] = defs.FLAGSETS[spec.flags].mask
        elif issubclass(ctype, ctypes.Array):
            values[spec.name] = [value + i for i in range(ctype._length_)]
        elif ctype is ctypes.c_float:
            values[spec.name] = value + 0.25
        else:
            values[spec.name] = -value if ctype(-1).value < 0 else value
    return values


@pytest.mark.parametrize("spec", defs.PACKETS.values(), ids=lambda spec: spec.name)
def test_encode_decode_round_trip(spec: Any) -> None:
    fields = _sample(spec.struct, 3)
    data = isa.encode(spec.name, **fields)
    assert len(data) == spec.size
    stream = isa.encode("NOP") + data + isa.encode("NOP", header={"dwords": 6})
    decoded = isa.decode_stream(memoryview(bytearray(stream)))
    assert [(d.index, d.offset, d.spec.name, d.length) for d in decoded] == [
        (0, 0, "NOP", 8),
        (1, 8, spec.name, spec.size),
        (2, 8 + spec.size, "NOP", 24),
    ]
    packet = decoded[1].packet
    assert type(packet) is spec.struct and bytes(packet) == data
    assert (packet.header.opcode, packet.header.dwords, packet.header.flags) == (spec.opcode, spec.dwords, 0)
    assert isa.check_fields(decoded[1]) is None
    again = isa.encode(spec.struct, **{name: getattr(packet, name) for name in fields})
    assert again == data
    line = isa.describe(decoded[1])
    assert line.startswith(spec.name) and "\n" not in line and "header" not in line
    assert isa.describe(decoded[2]) == "NOP dwords=6"


def test_encode_takes_structs_dicts_and_sequences() -> None:
    tensor = defs.drm_emudev_tensor(va=0x1000, dims=(1, 2, 3, 4), strides=(96, 48, 16, 4))
    by_struct = isa.encode("bdma", op=defs.DRM_EMUDEV_BDMA_COPY, src=tensor, dst=tensor)
    as_dict = {"va": 0x1000, "dims": [1, 2, 3, 4], "strides": (96, 48, 16, 4)}
    by_dict = isa.encode(defs.DRM_EMUDEV_OP_BDMA, src=as_dict, dst=as_dict)
    assert by_struct == by_dict == isa.encode(defs.drm_emudev_pkt_bdma, src=tensor, dst=as_dict)
    packet = defs.drm_emudev_pkt_bdma.from_buffer_copy(by_dict)
    assert list(packet.dst.dims) == [1, 2, 3, 4] and packet.dst.strides[0] == 96
    assert isa.describe(packet).startswith("BDMA op=BDMA_COPY fill_value=0 src={va=0x1000 dims=[1,2,3,4]")
    assert "requant={0}" in isa.describe(isa.decode_stream(isa.encode("GEMM"))[0])


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"bogus": 1}, TypeError, "no field 'bogus'"),
        ({"src": {"bogus": 1}}, TypeError, "no field 'bogus'"),
        ({"src": 5}, TypeError, "src: expected a drm_emudev_tensor or a dict"),
        ({"src": {"dims": [1, 2]}}, ValueError, "dims: 2 values for 4 elements"),
        ({"fill_value": -1}, ValueError, "fill_value: -1 does not fit a u32 field"),
        ({"src": {"zero_point": 1 << 31}}, ValueError, "zero_point: 2147483648 does not fit a s32 field"),
    ],
)
def test_encode_rejects_what_does_not_fit(fields: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        isa.encode("BDMA", **fields)


def test_unknown_packet_name() -> None:
    with pytest.raises(ValueError, match="no packet 'JUMP'"):
        isa.encode("JUMP")


def _patched(data: bytes, offset: int, **header: int) -> bytes:
    packet = bytearray(data)
    fields = defs.drm_emudev_pkt_header.from_buffer(packet, offset)
    for name, value in header.items():
        setattr(fields, name, value)
    return bytes(packet)


_WAIT = isa.encode("SEM_WAIT", engine=defs.DRM_EMUDEV_ENGINE_SDP, va=0x1000, value=1)
_NOP = isa.encode("NOP")
DECODE_ERRORS = [
    (
        "not-a-multiple-of-8",
        _NOP + _WAIT[:12],
        1,
        8,
        "SEM_WAIT of 32 bytes runs past the end of the 20-byte stream (the stream's 20 bytes are not a multiple of 8)",
    ),
    ("truncated-header", _NOP + _NOP[:4], 1, 8, "truncated header: 4 of 8 bytes (the stream's 12 bytes are not"),
    ("unknown-opcode", _NOP + _patched(_WAIT, 0, opcode=0x77), 1, 8, "unknown opcode 0x77"),
    ("dwords-zero", _patched(_WAIT, 0, dwords=0), 0, 0, "SEM_WAIT: dwords is 0"),
    ("dwords-odd", _patched(_WAIT, 0, dwords=7), 0, 0, "SEM_WAIT: dwords 7 is odd"),
    ("dwords-wrong", _patched(_WAIT, 0, dwords=10) + _NOP, 0, 0, "SEM_WAIT: dwords 10, but the packet is 8"),
    ("nop-too-short", _WAIT + _patched(_NOP, 0, dwords=0), 1, 32, "NOP: dwords is 0"),
    ("overrun", _WAIT + _WAIT[:16], 1, 32, "SEM_WAIT of 32 bytes runs past the end of the 48-byte stream"),
    ("nop-overrun", isa.encode("NOP", header={"dwords": 8})[:16], 0, 0, "NOP of 32 bytes runs past the end"),
    ("header-flags", _NOP + _NOP + _patched(_WAIT, 0, flags=2), 2, 16, "SEM_WAIT: header flags 0x2 are not zero"),
]


@pytest.mark.parametrize(
    ("stream", "index", "offset", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in DECODE_ERRORS],
)
def test_decode_errors_name_the_packet(stream: bytes, index: int, offset: int, reason: str) -> None:
    with pytest.raises(isa.IsaError) as caught:
        isa.decode_stream(stream)
    error = caught.value
    assert isinstance(error, OSError) and error.errno == errno.EINVAL
    assert (error.index, error.offset) == (index, offset)
    assert error.strerror.startswith(f"packet {index} at offset {offset}: {reason}"), error.strerror


def test_unaligned_stream_says_so() -> None:
    with pytest.raises(isa.IsaError, match="not a multiple of 8"):
        isa.decode_stream(_NOP + _WAIT[:12])


def test_decode_accepts_an_empty_stream_and_long_nops() -> None:
    assert isa.decode_stream(b"") == []
    padded = isa.encode("NOP", header={"dwords": 4})
    assert len(padded) == 16 and padded[8:] == bytes(8)
    decoded = isa.decode_stream(padded + _WAIT)
    assert [(d.spec.name, d.offset, d.length) for d in decoded] == [("NOP", 0, 16), ("SEM_WAIT", 16, 32)]


def _conv(**changes: Any) -> isa.DecodedPacket:
    tensor = {"va": 0x1000, "dims": [1, 4, 4, 8], "strides": [512, 128, 32, 4]}
    data = isa.encode("CONV", src=tensor, weight=tensor, dst=tensor, stride=[1, 1], dilation=[1, 1], groups=1)
    decoded = isa.decode_stream(data)[0]
    for path, value in changes.items():
        target: Any = decoded.packet
        *outer, name = path.split("__")
        for part in outer:
            target = getattr(target, part)
        setattr(target, name, value)
    return decoded


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"reserved": 3}, "reserved = 0x3 is not zero"),
        ({"src__dtype": 9}, "src.dtype = 9 is not a drm_emudev_dtype"),
        ({"weight__dtype": defs.DRM_EMUDEV_DTYPE_INT8}, None),
        ({"act__fn": 42}, "act.fn = 42 is not a drm_emudev_activation_fn"),
        ({"pad": (ctypes.c_uint32 * 4)(1, 1, 1, 1)}, None),
    ],
)
def test_check_fields(changes: dict[str, Any], reason: str | None) -> None:
    assert isa.check_fields(_conv(**changes)) == reason


def test_check_fields_flags_and_control_packets() -> None:
    gemm = defs.drm_emudev_pkt_gemm.from_buffer_copy(isa.encode("GEMM", flags=defs.DRM_EMUDEV_GEMM_TRANSPOSE_B))
    assert isa.check_fields(gemm) is None
    gemm.flags = 0x6
    assert isa.check_fields(gemm) == "flags = 0x6 has bits 0x6 outside drm_emudev_gemm_flags"
    wait = isa.decode_stream(_WAIT)[0]
    wait.packet.engine = 99
    assert isa.check_fields(wait) == "engine = 99 is not a drm_emudev_engine"
    job = defs.drm_emudev_job_status(pad2=1)
    assert isa.check_fields(job) == "pad2 = 0x1 is not zero"


def test_stale_check_covers_the_isa(documents: list[tuple[str, dict[str, Any]]]) -> None:
    edited = copy.deepcopy(documents)
    packets = _isa_document(edited)["packets"]
    next(packet for packet in packets if packet["name"] == "RUBIK")["opcode"] = 0x61
    assert gen.stale_outputs(gen.render_all(edited)) == [gen.DEFS_PATH, gen.HEADER_PATH, gen.DOCS_PATH]


def test_isa_is_in_the_header_and_the_docs(model: gen.Model) -> None:
    header = gen.render_header(model)
    assert "#define DRM_EMUDEV_OP_CONV\t\t\t0x10" in header
    assert "\tstruct drm_emudev_tensor src;" in header and "\tfloat alpha;" in header
    assert "sizeof(struct drm_emudev_pkt_conv) == 240, drm_emudev_pkt_conv_size" in header
    assert "offsetof(struct drm_emudev_pkt_sdp, requant) == 216" in header
    assert "DRM_EMUDEV_STATIC_ASSERT(sizeof(float) == 4, float_is_binary32);" in header
    docs = gen.render_docs(model)
    section = docs[docs.index('<a id="family-emudev_isa"></a>') :]
    assert "| `0x10` | [`CONV`](#packet-CONV) | `DRM_EMUDEV_ENGINE_CONV` | 240 (60 dwords) |" in section
    assert "| `0x01` | [`SEM_WAIT`](#packet-SEM_WAIT) | its `engine` field | 32 (8 dwords) |" in section
    src = "| 8 | [`struct drm_emudev_tensor`](#struct-drm_emudev_tensor) | `src` | Input, [N, H, W, C_in]. |"
    assert src in section
    assert docs.count('<a id="struct-drm_emudev_tensor"></a>') == 1
    assert '<a id="struct-drm_emudev_pkt_conv"></a>' not in docs
    assert section.index("### Packets") < section.index('<a id="packet-RUBIK"></a>') < section.index("### Structs")


# A toy ISA, linted on its own: seeded mistakes must each be caught.
TOY_ISA = """
family: toy_isa
origin: driver
prefix: DRM_TOY
version: {major: 2, minor: 3}
doc: A toy ISA.
constants:
  - {name: DRM_TOY_PKT_ALIGN, value: 8, doc: Alignment.}
enums:
  - name: drm_toy_engine
    doc: Engines.
    members:
      - {name: DRM_TOY_ENGINE_A, value: 0, doc: A.}
flags:
  - name: drm_toy_pkt_flags
    doc: None defined.
    mask: 0x0
    members: []
structs:
  - name: drm_toy_pkt_header
    doc: Header.
    fields:
      - {name: opcode, type: u16, enum: drm_toy_opcode, doc: Opcode.}
      - {name: dwords, type: u16, doc: Length.}
      - {name: flags, type: u32, flags: drm_toy_pkt_flags, doc: Zero.}
  - name: drm_toy_vec
    doc: A vector.
    fields:
      - {name: va, type: u64, doc: Address.}
      - {name: scale, type: f32, doc: Scale.}
      - {name: reserved, type: u32, doc: Zero.}
packets:
  - name: NOP
    opcode: 0
    engine: DRM_TOY_ENGINE_A
    variable-length: true
    doc: Nothing.
    fields: []
  - name: SIGNAL
    opcode: 0x1
    doc: Signal.
    fields:
      - {name: engine, type: u32, enum: drm_toy_engine, doc: Engine.}
      - {name: value, type: u32, doc: Value.}
  - name: SCALE
    opcode: 0x2
    engine: DRM_TOY_ENGINE_A
    doc: Scale.
    fields:
      - {name: src, type: drm_toy_vec, doc: Source.}
      - {name: dst, type: "drm_toy_vec[2]", doc: Destinations.}
"""


def _toy_isa() -> dict[str, Any]:
    return gen.parse_document(TOY_ISA, "toy_isa.yaml")


def _lint_toy_isa(mutate: Callable[[dict[str, Any]], None]) -> list[str]:
    toy = _toy_isa()
    mutate(toy)
    return [f"{p.rule}: {p.message}" for p in lint.lint_documents([("toy_isa.yaml", toy)])]


def _toy_packet(toy: dict[str, Any], name: str) -> dict[str, Any]:
    return next(packet for packet in toy["packets"] if packet["name"] == name)


def test_toy_isa_is_clean_and_laid_out() -> None:
    assert _lint_toy_isa(lambda toy: None) == []
    model = gen.build_model([("toy_isa.yaml", _toy_isa())])
    assert model.constants["DRM_TOY_ISA_VERSION"].value == 2 << 16 | 3
    assert model.enums["drm_toy_opcode"].members == ("DRM_TOY_OP_NOP", "DRM_TOY_OP_SIGNAL", "DRM_TOY_OP_SCALE")
    scale = model.structs["drm_toy_pkt_scale"]
    assert [(f.name, f.offset, f.size, f.struct) for f in scale.fields] == [
        ("header", 0, 8, "drm_toy_pkt_header"),
        ("src", 8, 16, "drm_toy_vec"),
        ("dst", 24, 32, "drm_toy_vec"),
    ]
    assert (scale.size, scale.align, model.packets["SCALE"].opcode) == (56, 8, 2)


def _packet_tail(toy: dict[str, Any]) -> None:
    del _toy_packet(toy, "SIGNAL")["fields"][1]


def _packet_hole(toy: dict[str, Any]) -> None:
    _toy_packet(toy, "SIGNAL")["fields"][1] = {"name": "va", "type": "u64", "doc": "Address."}


def _control_packet_without_engine(toy: dict[str, Any]) -> None:
    _toy_packet(toy, "SIGNAL")["fields"][0]["name"] = "target"


def _engine_twice(toy: dict[str, Any]) -> None:
    _toy_packet(toy, "SIGNAL")["engine"] = "DRM_TOY_ENGINE_A"


def _duplicate_opcode(toy: dict[str, Any]) -> None:
    _toy_packet(toy, "SCALE")["opcode"] = 1


def _unknown_engine(toy: dict[str, Any]) -> None:
    _toy_packet(toy, "SCALE")["engine"] = "DRM_TOY_ENGINE_B"


def _struct_defined_later(toy: dict[str, Any]) -> None:
    toy["structs"][0]["fields"].append({"name": "next", "type": "drm_toy_vec", "doc": "Next."})


def _ioctl_key_in_isa(toy: dict[str, Any]) -> None:
    _toy_packet(toy, "SIGNAL")["fields"][1]["dir"] = "out"


def _handle_in_isa(toy: dict[str, Any]) -> None:
    _toy_packet(toy, "SIGNAL")["fields"][1]["handle"] = "syncobj"


def _isa_with_ioctls(toy: dict[str, Any]) -> None:
    toy["ioctls"] = []


def _opcode_without_enum(toy: dict[str, Any]) -> None:
    del toy["structs"][0]["fields"][0]["enum"]


def _packet_undocumented(toy: dict[str, Any]) -> None:
    del _toy_packet(toy, "SCALE")["doc"]


def _no_pkt_align(toy: dict[str, Any]) -> None:
    toy["constants"] = []


ISA_MISTAKES = [
    (
        _packet_tail,
        "explicit-padding: packet SIGNAL: struct drm_toy_pkt_signal is 12 bytes, not a multiple of "
        "DRM_TOY_PKT_ALIGN (8); pad it explicitly",
    ),
    (_packet_hole, "explicit-padding: struct drm_toy_pkt_signal: 4-byte hole before va"),
    (
        _control_packet_without_engine,
        "packet-engine: packet SIGNAL: names no engine, so it needs an engine field (enum drm_toy_engine)",
    ),
    (_engine_twice, "packet-engine: packet SIGNAL: runs on DRM_TOY_ENGINE_A yet has an engine field"),
    (_duplicate_opcode, "unique-opcode: opcode 0x1 used by SIGNAL, SCALE"),
    (_unknown_engine, "schema: packet SCALE: engine DRM_TOY_ENGINE_B is not a member of enum drm_toy_engine"),
    (_struct_defined_later, "c-types: struct drm_toy_pkt_header field next: 'drm_toy_vec' is not a uapi type"),
    (_ioctl_key_in_isa, "schema: struct drm_toy_pkt_signal field value: dir: no meaning in a command stream"),
    (_handle_in_isa, "schema: struct drm_toy_pkt_signal field value: handle: no meaning in a command stream"),
    (_isa_with_ioctls, "schema: packets: a document with packets is an ISA, which has no ioctls"),
    (_opcode_without_enum, "packet-header: struct drm_toy_pkt_header: opcode must name enum drm_toy_opcode"),
    (_packet_undocumented, "documented: packet SCALE has no doc"),
    (_no_pkt_align, "schema: packet NOP: the ISA needs the constant DRM_TOY_PKT_ALIGN"),
]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [pytest.param(mutate, expected, id=mutate.__name__.strip("_")) for mutate, expected in ISA_MISTAKES],
)
def test_linter_catches_seeded_isa_mistakes(mutate: Callable[[dict[str, Any]], None], expected: str) -> None:
    problems = _lint_toy_isa(mutate)
    assert any(problem.startswith(expected) for problem in problems), problems


def test_float_in_a_nested_struct_of_an_ioctl_is_caught(documents: list[tuple[str, dict[str, Any]]]) -> None:
    def nest(toy: dict[str, Any]) -> None:
        inner = {"name": "toy_inner", "doc": "Inner.", "fields": [{"name": "x", "type": "f32", "doc": "X."}]}
        inner["fields"].append({"name": "pad", "type": "u32", "doc": "Zero."})
        _toy_fields(toy).append({"name": "inner", "type": "toy_inner", "doc": "Inner."})
        toy["structs"].insert(0, inner)

    problems = _lint_toy(documents, nest)
    assert "no-float: struct toy_inner: x is f32; only the command-stream ISA carries floating point" in problems
    assert "no-float: struct toy_arg: inner.x is f32; only the command-stream ISA carries floating point" in problems
