//! The ground truth of a generated workload: `truth.json`.
//!
//! ```json
//! {
//!   "seed": 1,
//!   "events": 10000,
//!   "start": "2024-08-01T00:00:00Z",
//!   "end": "2024-08-01T04:00:00Z",
//!   "organization": ["314159265358", "271828182845", "161803398874"],
//!   "config": "credwatch.toml",
//!   "attacks": [
//!     {"kind": "outside_aws", "session": "app-role/i-0123456789abcdef0",
//!      "access_key_id": "ASIA…", "event_id": "<the attack's first event>",
//!      "time": "2024-08-01T02:10:00Z", "origin": "198.51.100.7", "events": 2}
//!   ],
//!   "benign": [{"kind": "eip_association", "session": "web-role/i-0fedcba9876543210"}]
//! }
//! ```
//!
//! - `session` is what a finding's `session` holds: `role/i-…` for an instance-profile session
//!   (one session across the instance's hourly key rotations), else the access key id.
//! - `attacks[].kind`: `outside_aws`, `other_account`, `foreign_vpc_endpoint`, `other_instance`,
//!   `lambda_outside`. `event_id` and `time` are those of the attack's first event; `origin`
//!   (where the attacker called from, as findings show it) and `events` (how many calls the
//!   attacker made) are informative.
//! - `benign[].kind`: `eip_association`, `stop_start`, `nat_shared`, `ipv6_dual_stack`,
//!   `vpc_endpoint`, `aws_service`, `aws_internal`, `lambda`, `ecs`, `console`, `rotation`. One
//!   label per session: the reason that session could be mistaken for an attack. Every instance
//!   rotates its key hourly; `rotation` labels the instances with nothing else special.
//! - `organization` lists the organisation's accounts; `config` names the configuration file
//!   (beside `truth.json`) that makes every benign kind benign.
//!
//! Unknown fields are ignored when reading, so a hand-written truth needs only `attacks` and
//! `benign`.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttackKind {
    /// Stolen instance credentials used from outside AWS.
    OutsideAws,
    /// Stolen instance credentials used from an address of another account's instance.
    OtherAccount,
    /// Stolen instance credentials used through a VPC endpoint of a foreign account.
    ForeignVpcEndpoint,
    /// Stolen instance credentials used from another instance of the same account.
    OtherInstance,
    /// Lambda credentials used outside the Lambda runtime.
    LambdaOutside,
}

impl AttackKind {
    pub const ALL: [AttackKind; 5] = [
        AttackKind::OutsideAws,
        AttackKind::OtherAccount,
        AttackKind::ForeignVpcEndpoint,
        AttackKind::OtherInstance,
        AttackKind::LambdaOutside,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttackKind::OutsideAws => "outside_aws",
            AttackKind::OtherAccount => "other_account",
            AttackKind::ForeignVpcEndpoint => "foreign_vpc_endpoint",
            AttackKind::OtherInstance => "other_instance",
            AttackKind::LambdaOutside => "lambda_outside",
        }
    }
}

impl fmt::Display for AttackKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BenignKind {
    EipAssociation,
    StopStart,
    NatShared,
    Ipv6DualStack,
    VpcEndpoint,
    AwsService,
    AwsInternal,
    Lambda,
    Ecs,
    Console,
    Rotation,
}

impl BenignKind {
    pub const ALL: [BenignKind; 11] = [
        BenignKind::EipAssociation,
        BenignKind::StopStart,
        BenignKind::NatShared,
        BenignKind::Ipv6DualStack,
        BenignKind::VpcEndpoint,
        BenignKind::AwsService,
        BenignKind::AwsInternal,
        BenignKind::Lambda,
        BenignKind::Ecs,
        BenignKind::Console,
        BenignKind::Rotation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BenignKind::EipAssociation => "eip_association",
            BenignKind::StopStart => "stop_start",
            BenignKind::NatShared => "nat_shared",
            BenignKind::Ipv6DualStack => "ipv6_dual_stack",
            BenignKind::VpcEndpoint => "vpc_endpoint",
            BenignKind::AwsService => "aws_service",
            BenignKind::AwsInternal => "aws_internal",
            BenignKind::Lambda => "lambda",
            BenignKind::Ecs => "ecs",
            BenignKind::Console => "console",
            BenignKind::Rotation => "rotation",
        }
    }
}

impl fmt::Display for BenignKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attack {
    pub kind: AttackKind,
    pub session: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// The attack's first event.
    pub event_id: String,
    /// RFC 3339 time of the attack's first event.
    pub time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Benign {
    pub kind: BenignKind,
    pub session: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truth {
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub events: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    #[serde(default)]
    pub organization: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    #[serde(default)]
    pub attacks: Vec<Attack>,
    #[serde(default)]
    pub benign: Vec<Benign>,
}

impl Truth {
    pub fn load(path: &Path) -> Result<Truth, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a truth file: {e}", path.display()))
    }
}
