//! CloudWatch Logs subscription payloads, as a subscription filter writes them to Kinesis.
//!
//! Format: <https://docs.aws.amazon.com/AmazonCloudWatch/latest/logs/SubscriptionFilters.html>
//! (examples: <https://docs.aws.amazon.com/AmazonCloudWatch/latest/logs/SubscriptionFilters.html#DestinationKinesisExample>).
//! Each Kinesis record's data is one gzip'd JSON envelope:
//!
//! ```json
//! {"messageType":"DATA_MESSAGE","owner":"123456789012","logGroup":"...","logStream":"...",
//!  "subscriptionFilters":["..."],
//!  "logEvents":[{"id":"...","timestamp":1510109208016,"message":"<one CloudTrail event as a JSON string>"}]}
//! ```
//!
//! `CONTROL_MESSAGE` envelopes are sent to check that the destination is reachable; their
//! `logEvents` are not CloudTrail events and give no events. Unknown fields are tolerated (no
//! `deny_unknown_fields`): AWS adds fields.
//!
//! Decoding is one pass over the JSON with no `serde_json::Value`: each `message` is unescaped
//! by serde_json into its own scratch buffer and copied into a reusable text buffer, so a warm
//! [`Scratch`] decodes a record with a few small allocations per record and none per event.
//! Events are handed out only once the whole envelope has parsed and its `messageType` is known,
//! so a record is either used or set aside as a whole (apart from single log events set aside on
//! their own).
//!
//! Unescaping the messages is about half the cost of a record (gunzip is most of the rest):
//! CloudTrail events escaped as JSON strings hold an escape every ~15 bytes. A hand-written
//! parser finding escapes with `memchr2` was tried and was slower than serde_json's
//! word-at-a-time scanner.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use libdeflater::{CompressionLvl, Compressor, Decompressor};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::{gzip, BadKind, BadRecord, Limits, RawEvent};
use crate::event::CloudTrailEvent;

/// Buffers above this capacity are freed after a record rather than kept in [`Scratch`].
const RETAIN_BYTES: usize = 16 << 20;

/// `messageType` of an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// `DATA_MESSAGE`: `logEvents` are log events (here, CloudTrail events).
    Data,
    /// `CONTROL_MESSAGE`: a reachability check; gives no events.
    Control,
}

impl MessageType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Data => "DATA_MESSAGE",
            MessageType::Control => "CONTROL_MESSAGE",
        }
    }
}

/// What one envelope held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeSummary {
    pub message_type: MessageType,
    /// AWS account id of the log data (`"CloudwatchLogs"` on control messages).
    pub owner: Option<String>,
    pub log_group: Option<String>,
    pub log_stream: Option<String>,
    /// Events passed to `on_event` (log events set aside through `on_bad` are not counted).
    pub events: usize,
}

/// Reusable buffers (a libdeflater `Decompressor`, the gunzipped bytes, the unescaped messages)
/// so the hot path allocates little. One per consumer task.
#[derive(Default)]
pub struct Scratch {
    decompressor: Decompressor,
    gunzipped: Vec<u8>,
    events: EventBuf,
    /// simd-json's stage buffers (aligned input copy, string buffer, structural indexes), kept
    /// between records instead of allocated for each.
    simd: simd_json::Buffers,
    /// [`decode_record_read`]'s events read in place and what each log event gave, kept empty
    /// between records so that their allocations serve the next.
    read: Vec<CloudTrailEvent<'static>>,
    slots: Vec<FastSlot>,
}

impl fmt::Debug for Scratch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scratch")
            .field("gunzipped_capacity", &self.gunzipped.capacity())
            .field("text_capacity", &self.events.text.capacity())
            .field("slots_capacity", &self.events.slots.capacity())
            .finish_non_exhaustive()
    }
}

impl Scratch {
    /// Frees buffers that one unusually large record grew.
    fn trim(&mut self) {
        if self.gunzipped.capacity() > RETAIN_BYTES {
            self.gunzipped = Vec::new();
            // simd-json's buffers grew to the same size.
            self.simd = simd_json::Buffers::default();
        }
        if self.events.text.capacity() > RETAIN_BYTES {
            self.events.text = String::new();
        }
        if self.events.slots.capacity() > RETAIN_BYTES / 64 {
            self.events.slots = Vec::new();
        }
        if self.slots.capacity() > RETAIN_BYTES / 64 {
            self.slots = Vec::new();
            self.read = Vec::new();
        }
    }
}

/// `v`, emptied, with its allocation kept for elements of another lifetime (the standard
/// library collects a `Vec`'s `into_iter` in place, and an empty one moves nothing).
fn recycle<'b>(mut v: Vec<CloudTrailEvent<'_>>) -> Vec<CloudTrailEvent<'b>> {
    v.clear();
    // `filter` would keep the element type: this `filter_map` changes its lifetime.
    #[allow(clippy::unnecessary_filter_map)]
    v.into_iter().filter_map(|_| None).collect()
}

