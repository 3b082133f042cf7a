//! `credwatch replay`: CloudTrail files into CloudWatch Logs (the real path) or Kinesis (the
//! fast path), paced, with retries, a progress bar, a summary and a sent-log.
//!
//! - Files: any format `hunt` reads (folders recursively). Every event is loaded, then ordered
//!   by `eventTime` (ties keep file order).
//! - Log streams: each event is given a log stream (`--log-stream-by`): `session` (default:
//!   `<account>/<role>/<i-…>` for an instance-profile session, `<account>/<access key>` for other
//!   credentials, `<account>/no-credential`), `account` (`<account>_CloudTrail_<region>`, what
//!   CloudTrail's own CloudWatch Logs delivery uses), `file` (the file's name) or `single`
//!   (`credwatch-replay`). With `--stream` the log stream names the envelopes and, with
//!   `--partition-key stream` (default), the partition keys.
//! - Log-event timestamps: the recorded spacing, divided by `--speedup` (else compressed only
//!   when the recording spans over 13 days), shifted so that the newest event is "now" at the
//!   start of each loop: CloudWatch Logs rejects events over 14 days old or 2 hours ahead.
//! - Pacing: `--rate` events per second, or `--speedup X` to keep the recorded inter-arrival
//!   times divided by X, or (neither) as fast as the destination takes them. Partial batches are
//!   sent at least every `--flush-ms` while paced.
//! - `--log-group`: PutLogEvents batches of at most 10,000 events and 1 MiB (messages + 26 bytes
//!   each), spanning at most 24 hours, per log stream, in time order; at most one call in flight
//!   per log stream, so each stream's events arrive in time order. Missing log streams are
//!   created; the log group (and its subscription filter) must exist.
//! - `--stream`: gzip'd `DATA_MESSAGE` envelopes of at most `--events-per-record` events of one
//!   log stream, in PutRecords calls of at most 500 records and 5 MiB. With `--concurrency` over
//!   1, calls run in parallel and a key's records may interleave across calls.
//! - Retries: throttled and failed calls are retried with capped exponential backoff (at most
//!   `--max-retries` per call); a partly failed PutRecords resends only its failed records. A
//!   call that still fails stops the replay (exit status 2) with the undelivered count.
//! - `--sent-log FILE`: one JSON line per delivered event,
//!   `{"event_id":…,"sent_at":<ms>,"timestamp":<log-event ms>,"log_stream":…,"loop":n}`, where
//!   `sent_at` is when the call that delivered it was answered. `score --sent-log` measures
//!   detection delays from it.
//! - Summary on stderr; `--summary-json FILE` writes it as JSON ([`Summary`]).

pub mod batch;
pub mod send;

use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::sync::mpsc;

use self::batch::{CallBatcher, Grouper, Item, Record};
use self::send::{put_records_with_retry, KinesisSink, LogsSink, RetryPolicy, Stats, Undelivered};
use super::{format_ms, now_ms, EXIT_ERROR, EXIT_OK};
use crate::decode::cloudtrail_file::decode_file;
use crate::decode::cloudwatch_envelope::encode_envelope;
use crate::decode::Limits;
use crate::event::CloudTrailEvent;

/// Recordings spanning more than this are compressed into it (CloudWatch Logs keeps 14 days).
const MAX_TIMESTAMP_SPAN_MS: f64 = 13.0 * 86_400_000.0;
const FILTER_NAME: &str = "credwatch-replay";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogStreamBy {
    /// By instance-profile session (`role/i-…`) or access key.
    Session,
    /// `<account>_CloudTrail_<region>`, as CloudTrail's own delivery names them.
    Account,
    /// By source file.
    File,
    /// One log stream.
    Single,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PartitionKey {
    /// The envelope's log stream.
    Stream,
    /// A random key per record.
    Random,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("destination").required(true).args(["log_group", "stream"])))]
