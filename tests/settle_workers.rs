//! Settling across workers that share one state store: a credit read by one worker explains a
//! use read by another, even when the use's shard is read first.

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
