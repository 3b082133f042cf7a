//! `type = "eventbridge"`: findings put on an EventBridge event bus (`PutEvents`), for rules
//! that route them to the user's own Lambdas, Step Functions, queues and ticketing.
//!
//! Each finding is one event: `Source` `credwatch` (`source` overrides), `DetailType` the rule id
//! (`session_token_reuse`, …), `Detail` the finding as `run` writes it, `Resources` the principal
//! ARN, `Time` the event time of the finding. A rule matches them with
//! `{"source": ["credwatch"], "detail-type": ["session_token_reuse"]}`.
//!
//! Size: an entry may be at most 256 KB, counted as AWS counts it (the UTF-8 bytes of `Source`,
//! `DetailType`, `Detail` and each resource, plus 14 for `Time`), and so may a whole call. A
//! finding over it has its longest evidence strings cut (user agents, exception details) until
//! it fits, and says so (`"trimmed": true`); it is never dropped. A call carries at most 10
//! entries and at most 256 KB.
//!
//! IAM: `events:PutEvents` on the bus ARN.

use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use serde_json::Value;
use tokio::sync::OnceCell;

use super::delivery::{self, Attempt};
use super::EscalationConfig;
use crate::finding::Finding;

/// `PutEvents` takes at most 10 entries a call.
pub const BATCH: usize = 10;
/// The most an entry, and a whole call, may be.
pub const MAX_ENTRY_BYTES: usize = 256 * 1024;
/// The default `Source`.
pub const DEFAULT_SOURCE: &str = "credwatch";

/// An EventBridge destination; its client is made at the first delivery.
pub struct EventBridge {
    region: Option<String>,
    endpoint_url: Option<String>,
    bus: String,
    source: String,
    client: OnceCell<aws_sdk_eventbridge::Client>,
}

/// What one finding becomes.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub detail_type: String,
    pub detail: String,
    pub resources: Vec<String>,
    pub time: Option<i64>,
    /// Evidence was cut to fit.
    pub trimmed: bool,
}

impl Entry {
    /// The entry's size as `PutEvents` counts it.
    pub fn size(&self, source: &str) -> usize {
        source.len()
            + self.detail_type.len()
            + self.detail.len()
            + self.resources.iter().map(String::len).sum::<usize>()
            + if self.time.is_some() { 14 } else { 0 }
    }
}

