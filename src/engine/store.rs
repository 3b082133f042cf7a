//! The session-origin store shared by every consumer task.
//!
//! One entry per workload session (an instance's role session across key rotations, else the
//! access key), keyed by a 64-bit xxh3 of the session key. An entry is 46 bytes: the first-seen
//! origin (an IPv4 address inline, anything else interned), the first event's id (a UUID as 16
//! bytes), its time, the expiry, the interned profile of the first event (user agent, event
//! source and name, and its access key when that is not the session key) and two bytes of flags. Sessions that
//! only ever had explained origins and the per-finding dedup marks live in small side tables.

use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use super::intern::{Interner, NONE};
use super::origin::{Origin, OriginClass};

/// A 64-bit key that is already a hash.
pub type Key = [u8; 8];

pub fn key_of(text: &str) -> Key {
    xxhash_rust::xxh3::xxh3_64(text.as_bytes()).to_le_bytes()
}

pub fn key_of_parts(parts: &[&[u8]]) -> Key {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for p in parts {
        h.update(p);
        h.update(&[0x1f]);
    }
    h.digest().to_le_bytes()
}

/// Keys are xxh3 outputs already: hashing them again is wasted work.
#[derive(Default, Clone, Copy)]
pub struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for (i, b) in bytes.iter().take(8).enumerate() {
            self.0 ^= (*b as u64) << (8 * i);
        }
    }
    fn write_usize(&mut self, _len: usize) {}
}

pub type Map<V> = DashMap<Key, V, BuildHasherDefault<PreHashed>>;

fn new_map<V>() -> Map<V> {
    DashMap::with_hasher(BuildHasherDefault::default())
}

/// How the home origin is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum HomeTag {
    PublicV4 = 1,
    PrivateV4 = 2,
    /// IPv6 and opaque values are interned; the `home` field holds the id.
    PublicV6 = 3,
    PrivateV6 = 4,
    Opaque = 5,
    /// A Lambda session whose home is its runtime (user-agent markers), not an address.
    LambdaRuntime = 6,
}

impl HomeTag {
    pub fn from_bits(b: u8) -> HomeTag {
        match b & 7 {
            1 => HomeTag::PublicV4,
            2 => HomeTag::PrivateV4,
            3 => HomeTag::PublicV6,
            4 => HomeTag::PrivateV6,
            5 => HomeTag::Opaque,
            _ => HomeTag::LambdaRuntime,
        }
    }

    pub fn interned(self) -> bool {
        matches!(
            self,
            HomeTag::PublicV6 | HomeTag::PrivateV6 | HomeTag::Opaque
        )
    }

    pub fn origin_class(self) -> OriginClass {
        match self {
            HomeTag::PublicV4 | HomeTag::PublicV6 => OriginClass::PublicIp,
            HomeTag::PrivateV4 | HomeTag::PrivateV6 => OriginClass::PrivateIp,
            HomeTag::Opaque => OriginClass::Opaque,
            HomeTag::LambdaRuntime => OriginClass::AwsService,
        }
    }
}

const FLAG_EVENT_ID_INTERNED: u8 = 1 << 3;
/// `key` holds the first event's `ASIA…` / `AKIA…` access key (a session not keyed by it).
const FLAG_KEY_ASIA: u8 = 1 << 4;
const FLAG_KEY_AKIA: u8 = 1 << 5;
/// The session was seen in more than one event. Over `max_sessions`, sessions seen once go
/// first: a spray of distinct keys (each seen once) cannot evict the sessions that are in use.
const FLAG_SEEN_AGAIN: u8 = 1 << 6;

/// Packs the 16 characters after an access key's 4-letter prefix (A-Z, 0-9) in 6 bits each.
fn pack_key(k: &str) -> Option<(u8, [u8; 12])> {
    let flag = match k.get(..4)? {
        "ASIA" => FLAG_KEY_ASIA,
        "AKIA" => FLAG_KEY_AKIA,
        _ => return None,
    };
    let tail = k.get(4..)?.as_bytes();
    if tail.len() != 16 {
        return None;
    }
    let mut bits: u128 = 0;
    for &c in tail {
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'A'..=b'Z' => c - b'A' + 10,
            _ => return None,
        };
        bits = (bits << 6) | v as u128;
    }
    let mut out = [0u8; 12];
    out.copy_from_slice(&bits.to_le_bytes()[..12]);
    Some((flag, out))
}

