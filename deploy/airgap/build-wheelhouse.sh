#!/bin/sh
# On a connected machine: put Custos and every dependency, as wheels, into one directory to carry across.
#   deploy/airgap/build-wheelhouse.sh WHEELHOUSE [extra `pip download` options, e.g. --find-links DIR]
# Uses the python3 on PATH (or $PYTHON); it must match the target's Python version and platform.
set -eu
[ "$#" -ge 1 ] || { echo "usage: $0 WHEELHOUSE [pip download options]" >&2; exit 64; }
wheelhouse=$1
shift
python=${PYTHON:-python3}
repo=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$wheelhouse"
# Custos itself (the gRPC code is generated while the wheel is built).
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$wheelhouse" "$repo"
# Everything it needs. torch must be the CPU build (or the CUDA build you want): offer it with --find-links.
"$python" -m pip download --quiet --dest "$wheelhouse" "$@" "$wheelhouse"/custos-*.whl
# Packages published only as source: build them here, so the target needs no build tools.
for sdist in "$wheelhouse"/*.tar.gz "$wheelhouse"/*.zip; do
    [ -e "$sdist" ] || continue
    "$python" -m pip wheel --quiet --no-deps --wheel-dir "$wheelhouse" "$sdist"
    rm -f "$sdist"
done
(cd "$wheelhouse" && sha256sum ./*.whl > SHA256SUMS)
echo "wheelhouse ready: $wheelhouse ($(wc -l < "$wheelhouse/SHA256SUMS") wheels)"
