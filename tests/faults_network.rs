//! Network faults on the live path (issue #14), scripted and repeatable, loopback only: a fault
//! proxy (`support::fault_proxy`) sits between `credwatch run` and moto and throttles, fails,
//! resets, stalls or refuses the calls of a test's choosing for a while, mid-run.
//!
//! Each test puts a known workload (sessions whose home and second origin go through
//! PutLogEvents, a few log events that are not CloudTrail events, a few Kinesis records that are
//! not CloudWatch Logs envelopes), turns a fault on, and checks:
//! - every session gets exactly one `session_token_reuse` finding, none twice;
//! - every record and event read is accounted for: events decoded = events processed + events
//!   set aside, records set aside = the garbage put, and the dead-letter file holds exactly those;
//! - while degraded, credwatch says so (a log line) and a metric moved;
//! - the proxy really injected the fault;
//! - no panic, and the process still runs.
//!
//! moto keeps its data in memory: killing it loses the stream, so "the emulator is down and
//! back" is played by the proxy refusing every connection for a while (an outage), not by a
//! restart of moto.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::fault_proxy::{Fault, FaultProxy, Plan};
use support::moto::MotoServer;
use support::prometheus::free_port;
use support::run::{
    assert_one_finding_per_session, envelope, gzip, http_get, now_ms, sessions, Nets, Run, Session,
    State, FINDINGS_TIMEOUT, LOG_GROUP, RULE,
};

const NETS: Nets = Nets {
    home: "54.160",
    evil: "54.210.7",
};

const GET_RECORDS: &str = "Kinesis_20131202.GetRecords";
const GET_SHARD_ITERATOR: &str = "Kinesis_20131202.GetShardIterator";
const LIST_SHARDS: &str = "Kinesis_20131202.ListShards";

/// Seeds of the proxies' RNGs: a run is repeatable.
const SEED: u64 = 0x00c0_ffee_0014;

// ---- the stack -----------------------------------------------------------------------------

/// What a test put into the stream, to account for every record and event.
#[derive(Default, Debug, Clone, Copy)]
struct Put {
    /// Kinesis records holding CloudWatch Logs envelopes (one per PutLogEvents call, in moto).
    envelopes: usize,
    /// CloudTrail events in them.
    events: usize,
    /// Log events that are not CloudTrail events (set aside one by one).
    bad_events: usize,
    /// Of those, the ones that are JSON objects: decoded as events, then set aside (a log
    /// event that is not a JSON object is set aside by the decoder, not counted as decoded).
    bad_events_decoded: usize,
    /// Kinesis records that are not envelopes (set aside whole).
    garbage: usize,
}

/// moto, its stream (two shards) and log group with the subscription, a fault proxy in front
/// of it, and `credwatch run` reading the stream through the proxy.
struct Stack {
    moto: MotoServer,
    proxy: FaultProxy,
    stream: &'static str,
    state: State,
    port: u16,
    run: Option<Run>,
    put: Put,
}

impl Stack {
    async fn new(stream: &'static str, seed: u64) -> Stack {
        let moto = MotoServer::start();
        moto.create_stream(stream, 2).await;
        moto.create_log_group_with_subscription(LOG_GROUP, stream)
            .await;
        let proxy = FaultProxy::start(moto.port(), seed);
        Stack {
            moto,
            proxy,
            stream,
            state: State::new(),
            port: free_port(),
            run: None,
            put: Put::default(),
        }
    }

    /// Starts `credwatch run` with the proxy as its Kinesis endpoint.
    fn start(&mut self) {
        let addr = format!("127.0.0.1:{}", self.port);
        self.run = Some(Run::start(
            &self.proxy.endpoint(),
            self.stream,
            &self.state,
            Some(&addr),
            &[],
        ));
    }

    /// Waits until every one of `sessions` has a finding.
    async fn await_findings(&mut self, sessions: &[&Session]) {
        let run = self.run.as_mut().expect("credwatch run started");
        run.await_findings(&self.state, sessions).await;
    }

    fn run(&mut self) -> &mut Run {
        self.run.as_mut().expect("credwatch run started")
    }

    /// The sessions' home events (five per PutLogEvents call, on log streams of their own),
    /// then their second origins, straight into moto.
    async fn put_sessions(&mut self, tag: &str, sessions: &[Session]) {
        for (i, chunk) in sessions.chunks(5).enumerate() {
            let ts = now_ms();
            let events: Vec<(i64, String)> = chunk.iter().map(|s| (ts, s.home())).collect();
            self.moto
                .put_log_events(LOG_GROUP, &format!("{tag}-home-{i}"), &events)
                .await;
            self.put.envelopes += 1;
            self.put.events += events.len();
        }
        for (i, chunk) in sessions.chunks(5).enumerate() {
            let ts = now_ms();
            let events: Vec<(i64, String)> = chunk.iter().map(|s| (ts, s.second())).collect();
            self.moto
                .put_log_events(LOG_GROUP, &format!("{tag}-away-{i}"), &events)
                .await;
            self.put.envelopes += 1;
            self.put.events += events.len();
        }
    }

