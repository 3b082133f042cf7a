//! Placement: where a public address is, from AWS's published IP ranges (`ip-ranges.json`,
//! <https://docs.aws.amazon.com/vpc/latest/userguide/aws-ip-ranges.html>).
//!
//! [`IpRanges`] is one parsed file with its lookup (see [`ranges`] for the rule that picks the
//! answer). [`Placement`] holds the ranges in use and replaces them on refresh: from
//! `[placement] ip_ranges_url` (fetched at start by [`Placement::load_initial`] and every
//! `refresh_secs` by [`Placement::refresh_loop`]), else `ip_ranges_file` (re-read when its
//! modification time or size changed), else the snapshot built into the binary
//! (`config/aws-ip-ranges.json.gz`). A failed refresh keeps the ranges in use. [`PlacementStats`]
//! is what the metrics layer exports.
//!
//! Being in an AWS range is not being ours: `EC2` ranges hold every AWS account's instances.

pub mod cli;
pub mod ranges;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use ipnet::IpNet;

use crate::config::PlacementConfig;
use crate::decode::gzip::{gunzip_capped, is_gzip};

pub use cli::{cli, PlaceArgs};
pub use ranges::{IpRanges, BUNDLED_SOURCE, MAX_FILE_BYTES};

/// How long one fetch of `ip_ranges_url` may take, connection included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An AWS range that holds an address: the most specific prefix (a named service over `AMAZON`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwsRange {
    pub prefix: IpNet,
    pub service: &'static str,
    pub region: &'static str,
}

/// A loading or parsing error; names the file or URL.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RangesError(pub String);

/// Where an address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A private, loopback, link-local, shared (100.64/10) or unspecified address
    /// ([`crate::engine::origin::is_private`]).
    Private,
    /// In a published AWS range.
    Aws(AwsRange),
    /// A public address in no AWS range.
    OutsideAws,
}

impl Place {
    /// `private`, `aws` or `outside_aws` (metric labels, JSON).
    pub fn as_str(&self) -> &'static str {
        match self {
            Place::Private => "private",
            Place::Aws(_) => "aws",
            Place::OutsideAws => "outside_aws",
        }
    }

    /// The AWS range, for [`Place::Aws`].
    pub fn aws(&self) -> Option<&AwsRange> {
        match self {
            Place::Aws(r) => Some(r),
            _ => None,
        }
    }
}

/// `AWS EC2 us-east-1 (3.80.0.0/12)`, `outside AWS` or `private`.
impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Private => f.write_str("private"),
            Place::Aws(r) => write!(f, "AWS {} {} ({})", r.service, r.region, r.prefix),
            Place::OutsideAws => f.write_str("outside AWS"),
        }
    }
}

/// Counters and gauges of the ranges in use, read by the metrics layer. Times are Unix seconds.
#[derive(Debug, Default)]
pub struct PlacementStats {
    /// `createDate` of the ranges in use (0: the file has none).
    pub created_at: AtomicI64,
    /// When the ranges in use were loaded.
    pub loaded_at: AtomicI64,
    /// Refreshes that loaded new ranges (the first load is not counted).
    pub refresh_ok: AtomicU64,
    /// Refreshes that failed (the ranges in use were kept).
    pub refresh_errors: AtomicU64,
    /// Entries in the ranges in use (`prefixes`, `ipv6_prefixes`).
    pub prefixes_v4: AtomicU64,
    pub prefixes_v6: AtomicU64,
}

impl PlacementStats {
    /// Whether the ranges in use were created more than `max_age_days` before `now` (Unix
    /// seconds). Ranges without a `createDate` are never stale.
    pub fn stale(&self, now: i64, max_age_days: u64) -> bool {
        let created = self.created_at.load(Relaxed);
        let max_age = i64::try_from(max_age_days.saturating_mul(86_400)).unwrap_or(i64::MAX);
        created != 0 && now.saturating_sub(created) > max_age
    }

    /// Age of the ranges in use at `now`, in seconds (None without a `createDate`).
    pub fn age_secs(&self, now: i64) -> Option<i64> {
        let created = self.created_at.load(Relaxed);
        (created != 0).then(|| now.saturating_sub(created))
    }
}

