//! The session-origin store shared by every consumer task.
//!
//! One entry per workload session (an instance's role session across key rotations, else the
//! access key), keyed by a 64-bit xxh3 of the session key. What decides a finding stays in
//! memory; the evidence of the first event goes to a temporary file:
//!
//! - **Index**: 256 shards (by the key's top byte), each a mutex over a
//!   `hashbrown::HashTable<u32>` whose buckets hold only a slot number (4 bytes and a control
//!   byte). The table's `eq` compares the key stored in the slot's entry. It is not a
//!   `DashMap<Key, u32>`: that stores the 8-byte key in every bucket as well, 12 bytes a bucket,
//!   and with hashbrown's power-of-two sizing (at 10M sessions the load is 0.596) that alone
//!   was ~21.8 bytes per session, two thirds of the 32-byte budget. Here the index is ~8.4.
//! - **Slab** (per shard): chunks of 512 packed 20-byte entries: the key less its top byte
//!   (the shard's number) 7, home 4 (IPv4 bits or an interner id), first-event time 4, expiry
//!   4, and a flags byte (home tag, seen again, credential class). Freed slots are reused.
//! - **Spill**: the first event's id (a UUID, or an interner id), its interned profile (user
//!   agent, event source and name, error code) and its packed access key: a 40-byte record per
//!   slot in one anonymous temporary file (no name, nothing left behind; in `TMPDIR`), each
//!   shard's chunk of slots an extent of it. New records wait in a write-behind buffer of 64 per
//!   shard and are written a run of contiguous records at a time, so the hot path makes no
//!   system call per event (one write per 64 new sessions of a shard). They are read back
//!   (`pread`) only for findings, same-second tie-breaks, checkpoints, and when a session is
//!   replaced or removed (to release its interned strings; a sweep reads them a chunk at a
//!   time). A read or write error is logged and the evidence comes back marked
//!   [`EVIDENCE_UNAVAILABLE`]: the in-memory entry alone decides whether there is a finding,
//!   so no detection is lost.
//!
//! Sessions that only ever had explained origins and the per-finding dedup marks live in small
//! side tables (DashMaps). At 10M sessions the store holds ~29 heap bytes per session
//! (`bench/store_memory.rs`, which counts the whole engine); the spill file's pages are page
//! cache, not heap: on a `TMPDIR` in tmpfs they are memory all the same.

use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use dashmap::DashMap;
use hashbrown::HashTable;
use parking_lot::Mutex;
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

// Hot entry flags: bits 0..3 hold the home tag (`HomeTag::from_bits`), bits 4..8 the
// credential class.

/// The session was seen in more than one event. Over `max_sessions`, sessions seen once go
/// first: a spray of distinct keys (each seen once) cannot evict the sessions that are in use.
const FLAG_SEEN_AGAIN: u8 = 1 << 3;
const CLASS_SHIFT: u8 = 4;
/// Credential classes are 0..=7 today; four bits keep room for eight more.
const CLASS_MASK: u8 = 0x0f;

/// Evidence record flags: the first event's id is interned (not a UUID).
const FLAG_EVENT_ID_INTERNED: u8 = 1 << 0;
/// `key` holds the first event's `ASIA…` / `AKIA…` access key (a session not keyed by it).
const FLAG_KEY_ASIA: u8 = 1 << 1;
const FLAG_KEY_AKIA: u8 = 1 << 2;
/// Set in every record written, so a hole in the spill file (never written) reads as absent.
const FLAG_RECORD_WRITTEN: u8 = 1 << 7;

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

/// One tracked session in the slab: 20 bytes, packed. The key is here (not in the index) so
/// that the index bucket is a bare slot number; the evidence of the first event is in the
/// spill file, at the same slot.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, packed)]
struct Entry {
    /// The session key less its top byte (the shard's number).
    key: [u8; 7],
    /// IPv4 address bits, or an interner id (see [`HomeTag::interned`]).
    home: u32,
    first_time: u32,
    expires: u32,
    /// bits 0..3: home tag; bit 3: seen in more than one event; bits 4..8: credential class.
    flags: u8,
}

/// The evidence of a session's first event that is not needed to decide anything: the part of
/// a session kept in the spill file, read back only for findings, tie-breaks and checkpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Cold {
    /// The first event's id: UUID bytes, or an interner id in the first four bytes.
    event_id: [u8; 16],
    /// Interned `user agent \x1f event source \x1f event name \x1f access key \x1f error`:
    /// few distinct values (the key only when it is neither the session key nor packable).
    ua: u32,
    /// The first event's access key, packed, when the session is not keyed by it (an instance's
    /// role session across key rotations): see the key flags.
    key: [u8; 12],
    /// bit 0: event id interned; bits 1, 2: `key` holds an ASIA / AKIA key.
    flags: u8,
}

