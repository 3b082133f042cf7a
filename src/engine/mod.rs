//! The detection engine: one shared instance serves every consumer task.
//!
//! For each event: parse the fields it needs, classify its origin and credential, let the
//! instance book learn from EC2 control-plane calls, then run the rules. All state lives in
//! concurrent maps (no lock is held across an `.await`; the engine is synchronous), and time is
//! event time: expiry follows a watermark, the latest event time seen.

pub mod credential;
pub mod instances;
pub mod intern;
pub mod issuance;
pub mod origin;
pub mod place;
pub mod store;

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::{parse_expiry, Config};
use crate::event::{format_time, CloudTrailEvent, EventError};
use crate::finding::{ExceptionCheck, Finding};
use crate::rules::{event_rules, session_token_reuse, RuleSet};

use self::credential::CredentialClass;
use self::instances::{InstanceBook, InstanceSnapshot};
use self::issuance::{IssuanceBook, Issued};
use self::origin::{Origin, OriginClass};
use self::place::{Place, Workload};
use self::store::{SessionStore, StoreSnapshot};
use crate::inventory::Inventory;
use crate::placement::Placement;

/// Where an event was read, for evidence and set-aside records: `prefix#index`.
#[derive(Debug, Clone, Copy)]
pub struct Position<'a> {
    /// A file path, or `shardId@sequenceNumber`.
    pub prefix: &'a str,
    /// The event's index within the file or record.
    pub index: usize,
}

impl fmt::Display for Position<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.prefix, self.index)
    }
}

/// Why an origin needed no lock: the exceptions that explain a new origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Explanation {
    AwsService,
    AwsInternal,
    OrgVpcEndpoint,
    InstanceAddress,
    AllowList,
    ConsoleRelay,
    LambdaRuntime,
    Inventory,
}

impl Explanation {
    pub const ALL: [Explanation; 8] = [
        Explanation::AwsService,
        Explanation::AwsInternal,
        Explanation::OrgVpcEndpoint,
        Explanation::InstanceAddress,
        Explanation::AllowList,
        Explanation::ConsoleRelay,
        Explanation::LambdaRuntime,
        Explanation::Inventory,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Explanation::AwsService => "aws_service",
            Explanation::AwsInternal => "aws_internal",
            Explanation::OrgVpcEndpoint => "org_vpc_endpoint",
            Explanation::InstanceAddress => "instance_address",
            Explanation::AllowList => "allow_list",
            Explanation::ConsoleRelay => "console_relay",
            Explanation::LambdaRuntime => "lambda_runtime",
            Explanation::Inventory => "inventory",
        }
    }
}

/// The authority on sessions' first origins when several processes share a stream (the
/// DynamoDB state table). The local store stays the cache: only new sessions and candidate
/// second origins are proposed.
pub trait Authority: Send + Sync {
    /// Proposes `home` as the first origin of `session`; `runtime_wins` for a Lambda runtime
    /// home, which replaces any other. Returns the authority's answer.
    fn propose(
        &self,
        session: &str,
        home: &store::HomeEvidence,
        runtime_wins: bool,
    ) -> Result<crate::coord::dynamo::Proposed, String>;

    /// Shares a successful EC2 control-plane event the instance book learns from (address
    /// credits, restarts), so that every worker's book learns it.
    fn publish_control(&self, json: &str) -> Result<(), String>;

    /// The shared control-plane events after position `after`, and the position reached.
    fn control_since(&self, after: u64) -> Result<(Vec<String>, u64), String>;
}

