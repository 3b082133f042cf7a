//! Several `credwatch run` processes on one stream, coordinated through DynamoDB (moto on
//! loopback): KCL-layout leases balanced across workers, a session split across workers reported
//! once, `kill -9` of a worker taken over within the lease duration with nothing lost and nothing
//! repeated, a worker that loses a lease stops reading, SIGTERM releases leases.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::Value;
use support::moto::MotoServer;
use support::prometheus::free_port;
use support::run::{envelope, http_get, sessions, Nets, Run, Session, State, RULE};

const NETS: Nets = Nets {
    home: "54.172",
    evil: "54.224.9",
};
/// Short leases keep the test quick; the worker renews every third of it.
const LEASE_SECS: u64 = 3;
const LEASE_TABLE: &str = "credwatch-test-leases";
const STATE_TABLE: &str = "credwatch-test-state";

/// One worker: its files, metrics port and process.
struct Worker {
    id: String,
    state: State,
    port: u16,
    run: std::cell::RefCell<Run>,
    /// Killed on purpose: its log is still shown, its exit is not a failure.
    killed: std::cell::Cell<bool>,
}

impl Worker {
    fn start(moto: &MotoServer, stream: &str, id: &str) -> Worker {
        Worker::start_with(moto, stream, id, &[])
    }

    /// [`Worker::start`] with more environment.
    fn start_with(moto: &MotoServer, stream: &str, id: &str, extra: &[(&str, &str)]) -> Worker {
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
                (
                    "CREDWATCH_COORDINATION__LEASE_DURATION_SECS",
                    lease.as_str(),
                ),
                ("CREDWATCH_WORKER_ID", id),
            ]
            .into_iter()
            .chain(extra.iter().copied())
            .collect::<Vec<_>>(),
        );
        Worker {
            id: id.to_string(),
            state,
            port,
            run: std::cell::RefCell::new(run),
            killed: std::cell::Cell::new(false),
        }
    }

    /// A metric's value (summed over its series matching `labels`), 0 when absent.
    fn metric(&self, name: &str, labels: &str) -> f64 {
        let Some((200, body)) = http_get(self.port, "/metrics") else {
            return 0.0;
        };
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.split([' ', '{']).next() == Some(name)
                    && (labels.is_empty() || l.contains(labels))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

async fn dynamodb(moto: &MotoServer) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&moto.sdk_config().await)
}

/// The lease table as items, keyed by `leaseKey`.
async fn leases(
    db: &aws_sdk_dynamodb::Client,
) -> BTreeMap<String, HashMap<String, AttributeValue>> {
    let Ok(out) = db
        .scan()
        .table_name(LEASE_TABLE)
        .consistent_read(true)
        .send()
        .await
    else {
        return BTreeMap::new();
    };
    out.items()
        .iter()
        .map(|i| (i["leaseKey"].as_s().unwrap().clone(), i.clone()))
        .collect()
}

fn owner(item: &HashMap<String, AttributeValue>) -> Option<String> {
    item.get("leaseOwner").and_then(|v| v.as_s().ok()).cloned()
}

fn number(item: &HashMap<String, AttributeValue>, k: &str) -> u64 {
    item[k].as_n().unwrap().parse().unwrap()
}

/// Owner -> shards, for leases that have an owner.
fn by_owner(
    leases: &BTreeMap<String, HashMap<String, AttributeValue>>,
) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, item) in leases {
        if let Some(o) = owner(item) {
            m.entry(o).or_default().push(k.clone());
        }
    }
    m
}

