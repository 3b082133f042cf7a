#!/usr/bin/env bash
# Make sure $REPO/.venv has moto server at the pinned version; install it if not.
# Idempotent and safe to run concurrently (flock). Prints one line on success.
# PYTHON picks the interpreter for a new venv (default: python3).
set -euo pipefail

MOTO_VERSION=5.2.5
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$REPO/.venv"

installed_version() {
  "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null
}

ready() {
  [[ -x "$VENV/bin/moto_server" ]] && [[ "$(installed_version)" == "$MOTO_VERSION" ]]
}

if ! ready; then
  mkdir -p "$REPO/.local"
  exec 9>"$REPO/.local/ensure-moto.lock"
  flock 9
  if ! ready; then # another run may have installed it while we waited
    if ! "$VENV/bin/python" -c '' 2>/dev/null; then
      rm -rf "$VENV" # missing, or made by an interpreter that is gone
      "${PYTHON:-python3}" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
      "moto[server]==$MOTO_VERSION" >&2
    ready || { echo "ensure-moto: install of moto $MOTO_VERSION failed" >&2; exit 1; }
  fi
fi

echo "moto $MOTO_VERSION ready: $VENV/bin/moto_server"
