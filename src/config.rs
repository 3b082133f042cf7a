//! Configuration: TOML, overridden by `CREDWATCH_<SECTION>__<KEY>` environment variables, unknown
//! keys rejected with the key named. `config/credwatch.example.toml` documents every option.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::finding::Severity;
use crate::rules::RULE_IDS;

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub detection: DetectionConfig,
    pub organization: OrganizationConfig,
    pub allow: Vec<AllowEntry>,
    /// Per-rule switches and severities, keyed by rule id.
    pub rules: BTreeMap<String, RuleConfig>,
    pub input: InputConfig,
    pub kinesis: KinesisConfig,
    pub checkpoint: CheckpointConfig,
    /// `[coordination]`: one process alone, or several sharing leases and state in DynamoDB.
    pub coordination: CoordinationConfig,
    pub output: OutputConfig,
    pub metrics: MetricsConfig,
    /// `[[escalation]]`: where findings are delivered.
    pub escalation: Vec<crate::escalation::EscalationConfig>,
    /// `[placement]`: AWS's published IP ranges, to place every public origin.
    pub placement: PlacementConfig,
    /// `[inventory]`: our own addresses, read from EC2 (off unless configured).
    pub inventory: InventoryConfig,
}

/// `[placement]`: where AWS's `ip-ranges.json` comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlacementConfig {
    /// A local copy of `ip-ranges.json` (read at start and re-read every `refresh_secs` when
    /// it changed). Without it (and without `ip_ranges_url`), the snapshot built into the binary.
    pub ip_ranges_file: Option<PathBuf>,
    /// Fetched at start and every `refresh_secs` (`run` only), e.g.
    /// `https://ip-ranges.amazonaws.com/ip-ranges.json`. A failed fetch keeps the ranges in use.
    pub ip_ranges_url: Option<String>,
    /// How often the file is re-read or the URL fetched.
    pub refresh_secs: u64,
    /// Ranges whose `createDate` is older than this are stale: warned about and exported.
    pub max_age_days: u64,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            ip_ranges_file: None,
            ip_ranges_url: None,
            refresh_secs: 86_400,
            max_age_days: 30,
        }
    }
}

/// `[inventory]`: the organisation's own addresses, from EC2's Describe calls.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InventoryConfig {
    /// Read the running credentials' own account.
    pub own_account: bool,
    /// Roles to assume into the organisation's other accounts (one per account).
    pub role_arns: Vec<String>,
    /// `ExternalId` for those roles, when their trust policy requires one.
    pub external_id: Option<String>,
    /// Regions to read in every account. Empty: the inventory is off.
    pub regions: Vec<String>,
    /// How often every account and region is read again.
    pub refresh_secs: u64,
    /// Endpoint URL override for EC2 and STS (an emulator); unset in AWS.
    pub endpoint_url: Option<String>,
    /// Read the inventory from this JSON file (`credwatch inventory --format json`) instead of
    /// EC2: for hunts offline, and for tests. Re-read every `refresh_secs` when it changed.
    pub file: Option<PathBuf>,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        InventoryConfig {
            own_account: true,
            role_arns: Vec::new(),
            external_id: None,
            regions: Vec::new(),
            refresh_secs: 900,
            endpoint_url: None,
            file: None,
        }
    }
}

impl InventoryConfig {
    /// Whether an inventory is configured (at least one region, or a file).
    pub fn enabled(&self) -> bool {
        !self.regions.is_empty() || self.file.is_some()
    }
}

