//! `credwatch run`: consumes every shard of a Kinesis data stream fed by a CloudWatch Logs
//! subscription filter, with one task per shard feeding one shared engine.
//!
//! The coordinator (this file) owns the shard positions: it lists shards (paging), starts a task
//! for each shard whose parents are finished, follows resharding, checkpoints on a timer and at
//! shutdown. Each shard task ([`shard`]) reads with GetRecords and processes whole batches while
//! holding the checkpoint gate for reading; the checkpointer takes it for writing, so a
//! checkpoint never covers a record whose findings are not yet written, and never misses one.
//! API: <https://docs.aws.amazon.com/kinesis/latest/APIReference/API_GetRecords.html>

pub mod fan_out;
mod leased;
pub mod sequence;
mod shard;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use aws_sdk_kinesis::Client;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{Checkpoint, CheckpointStore, ShardCheckpoint};
use crate::config::{Backend, Config, ConsumerKind, KinesisConfig, StartPosition};
use crate::decode::Limits;
use crate::engine::Engine;
use crate::escalation::Escalator;
use crate::metrics::Metrics;
use crate::settle::watermark::Watermarks;
use crate::settle::SettleAt;
use crate::sink::{DeadLetterSink, FindingsSink};

/// How long shutdown waits for shard tasks to finish their batches.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(8);
/// How often expired sessions are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// How often candidates are settled against the watermark.
const SETTLE_INTERVAL: Duration = Duration::from_millis(250);

/// A record read but not yet covered by a checkpoint: its events may still belong to a
/// candidate that has not settled.
#[derive(Debug, Clone)]
pub(crate) struct Hold {
    pub seq: sequence::SequenceNumber,
    /// Latest event time in the record (`None`: no event).
    pub max_time: Option<i64>,
    /// Wall-clock second it was read.
    pub wall: f64,
}

/// Wall-clock seconds, for idleness and holds.
pub(crate) fn wall() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// State shared by the coordinator, the shard tasks and the checkpointer.
pub(crate) struct Shared {
    pub engine: Arc<Engine>,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    pub findings: Mutex<FindingsSink>,
    pub dead_letters: Mutex<DeadLetterSink>,
    /// Findings are spooled here (durably) before a shard's position moves past them.
    pub escalator: Arc<Escalator>,
    /// Checkpointable positions: a shard's position moves past a record only once every
    /// candidate its events could belong to has settled (see [`Hold`]).
    pub positions: Mutex<BTreeMap<String, ShardCheckpoint>>,
    /// Records read, per shard, not yet released into `positions`.
    pub holds: Mutex<BTreeMap<String, VecDeque<Hold>>>,
    /// Event-time watermarks of every shard of the stream (local and, with several workers,
    /// those other workers publish in the lease table).
    pub watermarks: Watermarks,
    /// Shard tasks hold it for reading while a batch is processed and written; the
    /// checkpointer holds it for writing while it copies positions and the engine.
    pub gate: tokio::sync::RwLock<()>,
    pub shutdown: CancellationToken,
    pub client: Client,
    pub stream: String,
    pub kinesis: KinesisConfig,
    /// Several workers on one stream (`[coordination] backend = "dynamodb"`).
    pub coordination: Option<Arc<leased::Coordination>>,
    /// The stream consumer's ARN, when reading through enhanced fan-out.
    pub consumer_arn: Option<String>,
    /// Set when a finding or dead letter could not be written at all (given up at shutdown):
    /// the engine has seen events whose output is missing, so no checkpoint may be written
    /// after it; the next start reads them again from the last checkpoint.
    pub unsaved: std::sync::atomic::AtomicBool,
}

/// Reads one shard the configured way (polling, or enhanced fan-out).
pub(crate) async fn read(
    shared: Arc<Shared>,
    shard_id: String,
    start: Start,
    stop: CancellationToken,
) -> anyhow::Result<ShardExit> {
    match shared.consumer_arn.clone() {
        Some(arn) => fan_out::read_shard(shared, arn, shard_id, start, stop).await,
        None => shard::read_shard(shared, shard_id, start, stop).await,
    }
}

/// Where a shard task starts.
#[derive(Debug, Clone)]
pub(crate) enum Start {
    After(sequence::SequenceNumber),
    TrimHorizon,
    Latest,
    AtTimestamp(i64),
}

/// How a shard task ended.
#[derive(Debug)]
pub(crate) enum ShardExit {
    /// SHARD_END reached and processed.
    Finished,
    Shutdown,
}

