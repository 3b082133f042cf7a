#!/usr/bin/env bash
# LocalStack ready hook (mounted into /etc/localstack/init/ready.d/): credwatch's data path, as on
# AWS but local. A Kinesis stream, a CloudWatch Logs log group and a subscription filter that
# sends everything put into the group to the stream (CloudTrail would be the writer on AWS).
# Then replays the recorded stolen-credential scenario once (replay.sh), so the dashboards have
# something to show. Idempotent: safe to run again (docker compose exec localstack bash
# /etc/localstack/init/ready.d/init-aws.sh).
set -euo pipefail

STREAM="${CREDWATCH_STREAM:-cloudtrail-credwatch}"
SHARDS="${CREDWATCH_SHARDS:-2}"
LOG_GROUP="${CREDWATCH_LOG_GROUP:-/credwatch/cloudtrail}"
FILTER=credwatch-to-kinesis
# LocalStack does not check the role; on AWS it is a role CloudWatch Logs can assume that may
# kinesis:PutRecord on the stream.
ROLE_ARN="arn:aws:iam::000000000000:role/cwl-to-kinesis"

if ! awslocal kinesis describe-stream-summary --stream-name "$STREAM" >/dev/null 2>&1; then
  awslocal kinesis create-stream --stream-name "$STREAM" --shard-count "$SHARDS"
fi
awslocal kinesis wait stream-exists --stream-name "$STREAM"
STREAM_ARN="$(awslocal kinesis describe-stream-summary --stream-name "$STREAM" \
  --query StreamDescriptionSummary.StreamARN --output text)"

if ! awslocal logs describe-log-groups --log-group-name-prefix "$LOG_GROUP" \
  --query 'logGroups[].logGroupName' --output text | tr '\t' '\n' | grep -qx "$LOG_GROUP"; then
  awslocal logs create-log-group --log-group-name "$LOG_GROUP"
fi
awslocal logs put-subscription-filter --log-group-name "$LOG_GROUP" --filter-name "$FILTER" \
  --filter-pattern "" --destination-arn "$STREAM_ARN" --role-arn "$ROLE_ARN" \
  --distribution ByLogStream

echo "credwatch: stream $STREAM ($SHARDS shards) <- subscription $FILTER <- log group $LOG_GROUP"

if [[ -d /opt/credwatch/fixtures && ! -e /tmp/credwatch-replayed ]]; then
  bash /opt/credwatch/replay.sh && touch /tmp/credwatch-replayed
fi
