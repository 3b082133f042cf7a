//! Historical CloudTrail files, for `credwatch hunt`: whatever shape the events were saved in.
//!
//! Formats recognised (gzip'd or not, decided by the magic bytes, not the name):
//! - CloudTrail S3 log objects, `{"Records":[event, ...]}`:
//!   <https://docs.aws.amazon.com/awscloudtrail/latest/userguide/cloudtrail-log-file-examples.html>
//! - a JSON array of events (`aws cloudtrail lookup-events` output saved by tools, Stratus Red Team
//!   detonation logs);
//! - EventBridge events, `{"detail-type":"AWS API Call via CloudTrail","detail":{event}}`, one, an
//!   array of them or JSON lines of them:
//!   <https://docs.aws.amazon.com/awscloudtrail/latest/userguide/cloudtrail-aws-service-specific-topics.html#cloudtrail-aws-service-specific-topics-eventbridge>
//! - JSON lines, one event per line (each line may also be an EventBridge event or an envelope);
//! - a single bare event object;
//! - CloudWatch Logs subscription envelopes (see [`super::cloudwatch_envelope`]) saved as files.
//!
//! Events inside arrays, `Records` and `detail` are borrowed `&RawValue` slices of the decoded
//! bytes: no re-serialisation, no `serde_json::Value`. A CloudTrail S3 object is read in one
//! pass instead ([`records_one_pass`]): each element of `Records` goes straight into a
//! [`CloudTrailEvent`] with its text, and [`decode_file_parsed`] hands both out, so that the
//! engine does not parse the event a second time. Anything unusual in the file (an element of
//! another type, a field of the wrong type, bad JSON) falls back to the general path, which
//! gives the same events and set-aside records as before.

use std::borrow::Cow;

use serde::de::{Deserializer, IgnoredAny};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::cloudwatch_envelope::{decode_envelope_in, EventBuf};
use super::{first_non_ws, gzip, json_type_name, looks_like_object};
use super::{BadKind, BadRecord, Limits, RawEvent};
use crate::event::CloudTrailEvent;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The shape a file's events were stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileFormat {
    /// `{"Records":[...]}`, as CloudTrail writes to S3.
    CloudTrailS3Object,
    /// `[event, event]`.
    JsonArray,
    /// `{"detail-type":"AWS API Call via CloudTrail", "detail": {event}}`: a single one, an array
    /// of them, or JSON lines of them.
    EventBridge,
    /// One bare event per line.
    JsonLines,
    /// One bare event object.
    SingleEvent,
    /// A CloudWatch Logs subscription envelope (or JSON lines of envelopes, or a gzip'd one).
    CloudWatchEnvelope,
}

impl FileFormat {
    /// snake_case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FileFormat::CloudTrailS3Object => "cloudtrail_s3_object",
            FileFormat::JsonArray => "json_array",
            FileFormat::EventBridge => "eventbridge",
            FileFormat::JsonLines => "json_lines",
            FileFormat::SingleEvent => "single_event",
            FileFormat::CloudWatchEnvelope => "cloudwatch_envelope",
        }
    }
}

