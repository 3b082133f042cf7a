//! kinesis-mock (npm package `kinesis-local`) for the tests moto cannot serve: moto never ends a
//! closed shard, kinesis-mock does (a closed shard's last read gives a null `NextShardIterator`),
//! so resharding is tested here. One server per test, on free 127.0.0.1 ports.
//!
//! The package comes from `CREDWATCH_KINESIS_MOCK_DIR` (the folder holding `main.js`, set by
//! `tests/run.sh`), else `tests/stack/ensure-kinesis-mock.sh` installs it into
//! `.local/kinesis-mock` when needed: a test never skips for want of it. It needs `node`.
//!
//! Started as `node --require loopback.cjs main.js` with `KINESIS_MOCK_PLAIN_PORT` (plain HTTP,
//! the one the SDK uses), `KINESIS_MOCK_TLS_PORT` and `KINESIS_MOCK_CERT_PATH` (its bundled
//! `server.json`); `loopback.cjs` (written by the install script) binds it to 127.0.0.1 only.
//! Ready when `GET /healthcheck` answers 200.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::process::{give_up, launch, wait_ready, START_ATTEMPTS};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_kinesis::config::Credentials;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, Shard, StreamStatus};

pub const REGION: &str = "us-east-1";
/// kinesis-mock's default account.
pub const ACCOUNT_ID: &str = "000000000000";

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// A kinesis-mock server process, killed on drop.
pub struct KinesisMock {
    child: Child,
    port: u16,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl KinesisMock {
    /// Starts a fresh kinesis-mock on free loopback ports and waits until it answers.
    pub fn start() -> KinesisMock {
        static ENV: OnceLock<()> = OnceLock::new();
        ENV.get_or_init(|| std::env::set_var("AWS_EC2_METADATA_DISABLED", "true"));

        let pkg = package_dir();
        let dir = tempfile::tempdir().expect("temp dir for the kinesis-mock log");
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let (port, tls_port) = two_free_ports();
            let log_path = dir.path().join(format!("kinesis-mock-{port}.log"));
            let mut cmd = Command::new("node");
            cmd.arg("--require")
                .arg(pkg.join("loopback.cjs"))
                .arg(pkg.join("main.js"))
                .current_dir(dir.path())
                .env("KINESIS_MOCK_PLAIN_PORT", port.to_string())
                .env("KINESIS_MOCK_TLS_PORT", tls_port.to_string())
                .env("KINESIS_MOCK_CERT_PATH", pkg.join("server.json"))
                .env("AWS_REGION", REGION)
                .env("LOG_LEVEL", "WARN")
                .env("SHOULD_PERSIST_DATA", "false")
                .env("LOAD_DATA_IF_EXISTS", "false")
                .env_remove("INITIALIZE_STREAMS")
                .env_remove("AWS_ACCOUNT_ID");
            let mut child = launch(&mut cmd, &log_path, "kinesis-mock");
            let settle = Duration::from_millis(200);
            match wait_ready(
                &mut child,
                port,
                "/healthcheck",
                settle,
                READY_TIMEOUT,
                "kinesis-mock",
            ) {
                Ok(()) => {
                    return KinesisMock {
                        child,
                        port,
                        log_path,
                        _dir: dir,
                    }
                }
                Err(e) => last_error = give_up(child, &log_path, "kinesis-mock", e),
            }
        }
        panic!("kinesis-mock did not start after {START_ATTEMPTS} attempts: {last_error}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` (plain HTTP).
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
            .credentials_provider(Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "kinesis-mock",
            ))
            .endpoint_url(self.endpoint())
            .load()
            .await
    }

    pub async fn kinesis(&self) -> aws_sdk_kinesis::Client {
        aws_sdk_kinesis::Client::new(&self.sdk_config().await)
    }

    /// Creates a provisioned stream and waits until it is ACTIVE.
    pub async fn create_stream(&self, name: &str, shards: i32) {
        self.kinesis()
            .await
            .create_stream()
            .stream_name(name)
            .shard_count(shards)
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreateStream {name}: {e:?}"));
        self.wait_active(name).await;
    }

