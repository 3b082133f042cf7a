#!/usr/bin/env bash
# Load scenario: a generated workload replayed into a local Kinesis (moto) at a target rate while
# `credwatch run` consumes it; reports sustained events/s, detection latency, CPU and peak RSS.
#
#   bench/load.sh [--rates "1000 10000"] [--duration SECS] [--shards N] [--events-per-record N]
#                 [--concurrency N] [--lateness "600 0"] [--idle-secs S] [--no-replay-only]
#                 [--no-drain] [--emulator moto|kinesis-mock] [--consumers "polling ..."]
#                 [--out DIR]
#
# --emulator kinesis-mock runs against kinesis-mock (npm kinesis-local, on 127.0.0.1; the stream
# is made with boto3 from .venv) instead of moto; it serves SubscribeToShard, so
# --consumers "polling enhanced_fan_out" measures record-to-finding latency of both consumers
# (`kinesis.consumer`), alternated rate by rate, each on a fresh stream.
#
# For each rate R: generate R*SECS events (release build, seed 1), start the local stack
# (tests/stack/local-stack.sh: moto on 127.0.0.1, a stream of N shards), start `credwatch run`
# with the workload's credwatch.toml and a metrics port, `credwatch replay --stream` at R events/s
# (PutRecords, one log stream per account, as CloudTrail's own delivery), wait until credwatch has
# read every record (credwatch_kinesis_records_total equals the records sent and stops growing),
# and every candidate has settled (credwatch_candidates_pending is 0), then `credwatch score`
# against the truth with the replay's sent-log. Each rate runs once per `--lateness` value
# (`detection.allowed_lateness_secs`; default "600 0": the default and none), with
# `detection.idle_secs` = `--idle-secs` (default 5: the end of the replay is when the stream goes
# idle, and that is what settles the last candidates).
#
# Two more measurements say where the ceiling is:
# - replay-only: the largest workload replayed unpaced into moto, nothing reading (moto's ingest);
# - drain: the same workload put into the stream first, then `credwatch run` started on it: how
#   fast credwatch (through moto's GetRecords) works off a backlog.
#
# Results: DIR/results.jsonl (one JSON object per run) and DIR/results.md (a Markdown table);
# DIR defaults to .local/bench/load-<time> (git-ignored: workloads are large).
# Everything runs on 127.0.0.1; every wait is bounded. Replay sends one PutRecords call at a time
# by default (--concurrency 1): moto 5.2.5 numbers a shard's records as max+1 without a lock, so
# concurrent PutRecords calls can overwrite each other's records after answering success.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

RATES="1000 10000"
DURATION=60
SHARDS=4
EPR=100
REPLAY_ONLY=1
DRAIN=1
OUT="$REPO/.local/bench/load-$(date -u +%Y%m%dT%H%M%SZ)"
CATCH_UP_TIMEOUT=900
STALL_SECS=20
CONCURRENCY=1
LATENESS="600 0"
IDLE_SECS=5
EMULATOR=moto
CONSUMERS=polling
MOCK_PID=""

while (($#)); do
  case "$1" in
    --rates) RATES="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --shards) SHARDS="$2"; shift 2 ;;
    --events-per-record) EPR="$2"; shift 2 ;;
    --concurrency) CONCURRENCY="$2"; shift 2 ;;
    --lateness) LATENESS="$2"; shift 2 ;;
    --idle-secs) IDLE_SECS="$2"; shift 2 ;;
    --no-replay-only) REPLAY_ONLY=0; shift ;;
    --no-drain) DRAIN=0; shift ;;
    --emulator) EMULATOR="$2"; shift 2 ;;
    --consumers) CONSUMERS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "load.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"
HELPER=(python3 "$REPO/bench/load/helper.py")
BIN="$REPO/target/release/credwatch"
RUN_PID=""

log() { echo "==> $*" >&2; }
now_ms() { date +%s%3N; }

cleanup() {
  if [[ -n "$RUN_PID" ]] && kill -0 "$RUN_PID" 2>/dev/null; then
    kill -TERM "$RUN_PID" 2>/dev/null || true
    wait "$RUN_PID" 2>/dev/null || true
  fi
  stop_stack
}
trap cleanup EXIT

log "release build"
cargo build --release --locked --quiet

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# generate EVENTS -> prints the workload folder
workload() {
  local events="$1" dir="$OUT/workload-$1"
  if [[ ! -f "$dir/truth.json" ]]; then
    log "generate $events events"
    "$BIN" generate --out "$dir" --seed 1 --events "$events" --force >&2
  fi
  echo "$dir"
}