/// Recognises the format of a whole file's bytes (gzip'd or not — decided by magic bytes, not
/// name; a UTF-8 BOM is skipped) and calls `on_event` for each event, `on_bad` for each
/// set-aside record.
///
/// `RawEvent::index` is the event's 0-based position in the file, counting set-aside events and
/// lines. Set-aside positions are `"{position}#{i}"` (the i-th element of the array, `Records`
/// or `logEvents`), `"{position}:line {n}"` (1-based line of a JSON lines file) or
/// `"{position}:line {n}#{i}"`.
///
/// Returns the format, or `Err(BadRecord)` when the file as a whole cannot be used: bad gzip,
/// gzip bomb, not JSON at all, [`BadKind::UnknownFormat`] (an empty file, JSON of no known
/// shape), `Records` that is not an array, or a one-record file whose record fails (a single
/// event over `max_event_bytes`, an EventBridge event without `detail`, an envelope that fails
/// as a whole).
///
/// JSON lines: a bad line is one `BadRecord` (`NotJson`, …) and the rest of the file still
/// decodes. An element of an array or `Records` that is not a JSON object is a `BadField`, and
/// decoding continues.
pub fn decode_file(
    bytes: &[u8],
    limits: &Limits,
    position: &str,
    mut on_event: impl FnMut(RawEvent<'_>),
    on_bad: impl FnMut(BadRecord),
) -> Result<FileFormat, BadRecord> {
    decode_file_parsed(bytes, limits, position, |raw, _| on_event(raw), on_bad)
}

/// [`decode_file`], also handing out the event already parsed where the file was read in one
/// pass (CloudTrail S3 objects): `Some(event)` is what [`CloudTrailEvent::parse`] gives for
/// `raw.json`, so the caller need not parse it again. The events, their indices and the
/// set-aside records are the same as [`decode_file`]'s.
pub fn decode_file_parsed(
    bytes: &[u8],
    limits: &Limits,
    position: &str,
    mut on_event: impl FnMut(RawEvent<'_>, Option<&CloudTrailEvent<'_>>),
    mut on_bad: impl FnMut(BadRecord),
) -> Result<FileFormat, BadRecord> {
    let gunzipped;
    let mut text = bytes;
    if gzip::is_gzip(bytes) {
        gunzipped = gzip::gunzip_capped(bytes, limits.max_decompressed_bytes)
            .map_err(|(kind, detail)| BadRecord::new(kind, position, detail))?;
        text = &gunzipped;
    }
    let text = trim(text.strip_prefix(UTF8_BOM).unwrap_or(text));
    if text.is_empty() {
        return Err(BadRecord::new(
            BadKind::UnknownFormat,
            position,
            "empty file",
        ));
    }
    let mut sink = Sink {
        limits,
        on_event: &mut on_event,
        on_bad: &mut on_bad,
        next_index: 0,
        envelope: EventBuf::default(),
    };
    if let Some(records) = records_one_pass(text) {
        for (i, (json, ev)) in records.iter().enumerate() {
            sink.element(json, position, i, Some(ev));
        }
        return Ok(FileFormat::CloudTrailS3Object);
    }
    let doc_error = match parse_document(text) {
        Ok(doc) => return sink.emit_document(doc, text, position),
        Err(e) => e,
    };
    if lines(text).nth(1).is_some() {
        sink.decode_lines(text, position, doc_error)
    } else {
        Err(doc_error.at(position))
    }
}

/// A parsed, classified document (a whole file, or one line of a JSON lines file).
enum Doc<'a> {
    Records(Vec<&'a RawValue>),
    Array(Vec<&'a RawValue>),
    EventBridgeArray(Vec<&'a RawValue>),
    /// An EventBridge event and its `detail`, if present.
    EventBridge(Option<&'a RawValue>),
    Envelope,
    Single(&'a str),
}

impl Doc<'_> {
    fn format(&self) -> FileFormat {
        match self {
            Doc::Records(_) => FileFormat::CloudTrailS3Object,
            Doc::Array(_) => FileFormat::JsonArray,
            Doc::EventBridgeArray(_) | Doc::EventBridge(_) => FileFormat::EventBridge,
            Doc::Envelope => FileFormat::CloudWatchEnvelope,
            Doc::Single(_) => FileFormat::SingleEvent,
        }
    }
}

/// Why a document could not be classified.
enum DocError {
    /// Not JSON (or more than one JSON value).
    Syntax(serde_json::Error),
    /// JSON, but not usable as a whole.
    Bad(BadKind, String),
}

impl DocError {
    fn kind(&self) -> BadKind {
        match self {
            DocError::Syntax(_) => BadKind::NotJson,
            DocError::Bad(kind, _) => *kind,
        }
    }

    fn at(self, position: &str) -> BadRecord {
        match self {
            DocError::Syntax(e) => BadRecord::new(BadKind::NotJson, position, e.to_string()),
            DocError::Bad(kind, detail) => BadRecord::new(kind, position, detail),
        }
    }
}

/// The top-level keys that tell the formats apart. Values are skipped except `Records` (borrowed
/// event slices) and `detail`.
#[derive(Deserialize)]
struct TopLevel<'a> {
    #[serde(rename = "Records", borrow, default, deserialize_with = "raw_array")]
    records: Option<Vec<&'a RawValue>>,
    #[serde(rename = "detail-type", default, deserialize_with = "present")]
    detail_type: bool,
    #[serde(borrow, default, deserialize_with = "raw_value")]
    detail: Option<&'a RawValue>,
    #[serde(rename = "messageType", default, deserialize_with = "present")]
    message_type: bool,
    #[serde(rename = "logEvents", default, deserialize_with = "present")]
    log_events: bool,
    #[serde(rename = "eventTime", default, deserialize_with = "present")]
    event_time: bool,
    #[serde(rename = "eventName", default, deserialize_with = "present")]
    event_name: bool,
}

/// An element of an EventBridge array.
#[derive(Deserialize)]
struct EventBridgeEvent<'a> {
    #[serde(rename = "detail-type", default, deserialize_with = "present")]
    detail_type: bool,
    #[serde(borrow, default, deserialize_with = "raw_value")]
    detail: Option<&'a RawValue>,
}

/// The key is present, whatever its value (`null` included).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(deserializer).map(|_| true)
}

/// The raw value when the key is present (`null` included).
fn raw_value<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(deserializer).map(Some)
}

/// An array of raw values when the key is present (anything else is an error).
fn raw_array<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<&'de RawValue>>, D::Error> {
    Vec::<&'de RawValue>::deserialize(deserializer).map(Some)
}

/// Parses one JSON document and tells its format.
fn parse_document(doc: &[u8]) -> Result<Doc<'_>, DocError> {
    let json_error = |e: serde_json::Error| match e.classify() {
        serde_json::error::Category::Data => DocError::Bad(BadKind::BadField, e.to_string()),
        _ => DocError::Syntax(e),
    };
    match first_non_ws(doc) {
        Some(b'[') => {
            let elements: Vec<&RawValue> = serde_json::from_slice(doc).map_err(json_error)?;
            let first_object = elements.iter().find(|raw| looks_like_object(raw.get()));
            let is_eventbridge = first_object.is_some_and(|raw| {
                serde_json::from_str::<EventBridgeEvent>(raw.get())
                    .is_ok_and(|ev| ev.detail_type || ev.detail.is_some())
            });
            Ok(if is_eventbridge {
                Doc::EventBridgeArray(elements)
            } else {
                Doc::Array(elements)
            })
        }
        Some(b'{') => {
            let top: TopLevel = serde_json::from_slice(doc).map_err(json_error)?;
            if let Some(records) = top.records {
                Ok(Doc::Records(records))
            } else if top.message_type || top.log_events {
                Ok(Doc::Envelope)
            } else if top.detail_type || top.detail.is_some() {
                Ok(Doc::EventBridge(top.detail))
            } else if top.event_time || top.event_name {
                let text = std::str::from_utf8(trim(doc))
                    .map_err(|e| DocError::Bad(BadKind::NotJson, format!("not UTF-8: {e}")))?;
                Ok(Doc::Single(text))
            } else {
                Err(DocError::Bad(
                    BadKind::UnknownFormat,
                    "a JSON object without Records, detail, messageType, logEvents, eventTime or eventName".to_owned(),
                ))
            }
        }
        _ => {
            serde_json::from_slice::<IgnoredAny>(doc).map_err(json_error)?;
            let name = std::str::from_utf8(doc).map_or("JSON", json_type_name);
            Err(DocError::Bad(
                BadKind::UnknownFormat,
                format!("{name}, not CloudTrail events"),
            ))
        }
    }
}

