//! Sending with retries: PutRecords (resending only the failed records of a partly failed call)
//! and PutLogEvents (backing off when throttled, creating log streams that are missing).
//!
//! The SDK clients are built with their own retries off, so that every retry is counted here.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::operation::put_records::PutRecordsOutput;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use serde::Serialize;

use super::batch::Record;
use crate::workload::now_ms;

/// Counters of one replay.
#[derive(Debug, Default)]
pub struct Stats {
    /// API calls that put data (PutRecords, PutLogEvents), retries included.
    pub calls: AtomicU64,
    /// Calls made again: after an error, a throttle, or to resend a partly failed call's records.
    pub retries: AtomicU64,
    /// Throttling answers (whole calls, or records of a partly failed call).
    pub throttled: AtomicU64,
    /// Other retryable errors (5xx, connection, timeouts).
    pub errors: AtomicU64,
    /// Records resent after a partly failed PutRecords.
    pub records_resent: AtomicU64,
    /// Records delivered (Kinesis).
    pub records: AtomicU64,
    /// Events delivered.
    pub events: AtomicU64,
    /// Bytes delivered: record data (Kinesis) or message bytes (CloudWatch Logs).
    pub bytes: AtomicU64,
    /// Events CloudWatch Logs answered as rejected (too old, too new, expired).
    pub rejected: AtomicU64,
    pub log_streams_created: AtomicU64,
}

/// How failed calls are retried: exponential backoff from `base`, capped at `cap`, with jitter,
/// at most `max_retries` times per call.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 30,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The pause before retry number `attempt` (1-based): full jitter over the capped exponential.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.cap);
        let f: f64 = rand::random_range(0.5..=1.0);
        exp.mul_f64(f)
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Throttled: back off and retry.
    Throttled(String),
    /// A passing fault (5xx, connection, timeout): back off and retry.
    Retryable(String),
    /// The log stream (or group, or stream) does not exist.
    NotFound(String),
    /// Anything else: stop.
    Fatal(String),
}

const THROTTLING_CODES: [&str; 6] = [
    "ThrottlingException",
    "Throttling",
    "ProvisionedThroughputExceededException",
    "LimitExceededException",
    "KMSThrottlingException",
    "SlowDown",
];
const RETRYABLE_CODES: [&str; 6] = [
    "ServiceUnavailableException",
    "ServiceUnavailable",
    "InternalFailure",
    "InternalServerError",
    "RequestTimeout",
    "InvalidSequenceTokenException",
];

/// Classifies an SDK error of either client.
pub fn classify<E>(e: &SdkError<E>) -> SendError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match e {
        SdkError::ServiceError(ctx) => {
            let code = ctx.err().code().unwrap_or("");
            let status = ctx.raw().status().as_u16();
            let text = format!(
                "{} (HTTP {status}): {}",
                if code.is_empty() { "error" } else { code },
                ctx.err().message().unwrap_or("no message")
            );
            if THROTTLING_CODES.contains(&code) || status == 429 {
                SendError::Throttled(text)
            } else if RETRYABLE_CODES.contains(&code) || status >= 500 {
                SendError::Retryable(text)
            } else if code == "ResourceNotFoundException" {
                SendError::NotFound(text)
            } else {
                SendError::Fatal(text)
            }
        }
        // Connection trouble passes; a dispatch failure of another kind (no credentials, a bad
        // endpoint) does not.
        SdkError::DispatchFailure(d) if !(d.is_io() || d.is_timeout()) => {
            SendError::Fatal(DisplayErrorContext(e).to_string())
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            SendError::Retryable(DisplayErrorContext(e).to_string())
        }
        _ => SendError::Fatal(DisplayErrorContext(e).to_string()),
    }
}

/// Somewhere PutRecords calls go: the answer is each record's error code (`None`: stored).
pub trait RecordSink {
    fn put(
        &self,
        records: &[Record],
    ) -> impl Future<Output = Result<Vec<Option<String>>, SendError>> + Send;
}

/// Kinesis through the SDK.
pub struct KinesisSink {
    pub client: aws_sdk_kinesis::Client,
    pub stream: String,
}

