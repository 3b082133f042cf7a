//! One shard's reader: GetRecords paced under five calls per second, backoff with jitter on
//! throttling and network errors, a fresh iterator when one expires, and whole batches processed
//! under the checkpoint gate.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::operation::get_records::GetRecordsError;
use aws_sdk_kinesis::operation::get_shard_iterator::GetShardIteratorError;
use aws_sdk_kinesis::types::{Record, ShardIteratorType};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::sequence::SequenceNumber;
use super::{ShardExit, Shared, Start};
use crate::app::process_decoded;
use crate::decode::cloudwatch_envelope::{decode_record_read, Scratch};
use crate::decode::BadRecord;
use crate::event::parse_time;
use crate::finding::Finding;

/// Error codes that mean "slow down" without being a modelled throttling error of the call.
fn is_throttling_code(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("LimitExceededException" | "ThrottlingException" | "Throttling" | "SlowDown")
    )
}

/// Exponential backoff with full jitter.
pub(crate) struct Backoff {
    attempt: u32,
}

impl Backoff {
    const BASE_MS: u64 = 200;
    const MAX_MS: u64 = 10_000;

    pub(crate) fn new() -> Backoff {
        Backoff { attempt: 0 }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let cap = (Self::BASE_MS << self.attempt.min(6)).min(Self::MAX_MS);
        self.attempt += 1;
        Duration::from_millis(rand::rng().random_range(Self::BASE_MS / 2..=cap))
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Sleeps unless told to stop first; returns false on stop.
pub(crate) async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

pub(crate) async fn get_iterator(
    shared: &Shared,
    shard_id: &str,
    start: &Start,
) -> Result<Option<String>, SdkError<GetShardIteratorError>> {
    let mut req = shared
        .client
        .get_shard_iterator()
        .stream_name(&shared.stream)
        .shard_id(shard_id);
    req = match start {
        Start::After(seq) => req
            .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
            .starting_sequence_number(seq.as_str()),
        Start::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
        Start::Latest => req.shard_iterator_type(ShardIteratorType::Latest),
        Start::AtTimestamp(t) => req
            .shard_iterator_type(ShardIteratorType::AtTimestamp)
            .timestamp(aws_sdk_kinesis::primitives::DateTime::from_secs(*t)),
    };
    Ok(req.send().await?.shard_iterator().map(str::to_string))
}

/// Reads one shard until SHARD_END or `stop` (shutdown, or the shard's lease lost). An error
/// return is fatal (findings could not be written): the coordinator stops without
/// checkpointing past it.
pub(crate) async fn read_shard(
    shared: Arc<Shared>,
    shard_id: String,
    mut start: Start,
    stop: CancellationToken,
) -> anyhow::Result<ShardExit> {
    let m = &shared.metrics;
    let mut backoff = Backoff::new();
    let mut iterator: Option<String> = None;
    let mut scratch = Scratch::default();
    let poll = Duration::from_millis(shared.kinesis.poll_interval_ms);
    m.init_shard(&shard_id);
    shared.watermarks.start(&shard_id, super::wall());
    loop {
        if stop.is_cancelled() {
            return Ok(ShardExit::Shutdown);
        }
        let it = match iterator.take() {
            Some(it) => it,
            None => match get_iterator(&shared, &shard_id, &start).await {
                Ok(Some(it)) => it,
                Ok(None) => return Ok(ShardExit::Finished),
                Err(e) => {
                    if let Some(GetShardIteratorError::ResourceNotFoundException(_)) =
                        e.as_service_error()
                    {
                        tracing::warn!(shard = %shard_id, "shard no longer exists; treating it as finished");
                        return Ok(ShardExit::Finished);
                    }
                    let kind = match e.as_service_error() {
                        Some(GetShardIteratorError::ProvisionedThroughputExceededException(_)) => {
                            "throttled"
                        }
                        Some(se) if is_throttling_code(se.code()) => "throttled",
                        Some(_) => "service",
                        None => "network",
                    };
                    m.get_records_errors
                        .with_label_values(&[&shard_id, kind])
                        .inc();
                    tracing::warn!(shard = %shard_id, error = %DisplayErrorContext(&e), "GetShardIterator failed; backing off");
                    if !pause(&stop, backoff.next_delay()).await {
                        return Ok(ShardExit::Shutdown);
                    }
                    continue;
                }
            },
        };
        let call = shared
            .client
            .get_records()
            .shard_iterator(&it)
            .limit(shared.kinesis.max_records_per_call)
            .send();
        let resp = tokio::select! {
            _ = stop.cancelled() => return Ok(ShardExit::Shutdown),
            r = call => r,
        };
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                let kind = match e.as_service_error() {
                    Some(GetRecordsError::ProvisionedThroughputExceededException(_))
                    | Some(GetRecordsError::KmsThrottlingException(_)) => {
                        m.throttles.with_label_values(&[&shard_id]).inc();
                        iterator = Some(it);
                        "throttled"
                    }
                    Some(GetRecordsError::ExpiredIteratorException(_)) => {
                        // A fresh iterator from the last processed position (`start` tracks it).
                        "expired_iterator"
                    }
                    Some(GetRecordsError::ResourceNotFoundException(_)) => {
                        tracing::warn!(shard = %shard_id, "shard no longer exists; treating it as finished");
                        return Ok(ShardExit::Finished);
                    }
                    Some(_) => {
                        iterator = Some(it);
                        "service"
                    }
                    None => {
                        iterator = Some(it);
                        "network"
                    }
                };
                m.get_records_errors
                    .with_label_values(&[&shard_id, kind])
                    .inc();
                if kind != "expired_iterator" {
                    tracing::warn!(shard = %shard_id, error = %DisplayErrorContext(&e), "GetRecords failed; backing off");
                    if !pause(&stop, backoff.next_delay()).await {
                        return Ok(ShardExit::Shutdown);
                    }
                }
                continue;
            }
        };
        backoff.reset();
        if let Some(ms) = resp.millis_behind_latest() {
            m.behind_latest
                .with_label_values(&[&shard_id])
                .set(ms as f64 / 1000.0);
        }
        let records = resp.records();
        let batch = process_batch(&shared, &shard_id, records, &mut scratch, &stop).await?;
        if let Some(last) = batch.last {
            start = Start::After(last);
        }
        if batch.again {
            // From the record that could not be shared, with a fresh iterator, after a pause.
            iterator = None;
            if !pause(&stop, backoff.next_delay()).await {
                return Ok(ShardExit::Shutdown);
            }
            continue;
        }
        match resp.next_shard_iterator() {
            None => {
                // SHARD_END: every record of the shard is processed.
                return Ok(ShardExit::Finished);
            }
            Some(next) => iterator = Some(next.to_string()),
        }
        // Keep under five GetRecords calls per second per shard; a full batch means there is
        // more to read, so the pause is the minimum allowed.
        let wait = if records.len() as i32 >= shared.kinesis.max_records_per_call {
            Duration::from_millis(200)
        } else {
            poll
        };
        if !pause(&stop, wait).await {
            return Ok(ShardExit::Shutdown);
        }
    }
}

