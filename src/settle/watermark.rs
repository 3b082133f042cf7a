//! The event-time low watermark over every shard of the stream.
//!
//! Each shard's watermark is the latest event time read from it. The stream's low watermark is
//! the minimum over the shards that can still deliver something: a shard that has returned no
//! record for `idle_secs` of wall time does not hold it back (Flink's `withIdleness`, Numaflow's
//! idle source), and a finished shard (SHARD_END) or one no longer read does not count. Shards
//! read by other workers count with the watermark their owner publishes in the lease table.
//! When every shard is idle, nothing is in flight: the low watermark is the latest event time
//! seen anywhere plus the allowed lateness, so everything seen can settle.

use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy)]
struct Mark {
    /// Latest event time read from the shard (event-time seconds).
    max_time: Option<i64>,
    /// Wall-clock second of the last record (or of when reading began).
    last_record: f64,
    /// Read by another worker: `idle` is what its owner published.
    remote_idle: Option<bool>,
}

/// Per-shard watermarks; shared by the shard tasks, the coordinator and the settler.
pub struct Watermarks {
    shards: Mutex<BTreeMap<String, Mark>>,
    idle_secs: f64,
}

/// What the settler learns from the watermarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Low {
    /// The low watermark (event-time seconds).
    pub watermark: i64,
    /// Shards that held it back (not idle), and those skipped as idle.
    pub active: usize,
    pub idle: usize,
}

impl Watermarks {
    pub fn new(idle_secs: u64) -> Watermarks {
        Watermarks {
            shards: Mutex::new(BTreeMap::new()),
            idle_secs: idle_secs as f64,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Mark>> {
        self.shards.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This worker begins reading `shard` at wall time `now`.
    pub fn start(&self, shard: &str, now: f64) {
        self.lock().insert(
            shard.to_string(),
            Mark {
                max_time: None,
                last_record: now,
                remote_idle: None,
            },
        );
    }

    /// A record was read from `shard` at wall time `now`, its latest event at `event_time`.
    pub fn record(&self, shard: &str, event_time: Option<i64>, now: f64) {
        let mut g = self.lock();
        // Per record: no key copy when the shard is known (it is, from `start`).
        if !g.contains_key(shard) {
            g.insert(
                shard.to_string(),
                Mark {
                    max_time: None,
                    last_record: now,
                    remote_idle: None,
                },
            );
        }
        let Some(m) = g.get_mut(shard) else { return };
        m.last_record = now;
        m.remote_idle = None;
        if let Some(t) = event_time {
            m.max_time = Some(m.max_time.map_or(t, |x| x.max(t)));
        }
    }

    /// `shard` no longer counts: finished (SHARD_END), or no longer read by anyone here.
    pub fn remove(&self, shard: &str) {
        self.lock().remove(shard);
    }

    /// A shard read by another worker, as its owner published it.
    pub fn remote(&self, shard: &str, watermark: Option<i64>, idle: bool) {
        let mut g = self.lock();
        let m = g.entry(shard.to_string()).or_insert(Mark {
            max_time: None,
            last_record: 0.0,
            remote_idle: Some(idle),
        });
        m.remote_idle = Some(idle);
        if let Some(t) = watermark {
            m.max_time = Some(m.max_time.map_or(t, |x| x.max(t)));
        }
    }

    /// What this worker publishes for a shard it reads: its watermark and whether it is idle.
    pub fn local(&self, shard: &str, now: f64) -> Option<(Option<i64>, bool)> {
        let g = self.lock();
        let m = g.get(shard)?;
        Some((m.max_time, now - m.last_record >= self.idle_secs))
    }

    /// The low watermark at wall time `now`; `None` while a shard that is not idle has not
    /// delivered anything yet, or no shard is known.
    pub fn low(&self, now: f64, lateness: i64) -> Option<Low> {
        let g = self.lock();
        let mut low: Option<i64> = None;
        let mut highest: Option<i64> = None;
        let (mut active, mut idle) = (0, 0);
        for m in g.values() {
            if let Some(t) = m.max_time {
                highest = Some(highest.map_or(t, |h| h.max(t)));
            }
            let is_idle = match m.remote_idle {
                Some(i) => i,
                None => now - m.last_record >= self.idle_secs,
            };
            if is_idle {
                idle += 1;
                continue;
            }
            active += 1;
            // A shard that can still deliver but has delivered nothing holds everything back.
            let t = m.max_time?;
            low = Some(low.map_or(t, |l| l.min(t)));
        }
        let watermark = match low {
            Some(l) => l,
            // Every shard idle: nothing is in flight.
            None => highest?.saturating_add(lateness),
        };
        Some(Low {
            watermark,
            active,
            idle,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_low_watermark_is_the_slowest_shard() {
        let w = Watermarks::new(10);
        w.start("a", 0.0);
        w.start("b", 0.0);
        w.record("a", Some(500), 1.0);
        assert_eq!(w.low(1.0, 60), None, "b has delivered nothing yet");
        w.record("b", Some(300), 1.0);
        w.record("a", Some(400), 2.0);
        assert_eq!(w.low(2.0, 60).map(|l| l.watermark), Some(300));
    }

    #[test]
    fn an_idle_shard_does_not_hold_the_watermark_back() {
        let w = Watermarks::new(10);
        w.start("a", 0.0);
        w.start("b", 0.0);
        w.record("a", Some(500), 1.0);
        w.record("b", Some(300), 1.0);
        w.record("a", Some(900), 12.0);
        let low = w.low(12.0, 60).unwrap();
        assert_eq!((low.watermark, low.active, low.idle), (900, 1, 1));
        // Every shard idle: everything seen settles.
        assert_eq!(w.low(30.0, 60).map(|l| l.watermark), Some(960));
    }

    #[test]
    fn a_never_read_shard_is_idle_after_idle_secs() {
        let w = Watermarks::new(5);
        w.start("a", 0.0);
        w.start("b", 0.0);
        w.record("a", Some(100), 1.0);
        assert_eq!(w.low(4.0, 0), None);
        assert_eq!(w.low(6.0, 0).map(|l| l.watermark), Some(100));
    }

    #[test]
    fn remote_shards_count_with_what_their_owner_published() {
        let w = Watermarks::new(5);
        w.start("a", 0.0);
        w.record("a", Some(1000), 1.0);
        w.remote("b", Some(700), false);
        assert_eq!(w.low(2.0, 0).map(|l| l.watermark), Some(700));
        w.remote("b", Some(700), true);
        assert_eq!(w.low(2.0, 0).map(|l| l.watermark), Some(1000));
        w.remove("b");
        assert_eq!(w.local("a", 2.0), Some((Some(1000), false)));
    }
}
