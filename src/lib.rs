//! credwatch: catches stolen AWS temporary credentials while they are being used.
//!
//! The pipeline is wired in [`app`]: decoders ([`decode`]) turn bytes into CloudTrail events
//! ([`event`]), the [`engine`] classifies each event's origin and credential, keeps the
//! session-origin store, runs the rules and returns [`finding::Finding`]s; [`settle`] holds a
//! candidate of a session seen from two origins until the event-time watermark says nothing that
//! could change it can still arrive.

pub mod app;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod coord;
pub mod decode;
pub mod engine;
pub mod escalation;
pub mod event;
pub mod finding;
pub mod hunt;
pub mod inventory;
pub mod kinesis;
pub mod metrics;
pub mod placement;
pub mod private;
pub mod recent;
pub mod rules;
pub mod settle;
pub mod sink;
pub mod workload;
