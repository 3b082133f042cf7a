//! Scenario tables for the engine: events in, findings out.

mod support;

use credwatch::config::Config;
use credwatch::engine::{Engine, Position};
use credwatch::finding::{Finding, Severity};
use credwatch::settle::SettleAt;
use serde_json::{json, Value};
use support::events::{judge_with, time, Ev, ACCT, T0};

fn run_with(cfg: &Config, events: &[Ev]) -> Vec<Finding> {
    // Everything has arrived at the end: the contested sessions settle.
    judge_with(&Engine::new(cfg), events)
}

fn run(events: &[Ev]) -> Vec<Finding> {
    run_with(&reuse_only(), events)
}

fn rules(findings: &[Finding]) -> Vec<&str> {
    findings.iter().map(|f| f.rule.as_str()).collect()
}

fn cfg(toml: &str) -> Config {
    Config::from_toml_str(&format!("{OUTSIDE_OFF}{toml}")).unwrap()
}

/// These tables are about the second origin and the event rules; their addresses are
/// documentation ranges, outside AWS, where `workload_credentials_outside_aws` fires on every
/// instance call. That rule has its own tables (`tests/places.rs`, `tests/issuance.rs`).
const OUTSIDE_OFF: &str = "[rules.workload_credentials_outside_aws]\nenabled = false\n";

fn reuse_only() -> Config {
    Config::from_toml_str(OUTSIDE_OFF).unwrap()
}

const INST: &str = "i-0abc1234def567890";
const HOME: &str = "54.10.10.10";
const EVIL: &str = "203.0.113.66";

