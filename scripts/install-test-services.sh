#!/usr/bin/env bash
# System packages the test suite needs (Debian/Ubuntu): PostgreSQL for the instance's database
# tests (the tests start their own throwaway cluster on a free loopback port) and curl for the
# README's curl in the end-to-end test. Installs only what is missing.
set -euo pipefail

missing=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v curl >/dev/null || missing+=(curl)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then SUDO=sudo; else
        echo "install ${missing[*]} (needs root), then run make test again" >&2
        exit 1
    fi
else
    SUDO=
fi
echo "installing ${missing[*]} ..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
