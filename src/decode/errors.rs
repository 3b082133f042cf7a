//! Why a record, a file or one event was set aside.
//!
//! Every decoder failure is a [`BadRecord`]: counted (by [`BadKind`]), logged and written to the
//! dead-letter file as one JSON line. Nothing that fails to decode is dropped silently and nothing
//! panics.

use std::fmt;

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

/// Longest `detail` kept, in characters: enough for a parser message, never the whole payload.
pub const MAX_DETAIL_CHARS: usize = 200;

/// What was wrong with the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BadKind {
    /// Gzip was required (a Kinesis record from CloudWatch Logs) but the magic bytes `1f 8b` are missing.
    NotGzip,
    /// Gzip data that is cut short or corrupt (bad deflate data, CRC or ISIZE, trailing garbage).
    TruncatedGzip,
    /// Gzip data that decompresses to more than `max_decompressed_bytes`.
    GzipBomb,
    /// One event larger than `max_event_bytes`.
    Oversize,
    /// Not syntactically valid JSON.
    NotJson,
    /// A CloudWatch Logs envelope whose `messageType` is neither `DATA_MESSAGE` nor `CONTROL_MESSAGE`.
    UnknownMessageType,
    /// Valid JSON that is not a well-formed CloudWatch Logs subscription envelope.
    BadEnvelope,
    /// A file whose bytes are none of the formats credwatch reads (or an empty file).
    UnknownFormat,
    /// A required field is absent (an EventBridge event without `detail`, a log event without `message`).
    MissingField,
    /// A field of the wrong type (an array element that is not an object, `Records` that is not an array).
    BadField,
    /// Reading the input failed.
    Io,
    /// An event whose `eventTime` is ahead of this host's clock by more than
    /// `detection.max_clock_skew_secs`: CloudTrail cannot have written it yet, and judged, it
    /// would move the event-time watermark (and every window) into the future.
    TimeAhead,
}

impl BadKind {
    /// Every kind, for pre-registering metric labels.
    pub const ALL: [BadKind; 12] = [
        BadKind::NotGzip,
        BadKind::TruncatedGzip,
        BadKind::GzipBomb,
        BadKind::Oversize,
        BadKind::NotJson,
        BadKind::UnknownMessageType,
        BadKind::BadEnvelope,
        BadKind::UnknownFormat,
        BadKind::MissingField,
        BadKind::BadField,
        BadKind::Io,
        BadKind::TimeAhead,
    ];

    /// The snake_case name used in metrics labels and the dead-letter file.
    pub fn as_str(self) -> &'static str {
        match self {
            BadKind::NotGzip => "not_gzip",
            BadKind::TruncatedGzip => "truncated_gzip",
            BadKind::GzipBomb => "gzip_bomb",
            BadKind::Oversize => "oversize",
            BadKind::NotJson => "not_json",
            BadKind::UnknownMessageType => "unknown_message_type",
            BadKind::BadEnvelope => "bad_envelope",
            BadKind::UnknownFormat => "unknown_format",
            BadKind::MissingField => "missing_field",
            BadKind::BadField => "bad_field",
            BadKind::Io => "io",
            BadKind::TimeAhead => "time_ahead",
        }
    }
}

impl fmt::Display for BadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for BadKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A record or event set aside: counted, logged, never a panic, never a silent drop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?} at {position}: {detail}")]
pub struct BadRecord {
    pub kind: BadKind,
    /// e.g. "path/file.json.gz#event 12" or "shardId-000000000001@4959...#3" — set by the
    /// caller-supplied position prefix.
    pub position: String,
    /// Short (at most [`MAX_DETAIL_CHARS`] characters), never the whole payload.
    pub detail: String,
}

impl BadRecord {
    /// Builds a record, shortening `detail` to [`MAX_DETAIL_CHARS`] characters.
    pub fn new(kind: BadKind, position: impl Into<String>, detail: impl AsRef<str>) -> BadRecord {
        BadRecord {
            kind,
            position: position.into(),
            detail: shorten(detail.as_ref()),
        }
    }
}

impl Serialize for BadRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("BadRecord", 3)?;
        s.serialize_field("kind", self.kind.as_str())?;
        s.serialize_field("position", &self.position)?;
        s.serialize_field("detail", &self.detail)?;
        s.end()
    }
}

/// `text` cut to at most [`MAX_DETAIL_CHARS`] characters (on a character boundary), marked with `…`.
pub(crate) fn shorten(text: &str) -> String {
    match text.char_indices().nth(MAX_DETAIL_CHARS) {
        None => text.to_owned(),
        Some((cut, _)) => {
            let mut short = String::with_capacity(cut + 3);
            short.push_str(&text[..cut]);
            short.push('…');
            short
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_distinct_snake_case_name() {
        let names: std::collections::BTreeSet<&str> =
            BadKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), BadKind::ALL.len());
        for name in names {
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
    }

    #[test]
    fn a_bad_record_serialises_its_kind_as_a_string() {
        let bad = BadRecord::new(BadKind::GzipBomb, "shard-1@42", "over 64 MiB");
        let json = serde_json::to_string(&bad).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"gzip_bomb","position":"shard-1@42","detail":"over 64 MiB"}"#
        );
        assert_eq!(bad.to_string(), "GzipBomb at shard-1@42: over 64 MiB");
    }

    #[test]
    fn a_long_detail_is_shortened_on_a_character_boundary() {
        let long = "é".repeat(1000);
        let bad = BadRecord::new(BadKind::NotJson, "f", &long);
        assert_eq!(bad.detail.chars().count(), MAX_DETAIL_CHARS + 1);
        assert!(bad.detail.ends_with('…'));
        assert_eq!(shorten("short"), "short");
    }
}