#[test]
fn session_token_reuse_scenarios() {
    let assoc = |ip: &str, t: i64| {
        Ev::base("AssociateAddress", "ec2.amazonaws.com", t, "198.51.100.7").set(
            "requestParameters",
            json!({"publicIp": ip, "instanceId": INST}),
        )
    };
    let vpce = |acct: &str, t: i64| {
        Ev::ec2("ASIA1", INST, "10.0.1.5", t)
            .set("vpcEndpointId", json!("vpce-0a1b2c3d"))
            .set("vpcEndpointAccountId", json!(acct))
    };
    let cases: Vec<(&str, Config, Vec<Ev>, Vec<&str>)> = vec![
        (
            "stolen instance credential used from the internet",
            reuse_only(),
            vec![Ev::ec2("ASIA1", INST, HOME, T0), Ev::ec2("ASIA1", INST, EVIL, T0 + 60)],
            vec!["session_token_reuse"],
        ),
        (
            "same origin twice is home",
            reuse_only(),
            vec![Ev::ec2("ASIA1", INST, HOME, T0), Ev::ec2("ASIA1", INST, HOME, T0 + 60)],
            vec![],
        ),
        (
            "a rotated key of the same instance session shares the lock",
            reuse_only(),
            vec![Ev::ec2("ASIA1", INST, HOME, T0), Ev::ec2("ASIA2", INST, EVIL, T0 + 3600)],
            vec!["session_token_reuse"],
        ),
        (
            "a rotated key from home is fine",
            reuse_only(),
            vec![Ev::ec2("ASIA1", INST, HOME, T0), Ev::ec2("ASIA2", INST, HOME, T0 + 3600)],
            vec![],
        ),
        (
            "AWS services and AWS Internal never lock nor count as a second origin",
            reuse_only(),
            vec![
                Ev::ec2("ASIA1", INST, "ec2.amazonaws.com", T0),
                Ev::ec2("ASIA1", INST, "AWS Internal", T0 + 1),
                Ev::ec2("ASIA1", INST, HOME, T0 + 2),
                Ev::ec2("ASIA1", INST, "ssm.amazonaws.com", T0 + 3),
                Ev::ec2("ASIA1", INST, "AWS Internal", T0 + 4),
            ],
            vec![],
        ),
        (
            "invokedBy makes the origin an AWS service",
            reuse_only(),
            vec![Ev::ec2("ASIA1", INST, HOME, T0), {
                let mut e = Ev::ec2("ASIA1", INST, EVIL, T0 + 5);
                e.json["userIdentity"]["invokedBy"] = json!("cloudformation.amazonaws.com");
                e
            }],
            vec![],
        ),
        (
            "the organisation's VPC endpoint explains an origin",
            cfg(&format!("[organization]\naccount_ids = [\"{ACCT}\"]\n")),
            vec![Ev::ec2("ASIA1", INST, HOME, T0), vpce(ACCT, T0 + 10)],
            vec![],
        ),
        (
            "without [organization] the session's own account owns its endpoints",
            reuse_only(),
            vec![Ev::ec2("ASIA1", INST, HOME, T0), vpce(ACCT, T0 + 10)],
            vec![],
        ),
        (
            "a VPC endpoint of a foreign account is a finding of its own",
            cfg(&format!("[organization]\naccount_ids = [\"{ACCT}\"]\n")),
            vec![Ev::ec2("ASIA1", INST, HOME, T0), vpce("999999999999", T0 + 10), vpce("999999999999", T0 + 20)],
            vec!["foreign_vpc_endpoint"],
        ),
        (
            "a private address without a VPC endpoint is an ordinary origin",
            reuse_only(),
            vec![Ev::ec2("ASIA1", INST, "10.0.0.1", T0), Ev::ec2("ASIA1", INST, "10.0.0.2", T0 + 1)],
            vec!["session_token_reuse"],
        ),
        (
            "an Elastic IP associated with the instance explains its new address, whoever associated it",
            reuse_only(),
            vec![Ev::ec2("ASIA1", INST, HOME, T0), assoc(EVIL, T0 + 5), Ev::ec2("ASIA1", INST, EVIL, T0 + 60)],
            vec![],
        ),
        (
            "an Elastic IP associated by allocation id resolves through AllocateAddress",
            reuse_only(),
            vec![
                Ev::ec2("ASIA1", INST, HOME, T0),
                Ev::base("AllocateAddress", "ec2.amazonaws.com", T0 + 1, "198.51.100.7")
                    .set("responseElements", json!({"publicIp": EVIL, "allocationId": "eipalloc-1"})),
                Ev::base("AssociateAddress", "ec2.amazonaws.com", T0 + 2, "198.51.100.7")
                    .set("requestParameters", json!({"allocationId": "eipalloc-1", "instanceId": INST})),
                Ev::ec2("ASIA1", INST, EVIL, T0 + 60),
            ],
            vec![],
        ),
        (
            "an address given to another instance explains nothing",
            reuse_only(),
            vec![
                Ev::ec2("ASIA1", INST, HOME, T0),
                Ev::base("AssociateAddress", "ec2.amazonaws.com", T0 + 1, "198.51.100.7")
                    .set("requestParameters", json!({"publicIp": EVIL, "instanceId": "i-0ffffffffffffffff"})),
                Ev::ec2("ASIA1", INST, EVIL, T0 + 60),
            ],
            vec!["session_token_reuse"],
        ),
        (
            "a failed AssociateAddress credits nothing",
            reuse_only(),
            vec![
                Ev::ec2("ASIA1", INST, HOME, T0),
                assoc(EVIL, T0 + 1).set("errorCode", json!("UnauthorizedOperation")),
                Ev::ec2("ASIA1", INST, EVIL, T0 + 60),
            ],
            vec!["session_token_reuse"],
        ),
        (
            "StartInstances begins a new home",
            reuse_only(),
            vec![
                Ev::ec2("ASIA1", INST, HOME, T0),
                Ev::base("StartInstances", "ec2.amazonaws.com", T0 + 100, "198.51.100.7")
                    .set("requestParameters", json!({"instancesSet": {"items": [{"instanceId": INST}]}})),
                Ev::ec2("ASIA2", INST, EVIL, T0 + 200),
            ],
            vec![],
        ),
        (
            "an [[allow]] network explains an origin",
            cfg("[[allow]]\ncidr = \"203.0.113.0/24\"\nreason = \"office egress\"\n"),
            vec![Ev::ec2("ASIA1", INST, HOME, T0), Ev::ec2("ASIA1", INST, EVIL, T0 + 60)],
            vec![],
        ),
        (
            "an [[allow]] entry for another account does not apply",
            cfg("[[allow]]\ncidr = \"203.0.113.0/24\"\naccount = \"999999999999\"\nreason = \"x\"\n"),
            vec![Ev::ec2("ASIA1", INST, HOME, T0), Ev::ec2("ASIA1", INST, EVIL, T0 + 60)],
            vec!["session_token_reuse"],
        ),
        (
            "an [[allow]] entry for the role applies",
            cfg("[[allow]]\ncidr = \"203.0.113.0/24\"\nrole = \"app-role\"\nreason = \"x\"\n"),
            vec![Ev::ec2("ASIA1", INST, HOME, T0), Ev::ec2("ASIA1", INST, EVIL, T0 + 60)],
            vec![],
        ),
        (
            "an expired [[allow]] entry does not apply",
            cfg("[[allow]]\ncidr = \"203.0.113.0/24\"\nreason = \"x\"\nexpires = \"2024-01-01\"\n"),
            vec![Ev::ec2("ASIA1", INST, HOME, T0), Ev::ec2("ASIA1", INST, EVIL, T0 + 60)],
            vec!["session_token_reuse"],
        ),
        (
            "console sessions stay out of the rule by default",
            reuse_only(),
            vec![
                Ev::role("ASIAC", "alice", HOME, T0).set("sessionCredentialFromConsole", json!("true")),
                Ev::role("ASIAC", "alice", EVIL, T0 + 1).set("sessionCredentialFromConsole", json!("true")),
            ],
            vec![],
        ),
        (
            "console sessions, when included, skip calls relayed by the console back end",
            cfg("[detection]\ninclude_console_sessions = true\n"),
            vec![
                Ev::role("ASIAC", "alice", HOME, T0).set("sessionCredentialFromConsole", json!("true")),
                Ev::role("ASIAC", "alice", "52.94.1.1", T0 + 1)
                    .set("sessionCredentialFromConsole", json!("true"))
                    .ua("aws-internal/3 aws-sdk-java/1.12"),
                Ev::role("ASIAC", "alice", EVIL, T0 + 2).set("sessionCredentialFromConsole", json!("true")),
            ],
            vec!["session_token_reuse"],
        ),
        (
            "Lambda credentials are at home in the runtime, from any address",
            reuse_only(),
            vec![
                Ev::role("ASIAL", "my-fn", "3.80.0.1", T0).ua("Boto3/1.34 exec-env/AWS_Lambda_python3.12"),
                Ev::role("ASIAL", "my-fn", "3.80.0.2", T0 + 1).ua("Boto3/1.34 exec-env/AWS_Lambda_python3.12"),
            ],
            vec![],
        ),
        (
            "Lambda credentials used outside the runtime",
            reuse_only(),
            vec![
                Ev::role("ASIAL", "my-fn", "3.80.0.1", T0).ua("Boto3/1.34 exec-env/AWS_Lambda_python3.12"),
                Ev::role("ASIAL", "my-fn", EVIL, T0 + 60).ua("python-requests/2.31"),
            ],
            vec!["session_token_reuse"],
        ),
        (
            "Lambda credentials used outside the runtime, seen before the runtime's own call",
            reuse_only(),
            vec![
                Ev::role("ASIAL", "my-fn", EVIL, T0 + 60).ua("python-requests/2.31"),
                Ev::role("ASIAL", "my-fn", "3.80.0.1", T0).ua("Boto3/1.34 exec-env/AWS_Lambda_python3.12"),
                Ev::role("ASIAL", "my-fn", EVIL, T0 + 61).ua("python-requests/2.31"),
            ],
            vec!["session_token_reuse"],
        ),
        (
            "one finding per (session, new origin); a third origin is another",
            reuse_only(),
            vec![
                Ev::ec2("ASIA1", INST, HOME, T0),
                Ev::ec2("ASIA1", INST, EVIL, T0 + 1),
                Ev::ec2("ASIA1", INST, EVIL, T0 + 2),
                Ev::ec2("ASIA1", INST, "198.51.100.99", T0 + 3),
            ],
            vec!["session_token_reuse", "session_token_reuse"],
        ),
        (
            "after the credential's lifetime the session starts over",
            reuse_only(),
            vec![Ev::role("ASIAR", "bob", HOME, T0), Ev::role("ASIAR", "bob", EVIL, T0 + 13 * 3600)],
            vec![],
        ),
        (
            "an IPv4-mapped IPv6 address is the same origin as its IPv4",
            reuse_only(),
            vec![Ev::ec2("ASIA1", INST, HOME, T0), Ev::ec2("ASIA1", INST, "::ffff:54.10.10.10", T0 + 1)],
            vec![],
        ),
        (
            "values that are not addresses are opaque origins, compared as they are",
            reuse_only(),
            vec![
                Ev::ec2("ASIA1", INST, "075.050.255.67", T0),
                Ev::ec2("ASIA1", INST, "075.050.255.67", T0 + 1),
                Ev::ec2("ASIA1", INST, "REDACTED_SOURCE_IP", T0 + 2),
            ],
            vec!["session_token_reuse"],
        ),
        (
            "long-term keys are ignored by default",
            reuse_only(),
            vec![Ev::base("ListUsers", "iam.amazonaws.com", T0, HOME), Ev::base("ListUsers", "iam.amazonaws.com", T0 + 1, EVIL)],
            vec![],
        ),
        (
            "long-term keys are tracked when enabled",
            cfg("[detection]\ninclude_long_term_keys = true\n"),
            vec![Ev::base("ListUsers", "iam.amazonaws.com", T0, HOME), Ev::base("ListUsers", "iam.amazonaws.com", T0 + 1, EVIL)],
            vec!["session_token_reuse"],
        ),
        (
            "the rule can be switched off",
            cfg("[rules.session_token_reuse]\nenabled = false\n"),
            vec![Ev::ec2("ASIA1", INST, HOME, T0), Ev::ec2("ASIA1", INST, EVIL, T0 + 60)],
            vec![],
        ),
        (
            "IPv6 compared on a configured prefix",
            cfg("[detection]\nipv6_prefix_len = 64\n"),
            vec![Ev::ec2("ASIA1", INST, "2600:1f18:1:2::10", T0), Ev::ec2("ASIA1", INST, "2600:1f18:1:2::99", T0 + 1)],
            vec![],
        ),
    ];
    for (name, config, events, want) in cases {
        let got = run_with(&config, &events);
        assert_eq!(rules(&got), want, "scenario: {name}\n{got:#?}");
    }
}

