//! Settling is order-free: whatever order shards deliver a session's events in, and however the
//! events are split over shards and files, the `session_token_reuse` findings are the ones the
//! events in time order give: the same ids and the same evidence. And findings released as the
//! event-time watermark passes them are the final ones.

mod support;

use std::cell::Cell;
use std::path::PathBuf;

use credwatch::config::Config;
use credwatch::decode::Limits;
use credwatch::engine::{Engine, Position};
use credwatch::finding::Finding;
use credwatch::hunt::{hunt_files, HuntSummary};
use credwatch::settle::SettleAt;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use serde_json::{json, Value};
use support::events::{Ev, T0};

/// These tests are about settling second origins; their addresses are documentation ranges,
/// outside AWS, where `workload_credentials_outside_aws` (judged on the single event, with its
/// own tables in `tests/issuance.rs` and `tests/places.rs`) would fire on every instance call.
fn reuse_only() -> Config {
    Config::from_toml_str("[rules.workload_credentials_outside_aws]\nenabled = false\n").unwrap()
}

const HOUR: i64 = 3600;
const DAY: i64 = 86_400;
const RULE: &str = "session_token_reuse";
const LAMBDA_UA: &str = "Boto3/1.34 md/Botocore#1.34 exec-env/AWS_Lambda_python3.12";
const HOME: &str = "54.10.10.10";
const EVIL: &str = "203.0.113.66";

/// Feeds one event, collecting what it reports at once (event rules).
fn feed(engine: &Engine, ev: &Ev, prefix: &str, index: usize, out: &mut Vec<Finding>) {
    out.extend(
        engine
            .process_json(&ev.text(), Position { prefix, index })
            .expect("event parses"),
    );
}

fn by_time(events: &[Ev]) -> Vec<Ev> {
    let mut v = events.to_vec();
    v.sort_by(|a, b| (a.t, a.id()).cmp(&(b.t, b.id())));
    v
}

/// Checks `got` against the events (and the late ones) in time order; returns that answer.
fn same_as_in_time_order(
    cfg: &Config,
    events: &[Ev],
    late: &[Ev],
    got: &[Finding],
) -> Result<Vec<Finding>, TestCaseError> {
    let all: Vec<Ev> = events.iter().chain(late).cloned().collect();
    let want = in_time_order(cfg, &all);
    prop_assert!(
        comparable_all(got) == comparable_all(&want),
        "{}",
        diff(got, &want)
    );
    Ok(want)
}

/// The events in (eventTime, eventID) order through one engine, settled at the end.
fn in_time_order(cfg: &Config, events: &[Ev]) -> Vec<Finding> {
    let engine = Engine::new(cfg);
    let mut out = Vec::new();
    for (i, e) in by_time(events).iter().enumerate() {
        feed(&engine, e, "sorted", i, &mut out);
    }
    out.extend(engine.settle(SettleAt::END));
    out
}

/// A finding as compared across runs: everything but
/// - when it was made, and when the event that completed it arrived (wall clock);
/// - where its events were read (`source` is known only for events the engine had in hand);
/// - its claim (not part of the report: how long workers deduplicate it, from the session's
///   expiry as known when it was judged, which grows with the session's later calls);
/// - the `explained_so_far` note, which lists the uses explained as they were read (a use read
///   after the call that credits its address is noted, one read before it is not).
fn comparable(f: &Finding) -> Finding {
    let mut f = f.clone();
    f.detected_at = String::new();
    f.arrived_at = None;
    f.claim = None;
    f.exceptions_checked
        .retain(|c| c.exception != "explained_so_far");
    for e in &mut f.events {
        e.source = None;
    }
    f
}

