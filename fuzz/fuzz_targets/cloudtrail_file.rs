//! Every CloudTrail file format `hunt` recognises (S3 objects, JSON arrays, JSON lines,
//! EventBridge events, single events, stored envelopes; gzip'd or not), each event judged.
#![no_main]
use std::sync::OnceLock;

use credwatch::app::process_event;
use credwatch::config::Config;
use credwatch::decode::cloudtrail_file::decode_file;
use credwatch::decode::Limits;
use credwatch::engine::Engine;
use libfuzzer_sys::fuzz_target;

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::new(&Config::default()))
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_decompressed_bytes: 1 << 20,
        max_event_bytes: 64 << 10,
    };
    let _ = decode_file(
        data,
        &limits,
        "fuzz",
        |raw| {
            let _ = process_event(engine(), &raw, "fuzz", &limits);
        },
        |_| {},
    );
    // Candidates reach the settling code too.
    let _ = engine().settle(credwatch::settle::SettleAt::END);
});
