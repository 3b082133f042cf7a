//! Where the pipeline is wired: decoded event text → engine → findings, with every set-aside
//! outcome turned into a [`BadRecord`]. `hunt` (files) and `run` (Kinesis) both go through here,
//! so a record is judged the same way whichever way it arrived.
//!
//! ```text
//!  files ──decode_file──────┐                         ┌─> findings (stdout / JSON lines / webhooks)
//!                           ├─> RawEvent ─> Engine ───┤
//!  Kinesis ─decode_record_read┘  or Decoded   (shared    └─> bad records (counted, dead-lettered)
//!           (fields read in place)            DashMap)
//! ```

use crate::decode::cloudwatch_envelope::Decoded;
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
    process_event_parsed(engine, raw, None, prefix, limits)
}

/// [`process_event`] for an event that may come parsed already (`parsed`: what
/// [`crate::event::CloudTrailEvent::parse`] gives for `raw.json`, as
/// [`crate::decode::cloudtrail_file::decode_file_parsed`] hands it out): the same outcome,
/// without a second parse.
pub fn process_event_parsed(
    engine: &Engine,
    raw: &RawEvent<'_>,
    parsed: Option<&crate::event::CloudTrailEvent<'_>>,
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
    let result = match parsed {
        Some(ev) => engine.process_parsed_timed(ev, &raw.json, pos),
        None => engine.process_json_timed(&raw.json, pos),
    };
    result.map_err(|e| event_bad(e, pos))
}

/// Processes one event as [`decode_record_read`] hands it out: its text as [`process_event`]
/// does, or its fields read in place (the same outcome, without unescaping or parsing it).
///
/// [`decode_record_read`]: crate::decode::cloudwatch_envelope::decode_record_read
pub fn process_decoded(
    engine: &Engine,
    event: &Decoded<'_, '_>,
    prefix: &str,
    limits: &Limits,
) -> Result<(Vec<Finding>, i64), BadRecord> {
    match event {
        Decoded::Text(raw) => process_event(engine, raw, prefix, limits),
        // The scanner reads only messages within `max_event_bytes`.
        Decoded::Read { event, index } => {
            let pos = Position {
                prefix,
                index: *index,
            };
            engine
                .process_read_timed(event, pos)
                .map_err(|e| event_bad(e, pos))
        }
    }
}

/// An event the engine could not use, as a set-aside record.
fn event_bad(e: EventError, pos: Position<'_>) -> BadRecord {
    BadRecord {
        kind: match &e {
            EventError::NotJson(_) => BadKind::NotJson,
            EventError::MissingField(_) => BadKind::MissingField,
            EventError::BadField { .. } => BadKind::BadField,
            EventError::TimeAhead { .. } => BadKind::TimeAhead,
        },
        position: pos.to_string(),
        detail: truncate(&e.to_string(), 200),
    }
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

/// What the engine knows of addresses besides the stream: AWS's ranges (`[placement]`) and our
/// own addresses (`[inventory]`, when configured). `run` keeps the handles to refresh them.
pub struct Knowledge {
    pub placement: std::sync::Arc<crate::placement::Placement>,
    pub inventory: Option<std::sync::Arc<crate::inventory::Inventory>>,
}

impl Knowledge {
    /// Loads both once: the ranges from their URL, file or the built-in snapshot; the inventory
    /// from its file or from EC2 (every configured account and region).
    pub async fn load(cfg: &crate::config::Config) -> anyhow::Result<Knowledge> {
        use anyhow::Context;
        let placement = crate::placement::Placement::load_initial(&cfg.placement)
            .await
            .context("placement")?;
        let inventory = if cfg.inventory.enabled() {
            let inv = crate::inventory::load_initial(&cfg.inventory)
                .await
                .context("inventory")?;
            let snap = inv.snapshot();
            tracing::info!(
                resources = snap.len(),
                accounts = snap.accounts().len(),
                "inventory loaded"
            );
            Some(std::sync::Arc::new(inv))
        } else {
            None
        };
        Ok(Knowledge {
            placement: std::sync::Arc::new(placement),
            inventory,
        })
    }

    /// [`Knowledge::load`] outside a runtime (for `hunt`).
    pub fn load_blocking(cfg: &crate::config::Config) -> anyhow::Result<Knowledge> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(Knowledge::load(cfg))
    }

    /// The engine with this knowledge.
    pub fn equip(&self, mut engine: Engine) -> Engine {
        engine = engine.with_placement(self.placement.clone());
        if let Some(inv) = &self.inventory {
            engine = engine.with_inventory(inv.clone());
        }
        engine
    }

    /// Keeps both current until the process ends (`run`).
    pub fn spawn_refresh(&self, cfg: &crate::config::Config) {
        tokio::spawn(self.placement.clone().refresh_loop(cfg.placement.clone()));
        if let Some(inv) = &self.inventory {
            tokio::spawn(inv.clone().refresh_loop(cfg.inventory.clone()));
        }
    }
}
