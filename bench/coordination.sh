#!/usr/bin/env bash
# Coordination scenario: how many DynamoDB calls `credwatch run` makes per 1,000 events when W
# workers share one stream with `[coordination] backend = "dynamodb"`, against one worker with
# the embedded (single-process) backend on the same backlog.
#
#   bench/coordination.sh [--events N] [--workers W] [--shards S] [--lease-secs SECS]
#                         [--log-stream-by account|session|file|single] [--partition-key stream|random]
#                         [--out DIR]
#   bench/coordination.sh --report DIR     (rewrite DIR/results.{json,md} from an earlier run)
#
# Defaults: 200,000 events, 3 workers, 8 shards, 10 s leases, replay `--log-stream-by account`
# with the log stream as partition key (as bench/load.sh and CloudTrail's own delivery).
# Steps: release build; generate the workload (seed 1); moto on a free 127.0.0.1 port through
# tests/stack/moto-serial.py (one request at a time: threaded moto makes DynamoDB conditional
# writes non-atomic); a stream of S shards (tests/stack/provision.py, boto3 from .venv); the
# whole workload put first (`credwatch replay --stream`, one PutRecords call in flight: moto loses
# records under concurrent PutRecords); then W workers started at once on the backlog, waited for
# (at most 900 s, stall detection) until the sum of their credwatch_kinesis_events_total reaches
# the workload's events and stops growing; every worker's /metrics scraped; SIGTERM; the lease
# table's checkpoints checked against the stream (records left unread); the findings files
# concatenated and scored (`credwatch score`). Then one worker with the embedded backend drains
# the same stream (own checkpoint folder) for the comparison.
#
# Results: DIR/results.json, DIR/results.md (also on stdout); DIR defaults to
# .local/bench/coordination-<time> (git-ignored). Everything on 127.0.0.1, every wait bounded,
# child processes stopped on exit.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

EVENTS=200000
WORKERS=3
SHARDS=8
LEASE_SECS=10
LOG_STREAM_BY=account
PARTITION_KEY=stream
OUT="$REPO/.local/bench/coordination-$(date -u +%Y%m%dT%H%M%SZ)"
DRAIN_TIMEOUT=900
STALL_SECS=30
SETTLE_SECS=5
POLL_SECS=0.5
EPR=100
REPORT_ONLY=""

while (($#)); do
  case "$1" in
    --events) EVENTS="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --shards) SHARDS="$2"; shift 2 ;;
    --lease-secs) LEASE_SECS="$2"; shift 2 ;;
    --log-stream-by) LOG_STREAM_BY="$2"; shift 2 ;;
    --partition-key) PARTITION_KEY="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --report) REPORT_ONLY="$2"; shift 2 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "coordination.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

BIN="$REPO/target/release/credwatch"
VPY="$REPO/.venv/bin/python"
STREAM=bench-coordination
LEASE_TABLE=bench-coord-leases
STATE_TABLE=bench-coord-state

export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true

MOTO_PID=""
PIDS=()   # running workers

log() { echo "==> $*" >&2; }
now_ms() { date +%s%3N; }

# Stops one process: SIGTERM, at most 60 s, then SIGKILL.
stop_pid() {
  local pid="$1" i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 600; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "pid $pid still running 60 s after SIGTERM: SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# SIGTERM to every worker at once (they release their leases), then wait for each.
stop_workers() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  PIDS=()
}

