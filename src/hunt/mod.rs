//! `credwatch hunt`: the engine over historical CloudTrail, from files and folders on disk and
//! from S3 buckets (`s3://bucket/prefix`, [`s3`]), in one hunt.
//!
//! ```text
//!  paths ──collect_files──┐                       ┌─> decode thread 1 ─┐
//!                         ├─> objects ─> fetch ───┼─> ...              ├─> reorder ─> findings
//!  s3:// ──s3::list───────┘   (select)  (bounded, └─> decode thread N ─┘   (object order)
//!          (pruned by --since/--until/   in order)        shared Engine
//!           --accounts/--regions)
//! ```
//!
//! Objects are fetched ahead with bounded concurrency and handed to the decode threads in
//! order; each object's format is recognised from its bytes, and every event the [`Selection`]
//! admits goes through the same engine `run` uses. An object that cannot be fetched or decoded
//! is a bad record; the hunt goes on. Progress goes to stderr ([`progress`]). With `--escalate`
//! the findings are then sent through the configured destinations ([`escalate`]).

pub mod escalate;
pub mod progress;
pub mod s3;
pub mod select;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use progress::{Progress, ProgressMode};
pub use select::Selection;

use crate::app::process_event_parsed;
use crate::decode::cloudtrail_file::decode_file_parsed;
use crate::decode::{BadKind, BadRecord, Limits};
use crate::engine::Engine;
use crate::finding::Finding;

/// Counts for the summary.
#[derive(Debug, Default, Clone)]
pub struct HuntSummary {
    pub files: u64,
    pub events: u64,
    /// Events outside the [`Selection`] (read, not judged).
    pub skipped: u64,
    /// Bytes read (compressed, as stored).
    pub bytes: u64,
    pub formats: BTreeMap<&'static str, u64>,
    pub bad: BTreeMap<BadKind, u64>,
    pub findings: BTreeMap<String, u64>,
}

impl HuntSummary {
    pub fn total_findings(&self) -> u64 {
        self.findings.values().sum()
    }

    pub fn total_bad(&self) -> u64 {
        self.bad.values().sum()
    }

    /// The multi-line summary printed to stderr.
    pub fn render(&self) -> String {
        let join = |m: Vec<(String, u64)>| {
            if m.is_empty() {
                "none".to_string()
            } else {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        };
        format!(
            "files read: {}\nbytes read: {}\nevents read: {}{}\nformats: {}\nbad records: {} ({})\nfindings: {} ({})\n",
            self.files,
            self.bytes,
            self.events,
            if self.skipped > 0 {
                format!(" ({} outside --since/--until/--accounts/--regions)", self.skipped)
            } else {
                String::new()
            },
            join(self.formats.iter().map(|(k, v)| (k.to_string(), *v)).collect()),
            self.total_bad(),
            join(self.bad.iter().map(|(k, v)| (k.as_str().to_string(), *v)).collect()),
            self.total_findings(),
            join(self.findings.iter().map(|(k, v)| (k.clone(), *v)).collect()),
        )
    }
}

/// Every regular file under the given paths, recursively, in path order.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for p in paths {
        if !p.exists() {
            return Err(format!("{}: no such file or directory", p.display()));
        }
        for entry in walkdir::WalkDir::new(p)
            .sort_by_file_name()
            .follow_links(true)
        {
            let entry = entry.map_err(|e| format!("{}: {e}", p.display()))?;
            if entry.file_type().is_file() {
                files.push(entry.into_path());
            }
        }
    }
    Ok(files)
}

/// How often (in events) the hunt sweeps expired sessions.
const SWEEP_EVERY: u64 = 100_000;

/// One object to hunt over: a local file or an S3 object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Local { path: PathBuf, size: u64 },
    S3(s3::S3Object),
}

impl Object {
    /// A local file (its size read now; 0 when it cannot be).
    pub fn local(path: PathBuf) -> Object {
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        Object::Local { path, size }
    }

    /// How bad records and findings name it: the path, or `s3://bucket/key`.
    pub fn name(&self) -> String {
        match self {
            Object::Local { path, .. } => path.display().to_string(),
            Object::S3(o) => format!("s3://{}/{}", o.bucket, o.key),
        }
    }

    pub fn size(&self) -> u64 {
        match self {
            Object::Local { size, .. } => *size,
            Object::S3(o) => o.size,
        }
    }
}

/// Fetches objects' bytes: local files on a blocking thread, S3 objects with the client.
pub struct Fetcher {
    runtime: tokio::runtime::Runtime,
    s3: Option<aws_sdk_s3::Client>,
    /// Objects fetched ahead of the decode threads (and S3 requests in flight).
    pub read_ahead: usize,
    /// Attempts for an S3 object whose body is cut off.
    pub max_attempts: u32,
}