impl RecordSink for KinesisSink {
    async fn put(&self, records: &[Record]) -> Result<Vec<Option<String>>, SendError> {
        let entries = records
            .iter()
            .map(|r| {
                PutRecordsRequestEntry::builder()
                    .partition_key(&r.key)
                    .data(Blob::new(r.data.clone()))
                    .build()
                    .map_err(|e| SendError::Fatal(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = self
            .client
            .put_records()
            .stream_name(&self.stream)
            .set_records(Some(entries))
            .send()
            .await
            .map_err(|e| classify(&e))?;
        Ok(entry_errors(&out))
    }
}

/// Each record's error code in a PutRecords answer (`None`: the record was stored).
pub fn entry_errors(out: &PutRecordsOutput) -> Vec<Option<String>> {
    out.records()
        .iter()
        .map(|r| r.error_code().filter(|c| !c.is_empty()).map(str::to_string))
        .collect()
}

/// Splits a call's records into (stored, to resend) by the answer's error codes. An answer that
/// does not have one entry per record tells nothing: everything is resent.
pub fn split_failed(records: Vec<Record>, codes: &[Option<String>]) -> (Vec<Record>, Vec<Record>) {
    if codes.len() != records.len() {
        return (Vec::new(), records);
    }
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for (r, c) in records.into_iter().zip(codes) {
        if c.is_some() {
            failed.push(r);
        } else {
            ok.push(r);
        }
    }
    (ok, failed)
}

/// A call that could not be delivered within the retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undelivered {
    pub error: String,
    /// Events not delivered.
    pub events: usize,
}

/// Puts records until each is stored: a partly failed call resends only its failed records.
/// `delivered` is called with the records each successful answer stored and the answer's time
/// (ms since the epoch).
pub async fn put_records_with_retry<S: RecordSink>(
    sink: &S,
    records: Vec<Record>,
    policy: &RetryPolicy,
    stats: &Stats,
    mut delivered: impl FnMut(&[Record], i64),
) -> Result<(), Undelivered> {
    let mut pending = records;
    let mut attempt = 0u32;
    loop {
        stats.calls.fetch_add(1, Relaxed);
        let error = match sink.put(&pending).await {
            Ok(codes) => {
                let ack = now_ms();
                let throttled = codes
                    .iter()
                    .flatten()
                    .filter(|c| THROTTLING_CODES.contains(&c.as_str()))
                    .count();
                let (ok, failed) = split_failed(pending, &codes);
                if !ok.is_empty() {
                    delivered(&ok, ack);
                }
                if failed.is_empty() {
                    return Ok(());
                }
                stats.throttled.fetch_add(throttled as u64, Relaxed);
                stats.records_resent.fetch_add(failed.len() as u64, Relaxed);
                pending = failed;
                let codes: HashSet<&str> = codes.iter().flatten().map(String::as_str).collect();
                format!("{} records failed ({codes:?})", pending.len())
            }
            Err(SendError::Throttled(e)) => {
                stats.throttled.fetch_add(1, Relaxed);
                e
            }
            Err(SendError::Retryable(e)) => {
                stats.errors.fetch_add(1, Relaxed);
                e
            }
            Err(SendError::NotFound(e) | SendError::Fatal(e)) => {
                return Err(Undelivered {
                    error: e,
                    events: pending.iter().map(|r| r.items.len()).sum(),
                })
            }
        };
        attempt += 1;
        if attempt > policy.max_retries {
            return Err(Undelivered {
                error: format!("gave up after {} retries: {error}", policy.max_retries),
                events: pending.iter().map(|r| r.items.len()).sum(),
            });
        }
        stats.retries.fetch_add(1, Relaxed);
        tracing::debug!(attempt, %error, "PutRecords retry");
        tokio::time::sleep(policy.backoff(attempt)).await;
    }
}

/// CloudWatch Logs through the SDK: one log group, log streams created on first use.
pub struct LogsSink {
    pub client: aws_sdk_cloudwatchlogs::Client,
    pub group: String,
    created: Mutex<HashSet<String>>,
}

/// What a PutLogEvents batch came to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LogsOutcome {
    /// Time of the successful answer (ms since the epoch).
    pub ack_ms: i64,
    /// Indices (within the batch) CloudWatch Logs rejected.
    pub rejected: Vec<usize>,
}

impl LogsSink {
    pub fn new(client: aws_sdk_cloudwatchlogs::Client, group: String) -> LogsSink {
        LogsSink {
            client,
            group,
            created: Mutex::new(HashSet::new()),
        }
    }

    fn is_created(&self, stream: &str) -> bool {
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(stream)
    }

    fn set_created(&self, stream: &str, yes: bool) {
        let mut set = self.created.lock().unwrap_or_else(|p| p.into_inner());
        if yes {
            set.insert(stream.to_string());
        } else {
            set.remove(stream);
        }
    }

    /// Creates the log stream unless it exists.
    async fn ensure_stream(&self, stream: &str, stats: &Stats) -> Result<(), SendError> {
        if self.is_created(stream) {
            return Ok(());
        }
        match self
            .client
            .create_log_stream()
            .log_group_name(&self.group)
            .log_stream_name(stream)
            .send()
            .await
        {
            Ok(_) => {
                stats.log_streams_created.fetch_add(1, Relaxed);
            }
            Err(e) => {
                let exists = e
                    .as_service_error()
                    .is_some_and(|s| s.is_resource_already_exists_exception());
                if !exists {
                    return Err(match classify(&e) {
                        SendError::NotFound(m) => SendError::Fatal(format!(
                            "log group {:?} does not exist (create it, with its subscription filter, first): {m}",
                            self.group
                        )),
                        other => other,
                    });
                }
            }
        }
        self.set_created(stream, true);
        Ok(())
    }

    /// Puts one batch (time-ordered, within the limits) until it is accepted.
    pub async fn put_with_retry(
        &self,
        stream: &str,
        events: Vec<(i64, &str)>,
        policy: &RetryPolicy,
        stats: &Stats,
    ) -> Result<LogsOutcome, Undelivered> {
        let input: Vec<InputLogEvent> = events
            .iter()
            .map(|(ts, msg)| {
                InputLogEvent::builder()
                    .timestamp(*ts)
                    .message(*msg)
                    .build()
                    .expect("timestamp and message are set")
            })
            .collect();
        let n = input.len();
        let mut attempt = 0u32;
        loop {
            let result = match self.ensure_stream(stream, stats).await {
                Err(e) => Err(e),
                Ok(()) => {
                    stats.calls.fetch_add(1, Relaxed);
                    let sent = self
                        .client
                        .put_log_events()
                        .log_group_name(&self.group)
                        .log_stream_name(stream)
                        .set_log_events(Some(input.clone()))
                        .send()
                        .await;
                    match sent {
                        Ok(out) => Ok(Some(out)),
                        // The batch was stored by an earlier attempt whose answer was lost.
                        Err(e)
                            if e.as_service_error()
                                .is_some_and(|s| s.is_data_already_accepted_exception()) =>
                        {
                            Ok(None)
                        }
                        Err(e) => Err(classify(&e)),
                    }
                }
            };
            let error = match result {
                Ok(out) => {
                    let mut rejected = Vec::new();
                    if let Some(info) = out.as_ref().and_then(|o| o.rejected_log_events_info()) {
                        let old = info
                            .too_old_log_event_end_index()
                            .unwrap_or(0)
                            .max(info.expired_log_event_end_index().unwrap_or(0))
                            .clamp(0, n as i32) as usize;
                        rejected.extend(0..old);
                        if let Some(new) = info.too_new_log_event_start_index() {
                            rejected.extend((new.clamp(0, n as i32) as usize).max(old)..n);
                        }
                    }
                    stats.rejected.fetch_add(rejected.len() as u64, Relaxed);
                    return Ok(LogsOutcome {
                        ack_ms: now_ms(),
                        rejected,
                    });
                }
                Err(SendError::Throttled(e)) => {
                    stats.throttled.fetch_add(1, Relaxed);
                    e
                }
                Err(SendError::Retryable(e)) => {
                    stats.errors.fetch_add(1, Relaxed);
                    e
                }
                Err(SendError::NotFound(e)) => {
                    // The log stream went away: create it again.
                    self.set_created(stream, false);
                    e
                }
                Err(SendError::Fatal(e)) => {
                    return Err(Undelivered {
                        error: e,
                        events: n,
                    })
                }
            };
            attempt += 1;
            if attempt > policy.max_retries {
                return Err(Undelivered {
                    error: format!("gave up after {} retries: {error}", policy.max_retries),
                    events: n,
                });
            }
            stats.retries.fetch_add(1, Relaxed);
            tracing::debug!(attempt, %error, stream, "PutLogEvents retry");
            tokio::time::sleep(policy.backoff(attempt)).await;
        }
    }
}
