#!/usr/bin/env bash
# Fetch Debian 12 ("bookworm")'s arm64 kernel, pinned by version and sha256, into pvkit's
# cache (outside git) and print the path of its vmlinuz. Used by tests/test_linux_boot.py.
#
#   ${PVKIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pvkit}/linux/<version>/vmlinuz
#
# Does nothing but print the path when the kernel is already there. Needs curl, and dpkg-deb
# or else ar, tar and xz. No root needed. On failure: one sentence on stderr, exit 1.
#
# The pin is a point-release package in the main archive (it stays in the pool until the
# next point release replaces it; security updates leave theirs sooner). To move on, take
# the linux-image-6.1.0-*-arm64 version that linux-image-arm64 depends on, and its sha256
# from the archive's Packages index (or from `sha256sum` of the download).
# Debian's arm64 vmlinuz is a plain (uncompressed) Image with the EFI stub's PE header.
set -euo pipefail

VERSION=6.1.176-1
ABI=6.1.0-50-arm64
URL="https://deb.debian.org/debian/pool/main/l/linux-signed-arm64/linux-image-${ABI}_${VERSION}_arm64.deb"
SHA256=914f75b57a8e165d85fb910c3e2dcc7000a05a9fea3f42f90b26e8dd590d5f06

fail() {
    echo "fetch-linux: $*" >&2
    exit 1
}

cache="${PVKIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pvkit}/linux/${VERSION}"
kernel="${cache}/vmlinuz"
if [ -s "$kernel" ]; then
    echo "$kernel"
    exit 0
fi

command -v curl >/dev/null || fail "curl is not installed; install it (apt-get install curl) and run this again."
mkdir -p "$cache" || fail "cannot create the cache directory ${cache}."
work="$(mktemp -d "${cache}/.fetch.XXXXXX")" || fail "cannot create a temporary directory in ${cache}."
trap 'rm -rf "$work"' EXIT

deb="${work}/kernel.deb"
curl -fsSL --retry 2 --connect-timeout 30 --max-time 600 -o "$deb" "$URL" 2>"${work}/curl.err" ||
    fail "could not download ${URL} ($(tr '\n' ' ' <"${work}/curl.err" | sed 's/ *$//'))."
got="$(sha256sum "$deb" | cut -d' ' -f1)"
[ "$got" = "$SHA256" ] || fail "${URL} has sha256 ${got}, not the pinned ${SHA256}; refusing it."

tree="${work}/tree"
member="./boot/vmlinuz-${ABI}"
mkdir "$tree"
if command -v dpkg-deb >/dev/null; then
    # Only the kernel: `dpkg-deb -x` would also write ~300 MB of modules.
    dpkg-deb --fsys-tarfile "$deb" 2>"${work}/x.err" | tar -x -C "$tree" "$member" 2>>"${work}/x.err" ||
        fail "could not unpack ${member#./} from ${deb##*/}: $(head -n1 "${work}/x.err")."
else
    command -v ar >/dev/null || fail "neither dpkg-deb nor ar is installed; install dpkg or binutils."
    (cd "$work" && ar x "$deb") 2>"${work}/x.err" || fail "ar could not unpack the package: $(head -n1 "${work}/x.err")."
    data="$(ls "$work"/data.tar.* 2>/dev/null | head -n1)"
    [ -n "$data" ] || fail "the package has no data.tar member."
    tar -xf "$data" -C "$tree" "$member" 2>"${work}/x.err" ||
        fail "could not unpack ${member#./} from ${data##*/}: $(head -n1 "${work}/x.err")."
fi

src="${tree}/${member#./}"
[ -s "$src" ] || fail "the package holds no boot/vmlinuz-${ABI}."
# The temporary tree is inside the cache directory, so this rename is atomic.
mv -f "$src" "$kernel" || fail "cannot move the kernel into ${kernel}."
echo "$kernel"
