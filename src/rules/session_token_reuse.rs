//! `session_token_reuse` and `foreign_vpc_endpoint`: Netflix's method, made exact.
//!
//! The first origin a session is seen from (by event time) is its home; the same session seen
//! from a second origin within its lifetime is a finding unless the origin is explained. AWS
//! services and `AWS Internal` never lock and are never a second origin; an organisation's VPC
//! endpoint, an address the instance was just given, and an `[[allow]]` network explain an origin;
//! `StartInstances` / `RunInstances` begin a new home. Lambda sessions are at home in their
//! runtime (user-agent markers); any use without them is the second origin.
//! Background: <https://netflixtechblog.com/netflix-cloud-security-detecting-credential-compromise-in-aws-9493d6fd373a>

use std::net::IpAddr;

use crate::engine::credential::{Credential, CredentialClass};
use crate::engine::origin::{Origin, OriginClass};
use crate::engine::store::{
    home_of, key_of, key_of_parts, portable, HomeEvidence, HomeTag, HomeValue, NewHome, Session,
    Update,
};
use crate::engine::{Engine, Explanation, Position};
use crate::event::{format_time, parse_time, CloudTrailEvent};
use crate::finding::{finding_id, Claim, EventEvidence, ExceptionCheck, Finding};
use crate::rules::event_evidence;

pub const RULE: &str = "session_token_reuse";
pub const FOREIGN_VPCE: &str = "foreign_vpc_endpoint";

