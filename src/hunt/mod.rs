//! `credwatch hunt`: the engine over historical CloudTrail files and folders.
//!
//! Files are read in path order (CloudTrail's S3 layout sorts by time), each file's format is
//! recognised from its bytes, and every event goes through the same engine `run` uses. A file
//! that cannot be read or decoded is a bad record; the hunt goes on. With `--escalate` the
//! findings are then sent through the configured destinations ([`escalate`]).

pub mod escalate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::app::process_event;
use crate::decode::cloudtrail_file::decode_file;
use crate::decode::{BadKind, BadRecord, Limits};
use crate::engine::Engine;
use crate::finding::Finding;

/// Counts for the summary.
#[derive(Debug, Default, Clone)]
pub struct HuntSummary {
    pub files: u64,
    pub events: u64,
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
            "files read: {}\nevents read: {}\nformats: {}\nbad records: {} ({})\nfindings: {} ({})\n",
            self.files,
            self.events,
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

/// What one file gave.
#[derive(Default)]
struct FileResult {
    events: u64,
    format: Option<&'static str>,
    bad: Vec<BadRecord>,
    found: Vec<Finding>,
}

/// Reads, decodes and judges one file.
fn hunt_file(engine: &Engine, path: &Path, limits: &Limits) -> FileResult {
    let mut r = FileResult::default();
    let prefix = path.display().to_string();
    let bytes = match read_capped(path, limits) {
        Ok(b) => b,
        Err(b) => {
            r.bad.push(b);
            return r;
        }
    };
    let mut event_bad = Vec::new();
    let result = decode_file(
        &bytes,
        limits,
        &prefix,
        |raw| {
            r.events += 1;
            match process_event(engine, &raw, &prefix, limits) {
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

/// Hunts over files with `threads` threads sharing one engine; findings and bad records go to
/// the callbacks file by file, in path order, as soon as every earlier file is done.
///
/// Any number of threads gives the same findings in the same order: each thread takes the next
/// file, the engine is shared, and what a session's events establish does not depend on the
/// order they come in (a second origin is only a candidate until everything has arrived, then
/// judged on the whole set of its events: `src/settle`). Files come in path order, which is not
/// time order across accounts and regions either, so nothing expires by time during a hunt;
/// only the `max_sessions` and book caps apply.
pub fn hunt_files(
    engine: &Engine,
    files: &[PathBuf],
    limits: &Limits,
    threads: usize,
    mut on_finding: impl FnMut(&Finding),
    mut on_bad: impl FnMut(&BadRecord),
) -> HuntSummary {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
    let mut summary = HuntSummary::default();
    let mut take = |r: FileResult, summary: &mut HuntSummary| {
        summary.files += 1;
        summary.events += r.events;
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
    let threads = threads.clamp(1, files.len().max(1));
    if threads == 1 {
        for path in files {
            let r = hunt_file(engine, path, limits);
            swept(r.events);
            take(r, &mut summary);
        }
    } else {
        let next = AtomicUsize::new(0);
        let (tx, rx) = std::sync::mpsc::channel::<(usize, FileResult)>();
        std::thread::scope(|scope| {
            for _ in 0..threads {
                let (tx, next, swept) = (tx.clone(), &next, &swept);
                scope.spawn(move || loop {
                    let i = next.fetch_add(1, Relaxed);
                    let Some(path) = files.get(i) else { break };
                    let r = hunt_file(engine, path, limits);
                    swept(r.events);
                    if tx.send((i, r)).is_err() {
                        break;
                    }
                });
            }
            drop(tx);
            // Handed on in file order, each as soon as every earlier file is done.
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
    }
    // Everything has arrived: every candidate is final.
    for f in engine.settle(crate::settle::SettleAt::END) {
        *summary.findings.entry(f.rule.clone()).or_default() += 1;
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
