//! The `credwatch run` harness shared by `run_kinesis.rs`, `run_reshard.rs` and (in part)
//! `prometheus.rs`: CloudTrail sessions, CloudWatch Logs envelopes, the consumer's state files and
//! the `credwatch run` child, killed on drop.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use super::moto::MotoServer;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use credwatch::decode::cloudwatch_envelope::encode_envelope;
use serde_json::{json, Value};

pub const ACCT: &str = "111122223333";
pub const REGION: &str = "us-east-1";
pub const LOG_GROUP: &str = "/aws/cloudtrail/credwatch";
pub const RULE: &str = "session_token_reuse";
/// How long findings may take to arrive once their records are in the stream.
pub const FINDINGS_TIMEOUT: Duration = Duration::from_secs(60);
/// After the expected findings arrived: how long to keep watching for a duplicate.
pub const GRACE: Duration = Duration::from_secs(3);

// ---- events --------------------------------------------------------------------------------

pub fn now_secs() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(now.as_secs()).expect("seconds fit i64")
}

pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(now.as_millis()).expect("milliseconds fit i64")
}

/// Where a test's sessions come from: `home` is the first two octets of the instances'
/// addresses, `evil` the first three of the attackers'. Both in AWS's EC2 ranges (the attacker
/// is another account's instance), so that these tests see `session_token_reuse` alone (an
/// address outside AWS would also be `workload_credentials_outside_aws`).
#[derive(Clone, Copy)]
pub struct Nets {
    pub home: &'static str,
    pub evil: &'static str,
}

/// One EC2 instance-profile session: a home event from its instance's address and a call from
/// an attacker's address a minute later, both with the same credential.
pub struct Session {
    pub key: String,
    pub instance: String,
    pub home_ip: String,
    pub evil_ip: String,
    pub home_id: String,
    pub second_id: String,
    /// Event time of the home event (epoch seconds).
    pub t: i64,
}

impl Session {
    /// Session `n` of the test `tag`, its home in `nets.home` and its second origin in
    /// `nets.evil`; event times a few minutes ago.
    pub fn new(tag: &str, n: usize, nets: Nets) -> Session {
        Session {
            key: format!("ASIA{:08}{n:08}", tag_number(tag) % 100_000_000),
            instance: format!("i-0{:08x}{n:08x}", tag_number(tag) as u32),
            home_ip: format!("{}.{}.{}", nets.home, n / 200, n % 200 + 1),
            evil_ip: format!("{}.{}", nets.evil, n % 200 + 1),
            home_id: format!("{tag}-{n:03}-home"),
            second_id: format!("{tag}-{n:03}-second"),
            t: now_secs() - 600,
        }
    }

    /// `role-name/instance-id`, as findings name it.
    pub fn name(&self) -> String {
        format!("app-role/{}", self.instance)
    }

    pub fn event(&self, id: &str, ip: &str, t: i64) -> String {
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
    pub fn home(&self) -> String {
        self.event(&self.home_id, &self.home_ip, self.t)
    }

    /// The call from elsewhere, a minute later: the second origin.
    pub fn second(&self) -> String {
        self.event(&self.second_id, &self.evil_ip, self.t + 60)
    }
}

/// A number for `tag` (FNV-1a), so that sessions of different tags never share a key or an
/// instance.
pub fn tag_number(tag: &str) -> u64 {
    tag.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub fn sessions(tag: &str, n: usize, nets: Nets) -> Vec<Session> {
    (0..n).map(|i| Session::new(tag, i, nets)).collect()
}

/// A gzip'd CloudWatch Logs DATA_MESSAGE envelope holding `messages`, as a Kinesis record.
pub fn envelope(log_stream: &str, messages: &[String]) -> Vec<u8> {
    let ts = now_ms();
    let events: Vec<(i64, &str)> = messages.iter().map(|m| (ts, m.as_str())).collect();
    encode_envelope(ACCT, LOG_GROUP, log_stream, "credwatch", &events)
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip into memory");
    e.finish().expect("gzip into memory")
}

// ---- the credwatch run child ---------------------------------------------------------------

/// The files one consumer (and its restarts) shares.
pub struct State {
    pub dir: tempfile::TempDir,
    pub findings: PathBuf,
    pub dead_letter: PathBuf,
    pub checkpoint_dir: PathBuf,
}

impl State {
    pub fn new() -> State {
        let dir = tempfile::tempdir().expect("temp dir for credwatch run");
        State {
            findings: dir.path().join("findings.jsonl"),
            dead_letter: dir.path().join("dead-letter.jsonl"),
            checkpoint_dir: dir.path().join("checkpoints"),
            dir,
        }
    }

    pub fn checkpoint_file(&self) -> PathBuf {
        self.checkpoint_dir.join("checkpoint.json")
    }

    /// The checkpoint, if one was written.
    pub fn checkpoint(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.checkpoint_file()).ok()?;
        Some(serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("checkpoint.json is not JSON ({e}): {text}");
        }))
    }

    pub fn findings(&self) -> Vec<Value> {
        read_json_lines(&self.findings)
    }

    pub fn dead_letters(&self) -> Vec<Value> {
        read_json_lines(&self.dead_letter)
    }
}

