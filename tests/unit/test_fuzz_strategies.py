"""The uapi fuzzer's generators (emudev.fuzz), without a daemon: driven by the spec, covering it all.

Every ioctl of defs.IOCTLS gets a layout and requests in every mode; handle and fd roles
come from the kinds the YAML declares, and an ioctl added to the YAML that declares none
is fuzzed all the same; the oracle routes requests as drm_ioctl() and the other files'
switches do; every packet of the ISA can be drawn, and the valid templates pass the
spec-level checks.
"""

from __future__ import annotations

import copy
import errno

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emudev.fuzz import errnos, packets
from emudev.fuzz import layout as L
from emudev.fuzz.plan import BUFFER, get_int
from emudev.fuzz.strategies import CHAOS, FIELD, REQUEST, VALID, BoView, StreamView, View, call_plans
from emudev.uapi import defs, gen, isa
from emudev.uapi.types import IOC_READ, IOC_WRITE, IoctlSpec, UapiStruct, ioc, ioc_nr, ioc_size, ioc_type

FUZZ = settings(max_examples=25, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))
BOS = (BoView(1, 8192, 1 << 32, defs.DRM_EMUDEV_BO_MAPPABLE),
       BoView(2, 4096, (1 << 32) + 0x4000, defs.DRM_EMUDEV_BO_DEVICE_READ_ONLY))
VIEW = View(client=1, device_fd=10, bos=BOS, gem=(1, 2, 3), syncobjs=(1, 2), max_point=3, ctxs=(1,),
            jobs=((1, 1),), streams=(StreamView(3, 0, 16, 4096),), flinks=(1,),
            fds=((11, "dma_buf"), (12, "sync_file"), (13, "syncobj"), (14, "sw_sync"), (15, "eventfd")),
            closed_fds=(20,))
EMPTY = View(client=1, device_fd=10)


def test_every_ioctl_of_the_spec_has_a_layout_and_a_file() -> None:
    layouts = L.ioctl_layouts()
    assert set(layouts) == {spec.name for spec in defs.IOCTLS}
    for layout in layouts.values():
        assert layout.target in errnos.FILE_FAMILIES, layout.name
        assert layout.spec.family in errnos.FILE_FAMILIES[layout.target], layout.name
        assert layout.struct.size == layout.spec.size


def test_hints_name_fields_that_exist() -> None:
    """A hint left behind by a renamed field would silently stop applying."""
    model = L.spec_model()
    for key in [*L.VALID_VALUE_ROLES, *L.NEVER_SET]:
        struct, _, name = key.rpartition(".")
        assert name in {f.name for f in model.structs[struct].fields}, key


def test_handle_and_fd_roles_come_from_the_spec_kinds() -> None:
    """handle:, new:, fd: and an ioctl's fields: give the roles; only valid-value knowledge stays hand-written."""
    layouts = L.ioctl_layouts()

    def roles(ioctl: str) -> dict[str, str]:
        return {f.name: f.role for f in layouts[ioctl].struct.fields}

    assert roles("DRM_IOCTL_GEM_OPEN") == {"name": L.FLINK, "handle": "out:gem", "size": L.OUT}
    assert roles("DRM_IOCTL_GEM_CHANGE_HANDLE") == {"handle": L.GEM, "new_handle": L.GEM_NEW}
    assert roles("DRM_IOCTL_PRIME_HANDLE_TO_FD")["handle"] == L.GEM
    assert roles("DRM_IOCTL_PRIME_HANDLE_TO_FD")["fd"] == L.OUT
    assert roles("DRM_IOCTL_PRIME_FD_TO_HANDLE")["handle"] == "out:gem"
    assert roles("DRM_IOCTL_PRIME_FD_TO_HANDLE")["fd"] == "fd:dma_buf"
    assert roles("DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE")["fd"] == "fd:syncobj,sync_file"
    assert roles("DRM_IOCTL_EMUDEV_SUBMIT")["cmd_handle"] == L.STREAM_HANDLE
    assert (roles("DRM_IOCTL_EMUDEV_JOB_STATUS")["ctx_id"], roles("DRM_IOCTL_EMUDEV_JOB_STATUS")["seqno"]) == \
        (L.CTX, L.SEQNO)