fn unpack_key(flags: u8, key: [u8; 12]) -> Option<String> {
    let prefix = if flags & FLAG_KEY_ASIA != 0 {
        "ASIA"
    } else if flags & FLAG_KEY_AKIA != 0 {
        "AKIA"
    } else {
        return None;
    };
    let mut b = [0u8; 16];
    b[..12].copy_from_slice(&key);
    let bits = u128::from_le_bytes(b);
    let mut out = String::with_capacity(20);
    out.push_str(prefix);
    for i in (0..16).rev() {
        let v = ((bits >> (6 * i)) & 63) as u8;
        out.push(if v < 10 {
            (b'0' + v) as char
        } else {
            (b'A' + v - 10) as char
        });
    }
    Some(out)
}

/// One tracked session: 46 bytes, packed.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, packed)]
pub struct Session {
    /// IPv4 address bits, or an interner id (see [`HomeTag::interned`]).
    home: u32,
    /// The first event's id: UUID bytes, or an interner id in the first four bytes.
    event_id: [u8; 16],
    pub first_time: u32,
    pub expires: u32,
    /// Interned `user agent \x1f event source \x1f event name \x1f access key \x1f error`:
    /// few distinct values (the key only when it is neither the session key nor packable).
    ua: u32,
    /// The first event's access key, packed, when the session is not keyed by it (an instance's
    /// role session across key rotations): see the key flags.
    key: [u8; 12],
    /// bits 0..3: home tag; bit 3: event id interned; bits 4, 5: `key` holds an ASIA / AKIA key;
    /// bit 6: seen in more than one event.
    flags: u8,
    class: u8,
}

/// The parts of a home origin that are compared; IPv6 is masked to the configured prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HomeValue {
    V4(Ipv4Addr),
    Text(String),
}

/// The home of a candidate origin, as it would be stored. `None` for origins that never lock.
pub fn home_of(origin: &Origin<'_>, ipv6_prefix_len: u8) -> Option<(HomeTag, HomeValue)> {
    let v6 = |a: std::net::Ipv6Addr| {
        let masked = ipnet::Ipv6Net::new(a, ipv6_prefix_len)
            .map(|n| n.network())
            .unwrap_or(a);
        if ipv6_prefix_len >= 128 {
            masked.to_string()
        } else {
            format!("{masked}/{ipv6_prefix_len}")
        }
    };
    match origin {
        Origin::PublicIp(IpAddr::V4(a)) => Some((HomeTag::PublicV4, HomeValue::V4(*a))),
        Origin::PrivateIp(IpAddr::V4(a)) => Some((HomeTag::PrivateV4, HomeValue::V4(*a))),
        Origin::PublicIp(IpAddr::V6(a)) => Some((HomeTag::PublicV6, HomeValue::Text(v6(*a)))),
        Origin::PrivateIp(IpAddr::V6(a)) => Some((HomeTag::PrivateV6, HomeValue::Text(v6(*a)))),
        Origin::Opaque(s) => Some((HomeTag::Opaque, HomeValue::Text(format!("o:{s}")))),
        _ => None,
    }
}

/// The stored value of a portable home (`None` for a Lambda runtime home).
pub fn value_of(h: &HomeEvidence) -> Option<HomeValue> {
    match h.tag {
        HomeTag::PublicV4 | HomeTag::PrivateV4 => {
            h.origin.parse::<Ipv4Addr>().ok().map(HomeValue::V4)
        }
        HomeTag::Opaque => Some(HomeValue::Text(format!("o:{}", h.origin))),
        HomeTag::PublicV6 | HomeTag::PrivateV6 => Some(HomeValue::Text(h.origin.clone())),
        HomeTag::LambdaRuntime => None,
    }
}

/// A home in portable form from its parts (what [`SessionStore::evidence`] returns for it).
pub fn portable(h: &NewHome<'_>) -> HomeEvidence {
    let origin = match (h.tag, h.value) {
        (HomeTag::LambdaRuntime, _) | (_, None) => "lambda-runtime".to_string(),
        (_, Some(HomeValue::V4(a))) => a.to_string(),
        (_, Some(HomeValue::Text(t))) => t.strip_prefix("o:").unwrap_or(t).to_string(),
    };
    HomeEvidence {
        tag: h.tag,
        origin,
        event_id: h.event_id.to_string(),
        time: h.time,
        user_agent: h.user_agent.to_string(),
        class: h.class,
        expires: h.expires,
        event_source: h.event_source.map(str::to_string),
        event_name: h.event_name.map(str::to_string),
        access_key_id: h.access_key_id.map(str::to_string),
        error_code: h.error_code.map(str::to_string),
    }
}

