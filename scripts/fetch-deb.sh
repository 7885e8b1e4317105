# shellcheck shell=bash
# The part pvkit's fetch scripts share (fetch-linux.sh, fetch-linux-rootfs.sh and
# fetch-uboot.sh): download one Debian package pinned by URL and sha256 into a temporary
# directory inside pvkit's cache (outside git), unpack just the members wanted from it, and
# move them into place by rename, which is atomic because the temporary directory is in the
# cache too. Not a command: a fetch script sources it after `set -euo pipefail`:
#
#   . "${here}/fetch-deb.sh"
#   dir="${pvkit_cache}/foo/${VERSION}"
#   [ -s "${dir}/foo" ] && ...            (a cached part needs no download)
#   fetch_deb "$dir" URL SHA256 foo.deb [MAX_SECONDS]
#   deb_unpack ./usr/bin/foo              (members as GNU tar wildcards, into $deb_tree)
#   deb_take usr/bin/foo "${dir}/foo"     (checked, then renamed into the cache)
#
# It defines:
#   fail MESSAGE...   "NAME: MESSAGE" on stderr, then exit 1 (one sentence each), NAME
#                     being the sourcing script's file name without .sh ($fetch_name)
#   pvkit_cache       ${PVKIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pvkit}
#   fetch_deb DIR URL SHA256 NAME [MAX_SECONDS]
#                     creates DIR, a temporary directory $deb_work in it (removed on exit:
#                     this sets the EXIT trap), downloads URL there as $deb_file (named
#                     NAME, the name error messages use) and refuses it unless its sha256 is
#                     SHA256; without dpkg-deb, splits it with ar into its data.tar.*
#   deb_unpack MEMBER...
#                     extracts these members of the package's data into $deb_tree (made
#                     empty by fetch_deb); one that is not there is no error here, so that
#                     deb_need or deb_take after can say which it was
#   deb_need PATH...  fails unless every PATH (relative to $deb_tree) is a non-empty file
#   deb_take PATH DEST [WHAT]
#                     deb_need PATH, then renames it to DEST (WHAT names it in the error)
#
# Needs curl, and dpkg-deb or else ar and tar (with xz or zstd for the data.tar they
# compress). No root: nothing is installed, only files are unpacked. Only the members named
# are extracted, not the whole package as `dpkg-deb -x` would, since a package can be far
# larger than the few files wanted (the kernel's unpacks to ~350 MB); each deb_unpack
# decompresses the data.tar again, a pass of ~2 s for the kernel's.

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    echo "fetch-deb.sh: this is a library for the other fetch scripts; source it, do not run it." >&2
    exit 1
fi

fetch_name="$(basename "$0" .sh)"
# shellcheck disable=SC2034 # for the sourcing script
pvkit_cache="${PVKIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pvkit}"
deb_work=""
deb_file=""
deb_data=""
deb_tree=""

fail() {
    echo "${fetch_name}: $*" >&2
    exit 1
}

fetch_deb() {
    local dir="$1" url="$2" sha256="$3" name="$4" max_seconds="${5:-600}" got
    command -v curl >/dev/null || fail "curl is not installed; install it (apt-get install curl) and run this again."
    mkdir -p "$dir" || fail "cannot create the cache directory ${dir}."
    deb_work="$(mktemp -d "${dir}/.fetch.XXXXXX")" || fail "cannot create a temporary directory in ${dir}."
    trap 'rm -rf "$deb_work"' EXIT
    deb_file="${deb_work}/${name}"
    curl -fsSL --retry 2 --connect-timeout 30 --max-time "$max_seconds" -o "$deb_file" "$url" 2>"${deb_work}/curl.err" ||
        fail "could not download ${url} ($(tr '\n' ' ' <"${deb_work}/curl.err" | sed 's/ *$//'))."
    got="$(sha256sum "$deb_file" | cut -d' ' -f1)"
    [ "$got" = "$sha256" ] || fail "${url} has sha256 ${got}, not the pinned ${sha256}; refusing it."
    if ! command -v dpkg-deb >/dev/null; then
        command -v ar >/dev/null || fail "neither dpkg-deb nor ar is installed; install dpkg or binutils."
        (cd "$deb_work" && ar x "$deb_file") 2>"${deb_work}/x.err" ||
            fail "ar could not unpack the package: $(head -n1 "${deb_work}/x.err")."
        deb_data="$(find "$deb_work" -maxdepth 1 -name 'data.tar.*' -print -quit)"
        [ -n "$deb_data" ] || fail "the package has no data.tar member."
    fi
    deb_tree="${deb_work}/tree"
    mkdir "$deb_tree" || fail "cannot create a temporary directory in ${deb_work}."
}

deb_unpack() {
    local err="${deb_work}/x.err" other="${deb_work}/x.other"
    if [ -z "$deb_data" ]; then
        dpkg-deb --fsys-tarfile "$deb_file" 2>"$err" | tar -x -C "$deb_tree" --wildcards "$@" 2>>"$err"
    else
        tar -xf "$deb_data" -C "$deb_tree" --wildcards "$@" 2>"$err"
    fi && return 0
    grep -v -e 'Not found in archive' -e 'Exiting with failure status' "$err" >"$other" || true
    [ ! -s "$other" ] || fail "could not unpack from ${deb_file##*/}: $(head -n1 "$other")."
}

deb_need() {
    local path
    for path in "$@"; do
        [ -s "${deb_tree}/${path}" ] || fail "the package holds no ${path}."
    done
}

deb_take() {
    local path="$1" dest="$2" what="${3:-${1##*/}}"
    deb_need "$path"
    mv -f "${deb_tree}/${path}" "$dest" || fail "cannot move ${what} into ${dest}."
}