def test_roles_come_from_the_spec() -> None:
    wait = L.ioctl_layouts()["DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT"].struct
    roles = {f.name: f.role for f in wait.fields}
    assert roles == {"handles": L.ARRAY, "points": L.ARRAY, "timeout_nsec": L.TIMEOUT, "count_handles": L.COUNT,
                     "flags": L.FLAGS, "first_signaled": L.OUT, "pad": L.ZERO, "deadline_nsec": L.DEADLINE}
    assert wait.field("count_handles").counts == ("handles", "points")
    assert wait.field("handles").array.elem_role == L.SYNCOBJ
    assert wait.field("points").array.elem_role == L.POINT
    submit = L.ioctl_layouts()["DRM_IOCTL_EMUDEV_SUBMIT"].struct
    assert submit.field("bo_stride").strides == ("bos",)
    assert submit.field("sync_stride").strides == ("in_syncs", "out_syncs")
    assert submit.field("bos").array.elem_struct.field("handle").role == L.GEM
    assert L.ioctl_layouts()["DMA_BUF_SET_NAME"].struct.field("name").array.capacity == defs.DMA_BUF_NAME_LEN


@pytest.mark.parametrize("name", [spec.name for spec in defs.IOCTLS])
@pytest.mark.parametrize("mode", [VALID, FIELD, CHAOS, REQUEST])
def test_every_ioctl_is_drawn_in_every_mode(name: str, mode: str) -> None:
    layout = L.ioctl_layouts()[name]

    @FUZZ
    @given(plan=call_plans(layout, VIEW, mode), empty=call_plans(layout, EMPTY, mode))
    def check(plan, empty) -> None:
        for p in (plan, empty):
            assert p.ioctl == name
            assert len(p.arg) >= max(ioc_size(p.cmd), layout.struct.size)
            assert all(0 <= ptr.offset <= len(p.arg) - (1 if layout.spec.by_value else 8) for ptr in p.pointers)
            assert all(d.delta_ns <= 50_000_000 for d in p.deadlines), "a wait longer than 50 ms"
            if mode == VALID:
                assert p.cmd in layout.spec.cmds
                assert all(label.startswith("size") for label in p.labels), p.labels

    check()


@FUZZ
@given(data=st.data())
def test_valid_requests_use_the_clients_state(data) -> None:
    layout = L.ioctl_layouts()["DRM_IOCTL_EMUDEV_SUBMIT"]
    plan = data.draw(call_plans(layout, VIEW, VALID))
    s = layout.struct
    assert get_int(plan.arg, s.field("ctx_id").offset, 4) in VIEW.ctxs
    assert get_int(plan.arg, s.field("cmd_handle").offset, 4) == 3
    bos = next(p for p in plan.pointers if p.offset == s.field("bos").offset)
    stride = get_int(plan.arg, s.field("bo_stride").offset, 4)
    count = get_int(plan.arg, s.field("bo_count").offset, 4)
    assert bos.kind == BUFFER and len(bos.payload) == count * stride
    for i in range(count):
        assert get_int(bos.payload, i * stride, 4) in VIEW.gem
        assert get_int(bos.payload, i * stride + 4, 4) in (1, 2, 3)


@FUZZ
@given(data=st.data())
def test_transfer_never_waits_for_submit(data) -> None:
    """TRANSFER's WAIT_FOR_SUBMIT waits 5 s inside the kernel: the fuzzer never sets it."""
    layout = L.ioctl_layouts()["DRM_IOCTL_SYNCOBJ_TRANSFER"]
    plan = data.draw(call_plans(layout, VIEW, data.draw(st.sampled_from([VALID, FIELD, CHAOS]))))
    flags = get_int(plan.arg, layout.struct.field("flags").offset, 4)
    assert not flags & defs.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT


