#!/usr/bin/env python3
"""How late CloudTrail delivers an event: S3 object time (from the object's name, to the minute)
minus each event's eventTime, over every CloudTrail S3 object under a folder.

    python3 bench/delivery_delay.py ../shared/data

The spread (max - min) bounds how far two log streams can be apart in event time, which is what
`detection.allowed_lateness_secs` must cover (bench/README.md).
"""
import datetime
import gzip
import json
import os
import re
import statistics
import sys

NAME = re.compile(r"_CloudTrail_([a-z0-9-]+)_(\d{8}T\d{4})Z_")


def main(root):
    delays = []
    objects = 0
    for folder, _, files in os.walk(root):
        for f in files:
            m = NAME.search(f)
            if not m:
                continue
            written = datetime.datetime.strptime(m.group(2), "%Y%m%dT%H%M")
            written = written.replace(tzinfo=datetime.timezone.utc).timestamp()
            raw = open(os.path.join(folder, f), "rb").read()
            if raw[:2] == b"\x1f\x8b":
                raw = gzip.decompress(raw)
            objects += 1
            for e in json.loads(raw).get("Records", []):
                t = datetime.datetime.fromisoformat(e["eventTime"].replace("Z", "+00:00"))
                delays.append(written - t.timestamp())
    if not delays:
        sys.exit(f"no CloudTrail S3 objects under {root}")
    delays.sort()
    p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
    print(
        f"{objects} objects, {len(delays)} events: delivery delay min {delays[0]:.0f} s, "
        f"p50 {statistics.median(delays):.0f} s, p99 {p99:.0f} s, max {delays[-1]:.0f} s; "
        f"spread {delays[-1] - delays[0]:.0f} s"
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