/// Bytes per evidence record in a spill file: event id 16, profile id 4, packed access key 12,
/// flags 1, padding 3, and the low 32 bits of the session key, to check that a record read
/// back belongs to the session asking (a stale copy of a session whose slot was reused).
const RECORD: usize = 40;

type Record = [u8; RECORD];

fn check_of(key: &[u8]) -> u32 {
    u32::from_le_bytes([key[0], key[1], key[2], key[3]])
}

impl Cold {
    fn encode(&self, check: u32) -> Record {
        let mut b = [0u8; RECORD];
        b[..16].copy_from_slice(&self.event_id);
        b[16..20].copy_from_slice(&self.ua.to_le_bytes());
        b[20..32].copy_from_slice(&self.key);
        b[32] = self.flags | FLAG_RECORD_WRITTEN;
        b[36..40].copy_from_slice(&check.to_le_bytes());
        b
    }

    fn decode(b: &Record, check: u32) -> Option<Cold> {
        if b[32] & FLAG_RECORD_WRITTEN == 0 || b[36..40] != check.to_le_bytes() {
            return None;
        }
        let mut c = Cold {
            flags: b[32] & !FLAG_RECORD_WRITTEN,
            ..Cold::default()
        };
        c.event_id.copy_from_slice(&b[..16]);
        c.ua = u32::from_le_bytes([b[16], b[17], b[18], b[19]]);
        c.key.copy_from_slice(&b[20..32]);
        Some(c)
    }

    fn interned_event_id(&self) -> Option<u32> {
        (self.flags & FLAG_EVENT_ID_INTERNED != 0).then(|| {
            u32::from_le_bytes([
                self.event_id[0],
                self.event_id[1],
                self.event_id[2],
                self.event_id[3],
            ])
        })
    }
}

/// A session as the store hands it out: a copy of its slab entry, and where its evidence is.
#[derive(Debug, Clone, Copy)]
pub struct Session {
    home: u32,
    pub first_time: u32,
    pub expires: u32,
    flags: u8,
    cold: ColdRef,
}

#[derive(Debug, Clone, Copy)]
enum ColdRef {
    /// Built by [`SessionStore::make_session`], not stored yet.
    Held(Cold),
    /// Stored: the record at `slot` of shard `shard`'s spill (if its check matches).
    Spilled { shard: u8, slot: u32, check: u32 },
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

/// Index shards, chosen by the key's top byte: a shard's entries keep the other seven bytes.
const SHARD_BITS: u32 = 8;
const SHARDS: usize = 1 << SHARD_BITS;
const _: () = assert!(SHARD_BITS == 8, "entries keep the key less its top byte");

/// Entries per slab chunk: growth wastes at most one chunk (10 KiB) per shard. A chunk's
/// evidence records are one extent of the spill file.
const CHUNK: usize = 512;

/// Evidence records a shard buffers before writing them to the spill file.
const PENDING_MAX: usize = 64;

/// Which shard a key is in, and its hash in that shard's table. hashbrown takes the top 7
/// bits of the hash for its control bytes and the low bits for the bucket, so the table hash
/// is the key multiplied by an odd constant: the top bits no longer are the shard's.
fn locate(key: &Key) -> (usize, u64) {
    let k = u64::from_le_bytes(*key);
    (
        (k >> (64 - SHARD_BITS)) as usize,
        k.wrapping_mul(0x9e37_79b9_7f4a_7c15),
    )
}

fn low7(key: &Key) -> [u8; 7] {
    [key[0], key[1], key[2], key[3], key[4], key[5], key[6]]
}

/// A session key from its shard (the top byte) and the seven bytes its entry keeps.
fn full_key(shard: usize, low: [u8; 7]) -> Key {
    let mut k = [0u8; 8];
    k[..7].copy_from_slice(&low);
    k[7] = shard as u8;
    k
}

/// One shard's sessions: the index (slot numbers only), the slab of entries and its free slots.
#[derive(Default)]
struct ShardMap {
    /// This shard's number: the top byte of its keys.
    shard: usize,
    table: HashTable<u32>,
    chunks: Vec<Box<[Entry]>>,
    free: Vec<u32>,
    next: u32,
}

fn entry_at(chunks: &[Box<[Entry]>], slot: u32) -> Entry {
    chunks[slot as usize / CHUNK][slot as usize % CHUNK]
}

impl ShardMap {
    fn find(&self, hash: u64, key: &Key) -> Option<u32> {
        let chunks = &self.chunks;
        let low = low7(key);
        self.table
            .find(hash, |&s| entry_at(chunks, s).key == low)
            .copied()
    }