fn comparable_all(findings: &[Finding]) -> Vec<Finding> {
    let mut v: Vec<Finding> = findings.iter().map(comparable).collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

/// What differs between two runs' findings, for failure messages.
fn diff(got: &[Finding], want: &[Finding]) -> String {
    let (g, w) = (comparable_all(got), comparable_all(want));
    let mut out = String::new();
    for f in &g {
        match w.iter().find(|x| x.id == f.id) {
            None => out += &format!("only here: {}\n  {:?}\n", f.title, f.events),
            Some(x) if x != f => {
                out += &format!("differs: {}\n  here:   {f:?}\n  sorted: {x:?}\n", f.title)
            }
            Some(_) => {}
        }
    }
    for x in w.iter().filter(|x| !g.iter().any(|f| f.id == x.id)) {
        out += &format!("only sorted: {}\n  {:?}\n", x.title, x.events);
    }
    out
}

fn ids(findings: &[Finding]) -> Vec<String> {
    let mut v: Vec<String> = findings.iter().map(|f| f.id.clone()).collect();
    v.sort();
    v
}

/// A small deterministic generator for shard splits and interleavings.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The generator: corpora of instance and Lambda sessions with moves, restarts and thefts.

/// Over three hours: no session expires (instance keys live six hours, Lambda's twelve).
const SPAN: i64 = 3 * HOUR;

#[derive(Debug, Clone)]
struct EipSpec {
    by_allocation: bool,
    allocate_at: i64,
    associate_at: i64,
    /// The instance's calls from the Elastic IP (some may come before the association).
    uses: Vec<i64>,
}

#[derive(Debug, Clone)]
struct RestartSpec {
    at: i64,
    /// The instance's calls from its new address after the restart.
    calls: Vec<i64>,
}

#[derive(Debug, Clone)]
struct InstanceSpec {
    home: Vec<i64>,
    /// A home call before all the others, delivered last.
    late_home: bool,
    eip: Option<EipSpec>,
    restart: Option<RestartSpec>,
}

#[derive(Debug, Clone)]
struct LambdaSpec {
    runtime: Vec<i64>,
}

#[derive(Debug, Clone)]
struct ThiefSpec {
    /// Which session: an instance (modulo their number) or, with `3`, the Lambda's if any.
    target: usize,
    addr: usize,
    at: i64,
    /// How many hours old the stolen instance key is.
    key_age: i64,
}

#[derive(Debug, Clone)]
struct CorpusSpec {
    instances: Vec<InstanceSpec>,
    lambda: Option<LambdaSpec>,
    thieves: Vec<ThiefSpec>,
}

const THIEVES: [&str; 4] = [
    "203.0.113.66",
    "203.0.113.67",
    "198.51.100.200",
    "2001:db8::66",
];

fn times(n: std::ops::Range<usize>) -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(0..SPAN, n)
}

fn eip_spec() -> impl Strategy<Value = EipSpec> {
    (
        any::<bool>(),
        0..SPAN,
        0..SPAN,
        prop::collection::vec((any::<bool>(), 0..SPAN), 1..4),
    )
        .prop_map(|(by_allocation, a, b, uses)| {
            let associate_at = a.max(b);
            EipSpec {
                by_allocation,
                allocate_at: a.min(b),
                associate_at,
                // Any time (before the association too), or soon after it.
                uses: uses
                    .into_iter()
                    .map(|(soon, t)| if soon { associate_at + t % 600 } else { t })
                    .collect(),
            }
        })
}

fn restart_spec() -> impl Strategy<Value = RestartSpec> {
    (0..SPAN, prop::collection::vec(1..HOUR, 1..3)).prop_map(|(at, after)| RestartSpec {
        at,
        calls: after.into_iter().map(|d| at + d).collect(),
    })
}

fn instance_spec() -> impl Strategy<Value = InstanceSpec> {
    (
        times(1..6),
        any::<bool>(),
        prop::option::of(eip_spec()),
        prop::option::of(restart_spec()),
    )
        .prop_map(|(home, late_home, eip, restart)| InstanceSpec {
            home,
            late_home,
            eip,
            restart,
        })
}