/// What one refresh did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// New ranges were loaded and are in use.
    Loaded,
    /// The file has not changed since it was last read.
    Unchanged,
    /// Neither `ip_ranges_url` nor `ip_ranges_file` is set: the bundled snapshot stays.
    Off,
}

/// The file's identity for "has it changed": modification time and size.
type FileStamp = (Option<SystemTime>, u64);

/// The ranges in use, replaced on refresh. Lookups are lock-free (`arc-swap`).
pub struct Placement {
    current: ArcSwap<IpRanges>,
    stats: PlacementStats,
    /// Stamp of `ip_ranges_file` when it was last read.
    file_stamp: Mutex<Option<FileStamp>>,
    client: OnceLock<reqwest::Client>,
}

impl fmt::Debug for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Placement")
            .field("source", &self.ranges().source())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Placement {
    pub fn new(r: Arc<IpRanges>) -> Placement {
        let p = Placement {
            current: ArcSwap::new(r.clone()),
            stats: PlacementStats::default(),
            file_stamp: Mutex::new(None),
            client: OnceLock::new(),
        };
        p.note_loaded(&r);
        p
    }

    /// `ip_ranges_file` if set, else the bundled snapshot (the URL is for the refresher and
    /// [`Placement::load_initial`]). Warns when the ranges are stale.
    pub fn from_config(cfg: &PlacementConfig) -> Result<Placement, RangesError> {
        let p = match &cfg.ip_ranges_file {
            Some(path) => {
                // Stamped before reading: a change during the read is seen by the next refresh.
                let stamp = file_stamp(path);
                let p = Placement::new(Arc::new(IpRanges::from_file(path)?));
                *p.lock_stamp() = stamp;
                p
            }
            None => Placement::new(IpRanges::bundled()),
        };
        p.warn_if_stale(cfg.max_age_days);
        Ok(p)
    }

    /// At start: with `ip_ranges_url` set, one fetch; if it fails, a warning and
    /// [`Placement::from_config`] (the file, else the bundled snapshot).
    pub async fn load_initial(cfg: &PlacementConfig) -> Result<Placement, RangesError> {
        if let Some(url) = &cfg.ip_ranges_url {
            let client = http_client()?;
            match fetch(&client, url).await {
                Ok(r) => {
                    let p = Placement::new(Arc::new(r));
                    let _ = p.client.set(client);
                    p.warn_if_stale(cfg.max_age_days);
                    return Ok(p);
                }
                Err(e) => {
                    let fallback = match &cfg.ip_ranges_file {
                        Some(f) => f.display().to_string(),
                        None => BUNDLED_SOURCE.to_string(),
                    };
                    tracing::warn!(error = %e, fallback = %fallback, "could not fetch the AWS IP ranges at start; using the fallback");
                }
            }
        }
        Self::from_config(cfg)
    }

    /// The ranges in use.
    pub fn ranges(&self) -> Arc<IpRanges> {
        self.current.load_full()
    }

    pub fn lookup(&self, addr: IpAddr) -> Option<AwsRange> {
        self.current.load().lookup(addr)
    }

    /// Where `addr` is, with the ranges in use.
    pub fn place(&self, addr: IpAddr) -> Place {
        self.current.load().place(addr)
    }

    pub fn stats(&self) -> &PlacementStats {
        &self.stats
    }

    /// Puts `r` in use (and updates the stats' gauges).
    pub fn replace(&self, r: Arc<IpRanges>) {
        self.note_loaded(&r);
        self.current.store(r);
    }

    /// Whether the ranges in use are older than `max_age_days` now.
    pub fn stale(&self, max_age_days: u64) -> bool {
        self.stats.stale(unix_now(), max_age_days)
    }

    /// One refresh: fetches `ip_ranges_url` if set, else re-reads `ip_ranges_file` if its
    /// modification time or size changed. On failure the ranges in use are kept, the error is
    /// counted and logged (naming the source) and returned. Warns after a load if the ranges are
    /// stale.
    pub async fn refresh_once(&self, cfg: &PlacementConfig) -> Result<Refresh, RangesError> {
        let res = self.try_refresh(cfg).await;
        match &res {
            Ok(Refresh::Loaded) => {
                self.stats.refresh_ok.fetch_add(1, Relaxed);
                let r = self.ranges();
                tracing::info!(
                    source = r.source(),
                    sync_token = r.sync_token(),
                    prefixes_v4 = r.prefix_counts().0,
                    prefixes_v6 = r.prefix_counts().1,
                    "AWS IP ranges loaded"
                );
                self.warn_if_stale(cfg.max_age_days);
            }
            Ok(Refresh::Unchanged | Refresh::Off) => {}
            Err(e) => {
                self.stats.refresh_errors.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, in_use = self.ranges().source(), "could not refresh the AWS IP ranges; keeping the ones in use");
            }
        }
        res
    }

    /// Runs [`Placement::refresh_once`] every `refresh_secs` (the first one `refresh_secs` after
    /// the call), forever; spawn it. When a period loads nothing new (nothing to refresh from,
    /// the file unchanged, or a failure) it still warns while the ranges in use are stale.
    pub async fn refresh_loop(self: Arc<Self>, cfg: PlacementConfig) {
        let period = Duration::from_secs(cfg.refresh_secs.max(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // A load has already warned if the new ranges are stale.
            if !matches!(self.refresh_once(&cfg).await, Ok(Refresh::Loaded)) {
                self.warn_if_stale(cfg.max_age_days);
            }
        }
    }

    async fn try_refresh(&self, cfg: &PlacementConfig) -> Result<Refresh, RangesError> {
        if let Some(url) = &cfg.ip_ranges_url {
            let client = match self.client.get() {
                Some(c) => c,
                None => {
                    let c = http_client()?;
                    self.client.get_or_init(|| c)
                }
            };
            let r = fetch(client, url).await?;
            self.replace(Arc::new(r));
            return Ok(Refresh::Loaded);
        }
        let Some(path) = &cfg.ip_ranges_file else {
            return Ok(Refresh::Off);
        };
        let stamp = file_stamp(path);
        if stamp.is_some() && stamp == *self.lock_stamp() {
            return Ok(Refresh::Unchanged);
        }
        let owned: PathBuf = path.clone();
        let r = tokio::task::spawn_blocking(move || IpRanges::from_file(&owned))
            .await
            .map_err(|e| RangesError(format!("{}: reading failed: {e}", path.display())))??;
        self.replace(Arc::new(r));
        *self.lock_stamp() = stamp;
        Ok(Refresh::Loaded)
    }

    fn note_loaded(&self, r: &IpRanges) {
        let s = &self.stats;
        s.created_at.store(r.create_date().unwrap_or(0), Relaxed);
        s.loaded_at.store(unix_now(), Relaxed);
        let (v4, v6) = r.prefix_counts();
        s.prefixes_v4.store(v4 as u64, Relaxed);
        s.prefixes_v6.store(v6 as u64, Relaxed);
    }

    fn warn_if_stale(&self, max_age_days: u64) {
        let now = unix_now();
        if self.stats.stale(now, max_age_days) {
            let r = self.ranges();
            let age_days = self.stats.age_secs(now).unwrap_or(0) / 86_400;
            tracing::warn!(
                source = r.source(),
                age_days,
                max_age_days,
                "the AWS IP ranges in use are stale (createDate older than placement.max_age_days)"
            );
        }
    }

    fn lock_stamp(&self) -> std::sync::MutexGuard<'_, Option<FileStamp>> {
        // A poisoned lock only means a panic between two plain stores.
        self.file_stamp.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn file_stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok(), m.len()))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The HTTP client for `ip_ranges_url`: rustls, [`FETCH_TIMEOUT`].
