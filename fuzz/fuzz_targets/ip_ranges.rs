//! AWS's ip-ranges.json (fetched from a URL or read from a file): parsed or refused, and a
//! parsed one answers lookups.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = credwatch::placement::ranges::IpRanges::parse_maybe_gzip(data, "fuzz") {
        for a in ["3.80.0.1", "54.239.0.1", "2600:1f18::1", "10.0.0.1", "::ffff:52.95.0.1"] {
            let _ = r.lookup(a.parse().unwrap());
        }
    }
});
