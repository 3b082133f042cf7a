#!/usr/bin/env bash
# Make sure $REPO/.local/kinesis-mock has kinesis-mock (npm package kinesis-local) at the pinned
# version; install it if not. Idempotent and safe to run concurrently (flock). Prints one line on
# success: the path of the directory that holds main.js, server.json and loopback.cjs.
#
# Why kinesis-mock: moto never ends a closed shard (no null NextShardIterator after a split or a
# merge), so resharding is tested against kinesis-mock. It needs Node.js (`node` on PATH).
#
# Start it with (tests/support/kinesis_mock.rs does this):
#   KINESIS_MOCK_CERT_PATH=$DIR/server.json KINESIS_MOCK_PLAIN_PORT=P KINESIS_MOCK_TLS_PORT=Q \
#     node --require $DIR/loopback.cjs $DIR/main.js
# kinesis-mock always binds all interfaces; loopback.cjs makes it bind 127.0.0.1 only.
set -euo pipefail

KINESIS_MOCK_VERSION=0.6.2
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PREFIX="$REPO/.local/kinesis-mock"
PKG="$PREFIX/node_modules/kinesis-local"

installed_version() {
  node -e 'process.stdout.write(require(process.argv[1]).version)' "$PKG/package.json" 2>/dev/null
}

ready() {
  [[ -f "$PKG/main.js" && -f "$PKG/server.json" && -f "$PKG/loopback.cjs" ]] &&
    [[ "$(installed_version)" == "$KINESIS_MOCK_VERSION" ]]
}

command -v node >/dev/null || { echo "ensure-kinesis-mock: node is not installed (apt-get install nodejs npm)" >&2; exit 1; }

if ! ready; then
  mkdir -p "$REPO/.local"
  exec 9>"$REPO/.local/ensure-kinesis-mock.lock"
  flock 9
  if ! ready; then # another run may have installed it while we waited
    command -v npm >/dev/null || { echo "ensure-kinesis-mock: npm is not installed (apt-get install npm)" >&2; exit 1; }
    mkdir -p "$PREFIX"
    npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error \
      "kinesis-local@$KINESIS_MOCK_VERSION" >&2
    # Bind every server socket to 127.0.0.1 instead of all interfaces (kinesis-mock has no
    # option for the host).
    cat >"$PKG/loopback.cjs" <<'EOF'
const net = require("net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" && typeof args[1] !== "string") {
    args.splice(1, 0, "127.0.0.1");
  } else if (args[0] !== null && typeof args[0] === "object" && !("fd" in args[0]) && !("path" in args[0])) {
    args[0] = Object.assign({}, args[0], { host: "127.0.0.1" });
  }
  return listen.apply(this, args);
};
EOF
    ready || { echo "ensure-kinesis-mock: install of kinesis-local $KINESIS_MOCK_VERSION failed" >&2; exit 1; }
  fi
fi

echo "$PKG"