    /// What must be set aside: two log events that are not CloudTrail events (in one envelope),
    /// and three Kinesis records that are not envelopes, each under its own partition key.
    async fn put_set_asides(&mut self, tag: &str) {
        let ts = now_ms();
        let bad = vec![
            (ts, format!("{tag}: this is not JSON {{")),
            (
                ts,
                json!({"eventVersion": "1.08", "eventID": format!("{tag}-no-time")}).to_string(),
            ),
        ];
        self.moto
            .put_log_events(LOG_GROUP, &format!("{tag}-bad"), &bad)
            .await;
        self.put.envelopes += 1;
        self.put.bad_events += bad.len();
        self.put.bad_events_decoded += 1;
        let full = gzip(b"{\"messageType\":\"DATA_MESSAGE\"}");
        let garbage: Vec<(String, Vec<u8>)> = vec![
            (format!("{tag}-a"), b"definitely not gzip".to_vec()),
            (format!("{tag}-b"), full[..full.len() / 2].to_vec()),
            (format!("{tag}-c"), gzip(b"{ this is not json")),
        ];
        let records: Vec<(&str, Vec<u8>)> = garbage
            .iter()
            .map(|(k, d)| (k.as_str(), d.clone()))
            .collect();
        self.moto.put_records(self.stream, &records).await;
        self.put.garbage += records.len();
    }

    /// A metric's value summed over its series whose labels contain `labels` (0 when absent
    /// or when /metrics does not answer).
    fn metric(&self, name: &str, labels: &str) -> f64 {
        metric(self.port, name, labels)
    }
}

/// A metric's value on the `/metrics` of 127.0.0.1:`port`, summed over its series whose labels
/// contain `labels`; 0 when absent.
fn metric(port: u16, name: &str, labels: &str) -> f64 {
    let Some((200, body)) = http_get(port, "/metrics") else {
        return 0.0;
    };
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.split([' ', '{']).next() == Some(name) && (labels.is_empty() || l.contains(labels))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The whole log of a run.
fn log_of(run: &Run) -> String {
    std::fs::read_to_string(&run.log).unwrap_or_default()
}

/// Waits until a line of the run's log holds every one of `needles`; returns it.
async fn wait_log(run: &mut Run, needles: &[&str], timeout: Duration) -> String {
    let what = format!("a log line with {needles:?}");
    let log = run.log.clone();
    run.wait_for(&what, timeout, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_string)
            .ok_or_else(|| format!("{} log lines", text.lines().count()))
    })
    .await
}

/// Waits until the metric (summed over series matching `labels`) reaches `at_least`.
async fn wait_metric(
    run: &mut Run,
    port: u16,
    name: &str,
    labels: &str,
    at_least: f64,
    timeout: Duration,
) -> f64 {
    run.wait_for(
        &format!("{name}{{{labels}}} >= {at_least}"),
        timeout,
        || {
            let v = metric(port, name, labels);
            if v >= at_least {
                Ok(v)
            } else {
                Err(format!("{v}"))
            }
        },
    )
    .await
}

/// No panic in the log and the process still running.
fn assert_healthy(run: &mut Run, when: &str) {
    run.assert_running(when);
    let log = log_of(run);
    assert!(
        !log.contains("panicked"),
        "credwatch panicked ({when}):\n{}",
        run.log_tail()
    );
}

// ---- what is checked -----------------------------------------------------------------------

