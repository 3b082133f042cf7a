//! Prometheus metrics and the health endpoints (`/metrics`, `/livez`, `/readyz`).
//!
//! Every metric name lives here. Names follow the Prometheus naming guide: `credwatch_` prefix,
//! base units (seconds, bytes), `_total` on counters and only there, timestamps as
//! `_timestamp_seconds` gauges. Label values are drawn from small fixed sets (shard ids, rule
//! ids, severities, classes, kinds, outcomes, destination kinds with their index): never a
//! credential, an address or an account (except the inventory's own gauges, per configured
//! account and region). The unit test at the end of this file checks the
//! rendered registry against those rules; `tests/prometheus.rs` runs `promtool check metrics`
//! on a live `/metrics` and evaluates every dashboard and alert expression against it.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `credwatch_build_info` | gauge (1) | `version` |
//! | `credwatch_kinesis_records_total` | counter | `shard` |
//! | `credwatch_kinesis_bytes_total` | counter | `shard` |
//! | `credwatch_kinesis_events_total` | counter | `shard` |
//! | `credwatch_kinesis_behind_latest_seconds` | gauge | `shard` |
//! | `credwatch_kinesis_get_records_throttled_total` | counter | `shard` |
//! | `credwatch_kinesis_get_records_errors_total` | counter | `shard`, `error` |
//! | `credwatch_kinesis_subscriptions_total` | counter | `shard` |
//! | `credwatch_kinesis_shards_owned` | gauge | |
//! | `credwatch_events_total` | counter | `origin_class` |
//! | `credwatch_events_by_credential_total` | counter | `credential_class` |
//! | `credwatch_ip_ranges_created_timestamp_seconds` | gauge | |
//! | `credwatch_ip_ranges_age_seconds` | gauge | |
//! | `credwatch_ip_ranges_stale` | gauge (0/1) | |
//! | `credwatch_ip_ranges_prefixes` | gauge | `family` (ipv4, ipv6) |
//! | `credwatch_ip_ranges_refreshes_total` | counter | `outcome` (ok, error) |
//! | `credwatch_inventory_resources` | gauge | `account`, `region` |
//! | `credwatch_inventory_last_refresh_timestamp_seconds` | gauge | `account`, `region` |
//! | `credwatch_inventory_read_failing` | gauge (0/1) | `account`, `region` |
//! | `credwatch_inventory_refreshes_total` | counter | `outcome` (ok, error) |
//! | `credwatch_events_by_place_total` | counter | `place` (outside_aws, aws, ours, private, not_an_address) |
//! | `credwatch_issued_keys_tracked` | gauge | |
//! | `credwatch_issuance_events_total` | counter | |
//! | `credwatch_origins_explained_total` | counter | `exception` |
//! | `credwatch_event_watermark_timestamp_seconds` | gauge | |
//! | `credwatch_late_events_total` | counter | |
//! | `credwatch_lifetime_exceeded_total` | counter | `credential_class` |
//! | `credwatch_low_watermark_timestamp_seconds` | gauge | |
//! | `credwatch_watermark_shards` | gauge | `state` (active, idle) |
//! | `credwatch_candidates_pending` | gauge | |
//! | `credwatch_candidates_total` | counter | `outcome` (settled, released_early, withdrawn) |
//! | `credwatch_late_sightings_total` | counter | |
//! | `credwatch_instance_book_evicted_total` | counter | |
//! | `credwatch_sessions_tracked` | gauge | |
//! | `credwatch_sessions_expired_total` | counter | |
//! | `credwatch_sessions_evicted_total` | counter | |
//! | `credwatch_store_interned_strings` | gauge | |
//! | `credwatch_instances_tracked` | gauge | |
//! | `credwatch_bad_records_total` | counter | `kind` |
//! | `credwatch_findings_total` | counter | `rule`, `severity` |
//! | `credwatch_findings_suppressed_total` | counter | |
//! | `credwatch_detection_latency_seconds` | histogram | |
//! | `credwatch_event_to_finding_seconds` | histogram | |
//! | `credwatch_checkpoint_writes_total` | counter | `outcome` |
//! | `credwatch_output_write_errors_total` | counter | `output` (findings, dead_letters, escalation_spool) |
//! | `credwatch_output_blocked` | gauge | `output`: 1 while its writes fail and reading waits for it |
//! | `credwatch_checkpoint_age_seconds` | gauge | |
//! | `credwatch_checkpoint_last_success_timestamp_seconds` | gauge | |
//! | `credwatch_escalations_total` | counter | `destination`, `outcome` |
//! | `credwatch_escalation_retries_total` | counter | `destination` |
//! | `credwatch_escalation_spool_depth` | gauge | `destination` |
//! | `credwatch_escalation_delivery_seconds` | histogram | `destination` |
//! | `credwatch_dynamodb_calls_total` | counter | `table` (lease, state), `op` (read, write) |
//! | `credwatch_dynamodb_conditional_failures_total` | counter | |
//! | `credwatch_dynamodb_errors_total` | counter | |
//! | `credwatch_lease_events_total` | counter | `event` (taken, stolen, lost, released, finished) |
//! | `credwatch_shared_store_proposals_total` | counter | `outcome` (ok, error) |
//! | `credwatch_findings_claimed_elsewhere_total` | counter | |
//!
//! plus the standard `process_*` metrics (CPU, resident memory, file descriptors) on Linux.
//!
//! The escalation series are created and moved by `src/escalation` (its `OUTCOMES`): `destination`
//! is the entry's `name`, else its type and index (`webhook-0`), never its URL.
//!
//! GetRecords throttles are counted twice on purpose: in `..._get_records_throttled_total` and as
//! `error="throttled"` in `..._get_records_errors_total` (which also counts GetShardIterator).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::decode::BadKind;
use crate::engine::credential::CredentialClass;
use crate::engine::origin::OriginClass;
use crate::engine::{Engine, Explanation};