fn corpus_spec() -> impl Strategy<Value = CorpusSpec> {
    (
        prop::collection::vec(instance_spec(), 1..3),
        prop::option::of(times(1..4).prop_map(|runtime| LambdaSpec { runtime })),
        prop::collection::vec(
            (0usize..4, 0..THIEVES.len(), 0..SPAN, 0i64..3).prop_map(
                |(target, addr, at, key_age)| ThiefSpec {
                    target,
                    addr,
                    at,
                    key_age,
                },
            ),
            // Every corpus has a thief.
            1..4,
        ),
    )
        .prop_map(|(instances, lambda, thieves)| CorpusSpec {
            instances,
            lambda,
            thieves,
        })
}

fn instance_id(i: usize) -> String {
    format!("i-0{i}1234def5678901")
}

/// The instance key of the hour `t` falls in (keys rotate hourly), and when it was issued.
fn instance_key(i: usize, t: i64) -> (String, i64) {
    let hour = t.div_euclid(HOUR);
    (format!("ASIAINST{i}KEY{hour:02}"), T0 + hour * HOUR - 600)
}

fn instance_call(i: usize, ip: &str, t: i64) -> Ev {
    let (key, issued) = instance_key(i, t);
    Ev::ec2_issued(&key, &instance_id(i), ip, T0 + t, issued)
}

/// The corpus: its events, and the ones that are delivered last (late homes).
fn build(spec: &CorpusSpec) -> (Vec<Ev>, Vec<Ev>) {
    let mut events = Vec::new();
    let mut late = Vec::new();
    for (i, inst) in spec.instances.iter().enumerate() {
        let id = instance_id(i);
        let home = format!("54.10.{i}.10");
        for t in &inst.home {
            events.push(instance_call(i, &home, *t));
        }
        if inst.late_home {
            late.push(instance_call(i, &home, -60));
        }
        if let Some(eip) = &inst.eip {
            let ip = format!("52.0.{i}.1");
            if eip.by_allocation {
                let alloc = format!("eipalloc-0{i}");
                events.push(Ev::allocate(&ip, &alloc, T0 + eip.allocate_at));
                events.push(Ev::associate_allocation(&alloc, &id, T0 + eip.associate_at));
            } else {
                events.push(Ev::associate_ip(&ip, &id, T0 + eip.associate_at));
            }
            for t in &eip.uses {
                events.push(instance_call(i, &ip, *t));
            }
        }
        if let Some(r) = &inst.restart {
            events.push(Ev::start(&id, T0 + r.at));
            let ip = format!("54.20.{i}.20");
            for t in &r.calls {
                events.push(instance_call(i, &ip, *t));
            }
        }
    }
    if let Some(l) = &spec.lambda {
        for (n, t) in l.runtime.iter().enumerate() {
            events.push(
                Ev::role_of(
                    "fn-role",
                    "ASIALAMBDA1",
                    "my-fn",
                    &format!("3.80.0.{}", n + 1),
                    T0 + t,
                )
                .ua(LAMBDA_UA),
            );
        }
    }
    for th in &spec.thieves {
        let ip = THIEVES[th.addr];
        if th.target == 3 && spec.lambda.is_some() {
            events.push(
                Ev::role_of("fn-role", "ASIALAMBDA1", "my-fn", ip, T0 + th.at)
                    .ua("python-requests/2.31"),
            );
        } else {
            let i = th.target % spec.instances.len();
            let stolen_at = (th.at - th.key_age * HOUR).max(0);
            let (key, issued) = instance_key(i, stolen_at);
            events.push(
                Ev::ec2_issued(&key, &instance_id(i), ip, T0 + th.at, issued)
                    .name("s3.amazonaws.com", "ListBuckets")
                    .ua("curl/8.4"),
            );
        }
    }
    (events, late)
}

