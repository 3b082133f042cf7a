//! Settling: a `session_token_reuse` candidate becomes a finding only when nothing that could
//! change it can still arrive.
//!
//! Kinesis orders records only within a shard, so the call that explains a new origin (an
//! `AssociateAddress`, a `StartInstances`) or an earlier home may arrive after the use it
//! explains. The engine therefore keeps, for every session that has been seen from more than
//! one origin (a *contest*), the earliest event from each origin (a *sighting*), and judges a
//! sighting only when the event-time low watermark over every shard has passed its time plus
//! `detection.allowed_lateness_secs` (or it has been held `max_hold_secs` of wall time).
//!
//! The judgement is a function of the set of events, not of their order:
//! - the home is the session's earliest sighting (a Lambda session's earliest runtime call,
//!   when there is one);
//! - every other origin is judged at its earliest event, in time order: explained when the
//!   instance book credits the address by a call not later than that event; explained when
//!   the instance restarted after the home's first event and this origin is the first new one
//!   since that restart; otherwise a finding (home, this origin).
//!
//! So `run` (whatever order shards deliver in) and `hunt` (settling everything at the end) give
//! the same findings with the same ids and evidence. Event rules (one event, no window) do not
//! come here: they are reported at once.

pub mod watermark;

use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

use crate::engine::credential::CredentialClass;
use crate::engine::origin::OriginClass;
use crate::engine::place::{Place, Workload};
use crate::engine::store::{key_of_parts, value_of, HomeEvidence, HomeTag, Key, Map};
use crate::engine::{Engine, Explanation};
use crate::event::format_time;
use crate::finding::{finding_id, Claim, EventEvidence, ExceptionCheck, Finding, Severity};
use crate::rules::session_token_reuse::{value_text, RULE};
use crate::rules::workload_outside_aws::{self, Candidate};

/// The most origins remembered per contested session.
pub const MAX_SIGHTINGS: usize = 32;

/// The earliest event seen from one origin of a contested session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sighting {
    /// The compared origin value (IPv6 masked to the configured prefix).
    pub value: String,
    pub tag: HomeTag,
    pub time: i64,
    pub evidence: EventEvidence,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Wall-clock second it arrived here (for `max_hold_secs`).
    pub arrived: i64,
    pub expires: i64,
}

/// A session seen from more than one origin, waiting to be settled.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Contest {
    pub session_key: String,
    pub session_display: String,
    pub credential_class: String,
    pub instance_id: Option<String>,
    pub role: Option<String>,
    pub account_id: Option<String>,
    pub principal_arn: Option<String>,
    pub sightings: Vec<Sighting>,
    /// Origin values already judged (their outcome is final).
    pub decided: Vec<String>,
}

impl Contest {
    /// Adds a sighting, keeping the earliest event per origin (ties broken by event id), so the
    /// contest holds the same sightings whatever order its events arrived in.
    pub fn sight(&mut self, s: Sighting) {
        if let Some(cur) = self.sightings.iter_mut().find(|x| x.value == s.value) {
            if (s.time, &s.evidence.event_id) < (cur.time, &cur.evidence.event_id) {
                let arrived = cur.arrived.min(s.arrived);
                *cur = Sighting { arrived, ..s };
            }
            return;
        }
        if self.sightings.len() < MAX_SIGHTINGS {
            self.sightings.push(s);
        }
    }

    fn expires(&self) -> i64 {
        self.sightings.iter().map(|s| s.expires).max().unwrap_or(0)
    }
}

/// Counters for the metrics layer.
#[derive(Default)]
pub struct SettleStats {
    /// Candidates turned into findings, by how: the watermark passed, or `max_hold_secs`.
    pub settled: AtomicU64,
    pub released_early: AtomicU64,
    /// Candidates a later credit, restart or earlier home explained before they were final.
    pub withdrawn: AtomicU64,
    /// Sightings that arrived after the watermark had already passed them.
    pub late: AtomicU64,
}

