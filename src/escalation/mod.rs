//! Escalation: findings delivered to webhooks, Slack, PagerDuty, AWS Security Hub and Amazon
//! EventBridge, at least once.
//!
//! [`Escalator::submit`] writes each finding routed to a destination into that destination's
//! durable spool (`<spool_dir>/<destination>/<finding id>.json`, fsync'd) before it returns, so a
//! checkpoint taken after it never passes a finding that is neither delivered nor spooled.
//! [`Escalator::deliver`] sends what is spooled, oldest first, one request at a time per
//! destination, within the destination's rate limit (a token bucket); a 2xx removes the spool
//! file, a timeout, connection failure, 408, 429 or 5xx is retried with exponential backoff and
//! jitter (or after `Retry-After`), and any other answer is final: the finding is written to
//! `<spool_dir>/dead-letter.jsonl`. Nothing is dropped: findings over the rate limit, or pending
//! during an outage, wait in the spool, across restarts.
//!
//! Idempotency: the generic webhook's `webhook-id` is the finding id (stable for a rule, session,
//! origin and window), PagerDuty's `dedup_key` is one per rule and session. A finding id already
//! pending, delivered or dead-lettered for a destination (remembered for
//! [`spool::DONE_RETENTION_SECS`], on disk) is not spooled again, so the findings re-made when
//! records are replayed after a restart are not escalated twice.

pub mod delivery;
pub mod eventbridge;
pub mod render;
pub mod security_hub;
pub mod sign;
pub mod spool;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::finding::{Finding, Severity};
use crate::metrics::Metrics;
use delivery::{Attempt, TokenBucket};
use sign::Signer;
use spool::{DeadLetters, Spool};

/// The `outcome` label values of `credwatch_escalations_total`, per attempt: `delivered` (2xx),
/// `retried` (failed, will be retried), `rejected` (a final non-2xx answer), and, per finding
/// given up on, `dead_lettered` (written to the dead-letter file).
pub const OUTCOMES: [&str; 4] = ["delivered", "retried", "rejected", "dead_lettered"];

/// PagerDuty's Events API v2 endpoint, the default `url` of a `pagerduty` destination.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// The dead-letter file, directly under the spool directory.
pub const DEAD_LETTER_FILE: &str = "dead-letter.jsonl";

/// The kind of destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DestinationKind {
    Webhook,
    Slack,
    Pagerduty,
    #[serde(rename = "security_hub")]
    SecurityHub,
    Eventbridge,
}

impl DestinationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationKind::Webhook => "webhook",
            DestinationKind::Slack => "slack",
            DestinationKind::Pagerduty => "pagerduty",
            DestinationKind::SecurityHub => "security_hub",
            DestinationKind::Eventbridge => "eventbridge",
        }
    }

    /// AWS API destinations: no URL nor secret, the SDK's credential chain.
    pub fn is_aws(self) -> bool {
        matches!(
            self,
            DestinationKind::SecurityHub | DestinationKind::Eventbridge
        )
    }

    /// Findings per request.
    fn batch(self) -> usize {
        match self {
            DestinationKind::SecurityHub => security_hub::BATCH,
            DestinationKind::Eventbridge => eventbridge::BATCH,
            _ => 1,
        }
    }
}