#[test]
fn reuse_findings_carry_both_events_and_the_exceptions_checked() {
    let first = Ev::ec2("ASIA1", INST, HOME, T0).ua("aws-sdk-go/1.44");
    let second = Ev::ec2("ASIA1", INST, EVIL, T0 + 60).ua("curl/8.4");
    let got = run(&[first.clone(), second.clone()]);
    assert_eq!(got.len(), 1);
    let f = &got[0];
    assert_eq!(f.severity, Severity::High);
    assert_eq!(f.session.as_deref(), Some(&*format!("app-role/{INST}")));
    assert_eq!(f.access_key_id.as_deref(), Some("ASIA1"));
    assert_eq!(f.credential_class.as_deref(), Some("ec2_instance"));
    assert_eq!(
        f.event_ids,
        vec![
            first.json["eventID"].as_str().unwrap(),
            second.json["eventID"].as_str().unwrap()
        ]
    );
    let (a, b) = (&f.events[0], &f.events[1]);
    assert_eq!(
        (a.role.as_str(), a.origin.as_str(), a.user_agent.as_str()),
        ("first", HOME, "aws-sdk-go/1.44")
    );
    assert_eq!(a.event_time, time(T0));
    assert_eq!(
        (b.role.as_str(), b.origin.as_str(), b.user_agent.as_str()),
        ("second", EVIL, "curl/8.4")
    );
    assert_eq!(b.origin_kind, "public_ip");
    let checked: Vec<&str> = f
        .exceptions_checked
        .iter()
        .map(|c| c.exception.as_str())
        .collect();
    for want in [
        "aws_service",
        "aws_internal",
        "org_vpc_endpoint",
        "instance_address",
        "allow_list",
        "instance_restart",
    ] {
        assert!(checked.contains(&want), "missing check {want}: {checked:?}");
    }
    assert!(f.exceptions_checked.iter().all(|c| !c.applied));
}

