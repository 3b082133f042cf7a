//! The finding model: what a rule reports, with the evidence an analyst needs to trust it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Severity, ordered from least to most urgent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// One step lower (a failed attempt is less urgent than a successful one).
    pub fn lowered(self) -> Severity {
        match self {
            Severity::Critical => Severity::High,
            Severity::High => Severity::Medium,
            Severity::Medium => Severity::Low,
            Severity::Low | Severity::Info => Severity::Info,
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event as evidence: what was called, when, from where, with what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventEvidence {
    /// `first` (the session's home), `second` (the new origin) or `trigger` (event rules).
    pub role: String,
    pub event_id: String,
    pub event_time: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub event_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub event_source: Option<String>,
    /// Origin class: `public_ip`, `private_ip`, `vpc_endpoint`, `aws_service`, `aws_internal`, `opaque`.
    pub origin_kind: String,
    /// The origin as text: an address, `vpce-…@account (address)`, a service name or the raw value.
    pub origin: String,
    pub user_agent: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub access_key_id: Option<String>,
    /// Where the event was read: `file:line/index` or `shard:sequence`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source: Option<String>,
    /// Where the origin is, for this session: `outside_aws`, `aws` (AWS's ranges, not ours),
    /// `ours` (the inventory: this workload's), `ours_other` (ours, another workload's),
    /// `private`; absent for origins that are not addresses.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub place: Option<String>,
    /// The place in words: `AWS EC2 us-east-1 (3.80.0.0/12)`, `ours: NAT gateway nat-… of vpc-…`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub place_detail: Option<String>,
}

/// An exception the rule considered, and why it did or did not apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionCheck {
    pub exception: String,
    pub applied: bool,
    pub detail: String,
}

/// A finding. `id` is stable for the same (rule, session, origin, window) so that it can serve as
/// an idempotency key downstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub id: String,
    pub rule: String,
    pub severity: Severity,
    pub title: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub account_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub access_key_id: Option<String>,
    /// The workload session: `role/i-…` for an instance role session, else the access key.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub session: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub credential_class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub principal_arn: Option<String>,
    /// Set when the call failed: the finding is then reported at a lower severity.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error_code: Option<String>,
    pub event_ids: Vec<String>,
    pub events: Vec<EventEvidence>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub exceptions_checked: Vec<ExceptionCheck>,
    /// Time of the event that completed the finding (RFC 3339).
    pub event_time: String,
    /// Wall-clock time the finding was made (RFC 3339, with milliseconds).
    pub detected_at: String,
    /// Set when the finding was released after `detection.max_hold_secs` of wall time, before
    /// the stream's event-time watermark passed it: says how far behind the stream was.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub released_early: Option<String>,
    /// The origin judged suspicious: the second origin, or the first when the first is outside
    /// AWS and the second is the workload's own.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub suspicious_origin: Option<String>,
    /// Wall-clock second the event that completed it reached credwatch (for the detection
    /// latency of findings that settled later; not written).
    #[serde(skip)]
    pub arrived_at: Option<i64>,
    /// What makes two findings the same report, for workers that share a stream (not written).
    #[serde(skip)]
    pub claim: Option<Claim>,
}

/// A finding's identity for deduplication across workers: the same `key` is reported once
/// until `until` (event time, epoch seconds); findings without one are claimed by their `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub key: String,
    pub until: i64,
}

impl Finding {
    /// The claim this finding is deduplicated by.
    pub fn claim_key(&self) -> (String, i64) {
        match &self.claim {
            Some(c) => (format!("d#{}", c.key), c.until),
            None => (format!("f#{}", self.id), i64::MAX),
        }
    }
}

impl Finding {
    /// One line for a terminal table: `severity rule session origin→origin`.
    pub fn summary_line(&self) -> String {
        let origins: Vec<&str> = self.events.iter().map(|e| e.origin.as_str()).collect();
        format!(
            "{:<8} {:<28} {:<48} {}",
            self.severity.as_str(),
            self.rule,
            self.session
                .as_deref()
                .or(self.principal_arn.as_deref())
                .unwrap_or("-"),
            origins.join(" -> ")
        )
    }
}

/// Stable finding id: the first 128 bits of xxh3 over the parts, as hex.
pub fn finding_id(parts: &[&str]) -> String {
    let mut joined = String::new();
    for p in parts {
        joined.push_str(p);
        joined.push('\u{1f}');
    }
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(joined.as_bytes()))
}

/// A minimal finding for unit tests (only the id varies).
#[cfg(test)]
pub(crate) fn test_finding(id: &str) -> Finding {
    Finding {
        id: id.into(),
        rule: "session_token_reuse".into(),
        severity: Severity::High,
        title: "t".into(),
        account_id: None,
        access_key_id: None,
        session: None,
        credential_class: None,
        principal_arn: None,
        error_code: None,
        event_ids: vec![],
        events: vec![],
        exceptions_checked: vec![],
        event_time: "2024-01-01T00:00:00Z".into(),
        detected_at: "2024-01-01T00:00:00.000Z".into(),
        released_early: None,
        suspicious_origin: None,
        arrived_at: None,
        claim: None,
    }
}