/// The interned profile of a first event.
fn profile(h: &NewHome<'_>) -> String {
    format!(
        "{}\x1f{}\x1f{}\x1f{}\x1f{}",
        h.user_agent,
        h.event_source.unwrap_or(""),
        h.event_name.unwrap_or(""),
        h.access_key_id.unwrap_or(""),
        h.error_code.unwrap_or("")
    )
}

impl HomeEvidence {
    /// User agent, event source, event name and access key in one text (how they are stored).
    pub fn profile(&self) -> String {
        format!(
            "{}\x1f{}\x1f{}\x1f{}\x1f{}",
            self.user_agent,
            self.event_source.as_deref().unwrap_or(""),
            self.event_name.as_deref().unwrap_or(""),
            self.access_key_id.as_deref().unwrap_or(""),
            self.error_code.as_deref().unwrap_or("")
        )
    }

    /// Reads back what [`HomeEvidence::profile`] wrote (a bare user agent is read as one).
    pub fn set_profile(&mut self, text: &str) {
        let mut parts = text.split('\x1f');
        let mut next = || parts.next().filter(|p| !p.is_empty()).map(str::to_string);
        self.user_agent = next().unwrap_or_default();
        self.event_source = next();
        self.event_name = next();
        self.access_key_id = next();
        self.error_code = next();
    }
}

/// The first event of a session, as evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HomeEvidence {
    pub tag: HomeTag,
    pub origin: String,
    pub event_id: String,
    pub time: i64,
    pub user_agent: String,
    pub class: u8,
    pub expires: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_name: Option<String>,
    /// The first event's access key, when it is not the session key itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

/// An origin that was explained, by what, and the earliest event time it was explained at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explained {
    pub origin: String,
    pub reason: String,
    #[serde(default)]
    pub time: i64,
}

/// Side entry for sessions that had explained origins.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Extras {
    pub expires: u32,
    pub explained: Vec<Explained>,
}

/// The most explained origins remembered per session.
pub const MAX_EXPLAINED: usize = 16;

/// Sessions per slab chunk.
const CHUNK: usize = 4096;

/// Dense storage for sessions: chunks of packed entries, a slot per live session, freed slots
/// reused. With the index it costs 46 bytes per slot plus a 12-byte index bucket, where a map of
/// whole entries would cost a 42-byte bucket, half of them empty after each doubling.
///
/// Lock order: an index shard lock, then `free`, then `chunks`, then one chunk's mutex. A slot
/// is only read or written by the holder of its key's index entry (or by `retain` on the index),
/// so chunk mutexes are held for a copy only.
#[derive(Default)]
struct Slab {
    chunks: std::sync::RwLock<Vec<std::sync::Mutex<Box<[Session]>>>>,
    free: std::sync::Mutex<SlabFree>,
}

#[derive(Default)]
struct SlabFree {
    slots: Vec<u32>,
    next: u32,
}

impl Slab {
    fn get(&self, idx: u32) -> Session {
        let chunks = self.chunks.read().unwrap_or_else(|p| p.into_inner());
        let chunk = chunks[idx as usize / CHUNK]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        chunk[idx as usize % CHUNK]
    }

    fn set(&self, idx: u32, s: Session) {
        let chunks = self.chunks.read().unwrap_or_else(|p| p.into_inner());
        let mut chunk = chunks[idx as usize / CHUNK]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        chunk[idx as usize % CHUNK] = s;
    }

    fn alloc(&self, s: Session) -> u32 {
        let idx = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            match free.slots.pop() {
                Some(i) => i,
                None => {
                    let i = free.next;
                    free.next += 1;
                    if i as usize % CHUNK == 0 {
                        let mut chunks = self.chunks.write().unwrap_or_else(|p| p.into_inner());
                        chunks.push(std::sync::Mutex::new(
                            vec![Session::default(); CHUNK].into_boxed_slice(),
                        ));
                    }
                    i
                }
            }
        };
        self.set(idx, s);
        idx
    }

    fn release(&self, idx: u32) {
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .slots
            .push(idx);
    }
}