fn default_burst() -> u32 {
    20
}
fn default_per_minute() -> u32 {
    60
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_retry_base_ms() -> u64 {
    500
}
fn default_retry_max_ms() -> u64 {
    60_000
}

/// One `[[escalation]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationConfig {
    /// `webhook` (Standard Webhooks signed OCSF JSON), `slack` or `pagerduty`.
    #[serde(rename = "type")]
    pub kind: DestinationKind,
    /// Names the destination in metrics, logs and the spool directory (`[A-Za-z0-9_-]`, at most
    /// 64). Default: type and index (`webhook-0`). Set it: the spool of a renamed or moved
    /// destination is no longer read.
    #[serde(default)]
    pub name: Option<String>,
    /// Where to POST (http or https). Required for `webhook`; `pagerduty` defaults to
    /// [`PAGERDUTY_EVENTS_URL`]; for `slack` either here or, better (it is a credential), in
    /// `secret_env`/`secret_file`. Empty: not set.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// Environment variable holding the secret: the signing secret (`whsec_…` or raw) for
    /// `webhook`, the routing key for `pagerduty`, the webhook URL for `slack`.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding the secret (instead of `secret_env`); surrounding whitespace is ignored.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Rule ids escalated here; empty: all.
    #[serde(default)]
    pub rules: Vec<String>,
    /// Findings below this severity are not escalated here.
    #[serde(default)]
    pub min_severity: Option<Severity>,
    /// Requests allowed at once (token bucket capacity).
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Sustained requests per minute (token bucket refill).
    #[serde(default = "default_per_minute")]
    pub per_minute: u32,
    /// Timeout of one request, connection included.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// First retry delay; doubled after each consecutive failure (with jitter).
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: u64,
    /// Longest retry delay (a `Retry-After` from the destination may be longer, up to an hour).
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// `security_hub`, `eventbridge`: AWS region (default: the SDK's, e.g. `AWS_REGION`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// `security_hub`, `eventbridge`: API endpoint, for an emulator (default: AWS's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// `security_hub`: the importing account (default: `sts:GetCallerIdentity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// `security_hub`: product ARN (default: the account's custom integration,
    /// `arn:aws:securityhub:<region>:<account>:product/<account>/default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_arn: Option<String>,
    /// `eventbridge`: bus name or ARN (default: `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_bus: Option<String>,
    /// `eventbridge`: the events' `Source` (default: `credwatch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Default for EscalationConfig {
    /// A `webhook` entry with every optional key at its default and no `url` nor secret.
    fn default() -> Self {
        EscalationConfig {
            kind: DestinationKind::Webhook,
            name: None,
            url: String::new(),
            secret_env: None,
            secret_file: None,
            rules: Vec::new(),
            min_severity: None,
            burst: default_burst(),
            per_minute: default_per_minute(),
            timeout_ms: default_timeout_ms(),
            retry_base_ms: default_retry_base_ms(),
            retry_max_ms: default_retry_max_ms(),
            region: None,
            endpoint_url: None,
            account_id: None,
            product_arn: None,
            event_bus: None,
            source: None,
        }
    }
}

impl EscalationConfig {
    /// Whether this destination takes `f` (its `rules` and `min_severity`).
    pub fn routes(&self, f: &Finding) -> bool {
        routes(&self.rules, self.min_severity, f)
    }

    /// The destination's name: `name`, else type and index (`slack-1`). It is the `destination`
    /// label of the escalation metrics and the spool subdirectory.
    pub fn destination_name(&self, index: usize) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => format!("{}-{index}", self.kind.as_str()),
        }
    }

    fn has_secret(&self) -> bool {
        self.secret_env.is_some() || self.secret_file.is_some()
    }
}

fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_url(raw: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(raw.trim()).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme {:?} is not http or https", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    Ok(url)
}

/// Checks `[[escalation]]` entries; errors name the key (`escalation[0].url: …`). Secrets are
/// not read here (see [`Escalator::new`]).
pub fn validate(list: &[EscalationConfig]) -> Result<(), String> {
    let mut names = HashSet::new();
    for (i, c) in list.iter().enumerate() {
        let key = |k: &str| format!("escalation[{i}].{k}");
        if let Some(n) = &c.name {
            if !valid_name(n) {
                return Err(format!(
                    "{}: {n:?} must be 1 to 64 characters of A-Z, a-z, 0-9, _ and -",
                    key("name")
                ));
            }
        }
        let name = c.destination_name(i);
        if !names.insert(name.clone()) {
            return Err(format!(
                "{}: destination name {name:?} is already used by another entry",
                key("name")
            ));
        }
        if c.secret_env.is_some() && c.secret_file.is_some() {
            return Err(format!(
                "{}: set either secret_env or secret_file, not both",
                key("secret_file")
            ));
        }
        if let Some(var) = &c.secret_env {
            if var.trim().is_empty() || var.contains('=') || var.contains('\0') {
                return Err(format!(
                    "{}: {var:?} is not an environment variable name",
                    key("secret_env")
                ));
            }
        }
        if let Some(p) = &c.secret_file {
            if p.as_os_str().is_empty() {
                return Err(format!("{}: must not be empty", key("secret_file")));
            }
        }
        let has_url = !c.url.trim().is_empty();
        validate_aws_options(c, &key)?;
        match c.kind {
            DestinationKind::Webhook => {
                if !has_url {
                    return Err(format!("{}: required for a webhook", key("url")));
                }
                if !c.has_secret() {
                    return Err(format!(
                        "{}: a webhook is signed: set secret_env or secret_file to the signing \
                         secret (whsec_… or raw; never the secret itself in this file)",
                        key("secret_env")
                    ));
                }
            }
            DestinationKind::Slack => {
                if !has_url && !c.has_secret() {
                    return Err(format!(
                        "{}: the Slack incoming-webhook URL is required: in secret_env or \
                         secret_file (it is a credential), or here",
                        key("url")
                    ));
                }
                if has_url && c.has_secret() {
                    return Err(format!(
                        "{}: give the Slack webhook URL either here or through secret_env or \
                         secret_file, not both",
                        key("url")
                    ));
                }
            }
            DestinationKind::Pagerduty => {
                if !c.has_secret() {
                    return Err(format!(
                        "{}: the PagerDuty routing key is required: set secret_env or secret_file",
                        key("secret_env")
                    ));
                }
            }
            DestinationKind::SecurityHub | DestinationKind::Eventbridge => {
                if has_url {
                    return Err(format!(
                        "{}: not used by {} (the AWS endpoint is endpoint_url, for an emulator)",
                        key("url"),
                        c.kind.as_str()
                    ));
                }
                if c.has_secret() {
                    return Err(format!(
                        "{}: not used by {}: it signs with the AWS credential chain",
                        key(if c.secret_env.is_some() {
                            "secret_env"
                        } else {
                            "secret_file"
                        }),
                        c.kind.as_str()
                    ));
                }
            }
        }
        if has_url {
            check_url(&c.url).map_err(|e| format!("{}: {e}", key("url")))?;
        }
        for (j, r) in c.rules.iter().enumerate() {
            if !crate::rules::RULE_IDS.contains(&r.as_str()) {
                return Err(format!(
                    "{}: unknown rule id {r:?} (known: {})",
                    key(&format!("rules[{j}]")),
                    crate::rules::RULE_IDS.join(", ")
                ));
            }
        }
        if c.burst == 0 {
            return Err(format!("{}: must be above 0", key("burst")));
        }
        if c.per_minute == 0 {
            return Err(format!("{}: must be above 0", key("per_minute")));
        }
        if !(1..=300_000).contains(&c.timeout_ms) {
            return Err(format!("{}: must be within 1..=300000", key("timeout_ms")));
        }
        if c.retry_base_ms == 0 {
            return Err(format!("{}: must be above 0", key("retry_base_ms")));
        }
        if c.retry_max_ms < c.retry_base_ms {
            return Err(format!(
                "{}: must be at least retry_base_ms ({})",
                key("retry_max_ms"),
                c.retry_base_ms
            ));
        }
    }
    Ok(())
}

