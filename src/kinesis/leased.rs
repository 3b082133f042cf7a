//! `credwatch run` as one of several workers: shards are assigned by leases in a DynamoDB table
//! laid out as the Kinesis Client Library v2's, checkpoints live in the lease items, and
//! findings are claimed in the state table so that exactly one worker reports each.
//!
//! One loop per worker, every third of the lease duration: renew every held lease (writing its
//! checkpoint when the shard moved), scan the table, take or steal what [`lease::plan`] says,
//! create leases for new shards, start readers for held leases whose parents are done. A lease
//! that cannot be renewed stops its reader at once. At shutdown: readers drain, then every held
//! lease gets its final checkpoint and is released so the others take it without waiting.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::sequence::SequenceNumber;
use super::{list_shards, ShardExit, Shared, Start};
use crate::config::{CoordinationConfig, StartPosition};
use crate::coord::dynamo::{CallCounts, LeaseTable, StateTable};
use crate::coord::lease::{self, Lease, LeaseClock, Renewal};

/// This worker's handle on the shared tables.
pub(crate) struct Coordination {
    pub worker: String,
    pub leases: LeaseTable,
    pub state: Arc<StateTable>,
    pub cfg: CoordinationConfig,
}

/// `host:pid`, this worker's default id.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "credwatch".into());
    format!("{host}:{}", std::process::id())
}

impl Coordination {
    pub async fn open(
        cfg: &CoordinationConfig,
        sdk: &aws_config::SdkConfig,
        calls: Arc<CallCounts>,
    ) -> anyhow::Result<Coordination> {
        let mut b = aws_sdk_dynamodb::config::Builder::from(sdk);
        if let Some(u) = &cfg.endpoint_url {
            b = b.endpoint_url(u);
        }
        let client = aws_sdk_dynamodb::Client::from_conf(b.build());
        let leases = LeaseTable::open(
            client.clone(),
            &cfg.lease_table,
            cfg.create_tables,
            calls.clone(),
        )
        .await?;
        let mut state =
            StateTable::open(client, &cfg.state_table, cfg.create_tables, calls).await?;
        state.claim_patience = Duration::from_secs(cfg.lease_duration_secs);
        Ok(Coordination {
            worker: cfg.worker_id.clone().unwrap_or_else(default_worker_id),
            leases,
            state: Arc::new(state),
            cfg: cfg.clone(),
        })
    }

    /// True for the one worker that reports this finding.
    pub async fn claim(&self, f: &crate::finding::Finding) -> anyhow::Result<bool> {
        let (key, until) = f.claim_key();
        let t = crate::event::parse_time(&f.event_time).unwrap_or(0);
        let source = f
            .events
            .iter()
            .rev()
            .find_map(|e| e.source.as_deref())
            .unwrap_or(&f.id);
        self.state.claim(&key, until, t, &self.worker, source).await
    }

    /// After the finding is written and spooled.
    pub async fn reported(&self, f: &crate::finding::Finding) {
        let (key, _) = f.claim_key();
        if let Err(e) = self.state.mark_reported(&key, &self.worker).await {
            tracing::warn!(id = %f.id, error = %e, "could not mark a claim reported");
        }
    }
}

/// A lease this worker holds.
struct Held {
    counter: u64,
    /// When it was last renewed, on this worker's clock.
    renewed_at: f64,
    /// The checkpoint the lease item holds (as last written or read).
    checkpoint: String,
    stop: CancellationToken,
    running: bool,
    /// Read to SHARD_END; SHARD_END is written once its records have all settled.
    finishing: bool,
}

fn start_of(checkpoint: &str, shared: &Shared) -> Start {
    match checkpoint {
        lease::TRIM_HORIZON => Start::TrimHorizon,
        lease::LATEST => Start::Latest,
        lease::AT_TIMESTAMP => super::at_timestamp(&shared.kinesis),
        other => match SequenceNumber::parse(other) {
            Some(seq) => Start::After(seq),
            None => {
                tracing::warn!(
                    checkpoint = other,
                    "lease checkpoint is not a sequence number; reading from TRIM_HORIZON"
                );
                Start::TrimHorizon
            }
        },
    }
}

