#!/usr/bin/env bash
# Runs every fuzz target for its share of a total number of executions, and records what each
# did (executions, coverage, corpus, crashes) in fuzz/results.jsonl and fuzz/README.md's table.
#
#   fuzz/run.sh [--total N | --seconds S] [--targets "gunzip envelope ..."] [--parallel P]
#               [--max-len BYTES]
#   fuzz/run.sh --ci        # each target for a short fixed budget (20,000 runs), as CI does
#
# --total N gives each target N / targets executions; --seconds S runs each for S seconds
# instead (fast targets then do more), and the table sums what each did over every run.
#
# Builds the targets with the nightly toolchain (`cargo build --profile fuzz`: libFuzzer through
# libfuzzer-sys, SanitizerCoverage on credwatch and its parsers through profile rustflags, see
# fuzz/Cargo.toml) and runs the binaries directly. Corpora are seeded from ../shared/data
# (fuzz/seed.py) under fuzz/corpus/ (git-ignored); crashes land in fuzz/artifacts/<target>/.
# A crash fails the run (exit 1) after every target has had its turn.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"

TOTAL=100000000
TARGETS="gunzip envelope cloudtrail_file event config ip_ranges dynamo_items"
PARALLEL=1
SECONDS_EACH=0
MAX_LEN=65536
CI=0
while (($#)); do
  case "$1" in
    --total) TOTAL="$2"; shift 2 ;;
    --targets) TARGETS="$2"; shift 2 ;;
    --parallel) PARALLEL="$2"; shift 2 ;;
    --seconds) SECONDS_EACH="$2"; shift 2 ;;
    --max-len) MAX_LEN="$2"; shift 2 ;;
    --ci) CI=1; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "fuzz/run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

rustup run nightly rustc --version >/dev/null 2>&1 ||
  { echo "fuzz/run.sh: the nightly toolchain is missing (rustup toolchain list)" >&2; exit 1; }

python3 "$HERE/seed.py" --out "$HERE/corpus" >&2
echo "==> building the fuzz targets ($(rustup run nightly rustc --version), profile fuzz)" >&2
RUSTFLAGS= rustup run nightly cargo build --locked --profile fuzz --bins >&2
BIN="$HERE/target/fuzz"

n=$(wc -w <<<"$TARGETS")
if ((CI)); then
  PER=20000
else
  PER=$(( TOTAL / n ))
fi
BUDGET=(-runs="$PER")
if ((SECONDS_EACH > 0 && !CI)); then
  BUDGET=(-max_total_time="$SECONDS_EACH")
fi
RESULTS="$HERE/results.jsonl"
((CI)) && RESULTS="$(mktemp)"

# One target: its runs, then one line of results.
fuzz_one() {
  local t="$1" log="$HERE/artifacts/$1.log"
  mkdir -p "$HERE/artifacts/$t" "$HERE/corpus/$t"
  local before after start secs rc execs cov ft corpus new
  before=$(find "$HERE/artifacts/$t" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' \) | wc -l)
  start=$(date +%s)
  echo "==> $t: ${BUDGET[*]}" >&2
  set +e
  "$BIN/$t" "$HERE/corpus/$t" \
    "${BUDGET[@]}" -max_len="$MAX_LEN" -dict="$HERE/dict/cloudtrail.dict" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$HERE/artifacts/$t/" \
    >"$log" 2>&1
  rc=$?
  set -e
  secs=$(( $(date +%s) - start ))
  after=$(find "$HERE/artifacts/$t" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' \) | wc -l)
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | awk '{s+=$2} END {print s+0}')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | awk '{print $2}')
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | awk '{print $2}')
  corpus=$(find "$HERE/corpus/$t" -type f | wc -l)
  new=$(( after - before ))
  printf '{"target":"%s","executions":%s,"seconds":%s,"coverage_edges":%s,"features":%s,"corpus":%s,"new_crashes":%s,"exit":%s,"date":"%s"}\n' \
    "$t" "${execs:-0}" "$secs" "${cov:-0}" "${ft:-0}" "$corpus" "$new" "$rc" "$(date -u +%FT%TZ)" >>"$RESULTS"
  tail -1 "$RESULTS" >&2
  if (( new > 0 || rc != 0 )); then
    echo "fuzz/run.sh: $t crashed (exit $rc); see $log and $HERE/artifacts/$t/" >&2
    tail -30 "$log" >&2
    return 1
  fi
}

crashed=0
pids=()
for t in $TARGETS; do
  fuzz_one "$t" &
  pids+=($!)
  if (( ${#pids[@]} >= PARALLEL )); then
    wait "${pids[0]}" || crashed=1
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do
  wait "$p" || crashed=1
done
if ! ((CI)); then
  python3 "$HERE/table.py" "$RESULTS" "$HERE/README.md"
fi
exit "$crashed"
