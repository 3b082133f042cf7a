//! Shard leases as the Kinesis Client Library v2 lays them out, and the decisions a worker makes
//! about them, as pure functions of what it has read and its own clock.
//!
//! A lease is an item keyed by `leaseKey` (the shard id) with `leaseOwner`, `leaseCounter`,
//! `checkpoint` (a sequence number, `TRIM_HORIZON`, `LATEST`, `AT_TIMESTAMP` or `SHARD_END`),
//! `checkpointSubSequenceNumber`, `ownerSwitchesSinceCheckpoint` and `parentShardIds`. Every
//! write is conditional on `leaseCounter`, and every renewal, take and checkpoint increments it.
//! A lease is expired when its counter has not moved for the lease duration *as this worker saw
//! it*: workers compare counters, never clocks, so clock skew between hosts does not matter.
//! Reference: the KCL's `DynamoDBLeaseTaker` and `DynamoDBLeaseRefresher`
//! (<https://github.com/awslabs/amazon-kinesis-client>).

use std::collections::{BTreeMap, HashMap};

pub const TRIM_HORIZON: &str = "TRIM_HORIZON";
pub const LATEST: &str = "LATEST";
pub const AT_TIMESTAMP: &str = "AT_TIMESTAMP";
pub const SHARD_END: &str = "SHARD_END";

/// One lease item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The shard id.
    pub key: String,
    pub owner: Option<String>,
    pub counter: u64,
    pub checkpoint: String,
    pub sub_sequence: u64,
    pub owner_switches: u64,
    pub parents: Vec<String>,
    /// What the owner last published of the shard's event-time watermark: the latest event
    /// time read from it, and whether it is idle (credwatch's own attributes, beside the KCL's).
    pub watermark: Option<(i64, bool)>,
}

impl Lease {
    /// A new, unowned lease for a shard.
    pub fn new(key: &str, parents: Vec<String>, checkpoint: &str) -> Lease {
        Lease {
            key: key.to_string(),
            owner: None,
            counter: 0,
            checkpoint: checkpoint.to_string(),
            sub_sequence: 0,
            owner_switches: 0,
            parents,
            watermark: None,
        }
    }

    pub fn finished(&self) -> bool {
        self.checkpoint == SHARD_END
    }

    pub fn owned_by(&self, worker: &str) -> bool {
        self.owner.as_deref() == Some(worker)
    }
}

/// When this worker last saw each lease's counter move, on its own monotonic clock (seconds).
#[derive(Debug, Default)]
pub struct LeaseClock {
    seen: HashMap<String, (u64, f64)>,
}

impl LeaseClock {
    /// Records a scan of the table made at `now`. A lease seen for the first time counts as just
    /// renewed: a worker that starts must wait a whole lease duration before it may call a lease
    /// with an owner expired.
    pub fn observe(&mut self, leases: &[Lease], now: f64) {
        let mut next = HashMap::with_capacity(leases.len());
        for l in leases {
            let at = match self.seen.get(&l.key) {
                Some(&(counter, at)) if counter == l.counter => at,
                _ => now,
            };
            next.insert(l.key.clone(), (l.counter, at));
        }
        self.seen = next;
    }

    /// Whether `lease` may be taken: it has no owner, or its counter has not moved for longer
    /// than `duration` seconds on this worker's clock.
    pub fn expired(&self, lease: &Lease, now: f64, duration: f64) -> bool {
        if lease.owner.is_none() {
            return true;
        }
        match self.seen.get(&lease.key) {
            Some(&(counter, at)) if counter == lease.counter => now - at > duration,
            _ => false,
        }
    }
}

/// Whether a shard may be read: each parent is finished (`SHARD_END`) or has no lease any more
/// (trimmed past the stream's retention).
pub fn parents_done(lease: &Lease, by_key: &HashMap<&str, &Lease>) -> bool {
    lease
        .parents
        .iter()
        .all(|p| by_key.get(p.as_str()).is_none_or(|l| l.finished()))
}

/// A conditional take this worker should attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take {
    pub key: String,
    /// The counter the write is conditional on.
    pub counter: u64,
    /// The owner it is taken from (None: unowned).
    pub from: Option<String>,
    /// Taken from a live worker that holds more than its share (not expired).
    pub steal: bool,
}

