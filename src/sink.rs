//! Where findings and set-aside records go when running: JSON-lines files (or stdout).
//!
//! The findings file is also the record of what was already said: after a restart the lines
//! written since the last checkpoint are read back, so replaying those records repeats no finding.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use serde::Serialize;

use crate::decode::BadRecord;
use crate::finding::Finding;
use crate::recent::RecentFindings;

/// Findings as JSON lines, each id at most once.
pub struct FindingsSink {
    out: Output,
    path: Option<PathBuf>,
    offset: u64,
    /// Ids written since the last checkpoint (older ones are covered by the engine's snapshot).
    recent: HashSet<String>,
    /// Ids a previous run wrote that this run's engine has not found again yet. Shard positions
    /// are held until candidates settle, so after a restart the records behind such a finding
    /// are read again and it is found again later, perhaps after a checkpoint: until then its
    /// id is carried from checkpoint to checkpoint.
    inherited: HashSet<String>,
    /// Where what is written is also kept for `GET /findings`.
    recent_findings: Option<Arc<RecentFindings>>,
}

/// The most inherited ids carried (findings are rare; this bounds a pathological file).
const MAX_INHERITED: usize = 100_000;

impl FindingsSink {
    /// Standard output (no restart protection beyond the engine snapshot).
    pub fn stdout() -> FindingsSink {
        FindingsSink {
            out: Output::Stdout,
            path: None,
            offset: 0,
            recent: HashSet::new(),
            inherited: HashSet::new(),
            recent_findings: None,
        }
    }

    /// Opens (or creates) `path` for appending. Lines after `checkpoint_offset` are findings
    /// written after the last checkpoint: their ids are remembered. A partial last line (a
    /// write cut by `kill -9`) is removed.
    pub fn open(
        path: &Path,
        checkpoint_offset: u64,
        inherited: &[String],
    ) -> std::io::Result<FindingsSink> {
        let mut file = crate::private::open_append(path, true)?;
        let len = file.metadata()?.len();
        let start = checkpoint_offset.min(len);
        file.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::new();
        Read::by_ref(&mut file)
            .take(len - start)
            .read_to_end(&mut tail)?;
        let complete = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if complete < tail.len() {
            file.set_len(start + complete as u64)?;
        }
        let mut inherited: HashSet<String> = inherited.iter().cloned().collect();
        for line in BufReader::new(&tail[..complete]).lines() {
            let line = line?;
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if let Some(id) = v.get("id").and_then(|i| i.as_str()) {
                    inherited.insert(id.to_string());
                }
            }
        }
        Ok(FindingsSink {
            offset: start + complete as u64,
            out: Output::File(file),
            path: Some(path.to_path_buf()),
            recent: HashSet::new(),
            inherited,
            recent_findings: None,
        })
    }

    /// Every finding written from now on is also pushed into `recent` (`GET /findings`).
    pub fn recording_into(mut self, recent: Arc<RecentFindings>) -> FindingsSink {
        self.recent_findings = Some(recent);
        self
    }

    /// Writes the findings not written before, all or none (a write that fails part way, on a
    /// full disk, is cut back off the file), and flushes. Returns those written (and pushes
    /// them into the recent findings, once they are in the file). After an error nothing has
    /// changed: the same call can be made again.
    pub fn write(&mut self, findings: &[Finding]) -> std::io::Result<Vec<Finding>> {
        let mut written = Vec::new();
        let mut again = Vec::new();
        let mut buf = Vec::new();
        for f in findings {
            // Found again: from now on the engine's snapshot covers it.
            if self.recent.contains(&f.id) || self.inherited.contains(&f.id) {
                again.push(&f.id);
                continue;
            }
            if written.iter().any(|w: &Finding| w.id == f.id) {
                continue;
            }
            serde_json::to_writer(&mut buf, f).map_err(std::io::Error::other)?;
            buf.push(b'\n');
            written.push(f.clone());
        }
        if !buf.is_empty() {
            self.out.append(&buf, self.offset)?;
            self.offset += buf.len() as u64;
        }
        for id in again {
            self.inherited.remove(id);
            self.recent.insert(id.clone());
        }
        for f in &written {
            self.recent.insert(f.id.clone());
        }
        if let Some(r) = &self.recent_findings {
            r.push(&written);
        }
        Ok(written)
    }

    /// The file length so far (what a checkpoint records).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// After a checkpoint, the engine snapshot covers everything written so far.
    pub fn checkpointed(&mut self) {
        self.recent.clear();
    }

    /// Ids of a previous run not found again yet (saved in the checkpoint).
    pub fn inherited(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inherited.iter().take(MAX_INHERITED).cloned().collect();
        v.sort();
        v
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

/// Where a sink writes.
enum Output {
    Stdout,
    File(File),
}

impl Output {
    /// Appends `buf` whole, or not at all: when a write fails part way (a full disk), the file
    /// is cut back to `len`, its length before, so that no partial line is left for the next
    /// write to run into.
    fn append(&mut self, buf: &[u8], len: u64) -> std::io::Result<()> {
        match self {
            Output::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(buf)?;
                out.flush()
            }
            Output::File(f) => {
                let res = f.write_all(buf).and_then(|()| f.flush());
                if res.is_err() {
                    // Best effort: when even this fails, `FindingsSink::open` removes a
                    // partial last line after a restart.
                    let _ = f.set_len(len);
                }
                res
            }
        }
    }
}

