//! Escalation end to end, against real HTTP receivers on loopback (`support::receiver`):
//! signatures checked by an independent implementation (Python's hmac), bodies as snapshots,
//! retries through an outage, rejections dead-lettered, `Retry-After`, restarts, routing and the
//! rate limit. Backoff is shortened (`retry_base_ms` 20) to keep the tests quick.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use credwatch::escalation::{DestinationKind, EscalationConfig, Escalator};
use credwatch::finding::{EventEvidence, ExceptionCheck, Finding, Severity};
use credwatch::metrics::Metrics;
use serde_json::Value;
use support::receiver::{Received, Receiver, Reply};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

/// The finding `credwatch hunt tests/fixtures` makes (stolen EC2 instance credential used from
/// a second address), with a fixed detection time.
fn fixture() -> Finding {
    Finding {
        id: "a0573e1582052c9116868a6d957561ee".into(),
        rule: "session_token_reuse".into(),
        severity: Severity::High,
        title: "stratus-red-team-ec2-steal-credentials-role/i-786a3a8b5c0d92ef4 used from a second \
                origin 18.236.253.47 (home 54.214.10.20 since 2024-08-02T08:21:05Z)"
            .into(),
        account_id: Some("017622104382".into()),
        access_key_id: Some("ASIAP5CT9NN8EYVU1FXV".into()),
        session: Some("stratus-red-team-ec2-steal-credentials-role/i-786a3a8b5c0d92ef4".into()),
        credential_class: Some("ec2_instance".into()),
        principal_arn: Some(
            "arn:aws:sts::017622104382:assumed-role/stratus-red-team-ec2-steal-credentials-role/i-786a3A8B5C0d92eF4"
                .into(),
        ),
        error_code: None,
        event_ids: vec![
            "5d3f1c2a-0000-4000-8000-000000000001".into(),
            "b379479b-05c9-4c3c-af4b-cbd43acf29e1".into(),
        ],
        events: vec![
            EventEvidence {
                role: "first".into(),
                event_id: "5d3f1c2a-0000-4000-8000-000000000001".into(),
                event_time: "2024-08-02T08:21:05Z".into(),
                event_name: Some("DescribeInstances".into()),
                event_source: Some("ec2.amazonaws.com".into()),
                origin_kind: "public_ip".into(),
                origin: "54.214.10.20".into(),
                user_agent: "aws-sdk-go-v2/1.30.3 os/linux lang/go#1.22.5 md/GOOS#linux md/GOARCH#amd64 api/ec2#1.171.0".into(),
                access_key_id: Some("ASIAP5CT9NN8EYVU1FXV".into()),
                source: Some("tests/fixtures/demo-instance-home.json#0".into()),
                place: None,
                place_detail: None,
            },
            EventEvidence {
                role: "second".into(),
                event_id: "b379479b-05c9-4c3c-af4b-cbd43acf29e1".into(),
                event_time: "2024-08-02T08:23:55Z".into(),
                event_name: None,
                event_source: None,
                origin_kind: "public_ip".into(),
                origin: "18.236.253.47".into(),
                user_agent: "stratus-red-team_c763d13b-d099-488a-bb3e-f57cb2fed240".into(),
                access_key_id: None,
                source: None,
                place: None,
                place_detail: None,
            },
        ],
        exceptions_checked: vec![ExceptionCheck {
            exception: "allow_list".into(),
            applied: false,
            detail: "no [[allow]] entry contains 18.236.253.47".into(),
        }],
        event_time: "2024-08-02T08:23:55Z".into(),
        detected_at: "2024-08-02T08:24:01.250Z".into(),
        released_early: None,
        suspicious_origin: None,
        arrived_at: None,
        claim: None,
    }
}

/// A distinct finding: its own id and session, the given rule and severity.
fn finding(n: usize, rule: &str, severity: Severity) -> Finding {
    let mut f = fixture();
    f.id = format!("{n:032x}");
    f.rule = rule.into();
    f.severity = severity;
    f.session = Some(format!("app-role/i-{n:017x}"));
    f.detected_at = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    f
}

fn findings(count: usize) -> Vec<Finding> {
    (0..count)
        .map(|n| finding(n, "session_token_reuse", Severity::High))
        .collect()
}

/// A webhook destination with quick retries, its secret in `secret_file`.
fn webhook(url: String, secret_file: &Path) -> EscalationConfig {
    EscalationConfig {
        kind: DestinationKind::Webhook,
        url,
        secret_file: Some(secret_file.to_path_buf()),
        retry_base_ms: 20,
        retry_max_ms: 100,
        timeout_ms: 2_000,
        ..Default::default()
    }
}

/// A temporary directory with `secret` written in it as `secret`.
fn secret_dir(secret: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("secret");
    std::fs::write(&path, format!("{secret}\n")).expect("write secret");
    (dir, path)
}

struct Running {
    esc: Arc<Escalator>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(cfg: &[EscalationConfig], spool: &Path) -> Running {
        let metrics = Arc::new(Metrics::new());
        let esc = Arc::new(Escalator::new(cfg, spool, metrics.clone()).expect("escalator"));
        Running::deliver(esc, metrics)
    }

