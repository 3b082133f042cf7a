//! The fields of a CloudTrail event that credwatch reads, borrowed from the input buffer.
//!
//! Format: <https://docs.aws.amazon.com/awscloudtrail/latest/userguide/cloudtrail-event-reference-record-contents.html>
//!
//! Only what the engine needs is deserialized; everything else is skipped without building a
//! `serde_json::Value`. Unknown fields are tolerated (AWS adds fields). `requestParameters` and
//! `responseElements` stay raw and are parsed only by the few rules that need them.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// One CloudTrail event. Strings borrow from the input unless they contained escapes.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CloudTrailEvent<'a> {
    #[serde(rename = "eventID", borrow, deserialize_with = "borrow_str")]
    pub event_id: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "borrow_str")]
    pub event_time: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "borrow_str")]
    pub event_name: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "borrow_str")]
    pub event_source: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "borrow_str")]
    pub event_type: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "borrow_str")]
    pub aws_region: Option<Cow<'a, str>>,
    #[serde(rename = "sourceIPAddress", borrow, deserialize_with = "borrow_str")]
    pub source_ip_address: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "borrow_str")]
    pub user_agent: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "borrow_str")]
    pub error_code: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "borrow_str")]
    pub error_message: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "borrow_str")]
    pub recipient_account_id: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "borrow_str")]
    pub vpc_endpoint_id: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "borrow_str")]
    pub vpc_endpoint_account_id: Option<Cow<'a, str>>,
    /// `"true"` on calls made with credentials issued to a console session.
    #[serde(deserialize_with = "lenient_bool")]
    pub session_credential_from_console: bool,
    #[serde(borrow)]
    pub user_identity: UserIdentity<'a>,
    #[serde(borrow)]
    pub request_parameters: Option<&'a RawValue>,
    #[serde(borrow)]
    pub response_elements: Option<&'a RawValue>,
}

/// `userIdentity`: <https://docs.aws.amazon.com/awscloudtrail/latest/userguide/cloudtrail-event-reference-user-identity.html>
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UserIdentity<'a> {
    #[serde(rename = "type", borrow, deserialize_with = "borrow_str")]
    pub identity_type: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "borrow_str")]
    pub principal_id: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "borrow_str")]
    pub arn: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "borrow_str")]
    pub account_id: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "borrow_str")]
    pub access_key_id: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "borrow_str")]
    pub user_name: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "borrow_str")]
    pub invoked_by: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub session_context: Option<SessionContext<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SessionContext<'a> {
    #[serde(borrow)]
    pub attributes: Option<SessionAttributes<'a>>,
    #[serde(borrow)]
    pub session_issuer: Option<SessionIssuer<'a>>,
    /// Present (e.g. `"2.0"`) when the credentials were delivered by the EC2 instance metadata service.
    #[serde(borrow, deserialize_with = "borrow_str")]
    pub ec2_role_delivery: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "borrow_str")]
    pub source_identity: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SessionAttributes<'a> {
    #[serde(borrow, deserialize_with = "borrow_str")]
    pub creation_date: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SessionIssuer<'a> {
    #[serde(rename = "type", borrow, deserialize_with = "borrow_str")]
    pub issuer_type: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "borrow_str")]
    pub arn: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "borrow_str")]
    pub user_name: Option<Cow<'a, str>>,
}

/// `Option<Cow<str>>` that borrows from the input when the string has no escapes (serde's
/// `borrow` does not reach through `Option`).
fn borrow_str<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed<'a>>::deserialize(d)?.map(|b| b.0))
}

/// CloudTrail writes some booleans as strings (`"true"`), some as JSON booleans.
fn lenient_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum B<'a> {
        Bool(bool),
        #[serde(borrow)]
        Str(Cow<'a, str>),
        Other(serde::de::IgnoredAny),
    }
    Ok(match B::deserialize(d)? {
        B::Bool(b) => b,
        B::Str(s) => s.eq_ignore_ascii_case("true"),
        B::Other(_) => false,
    })
}

/// Why a JSON text could not be used as a CloudTrail event.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("bad field `{field}`: {value:?}")]
    BadField { field: &'static str, value: String },
    #[error(
        "eventTime {time} is ahead of this host's clock by more than \
         detection.max_clock_skew_secs = {skew}"
    )]
    TimeAhead { time: String, skew: u64 },
}