/// The contested sessions, shared by every consumer task.
#[derive(Default)]
pub struct Pending {
    contests: Map<Contest>,
    /// Outside-AWS uses of assumed-role keys, waiting for a possible issuance.
    outside: Map<Candidate>,
    /// The last watermark candidates were settled against (event time, seconds).
    settled_at: AtomicI64,
    pub stats: SettleStats,
}

/// What the watermark and the wall clock allow when settling.
#[derive(Debug, Clone, Copy)]
pub struct SettleAt {
    /// The event-time low watermark over every shard (`i64::MAX`: everything has arrived).
    pub watermark: i64,
    /// Wall-clock seconds, for `max_hold_secs` (`None`: never release early, as in `hunt`).
    pub now: Option<i64>,
}

impl SettleAt {
    /// Everything has arrived (the end of a hunt).
    pub const END: SettleAt = SettleAt {
        watermark: i64::MAX,
        now: None,
    };
}

impl Pending {
    pub fn len(&self) -> usize {
        self.contests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.contests.is_empty() && self.outside.is_empty()
    }

    /// Holds an outside-AWS use of a key whose issuance may still arrive (the earliest event
    /// per key and address).
    pub fn hold_outside(&self, c: Candidate) {
        let key = key_of_parts(&[c.access_key_id.as_bytes(), c.addr.to_string().as_bytes()]);
        self.outside
            .entry(key)
            .and_modify(|cur| {
                if (c.time, &c.evidence.event_id) < (cur.time, &cur.evidence.event_id) {
                    let arrived = cur.arrived.min(c.arrived);
                    *cur = Candidate {
                        arrived,
                        ..c.clone()
                    };
                }
            })
            .or_insert_with(|| c.clone());
    }

    /// Whether an outside-AWS use of this key from this address, not later than `t`, is held.
    pub fn holds_outside_before(&self, access_key_id: &str, addr: &str, t: i64) -> bool {
        let key = key_of_parts(&[access_key_id.as_bytes(), addr.as_bytes()]);
        self.outside.get(&key).is_some_and(|c| c.time <= t)
    }

    pub fn outside_snapshot(&self) -> Vec<Candidate> {
        let mut v: Vec<Candidate> = self.outside.iter().map(|e| e.value().clone()).collect();
        v.sort_by(|a, b| (a.time, &a.evidence.event_id).cmp(&(b.time, &b.evidence.event_id)));
        v
    }

    pub fn restore_outside(&self, v: &[Candidate]) {
        for c in v {
            self.hold_outside(c.clone());
        }
    }

    /// Sightings still waiting for the watermark (and held outside-AWS uses).
    pub fn waiting(&self) -> usize {
        self.outside.len()
            + self
                .contests
                .iter()
                .map(|c| {
                    c.sightings
                        .iter()
                        .filter(|s| !c.decided.contains(&s.value))
                        .count()
                        .saturating_sub(1)
                })
                .sum::<usize>()
    }

    pub fn is_contested(&self, key: Key) -> bool {
        self.contests.contains_key(&key)
    }

    /// Adds a sighting to a contested session; false when the session is not contested.
    pub fn sight(&self, key: Key, s: Sighting, lateness: i64) -> bool {
        match self.contests.get_mut(&key) {
            Some(mut c) => {
                self.count_late(&s, lateness);
                c.sight(s);
                true
            }
            None => false,
        }
    }

    /// Opens (or adds to) the contest of a session with its two sightings.
    pub fn contest(&self, key: Key, base: Contest, a: Sighting, b: Sighting, lateness: i64) {
        self.count_late(&b, lateness);
        let mut c = self.contests.entry(key).or_insert(base);
        c.sight(a);
        c.sight(b);
    }

    fn count_late(&self, s: &Sighting, lateness: i64) {
        let w = self.settled_at.load(Relaxed);
        if w > 0 && s.time.saturating_add(lateness) < w {
            self.stats.late.fetch_add(1, Relaxed);
        }
    }

    /// The watermark of the last settle pass.
    pub fn settled_at(&self) -> i64 {
        self.settled_at.load(Relaxed)
    }

