#!/usr/bin/env bash
# Replays the recorded stolen-instance-credential scenario (tests/fixtures, mounted at
# /opt/credwatch/fixtures) through CloudWatch Logs PutLogEvents: the instance's own calls on one
# log stream, the attacker's on another (so they most likely land on different shards), plus one
# record that is not a CloudWatch Logs envelope (a bad record, for the dashboards). Run again any
# time with: docker compose -f docker/docker-compose.yml exec localstack bash /opt/credwatch/replay.sh
set -euo pipefail

STREAM="${CREDWATCH_STREAM:-cloudtrail-credwatch}"
LOG_GROUP="${CREDWATCH_LOG_GROUP:-/credwatch/cloudtrail}"
FIXTURES=/opt/credwatch/fixtures
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# put FILE LOG_STREAM: one log event per CloudTrail event, message = the event's compact JSON.
put() {
  local file="$1" log_stream="$2"
  python3 - "$file" >"$WORK/events.json" <<'PY'
import json, sys, time
events = json.load(open(sys.argv[1]))
if isinstance(events, dict):
    events = events.get("Records", [events])
now = int(time.time() * 1000)
print(json.dumps([{"timestamp": now, "message": json.dumps(e, separators=(",", ":"))} for e in events]))
PY
  awslocal logs create-log-stream --log-group-name "$LOG_GROUP" --log-stream-name "$log_stream" \
    >/dev/null 2>&1 || true
  awslocal logs put-log-events --log-group-name "$LOG_GROUP" --log-stream-name "$log_stream" \
    --log-events "file://$WORK/events.json" >/dev/null
  echo "credwatch replay: $(basename "$file") -> $LOG_GROUP/$log_stream"
}

put "$FIXTURES/demo-instance-home.json" i-786a3a8b5c0d92ef4
sleep 1
put "$FIXTURES/demo-attacker.json" attacker-replay

# "bm90IGd6aXA=" is base64 for "not gzip": AWS CLI v2 decodes it, v1 sends it as is; either way
# the record is not gzip and credwatch dead-letters it (credwatch_bad_records_total{kind="not_gzip"}).
awslocal kinesis put-record --stream-name "$STREAM" --partition-key junk --data "bm90IGd6aXA=" >/dev/null
echo "credwatch replay: one bad record -> $STREAM"
