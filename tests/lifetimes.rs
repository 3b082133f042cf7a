//! Fail closed on odd lifetimes: an event past its credential's configured maximum lifetime
//! (`detection.max_session_secs`) used to give its session a window of zero length, so the session
//! was never locked and a second origin never reported. It is judged with a fallback window
//! instead, counted, and said in a metric.

mod support;

use credwatch::config::Config;
use credwatch::engine::credential::CredentialClass;
use credwatch::engine::Engine;
use support::events::{judge_with, Ev, T0};

const INST: &str = "i-0abc1234def567890";
/// The instance's own address (EC2, us-east-1).
const HOME: &str = "54.160.12.34";
/// Outside AWS.
const THIEF: &str = "185.220.101.4";

fn exceeded(engine: &Engine, class: CredentialClass) -> u64 {
    engine.stats.lifetime_exceeded[class as usize].load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn a_session_older_than_its_configured_maximum_is_still_locked_and_reported() {
    // Issued 7 hours before the calls: past the default 6 h of an instance credential.
    let issued = T0 - 7 * 3600;
    let events = [
        Ev::ec2_issued("ASIAOLDKEY0000000001", INST, HOME, T0, issued),
        Ev::ec2_issued("ASIAOLDKEY0000000001", INST, THIEF, T0 + 60, issued),
    ];
    let mut cfg = Config::default();
    // The outside-AWS rule would report the thief on its own: this is about the window.
    cfg.rules.insert(
        "workload_credentials_outside_aws".into(),
        toml::from_str("enabled = false").unwrap(),
    );
    let engine = Engine::new(&cfg);
    let found = judge_with(&engine, &events);
    let reuse: Vec<_> = found
        .iter()
        .filter(|f| f.rule == "session_token_reuse")
        .collect();
    assert_eq!(reuse.len(), 1, "{found:#?}");
    assert_eq!(reuse[0].suspicious_origin.as_deref(), Some(THIEF));
    assert_eq!(exceeded(&engine, CredentialClass::Ec2Instance), 2);

    // Within its lifetime: judged as before, nothing counted.
    let fresh = [
        Ev::ec2_issued("ASIAOKKEY00000000001", INST, HOME, T0, T0 - 600),
        Ev::ec2_issued("ASIAOKKEY00000000001", INST, THIEF, T0 + 60, T0 - 600),
    ];
    let engine = Engine::new(&cfg);
    let found = judge_with(&engine, &fresh);
    assert_eq!(
        found
            .iter()
            .filter(|f| f.rule == "session_token_reuse")
            .count(),
        1
    );
    assert_eq!(exceeded(&engine, CredentialClass::Ec2Instance), 0);
}

#[test]
fn the_fallback_window_is_the_class_maximum_from_the_event() {
    // A second origin more than the class's maximum after the (already too old) first event is
    // a new window: nothing to compare with, no finding.
    let issued = T0 - 7 * 3600;
    let max = Config::default().detection.max_session_secs.ec2_instance as i64;
    let events = [
        Ev::ec2_issued("ASIAOLDKEY0000000002", INST, HOME, T0, issued),
        Ev::ec2_issued("ASIAOLDKEY0000000002", INST, THIEF, T0 + max + 60, issued),
    ];
    let mut cfg = Config::default();
    cfg.rules.insert(
        "workload_credentials_outside_aws".into(),
        toml::from_str("enabled = false").unwrap(),
    );
    let engine = Engine::new(&cfg);
    let found = judge_with(&engine, &events);
    assert!(
        found.iter().all(|f| f.rule != "session_token_reuse"),
        "{found:#?}"
    );
}