    fn set(&mut self, slot: u32, e: Entry) {
        self.chunks[slot as usize / CHUNK][slot as usize % CHUNK] = e;
    }

    /// A slot for a new entry (a freed one first), and indexes it.
    fn insert(&mut self, hash: u64, e: Entry) -> u32 {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                let s = self.next;
                self.next += 1;
                if s as usize % CHUNK == 0 {
                    self.chunks
                        .push(vec![Entry::default(); CHUNK].into_boxed_slice());
                }
                s
            }
        };
        self.set(slot, e);
        let ShardMap {
            shard,
            table,
            chunks,
            ..
        } = self;
        table.insert_unique(hash, slot, |&s| {
            locate(&full_key(*shard, entry_at(chunks, s).key)).1
        });
        slot
    }

    fn remove(&mut self, hash: u64, key: &Key) {
        let ShardMap {
            table,
            chunks,
            free,
            ..
        } = self;
        let low = low7(key);
        if let Ok(o) = table.find_entry(hash, |&s| entry_at(chunks, s).key == low) {
            let (slot, _) = o.remove();
            free.push(slot);
        }
    }
}

/// The store's spill file: an anonymous temporary file (no name, nothing left behind), made at
/// the first write. Each shard's chunk of slots has an extent of `CHUNK` records in it, handed
/// out in the order the shards first write to them.
#[derive(Default)]
struct SpillFile {
    file: std::sync::OnceLock<Option<std::fs::File>>,
    extents: std::sync::atomic::AtomicU32,
}

impl SpillFile {
    fn get(&self) -> Option<&std::fs::File> {
        self.file
            .get_or_init(|| match tempfile::tempfile() {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        "session store: cannot create its spill file; first-event evidence will be unavailable (detection is not affected)"
                    );
                    None
                }
            })
            .as_ref()
    }
}

/// A shard's evidence records: a write-behind buffer, and where its chunks' extents are.
#[derive(Default)]
struct Spill {
    /// Extent of each chunk of slots, for the chunks written so far.
    extents: Vec<u32>,
    /// Records not written yet, in the order they were made (a later one for a slot wins).
    pending: Vec<(u32, Record)>,
    errors: u64,
}

impl Spill {
    fn error(&mut self, what: &str, err: &std::io::Error) {
        self.errors += 1;
        if self.errors.is_power_of_two() {
            tracing::warn!(
                error = %err,
                errors = self.errors,
                "session store spill file: {what}; the evidence of the sessions concerned is unavailable (detection is not affected)"
            );
        }
    }

    /// Where `slot`'s record is in the file; an extent is given to its chunk if `make`.
    fn offset(&mut self, f: &SpillFile, slot: u32, make: bool) -> Option<u64> {
        let c = slot as usize / CHUNK;
        while make && self.extents.len() <= c {
            self.extents
                .push(f.extents.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        }
        let extent = *self.extents.get(c)? as u64;
        Some((extent * CHUNK as u64 + (slot as usize % CHUNK) as u64) * RECORD as u64)
    }

    fn push(&mut self, f: &SpillFile, slot: u32, rec: Record) {
        if self.pending.capacity() == 0 {
            self.pending.reserve_exact(PENDING_MAX);
        }
        self.pending.push((slot, rec));
        if self.pending.len() >= PENDING_MAX {
            self.flush(f);
        }
    }

    /// Writes the pending records, a run of contiguous records in one write.
    fn flush(&mut self, f: &SpillFile) {
        if self.pending.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending);
        // Stable: of two records for one slot, the later stays last.
        pending.sort_by_key(|(slot, _)| *slot);
        if let Some(file) = f.get() {
            let mut run: Vec<u8> = Vec::with_capacity(pending.len() * RECORD);
            let mut start = 0u64;
            for (i, (slot, rec)) in pending.iter().enumerate() {
                // Only the last record for a slot is written.
                if pending.get(i + 1).is_some_and(|(s, _)| s == slot) {
                    continue;
                }
                let Some(at) = self.offset(f, *slot, true) else {
                    continue;
                };
                if !run.is_empty() && start + run.len() as u64 != at {
                    self.write(file, start, &run);
                    run.clear();
                }
                if run.is_empty() {
                    start = at;
                }
                run.extend_from_slice(rec);
            }
            if !run.is_empty() {
                self.write(file, start, &run);
            }
        } else {
            self.errors += pending.len() as u64;
        }
        pending.clear();
        self.pending = pending;
    }

    fn write(&mut self, file: &std::fs::File, at: u64, bytes: &[u8]) {
        if let Err(e) = file.write_all_at(bytes, at) {
            self.error("write failed", &e);
        }
    }