/// Decodes one Kinesis record's data: gzip is required (not gzip -> [`BadKind::NotGzip`]), then
/// the envelope JSON.
///
/// Calls `on_event` for each `logEvents[].message` (`RawEvent::index` = its position in
/// `logEvents`) that is within `max_event_bytes`; an oversize message is passed to `on_bad`
/// ([`BadKind::Oversize`], position = `"{position}#{index}"`) and decoding continues, as is a log
/// event without a `message` ([`BadKind::MissingField`]) or whose `message` is not a string
/// holding a JSON object ([`BadKind::BadField`]).
///
/// Whole-record failures return `Err(BadRecord)` with `position` as given: `NotGzip`,
/// `TruncatedGzip`, `GzipBomb`, `NotJson`, `BadEnvelope` (missing `messageType`, missing
/// `logEvents` on a `DATA_MESSAGE`, fields of the wrong type), `UnknownMessageType`. No event
/// comes out of a record that fails as a whole.
pub fn decode_record(
    data: &[u8],
    limits: &Limits,
    position: &str,
    scratch: &mut Scratch,
    mut on_event: impl FnMut(RawEvent<'_>),
    mut on_bad: impl FnMut(BadRecord),
) -> Result<EnvelopeSummary, BadRecord> {
    if !gzip::is_gzip(data) {
        return Err(BadRecord::new(
            BadKind::NotGzip,
            position,
            "CloudWatch Logs subscription data must be gzip'd; no gzip magic bytes 1f 8b",
        ));
    }
    let result = gzip::gunzip_capped_into(
        &mut scratch.decompressor,
        data,
        limits.max_decompressed_bytes,
        &mut scratch.gunzipped,
    )
    .map_err(|(kind, detail)| BadRecord::new(kind, position, detail))
    .and_then(|()| {
        decode_envelope_in_place(
            &mut scratch.gunzipped,
            &mut scratch.simd,
            limits,
            position,
            0,
            &mut scratch.events,
            &mut on_event,
            &mut on_bad,
        )
    })
    .map(|(summary, _)| summary);
    scratch.trim();
    result
}

/// The envelope JSON after gunzip (also used by the file decoder for envelopes stored in files).
/// Same events, set-aside events and errors as [`decode_record`], minus the gzip ones.
pub fn decode_envelope_json(
    json: &[u8],
    limits: &Limits,
    position: &str,
    mut on_event: impl FnMut(RawEvent<'_>),
    mut on_bad: impl FnMut(BadRecord),
) -> Result<EnvelopeSummary, BadRecord> {
    let mut buf = EventBuf::default();
    decode_envelope_in(
        json,
        limits,
        position,
        0,
        &mut buf,
        &mut on_event,
        &mut on_bad,
    )
    .map(|(summary, _)| summary)
}

/// Decodes an envelope with caller buffers. `RawEvent::index` is `base_index` + the position in
/// `logEvents`. Returns the summary and how many indices the envelope used (its log events,
/// set-aside ones included; none for a control message).
pub(crate) fn decode_envelope_in(
    json: &[u8],
    limits: &Limits,
    position: &str,
    base_index: usize,
    buf: &mut EventBuf,
    on_event: &mut impl FnMut(RawEvent<'_>),
    on_bad: &mut impl FnMut(BadRecord),
) -> Result<(EnvelopeSummary, usize), BadRecord> {
    buf.clear();
    let mut de = serde_json::Deserializer::from_slice(json);
    let fields = de
        .deserialize_map(EnvelopeVisitor {
            buf: &mut *buf,
            max_event_bytes: limits.max_event_bytes,
        })
        .and_then(|fields| de.end().map(|()| fields))
        .map_err(|e| envelope_json_error(&e, position))?
        .into_owned();
    finish_envelope(fields, position, base_index, buf, on_event, on_bad)
}

/// Checks the envelope's fields and hands out its events and set-aside log events.
fn finish_envelope(
    fields: EnvelopeFields<'static>,
    position: &str,
    base_index: usize,
    buf: &mut EventBuf,
    on_event: &mut impl FnMut(RawEvent<'_>),
    on_bad: &mut impl FnMut(BadRecord),
) -> Result<(EnvelopeSummary, usize), BadRecord> {
    let message_type = match fields.message_type.as_deref() {
        Some("DATA_MESSAGE") => MessageType::Data,
        Some("CONTROL_MESSAGE") => MessageType::Control,
        Some(other) => {
            return Err(BadRecord::new(
                BadKind::UnknownMessageType,
                position,
                format!("messageType {other:?}"),
            ))
        }
        None => {
            return Err(BadRecord::new(
                BadKind::BadEnvelope,
                position,
                "missing field `messageType`",
            ))
        }
    };
    let mut summary = EnvelopeSummary {
        message_type,
        owner: fields.owner.map(Cow::into_owned),
        log_group: fields.log_group.map(Cow::into_owned),
        log_stream: fields.log_stream.map(Cow::into_owned),
        events: 0,
    };
    if message_type == MessageType::Control {
        return Ok((summary, 0));
    }
    if !fields.log_events {
        return Err(BadRecord::new(
            BadKind::BadEnvelope,
            position,
            "DATA_MESSAGE without field `logEvents`",
        ));
    }
    let EventBuf { text, slots, .. } = buf;
    for (i, slot) in slots.iter_mut().enumerate() {
        match slot {
            Slot::Event(range) => {
                summary.events += 1;
                on_event(RawEvent {
                    json: Cow::Borrowed(&text[range.clone()]),
                    index: base_index + i,
                });
            }
            Slot::Bad(kind, detail) => on_bad(BadRecord::new(
                *kind,
                format!("{position}#{i}"),
                std::mem::take(detail),
            )),
        }
    }
    Ok((summary, slots.len()))
}

/// [`decode_envelope_in`] on a buffer it may change: simd-json unescapes strings in place with
/// SIMD (chosen at run time, so the binary stays portable), which is most of an envelope's
/// cost, since every CloudTrail event is one escaped JSON string.
#[allow(clippy::too_many_arguments)] // the record's buffers, limits, position and callbacks
pub(crate) fn decode_envelope_in_place(
    json: &mut [u8],
    simd: &mut simd_json::Buffers,
    limits: &Limits,
    position: &str,
    base_index: usize,
    buf: &mut EventBuf,
    on_event: &mut impl FnMut(RawEvent<'_>),
    on_bad: &mut impl FnMut(BadRecord),
) -> Result<(EnvelopeSummary, usize), BadRecord> {
    buf.clear();
    let fields = {
        // Building the tape validates the whole document: its errors are syntax errors.
        let mut de = simd_json::Deserializer::from_slice_with_buffers(json, simd)
            .map_err(|e| BadRecord::new(BadKind::NotJson, position, e.to_string()))?;
        de.deserialize_map(EnvelopeVisitor {
            buf: &mut *buf,
            max_event_bytes: limits.max_event_bytes,
        })
        .map_err(|e| BadRecord::new(BadKind::BadEnvelope, position, e.to_string()))?
        .into_owned()
    };
    finish_envelope(fields, position, base_index, buf, on_event, on_bad)
}

fn envelope_json_error(e: &serde_json::Error, position: &str) -> BadRecord {
    let kind = match e.classify() {
        serde_json::error::Category::Data => BadKind::BadEnvelope,
        serde_json::error::Category::Io => BadKind::Io,
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => BadKind::NotJson,
    };
    BadRecord::new(kind, position, e.to_string())
}

/// Builds a gzip'd `DATA_MESSAGE` envelope (for tests, replay and benchmarks): `messages` are
/// `(timestamp in ms, event JSON text)`.
pub fn encode_envelope(
    owner: &str,
    log_group: &str,
    log_stream: &str,
    filter: &str,
    messages: &[(i64, &str)],
) -> Vec<u8> {
    let envelope = EnvelopeOut {
        message_type: MessageType::Data.as_str(),
        owner,
        log_group,
        log_stream,
        subscription_filters: [filter],
        log_events: messages
            .iter()
            .enumerate()
            .map(|(i, &(timestamp, message))| LogEventOut {
                // CloudWatch Logs ids are 56-digit strings; these are unique within the envelope.
                id: format!("{:0>36}{:020}", timestamp.unsigned_abs(), i),
                timestamp,
                message,
            })
            .collect(),
    };
    let json = serde_json::to_vec(&envelope).expect("serialising strings and integers cannot fail");
    let mut compressor = Compressor::new(CompressionLvl::default());
    let mut out = vec![0u8; compressor.gzip_compress_bound(json.len())];
    let n = compressor
        .gzip_compress(&json, &mut out)
        .expect("the output buffer has the compress bound");
    out.truncate(n);
    out
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EnvelopeOut<'a> {
    message_type: &'a str,
    owner: &'a str,
    log_group: &'a str,
    log_stream: &'a str,
    subscription_filters: [&'a str; 1],
    log_events: Vec<LogEventOut<'a>>,
}

#[derive(Serialize)]
struct LogEventOut<'a> {
    id: String,
    timestamp: i64,
    message: &'a str,
}

/// Unescaped messages of one envelope and what became of each log event, reused across records.
#[derive(Debug, Default)]
pub(crate) struct EventBuf {
    /// The messages that are events, back to back.
    text: String,
    /// One per `logEvents` element, in order.
    slots: Vec<Slot>,
    /// The scanner's blocks of the message it reads.
    index: super::scan::Index,
}

impl EventBuf {
    fn clear(&mut self) {
        self.text.clear();
        self.slots.clear();
    }
}

#[derive(Debug)]
enum Slot {
    /// The event's JSON is `text[range]`.
    Event(Range<usize>),
    /// Set aside.
    Bad(BadKind, String),
}

/// Top-level keys of the envelope that are read; anything else is skipped.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum EnvelopeField {
    MessageType,
    Owner,
    LogGroup,
    LogStream,
    LogEvents,
    #[serde(other)]
    Other,
}

/// A string borrowed from the input unless it had escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

impl EnvelopeFields<'_> {
    fn into_owned(self) -> EnvelopeFields<'static> {
        let own = |c: Option<Cow<'_, str>>| c.map(|c| Cow::Owned(c.into_owned()));
        EnvelopeFields {
            message_type: own(self.message_type),
            owner: own(self.owner),
            log_group: own(self.log_group),
            log_stream: own(self.log_stream),
            log_events: self.log_events,
        }
    }
}

#[derive(Default)]
struct EnvelopeFields<'de> {
    message_type: Option<Cow<'de, str>>,
    owner: Option<Cow<'de, str>>,
    log_group: Option<Cow<'de, str>>,
    log_stream: Option<Cow<'de, str>>,
    /// Whether `logEvents` was present (its elements went into the [`EventBuf`]).
    log_events: bool,
}

struct EnvelopeVisitor<'s> {
    buf: &'s mut EventBuf,
    max_event_bytes: usize,
}