/// Reads the secret of entry `i` from its environment variable or file; errors name the key.
/// The AWS destinations' own options: set only where they mean something, and well formed.
fn validate_aws_options(c: &EscalationConfig, key: &dyn Fn(&str) -> String) -> Result<(), String> {
    let only = |name: &str, set: bool, kinds: &[DestinationKind]| {
        if set && !kinds.contains(&c.kind) {
            Err(format!(
                "{}: only for type = {}",
                key(name),
                kinds
                    .iter()
                    .map(|k| format!("{:?}", k.as_str()))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ))
        } else {
            Ok(())
        }
    };
    let aws = [DestinationKind::SecurityHub, DestinationKind::Eventbridge];
    only("region", c.region.is_some(), &aws)?;
    only("endpoint_url", c.endpoint_url.is_some(), &aws)?;
    only(
        "account_id",
        c.account_id.is_some(),
        &[DestinationKind::SecurityHub],
    )?;
    only(
        "product_arn",
        c.product_arn.is_some(),
        &[DestinationKind::SecurityHub],
    )?;
    only(
        "event_bus",
        c.event_bus.is_some(),
        &[DestinationKind::Eventbridge],
    )?;
    only(
        "source",
        c.source.is_some(),
        &[DestinationKind::Eventbridge],
    )?;
    if let Some(r) = &c.region {
        if r.is_empty()
            || !r
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!(
                "{}: {r:?} is not an AWS region name",
                key("region")
            ));
        }
    }
    if let Some(u) = &c.endpoint_url {
        check_url(u).map_err(|e| format!("{}: {e}", key("endpoint_url")))?;
    }
    if let Some(a) = &c.account_id {
        if a.len() != 12 || !a.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "{}: {a:?} is not a 12-digit account id",
                key("account_id")
            ));
        }
    }
    if let Some(p) = &c.product_arn {
        if !p.starts_with("arn:") || !p.contains(":product/") {
            return Err(format!(
                "{}: {p:?} is not a Security Hub product ARN (arn:aws:securityhub:REGION:ACCOUNT:product/ACCOUNT/default)",
                key("product_arn")
            ));
        }
    }
    if let Some(b) = &c.event_bus {
        let name_ok = (1..=256).contains(&b.len())
            && b.bytes()
                .all(|x| x.is_ascii_alphanumeric() || b"._-/:".contains(&x));
        if !name_ok {
            return Err(format!(
                "{}: {b:?} is not an event bus name or ARN",
                key("event_bus")
            ));
        }
    }
    if let Some(s) = &c.source {
        if s.is_empty() || s.len() > 256 || s.starts_with("aws.") {
            return Err(format!(
                "{}: {s:?} must be 1 to 256 characters and not start with \"aws.\"",
                key("source")
            ));
        }
    }
    Ok(())
}

