#!/usr/bin/env python3
"""Sums fuzz/results.jsonl per target and writes the table between the markers in fuzz/README.md."""
import json
import sys

results, readme = sys.argv[1], sys.argv[2]
rows = {}
for line in open(results):
    if not line.strip():
        continue
    r = json.loads(line)
    t = rows.setdefault(r["target"], {"executions": 0, "seconds": 0, "coverage_edges": 0,
                                      "features": 0, "corpus": 0, "crashes": 0, "last": ""})
    t["executions"] += r["executions"]
    t["seconds"] += r["seconds"]
    t["coverage_edges"] = max(t["coverage_edges"], r["coverage_edges"])
    t["features"] = max(t["features"], r["features"])
    t["corpus"] = r["corpus"]
    t["crashes"] += r["new_crashes"]
    t["last"] = r["date"]
lines = ["| target | executions | seconds (one process) | coverage (edges) | features | corpus | crashes | last run |",
         "|---|---|---|---|---|---|---|---|"]
total = 0
for name, t in rows.items():
    total += t["executions"]
    lines.append(f"| `{name}` | {t['executions']:,} | {t['seconds']:,} | {t['coverage_edges']:,} | "
                 f"{t['features']:,} | {t['corpus']:,} | {t['crashes']} | {t['last']} |")
lines.append(f"| **total** | **{total:,}** | | | | | **{sum(t['crashes'] for t in rows.values())}** | |")
text = open(readme).read()
start, end = "<!-- results -->", "<!-- /results -->"
a, b = text.index(start) + len(start), text.index(end)
open(readme, "w").write(text[:a] + "\n" + "\n".join(lines) + "\n" + text[b:])
print("\n".join(lines))