/// Where events and set-aside records go, and the running event index.
struct Sink<'s, E, B> {
    limits: &'s Limits,
    on_event: &'s mut E,
    on_bad: &'s mut B,
    next_index: usize,
    envelope: EventBuf,
}

impl<E: FnMut(RawEvent<'_>, Option<&CloudTrailEvent<'_>>), B: FnMut(BadRecord)> Sink<'_, E, B> {
    /// Emits a parsed document's events; `Err` when the document fails as a whole.
    fn emit_document(
        &mut self,
        doc: Doc<'_>,
        text: &[u8],
        position: &str,
    ) -> Result<FileFormat, BadRecord> {
        let format = doc.format();
        match doc {
            Doc::Records(elements) | Doc::Array(elements) => {
                for (i, raw) in elements.into_iter().enumerate() {
                    self.element(raw.get(), position, i, None);
                }
            }
            Doc::EventBridgeArray(elements) => {
                for (i, raw) in elements.into_iter().enumerate() {
                    match eventbridge_detail(raw.get()) {
                        Ok(detail) => self.element(detail, position, i, None),
                        Err((kind, detail)) => self.set_aside(kind, position, i, detail),
                    }
                }
            }
            Doc::EventBridge(detail) => {
                let detail = match detail {
                    None => {
                        return Err(BadRecord::new(
                            BadKind::MissingField,
                            position,
                            "EventBridge event without field `detail`",
                        ))
                    }
                    Some(raw) if !looks_like_object(raw.get()) => {
                        return Err(BadRecord::new(
                            BadKind::BadField,
                            position,
                            format!(
                                "EventBridge `detail` is {}, not an object",
                                json_type_name(raw.get())
                            ),
                        ))
                    }
                    Some(raw) => raw.get(),
                };
                self.whole(detail, position)?;
            }
            Doc::Single(event) => self.whole(event, position)?,
            Doc::Envelope => {
                let (_, used) = decode_envelope_in(
                    text,
                    self.limits,
                    position,
                    self.next_index,
                    &mut self.envelope,
                    &mut |raw| (self.on_event)(raw, None),
                    &mut *self.on_bad,
                )?;
                self.next_index += used;
            }
        }
        Ok(format)
    }

    /// One element of an array, `Records` or an EventBridge array: an event or a set-aside record.
    /// `parsed`: the element already deserialized (a file read in one pass).
    fn element(
        &mut self,
        json: &str,
        position: &str,
        i: usize,
        parsed: Option<&CloudTrailEvent<'_>>,
    ) {
        if !looks_like_object(json) {
            let found = json_type_name(json);
            self.set_aside(
                BadKind::BadField,
                position,
                i,
                format!("element is {found}, not an object"),
            );
        } else if json.len() > self.limits.max_event_bytes {
            let detail = self.oversize(json);
            self.set_aside(BadKind::Oversize, position, i, detail);
        } else {
            let index = self.next_index;
            self.next_index += 1;
            (self.on_event)(
                RawEvent {
                    json: Cow::Borrowed(json),
                    index,
                },
                parsed,
            );
        }
    }

    /// The one event of a single-event document; `Err` if it is over the limit.
    fn whole(&mut self, json: &str, position: &str) -> Result<(), BadRecord> {
        if json.len() > self.limits.max_event_bytes {
            return Err(BadRecord::new(
                BadKind::Oversize,
                position,
                self.oversize(json),
            ));
        }
        let index = self.next_index;
        self.next_index += 1;
        (self.on_event)(
            RawEvent {
                json: Cow::Borrowed(json),
                index,
            },
            None,
        );
        Ok(())
    }

    fn oversize(&self, json: &str) -> String {
        format!(
            "event of {} bytes is over max_event_bytes ({})",
            json.len(),
            self.limits.max_event_bytes
        )
    }

    fn set_aside(&mut self, kind: BadKind, position: &str, i: usize, detail: String) {
        self.next_index += 1;
        (self.on_bad)(BadRecord::new(kind, format!("{position}#{i}"), detail));
    }

    /// A file of several lines that is not one JSON document: JSON lines, each line classified on
    /// its own. If no line is usable the file is not JSON lines either and `doc_error` (why it is
    /// not one document) is the answer.
    fn decode_lines(
        &mut self,
        text: &[u8],
        position: &str,
        doc_error: DocError,
    ) -> Result<FileFormat, BadRecord> {
        let mut first_failure: Option<(usize, DocError)> = None;
        let format = lines(text).find_map(|(n, line)| match parse_document(line) {
            Ok(doc) => Some(doc.format()),
            Err(e) => {
                first_failure.get_or_insert((n, e));
                None
            }
        });
        let Some(format) = format else {
            // Lines that are JSON of an unknown shape say more than "trailing characters".
            return Err(match (doc_error, first_failure) {
                (DocError::Syntax(_), Some((n, line_error)))
                    if line_error.kind() != BadKind::NotJson =>
                {
                    let bad = line_error.at(position);
                    BadRecord::new(bad.kind, position, format!("line {n}: {}", bad.detail))
                }
                (doc_error, _) => doc_error.at(position),
            });
        };
        for (n, line) in lines(text) {
            let line_position = format!("{position}:line {n}");
            let result = match parse_document(line) {
                Ok(doc) => self.emit_document(doc, line, &line_position),
                Err(e) => Err(e.at(&line_position)),
            };
            if let Err(bad) = result {
                self.next_index += 1;
                (self.on_bad)(bad);
            }
        }
        Ok(match format {
            FileFormat::SingleEvent => FileFormat::JsonLines,
            other => other,
        })
    }
}

