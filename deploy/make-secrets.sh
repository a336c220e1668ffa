#!/usr/bin/env bash
# Create the secrets deploy/compose.yaml reads, once, in deploy/secrets/ (0600 files in a 0700
# directory, owned by uid 10001, the image's user). Existing files are kept.
#   sudo ./make-secrets.sh     (root is needed to hand the files to uid 10001)
set -euo pipefail
cd "$(dirname "$0")"
umask 077
mkdir -p secrets
new() { [ -e "secrets/$1" ] || { "${@:2}" > "secrets/$1"; echo "created secrets/$1"; }; }
new postgres-password openssl rand -hex 24
new database-url sh -c "printf 'postgresql+psycopg://enclave:%s@postgres:5432/enclave' \"\$(cat secrets/postgres-password)\""
new secret-key openssl rand -base64 32
new gateway-routes-secret openssl rand -hex 32
new model-api-key sh -c "printf 'enclkey-%s' \"\$(openssl rand -hex 32)\""
new redis-url printf 'redis://redis:6379/0' # compose's Redis; on Kubernetes write yours here
new gateway-signing.pem openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048
if [ "$(id -u)" = 0 ]; then
    chown -R 10001:10001 secrets
    chown 999:999 secrets/postgres-password # the postgres image's user reads this one
else
    echo "note: run as root (sudo) so that the files belong to uid 10001, the containers' user" >&2
fi
