//! Credentials known from their issuance, and workload credentials used outside AWS: a scenario
//! table run with and without the `AssumeRole` events that issued the keys, in several orders.
//!
//! Without issuance events, credwatch classifies a key by its session name (`i-…`) and user
//! agent; with them, it also knows an ECS task's or a Lambda's key when the thief's calls carry
//! no marker, and a Lambda key's home (the runtime) before the function's first call. Each row
//! names the findings expected both ways; where they differ, the row says what issuance added.

mod support;

use std::collections::BTreeSet;

use credwatch::config::Config;
use credwatch::engine::Engine;
use support::events::{judge_with, Ev, T0};

const INST: &str = "i-0abc1234def567890";
/// The instance's own address (EC2, us-east-1).
const INST_IP: &str = "54.160.12.34";
/// Another account's instance (EC2, us-east-1).
const OTHER_EC2: &str = "54.210.7.7";
/// Lambda's own addresses (EC2 ranges, us-east-1).
const LAMBDA_IP: &str = "3.88.10.10";
/// Outside AWS.
const THIEF: &str = "185.220.101.4";

const LAMBDA_UA: &str = "Boto3/1.34 md/Botocore#1.34 ua/2.0 exec-env/AWS_Lambda_python3.12";
const ECS_UA: &str = "aws-sdk-go-v2/1.30 exec-env/AWS_ECS_FARGATE";
const THIEF_UA: &str = "aws-cli/2.15.0 Python/3.11";

/// (rule, session, suspicious origin) of each finding.
type Seen = BTreeSet<(String, String, String)>;

