#!/usr/bin/env python3
"""Provision a local AWS emulator (moto server) for credwatch demos and manual tests.

Runs with the boto3 that `moto[server]` installs into `.venv`:

    .venv/bin/python tests/stack/provision.py wait --endpoint URL
    .venv/bin/python tests/stack/provision.py setup --endpoint URL [--stream S] [--shards N] [--log-group G]
    .venv/bin/python tests/stack/provision.py put-events --log-group G --log-stream S FILE

FILE is a JSON array of CloudTrail events (or an object with a "Records" array, as CloudTrail
writes to S3). Each event becomes one log event whose message is the event's compact JSON, as
CloudTrail writes to CloudWatch Logs. The endpoint defaults to $AWS_ENDPOINT_URL.
"""

import argparse
import json
import os
import sys
import time
import urllib.request

REGION = "us-east-1"
# moto accepts any role ARN for a subscription filter; real AWS needs a role CloudWatch Logs can assume.
DEFAULT_ROLE_ARN = "arn:aws:iam::123456789012:role/cwl-to-kinesis"
# PutLogEvents limits: 10,000 events and 1,048,576 bytes (message bytes + 26 per event) per call.
MAX_BATCH_EVENTS = 10_000
MAX_BATCH_BYTES = 1_048_576
EVENT_OVERHEAD_BYTES = 26


def client(service, endpoint):
    import boto3  # imported here so `wait` works without boto3

    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def wait(args):
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            with urllib.request.urlopen(f"{args.endpoint}/moto-api/", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"provision: no answer from {args.endpoint} after {args.timeout}s")
        time.sleep(0.2)


def setup(args):
    kinesis = client("kinesis", args.endpoint)
    logs = client("logs", args.endpoint)

    existing = kinesis.list_streams()["StreamNames"]
    if args.stream not in existing:
        kinesis.create_stream(StreamName=args.stream, ShardCount=args.shards)
    kinesis.get_waiter("stream_exists").wait(
        StreamName=args.stream, WaiterConfig={"Delay": 1, "MaxAttempts": 30}
    )
    stream_arn = kinesis.describe_stream_summary(StreamName=args.stream)[
        "StreamDescriptionSummary"
    ]["StreamARN"]

    try:
        logs.create_log_group(logGroupName=args.log_group)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    logs.put_subscription_filter(
        logGroupName=args.log_group,
        filterName=args.filter_name,
        filterPattern="",
        destinationArn=stream_arn,
        roleArn=args.role_arn,
        distribution="ByLogStream",
    )
    print(
        f"provision: stream {args.stream} ({args.shards} shards), log group {args.log_group}, "
        f"subscription {args.filter_name} -> {stream_arn}",
        file=sys.stderr,
    )


def load_events(path):
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    if isinstance(doc, dict) and isinstance(doc.get("Records"), list):
        doc = doc["Records"]
    if not isinstance(doc, list):
        sys.exit(f"provision: {path}: expected a JSON array of CloudTrail events")
    return doc


def batches(messages):
    batch, size = [], 0
    for msg in messages:
        cost = len(msg.encode("utf-8")) + EVENT_OVERHEAD_BYTES
        if batch and (len(batch) == MAX_BATCH_EVENTS or size + cost > MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(msg)
        size += cost
    if batch:
        yield batch


def put_events(args):
    logs = client("logs", args.endpoint)
    messages = [json.dumps(e, separators=(",", ":")) for e in load_events(args.file)]
    try:
        logs.create_log_stream(logGroupName=args.log_group, logStreamName=args.log_stream)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass

    # Log event timestamps are "now", not the events' eventTime: CloudWatch Logs (and moto)
    # silently drop events older than 14 days, and recorded events usually are.
    ts = int(time.time() * 1000)
    put = 0
    for batch in batches(messages):
        events = [{"timestamp": ts, "message": m} for m in batch]
        resp = logs.put_log_events(
            logGroupName=args.log_group, logStreamName=args.log_stream, logEvents=events
        )
        if resp.get("rejectedLogEventsInfo"):
            sys.exit(f"provision: events rejected: {resp['rejectedLogEventsInfo']}")
        put += len(events)
    print(
        f"provision: put {put} events into {args.log_group}/{args.log_stream}", file=sys.stderr
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL"))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("wait", help="wait until the emulator answers")
    p.add_argument("--timeout", type=float, default=30)
    p.set_defaults(func=wait)

    p = sub.add_parser("setup", help="create the stream, log group and subscription filter")
    p.add_argument("--stream", default="credwatch-demo")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--log-group", default="/credwatch/cloudtrail")
    p.add_argument("--filter-name", default="credwatch-to-kinesis")
    p.add_argument("--role-arn", default=DEFAULT_ROLE_ARN)
    p.set_defaults(func=setup)

    p = sub.add_parser("put-events", help="put a JSON array of CloudTrail events into a log stream")
    p.add_argument(
        "--log-group", default=os.environ.get("CREDWATCH_LOG_GROUP", "/credwatch/cloudtrail")
    )
    p.add_argument("--log-stream", required=True)
    p.add_argument("file")
    p.set_defaults(func=put_events)

    args = parser.parse_args()
    if not args.endpoint:
        parser.error("--endpoint or AWS_ENDPOINT_URL is required")
    args.func(args)


if __name__ == "__main__":
    main()
