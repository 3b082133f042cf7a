//! `credwatch run` against a real local Kinesis (moto): findings across shards, dead letters,
//! kill -9 and restart, SIGTERM.
//!
//! Each test starts its own moto server and its own `credwatch run` child, killed on every path
//! (the guard kills it on drop). Waits are bounded; a timeout panics with what was awaited, what
//! was seen and the tail of credwatch's log.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use credwatch::decode::cloudwatch_envelope::encode_envelope;
use credwatch::decode::gzip::gunzip_capped;
use serde_json::{json, Value};
use support::moto::MotoServer;

const ACCT: &str = "111122223333";
const REGION: &str = "us-east-1";
const LOG_GROUP: &str = "/aws/cloudtrail/credwatch";
const RULE: &str = "session_token_reuse";
/// How long findings may take to arrive once their records are in the stream.
const FINDINGS_TIMEOUT: Duration = Duration::from_secs(60);
/// After the expected findings arrived: how long to keep watching for a duplicate.
const GRACE: Duration = Duration::from_secs(3);

// ---- events --------------------------------------------------------------------------------

fn now_secs() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(now.as_secs()).expect("seconds fit i64")
}

fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(now.as_millis()).expect("milliseconds fit i64")
}

/// One EC2 instance-profile session: a home event from its instance's address and a call from
/// an attacker's address a minute later, both with the same credential.
struct Session {
    key: String,
    instance: String,
    home_ip: String,
    evil_ip: String,
    home_id: String,
    second_id: String,
    /// Event time of the home event (epoch seconds).
    t: i64,
}

impl Session {
    /// Session `n` of the test `tag`; event times a few minutes ago.
    fn new(tag: &str, n: usize) -> Session {
        Session {
            key: format!("ASIA{:08}{n:08}", tag_number(tag) % 100_000_000),
            instance: format!("i-0{:08x}{n:08x}", tag_number(tag) as u32),
            home_ip: format!("54.10.{}.{}", n / 200, n % 200 + 1),
            evil_ip: format!("203.0.113.{}", n % 200 + 1),
            home_id: format!("{tag}-{n:03}-home"),
            second_id: format!("{tag}-{n:03}-second"),
            t: now_secs() - 600,
        }
    }

    /// `role-name/instance-id`, as findings name it.
    fn name(&self) -> String {
        format!("app-role/{}", self.instance)
    }

    fn event(&self, id: &str, ip: &str, t: i64) -> String {
        let time = credwatch::event::format_time;
        json!({
            "eventVersion": "1.08",
            "eventID": id,
            "eventTime": time(t),
            "eventName": "DescribeInstances",
            "eventSource": "ec2.amazonaws.com",
            "eventType": "AwsApiCall",
            "awsRegion": REGION,
            "sourceIPAddress": ip,
            "userAgent": "aws-cli/2.15",
            "recipientAccountId": ACCT,
            "userIdentity": {
                "type": "AssumedRole",
                "principalId": format!("AROAEXAMPLE:{}", self.instance),
                "arn": format!("arn:aws:sts::{ACCT}:assumed-role/app-role/{}", self.instance),
                "accountId": ACCT,
                "accessKeyId": self.key,
                "sessionContext": {
                    "sessionIssuer": {
                        "type": "Role",
                        "arn": format!("arn:aws:iam::{ACCT}:role/app-role"),
                        "userName": "app-role"
                    },
                    "attributes": {"creationDate": time(self.t - 300), "mfaAuthenticated": "false"},
                    "ec2RoleDelivery": "2.0"
                }
            }
        })
        .to_string()
    }

    /// The call from the instance: the session's home.
    fn home(&self) -> String {
        self.event(&self.home_id, &self.home_ip, self.t)
    }

    /// The call from elsewhere, a minute later: the second origin.
    fn second(&self) -> String {
        self.event(&self.second_id, &self.evil_ip, self.t + 60)
    }
}

