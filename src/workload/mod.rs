//! Workloads for testing credwatch end to end: replay recorded CloudTrail, generate a synthetic
//! workload with its ground truth, and score findings against that truth.
//!
//! - [`generate`] (`credwatch generate`): a seeded synthetic CloudTrail workload written as
//!   CloudTrail S3 log objects, with `truth.json` (what is an attack, what is benign) and the
//!   `credwatch.toml` the benign kinds need. Same seed, same bytes.
//! - [`replay`] (`credwatch replay`): sends CloudTrail files (any format `hunt` reads) through
//!   CloudWatch Logs `PutLogEvents` (the real path) or straight into Kinesis `PutRecords` as
//!   subscription envelopes (the fast path), paced, retried, with a summary and a sent-log for
//!   detection latency.
//! - [`score`] (`credwatch score`): precision and recall per attack kind, false positives by
//!   benign kind, detection delays.
//! - [`truth`]: the ground-truth file format shared by the three.

pub mod generate;
pub mod replay;
mod rng;
pub mod score;
pub mod truth;

pub use rng::Rng;

/// Exit status: the command completed.
const EXIT_OK: i32 = 0;
/// Exit status: an error stopped the command.
const EXIT_ERROR: i32 = 2;

/// Milliseconds since the epoch, wall clock.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Formats milliseconds since the epoch as RFC 3339 UTC with milliseconds.
pub(crate) fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

/// Parses RFC 3339 into milliseconds since the epoch.
pub(crate) fn parse_ms(raw: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(raw)
        .ok()
        .map(|t| t.timestamp_millis())
}
