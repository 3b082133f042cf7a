//! One parsed `ip-ranges.json` and its longest-prefix lookup.
//!
//! Format: <https://docs.aws.amazon.com/vpc/latest/userguide/aws-ip-ranges.html>. The file has a
//! `syncToken` (publication time in Unix seconds, as a string), a `createDate`
//! (`YYYY-MM-DD-HH-MM-SS`, UTC), `prefixes[]` (`ip_prefix`, `region`, `service`,
//! `network_border_group`) and `ipv6_prefixes[]` (`ipv6_prefix`, ...). `network_border_group` is
//! not kept. A prefix is listed once per service that uses it: once as `AMAZON` (the superset of
//! every AWS address) and again as `EC2`, `S3`, ...
//!
//! # The answer for an address
//! The longest listed prefix that contains it. Among the entries of that one prefix, the winner is
//! the first by: `EC2` (any account's instances, the case that matters for a stolen credential),
//! then any other specific service in alphabetical order, then `AMAZON`; entries of equal service
//! are ordered by region name. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are looked up as IPv4.
//!
//! # The lookup
//! Every family's prefixes (one winning entry per prefix) are flattened into sorted disjoint
//! intervals that cover the whole address space: `starts[i]` is where interval `i` begins, and
//! `slots[i]` the label (prefix, service, region) of the innermost prefix covering it, or none.
//! A lookup is one binary search over `starts`; it allocates nothing. Service and region names are
//! interned once per process into `&'static str` (see [`intern`]), so an [`AwsRange`] is `Copy`.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;

use super::{AwsRange, Place, RangesError};
use crate::decode::gzip::{gunzip_capped, is_gzip};

/// The snapshot built into the binary (`config/aws-ip-ranges.json.gz`, see its README).
static BUNDLED_GZ: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/config/aws-ip-ranges.json.gz"
));

/// [`IpRanges::source`] of the bundled snapshot.
pub const BUNDLED_SOURCE: &str = "bundled:config/aws-ip-ranges.json.gz";

/// The largest `ip-ranges.json` accepted, decompressed or downloaded (AWS's is about 2.6 MB).
pub const MAX_FILE_BYTES: usize = 64 << 20;

/// At most this many distinct service and region names in one file (AWS's has about 70), and
/// each at most [`MAX_NAME_BYTES`] long: names are interned for the life of the process.
const MAX_NAMES: usize = 1024;
const MAX_NAME_BYTES: usize = 64;

/// No label: the interval is outside every listed prefix.
const NONE: u32 = u32::MAX;

/// `s` as a `&'static str` shared by every caller: each distinct string is leaked once, on first
/// use, into a process-wide set. Only for small closed vocabularies (AWS service and region
/// names); [`IpRanges::parse`] caps what one file can add.
pub fn intern(s: &str) -> &'static str {
    static SET: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let set = SET.get_or_init(Default::default);
    // A poisoned lock only means another thread panicked between a get and an insert.
    let mut g = set.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(&have) = g.get(s) {
        return have;
    }
    let leaked: &'static str = Box::leak(s.to_owned().into_boxed_str());
    g.insert(leaked);
    leaked
}

/// One parsed `ip-ranges.json` with a compact longest-prefix lookup.
#[derive(Debug, Default)]
pub struct IpRanges {
    source: String,
    sync_token: String,
    create_date: Option<i64>,
    /// Entries in the file (`prefixes`, `ipv6_prefixes`), duplicates included.
    entries: (usize, usize),
    /// Service and region names, indexed by [`Label::service`] and [`Label::region`].
    names: Vec<&'static str>,
    v4: Table<Ipv4Net>,
    v6: Table<Ipv6Net>,
}