/// The leases `me` should try to take now, KCL-style:
///
/// - only shards that are not finished and whose parents are done count and can be taken;
/// - the workers are `me` and every owner of such a lease that is not expired;
/// - the target is `ceil(leases / workers)`, capped by `max_leases` (0: no cap);
/// - below target, expired and unowned leases are taken first, as many as needed;
/// - when none is expired, one lease is stolen from the most loaded worker if it holds more
///   than the target, or exactly the target while `me` is short by two or more.
pub fn plan(
    me: &str,
    leases: &[Lease],
    clock: &LeaseClock,
    now: f64,
    duration: f64,
    max_leases: usize,
) -> Vec<Take> {
    let by_key: HashMap<&str, &Lease> = leases.iter().map(|l| (l.key.as_str(), l)).collect();
    let eligible: Vec<&Lease> = leases
        .iter()
        .filter(|l| !l.finished() && parents_done(l, &by_key))
        .collect();
    if eligible.is_empty() {
        return Vec::new();
    }
    let mut load: BTreeMap<&str, usize> = BTreeMap::new();
    load.insert(me, 0);
    for l in &eligible {
        match l.owner.as_deref() {
            Some(o) if o == me => *load.entry(me).or_default() += 1,
            Some(o) if !clock.expired(l, now, duration) => *load.entry(o).or_default() += 1,
            _ => {}
        }
    }
    let mut target = eligible.len().div_ceil(load.len());
    if max_leases > 0 {
        target = target.min(max_leases);
    }
    let mine = load[me];
    if mine >= target {
        return Vec::new();
    }
    let need = target - mine;
    // Expired leases first, in an order that differs by worker so that workers starting
    // together do not all race for the same lease.
    let mut expired: Vec<&&Lease> = eligible
        .iter()
        .filter(|l| !l.owned_by(me) && clock.expired(l, now, duration))
        .collect();
    if !expired.is_empty() {
        let salt = crate::engine::store::key_of(me);
        expired.sort_by_key(|l| {
            (
                l.owner.is_some(),
                crate::engine::store::key_of_parts(&[&salt, l.key.as_bytes()]),
            )
        });
        return expired
            .into_iter()
            .take(need)
            .map(|l| Take {
                key: l.key.clone(),
                counter: l.counter,
                from: l.owner.clone(),
                steal: false,
            })
            .collect();
    }
    let Some((&victim, &most)) = load
        .iter()
        .filter(|(w, _)| **w != me)
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
    else {
        return Vec::new();
    };
    if most > target || (most == target && need > 1) {
        if let Some(l) = eligible
            .iter()
            .filter(|l| l.owned_by(victim))
            .min_by_key(|l| &l.key)
        {
            return vec![Take {
                key: l.key.clone(),
                counter: l.counter,
                from: l.owner.clone(),
                steal: true,
            }];
        }
    }
    Vec::new()
}

/// Leases to create for shards that have none. A shard with parents is read from its start
/// (`TRIM_HORIZON`) so nothing written after a reshard is skipped; others start at `initial`.
pub fn leases_to_create(
    shards: &[(String, Vec<String>)],
    existing: &[Lease],
    initial: &str,
) -> Vec<Lease> {
    let have: std::collections::HashSet<&str> = existing.iter().map(|l| l.key.as_str()).collect();
    shards
        .iter()
        .filter(|(id, _)| !have.contains(id.as_str()))
        .map(|(id, parents)| {
            let start = if parents.is_empty() {
                initial
            } else {
                TRIM_HORIZON
            };
            Lease::new(id, parents.clone(), start)
        })
        .collect()
}

/// The outcome of a renewal or checkpoint write, for the lease this worker holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Written; the lease's counter is now this.
    Renewed(u64),
    /// The condition failed: another worker took the lease (or it was released).
    Lost,
    /// The call failed (network, throttling); the lease is still held until it would expire.
    Failed,
}

