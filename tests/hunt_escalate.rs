//! `credwatch hunt --escalate` against a real webhook receiver on loopback
//! (`support::receiver`): every finding of a generated workload delivered exactly once (counted
//! by `webhook-id`), nothing sent again by a second hunt on the same checkpoint folder, nor by a
//! hunt on the folder of a `run` that delivered them (moto); `--dry-run` sends and writes
//! nothing; what cannot be delivered stays spooled, exits 3, and goes with the next hunt.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::moto::MotoServer;
use support::receiver::{Received, Receiver, Reply};
use support::run::{sessions, Nets, Run, Session, State, ACCT, LOG_GROUP, REGION};

const DESTINATION: &str = "soc";
const WAIT: Duration = Duration::from_secs(60);

fn credwatch(args: &[&std::ffi::OsStr]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_credwatch"));
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CREDWATCH_") || k.starts_with("AWS_") {
            cmd.env_remove(&*k);
        }
    }
    cmd.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .output()
        .expect("credwatch runs")
}

fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A generated workload (its CloudTrail files and its config) in `dir`.
fn generate(dir: &Path) {
    let o = credwatch(&[
        "generate".as_ref(),
        "--out".as_ref(),
        dir.as_os_str(),
        "--seed".as_ref(),
        "17".as_ref(),
        "--events".as_ref(),
        "1500".as_ref(),
    ]);
    assert!(o.status.success(), "generate: {}", text(&o));
}

/// `base` (TOML) plus one webhook destination to `url`: quick retries, no rate limit in the way.
fn config(dir: &Path, base: &str, url: &str) -> PathBuf {
    let secret = dir.join("webhook-secret");
    std::fs::write(&secret, "hunt-escalate-test-signing-secret\n").expect("write the secret");
    let path = dir.join("credwatch-escalate.toml");
    std::fs::write(
        &path,
        format!(
            "{base}\n\n[[escalation]]\ntype = \"webhook\"\nname = \"{DESTINATION}\"\nurl = \"{url}\"\n\
             secret_file = {:?}\nretry_base_ms = 20\nretry_max_ms = 200\ntimeout_ms = 2000\n\
             burst = 1000\nper_minute = 60000\n",
            secret.to_string_lossy()
        ),
    )
    .expect("write the config");
    path
}

/// `hunt --output json --config <config> --escalate --checkpoint-dir <ck> [extra] <paths>`.
fn hunt(config: &Path, checkpoint: &Path, extra: &[&str], paths: &[&Path]) -> Output {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "hunt".as_ref(),
        "--output".as_ref(),
        "json".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--escalate".as_ref(),
        "--checkpoint-dir".as_ref(),
        checkpoint.as_os_str(),
    ];
    args.extend(extra.iter().map(|e| std::ffi::OsStr::new(*e)));
    args.extend(paths.iter().map(|p| p.as_os_str()));
    credwatch(&args)
}

/// The finding ids a `hunt --output json` printed.
fn hunt_ids(o: &Output) -> BTreeSet<String> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("a JSON finding")["id"]
                .as_str()
                .expect("id")
                .to_string()
        })
        .collect()
}

/// How many times each finding id was delivered (answered 2xx), by `webhook-id`.
fn delivered(reqs: &[Received]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in reqs.iter().filter(|r| r.ok()) {
        let id = r.header("webhook-id").expect("webhook-id").to_string();
        *out.entry(id).or_default() += 1;
    }
    out
}

fn once_each(ids: &BTreeSet<String>) -> BTreeMap<String, usize> {
    ids.iter().map(|i| (i.clone(), 1)).collect()
}

/// Every file under `dir` with its bytes (nothing when it does not exist).
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    if !dir.exists() {
        return BTreeMap::new();
    }
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.expect("walk"))
        .map(|e| {
            let bytes = if e.file_type().is_file() {
                std::fs::read(e.path()).expect("read")
            } else {
                Vec::new()
            };
            (e.into_path(), bytes)
        })
        .collect()
}

/// The dry run's rows: finding id -> state, for the destination.
fn dry_run_rows(o: &Output) -> BTreeMap<String, String> {
    stderr(o)
        .lines()
        .filter(|l| l.starts_with(DESTINATION) && !l.contains("would send"))
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(cols.len(), 5, "a dry-run row: {l}");
            (cols[1].to_string(), cols[4].to_string())
        })
        .collect()
}