impl IpRanges {
    /// Parses the bytes of an `ip-ranges.json`; `source` (a path or URL) names it in errors and
    /// in [`IpRanges::source`]. An empty file, or one without a single prefix, is an error.
    pub fn parse(bytes: &[u8], source: &str) -> Result<IpRanges, RangesError> {
        let err = |what: String| RangesError(format!("{source}: {what}"));
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(err("the file is empty".into()));
        }
        let raw: RawFile<'_> = serde_json::from_slice(bytes)
            .map_err(|e| err(format!("not a valid ip-ranges.json: {e}")))?;
        if raw.prefixes.is_empty() && raw.ipv6_prefixes.is_empty() {
            return Err(err(
                "no prefixes (`prefixes` and `ipv6_prefixes` are both empty or missing)".into(),
            ));
        }
        let create_date = match raw.create_date.as_deref() {
            None | Some("") => None,
            Some(text) => Some(parse_create_date(text).ok_or_else(|| {
                err(format!(
                    "createDate {text:?} is not a YYYY-MM-DD-HH-MM-SS time"
                ))
            })?),
        };
        let mut names = Names::default();
        let mut v4 = Vec::with_capacity(raw.prefixes.len());
        for (i, p) in raw.prefixes.iter().enumerate() {
            let net: Ipv4Net = p.ip_prefix.trim().parse().map_err(|e| {
                err(format!(
                    "prefixes[{i}].ip_prefix {:?} is not an IPv4 prefix ({e})",
                    p.ip_prefix
                ))
            })?;
            let label = names
                .label(net.trunc(), &p.service, &p.region)
                .map_err(|w| err(format!("prefixes[{i}]: {w}")))?;
            v4.push(label);
        }
        let mut v6 = Vec::with_capacity(raw.ipv6_prefixes.len());
        for (i, p) in raw.ipv6_prefixes.iter().enumerate() {
            let net: Ipv6Net = p.ipv6_prefix.trim().parse().map_err(|e| {
                err(format!(
                    "ipv6_prefixes[{i}].ipv6_prefix {:?} is not an IPv6 prefix ({e})",
                    p.ipv6_prefix
                ))
            })?;
            let label = names
                .label(net.trunc(), &p.service, &p.region)
                .map_err(|w| err(format!("ipv6_prefixes[{i}]: {w}")))?;
            v6.push(label);
        }
        let mut names = names.list;
        names.shrink_to_fit();
        Ok(IpRanges {
            source: source.to_owned(),
            sync_token: raw
                .sync_token
                .map(SyncToken::into_string)
                .unwrap_or_default(),
            create_date,
            entries: (raw.prefixes.len(), raw.ipv6_prefixes.len()),
            v4: Table::build(v4, &names),
            v6: Table::build(v6, &names),
            names,
        })
    }

    /// Reads and parses a file (`ip-ranges.json`, or the same gzip'd).
    pub fn from_file(path: &Path) -> Result<IpRanges, RangesError> {
        let source = path.display().to_string();
        let bytes =
            std::fs::read(path).map_err(|e| RangesError(format!("{source}: cannot read: {e}")))?;
        Self::parse_maybe_gzip(&bytes, &source)
    }

    /// [`IpRanges::parse`] of `bytes`, gunzipped first (capped at [`MAX_FILE_BYTES`]) if they
    /// are gzip.
    pub fn parse_maybe_gzip(bytes: &[u8], source: &str) -> Result<IpRanges, RangesError> {
        if !is_gzip(bytes) {
            return Self::parse(bytes, source);
        }
        let json = gunzip_capped(bytes, MAX_FILE_BYTES)
            .map_err(|(_, why)| RangesError(format!("{source}: cannot gunzip: {why}")))?;
        Self::parse(&json, source)
    }

    /// The snapshot built into the binary, decompressed and parsed once per process.
    pub fn bundled() -> Arc<IpRanges> {
        static BUNDLED: OnceLock<Arc<IpRanges>> = OnceLock::new();
        BUNDLED
            .get_or_init(|| {
                // The snapshot is part of the build, checked by the tests: not input.
                let r = Self::load_bundled()
                    .unwrap_or_else(|e| panic!("the bundled AWS IP ranges do not parse: {e}"));
                Arc::new(r)
            })
            .clone()
    }

    /// Decompresses and parses the bundled snapshot anew (what [`IpRanges::bundled`] does once).
    pub fn load_bundled() -> Result<IpRanges, RangesError> {
        Self::parse_maybe_gzip(BUNDLED_GZ, BUNDLED_SOURCE)
    }

    /// The AWS range holding `addr`, if any (see the module doc for which one).
    pub fn lookup(&self, addr: IpAddr) -> Option<AwsRange> {
        match addr.to_canonical() {
            IpAddr::V4(a) => self.v4.find(u32::from(a)).map(|l| self.range(l)),
            IpAddr::V6(a) => self.v6.find(u128::from(a)).map(|l| self.range(l)),
        }
    }

    /// Where `addr` is: a private address, in an AWS range, or outside AWS.
    pub fn place(&self, addr: IpAddr) -> Place {
        let addr = addr.to_canonical();
        if crate::engine::origin::is_private(addr) {
            return Place::Private;
        }
        match self.lookup(addr) {
            Some(r) => Place::Aws(r),
            None => Place::OutsideAws,
        }
    }

    /// The path, URL or [`BUNDLED_SOURCE`] these ranges were read from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// `createDate` in Unix seconds (None when the file has none).
    pub fn create_date(&self) -> Option<i64> {
        self.create_date
    }

    /// `syncToken` as published (empty when the file has none).
    pub fn sync_token(&self) -> &str {
        &self.sync_token
    }

    /// Entries in the file: (`prefixes`, `ipv6_prefixes`), a prefix listed for several services
    /// counted once per service.
    pub fn prefix_counts(&self) -> (usize, usize) {
        self.entries
    }

    /// Distinct prefixes: (IPv4, IPv6).
    pub fn distinct_prefix_counts(&self) -> (usize, usize) {
        (self.v4.labels.len(), self.v6.labels.len())
    }

    /// Intervals in the flattened lookup: (IPv4, IPv6).
    pub fn interval_counts(&self) -> (usize, usize) {
        (self.v4.starts.len(), self.v6.starts.len())
    }

    /// Approximate heap held by these ranges: the lookup tables, the name list and the strings
    /// (the interned names themselves are shared by the process and not counted).
    pub fn heap_bytes(&self) -> usize {
        self.v4.heap_bytes()
            + self.v6.heap_bytes()
            + self.names.capacity() * std::mem::size_of::<&str>()
            + self.source.capacity()
            + self.sync_token.capacity()
    }

    /// Every distinct prefix with its winning service and region, IPv4 then IPv6, each in
    /// address order.
    pub fn iter(&self) -> impl Iterator<Item = AwsRange> + '_ {
        let v4 = self.v4.labels.iter().map(|l| self.range(l));
        v4.chain(self.v6.labels.iter().map(|l| self.range(l)))
    }

    fn range<N: Family>(&self, l: &Label<N>) -> AwsRange {
        AwsRange {
            prefix: l.net.into(),
            service: self.names[l.service as usize],
            region: self.names[l.region as usize],
        }
    }
}