pub fn http_client() -> Result<reqwest::Client, RangesError> {
    reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("credwatch/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| RangesError(format!("cannot build the HTTP client: {}", chain(&e))))
}

/// GETs and parses `url` (a 2xx body of at most [`MAX_FILE_BYTES`], plain or gzip).
pub async fn fetch(client: &reqwest::Client, url: &str) -> Result<IpRanges, RangesError> {
    let err = |what: String| RangesError(format!("{url}: {what}"));
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| err(format!("GET failed: {}", chain(&e))))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(err(format!("GET answered HTTP {status}")));
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_FILE_BYTES as u64)
    {
        return Err(err(format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| err(format!("reading the body failed: {}", chain(&e))))?
    {
        if body.len() + chunk.len() > MAX_FILE_BYTES {
            return Err(err(format!("larger than {MAX_FILE_BYTES} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    let source = url.to_owned();
    tokio::task::spawn_blocking(move || {
        if is_gzip(&body) {
            let json = gunzip_capped(&body, MAX_FILE_BYTES)
                .map_err(|(_, why)| RangesError(format!("{source}: cannot gunzip: {why}")))?;
            IpRanges::parse(&json, &source)
        } else {
            IpRanges::parse(&body, &source)
        }
    })
    .await
    .map_err(|e| err(format!("parsing failed: {e}")))?
}

/// An error with its causes, `a: b: c` (reqwest's own text leaves the cause out).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range() -> AwsRange {
        AwsRange {
            prefix: "3.80.0.0/12".parse().unwrap(),
            service: "EC2",
            region: "us-east-1",
        }
    }

    #[test]
    fn a_place_prints_as_operators_read_it() {
        assert_eq!(
            Place::Aws(range()).to_string(),
            "AWS EC2 us-east-1 (3.80.0.0/12)"
        );
        assert_eq!(Place::OutsideAws.to_string(), "outside AWS");
        assert_eq!(Place::Private.to_string(), "private");
        assert_eq!(Place::Aws(range()).as_str(), "aws");
        assert_eq!(Place::OutsideAws.as_str(), "outside_aws");
        assert_eq!(Place::Private.as_str(), "private");
    }

    #[test]
    fn private_addresses_are_private_whatever_the_ranges_say() {
        let p = Placement::new(Arc::new(IpRanges::default()));
        for a in [
            "10.1.2.3",
            "192.168.0.1",
            "100.64.0.1",
            "127.0.0.1",
            "fd00::1",
            "::ffff:172.16.0.1",
        ] {
            assert_eq!(p.place(a.parse().unwrap()), Place::Private, "{a}");
        }
        assert_eq!(p.place("8.8.8.8".parse().unwrap()), Place::OutsideAws);
    }

    #[test]
    fn ranges_are_stale_past_max_age_and_never_without_a_create_date() {
        let s = PlacementStats::default();
        assert!(!s.stale(1_000_000_000, 30));
        s.created_at.store(1_787_411_825, Relaxed);
        assert!(!s.stale(1_787_411_825 + 30 * 86_400, 30));
        assert!(s.stale(1_787_411_825 + 30 * 86_400 + 1, 30));
        assert!(!s.stale(i64::MAX, u64::MAX));
        assert_eq!(s.age_secs(1_787_411_825 + 5), Some(5));
    }

    #[test]
    fn the_bundled_snapshot_is_the_real_file_and_is_loaded_once() {
        let b = IpRanges::bundled();
        assert_eq!(b.source(), BUNDLED_SOURCE);
        assert_eq!(b.prefix_counts(), (10_668, 6_160));
        assert_eq!(b.sync_token(), "1787411825");
        assert!(Arc::ptr_eq(&b, &IpRanges::bundled()));
        let p = Placement::from_config(&PlacementConfig::default()).unwrap();
        assert!(Arc::ptr_eq(&b, &p.ranges()));
        assert_eq!(p.stats().prefixes_v4.load(Relaxed), 10_668);
        assert_eq!(p.stats().created_at.load(Relaxed), 1_787_411_825);
    }

    #[test]
    fn a_missing_ranges_file_is_an_error_naming_it() {
        let cfg = PlacementConfig {
            ip_ranges_file: Some("/nonexistent/ip-ranges.json".into()),
            ..PlacementConfig::default()
        };
        let e = Placement::from_config(&cfg).unwrap_err().0;
        assert!(
            e.starts_with("/nonexistent/ip-ranges.json: cannot read:"),
            "{e}"
        );
    }
}
