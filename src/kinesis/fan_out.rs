//! Enhanced fan-out (`kinesis.consumer = "enhanced_fan_out"`): the stream consumer is registered
//! (or found) once, then each shard is read with `SubscribeToShard`, whose records are pushed
//! over HTTP/2 as they arrive, with 2 MB/s per shard that no other reader of the stream shares.
//!
//! A subscription lasts at most 5 minutes: each is renewed after `kinesis.resubscribe_secs`, or
//! when the service ends it, from the last record processed (`AFTER_SEQUENCE_NUMBER`). Records
//! go through the same [`super::shard::process_batch`] as polling: the same holds, checkpoints,
//! watermarks, dead letters and findings. The shard ends (its children may be read) when an
//! event carries `ChildShards` and no continuation sequence number.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::error::{DisplayErrorContext, SdkError};
use aws_sdk_kinesis::operation::subscribe_to_shard::SubscribeToShardError;
use aws_sdk_kinesis::types::{
    ConsumerStatus, ShardIteratorType, StartingPosition, SubscribeToShardEventStream,
};
use aws_sdk_kinesis::Client;
use tokio_util::sync::CancellationToken;

use super::sequence::SequenceNumber;
use super::shard::{get_iterator, pause, process_batch, Backoff};
use super::{ShardExit, Shared, Start};
use crate::decode::cloudwatch_envelope::Scratch;

/// The least wait before subscribing again after a failed subscription: AWS refuses a second
/// `SubscribeToShard` of one consumer on one shard within 5 s of the last successful one.
const IN_USE_WAIT: Duration = Duration::from_secs(1);

/// How long registration may take to reach `ACTIVE`.
const ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// Registers the stream consumer `name` (or finds it, when it already exists) and waits until it
/// is `ACTIVE`; returns its ARN. Needs `kinesis:DescribeStreamSummary`,
/// `kinesis:RegisterStreamConsumer` and `kinesis:DescribeStreamConsumer`.
pub async fn ensure_consumer(client: &Client, stream: &str, name: &str) -> anyhow::Result<String> {
    let summary = client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "kinesis.stream {stream}: DescribeStreamSummary: {}",
                DisplayErrorContext(&e)
            )
        })?;
    let stream_arn = summary
        .stream_description_summary()
        .map(|s| s.stream_arn().to_string())
        .ok_or_else(|| anyhow::anyhow!("kinesis.stream {stream}: no stream ARN"))?;
    match client
        .register_stream_consumer()
        .stream_arn(&stream_arn)
        .consumer_name(name)
        .send()
        .await
    {
        Ok(out) => {
            if let Some(c) = out.consumer() {
                tracing::info!(consumer = %c.consumer_arn(), "registered the stream consumer");
            }
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_in_use_exception()) =>
        {
            tracing::info!(consumer = %name, "the stream consumer is already registered");
        }
        Err(e) => anyhow::bail!(
            "kinesis.consumer_name {name}: RegisterStreamConsumer on {stream_arn}: {}",
            DisplayErrorContext(&e)
        ),
    }
    let deadline = tokio::time::Instant::now() + ACTIVE_TIMEOUT;
    loop {
        let out = client
            .describe_stream_consumer()
            .stream_arn(&stream_arn)
            .consumer_name(name)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "kinesis.consumer_name {name}: DescribeStreamConsumer: {}",
                    DisplayErrorContext(&e)
                )
            })?;
        let d = out
            .consumer_description()
            .ok_or_else(|| anyhow::anyhow!("kinesis.consumer_name {name}: no description"))?;
        if *d.consumer_status() == ConsumerStatus::Active {
            return Ok(d.consumer_arn().to_string());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "kinesis.consumer_name {name}: still {} after {} s",
            d.consumer_status().as_str(),
            ACTIVE_TIMEOUT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn starting_position(start: &Start) -> StartingPosition {
    let b = StartingPosition::builder();
    let b = match start {
        Start::After(seq) => b
            .r#type(ShardIteratorType::AfterSequenceNumber)
            .sequence_number(seq.as_str()),
        Start::TrimHorizon => b.r#type(ShardIteratorType::TrimHorizon),
        Start::Latest => b.r#type(ShardIteratorType::Latest),
        Start::AtTimestamp(t) => b
            .r#type(ShardIteratorType::AtTimestamp)
            .timestamp(aws_sdk_kinesis::primitives::DateTime::from_secs(*t)),
    };
    // `type` is always set above: the builder cannot fail.
    b.build().unwrap_or_else(|_| {
        StartingPosition::builder()
            .r#type(ShardIteratorType::TrimHorizon)
            .build()
            .expect("a type is set")
    })
}

fn error_kind(e: &SdkError<SubscribeToShardError>) -> &'static str {
    match e.as_service_error() {
        Some(SubscribeToShardError::LimitExceededException(_))
        | Some(SubscribeToShardError::KmsThrottlingException(_)) => "throttled",
        Some(SubscribeToShardError::ResourceInUseException(_)) => "subscription_in_use",
        Some(_) => "service",
        None => "network",
    }
}

/// Whether the shard is closed and nothing is left after `start`: GetRecords from there returns
/// no record and no next iterator. Any error: not known to be, so no.
async fn drained(shared: &Shared, shard_id: &str, start: &Start) -> bool {
    let it = match get_iterator(shared, shard_id, start).await {
        Ok(Some(it)) => it,
        Ok(None) => return true,
        Err(_) => return false,
    };
    match shared
        .client
        .get_records()
        .shard_iterator(it)
        .limit(1)
        .send()
        .await
    {
        Ok(r) => r.records().is_empty() && r.next_shard_iterator().is_none(),
        Err(_) => false,
    }
}

