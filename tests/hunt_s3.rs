//! `credwatch hunt s3://bucket/prefix` against moto's S3 on loopback, with the fault proxy
//! (`support::fault_proxy`) in front of it to count and throttle S3 calls.
//!
//! The bucket holds an organisation trail (`AWSLogs/o-…/<account>/CloudTrail/<region>/…`): two
//! generated workloads of three days each, one per region, of two workload accounts and a
//! network account, plus what a trail bucket also holds and a hunt must not read (digest files,
//! another service's logs). The same tree is on disk, so every S3 hunt is compared with a hunt
//! over the files.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use aws_sdk_s3::primitives::ByteStream;
use support::fault_proxy::{Fault, FaultProxy, Plan};
use support::moto::MotoServer;

const BUCKET: &str = "org-trail-bucket";
const ORG: &str = "o-exampleorg1";
/// The workload's first account (`credwatch generate`'s organisation).
const ACCOUNT_A: &str = "314159265358";

fn credwatch(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_credwatch"));
    cmd.args(args);
    support::run::test_env(&mut cmd);
    cmd.stdin(Stdio::null()).output().expect("credwatch runs")
}

fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout (head) ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The findings of a `--output json` hunt, without the wall-clock `detected_at` and the events'
/// `source` (a path on disk, `s3://bucket/key` from S3; and which of a finding's events names
/// its object depends on which arrived last).
fn findings(o: &Output) -> Vec<String> {
    assert!(o.status.success(), "hunt: {}", text(o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).expect("a JSON finding");
            let f = v.as_object_mut().unwrap();
            f.remove("detected_at");
            for e in f["events"].as_array_mut().unwrap() {
                e.as_object_mut().unwrap().remove("source");
            }
            v.to_string()
        })
        .collect()
}

/// Asserts that two hunts gave the same findings, with a short message when they did not.
fn same(got: &[String], want: &[String], what: &str) {
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    assert!(
        got.len() == want.len() && first.is_none(),
        "{what}: {} findings against {}; first difference at {first:?}:\n{}\n{}",
        got.len(),
        want.len(),
        first.map_or("", |i| got[i].as_str()),
        first.map_or("", |i| want[i].as_str()),
    );
}

fn summary_line(o: &Output, key: &str) -> String {
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    stderr
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key:?} line in {}", text(o)))
        .to_string()
}

/// The trail on disk: `root/AWSLogs/o-…/<account>/CloudTrail/<region>/yyyy/mm/dd/<file>`, and
/// every file's key (its path under `root`).
struct Trail {
    _dir: tempfile::TempDir,
    root: PathBuf,
    keys: Vec<String>,
}