impl EventError {
    /// Low-cardinality label for metrics and summaries.
    pub fn kind(&self) -> &'static str {
        match self {
            EventError::NotJson(_) => "not_json",
            EventError::MissingField(_) => "missing_field",
            EventError::BadField { .. } => "bad_field",
            EventError::TimeAhead { .. } => "time_ahead",
        }
    }
}

impl<'a> CloudTrailEvent<'a> {
    /// Parses one event from its JSON text, borrowing strings where possible.
    pub fn parse(json: &'a str) -> Result<Self, EventError> {
        let ev: CloudTrailEvent<'a> =
            serde_json::from_str(json).map_err(|e| match e.classify() {
                serde_json::error::Category::Data => EventError::BadField {
                    field: "a field of another type",
                    value: e.to_string(),
                },
                _ => EventError::NotJson(e),
            })?;
        ev.check()?;
        Ok(ev)
    }

    /// What [`CloudTrailEvent::parse`] requires of an event besides its JSON: `eventTime` and
    /// `eventName`. For events deserialized elsewhere (a whole CloudTrail file in one pass).
    pub fn check(&self) -> Result<(), EventError> {
        if self.event_time.is_none() {
            return Err(EventError::MissingField("eventTime"));
        }
        if self.event_name.is_none() {
            return Err(EventError::MissingField("eventName"));
        }
        Ok(())
    }

    pub fn event_id(&self) -> &str {
        self.event_id.as_deref().unwrap_or("")
    }
    pub fn event_name(&self) -> &str {
        self.event_name.as_deref().unwrap_or("")
    }
    pub fn event_source(&self) -> &str {
        self.event_source.as_deref().unwrap_or("")
    }
    pub fn user_agent(&self) -> &str {
        self.user_agent.as_deref().unwrap_or("")
    }
    pub fn access_key_id(&self) -> Option<&str> {
        self.user_identity
            .access_key_id
            .as_deref()
            .filter(|k| !k.is_empty())
    }
    pub fn account_id(&self) -> Option<&str> {
        self.user_identity
            .account_id
            .as_deref()
            .or(self.recipient_account_id.as_deref())
    }
    pub fn arn(&self) -> Option<&str> {
        self.user_identity.arn.as_deref()
    }
    pub fn succeeded(&self) -> bool {
        self.error_code.as_deref().is_none_or(str::is_empty)
    }
    pub fn creation_date(&self) -> Option<&str> {
        self.user_identity
            .session_context
            .as_ref()?
            .attributes
            .as_ref()?
            .creation_date
            .as_deref()
    }

    /// Event time in seconds since the Unix epoch.
    pub fn time_secs(&self) -> Result<i64, EventError> {
        let raw = self
            .event_time
            .as_deref()
            .ok_or(EventError::MissingField("eventTime"))?;
        parse_time(raw).ok_or_else(|| EventError::BadField {
            field: "eventTime",
            value: raw.chars().take(64).collect(),
        })
    }

    /// `requestParameters` parsed into `T`; `None` when absent, null or of another shape.
    pub fn request<T: Deserialize<'a>>(&self) -> Option<T> {
        self.request_parameters
            .and_then(|r| serde_json::from_str(r.get()).ok())
    }

    /// `responseElements` parsed into `T`; `None` when absent, null or of another shape.
    pub fn response<T: Deserialize<'a>>(&self) -> Option<T> {
        self.response_elements
            .and_then(|r| serde_json::from_str(r.get()).ok())
    }
}

/// Parses an RFC 3339 time such as `2024-08-02T08:23:24Z` into seconds since the epoch.
pub fn parse_time(raw: &str) -> Option<i64> {
    parse_time_z(raw.as_bytes()).or_else(|| {
        chrono::DateTime::parse_from_rfc3339(raw)
            .ok()
            .map(|t| t.timestamp())
    })
}