def _model_with_a_new_ioctl() -> tuple[gen.Model, IoctlSpec]:
    """The spec plus an ioctl no hint knows: handle, fd, flags, a pointer to an array and its count."""
    documents = copy.deepcopy(gen.load_documents())
    doc = next(d for path, d in documents if d["family"] == "emudev")
    doc["structs"].append({"name": "drm_emudev_new_thing", "doc": "A test struct.", "fields": [
        {"name": "thing_handle", "type": "u32", "doc": "x"},
        {"name": "flags", "type": "u32", "flags": "drm_emudev_submit_flags", "doc": "x"},
        {"name": "items", "type": "ptr", "points-to": "u64[item_count]", "doc": "x"},
        {"name": "item_count", "type": "u32", "doc": "x"},
        {"name": "fd", "type": "s32", "doc": "x"},
        {"name": "timeout_ns", "type": "s64", "doc": "x"},
        {"name": "result", "type": "u64", "dir": "out", "doc": "x"},
        {"name": "reserved", "type": "u64", "doc": "x"},
    ]})
    doc["ioctls"].append({"name": "DRM_IOCTL_EMUDEV_NEW_THING", "index": 0x30, "dir": "iowr",
                          "struct": "drm_emudev_new_thing", "permissions": [], "doc": "A test ioctl.",
                          "errors": [{"errno": "ENOENT", "when": "x"}]})
    model = gen.build_model(documents)
    new = model.ioctls["DRM_IOCTL_EMUDEV_NEW_THING"]
    size = model.structs[new.struct].size
    spec = IoctlSpec(name=new.name, family="emudev", type=new.type, nr=new.nr, dir=new.dir,
                     struct=UapiStruct, size=size, sizes=(size,), cmd=new.cmd, permissions=frozenset(),
                     errors=(("ENOENT", "x"),), doc="")
    return model, spec


def test_kinds_declared_on_a_new_ioctl_become_its_roles() -> None:
    """A struct shared by two ioctls: each ioctl's fields: decide what its handle and fd are."""
    documents = copy.deepcopy(gen.load_documents())
    doc = next(d for path, d in documents if d["family"] == "emudev")
    doc["structs"].append({"name": "drm_emudev_swap", "doc": "A test struct.", "fields": [
        {"name": "handle", "type": "u32", "dir": "inout", "doc": "x"},
        {"name": "fd", "type": "s32", "dir": "inout", "doc": "x"},
        {"name": "ctxs", "type": "ptr", "points-to": "u32[count]", "handle": "ctx", "doc": "x"},
        {"name": "count", "type": "u32", "doc": "x"},
        {"name": "pad", "type": "u32", "doc": "x"},
    ]})
    for index, (name, fields) in enumerate([
        ("DRM_IOCTL_EMUDEV_SWAP_OUT", {"handle": {"dir": "in", "handle": "gem"}, "fd": {"dir": "out"}}),
        ("DRM_IOCTL_EMUDEV_SWAP_IN", {"handle": {"dir": "out", "handle": "gem"},
                                      "fd": {"dir": "in", "fd": ["dma_buf", "sync_file"]}}),
    ]):
        doc["ioctls"].append({"name": name, "index": 0x30 + index, "dir": "iowr", "struct": "drm_emudev_swap",
                              "fields": fields, "doc": "A test ioctl.", "errors": [{"errno": "ENOENT", "when": "x"}]})
    model = gen.build_model(documents)
    specs = tuple(IoctlSpec(name=name, family="emudev", type=model.ioctls[name].type, nr=model.ioctls[name].nr,
                            dir=model.ioctls[name].dir, struct=UapiStruct, size=24, sizes=(24,),
                            cmd=model.ioctls[name].cmd, permissions=frozenset(), errors=(), doc="")
                  for name in ("DRM_IOCTL_EMUDEV_SWAP_OUT", "DRM_IOCTL_EMUDEV_SWAP_IN"))
    layouts = L.layouts_of(model, specs)
    swap_out, swap_in = (layouts[spec.name].struct for spec in specs)
    assert (swap_out.field("handle").role, swap_out.field("fd").role) == (L.GEM, L.OUT)
    assert (swap_in.field("handle").role, swap_in.field("fd").role) == ("out:gem", "fd:dma_buf,sync_file")
    assert swap_in.field("ctxs").array.elem_role == L.CTX
    assert swap_in.field("fd").direction == "inout", "the wire direction stays the struct's"


def test_an_ioctl_added_to_the_yaml_is_fuzzed_without_code_changes() -> None:
    model, spec = _model_with_a_new_ioctl()
    layout = L.layouts_of(model, (spec,))[spec.name]
    roles = {f.name: f.role for f in layout.struct.fields}
    assert roles == {"thing_handle": L.ANY_HANDLE, "flags": L.FLAGS, "items": L.ARRAY, "item_count": L.COUNT,
                     "fd": L.FD, "timeout_ns": L.TIMEOUT, "result": L.OUT, "reserved": L.ZERO}

    @FUZZ
    @given(plan=call_plans(layout, VIEW), valid=call_plans(layout, VIEW, VALID))
    def check(plan, valid) -> None:
        assert plan.ioctl == spec.name
        s = layout.struct
        assert get_int(valid.arg, s.field("thing_handle").offset, 4) in VIEW.handles()
        assert get_int(valid.arg, s.field("reserved").offset, 8) == 0
        items = next(p for p in valid.pointers if p.offset == s.field("items").offset)
        assert len(items.payload) == 8 * get_int(valid.arg, s.field("item_count").offset, 4)
        assert any(d.offset == s.field("timeout_ns").offset for d in valid.deadlines) or \
            get_int(valid.arg, s.field("timeout_ns").offset, 8) == 0

    check()


