#!/usr/bin/env bash
# Install the host tools pvkit's tests use: the aarch64 cross compiler (guest rebuilds),
# the native gcc and cmake (x86-64 guests, the C extensions, the vCPU engine), dtc (device-tree checks), qemu-system-aarch64 (the
# differential PSCI test) and gdb-multiarch (the gdb stub tests).
# `setup-toolchain.sh engine` installs only what building the vCPU engine needs.
set -euo pipefail
need=()
command -v gcc >/dev/null || need+=(gcc)
command -v g++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
command -v cmake >/dev/null || need+=(cmake)
command -v patch >/dev/null || need+=(patch)
if [ "${1:-all}" != engine ]; then
    command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu)
    command -v dtc >/dev/null || need+=(device-tree-compiler)
    command -v qemu-system-aarch64 >/dev/null || need+=(qemu-system-arm)
    command -v curl >/dev/null || need+=(curl ca-certificates)  # scripts/fetch-linux.sh
    command -v gdb-multiarch >/dev/null || need+=(gdb-multiarch)  # the gdb stub tests
fi
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