    /// Waits until the stream is ACTIVE again (after a create, split or merge).
    pub async fn wait_active(&self, name: &str) {
        let kinesis = self.kinesis().await;
        let deadline = Instant::now() + STREAM_TIMEOUT;
        loop {
            let summary = kinesis
                .describe_stream_summary()
                .stream_name(name)
                .send()
                .await
                .unwrap_or_else(|e| panic!("DescribeStreamSummary {name}: {e:?}"));
            let status = summary
                .stream_description_summary()
                .expect("stream description summary")
                .stream_status()
                .clone();
            if status == StreamStatus::Active {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "stream {name} not ACTIVE after {STREAM_TIMEOUT:?} (status {status:?})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every shard of the stream, open and closed, as ListShards gives them.
    pub async fn list_shards(&self, stream: &str) -> Vec<Shard> {
        let kinesis = self.kinesis().await;
        let mut shards = Vec::new();
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
            shards.extend(out.shards().iter().cloned());
            next_token = out.next_token().map(str::to_string);
            if next_token.is_none() {
                return shards;
            }
        }
    }

    /// Splits `shard_id` at the middle of its hash key range; waits until the stream is ACTIVE.
    pub async fn split_shard_in_half(&self, stream: &str, shard_id: &str) {
        let shards = self.list_shards(stream).await;
        let shard = shards
            .iter()
            .find(|s| s.shard_id() == shard_id)
            .unwrap_or_else(|| panic!("no shard {shard_id} in {shards:?}"));
        let range = shard.hash_key_range().expect("hash key range");
        let lo: u128 = range
            .starting_hash_key()
            .parse()
            .expect("starting hash key");
        let hi: u128 = range.ending_hash_key().parse().expect("ending hash key");
        let middle = lo + (hi - lo) / 2 + 1;
        self.kinesis()
            .await
            .split_shard()
            .stream_name(stream)
            .shard_to_split(shard_id)
            .new_starting_hash_key(middle.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("SplitShard {stream}/{shard_id}: {e:?}"));
        self.wait_active(stream).await;
    }

    /// Merges two adjacent shards; waits until the stream is ACTIVE.
    pub async fn merge_shards(&self, stream: &str, shard: &str, adjacent: &str) {
        self.kinesis()
            .await
            .merge_shards()
            .stream_name(stream)
            .shard_to_merge(shard)
            .adjacent_shard_to_merge(adjacent)
            .send()
            .await
            .unwrap_or_else(|e| panic!("MergeShards {stream}/{shard}+{adjacent}: {e:?}"));
        self.wait_active(stream).await;
    }

    /// Puts raw `(explicit hash key, data)` records with one PutRecords call (partition key
    /// "k"), so that each lands on the open shard whose range holds the hash key; returns each
    /// record's (shard id, sequence number), in order.
    pub async fn put_records_at(
        &self,
        stream: &str,
        records: &[(u128, Vec<u8>)],
    ) -> Vec<(String, String)> {
        let entries: Vec<PutRecordsRequestEntry> = records
            .iter()
            .map(|(hash_key, data)| {
                PutRecordsRequestEntry::builder()
                    .partition_key("k")
                    .explicit_hash_key(hash_key.to_string())
                    .data(Blob::new(data.clone()))
                    .build()
                    .expect("partition key and data are set")
            })
            .collect();
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
}

impl Drop for KinesisMock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The folder with kinesis-mock's `main.js`, `server.json` and `loopback.cjs`:
/// `$CREDWATCH_KINESIS_MOCK_DIR`, else `.local/kinesis-mock`, installed on demand.
fn package_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("CREDWATCH_KINESIS_MOCK_DIR") {
            let dir = PathBuf::from(dir);
            assert!(
                dir.join("main.js").is_file() && dir.join("loopback.cjs").is_file(),
                "CREDWATCH_KINESIS_MOCK_DIR={} has no main.js/loopback.cjs; unset it or run \
                 tests/stack/ensure-kinesis-mock.sh",
                dir.display()
            );
            return dir;
        }
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        // Quick when kinesis-mock is already installed at the pinned version; installs it otherwise.
        let out = Command::new("bash")
            .arg(repo.join("tests/stack/ensure-kinesis-mock.sh"))
            .stdin(Stdio::null())
            .output()
            .expect("run tests/stack/ensure-kinesis-mock.sh");
        assert!(
            out.status.success(),
            "tests/stack/ensure-kinesis-mock.sh failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let dir = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
        assert!(
            dir.join("main.js").is_file(),
            "tests/stack/ensure-kinesis-mock.sh printed {stdout:?}, not a folder with main.js"
        );
        dir
    })
}

/// Two distinct ports that were free on 127.0.0.1 a moment ago.
fn two_free_ports() -> (u16, u16) {
    let a = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    let b = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    (
        a.local_addr().expect("local addr").port(),
        b.local_addr().expect("local addr").port(),
    )
}