pub struct ReplayArgs {
    /// CloudWatch Logs log group to PutLogEvents into (the real path; its subscription filter
    /// carries the events on to Kinesis).
    #[arg(long, env = "CREDWATCH_REPLAY_LOG_GROUP")]
    pub log_group: Option<String>,
    /// Kinesis data stream to PutRecords subscription envelopes into (the fast path).
    #[arg(long, env = "CREDWATCH_REPLAY_STREAM")]
    pub stream: Option<String>,
    /// `--region` and `--endpoint-url`.
    #[command(flatten)]
    pub aws: crate::cli::AwsArgs,
    /// How events are grouped into log streams.
    #[arg(
        long,
        env = "CREDWATCH_REPLAY_LOG_STREAM_BY",
        value_enum,
        default_value = "session"
    )]
    pub log_stream_by: LogStreamBy,
    /// Kinesis partition keys (`--stream`).
    #[arg(
        long,
        env = "CREDWATCH_REPLAY_PARTITION_KEY",
        value_enum,
        default_value = "stream"
    )]
    pub partition_key: PartitionKey,
    /// Most log events per envelope (`--stream`).
    #[arg(
        long,
        env = "CREDWATCH_REPLAY_EVENTS_PER_RECORD",
        default_value_t = 100
    )]
    pub events_per_record: usize,
    /// Events per second.
    #[arg(long, env = "CREDWATCH_REPLAY_RATE", conflicts_with = "speedup")]
    pub rate: Option<f64>,
    /// Keep the recorded inter-arrival times, divided by this.
    #[arg(long, env = "CREDWATCH_REPLAY_SPEEDUP")]
    pub speedup: Option<f64>,
    /// Replay the files this many times.
    #[arg(long = "loop", env = "CREDWATCH_REPLAY_LOOP", default_value_t = 1)]
    pub loops: u32,
    /// Calls in flight at once.
    #[arg(long, env = "CREDWATCH_REPLAY_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,
    /// While paced, partial batches wait at most this long.
    #[arg(long, env = "CREDWATCH_REPLAY_FLUSH_MS", default_value_t = 200)]
    pub flush_ms: u64,
    /// A log stream's batch is sent once the replayed events' time has moved this many seconds
    /// past its first event, as CloudTrail delivers each log stream every few minutes (so shards
    /// see event time advance together, as in AWS).
    #[arg(long, env = "CREDWATCH_REPLAY_BATCH_SPAN_SECS", default_value_t = 60)]
    pub batch_span_secs: u64,
    /// Retries per call before giving up.
    #[arg(long, env = "CREDWATCH_REPLAY_MAX_RETRIES", default_value_t = 30)]
    pub max_retries: u32,
    /// Log group named in the envelopes (`--stream`).
    #[arg(
        long,
        env = "CREDWATCH_REPLAY_ENVELOPE_LOG_GROUP",
        default_value = "credwatch/replay"
    )]
    pub envelope_log_group: String,
    /// Write the summary as JSON to this file.
    #[arg(long, env = "CREDWATCH_REPLAY_SUMMARY_JSON")]
    pub summary_json: Option<PathBuf>,
    /// Write one JSON line per delivered event (event id, send time) to this file.
    #[arg(long, env = "CREDWATCH_REPLAY_SENT_LOG")]
    pub sent_log: Option<PathBuf>,
    /// CloudTrail files or folders (recursively).
    #[arg(required = true, env = "CREDWATCH_REPLAY_PATHS", value_delimiter = ',')]
    pub paths: Vec<PathBuf>,
}

/// Where events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    LogGroup(String),
    Stream(String),
}

/// How fast events go.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    Fastest,
    Rate(f64),
    Speedup(f64),
}

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub destination: Destination,
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    pub log_stream_by: LogStreamBy,
    pub partition_key: PartitionKey,
    pub events_per_record: usize,
    pub pace: Pace,
    pub loops: u32,
    pub concurrency: usize,
    pub flush: Duration,
    /// A log stream's batch is sent once the replayed event time is this far past its first
    /// event (milliseconds of event time).
    pub batch_span_ms: i64,
    pub retry: RetryPolicy,
    pub envelope_log_group: String,
    pub sent_log: Option<PathBuf>,
    pub progress: bool,
    pub paths: Vec<PathBuf>,
}