/// Every record and event put is accounted for, exactly: records read = records in the stream;
/// events processed = valid events put; set aside (the metric and the dead-letter file) = the
/// bad events and the garbage records, so events in + garbage records = processed + set aside;
/// events decoded (`credwatch_kinesis_events_total`) = the valid events and the bad ones that
/// are JSON objects. Waits (a bounded time) for the counters to reach what was put, then
/// compares exactly, so that a record read twice fails as surely as one never read.
async fn assert_accounted(stack: &mut Stack) {
    let put = stack.put;
    let in_stream = stack.moto.read_all_records(stack.stream).await.len();
    assert_eq!(
        in_stream,
        put.envelopes + put.garbage,
        "moto holds one record per PutLogEvents call and per garbage record: {put:?}"
    );
    let port = stack.port;
    let want_set_aside = (put.bad_events + put.garbage) as f64;
    let state = &stack.state;
    let want_records = in_stream as f64;
    let want_decoded = (put.events + put.bad_events_decoded) as f64;
    stack
        .run
        .as_mut()
        .expect("run started")
        .wait_for(
            "every record read and every bad record set aside",
            Duration::from_secs(20),
            || {
                let records = metric(port, "credwatch_kinesis_records_total", "");
                let decoded = metric(port, "credwatch_kinesis_events_total", "");
                let dead = state.dead_letters().len() as f64;
                if records >= want_records && decoded >= want_decoded && dead >= want_set_aside {
                    Ok(())
                } else {
                    Err(format!(
                        "records {records}/{want_records}, events decoded \
                         {decoded}/{want_decoded}, dead letters {dead}/{want_set_aside}"
                    ))
                }
            },
        )
        .await;
    // A moment more: a record read twice would show now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let records = stack.metric("credwatch_kinesis_records_total", "");
    let decoded = stack.metric("credwatch_kinesis_events_total", "");
    let processed = stack.metric("credwatch_events_total", "");
    let set_aside = stack.metric("credwatch_bad_records_total", "");
    let dead = stack.state.dead_letters();
    let counts = format!(
        "put {put:?}; in the stream {in_stream}; read: records {records}, events decoded \
         {decoded}, events processed {processed}, set aside {set_aside}, dead letters {}",
        dead.len()
    );
    eprintln!("accounting: {counts}");
    assert_eq!(records, want_records, "records read: {counts}");
    assert_eq!(decoded, want_decoded, "events decoded: {counts}");
    assert_eq!(processed, put.events as f64, "events processed: {counts}");
    assert_eq!(set_aside, want_set_aside, "records set aside: {counts}");
    assert_eq!(
        (put.events + put.bad_events + put.garbage) as f64,
        processed + set_aside,
        "events in (and garbage records) = processed + set aside: {counts}"
    );
    assert_eq!(dead.len() as f64, want_set_aside, "dead letters: {dead:#?}");
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for d in &dead {
        *kinds
            .entry(d["kind"].as_str().unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    let positions: BTreeSet<String> = dead
        .iter()
        .map(|d| format!("{}@{}", d["shard_id"], d["sequence_number"]))
        .collect();
    // The garbage records each once (three records); the two bad events share one record.
    assert_eq!(
        positions.len(),
        put.garbage + put.bad_events / 2,
        "a record dead-lettered twice? {dead:#?}"
    );
    eprintln!("dead letters by kind: {kinds:?}");
}

/// Waits for the sessions' findings, then checks them (exactly one each).
async fn assert_found_once(stack: &mut Stack, sessions: &[&Session]) {
    let state = &stack.state;
    let run = stack.run.as_mut().expect("run started");
    let findings = run.wait_for_findings(state, sessions).await;
    assert_one_finding_per_session(&findings, sessions);
}

// ---- Kinesis faults ------------------------------------------------------------------------

/// Throttling: ListShards and GetShardIterator answer LimitExceeded as credwatch starts, then
/// GetRecords answers ProvisionedThroughputExceeded on every call for a while, mid-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_backed_off_and_nothing_is_lost_or_repeated() {
    let started = Instant::now();
    let mut stack = Stack::new("throttle", SEED).await;
    let all = sessions("net-throttle", 12, NETS);
    let (early, late) = all.split_at(6);
    stack.put_sessions("early", early).await;
    stack.put_set_asides("throttle").await;

    stack
        .proxy
        .set_plan(Plan::pass().with(LIST_SHARDS, Fault::Throttle, 1.0).with(
            GET_SHARD_ITERATOR,
            Fault::Throttle,
            1.0,
        ));
    stack.start();
    let line = wait_log(
        stack.run(),
        &["listing shards failed", "LimitExceededException"],
        Duration::from_secs(20),
    )
    .await;
    eprintln!("degraded (ListShards): {line}");
    // Shards listed: the readers now meet the throttled GetShardIterator.
    stack
        .proxy
        .set_plan(Plan::pass().with(GET_SHARD_ITERATOR, Fault::Throttle, 1.0));
    let line = wait_log(
        stack.run(),
        &["GetShardIterator failed", "LimitExceededException"],
        Duration::from_secs(20),
    )
    .await;
    eprintln!("degraded (GetShardIterator): {line}");
    let port = stack.port;
    // LimitExceeded is not GetShardIterator's modelled throttling error, but it says "slow down":
    // counted as throttled.
    wait_metric(
        stack.run(),
        port,
        "credwatch_kinesis_get_records_errors_total",
        "error=\"throttled\"",
        2.0,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        stack.metric("credwatch_kinesis_records_total", ""),
        0.0,
        "nothing read before an iterator"
    );
    stack.proxy.clear();
    let early_refs: Vec<&Session> = early.iter().collect();
    stack.await_findings(&early_refs).await;

    // Mid-stream: every GetRecords throttled for 5 s while the rest of the workload arrives.
    stack
        .proxy
        .set_plan(Plan::pass().with(GET_RECORDS, Fault::Throttle, 1.0));
    let throttled_at = Instant::now();
    let records_before = stack.metric("credwatch_kinesis_records_total", "");
    let throttled_before = stack.metric(
        "credwatch_kinesis_get_records_errors_total",
        "error=\"throttled\"",
    );
    stack.put_sessions("late", late).await;
    let line = wait_log(
        stack.run(),
        &[
            "GetRecords failed",
            "ProvisionedThroughputExceededException",
        ],
        Duration::from_secs(20),
    )
    .await;
    eprintln!("degraded (GetRecords): {line}");
    // Both shards' readers were throttled, and counted it in both series.
    wait_metric(
        stack.run(),
        port,
        "credwatch_kinesis_get_records_throttled_total",
        "",
        2.0,
        Duration::from_secs(20),
    )
    .await;
    wait_metric(
        stack.run(),
        port,
        "credwatch_kinesis_get_records_errors_total",
        "error=\"throttled\"",
        throttled_before + 2.0,
        Duration::from_secs(20),
    )
    .await;
    let left = Duration::from_secs(5).saturating_sub(throttled_at.elapsed());
    tokio::time::sleep(left).await;
    assert_eq!(
        stack.metric("credwatch_kinesis_records_total", ""),
        records_before,
        "a record read while every GetRecords was throttled"
    );
    stack.proxy.clear();

    let refs: Vec<&Session> = all.iter().collect();
    assert_found_once(&mut stack, &refs).await;
    assert_accounted(&mut stack).await;
    let p = &stack.proxy;
    eprintln!("proxy: {}", p.summary());
    // The SDK tries each call three times before credwatch sees the error.
    assert!(
        p.injected_on(Fault::Throttle, LIST_SHARDS) >= 3,
        "{}",
        p.summary()
    );
    assert!(
        p.injected_on(Fault::Throttle, GET_SHARD_ITERATOR) >= 6,
        "{}",
        p.summary()
    );
    assert!(
        p.injected_on(Fault::Throttle, GET_RECORDS) >= 6,
        "{}",
        p.summary()
    );
    assert_healthy(stack.run(), "the end of the test");
    eprintln!("test took {:?}", started.elapsed());
}

/// A fault on a share of every Kinesis call from the start, then on every GetRecords for 5 s
/// while the second half of the workload arrives: every finding once, nothing read while every
/// GetRecords fails, the log line `degraded_log` and `error` counted, the fault injected.
async fn flaky_then_failing(
    tag: &'static str,
    seed: u64,
    fault: Fault,
    share: f64,
    degraded_log: &[&str],
    error: &str,
) -> Stack {
    let started = Instant::now();
    let mut stack = Stack::new(tag, seed).await;
    let all = sessions(&format!("net-{tag}"), 12, NETS);
    let (early, late) = all.split_at(6);
    stack.put_sessions("early", early).await;
    stack.put_set_asides(tag).await;
    stack
        .proxy
        .set_plan(Plan::pass().with("Kinesis_20131202.*", fault, share));
    stack.start();
    let early_refs: Vec<&Session> = early.iter().collect();
    stack.await_findings(&early_refs).await;

    stack
        .proxy
        .set_plan(Plan::pass().with(GET_RECORDS, fault, 1.0));
    let failing_at = Instant::now();
    let records_before = stack.metric("credwatch_kinesis_records_total", "");
    stack.put_sessions("late", late).await;
    let line = wait_log(stack.run(), degraded_log, Duration::from_secs(20)).await;
    eprintln!("degraded: {line}");
    let port = stack.port;
    wait_metric(
        stack.run(),
        port,
        "credwatch_kinesis_get_records_errors_total",
        &format!("error=\"{error}\""),
        2.0,
        Duration::from_secs(20),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(failing_at.elapsed())).await;
    assert_eq!(
        stack.metric("credwatch_kinesis_records_total", ""),
        records_before,
        "a record read while every GetRecords failed ({fault:?})"
    );
    stack.proxy.clear();

    let refs: Vec<&Session> = all.iter().collect();
    assert_found_once(&mut stack, &refs).await;
    assert_accounted(&mut stack).await;
    let p = &stack.proxy;
    eprintln!("proxy: {}", p.summary());
    assert!(p.injected_on(fault, GET_RECORDS) >= 6, "{}", p.summary());
    assert_healthy(stack.run(), "the end of the test");
    eprintln!("test took {:?}", started.elapsed());
    stack
}

/// Server errors: one Kinesis call in three answers 500 InternalFailure from the start (the
/// SDK's retries hide most of it), then every GetRecords for a while, mid-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_and_nothing_is_lost_or_repeated() {
    flaky_then_failing(
        "errors",
        SEED + 1,
        Fault::ServerError,
        0.3,
        &["GetRecords failed", "InternalFailure"],
        "service",
    )
    .await;
}