impl<'de> Visitor<'de> for EnvelopeVisitor<'_> {
    type Value = EnvelopeFields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a CloudWatch Logs subscription envelope (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = EnvelopeFields::default();
        while let Some(key) = map.next_key::<EnvelopeField>()? {
            match key {
                EnvelopeField::MessageType => {
                    string_once(&mut map, &mut fields.message_type, "messageType")?
                }
                EnvelopeField::Owner => string_once(&mut map, &mut fields.owner, "owner")?,
                EnvelopeField::LogGroup => {
                    string_once(&mut map, &mut fields.log_group, "logGroup")?
                }
                EnvelopeField::LogStream => {
                    string_once(&mut map, &mut fields.log_stream, "logStream")?
                }
                EnvelopeField::LogEvents => {
                    if fields.log_events {
                        return Err(de::Error::duplicate_field("logEvents"));
                    }
                    map.next_value_seed(LogEvents {
                        buf: &mut *self.buf,
                        max_event_bytes: self.max_event_bytes,
                    })?;
                    fields.log_events = true;
                }
                EnvelopeField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fields)
    }
}

/// Reads an optional string field (`null` counts as absent) that may appear once.
fn string_once<'de, A: MapAccess<'de>>(
    map: &mut A,
    slot: &mut Option<Cow<'de, str>>,
    name: &'static str,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(de::Error::duplicate_field(name));
    }
    *slot = map.next_value::<Option<Text<'de>>>()?.map(|t| t.0);
    Ok(())
}

/// `logEvents`: an array; each element leaves exactly one [`Slot`].
struct LogEvents<'s> {
    buf: &'s mut EventBuf,
    max_event_bytes: usize,
}

impl<'de> DeserializeSeed<'de> for LogEvents<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for LogEvents<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of log events")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(LogEvent {
                buf: &mut *self.buf,
                max_event_bytes: self.max_event_bytes,
            })?
            .is_some()
        {}
        Ok(())
    }
}

/// Keys of a log event that are read.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum LogEventField {
    Message,
    #[serde(other)]
    Other,
}

/// Implements the `visit_*` methods of a value that is not of the wanted JSON type: consume it
/// and return `$bad`.
macro_rules! wrong_json_type {
    ($bad:expr) => {
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($bad(self, "null"))
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($bad(self, "a boolean"))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($bad(self, "a number"))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($bad(self, "a number"))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($bad(self, "a number"))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($bad(self, "an array"))
        }
    };
}

/// One element of `logEvents`.
struct LogEvent<'s> {
    buf: &'s mut EventBuf,
    max_event_bytes: usize,
}

