#!/usr/bin/env bash
# Build pvkit's vCPU engine: Unicorn 2.1.4 from its PyPI sdist with pvkit's patch
# (engine/unicorn-2.1.4-pvkit.patch: architectural exception entry, interrupt lines,
# parallel translation), for aarch64 and x86 only, and install it into the venv.
# The wheel is cached outside git, keyed by the version, the patch and the build options,
# so a rebuild only happens when one of them changes.
#   usage: scripts/setup-engine.sh VENV_PYTHON
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:?usage: setup-engine.sh VENV_PYTHON}
VERSION=2.1.4
ARCHS="aarch64;x86"
PATCH=engine/unicorn-$VERSION-pvkit.patch
CACHE=${PVKIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pvkit}
KEY=$( { cat "$PATCH"; echo "$VERSION $ARCHS"; } | sha256sum | cut -c1-16)
OUT=$CACHE/engine/unicorn-$VERSION-$KEY

if "$PY" -c "import sys; from pvkit.backends.uc_controls import installed_engine_key as k; sys.exit(k() != '$KEY')" 2>/dev/null; then
    exit 0  # the venv already has this build
fi
wheel=$(ls "$OUT"/unicorn-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
    for tool in cmake gcc make; do
        command -v $tool >/dev/null || { echo "pvkit: building the engine needs $tool (scripts/setup-toolchain.sh installs it)" >&2; exit 1; }
    done
    echo "pvkit: building the patched Unicorn $VERSION engine (about 2-4 minutes, once)" >&2
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    "$PY" -m pip download -q --no-deps --no-binary :all: -d "$work" "unicorn==$VERSION" \
        > "$work/download.log" 2>&1 || { cat "$work/download.log" >&2; exit 1; }
    tar -xzf "$work/unicorn-$VERSION.tar.gz" -C "$work"
    patch -s -p1 -d "$work" < "$PATCH"
    mkdir -p "$work/wheel"
    UNICORN_ARCHS="$ARCHS" THREADS="$(nproc)" \
        "$PY" -m pip wheel -q --no-deps -w "$work/wheel" "$work/unicorn-$VERSION" \
        > "$work/build.log" 2>&1 || { tail -50 "$work/build.log" >&2; echo "pvkit: the engine build failed" >&2; exit 1; }
    mkdir -p "$OUT.tmp"
    cp "$work"/wheel/unicorn-*.whl "$OUT.tmp/"
    rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"  # appears whole or not at all
    wheel=$(ls "$OUT"/unicorn-*.whl | head -1)
fi
"$PY" -m pip install -q --force-reinstall --no-deps "$wheel"
echo "$KEY" > "$("$PY" -c 'import unicorn, os; print(os.path.dirname(unicorn.__file__))')/PVKIT_ENGINE"