cleanup() {
  stop_workers
  [[ -n "$MOTO_PID" ]] && stop_pid "$MOTO_PID"
  MOTO_PID=""
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Scraping and reporting, with bench/load/helper.py's scrape() and samples().
read -r -d '' PY <<'EOF' || true
import json, os, re, sys
sys.path.insert(0, os.environ["HELPER_DIR"])
import helper

LABEL = re.compile(r'(\w+)="([^"]*)"')

def labels(s):
    return dict(LABEL.findall(s or ""))

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "sum":
    # sum NAME[,NAME...] URL...: the sum over workers of each metric, then the unreachable count
    names = args[0].split(",")
    totals, down = [0.0] * len(names), 0
    for url in args[1:]:
        try:
            text = helper.scrape(url)
        except OSError:
            down += 1
            continue
        for k, name in enumerate(names):
            totals[k] += sum(v for _, v in helper.samples(text, name))
    print(*(int(t) for t in totals), down)
elif cmd == "up":
    # up URL: exit 0 when /metrics answers
    try:
        helper.scrape(args[0])
    except OSError:
        sys.exit(1)
elif cmd == "snapshot":
    # snapshot URL: every credwatch_ sample but histogram buckets, as JSON
    # {name: [[labels, value], ...]}
    out = {}
    for line in helper.scrape(args[0]).splitlines():
        m = helper.SAMPLE.match(line)
        if not m or line.startswith("#") or not m.group(1).startswith("credwatch_"):
            continue
        if m.group(1).endswith("_bucket"):
            continue
        out.setdefault(m.group(1), []).append([labels(m.group(2)), float(m.group(3))])
    print(json.dumps(out))
elif cmd == "unread":
    # unread ENDPOINT STREAM LEASE_TABLE: records after each lease's checkpoint
    import boto3
    endpoint, stream, table = args
    kw = dict(endpoint_url=endpoint, region_name="us-east-1",
              aws_access_key_id="testing", aws_secret_access_key="testing")
    kin, ddb = boto3.client("kinesis", **kw), boto3.client("dynamodb", **kw)
    leases = {}
    for page in ddb.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        for item in page["Items"]:
            leases[item["leaseKey"]["S"]] = item
    shards = [s["ShardId"] for s in kin.list_shards(StreamName=stream)["Shards"]]
    report = {}
    for shard in shards:
        item = leases.get(shard)
        cp = item.get("checkpoint", {}).get("S", "TRIM_HORIZON") if item else "NO_LEASE"
        owner = item.get("leaseOwner", {}).get("S") if item else None
        if cp in ("TRIM_HORIZON", "NO_LEASE"):
            it = kin.get_shard_iterator(StreamName=stream, ShardId=shard,
                                        ShardIteratorType="TRIM_HORIZON")
        elif cp == "SHARD_END":
            report[shard] = {"checkpoint": cp, "owner": owner, "unread_records": 0}
            continue
        else:
            it = kin.get_shard_iterator(StreamName=stream, ShardId=shard,
                                        ShardIteratorType="AFTER_SEQUENCE_NUMBER",
                                        StartingSequenceNumber=cp)
        it, n = it["ShardIterator"], 0
        for _ in range(1000):
            r = kin.get_records(ShardIterator=it, Limit=10000)
            n += len(r["Records"])
            if not r["Records"] or not r.get("NextShardIterator"):
                break
            it = r["NextShardIterator"]
        report[shard] = {"checkpoint": cp, "owner": owner, "unread_records": n}
    print(json.dumps(report))
elif cmd == "report":
    # report OUT: results.json and results.md from the files the script wrote
    out = args[0]
    def load(p):
        with open(os.path.join(out, p)) as f:
            return json.load(f)
    meta = load("meta.json")
    events = meta["events"]

    def total(snap, name, **want):
        return sum(v for l, v in snap.get(name, [])
                   if all(l.get(k) == w for k, w in want.items()))

    def findings(paths):
        n, ids = 0, set()
        for p in paths:
            if not os.path.exists(p):
                continue
            with open(p) as f:
                for line in f:
                    if line.strip():
                        n += 1
                        ids.add(json.loads(line)["id"])
        return n, ids

    def run_summary(name):
        run = load(f"{name}/run.json")
        snaps = [load(f"{name}/worker-{i}/metrics.json") for i in range(run["workers"])]
        score = load(f"{name}/score.json")
        sum_all = lambda metric, **kw: sum(total(s, metric, **kw) for s in snaps)
        n_findings, ids = findings([f"{out}/{name}/worker-{i}/findings.jsonl"
                                    for i in range(run["workers"])])
        worker_secs = sum(run["worker_secs"])
        per_shard = {}
        for snap in snaps:
            for l, v in snap.get("credwatch_kinesis_events_total", []):
                per_shard[l.get("shard")] = max(per_shard.get(l.get("shard"), 0), int(v))
        r = {
            "workers": run["workers"],
            "notes": run.get("notes", []),
            "shards_with_events": sum(1 for v in per_shard.values() if v > 0),
            "backend": run["backend"],
            "complete": run["complete"],
            "events_processed": int(sum_all("credwatch_kinesis_events_total")),
            "events_per_worker": [int(total(s, "credwatch_kinesis_events_total")) for s in snaps],
            "shards_owned_at_end": [int(total(s, "credwatch_kinesis_shards_owned")) for s in snaps],
            "drain_secs": run["drain_secs"],
            "worker_secs": round(worker_secs, 1),
            "cpu_secs": run["cpu_secs"],
            "state_reads": int(sum_all("credwatch_dynamodb_calls_total", table="state", op="read")),
            "state_writes": int(sum_all("credwatch_dynamodb_calls_total", table="state", op="write")),
            "lease_reads": int(sum_all("credwatch_dynamodb_calls_total", table="lease", op="read")),
            "lease_writes": int(sum_all("credwatch_dynamodb_calls_total", table="lease", op="write")),
            "conditional_failures": int(sum_all("credwatch_dynamodb_conditional_failures_total")),
            "dynamodb_errors": int(sum_all("credwatch_dynamodb_errors_total")),
            "proposals_ok": int(sum_all("credwatch_shared_store_proposals_total", outcome="ok")),
            "proposals_error": int(sum_all("credwatch_shared_store_proposals_total", outcome="error")),
            "claimed_elsewhere": int(sum_all("credwatch_findings_claimed_elsewhere_total")),
            "lease_events": {e: int(sum_all("credwatch_lease_events_total", event=e))
                             for e in ("taken", "stolen", "lost", "released", "finished")},
            "findings_metric": int(sum_all("credwatch_findings_total")),
            "findings_written": n_findings,
            "findings_distinct_ids": len(ids),
            "precision": score["precision"],
            "recall": score["recall"],
            "attacks": score["total"]["attacks"],
            "detected": score["total"]["detected"],
            "false_positives": score["false_positives"],
        }
        if os.path.exists(os.path.join(out, name, "unread.json")):
            u = load(f"{name}/unread.json")
            r["records_unread_after_checkpoints"] = sum(v["unread_records"] for v in u.values())
        state = r["state_reads"] + r["state_writes"]
        lease = r["lease_reads"] + r["lease_writes"]
        r["state_calls_per_1k_events"] = 1000 * state / events
        r["state_calls_per_1k_processed"] = (1000 * state / r["events_processed"]
                                             if r["events_processed"] else None)
        r["lease_calls_per_1k_events"] = 1000 * lease / events
        r["lease_calls_per_worker_sec"] = lease / worker_secs if worker_secs else None
        return r, ids

    multi, multi_ids = run_summary("multi")
    emb, emb_ids = run_summary("embedded")
    res = dict(meta, multi=multi, embedded=emb,
               ids_only_in_multi=sorted(multi_ids - emb_ids),
               ids_only_in_embedded=sorted(emb_ids - multi_ids))
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(res, f, indent=2)

    def fmt(v):
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        if isinstance(v, list):
            return " / ".join(fmt(x) for x in v)
        if isinstance(v, dict):
            return ", ".join(f"{k} {fmt(x)}" for k, x in v.items() if x)
        return "-" if v is None else str(v)

    W = multi["workers"]
    rows = [
        ("backend", "backend"),
        ("workers", "workers"),
        ("drained every event", "complete"),
        ("events processed (sum over workers)", "events_processed"),
        ("events per worker", "events_per_worker"),
        ("shards that held events", "shards_with_events"),
        ("shards owned at the end, per worker", "shards_owned_at_end"),
        ("drain (s, from start of the workers)", "drain_secs"),
        ("CPU (s) per worker", "cpu_secs"),
        ("state table reads", "state_reads"),
        ("state table writes", "state_writes"),
        ("**state calls per 1,000 events**", "state_calls_per_1k_events"),
        ("state calls per 1,000 events processed (sum over workers)", "state_calls_per_1k_processed"),
        ("lease table reads", "lease_reads"),
        ("lease table writes", "lease_writes"),
        ("**lease calls per 1,000 events**", "lease_calls_per_1k_events"),
        ("worker-seconds (start to scrape)", "worker_secs"),
        ("**lease calls per worker-second**", "lease_calls_per_worker_sec"),
        ("conditional failures", "conditional_failures"),
        ("DynamoDB errors", "dynamodb_errors"),
        ("proposals ok / error", None),
        ("findings claimed by another worker", "claimed_elsewhere"),
        ("lease events", "lease_events"),
        ("findings written (sum over workers)", "findings_written"),
        ("findings, distinct ids", "findings_distinct_ids"),
        ("records left after the lease checkpoints", "records_unread_after_checkpoints"),
        ("attacks detected / in the workload", None),
        ("false positives", "false_positives"),
        ("precision", "precision"),
        ("recall", "recall"),
    ]
    lines = [
        f"# Coordination: {events:,} events, {W} workers, {meta['shards']} shards",
        "",
        f"Workload: `credwatch generate --seed 1 --events {meta['events_requested']}`; "
        f"replayed first ({meta['records']:,} records, `--log-stream-by {meta['log_stream_by']}`, "
        f"`--partition-key {meta['partition_key']}`, one PutRecords call in flight), then drained. "
        f"moto {meta['moto']} serial (tests/stack/moto-serial.py); lease duration "
        f"{meta['lease_secs']} s; {meta['cpus']} CPUs. Calls per 1,000 events are divided by the "
        f"workload's events, not by the sum over workers.",
        "",
        f"| | {W} workers, dynamodb | 1 worker, embedded |",
        "|---|---|---|",
    ]
    for title, key in rows:
        if key is None and title.startswith("proposals"):
            a = f"{multi['proposals_ok']:,} / {multi['proposals_error']:,}"
            b = f"{emb['proposals_ok']:,} / {emb['proposals_error']:,}"
        elif key is None:
            a = f"{multi['detected']:,} / {multi['attacks']:,}"
            b = f"{emb['detected']:,} / {emb['attacks']:,}"
        else:
            a, b = fmt(multi.get(key)), fmt(emb.get(key))
        lines.append(f"| {title} | {a} | {b} |")
    for label, r in ((f"{W} workers", multi), ("embedded", emb)):
        for note in r["notes"]:
            lines += ["", f"Note ({label}): {note}."]
    lines += [
        "",
        f"Finding ids only in the {W}-worker run: {len(res['ids_only_in_multi'])}; "
        f"only in the embedded run: {len(res['ids_only_in_embedded'])}.",
    ]
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
else:
    sys.exit(f"unknown command {cmd}")
EOF
export HELPER_DIR="$REPO/bench/load"
py() { python3 -c "$PY" "$@"; }

# --report DIR: only rewrite DIR/results.{json,md} from the files of an earlier run.
if [[ -n "$REPORT_ONLY" ]]; then
  py report "$(cd "$REPORT_ONLY" && pwd)"
  exit 0
fi

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

[[ -x "$VPY" ]] || bash tests/stack/ensure-moto.sh >&2
"$VPY" -c 'import boto3, moto' || { echo "coordination.sh: .venv has no boto3/moto" >&2; exit 1; }

log "release build"
cargo build --release --locked --quiet

# --- workload ---------------------------------------------------------------------------------
WL="$OUT/workload"
if [[ ! -f "$WL/truth.json" ]]; then
  log "generate $EVENTS events (seed 1)"
  "$BIN" generate --out "$WL" --seed 1 --events "$EVENTS" --force >&2
fi

# --- moto, one request at a time ----------------------------------------------------------------
MOTO_PORT="$(free_port)"
ENDPOINT="http://127.0.0.1:$MOTO_PORT"
log "moto (serial) on $ENDPOINT"
"$VPY" tests/stack/moto-serial.py "$MOTO_PORT" >"$OUT/moto.log" 2>&1 </dev/null &
MOTO_PID=$!
"$VPY" tests/stack/provision.py --endpoint "$ENDPOINT" wait --timeout 30
"$VPY" tests/stack/provision.py --endpoint "$ENDPOINT" setup --stream "$STREAM" --shards "$SHARDS" \
  --log-group /credwatch/bench-coordination

log "replay the whole workload into $STREAM ($SHARDS shards), one call in flight"
"$BIN" replay --stream "$STREAM" --endpoint-url "$ENDPOINT" --region us-east-1 \
  --log-stream-by "$LOG_STREAM_BY" --partition-key "$PARTITION_KEY" --events-per-record "$EPR" \
  --concurrency 1 --summary-json "$OUT/replay.json" "$WL/AWSLogs" 2>"$OUT/replay.err"
SENT="$(jq .events_sent "$OUT/replay.json")"
RECORDS="$(jq .records "$OUT/replay.json")"
log "sent $SENT events in $RECORDS records"

jq -n --argjson events "$SENT" --argjson req "$EVENTS" --argjson records "$RECORDS" \
  --argjson workers "$WORKERS" --argjson shards "$SHARDS" --argjson lease "$LEASE_SECS" \
  --arg lsb "$LOG_STREAM_BY" --arg pk "$PARTITION_KEY" --argjson cpus "$(nproc)" \
  --arg moto "$("$VPY" -c 'import moto; print(moto.__version__)')" \
  --arg when "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  '{events: $events, events_requested: $req, records: $records, workers: $workers,
    shards: $shards, lease_secs: $lease, log_stream_by: $lsb, partition_key: $pk, cpus: $cpus,
    moto: $moto, recorded: $when}' >"$OUT/meta.json"

