#!/usr/bin/env python3
"""The plain Python hunt a user would write first, in the style of Netflix's proof of concept:
gzip, json and a dict keyed by session ARN; the first address a session is seen from wins, and
a session seen from another address is reported once. One thread, the standard library only.

    python3 bench/python_peer.py DIR_OR_FILE...

Prints `events N sessions N findings N` on stdout (bench/hunt_vs_python.sh checks the counts).
It is the yardstick of bench/hunt_vs_python.sh, not a detector: it knows no exception (AWS
services, VPC endpoints, new addresses of an instance), so it reports more than credwatch.
"""
import gzip
import json
import os
import sys


def files(paths):
    for p in paths:
        if os.path.isdir(p):
            for root, _, names in os.walk(p):
                for n in sorted(names):
                    yield os.path.join(root, n)
        else:
            yield p


def main():
    first = {}
    reported = set()
    events = 0
    for path in files(sys.argv[1:]):
        if not path.endswith((".json.gz", ".json")):
            continue
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            doc = json.load(f)
        for e in doc.get("Records", []):
            events += 1
            ui = e.get("userIdentity") or {}
            if not str(ui.get("accessKeyId", "")).startswith("ASIA"):
                continue
            arn, ip = ui.get("arn"), e.get("sourceIPAddress")
            if not arn or not ip:
                continue
            home = first.setdefault(arn, ip)
            if home != ip and arn not in reported:
                reported.add(arn)
    print(f"events {events} sessions {len(first)} findings {len(reported)}")


if __name__ == "__main__":
    main()
