//! A real local AWS emulator for integration tests: one moto server per test, on 127.0.0.1.
//!
//! The binary comes from `CREDWATCH_MOTO_SERVER` (set by `tests/run.sh`), else from the repo's
//! `.venv`, which `tests/stack/ensure-moto.sh` creates when needed: a test never skips for want
//! of moto.
//!
//! What moto 5.2.5 does differently from AWS (the tests rely on it, the code must not):
//! - every PutLogEvents call becomes exactly one Kinesis record, under a random partition key,
//!   so one log stream's batches spread over the shards;
//! - `logEvents[].id` is a JSON number, not a string; sequence numbers are short ("1", "2");
//! - the filter pattern is ignored and no CONTROL_MESSAGE is sent when a filter is created;
//! - log events older than 14 days are dropped (reported in `rejectedLogEventsInfo`), yet an
//!   envelope is still sent, with fewer (possibly no) log events;
//! - a closed shard never returns a null `NextShardIterator`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::process::{free_port, give_up, launch, wait_ready, START_ATTEMPTS};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_cloudwatchlogs::types::{Distribution, InputLogEvent};
use aws_sdk_kinesis::config::Credentials;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType, StreamStatus};

pub const REGION: &str = "us-east-1";
/// moto's default account.
pub const ACCOUNT_ID: &str = "123456789012";
/// moto accepts any role ARN on a subscription filter.
pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/cwl-to-kinesis";
/// The name of the subscription filter that `create_log_group_with_subscription` creates.
pub const SUBSCRIPTION_FILTER: &str = "credwatch-to-kinesis";

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A Kinesis record as read back: (shard id, sequence number, data).
pub type StreamRecord = (String, String, Vec<u8>);

/// A moto server process, killed on drop.
pub struct MotoServer {
    child: Child,
    port: u16,
    log_path: PathBuf,
    serial: bool,
    _dir: tempfile::TempDir,
}

/// Starts moto on `port` (serial: one request at a time) and waits until it answers.
fn spawn_on(port: u16, serial: bool, dir: &Path) -> Result<(Child, PathBuf), String> {
    let bin = moto_binary();
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let log_path = dir.join(format!("moto-{port}-{n}.log"));
    let mut cmd = if serial {
        let python = bin.with_file_name("python");
        let mut c = Command::new(python);
        c.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/stack/moto-serial.py"
        ))
        .arg(port.to_string());
        c
    } else {
        let mut c = Command::new(bin);
        c.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        c
    };
    let mut child = launch(&mut cmd, &log_path, "moto server");
    match wait_ready(
        &mut child,
        port,
        "/moto-api/",
        Duration::ZERO,
        READY_TIMEOUT,
        "moto server",
    ) {
        Ok(()) => Ok((child, log_path)),
        Err(e) => Err(give_up(child, &log_path, "moto", e)),
    }
}

impl MotoServer {
    /// Starts a fresh moto server on a free loopback port and waits until it answers.
    pub fn start() -> MotoServer {
        Self::start_with(false)
    }

    /// Like [`MotoServer::start`], but answering one request at a time
    /// (`tests/stack/moto-serial.py`): DynamoDB conditional writes are then atomic, as on AWS.
    pub fn start_serial() -> MotoServer {
        Self::start_with(true)
    }