/// The precedence of two service names on the same prefix: `EC2`, then the other specific
/// services alphabetically, then `AMAZON`.
pub fn service_order(a: &str, b: &str) -> Ordering {
    fn class(s: &str) -> u8 {
        match s {
            "EC2" => 0,
            "AMAZON" => 2,
            _ => 1,
        }
    }
    class(a).cmp(&class(b)).then_with(|| a.cmp(b))
}

/// `createDate` (`YYYY-MM-DD-HH-MM-SS`, UTC) in Unix seconds.
pub fn parse_create_date(text: &str) -> Option<i64> {
    chrono::NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%d-%H-%M-%S")
        .ok()
        .map(|t| t.and_utc().timestamp())
}

#[derive(Deserialize)]
#[serde(expecting = "an ip-ranges.json object")]
struct RawFile<'a> {
    #[serde(rename = "syncToken", default)]
    sync_token: Option<SyncToken>,
    #[serde(rename = "createDate", default, borrow)]
    create_date: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    prefixes: Vec<RawV4<'a>>,
    #[serde(default, borrow)]
    ipv6_prefixes: Vec<RawV6<'a>>,
}

/// AWS writes `syncToken` as a string of digits; a number is accepted too.
#[derive(Deserialize)]
#[serde(untagged)]
enum SyncToken {
    Text(String),
    Number(u64),
}

