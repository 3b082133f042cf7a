#!/usr/bin/env bash
# README's main command: builds credwatch, starts the local stack (moto on 127.0.0.1), runs
# `credwatch run` on it, drives a recorded stolen-credential scenario through CloudWatch Logs
# PutLogEvents, and shows the finding as it arrives.
#
# Leaves running: the moto server (stop it with `bash tests/stack/local-stack.sh stop`).
# credwatch itself is stopped with SIGTERM at the end; its files stay under .local/demo/.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
say() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }

say "building credwatch (release)"
cargo build --release --locked --quiet
BIN="$REPO/target/release/credwatch"

say "starting the local stack (moto server on 127.0.0.1, stream, log group, subscription filter)"
eval "$(bash tests/stack/local-stack.sh start)"

DEMO="$REPO/.local/demo"
rm -rf "$DEMO" && mkdir -p "$DEMO"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

say "starting credwatch run (metrics on http://127.0.0.1:$PORT/metrics)"
# The demo's stream goes quiet after a few calls: settle once it has been idle for 3 s (a live
# stream's watermark moves with its own traffic; the default idleness is 60 s).
CREDWATCH_DETECTION__IDLE_SECS=3 "$BIN" run --stream "$CREDWATCH_STREAM" --endpoint-url "$AWS_ENDPOINT_URL" --region "$AWS_REGION" \
  --findings-out "$DEMO/findings.jsonl" --dead-letter-out "$DEMO/dead-letter.jsonl" \
  --checkpoint-dir "$DEMO/state" --metrics-addr "127.0.0.1:$PORT" --log info >"$DEMO/credwatch.log" 2>&1 &
CW=$!
trap 'kill -TERM $CW 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done

PY="$REPO/.venv/bin/python"
say "the instance i-786a3a8b5c0d92ef4 calls AWS from its own address (log stream = the instance)"
"$PY" tests/stack/provision.py put-events --log-group "$CREDWATCH_LOG_GROUP" \
  --log-stream i-786a3a8b5c0d92ef4 tests/fixtures/demo-instance-home.json
say "an attacker uses the stolen instance credential from elsewhere (another log stream, likely another shard)"
"$PY" tests/stack/provision.py put-events --log-group "$CREDWATCH_LOG_GROUP" \
  --log-stream attacker-replay tests/fixtures/demo-attacker.json

say "waiting for the finding (it settles once every shard's event time has passed it, or the stream went idle)"
for _ in $(seq 1 300); do
  grep -q session_token_reuse "$DEMO/findings.jsonl" 2>/dev/null && break
  sleep 0.2
done
if ! grep -q session_token_reuse "$DEMO/findings.jsonl" 2>/dev/null; then
  echo "no finding arrived; credwatch's log:" >&2
  tail -n 30 "$DEMO/credwatch.log" >&2
  exit 1
fi
grep session_token_reuse "$DEMO/findings.jsonl" | head -n 1 | python3 -m json.tool
say "all findings (one JSON line each) in $DEMO/findings.jsonl:"
python3 - "$DEMO/findings.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    f = json.loads(line)
    print(f"  {f['severity']:<7} {f['rule']:<30} {f['title']}")
PY
say "credwatch's metrics, a few of them:"
curl -fs "http://127.0.0.1:$PORT/metrics" | grep -E '^credwatch_(findings_total|kinesis_records_total|sessions_tracked)' | grep -v ' 0$' || true
kill -TERM $CW && wait $CW || true
trap - EXIT
say "done: credwatch stopped (checkpoint in $DEMO/state); moto still runs: bash tests/stack/local-stack.sh stop"