/// Deals events to `n` shards at random, each in time order (or shuffled), and interleaves the
/// shards at random; the late events come last.
fn deliver(events: &[Ev], late: &[Ev], n: usize, shuffle_shards: bool, rng: &mut Rng) -> Vec<Ev> {
    let mut shards: Vec<Vec<Ev>> = vec![Vec::new(); n];
    for e in by_time(events) {
        shards[rng.below(n)].push(e);
    }
    if shuffle_shards {
        for s in &mut shards {
            rng.shuffle(s);
        }
    }
    let mut out = interleave(shards, rng);
    out.extend(late.iter().cloned());
    out
}

fn interleave(mut shards: Vec<Vec<Ev>>, rng: &mut Rng) -> Vec<Ev> {
    for s in &mut shards {
        s.reverse();
    }
    let mut out = Vec::new();
    loop {
        let open: Vec<usize> = (0..shards.len())
            .filter(|i| !shards[*i].is_empty())
            .collect();
        if open.is_empty() {
            return out;
        }
        let s = open[rng.below(open.len())];
        out.push(shards[s].pop().unwrap());
    }
}

/// The number of cases (`PROPTEST_CASES` overrides, for a longer soak).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    })
}

#[test]
fn findings_do_not_depend_on_shards_or_delivery_order() {
    let cfg = reuse_only();
    let with_findings = Cell::new(0u32);
    let with_instance_findings = Cell::new(0u32);
    let cases = cases(200);
    runner(cases)
        .run(
            &(corpus_spec(), 1usize..5, any::<bool>(), any::<u64>()),
            |(spec, n, shuffle_shards, seed)| {
                let (events, late) = build(&spec);
                let mut rng = Rng(seed | 1);
                let delivered = deliver(&events, &late, n, shuffle_shards, &mut rng);

                let engine = Engine::new(&cfg);
                let mut got = Vec::new();
                for (i, e) in delivered.iter().enumerate() {
                    feed(&engine, e, "shards", i, &mut got);
                }
                got.extend(engine.settle(SettleAt::END));

                let want = same_as_in_time_order(&cfg, &events, &late, &got)?;
                if !want.is_empty() {
                    with_findings.set(with_findings.get() + 1);
                }
                if want
                    .iter()
                    .any(|f| f.credential_class.as_deref() == Some("ec2_instance"))
                {
                    with_instance_findings.set(with_instance_findings.get() + 1);
                }
                Ok(())
            },
        )
        .unwrap();
    // The generator makes thefts: most corpora have a finding, instance sessions' too.
    assert!(
        with_findings.get() >= cases * 3 / 4,
        "{} of {cases} corpora had findings",
        with_findings.get()
    );
    assert!(
        with_instance_findings.get() >= cases / 2,
        "{} of {cases} corpora had instance findings",
        with_instance_findings.get()
    );
}

/// The corpus with the Lambda's outside uses moved to no earlier than its first runtime call.
///
/// A Lambda session's home is its earliest runtime call, whenever that is; two outside origins
/// seen before any runtime call are judged against each other once the watermark passes them
/// (nothing yet says the credential is a Lambda's), and a runtime call later in event time
/// cannot withdraw that finding. With the runtime first (credentials are issued to the runtime
/// and used there before they can be stolen) the watermark's findings are final.
fn runtime_first(mut spec: CorpusSpec) -> CorpusSpec {
    if let Some(first) = spec
        .lambda
        .as_ref()
        .and_then(|l| l.runtime.iter().min().copied())
    {
        for th in &mut spec.thieves {
            if th.target == 3 {
                th.at = th.at.max(first);
            }
        }
    }
    spec
}

/// How late (event time) an event may be delivered within its shard in the watermark test.
const SKEW: i64 = 900;

