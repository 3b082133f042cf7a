#!/usr/bin/env bash
# A local AWS emulator (moto server on 127.0.0.1) with credwatch's pipeline provisioned:
# a Kinesis stream, a CloudWatch Logs log group and a subscription filter between them.
#
#   tests/stack/local-stack.sh start [--stream NAME] [--shards N] [--log-group NAME]
#   tests/stack/local-stack.sh status | stop
#
# `start` prints `export` lines on stdout (also kept in .local/stack/env), so
#   eval "$(tests/stack/local-stack.sh start)"
# points the shell at the emulator. Defaults come from CREDWATCH_STREAM, CREDWATCH_SHARDS and
# CREDWATCH_LOG_GROUP. Put CloudTrail events into the log group with
#   .venv/bin/python tests/stack/provision.py put-events --log-stream S events.json
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="$REPO/.local/stack"
PY="$REPO/.venv/bin/python"
PROVISION="$REPO/tests/stack/provision.py"

running() {
  [[ -f "$STATE/pid" ]] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null
}

start() {
  local stream="${CREDWATCH_STREAM:-credwatch-demo}"
  local shards="${CREDWATCH_SHARDS:-4}"
  local log_group="${CREDWATCH_LOG_GROUP:-/credwatch/cloudtrail}"
  while (($#)); do
    case "$1" in
      --stream) stream="$2"; shift 2 ;;
      --shards) shards="$2"; shift 2 ;;
      --log-group) log_group="$2"; shift 2 ;;
      *) echo "local-stack: unknown option $1" >&2; exit 2 ;;
    esac
  done

  if running; then
    echo "local-stack: already running (pid $(cat "$STATE/pid")); 'stop' first to start afresh" >&2
    cat "$STATE/env"
    return
  fi

  bash "$REPO/tests/stack/ensure-moto.sh" >&2
  mkdir -p "$STATE"
  local port endpoint
  port="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  endpoint="http://127.0.0.1:$port"
  nohup "$REPO/.venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$STATE/moto.log" 2>&1 </dev/null &
  echo $! >"$STATE/pid"
  echo "$port" >"$STATE/port"

  if ! "$PY" "$PROVISION" --endpoint "$endpoint" wait ||
    ! "$PY" "$PROVISION" --endpoint "$endpoint" setup \
      --stream "$stream" --shards "$shards" --log-group "$log_group"; then
    echo "local-stack: start failed; moto log: $STATE/moto.log" >&2
    stop
    exit 1
  fi

  cat >"$STATE/env" <<EOF
export AWS_ENDPOINT_URL=$endpoint
export AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_EC2_METADATA_DISABLED=true
export CREDWATCH_STREAM=$stream
export CREDWATCH_LOG_GROUP=$log_group
EOF
  echo "local-stack: moto on $endpoint (pid $(cat "$STATE/pid"), log $STATE/moto.log)" >&2
  cat "$STATE/env"
}

stop() {
  if running; then
    local pid
    pid="$(cat "$STATE/pid")"
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    echo "local-stack: stopped moto (pid $pid)" >&2
  else
    echo "local-stack: not running" >&2
  fi
  rm -f "$STATE/pid" "$STATE/port" "$STATE/env"
}

status() {
  if running; then
    echo "running: pid $(cat "$STATE/pid"), http://127.0.0.1:$(cat "$STATE/port")"
  else
    echo "not running"
    return 1
  fi
}

cmd="${1:-}"
shift || true
case "$cmd" in
  start) start "$@" ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start [--stream NAME] [--shards N] [--log-group NAME] | stop | status" >&2; exit 2 ;;
esac