/// A CloudTrail S3 object, `{"Records":[event, ...]}` and nothing else, read in one pass: each
/// element deserialized into a [`CloudTrailEvent`] (serde_json's stream deserializer gives where
/// it ends, so its text comes too). `None` when the file is anything else or anything in it is
/// unusual (not UTF-8, an element that is not an object or has a field of the wrong type, bad
/// JSON): the general path then reads it and says what is wrong, element by element. Nothing is
/// handed out before the whole file has been read, so a file that fails as a whole gives no
/// event on either path.
fn records_one_pass(text: &[u8]) -> Option<Vec<(&str, CloudTrailEvent<'_>)>> {
    fn ws(s: &str) -> &str {
        s.trim_start_matches([' ', '\n', '\r', '\t'])
    }
    let text = std::str::from_utf8(text).ok()?;
    let mut rest = ws(text).strip_prefix('{')?;
    rest = ws(rest).strip_prefix("\"Records\"")?;
    rest = ws(rest).strip_prefix(':')?;
    rest = ws(ws(rest).strip_prefix('[')?);
    // CloudTrail's events are a kilobyte or more each: room for all of them, moved once.
    let mut out = Vec::with_capacity(rest.len() / 1024 + 1);
    if let Some(after) = rest.strip_prefix(']') {
        rest = after;
    } else {
        loop {
            rest = ws(rest);
            if !rest.starts_with('{') {
                return None;
            }
            let mut stream =
                serde_json::Deserializer::from_str(rest).into_iter::<CloudTrailEvent<'_>>();
            let ev = stream.next()?.ok()?;
            let (json, after) = rest.split_at(stream.byte_offset());
            out.push((json, ev));
            let after = ws(after);
            if let Some(next) = after.strip_prefix(',') {
                rest = next;
            } else {
                rest = after.strip_prefix(']')?;
                break;
            }
        }
    }
    ws(ws(rest).strip_prefix('}')?).is_empty().then_some(out)
}

/// The `detail` of one element of an EventBridge array.
fn eventbridge_detail(element: &str) -> Result<&str, (BadKind, String)> {
    if !looks_like_object(element) {
        return Err((
            BadKind::BadField,
            format!("element is {}, not an object", json_type_name(element)),
        ));
    }
    let event: EventBridgeEvent =
        serde_json::from_str(element).map_err(|e| (BadKind::BadField, e.to_string()))?;
    match event.detail {
        None => Err((
            BadKind::MissingField,
            "EventBridge event without field `detail`".to_owned(),
        )),
        Some(detail) if !looks_like_object(detail.get()) => Err((
            BadKind::BadField,
            format!(
                "EventBridge `detail` is {}, not an object",
                json_type_name(detail.get())
            ),
        )),
        Some(detail) => Ok(detail.get()),
    }
}

/// Non-blank lines, trimmed, with their 1-based line numbers.
fn lines(text: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    text.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, line)| (i + 1, trim(line)))
        .filter(|(_, line)| !line.is_empty())
}

