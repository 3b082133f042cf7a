//! The findings `run` wrote lately, in memory, newest first: what `GET /findings` serves beside
//! `/metrics`, so that a Grafana table (the Infinity data source) can show what the counters
//! count.
//!
//! [`RecentFindings`] is a bounded ring: the findings sink pushes every finding it writes, the
//! oldest fall off past `metrics.findings_capacity`. At start the ring is filled from the end of
//! the findings file, so a restart does not empty the table. [`query`] parses the filters and
//! shapes the answer; [`access`] decides who may read it (the findings name keys in use,
//! addresses and accounts); [`http`] is the handler.

pub mod access;
pub mod http;
pub mod query;

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::finding::Finding;

/// `metrics.findings_capacity` by default.
pub const DEFAULT_CAPACITY: usize = 1000;
/// The largest `metrics.findings_capacity` (a finding is a few KiB: at most a few hundred MiB).
pub const MAX_CAPACITY: usize = 100_000;
/// The most bytes read back from the end of the findings file at start.
const MAX_PRELOAD_BYTES: u64 = 64 << 20;

/// The most recent findings, newest first, at most `capacity`.
pub struct RecentFindings {
    ring: Mutex<Ring>,
}

struct Ring {
    /// Newest at the front.
    items: VecDeque<Arc<Finding>>,
    capacity: usize,
}

impl Default for RecentFindings {
    fn default() -> Self {
        RecentFindings::new(DEFAULT_CAPACITY)
    }
}

impl RecentFindings {
    pub fn new(capacity: usize) -> RecentFindings {
        RecentFindings {
            ring: Mutex::new(Ring {
                items: VecDeque::new(),
                capacity,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the capacity; the oldest findings past it are dropped.
    pub fn set_capacity(&self, capacity: usize) {
        let mut r = self.lock();
        r.capacity = capacity;
        r.items.truncate(capacity);
    }

    pub fn capacity(&self) -> usize {
        self.lock().capacity
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds findings in the order they were written (the last is the newest).
    pub fn push(&self, findings: &[Finding]) {
        let mut r = self.lock();
        if r.capacity == 0 {
            return;
        }
        for f in findings {
            r.items.push_front(Arc::new(f.clone()));
        }
        let cap = r.capacity;
        r.items.truncate(cap);
    }

    /// Adds findings older than every one held, in the order they were written, as far as
    /// there is room (the ring read back from the file after findings were already pushed
    /// keeps the newest).
    fn push_older(&self, findings: Vec<Finding>) {
        let mut r = self.lock();
        let room = r.capacity.saturating_sub(r.items.len());
        let skip = findings.len().saturating_sub(room);
        for f in findings.into_iter().skip(skip).rev() {
            r.items.push_back(Arc::new(f));
        }
    }

    /// A snapshot, newest first (cheap: the findings are shared, not copied).
    pub fn newest_first(&self) -> Vec<Arc<Finding>> {
        self.lock().items.iter().cloned().collect()
    }

    /// Fills the ring (as far as there is room) with the last findings of a JSON-lines
    /// findings file, reading at most [`MAX_PRELOAD_BYTES`] from its end. Lines that are not
    /// findings (a partial last line) are skipped. Returns how many were added.
    pub fn preload_from_file(&self, path: &Path) -> std::io::Result<usize> {
        let want = self.capacity().saturating_sub(self.len());
        if want == 0 {
            return Ok(0);
        }
        let lines = match last_lines(path, want, MAX_PRELOAD_BYTES) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let found: Vec<Finding> = lines
            .iter()
            .filter_map(|l| serde_json::from_slice::<Finding>(l).ok())
            .collect();
        let n = found.len().min(want);
        self.push_older(found);
        Ok(n)
    }
}

/// The last `n` complete lines of a file (oldest first), reading backwards from its end, at
/// most `max_bytes`.
fn last_lines(path: &Path, n: usize, max_bytes: u64) -> std::io::Result<Vec<Vec<u8>>> {
    const CHUNK: u64 = 64 << 10;
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let floor = len.saturating_sub(max_bytes);
    let mut start = len;
    // Chunks from the end backwards: enough once they hold n line ends before the last one
    // (or the window's start is reached).
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut newlines = 0;
    while start > floor && newlines <= n {
        let from = start.saturating_sub(CHUNK).max(floor);
        let mut chunk = vec![0u8; (start - from) as usize];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut chunk)?;
        newlines += memchr::memchr_iter(b'\n', &chunk).count();
        chunks.push(chunk);
        start = from;
    }
    let buf: Vec<u8> = chunks.into_iter().rev().flatten().collect();
    // A line cut by the window's start is not complete; nor is one without its newline yet.
    let mut text = &buf[..];
    if start > 0 {
        match memchr::memchr(b'\n', text) {
            Some(i) => text = &text[i + 1..],
            None => return Ok(Vec::new()),
        }
    }
    let complete = memchr::memrchr(b'\n', text).map_or(0, |i| i + 1);
    let lines: Vec<Vec<u8>> = text[..complete]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    let skip = lines.len().saturating_sub(n);
    Ok(lines.into_iter().skip(skip).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::test_finding as finding;

    fn ids(r: &RecentFindings) -> Vec<String> {
        r.newest_first().iter().map(|f| f.id.clone()).collect()
    }

    #[test]
    fn the_ring_keeps_the_newest_first_up_to_its_capacity() {
        let r = RecentFindings::new(3);
        r.push(&[finding("a"), finding("b")]);
        r.push(&[finding("c"), finding("d")]);
        assert_eq!(ids(&r), ["d", "c", "b"]);
        r.set_capacity(2);
        assert_eq!(ids(&r), ["d", "c"]);
        r.set_capacity(0);
        r.push(&[finding("e")]);
        assert!(r.is_empty());
    }

    #[test]
    fn the_file_fills_the_room_left_behind_what_was_pushed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("findings.jsonl");
        let mut text = String::new();
        for id in ["a", "b", "c", "d"] {
            text.push_str(&serde_json::to_string(&finding(id)).unwrap());
            text.push('\n');
        }
        // A line cut by kill -9.
        text.push_str("{\"id\":\"e\"");
        std::fs::write(&path, &text).unwrap();

        let r = RecentFindings::new(3);
        r.push(&[finding("new")]);
        assert_eq!(r.preload_from_file(&path).unwrap(), 2);
        assert_eq!(ids(&r), ["new", "d", "c"]);
        assert_eq!(r.preload_from_file(&path).unwrap(), 0, "full");
        let none = RecentFindings::new(3);
        assert_eq!(none.preload_from_file(&dir.path().join("nope")).unwrap(), 0);
    }

    #[test]
    fn last_lines_reads_backwards_across_chunks_and_stops_at_the_byte_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lines");
        let lines: Vec<String> = (0..5000).map(|i| format!("{i:0>40}")).collect();
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let got = last_lines(&path, 3000, u64::MAX).unwrap();
        assert_eq!(got.len(), 3000);
        assert_eq!(got[0], lines[2000].as_bytes());
        assert_eq!(got[2999], lines[4999].as_bytes());
        // 41 bytes a line: 100 bytes hold the last two lines whole.
        let got = last_lines(&path, 10, 100).unwrap();
        assert_eq!(got, [lines[4998].as_bytes(), lines[4999].as_bytes()]);
        let all = last_lines(&path, 10_000, u64::MAX).unwrap();
        assert_eq!(all.len(), 5000);
    }
}
