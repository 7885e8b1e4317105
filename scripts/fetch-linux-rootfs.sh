#!/usr/bin/env bash
# Build the initramfs that pvkit's Linux tests boot with Debian's kernel, and print its path:
#
#   fetch-linux-rootfs.sh [-o OUT]     (default OUT: <linux cache>/<version>/rootfs.cpio.gz)
#
# Its parts are pinned and cached (outside git) by version, beside the kernel:
#
#   ${PVKIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pvkit}/
#       busybox/<version>/busybox     Debian 12's busybox-static for arm64 (below)
#       linux/<version>/modules/<abi> the kernel package's modules (scripts/fetch-linux.sh)
#
# and the archive is made from them, guests/linux/init and guests/prebuilt/phc-read.elf
# (a /dev/ptp0 reader built from guests/linux/phc-read.c) by scripts/make-initramfs.py,
# afresh on every run (well under a second; the same inputs give the same bytes). Downloads,
# checks and unpacks with scripts/fetch-deb.sh, as fetch-linux.sh does; needs what that
# needs, and python3. No root needed. On failure: one sentence on stderr, exit 1.
#
# busybox-static is taken straight from the archive's pool by a pinned URL and sha256,
# which is the same file `apt-get download busybox-static:arm64` would fetch, without the
# root and `dpkg --add-architecture arm64` that apt needs for a foreign architecture. To move
# on, take Filename and SHA256 of busybox-static from the bookworm main binary-arm64
# Packages index (apt-cache show on an arm64 apt, or the Packages.xz file itself).
set -euo pipefail

BUSYBOX_VERSION=1:1.35.0-4+deb12u1+b1
BUSYBOX_URL="https://deb.debian.org/debian/pool/main/b/busybox/busybox-static_1.35.0-4+deb12u1+b1_arm64.deb"
BUSYBOX_SHA256=732c9135564fc71337e0e05fb4da4d11e6c28c1834bce3e405e575afef2a52f5

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"

# shellcheck source-path=SCRIPTDIR source=fetch-deb.sh
. "${here}/fetch-deb.sh"

out=""
while [ $# -gt 0 ]; do
    case "$1" in
    -o)
        [ $# -ge 2 ] || fail "-o needs a path."
        out="$2"
        shift 2
        ;;
    *) fail "unknown argument '$1'; the only option is -o OUT." ;;
    esac
done

busybox="${pvkit_cache}/busybox/${BUSYBOX_VERSION#*:}/busybox"
if [ ! -s "$busybox" ]; then
    fetch_deb "${busybox%/*}" "$BUSYBOX_URL" "$BUSYBOX_SHA256" busybox.deb 300
    deb_unpack ./bin/busybox
    deb_take bin/busybox "$busybox"
fi

# fetch-linux.sh says what went wrong itself, on stderr.
modules="$(bash "${here}/fetch-linux.sh" modules)" || exit 1
[ -n "$out" ] || out="$(dirname "$(dirname "$modules")")/rootfs.cpio.gz"
command -v python3 >/dev/null || fail "python3 is not installed; install it (apt-get install python3) and run this again."
# make-initramfs.py prints the path it wrote, and says what went wrong itself.
# guests/prebuilt/phc-read.elf (from guests/linux/phc-read.c) reads /dev/ptp0 for the tests.
python3 "${here}/make-initramfs.py" --busybox "$busybox" --modules "$modules" \
    --init "${root}/guests/linux/init" --program "${root}/guests/prebuilt/phc-read.elf" \
    -o "$out" || exit 1