start_stack() {
  stop_stack
  if [[ "$EMULATOR" == kinesis-mock ]]; then
    start_kinesis_mock "$1"
    return
  fi
  CREDWATCH_STREAM="$1" bash tests/stack/local-stack.sh start --stream "$1" --shards "$SHARDS" >/dev/null
  # shellcheck disable=SC1091
  source .local/stack/env
}

# kinesis-mock on free loopback ports (as tests/support/kinesis_mock.rs starts it), a stream of
# SHARDS shards made with boto3.
start_kinesis_mock() {
  local dir port tls
  dir="$(bash tests/stack/ensure-kinesis-mock.sh)"
  port="$(free_port)"
  tls="$(free_port)"
  mkdir -p "$OUT/kinesis-mock"
  (cd "$OUT/kinesis-mock" && KINESIS_MOCK_CERT_PATH="$dir/server.json" KINESIS_MOCK_PLAIN_PORT="$port" \
    KINESIS_MOCK_TLS_PORT="$tls" AWS_REGION=us-east-1 LOG_LEVEL=WARN SHOULD_PERSIST_DATA=false \
    exec node --require "$dir/loopback.cjs" "$dir/main.js" >"$OUT/kinesis-mock/$1.log" 2>&1) &
  MOCK_PID=$!
  export AWS_ENDPOINT_URL="http://127.0.0.1:$port" CREDWATCH_STREAM="$1"
  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
  export AWS_EC2_METADATA_DISABLED=true
  "$REPO/.venv/bin/python" - "$AWS_ENDPOINT_URL" "$1" "$SHARDS" <<'PY'
import sys, time, urllib.request
import boto3
endpoint, stream, shards = sys.argv[1], sys.argv[2], int(sys.argv[3])
deadline = time.monotonic() + 60
while True:
    try:
        with urllib.request.urlopen(endpoint + "/healthcheck", timeout=2) as r:
            if r.status == 200:
                break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit("kinesis-mock did not answer at " + endpoint)
    time.sleep(0.2)
k = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing")
k.create_stream(StreamName=stream, ShardCount=shards)
while k.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamStatus"] != "ACTIVE":
    time.sleep(0.2)
PY
}

stop_stack() {
  if [[ -n "$MOCK_PID" ]]; then
    kill "$MOCK_PID" 2>/dev/null || true
    wait "$MOCK_PID" 2>/dev/null || true
    MOCK_PID=""
  fi
  bash tests/stack/local-stack.sh stop >/dev/null 2>&1 || true
}

# start_run WORKLOAD DIR -> sets RUN_PID and METRICS
start_run() {
  local wl="$1" dir="$2" port
  port="$(free_port)"
  METRICS="http://127.0.0.1:$port/metrics"
  CREDWATCH_LOG=info CREDWATCH_KINESIS__POLL_INTERVAL_MS=200 CREDWATCH_KINESIS__CONSUMER="${CONSUMER:-polling}" \
    CREDWATCH_DETECTION__ALLOWED_LATENESS_SECS="${LATE:-600}" CREDWATCH_DETECTION__IDLE_SECS="$IDLE_SECS" \
    "$BIN" run --config "$wl/credwatch.toml" --stream "$CREDWATCH_STREAM" --region us-east-1 \
    --endpoint-url "$AWS_ENDPOINT_URL" --findings-out "$dir/findings.jsonl" \
    --checkpoint-dir "$dir/checkpoints" --metrics-addr "127.0.0.1:$port" \
    >"$dir/run.log" 2>&1 &
  RUN_PID=$!
  for _ in $(seq 100); do
    [[ "$("${HELPER[@]}" metric "$METRICS" credwatch_kinesis_shards_owned)" != nan ]] && return
    kill -0 "$RUN_PID" 2>/dev/null || { echo "credwatch run died: $(tail -5 "$dir/run.log")" >&2; exit 1; }
    sleep 0.1
  done
  echo "credwatch run never answered on $METRICS" >&2
  exit 1
}