/// Whether a held lease must be given up: lost, or not renewed for a whole lease duration (on
/// this worker's clock) so that another worker may already have taken it.
pub fn must_stop(renewal: Renewal, since_last_renewed: f64, duration: f64) -> bool {
    match renewal {
        Renewal::Renewed(_) => false,
        Renewal::Lost => true,
        Renewal::Failed => since_last_renewed >= duration,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(key: &str, owner: Option<&str>, counter: u64) -> Lease {
        Lease {
            owner: owner.map(str::to_string),
            counter,
            ..Lease::new(key, vec![], TRIM_HORIZON)
        }
    }

    /// `spec`: "shard:owner:counter" with owner `-` for none; `!` after the counter marks a
    /// lease whose counter has not moved for longer than the duration.
    fn table(spec: &str) -> (Vec<Lease>, LeaseClock) {
        let mut stale = Vec::new();
        let leases: Vec<Lease> = spec
            .split_whitespace()
            .map(|item| {
                let parts: Vec<&str> = item.split(':').collect();
                let owner = (parts[1] != "-").then_some(parts[1]);
                let (counter, is_stale) = match parts[2].strip_suffix('!') {
                    Some(c) => (c.parse().unwrap(), true),
                    None => (parts[2].parse().unwrap(), false),
                };
                if is_stale {
                    stale.push(parts[0].to_string());
                }
                let mut l = lease(parts[0], owner, counter);
                if parts.get(3) == Some(&"end") {
                    l.checkpoint = SHARD_END.into();
                }
                l
            })
            .collect();
        let mut clock = LeaseClock::default();
        // Seen at t=0; the fresh ones are seen again, moved, at t=100.
        clock.observe(&leases, 0.0);
        let moved: Vec<Lease> = leases
            .iter()
            .map(|l| {
                let mut l = l.clone();
                if !stale.contains(&l.key) {
                    l.counter += 1;
                }
                l
            })
            .collect();
        clock.observe(&moved, 100.0);
        (moved, clock)
    }

    fn keys(takes: &[Take]) -> Vec<(&str, bool)> {
        let mut k: Vec<(&str, bool)> = takes.iter().map(|t| (t.key.as_str(), t.steal)).collect();
        k.sort();
        k
    }

    #[test]
    fn lease_scenarios() {
        // (what, me, table, max_leases, expected takes (key, steal)), at now = 105, duration 10.
        type Case<'a> = (&'a str, &'a str, &'a str, usize, &'a [(&'a str, bool)]);
        let cases: &[Case] = &[
            (
                "first worker takes every unowned lease",
                "a",
                "s0:-:0 s1:-:0 s2:-:0 s3:-:0",
                0,
                &[("s0", false), ("s1", false), ("s2", false), ("s3", false)],
            ),
            (
                "balanced: nothing to do",
                "a",
                "s0:a:1 s1:a:1 s2:b:1 s3:b:1",
                0,
                &[],
            ),
            (
                "a new worker steals one lease at a time from the most loaded",
                "c",
                "s0:a:1 s1:a:1 s2:a:1 s3:a:1 s4:b:1 s5:b:1",
                0,
                &[("s0", true)],
            ),
            (
                "no steal when the others hold exactly the target and I am one short",
                "c",
                "s0:a:1 s1:a:1 s2:a:1 s3:b:1 s4:b:1 s5:b:1 s6:c:1 s7:c:1",
                0,
                &[],
            ),
            (
                "steal at target when two short",
                "c",
                "s0:a:1 s1:a:1 s2:b:1 s3:b:1",
                0,
                &[("s0", true)],
            ),
            (
                "a dead worker's leases are taken",
                "b",
                "s0:a:1! s1:a:1! s2:b:1 s3:c:1 s4:c:1 s5:c:1",
                0,
                &[("s0", false), ("s1", false)],
            ),
            (
                "a lease whose counter moves is not expired, however old its first sighting",
                "b",
                "s0:a:7 s1:a:7",
                0,
                &[("s0", true)],
            ),
            (
                "my own stale-looking leases are mine, not expired ones to take",
                "a",
                "s0:a:1! s1:a:1! s2:b:1",
                0,
                &[],
            ),
            (
                "finished shards are neither taken nor counted",
                "b",
                "s0:a:1 s1:-:0:end s2:-:0:end",
                0,
                &[],
            ),
        ];
        for (what, me, spec, max, expected) in cases {
            let (leases, clock) = table(spec);
            let takes = plan(me, &leases, &clock, 105.0, 10.0, *max);
            assert_eq!(keys(&takes), expected.to_vec(), "{what}: {takes:?}");
            for t in &takes {
                let l = leases.iter().find(|l| l.key == t.key).unwrap();
                assert_eq!(
                    t.counter, l.counter,
                    "{what}: conditional on the counter read"
                );
                assert_eq!(t.from, l.owner, "{what}");
            }
        }
    }

    #[test]
    fn takes_stop_at_the_target() {
        // (what, me, table, max_leases, how many takes), all of them of expired leases.
        let cases: &[(&str, &str, &str, usize, usize)] = &[
            (
                "a cap limits one worker",
                "a",
                "s0:-:0 s1:-:0 s2:-:0 s3:-:0",
                2,
                2,
            ),
            (
                "only up to the target of the live workers",
                "b",
                "s0:a:1! s1:a:1! s2:a:1! s3:c:1",
                0,
                2,
            ),
            (
                "unowned before expired",
                "b",
                "s0:a:1! s1:-:0 s2:c:1 s3:c:1",
                0,
                2,
            ),
        ];
        for (what, me, spec, max, n) in cases {
            let (leases, clock) = table(spec);
            let takes = plan(me, &leases, &clock, 105.0, 10.0, *max);
            assert_eq!(takes.len(), *n, "{what}: {takes:?}");
            assert!(takes.iter().all(|t| !t.steal), "{what}");
        }
        let (leases, clock) = table("s0:a:1! s1:-:0 s2:c:1 s3:c:1");
        let takes = plan("b", &leases, &clock, 105.0, 10.0, 0);
        assert_eq!(
            takes[0].key, "s1",
            "an unowned lease is taken before an expired one"
        );
    }

    #[test]
    fn children_wait_for_their_parents() {
        let parent = Lease {
            owner: Some("a".into()),
            counter: 3,
            ..Lease::new("p", vec![], TRIM_HORIZON)
        };
        let child = Lease::new("c", vec!["p".into()], TRIM_HORIZON);
        let orphan = Lease::new("o", vec!["gone".into()], TRIM_HORIZON);
        let mut clock = LeaseClock::default();
        let leases = vec![parent.clone(), child.clone(), orphan];
        clock.observe(&leases, 0.0);
        // The parent is being read: the child is not eligible; the orphan's parent was trimmed.
        let takes = plan("b", &leases, &clock, 1.0, 10.0, 0);
        assert_eq!(keys(&takes), vec![("o", false)]);
        // The parent reached SHARD_END: the child can be taken.
        let done = Lease {
            checkpoint: SHARD_END.into(),
            counter: 4,
            ..parent
        };
        let leases = vec![done, child];
        clock.observe(&leases, 2.0);
        let takes = plan("b", &leases, &clock, 3.0, 10.0, 0);
        assert_eq!(keys(&takes), vec![("c", false)]);
    }

    #[test]
    fn expiry_is_judged_on_this_workers_clock() {
        let mut clock = LeaseClock::default();
        let l = lease("s0", Some("a"), 5);
        clock.observe(std::slice::from_ref(&l), 1000.0);
        // First sighting: a whole duration must pass.
        assert!(!clock.expired(&l, 1005.0, 10.0));
        assert!(clock.expired(&l, 1010.5, 10.0));
        // The counter moved: the wait starts again.
        let moved = lease("s0", Some("a"), 6);
        clock.observe(std::slice::from_ref(&moved), 1009.0);
        assert!(!clock.expired(&moved, 1018.0, 10.0));
        assert!(clock.expired(&moved, 1019.5, 10.0));
        // Unowned: at once.
        assert!(clock.expired(&lease("s1", None, 9), 0.0, 10.0));
    }

    #[test]
    fn new_shards_get_leases_children_from_trim_horizon() {
        let existing = vec![lease("s0", Some("a"), 1)];
        let shards = vec![
            ("s0".to_string(), vec![]),
            ("s1".to_string(), vec![]),
            ("s2".to_string(), vec!["s0".to_string()]),
        ];
        let made = leases_to_create(&shards, &existing, LATEST);
        assert_eq!(made.len(), 2);
        assert_eq!(made[0].key, "s1");
        assert_eq!(made[0].checkpoint, LATEST);
        assert_eq!(made[1].checkpoint, TRIM_HORIZON);
        assert_eq!(made[1].parents, vec!["s0".to_string()]);
        assert!(made.iter().all(|l| l.owner.is_none() && l.counter == 0));
    }

    #[test]
    fn a_lease_is_given_up_when_lost_or_unrenewed_for_a_duration() {
        assert!(!must_stop(Renewal::Renewed(4), 50.0, 10.0));
        assert!(must_stop(Renewal::Lost, 0.0, 10.0));
        assert!(!must_stop(Renewal::Failed, 9.0, 10.0));
        assert!(must_stop(Renewal::Failed, 10.0, 10.0));
    }
}