/// `[detection]`: how sessions are tracked.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectionConfig {
    /// Window for a session whose lifetime is unknown: it expires `window_secs` after its last use.
    pub window_secs: u64,
    /// Maximum lifetime by credential class, from `sessionContext.attributes.creationDate`.
    pub max_session_secs: MaxSessionSecs,
    /// Track long-term `AKIA` keys too (off: their legitimate use from many places is normal).
    pub include_long_term_keys: bool,
    /// Track console sessions (off: AWS's console back ends relay their calls from AWS addresses).
    pub include_console_sessions: bool,
    /// IPv6 origins are compared on this prefix length (128 = exact address).
    pub ipv6_prefix_len: u8,
    /// Upper bound on tracked sessions; past it the sessions closest to expiry are dropped first.
    pub max_sessions: usize,
    /// User-agent substrings that mark a call made from inside the Lambda runtime.
    pub lambda_user_agent_markers: Vec<String>,
    /// User-agent substrings that mark a call made from an ECS task.
    pub ecs_user_agent_markers: Vec<String>,
    /// A session seen from a second origin is judged only when the event-time low watermark
    /// over every shard has passed the later event's time plus this (a credit, restart or
    /// earlier home on another shard may still be on its way).
    pub allowed_lateness_secs: u64,
    /// A shard with no records for this long (wall time) does not hold the watermark back.
    pub idle_secs: u64,
    /// A candidate held this long (wall time) is judged anyway, and says the stream was behind.
    pub max_hold_secs: u64,
    /// Upper bound on instance-book entries (instances, interfaces, allocations); past it the
    /// ones touched longest ago are dropped first (counted).
    pub max_book_entries: usize,
    /// An event whose time is ahead of this host's clock by more than this is set aside
    /// (`time_ahead`), not judged: it would move the watermark, and every window, forward.
    pub max_clock_skew_secs: u64,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        DetectionConfig {
            window_secs: 12 * 3600,
            max_session_secs: MaxSessionSecs::default(),
            include_long_term_keys: false,
            include_console_sessions: false,
            ipv6_prefix_len: 128,
            max_sessions: 20_000_000,
            lambda_user_agent_markers: vec![
                "exec-env/AWS_Lambda".into(),
                "awslambda-worker".into(),
                "AWS_Lambda_".into(),
            ],
            ecs_user_agent_markers: vec!["exec-env/AWS_ECS".into()],
            allowed_lateness_secs: 600,
            idle_secs: 60,
            max_hold_secs: 1800,
            max_book_entries: 1_000_000,
            max_clock_skew_secs: 900,
        }
    }
}

/// `[detection.max_session_secs]`: the longest a credential of each class can live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaxSessionSecs {
    pub ec2_instance: u64,
    pub ec2_identity: u64,
    pub lambda: u64,
    pub ecs_task: u64,
    pub assumed_role: u64,
    pub console: u64,
    pub federated: u64,
}

impl Default for MaxSessionSecs {
    fn default() -> Self {
        MaxSessionSecs {
            // IMDS credentials are valid for up to 6 hours (rotated about hourly).
            ec2_instance: 6 * 3600,
            ec2_identity: 6 * 3600,
            lambda: 12 * 3600,
            ecs_task: 6 * 3600,
            // AssumeRole allows up to 12 hours; GetFederationToken up to 36.
            assumed_role: 12 * 3600,
            console: 12 * 3600,
            federated: 36 * 3600,
        }
    }
}

/// `[organization]`: the accounts whose VPC endpoints explain an origin.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrganizationConfig {
    pub account_ids: Vec<String>,
}

/// `[[allow]]`: a known network that explains an origin.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowEntry {
    pub cidr: IpNet,
    /// Only for sessions of this account.
    #[serde(default)]
    pub account: Option<String>,
    /// Only for sessions of this role (name, not ARN).
    #[serde(default)]
    pub role: Option<String>,
    pub reason: String,
    #[serde(default)]
    pub owner: Option<String>,
    /// Last day the entry applies (`YYYY-MM-DD` or RFC 3339), judged by event time.
    #[serde(default)]
    pub expires: Option<String>,
}

/// `[rules.<id>]`: switch a rule off or re-rate it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    pub enabled: Option<bool>,
    pub severity: Option<Severity>,
}

/// `[input]`: limits on untrusted input.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// Largest decompressed size of one gzip member (a record or a file); larger is a gzip bomb.
    pub max_decompressed_bytes: usize,
    /// Largest single event; CloudWatch Logs caps a log event at 256 KiB, CloudTrail files at less.
    pub max_event_bytes: usize,
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            max_decompressed_bytes: 64 << 20,
            max_event_bytes: 1 << 20,
        }
    }
}