/// Connection resets: half of every Kinesis call's connections reset from the start, then every
/// GetRecords for a while, mid-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_resets_are_retried_and_nothing_is_lost_or_repeated() {
    let stack = flaky_then_failing(
        "resets",
        SEED + 2,
        Fault::Reset,
        0.5,
        &["GetRecords failed"],
        "network",
    )
    .await;
    let p = &stack.proxy;
    assert!(
        p.injected_on(Fault::Reset, LIST_SHARDS) + p.injected_on(Fault::Reset, GET_SHARD_ITERATOR)
            >= 1,
        "{}",
        p.summary()
    );
}

/// Stalls: every GetRecords answer is held 15 s, longer than the 10 s read timeout every AWS
/// call has (`kinesis::sdk_config`). Each attempt must give up at that timeout, not wait for the
/// answer; after the SDK's three attempts, credwatch says so and backs off. Without the timeout
/// this test fails: the attempts wait out the stall (`client_gave_up` false).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_answers_time_out_and_nothing_is_lost_or_repeated() {
    let started = Instant::now();
    let mut stack = Stack::new("stalls", SEED + 3).await;
    let all = sessions("net-stall", 12, NETS);
    let (early, late) = all.split_at(6);
    stack.put_sessions("early", early).await;
    stack.put_set_asides("stalls").await;
    stack.start();
    let early_refs: Vec<&Session> = early.iter().collect();
    stack.await_findings(&early_refs).await;

    stack.proxy.set_plan(
        Plan::pass()
            .with(GET_RECORDS, Fault::Stall, 1.0)
            .stall_for(Duration::from_secs(15)),
    );
    let stalled_at = Instant::now();
    stack.put_sessions("late", late).await;
    // Three attempts of 10 s each (plus the SDK's backoff between them) before the call fails.
    let line = wait_log(stack.run(), &["GetRecords failed"], Duration::from_secs(40)).await;
    eprintln!("degraded after {:?}: {line}", stalled_at.elapsed());
    let port = stack.port;
    wait_metric(
        stack.run(),
        port,
        "credwatch_kinesis_get_records_errors_total",
        "error=\"network\"",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    stack.proxy.clear();

    let refs: Vec<&Session> = all.iter().collect();
    assert_found_once(&mut stack, &refs).await;
    assert_accounted(&mut stack).await;
    let p = &stack.proxy;
    let stalls = p.stalls();
    eprintln!("proxy: {}; stalls: {stalls:?}", p.summary());
    assert!(
        p.injected_on(Fault::Stall, GET_RECORDS) >= 3,
        "{}",
        p.summary()
    );
    assert!(stalls.len() >= 3, "{stalls:?}");
    for s in &stalls {
        assert!(
            s.client_gave_up,
            "an attempt waited out a {:?} stall: no read timeout? {stalls:?}",
            s.held
        );
        assert!(
            s.held >= Duration::from_secs(9) && s.held <= Duration::from_secs(12),
            "an attempt gave up after {:?}, not at the 10 s read timeout: {stalls:?}",
            s.held
        );
    }
    assert_healthy(stack.run(), "the end of the test");
    eprintln!("test took {:?}", started.elapsed());
}