impl ReplayOptions {
    fn from_args(a: ReplayArgs) -> Result<ReplayOptions, String> {
        let destination = match (a.log_group, a.stream) {
            (Some(g), None) => Destination::LogGroup(g),
            (None, Some(s)) => Destination::Stream(s),
            _ => return Err("give one of --log-group and --stream".into()),
        };
        let pace = match (a.rate, a.speedup) {
            (Some(r), None) if r > 0.0 && r.is_finite() => Pace::Rate(r),
            (None, Some(x)) if x > 0.0 && x.is_finite() => Pace::Speedup(x),
            (None, None) => Pace::Fastest,
            _ => return Err("--rate and --speedup must be positive".into()),
        };
        if a.loops == 0 || a.concurrency == 0 || a.events_per_record == 0 {
            return Err("--loop, --concurrency and --events-per-record must be at least 1".into());
        }
        Ok(ReplayOptions {
            destination,
            endpoint_url: a.aws.endpoint_url,
            region: a.aws.region,
            log_stream_by: a.log_stream_by,
            partition_key: a.partition_key,
            events_per_record: a.events_per_record,
            pace,
            loops: a.loops,
            concurrency: a.concurrency,
            flush: Duration::from_millis(a.flush_ms.max(1)),
            batch_span_ms: (a.batch_span_secs.max(1) as i64).saturating_mul(1000),
            retry: RetryPolicy {
                max_retries: a.max_retries,
                ..RetryPolicy::default()
            },
            envelope_log_group: a.envelope_log_group,
            sent_log: a.sent_log,
            progress: std::io::stderr().is_terminal(),
            paths: a.paths,
        })
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// `cloudwatch_logs` or `kinesis`.
    pub target: String,
    pub destination: String,
    pub files: u64,
    pub events_loaded: u64,
    /// Events (or files) that could not be read and were left out.
    pub bad_records: u64,
    /// Events over CloudWatch Logs' 256 KiB event limit, left out.
    pub skipped_oversize: u64,
    pub loops: u32,
    pub events_sent: u64,
    /// Events CloudWatch Logs answered as rejected.
    pub events_rejected: u64,
    /// Events not delivered because a call failed for good.
    pub undelivered: u64,
    pub calls: u64,
    pub retries: u64,
    pub throttled: u64,
    pub errors: u64,
    pub records: u64,
    pub records_resent: u64,
    pub bytes: u64,
    pub log_streams: u64,
    pub log_streams_created: u64,
    pub started_at: String,
    pub finished_at: String,
    /// When sending began (after loading) and ended, ms since the epoch.
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub elapsed_secs: f64,
    pub events_per_sec: f64,
    /// The error that stopped the replay, if any.
    pub error: Option<String>,
}

impl Summary {
    pub fn render(&self) -> String {
        let mut s = format!(
            "replayed to {} {}\nfiles read: {}\nevents loaded: {} (bad {}, oversize {})\nevents sent: {} in {} loop(s)\ncalls: {} (retries {}, throttled {}, errors {})\n",
            self.target,
            self.destination,
            self.files,
            self.events_loaded,
            self.bad_records,
            self.skipped_oversize,
            self.events_sent,
            self.loops,
            self.calls,
            self.retries,
            self.throttled,
            self.errors
        );
        if self.target == "kinesis" {
            s.push_str(&format!(
                "records: {} (resent {})\n",
                self.records, self.records_resent
            ));
        } else {
            s.push_str(&format!(
                "log streams: {} (created {}), rejected events: {}\n",
                self.log_streams, self.log_streams_created, self.events_rejected
            ));
        }
        s.push_str(&format!(
            "bytes: {}\nelapsed: {:.3}s\nevents/s: {:.1}\n",
            self.bytes, self.elapsed_secs, self.events_per_sec
        ));
        if self.undelivered > 0 {
            s.push_str(&format!("undelivered events: {}\n", self.undelivered));
        }
        if let Some(e) = &self.error {
            s.push_str(&format!("error: {e}\n"));
        }
        s
    }
}

/// `credwatch replay`.
pub fn cli(args: ReplayArgs) -> i32 {
    let summary_json = args.summary_json.clone();
    let opts = match ReplayOptions::from_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("credwatch: replay: {e}");
            return EXIT_ERROR;
        }
    };
    let Some(rt) = crate::cli::runtime() else {
        return EXIT_ERROR;
    };
    let summary = match rt.block_on(replay(&opts)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("credwatch: replay: {e}");
            return EXIT_ERROR;
        }
    };
    eprint!("{}", summary.render());
    if let Some(p) = summary_json {
        let text = serde_json::to_string_pretty(&summary).unwrap_or_default() + "\n";
        if let Err(e) = std::fs::write(&p, text) {
            eprintln!("credwatch: replay: {}: {e}", p.display());
            return EXIT_ERROR;
        }
    }
    if summary.error.is_some() || summary.undelivered > 0 {
        EXIT_ERROR
    } else {
        EXIT_OK
    }
}

// ---- loading ------------------------------------------------------------------------------

/// One event to replay.
#[derive(Debug, Clone)]
pub struct LoadedEvent {
    /// `eventTime` in ms.
    pub time_ms: i64,
    pub id: Box<str>,
    /// Index into [`Loaded::streams`].
    pub stream: u32,
    pub json: Box<str>,
}

