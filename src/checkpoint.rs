//! Local checkpoints: per-shard positions, the findings-file offset and a snapshot of the engine,
//! in one file written to a temporary name, synced, then renamed over the old one. A restart,
//! also after `kill -9`, resumes right after the last record whose findings were written.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::EngineSnapshot;
use crate::kinesis::sequence::SequenceNumber;

pub const FILE_NAME: &str = "checkpoint.json";

/// Where a shard stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCheckpoint {
    /// The last record processed (its findings written); reading resumes after it.
    pub sequence_number: Option<SequenceNumber>,
    /// The shard reached SHARD_END and every record in it was processed.
    pub finished: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    pub stream: String,
    pub written_at: String,
    pub shards: BTreeMap<String, ShardCheckpoint>,
    /// Length of the findings file when the checkpoint was taken.
    pub findings_offset: u64,
    /// Findings written by an earlier run that this run has not found again yet (their records
    /// are read again after a restart, and settle later): never written twice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings_pending_rediscovery: Vec<String>,
    pub engine: EngineSnapshot,
}

pub struct CheckpointStore {
    dir: PathBuf,
}

impl CheckpointStore {
    pub fn new(dir: &Path) -> std::io::Result<CheckpointStore> {
        crate::private::create_dir(dir)?;
        Ok(CheckpointStore {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// The last checkpoint, if any. A checkpoint that cannot be read is an error, not a fresh
    /// start: silently starting over would re-read the stream and forget every lock.
    pub fn load(&self) -> anyhow::Result<Option<Checkpoint>> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
        };
        let cp: Checkpoint = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: not a credwatch checkpoint: {e}", path.display()))?;
        Ok(Some(cp))
    }

    /// Writes atomically: temporary file, fsync, rename, fsync of the folder.
    pub fn save(&self, cp: &Checkpoint) -> std::io::Result<()> {
        let tmp = self.dir.join(format!("{FILE_NAME}.tmp"));
        let written = (|| {
            let mut f = crate::private::create(&tmp)?;
            let mut w = std::io::BufWriter::new(&mut f);
            serde_json::to_writer(&mut w, cp).map_err(std::io::Error::other)?;
            w.flush()?;
            drop(w);
            f.sync_all()?;
            fs::rename(&tmp, self.path())
        })();
        if let Err(e) = written {
            // A partial file on a full disk would keep the space the next attempt needs.
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_round_trips_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path()).unwrap();
        assert!(store.load().unwrap().is_none());
        let mut cp = Checkpoint {
            version: 1,
            stream: "s".into(),
            ..Default::default()
        };
        cp.shards.insert(
            "shardId-000000000001".into(),
            ShardCheckpoint {
                sequence_number: SequenceNumber::parse(
                    "49590338271490256608559692538361571095921575989136588898",
                ),
                finished: false,
                parents: vec![],
            },
        );
        store.save(&cp).unwrap();
        cp.findings_offset = 42;
        store.save(&cp).unwrap();
        let back = store.load().unwrap().unwrap();
        assert_eq!(back.findings_offset, 42);
        assert_eq!(back.shards, cp.shards);
        assert!(!dir.path().join("checkpoint.json.tmp").exists());
    }

    #[test]
    fn a_corrupt_checkpoint_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path()).unwrap();
        fs::write(store.path(), b"{\"version\":").unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("checkpoint.json"), "{err}");
    }
}
