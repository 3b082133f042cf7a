#!/usr/bin/env bash
# What placement (#12) costs decode+detect: `bench/decode_detect.rs` at the commit before the #12
# work and at HEAD, run alternately on the same machine, compared on their "one timed pass" line.
#
#   bench/placement_overhead.sh [--base REV] [--runs N] [--base-target DIR] [--out DIR]
#                               [--remove-worktree]
#
# Steps:
# 1. a git worktree of REV (default 5ff9852, the commit before #12) at
#    /tmp/credwatch-bench-base-REV/credwatch, next to a link `shared` -> this checkout's ../shared
#    (decode_detect reads its events from CARGO_MANIFEST_DIR/../shared/data); kept for reruns
#    unless --remove-worktree;
# 2. `cargo bench --bench decode_detect --no-run --locked` there, with CARGO_TARGET_DIR=DIR
#    (default: this checkout's own target/, so the dependencies already built are reused: a
#    separate one builds every dependency again: 25 min and about 2 GB here), then the
#    same here (HEAD, with the work tree as it is); each bench executable is linked (or copied)
#    into OUT, so whichever build ran last cannot replace the other's;
# 3. N rounds (default 3), each running both executables one after the other, the order flipped
#    every round (base, head; head, base; ...). Each run is `EXE --bench timed-pass-only`: a
#    criterion filter that matches none of criterion's benchmarks, so only the bench's own timed
#    passes run (best of 15 passes each of gunzip, decode only, decode+detect over the same 20,000
#    events), and its line "gunzip floor: ... decode+detect: X events/s ... findings F" is parsed;
# 4. prints every run's events/s, the findings each version reports, and the median over rounds
#    of HEAD / base decode+detect events/s (also of the of-the-floor ratios, which take out a
#    machine that got slower or faster between two runs, and the ratio of each version's best
#    run); the verdict against the issue's 5 % budget is on the median.
#
# Results: OUT/results.txt (also on stdout), OUT/runs.tsv; OUT defaults to
# .local/bench/placement-overhead (git-ignored).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

BASE=5ff9852
RUNS=3
BASE_TARGET="$REPO/target"
OUT="$REPO/.local/bench/placement-overhead"
REMOVE=0

while (($#)); do
  case "$1" in
    --base) BASE="$2"; shift 2 ;;
    --runs) RUNS="$2"; shift 2 ;;
    --base-target) BASE_TARGET="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --remove-worktree) REMOVE=1; shift ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

BASE_SHA="$(git rev-parse --verify "$BASE^{commit}")"
HEAD_SHA="$(git rev-parse HEAD)"
DIRTY=""
git diff --quiet HEAD -- src Cargo.toml Cargo.lock bench/decode_detect.rs || DIRTY="+changes"
SHARED="$(cd "$REPO/../shared" && pwd)"
[[ -d "$SHARED/data" ]] || { echo "no $SHARED/data: decode_detect reads its events there" >&2; exit 1; }

WT_ROOT="/tmp/credwatch-bench-base-${BASE_SHA:0:12}"
WT="$WT_ROOT/credwatch"
mkdir -p "$OUT" "$WT_ROOT"
ln -sfn "$SHARED" "$WT_ROOT/shared"
if [[ -e "$WT/.git" ]]; then
  have="$(git -C "$WT" rev-parse HEAD)"
  [[ "$have" == "$BASE_SHA" ]] || { echo "$WT is at $have, not $BASE_SHA" >&2; exit 1; }
else
  git worktree add --detach "$WT" "$BASE_SHA" >&2
fi
cleanup() {
  if ((REMOVE)); then
    git -C "$REPO" worktree remove --force "$WT" && rm -f "$WT_ROOT/shared" && rmdir "$WT_ROOT" || true
  fi
}
trap cleanup EXIT

# Builds decode_detect in $1 with CARGO_TARGET_DIR $2 and prints the executable's path.
build() {
  local dir="$1" target="$2"
  (cd "$dir" && CARGO_TARGET_DIR="$target" cargo bench --bench decode_detect --no-run --locked \
    --message-format=json-render-diagnostics) |
    jq -r 'select(.reason == "compiler-artifact" and .target.name == "decode_detect"
                  and .executable != null) | .executable' | tail -n 1
}

# A hard link when it can (the linker writes a new file rather than into the old one), else a copy.
keep() { rm -f "$2"; ln "$1" "$2" 2>/dev/null || cp "$1" "$2"; }

echo "building decode_detect at $BASE_SHA (base) in $WT, CARGO_TARGET_DIR=$BASE_TARGET" >&2
t0=$SECONDS
base_exe="$(build "$WT" "$BASE_TARGET")"
[[ -x "$base_exe" ]] || { echo "no base executable" >&2; exit 1; }
keep "$base_exe" "$OUT/decode_detect-base"
echo "  $base_exe ($((SECONDS - t0)) s)" >&2
echo "building decode_detect at ${HEAD_SHA:0:12}$DIRTY (head) in $REPO" >&2
t0=$SECONDS
head_exe="$(build "$REPO" "${CARGO_TARGET_DIR:-$REPO/target}")"
[[ -x "$head_exe" ]] || { echo "no head executable" >&2; exit 1; }
keep "$head_exe" "$OUT/decode_detect-head"
echo "  $head_exe ($((SECONDS - t0)) s)" >&2