#[test]
fn a_late_event_with_an_earlier_time_takes_the_lock_and_the_pair_is_reported() {
    let early = Ev::ec2("ASIA1", INST, HOME, T0);
    let late = Ev::ec2("ASIA1", INST, EVIL, T0 + 60);
    let got = run(&[late.clone(), early.clone()]);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].events[0].origin, HOME,
        "the earlier event is the home"
    );
    assert_eq!(got[0].events[1].origin, EVIL);
    // And the lock stays with the earlier origin: more calls from home are quiet.
    let more = run(&[late, early, Ev::ec2("ASIA1", INST, HOME, T0 + 120)]);
    assert_eq!(more.len(), 1);
}

#[test]
fn finding_ids_do_not_depend_on_arrival_order() {
    let a = Ev::ec2("ASIA1", INST, HOME, T0);
    let b = Ev::ec2("ASIA1", INST, EVIL, T0 + 60);
    let x = run(&[a.clone(), b.clone()]);
    let y = run(&[b, a]);
    assert_eq!(x[0].id, y[0].id);
}

#[test]
fn event_rule_scenarios() {
    let ingress = |req: Value| {
        Ev::base(
            "AuthorizeSecurityGroupIngress",
            "ec2.amazonaws.com",
            T0,
            HOME,
        )
        .set("requestParameters", req)
    };
    type Case<'a> = (&'a str, Ev, Vec<(&'a str, Severity)>);
    let cases: Vec<Case> = vec![
        (
            "ingress open to an anonymised /0",
            ingress(json!({"cidrIp": "208.236.235.254/0", "groupId": "sg-1", "ipPermissions": {}})),
            vec![("security_group_open_to_world", Severity::Medium)],
        ),
        (
            "ingress open to ::/0 in ipPermissions",
            ingress(json!({"groupId": "sg-1", "ipPermissions": {"items": [{"ipProtocol": "tcp", "ipv6Ranges": {"items": [{"cidrIpv6": "::/0"}]}}]}})),
            vec![("security_group_open_to_world", Severity::Medium)],
        ),
        (
            "ingress to one address is fine",
            ingress(json!({"groupId": "sg-1", "ipPermissions": {"items": [{"ipRanges": {"items": [{"cidrIp": "198.51.100.1/32"}]}}]}})),
            vec![],
        ),
        (
            "StopLogging",
            Ev::base("x", "x", T0, HOME).name("cloudtrail.amazonaws.com", "StopLogging").set("requestParameters", json!({"name": "main"})),
            vec![("stop_logging", Severity::High)],
        ),
        (
            "a failed StopLogging is reported lower, with its error",
            Ev::base("x", "x", T0, HOME)
                .name("cloudtrail.amazonaws.com", "StopLogging")
                .set("errorCode", json!("AccessDenied")),
            vec![("stop_logging", Severity::Medium)],
        ),
        ("DeleteTrail", Ev::base("x", "x", T0, HOME).name("cloudtrail.amazonaws.com", "DeleteTrail"), vec![("delete_trail", Severity::High)]),
        ("PutEventSelectors", Ev::base("x", "x", T0, HOME).name("cloudtrail.amazonaws.com", "PutEventSelectors"), vec![("put_event_selectors", Severity::Medium)]),
        ("DeactivateMFADevice", Ev::base("x", "x", T0, HOME).name("iam.amazonaws.com", "DeactivateMFADevice"), vec![("deactivate_mfa_device", Severity::Medium)]),
        ("DeleteVirtualMFADevice", Ev::base("x", "x", T0, HOME).name("iam.amazonaws.com", "DeleteVirtualMFADevice"), vec![("delete_virtual_mfa_device", Severity::Medium)]),
        ("CreateUser", Ev::base("x", "x", T0, HOME).name("iam.amazonaws.com", "CreateUser"), vec![("create_user", Severity::Medium)]),
        ("CreateAccessKey", Ev::base("x", "x", T0, HOME).name("iam.amazonaws.com", "CreateAccessKey"), vec![("create_access_key", Severity::Medium)]),
        ("CreateLoginProfile", Ev::base("x", "x", T0, HOME).name("iam.amazonaws.com", "CreateLoginProfile"), vec![("create_login_profile", Severity::Medium)]),
        (
            "EBS snapshot shared with all",
            Ev::base("x", "x", T0, HOME).name("ec2.amazonaws.com", "ModifySnapshotAttribute").set(
                "requestParameters",
                json!({"snapshotId": "snap-1", "attributeType": "CREATE_VOLUME_PERMISSION", "createVolumePermission": {"add": {"items": [{"group": "all"}]}}}),
            ),
            vec![("snapshot_shared_publicly", Severity::High)],
        ),
        (
            "EBS snapshot shared with a foreign account",
            Ev::base("x", "x", T0, HOME).name("ec2.amazonaws.com", "ModifySnapshotAttribute").set(
                "requestParameters",
                json!({"snapshotId": "snap-1", "createVolumePermission": {"add": {"items": [{"userId": "098797384747"}]}}}),
            ),
            vec![("snapshot_shared_externally", Severity::Medium)],
        ),
        (
            "AMI shared with all",
            Ev::base("x", "x", T0, HOME).name("ec2.amazonaws.com", "ModifyImageAttribute").set(
                "requestParameters",
                json!({"imageId": "ami-1", "launchPermission": {"add": {"items": [{"group": "all"}]}}}),
            ),
            vec![("ami_shared_publicly", Severity::High)],
        ),
        (
            "RDS snapshot made public",
            Ev::base("x", "x", T0, HOME).name("rds.amazonaws.com", "ModifyDBSnapshotAttribute").set(
                "requestParameters",
                json!({"attributeName": "restore", "dBSnapshotIdentifier": "db1", "valuesToAdd": ["all"]}),
            ),
            vec![("snapshot_shared_publicly", Severity::High)],
        ),
        (
            "GetCallerIdentity with instance credentials",
            Ev::ec2("ASIA1", INST, HOME, T0).name("sts.amazonaws.com", "GetCallerIdentity"),
            vec![("workload_get_caller_identity", Severity::Medium)],
        ),
        (
            "GetCallerIdentity with a user's key is not a workload",
            Ev::base("x", "x", T0, HOME).name("sts.amazonaws.com", "GetCallerIdentity"),
            vec![],
        ),
        ("an event name from another service does not match", Ev::base("x", "x", T0, HOME).name("s3.amazonaws.com", "StopLogging"), vec![]),
    ];
    for (name, ev, want) in cases {
        let got = run(&[ev]);
        let got: Vec<(&str, Severity)> =
            got.iter().map(|f| (f.rule.as_str(), f.severity)).collect();
        assert_eq!(got, want, "scenario: {name}");
    }
}

#[test]
fn event_rules_can_be_re_rated_and_switched_off() {
    let ev = Ev::base("x", "x", T0, HOME).name("iam.amazonaws.com", "CreateUser");
    let got = run_with(
        &cfg("[rules.create_user]\nseverity = \"critical\"\n"),
        std::slice::from_ref(&ev),
    );
    assert_eq!(got[0].severity, Severity::Critical);
    assert!(run_with(&cfg("[rules.create_user]\nenabled = false\n"), &[ev]).is_empty());
}

#[test]
fn the_same_event_read_twice_gives_one_finding() {
    let ev = Ev::base("x", "x", T0, HOME).name("cloudtrail.amazonaws.com", "StopLogging");
    assert_eq!(run(&[ev.clone(), ev]).len(), 1);
}

#[test]
fn service_principal_churn_does_not_grow_the_store() {
    let engine = Engine::new(&reuse_only());
    for i in 0..5000 {
        let ev = Ev::role(
            &format!("ASIASVC{i:06}"),
            "resource-explorer-2",
            "resource-explorer-2.amazonaws.com",
            T0 + i,
        );
        let mut ev = ev;
        ev.json["userIdentity"]["invokedBy"] = json!("resource-explorer-2.amazonaws.com");
        engine
            .process_json(
                &ev.text(),
                Position {
                    prefix: "t",
                    index: 0,
                },
            )
            .unwrap();
    }
    assert_eq!(engine.tracked_sessions(), 0);
}

#[test]
fn sessions_expire_and_the_store_stays_bounded() {
    let engine = Engine::new(&cfg("[detection]\nmax_sessions = 1000\n"));
    for i in 0..20_000i64 {
        let ev = Ev::role(&format!("ASIACHURN{i:08}"), "job", HOME, T0 + i);
        engine
            .process_json(
                &ev.text(),
                Position {
                    prefix: "t",
                    index: 0,
                },
            )
            .unwrap();
        if i % 1000 == 999 {
            engine.sweep();
        }
    }
    assert!(
        engine.tracked_sessions() <= 1000,
        "{}",
        engine.tracked_sessions()
    );
    // Far past every lifetime, everything expires.
    engine.sweep_at(T0 + 10 * 86400);
    assert_eq!(engine.tracked_sessions(), 0);
    assert_eq!(engine.store.interned_strings(), 0);
}

#[test]
fn a_snapshot_keeps_the_locks_it_had_learned() {
    let a = Engine::new(&reuse_only());
    a.process_json(
        &Ev::ec2("ASIA1", INST, HOME, T0).text(),
        Position {
            prefix: "t",
            index: 0,
        },
    )
    .unwrap();
    let snap = serde_json::to_string(&a.snapshot()).unwrap();
    let b = Engine::new(&reuse_only());
    b.restore(&serde_json::from_str(&snap).unwrap());
    assert!(b
        .process_json(
            &Ev::ec2("ASIA1", INST, EVIL, T0 + 5).text(),
            Position {
                prefix: "t",
                index: 1,
            },
        )
        .unwrap()
        .is_empty());
    let got = b.settle(SettleAt::END);
    assert_eq!(rules(&got), vec!["session_token_reuse"]);
    assert_eq!(got[0].events[0].origin, HOME);
}

mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn origin_pool() -> Vec<&'static str> {
        vec![
            HOME,
            EVIL,
            "198.51.100.5",
            "10.0.0.7",
            "075.050.255.67",
            "ec2.amazonaws.com",
            "AWS Internal",
            "2600:1f18::5",
        ]
    }

    fn event(k: usize, o: usize, dt: i64, lambda: bool) -> Ev {
        let pool = origin_pool();
        let e = if k < 3 {
            Ev::ec2(
                &format!("ASIA{k}"),
                &format!("i-0{k}00000000000000"),
                pool[o],
                T0 + dt,
            )
        } else {
            Ev::role(&format!("ASIA{k}"), "fn", pool[o], T0 + dt)
        };
        if lambda {
            e.ua("exec-env/AWS_Lambda_nodejs20.x")
        } else {
            e
        }
    }

    fn sessions(findings: &[Finding]) -> BTreeSet<String> {
        findings.iter().filter_map(|f| f.session.clone()).collect()
    }

    /// Events dealt to `workers` engines sharing one authority (in `order`), with findings
    /// deduplicated by id as the state table's claims do.
    fn run_workers(events: &[Ev], deal: &[usize], workers: usize) -> Vec<Finding> {
        let auth = std::sync::Arc::new(credwatch::coord::MemoryAuthority::default());
        let engines: Vec<Engine> = (0..workers)
            .map(|_| Engine::new(&reuse_only()).with_authority(auth.clone()))
            .collect();
        // The state table's claims: a key is reported once until its `until`.
        let mut claims: std::collections::HashMap<String, i64> = Default::default();
        let mut out = Vec::new();
        for (i, (e, w)) in events.iter().zip(deal).enumerate() {
            let found = engines[*w % workers]
                .process_json(
                    &e.text(),
                    Position {
                        prefix: "test",
                        index: i,
                    },
                )
                .expect("event parses");
            claim(&mut claims, &mut out, found);
        }
        // Everything has arrived: every worker settles its contested sessions.
        for w in &engines {
            claim(&mut claims, &mut out, w.settle(SettleAt::END));
        }
        out
    }

    /// Keeps the findings whose claim is free, as the state table's claims do.
    fn claim(
        claims: &mut std::collections::HashMap<String, i64>,
        out: &mut Vec<Finding>,
        found: Vec<Finding>,
    ) {
        for f in found {
            let (key, until) = f.claim_key();
            let t = credwatch::event::parse_time(&f.event_time).unwrap();
            if claims.get(&key).is_none_or(|u| *u < t) {
                claims.insert(key, until);
                out.push(f);
            }
        }
    }

    fn claims(findings: &[Finding]) -> Vec<String> {
        let mut k: Vec<String> = findings.iter().map(|f| f.claim_key().0).collect();
        k.sort();
        k
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn three_workers_with_a_shared_store_report_what_one_engine_reports(
            spec in prop::collection::vec((0usize..6, 0usize..8, 0i64..3600, any::<bool>(), 0usize..3), 1..24),
        ) {
            let events: Vec<Ev> = spec.iter().map(|(k, o, dt, l, _)| event(*k, *o, *dt, *l && *k >= 3)).collect();
            let deal: Vec<usize> = spec.iter().map(|x| x.4).collect();
            let one = run(&events);
            let many = run_workers(&events, &deal, 3);
            prop_assert_eq!(sessions(&one), sessions(&many));
            prop_assert_eq!(claims(&one), claims(&many));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn arrival_order_does_not_change_the_sessions_reported(
            spec in prop::collection::vec((0usize..6, 0usize..8, 0i64..3600, any::<bool>()), 1..24),
            seed in any::<u64>(),
        ) {
            let events: Vec<Ev> = spec.iter().map(|(k, o, dt, l)| event(*k, *o, *dt, *l && *k >= 3)).collect();
            let mut shuffled = events.clone();
            // A deterministic shuffle from the seed.
            let mut s = seed | 1;
            for i in (1..shuffled.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                shuffled.swap(i, (s % (i as u64 + 1)) as usize);
            }
            prop_assert_eq!(sessions(&run(&events)), sessions(&run(&shuffled)));
        }
    }
}

