//! `GET /findings?…`: the filters, and the answer in one of two views.
//!
//! | parameter | meaning |
//! |---|---|
//! | `rule` | rule ids, repeated (`rule=a&rule=b`) or comma-separated; default: every rule |
//! | `severity` | the minimum severity (`high`: high and critical) |
//! | `since` | RFC 3339; findings *detected* at or after it (`detected_at`, not the event time: a finding made from old records replayed is new to whoever reads the table) |
//! | `limit` | at most this many (default [`DEFAULT_LIMIT`], at most the ring's capacity) |
//! | `view` | `full` (default): each finding as `run` writes it; `table`: [`TableRow`], flat columns for a Grafana table |
//!
//! The answer: `{"count": n, "truncated": bool, "items": [...]}`, newest first; `truncated`
//! says that more findings matched than `limit` let through.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::finding::{EventEvidence, Finding, Severity};

/// `limit` when none is given.
pub const DEFAULT_LIMIT: usize = 100;

/// How each finding is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// As `run` writes it to the findings file.
    Full,
    /// Flat columns ([`TableRow`]).
    Table,
}

/// The parsed query.
#[derive(Debug, Clone, PartialEq)]
pub struct FindingsQuery {
    /// Empty: every rule.
    pub rules: Vec<String>,
    pub min_severity: Option<Severity>,
    pub since: Option<DateTime<Utc>>,
    pub limit: usize,
    pub view: View,
}

impl FindingsQuery {
    /// Parses a raw query string (`None`: no query). `max_limit` caps `limit`. Errors name the
    /// parameter; they are shown to whoever is allowed to read the findings.
    pub fn parse(raw: Option<&str>, max_limit: usize) -> Result<FindingsQuery, String> {
        let mut q = FindingsQuery {
            rules: Vec::new(),
            min_severity: None,
            since: None,
            limit: DEFAULT_LIMIT.min(max_limit),
            view: View::Full,
        };
        let raw = raw.unwrap_or_default();
        // The query as form-urlencoded pairs (reqwest's URL type decodes them).
        let url = reqwest::Url::parse(&format!("http://findings/?{raw}"))
            .map_err(|e| format!("the query is not valid: {e}"))?;
        for (key, value) in url.query_pairs() {
            let value = value.trim();
            match &*key {
                "rule" => {
                    for r in value.split(',').map(str::trim).filter(|r| !r.is_empty()) {
                        if !crate::rules::RULE_IDS.contains(&r) {
                            return Err(format!(
                                "rule: unknown rule id {r:?} (known: {})",
                                crate::rules::RULE_IDS.join(", ")
                            ));
                        }
                        if !q.rules.iter().any(|x| x == r) {
                            q.rules.push(r.to_string());
                        }
                    }
                }
                "severity" => {
                    let s = Severity::parse(value).ok_or_else(|| {
                        format!(
                            "severity: {value:?} is not one of {}",
                            Severity::ALL.map(Severity::as_str).join(", ")
                        )
                    })?;
                    q.min_severity = Some(s);
                }
                "since" => {
                    // An offset's `+` sent unencoded arrives as a space.
                    let t = DateTime::parse_from_rfc3339(value)
                        .or_else(|e| {
                            DateTime::parse_from_rfc3339(&value.replace(' ', "+")).map_err(|_| e)
                        })
                        .map_err(|e| format!("since: {value:?} is not an RFC 3339 time ({e})"))?;
                    q.since = Some(t.with_timezone(&Utc));
                }
                "limit" => {
                    let n: usize = value
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("limit: {value:?} is not a number above 0"))?;
                    q.limit = n.min(max_limit);
                }
                "view" => {
                    q.view = match value {
                        "full" => View::Full,
                        "table" => View::Table,
                        _ => return Err(format!("view: {value:?} is neither full nor table")),
                    }
                }
                other => {
                    return Err(format!(
                        "{other}: unknown parameter (known: rule, severity, since, limit, view)"
                    ))
                }
            }
        }
        Ok(q)
    }

    /// Whether a finding passes the filters.
    pub fn matches(&self, f: &Finding) -> bool {
        if !self.rules.is_empty() && !self.rules.contains(&f.rule) {
            return false;
        }
        if self.min_severity.is_some_and(|m| f.severity < m) {
            return false;
        }
        if let Some(since) = self.since {
            // A finding whose time cannot be read is shown rather than hidden.
            if let Ok(t) = DateTime::parse_from_rfc3339(&f.detected_at) {
                if t.with_timezone(&Utc) < since {
                    return false;
                }
            }
        }
        true
    }

    /// The answer over findings given newest first.
    pub fn answer<'a>(&self, newest_first: impl IntoIterator<Item = &'a Finding>) -> Answer {
        let mut items = Vec::new();
        let mut truncated = false;
        for f in newest_first.into_iter().filter(|f| self.matches(f)) {
            if items.len() == self.limit {
                truncated = true;
                break;
            }
            let item = match self.view {
                View::Full => serde_json::to_value(f),
                View::Table => serde_json::to_value(TableRow::of(f)),
            };
            // Findings always serialize; a failure would drop one row rather than the answer.
            if let Ok(v) = item {
                items.push(v);
            }
        }
        Answer {
            count: items.len(),
            truncated,
            items,
        }
    }
}

