//! The size-capped gunzip every Kinesis record and file goes through: never a panic, never more
//! than the cap.
#![no_main]
use libfuzzer_sys::fuzz_target;

const CAP: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if let Ok(out) = credwatch::decode::gzip::gunzip_capped(data, CAP) {
        assert!(out.len() <= CAP);
    }
});
