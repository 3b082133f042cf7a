//! `workload_credentials_outside_aws`: an EC2 instance, ECS task or Lambda credential used from
//! an address outside AWS's published ranges, not in the inventory and not allowed.
//!
//! Workloads run in AWS: their calls come from AWS addresses (their own, a NAT gateway's,
//! Lambda's), from private addresses through VPC endpoints, or from AWS services. A call with a
//! workload's credentials from anywhere else is the credentials used by someone else. This is
//! GuardDuty's `UnauthorizedAccess:IAMUser/InstanceCredentialExfiltration.OutsideAWS`, for all
//! three kinds of workload, on the single event, as it arrives.
//! <https://docs.aws.amazon.com/guardduty/latest/ug/guardduty_finding-types-iam.html#unauthorizedaccess-iam-instancecredentialexfiltrationoutsideaws>
//!
//! The class comes from the event (an `i-…` session, user-agent markers) or from the key's
//! issuance ([`crate::engine::issuance`]). An assumed-role call from outside AWS whose class only
//! an issuance could change waits (as a candidate) until the watermark says the issuance, if
//! any, has arrived: so the verdict does not depend on which of the two arrived first.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::engine::credential::{Credential, CredentialClass};
use crate::engine::issuance::Issued;
use crate::engine::origin::Origin;
use crate::engine::store::key_of_parts;
use crate::engine::{Engine, Position};
use crate::event::{format_time, CloudTrailEvent};
use crate::finding::{finding_id, Claim, EventEvidence, ExceptionCheck, Finding};
use crate::rules::event_evidence;

pub const RULE: &str = "workload_credentials_outside_aws";

/// An assumed-role call from outside AWS, held until its key's issuance (if any) has surely
/// arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub access_key_id: String,
    pub session_key: String,
    pub session_display: String,
    pub account_id: Option<String>,
    pub principal_arn: Option<String>,
    pub error_code: Option<String>,
    pub addr: IpAddr,
    pub time: i64,
    pub expires: i64,
    pub evidence: EventEvidence,
    /// Wall-clock second it arrived (for `max_hold_secs`).
    pub arrived: i64,
}

/// Checks one event. `cred.class` already reflects the key's issuance when that was read;
/// `outside` is the origin's address when it is outside AWS, not ours and not allowed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check(
    e: &Engine,
    ev: &CloudTrailEvent<'_>,
    cred: &Credential<'_>,
    origin: &Origin<'_>,
    outside: Option<IpAddr>,
    t: i64,
    pos: &Position<'_>,
    out: &mut Vec<Finding>,
) {
    let Some(addr) = outside else {
        return;
    };
    if e.rules.get(RULE).is_none() {
        return;
    }
    let workload = cred.class.is_workload();
    let may_be_issued = matches!(
        cred.class,
        CredentialClass::AssumedRole | CredentialClass::Federated
    );
    if !workload && !may_be_issued {
        return;
    }
    // Cheap looks first: most such calls repeat a (session, address) already reported or held.
    let addr_text = addr.to_string();
    if workload {
        let dedup = key_of_parts(&[
            RULE.as_bytes(),
            cred.session_key.as_bytes(),
            addr_text.as_bytes(),
        ]);
        if e.store.was_reported(dedup) {
            e.stats
                .suppressed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
    } else if e
        .pending
        .holds_outside_before(cred.access_key_id, &addr_text, t)
    {
        return;
    }
    let expires = match cred.issued.as_ref().and_then(|i| i.expires) {
        Some(x) => e.window_end(x, cred.class, t, &cred.session_display),
        None => t + e.class_max_secs(cred.class),
    };
    let c = Candidate {
        access_key_id: cred.access_key_id.to_string(),
        session_key: cred.session_key.to_string(),
        session_display: cred.session_display.to_string(),
        account_id: ev.account_id().map(str::to_string),
        principal_arn: ev.arn().map(str::to_string),
        error_code: ev
            .error_code
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        addr,
        time: t,
        expires,
        evidence: event_evidence("trigger", ev, origin, t, pos),
        arrived: crate::settle::wall_now(),
    };
    if workload {
        // The engine has already taken the marker's trust away (outside AWS); say it was there.
        let ua = ev.user_agent();
        let marker = e.markers.lambda.any_in(ua);
        if let Some(f) = finding(e, &c, cred.class, cred.issued.as_ref(), marker) {
            out.push(f);
        }
    } else {
        e.pending.hold_outside(c);
    }
}

/// The finding for a candidate of a workload class, once per (session, address) in its window.
pub(crate) fn finding(
    e: &Engine,
    c: &Candidate,
    class: CredentialClass,
    issued: Option<&Issued>,
    lambda_marker: bool,
) -> Option<Finding> {
    let sev = e.rules.get(RULE)?;
    let addr_text = c.addr.to_string();
    let dedup = key_of_parts(&[
        RULE.as_bytes(),
        c.session_key.as_bytes(),
        addr_text.as_bytes(),
    ]);
    if !e.store.mark_reported(dedup, c.expires) {
        e.stats
            .suppressed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return None;
    }
    let kind = match class {
        CredentialClass::Lambda => "Lambda",
        CredentialClass::EcsTask => "ECS task",
        _ => "EC2 instance",
    };
    let mut checks = vec![ExceptionCheck {
        exception: "aws_ip_ranges".into(),
        applied: false,
        detail: format!("{addr_text} is in none of {}", e.ranges_description()),
    }];
    checks.push(e.inventory_check(c.addr, None));
    checks.push(e.allow_check(Some(c.addr), c.account_id.as_deref(), None, c.time));
    if lambda_marker {
        checks.push(ExceptionCheck {
            exception: "lambda_runtime".into(),
            applied: false,
            detail: "the call carries a Lambda runtime marker, but Lambda runs in AWS: a copied environment sends it too".into(),
        });
    }
    let known = match issued {
        Some(i) => format!(
            "issued by {} to {} ({} at {})",
            i.service,
            i.workload,
            i.event_id,
            format_time(i.time)
        ),
        None => match class {
            CredentialClass::Lambda => "a Lambda runtime user agent".into(),
            CredentialClass::EcsTask => "an ECS user agent".into(),
            _ => "its instance session name".into(),
        },
    };
    checks.push(ExceptionCheck {
        exception: "workload_class".into(),
        applied: false,
        detail: format!("{kind} credentials, known from {known}"),
    });
    let mut evidence = c.evidence.clone();
    evidence.role = "trigger".into();
    Some(Finding {
        id: finding_id(&[RULE, &c.session_key, &addr_text]),
        rule: RULE.into(),
        severity: if c.error_code.is_some() {
            sev.lowered()
        } else {
            sev
        },
        title: format!(
            "{kind} credentials of {} used from outside AWS, from {addr_text}",
            c.session_display
        ),
        account_id: c.account_id.clone(),
        access_key_id: Some(c.access_key_id.clone()),
        session: Some(c.session_display.clone()),
        credential_class: Some(class.as_str().to_string()),
        principal_arn: c.principal_arn.clone(),
        error_code: c.error_code.clone(),
        event_ids: vec![evidence.event_id.clone()],
        events: vec![evidence],
        exceptions_checked: checks,
        event_time: format_time(c.time),
        detected_at: chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string(),
        released_early: None,
        arrived_at: Some(c.arrived),
        claim: Some(Claim {
            key: finding_id(&[RULE, &c.session_key, &addr_text]),
            until: c.expires,
        }),
        suspicious_origin: Some(addr_text),
    })
}
