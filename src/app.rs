//! Where the pipeline is wired: decoded event text → engine → findings, with every set-aside
//! outcome turned into a [`BadRecord`]. `hunt` (files) and `run` (Kinesis) both go through here,
//! so a record is judged the same way whichever way it arrived.
//!
//! ```text
//!  files ──decode_file──┐                         ┌─> findings (stdout / JSON lines / webhooks)
//!                       ├─> RawEvent ─> Engine ───┤
//!  Kinesis ─decode_record┘   (shared DashMap)     └─> bad records (counted, dead-lettered)
//! ```

use crate::decode::{BadKind, BadRecord, Limits, RawEvent};
use crate::engine::{Engine, Position};
use crate::event::EventError;
use crate::finding::Finding;

/// Processes one decoded event: size check, parse, detect. Returns its findings (event rules;
/// `session_token_reuse` candidates wait in the engine until they settle) and its event time.
pub fn process_event(
    engine: &Engine,
    raw: &RawEvent<'_>,
    prefix: &str,
    limits: &Limits,
) -> Result<(Vec<Finding>, i64), BadRecord> {
    let pos = Position {
        prefix,
        index: raw.index,
    };
    if raw.json.len() > limits.max_event_bytes {
        return Err(BadRecord {
            kind: BadKind::Oversize,
            position: pos.to_string(),
            detail: format!(
                "event of {} bytes is over input.max_event_bytes = {}",
                raw.json.len(),
                limits.max_event_bytes
            ),
        });
    }
    engine
        .process_json_timed(&raw.json, pos)
        .map_err(|e| BadRecord {
            kind: match &e {
                EventError::NotJson(_) => BadKind::NotJson,
                EventError::MissingField(_) => BadKind::MissingField,
                EventError::BadField { .. } => BadKind::BadField,
            },
            position: pos.to_string(),
            detail: truncate(&e.to_string(), 200),
        })
}

/// Shortens a message for logs and dead-letter lines.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
