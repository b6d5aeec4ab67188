"""The uapi coverage gate on synthetic coverage files, and the daemon's recorder on synthetic calls."""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import pytest

from emudev.trace.capture import Call
from emudev.trace.coverage import CoverageRecorder
from emudev.trace.decode import flagset_users, member_owner
from emudev.uapi import defs, isa
from emudev.uapi.coverage import WAIVERS, Coverage, Item, Waiver, check, covered, load, main, render, required


def full() -> Coverage:
    """Everything the uapi asks for, each flag member in an ioctl it belongs to."""
    coverage = Coverage()
    for item in required():
        if item.kind == "ioctl":
            coverage.ioctls.add(item.name)
        elif item.kind == "error":
            coverage.errors.add(tuple(item.name.split()))  # type: ignore[arg-type]
        elif item.kind == "opcode":
            coverage.opcodes.add(item.name)
        else:
            flagset, member = item.name.split(".")
            ioctl = member_owner(flagset, member) or min(flagset_users().get(flagset, {"ANY"}))
            coverage.flags.add((flagset, ioctl, defs.FLAGSETS[flagset].members[member]))
    return coverage


def test_everything_used_passes() -> None:
    report = check(full(), files=1, waivers=())
    assert report.passed and not report.unused
    assert report.used == report.totals


@pytest.mark.parametrize(("remove", "unused"), [
    (lambda c: c.ioctls.discard("DRM_IOCTL_SYNCOBJ_EVENTFD"), "DRM_IOCTL_SYNCOBJ_EVENTFD"),
    (lambda c: c.errors.discard(("DRM_IOCTL_EMUDEV_SUBMIT", "ECANCELED")), "DRM_IOCTL_EMUDEV_SUBMIT ECANCELED"),
    (lambda c: c.opcodes.discard("RUBIK"), "RUBIK"),
    (lambda c: c.flags.difference_update({f for f in c.flags if f[0] == "drm_emudev_pdp_flags"}),
     "drm_emudev_pdp_flags.DRM_EMUDEV_PDP_COUNT_PAD"),
], ids=["ioctl", "error", "opcode", "flag"])
def test_one_thing_unused_fails_naming_it(remove, unused: str) -> None:
    coverage = full()
    remove(coverage)
    report = check(coverage, files=1, waivers=())
    assert not report.passed
    assert [i.name for i in report.unused] == [unused]


def _flag(flagset: str, member: str) -> Item:
    return Item("flag", f"{flagset}.{member}")


@pytest.mark.parametrize(("seen", "item", "used"), [
    # A member named after one ioctl of its set belongs to it: the same bit in the other does not count.
    ({("drm_syncobj_handle_flags", "DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD", 1)},
     _flag("drm_syncobj_handle_flags", "DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE"), False),
    ({("drm_syncobj_handle_flags", "DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD", 1)},
     _flag("drm_syncobj_handle_flags", "DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE"), True),
    ({("drm_syncobj_timeline_array_flags", "DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL", 1)},
     _flag("drm_syncobj_timeline_array_flags", "DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED"), False),
    # Members shared by every user count in any of them.
    ({("drm_prime_handle_flags", "DRM_IOCTL_PRIME_FD_TO_HANDLE", defs.DRM_CLOEXEC)},
     _flag("drm_prime_handle_flags", "DRM_CLOEXEC"), True),
    # A multi-bit member needs all its bits at once.
    ({("dma_buf_sync_flags", "DMA_BUF_IOCTL_SYNC", 1), ("dma_buf_sync_flags", "DMA_BUF_IOCTL_SYNC", 2)},
     _flag("dma_buf_sync_flags", "DMA_BUF_SYNC_RW"), False),
    ({("dma_buf_sync_flags", "DMA_BUF_IOCTL_SYNC", 7)}, _flag("dma_buf_sync_flags", "DMA_BUF_SYNC_RW"), True),
    # A member of value 0 is the absence of bits: any use of its set counts.
    ({("dma_buf_sync_flags", "DMA_BUF_IOCTL_SYNC", 5)}, _flag("dma_buf_sync_flags", "DMA_BUF_SYNC_START"), True),
    (set(), _flag("dma_buf_sync_flags", "DMA_BUF_SYNC_START"), False),
])
def test_flag_rules(seen: set[tuple[str, str, int]], item: Item, used: bool) -> None:
    assert covered(item, Coverage(flags=seen)) is used


def test_errno_aliases_count_as_the_documented_name() -> None:
    """errno.errorcode calls 95 ENOTSUP; the uapi documents EOPNOTSUPP."""
    assert covered(Item("error", "DRM_IOCTL_GET_CAP EOPNOTSUPP"), Coverage(errors={("DRM_IOCTL_GET_CAP", "ENOTSUP")}))


def test_an_errno_returned_but_documented_nowhere_fails_the_gate() -> None:
    coverage = full()
    coverage.errors.add(("DRM_IOCTL_GEM_CLOSE", "EBUSY"))
    report = check(coverage, files=1, waivers=())
    assert not report.passed and not report.unused
    assert report.undocumented == [("DRM_IOCTL_GEM_CLOSE", "EBUSY")]
    assert "DRM_IOCTL_GEM_CLOSE EBUSY" in render(report)


