//! A Kinesis record as a CloudWatch Logs subscription writes it (gzip'd JSON envelope), decoded
//! and every event it gives judged by the engine, as `run` does; and the consumer's path, which
//! reads events in place from the escaped messages, checked against the full decoder. The input is the record's
//! decompressed body, gzip'd here, so that the fuzzer works on the JSON.
#![no_main]
use std::sync::OnceLock;

use credwatch::app::process_event;
use credwatch::config::Config;
use credwatch::decode::cloudwatch_envelope::{assert_read_agrees, decode_record, Scratch};
use credwatch::decode::Limits;
use credwatch::engine::Engine;
use libfuzzer_sys::fuzz_target;

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::new(&Config::default()))
}

/// Level 1: the fuzzer's time goes to the decoder, not the compressor.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::fastest());
    let mut out = vec![0; c.gzip_compress_bound(data.len())];
    let n = c.gzip_compress(data, &mut out).expect("the bound is enough");
    out.truncate(n);
    out
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_decompressed_bytes: 1 << 20,
        max_event_bytes: 64 << 10,
    };
    let mut scratch = Scratch::default();
    let record = gzip(data);
    let _ = decode_record(
        &record,
        &limits,
        "fuzz",
        &mut scratch,
        |raw| {
            let _ = process_event(engine(), &raw, "fuzz", &limits);
        },
        |_| {},
    );
    assert_read_agrees(&record, &limits, "fuzz");
});