/// The form CloudTrail writes, `YYYY-MM-DDTHH:MM:SSZ`, read without chrono's general parser
/// (it was 2% of a hunt); anything else (fractions, offsets, lower case) goes to chrono.
fn parse_time_z(b: &[u8]) -> Option<i64> {
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| {
        b[r].iter().try_fold(0i64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // RFC 3339 allows a leap second (:60); chrono handles it.
    if !(1..=12).contains(&m) || d < 1 || hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in_month = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if d > days_in_month[(m - 1) as usize] {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Formats seconds since the epoch as RFC 3339 UTC (`2024-08-02T08:23:24Z`).
pub fn format_time(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_borrowed_fields_and_tolerates_unknown_ones() {
        let json = r#"{"eventVersion":"1.08","eventID":"e1","eventTime":"2024-08-02T08:23:55Z",
            "eventName":"GetCallerIdentity","eventSource":"sts.amazonaws.com","sourceIPAddress":"1.2.3.4",
            "someFutureField":{"a":[1,2,3]},
            "userIdentity":{"type":"AssumedRole","accessKeyId":"ASIAX","sessionContext":{
              "attributes":{"creationDate":"2024-08-02T08:20:52Z","mfaAuthenticated":"false"},
              "ec2RoleDelivery":"2.0"}},
            "requestParameters":{"instanceId":"i-1"}}"#;
        let ev = CloudTrailEvent::parse(json).unwrap();
        assert_eq!(ev.event_id(), "e1");
        assert_eq!(ev.access_key_id(), Some("ASIAX"));
        assert_eq!(ev.creation_date(), Some("2024-08-02T08:20:52Z"));
        assert_eq!(ev.time_secs().unwrap(), 1722587035);
        assert!(matches!(ev.event_id, Some(Cow::Borrowed(_))));
        assert!(ev.succeeded());
    }

    #[test]
    fn a_field_of_the_wrong_type_is_a_bad_field_not_bad_json() {
        let err = CloudTrailEvent::parse(
            r#"{"eventName":"X","eventTime":"2024-01-01T00:00:00Z","userAgent":5}"#,
        )
        .unwrap_err();
        assert_eq!(err.kind(), "bad_field");
    }

    #[test]
    fn escaped_strings_are_owned_and_unescaped() {
        let ev = CloudTrailEvent::parse(
            r#"{"eventName":"X","eventTime":"2024-01-01T00:00:00Z","userAgent":"a\"b"}"#,
        )
        .unwrap();
        assert_eq!(ev.user_agent(), "a\"b");
        assert!(matches!(ev.user_agent, Some(Cow::Owned(_))));
    }

    proptest::proptest! {
        /// The fast reading of CloudTrail's time form agrees with chrono on every second of
        /// 1970-2200, and leaves what it does not read to chrono.
        #[test]
        fn the_fast_time_form_agrees_with_chrono(secs in 0i64..7_258_118_400) {
            let text = format_time(secs);
            proptest::prop_assert_eq!(parse_time_z(text.as_bytes()), Some(secs));
            proptest::prop_assert_eq!(parse_time(&text), Some(secs));
        }
    }

    #[test]
    fn times_outside_the_fast_form_go_to_chrono_or_fail() {
        assert_eq!(parse_time("2024-08-02T08:23:24.5Z"), Some(1722587004));
        assert_eq!(parse_time("2024-08-02T10:23:24+02:00"), Some(1722587004));
        for bad in [
            "2024-02-30T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-08-02T24:00:00Z",
            "+024-08-02T08:23:24Z",
        ] {
            assert_eq!(parse_time_z(bad.as_bytes()), None, "{bad}");
            assert_eq!(parse_time(bad), None, "{bad}");
        }
        assert_eq!(parse_time("2024-02-29T00:00:00Z"), Some(1709164800));
        // RFC 3339 allows a space for the T: chrono reads it.
        assert_eq!(parse_time_z(b"2024-08-02 08:23:24Z"), None);
        assert_eq!(parse_time("2024-08-02 08:23:24Z"), Some(1722587004));
    }

    #[test]
    fn missing_event_time_is_a_missing_field() {
        let err = CloudTrailEvent::parse(r#"{"eventName":"X"}"#).unwrap_err();
        assert_eq!(err.kind(), "missing_field");
    }

    #[test]
    fn console_flag_accepts_string_and_bool() {
        for v in [r#""true""#, "true"] {
            let json = format!(
                r#"{{"eventTime":"2024-01-01T00:00:00Z","eventName":"X","sessionCredentialFromConsole":{v}}}"#
            );
            assert!(
                CloudTrailEvent::parse(&json)
                    .unwrap()
                    .session_credential_from_console
            );
        }
    }
}