/// The emulator down and back: for 15 s the proxy refuses every connection and resets the open
/// ones, mid-stream (the stand-in for a restart of moto, which would lose the stream), while the
/// rest of the workload arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_the_endpoint_mid_stream_loses_and_repeats_nothing() {
    let started = Instant::now();
    let mut stack = Stack::new("outage", SEED + 4).await;
    let all = sessions("net-outage", 12, NETS);
    let (early, late) = all.split_at(6);
    stack.put_sessions("early", early).await;
    stack.put_set_asides("outage").await;
    stack.start();
    let early_refs: Vec<&Session> = early.iter().collect();
    stack.await_findings(&early_refs).await;

    let port = stack.port;
    let network_before = stack.metric(
        "credwatch_kinesis_get_records_errors_total",
        "error=\"network\"",
    );
    stack.proxy.outage_start();
    let down_at = Instant::now();
    stack.put_sessions("late", late).await;
    let line = wait_log(
        stack.run(),
        &["GetRecords failed", "onnection refused"],
        Duration::from_secs(14),
    )
    .await;
    eprintln!("degraded: {line}");
    let line = wait_log(
        stack.run(),
        &["listing shards failed"],
        Duration::from_secs(14),
    )
    .await;
    eprintln!("degraded: {line}");
    wait_metric(
        stack.run(),
        port,
        "credwatch_kinesis_get_records_errors_total",
        "error=\"network\"",
        network_before + 2.0,
        Duration::from_secs(14),
    )
    .await;
    let live = http_get(port, "/livez");
    assert!(
        matches!(live, Some((200, _))),
        "/livez during the outage: {live:?}"
    );
    tokio::time::sleep(Duration::from_secs(15).saturating_sub(down_at.elapsed())).await;
    stack.proxy.outage_end();
    eprintln!("outage lasted {:?}", down_at.elapsed());

    let refs: Vec<&Session> = all.iter().collect();
    assert_found_once(&mut stack, &refs).await;
    assert_accounted(&mut stack).await;
    let p = &stack.proxy;
    eprintln!("proxy: {}", p.summary());
    assert_eq!(p.outages(), 1);
    assert!(
        p.cut_by_outage() >= 1,
        "no open connection was cut: {}",
        p.summary()
    );
    assert_healthy(stack.run(), "the end of the test");
    eprintln!("test took {:?}", started.elapsed());
}

