//! The durable spool of one destination, and the shared dead-letter file.
//!
//! Layout under `<spool_dir>/<destination>/`:
//! - `<finding id>.json`: one pending delivery, written atomically (`.tmp`, fsync, rename, fsync
//!   of the directory) before [`Spool::add`] returns; removed once the destination has answered
//!   with a 2xx (or rejected it for good, see [`DeadLetters`]);
//! - `done.jsonl`: the ids delivered or dead-lettered in the last [`DONE_RETENTION_SECS`], so
//!   that a finding submitted again (the records after the last checkpoint are replayed after a
//!   restart) is not escalated twice. Appended without fsync: losing its tail means at worst one
//!   more delivery of the same id, which the destinations deduplicate.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::finding::Finding;

/// How long a delivered id is remembered: a replay after a restart re-submits the findings made
/// since the last checkpoint (minutes), and the engine already suppresses repeats within its
/// window, so a week is ample.
pub const DONE_RETENTION_SECS: i64 = 7 * 24 * 3600;

/// The done-ledger, in each destination's folder.
pub const DONE_FILE: &str = "done.jsonl";

/// Fsyncs a directory, so that the names created or renamed in it survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename. The caller
/// fsyncs the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = crate::private::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)
}

/// The spool file name of a finding id: the id itself when it is a safe file name (finding ids
/// are hex), else a hash of it.
fn file_name(id: &str) -> String {
    let safe = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if safe {
        format!("{id}.json")
    } else {
        let d = Sha256::digest(id.as_bytes());
        let hex: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("h-{hex}.json")
    }
}

#[derive(Serialize, Deserialize)]
struct SpoolRecord {
    /// Unix milliseconds when it was spooled, then the order of submission: the delivery order.
    spooled_at_ms: i64,
    seq: u64,
    finding: Finding,
}

#[derive(Serialize, Deserialize)]
struct DoneRecord {
    t: i64,
    outcome: String,
    id: String,
}

/// A pending delivery, as handed to the delivery task.
#[derive(Clone)]
pub struct Pending {
    /// Position in the delivery order (in memory; a failed attempt moves it to the back).
    pub seq: u64,
    pub finding: Arc<Finding>,
    /// Failed attempts since this process started.
    pub attempts: u32,
}

struct Entry {
    finding: Arc<Finding>,
    file: PathBuf,
    attempts: u32,
}

struct State {
    order: BTreeMap<u64, String>,
    pending: HashMap<String, (u64, Entry)>,
    done: HashMap<String, i64>,
    done_file: File,
    done_lines: usize,
    next_seq: u64,
    last_prune: i64,
}

/// What [`Spool::open`] found.
#[derive(Default, Debug)]
pub struct OpenReport {
    pub pending: usize,
    /// Files that could not be read back: (file, content, error). The caller dead-letters them.
    pub unreadable: Vec<(PathBuf, String, String)>,
}

