//! `session_token_reuse` and `foreign_vpc_endpoint`: Netflix's method, made exact.
//!
//! The first origin a session is seen from (by event time) is its home; the same session seen
//! from a second origin within its lifetime is a finding unless the origin is explained. AWS
//! services and `AWS Internal` never lock and are never a second origin; an organisation's VPC
//! endpoint, an address the instance was just given, and an `[[allow]]` network explain an origin;
//! `StartInstances` / `RunInstances` begin a new home. Lambda sessions are at home in their
//! runtime (user-agent markers); any use without them is the second origin.
//! Background: <https://netflixtechblog.com/netflix-cloud-security-detecting-credential-compromise-in-aws-9493d6fd373a>

use crate::engine::credential::{Credential, CredentialClass};
use crate::engine::issuance::{CredentialClassName, Issued};
use crate::engine::origin::Origin;
use crate::engine::place::Workload;
use crate::engine::store::{
    home_of, key_of, key_of_parts, portable, HomeEvidence, HomeTag, HomeValue, NewHome, Session,
    Update,
};
use crate::engine::{Engine, Explanation, Position};
use crate::event::{format_time, parse_time, CloudTrailEvent};
use crate::finding::{finding_id, Claim, ExceptionCheck, Finding};
use crate::rules::event_evidence;
use crate::settle::{sighting_of_home, wall_now, Contest, Sighting};

pub const RULE: &str = "session_token_reuse";
pub const FOREIGN_VPCE: &str = "foreign_vpc_endpoint";

/// What the lock decided for one event.
enum Outcome {
    /// This event set (or re-set) the home.
    Locked,
    /// Seen from home (or too old to matter).
    Home,
    TooOld,
    /// Two origins: the stored home and this event's (which may have taken the home, being
    /// earlier or a Lambda runtime call). Settling decides which is first and whether it stands.
    Pair {
        stored: HomeEvidence,
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
    let keyed = cred.session_key == cred.access_key_id;
    let expires = match cred.issued.as_ref().and_then(|i| i.expires) {
        // The exact expiry of this key, for a session keyed by it.
        Some(x) if keyed => e.window_end(x, cred.class, t, &cred.session_display),
        _ => match ev.creation_date().and_then(parse_time) {
            Some(c) => e.window_end(
                c.saturating_add(class_max),
                cred.class,
                t,
                &cred.session_display,
            ),
            None => t + e.cfg.detection.window_secs as i64,
        },
    };
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
            if let Some(ours) = e.our_endpoint(id) {
                e.stats.explained(Explanation::Inventory);
                e.store
                    .add_explained(key, origin.to_string(), ours, t, expires);
            } else if e.in_org(owner, session_account) {
                e.stats.explained(Explanation::OrgVpcEndpoint);
                e.store.add_explained(
                    key,
                    origin.to_string(),
                    Explanation::OrgVpcEndpoint.as_str().into(),
                    t,
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
                        suspicious_origin: Some(origin.to_string()),
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
    if e.rules.get(RULE).is_none() {
        return;
    }

    if cred.lambda_runtime {
        e.stats.explained(Explanation::LambdaRuntime);
        runtime_use(e, key, ev, cred, origin, t, pos, expires);
        return;
    }

    let Some((tag, value)) = home_of(origin, e.cfg.detection.ipv6_prefix_len) else {
        return;
    };
    let _ = out;
    let addr = origin.ip();
    // Explanations that do not depend on the session's state.
    // The cheap question first: most origins are in no `[[allow]]` entry, and the check's
    // text (an address formatted) is only wanted when one explains it.
    if addr.is_some_and(|a| e.allowed(a, session_account, cred.role, t)) {
        let allow = e.allow_check(addr, session_account, cred.role, t);
        e.stats.explained(Explanation::AllowList);
        e.store
            .add_explained(key, origin.to_string(), allow.detail, t, expires);
        return;
    }
    // An address the inventory says is this workload's: it takes the lock like any other
    // (so that a thief's address is never the home unopposed), but two of the workload's own
    // addresses are one home.
    let who = Workload {
        account: session_account,
        instance: cred.instance_id.as_deref(),
    };
    let own = e.inventory_on() && addr.is_some_and(|a| e.place_of(a, who).is_own());
    let stored_own = |s: &Session| {
        own && e
            .store
            .evidence(s)
            .origin
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| e.place_of(a, who).is_own())
    };
    // A contested session keeps the earliest event from every origin until it is settled.
    sight(e, key, ev, origin, tag, Some(&value), t, pos, expires);
    // The cheap question first (most calls credit nothing); the evidence text only when it does.
    let credited = |e: &Engine| {
        let (Some(instance), Some(a)) = (cred.instance_id.as_deref(), addr) else {
            return false;
        };
        if e.instances.credit_for(instance, a, t).is_none() {
            return false;
        }
        let credit = e.credit_check(Some(instance), cred.class.as_str(), addr, t);
        e.stats.explained(Explanation::InstanceAddress);
        e.store
            .add_explained(key, origin.to_string(), credit.detail, t, expires);
        true
    };
    if cred.instance_id.is_some() && credited(e) {
        return;
    }
    if !consult(e, key, cred, ev, tag, Some(&value), t, expires) {
        return;
    }
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
                },
            );
        }
        if e.store.same_home(s, tag, &value) || stored_own(s) {
            if earlier(e, s, t, ev.event_id()) {
                // The same origin, earlier: it keeps the lock with the earlier event (of two at
                // the same second, the one with the lower event id, as contests order them).
                return (fresh(expires.max(s_expires)), Outcome::Home);
            }
            return (Update::Touch { expires }, Outcome::Home);
        }
        // A restart of the instance since the home's first event may explain this origin:
        // that is for settling to decide, once the restart (on any shard) has surely arrived.
        if t + class_max < first {
            return (Update::Keep, Outcome::TooOld);
        }
        if t < first {
            // A late event with an earlier time takes the lock; the pair is still reported.
            return (
                fresh(expires.max(s_expires)),
                Outcome::Pair {
                    stored: e.store.evidence(s),
                },
            );
        }
        (
            Update::Touch { expires },
            Outcome::Pair {
                stored: e.store.evidence(s),
            },
        )
    });
    if matches!(outcome, Outcome::TooOld) {
        e.stats
            .late_events
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    contend(e, key, ev, cred, origin, t, pos, outcome, expires);
}

