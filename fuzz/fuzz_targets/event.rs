//! The event field reader (borrowed fields, lenient booleans, raw request parameters) and the
//! engine behind it, on one event's JSON text.
#![no_main]
use std::sync::OnceLock;

use credwatch::config::Config;
use credwatch::engine::{Engine, Position};
use credwatch::event::CloudTrailEvent;
use libfuzzer_sys::fuzz_target;

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::new(&Config::default()))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ev) = CloudTrailEvent::parse(text) {
        let _ = (ev.event_id(), ev.access_key_id(), ev.account_id(), ev.user_agent());
    }
    let _ = engine().process_json(
        text,
        Position {
            prefix: "fuzz",
            index: 0,
        },
    );
});