#[tokio::test]
async fn every_finding_is_delivered_once_and_a_second_hunt_or_a_dry_run_sends_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    generate(dir.path());
    let base = std::fs::read_to_string(dir.path().join("credwatch.toml")).expect("its config");
    let receiver = Receiver::start();
    let cfg = config(dir.path(), &base, &receiver.url("/hook"));
    let logs = dir.path().join("AWSLogs");
    let ck = dir.path().join("state");

    // A dry run on a fresh folder: everything would be sent; nothing is, nothing is written.
    let dry = hunt(&cfg, &ck, &["--dry-run"], &[&logs]);
    assert!(dry.status.success(), "{}", text(&dry));
    let ids = hunt_ids(&dry);
    assert!(ids.len() >= 5, "the workload has findings: {}", text(&dry));
    let rows = dry_run_rows(&dry);
    assert_eq!(
        rows.keys().cloned().collect::<BTreeSet<_>>(),
        ids,
        "{}",
        text(&dry)
    );
    assert!(rows.values().all(|s| s == "send"), "{}", text(&dry));
    assert!(!ck.exists(), "the dry run created {}", ck.display());
    assert!(receiver.requests().is_empty());

    // The hunt: each finding delivered exactly once.
    let first = hunt(&cfg, &ck, &[], &[&logs]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    assert_eq!(hunt_ids(&first), ids);
    let reqs = receiver.requests();
    assert_eq!(delivered(&reqs), once_each(&ids), "{}", text(&first));
    assert_eq!(reqs.len(), ids.len(), "no retries were needed");
    assert!(reqs.iter().all(|r| r.path == "/hook"));
    assert!(
        stderr(&first).contains(&format!(
            "escalation {DESTINATION}: delivered {}, already delivered before 0, rejected 0, still spooled 0",
            ids.len()
        )),
        "{}",
        text(&first)
    );

    // Again on the same folder: nothing new is sent.
    let second = hunt(&cfg, &ck, &[], &[&logs]);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second));
    assert_eq!(receiver.requests().len(), reqs.len(), "{}", text(&second));
    assert!(
        stderr(&second).contains(&format!(
            "escalation {DESTINATION}: delivered 0, already delivered before {}, rejected 0, still spooled 0",
            ids.len()
        )),
        "{}",
        text(&second)
    );

    // A dry run now: every finding already delivered; nothing sent, the folder unchanged.
    let before = tree(&ck);
    let dry = hunt(&cfg, &ck, &["--dry-run"], &[&logs]);
    assert!(dry.status.success(), "{}", text(&dry));
    let rows = dry_run_rows(&dry);
    assert_eq!(rows.len(), ids.len(), "{}", text(&dry));
    assert!(rows.values().all(|s| s == "delivered"), "{}", text(&dry));
    assert_eq!(
        tree(&ck),
        before,
        "the dry run changed the checkpoint folder"
    );
    assert_eq!(receiver.requests().len(), reqs.len());
}