impl SyncToken {
    fn into_string(self) -> String {
        match self {
            SyncToken::Text(s) => s,
            SyncToken::Number(n) => n.to_string(),
        }
    }
}

#[derive(Deserialize)]
struct RawV4<'a> {
    #[serde(borrow)]
    ip_prefix: Cow<'a, str>,
    #[serde(borrow)]
    region: Cow<'a, str>,
    #[serde(borrow)]
    service: Cow<'a, str>,
}

#[derive(Deserialize)]
struct RawV6<'a> {
    #[serde(borrow)]
    ipv6_prefix: Cow<'a, str>,
    #[serde(borrow)]
    region: Cow<'a, str>,
    #[serde(borrow)]
    service: Cow<'a, str>,
}

/// The names of one file being parsed, numbered in order of first appearance.
#[derive(Default)]
struct Names {
    ids: HashMap<&'static str, u16>,
    list: Vec<&'static str>,
}

impl Names {
    fn id(&mut self, s: &str, field: &str) -> Result<u16, String> {
        if let Some(&id) = self.ids.get(s) {
            return Ok(id);
        }
        if s.len() > MAX_NAME_BYTES {
            return Err(format!(
                "{field} {s:?} is longer than {MAX_NAME_BYTES} bytes"
            ));
        }
        if self.list.len() >= MAX_NAMES {
            return Err(format!(
                "more than {MAX_NAMES} distinct service and region names"
            ));
        }
        let name = intern(s);
        let id = self.list.len() as u16;
        self.list.push(name);
        self.ids.insert(name, id);
        Ok(id)
    }

    fn label<N>(&mut self, net: N, service: &str, region: &str) -> Result<Label<N>, String> {
        Ok(Label {
            net,
            service: self.id(service.trim(), "service")?,
            region: self.id(region.trim(), "region")?,
        })
    }
}

/// A listed prefix and the names of its winning entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Label<N> {
    net: N,
    service: u16,
    region: u16,
}

/// An address family's prefix type, as the lookup needs it.
trait Family: Copy + Eq + Into<IpNet> {
    type Addr: Copy + Ord + Default + std::fmt::Debug;
    const MAX: Self::Addr;
    /// First and last address.
    fn bounds(self) -> (Self::Addr, Self::Addr);
    fn bits(self) -> u8;
    /// `a + 1`, for `a` below [`Family::MAX`].
    fn succ(a: Self::Addr) -> Self::Addr;
}

impl Family for Ipv4Net {
    type Addr = u32;
    const MAX: u32 = u32::MAX;
    fn bounds(self) -> (u32, u32) {
        (self.network().into(), self.broadcast().into())
    }
    fn bits(self) -> u8 {
        self.prefix_len()
    }
    fn succ(a: u32) -> u32 {
        a + 1
    }
}

impl Family for Ipv6Net {
    type Addr = u128;
    const MAX: u128 = u128::MAX;
    fn bounds(self) -> (u128, u128) {
        (self.network().into(), self.broadcast().into())
    }
    fn bits(self) -> u8 {
        self.prefix_len()
    }
    fn succ(a: u128) -> u128 {
        a + 1
    }
}

/// One family's flattened lookup: `starts` ascending from 0, `slots[i]` the index in `labels` of
/// the innermost prefix over `starts[i]..starts[i + 1]` (or [`NONE`]).
#[derive(Debug)]
struct Table<N: Family> {
    starts: Vec<N::Addr>,
    slots: Vec<u32>,
    labels: Vec<Label<N>>,
}

impl<N: Family> Default for Table<N> {
    fn default() -> Self {
        Table {
            starts: Vec::new(),
            slots: Vec::new(),
            labels: Vec::new(),
        }
    }
}

