#!/usr/bin/env bash
# Fetch Debian 12 ("bookworm")'s arm64 kernel, pinned by version and sha256, into pvkit's
# cache (outside git), with the few modules pvkit's tests load and the kernel's config, all
# from the same package, and print the path of one part (default: the kernel):
#
#   fetch-linux.sh [kernel|modules|config]
#
#   ${PVKIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pvkit}/linux/<version>/
#       vmlinuz                  kernel           (boot/vmlinuz-<abi>)
#       config                   config           (boot/config-<abi>)
#       modules/<abi>/           modules          (a /lib/modules/<abi> for an initramfs:)
#           kernel/.../*.ko          MODULES below and the modules they depend on, uncompressed
#           modules.builtin          from the package: what is built in instead (ptp_kvm is)
#           modules.dep              written here in depmod's format, for modprobe
#           modules.load             written here: the .ko paths in load order, for insmod
#
# Used by tests/test_linux_boot.py and scripts/fetch-linux-rootfs.sh. Does nothing but print
# the path when every part is there (a cache that lacks one, or one of MODULES, is filled in
# from a fresh download). Downloads, checks and unpacks with scripts/fetch-deb.sh: needs
# curl, and dpkg-deb or else ar, tar and xz. No root needed. On failure: one sentence on
# stderr, exit 1.
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

# Modules the test initramfs loads (their dependencies are added from each one's modinfo).
# In this config CONFIG_HW_RANDOM_ARM_SMCCC_TRNG=m; CONFIG_PTP_1588_CLOCK_KVM (ptp_kvm),
# CONFIG_PTP_1588_CLOCK (ptp), CONFIG_PPS (pps_core) and CONFIG_HW_RANDOM (rng-core) are =y,
# so there is nothing to load for them (modules.builtin lists them).
MODULES=(arm_smccc_trng)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=fetch-deb.sh
. "${here}/fetch-deb.sh"

part="${1:-kernel}"
case "$part" in
kernel | modules | config) ;;
*) fail "unknown part '${part}'; say kernel, modules or config." ;;
esac

cache="${pvkit_cache}/linux/${VERSION}"
kernel="${cache}/vmlinuz"
config="${cache}/config"
modules="${cache}/modules/${ABI}"
say() {
    case "$part" in
    kernel) echo "$kernel" ;;
    modules) echo "$modules" ;;
    config) echo "$config" ;;
    esac
}
# have_modules: every one of MODULES is in the cached modules.load (the list may have grown).
have_modules() {
    local name
    for name in "${MODULES[@]}"; do
        grep -q "/${name//[-_]/[-_]}\.ko\$" "${modules}/modules.load" 2>/dev/null || return 1
    done
}
if [ -s "$kernel" ] && [ -s "$config" ] && have_modules; then
    say
    exit 0
fi

fetch_deb "$cache" "$URL" "$SHA256" kernel.deb 600
mkdir -p "${cache}/modules" || fail "cannot create the cache directory ${cache}/modules."
work="$deb_work"
tree="$deb_tree"
# Only the members named: `dpkg-deb -x` would write ~350 MB, nearly all of it modules that
# nothing here loads. One that is not there is left for the checks after (they say what).

mods="lib/modules/${ABI}"
# file_pattern NAME: the package path of module NAME, as a wildcard ('-' and '_' are the
# same in module names; Debian compresses no modules in this kernel, later ones use .ko.xz).
file_pattern() {
    echo "./${mods}/kernel/*/${1//[-_]/[-_]}.ko*"
}
patterns=()
for name in "${MODULES[@]}"; do
    patterns+=("$(file_pattern "$name")")
done
deb_unpack "./boot/vmlinuz-${ABI}" "./boot/config-${ABI}" "./${mods}/modules.builtin" "${patterns[@]}"

# Close MODULES over their dependencies, deepest first: `order` is a valid insmod order.
declare -A path_of=()
order=()
# ko_of NAME: the unpacked file of module NAME, decompressed in place if it came as .ko.xz.
ko_of() {
    local found
    found="$(find "${tree}/${mods}/kernel" -regextype posix-extended \
        -regex ".*/${1//[-_]/[-_]}\.ko(\.xz)?" -print -quit 2>/dev/null)" || true
    if [ -z "$found" ]; then
        grep -q "/${1//[-_]/[-_]}\.ko\$" "${tree}/${mods}/modules.builtin" 2>/dev/null &&
            fail "module $1 is built into this kernel (modules.builtin): there is nothing to load, take it out of MODULES."
        fail "module $1 is not in ${deb_file##*/}."
    fi
    if [ "${found%.xz}" != "$found" ]; then
        xz -d "$found" 2>"${work}/xz.err" || fail "xz could not decompress ${found##*/}: $(head -n1 "${work}/xz.err")."
        found="${found%.xz}"
    fi
    echo "$found"
}
# depends_of KO: the modules (comma-separated in its modinfo) that KO needs loaded first.
depends_of() {
    tr '\0' '\n' <"$1" | sed -n 's/^depends=//p' | head -n1 | tr ',' ' '
}
declare -A visiting=()
visit() {
    local name="${1//-/_}" ko dep
    [ -z "${path_of[$name]:-}" ] || return 0
    [ -z "${visiting[$name]:-}" ] || fail "module ${name} depends on itself through its dependencies."
    visiting[$name]=1
    ko="$(ko_of "$name" 2>/dev/null)" || {
        deb_unpack "$(file_pattern "$name")"
        ko="$(ko_of "$name")"
    }
    for dep in $(depends_of "$ko"); do
        visit "$dep"
    done
    path_of[$name]="${ko#"${tree}/${mods}/"}"
    order+=("${path_of[$name]}")
}
for name in "${MODULES[@]}"; do
    visit "$name"
done

# The modules' own directory: the .ko files, modules.builtin, modules.load (load order) and
# modules.dep in depmod's format ("path: dep dep", all of a module's dependencies).
stage="${work}/modules"
mkdir -p "$stage"
for rel in "${order[@]}"; do
    mkdir -p "${stage}/${rel%/*}"
    mv "${tree}/${mods}/${rel}" "${stage}/${rel}" || fail "cannot move ${rel##*/} into ${stage}."
done
mv "${tree}/${mods}/modules.builtin" "${stage}/modules.builtin" || fail "the package holds no ${mods}/modules.builtin."
printf '%s\n' "${order[@]}" >"${stage}/modules.load"
# all_deps NAME: NAME's dependencies, transitively, each once, nearest first.
all_deps() {
    local ko="${stage}/${path_of[${1//-/_}]}" dep
    for dep in $(depends_of "$ko"); do
        echo "${dep//-/_}"
        all_deps "$dep"
    done
}
for rel in "${order[@]}"; do
    base="${rel##*/}"
    line="${rel}:"
    for dep in $(all_deps "${base%.ko}" | awk '!seen[$0]++'); do
        line+=" ${path_of[$dep]}"
    done
    echo "$line"
done >"${stage}/modules.dep"

deb_need "boot/vmlinuz-${ABI}" "boot/config-${ABI}"
# The temporary tree is inside the cache directory, so these renames are atomic; the
# modules directory goes last, since its modules.load is what marks the cache complete.
deb_take "boot/config-${ABI}" "$config" "the config"
deb_take "boot/vmlinuz-${ABI}" "$kernel" "the kernel"
if [ -e "$modules" ]; then
    mv "$modules" "${work}/old-modules" || fail "cannot move the old ${modules} aside."
fi
mv -T "$stage" "$modules" || fail "cannot move the modules into ${modules}."
say