/// A call from the Lambda runtime (or the issuance of a Lambda's key): the session's home is
/// the runtime; a stored home from elsewhere is an outside use, and the pair is contested.
#[allow(clippy::too_many_arguments)]
fn runtime_use(
    e: &Engine,
    key: crate::engine::store::Key,
    ev: &CloudTrailEvent<'_>,
    cred: &Credential<'_>,
    origin: &Origin<'_>,
    t: i64,
    pos: &Position<'_>,
    expires: i64,
) {
    sight(
        e,
        key,
        ev,
        origin,
        HomeTag::LambdaRuntime,
        None,
        t,
        pos,
        expires,
    );
    if !consult(e, key, cred, ev, HomeTag::LambdaRuntime, None, t, expires) {
        return;
    }

    let runtime_home =
        |exp: i64| Update::Replace(new_home(e, ev, HomeTag::LambdaRuntime, None, t, exp, cred));
    let outcome = e.store.update(key, |cur| match cur {
        None => (runtime_home(expires), Outcome::Locked),
        Some(s) if (s.expires as i64) < t => (runtime_home(expires), Outcome::Locked),
        Some(s) if s.tag() == HomeTag::LambdaRuntime => {
            if earlier(e, s, t, ev.event_id()) {
                // An earlier runtime call: it is the home (the earliest runtime call).
                (runtime_home(expires.max(s.expires as i64)), Outcome::Home)
            } else {
                (Update::Touch { expires }, Outcome::Home)
            }
        }
        // An outside use came first: this runtime call shows it was a Lambda's credential.
        Some(s) => (
            runtime_home(expires.max(s.expires as i64)),
            Outcome::Pair {
                stored: e.store.evidence(s),
            },
        ),
    });
    contend(e, key, ev, cred, origin, t, pos, outcome, expires);
}

/// An issuance read from the stream: a Lambda's key is at home in the runtime from the moment
/// it was issued, so any use outside the runtime (before or after the function's own first
/// call) is the second origin. Other workloads' issuances only classify their keys.
pub(crate) fn issued(
    e: &Engine,
    ev: &CloudTrailEvent<'_>,
    key: &str,
    issued: &Issued,
    t: i64,
    pos: &Position<'_>,
) {
    if issued.class != CredentialClassName::Lambda || e.rules.get(RULE).is_none() {
        return;
    }
    let role = issued
        .role_arn
        .as_deref()
        .and_then(|a| a.rsplit_once(":role/"))
        .map(|(_, r)| r.rsplit('/').next().unwrap_or(r));
    let cred = Credential {
        access_key_id: key,
        class: CredentialClass::Lambda,
        session_key: key.into(),
        session_display: key.into(),
        instance_id: None,
        role,
        lambda_runtime: true,
        issued: Some(issued.clone()),
    };
    let expires = match issued.expires {
        Some(x) => e.window_end(x, CredentialClass::Lambda, t, key),
        None => t + e.class_max_secs(CredentialClass::Lambda),
    };
    let origin = crate::engine::origin::classify(ev);
    runtime_use(e, key_of(key), ev, &cred, &origin, t, pos, expires);
}