impl<N: Family> Table<N> {
    fn build(mut entries: Vec<Label<N>>, names: &[&str]) -> Table<N> {
        // Outer prefixes before the inner ones they contain (same start: shorter first), and
        // one prefix's entries in precedence order, so `dedup` keeps each prefix's winner.
        entries.sort_by(|a, b| {
            let (sa, sb) = (a.net.bounds().0, b.net.bounds().0);
            sa.cmp(&sb)
                .then(a.net.bits().cmp(&b.net.bits()))
                .then_with(|| service_order(names[a.service as usize], names[b.service as usize]))
                .then_with(|| names[a.region as usize].cmp(names[b.region as usize]))
        });
        entries.dedup_by(|later, kept| later.net == kept.net);
        let mut t = Table {
            starts: vec![N::Addr::default()],
            slots: vec![NONE],
            labels: entries,
        };
        // Prefixes are nested or disjoint: a stack of the ones open at the sweep position.
        let mut open: Vec<(N::Addr, u32)> = Vec::new();
        for (i, l) in t.labels.iter().enumerate() {
            let (start, end) = l.net.bounds();
            while let Some(&(open_end, _)) = open.last() {
                if open_end >= start {
                    break;
                }
                open.pop();
                let under = open.last().map_or(NONE, |o| o.1);
                push(&mut t.starts, &mut t.slots, N::succ(open_end), under);
            }
            push(&mut t.starts, &mut t.slots, start, i as u32);
            open.push((end, i as u32));
        }
        while let Some((open_end, _)) = open.pop() {
            if open_end == N::MAX {
                continue;
            }
            let under = open.last().map_or(NONE, |o| o.1);
            push(&mut t.starts, &mut t.slots, N::succ(open_end), under);
        }
        t.starts.shrink_to_fit();
        t.slots.shrink_to_fit();
        t.labels.shrink_to_fit();
        t
    }

    fn find(&self, a: N::Addr) -> Option<&Label<N>> {
        let i = self.starts.partition_point(|&s| s <= a).checked_sub(1)?;
        let slot = *self.slots.get(i)?;
        self.labels.get(slot as usize)
    }

    fn heap_bytes(&self) -> usize {
        self.starts.capacity() * std::mem::size_of::<N::Addr>()
            + self.slots.capacity() * std::mem::size_of::<u32>()
            + self.labels.capacity() * std::mem::size_of::<Label<N>>()
    }
}