#[test]
fn findings_the_watermark_releases_are_the_final_ones() {
    let mut cfg = reuse_only();
    // Every event on a shard is at most SKEW earlier than one delivered before it there.
    cfg.detection.allowed_lateness_secs = SKEW as u64 + 1;
    let released = Cell::new(0u32);
    let cases = cases(200);
    runner(cases)
        .run(
            &(corpus_spec(), 1usize..5, any::<u64>()),
            |(spec, n, seed)| {
                let (events, late) = build(&runtime_first(spec));
                let mut rng = Rng(seed | 1);
                // Each shard in time order, give or take SKEW: an event is delivered up to SKEW
                // after its time (a late home the full SKEW).
                let mut shards: Vec<Vec<(i64, u64, Ev)>> = vec![Vec::new(); n];
                for e in &events {
                    let delay = rng.below(SKEW as usize + 1) as i64;
                    let tie = rng.next();
                    shards[rng.below(n)].push((e.t + delay, tie, e.clone()));
                }
                for e in &late {
                    let tie = rng.next();
                    shards[rng.below(n)].push((e.t + SKEW, tie, e.clone()));
                }
                let mut dealt: Vec<Vec<(usize, Ev)>> = Vec::new();
                for (s, mut shard) in shards.into_iter().enumerate() {
                    shard.sort_by_key(|x| (x.0, x.1));
                    dealt.push(shard.into_iter().map(|(_, _, e)| (s, e)).collect());
                }
                let live: Vec<bool> = dealt.iter().map(|s| !s.is_empty()).collect();
                // Interleave, remembering each event's shard.
                let mut order: Vec<(usize, Ev)> = Vec::new();
                {
                    for s in &mut dealt {
                        s.reverse();
                    }
                    loop {
                        let open: Vec<usize> =
                            (0..dealt.len()).filter(|i| !dealt[*i].is_empty()).collect();
                        if open.is_empty() {
                            break;
                        }
                        let s = open[rng.below(open.len())];
                        order.push(dealt[s].pop().unwrap());
                    }
                }

                let engine = Engine::new(&cfg);
                let mut got = Vec::new();
                let mut max: Vec<Option<i64>> = vec![None; n];
                let mut early = 0;
                for (i, (s, e)) in order.iter().enumerate() {
                    feed(&engine, e, "shards", i, &mut got);
                    max[*s] = Some(max[*s].map_or(e.t, |m| m.max(e.t)));
                    // The low watermark over the shards that have events.
                    let w = (0..n)
                        .filter(|s| live[*s])
                        .map(|s| max[s])
                        .try_fold(i64::MAX, |acc, m| m.map(|m| acc.min(m)));
                    if let Some(w) = w {
                        let f = engine.settle(SettleAt {
                            watermark: w,
                            now: None,
                        });
                        early += f.len();
                        got.extend(f);
                    }
                }
                got.extend(engine.settle(SettleAt::END));
                if early > 0 {
                    released.set(released.get() + 1);
                }

                same_as_in_time_order(&cfg, &events, &late, &got)?;
                Ok(())
            },
        )
        .unwrap();
    // The watermark did release findings before the end (else this proves nothing).
    assert!(
        released.get() >= cases / 4,
        "{} of {cases} corpora",
        released.get()
    );
}

// ---------------------------------------------------------------------------------------------
// Hunts over files.

fn hunt(files: &[PathBuf]) -> (Vec<Finding>, HuntSummary) {
    let engine = Engine::new(&reuse_only());
    let mut findings = Vec::new();
    let summary = hunt_files(
        &engine,
        files,
        &Limits::default(),
        1,
        |f| findings.push(f.clone()),
        |b| panic!("bad record: {b:?}"),
    );
    (findings, summary)
}

/// Writes events as a CloudTrail S3 object (`{"Records":[...]}`).
fn write_records(path: &std::path::Path, events: &[Ev]) {
    let records: Vec<&Value> = events.iter().map(|e| &e.json).collect();
    std::fs::write(path, json!({ "Records": records }).to_string()).unwrap();
}

/// Writes events as JSON lines.
fn write_lines(path: &std::path::Path, events: &[Ev]) {
    let text: String = events.iter().map(|e| e.text() + "\n").collect();
    std::fs::write(path, text).unwrap();
}

fn reversed(files: &[PathBuf]) -> Vec<PathBuf> {
    files.iter().rev().cloned().collect()
}