/// Runs the worker until shutdown.
pub(crate) async fn coordinate(shared: Arc<Shared>, c: Arc<Coordination>) -> anyhow::Result<()> {
    let me = c.worker.clone();
    let duration = c.cfg.lease_duration_secs as f64;
    let epoch = Instant::now();
    let now = || epoch.elapsed().as_secs_f64();
    let initial = match shared.kinesis.start_position {
        StartPosition::TrimHorizon => lease::TRIM_HORIZON,
        StartPosition::Latest => lease::LATEST,
        StartPosition::AtTimestamp => lease::AT_TIMESTAMP,
    };
    let discovery = shared.kinesis.shard_discovery_interval_secs.max(1) as f64;
    let mut clock = LeaseClock::default();
    let mut held: BTreeMap<String, Held> = BTreeMap::new();
    let mut tasks: JoinSet<(String, anyhow::Result<ShardExit>)> = JoinSet::new();
    let mut last_listing: Option<f64> = None;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(duration / 3.0));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fatal: Option<anyhow::Error> = None;
    tracing::info!(worker = %me, "coordinating through DynamoDB leases");
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            _ = ticker.tick() => {
                renew_all(&shared, &c, &mut held, now()).await;
                // At once: a lease lost here must not be reported as read while the table
                // stays unreachable (the scan below then fails, and the tick ends early).
                publish_ownership(&shared, &held);
                // Keep the instance book up to date with what other workers shared.
                let engine = shared.engine.clone();
                tokio::task::block_in_place(|| engine.sync_control());
                let leases = match c.leases.scan().await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading leases failed; will retry");
                        continue;
                    }
                };
                let leases = if last_listing.is_none_or(|t| now() - t >= discovery) {
                    match sync_shards(&shared, &c, &leases, initial).await {
                        Ok(true) => {
                            last_listing = Some(now());
                            c.leases.scan().await.unwrap_or(leases)
                        }
                        Ok(false) => {
                            last_listing = Some(now());
                            leases
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "listing shards failed; will retry");
                            leases
                        }
                    }
                } else {
                    leases
                };
                publish_remote_marks(&shared, &leases, &me);
                finish_settled(&shared, &c, &mut held).await;
                clock.observe(&leases, now());
                take_leases(&shared, &c, &leases, &clock, &mut held, now()).await;
                start_readers(&shared, &leases, &mut held, &mut tasks);
                publish_ownership(&shared, &held);
            }
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                let (shard_id, exit) = match joined {
                    Ok(x) => x,
                    Err(e) => { fatal = Some(anyhow::anyhow!("a shard task panicked: {e}")); break; }
                };
                match exit {
                    Ok(ShardExit::Finished) => {
                        shared.metrics.shard_finished(&shard_id);
                        shared.watermarks.remove(&shard_id);
                        if let Some(h) = held.get_mut(&shard_id) {
                            h.running = false;
                            // SHARD_END (which lets the children start) once every record of
                            // the shard has settled: until then a takeover must read them again.
                            h.finishing = true;
                        }
                        finish_settled(&shared, &c, &mut held).await;
                    }
                    Ok(ShardExit::Shutdown) => {
                        if let Some(h) = held.get_mut(&shard_id) {
                            h.running = false;
                        }
                    }
                    Err(e) => { fatal = Some(e.context(format!("shard {shard_id}"))); break; }
                }
                publish_ownership(&shared, &held);
            }
        }
    }
    super::stop_readers(&shared, &mut tasks).await;
    // Final checkpoints, then give the leases up. Not after a fatal error: its batch's
    // findings may be unwritten, so the next owner must read it again.
    if fatal.is_none() {
        renew_all(&shared, &c, &mut held, now()).await;
        for (key, h) in &held {
            if let Renewal::Renewed(_) = c.leases.release(key, h.counter, &me).await {
                shared
                    .metrics
                    .lease_events
                    .with_label_values(&["released"])
                    .inc();
            }
        }
    }
    shared.metrics.shards_owned.set(0);
    match fatal {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Writes SHARD_END into held leases read to their end whose records have all settled.
async fn finish_settled(shared: &Shared, c: &Coordination, held: &mut BTreeMap<String, Held>) {
    let done: Vec<String> = held
        .iter()
        .filter(|(k, h)| h.finishing && super::released(shared, k))
        .map(|(k, _)| k.clone())
        .collect();
    for key in done {
        let Some(h) = held.get(&key) else { continue };
        match c
            .leases
            .checkpoint(&key, h.counter, &c.worker, lease::SHARD_END, None)
            .await
        {
            Renewal::Renewed(_) => {
                tracing::info!(shard = %key, "shard finished (SHARD_END)");
                shared
                    .metrics
                    .lease_events
                    .with_label_values(&["finished"])
                    .inc();
                held.remove(&key);
            }
            r => {
                tracing::warn!(shard = %key, outcome = ?r, "could not write SHARD_END; will retry")
            }
        }
    }
}

/// The watermarks other workers published for the shards they read count in the low watermark
/// here; finished shards no longer count. A lease without a published watermark (never read,
/// or a child waiting for its parents) holds nothing back yet.
fn publish_remote_marks(shared: &Shared, leases: &[Lease], me: &str) {
    for l in leases {
        if l.finished() {
            shared.watermarks.remove(&l.key);
        } else if !l.owned_by(me) {
            if let Some((w, idle)) = l.watermark {
                shared.watermarks.remote(&l.key, Some(w), idle);
            }
        }
    }
}

/// `credwatch_kinesis_shards_owned` and `/readyz`: the shards this worker is reading now.
fn publish_ownership(shared: &Shared, held: &BTreeMap<String, Held>) {
    let running = held.values().filter(|h| h.running).count();
    shared.metrics.shards_owned.set(running as i64);
    let ready = running > 0 && !shared.shutdown.is_cancelled();
    shared.metrics.ready.store(ready, Relaxed);
}

/// Renews every held lease, writing the shard's position as its checkpoint when it moved.
/// A lease lost (or not renewed for a whole duration) stops its reader.
async fn renew_all(shared: &Shared, c: &Coordination, held: &mut BTreeMap<String, Held>, now: f64) {
    let duration = c.cfg.lease_duration_secs as f64;
    let positions = shared
        .positions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut lost = Vec::new();
    let mut failed = false;
    for (key, h) in held.iter_mut() {
        let position = positions
            .get(key)
            .and_then(|p| p.sequence_number.as_ref())
            .map(|s| s.as_str().to_string())
            .filter(|s| *s != h.checkpoint);
        // The shard's event-time watermark, for the other workers' settling.
        let mark = shared
            .watermarks
            .local(key, super::wall())
            .filter(|(w, idle)| w.is_some() || *idle)
            .map(|(w, idle)| (w.unwrap_or(0), idle));
        let r = match &position {
            Some(cp) => {
                c.leases
                    .checkpoint(key, h.counter, &c.worker, cp, mark)
                    .await
            }
            None => c.leases.renew(key, h.counter, &c.worker, mark).await,
        };
        match r {
            Renewal::Renewed(counter) => {
                h.counter = counter;
                h.renewed_at = now;
                if let Some(cp) = position {
                    h.checkpoint = cp;
                    shared
                        .metrics
                        .checkpoint_writes
                        .with_label_values(&["ok"])
                        .inc();
                }
            }
            r => {
                failed = true;
                if position.is_some() {
                    shared
                        .metrics
                        .checkpoint_writes
                        .with_label_values(&["error"])
                        .inc();
                }
                if lease::must_stop(r, now - h.renewed_at, duration) {
                    lost.push(key.clone());
                }
            }
        }
    }
    // Every held shard's position is in its lease item: that is this backend's checkpoint.
    if !failed {
        shared
            .metrics
            .last_checkpoint_unix
            .store(chrono::Utc::now().timestamp(), Relaxed);
    }
    for key in lost {
        if let Some(h) = held.remove(&key) {
            h.stop.cancel();
            tracing::warn!(shard = %key, "lease lost; stopped reading the shard");
            shared
                .metrics
                .lease_events
                .with_label_values(&["lost"])
                .inc();
            shared
                .positions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            // Its unsettled records are the next owner's to read again.
            shared
                .holds
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            shared.watermarks.remove(&key);
        }
    }
}

/// Creates leases for shards that have none. Returns whether any was created.
async fn sync_shards(
    shared: &Shared,
    c: &Coordination,
    leases: &[Lease],
    initial: &str,
) -> anyhow::Result<bool> {
    let shards: Vec<(String, Vec<String>)> = list_shards(&shared.client, &shared.stream)
        .await?
        .iter()
        .map(|s| (s.shard_id().to_string(), super::parents_of(s)))
        .collect();
    let mut created = false;
    for l in lease::leases_to_create(&shards, leases, initial) {
        if c.leases
            .create(&l)
            .await
            .with_context(|| format!("shard {}", l.key))?
        {
            tracing::info!(shard = %l.key, checkpoint = %l.checkpoint, "lease created");
            created = true;
        }
    }
    Ok(created)
}

/// Takes what the plan says, and adopts leases the table says are this worker's (a restart
/// with the same `--worker-id`).
async fn take_leases(
    shared: &Shared,
    c: &Coordination,
    leases: &[Lease],
    clock: &LeaseClock,
    held: &mut BTreeMap<String, Held>,
    now: f64,
) {
    let me = &c.worker;
    let mut takes = lease::plan(
        me,
        leases,
        clock,
        now,
        c.cfg.lease_duration_secs as f64,
        c.cfg.max_leases,
    );
    for l in leases {
        if l.owned_by(me) && !l.finished() && !held.contains_key(&l.key) {
            takes.push(lease::Take {
                key: l.key.clone(),
                counter: l.counter,
                from: l.owner.clone(),
                steal: false,
            });
        }
    }
    for t in takes {
        let Some(l) = leases.iter().find(|l| l.key == t.key) else {
            continue;
        };
        match c
            .leases
            .take(&t.key, t.counter, me, t.from.as_deref())
            .await
        {
            Renewal::Renewed(counter) => {
                let event = if t.steal { "stolen" } else { "taken" };
                tracing::info!(shard = %t.key, from = ?t.from, checkpoint = %l.checkpoint, "lease {event}");
                shared
                    .metrics
                    .lease_events
                    .with_label_values(&[event])
                    .inc();
                held.insert(
                    t.key.clone(),
                    Held {
                        counter,
                        renewed_at: now,
                        checkpoint: l.checkpoint.clone(),
                        stop: shared.shutdown.child_token(),
                        running: false,
                        finishing: false,
                    },
                );
            }
            Renewal::Lost => tracing::debug!(shard = %t.key, "another worker took the lease first"),
            Renewal::Failed => {}
        }
    }
}

/// Starts a reader for each held lease that is not running and whose parents are done.
fn start_readers(
    shared: &Arc<Shared>,
    leases: &[Lease],
    held: &mut BTreeMap<String, Held>,
    tasks: &mut JoinSet<(String, anyhow::Result<ShardExit>)>,
) {
    let by_key: std::collections::HashMap<&str, &Lease> =
        leases.iter().map(|l| (l.key.as_str(), l)).collect();
    for (key, h) in held.iter_mut() {
        if h.running || h.finishing || h.stop.is_cancelled() {
            continue;
        }
        // Its parents as the table has them now (this scan).
        if !by_key
            .get(key.as_str())
            .is_some_and(|l| lease::parents_done(l, &by_key))
        {
            continue;
        }
        let start = start_of(&h.checkpoint, shared);
        shared
            .positions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        tracing::info!(shard = %key, ?start, "reading shard");
        h.running = true;
        let (shared, id, stop) = (shared.clone(), key.clone(), h.stop.clone());
        tasks.spawn(async move {
            let res = super::read(shared, id.clone(), start, stop).await;
            (id, res)
        });
    }
}