    /// Reads `n` records from `slot` on (one chunk at most); what was never written reads as
    /// zeros.
    fn read_span(&mut self, f: &SpillFile, slot: u32, n: usize) -> Option<Vec<u8>> {
        let base = self.offset(f, slot, false)?;
        let file = f.file.get()?.as_ref()?;
        let mut buf = vec![0u8; n * RECORD];
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], base + done as u64) {
                Ok(0) => break,
                Ok(k) => done += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.error("read failed", &e);
                    return None;
                }
            }
        }
        Some(buf)
    }

    fn read(&mut self, f: &SpillFile, slot: u32, check: u32) -> Option<Cold> {
        if let Some((_, rec)) = self.pending.iter().rev().find(|(s, _)| *s == slot) {
            return Cold::decode(rec, check);
        }
        let buf = self.read_span(f, slot, 1)?;
        Cold::decode(buf[..RECORD].try_into().ok()?, check)
    }

    /// The records of many slots `(slot, check)`, in their order: the file is read a span of
    /// one chunk's slots at a time.
    fn read_many(&mut self, f: &SpillFile, want: &[(u32, u32)]) -> Vec<Option<Cold>> {
        let mut out = vec![None; want.len()];
        // The pending records, by slot (the last for a slot wins).
        let mut pending: Vec<(u32, usize)> = self
            .pending
            .iter()
            .enumerate()
            .map(|(i, (s, _))| (*s, i))
            .collect();
        pending.sort_by_key(|&(s, i)| (s, std::cmp::Reverse(i)));
        pending.dedup_by_key(|&mut (s, _)| s);
        let mut order: Vec<usize> = Vec::with_capacity(want.len());
        for (i, &(slot, check)) in want.iter().enumerate() {
            match pending.binary_search_by_key(&slot, |&(s, _)| s) {
                Ok(p) => out[i] = Cold::decode(&self.pending[pending[p].1].1, check),
                Err(_) => order.push(i),
            }
        }
        order.sort_by_key(|&i| want[i].0);
        let chunk = |slot: u32| slot as usize / CHUNK;
        let mut g = 0;
        while g < order.len() {
            let start = want[order[g]].0;
            let mut end = g;
            while end + 1 < order.len() && chunk(want[order[end + 1]].0) == chunk(start) {
                end += 1;
            }
            let last = want[order[end]].0;
            if let Some(buf) = self.read_span(f, start, (last - start) as usize + 1) {
                for &i in &order[g..=end] {
                    let at = (want[i].0 - start) as usize * RECORD;
                    if let Ok(rec) = buf[at..at + RECORD].try_into() {
                        out[i] = Cold::decode(rec, want[i].1);
                    }
                }
            }
            g = end + 1;
        }
        out
    }
}

/// Lock order: `map`, then `spill`; a spill lock is held for nothing else. A slot's entry and
/// record are only written by the holder of its shard's `map`.
#[derive(Default)]
struct Shard {
    map: Mutex<ShardMap>,
    spill: Mutex<Spill>,
}

pub struct SessionStore {
    shards: Box<[Shard]>,
    file: SpillFile,
    extras: Map<Extras>,
    reported: Map<u32>,
    strings: Arc<Interner>,
}

