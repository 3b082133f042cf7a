//! The bodies sent to each kind of destination, rendered from a [`Finding`] at delivery time.
//!
//! - generic webhook: the finding as an OCSF 1.1.0 Detection Finding (class 2004);
//! - Slack: an incoming-webhook message (`text` for notifications, `blocks` for display);
//! - PagerDuty: an Events API v2 `trigger` event.
//!
//! Finding fields partly come from the attacker (user agents, opaque origins): Slack text is
//! escaped so that it cannot mention `@channel` or render links, and long values are truncated
//! to the destination's limits.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::finding::{EventEvidence, Finding, Severity};

/// The OCSF schema version of the generic webhook body.
pub const OCSF_VERSION: &str = "1.1.0";

/// OCSF `severity_id` and its caption.
pub fn ocsf_severity(s: Severity) -> (u8, &'static str) {
    match s {
        Severity::Info => (1, "Informational"),
        Severity::Low => (2, "Low"),
        Severity::Medium => (3, "Medium"),
        Severity::High => (4, "High"),
        Severity::Critical => (5, "Critical"),
    }
}

/// PagerDuty Events v2 `payload.severity`.
pub fn pagerduty_severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low | Severity::Info => "info",
    }
}

/// RFC 3339 to Unix milliseconds.
fn millis(t: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|d| d.timestamp_millis())
}

/// At most `max` characters, with `…` when cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The session the finding is about, for display and keys: the workload session, else the
/// access key, else the principal.
fn session_of(f: &Finding) -> Option<&str> {
    f.session
        .as_deref()
        .or(f.access_key_id.as_deref())
        .or(f.principal_arn.as_deref())
}

/// The PagerDuty `dedup_key`: one per (rule, session), so that repeated findings about one
/// session join the open alert. At most 255 characters (the API's limit).
pub fn pagerduty_dedup_key(f: &Finding) -> String {
    let key = format!("credwatch/{}/{}", f.rule, session_of(f).unwrap_or(&f.id));
    if key.len() <= 255 {
        return key;
    }
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("credwatch/{}/sha256:{hex}", truncate(&f.rule, 64))
}

// ---- OCSF ----------------------------------------------------------------------------------

fn insert_some(m: &mut Map<String, Value>, k: &str, v: Option<&str>) {
    if let Some(v) = v {
        m.insert(k.into(), Value::String(v.into()));
    }
}

/// The network endpoint of an evidence origin, when it has one.
fn src_endpoint(e: &EventEvidence) -> Option<Value> {
    match e.origin_kind.as_str() {
        "public_ip" | "private_ip" => Some(json!({ "ip": e.origin })),
        "vpc_endpoint" => {
            // `vpce-…@account (address)`
            let (head, addr) = match e.origin.split_once(" (") {
                Some((h, rest)) => (h, Some(rest.trim_end_matches(')'))),
                None => (e.origin.as_str(), None),
            };
            let id = head.split('@').next().unwrap_or(head);
            let mut m = Map::new();
            m.insert("uid".into(), json!(id));
            insert_some(&mut m, "ip", addr);
            Some(Value::Object(m))
        }
        "aws_service" | "aws_internal" => Some(json!({ "svc_name": e.origin })),
        _ => None,
    }
}

fn ocsf_evidence(f: &Finding, e: &EventEvidence) -> Value {
    let mut session = Map::new();
    insert_some(&mut session, "uid", f.session.as_deref());
    insert_some(&mut session, "uid_alt", f.principal_arn.as_deref());
    insert_some(
        &mut session,
        "credential_uid",
        e.access_key_id.as_deref().or(f.access_key_id.as_deref()),
    );
    let mut user = Map::new();
    insert_some(&mut user, "uid", f.principal_arn.as_deref());
    if let Some(acct) = &f.account_id {
        user.insert(
            "account".into(),
            json!({ "uid": acct, "type": "AWS Account", "type_id": 10 }),
        );
    }
    let mut actor = Map::new();
    if !session.is_empty() {
        actor.insert("session".into(), Value::Object(session));
    }
    if !user.is_empty() {
        actor.insert("user".into(), Value::Object(user));
    }

    let mut data = Map::new();
    data.insert("role".into(), json!(e.role));
    data.insert("event_uid".into(), json!(e.event_id));
    data.insert("event_time".into(), json!(e.event_time));
    data.insert("origin".into(), json!(e.origin));
    data.insert("origin_kind".into(), json!(e.origin_kind));
    data.insert("user_agent".into(), json!(e.user_agent));
    insert_some(&mut data, "source", e.source.as_deref());

    let mut ev = Map::new();
    if !actor.is_empty() {
        ev.insert("actor".into(), Value::Object(actor));
    }
    if let Some(op) = &e.event_name {
        let mut api = Map::new();
        api.insert("operation".into(), json!(op));
        if let Some(svc) = &e.event_source {
            api.insert("service".into(), json!({ "name": svc }));
        }
        ev.insert("api".into(), Value::Object(api));
    }
    if let Some(ep) = src_endpoint(e) {
        ev.insert("src_endpoint".into(), ep);
    }
    ev.insert("data".into(), Value::Object(data));
    Value::Object(ev)
}

