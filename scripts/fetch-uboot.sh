#!/usr/bin/env bash
# Fetch Debian 12 ("bookworm")'s U-Boot for QEMU's arm64 virt board, pinned by version and
# sha256, into pvkit's cache (outside git), and print the path of its u-boot.bin:
#
#   fetch-uboot.sh
#
#   ${PVKIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pvkit}/u-boot/<version>/u-boot.bin
#       the package's usr/lib/u-boot/qemu_arm64/u-boot.bin, a raw image that starts at 0x0
#       (`pvkit run --bios u-boot.bin` puts it in flash bank 0 and starts there)
#
# Used by tests/test_uboot.py. Does nothing but print the path when the file is there.
# Downloads, checks and unpacks with scripts/fetch-deb.sh: needs curl, and dpkg-deb or else
# ar, tar and xz. No root needed. On failure: one sentence on stderr, exit 1.
#
# u-boot-qemu is an Architecture: all package (one file, the images of every QEMU board
# U-Boot supports), so any host can take it from the pool. The pin is a point-release
# package in the main archive; to move on, take the u-boot-qemu version in bookworm's
# Packages index and its SHA256 (or `sha256sum` of the download).
set -euo pipefail

VERSION=2023.01+dfsg-2+deb12u3
URL="https://deb.debian.org/debian/pool/main/u/u-boot/u-boot-qemu_${VERSION}_all.deb"
SHA256=02a14f0876b76c0d7d7934e9b83a77515c5bdbad1e00af84c445bfeb1e6b8665
MEMBER=usr/lib/u-boot/qemu_arm64/u-boot.bin

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=fetch-deb.sh
. "${here}/fetch-deb.sh"

[ $# -eq 0 ] || fail "unknown argument '$1'; this script takes none."

cache="${pvkit_cache}/u-boot/${VERSION}"
uboot="${cache}/u-boot.bin"
if [ ! -s "$uboot" ]; then
    fetch_deb "$cache" "$URL" "$SHA256" u-boot-qemu.deb 300
    deb_unpack "./${MEMBER}"
    # The temporary tree is inside the cache directory, so this rename is atomic.
    deb_take "$MEMBER" "$uboot" "u-boot.bin"
fi
echo "$uboot"