pub struct SessionStore {
    /// Session key to its slot in `slab`.
    sessions: Map<u32>,
    slab: Slab,
    extras: Map<Extras>,
    reported: Map<u32>,
    strings: Arc<Interner>,
}

impl Default for SessionStore {
    fn default() -> Self {
        SessionStore {
            sessions: new_map(),
            slab: Slab::default(),
            extras: new_map(),
            reported: new_map(),
            strings: Arc::new(Interner::default()),
        }
    }
}

pub fn clamp_u32(t: i64) -> u32 {
    t.clamp(0, u32::MAX as i64) as u32
}

impl Session {
    pub fn tag(&self) -> HomeTag {
        HomeTag::from_bits(self.flags)
    }
    pub fn class(&self) -> u8 {
        self.class
    }
}

/// What the caller wants to store as a session's first event.
#[derive(Clone, Copy)]
pub struct NewHome<'a> {
    pub tag: HomeTag,
    pub value: Option<&'a HomeValue>,
    pub event_id: &'a str,
    pub time: i64,
    pub expires: i64,
    pub user_agent: &'a str,
    pub class: u8,
    pub event_source: Option<&'a str>,
    pub event_name: Option<&'a str>,
    /// Only when it is not the session key.
    pub access_key_id: Option<&'a str>,
    pub error_code: Option<&'a str>,
}

impl SessionStore {
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn interned_strings(&self) -> usize {
        self.strings.len()
    }

