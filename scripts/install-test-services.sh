#!/usr/bin/env bash
# System packages the test suite needs (Debian/Ubuntu), installs only what is missing:
# - PostgreSQL and Redis: the tests start their own throwaway servers on free loopback ports;
# - nginx: the loopback load balancer of the multi-process test;
# - chromium: Debian's browser, driven by Playwright for the admin UI (never a downloaded build);
# - curl: the README's curl in the end-to-end test.
set -euo pipefail

missing=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v curl >/dev/null || missing+=(curl)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v chromium >/dev/null || missing+=(chromium)
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