    /// Drops contests whose sessions expired before `now`, once they hold nothing undecided.
    pub fn sweep(&self, now: i64) {
        self.contests.retain(|_, c| {
            c.expires() >= now
                || c.sightings
                    .iter()
                    .skip(1)
                    .any(|s| !c.decided.contains(&s.value))
        });
    }

    pub fn snapshot(&self) -> Vec<(u64, Contest)> {
        self.contests
            .iter()
            .map(|e| (u64::from_le_bytes(*e.key()), e.value().clone()))
            .collect()
    }

    pub fn restore(&self, contests: &[(u64, Contest)]) {
        for (k, c) in contests {
            self.contests.insert(k.to_le_bytes(), c.clone());
        }
    }
}

/// Findings in event-time order (then by id), whatever the maps' order: the same events give
/// the same output, with any number of threads or shards.
fn in_order(mut found: Vec<Finding>) -> Vec<Finding> {
    found.sort_by(|a, b| (&a.event_time, &a.id).cmp(&(&b.event_time, &b.id)));
    found
}

/// One origin's judgement.
enum Verdict {
    /// Explained, with the counted exception (none for a restart) and the reason.
    Explained(Option<Explanation>, String),
    Finding,
}

impl Engine {
    /// Settles every contested session against `at`: returns the findings that became final.
    pub fn settle(&self, at: SettleAt) -> Vec<Finding> {
        let pending = &self.pending;
        if at.watermark != i64::MAX {
            pending.settled_at.fetch_max(at.watermark, Relaxed);
        }
        if pending.is_empty() {
            return vec![];
        }
        let lateness = self.cfg.detection.allowed_lateness_secs as i64;
        let max_hold = self.cfg.detection.max_hold_secs as i64;
        let is_final = |s: &Sighting, later: i64| {
            at.watermark == i64::MAX
                || at.watermark >= later.saturating_add(lateness)
                || at.now.is_some_and(|now| now - s.arrived >= max_hold)
        };
        let mut out = self.settle_outside(at, lateness, max_hold);
        // Keys first: no map lock is held while judging (the judge reads the other maps, and
        // with several workers, the shared control-plane log).
        let ready: Vec<Key> = pending
            .contests
            .iter()
            .filter(|c| {
                // Cheap, since it runs for every contest on every pass: the home is never
                // decided, so a contest with one undecided sighting has nothing to judge. Not
                // later than the home's time (the home skips credited sightings): a contest
                // picked too early is harmless, `judge` checks every sighting again.
                let undecided = || c.sightings.iter().filter(|s| !c.decided.contains(&s.value));
                if undecided().nth(1).is_none() {
                    return false;
                }
                let home_time = first_sighting(c).map_or(i64::MIN, |h| h.time);
                undecided().any(|s| is_final(s, s.time.max(home_time)))
            })
            .map(|c| *c.key())
            .collect();
        if ready.is_empty() {
            return in_order(out);
        }
        if self.authority.is_some() && self.sync_control() > 0 {
            tracing::debug!("read shared control-plane events before settling");
        }
        for key in ready {
            self.refresh_home(key);
            let Some(mut c) = pending.contests.get(&key).map(|c| c.clone()) else {
                continue;
            };
            let decided_before = c.decided.len();
            self.judge(key, &mut c, at, lateness, &is_final, &mut out);
            if c.decided.len() != decided_before {
                if let Some(mut cur) = pending.contests.get_mut(&key) {
                    for v in &c.decided {
                        if !cur.decided.contains(v) {
                            cur.decided.push(v.clone());
                        }
                    }
                }
            }
        }
        in_order(out)
    }