impl LogEvent<'_> {
    fn not_an_object(self, found: &str) {
        self.buf.slots.push(Slot::Bad(
            BadKind::BadField,
            format!("log event is {found}, not an object"),
        ));
    }
}

impl<'de> DeserializeSeed<'de> for LogEvent<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LogEvent<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a log event object")
    }

    wrong_json_type!(LogEvent::not_an_object);

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.not_an_object("a string");
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let start = self.buf.text.len();
        let mut message: Option<Slot> = None;
        let mut duplicate = false;
        while let Some(key) = map.next_key::<LogEventField>()? {
            match key {
                LogEventField::Message if message.is_none() => {
                    message = Some(map.next_value_seed(Message {
                        buf: &mut *self.buf,
                        max_event_bytes: self.max_event_bytes,
                    })?);
                }
                LogEventField::Message => {
                    duplicate = true;
                    map.next_value::<IgnoredAny>()?;
                }
                LogEventField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let slot = match message {
            _ if duplicate => {
                self.buf.text.truncate(start);
                Slot::Bad(
                    BadKind::BadField,
                    "log event with two `message` fields".to_owned(),
                )
            }
            None => Slot::Bad(
                BadKind::MissingField,
                "log event without field `message`".to_owned(),
            ),
            Some(slot) => slot,
        };
        self.buf.slots.push(slot);
        Ok(())
    }
}

/// `logEvents[].message`: a string holding one CloudTrail event. Appends it to the text buffer
/// when it can be used; returns its slot.
struct Message<'s> {
    buf: &'s mut EventBuf,
    max_event_bytes: usize,
}

impl Message<'_> {
    fn not_a_string(self, found: &str) -> Slot {
        Slot::Bad(
            BadKind::BadField,
            format!("message is {found}, not a string"),
        )
    }
}

impl<'de> DeserializeSeed<'de> for Message<'_> {
    type Value = Slot;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Slot, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Message<'_> {
    type Value = Slot;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a log message string")
    }

    wrong_json_type!(Message::not_a_string);

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Slot, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(self.not_a_string("an object"))
    }

    /// Called with serde_json's own scratch buffer for escaped strings (every CloudTrail event
    /// is one) and with the input for the others; either way it is copied once, into `buf.text`.
    fn visit_str<E: de::Error>(self, message: &str) -> Result<Slot, E> {
        Ok(message_slot(self.buf, message, self.max_event_bytes))
    }
}

/// What an unescaped `message` is: an event (appended to `buf.text`) or set aside.
fn message_slot(buf: &mut EventBuf, message: &str, max_event_bytes: usize) -> Slot {
    if message.len() > max_event_bytes {
        return Slot::Bad(
            BadKind::Oversize,
            format!(
                "message of {} bytes is over max_event_bytes ({max_event_bytes})",
                message.len(),
            ),
        );
    }
    if !super::looks_like_object(message) {
        return Slot::Bad(
            BadKind::BadField,
            format!(
                "message is not a JSON object: {:?}",
                message.chars().take(40).collect::<String>()
            ),
        );
    }
    let start = buf.text.len();
    buf.text.push_str(message);
    Slot::Event(start..buf.text.len())
}

/// One event out of [`decode_record_read`].
#[derive(Debug)]
pub enum Decoded<'a, 'e> {
    /// Its JSON text, unescaped, as [`decode_record`] gives every event.
    Text(RawEvent<'a>),
    /// Read in place from the escaped message by [`super::scan`]: every field but
    /// `requestParameters` and `responseElements`, which no rule reads for such an event
    /// ([`crate::engine::reads_whole_event`]).
    Read {
        event: &'e CloudTrailEvent<'a>,
        /// Its position in `logEvents`.
        index: usize,
    },
}

/// [`decode_record`] for a consumer: the same events, set-aside events and errors, but each event
/// whose fields [`super::scan`] can read straight from the escaped message comes out as
/// [`Decoded::Read`], without being unescaped or parsed whole. The others (an event the engine
/// reads whole, a message the scanner gives up on, an envelope of another shape) come out as
/// [`decode_record`] gives them.
pub fn decode_record_read(
    data: &[u8],
    limits: &Limits,
    position: &str,
    scratch: &mut Scratch,
    mut on_event: impl FnMut(Decoded<'_, '_>),
    mut on_bad: impl FnMut(BadRecord),
) -> Result<EnvelopeSummary, BadRecord> {
    if !gzip::is_gzip(data) {
        return decode_record(data, limits, position, scratch, |_| {}, on_bad);
    }
    if let Err((kind, detail)) = gzip::gunzip_capped_into(
        &mut scratch.decompressor,
        data,
        limits.max_decompressed_bytes,
        &mut scratch.gunzipped,
    ) {
        scratch.trim();
        return Err(BadRecord::new(kind, position, detail));
    }
    let mut events = recycle(std::mem::take(&mut scratch.read));
    let mut slots = std::mem::take(&mut scratch.slots);
    let read = simdutf8::basic::from_utf8(&scratch.gunzipped)
        .ok()
        .and_then(|text| read_envelope(text, limits, &mut scratch.events, &mut events, &mut slots));
    if let Some(env) = read {
        let mut summary = EnvelopeSummary {
            message_type: MessageType::Data,
            owner: env.owner.map(str::to_owned),
            log_group: env.log_group.map(str::to_owned),
            log_stream: env.log_stream.map(str::to_owned),
            events: 0,
        };
        let text = &scratch.events.text;
        let mut read = events.iter();
        for (i, slot) in slots.drain(..).enumerate() {
            match slot {
                FastSlot::Read => {
                    summary.events += 1;
                    let event = read.next().expect("one event read per FastSlot::Read");
                    on_event(Decoded::Read { event, index: i });
                }
                FastSlot::Slot(Slot::Event(range)) => {
                    summary.events += 1;
                    on_event(Decoded::Text(RawEvent {
                        json: Cow::Borrowed(&text[range]),
                        index: i,
                    }));
                }
                FastSlot::Slot(Slot::Bad(kind, detail)) => {
                    on_bad(BadRecord::new(kind, format!("{position}#{i}"), detail))
                }
            }
        }
        scratch.read = recycle(events);
        scratch.slots = slots;
        scratch.trim();
        return Ok(summary);
    }
    scratch.read = recycle(events);
    slots.clear();
    scratch.slots = slots;
    let result = decode_envelope_in_place(
        &mut scratch.gunzipped,
        &mut scratch.simd,
        limits,
        position,
        0,
        &mut scratch.events,
        &mut |raw| on_event(Decoded::Text(raw)),
        &mut on_bad,
    )
    .map(|(summary, _)| summary);
    scratch.trim();
    result
}

/// Checks that [`decode_record_read`] gives for `data` what [`decode_record`] gives: the same
/// result, the same set-aside events, and each event either the same text or read in place with
/// the fields the full parser reads from that text (unless the full parser rejects the text: the
/// scanner does not check the grammar of the values it skips, see [`super::scan`]). Panics on a
/// difference; returns how many events were read in place. One check for the unit tests and the
/// fuzz target.
#[doc(hidden)]
pub fn assert_read_agrees(data: &[u8], limits: &Limits, position: &str) -> usize {
    let mut scratch = Scratch::default();
    let (mut texts, mut bad) = (Vec::new(), Vec::new());
    let result = decode_record(
        data,
        limits,
        position,
        &mut scratch,
        |ev| texts.push((ev.index, ev.json.into_owned())),
        |b| bad.push(b),
    );
    let (mut read, mut read_bad) = (Vec::new(), Vec::new());
    let read_result = decode_record_read(
        data,
        limits,
        position,
        &mut scratch,
        |ev| {
            read.push(match ev {
                Decoded::Text(raw) => (raw.index, Ok(raw.json.into_owned())),
                Decoded::Read { event, index } => (index, Err(super::scan::fields(event))),
            })
        },
        |b| read_bad.push(b),
    );
    assert_eq!(read_result, result);
    assert_eq!(read_bad, bad);
    assert_eq!(read.len(), texts.len());
    let mut in_place = 0;
    for ((i, got), (j, text)) in read.into_iter().zip(&texts) {
        assert_eq!(i, *j);
        match got {
            Ok(t) => assert_eq!(&t, text),
            Err(fields) => {
                in_place += 1;
                if let Ok(full) = serde_json::from_str::<CloudTrailEvent>(text) {
                    assert_eq!(fields, super::scan::fields(&full), "{text}");
                }
            }
        }
    }
    in_place
}

/// An envelope read by [`read_envelope`] (its log events are in the caller's buffers).
struct FastEnvelope<'a> {
    owner: Option<&'a str>,
    log_group: Option<&'a str>,
    log_stream: Option<&'a str>,
}