/// A number for `tag` (FNV-1a), so that sessions of different tags never share a key or an
/// instance.
fn tag_number(tag: &str) -> u64 {
    tag.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn sessions(tag: &str, n: usize) -> Vec<Session> {
    (0..n).map(|i| Session::new(tag, i)).collect()
}

/// A gzip'd CloudWatch Logs DATA_MESSAGE envelope holding `messages`, as a Kinesis record.
fn envelope(log_stream: &str, messages: &[String]) -> Vec<u8> {
    let ts = now_ms();
    let events: Vec<(i64, &str)> = messages.iter().map(|m| (ts, m.as_str())).collect();
    encode_envelope(ACCT, LOG_GROUP, log_stream, "credwatch", &events)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip into memory");
    e.finish().expect("gzip into memory")
}

/// Standard base64 with padding (the dead-letter file's `data_base64`).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---- the credwatch run child ---------------------------------------------------------------

/// The files one consumer (and its restarts) shares.
struct State {
    dir: tempfile::TempDir,
    findings: PathBuf,
    dead_letter: PathBuf,
    checkpoint_dir: PathBuf,
}

impl State {
    fn new() -> State {
        let dir = tempfile::tempdir().expect("temp dir for credwatch run");
        State {
            findings: dir.path().join("findings.jsonl"),
            dead_letter: dir.path().join("dead-letter.jsonl"),
            checkpoint_dir: dir.path().join("checkpoints"),
            dir,
        }
    }

    fn checkpoint_file(&self) -> PathBuf {
        self.checkpoint_dir.join("checkpoint.json")
    }

    /// The checkpoint, if one was written.
    fn checkpoint(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.checkpoint_file()).ok()?;
        Some(serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("checkpoint.json is not JSON ({e}): {text}");
        }))
    }

    fn findings(&self) -> Vec<Value> {
        read_json_lines(&self.findings)
    }

    fn dead_letters(&self) -> Vec<Value> {
        read_json_lines(&self.dead_letter)
    }
}

/// The complete lines of a JSON-lines file (none when it does not exist yet); a line still being
/// written (no newline yet) is left for the next read. A complete line that is not JSON fails.
fn read_json_lines(path: &Path) -> Vec<Value> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    };
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| {
                panic!("{}: a line is not JSON ({e}): {line:?}", path.display())
            })
        })
        .collect()
}

/// A `credwatch run` child, killed (SIGKILL) on drop unless it already exited.
struct Run {
    child: Child,
    log: PathBuf,
}

