"""accel-info: what each accel device is, as its uapi reports it.

Raw GET_PARAM values are decoded with the uapi's own enums (emudev.uapi.defs.ENUMS), so a
new engine or element type shows up here by name without touching this tool.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from emudev.uapi import defs
from userspace.libaccel import Device, DeviceInfo, find_devices, version_text


def enum_names(enum: str, prefix: str) -> dict[int, str]:
    """value -> short lower-case name of a uapi enum (DRM_EMUDEV_ENGINE_CONV -> conv)."""
    return {value: name.removeprefix(prefix).lower() for name, value in defs.ENUMS[enum].members.items()}


def decode_mask(mask: int, names: dict[int, str]) -> list[str]:
    """Names of the set bits (1 << value); a bit the uapi does not name shows as bitN rather than vanishing."""
    return [names.get(bit, f"bit{bit}") for bit in range(64) if mask >> bit & 1]


def size_text(size: int) -> str:
    """Bytes in the largest binary unit that fits: exact when it divides, else one decimal."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            value = size / (1 << shift)
            return f"{value:g} {unit}" if size % (1 << shift) == 0 else f"{value:.1f} {unit}"
    return f"{size} B"


def decode(info: DeviceInfo) -> dict[str, Any]:
    """The parameters a person wants to read, decoded; everything raw stays in DeviceInfo."""
    p = info.params
    va_start, va_end = p.get("va_start", 0), p.get("va_end", 0)
    return {
        "engines": decode_mask(p.get("engines", 0), enum_names("drm_emudev_engine", "DRM_EMUDEV_ENGINE_")),
        "dtypes": decode_mask(p.get("dtypes", 0), enum_names("drm_emudev_dtype", "DRM_EMUDEV_DTYPE_")),
        "memory": size_text(p.get("memory_size", 0)),
        "va_range": f"{va_start:#x}-{va_end:#x} ({size_text(va_end - va_start)})",
        "uapi_version": version_text(p.get("uapi_version", 0)),
        "isa_version": version_text(p.get("isa_version", 0)),
        "job_timeout": f"{p.get('job_timeout_ms', 0)} ms",
        "page_size": size_text(p.get("page_size", 0)),
        "max_cmd_size": size_text(p.get("max_cmd_size", 0)),
        "max_tensor_dim": p.get("max_tensor_dim", 0),
        "device": f"{p.get('device_id', 0):04x} rev {p.get('revision', 0)}, index {p.get('device_index', 0)}",
    }


def format_info(info: DeviceInfo, raw: bool = False) -> str:
    v = info.version
    d = decode(info)
    header = "uapi {} (header {}), ISA {} (header {})".format(
        d["uapi_version"], version_text(defs.DRM_EMUDEV_UAPI_VERSION),
        d["isa_version"], version_text(defs.DRM_EMUDEV_ISA_VERSION))
    date = f", {v.date}" if v.date.strip("0 ") else ""
    lines = [f"{info.path}: {v.name} {v.major}.{v.minor}.{v.patchlevel} ({v.desc}{date})",
             f"  device        {d['device']}",
             f"  versions      {header}",
             f"  engines       {' '.join(d['engines']) or 'none'}",
             f"  dtypes        {' '.join(d['dtypes']) or 'none'}",
             f"  memory        {d['memory']} ({info.params.get('memory_size', 0)} bytes), page {d['page_size']}",
             f"  va range      {d['va_range']}",
             f"  job timeout   {d['job_timeout']}",
             f"  limits        command stream {d['max_cmd_size']}, tensor dim {d['max_tensor_dim']}",
             "  caps          " + " ".join(f"{name.removeprefix('DRM_CAP_').lower()}={value}"
                                          for name, value in info.caps.items())]
    if raw:
        lines += [f"  param {name:<20} {value:#x}" if name in ("device_id", "va_start", "va_end", "engines", "dtypes")
                  else f"  param {name:<20} {value}" for name, value in info.params.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="accel-info", description="Show the accel devices and what they support.")
    p.add_argument("devices", nargs="*", help="node paths (default: every device found)")
    p.add_argument("--mount", help="emudev mountpoint to look in (default $EMUDEV_MOUNT, then /dev/accel)")
    p.add_argument("--json", action="store_true", help="machine-readable output (raw values and decoded ones)")
    p.add_argument("--raw", action="store_true", help="also list every GET_PARAM value as the device reports it")
    args = p.parse_args(argv)
    paths = args.devices or find_devices(args.mount)
    if not paths:
        print("accel-info: no accel devices found (mount one with `emudev mount DIR` and pass --mount DIR)",
              file=sys.stderr)
        return 1
    infos = []
    for path in paths:
        try:
            with Device(path) as dev:
                infos.append(dev.info())
        except OSError as e:
            print(f"accel-info: {path}: {e.strerror or e}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps([{**asdict(i), "decoded": decode(i)} for i in infos], indent=2))
    else:
        print("\n".join(format_info(i, args.raw) for i in infos))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
