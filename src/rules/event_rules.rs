//! Single-event rules in the spirit of Security Monkey's auditors, and
//! `workload_get_caller_identity`. A failed call (`errorCode`) is still reported, with its error,
//! one severity lower. Each event gives at most one finding per rule, even when read twice.

use serde_json::Value;

use crate::engine::credential::Credential;
use crate::engine::origin::Origin;
use crate::engine::store::{clamp_u32, key_of_parts};
use crate::engine::{Engine, Position};
use crate::event::{format_time, CloudTrailEvent};
use crate::finding::{finding_id, Finding};
use crate::rules::event_evidence;

/// Event names any rule here looks at; everything else returns at once.
pub(crate) fn candidate(name: &str) -> bool {
    matches!(
        name,
        "GetCallerIdentity"
            | "AuthorizeSecurityGroupIngress"
            | "ModifySecurityGroupRules"
            | "StopLogging"
            | "DeleteTrail"
            | "PutEventSelectors"
            | "DeactivateMFADevice"
            | "DeleteVirtualMFADevice"
            | "CreateUser"
            | "CreateAccessKey"
            | "CreateLoginProfile"
            | "ModifySnapshotAttribute"
            | "ModifyDBSnapshotAttribute"
            | "ModifyDBClusterSnapshotAttribute"
            | "ModifyImageAttribute"
    )
}

/// A rule match: the rule id and what was seen.
struct Hit {
    rule: &'static str,
    what: String,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn check(
    e: &Engine,
    ev: &CloudTrailEvent<'_>,
    cred: Option<&Credential<'_>>,
    origin: &Origin<'_>,
    t: i64,
    pos: &Position<'_>,
    out: &mut Vec<Finding>,
) {
    let name = ev.event_name();
    if !candidate(name) {
        return;
    }
    let source = ev.event_source();
    let req: Value = ev.request().unwrap_or(Value::Null);
    let mut hits: Vec<Hit> = Vec::new();
    let own_account = ev.account_id().or(ev.recipient_account_id.as_deref());
    match (source, name) {
        ("sts.amazonaws.com", "GetCallerIdentity") => {
            if let Some(c) = cred.filter(|c| c.class.is_workload()) {
                hits.push(Hit {
                    rule: "workload_get_caller_identity",
                    what: format!(
                        "GetCallerIdentity with {} credentials of {}",
                        c.class.as_str(),
                        c.session_display
                    ),
                });
            }
        }
        ("ec2.amazonaws.com", "AuthorizeSecurityGroupIngress" | "ModifySecurityGroupRules") => {
            let open = world_open_ranges(&req);
            if !open.is_empty() {
                let group = req
                    .get("groupId")
                    .and_then(Value::as_str)
                    .unwrap_or("a security group");
                hits.push(Hit {
                    rule: "security_group_open_to_world",
                    what: format!("ingress to {group} opened to {}", open.join(", ")),
                });
            }
        }
        ("cloudtrail.amazonaws.com", "StopLogging") => {
            hits.push(trail_hit("stop_logging", "logging stopped on", &req))
        }
        ("cloudtrail.amazonaws.com", "DeleteTrail") => {
            hits.push(trail_hit("delete_trail", "deleted", &req))
        }
        ("cloudtrail.amazonaws.com", "PutEventSelectors") => hits.push(trail_hit(
            "put_event_selectors",
            "event selectors changed on",
            &req,
        )),
        ("iam.amazonaws.com", "DeactivateMFADevice") => hits.push(user_hit(
            "deactivate_mfa_device",
            "MFA device deactivated for",
            &req,
        )),
        ("iam.amazonaws.com", "DeleteVirtualMFADevice") => hits.push(Hit {
            rule: "delete_virtual_mfa_device",
            what: format!(
                "virtual MFA device {} deleted",
                req.get("serialNumber")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
            ),
        }),
        ("iam.amazonaws.com", "CreateUser") => {
            hits.push(user_hit("create_user", "IAM user created:", &req))
        }
        ("iam.amazonaws.com", "CreateAccessKey") => hits.push(user_hit(
            "create_access_key",
            "access key created for",
            &req,
        )),
        ("iam.amazonaws.com", "CreateLoginProfile") => hits.push(user_hit(
            "create_login_profile",
            "console password created for",
            &req,
        )),
        ("ec2.amazonaws.com", "ModifySnapshotAttribute") => {
            let adds = permission_adds(req.get("createVolumePermission"));
            share_hits(
                e,
                &mut hits,
                "snapshot",
                req.get("snapshotId"),
                &adds,
                own_account,
            );
        }
        ("ec2.amazonaws.com", "ModifyImageAttribute") => {
            let adds = permission_adds(req.get("launchPermission"));
            share_hits(e, &mut hits, "ami", req.get("imageId"), &adds, own_account);
        }
        ("rds.amazonaws.com", "ModifyDBSnapshotAttribute" | "ModifyDBClusterSnapshotAttribute")
            if req.get("attributeName").and_then(Value::as_str) == Some("restore") =>
        {
            let adds: Vec<String> = req
                .get("valuesToAdd")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            let id = req
                .get("dBSnapshotIdentifier")
                .or_else(|| req.get("dBClusterSnapshotIdentifier"));
            share_hits(e, &mut hits, "snapshot", id, &adds, own_account);
        }
        _ => {}
    }
    for hit in hits {
        let Some(mut sev) = e.rules.get(hit.rule) else {
            continue;
        };
        let failed = !ev.succeeded();
        if failed {
            sev = sev.lowered();
        }
        // GetCallerIdentity dedups per (session, origin); the other rules per event.
        let (dedup_parts, id_parts): (Vec<String>, Vec<String>) = match (hit.rule, cred) {
            ("workload_get_caller_identity", Some(c)) => {
                let parts = vec![
                    hit.rule.to_string(),
                    c.session_key.to_string(),
                    origin.to_string(),
                ];
                (parts.clone(), parts)
            }
            _ => {
                let parts = vec![hit.rule.to_string(), ev.event_id().to_string()];
                (parts.clone(), parts)
            }
        };
        let dedup_refs: Vec<&[u8]> = dedup_parts.iter().map(|s| s.as_bytes()).collect();
        let window = e.cfg.detection.window_secs as i64;
        if !e
            .store
            .mark_reported(key_of_parts(&dedup_refs), i64::from(clamp_u32(t + window)))
        {
            e.stats
                .suppressed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            continue;
        }
        let id_refs: Vec<&str> = id_parts.iter().map(String::as_str).collect();
        let error_code = ev
            .error_code
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(str::to_string);
        let title = match &error_code {
            Some(code) => format!("{} (failed: {code})", hit.what),
            None => hit.what,
        };
        out.push(Finding {
            id: finding_id(&id_refs),
            rule: hit.rule.into(),
            severity: sev,
            title,
            account_id: own_account.map(str::to_string),
            access_key_id: ev.access_key_id().map(str::to_string),
            session: cred.map(|c| c.session_display.to_string()),
            credential_class: cred.map(|c| c.class.as_str().to_string()),
            principal_arn: ev.arn().map(str::to_string),
            error_code,
            event_ids: vec![ev.event_id().to_string()],
            events: vec![event_evidence("trigger", ev, origin, t, pos)],
            exceptions_checked: vec![],
            event_time: format_time(t),
            detected_at: chrono::Utc::now()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string(),
            released_early: None,
            suspicious_origin: None,
            arrived_at: None,
            claim: None,
        });
    }
}

fn trail_hit(rule: &'static str, verb: &str, req: &Value) -> Hit {
    let trail = req
        .get("name")
        .or_else(|| req.get("trailName"))
        .and_then(Value::as_str)
        .unwrap_or("a trail");
    Hit {
        rule,
        what: format!("CloudTrail {verb} {trail}"),
    }
}

fn user_hit(rule: &'static str, verb: &str, req: &Value) -> Hit {
    let user = req
        .get("userName")
        .and_then(Value::as_str)
        .unwrap_or("the caller");
    Hit {
        rule,
        what: format!("{verb} {user}"),
    }
}

/// CIDRs with prefix length 0 in an ingress request, IPv4 or IPv6, in any of EC2's shapes:
/// top-level `cidrIp`, `ipPermissions.items[].ipRanges.items[].cidrIp` /
/// `ipv6Ranges.items[].cidrIpv6`, or `ModifySecurityGroupRules`' `securityGroupRuleRequest`.
/// Anonymised data rewrites `0.0.0.0/0` to other addresses, so the prefix length decides.
pub fn world_open_ranges(req: &Value) -> Vec<String> {
    let mut out = Vec::new();
    collect_world_cidrs(req, &mut out, 0);
    out.sort();
    out.dedup();
    out
}

fn collect_world_cidrs(v: &Value, out: &mut Vec<String>, depth: usize) {
    if depth > 12 {
        return;
    }
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if matches!(
                    k.as_str(),
                    "cidrIp" | "cidrIpv6" | "CidrIpv4" | "CidrIpv6" | "cidrIpv4"
                ) {
                    if let Some(c) = x.as_str() {
                        if c.trim()
                            .rsplit_once('/')
                            .is_some_and(|(_, len)| len.trim() == "0")
                        {
                            out.push(c.trim().to_string());
                        }
                    }
                } else {
                    collect_world_cidrs(x, out, depth + 1);
                }
            }
        }
        Value::Array(a) => a
            .iter()
            .for_each(|x| collect_world_cidrs(x, out, depth + 1)),
        _ => {}
    }
}

