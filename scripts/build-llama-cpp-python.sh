#!/usr/bin/env bash
# Build llama-cpp-python's OpenAI-style server (`python -m llama_cpp.server`)
# once, from its pinned PyPI source distribution, into a venv in a cache
# outside the repository, for the tests in tests/llama_cpp_python/. A second
# run with the venv present returns at once.
#
# Usage: scripts/build-llama-cpp-python.sh
# Env:   EXSA_LLAMA_CACHE  cache root (default: ~/.cache/exsa-doctor)
#        EXSA_LLAMA_JOBS   parallel compile jobs (default: 2)
# Out:   the last line on stdout is the path of the venv's python. Next to the venv:
#        ggml-vocab-llama-spm.gguf from the same llama.cpp tree (for the tests' tiny model).
set -euo pipefail

# Pinned: the version and the sdist's sha256 (the digest PyPI publishes for
# llama_cpp_python-0.3.36.tar.gz). pip fetches it by name; we check the digest
# ourselves before building from the checked file.
VERSION="0.3.36"
SDIST="llama_cpp_python-${VERSION}.tar.gz"
SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"

ROOT="${EXSA_LLAMA_CACHE:-${HOME}/.cache/exsa-doctor}"
DEST="${ROOT}/llama-cpp-python-${VERSION}"
VENV="${DEST}/venv"
PY="${VENV}/bin/python"
VOCAB="${DEST}/ggml-vocab-llama-spm.gguf"
STAMP="${DEST}/.complete"
JOBS="${EXSA_LLAMA_JOBS:-2}"

venv_built() {
    [[ -x "${PY}" && -f "${STAMP}" ]] && [[ "$(cat "${STAMP}")" == "${SHA256}" ]]
}

done_already() {
    venv_built && [[ -f "${VOCAB}" ]]
}

if done_already; then
    echo "${PY}"
    exit 0
fi

mkdir -p "${DEST}"
# One build at a time: a second caller waits here, then finds the venv and returns.
exec 9>"${DEST}/.lock"
flock 9
if done_already; then
    echo "${PY}"
    exit 0
fi

for tool in cmake c++ python3 sha256sum tar flock; do
    command -v "${tool}" >/dev/null || { echo "build-llama-cpp-python: '${tool}' not found on PATH" >&2; exit 2; }
done

WORK="${DEST}/work"
mkdir -p "${WORK}"
if [[ ! -f "${WORK}/${SDIST}" ]] || ! echo "${SHA256}  ${WORK}/${SDIST}" | sha256sum -c --status; then
    echo "build-llama-cpp-python: downloading ${SDIST} (about 77 MB)" >&2
    rm -f "${WORK}/${SDIST}"
    python3 -m pip download --quiet --no-deps --no-binary :all: -d "${WORK}" \
        "llama-cpp-python==${VERSION}" >&2
fi
echo "${SHA256}  ${WORK}/${SDIST}" | sha256sum -c --status \
    || { echo "build-llama-cpp-python: sha256 mismatch for ${SDIST}" >&2; rm -f "${WORK}/${SDIST}"; exit 1; }

if [[ ! -f "${VOCAB}" ]]; then
    tar -xzOf "${WORK}/${SDIST}" "llama_cpp_python-${VERSION}/vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf" \
        > "${VOCAB}.tmp"
    mv "${VOCAB}.tmp" "${VOCAB}"
fi
if venv_built; then
    rm -rf "${WORK}"
    echo "${PY}"
    exit 0
fi

# A half-built venv from an interrupted run is not trusted.
rm -rf "${VENV}"
python3 -m venv "${VENV}"

# CPU only and portable (no -march=native: the cache may outlive the CPU it was
# built on), no curl, no multimodal (mtmd) library: the server imports it only
# for vision chat handlers.
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
export CMAKE_BUILD_PARALLEL_LEVEL="${JOBS}"
command -v ninja >/dev/null && export CMAKE_GENERATOR=Ninja

echo "build-llama-cpp-python: CMAKE_ARGS=${CMAKE_ARGS}" >&2
start=${SECONDS}
"${PY}" -m pip install --quiet --no-cache-dir "${WORK}/${SDIST}[server]" >&2
echo "build-llama-cpp-python: built and installed in $((SECONDS - start)) s" >&2

"${PY}" -c "import llama_cpp, llama_cpp.server.app; print('llama_cpp', llama_cpp.__version__)" >&2 \
    || { echo "build-llama-cpp-python: the built package does not import" >&2; exit 1; }
echo "${SHA256}" > "${STAMP}"
rm -rf "${WORK}"
echo "${PY}"