// ---- DynamoDB unreachable (several workers) ------------------------------------------------

const LEASE_SECS: u64 = 3;
const LEASE_TABLE: &str = "credwatch-faults-leases";
const STATE_TABLE: &str = "credwatch-faults-state";

/// One worker of the shared backend: Kinesis straight to moto, DynamoDB through the proxy.
struct Worker {
    id: &'static str,
    state: State,
    port: u16,
    run: Run,
}

impl Worker {
    fn start(moto: &MotoServer, dynamodb: &str, stream: &str, id: &'static str) -> Worker {
        let state = State::new();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let lease = LEASE_SECS.to_string();
        let run = Run::start(
            &moto.endpoint(),
            stream,
            &state,
            Some(&addr),
            &[
                ("CREDWATCH_COORDINATION__BACKEND", "dynamodb"),
                ("CREDWATCH_COORDINATION__LEASE_TABLE", LEASE_TABLE),
                ("CREDWATCH_COORDINATION__STATE_TABLE", STATE_TABLE),
                ("CREDWATCH_COORDINATION__ENDPOINT_URL", dynamodb),
                (
                    "CREDWATCH_COORDINATION__LEASE_DURATION_SECS",
                    lease.as_str(),
                ),
                ("CREDWATCH_WORKER_ID", id),
            ],
        );
        Worker {
            id,
            state,
            port,
            run,
        }
    }

    fn metric(&self, name: &str, labels: &str) -> f64 {
        metric(self.port, name, labels)
    }