/// Where to start reading a shard that has no checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StartPosition {
    TrimHorizon,
    Latest,
    AtTimestamp,
}

/// `[kinesis]`: the stream `credwatch run` consumes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KinesisConfig {
    pub stream: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub start_position: StartPosition,
    /// For `AT_TIMESTAMP`: RFC 3339.
    pub start_timestamp: Option<String>,
    /// Records per GetRecords call (at most 10000).
    pub max_records_per_call: i32,
    /// Pause between GetRecords calls on one shard; 200 ms or more keeps under 5 calls/s.
    pub poll_interval_ms: u64,
    /// How often to list shards to find new ones (after a reshard).
    pub shard_discovery_interval_secs: u64,
    /// `polling` (GetRecords: shares each shard's 5 reads/s and 2 MB/s with every other reader
    /// of the stream) or `enhanced_fan_out` (SubscribeToShard over HTTP/2: 2 MB/s per shard of
    /// its own, records pushed as they arrive).
    pub consumer: ConsumerKind,
    /// `enhanced_fan_out`: the stream consumer's name, registered if missing. Workers of one
    /// deployment share it (each shard is read by its one lease owner).
    pub consumer_name: String,
    /// `enhanced_fan_out`: a subscription is renewed after this long (AWS ends each after 5
    /// minutes; at most 300).
    pub resubscribe_secs: u64,
}

/// How `run` reads the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerKind {
    #[default]
    Polling,
    EnhancedFanOut,
}

impl Default for KinesisConfig {
    fn default() -> Self {
        KinesisConfig {
            stream: None,
            region: None,
            endpoint_url: None,
            start_position: StartPosition::TrimHorizon,
            start_timestamp: None,
            max_records_per_call: 10_000,
            poll_interval_ms: 250,
            shard_discovery_interval_secs: 30,
            consumer: ConsumerKind::Polling,
            consumer_name: "credwatch".into(),
            resubscribe_secs: 300,
        }
    }
}

/// `[checkpoint]`: local checkpoints and store snapshots.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    pub dir: PathBuf,
    pub interval_secs: u64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            dir: PathBuf::from("credwatch-state"),
            interval_secs: 5,
        }
    }
}

/// Where shard positions and session origins live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One process: checkpoints in `checkpoint.dir`, the session store in memory.
    #[default]
    Embedded,
    /// Several processes: KCL-layout leases and the session-origin authority in DynamoDB.
    Dynamodb,
}

/// `[coordination]`: how several `credwatch run` processes share one stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinationConfig {
    pub backend: Backend,
    /// The lease table (Kinesis Client Library v2 layout), created if missing.
    pub lease_table: String,
    /// The session-origin table (first origin per session, finding claims), created if missing.
    pub state_table: String,
    /// This process's name in `leaseOwner` (`--worker-id`); default: host name and pid.
    pub worker_id: Option<String>,
    /// A lease whose counter has not moved for this long (on this worker's clock) is expired.
    pub lease_duration_secs: u64,
    /// The most leases this worker holds (0: no limit).
    pub max_leases: usize,
    /// Create the tables when they do not exist (needs dynamodb:CreateTable and UpdateTimeToLive).
    pub create_tables: bool,
    /// DynamoDB endpoint, for an emulator; default: `kinesis.endpoint_url`, else AWS's.
    pub endpoint_url: Option<String>,
}

impl Default for CoordinationConfig {
    fn default() -> Self {
        CoordinationConfig {
            backend: Backend::Embedded,
            lease_table: "credwatch-leases".into(),
            state_table: "credwatch-state".into(),
            worker_id: None,
            lease_duration_secs: 10,
            max_leases: 0,
            create_tables: true,
            endpoint_url: None,
        }
    }
}

/// `[output]`: where findings and set-aside records go.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// JSON lines, one finding per line (the shape of `hunt --output json`).
    pub findings_file: Option<PathBuf>,
    /// JSON lines, one bad record per line with its shard and sequence number.
    pub dead_letter_file: Option<PathBuf>,
}