/// A set-aside record as written to the dead-letter file.
#[derive(Debug, Serialize)]
pub struct DeadLetter<'a> {
    pub kind: &'static str,
    pub position: &'a str,
    pub detail: &'a str,
    pub shard_id: &'a str,
    pub sequence_number: &'a str,
    /// The record's bytes (at most [`MAX_DEAD_LETTER_BYTES`]), for a whole record set aside.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub data_truncated: bool,
}

pub const MAX_DEAD_LETTER_BYTES: usize = 1 << 20;

/// Dead letters as JSON lines (to a file, or only to the log when none is configured).
pub struct DeadLetterSink {
    out: Option<(Output, u64)>,
}

impl DeadLetterSink {
    pub fn open(path: Option<&Path>) -> std::io::Result<DeadLetterSink> {
        let out = match path {
            Some(p) => {
                let f = crate::private::open_append(p, false)?;
                let len = f.metadata()?.len();
                Some((Output::File(f), len))
            }
            None => None,
        };
        Ok(DeadLetterSink { out })
    }

    /// Appends one bad record with its shard and sequence number, whole or not at all (the same
    /// call can be made again after an error); logs nothing (see [`log_set_aside`]).
    pub fn append(
        &mut self,
        bad: &BadRecord,
        shard_id: &str,
        sequence_number: &str,
        data: Option<&[u8]>,
    ) -> std::io::Result<()> {
        let Some((out, len)) = self.out.as_mut() else {
            return Ok(());
        };
        let letter = DeadLetter {
            kind: bad.kind.as_str(),
            position: &bad.position,
            detail: &bad.detail,
            shard_id,
            sequence_number,
            data_base64: data.map(|d| {
                base64::engine::general_purpose::STANDARD
                    .encode(&d[..d.len().min(MAX_DEAD_LETTER_BYTES)])
            }),
            data_truncated: data.is_some_and(|d| d.len() > MAX_DEAD_LETTER_BYTES),
        };
        let mut line = serde_json::to_vec(&letter).map_err(std::io::Error::other)?;
        line.push(b'\n');
        out.append(&line, *len)?;
        *len += line.len() as u64;
        Ok(())
    }
}

/// The log line of a record set aside.
pub fn log_set_aside(bad: &BadRecord) {
    tracing::warn!(
        kind = bad.kind.as_str(),
        position = %bad.position,
        detail = %bad.detail,
        "bad record set aside"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::test_finding as finding;

    #[test]
    fn findings_written_after_the_checkpoint_are_not_written_again_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.jsonl");
        let mut s = FindingsSink::open(&path, 0, &[]).unwrap();
        s.write(&[finding("a")]).unwrap();
        let checkpoint = s.offset();
        s.checkpointed();
        s.write(&[finding("b")]).unwrap();
        drop(s);
        // A write cut in the middle by kill -9.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"id\":\"c\"")
            .unwrap();

        let mut s = FindingsSink::open(&path, checkpoint, &[]).unwrap();
        let written = s.write(&[finding("b"), finding("c")]).unwrap();
        assert_eq!(
            written.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(),
            vec!["c"]
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let ids: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(ids, vec!["a", "b", "c"]);
    }
}