impl Run {
    /// Starts `credwatch run` on `stream` at `endpoint`, with `state`'s files. `metrics_addr`
    /// defaults to `127.0.0.1:0`. `env` adds or overrides environment variables.
    fn start(
        endpoint: &str,
        stream: &str,
        state: &State,
        metrics_addr: Option<&str>,
        env: &[(&str, &str)],
    ) -> Run {
        // One log per start, kept beside the state.
        let mut n = 0;
        let log = loop {
            n += 1;
            let p = state.dir.path().join(format!("credwatch-run-{n}.log"));
            if !p.exists() {
                break p;
            }
        };
        let log_file = std::fs::File::create(&log).expect("create credwatch log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_credwatch"));
        cmd.arg("run")
            .args(["--stream", stream])
            .args(["--region", REGION])
            .args(["--endpoint-url", endpoint])
            .arg("--findings-out")
            .arg(&state.findings)
            .arg("--dead-letter-out")
            .arg(&state.dead_letter)
            .arg("--checkpoint-dir")
            .arg(&state.checkpoint_dir)
            .args(["--metrics-addr", metrics_addr.unwrap_or("127.0.0.1:0")]);
        // Nothing from the test's environment configures the child by accident.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CREDWATCH_") || k.starts_with("AWS_") {
                cmd.env_remove(&*k);
            }
        }
        cmd.env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", REGION)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("CREDWATCH_LOG", "info")
            .env("CREDWATCH_KINESIS__POLL_INTERVAL_MS", "200")
            .env("CREDWATCH_CHECKPOINT__INTERVAL_SECS", "1")
            .env("CREDWATCH_KINESIS__SHARD_DISCOVERY_INTERVAL_SECS", "2");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone credwatch log handle"))
            .stderr(log_file)
            .spawn()
            .expect("spawn credwatch run");
        Run { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last 12,000 characters of this run's log.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut start = log.len().saturating_sub(12_000);
        while !log.is_char_boundary(start) {
            start += 1;
        }
        log[start..].to_string()
    }

    /// Panics (with the log) if the child has exited.
    fn assert_running(&mut self, while_waiting_for: &str) {
        if let Some(status) = self.child.try_wait().expect("try_wait credwatch") {
            panic!(
                "credwatch run exited ({status}) while waiting for {while_waiting_for}\n\
                 --- credwatch log ---\n{}",
                self.log_tail()
            );
        }
    }

    /// SIGKILL, and reap.
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM.
    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(
            status.success(),
            "kill -TERM {} failed: {status}",
            self.pid()
        );
    }

    /// Waits up to `timeout` for the child to exit.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait credwatch") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls `check` every 100 ms until it gives `Ok`, for at most `timeout`; panics with what
    /// was awaited, the last `Err` (what was seen) and the log if it times out or the child
    /// exits.
    async fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = match check() {
                Ok(v) => return v,
                Err(seen) => seen,
            };
            self.assert_running(what);
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; last seen: {seen}\n\
                     --- credwatch log ---\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every session of `expected` has a `session_token_reuse` finding, then
    /// watches for [`GRACE`] more; returns every finding then in the file.
    async fn wait_for_findings(&mut self, state: &State, expected: &[&Session]) -> Vec<Value> {
        let want: BTreeSet<String> = expected.iter().map(|s| s.name()).collect();
        self.wait_for(
            &format!("a {RULE} finding for each of {} sessions", want.len()),
            FINDINGS_TIMEOUT,
            || {
                let got = reuse_sessions(&state.findings());
                let missing: Vec<&String> = want.difference(&got).collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{} missing: {missing:?}", missing.len()))
                }
            },
        )
        .await;
        tokio::time::sleep(GRACE).await;
        self.assert_running("duplicate findings");
        state.findings()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The sessions named by `session_token_reuse` findings.
fn reuse_sessions(findings: &[Value]) -> BTreeSet<String> {
    findings
        .iter()
        .filter(|f| f["rule"] == RULE)
        .filter_map(|f| f["session"].as_str().map(str::to_string))
        .collect()
}

/// Every finding is a `session_token_reuse` of one of `sessions`, each session has exactly one,
/// home event first, and no `id` appears twice.
fn assert_one_finding_per_session(findings: &[Value], sessions: &[&Session]) {
    let all = || {
        findings
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut ids = BTreeMap::new();
    for f in findings {
        let id = f["id"]
            .as_str()
            .unwrap_or_else(|| panic!("finding without id: {f}"));
        *ids.entry(id.to_string()).or_insert(0) += 1;
    }
    let repeated: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "finding ids written more than once: {repeated:?}\n{}",
        all()
    );

    let by_name: BTreeMap<String, &Session> = sessions.iter().map(|s| (s.name(), *s)).collect();
    let mut per_session: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for f in findings {
        assert_eq!(f["rule"], RULE, "unexpected finding: {f}");
        let name = f["session"]
            .as_str()
            .unwrap_or_else(|| panic!("finding without session: {f}"));
        assert!(
            by_name.contains_key(name),
            "finding for an unknown session: {f}"
        );
        per_session.entry(name).or_default().push(f);
    }
    for s in sessions {
        let name = s.name();
        let got = per_session
            .get(name.as_str())
            .map_or(&[][..], Vec::as_slice);
        assert_eq!(
            got.len(),
            1,
            "session {name}: want 1 finding, got {}:\n{}",
            got.len(),
            all()
        );
        let f = got[0];
        assert_eq!(
            f["event_ids"],
            json!([s.home_id, s.second_id]),
            "session {name}: {f}"
        );
        assert_eq!(f["access_key_id"], s.key.as_str(), "session {name}: {f}");
        assert_eq!(f["severity"], "high", "session {name}: {f}");
        let events = f["events"]
            .as_array()
            .unwrap_or_else(|| panic!("no events: {f}"));
        assert_eq!(events.len(), 2, "session {name}: {f}");
        assert_eq!(events[0]["role"], "first", "session {name}: {f}");
        assert_eq!(
            events[0]["event_id"],
            s.home_id.as_str(),
            "session {name}: {f}"
        );
        assert_eq!(
            events[0]["origin"],
            s.home_ip.as_str(),
            "session {name}: {f}"
        );
        assert_eq!(events[1]["role"], "second", "session {name}: {f}");
        assert_eq!(
            events[1]["event_id"],
            s.second_id.as_str(),
            "session {name}: {f}"
        );
        assert_eq!(
            events[1]["origin"],
            s.evil_ip.as_str(),
            "session {name}: {f}"
        );
    }
}