    fn deliver(esc: Arc<Escalator>, metrics: Arc<Metrics>) -> Running {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(esc.clone().deliver(shutdown.clone()));
        Running {
            esc,
            metrics,
            shutdown,
            task,
        }
    }

    fn count(&self, dest: &str, outcome: &str) -> u64 {
        self.metrics
            .escalations
            .with_label_values(&[dest, outcome])
            .get()
    }

    fn retries(&self, dest: &str) -> u64 {
        self.metrics
            .escalation_retries
            .with_label_values(&[dest])
            .get()
    }

    fn depth(&self, dest: &str) -> i64 {
        self.metrics
            .escalation_spool_depth
            .with_label_values(&[dest])
            .get()
    }

    fn latency_count(&self, dest: &str) -> u64 {
        self.metrics
            .escalation_latency
            .with_label_values(&[dest])
            .get_sample_count()
    }

    /// Waits until `done` holds (the receiver records a request before the client has seen the
    /// answer, so metrics lag it a little).
    async fn until(&self, what: &str, done: impl Fn(&Running) -> bool) {
        let t0 = Instant::now();
        while !done(self) {
            assert!(t0.elapsed() < WAIT, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until `n` findings were delivered to `dest` and its spool is empty.
    async fn until_delivered(&self, dest: &str, n: u64) {
        self.until(&format!("{n} delivered to {dest}"), |r| {
            r.count(dest, "delivered") >= n && r.depth(dest) == 0
        })
        .await;
    }

    /// Cancels delivery; it must return promptly.
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .expect("deliver returns promptly after shutdown")
            .expect("deliver did not panic");
    }
}

/// The webhook-ids of the requests answered 2xx, with how many times each.
fn delivered_ids(reqs: &[Received]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in reqs.iter().filter(|r| r.ok()) {
        *out.entry(r.header("webhook-id").unwrap_or("-").to_string())
            .or_default() += 1;
    }
    out
}

/// Verifies a Standard Webhooks signature with Python's hmac, hashlib and base64 (an
/// implementation independent of the one under test).
fn python_verifies(secret: &str, id: &str, timestamp: &str, signature: &str, body: &[u8]) -> bool {
    const SCRIPT: &str = r#"
import base64, hashlib, hmac, os, sys
secret = os.environ["SECRET"]
if secret.startswith("whsec_"):
    key = base64.b64decode(secret[len("whsec_"):])
else:
    key = secret.encode()
body = sys.stdin.buffer.read()
signed = os.environ["MSG_ID"].encode() + b"." + os.environ["MSG_TS"].encode() + b"." + body
expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
given = [s.split(",", 1)[1] for s in os.environ["MSG_SIG"].split() if s.startswith("v1,")]
sys.exit(0 if any(hmac.compare_digest(expected, g) for g in given) else 1)
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .env("SECRET", secret)
        .env("MSG_ID", id)
        .env("MSG_TS", timestamp)
        .env("MSG_SIG", signature)
        .stdin(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body)
        .expect("write body");
    child.wait().expect("python3 exits").success()
}

/// Pretty JSON with the fields that change between builds replaced.
fn redacted(mut v: Value, pointers: &[&str]) -> String {
    for p in pointers {
        if let Some(x) = v.pointer_mut(p) {
            *x = Value::String("[redacted]".into());
        }
    }
    serde_json::to_string_pretty(&v).expect("serializes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_signature_is_verified_by_an_independent_implementation() {
    let rx = Receiver::start();
    let spool = tempfile::tempdir().unwrap();
    // The spec's form (whsec_ + base64 of the key) from an environment variable, and a raw
    // secret from a file.
    let whsec = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    std::env::set_var("CREDWATCH_TEST_ESCALATION_WHSEC", whsec);
    let raw = "a raw shared secret, not base64";
    let (_d, raw_file) = secret_dir(raw);
    let mut spec = webhook(rx.url("/spec"), &raw_file);
    spec.secret_file = None;
    spec.secret_env = Some("CREDWATCH_TEST_ESCALATION_WHSEC".into());
    let cfg = vec![spec, webhook(rx.url("/raw"), &raw_file)];
    let run = Running::start(&cfg, spool.path());
    let f = fixture();
    run.esc.submit(std::slice::from_ref(&f)).unwrap();
    let reqs = rx.wait_for(WAIT, "both deliveries", |r| r.len() >= 2).await;

    let now = chrono::Utc::now().timestamp();
    for r in &reqs {
        let secret = if r.path == "/spec" { whsec } else { raw };
        let id = r.header("webhook-id").expect("webhook-id");
        let ts = r.header("webhook-timestamp").expect("webhook-timestamp");
        let sig = r.header("webhook-signature").expect("webhook-signature");
        assert_eq!(id, f.id, "webhook-id is the finding id");
        let ts_n: i64 = ts.parse().expect("timestamp is integer seconds");
        assert!((now - ts_n).abs() < 60, "timestamp {ts} is now ({now})");
        assert!(sig.starts_with("v1,"), "{sig}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(
            python_verifies(secret, id, ts, sig, &r.body),
            "{}: Python rejects the signature {sig}",
            r.path
        );
        // The verifier is not a rubber stamp: a changed body or the other secret fail.
        let mut tampered = r.body.clone();
        tampered[0] = b' ';
        assert!(!python_verifies(secret, id, ts, sig, &tampered));
        let other = if secret == raw { whsec } else { raw };
        assert!(!python_verifies(other, id, ts, sig, &r.body));
    }
    run.until_delivered("webhook-0", 1).await;
    run.until_delivered("webhook-1", 1).await;
    assert_eq!(run.count("webhook-0", "delivered"), 1);
    assert_eq!(run.count("webhook-1", "delivered"), 1);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_body_is_an_ocsf_detection_finding() {
    let rx = Receiver::start();
    let spool = tempfile::tempdir().unwrap();
    let (_d, secret) = secret_dir("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let run = Running::start(&[webhook(rx.url("/ocsf"), &secret)], spool.path());
    let f = fixture();
    run.esc.submit(std::slice::from_ref(&f)).unwrap();
    let reqs = rx.wait_for(WAIT, "the delivery", |r| !r.is_empty()).await;
    let v = reqs[0].json();

    assert_eq!(v["class_uid"], 2004);
    assert_eq!(v["category_uid"], 2);
    assert_eq!(v["activity_id"], 1);
    assert_eq!(v["type_uid"], 200401);
    assert_eq!(v["severity_id"], 4, "high is OCSF High");
    assert_eq!(v["time"], 1722587041250i64, "detected_at in milliseconds");
    assert_eq!(v["finding_info"]["uid"], f.id.as_str());
    assert_eq!(v["finding_info"]["title"], f.title.as_str());
    assert!(v["finding_info"]["desc"]
        .as_str()
        .is_some_and(|d| !d.is_empty()));
    assert_eq!(v["finding_info"]["types"], serde_json::json!([f.rule]));
    assert_eq!(v["metadata"]["version"], "1.1.0");
    assert_eq!(v["metadata"]["product"]["name"], "credwatch");
    assert!(v["metadata"]["product"]["vendor_name"].is_string());
    assert_eq!(
        v["metadata"]["product"]["version"],
        env!("CARGO_PKG_VERSION")
    );
    let evidences = v["evidences"].as_array().expect("evidences");
    assert_eq!(evidences.len(), 2, "both events");
    assert_eq!(evidences[0]["src_endpoint"]["ip"], "54.214.10.20");
    assert_eq!(evidences[1]["src_endpoint"]["ip"], "18.236.253.47");
    for e in evidences {
        assert_eq!(e["actor"]["session"]["uid"], f.session.as_deref().unwrap());
        assert_eq!(
            e["actor"]["session"]["credential_uid"],
            "ASIAP5CT9NN8EYVU1FXV"
        );
        assert!(e["data"]["user_agent"].is_string());
    }
    assert_eq!(evidences[0]["api"]["operation"], "DescribeInstances");
    assert_eq!(
        serde_json::from_value::<Finding>(v["unmapped"]["finding"].clone()).unwrap(),
        f,
        "the raw finding rides along in unmapped"
    );
    insta::assert_snapshot!(
        "webhook_ocsf_body",
        redacted(v, &["/metadata/product/version"])
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_and_pagerduty_bodies() {
    let slack = Receiver::start();
    let pd = Receiver::start();
    pd.set_default(Reply::status(202).body(r#"{"status":"success","message":"Event processed"}"#));
    let spool = tempfile::tempdir().unwrap();
    let (_d1, slack_url) = secret_dir(&slack.url("/services/T000/B000/XXXX"));
    let (_d2, routing_key) = secret_dir("R0UT1NGKEY0000000000000000000000");
    let cfg = vec![
        EscalationConfig {
            kind: DestinationKind::Slack,
            name: Some("soc-slack".into()),
            secret_file: Some(slack_url),
            retry_base_ms: 20,
            ..Default::default()
        },
        EscalationConfig {
            kind: DestinationKind::Pagerduty,
            name: Some("oncall".into()),
            url: pd.url("/v2/enqueue"),
            secret_file: Some(routing_key),
            retry_base_ms: 20,
            ..Default::default()
        },
    ];
    let run = Running::start(&cfg, spool.path());
    let mut f = fixture();
    // Attacker-controlled text must not become a Slack mention or link.
    f.events[1].user_agent = "<!channel> `curl` <https://evil.example|click>".into();
    run.esc.submit(std::slice::from_ref(&f)).unwrap();
    let s = slack
        .wait_for(WAIT, "the Slack message", |r| !r.is_empty())
        .await;
    let p = pd
        .wait_for(WAIT, "the PagerDuty event", |r| !r.is_empty())
        .await;

    assert_eq!(s[0].path, "/services/T000/B000/XXXX");
    let sv = s[0].json();
    assert!(sv["text"].as_str().unwrap().contains("[HIGH]"));
    assert!(sv["blocks"].as_array().is_some_and(|b| !b.is_empty()));
    let raw = String::from_utf8_lossy(&s[0].body);
    assert!(
        !raw.contains("<!channel>") && !raw.contains("<https://evil"),
        "{raw}"
    );
    insta::assert_snapshot!("slack_body", redacted(sv, &[]));

    let pv = p[0].json();
    assert_eq!(pv["routing_key"], "R0UT1NGKEY0000000000000000000000");
    assert_eq!(pv["event_action"], "trigger");
    assert_eq!(
        pv["dedup_key"],
        "credwatch/session_token_reuse/stratus-red-team-ec2-steal-credentials-role/i-786a3a8b5c0d92ef4"
    );
    assert_eq!(pv["payload"]["severity"], "error", "high maps to error");
    insta::assert_snapshot!("pagerduty_body", redacted(pv, &[]));

    run.until_delivered("soc-slack", 1).await;
    run.until_delivered("oncall", 1).await;
    assert_eq!(run.count("soc-slack", "delivered"), 1);
    assert_eq!(run.count("oncall", "delivered"), 1);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_severity_mapping_and_dedup_per_rule_and_session() {
    let pd = Receiver::start();
    pd.set_default(Reply::status(202));
    let spool = tempfile::tempdir().unwrap();
    let (_d, key) = secret_dir("R0UT1NGKEY0000000000000000000000");
    let cfg = vec![EscalationConfig {
        kind: DestinationKind::Pagerduty,
        url: pd.url("/v2/enqueue"),
        secret_file: Some(key),
        ..Default::default()
    }];
    let run = Running::start(&cfg, spool.path());
    let mut batch = Vec::new();
    for (n, sev) in Severity::ALL.iter().enumerate() {
        batch.push(finding(n, "session_token_reuse", *sev));
    }
    // Same rule and session as finding 0, another origin (another id): same dedup_key.
    let mut again = finding(0, "session_token_reuse", Severity::Info);
    again.id = "f".repeat(32);
    batch.push(again);
    run.esc.submit(&batch).unwrap();
    let reqs = pd.wait_for(WAIT, "six events", |r| r.len() >= 6).await;
    let by_sev: BTreeMap<String, String> = reqs
        .iter()
        .take(5)
        .map(|r| {
            let v = r.json();
            (
                v["payload"]["custom_details"]["severity"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                v["payload"]["severity"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: BTreeMap<String, String> = [
        ("info", "info"),
        ("low", "info"),
        ("medium", "warning"),
        ("high", "error"),
        ("critical", "critical"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(by_sev, want);
    assert_eq!(reqs[0].json()["dedup_key"], reqs[5].json()["dedup_key"]);
    assert_ne!(reqs[0].json()["dedup_key"], reqs[1].json()["dedup_key"]);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_then_recovery_delivers_every_finding_once() {
    // Down (connection refused), then 503s, then up.
    let mut rx = Receiver::reserve();
    let spool = tempfile::tempdir().unwrap();
    let (_d, secret) = secret_dir("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let run = Running::start(&[webhook(rx.url("/hook"), &secret)], spool.path());
    let batch = findings(8);
    run.esc.submit(&batch).unwrap();
    assert_eq!(run.depth("webhook-0"), 8);
    // Refused connections are retried.
    let t0 = Instant::now();
    while run.count("webhook-0", "retried") < 3 {
        assert!(t0.elapsed() < WAIT, "no retries while the receiver is down");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rx.reply_for(Duration::from_millis(400), Reply::status(503));
    rx.up();
    let ids: BTreeSet<String> = batch.iter().map(|f| f.id.clone()).collect();
    let reqs = rx
        .wait_for(WAIT, "every finding delivered", |r| {
            delivered_ids(r).keys().cloned().collect::<BTreeSet<_>>() == ids
        })
        .await;
    assert!(
        reqs.iter().any(|r| r.status == 503),
        "the 503 phase was seen"
    );
    // The receiver deduplicates by webhook-id: nothing may arrive for an id after its 2xx.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reqs = rx.requests();
    for id in &ids {
        let for_id: Vec<&Received> = reqs
            .iter()
            .filter(|r| r.header("webhook-id") == Some(id.as_str()))
            .collect();
        let first_ok = for_id.iter().position(|r| r.ok()).expect("delivered");
        assert_eq!(
            first_ok,
            for_id.len() - 1,
            "{id} was sent again after a 2xx: {:?}",
            for_id.iter().map(|r| r.status).collect::<Vec<_>>()
        );
    }
    assert_eq!(delivered_ids(&reqs).values().max(), Some(&1));
    run.until_delivered("webhook-0", 8).await;
    assert_eq!(run.count("webhook-0", "delivered"), 8);
    assert!(run.count("webhook-0", "retried") >= 4);
    assert!(run.retries("webhook-0") >= 3);
    assert_eq!(run.count("webhook-0", "rejected"), 0);
    assert_eq!(run.depth("webhook-0"), 0);
    assert_eq!(run.latency_count("webhook-0"), 8);
    let left: Vec<_> = std::fs::read_dir(spool.path().join("webhook-0"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    assert!(left.is_empty(), "spool files left: {left:?}");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_is_retried() {
    let rx = Receiver::start();
    rx.reply_next([Reply::status(200).delay(Duration::from_millis(1500))]);
    let spool = tempfile::tempdir().unwrap();
    let (_d, secret) = secret_dir("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let mut cfg = webhook(rx.url("/slow"), &secret);
    cfg.timeout_ms = 200;
    let run = Running::start(&[cfg], spool.path());
    run.esc.submit(&findings(1)).unwrap();
    let reqs = rx
        .wait_for(WAIT, "a second attempt", |r| r.len() >= 2)
        .await;
    assert_eq!(reqs[0].header("webhook-id"), reqs[1].header("webhook-id"));
    run.until_delivered("webhook-0", 1).await;
    assert_eq!(run.count("webhook-0", "retried"), 1);
    assert_eq!(run.retries("webhook-0"), 1);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_is_not_retried_and_is_dead_lettered() {
    let rx = Receiver::start();
    rx.reply_next([Reply::status(400).body("invalid payload")]);
    let spool = tempfile::tempdir().unwrap();
    let (_d, secret) = secret_dir("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let run = Running::start(&[webhook(rx.url("/hook"), &secret)], spool.path());
    let batch = findings(2);
    run.esc.submit(&batch).unwrap();
    rx.wait_for(WAIT, "two requests", |r| r.len() >= 2).await;
    // Time for a retry to happen if there were one (backoff base 20 ms).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2, "no retry after a 400");
    run.until_delivered("webhook-0", 1).await;
    assert_eq!(reqs[0].status, 400);
    assert_eq!(reqs[0].header("webhook-id"), Some(batch[0].id.as_str()));
    assert_eq!(reqs[1].header("webhook-id"), Some(batch[1].id.as_str()));
    assert_eq!(run.count("webhook-0", "rejected"), 1);
    assert_eq!(run.count("webhook-0", "dead_lettered"), 1);
    assert_eq!(run.count("webhook-0", "retried"), 0);
    assert_eq!(run.count("webhook-0", "delivered"), 1);
    assert_eq!(run.depth("webhook-0"), 0);

    let path = spool.path().join("dead-letter.jsonl");
    assert_eq!(run.esc.dead_letter_path(), path);
    let text = std::fs::read_to_string(&path).expect("dead-letter file");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    let dl = &lines[0];
    assert_eq!(dl["destination"], "webhook-0");
    assert_eq!(dl["finding_id"], batch[0].id.as_str());
    assert_eq!(dl["status"], 400);
    assert_eq!(dl["response"], "invalid payload");
    assert_eq!(
        serde_json::from_value::<Finding>(dl["finding"].clone()).unwrap(),
        batch[0]
    );
    // A dead-lettered finding submitted again (a replay) is not sent again.
    run.esc.submit(&batch[..1]).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rx.requests().len(), 2);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let rx = Receiver::start();
    // An HTTP date (one-second resolution) three seconds ahead, then delay-seconds.
    let in_three_secs = (chrono::Utc::now() + chrono::Duration::seconds(3))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    rx.reply_next([
        Reply::status(503).retry_after(in_three_secs),
        Reply::status(429).retry_after("1"),
    ]);
    let spool = tempfile::tempdir().unwrap();
    let (_d, secret) = secret_dir("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let run = Running::start(&[webhook(rx.url("/hook"), &secret)], spool.path());
    run.esc.submit(&findings(1)).unwrap();
    let reqs = rx.wait_for(WAIT, "three attempts", |r| r.len() >= 3).await;
    let gap1 = reqs[1].at - reqs[0].at;
    let gap2 = reqs[2].at - reqs[1].at;
    // The backoff alone would be tens of milliseconds (retry_base_ms 20, retry_max_ms 100).
    assert!(
        gap1 >= Duration::from_millis(1500),
        "Retry-After date not honoured: {gap1:?}"
    );
    assert!(gap1 < Duration::from_secs(6), "{gap1:?}");
    assert!(
        gap2 >= Duration::from_millis(900),
        "Retry-After: 1 not honoured: {gap2:?}"
    );
    assert!(gap2 < Duration::from_secs(5), "{gap2:?}");
    assert!(reqs[2].ok());
    run.until_delivered("webhook-0", 1).await;
    assert_eq!(run.count("webhook-0", "retried"), 2);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_findings_survive_a_restart() {
    let mut rx = Receiver::reserve();
    let spool = tempfile::tempdir().unwrap();
    let (_d, secret) = secret_dir("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let cfg = vec![webhook(rx.url("/hook"), &secret)];
    let batch = findings(5);
    {
        // First run: the receiver is down; the findings are spooled, attempts fail, then the
        // process goes away.
        let run = Running::start(&cfg, spool.path());
        run.esc.submit(&batch).unwrap();
        let files = std::fs::read_dir(spool.path().join("webhook-0"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .count();
        assert_eq!(files, 5, "submit returns once every finding is on disk");
        let t0 = Instant::now();
        while run.count("webhook-0", "retried") < 2 {
            assert!(t0.elapsed() < WAIT);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        run.stop().await;
    }
    {
        // A process killed before delivering anything: spooled, never delivered.
        let m = Arc::new(Metrics::new());
        let esc = Escalator::new(&cfg, spool.path(), m).unwrap();
        esc.submit(&findings(7)[5..]).unwrap();
        drop(esc);
    }
    rx.up();
    let metrics = Arc::new(Metrics::new());
    let esc = Arc::new(Escalator::new(&cfg, spool.path(), metrics.clone()).unwrap());
    assert_eq!(esc.pending("webhook-0"), Some(7), "the spool is read back");
    assert_eq!(
        metrics
            .escalation_spool_depth
            .with_label_values(&["webhook-0"])
            .get(),
        7
    );
    let run = Running::deliver(esc, metrics);
    let all: BTreeSet<String> = findings(7).iter().map(|f| f.id.clone()).collect();
    rx.wait_for(WAIT, "all seven delivered", |r| {
        delivered_ids(r).keys().cloned().collect::<BTreeSet<_>>() == all
    })
    .await;
    // Replayed after the restart (the same records read again): not escalated again.
    run.esc.submit(&findings(7)).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 7, "each finding sent once");
    assert!(delivered_ids(&reqs).values().all(|n| *n == 1));
    run.stop().await;

    // And after another restart too.
    let m = Arc::new(Metrics::new());
    let esc = Escalator::new(&cfg, spool.path(), m).unwrap();
    esc.submit(&findings(7)).unwrap();
    assert_eq!(esc.pending("webhook-0"), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_by_rule_and_min_severity() {
    let rx = Receiver::start();
    let spool = tempfile::tempdir().unwrap();
    let (_d, secret) = secret_dir("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let all = webhook(rx.url("/all"), &secret);
    let mut reuse = webhook(rx.url("/reuse"), &secret);
    reuse.rules = vec!["session_token_reuse".into(), "stop_logging".into()];
    let mut high = webhook(rx.url("/high"), &secret);
    high.min_severity = Some(Severity::High);
    let mut both = webhook(rx.url("/both"), &secret);
    both.rules = vec!["stop_logging".into(), "create_user".into()];
    both.min_severity = Some(Severity::Critical);
    let run = Running::start(&[all, reuse, high, both], spool.path());
    let batch = vec![
        finding(1, "session_token_reuse", Severity::High),
        finding(2, "workload_get_caller_identity", Severity::Medium),
        finding(3, "stop_logging", Severity::Critical),
        finding(4, "create_user", Severity::Low),
    ];
    run.esc.submit(&batch).unwrap();
    let expected: BTreeMap<&str, Vec<usize>> = [
        ("/all", vec![1, 2, 3, 4]),
        ("/reuse", vec![1, 3]),
        ("/high", vec![1, 3]),
        ("/both", vec![3]),
    ]
    .into_iter()
    .collect();
    let total: usize = expected.values().map(Vec::len).sum();
    rx.wait_for(WAIT, "every routed delivery", |r| r.len() >= total)
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reqs = rx.requests();
    assert_eq!(reqs.len(), total, "nothing beyond what is routed");
    for (path, ns) in expected {
        let got: BTreeSet<String> = reqs
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.header("webhook-id").unwrap().to_string())
            .collect();
        let want: BTreeSet<String> = ns.iter().map(|n| format!("{n:032x}")).collect();
        assert_eq!(got, want, "{path}");
    }
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_burst_limit_defers_but_never_drops() {
    let rx = Receiver::start();
    let spool = tempfile::tempdir().unwrap();
    let (_d, secret) = secret_dir("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let mut cfg = webhook(rx.url("/hook"), &secret);
    cfg.burst = 2;
    cfg.per_minute = 300; // one every 200 ms after the burst
    let run = Running::start(&[cfg], spool.path());
    let batch = findings(6);
    run.esc.submit(&batch).unwrap();
    let ids: BTreeSet<String> = batch.iter().map(|f| f.id.clone()).collect();
    let reqs = rx
        .wait_for(WAIT, "all six", |r| {
            delivered_ids(r).keys().cloned().collect::<BTreeSet<_>>() == ids
        })
        .await;
    assert_eq!(reqs.len(), 6);
    let t0 = reqs[0].at;
    assert!(
        reqs[1].at - t0 < Duration::from_millis(150),
        "the burst goes at once: {:?}",
        reqs[1].at - t0
    );
    // The four others wait for tokens, 200 ms apart, and still go.
    for w in reqs[1..].windows(2) {
        let gap = w[1].at - w[0].at;
        assert!(
            gap >= Duration::from_millis(150),
            "not rate limited: {gap:?}"
        );
    }
    let spread = reqs[5].at - t0;
    assert!(
        spread >= Duration::from_millis(700),
        "not rate limited: {spread:?}"
    );
    assert!(spread < Duration::from_secs(5), "{spread:?}");
    run.until_delivered("webhook-0", 6).await;
    assert_eq!(run.count("webhook-0", "delivered"), 6);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_destinations_is_cheap_and_deliver_waits_for_shutdown() {
    let spool = tempfile::tempdir().unwrap();
    let dir = spool.path().join("escalation-spool");
    let metrics = Arc::new(Metrics::new());
    let esc = Arc::new(Escalator::new(&[], &dir, metrics.clone()).unwrap());
    esc.submit(&findings(3)).unwrap();
    assert!(!dir.exists(), "nothing written without destinations");
    let run = Running::deliver(esc, metrics);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!run.task.is_finished(), "deliver runs until shutdown");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_delivers_what_it_can_within_its_time() {
    let rx = Receiver::start();
    let spool = tempfile::tempdir().unwrap();
    let (_d, secret) = secret_dir("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let metrics = Arc::new(Metrics::new());
    let cfg = [webhook(rx.url("/hook"), &secret)];
    let esc = Arc::new(Escalator::new(&cfg, spool.path(), metrics.clone()).unwrap());
    esc.submit(&findings(3)).unwrap();
    assert_eq!(esc.clone().flush(WAIT).await, 0);
    assert_eq!(rx.requests().len(), 3);

    // An endpoint that keeps failing: flush gives up at its deadline; nothing is lost.
    rx.reply_for(WAIT, Reply::status(503));
    let more: Vec<Finding> = (10..12)
        .map(|n| finding(n, "stop_logging", Severity::Critical))
        .collect();
    esc.submit(&more).unwrap();
    let t0 = Instant::now();
    assert_eq!(esc.clone().flush(Duration::from_millis(300)).await, 2);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(esc.pending_total(), 2);
}

// ---- AWS destinations, against moto on loopback ------------------------------------------

/// A destination of an AWS type pointed at `moto`, with quick retries.
fn aws_destination(kind: DestinationKind, moto: &support::moto::MotoServer) -> EscalationConfig {
    EscalationConfig {
        kind,
        region: Some(support::moto::REGION.into()),
        endpoint_url: Some(moto.endpoint()),
        retry_base_ms: 50,
        retry_max_ms: 300,
        burst: 1000,
        per_minute: 60_000,
        ..Default::default()
    }
}

/// Every finding Security Hub holds, by id.
async fn hub_findings(
    hub: &aws_sdk_securityhub::Client,
) -> BTreeMap<String, aws_sdk_securityhub::types::AwsSecurityFinding> {
    let mut out = BTreeMap::new();
    let mut pages = hub.get_findings().max_results(100).into_paginator().send();
    while let Some(page) = pages.next().await {
        for f in page.expect("GetFindings").findings() {
            let id = f.id().expect("finding id").to_string();
            assert!(
                out.insert(id.clone(), f.clone()).is_none(),
                "{id} is in Security Hub twice"
            );
        }
    }
    out
}

fn aws_credentials_env() {
    // The SDK's default chain reads these (the destination has no secret of its own).
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_hub_imports_asff_updates_on_resend_and_survives_an_outage() {
    aws_credentials_env();
    let mut moto = support::moto::MotoServer::start();
    let hub = moto.security_hub().await;
    hub.enable_security_hub()
        .send()
        .await
        .expect("EnableSecurityHub");
    let spool = tempfile::tempdir().unwrap();
    // No account_id: the importing account comes from sts:GetCallerIdentity.
    let cfg = aws_destination(DestinationKind::SecurityHub, &moto);
    let run = Running::start(std::slice::from_ref(&cfg), spool.path());
    let mut batch = findings(150);
    batch[0] = fixture();
    run.esc.submit(&batch).unwrap();
    run.until_delivered("security_hub-0", 150).await;
    assert_eq!(run.count("security_hub-0", "rejected"), 0);
    let held = hub_findings(&hub).await;
    let ids: BTreeSet<String> = batch.iter().map(|f| f.id.clone()).collect();
    assert_eq!(held.keys().cloned().collect::<BTreeSet<_>>(), ids);

    // The record of the fixture, as an analyst reads it.
    let r = &held[&batch[0].id];
    let account = support::moto::ACCOUNT_ID;
    assert_eq!(r.schema_version(), Some("2018-10-08"));
    assert_eq!(
        r.product_arn(),
        Some(format!("arn:aws:securityhub:us-east-1:{account}:product/{account}/default").as_str())
    );
    assert_eq!(r.aws_account_id(), Some(account));
    assert_eq!(r.generator_id(), Some("credwatch/session_token_reuse"));
    assert!(r
        .types()
        .contains(&"TTPs/Credential Access/session_token_reuse".to_string()));
    assert_eq!(
        r.severity().and_then(|s| s.label()).map(|l| l.as_str()),
        Some("HIGH")
    );
    let resources: Vec<(String, String)> = r
        .resources()
        .iter()
        .map(|x| {
            (
                x.r#type().unwrap_or("").to_string(),
                x.id().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        resources,
        vec![
            (
                "AwsIamRole".to_string(),
                "arn:aws:iam::017622104382:role/stratus-red-team-ec2-steal-credentials-role"
                    .to_string()
            ),
            (
                "AwsEc2Instance".to_string(),
                "i-786a3a8b5c0d92ef4".to_string()
            ),
            (
                "AwsIamAccessKey".to_string(),
                "ASIAP5CT9NN8EYVU1FXV".to_string()
            ),
        ]
    );
    let pf = r.product_fields().expect("product fields");
    assert_eq!(pf["credwatch/second/origin"], "18.236.253.47");
    assert_eq!(
        pf["credwatch/first/event_id"],
        "5d3f1c2a-0000-4000-8000-000000000001"
    );
    assert_eq!(pf["credwatch/account_id"], "017622104382");
    assert!(r
        .note()
        .and_then(|n| n.text())
        .unwrap()
        .contains("no [[allow]] entry contains 18.236.253.47"));
    run.stop().await;

    // Sent again (another spool: a hunt over the same data, say), with a new title: the records
    // are updated in place, not added.
    let again = tempfile::tempdir().unwrap();
    let run = Running::start(std::slice::from_ref(&cfg), again.path());
    let resent: Vec<Finding> = batch[..20]
        .iter()
        .map(|f| Finding {
            title: format!("{} (re-sent)", f.title),
            ..f.clone()
        })
        .collect();
    run.esc.submit(&resent).unwrap();
    run.until_delivered("security_hub-0", 20).await;
    let held = hub_findings(&hub).await;
    assert_eq!(
        held.len(),
        150,
        "a re-sent finding updates, never duplicates"
    );
    for f in &resent {
        assert!(
            held[&f.id].title().unwrap().ends_with("(re-sent)"),
            "{}",
            f.id
        );
    }
    run.stop().await;

    // Security Hub is down: findings wait in the spool and are retried; once it is back (a fresh
    // emulator on the same port), every one arrives.
    moto.stop();
    let run = Running::start(std::slice::from_ref(&cfg), spool.path());
    let late: Vec<Finding> = (1000..1007)
        .map(|n| finding(n, "session_token_reuse", Severity::Critical))
        .collect();
    run.esc.submit(&late).unwrap();
    run.until("retries during the outage", |r| {
        r.count("security_hub-0", "retried") >= 7
    })
    .await;
    assert_eq!(run.count("security_hub-0", "delivered"), 0);
    assert_eq!(run.depth("security_hub-0"), 7);
    moto.restart();
    run.until_delivered("security_hub-0", 7).await;
    let hub = moto.security_hub().await;
    let held = hub_findings(&hub).await;
    assert_eq!(
        held.keys().cloned().collect::<BTreeSet<_>>(),
        late.iter().map(|f| f.id.clone()).collect::<BTreeSet<_>>()
    );
    assert_eq!(run.count("security_hub-0", "dead_lettered"), 0);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventbridge_rule_with_an_sqs_target_receives_each_finding_once() {
    aws_credentials_env();
    let moto = support::moto::MotoServer::start();
    let sqs = moto.sqs().await;
    let events = moto.eventbridge().await;
    let queue_url = sqs
        .create_queue()
        .queue_name("credwatch-findings")
        .send()
        .await
        .expect("CreateQueue")
        .queue_url()
        .unwrap()
        .to_string();
    let queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("GetQueueAttributes")
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
        .unwrap()
        .to_string();
    events
        .create_event_bus()
        .name("security")
        .send()
        .await
        .expect("CreateEventBus");
    events
        .put_rule()
        .name("credwatch-findings")
        .event_bus_name("security")
        .event_pattern(r#"{"source": ["credwatch"]}"#)
        .send()
        .await
        .expect("PutRule");
    events
        .put_targets()
        .rule("credwatch-findings")
        .event_bus_name("security")
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("queue")
                .arn(&queue_arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("PutTargets");

    let spool = tempfile::tempdir().unwrap();
    let cfg = EscalationConfig {
        event_bus: Some("security".into()),
        ..aws_destination(DestinationKind::Eventbridge, &moto)
    };
    let run = Running::start(&[cfg], spool.path());
    let mut batch: Vec<Finding> = (0..24)
        .map(|n| {
            let rule = if n % 3 == 0 {
                "workload_credentials_outside_aws"
            } else {
                "session_token_reuse"
            };
            finding(n, rule, Severity::High)
        })
        .collect();
    // One finding far over an event's 256 KB: trimmed, still delivered.
    let mut huge = finding(99, "session_token_reuse", Severity::High);
    huge.events[1].user_agent = "A".repeat(400_000);
    batch.push(huge.clone());
    run.esc.submit(&batch).unwrap();
    run.until_delivered("eventbridge-0", batch.len() as u64)
        .await;

    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut bodies: BTreeMap<String, Value> = BTreeMap::new();
    let t0 = Instant::now();
    while seen.len() < batch.len() {
        assert!(
            t0.elapsed() < WAIT,
            "only {} of {} events reached the queue",
            seen.len(),
            batch.len()
        );
        let out = sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .send()
            .await
            .expect("ReceiveMessage");
        for m in out.messages() {
            let ev: Value = serde_json::from_str(m.body().unwrap()).expect("event JSON");
            let id = ev["detail"]["id"].as_str().expect("detail.id").to_string();
            *seen.entry(id.clone()).or_default() += 1;
            bodies.insert(id, ev);
            sqs.delete_message()
                .queue_url(&queue_url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .expect("DeleteMessage");
        }
    }
    // Nothing more arrives.
    let extra = sqs
        .receive_message()
        .queue_url(&queue_url)
        .wait_time_seconds(1)
        .send()
        .await
        .expect("ReceiveMessage");
    assert!(extra.messages().is_empty(), "an event arrived twice");
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        batch.iter().map(|f| f.id.clone()).collect::<BTreeSet<_>>()
    );
    for f in &batch {
        let ev = &bodies[&f.id];
        assert_eq!(ev["source"], "credwatch");
        assert_eq!(ev["detail-type"], f.rule.as_str());
        assert_eq!(ev["detail"]["session"], f.session.as_deref().unwrap());
        assert_eq!(ev["detail"]["events"][1]["origin"], "18.236.253.47");
    }
    let h = &bodies[&huge.id]["detail"];
    assert_eq!(h["trimmed"], true);
    assert!(h.to_string().len() <= 256 * 1024);
    assert_eq!(run.count("eventbridge-0", "rejected"), 0);
    run.stop().await;
}
