#!/usr/bin/env bash
# Installs what the project needs, from the package registries only, into project-local folders. Idempotent:
# a second run checks the pinned versions and returns in seconds.
#   .venv/  onnxruntime==1.31.1 (libonnxruntime.so for `ort` with load-dynamic) and torch==2.13.0 (libtorch for
#           `tch`, the small install: no CUDA libraries beyond the runtime the library links against).
# Prints the environment to export; `source scripts/env.sh` does it for the current shell.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check --quiet)
installed() { .venv/bin/python -m pip show "$1" 2>/dev/null | grep -qx "Version: $2"; }

installed onnxruntime 1.31.1 || "${pip[@]}" install onnxruntime==1.31.1
# --no-deps: Rust needs libtorch and the CUDA runtime it links, not the 2.7 GB of CUDA wheels Python would.
installed torch 2.13.0 || "${pip[@]}" install --no-deps torch==2.13.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85

source scripts/env.sh
test -f "$ORT_DYLIB_PATH" || { echo "setup: $ORT_DYLIB_PATH is missing" >&2; exit 1; }
test -f "$LIBTORCH/lib/libtorch_cpu.so" || { echo "setup: libtorch not found under $LIBTORCH" >&2; exit 1; }
echo "setup: ok (ORT_DYLIB_PATH=$ORT_DYLIB_PATH LIBTORCH=$LIBTORCH)"