# One run of version $1: prints "floor decode full of_floor sessions findings events".
run() {
  local exe="$OUT/decode_detect-$1" log="$OUT/last-$1.log"
  CRITERION_HOME="$OUT/criterion" "$exe" --bench timed-pass-only >"$log" 2>&1 ||
    { cat "$log" >&2; echo "decode_detect ($1) failed" >&2; exit 1; }
  local events line
  events="$(sed -nE 's/^workload: [0-9]+ records, ([0-9]+) events.*/\1/p' "$log")"
  line="$(grep '^gunzip floor: ' "$log")" || { cat "$log" >&2; echo "no timed-pass line" >&2; exit 1; }
  sed -nE 's/^gunzip floor: ([0-9]+) events\/s; decode only: ([0-9]+) events\/s .*decode\+detect: ([0-9]+) events\/s; ratio ([0-9.]+) of the floor; sessions tracked ([0-9]+), findings ([0-9]+).*/\1 \2 \3 \4 \5 \6/p' \
    <<<"$line" | tr '\n' ' '
  echo "$events"
}

printf 'round\tversion\tgunzip_floor_ev_s\tdecode_only_ev_s\tdecode_detect_ev_s\tof_floor\tsessions\tfindings\tevents\n' >"$OUT/runs.tsv"
for ((r = 1; r <= RUNS; r++)); do
  if ((r % 2)); then order="base head"; else order="head base"; fi
  for v in $order; do
    read -r floor dec full of sess fnd ev <<<"$(run "$v")"
    [[ -n "${ev:-}" ]] || { echo "could not parse the $v run" >&2; exit 1; }
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$v" "$floor" "$dec" "$full" "$of" "$sess" "$fnd" "$ev" >>"$OUT/runs.tsv"
    echo "round $r $v: decode+detect $full events/s (gunzip floor $floor, decode only $dec; $of of the floor; findings $fnd)" >&2
  done
done

python3 - "$OUT/runs.tsv" "$BASE_SHA" "$HEAD_SHA$DIRTY" <<'EOF' | tee "$OUT/results.txt"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
base_sha, head_sha = sys.argv[2], sys.argv[3]
by = {}
for r in rows:
    by.setdefault(r["round"], {})[r["version"]] = r
# Of the floor from the events/s themselves (the bench prints that ratio rounded to 2 digits).
of = lambda r: int(r["decode_detect_ev_s"]) / int(r["gunzip_floor_ev_s"])
print(f"decode_detect, one timed pass (best of 15) per run; base {base_sha[:12]}, head {head_sha[:12]}{head_sha[40:]}")
print(f"{'round':>5} {'version':>7} {'gunzip floor':>13} {'decode only':>12} {'decode+detect':>14} {'of floor':>9} {'sessions':>9} {'findings':>9}")
for r in rows:
    print(f"{r['round']:>5} {r['version']:>7} {int(r['gunzip_floor_ev_s']):>13,} {int(r['decode_only_ev_s']):>12,} "
          f"{int(r['decode_detect_ev_s']):>14,} {of(r):>9.3f} {int(r['sessions']):>9,} {int(r['findings']):>9}")
events = {r["events"] for r in rows}
assert len(events) == 1, f"the versions' workloads differ: {events}"
ratio = [int(v["head"]["decode_detect_ev_s"]) / int(v["base"]["decode_detect_ev_s"]) for v in by.values()]
floor_ratio = [of(v["head"]) / of(v["base"]) for v in by.values()]
med = lambda v: statistics.median(int(r["decode_detect_ev_s"]) for r in rows if r["version"] == v)
findings = {v: sorted({r["findings"] for r in rows if r["version"] == v}) for v in ("base", "head")}
print(f"events per pass: {events.pop()}; findings reported: base {', '.join(findings['base'])}, head {', '.join(findings['head'])}")
print("per-round HEAD / base, decode+detect events/s: " + ", ".join(f"{x:.3f}" for x in ratio))
print(f"median HEAD / base: {statistics.median(ratio):.3f} (of-the-floor ratios: {statistics.median(floor_ratio):.3f}; "
      f"medians {med('head'):,.0f} / {med('base'):,.0f} events/s)")
best = lambda v: max(int(r["decode_detect_ev_s"]) for r in rows if r["version"] == v)
print(f"best run of each: HEAD / base {best('head') / best('base'):.3f} ({best('head'):,} / {best('base'):,} events/s; "
      "the least disturbed estimate when other work shares the cores)")
m = statistics.median(ratio)
print(f"slowdown {100 * (1 - m):.1f} %: {'within' if m >= 0.95 else 'NOT within'} the 5 % budget")
EOF