def test_family_errors_document_every_ioctl_of_the_family() -> None:
    """ENODEV after an unplug is the drm family's, listed once, and no ioctl needs to show it."""
    coverage = full()
    coverage.errors |= {("DRM_IOCTL_GEM_CLOSE", "ENODEV"), ("DRM_IOCTL_EMUDEV_SUBMIT", "ENODEV")}
    assert check(coverage, files=1, waivers=()).passed
    assert check(full(), files=1, waivers=()).passed


def test_waivers_excuse_what_they_name_and_stale_ones_are_reported() -> None:
    coverage = full()
    coverage.opcodes.discard("NOP")
    waivers = (Waiver("opcode", "NOP", "reason"), Waiver("opcode", "CONV", "used after all"),
               Waiver("ioctl", "DRM_IOCTL_NOT_IN_THE_UAPI", "gone"))
    report = check(coverage, files=1, waivers=waivers)
    assert report.passed
    assert [(i.name, w.why) for i, w in report.waived] == [("NOP", "reason")]
    assert [w.name for w in report.needless] == ["CONV", "DRM_IOCTL_NOT_IN_THE_UAPI"]


def test_every_waiver_names_an_item_of_the_uapi() -> None:
    names = {(i.kind, i.name) for i in required()}
    assert all((w.kind, w.name) in names and w.why for w in WAIVERS)


def test_files_are_merged_and_main_exits_by_the_result(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path)]) == 2
    everything = full()
    half = Coverage(ioctls=set(sorted(everything.ioctls)[:10]))
    half.save(str(tmp_path / "a.json"))
    assert main([str(tmp_path)]) == 1
    assert "unused ioctls" in capsys.readouterr().out
    Coverage(everything.ioctls - half.ioctls, everything.errors, everything.flags,
             everything.opcodes).save(str(tmp_path / "b.json"))
    merged, files = load([str(tmp_path)])
    assert files == 2 and merged.to_json() == everything.to_json()
    assert main([str(tmp_path)]) == 0
    assert "PASS" in capsys.readouterr().out
    assert json.loads((tmp_path / "a.json").read_text())["format"] == "emudev-uapi-coverage/1"


# -- the recorder ------------------------------------------------------------------------------------


def _call(name: str, args: ctypes.Structure, result: int = 0, out: ctypes.Structure | None = None) -> Call:
    spec = defs.IOCTLS_BY_NAME[name]
    call = Call(seq=1, t_ns=0, pid=1, tgid=1, comm="test", fh=None, file="accel0/1", client=1, spec=spec,
                cmd=spec.cmd, arg=0, in_bytes=bytes(args))
    call.result, call.out_bytes = result, bytes(out if out is not None else args)
    return call


def test_the_recorder_sees_flags_in_arrays_packets_values_and_results(tmp_path: Path) -> None:
    recorder = CoverageRecorder(str(tmp_path))
    bos = ctypes.create_string_buffer(bytes(defs.drm_emudev_submit_bo(handle=1, flags=defs.DRM_EMUDEV_BO_READ)))
    submit = _call("DRM_IOCTL_EMUDEV_SUBMIT", defs.drm_emudev_submit(bos=ctypes.addressof(bos), bo_count=1,
                                                                    bo_stride=8))
    submit.reads.append((ctypes.addressof(bos), bos.raw))
    submit.stream = isa.encode("PDP", flags=defs.DRM_EMUDEV_PDP_COUNT_PAD) + isa.encode("NOP")
    recorder.add(submit)
    recorder.add(_call("DRM_IOCTL_GET_CAP", defs.drm_get_cap(capability=defs.DRM_CAP_PRIME),
                       out=defs.drm_get_cap(capability=defs.DRM_CAP_PRIME, value=3)))
    recorder.add(_call("DRM_IOCTL_EMUDEV_BO_INFO", defs.drm_emudev_bo_info(handle=9), result=-2))
    saved = Coverage.from_json(json.loads(Path(recorder.path).read_text()))
    assert saved.ioctls == {"DRM_IOCTL_EMUDEV_SUBMIT", "DRM_IOCTL_GET_CAP", "DRM_IOCTL_EMUDEV_BO_INFO"}
    assert saved.errors == {("DRM_IOCTL_EMUDEV_BO_INFO", "ENOENT")}
    assert saved.opcodes == {"PDP", "NOP"}
    assert {("drm_emudev_submit_bo_flags", "DRM_IOCTL_EMUDEV_SUBMIT", 1),
            ("drm_emudev_pdp_flags", "DRM_IOCTL_EMUDEV_SUBMIT", 1),
            ("drm_prime_cap", "DRM_IOCTL_GET_CAP", 3)} <= saved.flags
    assert not any(f[0] == "drm_emudev_bo_flags" for f in saved.flags), "a failed call's out fields are not seen"
