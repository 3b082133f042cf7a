//! Credentials known from their issuance: the `AssumeRole` by which AWS gives a workload its keys.
//!
//! When EC2 (instance profiles), ECS (task roles) or Lambda (execution roles) fetch credentials
//! for a workload, CloudTrail records an `sts:AssumeRole` made by the service:
//! `userIdentity.invokedBy` / `sourceIPAddress` is `ec2.amazonaws.com`, `ecs-tasks.amazonaws.com`
//! or `lambda.amazonaws.com`; `requestParameters.roleSessionName` is the instance id, task id or
//! function name; `responseElements.credentials` has the `accessKeyId` and its `expiration`
//! (RFC 3339 in S3 log files, `Aug 1, 2024, 11:45:22 AM` in LookupEvents output).
//! <https://docs.aws.amazon.com/IAM/latest/UserGuide/cloudtrail-integration.html#stscloudtrailrecords>
//!
//! Where these events are in the stream, they bind a key to its workload, class and exact expiry
//! before (or after) the key is used, so that a thief's use is known as a workload's even when it
//! carries none of the workload's user-agent markers, and even when the thief calls first. The
//! book is order-free: an issuance read after the key's first use still classifies it when the
//! use is judged (outside-AWS candidates wait for the watermark; contests too).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use super::credential::CredentialClass;
use crate::event::{parse_time, CloudTrailEvent};

/// What an issuance event says of one access key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// `ec2_instance`, `ecs_task` or `lambda`.
    pub class: CredentialClassName,
    /// The instance id (lower case), task id or function name (`roleSessionName`).
    pub workload: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// Exact expiry (seconds since the epoch), when the event had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
    /// Event time of the issuance.
    pub time: i64,
    pub event_id: String,
    /// The issuing service (`ec2.amazonaws.com`, …).
    pub service: String,
}

/// A credential class as stored (serde-friendly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialClassName {
    Ec2Instance,
    EcsTask,
    Lambda,
}

impl CredentialClassName {
    pub fn class(self) -> CredentialClass {
        match self {
            CredentialClassName::Ec2Instance => CredentialClass::Ec2Instance,
            CredentialClassName::EcsTask => CredentialClass::EcsTask,
            CredentialClassName::Lambda => CredentialClass::Lambda,
        }
    }
}

/// The issuing services and the class of the credentials each issues.
const ISSUERS: [(&str, CredentialClassName); 3] = [
    ("ec2.amazonaws.com", CredentialClassName::Ec2Instance),
    ("ecs-tasks.amazonaws.com", CredentialClassName::EcsTask),
    ("lambda.amazonaws.com", CredentialClassName::Lambda),
];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    #[serde(default)]
    role_arn: Option<String>,
    #[serde(default)]
    role_session_name: Option<String>,
}