/// What one log event gave in [`read_envelope`].
#[derive(Debug)]
enum FastSlot {
    /// Read in place: the next event of the events read.
    Read,
    /// Unescaped into the text buffer, or set aside, as the full decoder does.
    Slot(Slot),
}

/// Reads a `DATA_MESSAGE` envelope of the shape CloudWatch Logs writes (compact JSON; the keys
/// `messageType`, `owner`, `logGroup`, `logStream`, `subscriptionFilters`, `logEvents`; log events
/// of `id`, `timestamp` and `message`; no escapes outside the messages). `None` for anything else:
/// the full decoder reads it, errors included.
fn read_envelope<'a>(
    text: &'a str,
    limits: &Limits,
    buf: &mut EventBuf,
    events: &mut Vec<CloudTrailEvent<'a>>,
    slots: &mut Vec<FastSlot>,
) -> Option<FastEnvelope<'a>> {
    buf.clear();
    events.clear();
    slots.clear();
    let mut p = Plain { text, i: 0 };
    let mut env = FastEnvelope {
        owner: None,
        log_group: None,
        log_stream: None,
    };
    let (mut message_type, mut log_events) = (None, false);
    p.object(|p, key| {
        Some(match key {
            "messageType" => {
                message_type = Some(p.string()?);
                0
            }
            "owner" => {
                env.owner = p.string_or_null()?;
                1
            }
            "logGroup" => {
                env.log_group = p.string_or_null()?;
                2
            }
            "logStream" => {
                env.log_stream = p.string_or_null()?;
                3
            }
            "subscriptionFilters" => {
                p.list(|p| p.string().map(drop))?;
                4
            }
            "logEvents" => {
                p.list(|p| {
                    let slot = log_event(p, limits, buf, events)?;
                    slots.push(slot);
                    Some(())
                })?;
                log_events = true;
                5
            }
            _ => return None,
        })
    })?;
    (p.i == text.len() && message_type == Some("DATA_MESSAGE") && log_events).then_some(env)
}

/// One element of `logEvents`: `{"id":...,"timestamp":...,"message":...}` in any order.
fn log_event<'a>(
    p: &mut Plain<'a>,
    limits: &Limits,
    buf: &mut EventBuf,
    events: &mut Vec<CloudTrailEvent<'a>>,
) -> Option<FastSlot> {
    let mut slot = None;
    p.object(|p, key| {
        Some(match key {
            "id" => {
                p.string()?;
                0
            }
            "timestamp" => {
                p.number()?;
                1
            }
            "message" => {
                slot = Some(message(p, limits, buf, events)?);
                2
            }
            _ => return None,
        })
    })?;
    slot
}

/// A `message` string: read in place by the scanner (into a new last element of `events`), or
/// unescaped as the full decoder does.
fn message<'a>(
    p: &mut Plain<'a>,
    limits: &Limits,
    buf: &mut EventBuf,
    events: &mut Vec<CloudTrailEvent<'a>>,
) -> Option<FastSlot> {
    if p.text.as_bytes().get(p.i) != Some(&b'"') {
        return None;
    }
    let start = p.i + 1;
    events.push(CloudTrailEvent::default());
    let event = events.last_mut().expect("just pushed");
    if let Ok(end) = super::scan::read_event_into(p.text, start, event, &mut buf.index) {
        if end - start <= limits.max_event_bytes && !crate::engine::reads_whole_event(event) {
            p.i = end + 1;
            return Some(FastSlot::Read);
        }
    }
    events.pop();
    let end = super::scan::string_end(p.text.as_bytes(), start)?;
    let message: String = serde_json::from_str(&p.text[p.i..=end]).ok()?;
    p.i = end + 1;
    Some(FastSlot::Slot(message_slot(
        buf,
        &message,
        limits.max_event_bytes,
    )))
}