fn judge(events: &[Ev]) -> Seen {
    let out = judge_with(&Engine::new(&Config::default()), events);
    out.iter()
        .map(|f| {
            (
                f.rule.clone(),
                f.session.clone().unwrap_or_default(),
                f.suspicious_origin.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// The same events in time order, reversed, and issuance last: one answer.
fn judge_any_order(events: &[Ev]) -> Seen {
    let mut sorted = events.to_vec();
    sorted.sort_by_key(|e| e.t);
    let a = judge(&sorted);
    let mut reversed = sorted.clone();
    reversed.reverse();
    assert_eq!(judge(&reversed), a, "reversed order");
    let (iss, rest): (Vec<Ev>, Vec<Ev>) = sorted
        .iter()
        .cloned()
        .partition(|e| e.json["eventName"] == "AssumeRole");
    let late: Vec<Ev> = rest.into_iter().chain(iss).collect();
    assert_eq!(judge(&late), a, "issuance read last");
    a
}

fn seen(rows: &[(&str, &str, &str)]) -> Seen {
    rows.iter()
        .map(|(r, s, o)| (r.to_string(), s.to_string(), o.to_string()))
        .collect()
}

fn ec2(key: &str, ip: &str, t: i64) -> Ev {
    Ev::ec2(key, INST, ip, t)
}

fn task(key: &str, ip: &str, ua: &str, t: i64) -> Ev {
    Ev::role_of("task-role", key, "4f2a9c1e8b7d4e3f", ip, t).ua(ua)
}

fn lambda(key: &str, ip: &str, ua: &str, t: i64) -> Ev {
    Ev::role_of("fn-role", key, "checkout-fn", ip, t).ua(ua)
}

struct Row {
    name: &'static str,
    events: Vec<Ev>,
    issuance: Vec<Ev>,
    without: Seen,
    with: Seen,
}

#[test]
fn issuance_scenarios_give_the_same_findings_except_where_it_adds_knowledge() {
    let sess = format!("app-role/{INST}");
    let reuse = "session_token_reuse";
    let outside = "workload_credentials_outside_aws";
    let k_ec2 = "ASIAEC2KEY0000000001";
    let k_ecs = "ASIAECSKEY0000000001";
    let k_fn = "ASIALAMBDAKEY0000001";
    let iss_ec2 = Ev::issuance(
        "ec2.amazonaws.com",
        "app-role",
        INST,
        k_ec2,
        T0 - 120,
        T0 + 6 * 3600,
    );
    let iss_ecs = Ev::issuance(
        "ecs-tasks.amazonaws.com",
        "task-role",
        "4f2a9c1e8b7d4e3f",
        k_ecs,
        T0 - 120,
        T0 + 6 * 3600,
    );
    let iss_fn = Ev::issuance(
        "lambda.amazonaws.com",
        "fn-role",
        "checkout-fn",
        k_fn,
        T0 - 120,
        T0 + 12 * 3600,
    );
    let rows = vec![
        Row {
            name: "an instance's key used from outside AWS after the instance's own calls",
            events: vec![ec2(k_ec2, INST_IP, T0), ec2(k_ec2, THIEF, T0 + 60).ua(THIEF_UA)],
            issuance: vec![iss_ec2.clone()],
            without: seen(&[(reuse, &sess, THIEF), (outside, &sess, THIEF)]),
            with: seen(&[(reuse, &sess, THIEF), (outside, &sess, THIEF)]),
        },
        Row {
            name: "the thief calls first from outside AWS: the first origin is the suspicious one",
            events: vec![ec2(k_ec2, THIEF, T0).ua(THIEF_UA), ec2(k_ec2, INST_IP, T0 + 60)],
            issuance: vec![iss_ec2.clone()],
            without: seen(&[(reuse, &sess, THIEF), (outside, &sess, THIEF)]),
            with: seen(&[(reuse, &sess, THIEF), (outside, &sess, THIEF)]),
        },
        Row {
            name: "an instance's key used from another account's instance (in AWS, not ours)",
            events: vec![ec2(k_ec2, INST_IP, T0), ec2(k_ec2, OTHER_EC2, T0 + 60)],
            issuance: vec![iss_ec2.clone()],
            without: seen(&[(reuse, &sess, OTHER_EC2)]),
            with: seen(&[(reuse, &sess, OTHER_EC2)]),
        },
        Row {
            name: "an ECS task's key used from outside AWS with no ECS marker: issuance knows it is a task's",
            events: vec![task(k_ecs, INST_IP, ECS_UA, T0), task(k_ecs, THIEF, THIEF_UA, T0 + 60)],
            issuance: vec![iss_ecs.clone()],
            without: seen(&[(reuse, k_ecs, THIEF)]),
            with: seen(&[(reuse, k_ecs, THIEF), (outside, k_ecs, THIEF)]),
        },
        Row {
            name: "only the thief uses an ECS task's key: only issuance tells",
            events: vec![task(k_ecs, THIEF, THIEF_UA, T0)],
            issuance: vec![iss_ecs.clone()],
            without: seen(&[]),
            with: seen(&[(outside, k_ecs, THIEF)]),
        },
        Row {
            name: "a Lambda key used outside the runtime before the function's first call, which never comes",
            events: vec![lambda(k_fn, OTHER_EC2, THIEF_UA, T0)],
            issuance: vec![iss_fn.clone()],
            without: seen(&[]),
            with: seen(&[(reuse, k_fn, OTHER_EC2)]),
        },
        Row {
            name: "a Lambda key used outside the runtime, then by the function: the runtime call shows it was a Lambda's",
            events: vec![lambda(k_fn, OTHER_EC2, THIEF_UA, T0), lambda(k_fn, LAMBDA_IP, LAMBDA_UA, T0 + 60)],
            issuance: vec![iss_fn.clone()],
            without: seen(&[(reuse, k_fn, OTHER_EC2)]),
            with: seen(&[(reuse, k_fn, OTHER_EC2)]),
        },
        Row {
            name: "a copied Lambda environment (runtime marker) used from outside AWS is not a home",
            events: vec![lambda(k_fn, LAMBDA_IP, LAMBDA_UA, T0), lambda(k_fn, THIEF, LAMBDA_UA, T0 + 60)],
            issuance: vec![iss_fn.clone()],
            without: seen(&[(reuse, k_fn, THIEF), (outside, k_fn, THIEF)]),
            with: seen(&[(reuse, k_fn, THIEF), (outside, k_fn, THIEF)]),
        },
        Row {
            name: "benign: each workload calls only from where it runs",
            events: vec![
                ec2(k_ec2, INST_IP, T0),
                ec2(k_ec2, INST_IP, T0 + 600),
                task(k_ecs, "52.200.1.1", ECS_UA, T0),
                lambda(k_fn, LAMBDA_IP, LAMBDA_UA, T0),
                lambda(k_fn, "3.89.1.1", LAMBDA_UA, T0 + 30),
            ],
            issuance: vec![iss_ec2, iss_ecs, iss_fn],
            without: seen(&[]),
            with: seen(&[]),
        },
    ];
    for row in rows {
        let without = judge_any_order(&row.events);
        assert_eq!(without, row.without, "without issuance: {}", row.name);
        let with: Vec<Ev> = row.events.iter().chain(&row.issuance).cloned().collect();
        assert_eq!(
            judge_any_order(&with),
            row.with,
            "with issuance: {}",
            row.name
        );
    }
}

#[test]
fn an_issued_expiry_ends_a_keyed_session_exactly() {
    // A task key issued until T0 + 600: a use of the same key (impossible in AWS, so a replay
    // or a clock problem) after that is not compared with the task's home.
    let k = "ASIAECSKEY0000000002";
    let iss = Ev::issuance(
        "ecs-tasks.amazonaws.com",
        "task-role",
        "4f2a9c1e8b7d4e3f",
        k,
        T0 - 60,
        T0 + 600,
    );
    let events = vec![
        iss,
        task(k, INST_IP, ECS_UA, T0),
        task(k, OTHER_EC2, ECS_UA, T0 + 900),
    ];
    assert_eq!(judge(&events), seen(&[]));
    let events: Vec<Ev> = events.into_iter().skip(1).collect();
    assert_eq!(
        judge(&events),
        seen(&[("session_token_reuse", k, OTHER_EC2)]),
        "without the issuance the class maximum (6 h) applies"
    );
}