/// Two engines sharing one in-memory authority, as two workers share the state table.
fn two_workers() -> (Engine, Engine) {
    let auth = std::sync::Arc::new(credwatch::coord::MemoryAuthority::default());
    (
        Engine::new(&reuse_only()).with_authority(auth.clone()),
        Engine::new(&reuse_only()).with_authority(auth),
    )
}

/// Every worker settles its contested sessions (everything has arrived).
fn settle_all(workers: &[&Engine]) -> Vec<Finding> {
    workers
        .iter()
        .flat_map(|w| w.settle(SettleAt::END))
        .collect()
}

#[test]
fn two_workers_sharing_a_store_report_a_session_split_between_them_once() {
    let (a, b) = two_workers();
    let pos = Position {
        prefix: "test",
        index: 0,
    };
    let home = Ev::ec2("ASIAHOME", INST, HOME, T0);
    let evil = Ev::ec2("ASIAHOME", INST, EVIL, T0 + 60);
    // The attacker's call reaches worker B first; the home call, earlier, reaches A later.
    assert!(b.process_json(&evil.text(), pos).unwrap().is_empty());
    assert!(a.process_json(&home.text(), pos).unwrap().is_empty());
    let found = settle_all(&[&a, &b]);
    assert_eq!(rules(&found), vec!["session_token_reuse"]);
    let f = &found[0];
    assert_eq!(f.events[0].origin, HOME, "the earlier event is the home");
    assert_eq!(f.events[1].origin, EVIL);
    assert_eq!(f.events[1].event_id, evil.json["eventID"].as_str().unwrap());
    // More calls from both origins on either worker: the same claim, never a new one.
    let mut more: Vec<Finding> = [(&a, &evil), (&b, &home), (&b, &evil)]
        .iter()
        .flat_map(|(w, e)| w.process_json(&e.text(), pos).unwrap())
        .collect();
    more.extend(settle_all(&[&a, &b]));
    assert!(
        more.iter().all(|g| g.claim_key() == f.claim_key()),
        "{more:?}"
    );
}

