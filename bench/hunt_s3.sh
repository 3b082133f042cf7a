#!/usr/bin/env bash
# `credwatch hunt` from S3 (moto on 127.0.0.1) against the same files on disk, alternated, whole
# process, wall time. The workload is `credwatch generate`'s CloudTrail layout put into a bucket
# as it is on disk. Asserts that both hunts read every object and event and gave the same number
# of findings (more than zero), then prints each round's events/s and the ratio (S3 / disk).
#
#   bench/hunt_s3.sh [--events N] [--rounds R] [--seed S] [--bin PATH] [--threads N] [--concurrency C]
#
# Builds `target/release/credwatch` when --bin is not given and it is missing; moto comes from
# `tests/stack/ensure-moto.sh` (the repo's .venv), boto3 with it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

EVENTS=300000
ROUNDS=3
SEED=7
BIN=""
THREADS=()
CONCURRENCY=32
while (($#)); do
  case "$1" in
    --events) EVENTS="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    --bin) BIN="$2"; shift 2 ;;
    --threads) THREADS=(--threads "$2"); shift 2 ;;
    --concurrency) CONCURRENCY="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "hunt_s3.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if [[ -z "$BIN" ]]; then
  BIN=target/release/credwatch
  [[ -x "$BIN" ]] || cargo build --release --locked
fi
MOTO="${CREDWATCH_MOTO_SERVER:-$(bash tests/stack/ensure-moto.sh | sed -n "s/.*ready: //p")}"
PY="$(dirname "$MOTO")/python"

WORK="$(mktemp -d)"
MOTO_PID=""
cleanup() { [[ -n "$MOTO_PID" ]] && kill "$MOTO_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$MOTO" -H 127.0.0.1 -p "$PORT" >"$WORK/moto.log" 2>&1 &
MOTO_PID=$!
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 \
  AWS_EC2_METADATA_DISABLED=true
ENDPOINT="http://127.0.0.1:$PORT"
for _ in $(seq 100); do
  curl -fs "$ENDPOINT/moto-api/" >/dev/null 2>&1 && break
  sleep 0.1
done

"$BIN" generate --out "$WORK/w" --events "$EVENTS" --seed "$SEED" >/dev/null
DATA="$WORK/w/AWSLogs"
objects=$(find "$DATA" -type f | wc -l)
bytes=$(du -sb "$DATA" | cut -f1)
echo "workload: $EVENTS events in $objects gzip'd objects, $bytes bytes (seed $SEED)"
"$PY" - "$ENDPOINT" "$WORK/w" <<'PYEOF'
import os, sys, boto3
from concurrent.futures import ThreadPoolExecutor
endpoint, root = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
s3.create_bucket(Bucket="bench-trail")
keys = []
for d, _, files in os.walk(os.path.join(root, "AWSLogs")):
    for f in files:
        keys.append(os.path.relpath(os.path.join(d, f), root))
def put(k):
    with open(os.path.join(root, k), "rb") as fh:
        s3.put_object(Bucket="bench-trail", Key=k, Body=fh.read())
with ThreadPoolExecutor(8) as ex:
    list(ex.map(put, keys))
print(f"uploaded {len(keys)} objects")
PYEOF

now() { date +%s.%N; }
rate() { sed -n 's/^elapsed: .*, \([0-9]*\) events\/s.*/\1/p' "$1"; }
check() { # file: events and findings lines
  local events findings files
  files=$(sed -n 's/^files read: \([0-9]*\)$/\1/p' "$1")
  events=$(sed -n 's/^events read: \([0-9]*\).*/\1/p' "$1")
  findings=$(sed -n 's/^findings: \([0-9]*\) .*/\1/p' "$1")
  if [[ "$files" != "$objects" || "$events" != "$EVENTS" ]] || ! (( findings > 0 )); then
    echo "$1: files ${files:-?} (want $objects), events ${events:-?} (want $EVENTS), findings ${findings:-?}" >&2
    cat "$1" >&2
    exit 1
  fi
  echo "$findings"
}
disk_s=()
s3_s=()
for ((r = 1; r <= ROUNDS; r++)); do
  t0=$(now)
  "$BIN" hunt --config "$WORK/w/credwatch.toml" "${THREADS[@]}" --progress off --output json \
    "$DATA" >"$WORK/disk.json" 2>"$WORK/disk.err"
  t1=$(now)
  "$BIN" hunt --config "$WORK/w/credwatch.toml" "${THREADS[@]}" --progress off --output json \
    --s3-endpoint-url "$ENDPOINT" --s3-concurrency "$CONCURRENCY" \
    s3://bench-trail/AWSLogs/ >"$WORK/s3.json" 2>"$WORK/s3.err"
  t2=$(now)
  fd=$(check "$WORK/disk.err")
  fs=$(check "$WORK/s3.err")
  if [[ "$fd" != "$fs" ]]; then
    echo "findings differ: disk $fd, s3 $fs" >&2
    exit 1
  fi
  d=$(echo "$t1 - $t0" | bc -l)
  s=$(echo "$t2 - $t1" | bc -l)
  disk_s+=("$d")
  s3_s+=("$s")
  printf 'round %d: disk %.2f s (%.0f events/s, hunt says %s), s3 %.2f s (%.0f events/s, hunt says %s), findings %s\n' \
    "$r" "$d" "$(echo "$EVENTS / $d" | bc -l)" "$(rate "$WORK/disk.err")" \
    "$s" "$(echo "$EVENTS / $s" | bc -l)" "$(rate "$WORK/s3.err")" "$fd"
done
best() { printf '%s\n' "$@" | sort -g | head -1; }
bd=$(best "${disk_s[@]}")
bs=$(best "${s3_s[@]}")
printf 'best: disk %.2f s (%.0f events/s), s3 %.2f s (%.0f events/s); s3/disk events/s ratio %.2f\n' \
  "$bd" "$(echo "$EVENTS / $bd" | bc -l)" "$bs" "$(echo "$EVENTS / $bs" | bc -l)" "$(echo "$bd / $bs" | bc -l)"