/// One destination's spool.
pub struct Spool {
    dir: PathBuf,
    state: Mutex<State>,
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Spool {
    /// Opens (creating) the spool directory and reads back what is pending and what was done.
    /// Leftover `.tmp` files (a write cut short) are removed: their findings were never
    /// acknowledged as spooled.
    pub fn open(dir: &Path) -> io::Result<(Spool, OpenReport)> {
        crate::private::create_dir(dir)?;
        let now = now_secs();
        let done_path = dir.join(DONE_FILE);
        let (ledger, mut done_lines) = read_done(&done_path, now)?;
        let done: HashMap<String, i64> = ledger.into_iter().map(|(id, (t, _))| (id, t)).collect();
        if done_lines > done.len() {
            rewrite_done(&done_path, &done)?;
            done_lines = done.len();
        }

        let mut report = OpenReport::default();
        let mut loaded: Vec<(i64, u64, SpoolRecord, PathBuf)> = Vec::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if name.ends_with(".tmp") {
                fs::remove_file(&path)?;
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let bytes = fs::read(&path)?;
            match serde_json::from_slice::<SpoolRecord>(&bytes) {
                Ok(rec) if done.contains_key(&rec.finding.id) => {
                    // Delivered, then cut before its file was removed.
                    fs::remove_file(&path)?;
                }
                Ok(rec) => loaded.push((rec.spooled_at_ms, rec.seq, rec, path)),
                Err(e) => report.unreadable.push((
                    path,
                    String::from_utf8_lossy(&bytes).into_owned(),
                    e.to_string(),
                )),
            }
        }
        loaded.sort_by_key(|(t, s, _, _)| (*t, *s));
        let mut order = BTreeMap::new();
        let mut pending = HashMap::new();
        let mut next_seq = 0u64;
        for (_, _, rec, file) in loaded {
            let id = rec.finding.id.clone();
            if pending.contains_key(&id) {
                continue;
            }
            order.insert(next_seq, id.clone());
            pending.insert(
                id,
                (
                    next_seq,
                    Entry {
                        finding: Arc::new(rec.finding),
                        file,
                        attempts: 0,
                    },
                ),
            );
            next_seq += 1;
        }
        report.pending = pending.len();
        sync_dir(dir)?;
        let done_file = crate::private::open_append(&done_path, false)?;
        Ok((
            Spool {
                dir: dir.to_path_buf(),
                state: Mutex::new(State {
                    order,
                    pending,
                    done,
                    done_file,
                    done_lines,
                    next_seq,
                    last_prune: now,
                }),
            },
            report,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spools the findings not already pending or done, durably: when it returns `Ok`, every one
    /// of them is on disk and its name fsync'd. Returns how many were added.
    pub fn add<'a>(&self, findings: impl IntoIterator<Item = &'a Finding>) -> io::Result<usize> {
        let mut st = self.lock();
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut added = 0;
        for f in findings {
            if st.pending.contains_key(&f.id) || st.done.contains_key(&f.id) {
                continue;
            }
            let seq = st.next_seq;
            let rec = SpoolRecord {
                spooled_at_ms: now_ms,
                seq,
                finding: f.clone(),
            };
            let bytes = serde_json::to_vec(&rec).map_err(io::Error::other)?;
            let file = self.dir.join(file_name(&f.id));
            write_atomic(&file, &bytes)?;
            st.next_seq += 1;
            st.order.insert(seq, f.id.clone());
            st.pending.insert(
                f.id.clone(),
                (
                    seq,
                    Entry {
                        finding: Arc::new(f.clone()),
                        file,
                        attempts: 0,
                    },
                ),
            );
            added += 1;
        }
        if added > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(added)
    }

    /// Pending deliveries.
    pub fn depth(&self) -> usize {
        self.lock().pending.len()
    }

    /// The next delivery to attempt.
    pub fn head(&self) -> Option<Pending> {
        let st = self.lock();
        let (_, id) = st.order.first_key_value()?;
        let (seq, e) = &st.pending[id];
        Some(Pending {
            seq: *seq,
            finding: e.finding.clone(),
            attempts: e.attempts,
        })
    }

    /// The next `n` deliveries to attempt, oldest first (a batch for the APIs that take many).
    pub fn head_batch(&self, n: usize) -> Vec<Pending> {
        let st = self.lock();
        st.order
            .values()
            .take(n)
            .map(|id| {
                let (seq, e) = &st.pending[id];
                Pending {
                    seq: *seq,
                    finding: e.finding.clone(),
                    attempts: e.attempts,
                }
            })
            .collect()
    }

    /// A failed attempt: the delivery goes to the back of the queue, so that one finding the
    /// destination keeps failing on does not hold up the others.
    pub fn requeue(&self, id: &str) {
        let mut st = self.lock();
        let new_seq = st.next_seq;
        let Some((seq, e)) = st.pending.get_mut(id) else {
            return;
        };
        let old = *seq;
        *seq = new_seq;
        e.attempts += 1;
        st.order.remove(&old);
        st.order.insert(new_seq, id.to_string());
        st.next_seq += 1;
    }

    /// The delivery is finished (`delivered` or `dead_lettered`): remembered as done, then its
    /// file removed.
    pub fn finish(&self, id: &str, outcome: &str) -> io::Result<()> {
        let mut st = self.lock();
        let now = now_secs();
        let line = serde_json::to_string(&DoneRecord {
            t: now,
            outcome: outcome.into(),
            id: id.into(),
        })
        .map_err(io::Error::other)?;
        writeln!(st.done_file, "{line}")?;
        st.done.insert(id.to_string(), now);
        st.done_lines += 1;
        if let Some((seq, e)) = st.pending.remove(id) {
            st.order.remove(&seq);
            match fs::remove_file(&e.file) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        // Forget expired ids now and then; compact the file when it is mostly expired lines.
        if now - st.last_prune > 3600 {
            st.last_prune = now;
            st.done.retain(|_, t| now - *t < DONE_RETENTION_SECS);
            if st.done_lines > 2 * st.done.len() + 1024 {
                let path = self.dir.join(DONE_FILE);
                rewrite_done(&path, &st.done)?;
                st.done_file = crate::private::open_append(&path, false)?;
                st.done_lines = st.done.len();
            }
        }
        Ok(())
    }
}

/// The done-ledger at `path`: each id done within [`DONE_RETENTION_SECS`] of `now`, with its time
/// and outcome, and the number of lines read. A missing ledger is empty.
/// Done ids with (time, outcome).
type Ledger = HashMap<String, (i64, String)>;

fn read_done(path: &Path, now: i64) -> io::Result<(Ledger, usize)> {
    let mut done = HashMap::new();
    let mut lines = 0usize;
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((done, 0)),
        Err(e) => return Err(e),
    };
    for line in BufReader::new(f).lines() {
        let line = line?;
        lines += 1;
        if let Ok(r) = serde_json::from_str::<DoneRecord>(&line) {
            if now - r.t < DONE_RETENTION_SECS {
                done.insert(r.id, (r.t, r.outcome));
            }
        }
    }
    Ok((done, lines))
}

/// What a spool folder holds, read without opening the spool nor changing anything (for
/// `hunt --escalate --dry-run`).
#[derive(Debug, Default)]
pub struct Peek {
    /// Ids done (delivered, dead-lettered, or `done` once the ledger was compacted), with the
    /// outcome.
    pub done: HashMap<String, String>,
    /// Ids spooled and not done.
    pub pending: std::collections::HashSet<String>,
}

/// Reads a destination's spool folder as [`Spool::open`] would, changing nothing. A missing
/// folder is an empty spool; unreadable spool files are left out.
pub fn peek(dir: &Path) -> io::Result<Peek> {
    let mut out = Peek::default();
    if !dir.is_dir() {
        return Ok(out);
    }
    let (done, _) = read_done(&dir.join(DONE_FILE), now_secs())?;
    out.done = done.into_iter().map(|(id, (_, o))| (id, o)).collect();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Ok(bytes) = fs::read(&path) else {
            continue;
        };
        if let Ok(rec) = serde_json::from_slice::<SpoolRecord>(&bytes) {
            if !out.done.contains_key(&rec.finding.id) {
                out.pending.insert(rec.finding.id);
            }
        }
    }
    Ok(out)
}

fn rewrite_done(path: &Path, done: &HashMap<String, i64>) -> io::Result<()> {
    let mut out = Vec::new();
    let mut entries: Vec<(&String, &i64)> = done.iter().collect();
    entries.sort_by_key(|(id, t)| (**t, id.as_str()));
    for (id, t) in entries {
        let line = serde_json::to_string(&DoneRecord {
            t: *t,
            outcome: "done".into(),
            id: id.clone(),
        })
        .map_err(io::Error::other)?;
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    write_atomic(path, &out)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// `<spool_dir>/dead-letter.jsonl`: deliveries given up on, one JSON object a line, fsync'd
/// before the spool file is removed.
pub struct DeadLetters {
    path: PathBuf,
    lock: Mutex<()>,
}

impl DeadLetters {
    pub fn new(path: PathBuf) -> DeadLetters {
        DeadLetters {
            path,
            lock: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&self, record: &serde_json::Value) -> io::Result<()> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut f = crate::private::open_append(&self.path, false)?;
        f.write_all(&line)?;
        f.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::test_finding as finding;

    #[test]
    fn pending_and_done_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("webhook-0");
        let (s, r) = Spool::open(&d).unwrap();
        assert_eq!(r.pending, 0);
        let fs_: Vec<Finding> = ["a", "b", "c", "a"].iter().map(|i| finding(i)).collect();
        assert_eq!(s.add(&fs_).unwrap(), 3);
        assert_eq!(s.add(&fs_).unwrap(), 0, "pending ids are not spooled twice");
        s.requeue("a");
        assert_eq!(s.head().unwrap().finding.id, "b");
        s.finish("b", "delivered").unwrap();
        // A leftover temporary file from a cut write is dropped; an unreadable file reported.
        fs::write(d.join("zz.json.tmp"), b"{").unwrap();
        fs::write(d.join("bad.json"), b"not json").unwrap();
        drop(s);

        let (s, r) = Spool::open(&d).unwrap();
        assert_eq!(r.pending, 2);
        assert_eq!(r.unreadable.len(), 1);
        assert!(!d.join("zz.json.tmp").exists());
        // Order on disk is the submission order.
        assert_eq!(s.head().unwrap().finding.id, "a");
        assert_eq!(
            s.add(&[finding("b")]).unwrap(),
            0,
            "done ids are not spooled again"
        );
        assert_eq!(s.depth(), 2);
    }

    #[test]
    fn unsafe_ids_get_hashed_file_names() {
        assert_eq!(file_name("0123abcd"), "0123abcd.json");
        let n = file_name("../../etc/passwd");
        assert!(n.starts_with("h-") && !n.contains('/'));
    }
}