/// What `GET /findings` answers.
#[derive(Debug, Serialize)]
pub struct Answer {
    pub count: usize,
    pub truncated: bool,
    pub items: Vec<serde_json::Value>,
}

/// One finding as flat columns, for a table. Every key is always present (`null` when the
/// finding has no such value), so a table's columns do not depend on the first row.
///
/// `first_*` is the session's home (the `first` event) or, for rules judging one event, that
/// event (`trigger`); `second_*` is the new origin (the `second` event), absent for one-event
/// rules. `*_place` is where the origin is (`outside_aws`, `aws`, `ours`, `ours_other`,
/// `private`), `*_place_detail` the same in words (`AWS EC2 us-east-1 (3.80.0.0/12)`).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct TableRow<'a> {
    pub id: &'a str,
    pub detected_at: &'a str,
    pub event_time: &'a str,
    pub rule: &'a str,
    pub severity: &'a str,
    pub title: &'a str,
    pub account_id: Option<&'a str>,
    pub session: Option<&'a str>,
    pub access_key_id: Option<&'a str>,
    pub principal_arn: Option<&'a str>,
    pub credential_class: Option<&'a str>,
    pub first_origin: Option<&'a str>,
    pub first_origin_kind: Option<&'a str>,
    pub first_place: Option<&'a str>,
    pub first_place_detail: Option<&'a str>,
    pub first_event_time: Option<&'a str>,
    pub second_origin: Option<&'a str>,
    pub second_origin_kind: Option<&'a str>,
    pub second_place: Option<&'a str>,
    pub second_place_detail: Option<&'a str>,
    pub second_event_time: Option<&'a str>,
    pub suspicious_origin: Option<&'a str>,
    pub error_code: Option<&'a str>,
    pub released_early: Option<&'a str>,
}

/// The keys of [`TableRow`], in order: what a table panel may select.
pub const TABLE_COLUMNS: [&str; 24] = [
    "id",
    "detected_at",
    "event_time",
    "rule",
    "severity",
    "title",
    "account_id",
    "session",
    "access_key_id",
    "principal_arn",
    "credential_class",
    "first_origin",
    "first_origin_kind",
    "first_place",
    "first_place_detail",
    "first_event_time",
    "second_origin",
    "second_origin_kind",
    "second_place",
    "second_place_detail",
    "second_event_time",
    "suspicious_origin",
    "error_code",
    "released_early",
];