#[test]
fn an_elastic_ip_allocated_on_day_1_and_associated_on_day_3_explains_the_use() {
    let inst = "i-0eee1234def567890";
    let eip = "52.95.1.1";
    let call = |ip: &str, t: i64| {
        // The instance's key of that hour (keys rotate hourly, each lives six hours).
        let hour = (t - T0).div_euclid(HOUR);
        Ev::ec2_issued(
            &format!("ASIAEIPKEY{hour:03}"),
            inst,
            ip,
            t,
            T0 + hour * HOUR - 300,
        )
    };
    // Day 1: the allocation, and the instance at home, hourly, for three days.
    let mut days: Vec<Vec<Ev>> = vec![vec![Ev::allocate(eip, "eipalloc-0d1", T0 + 60)]];
    days[0].extend((0..24).map(|h| call(HOME, T0 + h * HOUR + 120)));
    days.push((24..48).map(|h| call(HOME, T0 + h * HOUR + 120)).collect());
    // Day 3: the association by allocation id, then the instance's calls from the Elastic IP.
    let assoc = T0 + 2 * DAY + 4 * HOUR;
    let mut day3: Vec<Ev> = (48..52).map(|h| call(HOME, T0 + h * HOUR + 120)).collect();
    day3.push(Ev::associate_allocation("eipalloc-0d1", inst, assoc));
    day3.extend((0..10).map(|k| call(eip, assoc + 60 + k * 600)));
    days.push(day3);

    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = days
        .iter()
        .enumerate()
        .map(|(d, evs)| {
            let p = dir.path().join(format!("2024-08-0{}.json", d + 2));
            if d == 1 {
                write_lines(&p, evs);
            } else {
                write_records(&p, evs);
            }
            p
        })
        .collect();
    let total: u64 = days.iter().map(|d| d.len() as u64).sum();
    for order in [files.clone(), reversed(&files)] {
        let (found, summary) = hunt(&order);
        assert_eq!(summary.events, total);
        assert_eq!(summary.total_bad(), 0);
        assert!(found.is_empty(), "{order:?}: {found:#?}");
    }

    // The control: a call from the Elastic IP on day 2, before the association, is a finding,
    // the same in either order.
    let early = call(eip, T0 + DAY + 5 * HOUR);
    let p = dir.path().join("2024-08-03b.json");
    write_records(&p, std::slice::from_ref(&early));
    let mut with_early = files.clone();
    with_early.insert(2, p);
    let (a, _) = hunt(&with_early);
    let (b, _) = hunt(&reversed(&with_early));
    assert_eq!(a.len(), 1, "{a:#?}");
    assert_eq!(a[0].rule, RULE);
    assert_eq!(a[0].events[1].event_id, early.id());
    assert_eq!(comparable_all(&a), comparable_all(&b));
}

#[test]
fn a_late_home_shows_both_keys_in_the_evidence() {
    let inst = "i-0aaa1234def567890";
    let home = Ev::ec2("ASIAHOME00000001", inst, HOME, T0);
    let thief = Ev::ec2("ASIATHIEF0000001", inst, EVIL, T0 + 60)
        .name("s3.amazonaws.com", "ListBuckets")
        .ua("curl/8.4");
    let cfg = reuse_only();
    let engine = Engine::new(&cfg);
    let mut found = Vec::new();
    // The thief's call is read first; the home's, earlier, arrives after it.
    feed(&engine, &thief, "late", 0, &mut found);
    feed(&engine, &home, "late", 1, &mut found);
    assert!(found.is_empty(), "nothing before settling: {found:#?}");
    found.extend(engine.settle(SettleAt::END));
    assert_eq!(found.len(), 1, "{found:#?}");
    let f = &found[0];
    assert_eq!(f.rule, RULE);
    let (first, second) = (&f.events[0], &f.events[1]);
    assert_eq!(first.event_id, home.id());
    assert_eq!(first.origin, HOME);
    assert_eq!(first.access_key_id.as_deref(), Some("ASIAHOME00000001"));
    assert_eq!(first.event_name.as_deref(), Some("DescribeInstances"));
    assert_eq!(first.event_source.as_deref(), Some("ec2.amazonaws.com"));
    assert_eq!(second.event_id, thief.id());
    assert_eq!(second.origin, EVIL);
    assert_eq!(second.access_key_id.as_deref(), Some("ASIATHIEF0000001"));
    assert_eq!(second.event_name.as_deref(), Some("ListBuckets"));
    assert_eq!(second.event_source.as_deref(), Some("s3.amazonaws.com"));
    assert_eq!(f.access_key_id.as_deref(), Some("ASIATHIEF0000001"));
    // The same finding as with the events in time order.
    let want = in_time_order(&cfg, &[home, thief]);
    assert_eq!(comparable_all(&found), comparable_all(&want));
}

