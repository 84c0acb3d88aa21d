#!/usr/bin/env bash
# The test command: set up (idempotent), then format check, clippy with warnings as errors, the deployment
# manifests and Dockerfiles (scripts/validate_deploy.sh, offline, seconds), and every test.
# Tests that need CamVid read it from $SHARED_DIR (default ../shared) and skip loudly without it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
scripts/validate_deploy.sh
cargo test --workspace