#[tokio::test]
async fn what_cannot_be_delivered_stays_spooled_exits_3_and_goes_with_the_next_hunt() {
    let dir = tempfile::tempdir().expect("temp dir");
    generate(dir.path());
    let base = std::fs::read_to_string(dir.path().join("credwatch.toml")).expect("its config");
    // Nothing listens yet: every attempt is refused, and retried until the timeout.
    let mut receiver = Receiver::reserve();
    let cfg = config(dir.path(), &base, &receiver.url("/hook"));
    let logs = dir.path().join("AWSLogs");
    let ck = dir.path().join("state");

    let down = hunt(&cfg, &ck, &["--escalate-timeout-secs", "1"], &[&logs]);
    let ids = hunt_ids(&down);
    assert!(ids.len() >= 5, "{}", text(&down));
    assert_eq!(down.status.code(), Some(3), "{}", text(&down));
    let spool = ck.join("escalation-spool");
    assert!(
        stderr(&down).contains(&format!(
            "escalation: {} finding deliveries not confirmed within 1 s remain spooled in {}",
            ids.len(),
            spool.display()
        )),
        "{}",
        text(&down)
    );
    let dry = hunt(&cfg, &ck, &["--dry-run"], &[&logs]);
    let rows = dry_run_rows(&dry);
    assert_eq!(rows.len(), ids.len(), "{}", text(&dry));
    assert!(rows.values().all(|s| s == "pending"), "{}", text(&dry));

    // The receiver is back: the next hunt delivers each of them once.
    receiver.up();
    let next = hunt(&cfg, &ck, &[], &[&logs]);
    assert_eq!(next.status.code(), Some(0), "{}", text(&next));
    assert_eq!(
        delivered(&receiver.requests()),
        once_each(&ids),
        "{}",
        text(&next)
    );

    // A destination that rejects: dead-lettered, said, exit 3.
    let ck2 = dir.path().join("state-2");
    receiver.set_default(Reply::status(400).body("no thanks"));
    let rejected = hunt(&cfg, &ck2, &[], &[&logs]);
    assert_eq!(rejected.status.code(), Some(3), "{}", text(&rejected));
    assert!(
        stderr(&rejected).contains(&format!(
            "escalation: {} finding deliveries rejected by their destination, written to {}",
            ids.len(),
            ck2.join("escalation-spool/dead-letter.jsonl").display()
        )),
        "{}",
        text(&rejected)
    );
}

#[tokio::test]
async fn a_hunt_on_the_checkpoint_folder_of_a_run_sends_nothing_the_run_delivered() {
    const NETS: Nets = Nets {
        home: "54.162",
        evil: "54.212.3",
    };
    let moto = MotoServer::start();
    let stream = "cloudtrail";
    moto.create_stream(stream, 2).await;
    moto.create_log_group_with_subscription(LOG_GROUP, stream)
        .await;
    let sessions: Vec<Session> = sessions("hunt-esc", 4, NETS);
    for (n, s) in sessions.iter().enumerate() {
        for (i, m) in [s.home(), s.second()].into_iter().enumerate() {
            moto.put_log_events(
                LOG_GROUP,
                &format!("{ACCT}_CloudTrail_{REGION}_{n}_{i}"),
                &[(support::run::now_ms(), m)],
            )
            .await;
        }
    }

    let receiver = Receiver::start();
    let state = State::new();
    let cfg = config(state.dir.path(), "", &receiver.url("/hook"));
    let cfg_text = cfg.to_string_lossy().to_string();
    let mut run = Run::start(
        &moto.endpoint(),
        stream,
        &state,
        None,
        &[("CREDWATCH_CONFIG", &cfg_text)],
    );
    let expected: Vec<&Session> = sessions.iter().collect();
    run.await_findings(&state, &expected).await;
    let ids: BTreeSet<String> = state
        .findings()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect();
    // Delivered and written to the run's done-ledger.
    let ledger = state
        .checkpoint_dir
        .join("escalation-spool")
        .join(DESTINATION)
        .join("done.jsonl");
    run.wait_for("the run's deliveries in its done-ledger", WAIT, || {
        let done = std::fs::read_to_string(&ledger).unwrap_or_default();
        let missing: Vec<&String> = ids.iter().filter(|i| !done.contains(i.as_str())).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("not in {}: {missing:?}", ledger.display()))
        }
    })
    .await;
    run.sigterm();
    let status = run.wait_exit(WAIT).expect("run exits");
    assert!(status.success(), "{status}\n{}", run.log_tail());
    let reqs = receiver.requests();
    assert_eq!(delivered(&reqs), once_each(&ids));

    // The same events, hunted with the run's folder: found again, sent again to no one.
    let events = state.dir.path().join("events.jsonl");
    let lines: Vec<String> = sessions
        .iter()
        .flat_map(|s| [s.home(), s.second()])
        .collect();
    std::fs::write(&events, lines.join("\n") + "\n").expect("write events.jsonl");
    let o = hunt(&cfg, &state.checkpoint_dir, &[], &[&events]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(hunt_ids(&o), ids, "{}", text(&o));
    assert_eq!(receiver.requests().len(), reqs.len(), "{}", text(&o));
    assert!(
        stderr(&o).contains(&format!(
            "escalation {DESTINATION}: delivered 0, already delivered before {}",
            ids.len()
        )),
        "{}",
        text(&o)
    );
}