impl Fetcher {
    /// `runtime` runs the fetches (and built `s3`, when given).
    pub fn with_runtime(
        runtime: tokio::runtime::Runtime,
        s3: Option<aws_sdk_s3::Client>,
        read_ahead: usize,
        max_attempts: u32,
    ) -> Fetcher {
        Fetcher {
            runtime,
            s3,
            read_ahead: read_ahead.max(1),
            max_attempts,
        }
    }

    fn new(s3: Option<aws_sdk_s3::Client>, read_ahead: usize) -> std::io::Result<Fetcher> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        Ok(Fetcher::with_runtime(runtime, s3, read_ahead.max(4), 3))
    }

    /// The runtime, for listing S3 before the hunt.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }

    async fn fetch(&self, object: &Object, limits: &Limits) -> Result<Vec<u8>, BadRecord> {
        match object {
            Object::Local { path, .. } => {
                let (path, limits) = (path.clone(), *limits);
                tokio::task::spawn_blocking(move || read_capped(&path, &limits))
                    .await
                    .unwrap_or_else(|e| {
                        Err(BadRecord::new(BadKind::Io, object.name(), e.to_string()))
                    })
            }
            Object::S3(o) => match &self.s3 {
                Some(client) => {
                    s3::get(client, o, limits.max_decompressed_bytes, self.max_attempts).await
                }
                None => Err(BadRecord::new(
                    BadKind::Io,
                    object.name(),
                    "no S3 client configured",
                )),
            },
        }
    }
}

/// How a hunt runs.
#[derive(Debug, Clone, Copy)]
pub struct HuntOptions<'a> {
    pub limits: Limits,
    /// Decode threads.
    pub threads: usize,
    /// Which events are judged.
    pub selection: &'a Selection,
    /// Counters for [`progress::report`], moved as objects are done.
    pub progress: Option<&'a Progress>,
}

/// What one object gave.
#[derive(Default)]
struct FileResult {
    events: u64,
    skipped: u64,
    bytes: u64,
    format: Option<&'static str>,
    bad: Vec<BadRecord>,
    found: Vec<Finding>,
}

/// Decodes and judges one object's bytes.
fn hunt_bytes(
    engine: &Engine,
    name: &str,
    bytes: Result<Vec<u8>, BadRecord>,
    limits: &Limits,
    selection: &Selection,
) -> FileResult {
    let mut r = FileResult::default();
    let bytes = match bytes {
        Ok(b) => b,
        Err(b) => {
            r.bad.push(b);
            return r;
        }
    };
    r.bytes = bytes.len() as u64;
    let mut event_bad = Vec::new();
    let result = decode_file_parsed(
        &bytes,
        limits,
        name,
        |raw, parsed| {
            r.events += 1;
            let admitted = match parsed {
                Some(ev) => selection.admits_event(ev),
                None => selection.admits(&raw.json),
            };
            if !admitted {
                r.skipped += 1;
                return;
            }
            match process_event_parsed(engine, &raw, parsed, name, limits) {
                Ok((fs, _)) => r.found.extend(fs),
                Err(b) => event_bad.push(b),
            }
        },
        |b| r.bad.push(b),
    );
    match result {
        Ok(format) => r.format = Some(format.as_str()),
        Err(b) => r.bad.push(b),
    }
    r.bad.append(&mut event_bad);
    r
}

/// The number of threads `hunt` uses by default: one per core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Hunts over local files with `threads` threads, every event judged (see [`hunt_objects`]).
pub fn hunt_files(
    engine: &Engine,
    files: &[PathBuf],
    limits: &Limits,
    threads: usize,
    on_finding: impl FnMut(&Finding),
    on_bad: impl FnMut(&BadRecord),
) -> HuntSummary {
    let objects: Vec<Object> = files.iter().cloned().map(Object::local).collect();
    let fetcher = Fetcher::new(None, threads * 2).expect("a tokio runtime for reading files");
    let all = Selection::default();
    let opts = HuntOptions {
        limits: *limits,
        threads,
        selection: &all,
        progress: None,
    };
    hunt_objects(engine, &objects, &fetcher, &opts, on_finding, on_bad)
}