/// The events of the files, in time order, with their log streams.
#[derive(Debug, Default)]
pub struct Loaded {
    pub events: Vec<LoadedEvent>,
    pub streams: Vec<String>,
    /// Account of each log stream's first event (the envelopes' `owner`).
    pub owners: Vec<String>,
    pub files: u64,
    pub bad: u64,
    pub skipped_oversize: u64,
}

/// A valid log stream name: no `:` or `*`, 1 to 512 characters.
fn log_stream_name(raw: &str) -> String {
    let mut s: String = raw
        .chars()
        .map(|c| if c == ':' || c == '*' { '_' } else { c })
        .collect();
    if s.len() > 512 {
        let mut end = 512;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    if s.is_empty() {
        s.push_str("unknown");
    }
    s
}

/// The log stream of an event.
fn stream_of(ev: &CloudTrailEvent<'_>, by: LogStreamBy, file_stem: &str) -> String {
    let account = ev
        .account_id()
        .or(ev.recipient_account_id.as_deref())
        .unwrap_or("unknown");
    let raw = match by {
        LogStreamBy::Single => "credwatch-replay".to_string(),
        LogStreamBy::File => file_stem.to_string(),
        LogStreamBy::Account => format!(
            "{}_CloudTrail_{}",
            ev.recipient_account_id.as_deref().unwrap_or(account),
            ev.aws_region.as_deref().unwrap_or("unknown")
        ),
        LogStreamBy::Session => {
            let instance = ev
                .arn()
                .and_then(crate::engine::credential::assumed_role_parts)
                .filter(|(_, s)| s.starts_with("i-"));
            match (instance, ev.access_key_id()) {
                (Some((role, session)), _) => format!("{account}/{role}/{session}"),
                (None, Some(key)) => format!("{account}/{key}"),
                (None, None) => format!("{account}/no-credential"),
            }
        }
    };
    log_stream_name(&raw)
}

fn file_stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut stem = name.as_str();
    for ext in [".gz", ".json", ".jsonl"] {
        stem = stem.strip_suffix(ext).unwrap_or(stem);
    }
    stem.to_string()
}

/// Reads every event of the files under `paths`, in time order.
pub fn load(paths: &[PathBuf], by: LogStreamBy) -> Result<Loaded, String> {
    let files = crate::hunt::collect_files(paths)?;
    let limits = Limits::default();
    let mut loaded = Loaded::default();
    let mut index: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    for path in &files {
        loaded.files += 1;
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let prefix = path.display().to_string();
        let stem = file_stem(path);
        let bad = std::cell::Cell::new(0u64);
        let result = decode_file(
            &bytes,
            &limits,
            &prefix,
            |raw| {
                let Ok(ev) = CloudTrailEvent::parse(&raw.json) else {
                    bad.set(bad.get() + 1);
                    return;
                };
                let Ok(secs) = ev.time_secs() else {
                    bad.set(bad.get() + 1);
                    return;
                };
                if raw.json.len() > batch::LOGS_MAX_MESSAGE_BYTES {
                    loaded.skipped_oversize += 1;
                    return;
                }
                let name = stream_of(&ev, by, &stem);
                let next = loaded.streams.len() as u32;
                let stream = *index.entry(name.clone()).or_insert_with(|| {
                    loaded.streams.push(name);
                    loaded.owners.push(
                        ev.recipient_account_id
                            .as_deref()
                            .or(ev.account_id())
                            .unwrap_or("000000000000")
                            .to_string(),
                    );
                    next
                });
                let id = if ev.event_id().is_empty() {
                    format!("{prefix}#{}", raw.index)
                } else {
                    ev.event_id().to_string()
                };
                loaded.events.push(LoadedEvent {
                    time_ms: secs * 1000,
                    id: id.into_boxed_str(),
                    stream,
                    json: raw.json.clone().into_owned().into_boxed_str(),
                });
            },
            |_| bad.set(bad.get() + 1),
        );
        if let Err(b) = result {
            tracing::warn!(file = %prefix, detail = %b.detail, "file left out");
            bad.set(bad.get() + 1);
        }
        loaded.bad += bad.get();
    }
    loaded.events.sort_by_key(|e| e.time_ms);
    Ok(loaded)
}

// ---- replaying ----------------------------------------------------------------------------

