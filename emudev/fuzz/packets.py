"""Command streams for SUBMIT, built from the ISA's PACKETS: valid ones on real BOs, and mutated ones.

Valid packets come from a few templates whose operands are tensors inside the
client's BOs (the spec says what each field is, not which shapes fit an op: that is
the templates' knowledge); any other packet is drawn field by field from its layout.
Mutations then break one thing: an unknown opcode, a wrong length, header flags, one
field (an enum out of range, a dim of 0, an address outside every BO, a reserved
field set), a write aimed at a device-read-only BO, or a stream cut short.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from emudev.fuzz import known
from emudev.fuzz import layout as L
from emudev.fuzz.plan import get_int, put_f32, put_int
from emudev.fuzz.strategies import ArgDraw, BoView, Draw, View, dtype_sizes, fill_struct, scalar_value
from emudev.uapi import defs, isa

MUTATIONS = ("opcode", "dwords", "header-flags", "field", "field", "read-only")
_FLOAT = (defs.DRM_EMUDEV_DTYPE_FP32, defs.DRM_EMUDEV_DTYPE_FP16)
_HEADER = L.struct_layout("drm_emudev_pkt_header")


def tensor(draw: Draw, bos: list[BoView], dtype: int | None = None, dims: tuple[int, ...] | None = None,
           ) -> dict[str, Any] | None:
    """A packed tensor inside one of `bos`: dims drawn (or given), dtype drawn (or given)."""
    sizes = dtype_sizes()
    if dtype is None:
        dtype = draw(st.sampled_from(sorted(sizes)))
    item = sizes[dtype]
    if dims is None:
        dims = tuple(draw(st.integers(1, 4)) for _ in range(4))
    count = item
    for d in dims:
        count *= d
    fitting = [bo for bo in bos if bo.size >= count]
    if not fitting:
        return None
    bo = draw(st.sampled_from(fitting))
    offset = draw(st.integers(0, (bo.size - count) // item)) * item
    strides, step = [], item
    for d in reversed(dims):
        strides.insert(0, step)
        step *= d
    return {"va": bo.va + offset, "dims": list(dims), "strides": strides, "dtype": dtype, "zero_point": 0}


def _engine(draw: Draw) -> int:
    return draw(st.sampled_from(sorted(defs.ENUMS["drm_emudev_engine"].members.values())))


def _word(draw: Draw, bos: list[BoView], align: int) -> int | None:
    if not bos:
        return None
    bo = draw(st.sampled_from(bos))
    return bo.va + draw(st.integers(0, bo.size // align - 1)) * align


def _nop(draw: Draw, view: View, ro: bool) -> bytes | None:
    spec = defs.PACKETS_BY_NAME["NOP"]
    return isa.encode("NOP", header={"opcode": spec.opcode, "dwords": spec.dwords + 2 * draw(st.integers(0, 3)),
                                     "flags": 0})


def _targets(view: View, ro: bool) -> list[BoView]:
    """BOs a packet may write: the writable ones, or with `ro` the device-read-only ones."""
    return [bo for bo in view.bos if bo.writable != ro]


def _timestamp(draw: Draw, view: View, ro: bool) -> bytes | None:
    va = _word(draw, _targets(view, ro), 8)
    return None if va is None else isa.encode("TIMESTAMP", engine=_engine(draw), va=va)


def _sem_signal(draw: Draw, view: View, ro: bool) -> bytes | None:
    va = _word(draw, _targets(view, ro), 4)
    if va is None:
        return None
    op = draw(st.sampled_from(sorted(defs.ENUMS["drm_emudev_sem_op"].members.values())))
    return isa.encode("SEM_SIGNAL", engine=_engine(draw), op=op, va=va, value=draw(st.integers(0, 3)))


def _sem_wait(draw: Draw, view: View, ro: bool) -> bytes | None:
    va = _word(draw, list(view.bos), 4)
    if va is None:
        return None
    return isa.encode("SEM_WAIT", engine=_engine(draw), cond=defs.DRM_EMUDEV_SEM_GEQUAL, va=va, value=0)


def _bdma(draw: Draw, view: View, ro: bool) -> bytes | None:
    if draw(st.booleans()):
        dst = tensor(draw, _targets(view, ro))
        if dst is None:
            return None
        return isa.encode("BDMA", op=defs.DRM_EMUDEV_BDMA_FILL, fill_value=draw(st.integers(0, 0xFFFFFFFF)), dst=dst)
    src = tensor(draw, list(view.bos))
    if src is None:
        return None
    dst = tensor(draw, _targets(view, ro), src["dtype"], tuple(src["dims"]))
    return None if dst is None else isa.encode("BDMA", op=defs.DRM_EMUDEV_BDMA_COPY, src=src, dst=dst)


def _sdp(draw: Draw, view: View, ro: bool) -> bytes | None:
    dtype = draw(st.sampled_from(_FLOAT))
    src = tensor(draw, list(view.bos), dtype)
    if src is None:
        return None
    dims = tuple(src["dims"])
    dst = tensor(draw, _targets(view, ro), dtype, dims)
    if dst is None:
        return None
    if draw(st.booleans()):
        return isa.encode("SDP", op=defs.DRM_EMUDEV_SDP_NONE, src=src, dst=dst)
    src2 = tensor(draw, list(view.bos), dtype, dims)
    op = draw(st.sampled_from(sorted(v for v in defs.ENUMS["drm_emudev_sdp_op"].members.values() if v)))
    return None if src2 is None else isa.encode("SDP", op=op, src=src, src2=src2, dst=dst)


def _rubik(draw: Draw, view: View, ro: bool) -> bytes | None:
    src = tensor(draw, list(view.bos))
    if src is None:
        return None
    dims = list(src["dims"])
    if draw(st.booleans()):
        perm = draw(st.permutations(range(4)))
        dst = tensor(draw, _targets(view, ro), src["dtype"], tuple(dims[p] for p in perm))
        return None if dst is None else isa.encode("RUBIK", op=defs.DRM_EMUDEV_RUBIK_TRANSPOSE, src=src, dst=dst,
                                                   perm=list(perm))
    dst = tensor(draw, _targets(view, ro), src["dtype"], (1, 1, 1, dims[0] * dims[1] * dims[2] * dims[3]))
    return None if dst is None else isa.encode("RUBIK", op=defs.DRM_EMUDEV_RUBIK_RESHAPE, src=src, dst=dst)


# Packets a template makes valid (given BOs to work on); the rest are drawn from their layout.
TEMPLATES: dict[str, Callable[[Draw, View, bool], bytes | None]] = {
    "NOP": _nop,
    "TIMESTAMP": _timestamp,
    "SEM_SIGNAL": _sem_signal,
    "SEM_WAIT": _sem_wait,
    "BDMA": _bdma,
    "SDP": _sdp,
    "RUBIK": _rubik,
}
WRITERS = ("TIMESTAMP", "SEM_SIGNAL", "BDMA", "SDP", "RUBIK")


def generic_packet(draw: Draw, name: str, view: View) -> bytes:
    """Any packet drawn field by field from its layout: enums, flags and addresses valid-looking."""
    layout = L.packet_layouts()[name]
    spec = defs.PACKETS_BY_NAME[name]
    arg = ArgDraw(layout.size)
    fill_struct(draw, layout, view, arg, 0, arg.buf, lambda _path: False)
    put_int(arg.buf, 0, 2, spec.opcode)
    put_int(arg.buf, 2, 2, spec.dwords)
    put_int(arg.buf, 4, 4, 0)
    return bytes(arg.buf)


def mutate(draw: Draw, data: bytes, view: View) -> tuple[bytes, str]:
    """Break one thing of a packet (not the read-only case, which needs a template)."""
    buf = bytearray(data)
    opcode = get_int(buf, 0, 2)
    spec = defs.PACKETS.get(opcode)
    how = draw(st.sampled_from(MUTATIONS[:-1]))
    if how == "opcode" or spec is None:
        put_int(buf, 0, 2, draw(st.sampled_from([*sorted(set(range(0x100)) - set(defs.PACKETS)), 0xFFFF])))
        return bytes(buf), "opcode"
    if how == "dwords":
        dwords = draw(st.sampled_from([0, 1, spec.dwords - 2, spec.dwords + 1, spec.dwords + 2, 0xFFFF]))
        put_int(buf, 2, 2, max(0, dwords))
        return bytes(buf), "dwords"
    if how == "header-flags":
        put_int(buf, 4, 4, 1 << draw(st.integers(0, 31)))
        return bytes(buf), "header-flags"
    fields = [leaf for leaf in L.leaves(L.packet_layouts()[spec.name]) if not leaf[0].startswith("header.")]
    if not fields:
        put_int(buf, 4, 4, 1)
        return bytes(buf), "header-flags"
    path, field_, offset = draw(st.sampled_from(fields))
    value = scalar_value(draw, field_, field_.role, view, ArgDraw(0), offset, True)
    if isinstance(value, float):
        put_f32(buf, offset, value)
    elif value is not None:
        put_int(buf, offset, field_.elem_size, value)
    return bytes(buf), f"field:{path}"


_SEM_WAIT = defs.PACKETS_BY_NAME["SEM_WAIT"]


def _never_blocking(data: bytes) -> bytes:
    """A SEM_WAIT made to wait for `word >= 0`, true at once (while known.BLOCKING_SEM_WAIT is avoided)."""
    if get_int(data, 0, 2) != _SEM_WAIT.opcode or len(data) < _SEM_WAIT.size:
        return data
    packet = defs.drm_emudev_pkt_sem_wait.from_buffer_copy(data[: _SEM_WAIT.size])
    packet.cond, packet.value = defs.DRM_EMUDEV_SEM_GEQUAL, 0
    return bytes(packet) + data[_SEM_WAIT.size:]


@st.composite
def streams(draw: Draw, view: View, broken: bool = False) -> tuple[bytes, tuple[str, ...]]:
    """A command stream of 1 to 4 packets for the client of `view`, and what was broken in it."""
    labels: list[str] = []
    packets: list[bytes] = []
    names = sorted(defs.PACKETS_BY_NAME)
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.sampled_from([*TEMPLATES, *TEMPLATES, *names]))
        ro = broken and name in WRITERS and draw(st.integers(0, 3)) == 0
        data = TEMPLATES[name](draw, view, ro) if name in TEMPLATES else None
        if data is None:
            data = generic_packet(draw, name, view)
            labels.append(f"generic:{name}")
        elif ro:
            labels.append(f"read-only:{name}")
        if broken and not ro and draw(st.integers(0, 2)) == 0:
            data, how = mutate(draw, data, view)
            labels.append(f"{how}:{name}")
        if known.BLOCKING_SEM_WAIT in view.avoid:
            data = _never_blocking(data)
        packets.append(data)
    stream = b"".join(packets)
    if broken and draw(st.integers(0, 5)) == 0:
        cut = draw(st.integers(1, min(len(stream), 16)))
        stream = stream[:-cut]
        labels.append("truncated")
    return stream, tuple(labels)
