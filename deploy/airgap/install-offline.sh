#!/bin/sh
# On the machine without network: check the wheelhouse and install Custos from it into a new venv.
#   deploy/airgap/install-offline.sh WHEELHOUSE VENV
set -eu
[ "$#" -eq 2 ] || { echo "usage: $0 WHEELHOUSE VENV" >&2; exit 64; }
wheelhouse=$(cd "$1" && pwd)
venv=$2
python=${PYTHON:-python3}
(cd "$wheelhouse" && sha256sum --quiet --check SHA256SUMS)
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --no-index --find-links "$wheelhouse" custos
echo "installed: $("$venv/bin/custos" --help >/dev/null && echo "$venv/bin/custos")"
