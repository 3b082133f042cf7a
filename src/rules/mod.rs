//! Rules: each has an id, a default severity, can be switched off or re-rated in config
//! (`[rules.<id>]`), and produces findings with evidence.

pub mod event_rules;
pub mod session_token_reuse;
pub mod workload_outside_aws;

use crate::config::Config;
use crate::engine::origin::Origin;
use crate::engine::Position;
use crate::event::{format_time, CloudTrailEvent};
use crate::finding::{EventEvidence, Severity};

/// A rule's identity and default severity.
#[derive(Debug, Clone, Copy)]
pub struct RuleInfo {
    pub id: &'static str,
    pub severity: Severity,
    pub description: &'static str,
}

/// Every rule, in the order they are documented.
pub const RULES: &[RuleInfo] = &[
    RuleInfo { id: "session_token_reuse", severity: Severity::High, description: "a temporary credential's session used from a second origin within its lifetime" },
    RuleInfo { id: "workload_credentials_outside_aws", severity: Severity::High, description: "EC2 instance, ECS task or Lambda credentials used from an address outside AWS's published ranges, not in the inventory and not allowed (GuardDuty's InstanceCredentialExfiltration.OutsideAWS, for all three, in real time)" },
    RuleInfo { id: "foreign_vpc_endpoint", severity: Severity::High, description: "a temporary credential used through a VPC endpoint owned by an account outside the organisation" },
    RuleInfo { id: "workload_get_caller_identity", severity: Severity::Medium, description: "sts:GetCallerIdentity made with EC2, ECS or Lambda credentials (an attacker's first question)" },
    RuleInfo { id: "security_group_open_to_world", severity: Severity::Medium, description: "security-group ingress opened to a /0 range (IPv4 or IPv6)" },
    RuleInfo { id: "stop_logging", severity: Severity::High, description: "cloudtrail:StopLogging" },
    RuleInfo { id: "delete_trail", severity: Severity::High, description: "cloudtrail:DeleteTrail" },
    RuleInfo { id: "put_event_selectors", severity: Severity::Medium, description: "cloudtrail:PutEventSelectors (can silence a trail)" },
    RuleInfo { id: "deactivate_mfa_device", severity: Severity::Medium, description: "iam:DeactivateMFADevice" },
    RuleInfo { id: "delete_virtual_mfa_device", severity: Severity::Medium, description: "iam:DeleteVirtualMFADevice" },
    RuleInfo { id: "create_user", severity: Severity::Medium, description: "iam:CreateUser" },
    RuleInfo { id: "create_access_key", severity: Severity::Medium, description: "iam:CreateAccessKey" },
    RuleInfo { id: "create_login_profile", severity: Severity::Medium, description: "iam:CreateLoginProfile" },
    RuleInfo { id: "snapshot_shared_publicly", severity: Severity::High, description: "an EBS or RDS snapshot shared with all accounts" },
    RuleInfo { id: "ami_shared_publicly", severity: Severity::High, description: "an AMI shared with all accounts" },
    RuleInfo { id: "snapshot_shared_externally", severity: Severity::Medium, description: "an EBS or RDS snapshot shared with an account outside the organisation" },
    RuleInfo { id: "ami_shared_externally", severity: Severity::Medium, description: "an AMI shared with an account outside the organisation" },
];

/// Every rule id, for config validation.
pub const RULE_IDS: &[&str] = &[
    "session_token_reuse",
    "workload_credentials_outside_aws",
    "foreign_vpc_endpoint",
    "workload_get_caller_identity",
    "security_group_open_to_world",
    "stop_logging",
    "delete_trail",
    "put_event_selectors",
    "deactivate_mfa_device",
    "delete_virtual_mfa_device",
    "create_user",
    "create_access_key",
    "create_login_profile",
    "snapshot_shared_publicly",
    "ami_shared_publicly",
    "snapshot_shared_externally",
    "ami_shared_externally",
];

/// Rule switches and severities resolved from config, indexed like [`RULES`].
#[derive(Debug, Clone)]
pub struct RuleSet {
    settings: Vec<(bool, Severity)>,
}

impl RuleSet {
    pub fn from_config(cfg: &Config) -> RuleSet {
        RuleSet {
            settings: RULES
                .iter()
                .map(|r| cfg.rule_setting(r.id, r.severity))
                .collect(),
        }
    }

    /// `Some(severity)` when the rule is enabled.
    pub fn get(&self, id: &str) -> Option<Severity> {
        let i = RULES.iter().position(|r| r.id == id)?;
        let (on, sev) = self.settings[i];
        on.then_some(sev)
    }
}

/// Evidence for the event being processed.
pub fn event_evidence(
    role: &str,
    ev: &CloudTrailEvent<'_>,
    origin: &Origin<'_>,
    t: i64,
    pos: &Position<'_>,
) -> EventEvidence {
    EventEvidence {
        role: role.to_string(),
        event_id: ev.event_id().to_string(),
        event_time: format_time(t),
        event_name: Some(ev.event_name().to_string()),
        event_source: Some(ev.event_source().to_string()),
        origin_kind: origin.class().as_str().to_string(),
        origin: origin.to_string(),
        user_agent: ev.user_agent().to_string(),
        access_key_id: ev.access_key_id().map(str::to_string),
        source: Some(pos.to_string()),
        place: None,
        place_detail: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_ids_and_rules_agree() {
        let ids: Vec<&str> = RULES.iter().map(|r| r.id).collect();
        assert_eq!(ids, RULE_IDS);
    }
}
