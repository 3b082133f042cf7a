//! `type = "security_hub"`: findings imported into AWS Security Hub as AWS Security Finding Format
//! (ASFF) records through `BatchImportFindings`.
//!
//! - Product: the account's own custom integration,
//!   `arn:aws:securityhub:<region>:<account>:product/<account>/default` (`product_arn` overrides).
//!   With that product ARN, Security Hub requires `AwsAccountId` to be the importing account: the
//!   workload's account, when it differs, is in the resource ARNs and in `ProductFields`.
//! - `Id` is the finding id, so a finding sent again (after a restart, or by `hunt --escalate`)
//!   updates the record instead of adding a second one.
//! - `Types`: `TTPs/Credential Access/<rule>` and `Unusual Behaviors/User/<rule>`.
//! - `Resources`: the role (`AwsIamRole`), the instance (`AwsEc2Instance`), Lambda function
//!   (`AwsLambdaFunction`) or ECS task (`AwsEcsTask`) the session belongs to, and the access key
//!   (`AwsIamAccessKey`).
//! - Evidence: both events (id, time, origin, place, user agent) and every exception checked in
//!   `ProductFields` (`credwatch/…`), the reason no exception applied in `Note`; every field is
//!   cut to ASFF's limits (title 256, description 1024, note 512 characters; at most 50 product
//!   fields of at most 2048 characters), so a record stays far below the 240 KB a finding may be.
//! - Batches of up to 100 findings; a finding the service fails on its own (`FailedFindings`) is
//!   retried on its own, unless its error says the record is invalid (dead-lettered).
//!
//! IAM: `securityhub:BatchImportFindings` on the product ARN, and `sts:GetCallerIdentity` when
//! `account_id` is not set.

use std::collections::BTreeMap;

use aws_sdk_securityhub::types::{
    AwsSecurityFinding, Network, NetworkDirection, Note, Partition, RecordState, Resource,
    Severity as AsffSeverity, SeverityLabel, Workflow, WorkflowStatus,
};
use tokio::sync::OnceCell;

use super::delivery::{self, Attempt};
use super::EscalationConfig;
use crate::finding::{Finding, Severity};

/// `BatchImportFindings` takes at most 100 findings a call.
pub const BATCH: usize = 100;
/// ASFF's schema version.
pub const SCHEMA_VERSION: &str = "2018-10-08";

const MAX_TITLE: usize = 256;
const MAX_DESCRIPTION: usize = 1024;
const MAX_NOTE: usize = 512;
const MAX_PRODUCT_FIELDS: usize = 50;
const MAX_FIELD_VALUE: usize = 2048;

/// The account and product the findings are imported under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Importer {
    pub account_id: String,
    pub region: String,
    pub product_arn: String,
}

impl Importer {
    /// The default product ARN of a custom integration in `account_id`.
    pub fn new(account_id: &str, region: &str, product_arn: Option<&str>) -> Importer {
        Importer {
            account_id: account_id.to_string(),
            region: region.to_string(),
            product_arn: product_arn.map(str::to_string).unwrap_or_else(|| {
                format!("arn:aws:securityhub:{region}:{account_id}:product/{account_id}/default")
            }),
        }
    }
}

/// A Security Hub destination: its client is made at the first delivery (the SDK's config is
/// loaded asynchronously, with the default credential chain).
pub struct SecurityHub {
    region: Option<String>,
    endpoint_url: Option<String>,
    account_id: Option<String>,
    product_arn: Option<String>,
    client: OnceCell<(aws_sdk_securityhub::Client, Importer)>,
}

