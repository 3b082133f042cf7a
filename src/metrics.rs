//! Prometheus metrics and the health endpoints (`/metrics`, `/livez`, `/readyz`).
//!
//! Every metric name lives here. Names follow the Prometheus naming guide: `credwatch_` prefix,
//! base units, `_total` on counters. Label values are drawn from small fixed sets (shard ids,
//! rule ids, classes, kinds): never a credential, an address or an account.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::decode::BadKind;
use crate::engine::credential::CredentialClass;
use crate::engine::origin::OriginClass;
use crate::engine::{Engine, Explanation};

pub struct Metrics {
    pub registry: Registry,
    // Kinesis, per shard.
    pub records: IntCounterVec,
    pub record_bytes: IntCounterVec,
    pub shard_events: IntCounterVec,
    pub behind_latest: GaugeVec,
    pub throttles: IntCounterVec,
    pub get_records_errors: IntCounterVec,
    pub shards_owned: IntGauge,
    // Engine (copied from its atomics at scrape time).
    events: IntCounterVec,
    events_by_credential: IntCounterVec,
    explained: IntCounterVec,
    sessions_tracked: IntGauge,
    sessions_expired: IntCounter,
    late_events: IntCounter,
    suppressed: IntCounter,
    // Outcomes.
    pub bad_records: IntCounterVec,
    pub findings: IntCounterVec,
    pub checkpoint_writes: IntCounterVec,
    pub checkpoint_age: IntGauge,
    pub last_checkpoint_unix: AtomicI64,
    pub detection_latency: Histogram,
    pub event_to_finding: Histogram,
    pub escalations: IntCounterVec,
    pub escalation_retries: IntCounterVec,
    pub escalation_spool_depth: IntGaugeVec,
    pub escalation_latency: HistogramVec,
    pub ready: AtomicBool,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    r.register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

const LATENCY_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let _ = r.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        let behind_latest = GaugeVec::new(
            Opts::new(
                "credwatch_kinesis_behind_latest_seconds",
                "MillisBehindLatest of the last GetRecords, in seconds",
            ),
            &["shard"],
        )
        .expect("valid metric");
        r.register(Box::new(behind_latest.clone()))
            .expect("metric registered once");
        let spool = IntGaugeVec::new(
            Opts::new(
                "credwatch_escalation_spool_depth",
                "Findings waiting in the escalation spool",
            ),
            &["destination"],
        )
        .expect("valid metric");
        r.register(Box::new(spool.clone()))
            .expect("metric registered once");
        let esc_latency = HistogramVec::new(
            HistogramOpts::new(
                "credwatch_escalation_delivery_seconds",
                "Time from finding to confirmed delivery",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["destination"],
        )
        .expect("valid metric");
        r.register(Box::new(esc_latency.clone()))
            .expect("metric registered once");
        Metrics {
            records: counter_vec(
                &r,
                "credwatch_kinesis_records_total",
                "Kinesis records read",
                &["shard"],
            ),
            record_bytes: counter_vec(
                &r,
                "credwatch_kinesis_bytes_total",
                "Bytes of Kinesis record data read",
                &["shard"],
            ),
            shard_events: counter_vec(
                &r,
                "credwatch_kinesis_events_total",
                "CloudTrail events decoded from Kinesis records",
                &["shard"],
            ),
            behind_latest,
            throttles: counter_vec(
                &r,
                "credwatch_kinesis_get_records_throttled_total",
                "GetRecords calls throttled (ProvisionedThroughputExceeded)",
                &["shard"],
            ),
            get_records_errors: counter_vec(
                &r,
                "credwatch_kinesis_get_records_errors_total",
                "GetRecords and GetShardIterator failures",
                &["shard", "error"],
            ),
            shards_owned: gauge(
                &r,
                "credwatch_kinesis_shards_owned",
                "Shards this process is reading",
            ),
            events: counter_vec(
                &r,
                "credwatch_events_total",
                "CloudTrail events processed, by origin class",
                &["origin_class"],
            ),
            events_by_credential: counter_vec(
                &r,
                "credwatch_events_by_credential_total",
                "CloudTrail events processed, by credential class",
                &["credential_class"],
            ),
            explained: counter_vec(
                &r,
                "credwatch_origins_explained_total",
                "Origins that needed no lock or were explained, by exception",
                &["exception"],
            ),
            sessions_tracked: gauge(
                &r,
                "credwatch_sessions_tracked",
                "Sessions in the session-origin store",
            ),
            sessions_expired: counter(
                &r,
                "credwatch_sessions_expired_total",
                "Sessions removed from the store at expiry",
            ),
            late_events: counter(
                &r,
                "credwatch_late_events_total",
                "Events older than their session's window",
            ),
            suppressed: counter(
                &r,
                "credwatch_findings_suppressed_total",
                "Findings not repeated for an already reported (rule, session, origin)",
            ),
            bad_records: counter_vec(
                &r,
                "credwatch_bad_records_total",
                "Records or events set aside, by kind",
                &["kind"],
            ),
            findings: counter_vec(
                &r,
                "credwatch_findings_total",
                "Findings written, by rule and severity",
                &["rule", "severity"],
            ),
            checkpoint_writes: counter_vec(
                &r,
                "credwatch_checkpoint_writes_total",
                "Checkpoint writes by outcome",
                &["outcome"],
            ),
            checkpoint_age: gauge(
                &r,
                "credwatch_checkpoint_age_seconds",
                "Seconds since the last successful checkpoint",
            ),
            last_checkpoint_unix: AtomicI64::new(0),
            detection_latency: histogram(
                &r,
                "credwatch_detection_latency_seconds",
                "From the record's arrival in Kinesis to its finding written",
                LATENCY_BUCKETS.to_vec(),
            ),
            event_to_finding: histogram(
                &r,
                "credwatch_event_to_finding_seconds",
                "From the event's time to its finding written",
                LATENCY_BUCKETS.to_vec(),
            ),
            escalations: counter_vec(
                &r,
                "credwatch_escalations_total",
                "Escalation deliveries by destination and outcome",
                &["destination", "outcome"],
            ),
            escalation_retries: counter_vec(
                &r,
                "credwatch_escalation_retries_total",
                "Escalation delivery retries",
                &["destination"],
            ),
            escalation_spool_depth: spool,
            escalation_latency: esc_latency,
            ready: AtomicBool::new(false),
            registry: r,
        }
    }