/// With the shared store unreachable, a session event is not decided alone (a home chosen
/// without the other workers could hide, for good, a second origin one of them holds the home
/// of): it leaves no trace and is counted in `unshared`, so the reader reads its record again.
/// Read again once the store answers, the same events give the finding, once.
#[test]
fn an_unreachable_shared_store_leaves_no_local_decision_and_the_events_are_judged_when_read_again()
{
    use std::sync::atomic::Ordering::Relaxed;
    let auth = std::sync::Arc::new(credwatch::coord::MemoryAuthority::default());
    auth.down.store(true, Relaxed);
    let a = Engine::new(&reuse_only()).with_authority(auth.clone());
    let pos = Position {
        prefix: "test",
        index: 0,
    };
    let home = Ev::ec2("ASIADOWN", INST, HOME, T0).text();
    let away = Ev::ec2("ASIADOWN", INST, EVIL, T0 + 5).text();
    for ev in [&home, &away] {
        assert!(a.process_json(ev, pos).unwrap().is_empty());
    }
    assert_eq!(a.unshared(), 2, "both events were left undecided");
    assert_eq!(a.tracked_sessions(), 0, "no local decision");
    assert!(a.settle(SettleAt::END).is_empty());
    assert!(a.stats.authority_errors.load(Relaxed) >= 2);

    // The store answers again; the reader reads the records again.
    auth.down.store(false, Relaxed);
    for ev in [&home, &away] {
        assert!(a.process_json(ev, pos).unwrap().is_empty());
    }
    assert_eq!(a.unshared(), 2, "nothing more left undecided");
    let found = a.settle(SettleAt::END);
    assert_eq!(rules(&found), vec!["session_token_reuse"]);
    assert!(a.settle(SettleAt::END).is_empty(), "once");
}