/// `[metrics]`: the Prometheus and health endpoint, and `GET /findings` beside it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub addr: String,
    /// The most recent findings `GET /findings` serves (kept in memory, newest first);
    /// 0 turns the endpoint off.
    pub findings_capacity: usize,
    /// Environment variable holding the bearer token `GET /findings` requires. With a token
    /// (here or in `findings_token_file`) the endpoint always requires it; without one it is
    /// open on a loopback address and off on any other.
    pub findings_token_env: Option<String>,
    /// File holding that token (instead of `findings_token_env`); surrounding whitespace is
    /// ignored.
    pub findings_token_file: Option<PathBuf>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            addr: "127.0.0.1:9898".into(),
            findings_capacity: crate::recent::DEFAULT_CAPACITY,
            findings_token_env: None,
            findings_token_file: None,
        }
    }
}

/// A configuration error, naming the option at fault.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Loads `path` (if any), then `CREDWATCH_<SECTION>__<KEY>` environment overrides, then validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(p) = path {
            if !p.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    p.display()
                )));
            }
            fig = fig.merge(Toml::file_exact(p));
        }
        // Only variables with a section separator are config overrides; plain `CREDWATCH_X`
        // variables belong to command-line flags.
        fig = fig.merge(
            Env::prefixed("CREDWATCH_")
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        );
        let cfg = Self::from_figment(fig)?;
        if let Some(p) = path {
            for warning in cfg.exposure_warnings(p) {
                tracing::warn!(file = %p.display(), "{warning}");
            }
        }
        Ok(cfg)
    }

    /// Warnings for a config file that users other than its owner can read while it names where
    /// secrets are (`secret_file`, `findings_token_file`): it tells them which file to go after,
    /// and an operator who let it be read may have let the secret be read too.
    pub fn exposure_warnings(&self, path: &Path) -> Vec<String> {
        let mut named: Vec<String> = self
            .escalation
            .iter()
            .enumerate()
            .filter(|(_, e)| e.secret_file.is_some())
            .map(|(i, _)| format!("escalation[{i}].secret_file"))
            .collect();
        if self.metrics.findings_token_file.is_some() {
            named.push("metrics.findings_token_file".into());
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let Ok(meta) = std::fs::metadata(path) else {
                return vec![];
            };
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o004 != 0 && !named.is_empty() {
                return vec![format!(
                    "the config file is readable by every user ({mode:o}) and names secret files \
                     ({}): chmod 640 or 600 it, and check those files are 600",
                    named.join(", ")
                )];
            }
        }
        let _ = (path, &mut named);
        vec![]
    }

    /// Parses a TOML string (no environment), then validates. For tests and `validate-config`.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        Self::from_figment(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)),
        )
    }

    fn from_figment(fig: Figment) -> Result<Config, ConfigError> {
        let cfg: Config = fig.extract().map_err(|e| {
            let msgs: Vec<String> = e.into_iter().map(describe_figment_error).collect();
            ConfigError(msgs.join("; "))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what serde cannot: rule ids, ranges, dates.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for id in self.rules.keys() {
            if !RULE_IDS.contains(&id.as_str()) {
                return Err(ConfigError(format!(
                    "rules.{id}: unknown rule id (known: {})",
                    RULE_IDS.join(", ")
                )));
            }
        }
        let d = &self.detection;
        if d.window_secs == 0 {
            return Err(ConfigError("detection.window_secs: must be above 0".into()));
        }
        if d.ipv6_prefix_len == 0 || d.ipv6_prefix_len > 128 {
            return Err(ConfigError(
                "detection.ipv6_prefix_len: must be within 1..=128".into(),
            ));
        }
        if d.max_sessions == 0 {
            return Err(ConfigError(
                "detection.max_sessions: must be above 0".into(),
            ));
        }
        for (i, a) in self.allow.iter().enumerate() {
            if a.reason.trim().is_empty() {
                return Err(ConfigError(format!("allow[{i}].reason: must not be empty")));
            }
            if let Some(e) = &a.expires {
                if parse_expiry(e).is_none() {
                    return Err(ConfigError(format!(
                        "allow[{i}].expires: {e:?} is neither YYYY-MM-DD nor RFC 3339"
                    )));
                }
            }
        }
        for (i, acct) in self.organization.account_ids.iter().enumerate() {
            if acct.len() != 12 || !acct.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ConfigError(format!(
                    "organization.account_ids[{i}]: {acct:?} is not a 12-digit account id"
                )));
            }
        }
        let k = &self.kinesis;
        if !(1..=300).contains(&k.resubscribe_secs) {
            return Err(ConfigError(
                "kinesis.resubscribe_secs: must be within 1..=300 (a subscription lasts 5 minutes)"
                    .into(),
            ));
        }
        let name_ok = (1..=128).contains(&k.consumer_name.len())
            && k.consumer_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !name_ok {
            return Err(ConfigError(format!(
                "kinesis.consumer_name: {:?} must be 1 to 128 characters of A-Z, a-z, 0-9, _ . -",
                k.consumer_name
            )));
        }
        if !(1..=10_000).contains(&k.max_records_per_call) {
            return Err(ConfigError(
                "kinesis.max_records_per_call: must be within 1..=10000".into(),
            ));
        }
        if k.poll_interval_ms < 200 {
            return Err(ConfigError(
                "kinesis.poll_interval_ms: must be at least 200 (5 GetRecords calls per second per shard)"
                    .into(),
            ));
        }
        if k.start_position == StartPosition::AtTimestamp {
            match &k.start_timestamp {
                Some(t) if crate::event::parse_time(t).is_some() => {}
                _ => {
                    return Err(ConfigError(
                        "kinesis.start_timestamp: an RFC 3339 time is required with start_position = \"AT_TIMESTAMP\""
                            .into(),
                    ))
                }
            }
        }
        if self.input.max_event_bytes == 0 || self.input.max_decompressed_bytes == 0 {
            return Err(ConfigError(
                "input.max_event_bytes / input.max_decompressed_bytes: must be above 0".into(),
            ));
        }
        crate::escalation::validate(&self.escalation).map_err(ConfigError)?;
        let p = &self.placement;
        if p.refresh_secs < 60 {
            return Err(ConfigError(
                "placement.refresh_secs: must be at least 60".into(),
            ));
        }
        if let Some(u) = &p.ip_ranges_url {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                return Err(ConfigError(format!(
                    "placement.ip_ranges_url: {u:?} is not an http(s) URL"
                )));
            }
        }
        let inv = &self.inventory;
        if inv.enabled() && inv.refresh_secs < 60 {
            return Err(ConfigError(
                "inventory.refresh_secs: must be at least 60".into(),
            ));
        }
        for (i, arn) in inv.role_arns.iter().enumerate() {
            let ok = arn.starts_with("arn:aws") && arn.contains(":iam::") && arn.contains(":role/");
            if !ok {
                return Err(ConfigError(format!(
                    "inventory.role_arns[{i}]: {arn:?} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)"
                )));
            }
        }
        for (i, r) in inv.regions.iter().enumerate() {
            let ok = !r.is_empty()
                && r.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(ConfigError(format!(
                    "inventory.regions[{i}]: {r:?} is not a region name (us-east-1)"
                )));
            }
        }
        if !inv.regions.is_empty() && !inv.own_account && inv.role_arns.is_empty() {
            return Err(ConfigError(
                "inventory.own_account: false with no inventory.role_arns leaves no account to read".into(),
            ));
        }
        let c = &self.coordination;
        if c.backend == Backend::Dynamodb {
            for (name, t) in [
                ("lease_table", &c.lease_table),
                ("state_table", &c.state_table),
            ] {
                let ok = (3..=255).contains(&t.len())
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
                if !ok {
                    return Err(ConfigError(format!(
                        "coordination.{name}: {t:?} is not a DynamoDB table name (3-255 of a-z, A-Z, 0-9, _ - .)"
                    )));
                }
            }
            if c.lease_table == c.state_table {
                return Err(ConfigError(
                    "coordination.state_table: must differ from coordination.lease_table".into(),
                ));
            }
            if c.lease_duration_secs < 2 {
                return Err(ConfigError(
                    "coordination.lease_duration_secs: must be at least 2".into(),
                ));
            }
        }
        if let Some(w) = &c.worker_id {
            if w.trim().is_empty() {
                return Err(ConfigError(
                    "coordination.worker_id: must not be empty".into(),
                ));
            }
        }
        if self.checkpoint.interval_secs == 0 {
            return Err(ConfigError(
                "checkpoint.interval_secs: must be above 0".into(),
            ));
        }
        let m = &self.metrics;
        if m.findings_capacity > crate::recent::MAX_CAPACITY {
            return Err(ConfigError(format!(
                "metrics.findings_capacity: must be at most {}",
                crate::recent::MAX_CAPACITY
            )));
        }
        if m.findings_token_env.is_some() && m.findings_token_file.is_some() {
            return Err(ConfigError(
                "metrics.findings_token_file: set either findings_token_env or findings_token_file, not both"
                    .into(),
            ));
        }
        if let Some(var) = &m.findings_token_env {
            if var.trim().is_empty() || var.contains('=') || var.contains('\0') {
                return Err(ConfigError(format!(
                    "metrics.findings_token_env: {var:?} is not an environment variable name"
                )));
            }
        }
        if m.findings_token_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(ConfigError(
                "metrics.findings_token_file: must not be empty".into(),
            ));
        }
        Ok(())
    }

    /// Whether a rule is on, and at which base severity.
    pub fn rule_setting(&self, id: &str, default: Severity) -> (bool, Severity) {
        match self.rules.get(id) {
            Some(r) => (r.enabled.unwrap_or(true), r.severity.unwrap_or(default)),
            None => (true, default),
        }
    }
}