impl SecurityHub {
    pub fn new(c: &EscalationConfig) -> SecurityHub {
        SecurityHub {
            region: c.region.clone(),
            endpoint_url: c.endpoint_url.clone(),
            account_id: c.account_id.clone(),
            product_arn: c.product_arn.clone(),
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> Result<&(aws_sdk_securityhub::Client, Importer), Attempt> {
        self.client
            .get_or_try_init(|| async {
                let sdk = crate::kinesis::sdk_config(
                    self.region.as_deref(),
                    self.endpoint_url.as_deref(),
                )
                .await;
                let region = sdk
                    .region()
                    .map(|r| r.to_string())
                    .ok_or_else(|| Attempt::Retry {
                        reason: "no AWS region: set region on the destination or AWS_REGION".into(),
                        after: None,
                    })?;
                let account = match &self.account_id {
                    Some(a) => a.clone(),
                    None => delivery::caller_account(&sdk).await?,
                };
                let importer = Importer::new(&account, &region, self.product_arn.as_deref());
                Ok((aws_sdk_securityhub::Client::new(&sdk), importer))
            })
            .await
    }

    /// Imports one batch; one outcome per finding, in order.
    pub async fn send(&self, batch: &[&Finding]) -> Vec<Attempt> {
        let (client, importer) = match self.client().await {
            Ok(c) => c,
            Err(a) => return batch.iter().map(|_| a.clone()).collect(),
        };
        let now = delivery::now_rfc3339();
        let records: Vec<AwsSecurityFinding> =
            batch.iter().map(|f| asff(f, importer, &now)).collect();
        match client
            .batch_import_findings()
            .set_findings(Some(records))
            .send()
            .await
        {
            Ok(out) => {
                let failed: BTreeMap<&str, (&str, &str)> = out
                    .failed_findings()
                    .iter()
                    .map(|e| {
                        (
                            e.id().unwrap_or(""),
                            (
                                e.error_code().unwrap_or(""),
                                e.error_message().unwrap_or(""),
                            ),
                        )
                    })
                    .collect();
                batch
                    .iter()
                    .map(|f| match failed.get(f.id.as_str()) {
                        None => Attempt::Delivered,
                        Some((code, message)) => delivery::entry_failure(code, message),
                    })
                    .collect()
            }
            Err(e) => {
                let a = delivery::sdk_attempt(&e);
                batch.iter().map(|_| a.clone()).collect()
            }
        }
    }
}

fn label(s: Severity) -> SeverityLabel {
    match s {
        Severity::Info => SeverityLabel::Informational,
        Severity::Low => SeverityLabel::Low,
        Severity::Medium => SeverityLabel::Medium,
        Severity::High => SeverityLabel::High,
        Severity::Critical => SeverityLabel::Critical,
    }
}

/// `s` cut to at most `max` characters (an ellipsis marks the cut).
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The account id inside an ARN (`arn:aws:sts::111122223333:…`).
fn arn_account(arn: &str) -> Option<&str> {
    arn.split(':').nth(4).filter(|a| !a.is_empty())
}

/// The resources a finding is about: the role, the workload (instance, function or task) and the
/// access key.
pub fn resources(f: &Finding) -> Vec<Resource> {
    let mut out = Vec::new();
    let account = f
        .account_id
        .as_deref()
        .or(f.principal_arn.as_deref().and_then(arn_account));
    // arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION
    let assumed = f.principal_arn.as_deref().and_then(|arn| {
        let rest = arn.split(":assumed-role/").nth(1)?;
        let (role, session) = rest.split_once('/')?;
        Some((role, session))
    });
    if let (Some((role, session)), Some(acct)) = (assumed, account) {
        out.push(
            Resource::builder()
                .r#type("AwsIamRole")
                .id(format!("arn:aws:iam::{acct}:role/{role}"))
                .partition(Partition::Aws)
                .build(),
        );
        let workload = match f.credential_class.as_deref() {
            Some("ec2_instance" | "ec2_identity") => Some(("AwsEc2Instance", session.to_string())),
            Some("lambda") => Some(("AwsLambdaFunction", session.to_string())),
            Some("ecs_task") => Some(("AwsEcsTask", session.to_string())),
            _ => None,
        };
        if let Some((kind, id)) = workload {
            // The instance id in a session name keeps its case; instance ids are lower case.
            let id = if kind == "AwsEc2Instance" {
                id.to_ascii_lowercase()
            } else {
                id
            };
            out.push(
                Resource::builder()
                    .r#type(kind)
                    .id(id)
                    .partition(Partition::Aws)
                    .build(),
            );
        }
    } else if let Some(arn) = &f.principal_arn {
        out.push(
            Resource::builder()
                .r#type("AwsIamRole")
                .id(arn.clone())
                .partition(Partition::Aws)
                .build(),
        );
    }
    if let Some(key) = &f.access_key_id {
        out.push(
            Resource::builder()
                .r#type("AwsIamAccessKey")
                .id(key.clone())
                .partition(Partition::Aws)
                .build(),
        );
    }
    if out.is_empty() {
        // ASFF requires at least one resource.
        out.push(
            Resource::builder()
                .r#type("Other")
                .id(f.session.clone().unwrap_or_else(|| f.id.clone()))
                .build(),
        );
    }
    out
}

/// The evidence as `ProductFields`: the finding's identity, both events and the exceptions.
pub fn product_fields(f: &Finding) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let put = |m: &mut BTreeMap<String, String>, k: String, v: &str| {
        if !v.is_empty() {
            m.insert(k, cut(v, MAX_FIELD_VALUE));
        }
    };
    put(&mut m, "credwatch/rule".into(), &f.rule);
    put(&mut m, "credwatch/finding_id".into(), &f.id);
    put(
        &mut m,
        "credwatch/session".into(),
        f.session.as_deref().unwrap_or(""),
    );
    put(
        &mut m,
        "credwatch/account_id".into(),
        f.account_id.as_deref().unwrap_or(""),
    );
    put(
        &mut m,
        "credwatch/access_key_id".into(),
        f.access_key_id.as_deref().unwrap_or(""),
    );
    put(
        &mut m,
        "credwatch/credential_class".into(),
        f.credential_class.as_deref().unwrap_or(""),
    );
    put(
        &mut m,
        "credwatch/principal_arn".into(),
        f.principal_arn.as_deref().unwrap_or(""),
    );
    put(
        &mut m,
        "credwatch/suspicious_origin".into(),
        f.suspicious_origin.as_deref().unwrap_or(""),
    );
    put(
        &mut m,
        "credwatch/error_code".into(),
        f.error_code.as_deref().unwrap_or(""),
    );
    put(
        &mut m,
        "credwatch/released_early".into(),
        f.released_early.as_deref().unwrap_or(""),
    );
    put(&mut m, "credwatch/detected_at".into(), &f.detected_at);
    for e in f.events.iter().take(4) {
        let p = format!("credwatch/{}", e.role);
        put(&mut m, format!("{p}/event_id"), &e.event_id);
        put(&mut m, format!("{p}/event_time"), &e.event_time);
        put(
            &mut m,
            format!("{p}/event_name"),
            &[e.event_source.as_deref(), e.event_name.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" "),
        );
        put(&mut m, format!("{p}/origin"), &e.origin);
        put(&mut m, format!("{p}/origin_kind"), &e.origin_kind);
        put(
            &mut m,
            format!("{p}/place"),
            &[e.place.as_deref(), e.place_detail.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(": "),
        );
        put(&mut m, format!("{p}/user_agent"), &e.user_agent);
    }
    for (i, x) in f.exceptions_checked.iter().enumerate() {
        if m.len() >= MAX_PRODUCT_FIELDS {
            break;
        }
        put(
            &mut m,
            format!("credwatch/exception/{i}/{}", x.exception),
            &format!(
                "{}: {}",
                if x.applied { "applied" } else { "not applied" },
                x.detail
            ),
        );
    }
    while m.len() > MAX_PRODUCT_FIELDS {
        let last = m.keys().next_back().cloned().unwrap_or_default();
        m.remove(&last);
    }
    m
}

/// Why the finding stands: the exceptions that did not apply, for the analyst's note.
pub fn note_text(f: &Finding) -> String {
    let not_applied: Vec<String> = f
        .exceptions_checked
        .iter()
        .filter(|x| !x.applied)
        .map(|x| format!("{}: {}", x.exception, x.detail))
        .collect();
    let text = if not_applied.is_empty() {
        "credwatch: no exception was checked for this finding".to_string()
    } else {
        format!("No exception applied. {}", not_applied.join("; "))
    };
    cut(&text, MAX_NOTE)
}

/// Times in ASFF are ISO 8601; CloudTrail's are already.
fn observed(f: &Finding) -> (String, String) {
    let mut times: Vec<&str> = f.events.iter().map(|e| e.event_time.as_str()).collect();
    times.sort_unstable();
    let first = times.first().copied().unwrap_or(f.event_time.as_str());
    let last = times.last().copied().unwrap_or(f.event_time.as_str());
    (first.to_string(), last.to_string())
}

/// The ASFF record of a finding.
pub fn asff(f: &Finding, importer: &Importer, now: &str) -> AwsSecurityFinding {
    let (first_seen, last_seen) = observed(f);
    let mut b = AwsSecurityFinding::builder()
        .schema_version(SCHEMA_VERSION)
        .id(&f.id)
        .product_arn(&importer.product_arn)
        .product_name("credwatch")
        .company_name("credwatch")
        .region(&importer.region)
        .generator_id(format!("credwatch/{}", f.rule))
        .aws_account_id(&importer.account_id)
        .types(format!("TTPs/Credential Access/{}", f.rule))
        .types(format!("Unusual Behaviors/User/{}", f.rule))
        .first_observed_at(first_seen)
        .last_observed_at(last_seen)
        .created_at(&f.detected_at)
        .updated_at(now)
        .severity(
            AsffSeverity::builder()
                .label(label(f.severity))
                .original(f.severity.as_str())
                .build(),
        )
        .title(cut(&f.title, MAX_TITLE))
        .description(cut(&description(f), MAX_DESCRIPTION))
        .set_resources(Some(resources(f)))
        .note(
            Note::builder()
                .text(note_text(f))
                .updated_by("credwatch")
                .updated_at(now)
                .build(),
        )
        .record_state(RecordState::Active)
        .workflow(Workflow::builder().status(WorkflowStatus::New).build());
    for (k, v) in product_fields(f) {
        b = b.product_fields(k, v);
    }
    if let Some(ip) = f
        .suspicious_origin
        .as_deref()
        .and_then(|o| o.parse::<std::net::IpAddr>().ok())
    {
        let n = Network::builder().direction(NetworkDirection::In);
        let n = match ip {
            std::net::IpAddr::V4(a) => n.source_ipv4(a.to_string()),
            std::net::IpAddr::V6(a) => n.source_ipv6(a.to_string()),
        };
        b = b.network(n.build());
    }
    b.build()
}

/// One paragraph: what was seen, from where.
fn description(f: &Finding) -> String {
    let events: Vec<String> = f
        .events
        .iter()
        .map(|e| {
            let place = e
                .place
                .as_deref()
                .map(|p| format!(", {p}"))
                .unwrap_or_default();
            format!(
                "{} event {} at {} from {}{place}",
                e.role, e.event_id, e.event_time, e.origin
            )
        })
        .collect();
    format!("{}. {}.", f.title, events.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::{EventEvidence, ExceptionCheck};

    fn finding() -> Finding {
        let ev = |role: &str, id: &str, origin: &str| EventEvidence {
            role: role.into(),
            event_id: id.into(),
            event_time: if role == "first" {
                "2024-08-02T08:21:05Z".into()
            } else {
                "2024-08-02T08:23:55Z".into()
            },
            event_name: Some("DescribeInstances".into()),
            event_source: Some("ec2.amazonaws.com".into()),
            origin_kind: "public_ip".into(),
            origin: origin.into(),
            user_agent: "x".repeat(5000),
            access_key_id: None,
            source: None,
            place: Some("outside_aws".into()),
            place_detail: None,
        };
        Finding {
            account_id: Some("111122223333".into()),
            access_key_id: Some("ASIAXXXXXXXXXXXXXXXX".into()),
            session: Some("app/i-0abc".into()),
            credential_class: Some("ec2_instance".into()),
            principal_arn: Some("arn:aws:sts::111122223333:assumed-role/app/i-0ABC".into()),
            events: vec![
                ev("first", "e1", "54.1.1.1"),
                ev("second", "e2", "203.0.113.9"),
            ],
            exceptions_checked: (0..80)
                .map(|i| ExceptionCheck {
                    exception: format!("x{i}"),
                    applied: false,
                    detail: "d".repeat(3000),
                })
                .collect(),
            suspicious_origin: Some("203.0.113.9".into()),
            title: "t".repeat(400),
            ..crate::finding::test_finding("f1")
        }
    }

    #[test]
    fn asff_names_the_resources_and_keeps_within_limits() {
        let f = finding();
        let imp = Importer::new("999988887777", "eu-west-1", None);
        assert_eq!(
            imp.product_arn,
            "arn:aws:securityhub:eu-west-1:999988887777:product/999988887777/default"
        );
        let r = asff(&f, &imp, "2024-08-02T08:30:00.000Z");
        assert_eq!(r.id(), Some("f1"));
        assert_eq!(r.aws_account_id(), Some("999988887777"));
        assert_eq!(r.title().unwrap().chars().count(), MAX_TITLE);
        assert!(r.description().unwrap().chars().count() <= MAX_DESCRIPTION);
        assert!(r.note().unwrap().text().unwrap().chars().count() <= MAX_NOTE);
        assert_eq!(r.first_observed_at(), Some("2024-08-02T08:21:05Z"));
        assert_eq!(r.last_observed_at(), Some("2024-08-02T08:23:55Z"));
        let kinds: Vec<(&str, &str)> = r
            .resources()
            .iter()
            .map(|x| (x.r#type().unwrap(), x.id().unwrap()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("AwsIamRole", "arn:aws:iam::111122223333:role/app"),
                ("AwsEc2Instance", "i-0abc"),
                ("AwsIamAccessKey", "ASIAXXXXXXXXXXXXXXXX"),
            ]
        );
        let pf = r.product_fields().unwrap();
        assert!(pf.len() <= MAX_PRODUCT_FIELDS, "{}", pf.len());
        assert!(pf.values().all(|v| v.chars().count() <= MAX_FIELD_VALUE));
        assert_eq!(pf["credwatch/second/origin"], "203.0.113.9");
        assert_eq!(pf["credwatch/first/event_id"], "e1");
        assert_eq!(pf["credwatch/account_id"], "111122223333");
        assert_eq!(
            r.network().unwrap().source_ipv4(),
            Some("203.0.113.9"),
            "the suspicious origin"
        );
        assert_eq!(
            r.types(),
            &[
                "TTPs/Credential Access/session_token_reuse".to_string(),
                "Unusual Behaviors/User/session_token_reuse".to_string()
            ]
        );
        assert_eq!(r.severity().unwrap().label(), Some(&SeverityLabel::High));
    }

    #[test]
    fn a_finding_without_a_principal_still_has_a_resource() {
        let f = crate::finding::test_finding("f2");
        let rs = resources(&f);
        assert_eq!(rs.len(), 1);
        assert_eq!(rs[0].r#type(), Some("Other"));
    }
}
