//! `credwatch run` across a reshard, against kinesis-mock: moto never ends a closed shard,
//! kinesis-mock does. Each test starts its own kinesis-mock and `credwatch run` child (killed on
//! every path); waits are bounded and a timeout panics with what was seen and credwatch's log.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::types::ShardIteratorType;
use credwatch::decode::cloudwatch_envelope::encode_envelope;
use serde_json::{json, Value};
use support::kinesis_mock::KinesisMock;

const ACCT: &str = "111122223333";
const REGION: &str = "us-east-1";
const LOG_GROUP: &str = "/aws/cloudtrail/credwatch";
const RULE: &str = "session_token_reuse";
const FINDINGS_TIMEOUT: Duration = Duration::from_secs(60);
/// After the expected findings arrived: how long to keep watching for a duplicate.
const GRACE: Duration = Duration::from_secs(3);

// Explicit hash keys, one in each quarter of the key space. A 2-shard stream has
// shard 0 = [0, 2^127) and shard 1 = [2^127, 2^128); splitting a shard in half puts Q1 and Q2
// (Q3 and Q4) on different children; merging shard 0's upper child with shard 1's lower child
// gives [2^126, 2^127 + 2^126), which holds `MIDDLE`.
const Q1: u128 = 1 << 125;
const Q2: u128 = 3 << 125;
const Q3: u128 = 5 << 125;
const Q4: u128 = 7 << 125;
const MIDDLE: u128 = 1 << 127;

// ---- events (as in run_kinesis.rs) ---------------------------------------------------------

fn now_secs() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(now.as_secs()).expect("seconds fit i64")
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
    t: i64,
}

impl Session {
    fn new(tag: &str, n: usize) -> Session {
        Session {
            key: format!("ASIA{:08}{n:08}", tag_number(tag) % 100_000_000),
            instance: format!("i-0{:08x}{n:08x}", tag_number(tag) as u32),
            home_ip: format!("54.20.{}.{}", n / 200, n % 200 + 1),
            evil_ip: format!("198.51.100.{}", n % 200 + 1),
            home_id: format!("{tag}-{n:03}-home"),
            second_id: format!("{tag}-{n:03}-second"),
            t: now_secs() - 600,
        }
    }

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

    fn home(&self) -> String {
        self.event(&self.home_id, &self.home_ip, self.t)
    }

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
fn envelope(messages: &[String]) -> Vec<u8> {
    let ts = now_secs() * 1000;
    let events: Vec<(i64, &str)> = messages.iter().map(|m| (ts, m.as_str())).collect();
    encode_envelope(ACCT, LOG_GROUP, "i-0abc-logs", "credwatch", &events)
}

// ---- the credwatch run child (as in run_kinesis.rs) ----------------------------------------

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

    fn checkpoint(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.checkpoint_dir.join("checkpoint.json")).ok()?;
        Some(serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("checkpoint.json is not JSON ({e}): {text}");
        }))
    }

    fn findings(&self) -> Vec<Value> {
        read_json_lines(&self.findings)
    }
}

