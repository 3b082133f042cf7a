//! The inventory: the organisation's own addresses, read from EC2 in every configured account
//! and region, so that an origin that is ours is known as ours.
//!
//! - [`model`]: what is held and the lookups ([`InventorySnapshot::owners`], `endpoint`,
//!   `instance`, `allocation`).
//! - [`fetch`]: reading it from EC2 (`Describe*` calls, STS `AssumeRole` into member accounts);
//!   API references there.
//! - [`cli`]: `credwatch inventory`, which prints it (a table, or the JSON that `[inventory] file`
//!   reads back).
//! - [`Inventory`] (here): the snapshot in use, replaced whole on each refresh, and the
//!   statistics the metrics read ([`Inventory::stats`]).
//!
//! Where it comes from: `[inventory] file` when set (JSON written by `credwatch inventory
//! --format json`, re-read every `refresh_secs` when its modification time or size changed),
//! else EC2 (every account and region read again every `refresh_secs`). An account and region
//! that fails to be read keeps its previous data with `error` set ([`fetch`]); a file that fails
//! to be re-read keeps the previous snapshot, every part marked with the error.
//!
//! With the DynamoDB multi-worker backend, **each worker reads and refreshes its own copy**;
//! the inventory is not shared through DynamoDB. Why:
//! - the reads are cheap: six read-only Describe calls per account and region every
//!   `refresh_secs` (default 900 s), far below EC2's API rate limits even with tens of workers;
//! - a shared copy would not fit: a DynamoDB item holds at most 400 KB, and an organisation's
//!   inventory (every instance address, IPv6 block and endpoint) outgrows that, so sharing
//!   would mean chunking it over many items and reassembling it consistently;
//! - no single point of failure: no worker waits on another to publish the inventory, and a
//!   worker that cannot reach EC2 in one account and region degrades alone (with the `error`
//!   and the metrics saying so) while the others go on;
//! - the workers' copies can differ for at most one refresh interval; the inventory only
//!   explains origins (it never decides what is claimed in DynamoDB), so a brief difference
//!   is harmless.

pub mod cli;
pub mod fetch;
pub mod model;
pub mod observe;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;

pub use fetch::{FetchOptions, Fetcher};
pub use model::{AccountRegion, InventorySnapshot, Owner};

use crate::config::InventoryConfig;

/// What the metrics read of one account and region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartStats {
    pub account: String,
    pub region: String,
    /// Resources held ([`AccountRegion::len`]).
    pub resources: usize,
    /// When the data held was read (seconds since the epoch); `None` before any read succeeded.
    pub last_success_secs: Option<i64>,
    /// The last read failed (the data held is then from the read before).
    pub error: bool,
    /// Reads of this account and region that succeeded, since the start.
    pub refreshes_ok: u64,
    /// Reads of this account and region that failed, since the start.
    pub refreshes_error: u64,
}

/// A file's modification time and length, to notice when it changed.
type Stamp = (Option<SystemTime>, u64);

/// The inventory in use, replaced on every refresh.
#[derive(Default)]
pub struct Inventory {
    current: RwLock<Arc<InventorySnapshot>>,
    /// (ok, error) reads per (account, region).
    counts: Mutex<HashMap<(String, String), (u64, u64)>>,
    /// The EC2 reader, kept between refreshes (assumed roles' credentials, own account id).
    fetcher: Mutex<Option<Arc<Fetcher>>>,
    /// The file's stamp when it was last read (`[inventory] file`).
    file_stamp: Mutex<Option<Stamp>>,
}

impl Inventory {
    pub fn new(s: InventorySnapshot) -> Inventory {
        Inventory {
            current: RwLock::new(Arc::new(s)),
            ..Inventory::default()
        }
    }

    /// The snapshot in use (cheap: an `Arc`).
    pub fn snapshot(&self) -> Arc<InventorySnapshot> {
        self.current.read().expect("inventory lock").clone()
    }

    /// Replaces the snapshot in use.
    pub fn replace(&self, s: InventorySnapshot) {
        *self.current.write().expect("inventory lock") = Arc::new(s);
    }