/// A cursor over compact JSON without escapes (the envelope around the messages).
struct Plain<'a> {
    text: &'a str,
    i: usize,
}

impl<'a> Plain<'a> {
    fn next(&mut self) -> Option<u8> {
        let b = *self.text.as_bytes().get(self.i)?;
        self.i += 1;
        Some(b)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// A string without escapes or control characters.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let b = &self.text.as_bytes()[self.i..];
        let n = memchr::memchr2(b'"', b'\\', b)?;
        if b[n] != b'"' || b[..n].iter().any(|&c| c < 0x20) {
            return None;
        }
        let s = &self.text[self.i..self.i + n];
        self.i += n + 1;
        Some(s)
    }

    fn string_or_null(&mut self) -> Option<Option<&'a str>> {
        if self.text.as_bytes()[self.i..].starts_with(b"null") {
            self.i += 4;
            return Some(None);
        }
        self.string().map(Some)
    }

    /// An integer (a timestamp in milliseconds) as JSON writes one (no leading zero) and short
    /// enough for any integer type; anything else is left to the full decoder.
    fn number(&mut self) -> Option<()> {
        let b = &self.text.as_bytes()[self.i..];
        let sign = usize::from(b.first() == Some(&b'-'));
        let digits = b[sign..].iter().take_while(|c| c.is_ascii_digit()).count();
        let leading_zero = digits > 1 && b[sign] == b'0';
        (1..=15).contains(&digits).then_some(())?;
        (!leading_zero).then(|| self.i += sign + digits)
    }

    /// `{"key":value,...}`: `on_key` reads each value and names its key by a bit (a key seen
    /// twice is a duplicate, which the full decoder rejects).
    fn object(&mut self, mut on_key: impl FnMut(&mut Self, &'a str) -> Option<u32>) -> Option<()> {
        self.eat(b'{')?;
        let mut seen = 0u32;
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            let bit = on_key(self, key)?;
            if seen >> bit & 1 != 0 {
                return None;
            }
            seen |= 1 << bit;
            match self.next()? {
                b',' => continue,
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// `[item, ...]`.
    fn list(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        if self.text.as_bytes().get(self.i) == Some(&b']') {
            self.i += 1;
            return Some(());
        }
        loop {
            item(self)?;
            match self.next()? {
                b',' => continue,
                b']' => return Some(()),
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const EVENT_A: &str = r#"{"eventVersion":"1.08","eventTime":"2024-07-31T13:06:24Z","eventName":"GetCallerIdentity","sourceIPAddress":"203.0.113.7","userIdentity":{"type":"AssumedRole","accessKeyId":"ASIAEXAMPLE1"}}"#;
    const EVENT_B: &str = r#"{"eventTime":"2024-07-31T13:07:00Z","eventName":"ListBuckets","userAgent":"aws-cli/2 \"quoted\" \\ back\u00e9"}"#;

    /// Everything one decode gave.
    #[derive(Debug, Default)]
    struct Out {
        events: Vec<(usize, String)>,
        bad: Vec<BadRecord>,
    }

    fn decode(data: &[u8], limits: &Limits) -> (Result<EnvelopeSummary, BadRecord>, Out) {
        let mut out = Out::default();
        let mut scratch = Scratch::default();
        let mut bad = Vec::new();
        let position =
            "shardId-000000000001@49590338271490256608559692538361571095921575989136588898";
        let result = decode_record(
            data,
            limits,
            position,
            &mut scratch,
            |ev| out.events.push((ev.index, ev.json.into_owned())),
            |b| bad.push(b),
        );
        out.bad = bad;
        // The consumer's path gives the same.
        assert_read_agrees(data, limits, position);
        (result, out)
    }

    /// Every event of the shared recordings, 50 to an envelope: the consumer's path reads most
    /// in place, and gives what the full decoder and parser give (checked by [`decode`]).
    #[test]
    fn the_shared_recordings_read_in_place_as_the_full_parser_reads_them() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data");
        let mut events = Vec::new();
        for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().to_string();
            if entry.file_type().is_file()
                && (name.ends_with(".json") || name.ends_with(".json.gz"))
            {
                let bytes = std::fs::read(entry.path()).unwrap();
                let _ = crate::decode::cloudtrail_file::decode_file(
                    &bytes,
                    &Limits::default(),
                    "t",
                    |raw| events.push(raw.json.into_owned()),
                    |_| {},
                );
            }
        }
        // CloudWatch Logs delivers each event as CloudTrail wrote it: compact. The recordings
        // are pretty-printed.
        let events: Vec<String> = events
            .iter()
            .map(|e| {
                serde_json::from_str::<serde_json::Value>(e)
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert!(events.len() >= 1000, "{} events", events.len());
        let (mut read, mut whole) = (0, 0);
        for chunk in events.chunks(50) {
            let msgs: Vec<(i64, &str)> = chunk.iter().map(|e| (1, e.as_str())).collect();
            let data = encode_envelope("1", "g", "s", "f", &msgs);
            let (result, out) = decode(&data, &Limits::default());
            assert_eq!(result.unwrap().events, chunk.len());
            assert_eq!(out.events.len(), chunk.len());
            let in_place = assert_read_agrees(&data, &Limits::default(), "p");
            read += in_place;
            whole += chunk.len() - in_place;
        }
        // The events the engine reads whole (control-plane calls, issuances, the event rules
        // names) and those with an escape in a field read: text; the rest in place.
        assert!(read > whole, "{read} read in place, {whole} as text");
    }

    /// Timestamps that are not JSON integers (found by the envelope fuzz target: leading zeros)
    /// or too long for one: the envelope is the full decoder's to judge.
    #[test]
    fn odd_timestamps_are_judged_by_the_full_decoder() {
        let whole = gunzip_text(&encode_envelope(
            "1",
            "g",
            "s",
            "f",
            &[(1722587000000, EVENT_A)],
        ));
        for odd in [
            "0000043903726",
            "-01",
            "1e3",
            "1.5",
            "12345678901234567890",
            "-",
            "00",
        ] {
            let text = whole.replace("1722587000000", odd);
            assert_ne!(text, whole);
            let _ = decode(&gz(&text), &Limits::default());
        }
    }

    /// Cut anywhere, an envelope is set aside as the full decoder sets it aside.
    #[test]
    fn an_envelope_cut_anywhere_gives_what_the_full_decoder_gives() {
        let msgs = [(1, EVENT_A), (2, EVENT_B), (3, EVENT_A)];
        let whole = gunzip_text(&encode_envelope("1", "g", "s", "f", &msgs));
        for cut in 0..whole.len() {
            if whole.is_char_boundary(cut) {
                let _ = decode(&gz(&whole[..cut]), &Limits::default());
            }
        }
    }

    fn gz(text: &str) -> Vec<u8> {
        gzip_bytes(text.as_bytes())
    }

    fn gunzip_text(data: &[u8]) -> String {
        let mut out = Vec::new();
        gzip::gunzip_capped_into(&mut Decompressor::new(), data, 64 << 20, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_data_message_gives_its_events_in_order_with_their_indices() {
        let record = encode_envelope(
            "123456789012",
            "aws-cloudtrail-logs",
            "123456789012_CloudTrail_eu-west-1",
            "credwatch",
            &[(1510109208016, EVENT_A), (1510109208017, EVENT_B)],
        );
        let (result, out) = decode(&record, &Limits::default());
        let summary = result.unwrap();
        assert_eq!(
            summary,
            EnvelopeSummary {
                message_type: MessageType::Data,
                owner: Some("123456789012".into()),
                log_group: Some("aws-cloudtrail-logs".into()),
                log_stream: Some("123456789012_CloudTrail_eu-west-1".into()),
                events: 2,
            }
        );
        assert_eq!(
            out.events,
            vec![(0, EVENT_A.to_owned()), (1, EVENT_B.to_owned())]
        );
        assert!(out.bad.is_empty());
    }

    #[test]
    fn a_control_message_gives_no_events_and_is_ok() {
        // As CloudWatch Logs sends it when a subscription is created.
        let json = r#"{"messageType":"CONTROL_MESSAGE","owner":"CloudwatchLogs","logGroup":"","logStream":"","subscriptionFilters":[],"logEvents":[{"id":"","timestamp":1432826855000,"message":"CWL CONTROL MESSAGE: Checking health of destination Kinesis stream."}]}"#;
        let (result, out) = decode(&gz(json), &Limits::default());
        let summary = result.unwrap();
        assert_eq!(summary.message_type, MessageType::Control);
        assert_eq!(summary.events, 0);
        assert_eq!(summary.owner.as_deref(), Some("CloudwatchLogs"));
        assert!(out.events.is_empty());
        assert!(out.bad.is_empty());
    }

    #[test]
    fn unknown_fields_and_field_order_are_tolerated() {
        let message = serde_json::to_string(EVENT_A).unwrap();
        let json = format!(
            r#"{{"logEvents":[{{"extra":{{"a":[1,2]}},"message":{message},"id":"1","timestamp":1}}],"newField":[null,true],"messageType":"DATA_MESSAGE","policyLevel":"ACCOUNT_LEVEL_POLICY","owner":null}}"#
        );
        let (result, out) = decode(&gz(&json), &Limits::default());
        let summary = result.unwrap();
        assert_eq!(summary.events, 1);
        assert_eq!(summary.owner, None);
        assert_eq!(out.events, vec![(0, EVENT_A.to_owned())]);
    }

    #[test]
    fn whole_record_failures_are_errors_with_the_given_position_and_no_events() {
        let event = serde_json::to_string(EVENT_A).unwrap();
        let ok_events = format!(r#"[{{"message":{event}}}]"#);
        let cases: Vec<(&str, Vec<u8>, BadKind)> = vec![
            (
                "not gzip",
                br#"{"messageType":"DATA_MESSAGE"}"#.to_vec(),
                BadKind::NotGzip,
            ),
            (
                "truncated gzip",
                {
                    let g = encode_envelope("o", "g", "s", "f", &[(1, EVENT_A)]);
                    g[..g.len() / 2].to_vec()
                },
                BadKind::TruncatedGzip,
            ),
            ("not JSON", gz("CWL is not JSON"), BadKind::NotJson),
            ("empty", gz(""), BadKind::NotJson),
            (
                "truncated JSON",
                gz(&format!(
                    r#"{{"messageType":"DATA_MESSAGE","logEvents":{ok_events}"#
                )),
                BadKind::NotJson,
            ),
            (
                "trailing data",
                gz(&format!(
                    r#"{{"messageType":"DATA_MESSAGE","logEvents":{ok_events}}} {{}}"#
                )),
                BadKind::NotJson,
            ),
            (
                "unknown messageType",
                gz(&format!(
                    r#"{{"messageType":"FUTURE_MESSAGE","logEvents":{ok_events}}}"#
                )),
                BadKind::UnknownMessageType,
            ),
            (
                "missing messageType",
                gz(&format!(r#"{{"logEvents":{ok_events}}}"#)),
                BadKind::BadEnvelope,
            ),
            (
                "data message without logEvents",
                gz(r#"{"messageType":"DATA_MESSAGE"}"#),
                BadKind::BadEnvelope,
            ),
            (
                "logEvents not an array",
                gz(r#"{"messageType":"DATA_MESSAGE","logEvents":{"message":"{}"}}"#),
                BadKind::BadEnvelope,
            ),
            (
                "messageType not a string",
                gz(&format!(r#"{{"messageType":1,"logEvents":{ok_events}}}"#)),
                BadKind::BadEnvelope,
            ),
            (
                "owner not a string",
                gz(&format!(
                    r#"{{"messageType":"DATA_MESSAGE","owner":123456789012,"logEvents":{ok_events}}}"#
                )),
                BadKind::BadEnvelope,
            ),
            (
                "duplicate logEvents",
                gz(&format!(
                    r#"{{"messageType":"DATA_MESSAGE","logEvents":{ok_events},"logEvents":{ok_events}}}"#
                )),
                BadKind::BadEnvelope,
            ),
            (
                "an array, not an envelope",
                gz(&format!("[{event}]")),
                BadKind::BadEnvelope,
            ),
        ];
        for (name, data, kind) in cases {
            let (result, out) = decode(&data, &Limits::default());
            let bad = result.expect_err(name);
            assert_eq!(bad.kind, kind, "{name}: {bad}");
            assert!(bad.position.starts_with("shardId-000000000001@"), "{name}");
            assert!(!bad.position.contains('#'), "{name}");
            assert!(bad.detail.chars().count() <= 201, "{name}");
            assert!(out.events.is_empty(), "{name}");
            assert!(out.bad.is_empty(), "{name}");
        }
    }

    #[test]
    fn a_gzip_bomb_record_is_an_error() {
        let huge = format!(
            r#"{{"messageType":"DATA_MESSAGE","logEvents":[],"pad":"{}"}}"#,
            " ".repeat(2 << 20)
        );
        let limits = Limits {
            max_decompressed_bytes: 1 << 20,
            ..Limits::default()
        };
        let (result, _) = decode(&gz(&huge), &limits);
        assert_eq!(result.unwrap_err().kind, BadKind::GzipBomb);
    }

    #[test]
    fn a_10_mb_message_is_set_aside_while_the_others_in_the_record_come_out() {
        let big = format!(
            r#"{{"eventName":"Big","pad":"{}"}}"#,
            "x".repeat(10_000_000)
        );
        let record = encode_envelope("o", "g", "s", "f", &[(1, EVENT_A), (2, &big), (3, EVENT_B)]);
        let (result, out) = decode(&record, &Limits::default());
        assert_eq!(result.unwrap().events, 2);
        assert_eq!(
            out.events,
            vec![(0, EVENT_A.to_owned()), (2, EVENT_B.to_owned())]
        );
        assert_eq!(out.bad.len(), 1);
        let bad = &out.bad[0];
        assert_eq!(bad.kind, BadKind::Oversize);
        assert!(bad.position.ends_with("#1"), "{}", bad.position);
        assert!(bad.detail.len() < 200);
    }

    #[test]
    fn broken_log_events_are_set_aside_one_by_one() {
        let a = serde_json::to_string(EVENT_A).unwrap();
        let json = format!(
            r#"{{"messageType":"DATA_MESSAGE","logEvents":[{{"id":"x"}},{{"message":{a}}},{{"message":5}},"text",{{"message":"plain text"}},{{"message":{{"eventName":"X"}}}},{{"message":{a},"message":{a}}},[1],{{"message":{a}}}]}}"#
        );
        let (result, out) = decode(&gz(&json), &Limits::default());
        assert_eq!(result.unwrap().events, 2);
        assert_eq!(
            out.events,
            vec![(1, EVENT_A.to_owned()), (8, EVENT_A.to_owned())]
        );
        let bad: Vec<(BadKind, String)> = out
            .bad
            .iter()
            .map(|b| (b.kind, b.position.rsplit('#').next().unwrap().to_owned()))
            .collect();
        let expected: Vec<(BadKind, String)> = [
            (BadKind::MissingField, 0),
            (BadKind::BadField, 2),
            (BadKind::BadField, 3),
            (BadKind::BadField, 4),
            (BadKind::BadField, 5),
            (BadKind::BadField, 6),
            (BadKind::BadField, 7),
        ]
        .into_iter()
        .map(|(k, i)| (k, i.to_string()))
        .collect();
        assert_eq!(bad, expected);
    }

    #[test]
    fn encode_envelope_round_trips_through_decode_envelope_json() {
        let messages = [(1_700_000_000_000i64, EVENT_A), (-5, EVENT_B), (0, "{}")];
        let record = encode_envelope("111122223333", "group", "stream", "filter", &messages);
        let json = gzip::gunzip_capped(&record, 1 << 20).unwrap();
        let envelope: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(envelope["subscriptionFilters"][0], "filter");
        assert_eq!(envelope["logEvents"][1]["timestamp"], -5);
        let mut events = Vec::new();
        let summary = decode_envelope_json(
            &json,
            &Limits::default(),
            "file",
            |ev| events.push(ev.json.into_owned()),
            |b| panic!("{b}"),
        )
        .unwrap();
        assert_eq!(summary.events, 3);
        assert_eq!(events, messages.map(|(_, m)| m.to_owned()));
    }

    #[test]
    fn one_scratch_decodes_many_records() {
        let mut scratch = Scratch::default();
        for n in [3usize, 1, 0, 5] {
            let messages: Vec<(i64, &str)> = (0..n).map(|i| (i as i64, EVENT_B)).collect();
            let record = encode_envelope("o", "g", "s", "f", &messages);
            let mut count = 0;
            let summary = decode_record(
                &record,
                &Limits::default(),
                "p",
                &mut scratch,
                |ev| {
                    assert_eq!(ev.json, EVENT_B);
                    count += 1;
                },
                |b| panic!("{b}"),
            )
            .unwrap();
            assert_eq!((summary.events, count), (n, n));
        }
    }

    #[test]
    fn scratch_is_send() {
        fn assert_send<T: Send + Default>() {}
        assert_send::<Scratch>();
    }

    proptest! {
        #[test]
        fn decode_record_never_panics_on_arbitrary_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..1024),
            gzipped in any::<bool>(),
        ) {
            let data = if gzipped { gzip_bytes(&bytes) } else { bytes };
            let _ = decode(&data, &Limits { max_decompressed_bytes: 4096, max_event_bytes: 64 });
        }

        #[test]
        fn decode_record_never_panics_on_json_like_text(
            text in r#"(\{|\}|\[|\]|"|:|,| |\\|messageType|DATA_MESSAGE|CONTROL_MESSAGE|logEvents|message|\{\\"a\\":1\}|null|1|true){0,60}"#,
        ) {
            let _ = decode(&gz(&text), &Limits { max_decompressed_bytes: 4096, max_event_bytes: 16 });
        }
    }

    fn gzip_bytes(bytes: &[u8]) -> Vec<u8> {
        let mut c = Compressor::new(CompressionLvl::fastest());
        let mut out = vec![0u8; c.gzip_compress_bound(bytes.len())];
        let n = c.gzip_compress(bytes, &mut out).unwrap();
        out.truncate(n);
        out
    }
}