# --------------------------------------------------------------------------- the oracle


def test_the_oracle_routes_like_drm_ioctl() -> None:
    close = defs.IOCTLS_BY_NAME["DRM_IOCTL_GEM_CLOSE"]
    allowed = errnos.allowed("device", close.cmd).errnos
    assert errno.EINVAL in allowed and errno.ENOENT not in allowed  # GEM_CLOSE: EINVAL, not ENOENT
    assert errno.EOPNOTSUPP in allowed and errno.EACCES not in allowed and errno.ENODEV not in allowed
    assert errno.EACCES in errnos.allowed("device", defs.DRM_IOCTL_GEM_FLINK).errnos
    assert errnos.allowed("device", ioc(IOC_READ | IOC_WRITE, ord("d"), 0x9F, 8)).errnos == {errno.EINVAL}
    assert errnos.allowed("device", ioc(IOC_WRITE, ord("x"), close.nr, 8)).errnos == {errno.ENOTTY}
    assert errnos.allowed("device", ioc(IOC_WRITE, ord("x"), close.nr, 8), bad_arg=True).errnos \
        == {errno.ENOTTY, errno.EFAULT}
    old_wait = ioc(IOC_READ | IOC_WRITE, ord("d"), ioc_nr(defs.DRM_IOCTL_SYNCOBJ_WAIT), 32)
    assert errnos.route("device", old_wait)[0].name == "DRM_IOCTL_SYNCOBJ_WAIT"  # any size, by nr
    assert errnos.allowed("device", defs.DRM_IOCTL_GEM_CLOSE, unplugged=True).errnos >= {errno.ENODEV}


def test_the_oracle_routes_other_files_by_the_whole_request() -> None:
    info = defs.SYNC_IOC_FILE_INFO
    assert errnos.route("sync_file", info)[0].name == "SYNC_IOC_FILE_INFO"
    shorter = ioc(IOC_READ | IOC_WRITE, ioc_type(info), ioc_nr(info), ioc_size(info) - 8)
    assert errnos.allowed("sync_file", shorter).errnos == {errno.ENOTTY}
    assert errnos.allowed("dma_buf", info).errnos == {errno.ENOTTY}
    assert errnos.allowed("syncobj", defs.DRM_IOCTL_GEM_CLOSE).errnos == {errno.ENOTTY}
    assert errnos.route("dma_buf", defs.DMA_BUF_SET_NAME_A)[0].name == "DMA_BUF_SET_NAME"
    assert errno.EOPNOTSUPP not in errnos.allowed("sync_file", info).errnos


# --------------------------------------------------------------------------- packets


def test_every_packet_has_a_layout() -> None:
    assert set(L.packet_layouts()) == set(defs.PACKETS_BY_NAME)


@FUZZ
@given(data=st.data())
def test_valid_streams_decode_and_pass_the_spec_checks(data) -> None:
    view = View(client=1, device_fd=10, bos=BOS, avoid=frozenset({"blocking-sem-wait"}))
    stream, labels = data.draw(packets.streams(view, broken=False))
    for packet in isa.decode_stream(stream):
        if not any(label.startswith("generic:") for label in labels):
            assert isa.check_fields(packet) is None, isa.describe(packet)
        if packet.spec.name == "SEM_WAIT":
            assert packet.packet.cond == defs.DRM_EMUDEV_SEM_GEQUAL and packet.packet.value == 0


@FUZZ
@given(name=st.sampled_from(sorted(packets.TEMPLATES)), data=st.data())
def test_templates_address_the_clients_bos(name: str, data) -> None:
    view = View(client=1, device_fd=10, bos=BOS)
    encoded = packets.TEMPLATES[name](data.draw, view, False)
    assert encoded is not None
    packet = isa.decode_stream(encoded)[0]
    assert isa.check_fields(packet) is None
    for path, field, offset in L.leaves(L.packet_layouts()[name]):
        if field.role == L.DEVICE_VA and (va := get_int(encoded, offset, 8)):
            assert any(bo.va <= va < bo.va + bo.size for bo in BOS), path
