#!/usr/bin/env bash
# Make sure $REPO/.local/prometheus holds Debian's `prometheus` package (the `prometheus` server and
# `promtool`), unpacked; fetch it with apt-get if not. Idempotent and safe to run concurrently
# (flock). Prints one line on success: the directory that holds the `prometheus` and `promtool`
# binaries (tests/support/prometheus.rs reads it from CREDWATCH_PROMETHEUS_DIR).
#
# Why `apt-get download` + `dpkg-deb -x` rather than `apt-get install`: installing the package runs
# its maintainer scripts, which add a system user and, on a machine without a policy-rc.d, start a
# Prometheus service listening on every interface (:9090). The tests need neither: they start their
# own server on 127.0.0.1 with a temporary storage directory. Nothing outside the repo is changed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PREFIX="$REPO/.local/prometheus"
BIN="$PREFIX/root/usr/bin"

ready() {
  [[ -x "$BIN/prometheus" && -x "$BIN/promtool" ]] &&
    "$BIN/promtool" --version >/dev/null 2>&1 &&
    "$BIN/prometheus" --version >/dev/null 2>&1
}

if ! ready; then
  mkdir -p "$REPO/.local"
  exec 9>"$REPO/.local/ensure-prometheus.lock"
  flock 9
  if ! ready; then # another run may have installed it while we waited
    command -v apt-get >/dev/null || { echo "ensure-prometheus: apt-get not found (Debian's prometheus package is used)" >&2; exit 1; }
    rm -rf "$PREFIX"
    mkdir -p "$PREFIX/deb"
    # apt-get download writes into the current directory; its lists may be missing or stale.
    if ! (cd "$PREFIX/deb" && apt-get download prometheus >&2); then
      apt-get update >&2
      (cd "$PREFIX/deb" && apt-get download prometheus >&2)
    fi
    deb="$(ls "$PREFIX"/deb/prometheus_*.deb | head -n 1)"
    dpkg-deb -x "$deb" "$PREFIX/root"
    rm -rf "$PREFIX/deb"
    ready || { echo "ensure-prometheus: unpacking Debian's prometheus package failed" >&2; exit 1; }
  fi
fi

echo "$BIN"