fn read_secret(c: &EscalationConfig, i: usize) -> anyhow::Result<Option<String>> {
    let env_key = format!("escalation[{i}].secret_env");
    let file_key = format!("escalation[{i}].secret_file");
    crate::private::read_secret(
        c.secret_env.as_deref().map(|v| (v, env_key.as_str())),
        c.secret_file.as_deref().map(|p| (p, file_key.as_str())),
    )
}

/// The config key a secret came from, for errors.
fn secret_key(c: &EscalationConfig, i: usize) -> String {
    if c.secret_file.is_some() {
        format!("escalation[{i}].secret_file")
    } else {
        format!("escalation[{i}].secret_env")
    }
}

enum Target {
    Webhook {
        url: reqwest::Url,
        key: Signer,
    },
    Slack {
        url: reqwest::Url,
    },
    Pagerduty {
        url: reqwest::Url,
        routing_key: String,
    },
    SecurityHub(security_hub::SecurityHub),
    EventBridge(eventbridge::EventBridge),
}

struct Destination {
    name: String,
    kind: DestinationKind,
    target: Target,
    rules: Vec<String>,
    min_severity: Option<Severity>,
    spool: Spool,
    wake: Notify,
    timeout: Duration,
    retry_base: Duration,
    retry_max: Duration,
    burst: u32,
    per_minute: u32,
}

impl Destination {
    fn routes(&self, f: &Finding) -> bool {
        routes(&self.rules, self.min_severity, f)
    }
}

/// Whether a destination with these `rules` (empty: all) and `min_severity` takes `f`.
fn routes(rules: &[String], min_severity: Option<Severity>, f: &Finding) -> bool {
    (rules.is_empty() || rules.contains(&f.rule)) && min_severity.is_none_or(|m| f.severity >= m)
}

/// The escalation spool's folder under a checkpoint folder: `run` and `hunt --escalate` share it.
pub fn spool_dir(checkpoint_dir: &Path) -> PathBuf {
    checkpoint_dir.join("escalation-spool")
}

use crate::private::create_dir as create_private_dir;

/// Delivers findings to the configured destinations, at least once, through a durable spool.
pub struct Escalator {
    destinations: Vec<Destination>,
    client: reqwest::Client,
    dead_letters: DeadLetters,
    metrics: Arc<Metrics>,
}