/// `{"add":{"items":[{"group":"all"},{"userId":"123"}]}}` → ["all", "123"].
fn permission_adds(perm: Option<&Value>) -> Vec<String> {
    let items = perm
        .and_then(|p| p.get("add"))
        .and_then(|a| a.get("items").or_else(|| a.get("item")))
        .and_then(Value::as_array);
    items
        .map(|a| {
            a.iter()
                .filter_map(|i| {
                    i.get("group")
                        .or_else(|| i.get("userId"))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn share_hits(
    e: &Engine,
    hits: &mut Vec<Hit>,
    kind: &str,
    id: Option<&Value>,
    adds: &[String],
    own_account: Option<&str>,
) {
    let id = id.and_then(Value::as_str).unwrap_or("?");
    let (public_rule, external_rule) = if kind == "ami" {
        ("ami_shared_publicly", "ami_shared_externally")
    } else {
        ("snapshot_shared_publicly", "snapshot_shared_externally")
    };
    if adds.iter().any(|a| a.eq_ignore_ascii_case("all")) {
        hits.push(Hit {
            rule: public_rule,
            what: format!("{kind} {id} shared with all accounts"),
        });
    }
    let external: Vec<&str> = adds
        .iter()
        .filter(|a| !a.eq_ignore_ascii_case("all") && !e.in_org(Some(a.as_str()), own_account))
        .map(String::as_str)
        .collect();
    if !external.is_empty() {
        hits.push(Hit {
            rule: external_rule,
            what: format!(
                "{kind} {id} shared with account(s) outside the organisation: {}",
                external.join(", ")
            ),
        });
    }
}