/// What [`process_batch`] did.
pub(crate) struct Batch {
    /// The last sequence number processed.
    pub last: Option<SequenceNumber>,
    /// It stopped before the end because a record's events could not be shared with the other
    /// workers (their store unreachable): read on from `last` after a pause.
    pub again: bool,
}

/// Decodes and detects one batch record by record: each record's dead letters and findings are
/// written (claimed, spooled) before the shard's position moves past it, so a checkpoint taken
/// mid-batch is exact. Stops at a record boundary when `stop` fires (shutdown, or the lease was
/// lost: the next owner reads on from the checkpoint), and before a record whose events could
/// not be shared with the other workers (`again`): that record's position does not move, so it
/// is read again.
pub(crate) async fn process_batch(
    shared: &Arc<Shared>,
    shard_id: &str,
    records: &[Record],
    scratch: &mut Scratch,
    stop: &CancellationToken,
) -> anyhow::Result<Batch> {
    let mut again = false;
    if records.is_empty() {
        return Ok(Batch { last: None, again });
    }
    let m = &shared.metrics;
    let _gate = shared.gate.read().await;
    let mut last: Option<SequenceNumber> = None;
    // Counted once per batch (label lookups are not free); what was processed before an error
    // is not counted, since the batch will be read again.
    let (mut n_records, mut n_bytes, mut n_events) = (0u64, 0u64, 0u64);
    for rec in records {
        if stop.is_cancelled() {
            break;
        }
        let mut found: Vec<(Finding, Option<f64>)> = Vec::new();
        let mut max_time: Option<i64> = None;
        let mut record_bad: Vec<(BadRecord, String, Option<&[u8]>)> = Vec::new();
        let mut event_bad: Vec<(BadRecord, String)> = Vec::new();
        let mut events = 0u64;
        let seq = rec.sequence_number();
        let data = rec.data().as_ref();
        let arrival = rec
            .approximate_arrival_timestamp()
            .map(|t| t.secs() as f64 + t.subsec_nanos() as f64 / 1e9);
        let prefix = format!("{shard_id}@{seq}");
        let unshared = shared.engine.unshared();
        let mut decoder_bad = Vec::new();
        let result = decode_record_read(
            data,
            &shared.limits,
            &prefix,
            scratch,
            |ev| {
                events += 1;
                match process_decoded(&shared.engine, &ev, &prefix, &shared.limits) {
                    Ok((fs, t)) => {
                        max_time = Some(max_time.map_or(t, |m| m.max(t)));
                        found.extend(fs.into_iter().map(|f| (f, arrival)));
                    }
                    Err(b) => event_bad.push((b, seq.to_string())),
                }
            },
            |b| decoder_bad.push(b),
        );
        event_bad.extend(decoder_bad.into_iter().map(|b| (b, seq.to_string())));
        if let Err(b) = result {
            record_bad.push((b, seq.to_string(), Some(data)));
        }
        // Findings and dead letters are written whatever happens next: read again, the record's
        // findings are not repeated (the sink knows their ids); a dead letter may be.
        if !(found.is_empty() && record_bad.is_empty() && event_bad.is_empty()) {
            emit(shared, shard_id, record_bad, event_bad, found).await?;
        }
        if shared.engine.unshared() != unshared {
            again = true;
            break;
        }
        n_records += 1;
        n_bytes += data.len() as u64;
        n_events += events;
        let now = super::wall();
        shared.watermarks.record(shard_id, max_time, now);
        match SequenceNumber::parse(seq) {
            Some(s) => {
                // The checkpointable position moves past this record once its events settle.
                let hold = super::Hold {
                    seq: s.clone(),
                    max_time,
                    wall: now,
                };
                let mut holds = shared.holds.lock().unwrap_or_else(|p| p.into_inner());
                match holds.get_mut(shard_id) {
                    Some(q) => q.push_back(hold),
                    None => {
                        holds.insert(shard_id.to_string(), [hold].into());
                    }
                }
                last = Some(s);
            }
            None => {
                tracing::warn!(shard = %shard_id, sequence = %seq, "record with a malformed sequence number")
            }
        }
    }
    m.records.with_label_values(&[shard_id]).inc_by(n_records);
    m.record_bytes
        .with_label_values(&[shard_id])
        .inc_by(n_bytes);
    m.shard_events
        .with_label_values(&[shard_id])
        .inc_by(n_events);
    Ok(Batch { last, again })
}

