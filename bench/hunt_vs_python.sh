#!/usr/bin/env bash
# `credwatch hunt` against the plain Python hunt (bench/python_peer.py) on the same generated
# CloudTrail files, alternated, whole process, wall time. Asserts both read every event and that
# hunt found the planted attacks, then prints each round and the ratio (Python time / hunt time).
#
#   bench/hunt_vs_python.sh [--events N] [--rounds R] [--seed S] [--bin PATH] [--threads N]
#
# Builds `target/release/credwatch` when --bin is not given and it is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

EVENTS=300000
ROUNDS=3
SEED=7
BIN=""
THREADS=()
while (($#)); do
  case "$1" in
    --events) EVENTS="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    --bin) BIN="$2"; shift 2 ;;
    --threads) THREADS=(--threads "$2"); shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "hunt_vs_python.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if [[ -z "$BIN" ]]; then
  BIN=target/release/credwatch
  [[ -x "$BIN" ]] || cargo build --release --locked
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$BIN" generate --out "$WORK/w" --events "$EVENTS" --seed "$SEED" >/dev/null
DATA="$WORK/w/AWSLogs"
objects=$(find "$DATA" -type f | wc -l)
bytes=$(du -sb "$DATA" | cut -f1)
echo "workload: $EVENTS events in $objects gzip'd objects, $bytes bytes (seed $SEED)"

now() { date +%s.%N; }
hunt_s=()
py_s=()
for ((r = 1; r <= ROUNDS; r++)); do
  t0=$(now)
  "$BIN" hunt --config "$WORK/w/credwatch.toml" "${THREADS[@]}" --output json "$DATA" \
    >"$WORK/findings.json" 2>"$WORK/hunt.err"
  t1=$(now)
  python3 bench/python_peer.py "$DATA" >"$WORK/py.out"
  t2=$(now)
  h_events=$(sed -n 's/^events read: \([0-9]*\)$/\1/p' "$WORK/hunt.err")
  h_findings=$(sed -n 's/^findings: \([0-9]*\) .*/\1/p' "$WORK/hunt.err")
  read -r _ p_events _ _ _ p_findings <"$WORK/py.out"
  if [[ "$h_events" != "$EVENTS" || "$p_events" != "$EVENTS" ]]; then
    echo "events read: hunt ${h_events:-?}, python ${p_events:-?}, want $EVENTS" >&2
    cat "$WORK/hunt.err" >&2
    exit 1
  fi
  if ! (( h_findings > 0 && p_findings > 0 )); then
    echo "no findings: hunt ${h_findings:-?}, python ${p_findings:-?}" >&2
    exit 1
  fi
  h=$(echo "$t1 - $t0" | bc -l)
  p=$(echo "$t2 - $t1" | bc -l)
  hunt_s+=("$h")
  py_s+=("$p")
  printf 'round %d: hunt %.3f s (%d findings), python %.3f s (%d findings), ratio %.2f\n' \
    "$r" "$h" "$h_findings" "$p" "$p_findings" "$(echo "$p / $h" | bc -l)"
done
sum() { local s=0; for x in "$@"; do s=$(echo "$s + $x" | bc -l); done; echo "$s"; }
H=$(sum "${hunt_s[@]}")
P=$(sum "${py_s[@]}")
printf 'total over %d rounds: hunt %.3f s (%.0f events/s), python %.3f s (%.0f events/s); python/hunt %.2f\n' \
  "$ROUNDS" "$H" "$(echo "$EVENTS * $ROUNDS / $H" | bc -l)" "$P" "$(echo "$EVENTS * $ROUNDS / $P" | bc -l)" \
  "$(echo "$P / $H" | bc -l)"
