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

/// Hunts over files; findings and bad records go to the callbacks as they are found.
pub fn hunt_files(
    engine: &Engine,
    files: &[PathBuf],
    limits: &Limits,
    mut on_finding: impl FnMut(&Finding),
    mut on_bad: impl FnMut(&BadRecord),
) -> HuntSummary {
    let mut summary = HuntSummary::default();
    let mut since_sweep = 0u64;
    for path in files {
        summary.files += 1;
        let prefix = path.display().to_string();
        let mut bad = |b: BadRecord, summary: &mut HuntSummary| {
            *summary.bad.entry(b.kind).or_default() += 1;
            on_bad(&b);
        };
        let bytes = match read_capped(path, limits) {
            Ok(b) => b,
            Err(b) => {
                bad(b, &mut summary);
                continue;
            }
        };
        let mut file_bad = Vec::new();
        let mut event_bad = Vec::new();
        let mut found = Vec::new();
        let mut events = 0u64;
        let result = decode_file(
            &bytes,
            limits,
            &prefix,
            |raw| {
                events += 1;
                match process_event(engine, &raw, &prefix, limits) {
                    Ok((fs, _)) => found.extend(fs),
                    Err(b) => event_bad.push(b),
                }
            },
            |b| file_bad.push(b),
        );
        match result {
            Ok(format) => *summary.formats.entry(format.as_str()).or_default() += 1,
            Err(b) => file_bad.push(b),
        }
        summary.events += events;
        file_bad.append(&mut event_bad);
        for b in file_bad {
            bad(b, &mut summary);
        }
        for f in &found {
            *summary.findings.entry(f.rule.clone()).or_default() += 1;
            on_finding(f);
        }
        since_sweep += events;
        if since_sweep >= SWEEP_EVERY {
            since_sweep = 0;
            // Files come in path order, which is not time order across accounts and regions (and
            // a folder may be in any order): nothing expires by time during a hunt, so the order
            // cannot change what is found. Only the `max_sessions` and book caps apply.
            engine.sweep_at(0);
        }
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