/// `kinesis.start_timestamp` as a start (validated with the config).
pub(crate) fn at_timestamp(k: &KinesisConfig) -> Start {
    Start::AtTimestamp(
        k.start_timestamp
            .as_deref()
            .and_then(crate::event::parse_time)
            .unwrap_or(0),
    )
}

/// How long an AWS call may take to connect, and then to send the first byte of its answer,
/// before the attempt fails and is retried. Without a limit, one stalled response (a proxy, a
/// half-open connection) would hold a shard's reader forever.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);

/// The timeouts of every AWS client credwatch builds.
pub fn timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(FIRST_BYTE_TIMEOUT)
        .build()
}

/// Builds an SDK config from `[kinesis]` region and endpoint (else the default chain), with
/// [`CONNECT_TIMEOUT`] and [`FIRST_BYTE_TIMEOUT`] on every call.
pub async fn sdk_config(region: Option<&str>, endpoint_url: Option<&str>) -> aws_config::SdkConfig {
    let mut loader =
        aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(timeouts());
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r.to_string()));
    }
    if let Some(u) = endpoint_url {
        loader = loader.endpoint_url(u);
    }
    loader.load().await
}

/// A shard's parents (after a split, one; after a merge, two).
pub(crate) fn parents_of(s: &aws_sdk_kinesis::types::Shard) -> Vec<String> {
    [s.parent_shard_id(), s.adjacent_parent_shard_id()]
        .into_iter()
        .flatten()
        .map(str::to_string)
        .collect()
}

/// Lists every shard of the stream, following `NextToken`.
async fn list_shards(
    client: &Client,
    stream: &str,
) -> anyhow::Result<Vec<aws_sdk_kinesis::types::Shard>> {
    let mut shards = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let req = match &next {
            Some(t) => client.list_shards().next_token(t),
            None => client.list_shards().stream_name(stream),
        };
        let resp = req.send().await.map_err(|e| {
            anyhow::anyhow!(
                "ListShards on {stream}: {}",
                aws_sdk_kinesis::error::DisplayErrorContext(&e)
            )
        })?;
        shards.extend(resp.shards().iter().cloned());
        match resp.next_token() {
            Some(t) if !t.is_empty() => next = Some(t.to_string()),
            _ => break,
        }
    }
    Ok(shards)
}

