//! The engine on real public CloudTrail recordings (`../shared/data`, sources in its README).

use std::collections::BTreeMap;
use std::path::PathBuf;

use credwatch::config::Config;
use credwatch::decode::Limits;
use credwatch::engine::{Engine, Position};
use credwatch::finding::Finding;
use credwatch::hunt::{collect_files, hunt_files, HuntSummary};
use credwatch::settle::SettleAt;
use serde_json::Value;

fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(rel)
}

fn hunt(paths: &[PathBuf], cfg: &Config) -> (Vec<Finding>, HuntSummary, Engine) {
    hunt_threads(paths, cfg, 1)
}

fn hunt_threads(
    paths: &[PathBuf],
    cfg: &Config,
    threads: usize,
) -> (Vec<Finding>, HuntSummary, Engine) {
    let engine = Engine::new(cfg);
    let files = collect_files(paths).unwrap();
    let mut findings = Vec::new();
    let summary = hunt_files(
        &engine,
        &files,
        &Limits::default(),
        threads,
        |f| findings.push(f.clone()),
        |_| {},
    );
    (findings, summary, engine)
}

/// Every finding as its JSON line without the wall-clock `detected_at`, in the order given.
fn lines(findings: &[Finding]) -> Vec<String> {
    findings
        .iter()
        .map(|f| {
            let mut v = serde_json::to_value(f).unwrap();
            v.as_object_mut().unwrap().remove("detected_at");
            v.to_string()
        })
        .collect()
}

#[test]
fn one_thread_and_four_give_the_same_findings_on_every_shared_recording() {
    let all = [data("")];
    let (one, s1, _) = hunt_threads(&all, &Config::default(), 1);
    assert!(!one.is_empty(), "the recordings give findings");
    for threads in [2, 4, 7] {
        let (many, sn, _) = hunt_threads(&all, &Config::default(), threads);
        assert!(
            lines(&many) == lines(&one),
            "{threads} threads against one: {} findings against {}",
            many.len(),
            one.len()
        );
        assert_eq!(sn.render(), s1.render(), "{threads} threads: the summary");
    }
}

fn rule_counts(findings: &[Finding]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for f in findings {
        *m.entry(f.rule.clone()).or_default() += 1;
    }
    m
}

const STRATUS: &str = "stratus-detonation-logs/docs/detonation-logs";

#[test]
fn stratus_detonations_give_the_expected_findings() {
    let cases: &[(&str, &[(&str, usize)])] = &[
        (
            "aws.credential-access.ec2-steal-instance-credentials.json",
            &[("workload_get_caller_identity", 1)],
        ),
        (
            "aws.defense-evasion.cloudtrail-stop.json",
            &[("stop_logging", 1)],
        ),
        (
            "aws.defense-evasion.cloudtrail-delete.json",
            &[("delete_trail", 1)],
        ),
        (
            "aws.defense-evasion.cloudtrail-event-selectors.json",
            &[("put_event_selectors", 1)],
        ),
        (
            "aws.persistence.iam-create-admin-user.json",
            &[("create_access_key", 1), ("create_user", 1)],
        ),
        (
            "aws.persistence.iam-create-user-login-profile.json",
            &[("create_login_profile", 1)],
        ),
        (
            "aws.persistence.iam-backdoor-user.json",
            &[("create_access_key", 1)],
        ),
        (
            "aws.exfiltration.ec2-security-group-open-port-22-ingress.json",
            &[("security_group_open_to_world", 1)],
        ),
        (
            "aws.exfiltration.ec2-share-ebs-snapshot.json",
            &[("snapshot_shared_externally", 1)],
        ),
        (
            "aws.exfiltration.ec2-share-ami.json",
            &[("ami_shared_externally", 1)],
        ),
        (
            "aws.exfiltration.rds-share-snapshot.json",
            &[("snapshot_shared_externally", 1)],
        ),
        ("aws.discovery.ec2-download-user-data.json", &[]),
        ("aws.execution.ssm-send-command.json", &[]),
    ];
    for (file, want) in cases {
        let (findings, summary, _) =
            hunt(&[data(&format!("{STRATUS}/{file}"))], &Config::default());
        let want: BTreeMap<String, usize> = want.iter().map(|(r, n)| (r.to_string(), *n)).collect();
        assert_eq!(rule_counts(&findings), want, "{file}");
        assert_eq!(summary.total_bad(), 0, "{file}");
    }
}

#[test]
fn the_stolen_instance_credential_is_seen_only_from_the_attacker_so_no_reuse() {
    let (findings, _, engine) = hunt(
        &[data(&format!(
            "{STRATUS}/aws.credential-access.ec2-steal-instance-credentials.json"
        ))],
        &Config::default(),
    );
    assert!(findings.iter().all(|f| f.rule != "session_token_reuse"));
    let gci = findings
        .iter()
        .find(|f| f.rule == "workload_get_caller_identity")
        .unwrap();
    assert_eq!(gci.access_key_id.as_deref(), Some("ASIAP5CT9NN8EYVU1FXV"));
    assert_eq!(
        gci.session.as_deref(),
        Some("stratus-red-team-ec2-steal-credentials-role/i-786a3a8b5c0d92ef4")
    );
    assert_eq!(engine.tracked_sessions(), 1);
}