/// A call for a worker.
enum Call {
    Logs {
        stream: u32,
        items: Vec<Item>,
        loop_no: u32,
    },
    Kinesis {
        records: Vec<Record>,
        loop_no: u32,
    },
}

enum Sink {
    Logs(LogsSink),
    Kinesis(KinesisSink),
}

struct Ctx {
    loaded: Loaded,
    sink: Sink,
    retry: RetryPolicy,
    stats: Stats,
    sent_log: Option<Mutex<BufWriter<std::fs::File>>>,
    sent_log_error: AtomicBool,
    progress: ProgressBar,
    abort: AtomicBool,
    error: Mutex<Option<String>>,
    undelivered: AtomicU64,
}

#[derive(Serialize)]
struct SentLine<'a> {
    event_id: &'a str,
    sent_at: i64,
    timestamp: i64,
    log_stream: &'a str,
    #[serde(rename = "loop")]
    loop_no: u32,
}

impl Ctx {
    fn fail(&self, u: Undelivered) {
        self.undelivered.fetch_add(u.events as u64, Relaxed);
        self.abort.store(true, Relaxed);
        let mut e = self.error.lock().unwrap_or_else(|p| p.into_inner());
        e.get_or_insert(u.error);
    }

    fn delivered(&self, items: &[Item], skip: &[usize], ack: i64, loop_no: u32) {
        let n = (items.len() - skip.len()) as u64;
        self.stats.events.fetch_add(n, Relaxed);
        self.progress.inc(n);
        let Some(log) = &self.sent_log else { return };
        let mut w = log.lock().unwrap_or_else(|p| p.into_inner());
        for (i, (ts, idx)) in items.iter().enumerate() {
            if skip.contains(&i) {
                continue;
            }
            let ev = &self.loaded.events[*idx as usize];
            let line = SentLine {
                event_id: &ev.id,
                sent_at: ack,
                timestamp: *ts,
                log_stream: &self.loaded.streams[ev.stream as usize],
                loop_no,
            };
            let ok = serde_json::to_writer(&mut *w, &line).is_ok() && w.write_all(b"\n").is_ok();
            if !ok && !self.sent_log_error.swap(true, Relaxed) {
                tracing::error!("cannot write the sent-log");
            }
        }
    }

    async fn handle(&self, call: Call) {
        if self.abort.load(Relaxed) {
            let n = match &call {
                Call::Logs { items, .. } => items.len(),
                Call::Kinesis { records, .. } => records.iter().map(|r| r.items.len()).sum(),
            };
            self.undelivered.fetch_add(n as u64, Relaxed);
            return;
        }
        match (call, &self.sink) {
            (
                Call::Logs {
                    stream,
                    items,
                    loop_no,
                },
                Sink::Logs(sink),
            ) => {
                let name = &self.loaded.streams[stream as usize];
                let events: Vec<(i64, &str)> = items
                    .iter()
                    .map(|(ts, i)| (*ts, &*self.loaded.events[*i as usize].json))
                    .collect();
                let bytes: usize = events.iter().map(|e| e.1.len()).sum();
                match sink
                    .put_with_retry(name, events, &self.retry, &self.stats)
                    .await
                {
                    Ok(out) => {
                        self.stats.bytes.fetch_add(bytes as u64, Relaxed);
                        if !out.rejected.is_empty() {
                            tracing::warn!(
                                log_stream = %name,
                                rejected = out.rejected.len(),
                                "CloudWatch Logs rejected events (too old, too new or expired)"
                            );
                        }
                        self.delivered(&items, &out.rejected, out.ack_ms, loop_no);
                    }
                    Err(u) => self.fail(u),
                }
            }
            (Call::Kinesis { records, loop_no }, Sink::Kinesis(sink)) => {
                let result =
                    put_records_with_retry(sink, records, &self.retry, &self.stats, |ok, ack| {
                        self.stats.records.fetch_add(ok.len() as u64, Relaxed);
                        let bytes: usize = ok.iter().map(|r| r.data.len()).sum();
                        self.stats.bytes.fetch_add(bytes as u64, Relaxed);
                        for r in ok {
                            self.delivered(&r.items, &[], ack, loop_no);
                        }
                    })
                    .await;
                if let Err(u) = result {
                    self.fail(u);
                }
            }
            _ => unreachable!("calls match the sink"),
        }
    }
}