/// Hunts over objects with `opts.threads` threads sharing one engine; findings and bad records
/// go to the callbacks object by object, in the order given, as soon as every earlier object is
/// done. Objects are fetched ahead (`fetcher.read_ahead` at a time) in that order.
///
/// Any number of threads gives the same findings in the same order: each thread takes the next
/// object, the engine is shared, and what a session's events establish does not depend on the
/// order they come in (a second origin is only a candidate until everything has arrived, then
/// judged on the whole set of its events: `src/settle`). Objects come in path or key order,
/// which is not time order across accounts and regions either, so nothing expires by time
/// during a hunt; only the `max_sessions` and book caps apply.
pub fn hunt_objects(
    engine: &Engine,
    objects: &[Object],
    fetcher: &Fetcher,
    opts: &HuntOptions<'_>,
    mut on_finding: impl FnMut(&Finding),
    mut on_bad: impl FnMut(&BadRecord),
) -> HuntSummary {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let limits = &opts.limits;
    let mut summary = HuntSummary::default();
    let mut take = |r: FileResult, summary: &mut HuntSummary| {
        summary.files += 1;
        summary.events += r.events;
        summary.skipped += r.skipped;
        summary.bytes += r.bytes;
        if let Some(f) = r.format {
            *summary.formats.entry(f).or_default() += 1;
        }
        for b in r.bad {
            *summary.bad.entry(b.kind).or_default() += 1;
            on_bad(&b);
        }
        for f in &r.found {
            *summary.findings.entry(f.rule.clone()).or_default() += 1;
            on_finding(f);
        }
    };
    let since_sweep = AtomicU64::new(0);
    let swept = |events: u64| {
        if since_sweep.fetch_add(events, Relaxed) + events >= SWEEP_EVERY {
            since_sweep.store(0, Relaxed);
            engine.sweep_at(0);
        }
    };
    let threads = opts.threads.clamp(1, objects.len().max(1));
    // Fetched in order, `read_ahead` at a time, into a channel as long: memory stays bounded.
    let ahead = fetcher.read_ahead.max(1);
    let (fetched_tx, fetched_rx) =
        tokio::sync::mpsc::channel::<(usize, Result<Vec<u8>, BadRecord>)>(ahead);
    let fetched_rx = std::sync::Mutex::new(fetched_rx);
    let (tx, rx) = std::sync::mpsc::channel::<(usize, FileResult)>();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            // Owned here: dropped when everything is fetched, which ends the decode threads.
            let fetched_tx = fetched_tx;
            fetcher.runtime.block_on(async {
                use futures::StreamExt;
                let mut results = futures::stream::iter(objects.iter().enumerate())
                    .map(|(i, o)| async move { (i, fetcher.fetch(o, limits).await) })
                    .buffered(ahead);
                while let Some(item) = results.next().await {
                    if fetched_tx.send(item).await.is_err() {
                        break;
                    }
                }
            })
        });
        for _ in 0..threads {
            let (tx, swept, fetched_rx) = (tx.clone(), &swept, &fetched_rx);
            scope.spawn(move || loop {
                let next = fetched_rx.lock().map_or(None, |mut rx| rx.blocking_recv());
                let Some((i, bytes)) = next else { break };
                let r = hunt_bytes(engine, &objects[i].name(), bytes, limits, opts.selection);
                swept(r.events);
                if let Some(p) = opts.progress {
                    p.object_done(r.bytes, r.events);
                    p.findings.fetch_add(r.found.len() as u64, Relaxed);
                }
                if tx.send((i, r)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        // Handed on in object order, each as soon as every earlier object is done.
        let mut pending = BTreeMap::new();
        let mut want = 0;
        for (i, r) in rx {
            pending.insert(i, r);
            while let Some(r) = pending.remove(&want) {
                take(r, &mut summary);
                want += 1;
            }
        }
    });
    // Everything has arrived: every candidate is final.
    for f in engine.settle(crate::settle::SettleAt::END) {
        *summary.findings.entry(f.rule.clone()).or_default() += 1;
        if let Some(p) = opts.progress {
            p.findings.fetch_add(1, Relaxed);
        }
        on_finding(&f);
    }
    summary
}

fn read_capped(path: &Path, limits: &Limits) -> Result<Vec<u8>, BadRecord> {
    let io = |detail: String| BadRecord {
        kind: BadKind::Io,
        position: path.display().to_string(),
        detail,
    };
    let meta = std::fs::metadata(path).map_err(|e| io(e.to_string()))?;
    if meta.len() as usize > limits.max_decompressed_bytes {
        return Err(BadRecord {
            kind: BadKind::Oversize,
            position: path.display().to_string(),
            detail: format!(
                "file of {} bytes is over input.max_decompressed_bytes = {}",
                meta.len(),
                limits.max_decompressed_bytes
            ),
        });
    }
    std::fs::read(path).map_err(|e| io(e.to_string()))
}