/// Writes one record's dead letters, then its findings: claimed (several workers), written,
/// spooled for escalation, marked reported, counted and logged.
pub(crate) async fn emit(
    shared: &Arc<Shared>,
    shard_id: &str,
    record_bad: Vec<(BadRecord, String, Option<&[u8]>)>,
    event_bad: Vec<(BadRecord, String)>,
    mut found: Vec<(Finding, Option<f64>)>,
) -> anyhow::Result<()> {
    let m = &shared.metrics;
    let letters: Vec<(BadRecord, String, Option<&[u8]>)> = record_bad
        .into_iter()
        .chain(event_bad.into_iter().map(|(b, seq)| (b, seq, None)))
        .collect();
    if !letters.is_empty() {
        for (b, _, _) in &letters {
            m.bad_records.with_label_values(&[b.kind.as_str()]).inc();
            crate::sink::log_set_aside(b);
        }
        let mut next = 0;
        persist(shared, "dead_letters", || {
            let mut dl = shared
                .dead_letters
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            while let Some((b, seq, data)) = letters.get(next) {
                dl.append(b, shard_id, seq, *data)?;
                next += 1;
            }
            Ok(())
        })
        .await?;
    }
    if let Some(c) = &shared.coordination {
        // Several workers: report only what no other worker has (a session's two origins on
        // two workers, or records read again after a lease changed hands).
        let mut kept = Vec::with_capacity(found.len());
        for (f, arrival) in found {
            match c.claim(&f).await {
                Ok(true) => kept.push((f, arrival)),
                Ok(false) => m.claimed_elsewhere.inc(),
                // Better twice than never: an unreachable table does not silence a finding.
                Err(e) => {
                    tracing::warn!(id = %f.id, error = %e, "could not claim a finding; reporting it anyway");
                    kept.push((f, arrival));
                }
            }
        }
        found = kept;
    }
    if !found.is_empty() {
        let findings: Vec<Finding> = found.iter().map(|(f, _)| f.clone()).collect();
        let written = persist(shared, "findings", || {
            shared
                .findings
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .write(&findings)
        })
        .await?;
        // Spooled durably before the shard's position moves past this record. All of them, not
        // only what the findings file took: after a crash between the two, the replay finds its
        // findings already in the file, and the spool skips the ids it already holds.
        persist(shared, "escalation_spool", || {
            shared.escalator.submit(&findings)
        })
        .await?;
        if let Some(c) = &shared.coordination {
            for f in &findings {
                c.reported(f).await;
            }
        }
        let now = chrono::Utc::now();
        let now_f = now.timestamp() as f64 + now.timestamp_subsec_millis() as f64 / 1000.0;
        for f in &written {
            m.findings
                .with_label_values(&[&f.rule, f.severity.as_str()])
                .inc();
            if let Some(t) = parse_time(&f.event_time) {
                m.event_to_finding.observe((now_f - t as f64).max(0.0));
            }
            if let Some(Some(arrival)) = found.iter().find(|(x, _)| x.id == f.id).map(|(_, a)| *a) {
                m.detection_latency.observe((now_f - arrival).max(0.0));
            }
            tracing::warn!(
                rule = %f.rule,
                severity = %f.severity,
                session = f.session.as_deref().unwrap_or("-"),
                id = %f.id,
                "finding: {}",
                f.title
            );
        }
    }
    Ok(())
}