/// Counters the engine keeps; the metrics layer reads them.
#[derive(Default)]
pub struct EngineStats {
    pub events: AtomicU64,
    pub by_origin: [AtomicU64; 7],
    pub by_credential: [AtomicU64; 8],
    /// Events with no tracked credential (IAM users, AWS services, console while off).
    pub untracked: AtomicU64,
    pub explained: [AtomicU64; 8],
    /// Events with an address origin, by [`PlaceKind`] (no address as a label).
    pub by_place: [AtomicU64; 5],
    pub sessions_expired: AtomicU64,
    /// Sessions dropped to stay within `detection.max_sessions` (before they expired).
    pub sessions_evicted: AtomicU64,
    /// Events older than their session's window: ignored for locking.
    pub late_events: AtomicU64,
    /// Events past their credential's end (creation + `detection.max_session_secs` of its class,
    /// or the key's own expiry), by class: judged with a fallback window instead.
    pub lifetime_exceeded: [AtomicU64; 8],
    /// When the last warning about them was logged, by class (epoch seconds).
    lifetime_warned: [AtomicI64; 8],
    /// Findings not repeated because the same (rule, session, origin) was already reported.
    pub suppressed: AtomicU64,
    /// Proposals to the shared store, and those that failed (the local store decided alone).
    pub authority_calls: AtomicU64,
    pub authority_errors: AtomicU64,
    /// Session events judged without the shared store, since it could not be reached: they
    /// left no local decision, and their records must be read again (see `unshared`).
    pub unshared: AtomicU64,
}

impl EngineStats {
    pub fn explained(&self, e: Explanation) {
        self.explained[e as usize].fetch_add(1, Relaxed);
    }
}

/// A compiled `[[allow]]` entry.
#[derive(Debug, Clone)]
struct Allow {
    net: IpNet,
    account: Option<String>,
    role: Option<String>,
    reason: String,
    owner: Option<String>,
    expires: Option<i64>,
}

/// Everything the engine knows, as data, for checkpoints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EngineSnapshot {
    pub watermark: i64,
    pub store: StoreSnapshot,
    pub instances: InstanceSnapshot,
    /// Contested sessions waiting to be settled.
    #[serde(default)]
    pub contests: Vec<(u64, crate::settle::Contest)>,
    /// Keys known from their issuance.
    #[serde(default)]
    pub issued: Vec<(String, Issued)>,
    /// Outside-AWS candidates waiting for a possible issuance.
    #[serde(default)]
    pub outside: Vec<crate::rules::workload_outside_aws::Candidate>,
}

/// Where an event's address origin is, for counting (the session's workload aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceKind {
    OutsideAws,
    Aws,
    Ours,
    Private,
    /// Not an address: a service name, `AWS Internal`, an opaque value.
    NotAnAddress,
}

impl PlaceKind {
    pub const ALL: [PlaceKind; 5] = [
        PlaceKind::OutsideAws,
        PlaceKind::Aws,
        PlaceKind::Ours,
        PlaceKind::Private,
        PlaceKind::NotAnAddress,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PlaceKind::OutsideAws => "outside_aws",
            PlaceKind::Aws => "aws",
            PlaceKind::Ours => "ours",
            PlaceKind::Private => "private",
            PlaceKind::NotAnAddress => "not_an_address",
        }
    }
}

pub struct Engine {
    pub(crate) cfg: Config,
    pub(crate) rules: RuleSet,
    pub store: SessionStore,
    pub instances: InstanceBook,
    /// Keys known from the `AssumeRole` that issued them.
    pub issuance: IssuanceBook,
    /// AWS's published ranges.
    pub placement: Arc<Placement>,
    /// Our own addresses (empty unless `[inventory]` is configured).
    pub inventory: Arc<Inventory>,
    inventory_on: AtomicBool,
    /// Sessions seen from two origins, held until they settle.
    pub pending: crate::settle::Pending,
    allow: Vec<Allow>,
    org: HashSet<String>,
    watermark: AtomicI64,
    pub stats: EngineStats,
    pub(crate) authority: Option<std::sync::Arc<dyn Authority>>,
    /// How far this engine has read the shared control-plane log. No lock: two catch-ups at once
    /// may read the same entries, which the book applies idempotently. (A lock held across the
    /// remote read would park runtime threads that the read itself needs.)
    control_cursor: AtomicU64,
    /// The user-agent markers of `cfg.detection`, searchers built once.
    pub(crate) markers: credential::UaMarkers,
    /// The wall clock as last read (seconds): an event no later than this plus the allowed
    /// skew is not ahead, and needs no read of the clock.
    wall_seen: AtomicI64,
}