# wait_caught_up RECORDS -> prints "TIME_MS READ": when credwatch had read them all, or when its
# count stopped growing for STALL_SECS (records lost on the way: see bench/README.md)
wait_caught_up() {
  local want="$1" deadline=$(( $(date +%s) + CATCH_UP_TIMEOUT )) n last=-1 last_change
  last_change="$(date +%s)"
  while :; do
    n="$("${HELPER[@]}" metric "$METRICS" credwatch_kinesis_records_total)"
    [[ "$n" == nan ]] && n=0
    if (( n >= want )); then
      echo "$(now_ms) $n"
      return
    fi
    if (( n != last )); then
      last="$n"
      last_change="$(date +%s)"
    elif (( $(date +%s) - last_change >= STALL_SECS )); then
      echo "credwatch read $n of $want records; no more for ${STALL_SECS}s" >&2
      echo "$(( $(now_ms) - STALL_SECS * 1000 )) $n"
      return
    fi
    if (( $(date +%s) > deadline )); then
      echo "credwatch read $n of $want records in ${CATCH_UP_TIMEOUT}s" >&2
      echo "$(now_ms) $n"
      return
    fi
    sleep 0.2
  done
}

# wait_settled -> prints the time (ms) when no candidate was pending any more
wait_settled() {
  local deadline=$(( $(date +%s) + IDLE_SECS + 120 )) n
  while :; do
    n="$("${HELPER[@]}" metric "$METRICS" credwatch_candidates_pending)"
    if [[ "$n" == 0 || "$n" == 0.0 ]] || (( $(date +%s) > deadline )); then
      echo "$(now_ms)"
      return
    fi
    sleep 0.2
  done
}

stop_run() {
  kill -TERM "$RUN_PID" 2>/dev/null || true
  wait "$RUN_PID" 2>/dev/null || true
  RUN_PID=""
}

# measure MODE RATE WORKLOAD DIR T_START T_SENT "T_CAUGHT READ": writes one result line
measure() {
  local mode="$1" rate="$2" wl="$3" dir="$4" t0="$5" t_sent="$6" t_caught="${7% *}" read="${7#* }"
  local proc cpu hwm hist
  proc="$("${HELPER[@]}" proc "$RUN_PID")"
  cpu="${proc% *}"
  hwm="${proc#* }"
  # Candidates of the last events settle once the stream has been idle for IDLE_SECS.
  local t_settled
  t_settled="$(wait_settled)"
  hist="$("${HELPER[@]}" quantiles "$METRICS" credwatch_detection_latency_seconds 0.5 0.99)"
  local withdrawn late
  withdrawn="$("${HELPER[@]}" metric "$METRICS" 'credwatch_candidates_total{outcome="withdrawn"}')"
  late="$("${HELPER[@]}" metric "$METRICS" credwatch_late_sightings_total)"
  # A last look for findings still being written, then stop.
  sleep 2
  stop_run
  "$BIN" score --truth "$wl/truth.json" --findings "$dir/findings.jsonl" \
    --sent-log "$dir/sent.jsonl" --json "$dir/score.json" >"$dir/score.txt"
  local events
  events="$(jq .events_sent "$dir/replay.json")"
  jq -nc --arg mode "$mode" --argjson rate "$rate" --argjson events "$events" \
    --argjson t0 "$t0" --argjson t_sent "$t_sent" --argjson t_caught "$t_caught" \
    --argjson cpu "$cpu" --argjson hwm "$hwm" --arg hist "$hist" --argjson read "$read" \
    --argjson lateness "${LATE:-600}" --argjson t_settled "$t_settled" \
    --arg withdrawn "$withdrawn" --arg late "$late" \
    --arg emulator "$EMULATOR" --arg consumer "${CONSUMER:-polling}" \
    --slurpfile replay "$dir/replay.json" --slurpfile score "$dir/score.json" '
    ($replay[0]) as $r | ($score[0]) as $s |
    (($t_caught - $t0) / 1000) as $e2e |
    {
      mode: $mode,
      emulator: $emulator,
      consumer: $consumer,
      lateness_secs: $lateness,
      settled_after_send_secs: ((($t_settled - $t_sent) / 1000) | if . < 0 then 0 else . end),
      withdrawn: $withdrawn,
      late_sightings: $late,
      target_rate: (if $rate > 0 then $rate else null end),
      events: $events,
      records: $r.records,
      records_read: $read,
      replay_events_per_sec: $r.events_per_sec,
      replay_retries: $r.retries,
      end_to_end_secs: $e2e,
      end_to_end_events_per_sec: ($events / $e2e),
      lag_after_send_secs: ((($t_caught - $t_sent) / 1000) | if . < 0 then 0 else . end),
      p50_secs: $s.delays.p50,
      p99_secs: $s.delays.p99,
      max_secs: $s.delays.max,
      detected: $s.total.detected,
      attacks: $s.total.attacks,
      histogram: ($hist | split(" ") | join(" / ")),
      cpu_secs: $cpu,
      cpu_ms_per_1k_events: ($cpu * 1000 * 1000 / $events),
      peak_rss_mib: ($hwm / 1024),
      precision: $s.precision,
      recall: $s.recall,
      sustained: (if $rate > 0 then (($r.events_per_sec >= 0.95 * $rate) and ($read >= $r.records) and ((($t_caught - $t_sent) / 1000) <= 5)) else null end)
    }' | tee -a "$RESULTS" >&2
}