impl Default for SessionStore {
    fn default() -> Self {
        SessionStore {
            shards: (0..SHARDS)
                .map(|shard| Shard {
                    map: Mutex::new(ShardMap {
                        shard,
                        ..ShardMap::default()
                    }),
                    spill: Mutex::default(),
                })
                .collect(),
            file: SpillFile::default(),
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
        (self.flags >> CLASS_SHIFT) & CLASS_MASK
    }

    fn stored(shard: usize, slot: u32, e: &Entry) -> Session {
        Session {
            home: e.home,
            first_time: e.first_time,
            expires: e.expires,
            flags: e.flags,
            cold: ColdRef::Spilled {
                shard: shard as u8,
                slot,
                check: check_of(&e.key),
            },
        }
    }

    fn entry(&self, key: Key) -> Entry {
        Entry {
            key: low7(&key),
            home: self.home,
            first_time: self.first_time,
            expires: self.expires,
            flags: self.flags,
        }
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

/// What [`SessionStore::evidence`] puts in `user_agent` (with an empty `event_id`) when the
/// first event's record cannot be read back from the spill file.
pub const EVIDENCE_UNAVAILABLE: &str = "(first-event evidence unavailable: spill file error)";

impl SessionStore {
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.map.lock().table.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| s.map.lock().table.is_empty())
    }

    pub fn interned_strings(&self) -> usize {
        self.strings.len()
    }

    /// Spill file errors so far (each logged at most at powers of two).
    pub fn spill_errors(&self) -> u64 {
        self.shards.iter().map(|s| s.spill.lock().errors).sum()
    }

    /// Builds a session (not stored yet), taking interner references.
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
            first_time: clamp_u32(h.time),
            expires: clamp_u32(h.expires),
            flags: (h.tag as u8) | (h.class & CLASS_MASK) << CLASS_SHIFT,
            cold: ColdRef::Held(Cold {
                event_id,
                ua: self.strings.acquire(&profile),
                key,
                flags: key_flag | if interned { FLAG_EVENT_ID_INTERNED } else { 0 },
            }),
        }
    }

    /// A session's evidence record: held, or read back from its shard's spill (`None` when it
    /// cannot be read, or the slot now holds another session's).
    fn cold(&self, s: &Session) -> Option<Cold> {
        match s.cold {
            ColdRef::Held(c) => Some(c),
            ColdRef::Spilled { shard, slot, check } => self.shards[shard as usize]
                .spill
                .lock()
                .read(&self.file, slot, check),
        }
    }

    fn release_home(&self, flags: u8, home: u32) {
        if HomeTag::from_bits(flags).interned() {
            self.strings.release(home);
        }
    }

    fn release_cold(&self, c: Option<Cold>) {
        match c {
            Some(c) => {
                if let Some(id) = c.interned_event_id() {
                    self.strings.release(id);
                }
                self.strings.release(c.ua);
            }
            // Logged where the read failed; the strings stay interned.
            None => tracing::debug!("a removed session's evidence was unreadable"),
        }
    }

    /// Drops a session's interner references.
    pub fn release(&self, s: &Session) {
        self.release_home(s.flags, s.home);
        self.release_cold(self.cold(s));
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

    /// The session's first event in portable form. Reads the spill file unless the record is
    /// still buffered: for findings, tie-breaks and checkpoints only.
    pub fn evidence(&self, s: &Session) -> HomeEvidence {
        self.evidence_of(s, self.cold(s))
    }

    fn evidence_of(&self, s: &Session, cold: Option<Cold>) -> HomeEvidence {
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
        let mut h = HomeEvidence {
            tag,
            origin,
            event_id: String::new(),
            time: s.first_time as i64,
            user_agent: String::new(),
            class: s.class(),
            expires: s.expires as i64,
            event_source: None,
            event_name: None,
            access_key_id: None,
            error_code: None,
        };
        let Some(c) = cold else {
            h.user_agent = EVIDENCE_UNAVAILABLE.to_string();
            return h;
        };
        h.event_id = match c.interned_event_id() {
            Some(id) => self
                .strings
                .get(id)
                .map(|s| s.to_string())
                .unwrap_or_default(),
            None => uuid::Uuid::from_bytes(c.event_id).hyphenated().to_string(),
        };
        if let Some(p) = self.strings.get(c.ua) {
            h.set_profile(&p);
        }
        if let Some(k) = unpack_key(c.flags, c.key) {
            h.access_key_id = Some(k);
        }
        h
    }

    /// Runs `f` on the session entry under its shard's lock. `f` receives the current
    /// session (if any) and returns the new one (or `None` to remove it) and a result.
    /// Never hold this across an `.await`: it is synchronous by construction. `f` may call
    /// [`SessionStore::evidence`] and [`SessionStore::same_home`], not `update` or `peek`.
    pub fn update<R>(&self, key: Key, f: impl FnOnce(Option<&Session>) -> (Update, R)) -> R {
        let (si, hash) = locate(&key);
        let shard = &self.shards[si];
        let mut m = shard.map.lock();
        let Some(slot) = m.find(hash, &key) else {
            let (upd, r) = f(None);
            if let Update::Replace(new) = upd {
                let cold = self.cold(&new);
                let slot = m.insert(hash, new.entry(key));
                if let Some(c) = cold {
                    shard
                        .spill
                        .lock()
                        .push(&self.file, slot, c.encode(check_of(&key)));
                }
            }
            return r;
        };
        let e = entry_at(&m.chunks, slot);
        let cur = Session::stored(si, slot, &e);
        let (upd, r) = f(Some(&cur));
        match upd {
            Update::Keep => {}
            Update::Touch { expires } => {
                let mut e = e;
                let x = e.expires;
                e.expires = x.max(clamp_u32(expires));
                e.flags |= FLAG_SEEN_AGAIN;
                m.set(slot, e);
            }
            Update::Replace(new) => {
                let new_cold = self.cold(&new);
                let mut n = new.entry(key);
                // The same session, a new first event: it was seen more than once.
                if cur.expires >= new.first_time {
                    n.flags |= FLAG_SEEN_AGAIN;
                }
                m.set(slot, n);
                let old_cold = {
                    let mut spill = shard.spill.lock();
                    let old = spill.read(&self.file, slot, check_of(&key));
                    if let Some(c) = new_cold {
                        spill.push(&self.file, slot, c.encode(check_of(&key)));
                    }
                    old
                };
                self.release_home(e.flags, e.home);
                self.release_cold(old_cold);
            }
            Update::Remove => {
                m.remove(hash, &key);
                let old = shard.spill.lock().read(&self.file, slot, check_of(&key));
                self.release_home(e.flags, e.home);
                self.release_cold(old);
            }
        }
        r
    }

    /// A copy of a session, if tracked.
    pub fn peek(&self, key: Key) -> Option<Session> {
        let (si, hash) = locate(&key);
        let m = self.shards[si].map.lock();
        m.find(hash, &key)
            .map(|slot| Session::stored(si, slot, &entry_at(&m.chunks, slot)))
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

    /// Removes the sessions of one shard that `gone` picks, freeing their slots and strings
    /// (their records are read back in spans, under the shard's lock so that no slot is reused
    /// before). Returns how many went.
    fn remove_where(&self, si: usize, mut gone: impl FnMut(&Entry) -> bool) -> usize {
        let shard = &self.shards[si];
        let mut m = shard.map.lock();
        let ShardMap {
            table,
            chunks,
            free,
            ..
        } = &mut *m;
        let mut dead: Vec<(u32, Entry)> = Vec::new();
        table.retain(|slot| {
            let e = entry_at(chunks, *slot);
            let go = gone(&e);
            if go {
                dead.push((*slot, e));
            }
            !go
        });
        if dead.is_empty() {
            return 0;
        }
        let want: Vec<(u32, u32)> = dead.iter().map(|(s, e)| (*s, check_of(&e.key))).collect();
        let colds = shard.spill.lock().read_many(&self.file, &want);
        for ((slot, e), cold) in dead.iter().zip(colds) {
            self.release_home(e.flags, e.home);
            self.release_cold(cold);
            free.push(*slot);
        }
        dead.len()
    }

    /// Removes everything that expired before `now`; then, if more than `max_sessions` remain,
    /// evicts the sessions seen in one event only, closest to expiry first, and only then, if
    /// still over, the others closest to expiry. Returns (expired, evicted).
    pub fn sweep(&self, now: i64, max_sessions: usize) -> (usize, usize) {
        let now = clamp_u32(now);
        let expired: usize = (0..SHARDS)
            .map(|si| self.remove_where(si, |e| e.expires < now))
            .sum();
        self.extras.retain(|_, e| e.expires >= now);
        self.reported.retain(|_, exp| *exp >= now);
        let len = self.len();
        let mut evicted = 0;
        if len > max_sessions {
            // Eviction order: seen once before seen again, then closest to expiry.
            let rank =
                |e: &Entry| ((e.flags & FLAG_SEEN_AGAIN != 0) as u64) << 32 | e.expires as u64;
            let mut ranks: Vec<u64> = Vec::with_capacity(len);
            for shard in self.shards.iter() {
                let m = shard.map.lock();
                ranks.extend(m.table.iter().map(|&s| rank(&entry_at(&m.chunks, s))));
            }
            // Sessions added since `len` was taken are ranked too; cut what `len` needed.
            let cut = (len - max_sessions).min(ranks.len());
            let (below, nth, _) = ranks.select_nth_unstable(cut - 1);
            let threshold = *nth;
            // Everything ranked below the threshold goes; of those tied with it, as many as the
            // cut still needs (whichever the shards yield first).
            let mut ties = cut - below.iter().filter(|r| **r < threshold).count();
            for si in 0..SHARDS {
                evicted += self.remove_where(si, |e| {
                    let r = rank(e);
                    let evict = r < threshold || (r == threshold && ties > 0);
                    if evict && r == threshold {
                        ties -= 1;
                    }
                    evict
                });
            }
        }
        (expired, evicted)
    }

    /// A portable copy of the store, with interned strings resolved and the evidence read back.
    pub fn snapshot(&self) -> StoreSnapshot {
        let mut sessions = Vec::new();
        for (si, shard) in self.shards.iter().enumerate() {
            let m = shard.map.lock();
            let here: Vec<(u32, Entry)> = m
                .table
                .iter()
                .map(|&s| (s, entry_at(&m.chunks, s)))
                .collect();
            let want: Vec<(u32, u32)> = here.iter().map(|(s, e)| (*s, check_of(&e.key))).collect();
            let colds = shard.spill.lock().read_many(&self.file, &want);
            drop(m);
            sessions.extend(here.iter().zip(colds).map(|((slot, e), cold)| {
                (
                    u64::from_le_bytes(full_key(si, e.key)),
                    self.evidence_of(&Session::stored(si, *slot, e), cold),
                )
            }));
        }
        StoreSnapshot {
            sessions,
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

    fn chunks(store: &SessionStore) -> usize {
        store.shards.iter().map(|s| s.map.lock().chunks.len()).sum()
    }

    fn flush(store: &SessionStore) {
        for s in store.shards.iter() {
            s.spill.lock().flush(&store.file);
        }
    }

    fn pending(store: &SessionStore) -> usize {
        store
            .shards
            .iter()
            .map(|s| s.spill.lock().pending.len())
            .sum()
    }

    #[test]
    fn freed_slab_slots_are_reused() {
        let store = SessionStore::default();
        let mut after_first = 0;
        for round in 0..3i64 {
            for i in 0..(CHUNK as u32 + 10) {
                let s = home(
                    &store,
                    HomeTag::PublicV4,
                    &HomeValue::V4(Ipv4Addr::from(i)),
                    round * 1000,
                );
                store.update(key_of(&format!("{i}")), |_| (Update::Replace(s), ()));
            }
            store.sweep(round * 1000 + 500, usize::MAX);
            assert_eq!(store.len(), 0);
            assert_eq!(store.interned_strings(), 0);
            if round == 0 {
                after_first = chunks(&store);
            }
        }
        assert_eq!(
            chunks(&store),
            after_first,
            "slots are reused, chunks not added"
        );
    }

    #[test]
    fn a_session_entry_is_20_bytes_and_its_record_40() {
        assert_eq!(std::mem::size_of::<Entry>(), 20);
        assert_eq!(Cold::default().encode(7).len(), RECORD);
        assert_eq!(RECORD, 40);
        // Every credential class fits the flags byte's four bits.
        for c in crate::engine::credential::CredentialClass::ALL {
            assert!((c as u8) <= CLASS_MASK, "{c:?}");
        }
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

    /// A session whose evidence is unique to `i` (event id interned, access key packed).
    fn numbered(store: &SessionStore, i: u32, t: i64) -> Session {
        store.make_session(&NewHome {
            tag: HomeTag::PublicV4,
            value: Some(&HomeValue::V4(Ipv4Addr::from(i))),
            event_id: &format!("event-{i}"),
            time: t,
            expires: t + 100,
            user_agent: &format!("agent-{}", i % 7),
            class: (i % 8) as u8,
            event_source: Some("ec2.amazonaws.com"),
            event_name: Some("DescribeInstances"),
            access_key_id: Some(&format!("ASIA{i:016}")),
            error_code: (i % 3 == 0).then_some("AccessDenied"),
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
    fn evidence_round_trips_through_the_spill_pending_and_flushed() {
        let store = SessionStore::default();
        // ~117 a shard: each shard wrote a batch of 64 and buffers the rest.
        let n = 30_000u32;
        let mut want = Vec::new();
        for i in 0..n {
            let s = numbered(&store, i, 1000 + i as i64);
            want.push(store.evidence(&s));
            store.update(key_of(&i.to_string()), |_| (Update::Replace(s), ()));
        }
        // The shards flushed at 64 records, the rest is still buffered.
        assert!(pending(&store) > 0);
        assert!(pending(&store) < n as usize);
        let check = |store: &SessionStore| {
            for (i, w) in want.iter().enumerate() {
                let s = store.peek(key_of(&i.to_string())).unwrap();
                let got = store.evidence(&s);
                assert_eq!(&got, w);
                assert_eq!(got.class, (i % 8) as u8);
                assert_eq!(
                    got.access_key_id.as_deref(),
                    Some(format!("ASIA{i:016}").as_str())
                );
            }
        };
        check(&store);
        flush(&store);
        assert_eq!(pending(&store), 0);
        check(&store);
        assert_eq!(store.spill_errors(), 0);
    }

    #[test]
    fn a_reused_slot_holds_the_new_sessions_evidence() {
        let store = SessionStore::default();
        let a = key_of("a");
        store.update(a, |_| (Update::Replace(numbered(&store, 1, 10)), ()));
        let stale = store.peek(a).unwrap();
        flush(&store);
        store.update(a, |_| (Update::Remove, ()));
        assert_eq!(store.interned_strings(), 0);
        // A key of the same shard takes the freed slot.
        let (shard, _) = locate(&a);
        let b = (0..)
            .map(|i: u32| key_of(&format!("b{i}")))
            .find(|k| locate(k).0 == shard)
            .unwrap();
        store.update(b, |_| (Update::Replace(numbered(&store, 2, 20)), ()));
        let now = store.peek(b).unwrap();
        assert!(matches!(
            (stale.cold, now.cold),
            (ColdRef::Spilled { slot: x, .. }, ColdRef::Spilled { slot: y, .. }) if x == y
        ));
        for _ in 0..2 {
            assert_eq!(store.evidence(&now).event_id, "event-2");
            // The old copy's record is gone: its check does not match the new one.
            let old = store.evidence(&stale);
            assert_eq!(old.user_agent, EVIDENCE_UNAVAILABLE);
            assert_eq!(old.event_id, "");
            flush(&store);
        }
        // Replacing in place overwrites the record, and releases the old one's strings.
        store.update(b, |_| (Update::Replace(numbered(&store, 3, 30)), ()));
        flush(&store);
        assert_eq!(store.evidence(&store.peek(b).unwrap()).event_id, "event-3");
        store.update(b, |_| (Update::Remove, ()));
        assert_eq!(store.interned_strings(), 0);
        assert!(store.is_empty());
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
    fn sweep_reads_spilled_records_back_to_free_their_strings() {
        let store = SessionStore::default();
        let n = 40_000u32;
        for i in 0..n {
            let s = numbered(&store, i, i as i64);
            store.update(key_of(&i.to_string()), |_| (Update::Replace(s), ()));
        }
        // Seen again, and closest to expiry: evicted only after all those seen once.
        let again = 20_000..20_010u32;
        for i in again.clone() {
            store.update(key_of(&i.to_string()), |_| {
                (Update::Touch { expires: 0 }, ())
            });
        }
        assert!(store.interned_strings() > n as usize);
        assert_eq!(store.sweep(20_100, usize::MAX), (20_000, 0));
        assert_eq!(store.sweep(20_100, 10), (0, 19_990));
        assert_eq!(store.len(), 10);
        for i in (0..20_000u32).chain(n - 10..n) {
            assert!(store.peek(key_of(&i.to_string())).is_none(), "{i} is gone");
        }
        for i in again {
            let s = store
                .peek(key_of(&i.to_string()))
                .expect("seen again: kept");
            assert_eq!(store.evidence(&s).event_id, format!("event-{i}"));
        }
        assert_eq!(store.sweep(i64::MAX, usize::MAX), (10, 0));
        assert_eq!(store.interned_strings(), 0);
        assert_eq!(store.spill_errors(), 0);
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
        let want = a.evidence(&s);
        a.update(key_of("k"), |_| (Update::Replace(s), ()));
        a.mark_reported(key_of("r"), 50);
        let b = SessionStore::default();
        b.restore(&a.snapshot());
        let sb = b.update(key_of("k"), |s| (Update::Keep, *s.unwrap()));
        assert_eq!(b.evidence(&sb), want);
        assert!(!b.mark_reported(key_of("r"), 50));
    }

    #[test]
    fn snapshot_and_restore_round_trip_many_spilled_sessions() {
        let a = SessionStore::default();
        for i in 0..5000u32 {
            let s = numbered(&a, i, 100 + i as i64);
            a.update(key_of(&i.to_string()), |_| (Update::Replace(s), ()));
        }
        let mut snap = a.snapshot();
        assert_eq!(snap.sessions.len(), 5000);
        assert!(snap.sessions.iter().all(|(_, h)| !h.event_id.is_empty()));
        let b = SessionStore::default();
        b.restore(&snap);
        assert_eq!(b.len(), 5000);
        assert_eq!(b.interned_strings(), a.interned_strings());
        let mut again = b.snapshot();
        snap.sessions.sort_by_key(|(k, _)| *k);
        again.sessions.sort_by_key(|(k, _)| *k);
        assert_eq!(again.sessions, snap.sessions);
    }

    #[test]
    fn concurrent_updates_on_overlapping_keys_stay_consistent() {
        let store = SessionStore::default();
        let n = 20_000u32;
        std::thread::scope(|scope| {
            for t in 0..4u32 {
                let store = &store;
                scope.spawn(move || {
                    // Each thread covers half the keys, overlapping its neighbours.
                    for j in 0..n / 2 {
                        let i = (j + t * n / 4) % n;
                        let key = key_of(&i.to_string());
                        store.update(key, |cur| match cur {
                            None => (Update::Replace(numbered(store, i, 1000)), ()),
                            Some(_) if (i + t) % 5 == 0 => {
                                (Update::Replace(numbered(store, i, 1000)), ())
                            }
                            Some(_) => (Update::Touch { expires: 2000 }, ()),
                        });
                        if j % 997 == 0 {
                            let s = store.peek(key).unwrap();
                            assert_eq!(store.evidence(&s).event_id, format!("event-{i}"));
                        }
                    }
                });
            }
        });
        assert_eq!(store.len(), n as usize);
        for i in (0..n).step_by(101) {
            let s = store.peek(key_of(&i.to_string())).unwrap();
            assert_eq!(store.evidence(&s).event_id, format!("event-{i}"));
        }
        assert_eq!(store.sweep(i64::MAX, usize::MAX), (n as usize, 0));
        assert_eq!(store.interned_strings(), 0);
    }
}