    /// What this worker reads and holds, for messages: its records and lease series.
    fn reading(&self) -> String {
        let Some((200, body)) = http_get(self.port, "/metrics") else {
            return "no /metrics".into();
        };
        body.lines()
            .filter(|l| {
                l.starts_with("credwatch_kinesis_records_total")
                    || l.starts_with("credwatch_kinesis_shards_owned")
                    || l.starts_with("credwatch_lease_events_total")
                    || l.starts_with("credwatch_dynamodb_errors_total")
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Polls `check` every 200 ms for at most `timeout`, with every worker still running; panics
/// with the last answer and the workers' logs.
async fn wait_workers<T>(
    what: &str,
    timeout: Duration,
    workers: &mut [&mut Worker],
    mut check: impl FnMut(&[&mut Worker]) -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = match check(workers) {
            Ok(v) => return v,
            Err(s) => s,
        };
        for w in workers.iter_mut() {
            w.run.assert_running(what);
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = workers
                .iter()
                .map(|w| {
                    format!(
                        "--- {} (metrics: {}) ---\n{}",
                        w.id,
                        w.reading(),
                        w.run.log_tail()
                    )
                })
                .collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}; last seen: {seen}\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each session's home into `home_shard`, its second origin into `away_shard`: the two halves
/// of every session on two different workers.
fn split(sessions: &[Session], home_shard: &str, away_shard: &str) -> Vec<(String, Vec<u8>)> {
    sessions
        .iter()
        .flat_map(|s| {
            [
                (home_shard.to_string(), envelope("home", &[s.home()])),
                (away_shard.to_string(), envelope("away", &[s.second()])),
            ]
        })
        .collect()
}

/// Session name -> findings naming it, over every worker's findings file.
fn finding_counts(workers: &[&mut Worker]) -> BTreeMap<String, Vec<(String, Value)>> {
    let mut m: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    for w in workers {
        for f in w.state.findings() {
            let s = f["session"].as_str().unwrap_or("?").to_string();
            m.entry(s).or_default().push((w.id.to_string(), f));
        }
    }
    m
}

/// Waits until each of `sessions` has a finding in some worker's file, watches 3 s more, and
/// checks that every finding is one of `all` and no session was reported twice.
async fn found_once_across(
    what: &str,
    sessions: &[Session],
    all: &[Session],
    workers: &mut [&mut Worker],
    timeout: Duration,
) {
    let want: BTreeSet<String> = sessions.iter().map(Session::name).collect();
    wait_workers(what, timeout, workers, |ws| {
        let got: BTreeSet<String> = finding_counts(ws).keys().cloned().collect();
        let missing: Vec<&String> = want.difference(&got).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("{} missing: {missing:?}", missing.len()))
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let known: BTreeSet<String> = all.iter().map(Session::name).collect();
    let counts = finding_counts(workers);
    for (session, fs) in &counts {
        assert!(known.contains(session), "unexpected finding: {fs:?}");
        assert_eq!(
            fs.len(),
            1,
            "{session} reported {} times ({what}): {fs:#?}",
            fs.len()
        );
        assert_eq!(fs[0].1["rule"], RULE, "{fs:?}");
    }
}

/// DynamoDB (the lease and state tables) unreachable for 20 s while two workers read a stream
/// and sessions keep arriving, split over the two workers: the workers say so and count it,
/// stop reading the shards whose leases they can no longer renew, and once DynamoDB is back
/// every session is reported exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_unreachable_for_two_workers_then_back_reports_each_session_once() {
    let started = Instant::now();
    let moto = MotoServer::start_serial();
    let stream = "faults-coord";
    moto.create_stream(stream, 2).await;
    let keys = moto.hash_keys(stream).await;
    let proxy = FaultProxy::start(moto.port(), SEED + 5);
    let dynamodb = proxy.endpoint();
    let mut w1 = Worker::start(&moto, &dynamodb, stream, "w1");
    let mut w2 = Worker::start(&moto, &dynamodb, stream, "w2");
    let shards_read = |ws: &[&mut Worker]| {
        let owned: Vec<f64> = ws
            .iter()
            .map(|w| w.metric("credwatch_kinesis_shards_owned", ""))
            .collect();
        if owned == [1.0, 1.0] {
            Ok(())
        } else {
            Err(format!("shards owned {owned:?}"))
        }
    };
    wait_workers(
        "one shard read by each worker",
        Duration::from_secs(30),
        &mut [&mut w1, &mut w2],
        shards_read,
    )
    .await;
    let shard_ids: Vec<String> = keys.keys().cloned().collect();
    let (a, b) = (&shard_ids[0], &shard_ids[1]);

    let all = sessions("net-dynamo", 18, NETS);
    let (before, rest) = all.split_at(6);
    let (during, after_lost) = rest.split_at(6);
    moto.put_to_shards(stream, &keys, &split(before, a, b))
        .await;
    found_once_across(
        "the sessions put before the outage",
        before,
        &all,
        &mut [&mut w1, &mut w2],
        FINDINGS_TIMEOUT,
    )
    .await;

    let before: Vec<(f64, f64, usize)> = [&w1, &w2]
        .iter()
        .map(|w| {
            (
                w.metric("credwatch_dynamodb_errors_total", ""),
                w.metric("credwatch_lease_events_total", "event=\"lost\""),
                log_of(&w.run).len(),
            )
        })
        .collect();
    proxy.outage_start();
    let down_at = Instant::now();
    let outage = Duration::from_secs(20);
    // Sessions arriving as DynamoDB goes away: read before the workers notice.
    moto.put_to_shards(stream, &keys, &split(during, b, a))
        .await;
    // Every worker: DynamoDB errors counted, its lease lost (not renewed for a whole lease
    // duration), and log lines saying so.
    wait_workers(
        "both workers counting DynamoDB errors and losing their leases",
        Duration::from_secs(15),
        &mut [&mut w1, &mut w2],
        |ws| {
            let seen: Vec<(f64, f64)> = ws
                .iter()
                .map(|w| {
                    (
                        w.metric("credwatch_dynamodb_errors_total", ""),
                        w.metric("credwatch_lease_events_total", "event=\"lost\""),
                    )
                })
                .collect();
            let ok = seen
                .iter()
                .zip(&before)
                .all(|((errors, lost), (errors0, lost0, _))| errors > errors0 && lost > lost0);
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "(dynamodb errors, leases lost): {seen:?}, before {before:?}"
                ))
            }
        },
    )
    .await;
    let lost_at = down_at.elapsed();
    for (w, (_, _, offset)) in [&w1, &w2].into_iter().zip(&before) {
        let log = log_of(&w.run);
        let since = log.get(*offset..).unwrap_or("");
        let lost = since
            .lines()
            .find(|l| l.contains("lease lost; stopped reading the shard"));
        let failed = since.lines().find(|l| {
            l.contains("lease write failed") || l.contains("reading leases failed; will retry")
        });
        assert!(
            lost.is_some() && failed.is_some(),
            "{}: no log line for the lost lease ({lost:?}) or the failing table ({failed:?})\n{}",
            w.id,
            w.run.log_tail()
        );
        eprintln!(
            "{} degraded: {}\n{} degraded: {}",
            w.id,
            failed.unwrap(),
            w.id,
            lost.unwrap()
        );
    }
    // A reader told to stop finishes the record in hand, and its batch's records are counted
    // when it ends: wait until neither worker's count has moved for 3 s.
    let mut records_before: Vec<f64> = Vec::new();
    let mut still_since = Instant::now();
    loop {
        let now: Vec<f64> = [&w1, &w2]
            .iter()
            .map(|w| w.metric("credwatch_kinesis_records_total", ""))
            .collect();
        if now != records_before {
            records_before = now;
            still_since = Instant::now();
        }
        assert!(
            down_at.elapsed() < Duration::from_secs(14),
            "the workers kept reading after losing their leases: records {records_before:?}"
        );
        if still_since.elapsed() >= Duration::from_secs(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Sessions arriving while no worker holds a lease: nothing may read them.
    moto.put_to_shards(stream, &keys, &split(after_lost, a, b))
        .await;
    // What an operator sees meanwhile: no shard owned, not ready. Recorded, and asserted at
    // the end (after the recovery checks).
    let mut stale: Vec<String> = Vec::new();
    let watch_until = outage.saturating_sub(Duration::from_secs(1));
    let views = loop {
        let views: Vec<String> = [&w1, &w2]
            .iter()
            .filter_map(|w| {
                let owned = w.metric("credwatch_kinesis_shards_owned", "");
                let ready = http_get(w.port, "/readyz").map(|(s, _)| s);
                (owned != 0.0 || ready != Some(503))
                    .then(|| format!("{}: shards_owned {owned}, /readyz {ready:?}", w.id))
            })
            .collect();
        if views.is_empty() || down_at.elapsed() >= watch_until {
            break views;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if !views.is_empty() {
        stale.push(format!(
            "{:?} into the DynamoDB outage, {:?} after both workers counted their lease lost, \
             a worker still says it reads: {views:?}",
            down_at.elapsed(),
            down_at.elapsed().saturating_sub(lost_at)
        ));
    } else {
        eprintln!(
            "no shard owned and /readyz 503 on both workers {:?} into the outage",
            down_at.elapsed()
        );
    }
    tokio::time::sleep(outage.saturating_sub(down_at.elapsed())).await;
    for (w, n) in [&w1, &w2].into_iter().zip(&records_before) {
        assert_eq!(
            w.metric("credwatch_kinesis_records_total", ""),
            *n,
            "{} read records while it held no lease\n{}",
            w.id,
            w.run.log_tail()
        );
    }
    proxy.outage_end();
    eprintln!("DynamoDB outage lasted {:?}", down_at.elapsed());

    wait_workers(
        "one shard read by each worker again",
        Duration::from_secs(20),
        &mut [&mut w1, &mut w2],
        shards_read,
    )
    .await;
    found_once_across(
        "every session after DynamoDB came back",
        &all,
        &all,
        &mut [&mut w1, &mut w2],
        Duration::from_secs(30),
    )
    .await;
    eprintln!("proxy: {}", proxy.summary());
    assert_eq!(proxy.outages(), 1);
    for w in [&mut w1, &mut w2] {
        let id = w.id;
        assert_healthy(&mut w.run, &format!("the end of the test ({id})"));
        let unreachable = log_of(&w.run)
            .lines()
            .filter(|l| {
                l.contains("shared session store unreachable")
                    || l.contains("could not claim a finding")
            })
            .count();
        eprintln!(
            "{id}: {unreachable} log lines deciding or reporting without the state table; \
             shared_store_proposals{{error}} {}",
            w.metric(
                "credwatch_shared_store_proposals_total",
                "outcome=\"error\""
            )
        );
    }
    assert!(
        stale.is_empty(),
        "while DynamoDB was unreachable: {stale:?} (the gauge and /readyz are updated only when \
         a lease scan succeeds or the stopped reader is joined)"
    );
    eprintln!("test took {:?}", started.elapsed());
}