/// The `error` label values of `credwatch_kinesis_get_records_errors_total`.
/// (`subscription_in_use` and `stream` are enhanced fan-out's: a SubscribeToShard refused because
/// the shard already has a subscription of this consumer, and a subscription's stream that
/// failed mid-way.)
pub const GET_RECORDS_ERRORS: [&str; 6] = [
    "throttled",
    "service",
    "network",
    "expired_iterator",
    "subscription_in_use",
    "stream",
];

pub struct Metrics {
    pub registry: Registry,
    // Kinesis, per shard.
    pub records: IntCounterVec,
    pub record_bytes: IntCounterVec,
    pub shard_events: IntCounterVec,
    pub behind_latest: GaugeVec,
    pub throttles: IntCounterVec,
    pub get_records_errors: IntCounterVec,
    /// Enhanced fan-out subscriptions made (one per shard every `kinesis.resubscribe_secs`).
    pub subscriptions: IntCounterVec,
    pub shards_owned: IntGauge,
    // Engine (copied from its atomics at scrape time).
    events: IntCounterVec,
    events_by_credential: IntCounterVec,
    explained: IntCounterVec,
    watermark: IntGauge,
    sessions_tracked: IntGauge,
    sessions_expired: IntCounter,
    sessions_evicted: IntCounter,
    interned_strings: IntGauge,
    instances_tracked: IntGauge,
    events_by_place: IntCounterVec,
    issued_keys: IntGauge,
    issuance_events: IntCounter,
    late_events: IntCounter,
    lifetime_exceeded: IntCounterVec,
    suppressed: IntCounter,
    // Settling (event-time watermark across shards).
    low_watermark: IntGauge,
    watermark_shards: IntGaugeVec,
    candidates_pending: IntGauge,
    candidates: IntCounterVec,
    late_sightings: IntCounter,
    book_evicted: IntCounter,
    // Outcomes.
    pub bad_records: IntCounterVec,
    pub findings: IntCounterVec,
    pub checkpoint_writes: IntCounterVec,
    pub output_write_errors: IntCounterVec,
    pub output_blocked: IntGaugeVec,
    pub checkpoint_age: IntGauge,
    pub checkpoint_last_success: IntGauge,
    /// Unix time of the last successful checkpoint (0: none yet); set by the checkpointer.
    pub last_checkpoint_unix: AtomicI64,
    /// Unix time these metrics were created: the checkpoint age counts from here until the first
    /// checkpoint is written, so a checkpointer that never succeeds shows up as a growing age.
    started_unix: i64,
    pub detection_latency: Histogram,
    pub event_to_finding: Histogram,
    pub escalations: IntCounterVec,
    pub escalation_retries: IntCounterVec,
    pub escalation_spool_depth: IntGaugeVec,
    pub escalation_latency: HistogramVec,
    // Coordination (`[coordination] backend = "dynamodb"`).
    dynamodb_calls: IntCounterVec,
    dynamodb_conditional_failures: IntCounter,
    dynamodb_errors: IntCounter,
    pub lease_events: IntCounterVec,
    proposals: IntCounterVec,
    pub claimed_elsewhere: IntCounter,
    /// The DynamoDB call counts, once coordination is on.
    pub dynamodb: std::sync::OnceLock<Arc<crate::coord::dynamo::CallCounts>>,
    /// AWS's ranges and the inventory in use, read at scrape time (`run` sets them).
    pub knowledge: std::sync::OnceLock<(
        Arc<crate::placement::Placement>,
        Option<Arc<crate::inventory::Inventory>>,
    )>,
    /// `placement.max_age_days`, for `credwatch_ip_ranges_stale`.
    pub ranges_max_age_days: std::sync::atomic::AtomicU64,
    ip_ranges_created: IntGauge,
    ip_ranges_age: IntGauge,
    ip_ranges_stale: IntGauge,
    ip_ranges_prefixes: IntGaugeVec,
    ip_ranges_refreshes: IntCounterVec,
    inventory_resources: IntGaugeVec,
    inventory_last_refresh: IntGaugeVec,
    inventory_part_error: IntGaugeVec,
    inventory_refreshes: IntCounterVec,
    /// Set by the coordinator: true once shards are assigned, false again while shutting down.
    /// `/readyz` also requires at least one owned shard.
    pub ready: AtomicBool,
    /// The findings written lately, for `GET /findings` (the findings sink pushes them).
    pub recent_findings: Arc<crate::recent::RecentFindings>,
}

fn register<C: Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

/// The `output` label values of the output metrics.
pub const OUTPUTS: [&str; 3] = ["findings", "dead_letters", "escalation_spool"];

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(r, IntCounter::new(name, help).expect("valid metric"))
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    register(r, IntGauge::new(name, help).expect("valid metric"))
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        r,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    register(
        r,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
            .expect("valid metric"),
    )
}

/// Record arrival in Kinesis to finding written, and finding to delivery: seconds at most.
const LATENCY_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];

