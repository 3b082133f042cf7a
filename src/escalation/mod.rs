//! Escalation: findings delivered to webhooks, Slack and PagerDuty, at least once.

use serde::{Deserialize, Serialize};

use crate::finding::Severity;

/// The kind of destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DestinationKind {
    Webhook,
    Slack,
    Pagerduty,
}

/// One `[[escalation]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationConfig {
    #[serde(rename = "type")]
    pub kind: DestinationKind,
    pub url: String,
    #[serde(default)]
    pub secret_env: Option<String>,
    #[serde(default)]
    pub secret_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub min_severity: Option<Severity>,
}