/// `bytes` without leading and trailing JSON whitespace.
fn trim(bytes: &[u8]) -> &[u8] {
    let is_ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let start = bytes.iter().position(|b| !is_ws(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ws(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;

    use super::super::cloudwatch_envelope::encode_envelope;
    use super::*;

    const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data");
    const MAHERIBRA_DIR: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/maheribra-attack-chain-lab/04-investigation/evidence/cloudtrail/eu-west-1/2026/07/28"
    );
    const STRATUS_DIR: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/stratus-detonation-logs/docs/detonation-logs"
    );

    const EVENT: &str = r#"{"eventVersion":"1.08","eventTime":"2024-07-31T13:06:24Z","eventSource":"sts.amazonaws.com","eventName":"GetCallerIdentity","sourceIPAddress":"203.0.113.7"}"#;
    const EVENT2: &str =
        r#"{"eventTime":"2024-07-31T13:07:00Z","eventName":"ListBuckets","userAgent":"é \"q\""}"#;

    #[derive(Debug, Default)]
    struct Out {
        events: Vec<(usize, String)>,
        bad: Vec<BadRecord>,
    }

    impl Out {
        fn jsons(&self) -> Vec<&str> {
            self.events.iter().map(|(_, j)| j.as_str()).collect()
        }
        fn indices(&self) -> Vec<usize> {
            self.events.iter().map(|(i, _)| *i).collect()
        }
        fn bad_positions(&self) -> Vec<(BadKind, &str)> {
            self.bad
                .iter()
                .map(|b| (b.kind, b.position.as_str()))
                .collect()
        }
    }

    fn decode_with(bytes: &[u8], limits: &Limits) -> (Result<FileFormat, BadRecord>, Out) {
        let mut events = Vec::new();
        let mut bad = Vec::new();
        let result = decode_file(
            bytes,
            limits,
            "f.json",
            |ev| events.push((ev.index, ev.json.into_owned())),
            |b| bad.push(b),
        );
        (result, Out { events, bad })
    }

    fn decode(bytes: &[u8]) -> (Result<FileFormat, BadRecord>, Out) {
        decode_with(bytes, &Limits::default())
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    /// The one-pass reading of `{"Records":[...]}` hands out what a second parse of each
    /// event's text gives, on every file of the shared recordings, and the same events as the
    /// general path; unusual files fall back to it.
    #[test]
    fn records_read_in_one_pass_equal_a_parse_of_each_event() {
        let mut one_pass = 0;
        for entry in walkdir::WalkDir::new(DATA).sort_by_file_name() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().to_string();
            if !entry.file_type().is_file() || !(name.ends_with(".json") || name.ends_with(".gz")) {
                continue;
            }
            let bytes = std::fs::read(entry.path()).unwrap();
            let mut seen = Vec::new();
            let mut parsed_here = 0;
            let _ = decode_file_parsed(
                &bytes,
                &Limits::default(),
                "f",
                |raw, parsed| {
                    if let Some(ev) = parsed {
                        parsed_here += 1;
                        let again = CloudTrailEvent::parse(&raw.json).expect("it parsed once");
                        assert_eq!(format!("{ev:?}"), format!("{again:?}"), "{name}");
                    }
                    seen.push((raw.index, raw.json.into_owned()));
                },
                |_| {},
            );
            let text = if gzip::is_gzip(&bytes) {
                gzip::gunzip_capped(&bytes, 1 << 30).unwrap()
            } else {
                bytes.clone()
            };
            if let Ok(Doc::Records(elements)) = parse_document(trim(&text)) {
                let general: Vec<(usize, String)> = elements
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (i, r.get().to_string()))
                    .collect();
                assert_eq!(seen, general, "{name}");
                // CloudTrail's own files are read in one pass, every event.
                assert_eq!(parsed_here, general.len(), "{name}");
            }
            one_pass += parsed_here;
        }
        assert!(
            one_pass >= 690,
            "only {one_pass} events were read in one pass"
        );
    }

    #[test]
    fn unusual_records_files_fall_back_to_the_general_path() {
        let ev = |extra: &str| {
            format!(r#"{{"eventTime":"2024-01-01T00:00:00Z","eventName":"X"{extra}}}"#)
        };
        for (doc, want_one_pass) in [
            (format!(r#"{{"Records":[{}, {}]}}"#, ev(""), ev("")), true),
            (r#" { "Records" : [ ] } "#.to_string(), true),
            (format!(r#"{{"Records":[{}, []]}}"#, ev("")), false),
            (
                format!(r#"{{"Records":[{}]}}"#, ev(r#","userAgent":5"#)),
                false,
            ),
            (format!(r#"{{"Records":[{}], "x":1}}"#, ev("")), false),
            (format!(r#"{{"Records":[{}] "#, ev("")), false),
        ] {
            assert_eq!(
                records_one_pass(doc.as_bytes()).is_some(),
                want_one_pass,
                "{doc}"
            );
        }
        // Through the general path, the element of the wrong type is set aside, the other event
        // comes out; and the event with a field of the wrong type comes out for the engine to
        // set aside.
        let (r, out) = decode(format!(r#"{{"Records":[{}, []]}}"#, ev("")).as_bytes());
        assert_eq!(r.unwrap(), FileFormat::CloudTrailS3Object);
        assert_eq!(out.indices(), vec![0]);
        assert_eq!(out.bad_positions(), vec![(BadKind::BadField, "f.json#1")]);
        let (_, out) = decode(format!(r#"{{"Records":[{}]}}"#, ev(r#","userAgent":5"#)).as_bytes());
        assert_eq!(out.events.len(), 1);
    }

    /// Oversize events in a file read in one pass are set aside at their index, as before.
    #[test]
    fn oversize_events_read_in_one_pass_are_set_aside() {
        let small = r#"{"eventTime":"2024-01-01T00:00:00Z","eventName":"X"}"#;
        let big = format!(
            r#"{{"eventTime":"2024-01-01T00:00:00Z","eventName":"{}"}}"#,
            "y".repeat(500)
        );
        let doc = format!(r#"{{"Records":[{small},{big},{small}]}}"#);
        assert!(records_one_pass(doc.as_bytes()).is_some());
        let limits = Limits {
            max_event_bytes: 200,
            ..Limits::default()
        };
        let (r, out) = decode_with(doc.as_bytes(), &limits);
        assert_eq!(r.unwrap(), FileFormat::CloudTrailS3Object);
        assert_eq!(out.indices(), vec![0, 2]);
        assert_eq!(out.bad_positions(), vec![(BadKind::Oversize, "f.json#1")]);
    }

    fn eventbridge(detail: &str) -> String {
        format!(
            r#"{{"version":"0","id":"6f87d04b-9f74-4f04-a780-7acf4b0a9b38","detail-type":"AWS API Call via CloudTrail","source":"aws.sts","account":"123456789012","time":"2024-07-31T13:06:24Z","region":"us-east-1","resources":[],"detail":{detail}}}"#
        )
    }

    fn sorted_files(dir: &str, suffix: &str) -> Vec<std::path::PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|entry| entry.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(suffix))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn maheribra_s3_objects_are_cloudtrail_s3_objects_with_their_event_counts() {
        for (name, count) in [
            (
                "275023965626_CloudTrail_eu-west-1_20260728T0930Z_HP8Blsp2MyJCExdu.json.gz",
                133,
            ),
            (
                "275023965626_CloudTrail_eu-west-1_20260728T0920Z_AH5Y0wcSP7x3gWnw.json.gz",
                110,
            ),
            (
                "275023965626_CloudTrail_eu-west-1_20260728T1155Z_aXTZjtUCkQhUR7un.json.gz",
                1,
            ),
        ] {
            let bytes = std::fs::read(Path::new(MAHERIBRA_DIR).join(name)).unwrap();
            let (result, out) = decode(&bytes);
            assert_eq!(result.unwrap(), FileFormat::CloudTrailS3Object, "{name}");
            assert_eq!(out.events.len(), count, "{name}");
            assert_eq!(out.indices(), (0..count).collect::<Vec<_>>(), "{name}");
            assert!(out.bad.is_empty(), "{name}: {:?}", out.bad);
            for (_, json) in &out.events {
                let ev: serde_json::Value = serde_json::from_str(json).unwrap();
                assert!(ev["eventName"].is_string(), "{name}");
            }
        }
    }

    #[test]
    fn all_maheribra_objects_give_689_events_and_the_redacted_one_is_an_s3_object_too() {
        let files = sorted_files(MAHERIBRA_DIR, ".json.gz");
        assert_eq!(files.len(), 34);
        let mut total = 0;
        for file in &files {
            let (result, out) = decode(&std::fs::read(file).unwrap());
            assert_eq!(result.unwrap(), FileFormat::CloudTrailS3Object, "{file:?}");
            assert!(out.bad.is_empty(), "{file:?}");
            total += out.events.len();
        }
        assert_eq!(total, 689);

        // Saved uncompressed, and shaped as an S3 object although it holds one event.
        let redacted = format!(
            "{DATA}/maheribra-attack-chain-lab/03-incident-response/evidence/cloudtrail-1050-getobject.json"
        );
        let (result, out) = decode(&std::fs::read(redacted).unwrap());
        assert_eq!(result.unwrap(), FileFormat::CloudTrailS3Object);
        assert_eq!(out.events.len(), 1);
        assert!(out.events[0].1.contains("REDACTED_TEMPORARY_ACCESS_KEY"));
    }

    #[test]
    fn stratus_detonation_logs_are_json_arrays_with_310_events_in_all() {
        let stop = std::fs::read(format!(
            "{STRATUS_DIR}/aws.defense-evasion.cloudtrail-stop.json"
        ))
        .unwrap();
        let (result, out) = decode(&stop);
        assert_eq!(result.unwrap(), FileFormat::JsonArray);
        assert!(out.bad.is_empty());
        assert!(out
            .jsons()
            .iter()
            .any(|j| j.contains(r#""eventName": "StopLogging""#)));

        let files = sorted_files(STRATUS_DIR, ".json");
        assert_eq!(files.len(), 35);
        let mut total = 0;
        for file in &files {
            let (result, out) = decode(&std::fs::read(file).unwrap());
            assert_eq!(result.unwrap(), FileFormat::JsonArray, "{file:?}");
            assert!(out.bad.is_empty(), "{file:?}");
            total += out.events.len();
        }
        assert_eq!(total, 310);
    }

    #[test]
    fn the_same_file_decodes_alike_gzipped_or_not() {
        let s3_object = format!(r#"{{"Records":[{EVENT},{EVENT2}]}}"#);
        let (plain, plain_out) = decode(s3_object.as_bytes());
        let (gzipped, gzipped_out) = decode(&gzip(s3_object.as_bytes()));
        assert_eq!(plain.unwrap(), FileFormat::CloudTrailS3Object);
        assert_eq!(gzipped.unwrap(), FileFormat::CloudTrailS3Object);
        assert_eq!(plain_out.jsons(), vec![EVENT, EVENT2]);
        assert_eq!(gzipped_out.jsons(), vec![EVENT, EVENT2]);
    }

    #[test]
    fn synthetic_formats_are_recognised_and_give_their_events() {
        let eb1 = eventbridge(EVENT);
        let eb2 = eventbridge(EVENT2);
        let envelope_json = format!(
            r#"{{"messageType":"DATA_MESSAGE","owner":"123456789012","logGroup":"g","logStream":"s","subscriptionFilters":["f"],"logEvents":[{{"id":"1","timestamp":1,"message":{}}},{{"id":"2","timestamp":2,"message":{}}}]}}"#,
            serde_json::to_string(EVENT).unwrap(),
            serde_json::to_string(EVENT2).unwrap()
        );
        let control = r#"{"messageType":"CONTROL_MESSAGE","owner":"CloudwatchLogs","logGroup":"","logStream":"","subscriptionFilters":[],"logEvents":[{"id":"","timestamp":1,"message":"CWL CONTROL MESSAGE: Checking health of destination Kinesis stream."}]}"#;
        let cases: Vec<(&str, Vec<u8>, FileFormat, Vec<&str>)> = vec![
            (
                "S3 object",
                format!(r#"{{"Records":[{EVENT},{EVENT2}]}}"#).into(),
                FileFormat::CloudTrailS3Object,
                vec![EVENT, EVENT2],
            ),
            (
                "empty S3 object",
                br#"{"Records":[]}"#.to_vec(),
                FileFormat::CloudTrailS3Object,
                vec![],
            ),
            (
                "JSON array",
                format!("[\n  {EVENT},\n  {EVENT2}\n]\n").into(),
                FileFormat::JsonArray,
                vec![EVENT, EVENT2],
            ),
            (
                "empty JSON array",
                b"[]".to_vec(),
                FileFormat::JsonArray,
                vec![],
            ),
            (
                "single event",
                format!("\n{EVENT}\n").into(),
                FileFormat::SingleEvent,
                vec![EVENT],
            ),
            (
                "single event, pretty",
                serde_json::to_vec_pretty(
                    &serde_json::from_str::<serde_json::Value>(EVENT).unwrap(),
                )
                .unwrap(),
                FileFormat::SingleEvent,
                vec![],
            ),
            (
                "JSON lines",
                format!("{EVENT}\r\n\n{EVENT2}\r\n").into(),
                FileFormat::JsonLines,
                vec![EVENT, EVENT2],
            ),
            (
                "EventBridge, single",
                eb1.clone().into(),
                FileFormat::EventBridge,
                vec![EVENT],
            ),
            (
                "EventBridge, array",
                format!("[{eb1},{eb2}]").into(),
                FileFormat::EventBridge,
                vec![EVENT, EVENT2],
            ),
            (
                "EventBridge, lines",
                format!("{eb1}\n{eb2}\n").into(),
                FileFormat::EventBridge,
                vec![EVENT, EVENT2],
            ),
            (
                "envelope",
                envelope_json.clone().into(),
                FileFormat::CloudWatchEnvelope,
                vec![EVENT, EVENT2],
            ),
            (
                "envelope, control",
                control.into(),
                FileFormat::CloudWatchEnvelope,
                vec![],
            ),
            (
                "envelope, lines",
                format!("{envelope_json}\n{control}\n{envelope_json}").into(),
                FileFormat::CloudWatchEnvelope,
                vec![EVENT, EVENT2, EVENT, EVENT2],
            ),
            (
                "envelope, gzip'd",
                encode_envelope("o", "g", "s", "f", &[(1, EVENT), (2, EVENT2)]),
                FileFormat::CloudWatchEnvelope,
                vec![EVENT, EVENT2],
            ),
            (
                "with a UTF-8 BOM",
                format!("\u{feff}{EVENT}\n{EVENT2}\n").into(),
                FileFormat::JsonLines,
                vec![EVENT, EVENT2],
            ),
            (
                "with a UTF-8 BOM, gzip'd",
                gzip(format!("\u{feff}[{EVENT}]").as_bytes()),
                FileFormat::JsonArray,
                vec![EVENT],
            ),
        ];
        for (name, bytes, format, events) in cases {
            let (result, out) = decode(&bytes);
            assert_eq!(
                result.unwrap_or_else(|b| panic!("{name}: {b}")),
                format,
                "{name}"
            );
            assert!(out.bad.is_empty(), "{name}: {:?}", out.bad);
            if name == "single event, pretty" {
                assert_eq!(out.events.len(), 1, "{name}");
                assert!(out.events[0].1.starts_with('{') && out.events[0].1.ends_with('}'));
            } else {
                assert_eq!(out.jsons(), events, "{name}");
            }
            assert_eq!(
                out.indices(),
                (0..out.events.len()).collect::<Vec<_>>(),
                "{name}"
            );
        }
    }

    #[test]
    fn a_broken_json_line_is_set_aside_and_the_rest_of_the_file_decodes() {
        let text = format!(
            "{EVENT}\n{{\"eventName\":\"Cut\",\"eventTi\n\n{EVENT2}\nnot json at all\n{{\"foo\":1}}\n{EVENT}\n"
        );
        let (result, out) = decode(text.as_bytes());
        assert_eq!(result.unwrap(), FileFormat::JsonLines);
        assert_eq!(out.jsons(), vec![EVENT, EVENT2, EVENT]);
        assert_eq!(out.indices(), vec![0, 2, 5]);
        assert_eq!(
            out.bad_positions(),
            vec![
                (BadKind::NotJson, "f.json:line 2"),
                (BadKind::NotJson, "f.json:line 5"),
                (BadKind::UnknownFormat, "f.json:line 6"),
            ]
        );
    }

    #[test]
    fn a_broken_first_line_does_not_lose_the_file() {
        let text = format!("{{\"Records\": 5}}\n{EVENT}\n");
        let (result, out) = decode(text.as_bytes());
        assert_eq!(result.unwrap(), FileFormat::JsonLines);
        assert_eq!(out.jsons(), vec![EVENT]);
        assert_eq!(
            out.bad_positions(),
            vec![(BadKind::BadField, "f.json:line 1")]
        );
    }

    #[test]
    fn elements_that_are_not_objects_are_set_aside_and_decoding_continues() {
        let text = format!(r#"{{"Records":[{EVENT},1,"x",null,[{EVENT}],{EVENT2}]}}"#);
        let (result, out) = decode(text.as_bytes());
        assert_eq!(result.unwrap(), FileFormat::CloudTrailS3Object);
        assert_eq!(out.jsons(), vec![EVENT, EVENT2]);
        assert_eq!(out.indices(), vec![0, 5]);
        let kinds: Vec<_> = out.bad_positions();
        assert_eq!(
            kinds,
            vec![
                (BadKind::BadField, "f.json#1"),
                (BadKind::BadField, "f.json#2"),
                (BadKind::BadField, "f.json#3"),
                (BadKind::BadField, "f.json#4"),
            ]
        );

        let eb = format!(
            r#"[{},{{"detail-type":"x"}},{{"detail-type":"x","detail":"text"}},7,{}]"#,
            eventbridge(EVENT),
            eventbridge(EVENT2)
        );
        let (result, out) = decode(eb.as_bytes());
        assert_eq!(result.unwrap(), FileFormat::EventBridge);
        assert_eq!(out.jsons(), vec![EVENT, EVENT2]);
        assert_eq!(
            out.bad_positions(),
            vec![
                (BadKind::MissingField, "f.json#1"),
                (BadKind::BadField, "f.json#2"),
                (BadKind::BadField, "f.json#3"),
            ]
        );
    }

    #[test]
    fn oversize_events_are_set_aside() {
        let limits = Limits {
            max_event_bytes: EVENT.len(),
            ..Limits::default()
        };
        let big = format!(
            r#"{{"eventName":"Big","pad":"{}"}}"#,
            "x".repeat(EVENT.len())
        );
        let (result, out) = decode_with(format!("[{EVENT},{big},{EVENT}]").as_bytes(), &limits);
        assert_eq!(result.unwrap(), FileFormat::JsonArray);
        assert_eq!(out.indices(), vec![0, 2]);
        assert_eq!(out.bad_positions(), vec![(BadKind::Oversize, "f.json#1")]);

        let (result, out) = decode_with(format!("{EVENT}\n{big}\n").as_bytes(), &limits);
        assert_eq!(result.unwrap(), FileFormat::JsonLines);
        assert_eq!(
            out.bad_positions(),
            vec![(BadKind::Oversize, "f.json:line 2")]
        );

        let (result, _) = decode_with(big.as_bytes(), &limits);
        assert_eq!(result.unwrap_err().kind, BadKind::Oversize);
    }

    #[test]
    fn files_that_cannot_be_used_as_a_whole_are_errors_not_panics() {
        let bomb = {
            let mut b = gzip(&vec![b' '; 2 << 20]);
            b.extend(gzip(b"[]"));
            b
        };
        let small_limits = Limits {
            max_decompressed_bytes: 1 << 20,
            ..Limits::default()
        };
        let cases: Vec<(&str, Vec<u8>, BadKind)> = vec![
            ("empty", vec![], BadKind::UnknownFormat),
            (
                "whitespace only",
                b" \n\t\r\n".to_vec(),
                BadKind::UnknownFormat,
            ),
            ("BOM only", b"\xEF\xBB\xBF".to_vec(), BadKind::UnknownFormat),
            ("empty gzip", gzip(b""), BadKind::UnknownFormat),
            ("a JSON number", b"42".to_vec(), BadKind::UnknownFormat),
            (
                "an unknown object",
                br#"{"foo":{"bar":1}}"#.to_vec(),
                BadKind::UnknownFormat,
            ),
            (
                "JSON lines of unknown objects",
                b"{\"a\":1}\n{\"b\":2}\n".to_vec(),
                BadKind::UnknownFormat,
            ),
            ("not JSON", b"hello world".to_vec(), BadKind::NotJson),
            (
                "lines of not JSON",
                b"hello\nworld\n".to_vec(),
                BadKind::NotJson,
            ),
            (
                "a truncated array",
                format!("[{EVENT},{EVENT}").into(),
                BadKind::NotJson,
            ),
            (
                "a truncated pretty array",
                format!("[\n{EVENT},\n{{\"eventName\":").into(),
                BadKind::NotJson,
            ),
            ("binary", vec![0, 159, 146, 150, 255], BadKind::NotJson),
            (
                "Records not an array",
                br#"{"Records":{"eventName":"x"}}"#.to_vec(),
                BadKind::BadField,
            ),
            (
                "EventBridge without detail",
                br#"{"detail-type":"AWS API Call via CloudTrail"}"#.to_vec(),
                BadKind::MissingField,
            ),
            (
                "EventBridge detail not an object",
                br#"{"detail-type":"x","detail":[1]}"#.to_vec(),
                BadKind::BadField,
            ),
            (
                "envelope of unknown type",
                br#"{"messageType":"X","logEvents":[]}"#.to_vec(),
                BadKind::UnknownMessageType,
            ),
            (
                "envelope without messageType",
                br#"{"logEvents":[]}"#.to_vec(),
                BadKind::BadEnvelope,
            ),
            (
                "truncated gzip",
                {
                    let g = gzip(EVENT.as_bytes());
                    g[..g.len() - 3].to_vec()
                },
                BadKind::TruncatedGzip,
            ),
        ];
        for (name, bytes, kind) in cases {
            let (result, out) = decode(&bytes);
            let bad = result.expect_err(name);
            assert_eq!(bad.kind, kind, "{name}: {bad}");
            assert_eq!(bad.position, "f.json", "{name}");
            assert!(
                out.events.is_empty() && out.bad.is_empty(),
                "{name}: {out:?}"
            );
        }
        let (result, _) = decode_with(&bomb, &small_limits);
        assert_eq!(result.unwrap_err().kind, BadKind::GzipBomb);
    }

    #[test]
    fn formats_have_snake_case_names() {
        for (format, name) in [
            (FileFormat::CloudTrailS3Object, "cloudtrail_s3_object"),
            (FileFormat::JsonArray, "json_array"),
            (FileFormat::EventBridge, "eventbridge"),
            (FileFormat::JsonLines, "json_lines"),
            (FileFormat::SingleEvent, "single_event"),
            (FileFormat::CloudWatchEnvelope, "cloudwatch_envelope"),
        ] {
            assert_eq!(format.as_str(), name);
        }
    }

    proptest! {
        #[test]
        fn decode_file_never_panics_on_arbitrary_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..1024),
            gzipped in any::<bool>(),
        ) {
            let bytes = if gzipped { gzip(&bytes) } else { bytes };
            let _ = decode_with(&bytes, &Limits { max_decompressed_bytes: 4096, max_event_bytes: 64 });
        }

        #[test]
        fn decode_file_never_panics_on_json_like_text(
            text in r#"(\{|\}|\[|\]|"|:|,| |\n|\\|Records|detail|detail-type|messageType|logEvents|message|eventName|DATA_MESSAGE|null|1|\u{feff}){0,80}"#,
            gzipped in any::<bool>(),
        ) {
            let bytes = if gzipped { gzip(text.as_bytes()) } else { text.into_bytes() };
            let (result, out) = decode_with(&bytes, &Limits { max_decompressed_bytes: 4096, max_event_bytes: 32 });
            // Every event comes out at most once and every index is distinct.
            let mut indices = out.indices();
            indices.dedup();
            prop_assert_eq!(indices.len(), out.events.len());
            if result.is_err() {
                prop_assert!(out.events.is_empty());
            }
        }
    }
}