/// Builds the records of one envelope, split in halves while a record is over 1 MiB.
fn envelope_records(
    loaded: &Loaded,
    stream: u32,
    items: &[Item],
    opts: &ReplayOptions,
    out: &mut Vec<Record>,
) {
    let name = &loaded.streams[stream as usize];
    let messages: Vec<(i64, &str)> = items
        .iter()
        .map(|(ts, i)| (*ts, &*loaded.events[*i as usize].json))
        .collect();
    let data = encode_envelope(
        &loaded.owners[stream as usize],
        &opts.envelope_log_group,
        name,
        FILTER_NAME,
        &messages,
    );
    let key = match opts.partition_key {
        PartitionKey::Stream => {
            let mut k = name.clone();
            while k.chars().count() > 256 {
                k.pop();
            }
            k
        }
        PartitionKey::Random => format!("{:032x}", rand::random::<u128>()),
    };
    if data.len() + key.len() > batch::KINESIS_MAX_RECORD_BYTES && items.len() > 1 {
        let (a, b) = items.split_at(items.len() / 2);
        envelope_records(loaded, stream, a, opts, out);
        envelope_records(loaded, stream, b, opts, out);
        return;
    }
    out.push(Record {
        data,
        key,
        stream,
        items: items.to_vec(),
    });
}

/// Turns events into calls, holding partial batches until they fill or are flushed.
struct Producer<'a> {
    opts: &'a ReplayOptions,
    ctx: &'a Ctx,
    logs: Grouper,
    envelopes: Grouper,
    calls: CallBatcher,
    senders: Vec<mpsc::Sender<Call>>,
    next_worker: usize,
    /// Log-event time (ms) of the last check for batches that fell due.
    last_due_check: i64,
    /// `batch_span_ms` in log-event time (which compresses spans longer than CloudWatch Logs
    /// accepts).
    due_span: i64,
}

impl Producer<'_> {
    async fn send(&mut self, call: Call) {
        let w = match &call {
            Call::Logs { stream, .. } => *stream as usize % self.senders.len(),
            Call::Kinesis { .. } => {
                self.next_worker = (self.next_worker + 1) % self.senders.len();
                self.next_worker
            }
        };
        // A worker only stops when the senders are dropped.
        let _ = self.senders[w].send(call).await;
    }

    async fn push(&mut self, ts: i64, idx: u32, loop_no: u32) {
        // Batches of other log streams that time has moved past go out first (checked once per
        // second of event time).
        if ts.saturating_sub(self.last_due_check) >= 1000 {
            self.last_due_check = ts;
            let span = self.due_span;
            for (stream, items) in self.logs.due(ts, span) {
                self.send(Call::Logs {
                    stream,
                    items,
                    loop_no,
                })
                .await;
            }
            for (stream, items) in self.envelopes.due(ts, span) {
                self.add_envelope(stream, &items, loop_no).await;
            }
        }
        let ev = &self.ctx.loaded.events[idx as usize];
        let (stream, len) = (ev.stream, ev.json.len());
        match self.opts.destination {
            Destination::LogGroup(_) => {
                if let Some((stream, items)) = self.logs.push(stream, (ts, idx), len) {
                    self.send(Call::Logs {
                        stream,
                        items,
                        loop_no,
                    })
                    .await;
                }
            }
            Destination::Stream(_) => {
                if let Some((stream, items)) = self.envelopes.push(stream, (ts, idx), len) {
                    self.add_envelope(stream, &items, loop_no).await;
                }
            }
        }
    }

    async fn add_envelope(&mut self, stream: u32, items: &[Item], loop_no: u32) {
        let mut records = Vec::new();
        envelope_records(&self.ctx.loaded, stream, items, self.opts, &mut records);
        for r in records {
            if let Some(records) = self.calls.push(r) {
                self.send(Call::Kinesis { records, loop_no }).await;
            }
        }
    }

    fn has_pending(&self) -> bool {
        !self.logs.is_empty() || !self.envelopes.is_empty() || !self.calls.is_empty()
    }

    async fn flush(&mut self, loop_no: u32) {
        for (stream, items) in self.logs.drain() {
            self.send(Call::Logs {
                stream,
                items,
                loop_no,
            })
            .await;
        }
        for (stream, items) in self.envelopes.drain() {
            self.add_envelope(stream, &items, loop_no).await;
        }
        if let Some(records) = self.calls.drain() {
            self.send(Call::Kinesis { records, loop_no }).await;
        }
    }
}