fn generate(out: &Path, seed: &str, region: &str) {
    let o = credwatch(&[
        "generate",
        "--out",
        out.to_str().unwrap(),
        "--seed",
        seed,
        "--events",
        "1200",
        "--hours",
        "72",
        "--region",
        region,
    ]);
    assert!(o.status.success(), "generate: {}", text(&o));
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn trail() -> Trail {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("trail");
    let logs = root.join("AWSLogs").join(ORG);
    std::fs::create_dir_all(&logs).unwrap();
    for (seed, region) in [("1", "us-east-1"), ("2", "eu-west-1")] {
        let out = dir.path().join(format!("gen-{region}"));
        generate(&out, seed, region);
        // generate writes `out/AWSLogs/<account>/CloudTrail/...`: move it under the org id.
        for account in std::fs::read_dir(out.join("AWSLogs")).unwrap() {
            let account = account.unwrap();
            let dest = logs.join(account.file_name()).join("CloudTrail");
            std::fs::create_dir_all(&dest).unwrap();
            for region_dir in std::fs::read_dir(account.path().join("CloudTrail")).unwrap() {
                let region_dir = region_dir.unwrap();
                std::fs::rename(region_dir.path(), dest.join(region_dir.file_name())).unwrap();
            }
        }
    }
    let keys = files_under(&root)
        .iter()
        .map(|p| {
            p.strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    Trail {
        _dir: dir,
        root,
        keys,
    }
}

/// Uploads the trail, plus objects a CloudTrail hunt must never read.
fn upload(moto: &MotoServer, trail: &Trail) -> Vec<String> {
    let distractors = vec![
        format!("AWSLogs/{ORG}/{ACCOUNT_A}/CloudTrail-Digest/us-east-1/2024/08/02/{ACCOUNT_A}_CloudTrail-Digest_us-east-1_trail_us-east-1_20240802T010000Z.json.gz"),
        format!("AWSLogs/{ORG}/{ACCOUNT_A}/elasticloadbalancing/us-east-1/2024/08/02/lb.log.gz"),
        format!("AWSLogs/{ORG}/{ACCOUNT_A}/CloudTrail/us-east-1/2024/08/02/README.txt"),
    ];
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conf = aws_sdk_s3::config::Builder::from(&moto.sdk_config().await)
            .force_path_style(true)
            .build();
        let s3 = aws_sdk_s3::Client::from_conf(conf);
        s3.create_bucket()
            .bucket(BUCKET)
            .send()
            .await
            .expect("create bucket");
        let mut puts = Vec::new();
        for key in &trail.keys {
            puts.push((key.clone(), std::fs::read(trail.root.join(key)).unwrap()));
        }
        for key in &distractors {
            // Not CloudTrail events at all: reading one would be a bad record.
            puts.push((key.clone(), b"not cloudtrail".to_vec()));
        }
        let mut tasks = tokio::task::JoinSet::new();
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
        for (key, body) in puts {
            let (s3, sem) = (s3.clone(), sem.clone());
            tasks.spawn(async move {
                let _permit = sem.acquire().await.unwrap();
                s3.put_object()
                    .bucket(BUCKET)
                    .key(&key)
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    });
    distractors
}

/// `hunt --output json --threads 1` (and `--progress off` unless `extra` says otherwise) plus
/// `extra`, over `inputs`. One thread: which event of a session an event rule reports is the
/// first to arrive (`--threads` N can interleave two of them differently).
fn hunt(inputs: &[&str], extra: &[&str]) -> Output {
    let mut args = vec!["hunt", "--output", "json", "--threads", "1"];
    if !extra.contains(&"--progress") {
        args.extend_from_slice(&["--progress", "off"]);
    }
    args.extend_from_slice(extra);
    args.extend_from_slice(inputs);
    credwatch(&args)
}

/// The keys a window of `since`..`until` (the file stamps within 5 minutes before and an hour
/// after), in `region` and `account`, must read: worked out from the names here, apart from the
/// code under test.
fn expected_keys(
    trail: &Trail,
    region: &str,
    account: &str,
    since: &str,
    until: &str,
) -> Vec<String> {
    let parse = |s: &str| chrono::NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M").unwrap();
    let (lo, hi) = (
        parse(since) - chrono::Duration::minutes(5),
        parse(until) + chrono::Duration::minutes(60),
    );
    trail
        .keys
        .iter()
        .filter(|k| k.contains(&format!("/{account}/CloudTrail/{region}/")))
        .filter(|k| {
            let stamp = k.rsplit('_').nth(1).unwrap();
            let t = parse(stamp.trim_end_matches('Z'));
            lo <= t && t <= hi
        })
        .cloned()
        .collect()
}

#[test]
fn hunting_the_bucket_reads_only_what_the_window_needs_and_finds_what_the_files_give() {
    let trail = trail();
    assert!(trail.keys.len() > 1000, "{} files", trail.keys.len());
    let moto = MotoServer::start();
    let distractors = upload(&moto, &trail);
    let proxy = FaultProxy::start(moto.port(), 7);
    let endpoint = proxy.endpoint();
    let s3 = ["--s3-endpoint-url", endpoint.as_str()];
    let local = trail.root.to_str().unwrap();

    // The whole bucket against the whole tree on disk.
    let from_disk = hunt(&[local], &[]);
    let on_disk = findings(&from_disk);
    assert!(
        on_disk.len() >= 10,
        "the workloads give findings: {}",
        text(&from_disk)
    );
    let from_s3 = hunt(&[&format!("s3://{BUCKET}/")], &s3);
    same(&findings(&from_s3), &on_disk, "whole bucket vs disk");
    assert_eq!(
        summary_line(&from_s3, "events read"),
        summary_line(&from_disk, "events read")
    );
    assert!(
        summary_line(&from_s3, "bad records").starts_with("bad records: 0"),
        "{}",
        text(&from_s3)
    );
    assert_eq!(
        proxy.passed("S3.GetObject"),
        trail.keys.len() as u64,
        "{}",
        proxy.summary()
    );
    for d in &distractors {
        assert!(!String::from_utf8_lossy(&from_s3.stderr).contains(d.as_str()));
    }

    // A window of half a day in one region and one account: only its files are fetched.
    proxy.clear();
    let gets_before = proxy.passed("S3.GetObject");
    let window = [
        "--since",
        "2024-08-02T06:00:00Z",
        "--until",
        "2024-08-02T17:59:59Z",
        "--regions",
        "us-east-1",
        "--accounts",
        ACCOUNT_A,
    ];
    let want = expected_keys(
        &trail,
        "us-east-1",
        ACCOUNT_A,
        "20240802T0600",
        "20240802T1759",
    );
    assert!(
        want.len() > 50 && want.len() < trail.keys.len() / 8,
        "{} keys",
        want.len()
    );
    let mut args: Vec<&str> = window.to_vec();
    args.extend_from_slice(&s3);
    let windowed = hunt(&[&format!("s3://{BUCKET}/AWSLogs/")], &args);
    let got = findings(&windowed);
    assert_eq!(
        proxy.passed("S3.GetObject") - gets_before,
        want.len() as u64,
        "GETs of the window: {}\n{}",
        proxy.summary(),
        text(&windowed)
    );
    assert!(
        String::from_utf8_lossy(&windowed.stderr)
            .contains(&format!("{} objects to read", want.len())),
        "{}",
        text(&windowed)
    );
    // The same window over the files on disk: the same events judged, the same findings.
    let windowed_disk = hunt(&[local], &window);
    same(&got, &findings(&windowed_disk), "window, S3 vs disk");
    // The window judged fewer events than the whole.
    let judged = |o: &Output| -> u64 {
        let line = summary_line(o, "events read");
        let read: u64 = line.split(' ').nth(2).unwrap().parse().unwrap();
        let outside: u64 = line
            .split('(')
            .nth(1)
            .map_or(0, |r| r.split(' ').next().unwrap().parse().unwrap());
        read - outside
    };
    assert_eq!(judged(&windowed), judged(&windowed_disk));
    assert!(judged(&windowed) > 0 && judged(&windowed) * 4 < judged(&from_s3));

    // Mixed: one region from S3, the other from disk, in one hunt: the whole again.
    let eu_disk = trail.root.join("AWSLogs").join(ORG);
    let mut mixed_inputs: Vec<String> = Vec::new();
    for account in std::fs::read_dir(&eu_disk).unwrap() {
        let account = account.unwrap().file_name().to_string_lossy().into_owned();
        mixed_inputs.push(format!(
            "s3://{BUCKET}/AWSLogs/{ORG}/{account}/CloudTrail/us-east-1/"
        ));
        let eu = eu_disk.join(&account).join("CloudTrail/eu-west-1");
        if eu.exists() {
            mixed_inputs.push(eu.to_string_lossy().into_owned());
        }
    }
    let refs: Vec<&str> = mixed_inputs.iter().map(String::as_str).collect();
    let mixed = hunt(&refs, &s3);
    // In another order: event rules report as events come, so compare them sorted.
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    same(
        &sorted(findings(&mixed)),
        &sorted(on_disk),
        "mixed S3 and disk vs disk",
    );
}

#[test]
fn a_throttled_get_is_retried_and_progress_lines_are_printed() {
    let trail = trail();
    let moto = MotoServer::start();
    upload(&moto, &trail);
    let proxy = FaultProxy::start(moto.port(), 11);
    proxy.set_plan(Plan::pass().with("S3.GetObject", Fault::Throttle, 0.2));
    let endpoint = proxy.endpoint();
    let prefix = format!("s3://{BUCKET}/AWSLogs/{ORG}/{ACCOUNT_A}/");
    let o = hunt(
        &[&prefix],
        &[
            "--s3-endpoint-url",
            &endpoint,
            "--progress",
            "lines",
            "--progress-every",
            "0.2",
        ],
    );
    let throttled = proxy.injected_on(Fault::Throttle, "S3.GetObject");
    let objects = trail
        .keys
        .iter()
        .filter(|k| k.contains(&format!("/{ACCOUNT_A}/")))
        .count() as u64;
    assert!(throttled > 10, "{}\n{}", proxy.summary(), text(&o));
    // Every object was read in the end, none set aside.
    assert_eq!(proxy.passed("S3.GetObject"), objects, "{}", proxy.summary());
    assert!(
        summary_line(&o, "bad records").starts_with("bad records: 0"),
        "{}",
        text(&o)
    );
    assert_eq!(
        summary_line(&o, "files read"),
        format!("files read: {objects}")
    );
    let got = findings(&o);
    proxy.clear();
    let local = trail.root.join("AWSLogs").join(ORG).join(ACCOUNT_A);
    same(
        &got,
        &findings(&hunt(&[local.to_str().unwrap()], &[])),
        "throttled S3 vs disk",
    );
    // Progress lines while the backoff held the hunt up.
    let stderr = String::from_utf8_lossy(&o.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("progress: "))
        .unwrap_or_else(|| panic!("no progress line: {}", text(&o)));
    assert!(
        line.contains(&format!("/{objects} objects"))
            && line.contains(" events/s, ")
            && line.contains(" findings, ETA "),
        "{line}"
    );
}

#[test]
fn a_missing_bucket_stops_the_hunt_naming_the_bucket_and_bad_options_name_the_option() {
    let moto = MotoServer::start();
    let o = hunt(
        &["s3://no-such-trail-bucket/AWSLogs/"],
        &["--s3-endpoint-url", &moto.endpoint()],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("s3://no-such-trail-bucket/AWSLogs/: cannot list: NoSuchBucket"),
        "{}",
        text(&o)
    );
    // Bad options name the option.
    let o = hunt(&["s3://b/"], &["--since", "tomorrow"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--since: \"tomorrow\""),
        "{}",
        text(&o)
    );
    let o = hunt(&["s3://b/"], &["--progress-every", "NaN"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--progress-every"),
        "{}",
        text(&o)
    );
    let o = hunt(&["s3://b/"], &["--accounts", "1234"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--accounts"),
        "{}",
        text(&o)
    );
}

#[test]
fn the_shared_recordings_give_the_same_findings_from_a_bucket_as_from_disk() {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    let dirs = [
        "maheribra-attack-chain-lab",
        "panther-aws-cloudtrail-rule-tests",
        "stratus-detonation-logs",
    ];
    let moto = MotoServer::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut uploaded = 0;
    rt.block_on(async {
        let conf = aws_sdk_s3::config::Builder::from(&moto.sdk_config().await)
            .force_path_style(true)
            .build();
        let s3 = aws_sdk_s3::Client::from_conf(conf);
        s3.create_bucket().bucket(BUCKET).send().await.unwrap();
        for d in dirs {
            for f in files_under(&data.join(d)) {
                let key = format!("recordings/{}", f.strip_prefix(&data).unwrap().display());
                s3.put_object()
                    .bucket(BUCKET)
                    .key(&key)
                    .body(ByteStream::from(std::fs::read(&f).unwrap()))
                    .send()
                    .await
                    .unwrap();
                uploaded += 1;
            }
        }
    });
    let endpoint = moto.endpoint();
    let from_s3 = hunt(
        &[&format!("s3://{BUCKET}/recordings/")],
        &["--s3-endpoint-url", &endpoint],
    );
    let local: Vec<String> = dirs
        .iter()
        .map(|d| data.join(d).to_string_lossy().into_owned())
        .collect();
    let refs: Vec<&str> = local.iter().map(String::as_str).collect();
    let from_disk = hunt(&refs, &[]);
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let want = sorted(findings(&from_disk));
    assert!(!want.is_empty(), "the recordings give findings");
    same(&sorted(findings(&from_s3)), &want, "recordings, S3 vs disk");
    assert_eq!(
        summary_line(&from_s3, "files read"),
        format!("files read: {uploaded}")
    );
    for line in ["events read", "formats", "bad records"] {
        assert_eq!(summary_line(&from_s3, line), summary_line(&from_disk, line));
    }
}
