#!/usr/bin/env python3
"""Seeds the fuzz corpora from ../shared/data (real public CloudTrail recordings) and the repo.

    python3 fuzz/seed.py [--shared ../shared/data] [--out fuzz/corpus]

Writes, per target, small inputs in the shapes the target takes: whole files (cloudtrail_file),
gzip'd files (gunzip), envelope JSON (envelope: the decompressed body of a Kinesis record), one
event (event), configuration files (config), a cut-down ip-ranges.json (ip_ranges) and
DynamoDB items in their JSON form (dynamo_items). Idempotent: names are content hashes.
"""

import argparse
import gzip
import hashlib
import json
import os
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent


def put(out, target, data):
    if isinstance(data, str):
        data = data.encode()
    d = out / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def events_of(value):
    if isinstance(value, dict) and isinstance(value.get("Records"), list):
        return [e for e in value["Records"] if isinstance(e, dict)]
    if isinstance(value, list):
        return [e for e in value if isinstance(e, dict)]
    if isinstance(value, dict) and "eventName" in value:
        return [value]
    if isinstance(value, dict) and isinstance(value.get("detail"), dict):
        return [value["detail"]]
    return []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(HERE / "corpus"))
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    shared = pathlib.Path(args.shared)
    events = []
    for p in sorted(shared.rglob("*")):
        if not p.is_file() or p.stat().st_size > 256 << 10 or "ip-ranges" in p.name:
            continue
        raw = p.read_bytes()
        if p.suffix == ".gz":
            put(out, "gunzip", raw)
            put(out, "cloudtrail_file", raw)
            try:
                raw = gzip.decompress(raw)
            except OSError:
                continue
        if p.suffix not in (".json", ".gz", ".jsonl"):
            continue
        put(out, "cloudtrail_file", raw)
        put(out, "gunzip", gzip.compress(raw, 6))
        try:
            value = json.loads(raw)
        except ValueError:
            continue
        events.extend(events_of(value))
    for p in sorted((REPO / "tests" / "fixtures").rglob("*")):
        if p.is_file() and p.stat().st_size <= 256 << 10:
            put(out, "cloudtrail_file", p.read_bytes())
    for e in events[:400]:
        put(out, "event", json.dumps(e, separators=(",", ":")))
    for i in range(0, min(len(events), 400), 20):
        chunk = events[i : i + 20]
        env = {
            "messageType": "DATA_MESSAGE",
            "owner": "111122223333",
            "logGroup": "/aws/cloudtrail",
            "logStream": "111122223333_CloudTrail_us-east-1",
            "subscriptionFilters": ["credwatch"],
            "logEvents": [
                {"id": str(36000000000000000000000000000000000000000000000000000000 + j),
                 "timestamp": 1722587000000 + j,
                 "message": json.dumps(e, separators=(",", ":"))}
                for j, e in enumerate(chunk)
            ],
        }
        put(out, "envelope", json.dumps(env, separators=(",", ":")))
    put(out, "envelope", json.dumps({"messageType": "CONTROL_MESSAGE", "owner": "CloudwatchLogs",
                                     "logGroup": "", "logStream": "", "subscriptionFilters": [],
                                     "logEvents": [{"id": "", "timestamp": 1, "message": "CWL CONTROL MESSAGE: Checking health of destination Kinesis stream."}]}))
    for p in [REPO / "config" / "credwatch.example.toml", *sorted((REPO / "tests").rglob("*.toml"))]:
        if p.is_file():
            put(out, "config", p.read_bytes())
    ranges = json.loads((shared / "aws-ip-ranges" / "ip-ranges.json").read_text())
    small = dict(ranges)
    small["prefixes"] = ranges["prefixes"][:40]
    small["ipv6_prefixes"] = ranges["ipv6_prefixes"][:40]
    put(out, "ip_ranges", json.dumps(small))
    put(out, "ip_ranges", gzip.compress(json.dumps(small).encode()))
    for item in [
        {"leaseKey": {"S": "shardId-000000000001"}, "leaseOwner": {"S": "w1"},
         "leaseCounter": {"N": "7"}, "checkpoint": {"S": "49590338271490256608559692538361571095921575989136588898"},
         "checkpointSubSequenceNumber": {"N": "0"}, "ownerSwitchesSinceCheckpoint": {"N": "1"},
         "parentShardIds": {"SS": ["shardId-000000000000"]}, "credwatchWatermark": {"N": "1722587000"}},
        {"pk": {"S": "s#111122223333:app/i-0abc"}, "home": {"S": "54.1.2.3"}, "homeTag": {"N": "1"},
         "firstTime": {"N": "1722587000"}, "expires": {"N": "1722608600"}, "eventId": {"S": "5d3f1c2a-0000-4000-8000-000000000001"},
         "ua": {"S": "aws-sdk-go-v2/1.30.3"}, "prevHome": {"S": "18.236.253.47"}, "ttl": {"N": "1722612200"}},
    ]:
        put(out, "dynamo_items", json.dumps(item))
    counts = {d.name: len(list(d.iterdir())) for d in sorted(out.iterdir()) if d.is_dir()}
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