#[derive(Deserialize)]
struct Response {
    #[serde(default)]
    credentials: Option<Credentials>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Credentials {
    #[serde(default)]
    access_key_id: Option<String>,
    #[serde(default)]
    expiration: Option<String>,
}

/// Whether an event may be an issuance (cheap: by name and source).
pub fn is_candidate(ev: &CloudTrailEvent<'_>) -> bool {
    ev.event_name() == "AssumeRole" && ev.event_source() == "sts.amazonaws.com"
}

/// The service and credential class, if `ev` is a successful `AssumeRole` by one of the
/// services that issue workload credentials: an issuance, whose parameters and response
/// [`issuance_of`] reads. Decided from the event's fields alone.
pub fn issuer(ev: &CloudTrailEvent<'_>) -> Option<&'static (&'static str, CredentialClassName)> {
    if !is_candidate(ev) || !ev.succeeded() {
        return None;
    }
    let by = ev
        .user_identity
        .invoked_by
        .as_deref()
        .filter(|s| !s.is_empty())
        .or(ev.source_ip_address.as_deref())?;
    ISSUERS.iter().find(|(s, _)| by.eq_ignore_ascii_case(s))
}

/// The key and what its issuance says, if `ev` is a workload credential's issuance.
pub fn issuance_of(ev: &CloudTrailEvent<'_>, t: i64) -> Option<(String, Issued)> {
    let (service, class) = issuer(ev)?;
    let req: Request = ev.request()?;
    let resp: Response = ev.response()?;
    let creds = resp.credentials?;
    let key = creds.access_key_id.filter(|k| k.starts_with("ASIA"))?;
    let mut workload = req.role_session_name.filter(|s| !s.is_empty())?;
    if *class == CredentialClassName::Ec2Instance {
        workload.make_ascii_lowercase();
    }
    Some((
        key,
        Issued {
            class: *class,
            workload,
            role_arn: req.role_arn,
            expires: creds.expiration.as_deref().and_then(parse_expiration),
            time: t,
            event_id: ev.event_id().to_string(),
            service: service.to_string(),
        },
    ))
}

/// `2026-07-28T12:42:13Z` or `Aug 1, 2024, 11:45:22 AM` (UTC).
pub fn parse_expiration(raw: &str) -> Option<i64> {
    if let Some(t) = parse_time(raw) {
        return Some(t);
    }
    chrono::NaiveDateTime::parse_from_str(raw.trim(), "%b %e, %Y, %l:%M:%S %p")
        .ok()
        .map(|d| d.and_utc().timestamp())
}

/// Issued keys, shared by every consumer task.
#[derive(Default)]
pub struct IssuanceBook {
    keys: DashMap<String, Issued>,
    /// Entries dropped because the book was full.
    pub evicted: AtomicU64,
    /// Issuance events read.
    pub seen: AtomicU64,
    /// Whether any key was ever recorded (a flag, not `DashMap::is_empty`, which takes every
    /// shard's lock: this is asked for every event).
    any: AtomicBool,
}

impl IssuanceBook {
    /// Learns from `ev` if it is an issuance. Returns what it learnt.
    pub fn observe(&self, ev: &CloudTrailEvent<'_>, t: i64) -> Option<(String, Issued)> {
        let (key, issued) = issuance_of(ev, t)?;
        self.seen.fetch_add(1, Relaxed);
        self.any.store(true, Relaxed);
        // The same key is issued once; a duplicate delivery keeps the earlier record.
        self.keys
            .entry(key.clone())
            .and_modify(|cur| {
                if (issued.time, &issued.event_id) < (cur.time, &cur.event_id) {
                    *cur = issued.clone();
                }
            })
            .or_insert_with(|| issued.clone());
        Some((key, issued))
    }

    pub fn get(&self, access_key_id: &str) -> Option<Issued> {
        if !self.any.load(Relaxed) {
            return None;
        }
        self.keys.get(access_key_id).map(|e| e.clone())
    }

    /// Whether no key was ever recorded (cheap: asked for every event).
    pub fn never_used(&self) -> bool {
        !self.any.load(Relaxed)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Forgets keys that expired before `horizon` (or were issued more than `max_secs` before
    /// it, when their expiry is unknown); then, past `max_entries`, the oldest issued first.
    pub fn sweep(&self, horizon: i64, max_secs: i64, max_entries: usize) -> usize {
        let before = self.keys.len();
        self.keys.retain(|_, i| {
            i.expires
                .unwrap_or(i.time.saturating_add(max_secs))
                .max(i.time)
                >= horizon
        });
        if self.keys.len() > max_entries {
            let mut times: Vec<i64> = self.keys.iter().map(|e| e.time).collect();
            times.sort_unstable();
            let cut = times[self.keys.len() - max_entries];
            let mut over = self.keys.len() - max_entries;
            self.keys.retain(|_, i| {
                if over > 0 && i.time <= cut {
                    over -= 1;
                    return false;
                }
                true
            });
            self.evicted
                .fetch_add((before - self.keys.len()) as u64, Relaxed);
        }
        before - self.keys.len()
    }

    pub fn snapshot(&self) -> Vec<(String, Issued)> {
        let mut v: Vec<(String, Issued)> = self
            .keys
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn restore(&self, entries: &[(String, Issued)]) {
        if !entries.is_empty() {
            self.any.store(true, Relaxed);
        }
        for (k, v) in entries {
            self.keys.insert(k.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(invoked_by: &str, session: &str, key: &str, expiration: &str) -> String {
        format!(
            r#"{{"eventTime":"2024-08-01T10:00:00Z","eventID":"iss-1","eventName":"AssumeRole","eventSource":"sts.amazonaws.com","sourceIPAddress":"{invoked_by}","userAgent":"{invoked_by}","userIdentity":{{"type":"AWSService","invokedBy":"{invoked_by}"}},"requestParameters":{{"roleArn":"arn:aws:iam::111122223333:role/app","roleSessionName":"{session}"}},"responseElements":{{"credentials":{{"accessKeyId":"{key}","expiration":"{expiration}"}}}}}}"#
        )
    }

    #[test]
    fn issuances_by_each_service_bind_key_class_and_expiry() {
        let cases = [
            (
                "ec2.amazonaws.com",
                "i-0ABC1234",
                "2024-08-01T16:00:00Z",
                CredentialClassName::Ec2Instance,
                "i-0abc1234",
            ),
            (
                "ecs-tasks.amazonaws.com",
                "5f1e2d3c4b5a",
                "Aug 1, 2024, 4:00:00 PM",
                CredentialClassName::EcsTask,
                "5f1e2d3c4b5a",
            ),
            (
                "lambda.amazonaws.com",
                "my-function",
                "Aug 1, 2024, 4:00:00 PM",
                CredentialClassName::Lambda,
                "my-function",
            ),
        ];
        for (by, session, exp, class, workload) in cases {
            let json = event(by, session, "ASIAISSUED0000000001", exp);
            let ev = CloudTrailEvent::parse(&json).unwrap();
            let (key, i) = issuance_of(&ev, 100).expect(by);
            assert_eq!(key, "ASIAISSUED0000000001");
            assert_eq!((i.class, i.workload.as_str()), (class, workload), "{by}");
            assert_eq!(i.expires, parse_time("2024-08-01T16:00:00Z"), "{by}");
        }
    }

    #[test]
    fn other_assume_roles_are_not_issuances() {
        for by in ["resource-explorer-2.amazonaws.com", "212.129.81.36"] {
            let json = event(by, "x", "ASIAX", "2024-08-01T16:00:00Z");
            let ev = CloudTrailEvent::parse(&json).unwrap();
            assert!(issuance_of(&ev, 1).is_none(), "{by}");
        }
        let failed = event("ec2.amazonaws.com", "i-1", "ASIAX", "x").replace(
            "\"eventName\"",
            "\"errorCode\":\"AccessDenied\",\"eventName\"",
        );
        let ev = CloudTrailEvent::parse(&failed).unwrap();
        assert!(issuance_of(&ev, 1).is_none());
    }

    #[test]
    fn the_book_forgets_expired_keys_and_keeps_the_earliest_duplicate() {
        let book = IssuanceBook::default();
        let json = event(
            "lambda.amazonaws.com",
            "f",
            "ASIAK1",
            "2024-08-01T16:00:00Z",
        );
        let ev = CloudTrailEvent::parse(&json).unwrap();
        book.observe(&ev, 200);
        book.observe(&ev, 100);
        assert_eq!(book.get("ASIAK1").unwrap().time, 100);
        let exp = parse_time("2024-08-01T16:00:00Z").unwrap();
        assert_eq!(book.sweep(exp, 3600, 10), 0);
        assert_eq!(book.sweep(exp + 1, 3600, 10), 1);
        assert!(book.is_empty());
    }
}