/// With a shared store: when this event would start a session or give it a second origin,
/// proposes it as the first origin and seeds the local cache with what the authority holds, so
/// that the local decision below is the same on every worker. A session's first origin is the
/// earliest event's, whichever worker saw it.
///
/// Returns false when the authority cannot be reached: then no local decision may be made
/// either (a home decided alone would hide, for good, a second origin another worker holds the
/// home of), so the event leaves no trace and is counted in `unshared`; the shard reader reads
/// its record again once the store answers (`Engine::unshared`).
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
) -> bool {
    let Some(auth) = e.authority.as_deref() else {
        return true;
    };
    let runtime = tag == HomeTag::LambdaRuntime;
    let local = e.store.peek(key);
    let is_home = |s: &Session| match value {
        None => s.tag() == HomeTag::LambdaRuntime,
        Some(v) => e.store.same_home(s, tag, v),
    };
    // At home, and not earlier than the home's first event: nothing the authority needs.
    if local.is_some_and(|s| s.expires as i64 >= t && is_home(&s) && t >= s.first_time as i64) {
        return true;
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
            e.stats
                .unshared
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                error = %err,
                "shared session store unreachable; the event's record will be read again"
            );
            return false;
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
    true
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
    cred: &'a Credential<'_>,
) -> NewHome<'a> {
    NewHome {
        tag,
        value,
        event_id: ev.event_id(),
        time: t,
        expires,
        user_agent: ev.user_agent(),
        class: cred.class as u8,
        event_source: Some(ev.event_source()).filter(|x| !x.is_empty()),
        event_name: Some(ev.event_name()).filter(|x| !x.is_empty()),
        access_key_id: (cred.session_key != cred.access_key_id).then_some(cred.access_key_id),
        error_code: ev.error_code.as_deref().filter(|c| !c.is_empty()),
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
        session: Some(cred.session_display.to_string()),
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
        released_early: None,
        suspicious_origin: None,
        arrived_at: None,
        claim: None,
    }
}

/// Whether an event at `t` with id `id` comes before a session's first event, in the order
/// contests use: by time, then by event id.
fn earlier(e: &Engine, s: &Session, t: i64, id: &str) -> bool {
    let first = s.first_time as i64;
    t < first || (t == first && id < e.store.evidence(s).event_id.as_str())
}

/// The compared value of an origin, as contests key their sightings.
pub(crate) fn value_text(value: Option<&HomeValue>) -> String {
    match value {
        None => "lambda-runtime".to_string(),
        Some(HomeValue::V4(a)) => a.to_string(),
        Some(HomeValue::Text(t)) => t.clone(),
    }
}

/// This event as a sighting of its origin.
#[allow(clippy::too_many_arguments)]
fn this_sighting(
    ev: &CloudTrailEvent<'_>,
    origin: &Origin<'_>,
    tag: HomeTag,
    value: Option<&HomeValue>,
    t: i64,
    pos: &Position<'_>,
    expires: i64,
) -> Sighting {
    Sighting {
        value: value_text(value),
        tag,
        time: t,
        evidence: {
            let mut evidence = event_evidence("second", ev, origin, t, pos);
            if tag == HomeTag::LambdaRuntime {
                // As the store shows a runtime home (it keeps no address for one), so that the
                // evidence is the same whichever of the two a contest got the home from.
                evidence.origin = "lambda-runtime".to_string();
                evidence.origin_kind = tag.origin_class().as_str().to_string();
            }
            evidence
        },
        error_code: ev
            .error_code
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        arrived: wall_now(),
        expires,
    }
}

/// Adds this event to its session's contest, if the session is contested.
#[allow(clippy::too_many_arguments)]
fn sight(
    e: &Engine,
    key: crate::engine::store::Key,
    ev: &CloudTrailEvent<'_>,
    origin: &Origin<'_>,
    tag: HomeTag,
    value: Option<&HomeValue>,
    t: i64,
    pos: &Position<'_>,
    expires: i64,
) {
    if e.pending.is_contested(key) {
        let lateness = e.cfg.detection.allowed_lateness_secs as i64;
        e.pending.sight(
            key,
            this_sighting(ev, origin, tag, value, t, pos, expires),
            lateness,
        );
    }
}

/// Two origins for one session: opens its contest with both sightings; settling decides.
#[allow(clippy::too_many_arguments)]
fn contend(
    e: &Engine,
    key: crate::engine::store::Key,
    ev: &CloudTrailEvent<'_>,
    cred: &Credential<'_>,
    origin: &Origin<'_>,
    t: i64,
    pos: &Position<'_>,
    outcome: Outcome,
    expires: i64,
) {
    let Outcome::Pair { stored, .. } = outcome else {
        return;
    };
    let (tag, value) = if cred.lambda_runtime {
        (HomeTag::LambdaRuntime, None)
    } else {
        match home_of(origin, e.cfg.detection.ipv6_prefix_len) {
            Some((tag, v)) => (tag, Some(v)),
            None => return,
        }
    };
    let keyed = (cred.session_key == cred.access_key_id).then_some(&*cred.session_key);
    let home = sighting_of_home(
        &stored,
        value_text(crate::engine::store::value_of(&stored).as_ref()),
        keyed,
        wall_now(),
    );
    let this = this_sighting(ev, origin, tag, value.as_ref(), t, pos, expires);
    let base = Contest {
        session_key: cred.session_key.to_string(),
        session_display: cred.session_display.to_string(),
        credential_class: cred.class.as_str().to_string(),
        instance_id: cred.instance_id.as_deref().map(str::to_string),
        role: cred.role.map(str::to_string),
        account_id: ev.account_id().map(str::to_string),
        principal_arn: ev.arn().map(str::to_string),
        ..Contest::default()
    };
    e.pending.contest(
        key,
        base,
        home,
        this,
        e.cfg.detection.allowed_lateness_secs as i64,
    );
}