/// Runs until SIGTERM/SIGINT (or a fatal error). Returns after the final checkpoint.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let stream = cfg
        .kinesis
        .stream
        .clone()
        .context("kinesis.stream (or --stream) is required for `run`")?;
    let store = CheckpointStore::new(&cfg.checkpoint.dir)
        .with_context(|| format!("checkpoint.dir {}", cfg.checkpoint.dir.display()))?;
    let sdk = sdk_config(
        cfg.kinesis.region.as_deref(),
        cfg.kinesis.endpoint_url.as_deref(),
    )
    .await;
    let metrics = Arc::new(Metrics::new());
    let knowledge = crate::app::Knowledge::load(&cfg).await?;
    let _ = metrics
        .knowledge
        .set((knowledge.placement.clone(), knowledge.inventory.clone()));
    metrics.ranges_max_age_days.store(
        cfg.placement.max_age_days,
        std::sync::atomic::Ordering::Relaxed,
    );
    let shared_backend = cfg.coordination.backend == Backend::Dynamodb;
    let (engine, coordination, positions, findings_offset, inherited) = if shared_backend {
        // Positions live in the lease items and sessions in the state table: no local
        // checkpoint is read. The findings file is read back whole, for its ids.
        let calls = Arc::new(crate::coord::dynamo::CallCounts::default());
        let _ = metrics.dynamodb.set(calls.clone());
        let c = Arc::new(leased::Coordination::open(&cfg.coordination, &sdk, calls).await?);
        let authority = Arc::new(crate::coord::SharedState::new(c.state.clone())?);
        let engine = Arc::new(knowledge.equip(Engine::new(&cfg)).with_authority(authority));
        (engine, Some(c), BTreeMap::new(), 0, vec![])
    } else {
        let previous = store.load()?;
        let engine = Arc::new(knowledge.equip(Engine::new(&cfg)));
        let mut positions = BTreeMap::new();
        let mut findings_offset = 0;
        let mut inherited = vec![];
        if let Some(cp) = &previous {
            if cp.stream != stream {
                anyhow::bail!(
                    "checkpoint.dir {} holds a checkpoint of stream {:?}, not {stream:?}",
                    cfg.checkpoint.dir.display(),
                    cp.stream
                );
            }
            engine.restore(&cp.engine);
            positions = cp.shards.clone();
            findings_offset = cp.findings_offset;
            inherited = cp.findings_pending_rediscovery.clone();
            tracing::info!(
                shards = positions.len(),
                sessions = engine.tracked_sessions(),
                "resuming from checkpoint"
            );
        }
        (engine, None, positions, findings_offset, inherited)
    };
    let findings = match &cfg.output.findings_file {
        Some(p) => FindingsSink::open(p, findings_offset, &inherited)
            .with_context(|| format!("output.findings_file {}", p.display()))?,
        None => FindingsSink::stdout(),
    }
    .recording_into(metrics.recent_findings.clone());
    let dead_letters = DeadLetterSink::open(cfg.output.dead_letter_file.as_deref())
        .with_context(|| format!("output.dead_letter_file {:?}", cfg.output.dead_letter_file))?;
    metrics.init_labels();
    knowledge.spawn_refresh(&cfg);
    let shutdown = CancellationToken::new();
    let spool = crate::escalation::spool_dir(&cfg.checkpoint.dir);
    let escalator = Arc::new(Escalator::new(&cfg.escalation, &spool, metrics.clone())?);
    let delivery = tokio::spawn(escalator.clone().deliver(shutdown.child_token()));
    let client = Client::new(&sdk);
    let consumer_arn = match cfg.kinesis.consumer {
        ConsumerKind::Polling => None,
        ConsumerKind::EnhancedFanOut => {
            Some(fan_out::ensure_consumer(&client, &stream, &cfg.kinesis.consumer_name).await?)
        }
    };
    let shared = Arc::new(Shared {
        engine: engine.clone(),
        limits: Limits::from(&cfg.input),
        metrics: metrics.clone(),
        findings: Mutex::new(findings),
        dead_letters: Mutex::new(dead_letters),
        escalator,
        positions: Mutex::new(positions),
        holds: Mutex::new(BTreeMap::new()),
        watermarks: Watermarks::new(cfg.detection.idle_secs),
        gate: tokio::sync::RwLock::new(()),
        shutdown: shutdown.clone(),
        client,
        stream: stream.clone(),
        kinesis: cfg.kinesis.clone(),
        coordination: coordination.clone(),
        consumer_arn,
        unsaved: std::sync::atomic::AtomicBool::new(false),
    });

    // The health server outlives `shutdown`: /readyz answers 503 while the shard tasks drain
    // and the final checkpoint is written; it stops after that.
    let http_stop = CancellationToken::new();
    let (addr, http) =
        crate::metrics::serve(&cfg, metrics.clone(), engine.clone(), http_stop.clone()).await?;
    tracing::info!(%addr, "metrics listening on {addr}");
    spawn_signal_handler(shutdown.clone());
    let store = Arc::new(store);
    let checkpointer = {
        let (shared, store) = (shared.clone(), store.clone());
        let local = coordination.is_none();
        let every = Duration::from_secs(cfg.checkpoint.interval_secs);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shared.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(every), if local => {
                        if let Err(e) = checkpoint(&shared, &store).await {
                            tracing::error!(error = %e, "checkpoint failed");
                        }
                    }
                }
            }
        })
    };
    let settler = {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shared.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(SETTLE_INTERVAL) => {
                        if let Err(e) = settle(&shared).await {
                            tracing::error!(error = %e, "settling candidates failed; will retry");
                        }
                    }
                }
            }
        })
    };
    let sweeper = {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shared.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(SWEEP_INTERVAL) => {
                        let removed = shared.engine.sweep();
                        tracing::debug!(removed, "swept expired sessions");
                    }
                }
            }
        })
    };

    let result = match &coordination {
        None => coordinate(shared.clone()).await,
        Some(c) => leased::coordinate(shared.clone(), c.clone()).await,
    };
    shutdown.cancel();
    metrics.ready.store(false, Relaxed);
    let _ = checkpointer.await;
    let _ = sweeper.await;
    let _ = settler.await;
    // What the watermark allows now; the rest waits in the checkpoint (embedded) or behind the
    // held shard positions (several workers) for the next start.
    if let Err(e) = settle(&shared).await {
        tracing::error!(error = %e, "settling candidates at shutdown failed");
    }
    let final_cp = match coordination {
        None => checkpoint(&shared, &store).await,
        // The lease items got their final checkpoints as the leases were released.
        Some(_) => Ok(()),
    };
    let _ = delivery.await;
    http_stop.cancel();
    let _ = http.await;
    result?;
    final_cp.context("final checkpoint")?;
    tracing::info!("stopped");
    Ok(())
}

fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                tracing::error!("cannot install signal handlers");
                return;
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
                _ = shutdown.cancelled() => return,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        shutdown.cancel();
    });
}

/// One settling pass: the low watermark over every shard, the candidates it (or
/// `max_hold_secs`) makes final written like any finding, then the records whose events are all
/// settled released into the checkpointable positions. Under the gate, so a checkpoint sees
/// either all of a pass or none of it.
pub(crate) async fn settle(shared: &Arc<Shared>) -> anyhow::Result<()> {
    let _gate = shared.gate.read().await;
    let det = &shared.engine.config().detection;
    let lateness = det.allowed_lateness_secs as i64;
    let max_hold = det.max_hold_secs as f64;
    let now = wall();
    let low = shared.watermarks.low(now, lateness);
    shared.metrics.set_watermark(low);
    // No watermark yet (a shard that is not idle has delivered nothing): only max_hold applies.
    let w = low.map_or(i64::MIN / 2, |l| l.watermark);
    let engine = shared.engine.clone();
    let at = SettleAt {
        watermark: w,
        now: Some(now as i64),
    };
    let found = tokio::task::block_in_place(|| engine.settle(at));
    if !found.is_empty() {
        shard::emit(
            shared,
            "settle",
            vec![],
            vec![],
            found
                .into_iter()
                .map(|f| {
                    let arrived = f.arrived_at.map(|a| a as f64);
                    (f, arrived)
                })
                .collect(),
        )
        .await?;
    }
    let mut holds = shared.holds.lock().unwrap_or_else(|p| p.into_inner());
    let mut positions = shared.positions.lock().unwrap_or_else(|p| p.into_inner());
    for (shard, q) in holds.iter_mut() {
        let mut last = None;
        while let Some(h) = q.front() {
            let settled = h.max_time.is_none_or(|t| t.saturating_add(lateness) <= w)
                || now - h.wall >= max_hold;
            if !settled {
                break;
            }
            last = q.pop_front().map(|h| h.seq);
        }
        if let Some(seq) = last {
            positions.entry(shard.clone()).or_default().sequence_number = Some(seq);
        }
    }
    holds.retain(|_, q| !q.is_empty());
    Ok(())
}

/// Whether every record read from `shard` is released into the positions.
pub(crate) fn released(shared: &Shared, shard: &str) -> bool {
    shared
        .holds
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(shard)
        .is_none_or(|q| q.is_empty())
}

/// Takes a consistent checkpoint: positions, findings offset and engine state at one instant
/// between batches; writes it off the async threads.
async fn checkpoint(shared: &Arc<Shared>, store: &Arc<CheckpointStore>) -> anyhow::Result<()> {
    let cp = {
        let _exclusive = shared.gate.write().await;
        if shared.unsaved.load(std::sync::atomic::Ordering::SeqCst) {
            anyhow::bail!(
                "not written: findings or dead letters of records already read could not be \
                 written, and a checkpoint now would skip them; the next start reads them again \
                 from the last checkpoint"
            );
        }
        let mut findings = shared.findings.lock().unwrap_or_else(|p| p.into_inner());
        let cp = Checkpoint {
            version: 1,
            stream: shared.stream.clone(),
            written_at: chrono::Utc::now()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string(),
            shards: shared
                .positions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            findings_offset: findings.offset(),
            findings_pending_rediscovery: findings.inherited(),
            engine: shared.engine.snapshot(),
        };
        findings.checkpointed();
        cp
    };
    let store = store.clone();
    let res = tokio::task::spawn_blocking(move || store.save(&cp)).await?;
    match res {
        Ok(()) => {
            shared
                .metrics
                .checkpoint_writes
                .with_label_values(&["ok"])
                .inc();
            shared
                .metrics
                .last_checkpoint_unix
                .store(chrono::Utc::now().timestamp(), Relaxed);
            Ok(())
        }
        Err(e) => {
            shared
                .metrics
                .checkpoint_writes
                .with_label_values(&["error"])
                .inc();
            Err(e.into())
        }
    }
}