/// Reads one shard through enhanced fan-out until it ends or `stop`. As
/// [`super::shard::read_shard`], an error return is fatal (findings could not be written).
pub(crate) async fn read_shard(
    shared: Arc<Shared>,
    consumer_arn: String,
    shard_id: String,
    mut start: Start,
    stop: CancellationToken,
) -> anyhow::Result<ShardExit> {
    let m = &shared.metrics;
    let mut backoff = Backoff::new();
    let mut scratch = Scratch::default();
    let renew = Duration::from_secs(shared.kinesis.resubscribe_secs);
    m.init_shard(&shard_id);
    shared.watermarks.start(&shard_id, super::wall());
    loop {
        if stop.is_cancelled() {
            return Ok(ShardExit::Shutdown);
        }
        let call = shared
            .client
            .subscribe_to_shard()
            .consumer_arn(&consumer_arn)
            .shard_id(&shard_id)
            .starting_position(starting_position(&start))
            .send();
        let out = tokio::select! {
            _ = stop.cancelled() => return Ok(ShardExit::Shutdown),
            r = call => r,
        };
        let mut out = match out {
            Ok(o) => o,
            Err(e) => {
                if let Some(SubscribeToShardError::ResourceNotFoundException(_)) =
                    e.as_service_error()
                {
                    tracing::warn!(shard = %shard_id, "shard no longer exists; treating it as finished");
                    return Ok(ShardExit::Finished);
                }
                let kind = error_kind(&e);
                if kind == "throttled" {
                    m.throttles.with_label_values(&[&shard_id]).inc();
                }
                m.get_records_errors
                    .with_label_values(&[&shard_id, kind])
                    .inc();
                tracing::warn!(shard = %shard_id, error = %DisplayErrorContext(&e), "SubscribeToShard failed; backing off");
                if !pause(&stop, backoff.next_delay()).await {
                    return Ok(ShardExit::Shutdown);
                }
                continue;
            }
        };
        m.subscriptions.with_label_values(&[&shard_id]).inc();
        let mut probed = false;
        tracing::info!(shard = %shard_id, ?start, "subscribed to shard (enhanced fan-out)");
        let renew_at = tokio::time::sleep(renew);
        tokio::pin!(renew_at);
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => return Ok(ShardExit::Shutdown),
                _ = &mut renew_at => break,
                ev = out.event_stream.recv() => ev,
            };
            let ev = match ev {
                Ok(Some(ev)) => ev,
                // The service ended the subscription (after 5 minutes): renew it.
                Ok(None) => break,
                Err(e) => {
                    use aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError as E;
                    let (kind, what) = match e.as_service_error() {
                        // The previous subscription is still held (AWS lets a new one take over
                        // only 5 s after the last successful call).
                        Some(E::ResourceInUseException(_)) => (
                            "subscription_in_use",
                            "another subscription of this consumer holds the shard".to_string(),
                        ),
                        Some(E::ResourceNotFoundException(_)) => {
                            tracing::warn!(shard = %shard_id, "shard no longer exists; treating it as finished");
                            return Ok(ShardExit::Finished);
                        }
                        Some(E::KmsThrottlingException(_)) => {
                            ("throttled", "KMS throttling".to_string())
                        }
                        Some(other) => ("stream", other.to_string()),
                        None => ("stream", DisplayErrorContext(&e).to_string()),
                    };
                    m.get_records_errors
                        .with_label_values(&[&shard_id, kind])
                        .inc();
                    let wait = backoff.next_delay().max(IN_USE_WAIT);
                    tracing::warn!(shard = %shard_id, error = kind, retry_in_ms = wait.as_millis() as u64, "enhanced fan-out subscription failed ({what}); subscribing again");
                    if !pause(&stop, wait).await {
                        return Ok(ShardExit::Shutdown);
                    }
                    break;
                }
            };
            let SubscribeToShardEventStream::SubscribeToShardEvent(e) = ev else {
                continue;
            };
            backoff.reset();
            m.behind_latest
                .with_label_values(&[&shard_id])
                .set(e.millis_behind_latest() as f64 / 1000.0);
            let records = e.records();
            let batch = process_batch(&shared, &shard_id, records, &mut scratch, &stop).await?;
            if batch.again {
                // A record could not be shared with the other workers: subscribe again from
                // it, after a pause.
                if let Some(last) = batch.last {
                    start = Start::After(last);
                }
                if !pause(&stop, backoff.next_delay().max(IN_USE_WAIT)).await {
                    return Ok(ShardExit::Shutdown);
                }
                break;
            }
            if let Some(last) = batch.last {
                start = Start::After(last);
            } else if records.is_empty() {
                // No record, but the service says where to go on from (past records it
                // skipped, such as expired ones): the next subscription starts there.
                if let Some(seq) = SequenceNumber::parse(e.continuation_sequence_number()) {
                    if !matches!(&start, Start::After(s) if *s >= seq) {
                        start = Start::After(seq);
                    }
                }
            }
            if stop.is_cancelled() {
                return Ok(ShardExit::Shutdown);
            }
            if !e.child_shards().is_empty() {
                // Child shards come only on a closed shard's last event: every record of it
                // was delivered.
                return Ok(ShardExit::Finished);
            }
            if records.is_empty() && e.millis_behind_latest() == 0 && !probed {
                // Caught up: once per subscription, ask GetRecords whether the shard is closed
                // and read to its end (a null NextShardIterator), for services and emulators
                // that never send ChildShards on a subscription.
                probed = true;
                if drained(&shared, &shard_id, &start).await {
                    tracing::info!(shard = %shard_id, "closed shard read to its end (GetRecords says so)");
                    return Ok(ShardExit::Finished);
                }
            }
        }
    }
}