impl Escalator {
    /// Opens the spool (creating directories) and reads back what is pending from a previous
    /// run, validates destinations, reads secrets. Errors name the config key. With no
    /// destination nothing is touched on disk.
    pub fn new(
        cfg: &[EscalationConfig],
        spool_dir: &Path,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Escalator> {
        validate(cfg).map_err(anyhow::Error::msg)?;
        let client = reqwest::Client::builder()
            .user_agent(concat!("credwatch/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the HTTP client")?;
        let dead_letters = DeadLetters::new(spool_dir.join(DEAD_LETTER_FILE));
        let mut esc = Escalator {
            destinations: Vec::new(),
            client,
            dead_letters,
            metrics,
        };
        if cfg.is_empty() {
            return Ok(esc);
        }
        create_private_dir(spool_dir)
            .with_context(|| format!("creating the escalation spool {}", spool_dir.display()))?;

        for (i, c) in cfg.iter().enumerate() {
            let name = c.destination_name(i);
            let secret = read_secret(c, i)?;
            let target = match c.kind {
                DestinationKind::Webhook => {
                    let keys = sign::parse_keys(secret.as_deref().unwrap_or_default())
                        .map_err(|e| anyhow::anyhow!("{}: {e}", secret_key(c, i)))?;
                    Target::Webhook {
                        url: check_url(&c.url).map_err(anyhow::Error::msg)?,
                        key: Signer::new(keys, c.secret_file.clone()),
                    }
                }
                DestinationKind::Slack => {
                    let url = match &secret {
                        Some(s) => check_url(s).map_err(|e| {
                            // Never echo the URL: it is the credential.
                            anyhow::anyhow!("{}: the Slack webhook URL {e}", secret_key(c, i))
                        })?,
                        None => check_url(&c.url).map_err(anyhow::Error::msg)?,
                    };
                    Target::Slack { url }
                }
                DestinationKind::Pagerduty => {
                    let routing_key = secret.unwrap_or_default();
                    anyhow::ensure!(
                        !routing_key.chars().any(char::is_whitespace),
                        "{}: the routing key contains whitespace",
                        secret_key(c, i)
                    );
                    let url = if c.url.trim().is_empty() {
                        PAGERDUTY_EVENTS_URL
                    } else {
                        c.url.as_str()
                    };
                    Target::Pagerduty {
                        url: check_url(url).map_err(anyhow::Error::msg)?,
                        routing_key,
                    }
                }
                DestinationKind::SecurityHub => {
                    Target::SecurityHub(security_hub::SecurityHub::new(c))
                }
                DestinationKind::Eventbridge => {
                    Target::EventBridge(eventbridge::EventBridge::new(c))
                }
            };
            let dir = spool_dir.join(&name);
            create_private_dir(&dir)
                .with_context(|| format!("escalation[{i}]: creating {}", dir.display()))?;
            let (spool, report) = Spool::open(&dir)
                .with_context(|| format!("escalation[{i}]: opening the spool {}", dir.display()))?;
            let dest = Destination {
                name: name.clone(),
                kind: c.kind,
                target,
                rules: c.rules.clone(),
                min_severity: c.min_severity,
                spool,
                wake: Notify::new(),
                timeout: Duration::from_millis(c.timeout_ms),
                retry_base: Duration::from_millis(c.retry_base_ms),
                retry_max: Duration::from_millis(c.retry_max_ms),
                burst: c.burst,
                per_minute: c.per_minute,
            };
            for o in OUTCOMES {
                esc.metrics.escalations.with_label_values(&[&name, o]);
            }
            esc.metrics.escalation_retries.with_label_values(&[&name]);
            esc.metrics.escalation_latency.with_label_values(&[&name]);
            for (file, content, error) in report.unreadable {
                esc.dead_letters
                    .write(&serde_json::json!({
                        "time": now_rfc3339(),
                        "destination": name,
                        "type": c.kind.as_str(),
                        "reason": format!("unreadable spool file {}: {error}", file.display()),
                        "content": content,
                    }))
                    .with_context(|| format!("writing {}", esc.dead_letters.path().display()))?;
                esc.metrics
                    .escalations
                    .with_label_values(&[&name, "dead_lettered"])
                    .inc();
                std::fs::remove_file(&file)
                    .with_context(|| format!("removing {}", file.display()))?;
                tracing::error!(destination = %name, file = %file.display(), "unreadable escalation spool file dead-lettered");
            }
            if report.pending > 0 {
                tracing::info!(destination = %name, pending = report.pending, "escalation spool read back");
            }
            esc.destinations.push(dest);
            esc.update_depth(esc.destinations.len() - 1);
        }
        esc.warn_orphans(spool_dir);
        Ok(esc)
    }

    /// Spool directories of destinations no longer configured (renamed, reordered without a
    /// `name`) that still hold findings: they would never be delivered.
    fn warn_orphans(&self, spool_dir: &Path) {
        let Ok(entries) = std::fs::read_dir(spool_dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Some(dir_name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if !path.is_dir() || self.destinations.iter().any(|d| d.name == dir_name) {
                continue;
            }
            let pending = std::fs::read_dir(&path)
                .map(|it| {
                    it.flatten()
                        .filter(|f| f.file_name().to_string_lossy().ends_with(".json"))
                        .count()
                })
                .unwrap_or(0);
            if pending > 0 {
                tracing::warn!(
                    dir = %path.display(),
                    pending,
                    "escalation spool of a destination that is no longer configured still holds \
                     findings: give the destination its old name, or move the files into the \
                     new destination's directory"
                );
            }
        }
    }

    /// The destinations' names, in configuration order.
    pub fn destinations(&self) -> Vec<&str> {
        self.destinations.iter().map(|d| d.name.as_str()).collect()
    }

    /// Findings waiting for one destination.
    pub fn pending(&self, destination: &str) -> Option<usize> {
        self.destinations
            .iter()
            .find(|d| d.name == destination)
            .map(|d| d.spool.depth())
    }

    /// Findings waiting, over all destinations.
    pub fn pending_total(&self) -> usize {
        self.destinations.iter().map(|d| d.spool.depth()).sum()
    }

    /// `<spool_dir>/dead-letter.jsonl`.
    pub fn dead_letter_path(&self) -> &Path {
        self.dead_letters.path()
    }

    fn update_depth(&self, i: usize) {
        let d = &self.destinations[i];
        self.metrics
            .escalation_spool_depth
            .with_label_values(&[&d.name])
            .set(d.spool.depth() as i64);
    }

    /// Durably spools the findings routed to each destination: when this returns `Ok`, each of
    /// them is in a fsync'd file (or was already pending, delivered or dead-lettered for that
    /// destination). Blocking file I/O; cheap when there are no destinations or no findings.
    pub fn submit(&self, findings: &[Finding]) -> std::io::Result<()> {
        if self.destinations.is_empty() || findings.is_empty() {
            return Ok(());
        }
        for (i, d) in self.destinations.iter().enumerate() {
            let added = d.spool.add(findings.iter().filter(|f| d.routes(f)))?;
            if added > 0 {
                self.update_depth(i);
                d.wake.notify_one();
            }
        }
        Ok(())
    }

    /// Delivers spooled findings until `shutdown` is cancelled, then returns promptly (an
    /// attempt cut short stays spooled and is made again after the restart). What was pending
    /// from a previous run was read back by [`Escalator::new`] and goes first. With no
    /// destination it just waits for `shutdown`.
    pub async fn deliver(self: Arc<Self>, shutdown: CancellationToken) {
        if self.destinations.is_empty() {
            shutdown.cancelled().await;
            return;
        }
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..self.destinations.len() {
            let me = self.clone();
            let sd = shutdown.clone();
            tasks.spawn(async move { me.run_destination(i, sd).await });
        }
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r {
                tracing::error!("escalation delivery task failed: {e}");
            }
        }
    }

    /// Delivers until every spool is empty or `timeout` has passed, then stops; returns how many
    /// findings are still pending (they stay spooled for the next run). For one-shot use, such
    /// as escalating what a hunt found, without Kinesis. Not to be run alongside
    /// [`Escalator::deliver`].
    pub async fn flush(self: Arc<Self>, timeout: Duration) -> usize {
        let stop = CancellationToken::new();
        let task = tokio::spawn(self.clone().deliver(stop.clone()));
        let deadline = tokio::time::Instant::now() + timeout;
        while self.pending_total() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        let _ = task.await;
        self.pending_total()
    }

    async fn run_destination(&self, i: usize, shutdown: CancellationToken) {
        let d = &self.destinations[i];
        let m = &self.metrics;
        let mut bucket = TokenBucket::new(d.burst, d.per_minute, Instant::now());
        let mut failures: u32 = 0;
        let mut not_before: Option<tokio::time::Instant> = None;
        loop {
            let mut batch = d.spool.head_batch(d.kind.batch());
            if batch.is_empty() {
                tokio::select! {
                    _ = d.wake.notified() => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
            if let Target::EventBridge(eb) = &d.target {
                let refs: Vec<&Finding> = batch.iter().map(|p| p.finding.as_ref()).collect();
                let n = eb.take(&refs);
                batch.truncate(n);
            }
            if let Some(t) = not_before.take() {
                tokio::select! {
                    _ = tokio::time::sleep_until(t) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            // One token per request, whatever the batch size.
            while let Err(wait) = bucket.take(Instant::now()) {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            for p in &batch {
                if p.attempts > 0 {
                    m.escalation_retries.with_label_values(&[&d.name]).inc();
                }
            }
            let outcomes = tokio::select! {
                o = self.attempt(d, &batch) => o,
                _ = shutdown.cancelled() => return,
            };
            let mut retry_after: Option<Option<Duration>> = None;
            let mut progressed = false;
            for (next, outcome) in batch.iter().zip(outcomes) {
                match self.settle_one(d, next, outcome) {
                    Settled::Done => progressed = true,
                    Settled::Retry(after) => {
                        let prev = retry_after.flatten();
                        retry_after = Some(match (prev, after) {
                            (Some(a), Some(b)) => Some(a.max(b)),
                            (a, b) => a.or(b),
                        });
                    }
                }
            }
            match retry_after {
                Some(after) => {
                    failures += 1;
                    let wait = after
                        .unwrap_or_else(|| delivery::backoff(failures, d.retry_base, d.retry_max));
                    not_before = Some(tokio::time::Instant::now() + wait);
                }
                None if progressed => failures = 0,
                None => {}
            }
            self.update_depth(i);
        }
    }

    /// Records what one attempt at one finding came to: delivered, dead-lettered, or requeued
    /// for another try.
    fn settle_one(&self, d: &Destination, next: &spool::Pending, outcome: Attempt) -> Settled {
        let m = &self.metrics;
        let f = &next.finding;
        match outcome {
            Attempt::Delivered => {
                m.escalations
                    .with_label_values(&[&d.name, "delivered"])
                    .inc();
                if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&f.detected_at) {
                    let ms = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
                        .num_milliseconds()
                        .max(0);
                    m.escalation_latency
                        .with_label_values(&[&d.name])
                        .observe(ms as f64 / 1000.0);
                }
                if let Err(e) = d.spool.finish(&f.id, "delivered") {
                    // The spool file may be left: it would be sent once more after a
                    // restart, which the destination deduplicates.
                    tracing::error!(destination = %d.name, id = %f.id, "escalation spool: {e}");
                }
                tracing::debug!(destination = %d.name, id = %f.id, attempts = next.attempts + 1, "finding escalated");
                Settled::Done
            }
            Attempt::Retry { reason, after } => {
                m.escalations.with_label_values(&[&d.name, "retried"]).inc();
                tracing::warn!(
                    destination = %d.name,
                    id = %f.id,
                    attempt = next.attempts + 1,
                    "escalation failed, will retry: {reason}"
                );
                d.spool.requeue(&f.id);
                Settled::Retry(after)
            }
            Attempt::Rejected { status, body } => {
                m.escalations
                    .with_label_values(&[&d.name, "rejected"])
                    .inc();
                let reason = if status == 0 {
                    format!("rejected: {}", render::truncate(&body, 200))
                } else {
                    format!("rejected with HTTP {status}")
                };
                tracing::error!(
                    destination = %d.name,
                    id = %f.id,
                    status,
                    "escalation rejected, dead-lettered: {}",
                    render::truncate(&body, 200)
                );
                let record = serde_json::json!({
                    "time": now_rfc3339(),
                    "destination": d.name,
                    "type": d.kind.as_str(),
                    "finding_id": f.id,
                    "rule": f.rule,
                    "reason": reason,
                    "status": status,
                    "response": body,
                    "attempts": next.attempts + 1,
                    "finding": f.as_ref(),
                });
                match self.dead_letters.write(&record) {
                    Ok(()) => {
                        m.escalations
                            .with_label_values(&[&d.name, "dead_lettered"])
                            .inc();
                        if let Err(e) = d.spool.finish(&f.id, "dead_lettered") {
                            tracing::error!(destination = %d.name, id = %f.id, "escalation spool: {e}");
                        }
                        Settled::Done
                    }
                    Err(e) => {
                        // Kept in the spool: tried again later rather than lost.
                        tracing::error!(
                            destination = %d.name,
                            id = %f.id,
                            "writing {}: {e}",
                            self.dead_letters.path().display()
                        );
                        d.spool.requeue(&f.id);
                        Settled::Retry(None)
                    }
                }
            }
        }
    }

    /// One request for `batch`: one outcome per finding, in order.
    async fn attempt(&self, d: &Destination, batch: &[spool::Pending]) -> Vec<Attempt> {
        let findings: Vec<&Finding> = batch.iter().map(|p| p.finding.as_ref()).collect();
        match &d.target {
            Target::SecurityHub(hub) => hub.send(&findings).await,
            Target::EventBridge(eb) => eb.send(&findings).await,
            Target::Webhook { url, key } => {
                let mut out = Vec::with_capacity(findings.len());
                for f in findings {
                    let body = render::ocsf_detection_finding(f);
                    out.push(self.post(d, f, url, body, Some(key)).await);
                }
                out
            }
            Target::Slack { url } => {
                let mut out = Vec::with_capacity(findings.len());
                for f in findings {
                    out.push(self.post(d, f, url, render::slack_message(f), None).await);
                }
                out
            }
            Target::Pagerduty { url, routing_key } => {
                let mut out = Vec::with_capacity(findings.len());
                for f in findings {
                    let body = render::pagerduty_event(f, routing_key);
                    out.push(self.post(d, f, url, body, None).await);
                }
                out
            }
        }
    }

    /// One HTTP POST of one finding (webhook, Slack, PagerDuty); `key` signs it (webhook).
    async fn post(
        &self,
        d: &Destination,
        f: &Finding,
        url: &reqwest::Url,
        body: serde_json::Value,
        key: Option<&Signer>,
    ) -> Attempt {
        let body = match serde_json::to_vec(&body) {
            Ok(b) => b,
            Err(e) => {
                return Attempt::Rejected {
                    status: 0,
                    body: format!("rendering the body: {e}"),
                }
            }
        };
        let mut req = self
            .client
            .post(url.clone())
            .timeout(d.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(key) = key {
            let ts = chrono::Utc::now().timestamp();
            req = req
                .header("webhook-id", &f.id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", key.sign(&f.id, ts, &body));
        }
        let resp = match req.body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Retry {
                    reason: describe_error(e),
                    after: None,
                }
            }
        };
        let status = resp.status();
        if status.is_success() {
            return Attempt::Delivered;
        }
        if delivery::retryable(status) {
            let after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| delivery::parse_retry_after(v, chrono::Utc::now()));
            return Attempt::Retry {
                reason: format!("HTTP {}", status.as_u16()),
                after,
            };
        }
        Attempt::Rejected {
            status: status.as_u16(),
            body: read_limited(resp, 2048).await,
        }
    }
}

/// The start of a response body, as text.
async fn read_limited(mut resp: reqwest::Response, limit: usize) -> String {
    let mut out = Vec::new();
    while out.len() < limit {
        match resp.chunk().await {
            Ok(Some(c)) => out.extend_from_slice(&c),
            _ => break,
        }
    }
    out.truncate(limit);
    String::from_utf8_lossy(&out).into_owned()
}

/// A transport error without its URL (a Slack webhook URL is a credential), with its causes.
fn describe_error(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(&e);
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

use delivery::now_rfc3339;

/// What became of one finding of a batch.
enum Settled {
    /// Delivered or dead-lettered.
    Done,
    /// Requeued; the destination said when to try again, or not.
    Retry(Option<Duration>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(toml_text: &str) -> EscalationConfig {
        toml::from_str(toml_text).expect("entry parses")
    }

    #[test]
    fn defaults_and_names() {
        let c = entry("type = \"slack\"\nsecret_env = \"SLACK_URL\"");
        assert_eq!(c.burst, 20);
        assert_eq!(c.per_minute, 60);
        assert_eq!(c.retry_base_ms, 500);
        assert_eq!(c.destination_name(3), "slack-3");
        let named = EscalationConfig {
            name: Some("soc".into()),
            ..c.clone()
        };
        assert_eq!(named.destination_name(3), "soc");
        assert!(validate(&[c]).is_ok());
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("type = \"webhook\"\nsecret_env = \"S\"", "escalation[0].url: required"),
            ("type = \"webhook\"\nurl = \"https://x\"", "escalation[0].secret_env:"),
            (
                "type = \"webhook\"\nurl = \"ftp://x\"\nsecret_env = \"S\"",
                "escalation[0].url: scheme",
            ),
            (
                "type = \"webhook\"\nurl = \"https://x\"\nsecret_env = \"S\"\nsecret_file = \"/f\"",
                "escalation[0].secret_file: set either",
            ),
            (
                "type = \"slack\"\nurl = \"https://x\"\nsecret_env = \"S\"",
                "escalation[0].url: give the Slack",
            ),
            ("type = \"slack\"", "escalation[0].url: the Slack"),
            ("type = \"pagerduty\"", "escalation[0].secret_env: the PagerDuty"),
            (
                "type = \"pagerduty\"\nsecret_env = \"K\"\nrules = [\"session_token_reuse\", \"nope\"]",
                "escalation[0].rules[1]: unknown rule id \"nope\"",
            ),
            (
                "type = \"pagerduty\"\nsecret_env = \"K\"\nname = \"a/b\"",
                "escalation[0].name:",
            ),
            (
                "type = \"pagerduty\"\nsecret_env = \"K\"\nburst = 0",
                "escalation[0].burst:",
            ),
            (
                "type = \"pagerduty\"\nsecret_env = \"K\"\nretry_base_ms = 100\nretry_max_ms = 10",
                "escalation[0].retry_max_ms:",
            ),
        ];
        for (text, want) in cases {
            let err = validate(&[entry(text)]).expect_err(text);
            assert!(err.starts_with(want), "{text}: {err}");
        }
        let a = entry("type = \"pagerduty\"\nsecret_env = \"K\"\nname = \"pd\"");
        let err = validate(&[a.clone(), a]).unwrap_err();
        assert!(err.starts_with("escalation[1].name:"), "{err}");
        assert!(toml::from_str::<EscalationConfig>("type = \"slack\"\nsecret = \"x\"").is_err());
    }

    #[test]
    fn new_reads_secrets_and_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let m = Arc::new(Metrics::new());
        let c = entry(
            "type = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\nsecret_env = \"CREDWATCH_TEST_UNSET_SECRET_4711\"",
        );
        let err = Escalator::new(&[c], dir.path(), m.clone())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with("escalation[0].secret_env: environment variable CREDWATCH_TEST_UNSET_SECRET_4711 is not set"),
            "{err}"
        );
        let secret = dir.path().join("slack-url");
        std::fs::write(&secret, "not a url\n").unwrap();
        let c = EscalationConfig {
            kind: DestinationKind::Slack,
            secret_file: Some(secret),
            ..Default::default()
        };
        let err = Escalator::new(&[c], dir.path(), m.clone())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with("escalation[0].secret_file: the Slack webhook URL not a URL"),
            "{err}"
        );
        assert!(!err.contains("not a url"), "the URL is not echoed: {err}");
        // No destination: nothing on disk.
        let none = dir.path().join("none");
        let e = Escalator::new(&[], &none, m).unwrap();
        e.submit(&[]).unwrap();
        assert!(!none.exists());
    }
}
