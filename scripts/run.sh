#!/usr/bin/env bash
# The main job: mount an emulated device, run the userspace stack on it, unmount.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

mnt=$(mktemp -d /tmp/emudev-run.XXXXXX)
cleanup() {
    emudev umount "$mnt" >/dev/null 2>&1 || true
    rmdir "$mnt" 2>/dev/null || true
}
trap cleanup EXIT

emudev mount "$mnt" --devices 2
emudev status "$mnt"
echo
accel-info --mount "$mnt"
echo
accel-smoke --mount "$mnt"
echo
emudev umount "$mnt"
