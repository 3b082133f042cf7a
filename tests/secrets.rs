//! Secrets stay secret and data stays private: `credwatch run` with known secrets (the AWS
//! secret key and session token of its credentials, a webhook signing secret, the `/findings`
//! bearer token) writes findings, dead letters, checkpoints, the escalation spool and a log, and
//! serves `/metrics` and `/findings`; none of them may hold any of the secrets. Every file it
//! creates is `0600` and every folder `0700`.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::moto::MotoServer;
use support::prometheus::free_port;
use support::receiver::{Receiver, Reply};
use support::run::{envelope, gzip, http_get, sessions, Nets, Run, Session, State};

const NETS: Nets = Nets {
    home: "54.160",
    evil: "54.210.9",
};

const AWS_SECRET: &str = "credwatchTestSecretKeyMustNeverAppear0123";
const AWS_TOKEN: &str = "credwatchTestSessionTokenMustNeverAppear456";
/// A Standard Webhooks secret: `whsec_` and the base64 of the key.
const SIGNING_SECRET: &str = "whsec_Y3JlZHdhdGNoLXNpZ25pbmcta2V5LW5ldmVyLWxlYWtz";
const SIGNING_KEY_B64: &str = "Y3JlZHdhdGNoLXNpZ25pbmcta2V5LW5ldmVyLWxlYWtz";
const FINDINGS_TOKEN: &str = "credwatch-findings-token-must-never-appear";

fn every_file(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.expect("walk"))
        .map(|e| e.into_path())
        .collect()
}

fn assert_no_secret(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    for s in [
        AWS_SECRET,
        AWS_TOKEN,
        SIGNING_SECRET,
        SIGNING_KEY_B64,
        FINDINGS_TOKEN,
    ] {
        assert!(!text.contains(s), "{what} holds the secret {s:?}");
    }
}

#[tokio::test]
async fn no_secret_in_any_output_and_every_file_is_private() {
    let moto = MotoServer::start();
    let stream = "secrets";
    moto.create_stream(stream, 1).await;

    let receiver = Receiver::start();
    // The first delivery is refused for good (a dead-lettered escalation), the rest accepted.
    receiver.reply_next([Reply::status(400).body("no thanks")]);
    receiver.set_default(Reply::status(200));

    let state = State::new();
    let config = state.dir.path().join("credwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[metrics]\nfindings_token_env = \"CREDWATCH_TEST_FINDINGS_TOKEN\"\n\n\
             [[escalation]]\ntype = \"webhook\"\nname = \"siem\"\nurl = \"{}\"\n\
             secret_env = \"CREDWATCH_TEST_SIGNING_SECRET\"\nretry_base_ms = 20\nretry_max_ms = 100\n",
            receiver.url("/hook")
        ),
    )
    .unwrap();
    let pairs: Vec<Session> = sessions("secret", 3, NETS);
    let mut records: Vec<(&str, Vec<u8>)> = vec![("k", b"not gzip at all".to_vec())];
    for s in &pairs {
        records.push(("k", envelope("i-logs", &[s.home(), s.second()])));
    }
    records.push(("k", gzip(b"{ not json")));
    moto.put_records(stream, &records).await;

    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let config_text = config.display().to_string();
    let mut run = Run::start(
        &moto.endpoint(),
        stream,
        &state,
        Some(&addr),
        &[
            ("CREDWATCH_CONFIG", config_text.as_str()),
            ("AWS_SECRET_ACCESS_KEY", AWS_SECRET),
            ("AWS_SESSION_TOKEN", AWS_TOKEN),
            ("CREDWATCH_TEST_SIGNING_SECRET", SIGNING_SECRET),
            ("CREDWATCH_TEST_FINDINGS_TOKEN", FINDINGS_TOKEN),
            ("CREDWATCH_LOG", "debug"),
        ],
    );
    let expected: Vec<&Session> = pairs.iter().collect();
    run.await_findings(&state, &expected).await;
    run.wait_for("every finding escalated", Duration::from_secs(30), || {
        let n = receiver.requests().len();
        if n >= pairs.len() {
            Ok(())
        } else {
            Err(format!("{n} webhook requests"))
        }
    })
    .await;
    run.wait_for("the dead letters written", Duration::from_secs(30), || {
        let n = state.dead_letters().len();
        if n >= 2 {
            Ok(())
        } else {
            Err(format!("{n} dead letters"))
        }
    })
    .await;

    let (status, metrics) = http_get(port, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    assert_no_secret("/metrics", metrics.as_bytes());
    let (status, body) = http_get(port, "/findings").expect("GET /findings");
    assert_eq!(status, 401, "no token, no findings: {body}");
    assert_no_secret("/findings (401)", body.as_bytes());

    run.sigterm();
    let status = run.wait_exit(Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()), "{}", run.log_tail());

    // Every output: the log, findings, dead letters, checkpoint, spool, ledger.
    let files = every_file(state.dir.path());
    let mut checked = 0;
    for p in &files {
        let meta = std::fs::metadata(p).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            if p == state.dir.path() {
                continue; // the test's own folder
            }
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", p.display());
            continue;
        }
        assert_no_secret(&p.display().to_string(), &std::fs::read(p).unwrap());
        checked += 1;
        let ours = p != &config
            && !p
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("credwatch-run-");
        if ours {
            assert_eq!(mode, 0o600, "{} is {mode:o}", p.display());
        }
    }
    let names: Vec<String> = files
        .iter()
        .map(|p| {
            p.strip_prefix(state.dir.path())
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    for want in [
        "findings.jsonl",
        "dead-letter.jsonl",
        "checkpoints/checkpoint.json",
        "checkpoints/escalation-spool/dead-letter.jsonl",
        "checkpoints/escalation-spool/siem/done.jsonl",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} not written: {names:?}"
        );
    }
    assert!(checked >= 6, "{names:?}");
    // The webhook bodies carry no secret either (the signature is an HMAC, not the key).
    for r in receiver.requests() {
        assert_no_secret("a webhook request", &r.body);
        for v in r.headers.values() {
            assert_no_secret("a webhook header", v.as_bytes());
        }
    }
}
