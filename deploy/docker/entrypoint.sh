#!/bin/sh
# Container entry point of the Custos image.
#   custos-entrypoint [serve|health|CUSTOS-SUBCOMMAND ...]   run `custos ...` as the unprivileged user
#   custos-entrypoint healthcheck                             the image's HEALTHCHECK (exit 0 = SERVING)
# Refuses to run as root and checks that the data directory is writable before the server starts, so a
# missing volume or a wrong owner fails with a clear message instead of half-way through start-up.
set -eu
umask 077

data_dir="${CUSTOS_DATA_DIR:-/var/lib/custos}"

fail() {
    echo "custos-entrypoint: $*" >&2
    exit 64
}

if [ "$(id -u)" = "0" ] && [ "${CUSTOS_ALLOW_ROOT:-}" != "1" ]; then
    fail "refusing to run as root; run as the custos user (uid 10001), e.g. docker run --user 10001:10001"
fi

if [ "$#" -eq 0 ]; then
    set -- serve
fi

case "$1" in
    healthcheck)
        # Ask the local listener; TLS with the data directory's development CA unless told otherwise.
        port="${CUSTOS_LISTEN:-127.0.0.1:50051}"
        port="${port##*:}"
        case "${CUSTOS_PLAINTEXT:-false}" in
            1|true|True|TRUE|yes|on)
                exec custos health --quiet --server "127.0.0.1:${port}" --plaintext ;;
        esac
        set -- custos health --quiet --server "127.0.0.1:${port}" \
            --ca-file "${CUSTOS_HEALTH_CA_FILE:-${data_dir}/tls/ca.pem}"
        if [ -n "${CUSTOS_HEALTH_SERVER_NAME:-}" ]; then
            set -- "$@" --server-name "${CUSTOS_HEALTH_SERVER_NAME}"
        fi
        if [ -n "${CUSTOS_HEALTH_CERT_FILE:-}" ]; then
            set -- "$@" --cert-file "${CUSTOS_HEALTH_CERT_FILE}" --key-file "${CUSTOS_HEALTH_KEY_FILE:-}"
        fi
        exec "$@" ;;
    serve)
        if [ ! -d "$data_dir" ] || [ ! -w "$data_dir" ]; then
            fail "data directory $data_dir is missing or not writable by uid $(id -u); mount a volume there"
        fi
        exec custos "$@" ;;
    *)
        exec custos "$@" ;;
esac