/// The complete lines of a JSON-lines file (none when it does not exist yet); a line still being
/// written (no newline yet) is left for the next read. A complete line that is not JSON fails.
pub fn read_json_lines(path: &Path) -> Vec<Value> {
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
pub struct Run {
    pub child: Child,
    pub log: PathBuf,
}

impl Run {
    /// Starts `credwatch run` on `stream` at `endpoint`, with `state`'s files. `metrics_addr`
    /// defaults to `127.0.0.1:0`. `env` adds or overrides environment variables.
    pub fn start(
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
        test_env(&mut cmd);
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last 12,000 characters of this run's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Panics (with the log) if the child has exited.
    pub fn assert_running(&mut self, while_waiting_for: &str) {
        if let Some(status) = self.child.try_wait().expect("try_wait credwatch") {
            panic!(
                "credwatch run exited ({status}) while waiting for {while_waiting_for}\n\
                 --- credwatch log ---\n{}",
                self.log_tail()
            );
        }
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
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
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
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
    pub async fn wait_for<T>(
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
    pub async fn wait_for_findings(&mut self, state: &State, expected: &[&Session]) -> Vec<Value> {
        self.await_findings(state, expected).await;
        tokio::time::sleep(GRACE).await;
        self.assert_running("duplicate findings");
        state.findings()
    }

    /// Waits until every session of `expected` has a `session_token_reuse` finding.
    pub async fn await_findings(&mut self, state: &State, expected: &[&Session]) {
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
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The sessions named by `session_token_reuse` findings.
pub fn reuse_sessions(findings: &[Value]) -> BTreeSet<String> {
    findings
        .iter()
        .filter(|f| f["rule"] == RULE)
        .filter_map(|f| f["session"].as_str().map(str::to_string))
        .collect()
}

/// `GET path` on 127.0.0.1:port: (status, body), or None if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
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

/// The last 12,000 characters of the log at `path` (empty if it cannot be read).
pub fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let mut start = log.len().saturating_sub(12_000);
    while !log.is_char_boundary(start) {
        start += 1;
    }
    log[start..].to_string()
}

/// Gives a `credwatch run` child the tests' environment: nothing from the test's own
/// environment configures it by accident, fake credentials, quick polls and checkpoints.
pub fn test_env(cmd: &mut Command) {
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
        .env("CREDWATCH_KINESIS__SHARD_DISCOVERY_INTERVAL_SECS", "2")
        // A test's stream goes quiet once its records are in: settle two seconds later rather
        // than after the default minute of idleness.
        .env("CREDWATCH_DETECTION__IDLE_SECS", "2");
}

// ---- assertions and state shared by the run tests ---------------------------------------

/// Every finding is a `session_token_reuse` of one of `sessions`, each session has exactly one,
/// home event first, and no `id` appears twice.
pub fn assert_one_finding_per_session(findings: &[Value], sessions: &[&Session]) {
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

/// The checkpoint's sequence number for `shard`, if it has one.
pub fn checkpointed_sequence(checkpoint: &Value, shard: &str) -> Option<String> {
    match &checkpoint["shards"][shard]["sequence_number"] {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Sequence numbers are decimal strings without leading zeros: compare by length, then text.
pub fn seq_at_least(have: &str, want: &str) -> bool {
    (have.len(), have) >= (want.len(), want)
}

/// The last sequence number of each shard that holds records.
pub async fn last_sequences(moto: &MotoServer, stream: &str) -> BTreeMap<String, String> {
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
pub fn checkpoint_covers(state: &State, last: &BTreeMap<String, String>) -> Result<(), String> {
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

/// The value of an unlabelled metric in a `/metrics` text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