/// Event time to finding written: CloudTrail delivers to CloudWatch Logs within about 5 minutes
/// (up to 15), and a replay from TRIM_HORIZON reads events up to the stream's retention old.
const EVENT_AGE_BUCKETS: [f64; 14] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0,
    86400.0,
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
        let build_info = gauge_vec(
            &r,
            "credwatch_build_info",
            "Always 1; the version of the running credwatch",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let behind_latest = register(
            &r,
            GaugeVec::new(
                Opts::new(
                    "credwatch_kinesis_behind_latest_seconds",
                    "MillisBehindLatest of the shard's last GetRecords, in seconds",
                ),
                &["shard"],
            )
            .expect("valid metric"),
        );
        let escalation_latency = register(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "credwatch_escalation_delivery_seconds",
                    "Time from finding written to its delivery confirmed by the destination",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["destination"],
            )
            .expect("valid metric"),
        );
        Metrics {
            records: counter_vec(
                &r,
                "credwatch_kinesis_records_total",
                "Kinesis records read, by shard",
                &["shard"],
            ),
            record_bytes: counter_vec(
                &r,
                "credwatch_kinesis_bytes_total",
                "Bytes of Kinesis record data read, by shard",
                &["shard"],
            ),
            shard_events: counter_vec(
                &r,
                "credwatch_kinesis_events_total",
                "CloudTrail events decoded from Kinesis records, by shard",
                &["shard"],
            ),
            behind_latest,
            throttles: counter_vec(
                &r,
                "credwatch_kinesis_get_records_throttled_total",
                "GetRecords calls throttled (ProvisionedThroughputExceeded, KMS throttling), by shard",
                &["shard"],
            ),
            subscriptions: counter_vec(
                &r,
                "credwatch_kinesis_subscriptions_total",
                "Enhanced fan-out subscriptions (SubscribeToShard) made, by shard",
                &["shard"],
            ),
            get_records_errors: counter_vec(
                &r,
                "credwatch_kinesis_get_records_errors_total",
                "GetRecords and GetShardIterator failures, by shard and error \
                 (throttled, service, network, expired_iterator)",
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
                "CloudTrail events processed, by credential class (untracked: no tracked credential)",
                &["credential_class"],
            ),
            events_by_place: counter_vec(
                &r,
                "credwatch_events_by_place_total",
                "CloudTrail events with an address origin, by place (outside_aws, aws, ours, private; not_an_address for the rest)",
                &["place"],
            ),
            issued_keys: gauge(
                &r,
                "credwatch_issued_keys_tracked",
                "Workload keys known from the AssumeRole that issued them",
            ),
            issuance_events: counter(
                &r,
                "credwatch_issuance_events_total",
                "AssumeRole events by EC2, ECS or Lambda that issued a workload's credentials",
            ),
            explained: counter_vec(
                &r,
                "credwatch_origins_explained_total",
                "New origins that were explained by an exception, by exception",
                &["exception"],
            ),
            watermark: gauge(
                &r,
                "credwatch_event_watermark_timestamp_seconds",
                "Latest CloudTrail event time seen (Unix time)",
            ),
            sessions_tracked: gauge(
                &r,
                "credwatch_sessions_tracked",
                "Sessions in the session-origin store",
            ),
            sessions_evicted: counter(
                &r,
                "credwatch_sessions_evicted_total",
                "Sessions dropped before they expired to stay within detection.max_sessions (those seen once first)",
            ),
            sessions_expired: counter(
                &r,
                "credwatch_sessions_expired_total",
                "Sessions removed from the store at expiry",
            ),
            interned_strings: gauge(
                &r,
                "credwatch_store_interned_strings",
                "Distinct strings (non-IPv4 origins) interned by the session-origin store",
            ),
            instances_tracked: gauge(
                &r,
                "credwatch_instances_tracked",
                "EC2 instances in the instance book (address credits, restarts)",
            ),
            lifetime_exceeded: counter_vec(
                &r,
                "credwatch_lifetime_exceeded_total",
                "Events past their credential's end (creation + detection.max_session_secs, or the key's expiry), judged with a fallback window, by credential class",
                &["credential_class"],
            ),
            late_events: counter(
                &r,
                "credwatch_late_events_total",
                "Events older than their session's window",
            ),
            low_watermark: gauge(
                &r,
                "credwatch_low_watermark_timestamp_seconds",
                "Event-time low watermark over every shard that is not idle (Unix time); candidates settle when it passes their time plus the allowed lateness",
            ),
            watermark_shards: gauge_vec(
                &r,
                "credwatch_watermark_shards",
                "Shards counted in the low watermark (active) and skipped as idle",
                &["state"],
            ),
            candidates_pending: gauge(
                &r,
                "credwatch_candidates_pending",
                "Second origins waiting for the watermark before they are judged",
            ),
            candidates: counter_vec(
                &r,
                "credwatch_candidates_total",
                "Second origins judged: settled into a finding by the watermark, released early after max_hold_secs, or withdrawn (explained by a credit, restart or earlier home that arrived meanwhile)",
                &["outcome"],
            ),
            late_sightings: counter(
                &r,
                "credwatch_late_sightings_total",
                "Events of a contested session that arrived after the watermark had passed them plus the allowed lateness",
            ),
            book_evicted: counter(
                &r,
                "credwatch_instance_book_evicted_total",
                "Instance-book entries dropped because the book reached detection.max_book_entries",
            ),
            suppressed: counter(
                &r,
                "credwatch_findings_suppressed_total",
                "Findings not repeated for an already reported (rule, session, origin)",
            ),
            dynamodb_calls: counter_vec(
                &r,
                "credwatch_dynamodb_calls_total",
                "DynamoDB calls, by table (lease, state) and op (read, write)",
                &["table", "op"],
            ),
            dynamodb_conditional_failures: counter(
                &r,
                "credwatch_dynamodb_conditional_failures_total",
                "Conditional DynamoDB writes whose condition failed (races lost, as designed)",
            ),
            dynamodb_errors: counter(
                &r,
                "credwatch_dynamodb_errors_total",
                "DynamoDB calls that failed (network, throttling, service)",
            ),
            lease_events: counter_vec(
                &r,
                "credwatch_lease_events_total",
                "Shard lease changes seen by this worker (taken, stolen, lost, released, finished)",
                &["event"],
            ),
            proposals: counter_vec(
                &r,
                "credwatch_shared_store_proposals_total",
                "First origins proposed to the shared session store, by outcome (ok, error)",
                &["outcome"],
            ),
            claimed_elsewhere: counter(
                &r,
                "credwatch_findings_claimed_elsewhere_total",
                "Findings not written because another worker had already reported them",
            ),
            dynamodb: std::sync::OnceLock::new(),
            knowledge: std::sync::OnceLock::new(),
            ranges_max_age_days: std::sync::atomic::AtomicU64::new(30),
            ip_ranges_created: gauge(
                &r,
                "credwatch_ip_ranges_created_timestamp_seconds",
                "createDate of the AWS IP ranges in use (Unix time)",
            ),
            ip_ranges_age: gauge(
                &r,
                "credwatch_ip_ranges_age_seconds",
                "Age of the AWS IP ranges in use, from their createDate",
            ),
            ip_ranges_stale: gauge(
                &r,
                "credwatch_ip_ranges_stale",
                "1 when the AWS IP ranges in use are older than placement.max_age_days",
            ),
            ip_ranges_prefixes: gauge_vec(
                &r,
                "credwatch_ip_ranges_prefixes",
                "Entries of the AWS IP ranges in use, by family (ipv4, ipv6)",
                &["family"],
            ),
            ip_ranges_refreshes: counter_vec(
                &r,
                "credwatch_ip_ranges_refreshes_total",
                "Refreshes of the AWS IP ranges, by outcome (ok: new ranges loaded, error: kept the ones in use)",
                &["outcome"],
            ),
            inventory_resources: gauge_vec(
                &r,
                "credwatch_inventory_resources",
                "Resources the inventory holds (instances, Elastic IPs, NAT gateways, VPCs, subnets, endpoints), by account and region",
                &["account", "region"],
            ),
            inventory_last_refresh: gauge_vec(
                &r,
                "credwatch_inventory_last_refresh_timestamp_seconds",
                "When the inventory last read an account and region successfully (Unix time)",
                &["account", "region"],
            ),
            inventory_part_error: gauge_vec(
                &r,
                "credwatch_inventory_read_failing",
                "1 when the last read of an account and region failed (its data is from the read before)",
                &["account", "region"],
            ),
            inventory_refreshes: counter_vec(
                &r,
                "credwatch_inventory_refreshes_total",
                "Reads of an account and region, by outcome (ok, error)",
                &["outcome"],
            ),
            bad_records: counter_vec(
                &r,
                "credwatch_bad_records_total",
                "Records or events set aside (dead-lettered), by kind",
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
                "Checkpoint writes, by outcome (ok, error)",
                &["outcome"],
            ),
            output_write_errors: counter_vec(
                &r,
                "credwatch_output_write_errors_total",
                "Failed writes of findings, dead letters or the escalation spool (each retried)",
                &["output"],
            ),
            output_blocked: gauge_vec(
                &r,
                "credwatch_output_blocked",
                "1 while an output cannot be written and reading waits for it",
                &["output"],
            ),
            checkpoint_age: gauge(
                &r,
                "credwatch_checkpoint_age_seconds",
                "Seconds since the last successful checkpoint (since start until the first one)",
            ),
            checkpoint_last_success: gauge(
                &r,
                "credwatch_checkpoint_last_success_timestamp_seconds",
                "Unix time of the last successful checkpoint (0: none yet)",
            ),
            last_checkpoint_unix: AtomicI64::new(0),
            started_unix: chrono::Utc::now().timestamp(),
            detection_latency: histogram(
                &r,
                "credwatch_detection_latency_seconds",
                "From the record's arrival in Kinesis to its finding written",
                &LATENCY_BUCKETS,
            ),
            event_to_finding: histogram(
                &r,
                "credwatch_event_to_finding_seconds",
                "From the event's time to its finding written",
                &EVENT_AGE_BUCKETS,
            ),
            escalations: counter_vec(
                &r,
                "credwatch_escalations_total",
                "Escalation outcomes by destination: delivered, retried, rejected (per attempt), \
                 dead_lettered (per finding given up on)",
                &["destination", "outcome"],
            ),
            escalation_retries: counter_vec(
                &r,
                "credwatch_escalation_retries_total",
                "Escalation delivery retries, by destination",
                &["destination"],
            ),
            escalation_spool_depth: gauge_vec(
                &r,
                "credwatch_escalation_spool_depth",
                "Findings waiting in the escalation spool, by destination",
                &["destination"],
            ),
            escalation_latency,
            ready: AtomicBool::new(false),
            recent_findings: Arc::new(crate::recent::RecentFindings::default()),
            registry: r,
        }
    }

    /// Pre-creates the label sets dashboards expect, so series exist at 0 before anything happens.
    /// The low watermark as the settler last computed it.
    pub fn set_watermark(&self, low: Option<crate::settle::watermark::Low>) {
        if let Some(l) = low {
            self.low_watermark.set(l.watermark.clamp(0, i64::MAX / 2));
            self.watermark_shards
                .with_label_values(&["active"])
                .set(l.active as i64);
            self.watermark_shards
                .with_label_values(&["idle"])
                .set(l.idle as i64);
        }
    }

    pub fn init_labels(&self) {
        for o in ["settled", "released_early", "withdrawn"] {
            self.candidates.with_label_values(&[o]);
        }
        for st in ["active", "idle"] {
            self.watermark_shards.with_label_values(&[st]);
        }
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
        for c in CredentialClass::ALL {
            self.lifetime_exceeded.with_label_values(&[c.as_str()]);
        }
        for e in Explanation::ALL {
            self.explained.with_label_values(&[e.as_str()]);
        }
        for p in crate::engine::PlaceKind::ALL {
            self.events_by_place.with_label_values(&[p.as_str()]);
        }
        for r in crate::rules::RULES {
            self.findings
                .with_label_values(&[r.id, r.severity.as_str()]);
        }
        for t in ["lease", "state"] {
            for op in ["read", "write"] {
                self.dynamodb_calls.with_label_values(&[t, op]);
            }
        }
        for e in ["taken", "stolen", "lost", "released", "finished"] {
            self.lease_events.with_label_values(&[e]);
        }
        for o in ["ok", "error"] {
            self.proposals.with_label_values(&[o]);
        }
        for o in ["ok", "error"] {
            self.checkpoint_writes.with_label_values(&[o]);
        }
        for o in OUTPUTS {
            self.output_write_errors.with_label_values(&[o]);
            self.output_blocked.with_label_values(&[o]);
        }
    }

    /// Pre-creates one shard's series at 0 (records, bytes, events, throttles, errors by kind).
    /// Idempotent; every shard that has answered a GetRecords is also filled at scrape time.
    pub fn init_shard(&self, shard: &str) {
        self.records.with_label_values(&[shard]);
        self.record_bytes.with_label_values(&[shard]);
        self.shard_events.with_label_values(&[shard]);
        self.throttles.with_label_values(&[shard]);
        for e in GET_RECORDS_ERRORS {
            self.get_records_errors.with_label_values(&[shard, e]);
        }
    }

    /// Drops a finished shard's lag gauge (a closed shard's last MillisBehindLatest is not lag);
    /// its counters stay.
    pub fn shard_finished(&self, shard: &str) {
        let _ = self.behind_latest.remove_label_values(&[shard]);
    }

    /// Shards that reported a MillisBehindLatest: every shard read since it started.
    fn reporting_shards(&self) -> Vec<String> {
        self.behind_latest
            .collect()
            .iter()
            .flat_map(|mf| mf.get_metric())
            .flat_map(|m| m.get_label())
            .filter(|l| l.name() == "shard")
            .map(|l| l.value().to_string())
            .collect()
    }

    /// Copies the engine's counters and sizes into the registry (counters only move forward) and
    /// fills in the series dashboards expect: per shard and per configured rule severity.
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
        for p in crate::engine::PlaceKind::ALL {
            bump(
                &self.events_by_place.with_label_values(&[p.as_str()]),
                s.by_place[p.index()].load(Relaxed),
            );
        }
        self.issued_keys.set(engine.issuance.len() as i64);
        bump(&self.issuance_events, engine.issuance.seen.load(Relaxed));
        bump(&self.sessions_expired, s.sessions_expired.load(Relaxed));
        bump(&self.sessions_evicted, s.sessions_evicted.load(Relaxed));
        bump(&self.late_events, s.late_events.load(Relaxed));
        for c in CredentialClass::ALL {
            bump(
                &self.lifetime_exceeded.with_label_values(&[c.as_str()]),
                s.lifetime_exceeded[c as usize].load(Relaxed),
            );
        }
        let p = &engine.pending.stats;
        for (outcome, v) in [
            ("settled", &p.settled),
            ("released_early", &p.released_early),
            ("withdrawn", &p.withdrawn),
        ] {
            bump(
                &self.candidates.with_label_values(&[outcome]),
                v.load(Relaxed),
            );
        }
        bump(&self.late_sightings, p.late.load(Relaxed));
        bump(&self.book_evicted, engine.instances.evicted.load(Relaxed));
        self.candidates_pending.set(engine.pending.waiting() as i64);
        bump(&self.suppressed, s.suppressed.load(Relaxed));
        let calls = s.authority_calls.load(Relaxed);
        let errors = s.authority_errors.load(Relaxed);
        bump(&self.proposals.with_label_values(&["error"]), errors);
        bump(
            &self.proposals.with_label_values(&["ok"]),
            calls.saturating_sub(errors),
        );
        if let Some(c) = self.dynamodb.get() {
            for (t, op, v) in [
                ("lease", "read", &c.lease_reads),
                ("lease", "write", &c.lease_writes),
                ("state", "read", &c.state_reads),
                ("state", "write", &c.state_writes),
            ] {
                bump(
                    &self.dynamodb_calls.with_label_values(&[t, op]),
                    v.load(Relaxed),
                );
            }
            bump(
                &self.dynamodb_conditional_failures,
                c.conditional_failures.load(Relaxed),
            );
            bump(&self.dynamodb_errors, c.errors.load(Relaxed));
        }
        self.sync_knowledge();
        self.watermark.set(engine.watermark());
        self.sessions_tracked.set(engine.tracked_sessions() as i64);
        self.interned_strings
            .set(engine.store.interned_strings() as i64);
        self.instances_tracked.set(engine.instances.len() as i64);
        let last = self.last_checkpoint_unix.load(Relaxed);
        self.checkpoint_last_success.set(last);
        let since = if last > 0 { last } else { self.started_unix };
        self.checkpoint_age
            .set((chrono::Utc::now().timestamp() - since).max(0));

        // Rules re-rated in config count under their configured severity.
        for r in crate::rules::RULES {
            if let Some(sev) = engine.rules.get(r.id) {
                self.findings.with_label_values(&[r.id, sev.as_str()]);
            }
        }
        for shard in self.reporting_shards() {
            self.init_shard(&shard);
        }
    }

    /// The AWS ranges' and the inventory's gauges, from the handles `run` set.
    fn sync_knowledge(&self) {
        let Some((placement, inventory)) = self.knowledge.get() else {
            return;
        };
        let now = chrono::Utc::now().timestamp();
        let st = placement.stats();
        self.ip_ranges_created.set(st.created_at.load(Relaxed));
        self.ip_ranges_age.set(st.age_secs(now).unwrap_or(0));
        self.ip_ranges_stale.set(i64::from(
            st.stale(now, self.ranges_max_age_days.load(Relaxed)),
        ));
        self.ip_ranges_prefixes
            .with_label_values(&["ipv4"])
            .set(st.prefixes_v4.load(Relaxed) as i64);
        self.ip_ranges_prefixes
            .with_label_values(&["ipv6"])
            .set(st.prefixes_v6.load(Relaxed) as i64);
        let bump = |c: IntCounter, v: u64| {
            let cur = c.get();
            if v > cur {
                c.inc_by(v - cur);
            }
        };
        bump(
            self.ip_ranges_refreshes.with_label_values(&["ok"]),
            st.refresh_ok.load(Relaxed),
        );
        bump(
            self.ip_ranges_refreshes.with_label_values(&["error"]),
            st.refresh_errors.load(Relaxed),
        );
        let Some(inv) = inventory else { return };
        let (mut ok, mut err) = (0, 0);
        for p in inv.stats() {
            let l = [p.account.as_str(), p.region.as_str()];
            self.inventory_resources
                .with_label_values(&l)
                .set(p.resources as i64);
            self.inventory_last_refresh
                .with_label_values(&l)
                .set(p.last_success_secs.unwrap_or(0));
            self.inventory_part_error
                .with_label_values(&l)
                .set(i64::from(p.error));
            ok += p.refreshes_ok;
            err += p.refreshes_error;
        }
        bump(self.inventory_refreshes.with_label_values(&["ok"]), ok);
        bump(self.inventory_refreshes.with_label_values(&["error"]), err);
    }

    /// What `/readyz` answers: 200 when the coordinator says ready and at least one shard is
    /// owned, else 503.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed) && self.shards_owned.get() > 0
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
    if s.metrics.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Binds the metrics and health server at `metrics.addr`; returns the bound address and the