#[test]
fn a_credit_that_arrives_after_the_use_withdraws_the_candidate() {
    let inst = "i-0bbb1234def567890";
    let eip = "52.95.2.2";
    let cfg = reuse_only();
    let run = |events: &[&Ev]| {
        let engine = Engine::new(&cfg);
        let mut out = Vec::new();
        for (i, e) in events.iter().enumerate() {
            feed(&engine, e, "credit", i, &mut out);
        }
        out.extend(engine.settle(SettleAt::END));
        out
    };
    let home = Ev::ec2("ASIAB1", inst, HOME, T0);
    let used = Ev::ec2("ASIAB1", inst, eip, T0 + 60);
    // The association (earlier) is read after the use it explains: no finding.
    let before = Ev::associate_ip(eip, inst, T0 + 30);
    let got = run(&[&home, &used, &before]);
    assert!(got.is_empty(), "{got:#?}");
    assert!(run(&[&used, &before, &home]).is_empty());
    assert!(run(&[&home, &before, &used]).is_empty());
    // An association later than the use does not explain it, whatever the order read.
    let after = Ev::associate_ip(eip, inst, T0 + 90);
    let a = run(&[&home, &used, &after]);
    assert_eq!(a.len(), 1, "{a:#?}");
    assert_eq!(a[0].events[1].event_id, used.id());
    let b = run(&[&after, &home, &used]);
    assert_eq!(comparable_all(&a), comparable_all(&b));
    // And an allocation by id, both calls read after the use.
    let alloc = Ev::allocate(eip, "eipalloc-0bb", T0 + 10);
    let assoc = Ev::associate_allocation("eipalloc-0bb", inst, T0 + 30);
    assert!(run(&[&home, &used, &assoc, &alloc]).is_empty());
}