/// Shard ids of `stream`, in order.
async fn shard_ids(moto: &MotoServer, stream: &str) -> Vec<String> {
    moto.kinesis()
        .await
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .unwrap_or_else(|e| panic!("ListShards {stream}: {e:?}"))
        .shards()
        .iter()
        .map(|s| s.shard_id().to_string())
        .collect()
}

/// The checkpoint's sequence number for `shard`, if it has one.
fn checkpointed_sequence(checkpoint: &Value, shard: &str) -> Option<String> {
    match &checkpoint["shards"][shard]["sequence_number"] {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Sequence numbers are decimal strings without leading zeros: compare by length, then text.
fn seq_at_least(have: &str, want: &str) -> bool {
    (have.len(), have) >= (want.len(), want)
}

/// The last sequence number of each shard that holds records.
async fn last_sequences(moto: &MotoServer, stream: &str) -> BTreeMap<String, String> {
    let mut last = BTreeMap::new();
    for (shard, seq, _) in moto.read_all_records(stream).await {
        let e = last.entry(shard).or_insert_with(String::new);
        if e.is_empty() || !seq_at_least(e, &seq) {
            *e = seq;
        }
    }
    last
}

/// Ok when the checkpoint covers every record in `last` (shard -> last sequence number).
fn checkpoint_covers(state: &State, last: &BTreeMap<String, String>) -> Result<(), String> {
    let Some(cp) = state.checkpoint() else {
        return Err("no checkpoint.json yet".into());
    };
    for (shard, want) in last {
        match checkpointed_sequence(&cp, shard) {
            Some(have) if seq_at_least(&have, want) => {}
            have => return Err(format!("{shard} at {have:?}, want {want}: {cp}")),
        }
    }
    Ok(())
}

/// A port that was free on 127.0.0.1 a moment ago.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// `GET path` on 127.0.0.1:port: (status, body), or None if nothing answers.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    conn.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Some((status, body))
}

// ---- tests ---------------------------------------------------------------------------------

#[tokio::test]
async fn put_log_events_give_a_finding_for_a_session_whose_origins_arrive_on_different_shards() {
    let moto = MotoServer::start();
    let stream = "cloudtrail";
    moto.create_stream(stream, 4).await;
    moto.create_log_group_with_subscription(LOG_GROUP, stream)
        .await;

    // One PutLogEvents call per event, each on its own log stream: moto gives every call its own
    // record under a random partition key, so each pair crosses shards with probability 3/4.
    // Odd sessions put the second origin first: the home is the earlier event, whatever the
    // order of arrival.
    let sessions = sessions("cross", 12);
    for (n, s) in sessions.iter().enumerate() {
        let home = (format!("{ACCT}_CloudTrail_{REGION}_home_{n}"), s.home());
        let second = (format!("{ACCT}_CloudTrail_{REGION}_second_{n}"), s.second());
        let order = if n % 2 == 0 {
            [home, second]
        } else {
            [second, home]
        };
        for (log_stream, message) in order {
            moto.put_log_events(LOG_GROUP, &log_stream, &[(now_ms(), message)])
                .await;
        }
    }

    // Where did each event land?
    let mut shard_of: BTreeMap<String, String> = BTreeMap::new();
    for (shard, seq, data) in moto.read_all_records(stream).await {
        let json = gunzip_capped(&data, 1 << 20)
            .unwrap_or_else(|(k, why)| panic!("record {shard}@{seq}: {k:?}: {why}"));
        let envelope: Value = serde_json::from_slice(&json).expect("envelope is JSON");
        for e in envelope["logEvents"].as_array().expect("logEvents") {
            let event: Value =
                serde_json::from_str(e["message"].as_str().expect("message")).expect("event");
            let id = event["eventID"].as_str().expect("eventID").to_string();
            shard_of.insert(id, shard.clone());
        }
    }
    assert_eq!(shard_of.len(), 2 * sessions.len(), "{shard_of:?}");
    let crossing = sessions
        .iter()
        .filter(|s| shard_of[&s.home_id] != shard_of[&s.second_id])
        .count();
    assert!(
        crossing > 0,
        "no session's events crossed shards: {shard_of:?}"
    );

    let state = State::new();
    let mut run = Run::start(&moto.endpoint(), stream, &state, None, &[]);
    let expected: Vec<&Session> = sessions.iter().collect();
    let findings = run.wait_for_findings(&state, &expected).await;
    assert_one_finding_per_session(&findings, &expected);

    // The ids are the stable ones `hunt` gives for the same events.
    let events_file = state.dir.path().join("events.jsonl");
    let lines: Vec<String> = sessions
        .iter()
        .flat_map(|s| [s.home(), s.second()])
        .collect();
    std::fs::write(&events_file, lines.join("\n") + "\n").expect("write events.jsonl");
    let hunt = Command::new(env!("CARGO_BIN_EXE_credwatch"))
        .args(["hunt", "--output", "json"])
        .arg(&events_file)
        .env_remove("CREDWATCH_CONFIG")
        .output()
        .expect("credwatch hunt runs");
    assert!(
        hunt.status.success(),
        "hunt: {}",
        String::from_utf8_lossy(&hunt.stderr)
    );
    let hunt_ids: BTreeSet<String> = String::from_utf8_lossy(&hunt.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("hunt JSON line")["id"].to_string())
        .collect();
    let run_ids: BTreeSet<String> = findings.iter().map(|f| f["id"].to_string()).collect();
    assert_eq!(
        run_ids, hunt_ids,
        "run and hunt give different ids for the same events"
    );
}

#[tokio::test]
async fn garbage_records_are_dead_lettered_and_the_consumer_keeps_going() {
    let moto = MotoServer::start();
    let stream = "raw";
    moto.create_stream(stream, 2).await;

    let s = Session::new("garbage", 0);
    let full_gzip = gzip(b"{\"messageType\":\"DATA_MESSAGE\"}");
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        ("not_gzip", b"definitely not gzip".to_vec()),
        ("truncated_gzip", full_gzip[..full_gzip.len() / 2].to_vec()),
        ("not_json", gzip(b"{ this is not json")),
        (
            "unknown_message_type",
            gzip(br#"{"messageType":"WHAT","owner":"111122223333","logGroup":"g","logStream":"s","subscriptionFilters":[],"logEvents":[]}"#),
        ),
    ];
    // Everything under one partition key: one shard, garbage first, so that the valid pair can
    // only be read by moving past every bad record.
    let mut records: Vec<(&str, Vec<u8>)> = garbage
        .iter()
        .map(|(_, data)| ("same-key", data.clone()))
        .collect();
    records.push(("same-key", envelope("home", &[s.home()])));
    records.push(("same-key", envelope("elsewhere", &[s.second()])));
    let positions = moto.put_records(stream, &records).await;
    let shards: BTreeSet<&str> = positions.iter().map(|(shard, _)| shard.as_str()).collect();
    assert_eq!(
        shards.len(),
        1,
        "one partition key, one shard: {positions:?}"
    );
    let mut want: Vec<(String, String, &str, Vec<u8>)> = garbage
        .iter()
        .zip(&positions)
        .map(|((kind, data), (shard, seq))| (shard.clone(), seq.clone(), *kind, data.clone()))
        .collect();
    // And garbage on the other shard, with nothing after it. Keys are tried until one lands
    // there; the misses land after the valid pair: dead letters too.
    let stray = b"\x00\x01 nope".to_vec();
    for attempt in 0.. {
        assert!(
            attempt < 50,
            "every partition key lands on {}",
            positions[0].0
        );
        let key = format!("other-key-{attempt}");
        let (shard, seq) = moto
            .put_records(stream, &[(key.as_str(), stray.clone())])
            .await
            .remove(0);
        let done = shard != positions[0].0;
        want.push((shard, seq, "not_gzip", stray.clone()));
        if done {
            break;
        }
    }

    let state = State::new();
    let mut run = Run::start(&moto.endpoint(), stream, &state, None, &[]);
    let findings = run.wait_for_findings(&state, &[&s]).await;
    assert_one_finding_per_session(&findings, &[&s]);

    // Every bad record, and only those, is in the dead-letter file.
    let want_count = want.len();
    let dead = run
        .wait_for(
            "every bad record in the dead-letter file",
            FINDINGS_TIMEOUT,
            || {
                let dead = state.dead_letters();
                if dead.len() >= want_count {
                    Ok(dead)
                } else {
                    Err(format!("{} of {want_count}: {dead:?}", dead.len()))
                }
            },
        )
        .await;
    assert_eq!(dead.len(), want_count, "{dead:#?}");
    for (shard, seq, kind, data) in &want {
        let line = dead
            .iter()
            .find(|d| d["shard_id"] == shard.as_str() && d["sequence_number"] == seq.as_str())
            .unwrap_or_else(|| panic!("no dead letter for {shard}@{seq} ({kind}): {dead:#?}"));
        assert_eq!(line["kind"], *kind, "{shard}@{seq}: {line}");
        let position = line["position"].as_str().unwrap_or_default();
        assert_eq!(position, format!("{shard}@{seq}"), "{line}");
        assert_eq!(line["data_base64"], base64(data), "{shard}@{seq}: {line}");
        assert!(line["detail"].is_string(), "{line}");
    }
    // The consumer is still up.
    run.assert_running("the end of the test");
}

#[tokio::test]
async fn kill_9_then_restart_loses_nothing_keeps_locks_and_repeats_no_finding() {
    let moto = MotoServer::start();
    let stream = "cloudtrail";
    moto.create_stream(stream, 2).await;
    moto.create_log_group_with_subscription(LOG_GROUP, stream)
        .await;
    let sessions = sessions("kill", 25);
    let (early, late, mid) = (&sessions[..10], &sessions[10..20], &sessions[20..]);

    // Phase 1: homes of sessions 0..20 (five per PutLogEvents call), second origins of 0..10.
    for (i, chunk) in sessions[..20].chunks(5).enumerate() {
        let ts = now_ms();
        let events: Vec<(i64, String)> = chunk.iter().map(|s| (ts, s.home())).collect();
        moto.put_log_events(LOG_GROUP, &format!("homes-{i}"), &events)
            .await;
    }
    for (i, chunk) in early.chunks(5).enumerate() {
        let ts = now_ms();
        let events: Vec<(i64, String)> = chunk.iter().map(|s| (ts, s.second())).collect();
        moto.put_log_events(LOG_GROUP, &format!("seconds-{i}"), &events)
            .await;
    }
    let phase1 = last_sequences(&moto, stream).await;

    let state = State::new();
    let slow_checkpoints = [("CREDWATCH_CHECKPOINT__INTERVAL_SECS", "3")];
    let mut run = Run::start(&moto.endpoint(), stream, &state, None, &slow_checkpoints);
    let early_refs: Vec<&Session> = early.iter().collect();
    let findings = run.wait_for_findings(&state, &early_refs).await;
    assert_one_finding_per_session(&findings, &early_refs);
    // The homes of 10..20 are in a checkpoint: after the restart only the snapshot knows them.
    run.wait_for("a checkpoint covering phase 1", FINDINGS_TIMEOUT, || {
        checkpoint_covers(&state, &phase1)
    })
    .await;

    // Mid-stream: complete pairs for 20..25, one record each, put right after a checkpoint
    // was written; kill -9 as soon as one of their findings is out, most likely before the next
    // checkpoint (3 s later) covers it: the restart then reads that record again.
    let written = std::fs::read(state.checkpoint_file()).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read(state.checkpoint_file()).unwrap_or_default() == written
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (i, s) in mid.iter().enumerate() {
        let ts = now_ms();
        moto.put_log_events(
            LOG_GROUP,
            &format!("pairs-{i}"),
            &[(ts, s.home()), (ts, s.second())],
        )
        .await;
    }
    let mid_names: BTreeSet<String> = mid.iter().map(|s| s.name()).collect();
    run.wait_for(
        "a first finding of sessions 20..25",
        FINDINGS_TIMEOUT,
        || {
            let got = reuse_sessions(&state.findings());
            if got.intersection(&mid_names).next().is_some() {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await;
    run.kill9();
    let before_kill = state.findings().len();
    drop(run);
    let replayed = checkpoint_covers(&state, &last_sequences(&moto, stream).await).is_err();

    // Phase 2: the second origins of 10..20, whose homes were read before the kill.
    for (i, chunk) in late.chunks(5).enumerate() {
        let ts = now_ms();
        let events: Vec<(i64, String)> = chunk.iter().map(|s| (ts, s.second())).collect();
        moto.put_log_events(LOG_GROUP, &format!("late-seconds-{i}"), &events)
            .await;
    }
    let mut run = Run::start(&moto.endpoint(), stream, &state, None, &[]);
    let all: Vec<&Session> = sessions.iter().collect();
    let findings = run.wait_for_findings(&state, &all).await;
    eprintln!(
        "{before_kill} findings before the kill, {} after the restart; records read again \
         after the restart: {replayed}",
        findings.len()
    );
    assert_one_finding_per_session(&findings, &all);
}

#[tokio::test]
async fn sigterm_checkpoints_and_exits_0() {
    let moto = MotoServer::start();
    let stream = "cloudtrail";
    moto.create_stream(stream, 3).await;
    let shards = shard_ids(&moto, stream).await;
    assert_eq!(shards.len(), 3, "{shards:?}");

    let s = Session::new("sigterm", 0);
    moto.put_records(
        stream,
        &[
            ("key-a", envelope("a", &[s.home()])),
            ("key-b", envelope("b", &[s.second()])),
        ],
    )
    .await;
    let last = last_sequences(&moto, stream).await;

    let state = State::new();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut run = Run::start(&moto.endpoint(), stream, &state, Some(&addr), &[]);
    run.wait_for(
        "GET /readyz to answer 200",
        Duration::from_secs(30),
        || match http_get(port, "/readyz") {
            Some((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    let live = http_get(port, "/livez");
    assert!(matches!(live, Some((200, _))), "/livez: {live:?}");
    let metrics = http_get(port, "/metrics");
    assert!(
        matches!(&metrics, Some((200, body)) if body.contains("# TYPE ")),
        "/metrics: {metrics:?}"
    );
    let findings = run.wait_for_findings(&state, &[&s]).await;
    assert_one_finding_per_session(&findings, &[&s]);

    run.sigterm();
    let sent = Instant::now();
    let status = run.wait_exit(Duration::from_secs(10));
    let log = run.log_tail();
    let status = status.unwrap_or_else(|| {
        panic!("credwatch run still running 10 s after SIGTERM\n--- credwatch log ---\n{log}")
    });
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n--- credwatch log ---\n{log}"
    );
    eprintln!("exited {:?} after SIGTERM", sent.elapsed());

    let cp = state.checkpoint().unwrap_or_else(|| {
        panic!("no checkpoint.json after SIGTERM\n--- credwatch log ---\n{log}")
    });
    for shard in &shards {
        let entry = &cp["shards"][shard.as_str()];
        assert!(
            entry.is_object(),
            "checkpoint has no entry for {shard}: {cp}"
        );
        assert_eq!(entry["finished"], false, "{shard}: {cp}");
    }
    for (shard, want) in &last {
        assert_eq!(
            checkpointed_sequence(&cp, shard).as_deref(),
            Some(want.as_str()),
            "{shard}: the final checkpoint should cover its last record: {cp}"
        );
    }
}