/// Lists shards, starts readers in parent-first order, follows new shards, until shutdown.
async fn coordinate(shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut known: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut running: HashSet<String> = HashSet::new();
    let mut tasks: JoinSet<(String, anyhow::Result<ShardExit>)> = JoinSet::new();
    let mut first_listing_done = false;
    let mut ticker = tokio::time::interval(Duration::from_secs(
        shared.kinesis.shard_discovery_interval_secs.max(1),
    ));
    let mut fatal: Option<anyhow::Error> = None;
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            _ = ticker.tick() => {
                match list_shards(&shared.client, &shared.stream).await {
                    Ok(shards) => {
                        for s in shards {
                            let parents = parents_of(&s);
                            if !known.contains_key(s.shard_id()) {
                                tracing::info!(shard = s.shard_id(), ?parents, "shard found");
                            }
                            known.insert(s.shard_id().to_string(), parents);
                        }
                        start_eligible(&shared, &known, &mut running, &mut tasks, !first_listing_done);
                        first_listing_done = true;
                        set_ready(&shared, &running);
                    }
                    Err(e) => tracing::warn!(error = %e, "listing shards failed; will retry"),
                }
            }
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                let (shard_id, exit) = match joined {
                    Ok(x) => x,
                    Err(e) => { fatal = Some(anyhow::anyhow!("a shard task panicked: {e}")); break; }
                };
                running.remove(&shard_id);
                shared.metrics.shards_owned.set(running.len() as i64);
                match exit {
                    Ok(ShardExit::Finished) => {
                        tracing::info!(shard = %shard_id, "shard finished (SHARD_END)");
                        shared.watermarks.remove(&shard_id);
                        shared.metrics.shard_finished(&shard_id);
                        shared.positions.lock().unwrap_or_else(|p| p.into_inner()).entry(shard_id).or_default().finished = true;
                        start_eligible(&shared, &known, &mut running, &mut tasks, false);
                        set_ready(&shared, &running);
                    }
                    Ok(ShardExit::Shutdown) => {}
                    Err(e) => { fatal = Some(e.context(format!("shard {shard_id}"))); break; }
                }
            }
        }
    }
    stop_readers(&shared, &mut tasks).await;
    match fatal {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Shutdown of the readers: stop, not ready, let them finish their batches for at most
/// [`SHUTDOWN_DEADLINE`], then abort what is left.
pub(crate) async fn stop_readers(
    shared: &Shared,
    tasks: &mut JoinSet<(String, anyhow::Result<ShardExit>)>,
) {
    shared.shutdown.cancel();
    shared.metrics.ready.store(false, Relaxed);
    let drain = async {
        while let Some(joined) = tasks.join_next().await {
            if let Ok((shard_id, Err(e))) = joined {
                tracing::error!(shard = %shard_id, error = %e, "shard task failed during shutdown");
            }
        }
    };
    if tokio::time::timeout(SHUTDOWN_DEADLINE, drain)
        .await
        .is_err()
    {
        tracing::warn!("shard tasks did not stop within the deadline; aborting them");
        tasks.abort_all();
    }
}

/// Ready while at least one shard is read and shutdown has not begun.
fn set_ready(shared: &Shared, running: &HashSet<String>) {
    let ready = !running.is_empty() && !shared.shutdown.is_cancelled();
    shared.metrics.ready.store(ready, Relaxed);
}

/// Starts every known shard that is not finished, not running, and whose parents are finished
/// (or no longer listed: trimmed past retention).
fn start_eligible(
    shared: &Arc<Shared>,
    known: &BTreeMap<String, Vec<String>>,
    running: &mut HashSet<String>,
    tasks: &mut JoinSet<(String, anyhow::Result<ShardExit>)>,
    initial: bool,
) {
    let positions = shared
        .positions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let done = |id: &str| positions.get(id).is_some_and(|p| p.finished) || !known.contains_key(id);
    for (id, parents) in known {
        if running.contains(id) || positions.get(id).is_some_and(|p| p.finished) {
            continue;
        }
        if !parents.iter().all(|p| done(p)) {
            continue;
        }
        let start = match positions.get(id).and_then(|p| p.sequence_number.clone()) {
            Some(seq) => Start::After(seq),
            // Children and shards found later are read from their start, whatever the config.
            None if !initial || !parents.is_empty() => Start::TrimHorizon,
            None => match shared.kinesis.start_position {
                StartPosition::TrimHorizon => Start::TrimHorizon,
                StartPosition::Latest => Start::Latest,
                StartPosition::AtTimestamp => at_timestamp(&shared.kinesis),
            },
        };
        {
            let mut pos = shared.positions.lock().unwrap_or_else(|p| p.into_inner());
            pos.entry(id.clone()).or_default().parents = parents.clone();
        }
        tracing::info!(shard = %id, ?start, "reading shard");
        running.insert(id.clone());
        let (shared, id) = (shared.clone(), id.clone());
        tasks.spawn(async move {
            let stop = shared.shutdown.child_token();
            let res = read(shared, id.clone(), start, stop).await;
            (id, res)
        });
    }
    shared.metrics.shards_owned.set(running.len() as i64);
}