#[test]
fn a_worker_settles_against_an_earlier_home_another_worker_read_after_its_contest_opened() {
    let (a, b) = two_workers();
    let pos = Position {
        prefix: "test",
        index: 0,
    };
    let other = "198.51.100.5";
    // A reads the home's later call; B reads a call from another origin, earlier, and opens a
    // contest between the two; then A reads the home's first call, earlier than both.
    for (w, e) in [
        (&a, Ev::ec2("ASIA2", INST, HOME, T0 + 2398)),
        (&b, Ev::ec2("ASIA2", INST, other, T0 + 1793)),
        (&a, Ev::ec2("ASIA2", INST, HOME, T0)),
    ] {
        assert!(w.process_json(&e.text(), pos).unwrap().is_empty());
    }
    // One engine reading all three reports the other origin against the home, and so must the
    // workers: B learns the earlier home from the shared store when it settles, instead of
    // calling the home's later call the second origin.
    let found = settle_all(&[&a, &b]);
    let outside: std::collections::BTreeSet<&str> =
        found.iter().map(|f| f.events[1].origin.as_str()).collect();
    assert_eq!(outside, [other].into_iter().collect(), "{found:#?}");
    let mut ids: Vec<&str> = found.iter().map(|f| f.id.as_str()).collect();
    ids.dedup();
    assert_eq!(
        ids.len(),
        1,
        "the same finding from both workers: {found:#?}"
    );
    let one = run(&[
        Ev::ec2("ASIA2", INST, HOME, T0 + 2398),
        Ev::ec2("ASIA2", INST, other, T0 + 1793),
        Ev::ec2("ASIA2", INST, HOME, T0),
    ]);
    assert_eq!(rules(&one), vec!["session_token_reuse"]);
    assert_eq!(one[0].id, found[0].id);
}

