#!/usr/bin/env bash
# Install the host tools pvkit's tests use: the aarch64 cross compiler (guest rebuilds),
# the native gcc (x86-64 guests), dtc (device-tree checks) and qemu-system-aarch64 (the
# differential PSCI test).
set -euo pipefail
need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu)
command -v gcc >/dev/null || need+=(gcc)
command -v dtc >/dev/null || need+=(device-tree-compiler)
command -v qemu-system-aarch64 >/dev/null || need+=(qemu-system-arm)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "pvkit: need root (or sudo) to install: ${need[*]}" >&2; exit 1; }
    SUDO=sudo
fi
echo "pvkit: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