    fn start_with(serial: bool) -> MotoServer {
        // Never ask EC2 instance metadata for anything during tests. Set before any SDK client
        // exists; Rust 2021 keeps `set_var` safe.
        static ENV: OnceLock<()> = OnceLock::new();
        ENV.get_or_init(|| std::env::set_var("AWS_EC2_METADATA_DISABLED", "true"));

        let dir = tempfile::tempdir().expect("temp dir for the moto log");
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            match spawn_on(port, serial, dir.path()) {
                Ok((child, log_path)) => {
                    return MotoServer {
                        child,
                        port,
                        log_path,
                        serial,
                        _dir: dir,
                    }
                }
                Err(e) => last_error = e,
            }
        }
        panic!("moto server did not start after {START_ATTEMPTS} attempts: {last_error}");
    }

    /// Stops the server (an outage): its state is gone, its port free.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a fresh server (empty state) on the same port, after [`MotoServer::stop`].
    pub fn restart(&mut self) {
        self.stop();
        let dir = self.log_path.parent().expect("log dir").to_path_buf();
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            match spawn_on(self.port, self.serial, &dir) {
                Ok((child, log_path)) => {
                    self.child = child;
                    self.log_path = log_path;
                    return;
                }
                Err(e) => {
                    last_error = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        panic!(
            "moto server did not restart on port {}: {last_error}",
            self.port
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's log so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SDK configuration pointing at this server: us-east-1, static test credentials.
    pub async fn sdk_config(&self) -> SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
            .endpoint_url(self.endpoint())
            .load()
            .await
    }

    pub async fn kinesis(&self) -> aws_sdk_kinesis::Client {
        aws_sdk_kinesis::Client::new(&self.sdk_config().await)
    }

    pub async fn logs(&self) -> aws_sdk_cloudwatchlogs::Client {
        aws_sdk_cloudwatchlogs::Client::new(&self.sdk_config().await)
    }

    pub async fn security_hub(&self) -> aws_sdk_securityhub::Client {
        aws_sdk_securityhub::Client::new(&self.sdk_config().await)
    }

    pub async fn eventbridge(&self) -> aws_sdk_eventbridge::Client {
        aws_sdk_eventbridge::Client::new(&self.sdk_config().await)
    }

    pub async fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk_config().await)
    }

    /// Creates a Kinesis stream, waits until it is ACTIVE and returns its ARN.
    pub async fn create_stream(&self, name: &str, shards: i32) -> String {
        let kinesis = self.kinesis().await;
        kinesis
            .create_stream()
            .stream_name(name)
            .shard_count(shards)
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreateStream {name}: {e:?}"));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let summary = kinesis
                .describe_stream_summary()
                .stream_name(name)
                .send()
                .await
                .unwrap_or_else(|e| panic!("DescribeStreamSummary {name}: {e:?}"));
            let summary = summary
                .stream_description_summary()
                .expect("stream description summary");
            if *summary.stream_status() == StreamStatus::Active {
                return summary.stream_arn().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "stream {name} never became ACTIVE"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The ARN of an existing stream.
    pub async fn stream_arn(&self, name: &str) -> String {
        let summary = self
            .kinesis()
            .await
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("DescribeStreamSummary {name}: {e:?}"));
        summary
            .stream_description_summary()
            .expect("stream description summary")
            .stream_arn()
            .to_string()
    }

    /// Creates a log group and a subscription filter ([`SUBSCRIPTION_FILTER`]) that sends
    /// everything put into it to the Kinesis stream `stream_name`.
    pub async fn create_log_group_with_subscription(&self, group: &str, stream_name: &str) {
        self.create_log_group_with_distribution(group, stream_name, Distribution::ByLogStream)
            .await
    }

    /// [`MotoServer::create_log_group_with_subscription`] with a chosen `distribution`
    /// (`Random` spreads one log stream's batches over every shard, as AWS recommends for busy
    /// log groups).
    pub async fn create_log_group_with_distribution(
        &self,
        group: &str,
        stream_name: &str,
        distribution: Distribution,
    ) {
        let stream_arn = self.stream_arn(stream_name).await;
        let logs = self.logs().await;
        logs.create_log_group()
            .log_group_name(group)
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreateLogGroup {group}: {e:?}"));
        logs.put_subscription_filter()
            .log_group_name(group)
            .filter_name(SUBSCRIPTION_FILTER)
            .filter_pattern("")
            .destination_arn(&stream_arn)
            .role_arn(ROLE_ARN)
            .distribution(distribution)
            .send()
            .await
            .unwrap_or_else(|e| panic!("PutSubscriptionFilter {group} -> {stream_arn}: {e:?}"));
    }

    /// Puts `(timestamp ms, message)` events with one PutLogEvents call, creating the log stream
    /// if it is missing. Timestamps must be ascending and within the last 14 days.
    pub async fn put_log_events(&self, group: &str, log_stream: &str, events: &[(i64, String)]) {
        let logs = self.logs().await;
        if let Err(e) = logs
            .create_log_stream()
            .log_group_name(group)
            .log_stream_name(log_stream)
            .send()
            .await
        {
            let exists = e
                .as_service_error()
                .is_some_and(|e| e.is_resource_already_exists_exception());
            assert!(exists, "CreateLogStream {group}/{log_stream}: {e:?}");
        }
        let events: Vec<InputLogEvent> = events
            .iter()
            .map(|(ts, message)| {
                InputLogEvent::builder()
                    .timestamp(*ts)
                    .message(message)
                    .build()
                    .expect("timestamp and message are set")
            })
            .collect();
        let out = logs
            .put_log_events()
            .log_group_name(group)
            .log_stream_name(log_stream)
            .set_log_events(Some(events))
            .send()
            .await
            .unwrap_or_else(|e| panic!("PutLogEvents {group}/{log_stream}: {e:?}"));
        assert!(
            out.rejected_log_events_info().is_none(),
            "PutLogEvents {group}/{log_stream} rejected events: {:?}",
            out.rejected_log_events_info()
        );
    }

    /// Puts raw `(partition key, data)` records with one PutRecords call; returns each record's
    /// (shard id, sequence number), in order.
    pub async fn put_records(
        &self,
        stream: &str,
        records: &[(&str, Vec<u8>)],
    ) -> Vec<(String, String)> {
        let entries: Vec<PutRecordsRequestEntry> = records
            .iter()
            .map(|(key, data)| {
                PutRecordsRequestEntry::builder()
                    .partition_key(*key)
                    .data(Blob::new(data.clone()))
                    .build()
                    .expect("partition key and data are set")
            })
            .collect();
        self.send_records(stream, entries).await
    }

    /// One PutRecords call; every record must be taken. Returns (shard id, sequence number) of
    /// each, in order.
    async fn send_records(
        &self,
        stream: &str,
        entries: Vec<PutRecordsRequestEntry>,
    ) -> Vec<(String, String)> {
        let out = self
            .kinesis()
            .await
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries))
            .send()
            .await
            .unwrap_or_else(|e| panic!("PutRecords {stream}: {e:?}"));
        assert_eq!(
            out.failed_record_count().unwrap_or(0),
            0,
            "PutRecords {stream}: {out:?}"
        );
        out.records()
            .iter()
            .map(|r| {
                (
                    r.shard_id().expect("shard id").to_string(),
                    r.sequence_number().expect("sequence number").to_string(),
                )
            })
            .collect()
    }

    /// Each shard's starting hash key, to put a record into that shard (ExplicitHashKey).
    pub async fn hash_keys(&self, stream: &str) -> std::collections::BTreeMap<String, String> {
        let out = self
            .kinesis()
            .await
            .list_shards()
            .stream_name(stream)
            .send()
            .await
            .expect("ListShards");
        out.shards()
            .iter()
            .map(|s| {
                (
                    s.shard_id().to_string(),
                    s.hash_key_range()
                        .expect("hash key range")
                        .starting_hash_key()
                        .to_string(),
                )
            })
            .collect()
    }

    /// Puts each `(shard, data)` as its own record into that shard (`keys` from
    /// [`MotoServer::hash_keys`]), and checks that each landed there.
    pub async fn put_to_shards(
        &self,
        stream: &str,
        keys: &std::collections::BTreeMap<String, String>,
        records: &[(String, Vec<u8>)],
    ) {
        let entries: Vec<PutRecordsRequestEntry> = records
            .iter()
            .map(|(shard, data)| {
                PutRecordsRequestEntry::builder()
                    .partition_key("p")
                    .explicit_hash_key(&keys[shard])
                    .data(Blob::new(data.clone()))
                    .build()
                    .expect("partition key and data are set")
            })
            .collect();
        let put = self.send_records(stream, entries).await;
        for ((shard, _), (want, _)) in put.iter().zip(records) {
            assert_eq!(shard, want, "ExplicitHashKey honoured");
        }
    }

    /// Reads every shard of `stream` from TRIM_HORIZON until a read comes back empty; returns the
    /// records shard by shard, in shard order.
    pub async fn read_all_records(&self, stream: &str) -> Vec<StreamRecord> {
        let kinesis = self.kinesis().await;
        let mut shard_ids = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            let req = match &next_token {
                Some(token) => kinesis.list_shards().next_token(token),
                None => kinesis.list_shards().stream_name(stream),
            };
            let out = req
                .send()
                .await
                .unwrap_or_else(|e| panic!("ListShards {stream}: {e:?}"));
            shard_ids.extend(out.shards().iter().map(|s| s.shard_id().to_string()));
            next_token = out.next_token().map(str::to_string);
            if next_token.is_none() {
                break;
            }
        }

        let mut records = Vec::new();
        for shard_id in shard_ids {
            let mut iterator = kinesis
                .get_shard_iterator()
                .stream_name(stream)
                .shard_id(&shard_id)
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GetShardIterator {stream}/{shard_id}: {e:?}"))
                .shard_iterator()
                .map(str::to_string);
            while let Some(it) = iterator {
                let out = kinesis
                    .get_records()
                    .shard_iterator(it)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("GetRecords {stream}/{shard_id}: {e:?}"));
                if out.records().is_empty() {
                    break;
                }
                records.extend(out.records().iter().map(|r| {
                    (
                        shard_id.clone(),
                        r.sequence_number().to_string(),
                        r.data().as_ref().to_vec(),
                    )
                }));
                iterator = out.next_shard_iterator().map(str::to_string);
            }
        }
        records
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The moto_server binary: `$CREDWATCH_MOTO_SERVER`, else the repo's `.venv`, installed on demand.
fn moto_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("CREDWATCH_MOTO_SERVER") {
            let bin = PathBuf::from(bin);
            assert!(
                bin.is_file(),
                "CREDWATCH_MOTO_SERVER={} does not exist; unset it or run tests/stack/ensure-moto.sh",
                bin.display()
            );
            return bin;
        }
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        // Quick when moto is already installed at the pinned version; installs it otherwise.
        let out = Command::new("bash")
            .arg(repo.join("tests/stack/ensure-moto.sh"))
            .stdin(Stdio::null())
            .output()
            .expect("run tests/stack/ensure-moto.sh");
        assert!(
            out.status.success(),
            "tests/stack/ensure-moto.sh failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        repo.join(".venv/bin/moto_server")
    })
}