/// Polls `check` every 200 ms for at most `timeout`; panics with the last answer and the
/// workers' logs.
async fn wait_until<T>(
    what: &str,
    timeout: Duration,
    workers: &[&Worker],
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = match check().await {
            Ok(v) => return v,
            Err(s) => s,
        };
        for w in workers.iter().filter(|w| !w.killed.get()) {
            w.run.borrow_mut().assert_running(what);
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = workers
                .iter()
                .map(|w| format!("--- {} ---\n{}", w.id, w.run.borrow().log_tail()))
                .collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}; last seen: {seen}\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Puts each `(shard, event)` as its own envelope into that shard.
async fn put_to_shards(
    moto: &MotoServer,
    stream: &str,
    keys: &BTreeMap<String, String>,
    events: &[(String, String)],
) {
    let records: Vec<(String, Vec<u8>)> = events
        .iter()
        .map(|(shard, event)| (shard.clone(), envelope("i-0", std::slice::from_ref(event))))
        .collect();
    moto.put_to_shards(stream, keys, &records).await;
}

/// Every finding of every worker, with the worker's id.
fn all_findings(workers: &[&Worker]) -> Vec<(String, Value)> {
    workers
        .iter()
        .flat_map(|w| {
            w.state
                .findings()
                .into_iter()
                .map(|f| (w.id.clone(), f))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Session name -> how many findings name it, over `findings`.
fn counts(findings: &[(String, Value)]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (_, f) in findings {
        assert_eq!(f["rule"], RULE, "only reuse findings expected: {f}");
        *m.entry(f["session"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    m
}

/// Waits until every session of `sessions` has a finding in some worker's file, watches 3 s
/// more, and checks that no session was reported twice; returns every finding.
async fn found_once(what: &str, sessions: &[Session], workers: &[&Worker]) -> Vec<(String, Value)> {
    let want: BTreeSet<String> = sessions.iter().map(Session::name).collect();
    wait_until(what, Duration::from_secs(60), workers, async || {
        let got: BTreeSet<String> = counts(&all_findings(workers)).keys().cloned().collect();
        let missing: Vec<&String> = want.difference(&got).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("missing {missing:?}"))
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let found = all_findings(workers);
    for (session, n) in counts(&found) {
        assert_eq!(n, 1, "{session} reported {n} times ({what}): {found:?}");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_eight_shards_report_each_session_once_and_survive_kill9() {
    let moto = MotoServer::start_serial();
    let stream = "coord-three";
    moto.create_stream(stream, 8).await;
    let db = dynamodb(&moto).await;
    let keys = moto.hash_keys(stream).await;
    let w1 = Worker::start(&moto, stream, "w1");
    let w2 = Worker::start(&moto, stream, "w2");
    let w3 = Worker::start(&moto, stream, "w3");

    // Leases: eight, balanced 3/3/2, in the KCL layout.
    let owners = wait_until(
        "eight leases balanced over three workers",
        Duration::from_secs(60),
        &[&w1, &w2, &w3],
        async || {
            let l = leases(&db).await;
            let o = by_owner(&l);
            let mut sizes: Vec<usize> = o.values().map(Vec::len).collect();
            sizes.sort();
            if l.len() == 8 && sizes == vec![2, 3, 3] {
                Ok(o)
            } else {
                Err(format!("{} leases, owners {o:?}", l.len()))
            }
        },
    )
    .await;
    let table = leases(&db).await;
    for (k, item) in &table {
        for attr in [
            "leaseKey",
            "leaseOwner",
            "leaseCounter",
            "checkpoint",
            "checkpointSubSequenceNumber",
            "ownerSwitchesSinceCheckpoint",
        ] {
            assert!(item.contains_key(attr), "lease {k} lacks {attr}: {item:?}");
        }
        assert!(item["leaseCounter"].as_n().is_ok());
        assert!(item["checkpoint"].as_s().is_ok());
    }

    // Sessions whose home and second origin land on shards of two different workers.
    let shard_of = |w: &str, i: usize| owners[w][i % owners[w].len()].clone();
    let pairs = [("w1", "w2"), ("w2", "w3"), ("w3", "w1")];
    let first: Vec<Session> = sessions("coord-a", 12, NETS);
    let mut events = Vec::new();
    for (i, s) in first.iter().enumerate() {
        let (a, b) = pairs[i % 3];
        events.push((shard_of(a, i), s.home()));
        events.push((shard_of(b, i), s.second()));
    }
    put_to_shards(&moto, stream, &keys, &events).await;
    let found = found_once("a finding for each split session", &first, &[&w1, &w2, &w3]).await;
    for s in &first {
        let (_, f) = found
            .iter()
            .find(|(_, f)| f["session"] == s.name())
            .unwrap();
        assert_eq!(
            f["events"][0]["origin"],
            s.home_ip.as_str(),
            "home first: {f}"
        );
        assert_eq!(f["events"][1]["origin"], s.evil_ip.as_str(), "{f}");
        assert_eq!(f["events"][1]["event_id"], s.second_id.as_str(), "{f}");
    }
    // Checkpoints are in the lease items: every shard that had records has a sequence number.
    let used: BTreeSet<&String> = events.iter().map(|(s, _)| s).collect();
    wait_until(
        "checkpoints written into the lease items",
        Duration::from_secs(20),
        &[&w1, &w2, &w3],
        async || {
            let l = leases(&db).await;
            let missing: Vec<&&String> = used
                .iter()
                .filter(|s| {
                    !l[s.as_str()]["checkpoint"]
                        .as_s()
                        .unwrap()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("no sequence-number checkpoint on {missing:?}"))
            }
        },
    )
    .await;
    let calls = w1.metric("credwatch_dynamodb_calls_total", "table=\"state\"");
    assert!(calls > 0.0, "worker 1 used the state table");

    // kill -9 of w1, with records in flight on its shards: w2 and w3 take its leases within
    // the lease duration (plus the renewal tick that notices), and every session is found once.
    let dead: Vec<String> = owners["w1"].clone();
    let second: Vec<Session> = sessions("coord-b", 12, NETS);
    let mut events = Vec::new();
    for (i, s) in second.iter().enumerate() {
        let live = if i % 2 == 0 { "w2" } else { "w3" };
        events.push((dead[i % dead.len()].clone(), s.home()));
        let other = if i % 3 == 0 {
            shard_of(live, i)
        } else {
            dead[(i + 1) % dead.len()].clone()
        };
        events.push((other, s.second()));
    }
    let (before, after) = events.split_at(events.len() / 2);
    put_to_shards(&moto, stream, &keys, before).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    w1.run.borrow_mut().kill9();
    w1.killed.set(true);
    let killed = Instant::now();
    put_to_shards(&moto, stream, &keys, after).await;
    let took = wait_until(
        "w1's leases taken over",
        Duration::from_secs(30),
        &[&w2, &w3],
        async || {
            let l = leases(&db).await;
            let still: Vec<&String> = dead
                .iter()
                .filter(|k| owner(&l[k.as_str()]).as_deref() == Some("w1"))
                .collect();
            if still.is_empty() {
                Ok(killed.elapsed())
            } else {
                Err(format!("still w1's: {still:?}"))
            }
        },
    )
    .await;
    // Expiry is judged after a whole lease duration without renewal; the survivors scan every
    // third of it. Allow that, one more tick, and a second of scheduling on a busy machine.
    eprintln!(
        "takeover after kill -9: {took:?} = {:.2} lease durations",
        took.as_secs_f64() / LEASE_SECS as f64
    );
    let bound = Duration::from_secs_f64(LEASE_SECS as f64 * (1.0 + 2.0 / 3.0) + 1.0);
    assert!(took <= bound, "takeover took {took:?} (bound {bound:?})");
    let found = found_once(
        "every session after the kill found",
        &second,
        &[&w1, &w2, &w3],
    )
    .await;
    assert_eq!(counts(&found).len(), 24);

    // SIGTERM of w2: it checkpoints and releases its leases, and w3 takes them all at once
    // (no wait for expiry).
    w2.run.borrow().sigterm();
    let status = w2
        .run
        .borrow_mut()
        .wait_exit(Duration::from_secs(20))
        .expect("w2 exits");
    assert!(
        status.success(),
        "w2 exit: {status}\n{}",
        w2.run.borrow().log_tail()
    );
    let released = Instant::now();
    wait_until(
        "w3 holding all eight leases",
        Duration::from_secs(20),
        &[&w3],
        async || {
            let o = by_owner(&leases(&db).await);
            if o.get("w3").map(Vec::len) == Some(8) {
                Ok(())
            } else {
                Err(format!("{o:?}"))
            }
        },
    )
    .await;
    assert!(
        released.elapsed() < Duration::from_secs(LEASE_SECS),
        "released leases are taken without waiting for expiry ({:?})",
        released.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_loses_a_lease_stops_reading_the_shard_until_it_takes_it_back() {
    let moto = MotoServer::start_serial();
    let stream = "coord-lost";
    moto.create_stream(stream, 2).await;
    let db = dynamodb(&moto).await;
    let keys = moto.hash_keys(stream).await;
    let w = Worker::start(&moto, stream, "solo");
    wait_until(
        "both leases held",
        Duration::from_secs(60),
        &[&w],
        async || {
            let o = by_owner(&leases(&db).await);
            match o.get("solo") {
                Some(v) if v.len() == 2 => Ok(()),
                _ => Err(format!("{o:?}")),
            }
        },
    )
    .await;
    wait_until(
        "both shards being read",
        Duration::from_secs(20),
        &[&w],
        async || {
            let n = w.metric("credwatch_kinesis_shards_owned", "");
            if n == 2.0 {
                Ok(())
            } else {
                Err(format!("shards owned {n}"))
            }
        },
    )
    .await;
    let stolen = keys.keys().next().unwrap().clone();

    // An intruder takes the lease with a conditional write on the counter, and keeps renewing it.
    let steal = |counter: u64| {
        let db = db.clone();
        let stolen = stolen.clone();
        async move {
            db.update_item()
                .table_name(LEASE_TABLE)
                .key("leaseKey", AttributeValue::S(stolen))
                .update_expression("SET leaseOwner = :o, leaseCounter = :n")
                .condition_expression("leaseCounter = :c")
                .expression_attribute_values(":o", AttributeValue::S("intruder".into()))
                .expression_attribute_values(":c", AttributeValue::N(counter.to_string()))
                .expression_attribute_values(":n", AttributeValue::N((counter + 1).to_string()))
                .send()
                .await
                .is_ok()
        }
    };
    loop {
        let l = leases(&db).await;
        if steal(number(&l[&stolen], "leaseCounter")).await {
            break;
        }
    }
    let renewing = tokio::spawn({
        let db = db.clone();
        let stolen = stolen.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = db
                    .update_item()
                    .table_name(LEASE_TABLE)
                    .key("leaseKey", AttributeValue::S(stolen.clone()))
                    .update_expression("SET leaseCounter = leaseCounter + :one")
                    .condition_expression("leaseOwner = :o")
                    .expression_attribute_values(":o", AttributeValue::S("intruder".into()))
                    .expression_attribute_values(":one", AttributeValue::N("1".into()))
                    .send()
                    .await;
            }
        }
    });
    wait_until(
        "the worker noticing the lost lease",
        Duration::from_secs(20),
        &[&w],
        async || {
            let lost = w.metric("credwatch_lease_events_total", "event=\"lost\"");
            let owned = w.metric("credwatch_kinesis_shards_owned", "");
            if lost == 1.0 && owned == 1.0 {
                Ok(())
            } else {
                Err(format!("lost {lost}, shards owned {owned}"))
            }
        },
    )
    .await;
    let checkpoint_before = leases(&db).await[&stolen]["checkpoint"].clone();
    let records_before = w.metric(
        "credwatch_kinesis_records_total",
        &format!("shard=\"{stolen}\""),
    );

    // A session entirely on the stolen shard: not read while the intruder holds it.
    let s = Session::new("coord-lost", 0, NETS);
    put_to_shards(
        &moto,
        stream,
        &keys,
        &[(stolen.clone(), s.home()), (stolen.clone(), s.second())],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(LEASE_SECS * 2)).await;
    w.run
        .borrow_mut()
        .assert_running("reading while the intruder holds the lease");
    assert!(w.state.findings().is_empty(), "{:?}", w.state.findings());
    assert_eq!(
        w.metric(
            "credwatch_kinesis_records_total",
            &format!("shard=\"{stolen}\"")
        ),
        records_before,
        "no record of the stolen shard read"
    );
    let l = leases(&db).await;
    assert_eq!(owner(&l[&stolen]).as_deref(), Some("intruder"));
    assert_eq!(
        l[&stolen]["checkpoint"], checkpoint_before,
        "no checkpoint over the intruder's"
    );

    // The intruder stops renewing: its lease expires and the worker takes it back, reading from
    // the lease's checkpoint, so the session is found.
    renewing.abort();
    wait_until(
        "the finding once the lease is back",
        Duration::from_secs(30),
        &[&w],
        async || {
            let f = w.state.findings();
            if f.iter().any(|f| f["session"] == s.name()) {
                Ok(())
            } else {
                Err(format!("{} findings", f.len()))
            }
        },
    )
    .await;
    assert_eq!(owner(&leases(&db).await[&stolen]).as_deref(), Some("solo"));
    assert_eq!(
        w.metric("credwatch_lease_events_total", "event=\"taken\""),
        3.0
    );
}

/// The state table's conditional writes, against moto's DynamoDB, one call at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_table_keeps_the_earliest_origin_claims_once_and_shares_control_events() {
    use credwatch::coord::dynamo::{CallCounts, StateTable};
    use credwatch::engine::store::{HomeEvidence, HomeTag};
    let moto = MotoServer::start_serial();
    let table = StateTable::open(
        dynamodb(&moto).await,
        "state-unit",
        true,
        std::sync::Arc::new(CallCounts::default()),
    )
    .await
    .expect("state table created");
    let home = |origin: &str, id: &str, time: i64| HomeEvidence {
        tag: HomeTag::PublicV4,
        origin: origin.into(),
        event_id: id.into(),
        time,
        user_agent: "aws-cli/2".into(),
        class: 0,
        expires: 10_000,
        event_source: Some("ec2.amazonaws.com".into()),
        event_name: Some("DescribeInstances".into()),
        access_key_id: Some("ASIAHOMEKEY".into()),
        error_code: None,
    };
    let (a, b, c) = (
        home("54.1.1.1", "e-a", 100),
        home("203.0.113.9", "e-b", 160),
        home("198.51.100.4", "e-c", 40),
    );
    let p = table.propose("s1", &a, false).await.unwrap();
    assert!(p.won && p.previous.is_none(), "{p:?}");
    let p = table.propose("s1", &b, false).await.unwrap();
    assert!(!p.won, "a later origin does not win: {p:?}");
    assert_eq!(p.current, a);
    let p = table.propose("s1", &c, false).await.unwrap();
    assert!(p.won, "an earlier origin wins: {p:?}");
    assert_eq!(
        p.previous.as_ref(),
        Some(&a),
        "and names the origin it displaced"
    );
    // The same event again (read again by the shard's next owner): answered as the first time.
    let p = table.propose("s1", &c, false).await.unwrap();
    assert!(p.won && p.previous.as_ref() == Some(&a), "{p:?}");
    // A Lambda runtime home is never displaced by an outside origin, and displaces one.
    let runtime = HomeEvidence {
        tag: HomeTag::LambdaRuntime,
        origin: "lambda-runtime".into(),
        ..home("", "e-r", 500)
    };
    let p = table.propose("s1", &runtime, true).await.unwrap();
    assert!(p.won, "{p:?}");
    let p = table
        .propose("s1", &home("54.2.2.2", "e-d", 1), false)
        .await
        .unwrap();
    assert!(!p.won && p.current.tag == HomeTag::LambdaRuntime, "{p:?}");
    // An expired session starts over.
    let late = home("54.3.3.3", "e-late", 20_000);
    assert!(table.propose("s1", &late, false).await.unwrap().won);

    // Claims: once per key; again after `until` has passed.
    assert!(table
        .claim("d#k", 1000, 100, "w1", "shard-1@5#0")
        .await
        .unwrap());
    assert!(!table
        .claim("d#k", 1000, 200, "w2", "shard-2@9#0")
        .await
        .unwrap());
    assert!(table
        .claim("d#k", 3000, 1500, "w2", "shard-2@9#0")
        .await
        .unwrap());
    // The same event read again by another worker, never marked reported: taken over after the
    // patience; once marked reported, never.
    let mut patient = StateTable::open(
        dynamodb(&moto).await,
        "state-unit",
        false,
        std::sync::Arc::new(CallCounts::default()),
    )
    .await
    .unwrap();
    patient.claim_patience = Duration::from_millis(300);
    assert!(patient
        .claim("f#x", i64::MAX, 1, "w1", "shard-1@7#0")
        .await
        .unwrap());
    let waited = Instant::now();
    assert!(patient
        .claim("f#x", i64::MAX, 1, "w3", "shard-1@7#0")
        .await
        .unwrap());
    assert!(waited.elapsed() >= Duration::from_millis(300));
    patient.mark_reported("f#x", "w3").await.unwrap();
    assert!(!patient
        .claim("f#x", i64::MAX, 1, "w1", "shard-1@7#0")
        .await
        .unwrap());

    // The control-plane log: in order, from any position.
    for i in 0..3 {
        table
            .publish_control(&format!("{{\"n\":{i}}}"))
            .await
            .unwrap();
    }
    let (all, at) = table.control_since(0).await.unwrap();
    assert_eq!(all, vec!["{\"n\":0}", "{\"n\":1}", "{\"n\":2}"]);
    assert_eq!(at, 3);
    assert_eq!(table.control_since(3).await.unwrap(), (vec![], 3));
    assert_eq!(table.control_since(2).await.unwrap().0, vec!["{\"n\":2}"]);
}

/// An `AssociateAddress` giving `ip` to the session's instance at `t`.
fn associate(s: &Session, ip: &str, t: i64) -> String {
    serde_json::json!({
        "eventVersion": "1.08", "eventID": format!("{}-assoc", s.home_id),
        "eventTime": credwatch::event::format_time(t),
        "eventName": "AssociateAddress", "eventSource": "ec2.amazonaws.com",
        "awsRegion": "us-east-1", "sourceIPAddress": "198.51.100.77", "userAgent": "aws-cli/2.15",
        "recipientAccountId": support::run::ACCT,
        "userIdentity": {"type": "IAMUser", "accountId": support::run::ACCT,
                         "accessKeyId": "AKIAADMINEXAMPLE", "arn": "arn:aws:iam::111122223333:user/admin"},
        "requestParameters": {"publicIp": ip, "instanceId": s.instance},
        "responseElements": {"requestId": "r-1", "_return": true}
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credit_read_by_one_worker_explains_a_use_the_other_read_first() {
    let moto = MotoServer::start_serial();
    let stream = "coord-credit";
    moto.create_stream(stream, 2).await;
    let db = dynamodb(&moto).await;
    let keys = moto.hash_keys(stream).await;
    // Long enough idleness that the watermark, not idleness, decides while the test puts records.
    let idle = [("CREDWATCH_DETECTION__IDLE_SECS", "15")];
    let w1 = Worker::start_with(&moto, stream, "w1", &idle);
    let w2 = Worker::start_with(&moto, stream, "w2", &idle);
    let owners = wait_until(
        "two leases, one per worker",
        Duration::from_secs(60),
        &[&w1, &w2],
        async || {
            let o = by_owner(&leases(&db).await);
            if o.len() == 2 && o.values().all(|v| v.len() == 1) {
                Ok(o)
            } else {
                Err(format!("owners {o:?}"))
            }
        },
    )
    .await;
    let (shard1, shard2) = (owners["w1"][0].clone(), owners["w2"][0].clone());
    let ss = sessions("coord-credit", 2, NETS);
    let (moved, stolen) = (&ss[0], &ss[1]);
    let eip = "54.161.99.1";
    // Worker 2 reads the instance's calls first: its home, then a call from the Elastic IP.
    put_to_shards(
        &moto,
        stream,
        &keys,
        &[
            (shard2.clone(), moved.home()),
            (
                shard2.clone(),
                moved.event(&moved.second_id, eip, moved.t + 120),
            ),
        ],
    )
    .await;
    wait_until(
        "worker 2 holds the candidate",
        Duration::from_secs(60),
        &[&w1, &w2],
        async || match w2.metric("credwatch_candidates_pending", "") {
            n if n >= 1.0 => Ok(()),
            n => Err(format!("pending {n}")),
        },
    )
    .await;
    // Worker 1 then reads the AssociateAddress (earlier in event time) that explains the move,
    // and a theft split over the two workers, the control that settling happened at all.
    put_to_shards(
        &moto,
        stream,
        &keys,
        &[
            (shard1.clone(), associate(moved, eip, moved.t + 100)),
            (shard1.clone(), stolen.home()),
            (shard2.clone(), stolen.second()),
        ],
    )
    .await;
    let found = found_once(
        "the theft found once",
        std::slice::from_ref(stolen),
        &[&w1, &w2],
    )
    .await;
    assert!(
        found.iter().all(|(_, f)| f["session"] != moved.name()),
        "the Elastic IP explained the move: {found:?}"
    );
    assert!(
        w2.metric("credwatch_candidates_total", "withdrawn") >= 1.0,
        "the candidate was withdrawn"
    );
}
