#!/usr/bin/env bash
# The main job: mount an emulated device and run the userspace stack on it — a real network
# (a CNN trained here on scikit-learn's digits, compiled from ONNX and run on the device next
# to onnxruntime) — then unmount.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

mnt=$(mktemp -d /tmp/emudev-run.XXXXXX)
cleanup() {
    emudev umount "$mnt" >/dev/null 2>&1 || true
    rmdir "$mnt" 2>/dev/null || true
}
trap cleanup EXIT

section() { printf '\n== %s ==\n' "$*"; }

emudev mount "$mnt" --devices 2
emudev status "$mnt"
section "accel-info: the devices as the uapi reports them"
accel-info --mount "$mnt"
section "accel-smoke: concurrent clients on every device"
accel-smoke --mount "$mnt" --clients 4 --rounds 10
section "accel-demo: a CNN trained on scikit-learn digits, on the device vs onnxruntime"
accel-demo digits --mount "$mnt"
section "accel-top: what the device did (totals since the mount)"
accel-top --mount "$mnt" --once --interval 0
echo
emudev umount "$mnt"