impl EventBridge {
    pub fn new(c: &EscalationConfig) -> EventBridge {
        EventBridge {
            region: c.region.clone(),
            endpoint_url: c.endpoint_url.clone(),
            bus: c.event_bus.clone().unwrap_or_else(|| "default".into()),
            source: c
                .source
                .clone()
                .unwrap_or_else(|| DEFAULT_SOURCE.to_string()),
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> &aws_sdk_eventbridge::Client {
        self.client
            .get_or_init(|| async {
                let sdk = crate::kinesis::sdk_config(
                    self.region.as_deref(),
                    self.endpoint_url.as_deref(),
                )
                .await;
                aws_sdk_eventbridge::Client::new(&sdk)
            })
            .await
    }

    /// How many of `batch` (from its start) go in one call: at most [`BATCH`], and together
    /// within [`MAX_ENTRY_BYTES`] (always at least one).
    pub fn take(&self, batch: &[&Finding]) -> usize {
        let mut total = 0;
        let mut n = 0;
        for f in batch.iter().take(BATCH) {
            let size = entry(f, &self.source).size(&self.source);
            if n > 0 && total + size > MAX_ENTRY_BYTES {
                break;
            }
            total += size;
            n += 1;
        }
        n.max(1).min(batch.len())
    }

    /// Puts `batch` (as cut by [`EventBridge::take`]); one outcome per finding, in order.
    pub async fn send(&self, batch: &[&Finding]) -> Vec<Attempt> {
        let client = self.client().await;
        let entries: Vec<PutEventsRequestEntry> = batch
            .iter()
            .map(|f| {
                let e = entry(f, &self.source);
                PutEventsRequestEntry::builder()
                    .source(&self.source)
                    .detail_type(e.detail_type)
                    .detail(e.detail)
                    .set_resources(Some(e.resources))
                    .set_time(
                        e.time
                            .map(aws_sdk_eventbridge::primitives::DateTime::from_secs),
                    )
                    .event_bus_name(&self.bus)
                    .build()
            })
            .collect();
        match client.put_events().set_entries(Some(entries)).send().await {
            Ok(out) => {
                let results = out.entries();
                batch
                    .iter()
                    .enumerate()
                    .map(|(i, _)| match results.get(i) {
                        Some(r) if r.error_code().is_none() && r.event_id().is_some() => {
                            Attempt::Delivered
                        }
                        Some(r) => delivery::entry_failure(
                            r.error_code().unwrap_or("NoEventId"),
                            r.error_message().unwrap_or(""),
                        ),
                        None => Attempt::Retry {
                            reason: "PutEvents returned fewer entries than were sent".into(),
                            after: None,
                        },
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

/// The EventBridge entry of a finding, trimmed to [`MAX_ENTRY_BYTES`].
pub fn entry(f: &Finding, source: &str) -> Entry {
    let resources: Vec<String> = f
        .principal_arn
        .iter()
        .filter(|a| a.starts_with("arn:"))
        .cloned()
        .collect();
    let time = crate::event::parse_time(&f.event_time);
    let mut e = Entry {
        detail_type: f.rule.clone(),
        detail: String::new(),
        resources,
        time,
        trimmed: false,
    };
    let mut detail = serde_json::to_value(f).unwrap_or(Value::Null);
    e.detail = detail.to_string();
    let budget = MAX_ENTRY_BYTES.saturating_sub(e.size(source) - e.detail.len());
    if e.detail.len() > budget {
        trim(&mut detail, budget);
        e.detail = detail.to_string();
        e.trimmed = true;
    }
    e
}

/// Fields that identify the finding: never cut.
const KEEP: &[&str] = &[
    "id",
    "rule",
    "severity",
    "account_id",
    "access_key_id",
    "session",
    "credential_class",
    "principal_arn",
    "event_ids",
    "event_time",
    "detected_at",
    "event_id",
    "role",
    "origin",
    "origin_kind",
    "place",
    "suspicious_origin",
];

/// Cuts the longest cuttable strings of `v` (halving them) until it serializes within `budget`
/// bytes, then marks it `"trimmed": true`. Identity fields ([`KEEP`]) are not cut; as a last
/// resort, the exceptions' details and the events' user agents are emptied.
fn trim(v: &mut Value, budget: usize) {
    if let Value::Object(m) = v {
        m.insert("trimmed".into(), Value::Bool(true));
    }
    for _ in 0..64 {
        if v.to_string().len() <= budget {
            return;
        }
        let Some(longest) = longest_cuttable(v) else {
            break;
        };
        let s = longest;
        let keep = s.chars().count() / 2;
        let mut cut: String = s.chars().take(keep).collect();
        cut.push('…');
        *s = cut;
    }
    // Nothing long is left to halve: drop the lists that can be long.
    if let Value::Object(m) = v {
        m.remove("exceptions_checked");
        if v.to_string().len() > budget {
            if let Some(Value::Array(evs)) = v.get_mut("events") {
                evs.truncate(2);
            }
        }
    }
}

/// The longest string in `v` outside [`KEEP`] fields, if it is longer than 64 characters.
fn longest_cuttable(v: &mut Value) -> Option<&mut String> {
    fn walk<'a>(v: &'a mut Value, best: &mut Option<&'a mut String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    if KEEP.contains(&k.as_str()) {
                        continue;
                    }
                    walk(x, best);
                }
            }
            Value::Array(a) => {
                for x in a.iter_mut() {
                    walk(x, best);
                }
            }
            Value::String(s) if s.len() > 64 && best.as_ref().is_none_or(|b| s.len() > b.len()) => {
                *best = Some(s);
            }
            _ => {}
        }
    }
    let mut best = None;
    walk(v, &mut best);
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::{EventEvidence, ExceptionCheck};

    fn big_finding(ua_len: usize) -> Finding {
        let ev = |role: &str| EventEvidence {
            role: role.into(),
            event_id: format!("{role}-id"),
            event_time: "2024-08-02T08:21:05Z".into(),
            event_name: None,
            event_source: None,
            origin_kind: "public_ip".into(),
            origin: "203.0.113.9".into(),
            user_agent: "u".repeat(ua_len),
            access_key_id: None,
            source: None,
            place: None,
            place_detail: None,
        };
        Finding {
            principal_arn: Some("arn:aws:sts::111122223333:assumed-role/app/i-1".into()),
            events: vec![ev("first"), ev("second")],
            exceptions_checked: vec![ExceptionCheck {
                exception: "allow_list".into(),
                applied: false,
                detail: "d".repeat(ua_len),
            }],
            ..crate::finding::test_finding("big")
        }
    }

    #[test]
    fn a_small_finding_is_sent_whole() {
        let f = big_finding(100);
        let e = entry(&f, DEFAULT_SOURCE);
        assert!(!e.trimmed);
        let back: Finding = serde_json::from_str(&e.detail).unwrap();
        assert_eq!(back, f);
        assert_eq!(e.detail_type, "session_token_reuse");
        assert_eq!(
            e.resources,
            vec!["arn:aws:sts::111122223333:assumed-role/app/i-1".to_string()]
        );
    }

    #[test]
    fn an_oversize_finding_is_trimmed_not_dropped() {
        let f = big_finding(200_000);
        let e = entry(&f, DEFAULT_SOURCE);
        assert!(e.trimmed);
        assert!(
            e.size(DEFAULT_SOURCE) <= MAX_ENTRY_BYTES,
            "{}",
            e.size(DEFAULT_SOURCE)
        );
        let v: Value = serde_json::from_str(&e.detail).unwrap();
        assert_eq!(v["id"], "big");
        assert_eq!(v["trimmed"], true);
        assert_eq!(v["events"][1]["event_id"], "second-id");
        assert_eq!(v["events"][1]["origin"], "203.0.113.9");
    }

    #[test]
    fn a_call_stays_within_ten_entries_and_256_kb() {
        let eb = EventBridge::new(&EscalationConfig {
            kind: super::super::DestinationKind::Eventbridge,
            ..Default::default()
        });
        let small: Vec<Finding> = (0..15).map(|_| big_finding(100)).collect();
        let refs: Vec<&Finding> = small.iter().collect();
        assert_eq!(eb.take(&refs), 10);
        let large: Vec<Finding> = (0..5).map(|_| big_finding(60_000)).collect();
        let refs: Vec<&Finding> = large.iter().collect();
        let n = eb.take(&refs);
        assert!((1..5).contains(&n), "{n}");
        let total: usize = refs[..n]
            .iter()
            .map(|f| entry(f, DEFAULT_SOURCE).size(DEFAULT_SOURCE))
            .sum();
        assert!(total <= MAX_ENTRY_BYTES);
    }
}
