# Environment for building and running the project; `source scripts/env.sh` from the repository root.
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_site="$_root/.venv/lib/python3.11/site-packages"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$_site/onnxruntime/capi/libonnxruntime.so.1.31.1}"
# ONNX Runtime (Python and Rust alike) starts a telemetry uploader on Linux unless this is set before it loads.
export ORT_DISABLE_TELEMETRY="${ORT_DISABLE_TELEMETRY:-1}"
export LIBTORCH="${LIBTORCH:-$_site/torch}"
# tch 0.26 expects libtorch 2.13.0, which is what setup.sh installs; the wheel has no build-version file to check.
export LIBTORCH_BYPASS_VERSION_CHECK=1
export SHARED_DIR="${SHARED_DIR:-$_root/../shared}"
unset _root _site