    /// Replaces the snapshot in use with the result of a read, counting each part's read as
    /// succeeded (no `error`) or failed.
    pub fn apply(&self, s: InventorySnapshot) {
        {
            let mut counts = self.counts.lock().expect("inventory counts lock");
            for p in &s.parts {
                let c = counts
                    .entry((p.account.clone(), p.region.clone()))
                    .or_default();
                if p.error.is_some() {
                    c.1 += 1;
                } else {
                    c.0 += 1;
                }
            }
        }
        self.replace(s);
    }

    /// Per account and region: resources, last successful read, error flag, read counters.
    pub fn stats(&self) -> Vec<PartStats> {
        let snap = self.snapshot();
        let counts = self.counts.lock().expect("inventory counts lock");
        snap.parts
            .iter()
            .map(|p| {
                let (ok, err) = counts
                    .get(&(p.account.clone(), p.region.clone()))
                    .copied()
                    .unwrap_or_default();
                PartStats {
                    account: p.account.clone(),
                    region: p.region.clone(),
                    resources: p.len(),
                    last_success_secs: (p.refreshed_at > 0).then_some(p.refreshed_at),
                    error: p.error.is_some(),
                    refreshes_ok: ok,
                    refreshes_error: err,
                }
            })
            .collect()
    }

    /// Reads every account and region again with `fetcher` and applies the result (parts that
    /// fail keep their previous data).
    pub async fn refresh(&self, fetcher: &Fetcher) {
        let previous = self.snapshot();
        let next = fetcher.read(&previous).await;
        self.apply(next);
    }

    /// The reader kept from [`load_initial`], else a new one for `cfg`.
    async fn fetcher(&self, cfg: &InventoryConfig) -> Arc<Fetcher> {
        if let Some(f) = self.fetcher.lock().expect("inventory fetcher lock").clone() {
            return f;
        }
        let f = Arc::new(Fetcher::from_config(cfg).await);
        *self.fetcher.lock().expect("inventory fetcher lock") = Some(f.clone());
        f
    }

    /// Re-reads `path` if it changed since it was last read.
    fn refresh_file(&self, path: &Path) {
        let now = stamp(path);
        if now.is_some() && now == *self.file_stamp.lock().expect("inventory file lock") {
            return;
        }
        match read_file(path) {
            Ok(s) => {
                self.apply(s);
                *self.file_stamp.lock().expect("inventory file lock") = now;
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %format!("{e:#}"), "inventory: re-reading the file failed; keeping the previous inventory");
                let mut parts = self.snapshot().parts.clone();
                for p in &mut parts {
                    p.error = Some(format!("{e:#}"));
                }
                self.apply(InventorySnapshot::new(parts));
            }
        }
    }

    /// Refreshes forever, every `cfg.refresh_secs`: from `cfg.file` when set (only when the
    /// file changed), else from EC2. Spawn it and abort its task to stop it. Does nothing when
    /// the inventory is not configured.
    pub async fn refresh_loop(self: Arc<Self>, cfg: InventoryConfig) {
        if !cfg.enabled() {
            return;
        }
        let every = Duration::from_secs(cfg.refresh_secs.max(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match &cfg.file {
                Some(path) => self.refresh_file(path),
                None => {
                    let f = self.fetcher(&cfg).await;
                    self.refresh(&f).await;
                }
            }
        }
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok(), m.len()))
}

/// Reads an inventory written by `credwatch inventory --format json` (an [`InventorySnapshot`])
/// and indexes it.
pub fn read_file(path: &Path) -> anyhow::Result<InventorySnapshot> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("inventory file {}", path.display()))?;
    let mut s: InventorySnapshot = serde_json::from_str(&text)
        .with_context(|| format!("inventory file {}: not an inventory", path.display()))?;
    s.reindex();
    Ok(s)
}