    /// Builds a packed session, taking interner references.
    pub fn make_session(&self, h: &NewHome<'_>) -> Session {
        let home = match (h.tag, h.value) {
            (_, Some(HomeValue::V4(a))) => u32::from(*a),
            (_, Some(HomeValue::Text(t))) => self.strings.acquire(t),
            (_, None) => NONE,
        };
        let (event_id, interned) = match uuid::Uuid::try_parse(h.event_id) {
            Ok(u) => (*u.as_bytes(), false),
            Err(_) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&self.strings.acquire(h.event_id).to_le_bytes());
                (b, true)
            }
        };
        // A unique key would make the interned profile unique per session: pack it instead.
        let packed = h.access_key_id.and_then(pack_key);
        let profile = match packed {
            Some(_) => profile(&NewHome {
                access_key_id: None,
                ..*h
            }),
            None => profile(h),
        };
        let (key_flag, key) = packed.unwrap_or((0, [0; 12]));
        Session {
            home,
            event_id,
            first_time: clamp_u32(h.time),
            expires: clamp_u32(h.expires),
            ua: self.strings.acquire(&profile),
            key,
            flags: (h.tag as u8) | key_flag | if interned { FLAG_EVENT_ID_INTERNED } else { 0 },
            class: h.class,
        }
    }

    /// Drops a session's interner references.
    pub fn release(&self, s: &Session) {
        if s.tag().interned() {
            self.strings.release(s.home);
        }
        if s.flags & FLAG_EVENT_ID_INTERNED != 0 {
            self.strings.release(u32::from_le_bytes(
                s.event_id[..4].try_into().unwrap_or([0; 4]),
            ));
        }
        self.strings.release(s.ua);
    }

    /// Whether a session's home equals a candidate home.
    pub fn same_home(&self, s: &Session, tag: HomeTag, value: &HomeValue) -> bool {
        let home = s.home;
        match value {
            HomeValue::V4(a) => s.tag() == tag && home == u32::from(*a),
            HomeValue::Text(t) => {
                s.tag().interned() && self.strings.get(home).is_some_and(|h| &*h == t.as_str())
            }
        }
    }

    pub fn evidence(&self, s: &Session) -> HomeEvidence {
        let tag = s.tag();
        let home = s.home;
        let origin = match tag {
            HomeTag::PublicV4 | HomeTag::PrivateV4 => Ipv4Addr::from(home).to_string(),
            HomeTag::LambdaRuntime => "lambda-runtime".to_string(),
            _ => {
                let t = self
                    .strings
                    .get(home)
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                t.strip_prefix("o:").map(str::to_string).unwrap_or(t)
            }
        };
        let event_id = if s.flags & FLAG_EVENT_ID_INTERNED != 0 {
            let id = u32::from_le_bytes(s.event_id[..4].try_into().unwrap_or([0; 4]));
            self.strings
                .get(id)
                .map(|s| s.to_string())
                .unwrap_or_default()
        } else {
            uuid::Uuid::from_bytes(s.event_id).hyphenated().to_string()
        };
        let mut h = HomeEvidence {
            tag,
            origin,
            event_id,
            time: s.first_time as i64,
            user_agent: String::new(),
            class: s.class,
            expires: s.expires as i64,
            event_source: None,
            event_name: None,
            access_key_id: None,
            error_code: None,
        };
        if let Some(p) = self.strings.get(s.ua) {
            h.set_profile(&p);
        }
        if let Some(k) = unpack_key(s.flags, s.key) {
            h.access_key_id = Some(k);
        }
        h
    }

    /// Runs `f` on the session entry under its shard's write lock. `f` receives the current
    /// session (if any) and returns the new one (or `None` to remove it) and a result.
    /// Never hold this across an `.await`: it is synchronous by construction.
    pub fn update<R>(&self, key: Key, f: impl FnOnce(Option<&Session>) -> (Update, R)) -> R {
        use dashmap::mapref::entry::Entry;
        match self.sessions.entry(key) {
            Entry::Occupied(occ) => {
                let idx = *occ.get();
                let cur = self.slab.get(idx);
                let (upd, r) = f(Some(&cur));
                match upd {
                    Update::Keep => {}
                    Update::Touch { expires } => {
                        let mut s = cur;
                        let e = s.expires;
                        s.expires = e.max(clamp_u32(expires));
                        s.flags |= FLAG_SEEN_AGAIN;
                        self.slab.set(idx, s);
                    }
                    Update::Replace(mut new) => {
                        // The same session, a new first event: it was seen more than once.
                        if cur.expires >= new.first_time {
                            new.flags |= FLAG_SEEN_AGAIN;
                        }
                        self.slab.set(idx, new);
                        self.release(&cur);
                    }
                    Update::Remove => {
                        occ.remove();
                        self.slab.release(idx);
                        self.release(&cur);
                    }
                }
                r
            }
            Entry::Vacant(vac) => {
                let (upd, r) = f(None);
                if let Update::Replace(new) = upd {
                    vac.insert(self.slab.alloc(new));
                }
                r
            }
        }
    }

    /// A copy of a session, if tracked.
    pub fn peek(&self, key: Key) -> Option<Session> {
        self.sessions.get(&key).map(|idx| self.slab.get(*idx))
    }

    /// Sets a session's home from its portable form (a checkpoint, or the shared store),
    /// replacing what was tracked.
    pub fn seed(&self, key: Key, h: &HomeEvidence) {
        let value = value_of(h);
        let s = self.make_session(&NewHome {
            tag: h.tag,
            value: value.as_ref(),
            event_id: &h.event_id,
            time: h.time,
            expires: h.expires,
            user_agent: &h.user_agent,
            class: h.class,
            event_source: h.event_source.as_deref(),
            event_name: h.event_name.as_deref(),
            access_key_id: h.access_key_id.as_deref(),
            error_code: h.error_code.as_deref(),
        });
        // An entry already present is replaced (and its strings released) by `update`.
        self.update(key, |_| (Update::Replace(s), ()));
    }

    /// Records an explained origin for a session (bounded).
    /// The earliest explanation of an origin is kept, so arrival order does not matter.
    pub fn add_explained(&self, key: Key, origin: String, reason: String, time: i64, expires: i64) {
        let mut e = self.extras.entry(key).or_default();
        e.expires = e.expires.max(clamp_u32(expires));
        if let Some(x) = e.explained.iter_mut().find(|x| x.origin == origin) {
            if time < x.time {
                x.time = time;
                x.reason = reason;
            }
            return;
        }
        if e.explained.len() < MAX_EXPLAINED {
            e.explained.push(Explained {
                origin,
                reason,
                time,
            });
        }
    }

    pub fn explained(&self, key: Key) -> Vec<Explained> {
        self.extras
            .get(&key)
            .map(|e| e.explained.clone())
            .unwrap_or_default()
    }

    /// Marks a (rule, session, origin) as reported until `expires`; false if it already was.
    /// Whether `dedup` was already reported (and not yet swept): a cheap look before building
    /// a finding that [`SessionStore::mark_reported`] would suppress.
    pub fn was_reported(&self, dedup: Key) -> bool {
        self.reported.contains_key(&dedup)
    }

    pub fn mark_reported(&self, dedup: Key, expires: i64) -> bool {
        use dashmap::mapref::entry::Entry;
        match self.reported.entry(dedup) {
            Entry::Occupied(mut o) => {
                let cur = *o.get();
                *o.get_mut() = cur.max(clamp_u32(expires));
                false
            }
            Entry::Vacant(v) => {
                v.insert(clamp_u32(expires));
                true
            }
        }
    }

    /// Removes everything that expired before `now`; then, if more than `max_sessions` remain,
    /// evicts the sessions seen in one event only, closest to expiry first, and only then, if
    /// still over, the others closest to expiry. Returns (expired, evicted).
    pub fn sweep(&self, now: i64, max_sessions: usize) -> (usize, usize) {
        let now = clamp_u32(now);
        let mut removed = 0usize;
        self.sessions.retain(|_, idx| {
            let s = self.slab.get(*idx);
            let keep = s.expires >= now;
            if !keep {
                self.release(&s);
                self.slab.release(*idx);
                removed += 1;
            }
            keep
        });
        self.extras.retain(|_, e| e.expires >= now);
        self.reported.retain(|_, exp| *exp >= now);
        let expired = removed;
        let len = self.sessions.len();
        if len > max_sessions {
            // Eviction order: seen once before seen again, then closest to expiry.
            let rank =
                |s: &Session| ((s.flags & FLAG_SEEN_AGAIN != 0) as u64) << 32 | s.expires as u64;
            let mut ranks: Vec<u64> = self
                .sessions
                .iter()
                .map(|e| rank(&self.slab.get(*e.value())))
                .collect();
            let cut = len - max_sessions;
            let (below, nth, _) = ranks.select_nth_unstable(cut - 1);
            let threshold = *nth;
            // Everything ranked below the threshold goes; of those tied with it, as many as the
            // cut still needs (whichever the map yields first).
            let mut ties = cut - below.iter().filter(|r| **r < threshold).count();
            self.sessions.retain(|_, idx| {
                let s = self.slab.get(*idx);
                let r = rank(&s);
                let evict = r < threshold || (r == threshold && ties > 0);
                if evict {
                    if r == threshold {
                        ties -= 1;
                    }
                    self.release(&s);
                    self.slab.release(*idx);
                    removed += 1;
                }
                !evict
            });
        }
        (expired, removed - expired)
    }

    /// A portable copy of the store, with interned strings resolved.
    pub fn snapshot(&self) -> StoreSnapshot {
        StoreSnapshot {
            sessions: self
                .sessions
                .iter()
                .map(|e| {
                    (
                        u64::from_le_bytes(*e.key()),
                        self.evidence(&self.slab.get(*e.value())),
                    )
                })
                .collect(),
            extras: self
                .extras
                .iter()
                .map(|e| (u64::from_le_bytes(*e.key()), e.value().clone()))
                .collect(),
            reported: self
                .reported
                .iter()
                .map(|e| (u64::from_le_bytes(*e.key()), *e.value()))
                .collect(),
        }
    }

    /// Loads a snapshot (entries already present are kept).
    pub fn restore(&self, snap: &StoreSnapshot) {
        for (k, h) in &snap.sessions {
            self.seed(k.to_le_bytes(), h);
        }
        for (k, e) in &snap.extras {
            self.extras.insert(k.to_le_bytes(), e.clone());
        }
        for (k, exp) in &snap.reported {
            self.reported.insert(k.to_le_bytes(), *exp);
        }
    }
}