    /// Judges the held outside-AWS uses whose issuance, if any, has surely arrived: a key
    /// issued to a workload gives a finding; any other was an ordinary assumed role's.
    fn settle_outside(&self, at: SettleAt, lateness: i64, max_hold: i64) -> Vec<Finding> {
        if self.pending.outside.is_empty() {
            return vec![];
        }
        let ready: Vec<Key> = self
            .pending
            .outside
            .iter()
            .filter(|c| {
                at.watermark == i64::MAX
                    || at.watermark >= c.time.saturating_add(lateness)
                    || at.now.is_some_and(|now| now - c.arrived >= max_hold)
            })
            .map(|c| *c.key())
            .collect();
        let mut out = Vec::new();
        for key in ready {
            let Some((_, c)) = self.pending.outside.remove(&key) else {
                continue;
            };
            let Some(issued) = self.issuance.get(&c.access_key_id) else {
                continue;
            };
            if let Some(mut f) =
                workload_outside_aws::finding(self, &c, issued.class.class(), Some(&issued), false)
            {
                self.fill_places(&mut f);
                out.push(f);
            }
        }
        out
    }

    /// With a shared store: the session's earliest event may have been read by another worker
    /// after this contest opened (the watermark says it has been read by now). Proposes this
    /// contest's home again, which changes nothing while it is still the session's first origin,
    /// and adds the authority's home to the contest when that is another, earlier event (or a
    /// Lambda runtime call), so that every worker judges against the same home.
    fn refresh_home(&self, key: Key) {
        let Some(auth) = self.authority.as_deref() else {
            return;
        };
        let Some((c, home)) = self
            .pending
            .contests
            .get(&key)
            .map(|c| c.clone())
            .and_then(|c| self.home_of(&c).cloned().map(|h| (c, h)))
        else {
            return;
        };
        // A home this engine's clock has seen expire may have been followed by a newer session
        // in the shared store: do not propose it over that one.
        if home.expires < self.watermark() {
            return;
        }
        let class = CredentialClass::ALL
            .iter()
            .position(|k| k.as_str() == c.credential_class)
            .unwrap_or(0) as u8;
        let proposal = HomeEvidence {
            tag: home.tag,
            origin: if home.tag == HomeTag::LambdaRuntime {
                "lambda-runtime".to_string()
            } else {
                home.value
                    .strip_prefix("o:")
                    .unwrap_or(&home.value)
                    .to_string()
            },
            event_id: home.evidence.event_id.clone(),
            time: home.time,
            user_agent: home.evidence.user_agent.clone(),
            class,
            expires: home.expires,
            event_source: home.evidence.event_source.clone(),
            event_name: home.evidence.event_name.clone(),
            access_key_id: home
                .evidence
                .access_key_id
                .clone()
                .filter(|k| *k != c.session_key),
            error_code: home.error_code.clone(),
        };
        self.stats.authority_calls.fetch_add(1, Relaxed);
        let runtime = home.tag == HomeTag::LambdaRuntime;
        let answer = match auth.propose(&c.session_key, &proposal, runtime) {
            Ok(a) => a,
            Err(e) => {
                self.stats.authority_errors.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "shared session store unreachable; settling on the local view");
                return;
            }
        };
        let h = answer.current;
        let same_session = h.expires >= home.time && h.time <= home.expires;
        if h.event_id == home.evidence.event_id || !same_session {
            return;
        }
        let keyed = c.instance_id.is_none().then_some(c.session_key.as_str());
        let s = sighting_of_home(&h, value_text(value_of(&h).as_ref()), keyed, wall_now());
        if let Some(mut cur) = self.pending.contests.get_mut(&key) {
            cur.sight(s);
        }
    }

    fn judge(
        &self,
        key: Key,
        c: &mut Contest,
        at: SettleAt,
        lateness: i64,
        is_final: &dyn Fn(&Sighting, i64) -> bool,
        out: &mut Vec<Finding>,
    ) {
        let Some(sev) = self.rules.get(RULE) else {
            return;
        };
        let mut order: Vec<Sighting> = c.sightings.clone();
        order.sort_by(|a, b| (a.time, &a.evidence.event_id).cmp(&(b.time, &b.evidence.event_id)));
        let Some(home) = self.home_of(c).cloned() else {
            return;
        };
        let lambda = home.tag == HomeTag::LambdaRuntime;
        let mut restarts_used: Vec<i64> = Vec::new();
        let mut dual_stack_used = false;
        for s in order.iter().filter(|s| s.value != home.value) {
            let later = s.time.max(home.time);
            if !is_final(s, later) {
                if lambda {
                    continue;
                }
                // Later origins depend on this one (a restart explains only the first).
                break;
            }
            let verdict = if lambda {
                Verdict::Finding
            } else {
                self.verdict(c, &home, s, &mut restarts_used, &mut dual_stack_used)
            };
            if c.decided.contains(&s.value) {
                continue;
            }
            c.decided.push(s.value.clone());
            match verdict {
                Verdict::Explained(how, detail) => {
                    self.pending.stats.withdrawn.fetch_add(1, Relaxed);
                    if let Some(how) = how {
                        self.stats.explained(how);
                    }
                    self.store.add_explained(
                        key,
                        s.evidence.origin.clone(),
                        detail,
                        s.time,
                        s.expires,
                    );
                }
                Verdict::Finding => {
                    let released =
                        at.watermark != i64::MAX && at.watermark < later.saturating_add(lateness);
                    if let Some(f) = self.finding(key, c, &home, s, lambda, sev, released, at) {
                        if released {
                            self.pending.stats.released_early.fetch_add(1, Relaxed);
                        } else {
                            self.pending.stats.settled.fetch_add(1, Relaxed);
                        }
                        out.push(f);
                    }
                }
            }
        }
    }

    fn verdict(
        &self,
        c: &Contest,
        home: &Sighting,
        s: &Sighting,
        restarts_used: &mut Vec<i64>,
        dual_stack_used: &mut bool,
    ) -> Verdict {
        if let Some(owner) = self.own_owner(c, s) {
            return Verdict::Explained(
                Some(Explanation::Inventory),
                format!("{} is {owner}", s.evidence.origin),
            );
        }
        let Some(instance) = c.instance_id.as_deref() else {
            return Verdict::Finding;
        };
        // A dual-stack instance the inventory does not know yet (launched since the last
        // refresh): at home in its VPC's IPv6 block, its first IPv4 origin in EC2's ranges is
        // its own public address, which the next refresh will list.
        if !*dual_stack_used && self.dual_stack_partner(c, home, s) {
            *dual_stack_used = true;
            return Verdict::Explained(
                Some(Explanation::Inventory),
                format!(
                    "{instance} is not in the inventory yet and is at home in its VPC's IPv6 block ({}): its first IPv4 origin in AWS's EC2 ranges ({}) is taken as its public address",
                    home.evidence.origin, s.evidence.origin
                ),
            );
        }
        if let Ok(addr) = s.evidence.origin.parse::<IpAddr>() {
            if let Some(call) = self.instances.credit_for(instance, addr, s.time) {
                return Verdict::Explained(
                    Some(Explanation::InstanceAddress),
                    format!("{addr} was given to {instance} by {call}"),
                );
            }
        }
        // A restart after the home's first event explains the first new origin after it.
        let mut after = home.time;
        while let Some(r) = self.instances.reset_between(instance, after, s.time) {
            if !restarts_used.contains(&r) {
                restarts_used.push(r);
                return Verdict::Explained(
                    None,
                    format!(
                        "{instance} was restarted at {} (StartInstances/RunInstances); first new origin since",
                        format_time(r)
                    ),
                );
            }
            after = r;
        }
        Verdict::Finding
    }

    #[allow(clippy::too_many_arguments)]
    fn finding(
        &self,
        key: Key,
        c: &Contest,
        home: &Sighting,
        s: &Sighting,
        lambda: bool,
        sev: Severity,
        released: bool,
        at: SettleAt,
    ) -> Option<Finding> {
        // Evidence in time order: the earlier event first.
        let (first, second) = if home.time <= s.time || !lambda {
            (home, s)
        } else {
            (s, home)
        };
        let outside = &s.evidence.origin;
        let dedup = key_of_parts(&[
            RULE.as_bytes(),
            c.session_key.as_bytes(),
            outside.as_bytes(),
        ]);
        let expires = home.expires.max(s.expires);
        if !self.store.mark_reported(dedup, expires) {
            self.stats.suppressed.fetch_add(1, Relaxed);
            return None;
        }
        let mut checks = Vec::new();
        let outside_class = OriginClass::parse(&s.evidence.origin_kind);
        let s_place = self.place_of_sighting(c, s);
        let h_place = self.place_of_sighting(c, home);
        let in_words =
            |p: &Option<Place>| p.as_ref().map(|p| format!(" ({p})")).unwrap_or_default();
        // The home by event time is itself outside AWS, and the other origin is in AWS: the
        // first origin is the suspicious one (the thief called first).
        let first_suspicious = !lambda
            && home.time <= s.time
            && h_place.as_ref().is_some_and(Place::is_outside_aws)
            && s_place
                .as_ref()
                .is_some_and(|p| matches!(p, Place::Aws(_) | Place::Ours { .. }));
        let mut sev = sev;
        let suspicious = if first_suspicious {
            home.evidence.origin.clone()
        } else {
            outside.clone()
        };
        let title = if lambda {
            let markers = self.cfg.detection.lambda_user_agent_markers.join(", ");
            checks.push(ExceptionCheck {
                exception: Explanation::LambdaRuntime.as_str().into(),
                applied: false,
                detail: format!(
                    "the call from {outside} carries none of the Lambda runtime markers ({markers})"
                ),
            });
            format!(
                "Lambda credentials of {} used outside the Lambda runtime, from {outside}",
                c.session_display
            )
        } else if first_suspicious {
            format!(
                "{} first seen from {} outside AWS, then from {}{}: the first origin is the suspicious one",
                c.session_display, home.evidence.origin, outside, in_words(&s_place)
            )
        } else if s.time < home.time {
            format!(
                "{} used from {}{} before its own origin {}{}",
                c.session_display,
                outside,
                in_words(&s_place),
                home.evidence.origin,
                in_words(&h_place)
            )
        } else {
            let since = format!(
                "home {} since {}",
                home.evidence.origin, home.evidence.event_time
            );
            match &s_place {
                Some(Place::OutsideAws) => format!(
                    "{} used from outside AWS, from {outside} ({since})",
                    c.session_display
                ),
                Some(Place::Aws(r)) => format!(
                    "{} used from {outside} in AWS ({} {}), {} ({since})",
                    c.session_display,
                    r.service,
                    r.region,
                    if self.inventory_on() {
                        "not ours: another account's"
                    } else {
                        "not known as ours"
                    }
                ),
                Some(Place::Ours { owner, .. }) => {
                    sev = sev.lowered();
                    format!(
                        "{} used from {outside}, ours but another workload's ({owner}): a pivot within the organisation ({since})",
                        c.session_display
                    )
                }
                _ => format!(
                    "{} used from a second origin {} ({since})",
                    c.session_display, outside
                ),
            }
        };
        // A session with a Lambda runtime home is a Lambda's, whichever event opened the contest.
        let class = if lambda {
            CredentialClass::Lambda.as_str()
        } else {
            c.credential_class.as_str()
        };
        let addr: Option<IpAddr> = outside.parse().ok();
        if outside_class != OriginClass::AwsService {
            checks.extend(self.origin_checks(outside_class, outside));
        }
        checks.push(self.credit_check(c.instance_id.as_deref(), class, addr, s.time));
        checks.push(self.allow_check(addr, c.account_id.as_deref(), c.role.as_deref(), s.time));
        if let Some(a) = addr {
            checks.push(self.inventory_check(a, Some(self.workload_of(c))));
        }
        if let Some(instance) = c.instance_id.as_deref() {
            let detail = match self.instances.reset_before(instance, s.time) {
                Some(r) => format!(
                    "last StartInstances/RunInstances of {instance} at {}, not between the two events",
                    format_time(r)
                ),
                None => format!("no StartInstances or RunInstances of {instance} seen"),
            };
            checks.push(ExceptionCheck {
                exception: "instance_restart".into(),
                applied: false,
                detail,
            });
        }
        let mut explained: Vec<_> = self
            .store
            .explained(key)
            .into_iter()
            .filter(|x| x.time <= s.time)
            .collect();
        explained.sort_by(|a, b| (a.time, &a.origin).cmp(&(b.time, &b.origin)));
        if !explained.is_empty() {
            let list: Vec<String> = explained
                .iter()
                .map(|x| format!("{} ({})", x.origin, x.reason))
                .collect();
            checks.push(ExceptionCheck {
                exception: "explained_so_far".into(),
                applied: false,
                detail: format!(
                    "origins explained earlier in this session: {}",
                    list.join("; ")
                ),
            });
        }
        let released_early = released.then(|| {
            format!(
                "released after max_hold_secs = {} s of wall time: the stream's event-time watermark ({}) had not passed this event ({}) plus allowed_lateness_secs = {}; the stream was behind",
                self.cfg.detection.max_hold_secs,
                format_time(at.watermark.max(0)),
                s.evidence.event_time,
                self.cfg.detection.allowed_lateness_secs
            )
        });
        let mut e1 = first.evidence.clone();
        e1.role = "first".into();
        let mut e2 = second.evidence.clone();
        e2.role = "second".into();
        let error_code = s.error_code.clone();
        let mut f = Finding {
            id: finding_id(&[RULE, &c.session_key, outside, &home.time.to_string()]),
            rule: RULE.into(),
            severity: sev,
            title,
            account_id: c.account_id.clone(),
            // The key used from the second origin.
            access_key_id: s.evidence.access_key_id.clone(),
            session: Some(c.session_display.clone()),
            credential_class: Some(class.to_string()),
            principal_arn: c.principal_arn.clone(),
            error_code,
            event_ids: vec![e1.event_id.clone(), e2.event_id.clone()],
            events: vec![e1, e2],
            exceptions_checked: checks,
            event_time: format_time(first.time.max(second.time)),
            detected_at: chrono::Utc::now()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string(),
            released_early,
            suspicious_origin: Some(suspicious),
            arrived_at: Some(first.arrived.max(second.arrived)),
            claim: Some(Claim {
                key: finding_id(&[RULE, &c.session_key, outside]),
                until: expires,
            }),
        };
        self.fill_places(&mut f);
        Some(f)
    }
}