/// Whether the engine reads more of `ev` than the fields [`crate::decode::scan`] reads: its
/// `requestParameters` or `responseElements` (the instance book, issuances, the inventory, the
/// event rules) or its whole text (shared with other workers). Such events are parsed whole;
/// the others may come read in place.
pub fn reads_whole_event(ev: &CloudTrailEvent<'_>) -> bool {
    let name = ev.event_name();
    instances::is_relevant(name)
        || issuance::issuer(ev).is_some()
        || crate::inventory::observe::observes(name)
        || crate::rules::event_rules::candidate(name)
}

impl Engine {
    pub fn new(cfg: &Config) -> Engine {
        Engine {
            rules: RuleSet::from_config(cfg),
            allow: cfg
                .allow
                .iter()
                .map(|a| Allow {
                    net: a.cidr.trunc(),
                    account: a.account.clone(),
                    role: a.role.clone(),
                    reason: a.reason.clone(),
                    owner: a.owner.clone(),
                    expires: a.expires.as_deref().and_then(parse_expiry),
                })
                .collect(),
            org: cfg.organization.account_ids.iter().cloned().collect(),
            cfg: cfg.clone(),
            store: SessionStore::default(),
            instances: InstanceBook::default(),
            issuance: IssuanceBook::default(),
            placement: Arc::new(Placement::new(crate::placement::IpRanges::bundled())),
            inventory: Arc::new(Inventory::default()),
            inventory_on: AtomicBool::new(false),
            pending: crate::settle::Pending::default(),
            watermark: AtomicI64::new(0),
            stats: EngineStats::default(),
            authority: None,
            control_cursor: AtomicU64::new(0),
            markers: credential::UaMarkers::new(&cfg.detection),
            wall_seen: AtomicI64::new(0),
        }
    }

    /// Makes `a` the authority on first origins (several processes on one stream).
    pub fn with_authority(mut self, a: std::sync::Arc<dyn Authority>) -> Engine {
        self.authority = Some(a);
        self
    }

    /// Places origins with these ranges (replaced on refresh by whoever holds the `Arc`).
    pub fn with_placement(mut self, p: Arc<Placement>) -> Engine {
        self.placement = p;
        self
    }

    /// Knows our own addresses from this inventory (replaced on refresh by whoever holds it).
    pub fn with_inventory(mut self, inv: Arc<Inventory>) -> Engine {
        self.instances.set_inventory(inv.clone());
        self.inventory = inv;
        self.inventory_on.store(true, Relaxed);
        self
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Parses and processes one event's JSON text.
    pub fn process_json(&self, json: &str, pos: Position<'_>) -> Result<Vec<Finding>, EventError> {
        self.process_json_timed(json, pos).map(|(f, _)| f)
    }

    /// [`Engine::process_json`], also returning the event's time (for shard watermarks).
    pub fn process_json_timed(
        &self,
        json: &str,
        pos: Position<'_>,
    ) -> Result<(Vec<Finding>, i64), EventError> {
        let ev = CloudTrailEvent::parse(json)?;
        self.process_parsed_timed(&ev, json, pos)
    }

    /// [`Engine::process_json_timed`] for an event already parsed from `json` (by
    /// [`CloudTrailEvent::parse`] or in one pass with its file: then [`CloudTrailEvent::check`]
    /// is applied here).
    pub fn process_parsed_timed(
        &self,
        ev: &CloudTrailEvent<'_>,
        json: &str,
        pos: Position<'_>,
    ) -> Result<(Vec<Finding>, i64), EventError> {
        ev.check()?;
        let (out, t) = self.process_timed(ev, pos)?;
        if let Some(a) = &self.authority {
            // What other workers learn from: [`Engine::sync_control`].
            let shared = instances::is_relevant(ev.event_name())
                || issuance::issuer(ev).is_some()
                || crate::inventory::observe::observes(ev.event_name());
            if shared && ev.succeeded() {
                if let Err(e) = a.publish_control(json) {
                    self.stats.authority_errors.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, event = ev.event_id(), "could not share a control-plane event");
                }
            }
        }
        Ok((out, t))
    }