/// What the lock decided for one event.
enum Outcome {
    /// This event set (or re-set) the home.
    Locked,
    /// Seen from home (or too old to matter).
    Home,
    /// Reset by a restart of the instance at this time: this event is the new home.
    Reset,
    TooOld,
    /// Two origins: `first` is the home, `second` the new origin. `this_is_first` when this
    /// event (earlier in time, or a Lambda runtime call) took the home.
    Pair {
        stored: HomeEvidence,
        this_is_first: bool,
    },
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn check(
    e: &Engine,
    ev: &CloudTrailEvent<'_>,
    cred: &Credential<'_>,
    origin: &Origin<'_>,
    t: i64,
    pos: &Position<'_>,
    out: &mut Vec<Finding>,
) {
    let key = key_of(&cred.session_key);
    let class_max = e.class_max_secs(cred.class);
    let expires = ev
        .creation_date()
        .and_then(parse_time)
        .map(|c| c + class_max)
        .unwrap_or(t + e.cfg.detection.window_secs as i64)
        .max(t);
    let session_account = ev.account_id();

    // Calls an AWS console back end relays for a console session.
    if cred.class == CredentialClass::Console && ev.user_agent().contains("aws-internal") {
        e.stats.explained(Explanation::ConsoleRelay);
        return;
    }
    match origin {
        Origin::AwsService(_) => return e.stats.explained(Explanation::AwsService),
        Origin::AwsInternal => return e.stats.explained(Explanation::AwsInternal),
        Origin::Missing => return,
        Origin::VpcEndpoint { id, account, .. } => {
            let owner = account.or(ev.recipient_account_id.as_deref());
            if e.in_org(owner, session_account) {
                e.stats.explained(Explanation::OrgVpcEndpoint);
                e.store.add_explained(
                    key,
                    origin.to_string(),
                    Explanation::OrgVpcEndpoint.as_str().into(),
                    expires,
                );
            } else if let Some(sev) = e.rules.get(FOREIGN_VPCE) {
                let dedup = key_of_parts(&[
                    FOREIGN_VPCE.as_bytes(),
                    cred.session_key.as_bytes(),
                    id.as_bytes(),
                ]);
                if e.store.mark_reported(dedup, expires) {
                    let owner_text = owner.unwrap_or("an unknown account");
                    out.push(Finding {
                        id: finding_id(&[FOREIGN_VPCE, &cred.session_key, id]),
                        rule: FOREIGN_VPCE.into(),
                        severity: sev,
                        title: format!(
                            "{} used through VPC endpoint {id} of {owner_text}, outside the organisation",
                            cred.session_display
                        ),
                        event_ids: vec![ev.event_id().to_string()],
                        events: vec![event_evidence("trigger", ev, origin, t, pos)],
                        exceptions_checked: vec![ExceptionCheck {
                            exception: Explanation::OrgVpcEndpoint.as_str().into(),
                            applied: false,
                            detail: format!("endpoint owner {owner_text} is not an organisation account"),
                        }],
                        claim: Some(Claim {
                            key: finding_id(&[FOREIGN_VPCE, &cred.session_key, id]),
                            until: expires,
                        }),
                        ..base(ev, cred, t)
                    });
                } else {
                    e.stats
                        .suppressed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            return;
        }
        _ => {}
    }
    let Some(sev) = e.rules.get(RULE) else { return };

    if cred.lambda_runtime {
        e.stats.explained(Explanation::LambdaRuntime);
        consult(e, key, cred, ev, HomeTag::LambdaRuntime, None, t, expires);
        let outcome = e.store.update(key, |cur| match cur {
            Some(s) if s.tag() == HomeTag::LambdaRuntime || (s.expires as i64) < t => {
                if (s.expires as i64) < t {
                    (
                        Update::Replace(new_home(
                            e,
                            ev,
                            HomeTag::LambdaRuntime,
                            None,
                            t,
                            expires,
                            cred,
                        )),
                        Outcome::Locked,
                    )
                } else {
                    (Update::Touch { expires }, Outcome::Home)
                }
            }
            // An outside use came first: this runtime call shows it was a Lambda's credential.
            Some(s) => (
                Update::Replace(new_home(
                    e,
                    ev,
                    HomeTag::LambdaRuntime,
                    None,
                    t,
                    expires.max(s.expires as i64),
                    cred,
                )),
                Outcome::Pair {
                    stored: e.store.evidence(s),
                    this_is_first: true,
                },
            ),
            None => (
                Update::Replace(new_home(
                    e,
                    ev,
                    HomeTag::LambdaRuntime,
                    None,
                    t,
                    expires,
                    cred,
                )),
                Outcome::Locked,
            ),
        });
        report(e, ev, cred, origin, t, pos, outcome, sev, out);
        return;
    }

    let Some((tag, value)) = home_of(origin, e.cfg.detection.ipv6_prefix_len) else {
        return;
    };
    let addr = origin.ip();
    // Explanations that do not depend on the session's state.
    let allow = e.allow_check(addr, session_account, cred, t);
    if allow.applied {
        e.stats.explained(Explanation::AllowList);
        e.store
            .add_explained(key, origin.to_string(), allow.detail, expires);
        return;
    }
    let credited = |e: &Engine| {
        let credit = e.credit_check(cred, addr);
        if credit.applied {
            e.stats.explained(Explanation::InstanceAddress);
            e.store
                .add_explained(key, origin.to_string(), credit.detail, expires);
        }
        credit.applied
    };
    if cred.instance_id.is_some() && credited(e) {
        return;
    }
    consult(e, key, cred, ev, tag, Some(&value), t, expires);
    // With several workers, the call that gave the address (or restarted the instance) may have
    // been read by another: before calling this a second origin, catch up on what they shared.
    if cred.instance_id.is_some() && e.authority.is_some() {
        let candidate = e
            .store
            .peek(key)
            .is_some_and(|s| s.expires as i64 >= t && !e.store.same_home(&s, tag, &value));
        if candidate && e.sync_control() > 0 && credited(e) {
            return;
        }
    }
    let reset = cred
        .instance_id
        .as_deref()
        .and_then(|i| e.instances.reset_at(i));
    let outcome = e.store.update(key, |cur| {
        let fresh = |exp: i64| Update::Replace(new_home(e, ev, tag, Some(&value), t, exp, cred));
        let Some(s) = cur else {
            return (fresh(expires), Outcome::Locked);
        };
        let (first, s_expires) = (s.first_time as i64, s.expires as i64);
        if s_expires < t {
            return (fresh(expires), Outcome::Locked);
        }
        if s.tag() == HomeTag::LambdaRuntime {
            return (
                Update::Touch { expires },
                Outcome::Pair {
                    stored: e.store.evidence(s),
                    this_is_first: false,
                },
            );
        }
        if e.store.same_home(s, tag, &value) {
            if t < first {
                // The same origin, earlier: it keeps the lock with the earlier event.
                return (fresh(expires.max(s_expires)), Outcome::Home);
            }
            return (Update::Touch { expires }, Outcome::Home);
        }
        if let Some(r) = reset {
            if r > first && t >= r {
                return (fresh(expires), Outcome::Reset);
            }
        }
        if t + class_max < first {
            return (Update::Keep, Outcome::TooOld);
        }
        if t < first {
            // A late event with an earlier time takes the lock; the pair is still reported.
            return (
                fresh(expires.max(s_expires)),
                Outcome::Pair {
                    stored: e.store.evidence(s),
                    this_is_first: true,
                },
            );
        }
        (
            Update::Touch { expires },
            Outcome::Pair {
                stored: e.store.evidence(s),
                this_is_first: false,
            },
        )
    });
    if matches!(outcome, Outcome::TooOld) {
        e.stats
            .late_events
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    report(e, ev, cred, origin, t, pos, outcome, sev, out);
}

/// With a shared store: when this event would start a session or give it a second origin,
/// proposes it as the first origin and seeds the local cache with what the authority holds, so
/// that the local decision below is the same on every worker. A session's first origin is the
/// earliest event's, whichever worker saw it; an unreachable authority leaves the local store
/// to decide alone (counted).
#[allow(clippy::too_many_arguments)]
fn consult(
    e: &Engine,
    key: crate::engine::store::Key,
    cred: &Credential<'_>,
    ev: &CloudTrailEvent<'_>,
    tag: HomeTag,
    value: Option<&HomeValue>,
    t: i64,
    expires: i64,
) {
    let Some(auth) = e.authority.as_deref() else {
        return;
    };
    let runtime = tag == HomeTag::LambdaRuntime;
    let local = e.store.peek(key);
    let is_home = |s: &Session| match value {
        None => s.tag() == HomeTag::LambdaRuntime,
        Some(v) => e.store.same_home(s, tag, v),
    };
    // At home, and not earlier than the home's first event: nothing the authority needs.
    if local.is_some_and(|s| s.expires as i64 >= t && is_home(&s) && t >= s.first_time as i64) {
        return;
    }
    let proposal = portable(&home_parts(ev, tag, value, t, expires, cred));
    e.stats
        .authority_calls
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let answer = match auth.propose(&cred.session_key, &proposal, runtime) {
        Ok(a) => a,
        Err(err) => {
            e.stats
                .authority_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(error = %err, "shared session store unreachable; deciding locally");
            return;
        }
    };
    // The home the local cache should hold before the local decision, if it should change.
    let seed = if answer.won {
        // This event is the earliest: what it replaced (if another origin) is the pair.
        answer
            .previous
            .filter(|p| p.expires >= t && crate::engine::store::value_of(p).as_ref() != value)
    } else {
        Some(answer.current).filter(|c| c.expires >= t)
    };
    if let Some(h) = seed {
        let replace = match local {
            None => true,
            Some(s) => {
                (s.expires as i64) < t
                    || h.time < s.first_time as i64
                    || (h.tag == HomeTag::LambdaRuntime && s.tag() != HomeTag::LambdaRuntime)
            }
        };
        if replace {
            e.store.seed(key, &h);
        }
    }
}

fn new_home(
    e: &Engine,
    ev: &CloudTrailEvent<'_>,
    tag: HomeTag,
    value: Option<&crate::engine::store::HomeValue>,
    t: i64,
    expires: i64,
    cred: &Credential<'_>,
) -> Session {
    e.store
        .make_session(&home_parts(ev, tag, value, t, expires, cred))
}

/// This event as a session's first event.
fn home_parts<'a>(
    ev: &'a CloudTrailEvent<'_>,
    tag: HomeTag,
    value: Option<&'a HomeValue>,
    t: i64,
    expires: i64,
    cred: &Credential<'_>,
) -> NewHome<'a> {
    NewHome {
        tag,
        value,
        event_id: ev.event_id(),
        time: t,
        expires,
        user_agent: ev.user_agent(),
        class: cred.class as u8,
    }
}

/// The fields every finding of a credential shares.
fn base(ev: &CloudTrailEvent<'_>, cred: &Credential<'_>, t: i64) -> Finding {
    Finding {
        id: String::new(),
        rule: String::new(),
        severity: crate::finding::Severity::Info,
        title: String::new(),
        account_id: ev.account_id().map(str::to_string),
        access_key_id: Some(cred.access_key_id.to_string()),
        session: Some(cred.session_display.clone()),
        credential_class: Some(cred.class.as_str().to_string()),
        principal_arn: ev.arn().map(str::to_string),
        error_code: ev
            .error_code
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        event_ids: vec![],
        events: vec![],
        exceptions_checked: vec![],
        event_time: format_time(t),
        detected_at: chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string(),
        claim: None,
    }
}

fn stored_evidence(role: &str, h: &HomeEvidence) -> EventEvidence {
    EventEvidence {
        role: role.into(),
        event_id: h.event_id.clone(),
        event_time: format_time(h.time),
        event_name: None,
        event_source: None,
        origin_kind: h.tag.origin_class().as_str().into(),
        origin: h.origin.clone(),
        user_agent: h.user_agent.clone(),
        access_key_id: None,
        source: None,
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    e: &Engine,
    ev: &CloudTrailEvent<'_>,
    cred: &Credential<'_>,
    origin: &Origin<'_>,
    t: i64,
    pos: &Position<'_>,
    outcome: Outcome,
    sev: crate::finding::Severity,
    out: &mut Vec<Finding>,
) {
    let Outcome::Pair {
        stored,
        this_is_first,
    } = outcome
    else {
        return;
    };
    let this = |role: &str| event_evidence(role, ev, origin, t, pos);
    let (first, second) = if this_is_first {
        (this("first"), stored_evidence("second", &stored))
    } else {
        (stored_evidence("first", &stored), this("second"))
    };
    let lambda = stored.tag == HomeTag::LambdaRuntime || cred.lambda_runtime;
    // The dedup and the id name the outside origin (for Lambda, the one without markers).
    let outside = if lambda && cred.lambda_runtime {
        &stored.origin
    } else {
        &second.origin
    };
    let dedup = key_of_parts(&[
        RULE.as_bytes(),
        cred.session_key.as_bytes(),
        outside.as_bytes(),
    ]);
    let expires = stored.expires.max(t);
    if !e.store.mark_reported(dedup, expires) {
        e.stats
            .suppressed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return;
    }
    let home_time = parse_time(&first.event_time).unwrap_or(t);
    let mut checks = Vec::new();
    let (title, outside_class) = if lambda {
        let markers = e.cfg.detection.lambda_user_agent_markers.join(", ");
        checks.push(ExceptionCheck {
            exception: Explanation::LambdaRuntime.as_str().into(),
            applied: false,
            detail: format!(
                "the call from {outside} carries none of the Lambda runtime markers ({markers})"
            ),
        });
        (
            format!(
                "Lambda credentials of {} used outside the Lambda runtime, from {outside}",
                cred.session_display
            ),
            if cred.lambda_runtime {
                stored.tag.origin_class()
            } else {
                origin.class()
            },
        )
    } else {
        (
            format!(
                "{} used from a second origin {} (home {} since {})",
                cred.session_display, second.origin, first.origin, first.event_time
            ),
            if this_is_first {
                stored.tag.origin_class()
            } else {
                origin.class()
            },
        )
    };
    let outside_addr: Option<IpAddr> = outside.parse().ok();
    if outside_class != OriginClass::AwsService {
        checks.extend(e.origin_checks(outside_class, outside));
    }
    checks.push(e.credit_check(cred, outside_addr));
    checks.push(e.allow_check(outside_addr, ev.account_id(), cred, t));
    if let Some(instance) = cred.instance_id.as_deref() {
        let detail = match e.instances.reset_at(instance) {
            Some(r) => format!(
                "last StartInstances/RunInstances of {instance} at {}, not between the two events",
                format_time(r)
            ),
            None => format!("no StartInstances or RunInstances of {instance} seen"),
        };
        checks.push(ExceptionCheck {
            exception: "instance_restart".into(),
            applied: false,
            detail,
        });
    }
    let explained = e.store.explained(key_of(&cred.session_key));
    if !explained.is_empty() {
        let list: Vec<String> = explained
            .iter()
            .map(|x| format!("{} ({})", x.origin, x.reason))
            .collect();
        checks.push(ExceptionCheck {
            exception: "explained_so_far".into(),
            applied: false,
            detail: format!(
                "origins explained earlier in this session: {}",
                list.join("; ")
            ),
        });
    }
    let latest = home_time.max(parse_time(&second.event_time).unwrap_or(t));
    let claim = Some(Claim {
        key: finding_id(&[RULE, &cred.session_key, outside]),
        until: expires,
    });
    out.push(Finding {
        id: finding_id(&[RULE, &cred.session_key, outside, &home_time.to_string()]),
        rule: RULE.into(),
        severity: sev,
        title,
        event_ids: vec![first.event_id.clone(), second.event_id.clone()],
        events: vec![first, second],
        exceptions_checked: checks,
        event_time: format_time(latest),
        claim,
        ..base(ev, cred, t)
    });
}
