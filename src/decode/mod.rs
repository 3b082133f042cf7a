//! Decoders: untrusted bytes in, CloudTrail event JSON texts out.
//!
//! - [`cloudwatch_envelope`]: a Kinesis record written by a CloudWatch Logs subscription filter
//!   (gzip'd JSON envelope whose `logEvents[].message` are CloudTrail events).
//! - [`cloudtrail_file`]: a historical file (CloudTrail S3 object, JSON array, JSON lines,
//!   EventBridge events, a single event or stored envelopes), gzip'd or not.
//! - [`gzip`]: the size-capped gunzip both use.
//! - [`scan`]: reads an event's fields straight from an envelope's escaped `message`, for
//!   [`cloudwatch_envelope::decode_record_read`] (the consumer's path).
//!
//! Decoders do not parse the events themselves (but for [`scan`]): they hand each event's JSON text to the caller as a
//! [`RawEvent`] (borrowed from the decoded buffer where possible) and each set-aside record or event
//! to the caller as a [`BadRecord`]. Limits on untrusted input are in [`Limits`].

use std::borrow::Cow;

pub mod cloudtrail_file;
pub mod cloudwatch_envelope;
pub mod errors;
pub mod gzip;
pub(crate) mod scan;

pub use errors::{BadKind, BadRecord};

/// Limits on untrusted input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest decompressed size of one gzip input (a Kinesis record or a file); larger is a
    /// [`BadKind::GzipBomb`].
    pub max_decompressed_bytes: usize,
    /// Largest single event's JSON text; larger is set aside as [`BadKind::Oversize`].
    pub max_event_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_decompressed_bytes: 64 << 20,
            max_event_bytes: 1 << 20,
        }
    }
}

impl From<&crate::config::InputConfig> for Limits {
    fn from(input: &crate::config::InputConfig) -> Self {
        Limits {
            max_decompressed_bytes: input.max_decompressed_bytes,
            max_event_bytes: input.max_event_bytes,
        }
    }
}

/// One CloudTrail event's JSON text, borrowed from the decoded buffer where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent<'a> {
    pub json: Cow<'a, str>,
    /// 0-based index of the event within its file or record (set-aside events count too, so the
    /// indices of the events that come out can have gaps).
    pub index: usize,
}

/// The first byte that is not JSON whitespace, if any.
fn first_non_ws(bytes: &[u8]) -> Option<u8> {
    bytes
        .iter()
        .copied()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// Whether `text` starts (after JSON whitespace) like a JSON object.
fn looks_like_object(text: &str) -> bool {
    first_non_ws(text.as_bytes()) == Some(b'{')
}

/// The kind of JSON value `raw` (a validated JSON text) is, for messages.
fn json_type_name(raw: &str) -> &'static str {
    match first_non_ws(raw.as_bytes()) {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        Some(_) => "a number",
        None => "empty",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limits_are_64_mib_decompressed_and_1_mib_per_event() {
        let limits = Limits::default();
        assert_eq!(limits.max_decompressed_bytes, 64 * 1024 * 1024);
        assert_eq!(limits.max_event_bytes, 1024 * 1024);
    }

    #[test]
    fn limits_come_from_the_input_config() {
        let config = crate::config::InputConfig::default();
        let limits = Limits::from(&config);
        assert_eq!(limits.max_decompressed_bytes, config.max_decompressed_bytes);
        assert_eq!(limits.max_event_bytes, config.max_event_bytes);
    }

    #[test]
    fn json_values_are_named_by_their_first_byte() {
        for (raw, name) in [
            ("{}", "an object"),
            ("  [1]", "an array"),
            ("\"x\"", "a string"),
            ("true", "a boolean"),
            ("null", "null"),
            ("-1.5", "a number"),
            ("", "empty"),
        ] {
            assert_eq!(json_type_name(raw), name, "{raw:?}");
        }
    }
}
