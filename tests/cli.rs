//! The `credwatch` binary: hunt output, exit statuses, bad input, config errors.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn credwatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_credwatch"))
        .args(args)
        .env_remove("CREDWATCH_CONFIG")
        .output()
        .expect("credwatch runs")
}

fn stratus(file: &str) -> String {
    format!(
        "{}/../shared/data/stratus-detonation-logs/docs/detonation-logs/{file}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn hunt_prints_one_json_finding_per_line_with_the_required_fields() {
    let o = credwatch(&[
        "hunt",
        "--output",
        "json",
        &stratus("aws.credential-access.ec2-steal-instance-credentials.json"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let lines: Vec<Value> = String::from_utf8(o.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    let f = &lines[0];
    assert_eq!(f["rule"], "workload_get_caller_identity");
    assert_eq!(f["severity"], "medium");
    assert_eq!(f["access_key_id"], "ASIAP5CT9NN8EYVU1FXV");
    assert_eq!(
        f["session"],
        "stratus-red-team-ec2-steal-credentials-role/i-786a3a8b5c0d92ef4"
    );
    assert_eq!(f["event_ids"].as_array().unwrap().len(), 1);
    let err = stderr(&o);
    assert!(err.contains("events read: 45"), "{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("elapsed: ") && l.contains(" events/s, ")),
        "the summary gives events/s: {err}"
    );
    assert!(
        err.contains("findings: 1 (workload_get_caller_identity=1)"),
        "{err}"
    );
}

#[test]
fn exit_status_is_1_with_fail_on_findings_and_findings() {
    let path = stratus("aws.defense-evasion.cloudtrail-stop.json");
    assert_eq!(credwatch(&["hunt", &path]).status.code(), Some(0));
    assert_eq!(
        credwatch(&["hunt", "--fail-on-findings", &path])
            .status
            .code(),
        Some(1)
    );
    let quiet = stratus("aws.execution.ssm-send-command.json");
    assert_eq!(
        credwatch(&["hunt", "--fail-on-findings", &quiet])
            .status
            .code(),
        Some(0)
    );
}

#[test]
fn exit_status_is_2_when_an_error_stops_the_hunt() {
    let o = credwatch(&["hunt", "/nonexistent/credwatch/path"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no such file"), "{}", stderr(&o));
}

#[test]
fn a_bad_config_names_the_key_and_stops_with_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[detection]\nwindow_secs = 60\nwindow_size = 5\n").unwrap();
    let o = credwatch(&[
        "hunt",
        "--config",
        cfg.to_str().unwrap(),
        &stratus("aws.defense-evasion.cloudtrail-stop.json"),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("window_size"), "{}", stderr(&o));
    let o = credwatch(&["validate-config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("window_size"));
}

#[test]
fn the_example_config_validates() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/credwatch.example.toml");
    let o = credwatch(&["validate-config", example]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn env_overrides_apply_to_config() {
    let o = Command::new(env!("CARGO_BIN_EXE_credwatch"))
        .args(["hunt", &stratus("aws.defense-evasion.cloudtrail-stop.json")])
        .env("CREDWATCH_RULES__STOP_LOGGING__ENABLED", "false")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("findings: 0"), "{}", stderr(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_credwatch"))
        .args(["hunt", &stratus("aws.defense-evasion.cloudtrail-stop.json")])
        .env("CREDWATCH_DETECTION__WINDOW_SECS", "soon")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("detection.window_secs"),
        "{}",
        stderr(&o)
    );
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn bad_input_is_counted_with_its_position_and_the_hunt_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(stratus("aws.defense-evasion.cloudtrail-stop.json")).unwrap();
    let good_gz = gz(&good);
    write(dir.path(), "a-good.json.gz", &good_gz);
    write(
        dir.path(),
        "b-truncated.json.gz",
        &good_gz[..good_gz.len() / 2],
    );
    write(dir.path(), "c-not-json.json", b"this is not json at all {");
    // A gzip bomb: 200 MB of zeros, far over the 64 MiB cap.
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..200 {
        bomb.write_all(&zeros).unwrap();
    }
    write(dir.path(), "d-bomb.json.gz", &bomb.finish().unwrap());
    // JSON lines: one event without eventTime, one 10 MB line, one good event.
    let big = format!(
        "{{\"eventName\":\"X\",\"eventTime\":\"2024-01-01T00:00:00Z\",\"pad\":\"{}\"}}",
        "a".repeat(10 << 20)
    );
    let lines = format!(
        "{{\"eventName\":\"NoTime\"}}\n{big}\n{}\n",
        r#"{"eventName":"StopLogging","eventSource":"cloudtrail.amazonaws.com","eventTime":"2024-01-01T00:00:00Z","eventID":"x-1"}"#
    );
    write(dir.path(), "e-lines.jsonl", lines.as_bytes());

    let o = credwatch(&[
        "hunt",
        "--log",
        "warn",
        "--output",
        "json",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    for kind in [
        "truncated_gzip=1",
        "not_json=1",
        "gzip_bomb=1",
        "missing_field=1",
        "oversize=1",
    ] {
        assert!(err.contains(kind), "summary should count {kind}: {err}");
    }
    for file in [
        "b-truncated.json.gz",
        "c-not-json.json",
        "d-bomb.json.gz",
        "e-lines.jsonl",
    ] {
        assert!(err.contains(file), "a warning names {file}");
    }
    let findings = String::from_utf8(o.stdout.clone()).unwrap();
    assert_eq!(
        findings
            .lines()
            .filter(|l| l.contains("stop_logging"))
            .count(),
        2,
        "{findings}"
    );
}

#[test]
fn rules_lists_every_rule() {
    let o = credwatch(&["rules"]);
    let text = String::from_utf8(o.stdout).unwrap();
    for id in credwatch::rules::RULE_IDS {
        assert!(text.contains(id));
    }
}

#[test]
fn run_rejects_a_blank_worker_id_and_bad_coordination_naming_the_option() {
    let o = credwatch(&["run", "--stream", "s", "--worker-id", " "]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("coordination.worker_id"),
        "{}",
        stderr(&o)
    );
    let o = Command::new(env!("CARGO_BIN_EXE_credwatch"))
        .args(["run", "--stream", "s"])
        .env_remove("CREDWATCH_CONFIG")
        .env("CREDWATCH_COORDINATION__BACKEND", "dynamodb")
        .env("CREDWATCH_COORDINATION__LEASE_TABLE", "same")
        .env("CREDWATCH_COORDINATION__STATE_TABLE", "same")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("coordination.state_table"),
        "{}",
        stderr(&o)
    );
}
