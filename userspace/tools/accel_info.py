"""accel-info: what each accel device is, as its uapi reports it."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from userspace.libaccel import Device, DeviceInfo, find_devices


def _format(info: DeviceInfo) -> str:
    v = info.version
    lines = [f"{info.path}: {v.name} {v.major}.{v.minor}.{v.patchlevel} ({v.desc})"]
    lines += [f"  cap   {name.removeprefix('DRM_CAP_').lower():<20} {value}" for name, value in info.caps.items()]
    lines += [f"  param {name:<20} {value:#x}" if name == "device_id" else f"  param {name:<20} {value}"
              for name, value in info.params.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="accel-info", description="Show the accel devices and what they support.")
    p.add_argument("devices", nargs="*", help="node paths (default: every device found)")
    p.add_argument("--mount", help="emudev mountpoint to look in (default $EMUDEV_MOUNT, then /dev/accel)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
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
        print(json.dumps([asdict(i) for i in infos], indent=2))
    else:
        print("\n".join(_format(i) for i in infos))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
