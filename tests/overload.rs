//! Overload: a spray of distinct keys (10^6 new sessions a minute of event time) against an
//! engine capped at `detection.max_sessions`. The store stays within the cap after each sweep,
//! the evictions are counted, and a real session (seen in more than one event before the spray)
//! is still there when its credential is used from a second origin.

mod support;

use std::sync::atomic::Ordering::Relaxed;

use credwatch::config::Config;
use credwatch::engine::{Engine, Position};
use support::events::{Ev, T0};

const INST: &str = "i-0abc1234def567890";
const HOME: &str = "54.160.12.34";
const THIEF: &str = "185.220.101.4";
const MAX_SESSIONS: usize = 5_000;
const SPRAY: usize = 100_000;
/// The sweeper's period in event time (`run` sweeps every 30 s of wall time).
const SWEEP_EVERY: usize = 10_000;

fn process(engine: &Engine, e: &Ev, i: usize) -> Vec<credwatch::finding::Finding> {
    engine
        .process_json(
            &e.text(),
            Position {
                prefix: "spray",
                index: i,
            },
        )
        .expect("event parses")
}

#[test]
fn a_spray_of_new_keys_is_evicted_first_and_the_real_session_is_still_caught() {
    let mut cfg = Config::default();
    cfg.detection.max_sessions = MAX_SESSIONS;
    cfg.rules.insert(
        "workload_credentials_outside_aws".into(),
        toml::from_str("enabled = false").unwrap(),
    );
    let engine = Engine::new(&cfg);
    let mut found = Vec::new();
    // The real instance works before the spray: two calls from its home, with a credential
    // issued 5 hours ago (it expires before any of the spray's).
    let issued = T0 - 5 * 3600;
    let real = |ip: &str, t: i64| Ev::ec2_issued("ASIAREALKEY000000001", INST, ip, t, issued);
    found.extend(process(&engine, &real(HOME, T0), 0));
    found.extend(process(&engine, &real(HOME, T0 + 5), 1));
    // 10^6 sessions a minute: 100,000 distinct keys over 6 s of event time, each seen once.
    let mut peak_after_sweep = 0;
    for n in 0..SPRAY {
        let t = T0 + 10 + (n as i64 * 6) / SPRAY as i64;
        let ip = format!("198.18.{}.{}", (n >> 8) & 255, n & 255);
        let key = format!("ASIASPRAY{n:011}");
        // Freshly issued instance credentials: each expires after the real session does, so
        // evicting by expiry alone would drop the real session first.
        let ev = Ev::ec2_issued(&key, &format!("i-{n:017x}"), &ip, t, t);
        found.extend(process(&engine, &ev, n + 2));
        if (n + 1) % SWEEP_EVERY == 0 {
            engine.sweep_at(T0);
            peak_after_sweep = peak_after_sweep.max(engine.tracked_sessions());
        }
    }
    assert!(
        peak_after_sweep <= MAX_SESSIONS,
        "{peak_after_sweep} sessions tracked after a sweep, cap {MAX_SESSIONS}"
    );
    let evicted = engine.stats.sessions_evicted.load(Relaxed);
    assert!(
        evicted as usize >= SPRAY - MAX_SESSIONS,
        "evictions counted: {evicted}"
    );
    assert_eq!(
        engine.stats.sessions_expired.load(Relaxed),
        0,
        "nothing expired: it was evicted"
    );
    // The real session is still tracked.
    let k = credwatch::engine::store::key_of(&format!("111122223333:app-role/{INST}"));
    assert!(
        engine.store.peek(k).is_some(),
        "the real session was evicted"
    );
    // The theft, after the spray.
    found.extend(process(&engine, &real(THIEF, T0 + 20), SPRAY + 2));
    found.extend(engine.settle(credwatch::settle::SettleAt::END));
    let reuse: Vec<_> = found
        .iter()
        .filter(|f| f.rule == "session_token_reuse")
        .collect();
    assert_eq!(reuse.len(), 1, "{reuse:#?}");
    assert_eq!(reuse[0].suspicious_origin.as_deref(), Some(THIEF));
    assert!(
        reuse[0].events.iter().any(|e| e.origin == HOME),
        "{:#?}",
        reuse[0]
    );
}