/// Loads the files and replays them; the summary says what was delivered.
pub async fn replay(opts: &ReplayOptions) -> Result<Summary, String> {
    let (paths, by) = (opts.paths.clone(), opts.log_stream_by);
    let loaded = tokio::task::spawn_blocking(move || load(&paths, by))
        .await
        .map_err(|e| format!("loading the files: {e}"))??;
    if loaded.events.is_empty() {
        return Err("no events in the given files".into());
    }
    let sdk =
        crate::kinesis::sdk_config(opts.region.as_deref(), opts.endpoint_url.as_deref()).await;
    let retry_off = aws_config::retry::RetryConfig::disabled();
    let (sink, target, destination) = match &opts.destination {
        Destination::LogGroup(g) => {
            let conf = aws_sdk_cloudwatchlogs::config::Builder::from(&sdk)
                .retry_config(retry_off)
                .build();
            let client = aws_sdk_cloudwatchlogs::Client::from_conf(conf);
            (
                Sink::Logs(LogsSink::new(client, g.clone())),
                "cloudwatch_logs",
                g.clone(),
            )
        }
        Destination::Stream(s) => {
            let conf = aws_sdk_kinesis::config::Builder::from(&sdk)
                .retry_config(retry_off)
                .build();
            let client = aws_sdk_kinesis::Client::from_conf(conf);
            client
                .describe_stream_summary()
                .stream_name(s)
                .send()
                .await
                .map_err(|e| {
                    let (send::SendError::Throttled(m)
                    | send::SendError::Retryable(m)
                    | send::SendError::NotFound(m)
                    | send::SendError::Fatal(m)) = send::classify(&e);
                    format!("Kinesis stream {s:?}: {m}")
                })?;
            (
                Sink::Kinesis(KinesisSink {
                    client,
                    stream: s.clone(),
                }),
                "kinesis",
                s.clone(),
            )
        }
    };
    let sent_log = match &opts.sent_log {
        Some(p) => Some(Mutex::new(BufWriter::new(
            std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?,
        ))),
        None => None,
    };
    let total = loaded.events.len() as u64 * u64::from(opts.loops);
    let progress = if opts.progress {
        let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} events {per_sec} ETA {eta}",
        ) {
            pb.set_style(style);
        }
        pb
    } else {
        ProgressBar::hidden()
    };
    let ctx = Arc::new(Ctx {
        loaded,
        sink,
        retry: opts.retry.clone(),
        stats: Stats::default(),
        sent_log,
        sent_log_error: AtomicBool::new(false),
        progress,
        abort: AtomicBool::new(false),
        error: Mutex::new(None),
        undelivered: AtomicU64::new(0),
    });

    let started_ms = now_ms();
    let started = Instant::now();
    let mut senders = Vec::with_capacity(opts.concurrency);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..opts.concurrency {
        let (tx, mut rx) = mpsc::channel::<Call>(2);
        senders.push(tx);
        let ctx = ctx.clone();
        workers.spawn(async move {
            while let Some(call) = rx.recv().await {
                ctx.handle(call).await;
            }
        });
    }
    let mut p = Producer {
        opts,
        ctx: &ctx,
        logs: Grouper::log_batches(),
        envelopes: Grouper::envelopes(opts.events_per_record),
        last_due_check: i64::MIN,
        due_span: opts.batch_span_ms,
        calls: CallBatcher::default(),
        senders,
        next_worker: 0,
    };
    let events = &ctx.loaded.events;
    let t_first = events.first().map_or(0, |e| e.time_ms);
    let t_last = events.last().map_or(0, |e| e.time_ms);
    let scale = match opts.pace {
        Pace::Speedup(x) => x,
        _ => ((t_last - t_first) as f64 / MAX_TIMESTAMP_SPAN_MS).max(1.0),
    };
    p.due_span = ((opts.batch_span_ms as f64 / scale) as i64).max(1);
    'loops: for loop_no in 0..opts.loops {
        let now0 = now_ms();
        let loop_start = Instant::now();
        let mut last_flush = Instant::now();
        for (i, ev) in events.iter().enumerate() {
            if ctx.abort.load(Relaxed) {
                break 'loops;
            }
            let ts = now0 - ((t_last - ev.time_ms) as f64 / scale) as i64;
            let due = match opts.pace {
                Pace::Fastest => None,
                Pace::Rate(r) => Some(loop_start + Duration::from_secs_f64(i as f64 / r)),
                Pace::Speedup(x) => Some(
                    loop_start
                        + Duration::from_secs_f64((ev.time_ms - t_first) as f64 / 1000.0 / x),
                ),
            };
            if let Some(due) = due {
                loop {
                    let now = Instant::now();
                    if now >= due {
                        break;
                    }
                    if p.has_pending() && now >= last_flush + opts.flush {
                        p.flush(loop_no).await;
                        last_flush = Instant::now();
                        continue;
                    }
                    let wake = if p.has_pending() {
                        due.min(last_flush + opts.flush)
                    } else {
                        due
                    };
                    tokio::time::sleep_until(wake.into()).await;
                }
            }
            p.push(ts, i as u32, loop_no).await;
            if due.is_some() && last_flush.elapsed() >= opts.flush {
                p.flush(loop_no).await;
                last_flush = Instant::now();
            }
        }
        // A batch never mixes loops: timestamps start over.
        p.flush(loop_no).await;
    }
    drop(p);
    while workers.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    ctx.progress.finish_and_clear();
    if let Some(log) = &ctx.sent_log {
        if log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush()
            .is_err()
        {
            ctx.sent_log_error.store(true, Relaxed);
        }
    }
    let finished_ms = now_ms();
    let st = &ctx.stats;
    let events_sent = st.events.load(Relaxed);
    let mut error = ctx.error.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if error.is_none() && ctx.sent_log_error.load(Relaxed) {
        error = Some("the sent-log could not be written".into());
    }
    let rejected = st.rejected.load(Relaxed);
    let mut undelivered = ctx.undelivered.load(Relaxed);
    if error.is_some() {
        // Events never sent after the replay stopped are undelivered too.
        undelivered = undelivered.max(total.saturating_sub(events_sent + rejected));
    }
    Ok(Summary {
        target: target.into(),
        destination,
        files: ctx.loaded.files,
        events_loaded: ctx.loaded.events.len() as u64,
        bad_records: ctx.loaded.bad,
        skipped_oversize: ctx.loaded.skipped_oversize,
        loops: opts.loops,
        events_sent,
        events_rejected: rejected,
        undelivered,
        calls: st.calls.load(Relaxed),
        retries: st.retries.load(Relaxed),
        throttled: st.throttled.load(Relaxed),
        errors: st.errors.load(Relaxed),
        records: st.records.load(Relaxed),
        records_resent: st.records_resent.load(Relaxed),
        bytes: st.bytes.load(Relaxed),
        log_streams: ctx.loaded.streams.len() as u64,
        log_streams_created: st.log_streams_created.load(Relaxed),
        started_at: format_ms(started_ms),
        finished_at: format_ms(finished_ms),
        started_at_ms: started_ms,
        finished_at_ms: finished_ms,
        elapsed_secs: elapsed,
        events_per_sec: if elapsed > 0.0 {
            events_sent as f64 / elapsed
        } else {
            0.0
        },
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_stream_names_are_valid() {
        assert_eq!(log_stream_name("a:b*c/d"), "a_b_c/d");
        assert_eq!(log_stream_name(""), "unknown");
        assert_eq!(log_stream_name(&"x".repeat(600)).len(), 512);
    }

    #[test]
    fn events_get_log_streams_by_session_account_file_or_single() {
        let json = r#"{"eventTime":"2024-08-01T00:00:00Z","eventName":"X","awsRegion":"us-east-1","recipientAccountId":"111122223333","userIdentity":{"type":"AssumedRole","accountId":"111122223333","accessKeyId":"ASIAX","arn":"arn:aws:sts::111122223333:assumed-role/app/i-0abc12345"}}"#;
        let ev = CloudTrailEvent::parse(json).unwrap();
        assert_eq!(
            stream_of(&ev, LogStreamBy::Session, "f"),
            "111122223333/app/i-0abc12345"
        );
        assert_eq!(
            stream_of(&ev, LogStreamBy::Account, "f"),
            "111122223333_CloudTrail_us-east-1"
        );
        assert_eq!(stream_of(&ev, LogStreamBy::File, "f"), "f");
        assert_eq!(stream_of(&ev, LogStreamBy::Single, "f"), "credwatch-replay");
        let lambda = json.replace("i-0abc12345", "my-fn");
        let ev = CloudTrailEvent::parse(&lambda).unwrap();
        assert_eq!(
            stream_of(&ev, LogStreamBy::Session, "f"),
            "111122223333/ASIAX"
        );
        assert_eq!(
            file_stem(Path::new(
                "/x/1_CloudTrail_us-east-1_20240801T0005Z_ab.json.gz"
            )),
            "1_CloudTrail_us-east-1_20240801T0005Z_ab"
        );
    }
}
