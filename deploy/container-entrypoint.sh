#!/bin/sh
# Entrypoint of the Enclave image: `enclave <role> ...` (instance, gateway, model, or any admin
# command such as `backup`).
#
# ENCLAVE_DATABASE_URL_FILE and ENCLAVE_SECRET_KEY_FILE name files whose content becomes
# ENCLAVE_DATABASE_URL and ENCLAVE_SECRET_KEY (the convention of Docker/Kubernetes secrets), so
# the database password and the secret key never appear in the container's definition. (Other
# settings ending in _FILE, such as ENCLAVE_GATEWAY__SELF_SIGNING_KEY_FILE, are Enclave's own
# and are left alone.)
set -eu
for target in ENCLAVE_DATABASE_URL ENCLAVE_SECRET_KEY; do
    path="$(printenv "${target}_FILE" || true)"
    [ -n "$path" ] || continue
    if [ ! -r "$path" ]; then
        echo "error: ${target}_FILE names $path, which cannot be read" >&2
        exit 1
    fi
    export "$target=$(cat "$path")"
    unset "${target}_FILE"
done
exec enclave "$@"