/// The inventory at start: from `cfg.file` when set (an unreadable file is an error), else read
/// from EC2 once (accounts and regions that fail are held empty with `error` set, and read
/// again by [`Inventory::refresh_loop`]). Empty when the inventory is not configured.
pub async fn load_initial(cfg: &InventoryConfig) -> anyhow::Result<Inventory> {
    if !cfg.enabled() {
        return Ok(Inventory::default());
    }
    let inv = Inventory::default();
    match &cfg.file {
        Some(path) => {
            let before = stamp(path);
            inv.apply(read_file(path)?);
            *inv.file_stamp.lock().expect("inventory file lock") = before;
        }
        None => {
            let f = inv.fetcher(cfg).await;
            inv.refresh(&f).await;
        }
    }
    Ok(inv)
}

/// [`load_initial`] from EC2 with a given reader (tests pass one with static credentials).
pub async fn load_with(fetcher: Fetcher) -> Inventory {
    let inv = Inventory::default();
    inv.refresh(&fetcher).await;
    *inv.fetcher.lock().expect("inventory fetcher lock") = Some(Arc::new(fetcher));
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(account: &str, error: Option<&str>, at: i64) -> AccountRegion {
        AccountRegion {
            account: account.into(),
            region: "us-east-1".into(),
            refreshed_at: at,
            error: error.map(str::to_string),
            endpoints: vec![model::EndpointRec {
                id: format!("vpce-{account}"),
                vpc_id: None,
                service_name: None,
            }],
            ..AccountRegion::default()
        }
    }

    #[test]
    fn stats_count_reads_per_account_and_region() {
        let inv = Inventory::default();
        inv.apply(InventorySnapshot::new(vec![
            part("111111111111", None, 100),
            part("222222222222", Some("AccessDenied"), 0),
        ]));
        inv.apply(InventorySnapshot::new(vec![
            part("111111111111", Some("Throttling"), 100),
            part("222222222222", None, 200),
        ]));
        let s = inv.stats();
        assert_eq!(
            s,
            vec![
                PartStats {
                    account: "111111111111".into(),
                    region: "us-east-1".into(),
                    resources: 1,
                    last_success_secs: Some(100),
                    error: true,
                    refreshes_ok: 1,
                    refreshes_error: 1,
                },
                PartStats {
                    account: "222222222222".into(),
                    region: "us-east-1".into(),
                    resources: 1,
                    last_success_secs: Some(200),
                    error: false,
                    refreshes_ok: 1,
                    refreshes_error: 1,
                },
            ]
        );
    }

    #[tokio::test]
    async fn the_file_is_read_at_start_and_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inventory.json");
        let write = |parts: Vec<AccountRegion>| {
            let text = serde_json::to_string(&InventorySnapshot::new(parts)).unwrap();
            std::fs::write(&path, text).unwrap();
        };
        write(vec![part("111111111111", None, 100)]);
        let cfg = InventoryConfig {
            file: Some(path.clone()),
            ..InventoryConfig::default()
        };
        let inv = load_initial(&cfg).await.unwrap();
        assert!(inv.snapshot().endpoint("vpce-111111111111").is_some());

        inv.refresh_file(&path); // unchanged: not read again
        assert_eq!(inv.stats()[0].refreshes_ok, 1);

        write(vec![
            part("111111111111", None, 100),
            part("222222222222", None, 100),
        ]);
        inv.refresh_file(&path);
        assert!(inv.snapshot().endpoint("vpce-222222222222").is_some());
        assert_eq!(inv.stats()[0].refreshes_ok, 2);

        std::fs::write(&path, "not json").unwrap();
        inv.refresh_file(&path);
        let snap = inv.snapshot();
        assert!(snap.endpoint("vpce-222222222222").is_some(), "kept");
        assert!(snap.parts.iter().all(|p| p.error.is_some()));
        assert!(inv
            .stats()
            .iter()
            .all(|s| s.error && s.refreshes_error == 1));

        std::fs::remove_file(&path).unwrap();
        assert!(load_initial(&cfg).await.is_err());
    }

    #[tokio::test]
    async fn nothing_is_read_when_the_inventory_is_off() {
        let inv = load_initial(&InventoryConfig::default()).await.unwrap();
        assert!(inv.snapshot().is_empty());
        assert!(inv.stats().is_empty());
    }
}