#[test]
fn every_stratus_event_is_read_and_hostile_values_neither_crash_nor_vanish() {
    let (_, summary, engine) = hunt(&[data(STRATUS)], &Config::default());
    assert_eq!(summary.files, 35);
    assert_eq!(summary.events, 310);
    assert_eq!(summary.total_bad(), 0);
    let stats = &engine.stats;
    let by_origin: u64 = stats
        .by_origin
        .iter()
        .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert_eq!(by_origin, 310, "every event gets an origin class");
    let opaque = stats.by_origin[credwatch::engine::origin::OriginClass::Opaque.index()]
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        opaque > 0,
        "leading-zero addresses are counted as opaque origins"
    );
}

#[test]
fn the_maheribra_lab_gives_no_reuse_and_service_churn_keeps_the_store_small() {
    let (findings, summary, engine) =
        hunt(&[data("maheribra-attack-chain-lab")], &Config::default());
    assert_eq!(
        summary.events, 690,
        "689 events in 34 objects plus the redacted one"
    );
    assert_eq!(
        summary.formats.get("cloudtrail_s3_object"),
        Some(&35),
        "34 objects plus the redacted event, also a Records object"
    );
    assert_eq!(summary.total_bad(), 0);
    assert!(
        findings.iter().all(|f| f.rule != "session_token_reuse"),
        "{findings:#?}"
    );
    // 340+ single-use service-role keys never lock: only the operator's sessions are tracked.
    assert!(
        engine.tracked_sessions() < 10,
        "{}",
        engine.tracked_sessions()
    );
}

/// Panther's labelled tests for the rules that mean the same as ours: the verdicts agree,
/// except where credwatch deliberately differs (each named with its reason).
#[test]
fn verdicts_agree_with_panthers_labelled_tests() {
    let dir = data("panther-aws-cloudtrail-rule-tests/rules/aws_cloudtrail_rules");
    // (file, our rule, deliberate differences by test name with the reason)
    type PantherFile<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
    let files: &[PantherFile] = &[
        (
            "aws_cloudtrail_stopped.yml",
            "stop_logging",
            &[(
                "Error Stopping CloudTrail",
                "a failed attempt is still reported, one severity lower",
            )],
        ),
        ("aws_iam_create_user.yml", "create_user", &[]),
        (
            "aws_imds_credential_exfiltration.yml",
            "workload_credentials_outside_aws",
            &[
                (
                    "IMDS Credentials Used From Amazon.com ASN Source IP",
                    "52.42.146.205 is in AWS's EC2 ranges (us-west-2): another account's instance, judged by session_token_reuse against the session's home (GuardDuty's InsideAWS), not by the outside-AWS rule",
                ),
            ],
        ),
        (
            "aws_ec2_security_group_modified.yml",
            "security_group_open_to_world",
            &[(
                "Security Group Modified",
                "credwatch reports only ingress opened to a /0 range",
            )],
        ),
    ];
    for (file, rule, differ) in files {
        let doc: Value =
            serde_yaml::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
        for t in doc["Tests"].as_array().unwrap() {
            let name = t["Name"].as_str().unwrap();
            let expected = t["ExpectedResult"].as_bool().unwrap();
            let engine = Engine::new(&Config::default());
            let mut found = engine
                .process_json(
                    &t["Log"].to_string(),
                    Position {
                        prefix: file,
                        index: 0,
                    },
                )
                .unwrap();
            found.extend(engine.settle(SettleAt::END));
            let got = found.iter().any(|f| f.rule == *rule);
            match differ.iter().find(|(n, _)| *n == name) {
                Some((_, why)) => assert_ne!(
                    got, expected,
                    "{file} / {name}: expected to differ because {why}"
                ),
                None => assert_eq!(got, expected, "{file} / {name}"),
            }
        }
    }
}

