//! Batching under the service limits, with no I/O: PutLogEvents batches per log stream,
//! subscription envelopes per log stream, PutRecords calls.
//!
//! Limits:
//! - PutLogEvents: at most 10,000 events and 1,048,576 bytes (the messages' UTF-8 bytes plus 26
//!   bytes per event), events in time order, spanning at most 24 hours:
//!   <https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/API_PutLogEvents.html>
//! - PutRecords: at most 500 records and 5 MiB per call (data plus partition keys), 1 MiB per
//!   record: <https://docs.aws.amazon.com/kinesis/latest/APIReference/API_PutRecords.html>

use std::collections::BTreeMap;

pub const LOGS_MAX_EVENTS: usize = 10_000;
pub const LOGS_MAX_BYTES: usize = 1_048_576;
pub const LOGS_EVENT_OVERHEAD: usize = 26;
pub const LOGS_MAX_SPAN_MS: i64 = 24 * 3600 * 1000;
/// The largest message of one log event (256 KiB with its overhead).
pub const LOGS_MAX_MESSAGE_BYTES: usize = 262_144 - LOGS_EVENT_OVERHEAD;
pub const KINESIS_MAX_RECORDS: usize = 500;
pub const KINESIS_MAX_CALL_BYTES: usize = 5 * 1024 * 1024;
pub const KINESIS_MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Envelopes are closed before their JSON passes this size, so the gzip'd record stays well
/// under [`KINESIS_MAX_RECORD_BYTES`].
pub const ENVELOPE_MAX_RAW_BYTES: usize = 900 * 1024;

/// One log event to send: (log-event timestamp in ms, index of the loaded event).
pub type Item = (i64, u32);

#[derive(Debug, Default)]
struct Pending {
    items: Vec<Item>,
    bytes: usize,
}

/// Accumulates events per log stream into groups bounded by a count, a byte size (message bytes
/// plus a per-event overhead) and a time span.
#[derive(Debug)]
pub struct Grouper {
    pending: BTreeMap<u32, Pending>,
    max_items: usize,
    max_bytes: usize,
    overhead: usize,
    max_span_ms: i64,
}

impl Grouper {
    /// PutLogEvents batches.
    pub fn log_batches() -> Grouper {
        Grouper {
            pending: BTreeMap::new(),
            max_items: LOGS_MAX_EVENTS,
            max_bytes: LOGS_MAX_BYTES,
            overhead: LOGS_EVENT_OVERHEAD,
            max_span_ms: LOGS_MAX_SPAN_MS,
        }
    }

    /// Subscription envelopes of at most `max_events` log events.
    pub fn envelopes(max_events: usize) -> Grouper {
        Grouper {
            pending: BTreeMap::new(),
            max_items: max_events.max(1),
            max_bytes: ENVELOPE_MAX_RAW_BYTES,
            // `{"id":"…56 digits…","timestamp":…,"message":…}` plus escaping, roughly.
            overhead: 100,
            max_span_ms: i64::MAX,
        }
    }

    /// Adds an event of `len` message bytes to `stream`'s group. When the event would not fit,
    /// the group so far is returned (to send first) and the event starts a new group.
    pub fn push(&mut self, stream: u32, item: Item, len: usize) -> Option<(u32, Vec<Item>)> {
        let p = self.pending.entry(stream).or_default();
        let size = len + self.overhead;
        let full = !p.items.is_empty()
            && (p.items.len() >= self.max_items
                || p.bytes + size > self.max_bytes
                || item.0 - p.items[0].0 > self.max_span_ms);
        let out = full.then(|| (stream, std::mem::take(&mut p.items)));
        if full {
            p.bytes = 0;
        }
        p.items.push(item);
        p.bytes += size;
        out
    }

    /// The groups whose first event is more than `span_ms` older than `ts` (the time of the
    /// event being replayed), in stream order: a log stream's batch goes out once time has
    /// moved on, as CloudTrail delivers each log stream every few minutes rather than at the end.
    pub fn due(&mut self, ts: i64, span_ms: i64) -> Vec<(u32, Vec<Item>)> {
        let mut out = Vec::new();
        for (s, p) in self.pending.iter_mut() {
            if p.items.first().is_some_and(|f| ts - f.0 > span_ms) {
                p.bytes = 0;
                out.push((*s, std::mem::take(&mut p.items)));
            }
        }
        out
    }

    /// Every group still pending, in stream order.
    pub fn drain(&mut self) -> Vec<(u32, Vec<Item>)> {
        std::mem::take(&mut self.pending)
            .into_iter()
            .filter(|(_, p)| !p.items.is_empty())
            .map(|(s, p)| (s, p.items))
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.values().all(|p| p.items.is_empty())
    }
}

/// A Kinesis record: a gzip'd envelope, its partition key and the events it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub data: Vec<u8>,
    pub key: String,
    /// Log stream index of the envelope.
    pub stream: u32,
    pub items: Vec<Item>,
}