    /// [`Engine::process_parsed_timed`] for an event read in place from an envelope
    /// ([`crate::decode::cloudwatch_envelope::Decoded::Read`]): one of which the engine reads
    /// only the fields the scanner gives ([`reads_whole_event`] is false), and so none it
    /// shares with other workers.
    pub fn process_read_timed(
        &self,
        ev: &CloudTrailEvent<'_>,
        pos: Position<'_>,
    ) -> Result<(Vec<Finding>, i64), EventError> {
        debug_assert!(!reads_whole_event(ev));
        ev.check()?;
        self.process_timed(ev, pos)
    }

    /// Reads the control-plane events other workers shared since the last call into the
    /// instance book. Returns how many were read. Without an authority, nothing to do.
    pub fn sync_control(&self) -> usize {
        let Some(a) = &self.authority else { return 0 };
        let (events, next) = match a.control_since(self.control_cursor.load(Relaxed)) {
            Ok(x) => x,
            Err(e) => {
                self.stats.authority_errors.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "could not read shared control-plane events");
                return 0;
            }
        };
        self.control_cursor.fetch_max(next, Relaxed);
        for json in &events {
            // Applying an event twice (also one this worker shared) changes nothing.
            if let Ok(ev) = CloudTrailEvent::parse(json) {
                if let Ok(t) = ev.time_secs() {
                    self.instances.observe(&ev, t);
                    self.issuance.observe(&ev, t);
                    if self.inventory_on() {
                        self.inventory.observe(&ev);
                    }
                }
            }
        }
        events.len()
    }

    /// Processes one event; returns its findings (usually none).
    pub fn process(
        &self,
        ev: &CloudTrailEvent<'_>,
        pos: Position<'_>,
    ) -> Result<Vec<Finding>, EventError> {
        self.process_timed(ev, pos).map(|(f, _)| f)
    }

    /// [`Engine::process`], also returning the event's time (parsed once).
    fn process_timed(
        &self,
        ev: &CloudTrailEvent<'_>,
        pos: Position<'_>,
    ) -> Result<(Vec<Finding>, i64), EventError> {
        let t = ev.time_secs()?;
        let skew = self.cfg.detection.max_clock_skew_secs;
        // An event within the skew of the last reading is taken without a read of the clock
        // (a read cost 2% of a detecting pass); one past it reads the clock, which decides.
        // Between reads a clock stepped back is not seen: an event up to that step ahead is
        // taken, until the next event that reads the clock.
        let ahead = |wall: i64| t > wall.saturating_add(skew as i64);
        if ahead(self.wall_seen.load(Relaxed)) && ahead(self.wall_now()) {
            return Err(EventError::TimeAhead {
                time: crate::event::format_time(t),
                skew,
            });
        }
        self.stats.events.fetch_add(1, Relaxed);
        self.watermark.fetch_max(t, Relaxed);
        let origin = origin::classify(ev);
        self.stats.by_origin[origin.class().index()].fetch_add(1, Relaxed);

        // One lookup in AWS's ranges per event with a public address, shared by what follows.
        let in_aws = match &origin {
            Origin::PublicIp(a) => Some(self.placement.lookup(*a).is_some()),
            _ => None,
        };
        self.stats.by_place[self.place_kind(&origin, in_aws).index()].fetch_add(1, Relaxed);

        let mut out = Vec::new();
        if instances::is_relevant(ev.event_name()) {
            self.instances.observe(ev, t);
        }
        if self.inventory_on() && crate::inventory::observe::observes(ev.event_name()) {
            self.inventory.observe(ev);
        }
        if issuance::is_candidate(ev) {
            if let Some((key, issued)) = self.issuance.observe(ev, t) {
                session_token_reuse::issued(self, ev, &key, &issued, t, &pos);
            }
        }
        let mut cred = credential::classify(ev, &self.cfg.detection, &self.markers);
        if let Some(c) = cred.as_mut() {
            if !self.issuance.never_used() {
                if let Some(i) = self.issuance.get(c.access_key_id) {
                    let guessed = matches!(
                        c.class,
                        CredentialClass::AssumedRole
                            | CredentialClass::Federated
                            | CredentialClass::Lambda
                            | CredentialClass::EcsTask
                    );
                    if guessed && i.class.class() != CredentialClass::Ec2Instance {
                        c.class = i.class.class();
                    }
                    c.issued = Some(i);
                }
            }
            // A Lambda runtime marker from outside AWS is not a home: Lambda runs in AWS, and
            // a thief who copied the function's environment sends the marker too.
            if c.lambda_runtime
                && self
                    .outside_aws(&origin, in_aws, ev.account_id(), c.role, t)
                    .is_some()
            {
                c.lambda_runtime = false;
            }
        }
        match &cred {
            Some(c) => self.stats.by_credential[c.class as usize].fetch_add(1, Relaxed),
            None => self.stats.untracked.fetch_add(1, Relaxed),
        };
        if let Some(c) = &cred {
            session_token_reuse::check(self, ev, c, &origin, t, &pos, &mut out);
            let outside = self.outside_aws(&origin, in_aws, ev.account_id(), c.role, t);
            crate::rules::workload_outside_aws::check(
                self, ev, c, &origin, outside, t, &pos, &mut out,
            );
        }
        event_rules::check(self, ev, cred.as_ref(), &origin, t, &pos, &mut out);
        for f in &mut out {
            self.fill_places(f);
        }
        Ok((out, t))
    }

    /// Whether the inventory is configured.
    pub fn inventory_on(&self) -> bool {
        self.inventory_on.load(Relaxed)
    }

    /// The place of an address origin (for counting), without the session.
    fn place_kind(&self, origin: &Origin<'_>, in_aws: Option<bool>) -> PlaceKind {
        let addr = match origin {
            Origin::PublicIp(a) | Origin::PrivateIp(a) => *a,
            _ => return PlaceKind::NotAnAddress,
        };
        if self.inventory_on() && self.inventory.snapshot().owns(addr) {
            return PlaceKind::Ours;
        }
        match in_aws {
            None => PlaceKind::Private,
            Some(true) => PlaceKind::Aws,
            Some(false) => PlaceKind::OutsideAws,
        }
    }

    /// The place of `addr` for the session `who`.
    pub fn place_of(&self, addr: IpAddr, who: Workload<'_>) -> Place {
        let snap = self.inventory.snapshot();
        let owners = if self.inventory_on() {
            snap.owners(addr)
        } else {
            Vec::new()
        };
        let vpc = who
            .instance
            .and_then(|i| snap.instance(i))
            .and_then(|(rec, _)| rec.vpc_id.as_deref());
        place::place(addr, who, &owners, vpc, self.placement.lookup(addr))
    }

    /// The address of an origin outside AWS's ranges, not ours and not allowed, if it is one.
    /// `in_aws`: whether AWS's ranges hold the origin's address (looked up once per event).
    pub(crate) fn outside_aws(
        &self,
        origin: &Origin<'_>,
        in_aws: Option<bool>,
        account: Option<&str>,
        role: Option<&str>,
        t: i64,
    ) -> Option<IpAddr> {
        let Origin::PublicIp(addr) = origin else {
            return None;
        };
        if in_aws != Some(false) {
            return None;
        }
        if self.inventory_on() && self.inventory.snapshot().owns(*addr) {
            return None;
        }
        if self.allowed(*addr, account, role, t) {
            return None;
        }
        Some(*addr)
    }

    /// Whether an `[[allow]]` entry explains `addr` (what [`Engine::allow_check`] says,
    /// without building its text).
    pub(crate) fn allowed(
        &self,
        addr: IpAddr,
        account: Option<&str>,
        role: Option<&str>,
        t: i64,
    ) -> bool {
        self.allow.iter().any(|e| {
            e.net.contains(&addr)
                && e.account.as_deref().is_none_or(|a| Some(a) == account)
                && e.role.as_deref().is_none_or(|r| Some(r) == role)
                && e.expires.is_none_or(|x| t <= x)
        })
    }

    /// The ranges in use, in words, for evidence.
    pub(crate) fn ranges_description(&self) -> String {
        let r = self.placement.ranges();
        format!(
            "AWS's published ranges ({}, createDate {})",
            r.source(),
            r.create_date()
                .map(format_time)
                .unwrap_or_else(|| "unknown".into())
        )
    }

    /// Whether the inventory explains `addr` for the session `who`, for evidence.
    pub(crate) fn inventory_check(
        &self,
        addr: IpAddr,
        who: Option<Workload<'_>>,
    ) -> ExceptionCheck {
        let exception = Explanation::Inventory.as_str().to_string();
        if !self.inventory_on() {
            return ExceptionCheck {
                exception,
                applied: false,
                detail: "no [inventory] configured".into(),
            };
        }
        let snap = self.inventory.snapshot();
        let place = self.place_of(addr, who.unwrap_or_default());
        match place {
            Place::Ours {
                owner,
                this_workload: true,
            } => ExceptionCheck {
                exception,
                applied: true,
                detail: format!("{addr} is {owner}"),
            },
            Place::Ours { owner, .. } => ExceptionCheck {
                exception,
                applied: false,
                detail: format!(
                    "{addr} is {owner}: ours, but not this workload's{}",
                    who.and_then(|w| w.instance)
                        .map(|i| format!(" ({i})"))
                        .unwrap_or_default()
                ),
            },
            _ => ExceptionCheck {
                exception,
                applied: false,
                detail: format!(
                    "{addr} is not in the inventory ({} resources in {} accounts)",
                    snap.len(),
                    snap.accounts().len()
                ),
            },
        }
    }

    /// Fills the place of every address origin in a finding's evidence (for its session).
    pub(crate) fn fill_places(&self, f: &mut Finding) {
        let instance = f
            .session
            .as_deref()
            .and_then(|s| s.rsplit('/').next())
            .filter(|s| s.starts_with("i-"))
            .map(str::to_string);
        for ev in &mut f.events {
            if ev.place.is_some() {
                continue;
            }
            let Some(addr) = origin_addr(&ev.origin) else {
                continue;
            };
            let who = Workload {
                account: f.account_id.as_deref(),
                instance: instance.as_deref(),
            };
            let p = self.place_of(addr, who);
            ev.place = Some(p.kind().to_string());
            ev.place_detail = Some(p.to_string());
        }
    }

    /// The latest event time seen (seconds since the epoch).
    pub fn watermark(&self) -> i64 {
        self.watermark.load(Relaxed)
    }

    /// Drops what expired before the settled watermark (less the allowed lateness: a late
    /// event must still find its session). Returns the sessions removed.
    pub fn sweep(&self) -> usize {
        let settled = self.pending.settled_at();
        let upto = if settled > 0 {
            settled.min(self.watermark())
        } else {
            self.watermark()
        };
        self.sweep_at(upto - self.cfg.detection.allowed_lateness_secs as i64)
    }

    pub fn sweep_at(&self, now: i64) -> usize {
        let (expired, evicted) = self.store.sweep(now, self.cfg.detection.max_sessions);
        let removed = expired + evicted;
        self.pending.sweep(now);
        self.instances.sweep(
            now - self.cfg.detection.window_secs as i64,
            self.cfg.detection.max_book_entries,
        );
        self.issuance.sweep(
            now,
            self.cfg.detection.max_session_secs.lambda as i64,
            self.cfg.detection.max_book_entries,
        );
        self.stats
            .sessions_expired
            .fetch_add(expired as u64, Relaxed);
        self.stats
            .sessions_evicted
            .fetch_add(evicted as u64, Relaxed);
        if evicted > 0 {
            tracing::warn!(
                evicted,
                max_sessions = self.cfg.detection.max_sessions,
                "more sessions than detection.max_sessions: evicted those seen once, closest to \
                 expiry first (a spray of new keys, or max_sessions too low for this stream)"
            );
        }
        removed
    }

    /// How many session events so far could not be shared with the other workers (their
    /// shared store unreachable). A shard reader compares it before and after a record: when it
    /// moved, the record is read again later (this may be another shard's event: a record read
    /// twice changes nothing).
    pub fn unshared(&self) -> u64 {
        self.stats.unshared.load(Relaxed)
    }

    pub fn tracked_sessions(&self) -> usize {
        self.store.len()
    }

    pub fn snapshot(&self) -> EngineSnapshot {
        EngineSnapshot {
            watermark: self.watermark(),
            store: self.store.snapshot(),
            instances: self.instances.snapshot(),
            contests: self.pending.snapshot(),
            issued: self.issuance.snapshot(),
            outside: self.pending.outside_snapshot(),
        }
    }

    pub fn restore(&self, s: &EngineSnapshot) {
        self.watermark.fetch_max(s.watermark, Relaxed);
        self.store.restore(&s.store);
        self.instances.restore(&s.instances);
        self.pending.restore(&s.contests);
        self.issuance.restore(&s.issued);
        self.pending.restore_outside(&s.outside);
    }

    /// Whether an account belongs to the organisation. With no `[organization]` configured, the
    /// session's own account is the organisation.
    pub(crate) fn in_org(&self, account: Option<&str>, session_account: Option<&str>) -> bool {
        match account {
            None => false,
            Some(a) if self.inventory_on() && self.inventory.snapshot().has_account(a) => true,
            Some(a) if self.org.is_empty() => Some(a) == session_account,
            Some(a) => self.org.contains(a),
        }
    }

    /// The `[[allow]]` entry that explains `addr` for this credential at time `t`, or why none did.
    pub(crate) fn allow_check(
        &self,
        addr: Option<IpAddr>,
        account: Option<&str>,
        role: Option<&str>,
        t: i64,
    ) -> ExceptionCheck {
        let mut detail = match addr {
            None => "the origin is not an address".to_string(),
            Some(a) => format!("no [[allow]] entry contains {a}"),
        };
        let role_of_session = role;
        if let Some(a) = addr {
            for (i, e) in self.allow.iter().enumerate() {
                if !e.net.contains(&a) {
                    continue;
                }
                let label = format!("allow[{i}] {} ({})", e.net, e.reason);
                if let Some(acct) = &e.account {
                    if Some(acct.as_str()) != account {
                        detail = format!("{label} is for account {acct} only");
                        continue;
                    }
                }
                if let Some(role) = &e.role {
                    if Some(role.as_str()) != role_of_session {
                        detail = format!("{label} is for role {role} only");
                        continue;
                    }
                }
                if let Some(exp) = e.expires {
                    if t > exp {
                        detail = format!("{label} expired at {}", format_time(exp));
                        continue;
                    }
                }
                let owner = e
                    .owner
                    .as_deref()
                    .map(|o| format!(", owner {o}"))
                    .unwrap_or_default();
                return ExceptionCheck {
                    exception: Explanation::AllowList.as_str().into(),
                    applied: true,
                    detail: format!("{label}{owner}"),
                };
            }
        }
        ExceptionCheck {
            exception: Explanation::AllowList.as_str().into(),
            applied: false,
            detail,
        }
    }

    /// The instance-address credit that explains `addr` for an instance session at event time
    /// `at` (given by a call not later than `at`), or why none did.
    pub(crate) fn credit_check(
        &self,
        instance: Option<&str>,
        class: &str,
        addr: Option<IpAddr>,
        at: i64,
    ) -> ExceptionCheck {
        let exception = Explanation::InstanceAddress.as_str().to_string();
        let Some(instance) = instance else {
            return ExceptionCheck {
                exception,
                applied: false,
                detail: format!("{class} credentials are not an instance's"),
            };
        };
        let Some(addr) = addr else {
            return ExceptionCheck {
                exception,
                applied: false,
                detail: "the origin is not an address".into(),
            };
        };
        match self.instances.credit_for(instance, addr, at) {
            Some(call) => ExceptionCheck {
                exception,
                applied: true,
                detail: format!("{addr} was given to {instance} by {call}"),
            },
            None => {
                let credited = self.instances.credits(instance, at);
                let list = if credited.is_empty() {
                    "none seen".to_string()
                } else {
                    credited
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                ExceptionCheck {
                    exception,
                    applied: false,
                    detail: format!(
                        "no AssociateAddress, AttachNetworkInterface or AssignPrivateIpAddresses gave {addr} to {instance} by {} (credited: {list})", format_time(at)
                    ),
                }
            }
        }
    }

    /// The exceptions that do not apply to a lockable origin, for a finding's evidence.
    pub(crate) fn origin_checks(&self, class: OriginClass, text: &str) -> Vec<ExceptionCheck> {
        let not = |e: Explanation, detail: String| ExceptionCheck {
            exception: e.as_str().into(),
            applied: false,
            detail,
        };
        vec![
            not(
                Explanation::AwsService,
                format!("{text} is a {} origin, not an AWS service", class.as_str()),
            ),
            not(
                Explanation::AwsInternal,
                format!("{text} is not AWS Internal"),
            ),
            not(
                Explanation::OrgVpcEndpoint,
                "the call carried no vpcEndpointId".into(),
            ),
        ]
    }

    /// The inventory's record of a VPC endpoint, in words, when it is ours.
    pub(crate) fn our_endpoint(&self, id: &str) -> Option<String> {
        if !self.inventory_on() {
            return None;
        }
        let snap = self.inventory.snapshot();
        let (rec, at) = snap.endpoint(id)?;
        Some(format!(
            "VPC endpoint {id}{} in {} ({})",
            rec.vpc_id
                .as_deref()
                .map(|v| format!(" of {v}"))
                .unwrap_or_default(),
            at.account,
            at.region
        ))
    }

    pub(crate) fn class_max_secs(&self, class: CredentialClass) -> i64 {
        class.max_secs(&self.cfg.detection) as i64
    }

    /// The end of a session's window for an event at `t`, given the end its credential says
    /// (`known`: the key's own expiry, or its creation plus the class's maximum lifetime).
    ///
    /// An event after that end cannot be within the credential's life: the configured maximum
    /// is wrong for this account (a role's `MaxSessionDuration` raised, a chained session), or a
    /// clock is. Failing open would give the session a window of zero length, so that it is
    /// never locked and never reported; instead the event is judged with a fallback window of
    /// the class's maximum from the event itself, counted
    /// (`credwatch_lifetime_exceeded_total{credential_class}`) and logged (at most once a minute
    /// per class).
    pub(crate) fn window_end(
        &self,
        known: i64,
        class: CredentialClass,
        t: i64,
        session: &str,
    ) -> i64 {
        if known >= t {
            return known;
        }
        let i = class as usize;
        self.stats.lifetime_exceeded[i].fetch_add(1, Relaxed);
        let now = chrono::Utc::now().timestamp();
        let last = self.stats.lifetime_warned[i].load(Relaxed);
        if now - last >= 60
            && self.stats.lifetime_warned[i]
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            tracing::warn!(
                credential_class = class.as_str(),
                session,
                over_secs = t - known,
                max_session_secs = self.class_max_secs(class),
                "an event is past its credential's end: detection.max_session_secs is too short \
                 for this account (or a clock is wrong); judged with a fallback window of the \
                 class's maximum from the event"
            );
        }
        t.saturating_add(self.class_max_secs(class).max(1))
    }
}

impl PlaceKind {
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The address in an evidence origin: `1.2.3.4`, or `vpce-…@acct (10.0.0.5)`.
fn origin_addr(origin: &str) -> Option<IpAddr> {
    if let Ok(a) = origin.parse::<IpAddr>() {
        return Some(a);
    }
    let inner = origin.rsplit_once(" (")?.1.strip_suffix(')')?;
    inner.parse().ok()
}

/// This host's clock, in epoch seconds (0 before 1970).
impl Engine {
    /// Reads the wall clock (seconds) and keeps the reading in `wall_seen`.
    fn wall_now(&self) -> i64 {
        let now = wall_secs();
        // The last reading, not the highest: a clock stepped back is believed at its next read.
        self.wall_seen.store(now, Relaxed);
        now
    }
}

fn wall_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