    /// Pre-creates the label sets dashboards expect, so series exist at 0 before anything happens.
    pub fn init_labels(&self) {
        for k in BadKind::ALL {
            self.bad_records.with_label_values(&[k.as_str()]);
        }
        for c in OriginClass::ALL {
            self.events.with_label_values(&[c.as_str()]);
        }
        for c in CredentialClass::ALL {
            self.events_by_credential.with_label_values(&[c.as_str()]);
        }
        self.events_by_credential.with_label_values(&["untracked"]);
        for e in Explanation::ALL {
            self.explained.with_label_values(&[e.as_str()]);
        }
        for r in crate::rules::RULES {
            self.findings
                .with_label_values(&[r.id, r.severity.as_str()]);
        }
        for o in ["ok", "error"] {
            self.checkpoint_writes.with_label_values(&[o]);
        }
    }

    /// Copies the engine's counters into the registry (counters only move forward).
    pub fn sync_engine(&self, engine: &Engine) {
        let s = &engine.stats;
        let bump = |c: &IntCounter, v: u64| {
            let cur = c.get();
            if v > cur {
                c.inc_by(v - cur);
            }
        };
        for c in OriginClass::ALL {
            bump(
                &self.events.with_label_values(&[c.as_str()]),
                s.by_origin[c.index()].load(Relaxed),
            );
        }
        for c in CredentialClass::ALL {
            bump(
                &self.events_by_credential.with_label_values(&[c.as_str()]),
                s.by_credential[c as usize].load(Relaxed),
            );
        }
        bump(
            &self.events_by_credential.with_label_values(&["untracked"]),
            s.untracked.load(Relaxed),
        );
        for e in Explanation::ALL {
            bump(
                &self.explained.with_label_values(&[e.as_str()]),
                s.explained[e as usize].load(Relaxed),
            );
        }
        bump(&self.sessions_expired, s.sessions_expired.load(Relaxed));
        bump(&self.late_events, s.late_events.load(Relaxed));
        bump(&self.suppressed, s.suppressed.load(Relaxed));
        self.sessions_tracked.set(engine.tracked_sessions() as i64);
        let last = self.last_checkpoint_unix.load(Relaxed);
        if last > 0 {
            self.checkpoint_age
                .set(chrono::Utc::now().timestamp() - last);
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    engine: Arc<Engine>,
}

async fn metrics_handler(State(s): State<HttpState>) -> impl IntoResponse {
    s.metrics.sync_engine(&s.engine);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    if s.metrics.ready.load(Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Binds the metrics and health server; returns the bound address and the serving future.
pub async fn serve(
    addr: &str,
    metrics: Arc<Metrics>,
    engine: Arc<Engine>,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("metrics.addr {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/health/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/health/readyz", get(readyz))
        .with_state(HttpState { metrics, engine });
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok((local, handle))
}