/// Panther's IMDS-exfiltration rule judges one event; credwatch judges the second origin of a
/// session. Given a home for the session first, the events Panther flags are reuse for us, and
/// the ones it clears for AWS services, `AWS Internal` and `invokedBy` are cleared too.
#[test]
fn imds_exfiltration_verdicts_agree_given_a_home() {
    let dir = data("panther-aws-cloudtrail-rule-tests/rules/aws_cloudtrail_rules");
    let doc: Value = serde_yaml::from_str(
        &std::fs::read_to_string(dir.join("aws_imds_credential_exfiltration.yml")).unwrap(),
    )
    .unwrap();
    let differ: &[(&str, &str)] = &[
        ("Normal EC2 Workload From Private IP", "a private address without vpcEndpointId is an ordinary origin: a second one is reuse"),
        ("Legitimate SSM Activity", "a private address without vpcEndpointId is an ordinary origin: a second one is reuse"),
        ("RegisterManagedInstance Event", "a private address without vpcEndpointId is an ordinary origin: a second one is reuse"),
        ("SSM Messages Service Source", "the SSM agent calls from the instance's own origin; from a new public address it is reuse"),
        ("Non-Instance Role", "credwatch tracks every temporary credential, not only instance ones"),
    ];
    let mut checked = 0;
    for t in doc["Tests"].as_array().unwrap() {
        let name = t["Name"].as_str().unwrap();
        let expected = t["ExpectedResult"].as_bool().unwrap();
        // Panther's negatives carry no access key; give every test the same credential so that
        // the verdict turns on the origin alone.
        let mut log = t["Log"].clone();
        if log["userIdentity"].get("accessKeyId").is_none() {
            log["userIdentity"]["accessKeyId"] = Value::from("ASIAIOSFODNN7EXAMPLE");
        }
        let mut home = log.clone();
        home["sourceIPAddress"] = Value::from("192.0.2.10");
        home["eventID"] = Value::from("home-event");
        home["userAgent"] = Value::from("home-agent");
        if let Some(ui) = home["userIdentity"].as_object_mut() {
            ui.remove("invokedBy");
        }
        home["eventTime"] = Value::from("2000-01-01T00:00:00Z");
        let mut second = log;
        second["eventTime"] = Value::from("2000-01-01T00:10:00Z");
        if let Some(ui) = second["userIdentity"].as_object_mut() {
            ui.remove("sessionContext");
        }
        if let Some(ui) = home["userIdentity"].as_object_mut() {
            ui.remove("sessionContext");
        }
        let engine = Engine::new(&Config::default());
        let mut got = false;
        for (i, ev) in [home, second].iter().enumerate() {
            got |= engine
                .process_json(
                    &ev.to_string(),
                    Position {
                        prefix: "panther",
                        index: i,
                    },
                )
                .unwrap()
                .iter()
                .any(|f| f.rule == "session_token_reuse");
        }
        got |= engine
            .settle(SettleAt::END)
            .iter()
            .any(|f| f.rule == "session_token_reuse");
        match differ.iter().find(|(n, _)| *n == name) {
            Some((_, why)) => assert_ne!(got, expected, "{name}: expected to differ because {why}"),
            None => assert_eq!(got, expected, "{name}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 10);
}

#[test]
fn the_redacted_single_event_is_read_with_opaque_values() {
    let (findings, summary, engine) = hunt(
        &[data("maheribra-attack-chain-lab/03-incident-response/evidence/cloudtrail-1050-getobject.json")],
        &Config::default(),
    );
    assert_eq!(summary.events, 1);
    assert_eq!(summary.total_bad(), 0);
    assert!(findings.is_empty());
    let opaque = engine.stats.by_origin[credwatch::engine::origin::OriginClass::Opaque.index()]
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(opaque, 1);
}

/// What the outside-AWS rule and placement report on the real recordings. Their addresses were
/// anonymised (rewritten, some into invalid forms such as `075.050.255.67`), so the places are
/// those of the rewritten addresses, not of the real callers: the test pins what credwatch does
/// with them, not a fact about the original incidents.
#[test]
fn placement_and_the_outside_aws_rule_on_the_real_recordings() {
    use credwatch::engine::PlaceKind;
    use std::sync::atomic::Ordering::Relaxed;
    // Stratus: the stolen instance credential's only origin, 18.236.253.47, is in EC2's
    // us-west-2 ranges (another account's instance, as GuardDuty's InsideAWS): not outside AWS,
    // and with only the attacker's events there is no second origin either.
    let steal = data("stratus-detonation-logs/docs/detonation-logs/aws.credential-access.ec2-steal-instance-credentials.json");
    let (findings, _, engine) = hunt(&[steal], &Config::default());
    assert!(findings
        .iter()
        .all(|f| f.rule != "workload_credentials_outside_aws"));
    let r = engine
        .placement
        .lookup("18.236.253.47".parse().unwrap())
        .expect("in AWS");
    assert_eq!((r.service, r.region), ("EC2", "us-west-2"));

    // Events by place (outside_aws, aws, ours, private, not_an_address). Stratus: 107 values
    // are not valid addresses (the anonymiser's leading zeros) and most rewritten ones fall
    // outside AWS; 45 are in AWS's ranges. The lab: the operator's two addresses in
    // 212.129.0.0/16 are outside AWS (an IAM user's calls: not a workload's credential), the
    // Resource Explorer churn has a service name as its origin.
    for (set, places) in [
        ("stratus-detonation-logs", [158, 45, 0, 0, 107]),
        ("maheribra-attack-chain-lab", [24, 1, 0, 0, 665]),
    ] {
        let (findings, summary, engine) = hunt(&[data(set)], &Config::default());
        assert_eq!(
            findings
                .iter()
                .filter(|f| f.rule == "workload_credentials_outside_aws")
                .count(),
            0,
            "{set}: no workload credential is used from outside AWS"
        );
        let by = |k: PlaceKind| engine.stats.by_place[k.index()].load(Relaxed);
        let total: u64 = PlaceKind::ALL.iter().map(|k| by(*k)).sum();
        assert_eq!(
            total, summary.events,
            "{set}: every event is counted once by place"
        );
        assert_eq!(PlaceKind::ALL.map(by), places, "{set}");
    }
}
