//! The configuration file: any text gives a config or an error naming the option, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = credwatch::config::Config::from_toml_str(text) {
        // A valid config builds an engine.
        let _ = credwatch::engine::Engine::new(&cfg);
    }
});
