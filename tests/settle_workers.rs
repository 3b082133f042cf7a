//! Settling when the stream does not cooperate: workers that share one state store (a credit read
//! by one explains a use read by another, even when the use's shard is read first), and a
//! watermark that stays behind (a stalled shard, a dead worker's shards): `max_hold_secs`.

use credwatch::config::Config;
use credwatch::coord::MemoryAuthority;
use credwatch::engine::{Engine, Position};
use credwatch::finding::Finding;
use credwatch::settle::SettleAt;
use serde_json::{json, Value};
use std::sync::Arc;

const ACCT: &str = "111122223333";
const T0: i64 = 1_722_587_000;
const INST: &str = "i-0abc1234def567890";
const HOME: &str = "54.10.10.10";
const EIP: &str = "54.20.20.20";

fn time(t: i64) -> String {
    credwatch::event::format_time(t)
}

fn use_from(id: &str, ip: &str, t: i64) -> Value {
    json!({
        "eventVersion": "1.08", "eventID": id, "eventTime": time(t),
        "eventName": "DescribeInstances", "eventSource": "ec2.amazonaws.com",
        "awsRegion": "us-east-1", "sourceIPAddress": ip, "userAgent": "aws-cli/2.15",
        "recipientAccountId": ACCT,
        "userIdentity": {
            "type": "AssumedRole",
            "principalId": format!("AROAEXAMPLE:{INST}"),
            "arn": format!("arn:aws:sts::{ACCT}:assumed-role/app-role/{INST}"),
            "accountId": ACCT, "accessKeyId": "ASIAWORKERS000000001",
            "sessionContext": {
                "sessionIssuer": {"type": "Role", "arn": format!("arn:aws:iam::{ACCT}:role/app-role"), "userName": "app-role"},
                "attributes": {"creationDate": time(T0 - 600), "mfaAuthenticated": "false"},
                "ec2RoleDelivery": "2.0"
            }
        }
    })
}

fn associate(t: i64) -> Value {
    json!({
        "eventVersion": "1.08", "eventID": "assoc-1", "eventTime": time(t),
        "eventName": "AssociateAddress", "eventSource": "ec2.amazonaws.com",
        "awsRegion": "us-east-1", "sourceIPAddress": "198.51.100.7", "userAgent": "aws-cli/2.15",
        "recipientAccountId": ACCT,
        "userIdentity": {"type": "IAMUser", "accountId": ACCT, "accessKeyId": "AKIAADMIN", "arn": format!("arn:aws:iam::{ACCT}:user/admin")},
        "requestParameters": {"publicIp": EIP, "instanceId": INST},
        "responseElements": {"requestId": "r", "_return": true}
    })
}

fn feed(e: &Engine, v: &Value) -> Vec<Finding> {
    let pos = Position {
        prefix: "shard",
        index: 0,
    };
    e.process_json(&v.to_string(), pos).expect("event parses")
}

fn workers() -> (Engine, Engine) {
    let auth = Arc::new(MemoryAuthority::default());
    let cfg = Config::default();
    (
        Engine::new(&cfg).with_authority(auth.clone()),
        Engine::new(&cfg).with_authority(auth),
    )
}

#[test]
fn a_credit_read_by_one_worker_explains_a_use_read_first_by_another() {
    let (a, b) = workers();
    // Worker B reads the home, then the instance's first call from its new Elastic IP...
    feed(&b, &use_from("home", HOME, T0));
    feed(&b, &use_from("moved", EIP, T0 + 120));
    // ...before worker A has read the AssociateAddress (earlier in event time) on its shard.
    assert!(
        b.settle(SettleAt {
            watermark: T0 + 60,
            now: None
        })
        .is_empty(),
        "not final while the watermark is behind"
    );
    feed(&a, &associate(T0 + 100));
    let found: Vec<Finding> = [&a, &b]
        .iter()
        .flat_map(|w| w.settle(SettleAt::END))
        .collect();
    assert!(found.is_empty(), "the credit explains the move: {found:?}");
}

#[test]
fn without_the_credit_the_same_use_is_a_finding_once() {
    let (a, b) = workers();
    feed(&a, &use_from("home", HOME, T0));
    feed(&b, &use_from("moved", EIP, T0 + 120));
    let found: Vec<Finding> = [&a, &b]
        .iter()
        .flat_map(|w| w.settle(SettleAt::END))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].events[0].event_id, "home");
    assert_eq!(found[0].events[1].event_id, "moved");
}

#[test]
fn a_credit_later_than_the_use_does_not_explain_it() {
    let (a, b) = workers();
    feed(&b, &use_from("home", HOME, T0));
    feed(&b, &use_from("moved", EIP, T0 + 120));
    feed(&a, &associate(T0 + 300));
    let found: Vec<Finding> = [&a, &b]
        .iter()
        .flat_map(|w| w.settle(SettleAt::END))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
}

#[test]
fn a_candidate_held_past_max_hold_is_released_and_says_the_stream_was_behind() {
    let cfg = Config::from_toml_str("[detection]\nmax_hold_secs = 0\n").unwrap();
    let e = Engine::new(&cfg);
    feed(&e, &use_from("home", HOME, T0));
    feed(&e, &use_from("thief", "203.0.113.9", T0 + 120));
    // The watermark never passed the thief's call (a shard stalled); wall time says release.
    let behind = SettleAt {
        watermark: T0 + 130,
        now: Some(credwatch::settle::wall_now()),
    };
    let found = e.settle(behind);
    assert_eq!(found.len(), 1, "{found:?}");
    let note = found[0].released_early.as_deref().unwrap_or_default();
    assert!(
        note.contains("max_hold_secs") && note.contains("behind"),
        "{note}"
    );
    // Released once: the watermark catching up later reports nothing more.
    assert!(e.settle(SettleAt::END).is_empty());

    // With the default hold, the same behind watermark keeps it pending.
    let e = Engine::new(&Config::default());
    feed(&e, &use_from("home", HOME, T0));
    feed(&e, &use_from("thief", "203.0.113.9", T0 + 120));
    assert!(e.settle(behind).is_empty());
    let found = e.settle(SettleAt::END);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].released_early, None, "settled by the watermark");
}