/// Runs `write` (a write to one of the outputs: `findings`, `dead_letters`, `escalation_spool`)
/// until it succeeds. While it fails (a full or read-only disk), the caller waits, and with it
/// this shard's reading and, behind the checkpoint gate, every shard: the records stay in the
/// stream, no position moves past them, and nothing is lost or said twice. Each failure is
/// counted (`credwatch_output_write_errors_total`), `credwatch_output_blocked` is 1 meanwhile,
/// and an error is logged at once and every 30 s. At shutdown it gives up: the process then
/// writes no further checkpoint (see `Shared::unsaved`), so the next start reads those records
/// again from the last one. `write` must leave nothing changed when it fails.
pub(crate) async fn persist<T>(
    shared: &Shared,
    output: &'static str,
    mut write: impl FnMut() -> std::io::Result<T>,
) -> anyhow::Result<T> {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);
    const LOG_EVERY: Duration = Duration::from_secs(30);
    let m = &shared.metrics;
    let mut delay = FIRST;
    let mut since: Option<std::time::Instant> = None;
    let mut logged: Option<std::time::Instant> = None;
    loop {
        let e = match write() {
            Ok(v) => {
                if let Some(since) = since {
                    m.output_blocked.with_label_values(&[output]).set(0);
                    tracing::info!(
                        output,
                        blocked_secs = since.elapsed().as_secs(),
                        "{output} written again; reading goes on"
                    );
                }
                return Ok(v);
            }
            Err(e) => e,
        };
        m.output_write_errors.with_label_values(&[output]).inc();
        m.output_blocked.with_label_values(&[output]).set(1);
        let first = *since.get_or_insert_with(std::time::Instant::now);
        if logged.is_none_or(|l| l.elapsed() >= LOG_EVERY) {
            tracing::error!(
                output,
                error = %e,
                blocked_secs = first.elapsed().as_secs(),
                "cannot write {output}; reading waits (the records stay in the stream) and the \
                 write is retried"
            );
            logged = Some(std::time::Instant::now());
        }
        if shared.shutdown.is_cancelled() {
            shared
                .unsaved
                .store(true, std::sync::atomic::Ordering::SeqCst);
            anyhow::bail!(
                "writing {output}: {e}; given up at shutdown: no checkpoint is written after \
                 this, so the next start reads these records again"
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shared.shutdown.cancelled() => {}
        }
        delay = (delay * 2).min(MAX);
    }
}