/// What [`SessionStore::update`] does with the entry.
pub enum Update {
    Keep,
    /// Extend the expiry to at least this time.
    Touch {
        expires: i64,
    },
    Replace(Session),
    Remove,
}

/// The store as data, for checkpoints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoreSnapshot {
    pub sessions: Vec<(u64, HomeEvidence)>,
    pub extras: Vec<(u64, Extras)>,
    pub reported: Vec<(u64, u32)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_slab_slots_are_reused() {
        let store = SessionStore::default();
        for round in 0..3i64 {
            for i in 0..(CHUNK as u32 + 10) {
                let s = home(
                    &store,
                    HomeTag::PublicV4,
                    &HomeValue::V4(Ipv4Addr::from(i)),
                    round * 1000,
                );
                store.update(key_of(&format!("{round}-{i}")), |_| {
                    (Update::Replace(s), ())
                });
            }
            store.sweep(round * 1000 + 500, usize::MAX);
            assert_eq!(store.len(), 0);
        }
        assert_eq!(
            store.slab.chunks.read().unwrap().len(),
            2,
            "slots are reused, chunks not added"
        );
    }

    #[test]
    fn a_session_entry_is_46_bytes() {
        assert_eq!(std::mem::size_of::<Session>(), 46);
    }

    #[test]
    fn access_keys_pack_into_twelve_bytes_and_back() {
        for k in [
            "ASIAZ2ABCDEF01234567",
            "AKIA0000000000000000",
            "ASIAZZZZZZZZZZZZZZZZ",
        ] {
            let (flag, bytes) = pack_key(k).expect(k);
            assert_eq!(unpack_key(flag, bytes).as_deref(), Some(k));
        }
        for k in ["ASIA-short", "ABIAZ2ABCDEF01234567", "ASIAz2abcdef01234567"] {
            assert!(pack_key(k).is_none(), "{k}");
        }
    }

    fn home(store: &SessionStore, tag: HomeTag, v: &HomeValue, t: i64) -> Session {
        store.make_session(&NewHome {
            tag,
            value: Some(v),
            event_id: "3f1c4e3a-9d8b-4c1e-a2f0-0123456789ab",
            time: t,
            expires: t + 100,
            user_agent: "curl",
            class: 0,
            event_source: Some("s3.amazonaws.com"),
            event_name: Some("ListBuckets"),
            access_key_id: None,
            error_code: None,
        })
    }

    #[test]
    fn evidence_round_trips_through_the_packed_entry() {
        let store = SessionStore::default();
        let v = HomeValue::Text("2600:1f18::1".into());
        let s = home(&store, HomeTag::PublicV6, &v, 1000);
        let ev = store.evidence(&s);
        assert_eq!(ev.origin, "2600:1f18::1");
        assert_eq!(ev.event_id, "3f1c4e3a-9d8b-4c1e-a2f0-0123456789ab");
        assert_eq!(ev.user_agent, "curl");
        assert_eq!(ev.event_name.as_deref(), Some("ListBuckets"));
        assert_eq!(ev.event_source.as_deref(), Some("s3.amazonaws.com"));
        assert_eq!(ev.access_key_id, None);
        assert!(store.same_home(&s, HomeTag::PublicV6, &v));
        assert!(!store.same_home(&s, HomeTag::PublicV6, &HomeValue::Text("::2".into())));
    }

    #[test]
    fn sweep_frees_sessions_and_their_strings() {
        let store = SessionStore::default();
        for i in 0..100u32 {
            let s = home(
                &store,
                HomeTag::PublicV4,
                &HomeValue::V4(Ipv4Addr::from(i)),
                i as i64,
            );
            store.update(key_of(&i.to_string()), |_| (Update::Replace(s), ()));
        }
        assert_eq!(store.len(), 100);
        assert_eq!(store.sweep(150, usize::MAX), (50, 0));
        assert_eq!(store.len(), 50);
        assert_eq!(store.sweep(150, 10), (0, 40));
        assert_eq!(store.len(), 10);
        assert_eq!(store.sweep(10_000, usize::MAX), (10, 0));
        assert_eq!(store.interned_strings(), 0);
    }

    #[test]
    fn snapshot_restores_the_same_homes() {
        let a = SessionStore::default();
        let s = home(
            &a,
            HomeTag::Opaque,
            &HomeValue::Text("o:075.050.255.67".into()),
            5,
        );
        a.update(key_of("k"), |_| (Update::Replace(s), ()));
        a.mark_reported(key_of("r"), 50);
        let b = SessionStore::default();
        b.restore(&a.snapshot());
        let sb = b.update(key_of("k"), |s| (Update::Keep, *s.unwrap()));
        assert_eq!(b.evidence(&sb), a.evidence(&s));
        assert!(!b.mark_reported(key_of("r"), 50));
    }
}