/// Appends interval `start -> slot`: one starting at the same address is replaced (it was empty),
/// and one continuing the previous interval's label is merged into it.
fn push<A: PartialEq>(starts: &mut Vec<A>, slots: &mut Vec<u32>, start: A, slot: u32) {
    if starts.last() == Some(&start) {
        starts.pop();
        slots.pop();
    }
    if slots.last() == Some(&slot) {
        return;
    }
    starts.push(start);
    slots.push(slot);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::net::Ipv4Addr;

    fn file(v4: &[(&str, &str, &str)], v6: &[(&str, &str, &str)]) -> String {
        let one = |key: &str, (p, s, r): &(&str, &str, &str)| {
            format!(
                r#"{{"{key}":"{p}","region":"{r}","service":"{s}","network_border_group":"{r}"}}"#
            )
        };
        let v4: Vec<String> = v4.iter().map(|e| one("ip_prefix", e)).collect();
        let v6: Vec<String> = v6.iter().map(|e| one("ipv6_prefix", e)).collect();
        format!(
            r#"{{"syncToken":"1787411825","createDate":"2026-08-22-15-17-05","prefixes":[{}],"ipv6_prefixes":[{}]}}"#,
            v4.join(","),
            v6.join(",")
        )
    }

    fn ranges(v4: &[(&str, &str, &str)], v6: &[(&str, &str, &str)]) -> IpRanges {
        IpRanges::parse(file(v4, v6).as_bytes(), "test.json").unwrap()
    }

    fn at(r: &IpRanges, a: &str) -> Option<(String, &'static str, &'static str)> {
        r.lookup(a.parse().unwrap())
            .map(|x| (x.prefix.to_string(), x.service, x.region))
    }

    #[test]
    fn the_longest_prefix_wins_and_the_outer_one_resumes_after_it() {
        let r = ranges(
            &[
                ("10.0.0.0/8", "AMAZON", "us-east-1"),
                ("10.1.0.0/16", "EC2", "us-east-1"),
                ("10.1.2.0/24", "S3", "us-west-2"),
                ("11.0.0.0/8", "AMAZON", "eu-west-1"),
            ],
            &[],
        );
        let want = |p: &str, s, g| Some((p.to_string(), s, g));
        assert_eq!(
            at(&r, "10.0.0.1"),
            want("10.0.0.0/8", "AMAZON", "us-east-1")
        );
        assert_eq!(at(&r, "10.1.0.0"), want("10.1.0.0/16", "EC2", "us-east-1"));
        assert_eq!(at(&r, "10.1.2.255"), want("10.1.2.0/24", "S3", "us-west-2"));
        assert_eq!(at(&r, "10.1.3.0"), want("10.1.0.0/16", "EC2", "us-east-1"));
        assert_eq!(
            at(&r, "10.2.0.0"),
            want("10.0.0.0/8", "AMAZON", "us-east-1")
        );
        assert_eq!(
            at(&r, "11.255.255.255"),
            want("11.0.0.0/8", "AMAZON", "eu-west-1")
        );
        assert_eq!(at(&r, "12.0.0.0"), None);
        assert_eq!(at(&r, "9.255.255.255"), None);
        assert_eq!(at(&r, "0.0.0.0"), None);
        assert_eq!(at(&r, "255.255.255.255"), None);
    }

    #[test]
    fn a_specific_service_beats_amazon_and_ec2_beats_the_other_services() {
        let r = ranges(
            &[
                ("3.0.0.0/24", "AMAZON", "us-east-1"),
                ("3.0.0.0/24", "S3", "us-east-1"),
                ("3.0.0.0/24", "EC2", "us-east-1"),
                ("3.0.1.0/24", "ROUTE53", "us-east-1"),
                ("3.0.1.0/24", "AMAZON", "us-east-1"),
                ("3.0.1.0/24", "CLOUDFRONT", "us-east-1"),
            ],
            &[],
        );
        assert_eq!(at(&r, "3.0.0.7").unwrap().1, "EC2");
        assert_eq!(at(&r, "3.0.1.7").unwrap().1, "CLOUDFRONT");
        assert_eq!(r.prefix_counts(), (6, 0));
        assert_eq!(r.distinct_prefix_counts(), (2, 0));
    }

    #[test]
    fn edges_of_the_address_space_are_covered() {
        let r = ranges(
            &[
                ("0.0.0.0/0", "AMAZON", "GLOBAL"),
                ("255.255.255.255/32", "EC2", "GLOBAL"),
                ("0.0.0.0/32", "S3", "GLOBAL"),
            ],
            &[
                ("::/0", "AMAZON", "GLOBAL"),
                (
                    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
                    "EC2",
                    "GLOBAL",
                ),
            ],
        );
        assert_eq!(at(&r, "0.0.0.0").unwrap().1, "S3");
        assert_eq!(at(&r, "0.0.0.1").unwrap().1, "AMAZON");
        assert_eq!(at(&r, "255.255.255.254").unwrap().1, "AMAZON");
        assert_eq!(at(&r, "255.255.255.255").unwrap().1, "EC2");
        assert_eq!(at(&r, "::").unwrap().1, "AMAZON");
        assert_eq!(
            at(&r, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff").unwrap().1,
            "EC2"
        );
    }

    #[test]
    fn ipv4_mapped_ipv6_addresses_are_looked_up_as_ipv4() {
        let r = ranges(
            &[("34.224.0.0/12", "EC2", "us-east-1")],
            &[("2600:1f18::/36", "EC2", "us-east-1")],
        );
        assert_eq!(at(&r, "::ffff:34.234.236.212").unwrap().0, "34.224.0.0/12");
        assert_eq!(at(&r, "2600:1f18::1").unwrap().0, "2600:1f18::/36");
        assert_eq!(at(&r, "2600:1f19::1"), None);
        assert_eq!(r.place("::ffff:10.0.0.1".parse().unwrap()), Place::Private);
    }

    #[test]
    fn the_flattened_lookup_agrees_with_a_scan_on_random_nested_prefixes() {
        let mut rng = StdRng::seed_from_u64(7);
        let services = ["AMAZON", "EC2", "S3", "CLOUDFRONT"];
        for _round in 0..50 {
            let mut v4: Vec<(String, &str, &str)> = Vec::new();
            for _ in 0..rng.random_range(1..40) {
                // Few distinct top bits so that prefixes nest and repeat.
                let base: u32 =
                    (rng.random_range(0..8u32) << 28) | (rng.random_range(0..16u32) << 20);
                let len = rng.random_range(1..=24u8);
                let net = Ipv4Net::new(base.into(), len).unwrap().trunc();
                let s = services[rng.random_range(0..services.len())];
                v4.push((net.to_string(), s, "r"));
            }
            let spec: Vec<(&str, &str, &str)> =
                v4.iter().map(|(p, s, r)| (p.as_str(), *s, *r)).collect();
            let r = ranges(&spec, &[]);
            for _ in 0..500 {
                let a: u32 = (rng.random_range(0..8u32) << 28) | (rng.random::<u32>() >> 4);
                let addr = Ipv4Addr::from(a);
                let want = spec
                    .iter()
                    .filter(|(p, _, _)| p.parse::<Ipv4Net>().unwrap().contains(&addr))
                    .min_by(|x, y| {
                        let (px, py) = (
                            x.0.parse::<Ipv4Net>().unwrap(),
                            y.0.parse::<Ipv4Net>().unwrap(),
                        );
                        py.prefix_len()
                            .cmp(&px.prefix_len())
                            .then_with(|| service_order(x.1, y.1))
                    })
                    .map(|(p, s, _)| (p.to_string(), *s));
                let got = at(&r, &addr.to_string()).map(|(p, s, _)| (p, s));
                assert_eq!(got, want, "{addr} in {spec:?}");
            }
        }
    }

    #[test]
    fn create_date_and_sync_token_are_read() {
        let r = ranges(&[("3.0.0.0/24", "AMAZON", "us-east-1")], &[]);
        // 2026-08-22T15:17:05Z
        assert_eq!(r.create_date(), Some(1_787_411_825));
        assert_eq!(r.sync_token(), "1787411825");
        assert_eq!(
            parse_create_date("2026-08-22-15-17-05"),
            Some(1_787_411_825)
        );
        assert_eq!(parse_create_date("2026-08-22T15:17:05Z"), None);
    }

    #[test]
    fn names_are_interned_once_for_the_process() {
        let a = intern(&String::from("EC2"));
        let b = intern(&String::from("EC2"));
        assert!(std::ptr::eq(a, b));
        let r1 = ranges(&[("3.0.0.0/24", "EC2", "us-east-1")], &[]);
        let r2 = ranges(&[("4.0.0.0/24", "EC2", "us-east-1")], &[]);
        let (x, y) = (
            r1.lookup("3.0.0.1".parse().unwrap()).unwrap(),
            r2.lookup("4.0.0.1".parse().unwrap()).unwrap(),
        );
        assert!(std::ptr::eq(x.service, y.service));
        assert!(std::ptr::eq(x.region, y.region));
    }

    #[test]
    fn errors_name_the_source_and_what_is_wrong() {
        let e = |text: &str| IpRanges::parse(text.as_bytes(), "x/ip.json").unwrap_err().0;
        assert_eq!(e(""), "x/ip.json: the file is empty");
        assert_eq!(e(" \n"), "x/ip.json: the file is empty");
        let m = e("{\"prefixes\": [\n{\"ip_prefix\": }]}");
        assert!(
            m.starts_with("x/ip.json: not a valid ip-ranges.json:"),
            "{m}"
        );
        assert!(m.contains("line 2 column"), "{m}");
        let m = e("42");
        assert!(m.contains("expected an ip-ranges.json object"), "{m}");
        let m = e(r#"{"syncToken":"1","prefixes":[],"ipv6_prefixes":[]}"#);
        assert!(m.starts_with("x/ip.json: no prefixes"), "{m}");
        assert!(e("{}").starts_with("x/ip.json: no prefixes"));
        let m = e(&file(&[("3.0.0.0/33", "EC2", "r")], &[]));
        assert!(
            m.starts_with(r#"x/ip.json: prefixes[0].ip_prefix "3.0.0.0/33" is not an IPv4 prefix"#),
            "{m}"
        );
        let m = e(&file(&[], &[("3.0.0.0/8", "EC2", "r")]));
        assert!(
            m.contains(r#"ipv6_prefixes[0].ipv6_prefix "3.0.0.0/8" is not an IPv6 prefix"#),
            "{m}"
        );
        let long = "X".repeat(65);
        let m = e(&file(&[("3.0.0.0/8", &long, "r")], &[]));
        assert!(
            m.contains(&format!(
                "prefixes[0]: service \"{long}\" is longer than 64 bytes"
            )),
            "{m}"
        );
        // 600 services and 600 regions.
        let many: Vec<(String, String, String)> = (0..600)
            .map(|i| {
                (
                    format!("{}.0.0.0/8", i % 200),
                    format!("S{i}"),
                    format!("r{i}"),
                )
            })
            .collect();
        let spec: Vec<(&str, &str, &str)> = many
            .iter()
            .map(|(p, s, r)| (p.as_str(), s.as_str(), r.as_str()))
            .collect();
        let m = e(&file(&spec, &[]));
        assert!(
            m.contains("more than 1024 distinct service and region names"),
            "{m}"
        );
        // An empty name is odd but harmless.
        let r = ranges(&[("3.0.0.0/8", "EC2", "")], &[]);
        assert_eq!(at(&r, "3.0.0.1").unwrap().2, "");
        let m = e(
            r#"{"createDate":"yesterday","prefixes":[{"ip_prefix":"3.0.0.0/8","region":"r","service":"S"}]}"#,
        );
        assert!(m.contains(r#"createDate "yesterday" is not"#), "{m}");
        let m = e(r#"{"prefixes":[{"ip_prefix":"3.0.0.0/8","region":"r"}]}"#);
        assert!(m.contains("missing field `service`"), "{m}");
    }

    #[test]
    fn a_prefix_with_host_bits_is_read_as_its_network() {
        let r = ranges(&[("3.0.0.77/24", "EC2", "r")], &[]);
        assert_eq!(at(&r, "3.0.0.1").unwrap().0, "3.0.0.0/24");
    }

    #[test]
    fn an_empty_default_finds_nothing() {
        let r = IpRanges::default();
        assert_eq!(r.lookup("3.0.0.1".parse().unwrap()), None);
        assert_eq!(r.lookup("2600::1".parse().unwrap()), None);
        assert_eq!(r.place("3.0.0.1".parse().unwrap()), Place::OutsideAws);
    }

    #[test]
    fn a_gzip_file_is_read_too() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(file(&[("3.0.0.0/24", "EC2", "r")], &[]).as_bytes())
            .unwrap();
        let bytes = gz.finish().unwrap();
        let r = IpRanges::parse_maybe_gzip(&bytes, "x.json.gz").unwrap();
        assert_eq!(at(&r, "3.0.0.1").unwrap().1, "EC2");
        let m = IpRanges::parse_maybe_gzip(&bytes[..bytes.len() / 2], "x.json.gz")
            .unwrap_err()
            .0;
        assert!(m.starts_with("x.json.gz: cannot gunzip"), "{m}");
    }
}