#[test]
fn hunt_gives_the_same_findings_for_files_in_any_order_and_duplicated() {
    // Two regions' trails: instances at home in each; one instance's key stolen and used in the
    // other region, another's used from the internet in its own; a restart in one; an Elastic
    // IP associated in one and used from there.
    let east = "us-east-1";
    let west = "eu-west-1";
    let (ia, ib) = ("i-0a0a1234def567890", "i-0b0b1234def567890");
    let a = [
        Ev::ec2("ASIAEAST1", ia, "54.1.1.1", T0).region(east),
        Ev::ec2("ASIAEAST1", ia, "54.1.1.1", T0 + 600).region(east),
        Ev::associate_ip("52.1.1.1", ia, T0 + 700).region(east),
        Ev::ec2("ASIAEAST1", ia, "52.1.1.1", T0 + 800).region(east),
        Ev::ec2("ASIAEAST2", ia, EVIL, T0 + 3600).region(east),
        Ev::ec2("ASIAWEST1", ib, "203.0.113.99", T0 + 1200).region(east),
        Ev::start(ia, T0 + 5000).region(east),
        Ev::ec2("ASIAEAST3", ia, "54.1.1.2", T0 + 5100).region(east),
    ];
    let b = [
        Ev::ec2("ASIAWEST1", ib, "34.1.1.1", T0 + 300).region(west),
        Ev::ec2("ASIAWEST1", ib, "34.1.1.1", T0 + 900).region(west),
        Ev::ec2("ASIAEAST2", ia, "54.1.1.1", T0 + 3700).region(west),
        Ev::ec2("ASIAEAST3", ia, "198.51.100.250", T0 + 5200).region(west),
        Ev::ec2("ASIAWEST1", ib, "34.1.1.1", T0 + 2000).region(west),
    ];
    let dir = tempfile::tempdir().unwrap();
    let pa = dir
        .path()
        .join("AWSLogs/111122223333/CloudTrail/us-east-1/trail.json");
    let pb = dir
        .path()
        .join("AWSLogs/111122223333/CloudTrail/eu-west-1/trail.json");
    // An organisation trail delivering the same events as the account's own.
    let dup = dir
        .path()
        .join("org/AWSLogs/111122223333/CloudTrail/us-east-1/trail.json");
    for p in [&pa, &pb, &dup] {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    }
    write_records(&pa, &a);
    write_records(&pb, &b);
    write_records(&dup, &a);

    let (x, sx) = hunt(&[pa.clone(), pb.clone(), dup.clone()]);
    let (y, sy) = hunt(&[dup.clone(), pb.clone(), pa.clone()]);
    assert_eq!(sx.events, 21);
    assert_eq!((sx.total_bad(), sy.total_bad()), (0, 0));
    assert_eq!(ids(&x), ids(&y));
    assert_eq!(comparable_all(&x), comparable_all(&y));
    // Each file alone in time order gives the same, once.
    let all: Vec<Ev> = a.iter().chain(&b).cloned().collect();
    let want = in_time_order(&reuse_only(), &all);
    assert_eq!(comparable_all(&x), comparable_all(&want));
    // The thefts: ib's key from 203.0.113.99, ia's from EVIL; ia's restart explains only its
    // first new origin (54.1.1.2), not the other one after it.
    let outside: std::collections::BTreeSet<&str> =
        x.iter().map(|f| f.events[1].origin.as_str()).collect();
    assert_eq!(
        outside,
        ["198.51.100.250", "203.0.113.66", "203.0.113.99"]
            .into_iter()
            .collect(),
        "{x:#?}"
    );
}

#[test]
fn a_use_from_a_credited_address_before_the_first_home_call_is_not_the_home() {
    // In time order the use from the Elastic IP is explained as it is read and never takes the
    // lock; read after the contest opened (or before its credit), it must not become the home
    // and make the instance's own address a second origin.
    let inst = "i-0ccc1234def567890";
    let eip = "52.95.3.3";
    let assoc = Ev::associate_ip(eip, inst, T0 + 10);
    let used = Ev::ec2("ASIAC1", inst, eip, T0 + 20);
    let home = Ev::ec2("ASIAC1", inst, HOME, T0 + 100);
    let thief = Ev::ec2("ASIAC1", inst, EVIL, T0 + 200);
    let cfg = reuse_only();
    let want = in_time_order(
        &cfg,
        &[assoc.clone(), used.clone(), home.clone(), thief.clone()],
    );
    assert_eq!(want.len(), 1, "{want:#?}");
    assert_eq!(want[0].events[0].origin, HOME);
    assert_eq!(want[0].events[1].origin, EVIL);
    for order in [
        [&assoc, &home, &thief, &used],
        [&home, &thief, &used, &assoc],
        [&used, &thief, &home, &assoc],
    ] {
        let engine = Engine::new(&cfg);
        let mut got = Vec::new();
        for (i, e) in order.iter().enumerate() {
            feed(&engine, e, "p", i, &mut got);
        }
        got.extend(engine.settle(SettleAt::END));
        assert!(
            comparable_all(&got) == comparable_all(&want),
            "{}",
            diff(&got, &want)
        );
    }
}
