#!/bin/sh
# Create the files compose.yaml references, next to it: secrets/ (master key, the owner's and the server
# role's database passwords and pgpass files) and tls/ (development CA and server certificate). Existing
# files are kept; remove them to replace them.
#   ./init-secrets.sh [SERVER_NAME]        (default: localhost; the name clients use to reach Custos)
# Environment: CUSTOS (the custos command, default `custos`); CUSTOS_MASTER_KEY_SOURCE (an existing master
# key file to use instead of `custos keys init`); OWNER (uid:gid owning the files, default 10001:10001);
# PG_OWNER (uid:gid owning app-db-password, which the postgres image's initdb script reads as its postgres
# user, default 999:999).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
custos=${CUSTOS:-custos}
owner=${OWNER:-10001:10001}
pg_owner=${PG_OWNER:-999:999}
name=${1:-localhost}
umask 077
mkdir -p "$here/secrets" "$here/tls"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ ! -e "$here/secrets/master-key.json" ]; then
    if [ -n "${CUSTOS_MASTER_KEY_SOURCE:-}" ]; then
        cp "$CUSTOS_MASTER_KEY_SOURCE" "$here/secrets/master-key.json"
    else
        $custos keys init --data-dir "$work/data"
        cp "$work/data/keys/master.json" "$here/secrets/master-key.json"
    fi
fi
if [ ! -e "$here/secrets/postgres-password" ]; then
    python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > "$here/secrets/postgres-password"
fi
if [ ! -e "$here/secrets/pgpass" ]; then
    printf 'postgres:5432:custos:custos:%s\n' "$(cat "$here/secrets/postgres-password")" > "$here/secrets/pgpass"
fi
if [ ! -e "$here/secrets/app-db-password" ]; then
    python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > "$here/secrets/app-db-password"
fi
if [ ! -e "$here/secrets/app-pgpass" ]; then
    printf 'postgres:5432:custos:custos_app:%s\n' "$(cat "$here/secrets/app-db-password")" \
        > "$here/secrets/app-pgpass"
fi
if [ ! -e "$here/tls/server.pem" ]; then
    $custos certs init --data-dir "$work/certs" --listen "$name:50051"
    cp "$work/certs/tls/ca.pem" "$here/tls/ca.pem"
    cp "$work/certs/tls/server.pem" "$here/tls/server.pem"
    cp "$work/certs/tls/server-key.pem" "$here/tls/server-key.pem"
    # The CA key stays out of the deployment: keep $work/certs/tls/ca-key.pem offline if you need it.
fi
chmod 0400 "$here"/secrets/* "$here/tls/server-key.pem"
chmod 0444 "$here/tls/ca.pem" "$here/tls/server.pem"
chown "$owner" "$here"/secrets/* "$here"/tls/*
chown "$pg_owner" "$here/secrets/app-db-password"
echo "compose secrets and certificates are ready in $here/secrets and $here/tls"