# --- one drain --------------------------------------------------------------------------------
# drain NAME W BACKEND(dynamodb|embedded): starts W workers on the backlog, waits, scrapes, stops,
# scores. Writes NAME/run.json, NAME/worker-I/{metrics.json,findings.jsonl,run.log}, NAME/score.*
drain() {
  local name="$1" w="$2" backend="$3" dir="$OUT/$1" i port urls=() ports=() t_spawn
  rm -rf "$dir"
  mkdir -p "$dir"
  log "$name: $w worker(s), $backend backend, draining $SENT events"
  t_spawn="$(now_ms)"
  for ((i = 0; i < w; i++)); do
    mkdir -p "$dir/worker-$i"
    port="$(free_port)"
    ports+=("$port")
    urls+=("http://127.0.0.1:$port/metrics")
    local envs=(CREDWATCH_LOG=info CREDWATCH_KINESIS__POLL_INTERVAL_MS=200)
    if [[ "$backend" == dynamodb ]]; then
      envs+=(CREDWATCH_COORDINATION__BACKEND=dynamodb
        CREDWATCH_COORDINATION__LEASE_TABLE="$LEASE_TABLE"
        CREDWATCH_COORDINATION__STATE_TABLE="$STATE_TABLE"
        CREDWATCH_COORDINATION__LEASE_DURATION_SECS="$LEASE_SECS")
    fi
    env "${envs[@]}" "$BIN" run --config "$WL/credwatch.toml" --stream "$STREAM" \
      --region us-east-1 --endpoint-url "$ENDPOINT" --worker-id "bench-worker-$i" \
      --findings-out "$dir/worker-$i/findings.jsonl" --checkpoint-dir "$dir/worker-$i/checkpoints" \
      --metrics-addr "127.0.0.1:$port" >"$dir/worker-$i/run.log" 2>&1 </dev/null &
    PIDS+=($!)
  done
  # Every worker answers on /metrics within 30 s.
  for ((i = 0; i < w; i++)); do
    local ok=0 k
    for ((k = 0; k < 300; k++)); do
      if py up "${urls[$i]}"; then ok=1; break; fi
      kill -0 "${PIDS[$i]}" 2>/dev/null || break
      sleep 0.1
    done
    if ((!ok)); then
      echo "worker $i never answered on ${urls[$i]}: $(tail -5 "$dir/worker-$i/run.log")" >&2
      exit 1
    fi
  done

  # Until the sum of events processed (credwatch_kinesis_events_total) reaches the workload and
  # nothing moves for SETTLE_SECS; stop waiting after DRAIN_TIMEOUT, when nothing has moved for
  # STALL_SECS below the target, when a worker exits, or when one has not answered on /metrics
  # for STALL_SECS. "Moves": that counter, which grows once per GetRecords batch (a batch of a
  # backlog can be a whole shard), or the engine's credwatch_events_total, which grows per event.
  local deadline=$(( $(date +%s) + DRAIN_TIMEOUT )) n m down last=-1 last_m=-1 t_change complete=0
  local now t_down="" t_last_n notes=()
  t_change="$(now_ms)"
  t_last_n="$t_change"
  while :; do
    read -r n m down < <(py sum credwatch_kinesis_events_total,credwatch_events_total "${urls[@]}")
    now="$(now_ms)"
    local dead=""
    for ((i = 0; i < w; i++)); do
      kill -0 "${PIDS[$i]}" 2>/dev/null || dead+=" $i"
    done
    if [[ -n "$dead" ]]; then
      notes+=("worker(s)$dead exited during the drain (see their run.log)")
      echo "$name: ${notes[-1]}" >&2
      break
    fi
    if (( down > 0 )); then
      [[ -n "$t_down" ]] || t_down="$now"
      if (( now - t_down >= STALL_SECS * 1000 )); then
        notes+=("$down worker(s) did not answer on /metrics for ${STALL_SECS}s (hung?)")
        echo "$name: ${notes[-1]}" >&2
        break
      fi
    else
      t_down=""
      if (( n != last )); then
        t_last_n="$now"
      fi
      if (( n != last || m != last_m )); then
        last="$n"
        last_m="$m"
        t_change="$now"
      elif (( n >= SENT && now - t_change >= SETTLE_SECS * 1000 )); then
        complete=1
        break
      elif (( n < SENT && now - t_change >= STALL_SECS * 1000 )); then
        notes+=("$n of $SENT events processed; none more for ${STALL_SECS}s")
        echo "$name: ${notes[-1]}" >&2
        break
      fi
    fi
    if (( $(date +%s) > deadline )); then
      notes+=("$last of $SENT events processed in ${DRAIN_TIMEOUT}s")
      echo "$name: ${notes[-1]}" >&2
      break
    fi
    sleep "$POLL_SECS"
  done
  local drain_secs t_scrape secs=() cpus=()
  # Drained when credwatch_kinesis_events_total last grew (it counts a batch once it is processed).
  drain_secs="$(jq -n "($t_last_n - $t_spawn) / 1000")"
  log "$name: $last events processed (sum over workers), last growth ${drain_secs}s after start"

  for ((i = 0; i < w; i++)); do
    if ! py snapshot "${urls[$i]}" >"$dir/worker-$i/metrics.json"; then
      echo '{}' >"$dir/worker-$i/metrics.json"
      notes+=("worker $i: /metrics not scraped; its counters are missing from the sums")
      echo "$name: ${notes[-1]}" >&2
    fi
    t_scrape="$(now_ms)"
    secs+=("$(jq -n "($t_scrape - $t_spawn) / 1000")")
    local proc
    proc="$(python3 "$REPO/bench/load/helper.py" proc "${PIDS[$i]}" 2>/dev/null || echo "null 0")"
    cpus+=("${proc% *}")
  done
  stop_workers

  if [[ "$backend" == dynamodb ]]; then
    py unread "$ENDPOINT" "$STREAM" "$LEASE_TABLE" >"$dir/unread.json"
  fi
  cat "$dir"/worker-*/findings.jsonl >"$dir/findings-all.jsonl" 2>/dev/null || : >"$dir/findings-all.jsonl"
  "$BIN" score --truth "$WL/truth.json" --findings "$dir/findings-all.jsonl" \
    --json "$dir/score.json" >"$dir/score.txt"
  jq -n --argjson w "$w" --arg backend "$backend" --argjson complete "$complete" \
    --argjson drain "$drain_secs" --argjson processed "$last" \
    --argjson secs "$(printf '%s\n' "${secs[@]}" | jq -s .)" \
    --argjson cpu "$(printf '%s\n' "${cpus[@]}" | jq -s .)" \
    --argjson notes "$( ((${#notes[@]})) && printf '%s\n' "${notes[@]}" | jq -R . | jq -s . || echo '[]')" \
    '{workers: $w, backend: $backend, complete: ($complete == 1), drain_secs: $drain,
      events_processed: $processed, worker_secs: $secs, cpu_secs: $cpu, notes: $notes}' \
    >"$dir/run.json"
}

drain multi "$WORKERS" dynamodb
drain embedded 1 embedded

cleanup
py report "$OUT"
log "results: $OUT/results.md"