/// A one-paragraph description: the title, then who and from where.
fn description(f: &Finding) -> String {
    let mut d = f.title.clone();
    if let Some(s) = session_of(f) {
        d.push_str(&format!(". Session: {s}"));
    }
    if let Some(a) = &f.account_id {
        d.push_str(&format!(" (account {a})"));
    }
    if !f.events.is_empty() {
        let origins: Vec<String> = f
            .events
            .iter()
            .map(|e| format!("{} ({})", e.origin, e.origin_kind))
            .collect();
        d.push_str(&format!(". Origins: {}", origins.join(" -> ")));
    }
    if let Some(code) = &f.error_code {
        d.push_str(&format!(". The call failed with {code}"));
    }
    d.push('.');
    d
}

/// The finding as an OCSF 1.1.0 Detection Finding (`class_uid` 2004, activity Create).
pub fn ocsf_detection_finding(f: &Finding) -> Value {
    let (severity_id, severity) = ocsf_severity(f.severity);
    let time = millis(&f.detected_at).unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    let event_times: Vec<i64> = f
        .events
        .iter()
        .filter_map(|e| millis(&e.event_time))
        .collect();

    let mut info = Map::new();
    info.insert("uid".into(), json!(f.id));
    info.insert("title".into(), json!(f.title));
    info.insert("desc".into(), json!(description(f)));
    info.insert("types".into(), json!([f.rule]));
    info.insert("created_time".into(), json!(time));
    if let (Some(first), Some(last)) = (event_times.iter().min(), event_times.iter().max()) {
        info.insert("first_seen_time".into(), json!(first));
        info.insert("last_seen_time".into(), json!(last));
    }
    info.insert(
        "analytic".into(),
        json!({ "uid": f.rule, "name": f.rule, "type_id": 1, "type": "Rule" }),
    );
    let related: Vec<Value> = f.event_ids.iter().map(|id| json!({ "uid": id })).collect();
    if !related.is_empty() {
        info.insert("related_events".into(), Value::Array(related));
    }

    let mut cloud = Map::new();
    cloud.insert("provider".into(), json!("AWS"));
    if let Some(acct) = &f.account_id {
        cloud.insert(
            "account".into(),
            json!({ "uid": acct, "type": "AWS Account", "type_id": 10 }),
        );
    }

    let mut v = Map::new();
    v.insert("activity_id".into(), json!(1));
    v.insert("activity_name".into(), json!("Create"));
    v.insert("category_uid".into(), json!(2));
    v.insert("category_name".into(), json!("Findings"));
    v.insert("class_uid".into(), json!(2004));
    v.insert("class_name".into(), json!("Detection Finding"));
    v.insert("type_uid".into(), json!(200401));
    v.insert("type_name".into(), json!("Detection Finding: Create"));
    v.insert("severity_id".into(), json!(severity_id));
    v.insert("severity".into(), json!(severity));
    v.insert("status_id".into(), json!(1));
    v.insert("status".into(), json!("New"));
    v.insert("time".into(), json!(time));
    v.insert("message".into(), json!(f.title));
    v.insert("finding_info".into(), Value::Object(info));
    v.insert("cloud".into(), Value::Object(cloud));
    v.insert(
        "evidences".into(),
        Value::Array(f.events.iter().map(|e| ocsf_evidence(f, e)).collect()),
    );
    v.insert(
        "metadata".into(),
        json!({
            "product": {
                "name": "credwatch",
                "vendor_name": "credwatch",
                "version": env!("CARGO_PKG_VERSION"),
            },
            "version": OCSF_VERSION,
            "profiles": ["cloud"],
        }),
    );
    v.insert("unmapped".into(), json!({ "finding": f }));
    Value::Object(v)
}

// ---- Slack ---------------------------------------------------------------------------------

/// Escapes the three characters Slack's mrkdwn gives meaning to (`<@U…>`, `<!channel>`, links).
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A value shown as inline code: escaped, and without backticks that would end the span.
fn code(s: &str) -> String {
    format!("`{}`", esc(&s.replace('`', "'")))
}