fn describe_figment_error(e: figment::Error) -> String {
    let key = e.path.join(".");
    let kind = e.kind.to_string();
    if key.is_empty() {
        kind
    } else {
        format!("{key}: {kind}")
    }
}

/// `YYYY-MM-DD` (end of that day, UTC) or RFC 3339, as epoch seconds.
pub fn parse_expiry(s: &str) -> Option<i64> {
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return d.and_hms_opt(23, 59, 59).map(|t| t.and_utc().timestamp());
    }
    crate::event::parse_time(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn config_errors_name_the_option() {
        let cases: &[(&str, &str)] = &[
            ("[detection]\nwindow_sec = 5\n", "window_sec"),
            (
                "[detection]\nwindow_secs = \"x\"\n",
                "detection.window_secs",
            ),
            ("[nope]\na = 1\n", "nope"),
            (
                "[[allow]]\ncidr = \"10.0.0.0/33\"\nreason = \"x\"\n",
                "allow",
            ),
            (
                "[[allow]]\ncidr = \"10.0.0.0/8\"\nreason = \"\"\n",
                "allow[0].reason",
            ),
            (
                "[[allow]]\ncidr = \"10.0.0.0/8\"\nreason = \"x\"\nexpires = \"soon\"\n",
                "allow[0].expires",
            ),
            ("[rules.not_a_rule]\nenabled = false\n", "rules.not_a_rule"),
            ("[rules.stop_logging]\nseverity = \"urgent\"\n", "severity"),
            (
                "[organization]\naccount_ids = [\"12\"]\n",
                "organization.account_ids[0]",
            ),
            (
                "[kinesis]\npoll_interval_ms = 10\n",
                "kinesis.poll_interval_ms",
            ),
            (
                "[kinesis]\nstart_position = \"AT_TIMESTAMP\"\n",
                "kinesis.start_timestamp",
            ),
            (
                "[kinesis]\nstart_position = \"EARLIEST\"\n",
                "start_position",
            ),
            ("[kinesis]\nconsumer = \"push\"\n", "consumer"),
            ("[kinesis]\nresubscribe_secs = 301\n", "kinesis.resubscribe_secs"),
            ("[kinesis]\nconsumer_name = \"a b\"\n", "kinesis.consumer_name"),
            (
                "[[escalation]]\ntype = \"security_hub\"\nurl = \"https://x\"\n",
                "escalation[0].url",
            ),
            (
                "[[escalation]]\ntype = \"eventbridge\"\nsecret_env = \"S\"\n",
                "escalation[0].secret_env",
            ),
            (
                "[[escalation]]\ntype = \"security_hub\"\naccount_id = \"12\"\n",
                "escalation[0].account_id",
            ),
            (
                "[[escalation]]\ntype = \"security_hub\"\nproduct_arn = \"x\"\n",
                "escalation[0].product_arn",
            ),
            (
                "[[escalation]]\ntype = \"eventbridge\"\nevent_bus = \"a b\"\n",
                "escalation[0].event_bus",
            ),
            (
                "[[escalation]]\ntype = \"eventbridge\"\nsource = \"aws.events\"\n",
                "escalation[0].source",
            ),
            (
                "[[escalation]]\ntype = \"eventbridge\"\naccount_id = \"111122223333\"\n",
                "escalation[0].account_id: only for type",
            ),
            (
                "[[escalation]]\ntype = \"pagerduty\"\nsecret_env = \"K\"\nregion = \"eu-west-1\"\n",
                "escalation[0].region: only for type",
            ),
            (
                "[[escalation]]\ntype = \"security_hub\"\nregion = \"EU West\"\n",
                "escalation[0].region",
            ),
            ("[coordination]\nbackend = \"zookeeper\"\n", "backend"),
            (
                "[coordination]\nbackend = \"dynamodb\"\nlease_table = \"a b\"\n",
                "coordination.lease_table",
            ),
            (
                "[coordination]\nbackend = \"dynamodb\"\nstate_table = \"x\"\n",
                "coordination.state_table",
            ),
            (
                "[coordination]\nbackend = \"dynamodb\"\nlease_table = \"tab1\"\nstate_table = \"tab1\"\n",
                "coordination.state_table",
            ),
            (
                "[coordination]\nbackend = \"dynamodb\"\nlease_duration_secs = 1\n",
                "coordination.lease_duration_secs",
            ),
            ("[coordination]\nworker_id = \" \"\n", "coordination.worker_id"),
            (
                "[metrics]\nfindings_capacity = 100001\n",
                "metrics.findings_capacity",
            ),
            (
                "[metrics]\nfindings_token_env = \"A\"\nfindings_token_file = \"/t\"\n",
                "metrics.findings_token_file",
            ),
            (
                "[metrics]\nfindings_token_env = \"A=B\"\n",
                "metrics.findings_token_env",
            ),
            (
                "[metrics]\nfindings_token_file = \"\"\n",
                "metrics.findings_token_file",
            ),
            ("[metrics]\nfindings_token = \"x\"\n", "findings_token"),
        ];
        for (text, key) in cases {
            let err = Config::from_toml_str(text).unwrap_err().to_string();
            assert!(
                err.contains(key),
                "error for {text:?} should name {key}: {err}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_world_readable_config_naming_a_secret_file_is_warned_about() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("credwatch.toml");
        std::fs::write(
            &p,
            "[[escalation]]\ntype = \"webhook\"\nurl = \"https://x\"\nsecret_file = \"/etc/credwatch/hook\"\n",
        )
        .unwrap();
        let cfg = Config::from_toml_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let w = cfg.exposure_warnings(&p);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("escalation[0].secret_file"), "{w:?}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(cfg.exposure_warnings(&p).is_empty());
        // Readable by all but naming no secret file: nothing to say.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Config::default().exposure_warnings(&p).is_empty());
    }

    #[test]
    fn rule_settings_apply() {
        let cfg = Config::from_toml_str(
            "[rules.stop_logging]\nenabled = false\n[rules.create_user]\nseverity = \"low\"\n",
        )
        .unwrap();
        assert!(!cfg.rule_setting("stop_logging", Severity::High).0);
        assert_eq!(
            cfg.rule_setting("create_user", Severity::Medium),
            (true, Severity::Low)
        );
    }
}
