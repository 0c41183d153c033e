#!/bin/sh
# Start `custos serve` in a network namespace with only loopback (no route anywhere else) and ask it,
# over TLS on loopback, for its health and for the audit trail with the bootstrap admin token.
#   deploy/airgap/smoke-test.sh VENV CONFIG      (run as root: it needs `unshare -n`)
# CONFIG is a settings file whose data_dir is writable; listen defaults to 127.0.0.1:50051.
set -eu
[ "$#" -eq 2 ] || { echo "usage: $0 VENV CONFIG" >&2; exit 64; }
venv=$(cd "$1" && pwd)
config=$2
# shellcheck disable=SC2016 # the script below expands its own positional parameters
exec unshare --net -- sh -eu -c '
venv=$1; config=$2
ip link set lo up
if ip -o route show | grep -q .; then echo "a route besides loopback exists" >&2; exit 1; fi
data_dir=$("$venv/bin/python" -c "import sys; from pathlib import Path; \
from custos.server.settings import load_settings; \
s = load_settings(Path(sys.argv[1])); print(s.data_dir); print(s.listen.rpartition(\":\")[2])" "$config")
port=$(echo "$data_dir" | tail -n 1)
data_dir=$(echo "$data_dir" | head -n 1)
"$venv/bin/custos" serve --config "$config" > "$data_dir.serve.log" 2>&1 &
server=$!
trap "kill -TERM $server 2>/dev/null; wait $server" EXIT
tries=0
until "$venv/bin/custos" health --quiet --server "127.0.0.1:$port" --ca-file "$data_dir/tls/ca.pem" \
        2>/dev/null; do
    tries=$((tries + 1))
    if [ "$tries" -gt 600 ] || ! kill -0 "$server" 2>/dev/null; then
        echo "server did not become healthy" >&2; tail -n 20 "$data_dir.serve.log" >&2; exit 1
    fi
    sleep 0.5
done
"$venv/bin/custos" health --server "127.0.0.1:$port" --ca-file "$data_dir/tls/ca.pem"
"$venv/bin/custos" audit query --server "127.0.0.1:$port" --ca-file "$data_dir/tls/ca.pem" \
    --token "$(cat "$data_dir/admin.token")" --event-type config_change --format json
' smoke-test "$venv" "$config"