#[test]
fn an_address_given_on_one_worker_explains_the_move_seen_on_another() {
    let auth = std::sync::Arc::new(credwatch::coord::MemoryAuthority::default());
    let workers: Vec<Engine> = (0..3)
        .map(|_| Engine::new(&reuse_only()).with_authority(auth.clone()))
        .collect();
    let pos = Position {
        prefix: "test",
        index: 0,
    };
    let run = |w: usize, e: &Ev| workers[w].process_json(&e.text(), pos).unwrap();
    let settled = || settle_all(&workers.iter().collect::<Vec<_>>());
    // The allocation, the association and the session's calls each reach a different worker.
    assert!(run(0, &Ev::ec2("ASIA1", INST, HOME, T0)).is_empty());
    assert!(run(
        1,
        &Ev::base(
            "AllocateAddress",
            "ec2.amazonaws.com",
            T0 + 1,
            "198.51.100.7"
        )
        .set(
            "responseElements",
            json!({"publicIp": EVIL, "allocationId": "eipalloc-1"})
        )
    )
    .is_empty());
    assert!(run(
        2,
        &Ev::base(
            "AssociateAddress",
            "ec2.amazonaws.com",
            T0 + 2,
            "198.51.100.7"
        )
        .set(
            "requestParameters",
            json!({"allocationId": "eipalloc-1", "instanceId": INST})
        )
    )
    .is_empty());
    let moved = run(0, &Ev::ec2("ASIA1", INST, EVIL, T0 + 60));
    assert!(
        moved.is_empty(),
        "explained by the shared association: {moved:?}"
    );
    let moved = settled();
    assert!(
        moved.is_empty(),
        "explained by the shared association: {moved:?}"
    );
    // A restart seen by another worker explains the first new origin after it (the home
    // stays the home).
    assert!(run(
        1,
        &Ev::base(
            "StartInstances",
            "ec2.amazonaws.com",
            T0 + 100,
            "198.51.100.7"
        )
        .set(
            "requestParameters",
            json!({"instancesSet": {"items": [{"instanceId": INST}]}})
        )
    )
    .is_empty());
    let after = run(2, &Ev::ec2("ASIA1", INST, "54.99.0.1", T0 + 160));
    assert!(after.is_empty(), "{after:?}");
    let after = settled();
    assert!(
        after.is_empty(),
        "the first new origin after the restart is explained: {after:?}"
    );
    // Without the shared log, the same split reports the move.
    let alone = Engine::new(&reuse_only());
    for e in [
        Ev::ec2("ASIA2", INST, HOME, T0),
        Ev::ec2("ASIA2", INST, EVIL, T0 + 60),
    ] {
        assert!(alone.process_json(&e.text(), pos).unwrap().is_empty());
    }
    assert_eq!(
        rules(&alone.settle(SettleAt::END)),
        vec!["session_token_reuse"]
    );
}