/// The complete lines of a JSON-lines file (none when it does not exist yet).
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
    fn start(endpoint: &str, stream: &str, state: &State) -> Run {
        let log = state.dir.path().join("credwatch-run.log");
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
            .args(["--metrics-addr", "127.0.0.1:0"]);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CREDWATCH_") || k.starts_with("AWS_") {
                cmd.env_remove(&*k);
            }
        }
        let child = cmd
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", REGION)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("CREDWATCH_LOG", "info")
            .env("CREDWATCH_KINESIS__POLL_INTERVAL_MS", "200")
            .env("CREDWATCH_CHECKPOINT__INTERVAL_SECS", "1")
            .env("CREDWATCH_KINESIS__SHARD_DISCOVERY_INTERVAL_SECS", "1")
            // Two records per GetRecords call: a parent takes many calls to read, so a child
            // read alongside it would get findings in before the parent's last ones.
            .env("CREDWATCH_KINESIS__MAX_RECORDS_PER_CALL", "2")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone credwatch log handle"))
            .stderr(log_file)
            .spawn()
            .expect("spawn credwatch run");
        Run { child, log }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut start = log.len().saturating_sub(12_000);
        while !log.is_char_boundary(start) {
            start += 1;
        }
        log[start..].to_string()
    }

    fn assert_running(&mut self, while_waiting_for: &str) {
        if let Some(status) = self.child.try_wait().expect("try_wait credwatch") {
            panic!(
                "credwatch run exited ({status}) while waiting for {while_waiting_for}\n\
                 --- credwatch log ---\n{}",
                self.log_tail()
            );
        }
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(
            status.success(),
            "kill -TERM {} failed: {status}",
            self.child.id()
        );
    }

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

    /// Waits until every session of `expected` has a `session_token_reuse` finding.
    async fn wait_for_findings(&mut self, state: &State, expected: &[&Session]) {
        let want: BTreeSet<String> = expected.iter().map(|s| s.name()).collect();
        self.wait_for(
            &format!("a {RULE} finding for each of {} sessions", want.len()),
            FINDINGS_TIMEOUT,
            || {
                let got: BTreeSet<String> = state
                    .findings()
                    .iter()
                    .filter(|f| f["rule"] == RULE)
                    .filter_map(|f| f["session"].as_str().map(str::to_string))
                    .collect();
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
        assert_eq!(
            got[0]["event_ids"],
            json!([s.home_id, s.second_id]),
            "session {name}"
        );
    }
}

/// The position (line number) of the finding of each session in the findings file.
fn line_of(findings: &[Value], s: &Session) -> usize {
    let name = s.name();
    findings
        .iter()
        .position(|f| f["session"] == name.as_str())
        .unwrap_or_else(|| panic!("no finding for {name}"))
}

/// Reads one shard from TRIM_HORIZON until the shard ends (null `NextShardIterator`) or a read
/// comes back empty while the shard is open; returns the records and whether the shard ended.
async fn read_shard(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
    shard_id: &str,
) -> (Vec<Vec<u8>>, bool) {
    let mut iterator = kinesis
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(shard_id)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GetShardIterator {stream}/{shard_id}: {e:?}"))
        .shard_iterator()
        .map(str::to_string);
    let mut records = Vec::new();
    for _ in 0..100 {
        let Some(it) = iterator else {
            return (records, true);
        };
        let out = kinesis
            .get_records()
            .shard_iterator(it)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GetRecords {stream}/{shard_id}: {e:?}"));
        let empty = out.records().is_empty();
        records.extend(out.records().iter().map(|r| r.data().as_ref().to_vec()));
        iterator = out.next_shard_iterator().map(str::to_string);
        if empty && iterator.is_some() {
            return (records, false);
        }
    }
    panic!("{stream}/{shard_id}: more than 100 reads");
}

/// Proves the emulator does what the reshard test relies on: the SDK talks to it, a split and
/// a merge close their parents, a closed parent's records stay readable and its last read ends
/// the shard, and ListShards gives the children with their parents.
#[tokio::test]
async fn kinesis_mock_ends_closed_shards_after_split_and_merge() {
    let mock = KinesisMock::start();
    let kinesis = mock.kinesis().await;
    let stream = "reshard-smoke";
    mock.create_stream(stream, 2).await;
    let shards = mock.list_shards(stream).await;
    assert_eq!(shards.len(), 2, "{shards:?}");
    let (s0, s1) = (
        shards[0].shard_id().to_string(),
        shards[1].shard_id().to_string(),
    );

    let put = mock
        .put_records_at(stream, &[(0, b"a".to_vec()), (u128::MAX, b"b".to_vec())])
        .await;
    assert_eq!(put[0].0, s0, "{put:?}");

    mock.split_shard_in_half(stream, &s0).await;
    let shards = mock.list_shards(stream).await;
    assert_eq!(shards.len(), 4, "{shards:?}");
    let children: Vec<_> = shards
        .iter()
        .filter(|s| s.parent_shard_id() == Some(s0.as_str()))
        .collect();
    assert_eq!(children.len(), 2, "{shards:?}");
    let (records, ended) = read_shard(&kinesis, stream, &s0).await;
    assert_eq!(records, vec![b"a".to_vec()]);
    assert!(ended, "split parent {s0} never ended");
    let (_, ended) = read_shard(&kinesis, stream, &s1).await;
    assert!(!ended, "open shard {s1} ended");

    // Merge the upper child of s0 with s1 (adjacent).
    let upper = children
        .iter()
        .max_by_key(|s| {
            s.hash_key_range()
                .expect("range")
                .starting_hash_key()
                .parse::<u128>()
                .expect("hash key")
        })
        .expect("two children");
    let upper = upper.shard_id().to_string();
    mock.merge_shards(stream, &upper, &s1).await;
    let shards = mock.list_shards(stream).await;
    let merged: Vec<_> = shards
        .iter()
        .filter(|s| {
            s.parent_shard_id() == Some(upper.as_str())
                && s.adjacent_parent_shard_id() == Some(s1.as_str())
                || s.parent_shard_id() == Some(s1.as_str())
                    && s.adjacent_parent_shard_id() == Some(upper.as_str())
        })
        .collect();
    assert_eq!(merged.len(), 1, "{shards:?}");
    let (records, ended) = read_shard(&kinesis, stream, &s1).await;
    assert_eq!(records, vec![b"b".to_vec()]);
    assert!(ended, "merged parent {s1} never ended");

    let put = mock
        .put_records_at(stream, &[(u128::MAX, b"c".to_vec())])
        .await;
    assert_eq!(put[0].0, merged[0].shard_id(), "{put:?}");
}

/// The shard of `shards` whose hash key range holds `hash`, among the open ones.
fn open_shard_at(shards: &[aws_sdk_kinesis::types::Shard], hash: u128) -> String {
    shards
        .iter()
        .filter(|s| {
            s.sequence_number_range()
                .and_then(|r| r.ending_sequence_number())
                .is_none()
        })
        .find(|s| {
            let r = s.hash_key_range().expect("hash key range");
            let lo: u128 = r.starting_hash_key().parse().expect("starting hash key");
            let hi: u128 = r.ending_hash_key().parse().expect("ending hash key");
            (lo..=hi).contains(&hash)
        })
        .unwrap_or_else(|| panic!("no open shard holds {hash}: {shards:?}"))
        .shard_id()
        .to_string()
}

#[tokio::test]
async fn split_and_merge_while_running_lose_nothing_and_read_parents_first() {
    let mock = KinesisMock::start();
    let stream = "reshard";
    mock.create_stream(stream, 2).await;
    let shards = mock.list_shards(stream).await;
    let (s0, s1) = (open_shard_at(&shards, Q1), open_shard_at(&shards, Q3));
    assert_ne!(s0, s1);

    // Before the consumer starts: on shard 0, complete pairs of `parent` sessions (one record
    // each), homes of `roaming` sessions on both shards; then shard 0 is split and complete
    // pairs of `child` sessions go to its children. Reading parents first puts every `parent`
    // finding before every `child` finding.
    let parent = sessions("parent", 8);
    let child = sessions("child", 8);
    let roaming = sessions("roaming", 12);
    let merged_pairs = sessions("merged", 4);
    let pair = |s: &Session| envelope(&[s.home(), s.second()]);
    let at = |hashes: &[u128], i: usize| hashes[i % hashes.len()];

    let mut records: Vec<(u128, Vec<u8>)> = Vec::new();
    for (i, s) in parent.iter().enumerate() {
        records.push((at(&[Q1, Q2], i), pair(s)));
    }
    for (i, s) in roaming.iter().enumerate() {
        records.push((at(&[Q1, Q2, Q3, Q4], i), envelope(&[s.home()])));
    }
    let put = mock.put_records_at(stream, &records).await;
    for (i, (shard, _)) in put.iter().enumerate().take(parent.len()) {
        assert_eq!(shard, &s0, "parent pair {i} not on {s0}: {put:?}");
    }
    mock.split_shard_in_half(stream, &s0).await;
    let shards = mock.list_shards(stream).await;
    let (s0_low, s0_high) = (open_shard_at(&shards, Q1), open_shard_at(&shards, Q2));
    let records: Vec<(u128, Vec<u8>)> = child
        .iter()
        .enumerate()
        .map(|(i, s)| (at(&[Q1, Q2], i), pair(s)))
        .collect();
    let put = mock.put_records_at(stream, &records).await;
    for (shard, _) in &put {
        assert!(
            shard == &s0_low || shard == &s0_high,
            "child pair not on a child of {s0}: {put:?}"
        );
    }

    let state = State::new();
    let mut run = Run::start(&mock.endpoint(), stream, &state);
    let before: Vec<&Session> = parent.iter().chain(&child).collect();
    run.wait_for_findings(&state, &before).await;
    let findings = state.findings();
    let last_parent = parent.iter().map(|s| line_of(&findings, s)).max();
    let first_child = child.iter().map(|s| line_of(&findings, s)).min();
    assert!(
        last_parent < first_child,
        "a child of {s0} was read before {s0} ended: the last parent finding is line \
         {last_parent:?}, the first child finding line {first_child:?}:\n{}",
        findings
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );

    // While running: split shard 1, then the second origins of half the roaming sessions go to
    // its children.
    mock.split_shard_in_half(stream, &s1).await;
    let shards = mock.list_shards(stream).await;
    let (s1_low, s1_high) = (open_shard_at(&shards, Q3), open_shard_at(&shards, Q4));
    let (first_half, second_half) = roaming.split_at(roaming.len() / 2);
    let records: Vec<(u128, Vec<u8>)> = first_half
        .iter()
        .enumerate()
        .map(|(i, s)| (at(&[Q3, Q4], i), envelope(&[s.second()])))
        .collect();
    let put = mock.put_records_at(stream, &records).await;
    for (shard, _) in &put {
        assert!(
            shard == &s1_low || shard == &s1_high,
            "not on a child of {s1}: {put:?}"
        );
    }
    let waited: Vec<&Session> = first_half.iter().collect();
    run.wait_for_findings(&state, &waited).await;

    // Still running: merge shard 0's upper child with shard 1's lower child; the rest goes to
    // the merged shard.
    mock.merge_shards(stream, &s0_high, &s1_low).await;
    let shards = mock.list_shards(stream).await;
    let merged = open_shard_at(&shards, MIDDLE);
    let mut records: Vec<(u128, Vec<u8>)> = second_half
        .iter()
        .map(|s| (MIDDLE, envelope(&[s.second()])))
        .collect();
    records.extend(merged_pairs.iter().map(|s| (MIDDLE, pair(s))));
    let put = mock.put_records_at(stream, &records).await;
    for (shard, _) in &put {
        assert_eq!(shard, &merged, "not on the merged shard: {put:?}");
    }

    let all: Vec<&Session> = parent
        .iter()
        .chain(&child)
        .chain(&roaming)
        .chain(&merged_pairs)
        .collect();
    run.wait_for_findings(&state, &all).await;
    tokio::time::sleep(GRACE).await;
    run.assert_running("duplicate findings");
    assert_one_finding_per_session(&state.findings(), &all);

    // Stop; the final checkpoint has every parent finished and every open shard not.
    run.sigterm();
    let status = run.wait_exit(Duration::from_secs(10));
    let log = run.log_tail();
    let status = status.unwrap_or_else(|| {
        panic!("credwatch run still running 10 s after SIGTERM\n--- credwatch log ---\n{log}")
    });
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n--- credwatch log ---\n{log}"
    );
    let cp = state.checkpoint().unwrap_or_else(|| {
        panic!("no checkpoint.json after SIGTERM\n--- credwatch log ---\n{log}")
    });
    for parent in [&s0, &s1, &s0_high, &s1_low] {
        assert_eq!(
            cp["shards"][parent.as_str()]["finished"],
            true,
            "parent {parent} not finished in the checkpoint: {cp}"
        );
    }
    for open in [&s0_low, &s1_high, &merged] {
        assert_eq!(
            cp["shards"][open.as_str()]["finished"],
            false,
            "open shard {open} in the checkpoint: {cp}"
        );
    }
    assert_eq!(
        state.findings().len(),
        all.len(),
        "findings written after the last check"
    );
}