impl<'a> TableRow<'a> {
    pub fn of(f: &'a Finding) -> TableRow<'a> {
        let role = |r: &str| f.events.iter().find(|e| e.role == r);
        let first = role("first").or_else(|| role("trigger"));
        let second = role("second");
        let s = |o: Option<&'a String>| o.map(String::as_str);
        let ev = |e: Option<&'a EventEvidence>, pick: fn(&'a EventEvidence) -> Option<&'a str>| {
            e.and_then(pick)
        };
        let origin: fn(&'a EventEvidence) -> Option<&'a str> = |e| Some(e.origin.as_str());
        let kind: fn(&'a EventEvidence) -> Option<&'a str> = |e| Some(e.origin_kind.as_str());
        let place: fn(&'a EventEvidence) -> Option<&'a str> = |e| e.place.as_deref();
        let detail: fn(&'a EventEvidence) -> Option<&'a str> = |e| e.place_detail.as_deref();
        let time: fn(&'a EventEvidence) -> Option<&'a str> = |e| Some(e.event_time.as_str());
        TableRow {
            id: &f.id,
            detected_at: &f.detected_at,
            event_time: &f.event_time,
            rule: &f.rule,
            severity: f.severity.as_str(),
            title: &f.title,
            account_id: s(f.account_id.as_ref()),
            session: s(f.session.as_ref()),
            access_key_id: s(f.access_key_id.as_ref()),
            principal_arn: s(f.principal_arn.as_ref()),
            credential_class: s(f.credential_class.as_ref()),
            first_origin: ev(first, origin),
            first_origin_kind: ev(first, kind),
            first_place: ev(first, place),
            first_place_detail: ev(first, detail),
            first_event_time: ev(first, time),
            second_origin: ev(second, origin),
            second_origin_kind: ev(second, kind),
            second_place: ev(second, place),
            second_place_detail: ev(second, detail),
            second_event_time: ev(second, time),
            suspicious_origin: s(f.suspicious_origin.as_ref()),
            error_code: s(f.error_code.as_ref()),
            released_early: s(f.released_early.as_ref()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::test_finding;

    fn finding(id: &str, rule: &str, severity: Severity, detected_at: &str) -> Finding {
        let mut f = test_finding(id);
        f.rule = rule.into();
        f.severity = severity;
        f.detected_at = detected_at.into();
        f
    }

    fn evidence(role: &str, origin: &str, place: Option<&str>) -> EventEvidence {
        EventEvidence {
            role: role.into(),
            event_id: format!("{role}-id"),
            event_time: "2024-08-02T08:21:05Z".into(),
            event_name: None,
            event_source: None,
            origin_kind: "public_ip".into(),
            origin: origin.into(),
            user_agent: "ua".into(),
            access_key_id: None,
            source: None,
            place: place.map(str::to_string),
            place_detail: place.map(|p| format!("{p} in words")),
        }
    }

    #[test]
    fn queries_parse_and_errors_name_the_parameter() {
        let q = FindingsQuery::parse(
            Some("rule=stop_logging,session_token_reuse&rule=stop_logging&severity=high&since=2024-01-02T03:04:05.678%2B01:00&limit=7&view=table"),
            1000,
        )
        .unwrap();
        assert_eq!(q.rules, ["stop_logging", "session_token_reuse"]);
        assert_eq!(q.min_severity, Some(Severity::High));
        assert_eq!(
            q.since.unwrap().to_rfc3339(),
            "2024-01-02T02:04:05.678+00:00"
        );
        assert_eq!((q.limit, q.view), (7, View::Table));

        let d = FindingsQuery::parse(None, 1000).unwrap();
        assert_eq!(
            (d.limit, d.view, d.rules.len()),
            (DEFAULT_LIMIT, View::Full, 0)
        );
        assert_eq!(
            FindingsQuery::parse(Some("limit=5000"), 1000)
                .unwrap()
                .limit,
            1000
        );
        assert_eq!(FindingsQuery::parse(Some(""), 10).unwrap().limit, 10);

        for (raw, want) in [
            ("rule=nope", "rule: unknown rule id \"nope\""),
            ("severity=urgent", "severity: \"urgent\""),
            ("since=yesterday", "since: \"yesterday\""),
            ("limit=0", "limit: \"0\""),
            ("limit=-1", "limit: \"-1\""),
            ("view=wide", "view: \"wide\""),
            ("token=abc", "token: unknown parameter"),
        ] {
            let err = FindingsQuery::parse(Some(raw), 1000).unwrap_err();
            assert!(err.starts_with(want), "{raw}: {err}");
        }
    }

    #[test]
    fn filters_select_by_rule_minimum_severity_and_detection_time() {
        let all = [
            finding(
                "d",
                "stop_logging",
                Severity::Critical,
                "2024-01-01T00:00:04.000Z",
            ),
            finding(
                "c",
                "session_token_reuse",
                Severity::High,
                "2024-01-01T00:00:03.000Z",
            ),
            finding(
                "b",
                "session_token_reuse",
                Severity::Medium,
                "2024-01-01T00:00:02.000Z",
            ),
            finding(
                "a",
                "create_user",
                Severity::Low,
                "2024-01-01T00:00:01.000Z",
            ),
        ];
        let ids = |raw: &str| -> (Vec<String>, bool) {
            let a = FindingsQuery::parse(Some(raw), 1000).unwrap().answer(&all);
            assert_eq!(a.count, a.items.len());
            let ids = a
                .items
                .iter()
                .map(|i| i["id"].as_str().unwrap().to_string())
                .collect();
            (ids, a.truncated)
        };
        assert_eq!(ids("").0, ["d", "c", "b", "a"]);
        assert_eq!(ids("rule=session_token_reuse").0, ["c", "b"]);
        assert_eq!(ids("rule=stop_logging&rule=create_user").0, ["d", "a"]);
        assert_eq!(ids("severity=high").0, ["d", "c"]);
        assert_eq!(
            ids("severity=medium&rule=session_token_reuse").0,
            ["c", "b"]
        );
        assert_eq!(ids("since=2024-01-01T00:00:02Z").0, ["d", "c", "b"]);
        assert_eq!(ids("since=2024-01-01T01:00:02%2B01:00").0, ["d", "c", "b"]);
        assert_eq!(ids("since=2024-01-01T01:00:02+01:00").0, ["d", "c", "b"]);
        assert_eq!(
            ids("limit=2"),
            (vec!["d".to_string(), "c".to_string()], true)
        );
        assert!(!ids("limit=4").1);
        assert_eq!(ids("severity=critical&view=table").0, ["d"]);
    }

    #[test]
    fn the_table_view_has_every_column_with_both_origins_and_their_places() {
        let mut f = finding(
            "x",
            "session_token_reuse",
            Severity::High,
            "2024-01-01T00:00:00Z",
        );
        f.session = Some("app-role/i-0123".into());
        f.account_id = Some("111122223333".into());
        f.events = vec![
            evidence("first", "54.160.0.1", Some("aws")),
            evidence("second", "203.0.113.9", Some("outside_aws")),
        ];
        let v = serde_json::to_value(TableRow::of(&f)).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = TABLE_COLUMNS.to_vec();
        want.sort_unstable();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort_unstable();
        assert_eq!(keys_sorted, want, "TABLE_COLUMNS is TableRow's keys");
        assert_eq!(v["first_origin"], "54.160.0.1");
        assert_eq!(v["first_place"], "aws");
        assert_eq!(v["first_place_detail"], "aws in words");
        assert_eq!(v["second_origin"], "203.0.113.9");
        assert_eq!(v["second_place"], "outside_aws");
        assert_eq!(v["session"], "app-role/i-0123");
        assert_eq!(v["account_id"], "111122223333");
        assert_eq!(v["access_key_id"], serde_json::Value::Null);

        // One-event rules: the trigger is the first origin; there is no second.
        f.events = vec![evidence("trigger", "198.51.100.7", None)];
        let v = serde_json::to_value(TableRow::of(&f)).unwrap();
        assert_eq!(v["first_origin"], "198.51.100.7");
        assert_eq!(v["first_place"], serde_json::Value::Null);
        assert_eq!(v["second_origin"], serde_json::Value::Null);
        assert_eq!(v.as_object().unwrap().len(), TABLE_COLUMNS.len());
    }
}