impl Engine {
    /// The home of a contest: the earliest Lambda runtime sighting if there is one, else the
    /// earliest sighting that is not from an address the instance had been given by then. (A
    /// use from a credited address never takes the lock when it is read after the credit, so
    /// it must not be the home when it is read before it, or once the contest opened.)
    fn home_of<'c>(&self, c: &'c Contest) -> Option<&'c Sighting> {
        let order = |a: &&Sighting, b: &&Sighting| {
            (a.time, &a.evidence.event_id).cmp(&(b.time, &b.evidence.event_id))
        };
        let credited = |s: &Sighting| {
            c.instance_id.as_deref().is_some_and(|i| {
                s.evidence
                    .origin
                    .parse::<IpAddr>()
                    .is_ok_and(|a| self.instances.credit_for(i, a, s.time).is_some())
            })
        };
        if let Some(runtime) = c
            .sightings
            .iter()
            .filter(|s| s.tag == HomeTag::LambdaRuntime)
            .min_by(order)
        {
            return Some(runtime);
        }
        let earliest = c.sightings.iter().filter(|s| !credited(s)).min_by(order);
        let own = || {
            c.sightings
                .iter()
                .filter(|s| self.own_owner(c, s).is_some())
                .min_by(order)
        };
        // The workload's own address is its home when the inventory knows the instance (then
        // it knows every address of it), or when the earliest origin is outside AWS (a thief
        // who called first). Otherwise the earliest origin is the home: an instance launched
        // since the last refresh calls from an AWS address the inventory cannot know yet.
        let knows_instance = self.inventory_on()
            && c.instance_id
                .as_deref()
                .is_some_and(|i| self.inventory.snapshot().instance(i).is_some());
        let earliest_outside = earliest.is_some_and(|s| {
            self.place_of_sighting(c, s)
                .is_some_and(|p| p.is_outside_aws())
        });
        if knows_instance || earliest_outside {
            if let Some(o) = own() {
                return Some(o);
            }
        }
        earliest
    }

    /// The session a contest is of, for placing its origins.
    fn workload_of<'c>(&self, c: &'c Contest) -> Workload<'c> {
        Workload {
            account: c.account_id.as_deref(),
            instance: c.instance_id.as_deref(),
        }
    }

    /// The place of a sighting's origin, when it is an address.
    fn place_of_sighting(&self, c: &Contest, s: &Sighting) -> Option<Place> {
        let addr = s.evidence.origin.parse::<IpAddr>().ok()?;
        Some(self.place_of(addr, self.workload_of(c)))
    }

    /// Whether `s` may be the public IPv4 of a dual-stack instance that the inventory does not
    /// know yet, whose home `home` is in its VPC's IPv6 block.
    fn dual_stack_partner(&self, c: &Contest, home: &Sighting, s: &Sighting) -> bool {
        let Some(instance) = c.instance_id.as_deref() else {
            return false;
        };
        if !self.inventory_on() || self.inventory.snapshot().instance(instance).is_some() {
            return false;
        }
        let home_v6_own = home
            .evidence
            .origin
            .parse::<IpAddr>()
            .is_ok_and(|a| a.is_ipv6())
            && self.own_owner(c, home).is_some();
        let ec2_v4 = s
            .evidence
            .origin
            .parse::<IpAddr>()
            .is_ok_and(|a| a.is_ipv4())
            && matches!(self.place_of_sighting(c, s), Some(Place::Aws(r)) if r.service == "EC2");
        home_v6_own && ec2_v4
    }

    /// The inventory's resource when a sighting's address is this workload's own.
    fn own_owner(&self, c: &Contest, s: &Sighting) -> Option<String> {
        if !self.inventory_on() {
            return None;
        }
        match self.place_of_sighting(c, s)? {
            Place::Ours {
                owner,
                this_workload: true,
            } => Some(owner),
            _ => None,
        }
    }
}