for LATE in $LATENESS; do
for rate in $RATES; do
for CONSUMER in $CONSUMERS; do
  events=$(( rate * DURATION ))
  wl="$(workload "$events")"
  dir="$OUT/rate-$rate-lateness-$LATE-$CONSUMER"
  # A fresh stream each run: no checkpoint or findings of an earlier run may be reused.
  rm -rf "$dir"
  mkdir -p "$dir"
  log "rate $rate events/s: $events events ($EMULATOR, consumer $CONSUMER)"
  start_stack "bench-$rate-${CONSUMER//_/-}"
  start_run "$wl" "$dir"
  "$BIN" replay --stream "$CREDWATCH_STREAM" --endpoint-url "$AWS_ENDPOINT_URL" --region us-east-1 \
    --rate "$rate" --log-stream-by account --events-per-record "$EPR" --concurrency "$CONCURRENCY" \
    --summary-json "$dir/replay.json" --sent-log "$dir/sent.jsonl" "$wl/AWSLogs" 2>"$dir/replay.err"
  # From the first send (after the files are loaded) to the last answer.
  t0="$(jq .started_at_ms "$dir/replay.json")"
  t_sent="$(jq .finished_at_ms "$dir/replay.json")"
  t_caught="$(wait_caught_up "$(jq .records "$dir/replay.json")")"
  measure "paced" "$rate" "$wl" "$dir" "$t0" "$t_sent" "$t_caught"
  stop_stack
done
done
done
LATE=600
CONSUMER=polling

largest="$(for r in $RATES; do echo $(( r * DURATION )); done | sort -n | tail -1)"
wl="$(workload "$largest")"

if ((REPLAY_ONLY)); then
  dir="$OUT/replay-only"
  rm -rf "$dir"
  mkdir -p "$dir"
  log "replay-only: $largest events unpaced into moto, nothing reading"
  start_stack bench-replay-only
  "$BIN" replay --stream "$CREDWATCH_STREAM" --endpoint-url "$AWS_ENDPOINT_URL" --region us-east-1 \
    --log-stream-by account --events-per-record "$EPR" --concurrency "$CONCURRENCY" \
    --summary-json "$dir/replay.json" "$wl/AWSLogs" 2>"$dir/replay.err"
  jq -c '{mode: "replay-only (moto PutRecords)", events: .events_sent, records: .records,
          replay_events_per_sec: .events_per_sec, replay_retries: .retries}' "$dir/replay.json" |
    tee -a "$RESULTS" >&2
  stop_stack
fi

if ((DRAIN)); then
  dir="$OUT/drain"
  rm -rf "$dir"
  mkdir -p "$dir"
  log "drain: $largest events put first, then credwatch run started on the full stream"
  start_stack bench-drain
  "$BIN" replay --stream "$CREDWATCH_STREAM" --endpoint-url "$AWS_ENDPOINT_URL" --region us-east-1 \
    --log-stream-by account --events-per-record "$EPR" --concurrency "$CONCURRENCY" \
    --summary-json "$dir/replay.json" --sent-log "$dir/sent.jsonl" "$wl/AWSLogs" 2>"$dir/replay.err"
  t_sent="$(now_ms)"
  start_run "$wl" "$dir"
  t_caught="$(wait_caught_up "$(jq .records "$dir/replay.json")")"
  measure "drain (backlog)" 0 "$wl" "$dir" "$t_sent" "$t_sent" "$t_caught"
  stop_stack
fi

"${HELPER[@]}" table "$RESULTS" | tee "$OUT/results.md"
log "results: $OUT/results.md"