fn severity_emoji(s: Severity) -> &'static str {
    match s {
        Severity::Critical => ":rotating_light:",
        Severity::High => ":red_circle:",
        Severity::Medium => ":large_orange_circle:",
        Severity::Low => ":large_yellow_circle:",
        Severity::Info => ":information_source:",
    }
}

/// A Slack incoming-webhook message.
pub fn slack_message(f: &Finding) -> Value {
    let sev = f.severity.as_str().to_uppercase();
    let emoji = severity_emoji(f.severity);
    let text = truncate(
        &format!("{emoji} [{sev}] credwatch: {}", esc(&f.title)),
        3000,
    );
    let header = truncate(&format!("{emoji} [{sev}] {}", f.rule), 150);

    let mut fields = vec![
        format!("*Rule*\n{}", code(&f.rule)),
        format!("*Severity*\n{}", f.severity.as_str()),
    ];
    let optional = [
        ("Account", &f.account_id),
        ("Session", &f.session),
        ("Access key", &f.access_key_id),
        ("Credential", &f.credential_class),
        ("Principal", &f.principal_arn),
        ("Error", &f.error_code),
    ];
    for (label, value) in optional {
        if let Some(v) = value {
            fields.push(format!("*{label}*\n{}", code(&truncate(v, 1900))));
        }
    }
    let fields: Vec<Value> = fields
        .into_iter()
        .take(10)
        .map(|t| json!({ "type": "mrkdwn", "text": t }))
        .collect();

    let mut evidence = String::from("*Evidence*");
    for e in &f.events {
        let call = match (&e.event_name, &e.event_source) {
            (Some(n), Some(s)) => format!(" {} on {}", code(n), code(s)),
            (Some(n), None) => format!(" {}", code(n)),
            _ => String::new(),
        };
        evidence.push_str(&format!(
            "\n• *{}* {}{} from {} ({})\n      user agent {}",
            esc(&e.role),
            esc(&e.event_time),
            call,
            code(&e.origin),
            esc(&e.origin_kind),
            code(&truncate(&e.user_agent, 300)),
        ));
    }

    let mut blocks = vec![
        json!({ "type": "header", "text": { "type": "plain_text", "text": header, "emoji": true } }),
        json!({ "type": "section", "text": { "type": "mrkdwn", "text": truncate(&format!("*{}*", esc(&f.title)), 3000) } }),
        json!({ "type": "section", "fields": fields }),
    ];
    if !f.events.is_empty() {
        blocks.push(json!({ "type": "section", "text": { "type": "mrkdwn", "text": truncate(&evidence, 3000) } }));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{
            "type": "mrkdwn",
            "text": format!(
                "finding {} · event {} · detected {}",
                code(&f.id),
                esc(&f.event_time),
                esc(&f.detected_at)
            ),
        }],
    }));
    json!({ "text": text, "blocks": blocks })
}

// ---- PagerDuty -----------------------------------------------------------------------------

/// A PagerDuty Events API v2 `trigger` event.
pub fn pagerduty_event(f: &Finding, routing_key: &str) -> Value {
    let source = match &f.account_id {
        Some(a) => format!("aws-account:{a}"),
        None => "credwatch".to_string(),
    };
    json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": pagerduty_dedup_key(f),
        "client": "credwatch",
        "payload": {
            "summary": truncate(&format!("[credwatch] {}", f.title), 1024),
            "source": truncate(&source, 255),
            "severity": pagerduty_severity(f.severity),
            "timestamp": f.detected_at,
            "component": truncate(session_of(f).unwrap_or("-"), 255),
            "class": f.rule,
            "custom_details": f,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_text_cannot_mention_or_link() {
        assert_eq!(
            esc("<!channel> & <https://x|y>"),
            "&lt;!channel&gt; &amp; &lt;https://x|y&gt;"
        );
        assert_eq!(code("a`b<c"), "`a'b&lt;c`");
    }

    #[test]
    fn truncation_is_by_characters() {
        assert_eq!(truncate("ééééé", 3), "éé…");
        assert_eq!(truncate("abc", 3), "abc");
    }

    #[test]
    fn long_dedup_keys_are_hashed() {
        let f = Finding {
            session: Some("s".repeat(400)),
            ..crate::finding::test_finding("x")
        };
        let k = pagerduty_dedup_key(&f);
        assert!(k.len() <= 255 && k.starts_with("credwatch/session_token_reuse/sha256:"));
    }
}