/// serving future. The server stops (gracefully) when `shutdown` is cancelled.
///
/// Beside `/metrics`, `/livez` and `/readyz` (always open), `GET /findings` serves the recent
/// findings ([`crate::recent`]): its ring is sized by `metrics.findings_capacity` and filled
/// from the end of `output.findings_file`; who may read it is decided from the bound address
/// and the token ([`crate::recent::access`]), and said in the log. A token that cannot be read
/// is an error.
pub async fn serve(
    cfg: &crate::config::Config,
    metrics: Arc<Metrics>,
    engine: Arc<Engine>,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let addr = &cfg.metrics.addr;
    let token = crate::recent::access::read_token(&cfg.metrics)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("metrics.addr {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let access = crate::recent::access::Access::decide(&cfg.metrics, local, token);
    access.log(local);
    let recent = metrics.recent_findings.clone();
    recent.set_capacity(cfg.metrics.findings_capacity);
    if let Some(path) = &cfg.output.findings_file {
        match recent.preload_from_file(path) {
            Ok(n) if n > 0 => {
                tracing::info!(findings = n, file = %path.display(), "GET /findings: recent findings read back")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "GET /findings: could not read back the recent findings")
            }
        }
    }
    let mut app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/health/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/health/readyz", get(readyz))
        .with_state(HttpState { metrics, engine });
    if let Some(findings) = crate::recent::http::router(access, recent) {
        app = app.merge(findings);
    }
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok((local, handle))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::config::Config;
    use crate::engine::Position;

    /// Label names that would carry a credential, an address or an account.
    const FORBIDDEN_LABELS: &[&str] = &[
        "access_key",
        "access_key_id",
        "account",
        "account_id",
        "address",
        "arn",
        "credential",
        "host",
        "ip",
        "principal",
        "principal_arn",
        "session",
        "source_ip",
        "url",
        "user",
        "user_agent",
    ];

    /// Name parts that are not base units.
    const NON_BASE_UNITS: &[&str] = &[
        "milliseconds",
        "millis",
        "ms",
        "microseconds",
        "us",
        "nanoseconds",
        "ns",
        "minutes",
        "hours",
        "days",
        "kilobytes",
        "kb",
        "megabytes",
        "mb",
        "gigabytes",
        "gb",
        "bits",
        "percent",
    ];

    /// One family of the text exposition.
    #[derive(Default, Debug)]
    struct Family {
        kind: String,
        help: String,
        /// (sample name, labels)
        samples: Vec<(String, BTreeMap<String, String>)>,
    }

    /// Parses the text exposition into families by name (label values are plain here: no
    /// escapes, no commas).
    fn parse(text: &str) -> BTreeMap<String, Family> {
        let mut out: BTreeMap<String, Family> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                out.entry(name.into()).or_default().help = help.into();
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE line has a type");
                out.entry(name.into()).or_default().kind = kind.into();
            } else {
                assert!(!line.starts_with('#'), "unexpected comment: {line}");
                let (series, _value) = line.rsplit_once(' ').expect("sample has a value");
                let (name, labels) = match series.split_once('{') {
                    Some((n, l)) => (n, l.trim_end_matches('}')),
                    None => (series, ""),
                };
                let labels: BTreeMap<String, String> = labels
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        let (k, v) = l.split_once('=').expect("label is k=\"v\"");
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .filter_map(|s| name.strip_suffix(s))
                    .find(|base| out.get(*base).is_some_and(|f| f.kind == "histogram"))
                    .unwrap_or(name);
                out.get_mut(family)
                    .unwrap_or_else(|| panic!("sample {name} before its TYPE line"))
                    .samples
                    .push((name.to_string(), labels));
            }
        }
        out
    }

    fn is_snake(s: &str) -> bool {
        !s.is_empty()
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !s.contains("__")
            && !s.ends_with('_')
    }

    /// A label value that looks like an access key, an IPv4 address, an account id or a URL.
    fn looks_sensitive(v: &str) -> bool {
        let key = (v.starts_with("ASIA") || v.starts_with("AKIA")) && v.len() >= 16;
        let ipv4 = v.parse::<std::net::Ipv4Addr>().is_ok();
        let ipv6 = v.contains(':') && v.parse::<std::net::Ipv6Addr>().is_ok();
        let account = v.len() == 12 && v.bytes().all(|b| b.is_ascii_digit());
        key || ipv4 || ipv6 || account || v.contains("://")
    }

    /// Checks one family against the naming rules; returns the problems found.
    fn problems(name: &str, f: &Family) -> Vec<String> {
        let mut p = Vec::new();
        if !is_snake(name) {
            p.push("not lower snake case".into());
        }
        let standard = name.starts_with("process_");
        if !standard && !name.starts_with("credwatch_") {
            p.push("no credwatch_ prefix".into());
        }
        if f.help.trim().is_empty() {
            p.push("no HELP".into());
        }
        match f.kind.as_str() {
            "counter" => {
                if !name.ends_with("_total") {
                    p.push("counter without _total".into());
                }
            }
            "gauge" | "histogram" | "summary" => {
                if name.ends_with("_total") {
                    p.push(format!("{} ending in _total", f.kind));
                }
            }
            other => p.push(format!("type {other:?} (untyped?)")),
        }
        let base = name.strip_suffix("_total").unwrap_or(name);
        if base.contains("_total") {
            p.push("_total inside the name".into());
        }
        for suffix in ["_count", "_sum", "_bucket"] {
            if base.ends_with(suffix) {
                p.push(format!("ends with the reserved {suffix}"));
            }
        }
        for part in base.split('_') {
            if NON_BASE_UNITS.contains(&part) {
                p.push(format!("non-base unit {part:?}"));
            }
        }
        // A unit in the name comes last (before `_total`): `..._seconds`, `..._bytes`.
        for unit in ["seconds", "bytes"] {
            let parts: Vec<&str> = base.split('_').collect();
            if let Some(i) = parts.iter().position(|x| *x == unit) {
                if i != parts.len() - 1 {
                    p.push(format!("unit {unit:?} not at the end"));
                }
            }
        }
        if f.kind == "histogram" && !(base.ends_with("_seconds") || base.ends_with("_bytes")) {
            p.push("histogram without a base unit (_seconds, _bytes)".into());
        }
        if name.contains("timestamp") && !base.ends_with("_timestamp_seconds") {
            p.push("a timestamp that is not _timestamp_seconds".into());
        }
        if f.samples.is_empty() {
            p.push("no sample".into());
        }
        for (sample, labels) in &f.samples {
            for (k, v) in labels {
                if k == "le" && f.kind == "histogram" {
                    continue;
                }
                if !is_snake(k) {
                    p.push(format!("{sample}: label name {k:?} not lower snake case"));
                }
                // The inventory's own metrics are per account and region on purpose (the issue
                // asks for its size and last refresh per account): the accounts are the ones the
                // operator configured, a small fixed set, and no credential or address.
                let inventory_account = name.starts_with("credwatch_inventory_") && k == "account";
                if FORBIDDEN_LABELS.contains(&k.as_str()) && !inventory_account {
                    p.push(format!(
                        "{sample}: label {k:?} could carry sensitive values"
                    ));
                }
                if looks_sensitive(v) && !inventory_account {
                    p.push(format!("{sample}: label value {k}={v:?} looks sensitive"));
                }
            }
        }
        p
    }

    /// An engine that has seen a stolen instance credential: a home and a second origin.
    fn busy_engine(cfg: &Config) -> Engine {
        let engine = Engine::new(cfg);
        let event = |id: &str, ip: &str, time: &str| {
            serde_json::json!({
                "eventVersion": "1.08", "eventID": id, "eventTime": time,
                "eventName": "DescribeInstances", "eventSource": "ec2.amazonaws.com",
                "eventType": "AwsApiCall", "awsRegion": "us-east-1",
                "sourceIPAddress": ip, "userAgent": "aws-cli/2.15",
                "recipientAccountId": "111122223333",
                "userIdentity": {
                    "type": "AssumedRole",
                    "principalId": "AROAEXAMPLE:i-0123456789abcdef0",
                    "arn": "arn:aws:sts::111122223333:assumed-role/app/i-0123456789abcdef0",
                    "accountId": "111122223333",
                    "accessKeyId": "ASIAEXAMPLEEXAMPLE01",
                    "sessionContext": {
                        "sessionIssuer": {"type": "Role", "userName": "app",
                            "arn": "arn:aws:iam::111122223333:role/app"},
                        "attributes": {"creationDate": "2024-08-02T08:00:00Z",
                            "mfaAuthenticated": "false"},
                        "ec2RoleDelivery": "2.0"
                    }
                }
            })
            .to_string()
        };
        let pos = Position {
            prefix: "test",
            index: 0,
        };
        let home = event("e-home", "54.10.0.1", "2024-08-02T08:10:00Z");
        let second = event("e-second", "203.0.113.7", "2024-08-02T08:11:00Z");
        let mut findings = engine.process_json(&home, pos).expect("home event parses");
        findings.extend(
            engine
                .process_json(&second, pos)
                .expect("second event parses"),
        );
        findings.extend(engine.settle(crate::settle::SettleAt::END));
        assert!(
            findings.iter().any(|f| f.rule == "session_token_reuse"),
            "the pair should give a finding: {findings:?}"
        );
        engine
    }

    #[test]
    fn every_rendered_metric_follows_the_naming_rules() {
        let cfg = Config::default();
        let engine = busy_engine(&cfg);
        let m = Metrics::new();
        m.init_labels();
        // A shard that answered a GetRecords, and a finding observed as the shard task does.
        m.behind_latest
            .with_label_values(&["shardId-000000000000"])
            .set(1.5);
        m.findings
            .with_label_values(&["session_token_reuse", "high"])
            .inc();
        m.detection_latency.observe(0.2);
        m.event_to_finding.observe(300.0);
        // The escalation series, as src/escalation creates them for a destination.
        for o in ["delivered", "retried", "rejected", "dead_lettered"] {
            m.escalations.with_label_values(&["webhook-0", o]);
        }
        m.escalation_retries.with_label_values(&["webhook-0"]);
        m.escalation_latency.with_label_values(&["webhook-0"]);
        m.escalation_spool_depth
            .with_label_values(&["webhook-0"])
            .set(0);
        m.sync_engine(&engine);
        let text = m.render();
        let families = parse(&text);

        let mut bad = Vec::new();
        for (name, f) in &families {
            for p in problems(name, f) {
                bad.push(format!("{name}: {p}"));
            }
        }
        assert!(
            bad.is_empty(),
            "naming problems:\n{}\n\n{text}",
            bad.join("\n")
        );

        // Everything the dashboards and alerts use is there, with series, after init + sync.
        let names: BTreeSet<&str> = families.keys().map(String::as_str).collect();
        for want in [
            "credwatch_build_info",
            "credwatch_kinesis_records_total",
            "credwatch_kinesis_bytes_total",
            "credwatch_kinesis_events_total",
            "credwatch_kinesis_behind_latest_seconds",
            "credwatch_kinesis_get_records_throttled_total",
            "credwatch_kinesis_get_records_errors_total",
            "credwatch_kinesis_shards_owned",
            "credwatch_events_total",
            "credwatch_events_by_credential_total",
            "credwatch_origins_explained_total",
            "credwatch_event_watermark_timestamp_seconds",
            "credwatch_late_events_total",
            "credwatch_lifetime_exceeded_total",
            "credwatch_low_watermark_timestamp_seconds",
            "credwatch_watermark_shards",
            "credwatch_candidates_pending",
            "credwatch_candidates_total",
            "credwatch_late_sightings_total",
            "credwatch_instance_book_evicted_total",
            "credwatch_sessions_tracked",
            "credwatch_sessions_expired_total",
            "credwatch_store_interned_strings",
            "credwatch_instances_tracked",
            "credwatch_bad_records_total",
            "credwatch_findings_total",
            "credwatch_findings_suppressed_total",
            "credwatch_detection_latency_seconds",
            "credwatch_event_to_finding_seconds",
            "credwatch_checkpoint_writes_total",
            "credwatch_output_write_errors_total",
            "credwatch_output_blocked",
            "credwatch_checkpoint_age_seconds",
            "credwatch_checkpoint_last_success_timestamp_seconds",
            "credwatch_escalations_total",
            "credwatch_escalation_retries_total",
            "credwatch_escalation_spool_depth",
            "credwatch_escalation_delivery_seconds",
            "credwatch_dynamodb_calls_total",
            "credwatch_dynamodb_conditional_failures_total",
            "credwatch_dynamodb_errors_total",
            "credwatch_lease_events_total",
            "credwatch_shared_store_proposals_total",
            "credwatch_findings_claimed_elsewhere_total",
            #[cfg(target_os = "linux")]
            "process_resident_memory_bytes",
        ] {
            assert!(names.contains(want), "{want} is not rendered:\n{text}");
        }
        let values = |family: &str, label: &str| -> BTreeSet<String> {
            families[family]
                .samples
                .iter()
                .filter_map(|(_, l)| l.get(label).cloned())
                .collect()
        };
        assert_eq!(
            values("credwatch_bad_records_total", "kind").len(),
            BadKind::ALL.len()
        );
        assert_eq!(
            values("credwatch_kinesis_get_records_errors_total", "error"),
            GET_RECORDS_ERRORS.iter().map(|s| s.to_string()).collect()
        );
        assert_eq!(
            values("credwatch_kinesis_records_total", "shard"),
            BTreeSet::from(["shardId-000000000000".to_string()])
        );
        let rules = values("credwatch_findings_total", "rule");
        for r in crate::rules::RULES {
            assert!(rules.contains(r.id), "no series for rule {}", r.id);
        }
        // The engine's counters were copied.
        assert!(
            text.contains("credwatch_events_total{origin_class=\"public_ip\"} 2"),
            "{text}"
        );
        assert!(text.contains("credwatch_sessions_tracked 1"), "{text}");
    }

    #[test]
    fn ready_needs_the_coordinator_and_an_owned_shard() {
        let m = Metrics::new();
        assert!(!m.is_ready(), "not ready before anything");
        m.ready.store(true, Relaxed);
        assert!(!m.is_ready(), "not ready without a shard");
        m.shards_owned.set(2);
        assert!(m.is_ready());
        m.ready.store(false, Relaxed);
        assert!(!m.is_ready(), "not ready while shutting down");
    }

    #[test]
    fn checkpoint_age_counts_from_start_until_the_first_checkpoint() {
        let engine = Engine::new(&Config::default());
        let mut m = Metrics::new();
        m.started_unix -= 100;
        m.sync_engine(&engine);
        assert!(m.checkpoint_age.get() >= 100, "{}", m.checkpoint_age.get());
        assert_eq!(m.checkpoint_last_success.get(), 0);
        let now = chrono::Utc::now().timestamp();
        m.last_checkpoint_unix.store(now - 3, Relaxed);
        m.sync_engine(&engine);
        assert!((3..100).contains(&m.checkpoint_age.get()));
        assert_eq!(m.checkpoint_last_success.get(), now - 3);
    }

    #[test]
    fn a_finished_shard_loses_its_lag_but_keeps_its_counters() {
        let m = Metrics::new();
        m.init_shard("shardId-000000000001");
        m.behind_latest
            .with_label_values(&["shardId-000000000001"])
            .set(0.0);
        m.shard_finished("shardId-000000000001");
        let text = m.render();
        assert!(
            !text.contains("credwatch_kinesis_behind_latest_seconds{"),
            "{text}"
        );
        assert!(
            text.contains("credwatch_kinesis_records_total{shard=\"shardId-000000000001\"} 0"),
            "{text}"
        );
    }
}