impl Record {
    pub fn size(&self) -> usize {
        self.data.len() + self.key.len()
    }
}

/// Accumulates records into PutRecords calls.
#[derive(Debug, Default)]
pub struct CallBatcher {
    records: Vec<Record>,
    bytes: usize,
}

impl CallBatcher {
    /// Adds a record; returns a full call to send first when it would not fit.
    pub fn push(&mut self, record: Record) -> Option<Vec<Record>> {
        let size = record.size();
        let out = (!self.records.is_empty()
            && (self.records.len() >= KINESIS_MAX_RECORDS
                || self.bytes + size > KINESIS_MAX_CALL_BYTES))
            .then(|| {
                self.bytes = 0;
                std::mem::take(&mut self.records)
            });
        self.records.push(record);
        self.bytes += size;
        out
    }

    pub fn drain(&mut self) -> Option<Vec<Record>> {
        self.bytes = 0;
        (!self.records.is_empty()).then(|| std::mem::take(&mut self.records))
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_batches_close_at_ten_thousand_events() {
        let mut g = Grouper::log_batches();
        let mut out = Vec::new();
        for i in 0..25_000u32 {
            if let Some(b) = g.push(1, (i64::from(i), i), 10) {
                out.push(b);
            }
        }
        out.extend(g.drain());
        let sizes: Vec<usize> = out.iter().map(|(_, b)| b.len()).collect();
        assert_eq!(sizes, vec![10_000, 10_000, 5_000]);
        let all: Vec<u32> = out
            .iter()
            .flat_map(|(_, b)| b.iter().map(|x| x.1))
            .collect();
        assert_eq!(all, (0..25_000).collect::<Vec<_>>(), "order kept");
    }

    #[test]
    fn log_batches_close_at_one_mebibyte_with_26_bytes_per_event() {
        let mut g = Grouper::log_batches();
        // 1,048,576 / (1000 + 26) = 1022.0: 1022 events fit (1,048,572 bytes).
        let mut first = None;
        for i in 0..2000u32 {
            if let Some(b) = g.push(0, (0, i), 1000) {
                first.get_or_insert(b);
            }
        }
        let (_, b) = first.expect("a batch closed");
        assert_eq!(b.len(), 1022);
        assert!(b.len() * 1026 <= LOGS_MAX_BYTES);
    }

    #[test]
    fn log_batches_span_at_most_24_hours_and_streams_are_separate() {
        let mut g = Grouper::log_batches();
        assert!(g.push(0, (0, 0), 10).is_none());
        assert!(g.push(1, (0, 1), 10).is_none());
        assert!(g.push(0, (LOGS_MAX_SPAN_MS, 2), 10).is_none());
        let (s, b) = g
            .push(0, (LOGS_MAX_SPAN_MS + 1, 3), 10)
            .expect("span closes");
        assert_eq!(
            (s, b.iter().map(|x| x.1).collect::<Vec<_>>()),
            (0, vec![0, 2])
        );
        let rest = g.drain();
        assert_eq!(
            rest,
            vec![(0, vec![(LOGS_MAX_SPAN_MS + 1, 3)]), (1, vec![(0, 1)])]
        );
        assert!(g.is_empty());
    }

    #[test]
    fn groups_fall_due_once_time_has_moved_past_their_span() {
        let mut g = Grouper::log_batches();
        assert!(g.push(0, (0, 0), 10).is_none());
        assert!(g.push(1, (50_000, 1), 10).is_none());
        assert!(g.due(60_000, 60_000).is_empty());
        assert_eq!(g.due(60_001, 60_000), vec![(0, vec![(0, 0)])]);
        assert_eq!(g.drain(), vec![(1, vec![(50_000, 1)])]);
    }

    #[test]
    fn envelopes_hold_at_most_n_events() {
        let mut g = Grouper::envelopes(3);
        let mut out = Vec::new();
        for i in 0..7u32 {
            out.extend(g.push(0, (0, i), 10));
        }
        out.extend(g.drain());
        let sizes: Vec<usize> = out.iter().map(|(_, b)| b.len()).collect();
        assert_eq!(sizes, vec![3, 3, 1]);
    }

    #[test]
    fn calls_hold_at_most_500_records_and_5_mib() {
        let rec = |n: usize| Record {
            data: vec![0; n],
            key: "k".into(),
            stream: 0,
            items: vec![],
        };
        let mut c = CallBatcher::default();
        let mut calls = Vec::new();
        for _ in 0..1200 {
            calls.extend(c.push(rec(10)));
        }
        calls.extend(c.drain());
        assert_eq!(
            calls.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![500, 500, 200]
        );

        let mut c = CallBatcher::default();
        let mut calls = Vec::new();
        for _ in 0..12 {
            calls.extend(c.push(rec(1024 * 1024 - 1)));
        }
        calls.extend(c.drain());
        assert_eq!(
            calls.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![5, 5, 2]
        );
        assert!(c.is_empty());
    }
}
