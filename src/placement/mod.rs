//! Placement: where a public address is, from AWS's published IP ranges (`ip-ranges.json`).
//! STUB: interface only; the implementation lands with the placement work.

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};

use ipnet::IpNet;

use crate::config::PlacementConfig;

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

/// One parsed `ip-ranges.json`, with a compact longest-prefix lookup.
#[derive(Debug, Default)]
pub struct IpRanges {
    source: String,
}

impl IpRanges {
    pub fn parse(_bytes: &[u8], source: &str) -> Result<IpRanges, RangesError> {
        Ok(IpRanges {
            source: source.into(),
        })
    }
    pub fn from_file(path: &Path) -> Result<IpRanges, RangesError> {
        Self::parse(&[], &path.display().to_string())
    }
    /// The snapshot built into the binary.
    pub fn bundled() -> Arc<IpRanges> {
        Arc::new(IpRanges::default())
    }
    pub fn lookup(&self, _addr: IpAddr) -> Option<AwsRange> {
        None
    }
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// The ranges in use, replaced on refresh.
pub struct Placement {
    current: RwLock<Arc<IpRanges>>,
}

impl Placement {
    pub fn new(r: Arc<IpRanges>) -> Placement {
        Placement {
            current: RwLock::new(r),
        }
    }
    pub fn from_config(cfg: &PlacementConfig) -> Result<Placement, RangesError> {
        let r = match &cfg.ip_ranges_file {
            Some(p) => Arc::new(IpRanges::from_file(p)?),
            None => IpRanges::bundled(),
        };
        Ok(Placement::new(r))
    }
    pub fn ranges(&self) -> Arc<IpRanges> {
        self.current.read().expect("placement lock").clone()
    }
    pub fn lookup(&self, addr: IpAddr) -> Option<AwsRange> {
        self.current.read().expect("placement lock").lookup(addr)
    }
}
