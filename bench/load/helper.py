#!/usr/bin/env python3
"""Helpers for bench/load.sh (standard library only).

    helper.py metric URL NAME            sum of a counter/gauge over its labels (0 if absent)
    helper.py quantiles URL NAME Q...    quantiles of a Prometheus histogram, as
                                         histogram_quantile() computes them (linear in a bucket)
    helper.py proc PID                   "cpu_seconds peak_rss_kib" from /proc/PID
    helper.py table RESULTS.jsonl        the results as a Markdown table
"""

import json
import os
import re
import sys
import urllib.request


def scrape(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')


def samples(text, name):
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if m and m.group(1) == name:
            yield m.group(2) or "", float(m.group(3))


def metric(url, name):
    # `name{label="value"}` sums only the series carrying that label.
    want = ""
    if "{" in name:
        name, want = name.split("{", 1)
        want = want.rstrip("}")
    try:
        text = scrape(url)
    except OSError:
        print("nan")
        return
    print(int(sum(v for labels, v in samples(text, name) if want in labels)))


def quantiles(url, name, qs):
    text = scrape(url)
    buckets = []
    for labels, v in samples(text, name + "_bucket"):
        le = re.search(r'le="([^"]+)"', labels).group(1)
        buckets.append((float("inf") if le == "+Inf" else float(le), v))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    out = []
    for q in qs:
        if total == 0:
            out.append("nan")
            continue
        rank = q * total
        prev_le, prev_c = 0.0, 0.0
        for le, c in buckets:
            if c >= rank:
                if le == float("inf"):
                    out.append("%.3f" % prev_le)
                else:
                    frac = (rank - prev_c) / (c - prev_c) if c > prev_c else 1.0
                    out.append("%.3f" % (prev_le + (le - prev_le) * frac))
                break
            prev_le, prev_c = le, c
    print(" ".join(out))


def proc(pid):
    tick = os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command: state is field 3; utime and stime are fields 14 and 15.
    cpu = (int(fields[11]) + int(fields[12])) / tick
    hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    print(f"{cpu:.2f} {hwm}")


def table(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    for r in rows:
        if "records_read" in r:
            r["records_ratio"] = f"{r['records_read']:,} / {r['records']:,}"
    cols = [
        ("mode", "mode"),
        ("emulator", "emulator"),
        ("consumer", "consumer"),
        ("lateness (s)", "lateness_secs"),
        ("target ev/s", "target_rate"),
        ("events", "events"),
        ("records read / sent", "records_ratio"),
        ("sent ev/s", "replay_events_per_sec"),
        ("processed ev/s", "end_to_end_events_per_sec"),
        ("lag after send (s)", "lag_after_send_secs"),
        ("p50 latency (s)", "p50_secs"),
        ("p99 latency (s)", "p99_secs"),
        ("settled after send (s)", "settled_after_send_secs"),
        ("withdrawn", "withdrawn"),
        ("late sightings", "late_sightings"),
        ("histogram p50/p99 (s)", "histogram"),
        ("CPU (s)", "cpu_secs"),
        ("CPU ms / 1k events", "cpu_ms_per_1k_events"),
        ("peak RSS (MiB)", "peak_rss_mib"),
        ("precision", "precision"),
        ("recall", "recall"),
        ("sustained", "sustained"),
    ]
    print("| " + " | ".join(c[0] for c in cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        vals = []
        for _, k in cols:
            v = r.get(k, "")
            if isinstance(v, float):
                v = f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
            elif isinstance(v, int) and not isinstance(v, bool):
                v = f"{v:,}"
            elif isinstance(v, bool):
                v = "yes" if v else "no"
            vals.append(str(v) if v is not None else "-")
        print("| " + " | ".join(vals) + " |")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "metric":
        metric(args[0], args[1])
    elif cmd == "quantiles":
        quantiles(args[0], args[1], [float(q) for q in args[2:]])
    elif cmd == "proc":
        proc(args[0])
    elif cmd == "table":
        table(args[0])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