/// The earliest Lambda runtime sighting if there is one, else the earliest sighting: never
/// later than the home.
fn first_sighting(c: &Contest) -> Option<&Sighting> {
    let order = |a: &&Sighting, b: &&Sighting| {
        (a.time, &a.evidence.event_id).cmp(&(b.time, &b.evidence.event_id))
    };
    c.sightings
        .iter()
        .filter(|s| s.tag == HomeTag::LambdaRuntime)
        .min_by(order)
        .or_else(|| c.sightings.iter().min_by(order))
}

/// A session's stored home as a sighting (its evidence as the store keeps it: no source
/// position; the access key is the session key when the session is keyed by it).
pub fn sighting_of_home(
    h: &HomeEvidence,
    value: String,
    keyed_by_access_key: Option<&str>,
    arrived: i64,
) -> Sighting {
    Sighting {
        value,
        tag: h.tag,
        time: h.time,
        evidence: EventEvidence {
            role: "first".into(),
            event_id: h.event_id.clone(),
            event_time: format_time(h.time),
            event_name: h.event_name.clone(),
            event_source: h.event_source.clone(),
            origin_kind: h.tag.origin_class().as_str().into(),
            origin: h.origin.clone(),
            user_agent: h.user_agent.clone(),
            access_key_id: h
                .access_key_id
                .clone()
                .or_else(|| keyed_by_access_key.map(str::to_string)),
            source: None,
            place: None,
            place_detail: None,
        },
        error_code: h.error_code.clone(),
        arrived,
        expires: h.expires,
    }
}

/// Wall-clock seconds now.
pub fn wall_now() -> i64 {
    chrono::Utc::now().timestamp()
}
