//! Which credential made a call, its class, and the workload session it belongs to.
//!
//! Temporary keys start with `ASIA`; long-term IAM user keys with `AKIA`.
//! <https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_identifiers.html#identifiers-unique-ids>

use std::borrow::Cow;

use crate::config::DetectionConfig;
use crate::event::CloudTrailEvent;

/// The kind of credential, which sets its maximum lifetime and how its home is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CredentialClass {
    /// Instance-profile credentials delivered by the EC2 metadata service (session `i-…`).
    Ec2Instance = 0,
    /// The `aws:ec2-instance` identity role credential of an instance.
    Ec2Identity = 1,
    Lambda = 2,
    EcsTask = 3,
    /// Any other assumed-role session.
    AssumedRole = 4,
    /// Credentials issued to an AWS Management Console session.
    Console = 5,
    /// `GetSessionToken` / `GetFederationToken` credentials.
    Federated = 6,
    /// Long-term `AKIA` keys (tracked only when enabled).
    LongTerm = 7,
}

impl CredentialClass {
    pub const ALL: [CredentialClass; 8] = [
        CredentialClass::Ec2Instance,
        CredentialClass::Ec2Identity,
        CredentialClass::Lambda,
        CredentialClass::EcsTask,
        CredentialClass::AssumedRole,
        CredentialClass::Console,
        CredentialClass::Federated,
        CredentialClass::LongTerm,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CredentialClass::Ec2Instance => "ec2_instance",
            CredentialClass::Ec2Identity => "ec2_identity",
            CredentialClass::Lambda => "lambda",
            CredentialClass::EcsTask => "ecs_task",
            CredentialClass::AssumedRole => "assumed_role",
            CredentialClass::Console => "console",
            CredentialClass::Federated => "federated",
            CredentialClass::LongTerm => "long_term",
        }
    }

    pub fn from_u8(v: u8) -> CredentialClass {
        CredentialClass::ALL[(v & 7) as usize]
    }

    /// Workload credentials: the ones GetCallerIdentity is suspicious for.
    pub fn is_workload(self) -> bool {
        matches!(
            self,
            CredentialClass::Ec2Instance
                | CredentialClass::Ec2Identity
                | CredentialClass::Lambda
                | CredentialClass::EcsTask
        )
    }

    /// Maximum lifetime in seconds, from configuration.
    pub fn max_secs(self, cfg: &DetectionConfig) -> u64 {
        let m = &cfg.max_session_secs;
        match self {
            CredentialClass::Ec2Instance => m.ec2_instance,
            CredentialClass::Ec2Identity => m.ec2_identity,
            CredentialClass::Lambda => m.lambda,
            CredentialClass::EcsTask => m.ecs_task,
            CredentialClass::AssumedRole => m.assumed_role,
            CredentialClass::Console => m.console,
            CredentialClass::Federated => m.federated,
            CredentialClass::LongTerm => cfg.window_secs,
        }
    }
}

/// A credential as seen in one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential<'a> {
    pub access_key_id: &'a str,
    pub class: CredentialClass,
    /// The session key text: `account:role/i-…` for instance sessions (one lock across key
    /// rotations), else the access key id.
    pub session_key: Cow<'a, str>,
    /// How the session is shown to people: `role/i-…` or the access key id.
    pub session_display: Cow<'a, str>,
    /// Lower-case instance id for EC2 sessions.
    pub instance_id: Option<Cow<'a, str>>,
    /// Role name of an assumed-role session.
    pub role: Option<&'a str>,
    /// Whether the user agent carries a Lambda runtime marker.
    pub lambda_runtime: bool,
    /// What the key's issuance said, when it was read ([`super::issuance`]).
    pub issued: Option<super::issuance::Issued>,
}

/// Splits `arn:aws:sts::123:assumed-role/ROLE/SESSION` into (ROLE, SESSION).
pub fn assumed_role_parts(arn: &str) -> Option<(&str, &str)> {
    // arn:PARTITION:sts::ACCOUNT:RESOURCE: the resource follows the fifth colon (a byte search
    // for the character; `splitn(6, ':')` cost 3% of a detecting pass).
    let fifth = memchr::memchr_iter(b':', arn.as_bytes()).nth(4)?;
    let rest = arn[fifth + 1..].strip_prefix("assumed-role/")?;
    let slash = memchr::memchr(b'/', rest.as_bytes())?;
    Some((&rest[..slash], &rest[slash + 1..]))
}

/// User-agent markers (`lambda_user_agent_markers`, `ecs_user_agent_markers`) with their
/// searchers built once: a `str::contains` per marker per event builds its searcher each time.
#[derive(Debug, Clone)]
pub struct Markers(Vec<memchr::memmem::Finder<'static>>);

impl Markers {
    /// Searchers for the non-empty markers (an empty marker matches nothing).
    pub fn new(markers: &[String]) -> Markers {
        Markers(
            markers
                .iter()
                .filter(|m| !m.is_empty())
                .map(|m| memchr::memmem::Finder::new(m.as_bytes()).into_owned())
                .collect(),
        )
    }

    /// Whether `ua` holds one of the markers.
    pub fn any_in(&self, ua: &str) -> bool {
        self.0.iter().any(|f| f.find(ua.as_bytes()).is_some())
    }
}

/// The markers of the detection settings, built once per engine.
#[derive(Debug, Clone)]
pub struct UaMarkers {
    pub lambda: Markers,
    pub ecs: Markers,
}

impl UaMarkers {
    pub fn new(cfg: &DetectionConfig) -> UaMarkers {
        UaMarkers {
            lambda: Markers::new(&cfg.lambda_user_agent_markers),
            ecs: Markers::new(&cfg.ecs_user_agent_markers),
        }
    }
}

/// The parts in one string of exactly their length (`format!` grows its buffer as it goes:
/// 5% of a hunt went to formatting these keys).
fn concat(parts: &[&str]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.push_str(p);
    }
    out
}

fn is_instance_id(s: &str) -> bool {
    let Some(hex) = s.strip_prefix("i-") else {
        return false;
    };
    (8..=17).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Classifies the credential of an event; `None` when the event has no credential credwatch
/// tracks (no key, a long-term key while those are off, a console session while those are off).
/// `markers`: those of `cfg`, built once ([`UaMarkers::new`]).
pub fn classify<'a>(
    ev: &'a CloudTrailEvent<'a>,
    cfg: &DetectionConfig,
    markers: &UaMarkers,
) -> Option<Credential<'a>> {
    let key = ev.access_key_id()?;
    let ua = ev.user_agent();
    let lambda_runtime = markers.lambda.any_in(ua);
    let account = ev.account_id().unwrap_or("");
    let arn = ev.arn().unwrap_or("");
    let role_parts = assumed_role_parts(arn);

    if key.starts_with("AKIA") {
        if !cfg.include_long_term_keys {
            return None;
        }
        return Some(Credential {
            access_key_id: key,
            class: CredentialClass::LongTerm,
            session_key: Cow::Borrowed(key),
            session_display: Cow::Borrowed(key),
            instance_id: None,
            role: None,
            lambda_runtime,
            issued: None,
        });
    }
    if !key.starts_with("ASIA") {
        return None;
    }
    if ev.session_credential_from_console {
        if !cfg.include_console_sessions {
            return None;
        }
        return Some(simple(
            key,
            CredentialClass::Console,
            role_parts,
            lambda_runtime,
        ));
    }
    let ec2_delivery = ev
        .user_identity
        .session_context
        .as_ref()
        .and_then(|s| s.ec2_role_delivery.as_deref())
        .is_some_and(|v| !v.is_empty());
    if let Some((role, session)) = role_parts {
        if is_instance_id(session) || (ec2_delivery && session.starts_with("i-")) {
            let class = if role == "aws:ec2-instance" {
                CredentialClass::Ec2Identity
            } else {
                CredentialClass::Ec2Instance
            };
            // `role/session` as the ARN ends, borrowed when the id is already lower case (as
            // EC2 writes it).
            let (instance, display) = if session.bytes().any(|b| b.is_ascii_uppercase()) {
                let instance = session.to_ascii_lowercase();
                let display = concat(&[role, "/", &instance]);
                (Cow::Owned(instance), Cow::Owned(display))
            } else {
                (
                    Cow::Borrowed(session),
                    Cow::Borrowed(&arn[arn.len() - role.len() - 1 - session.len()..]),
                )
            };
            return Some(Credential {
                access_key_id: key,
                class,
                session_key: Cow::Owned(concat(&[account, ":", &display])),
                session_display: display,
                instance_id: Some(instance),
                role: Some(role),
                lambda_runtime,
                issued: None,
            });
        }
        let class = if lambda_runtime {
            CredentialClass::Lambda
        } else if markers.ecs.any_in(ua) {
            CredentialClass::EcsTask
        } else {
            CredentialClass::AssumedRole
        };
        return Some(simple(key, class, role_parts, lambda_runtime));
    }
    let class = match ev.user_identity.identity_type.as_deref() {
        Some("AssumedRole") if lambda_runtime => CredentialClass::Lambda,
        Some("AssumedRole") => CredentialClass::AssumedRole,
        _ => CredentialClass::Federated,
    };
    Some(simple(key, class, None, lambda_runtime))
}

fn simple<'a>(
    key: &'a str,
    class: CredentialClass,
    role_parts: Option<(&'a str, &'a str)>,
    lambda_runtime: bool,
) -> Credential<'a> {
    Credential {
        access_key_id: key,
        class,
        session_key: Cow::Borrowed(key),
        session_display: Cow::Borrowed(key),
        instance_id: None,
        role: role_parts.map(|p| p.0),
        lambda_runtime,
        issued: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(identity: &str, extra: &str) -> Option<(CredentialClass, String)> {
        let json = format!(
            r#"{{"eventTime":"2024-01-01T00:00:00Z","eventName":"X","userIdentity":{identity}{extra}}}"#
        );
        let ev = CloudTrailEvent::parse(&json).unwrap();
        let cfg = DetectionConfig::default();
        classify(&ev, &cfg, &UaMarkers::new(&cfg))
            .map(|c| (c.class, c.session_display.into_owned()))
    }

    #[test]
    fn credentials_are_classified_and_keyed() {
        use CredentialClass::*;
        let role = |session: &str, key: &str| {
            format!(
                r#"{{"type":"AssumedRole","accountId":"111122223333","accessKeyId":"{key}","arn":"arn:aws:sts::111122223333:assumed-role/app/{session}"}}"#
            )
        };
        type Case<'a> = (String, &'a str, Option<(CredentialClass, &'a str)>);
        let cases: Vec<Case> = vec![
            (role("i-0abc1234def567890", "ASIA1"), "", Some((Ec2Instance, "app/i-0abc1234def567890"))),
            (role("i-786a3A8B5C0d92eF4", "ASIA1"), "", Some((Ec2Instance, "app/i-786a3a8b5c0d92ef4"))),
            (
                r#"{"type":"AssumedRole","accessKeyId":"ASIA2","arn":"arn:aws:sts::1:assumed-role/aws:ec2-instance/i-0123456789abcdef0"}"#.into(),
                "",
                Some((Ec2Identity, "aws:ec2-instance/i-0123456789abcdef0")),
            ),
            (role("my-fn", "ASIA3"), r#","userAgent":"Boto3/1.34 exec-env/AWS_Lambda_python3.12""#, Some((Lambda, "ASIA3"))),
            (role("task", "ASIA4"), r#","userAgent":"aws-sdk-go/1.0 exec-env/AWS_ECS_FARGATE""#, Some((EcsTask, "ASIA4"))),
            (role("alice", "ASIA5"), "", Some((AssumedRole, "ASIA5"))),
            (role("alice", "ASIA6"), r#","sessionCredentialFromConsole":"true""#, None),
            (r#"{"type":"IAMUser","accessKeyId":"AKIAX"}"#.into(), "", None),
            (r#"{"type":"IAMUser","accessKeyId":"ASIA7"}"#.into(), "", Some((Federated, "ASIA7"))),
            (r#"{"type":"AWSService","invokedBy":"x"}"#.into(), "", None),
        ];
        for (identity, extra, want) in cases {
            let got = cred(&identity, extra);
            let got = got.as_ref().map(|(c, s)| (*c, s.as_str()));
            assert_eq!(got, want, "for {identity}{extra}");
        }
    }

    #[test]
    fn assumed_role_arns_split_into_role_and_session() {
        fn old(arn: &str) -> Option<(&str, &str)> {
            arn.split_once(":assumed-role/")
                .and_then(|r| r.1.split_once('/'))
        }
        for arn in [
            "arn:aws:sts::111122223333:assumed-role/app/i-0abc",
            "arn:aws:sts::1:assumed-role/aws:ec2-instance/i-0123456789abcdef0",
            "arn:aws-cn:sts::111122223333:assumed-role/r/s/extra",
            "arn:aws:sts:::assumed-role/r/s",
            "arn:aws:iam::111122223333:user/alice",
            "arn:aws:sts::111122223333:federated-user/bob",
            "arn:aws:sts::111122223333:assumed-role/no-session",
            "",
        ] {
            assert_eq!(assumed_role_parts(arn), old(arn), "{arn}");
        }
    }

    #[test]
    fn instance_sessions_share_a_key_across_rotations() {
        let mk = |key: &str| {
            format!(
                r#"{{"eventTime":"2024-01-01T00:00:00Z","eventName":"X","userIdentity":{{"type":"AssumedRole","accountId":"1","accessKeyId":"{key}","arn":"arn:aws:sts::1:assumed-role/app/i-0abc1234"}}}}"#
            )
        };
        let (a, b) = (mk("ASIAAAAA"), mk("ASIABBBB"));
        let (ea, eb) = (
            CloudTrailEvent::parse(&a).unwrap(),
            CloudTrailEvent::parse(&b).unwrap(),
        );
        let cfg = DetectionConfig::default();
        assert_eq!(
            classify(&ea, &cfg, &UaMarkers::new(&cfg))
                .unwrap()
                .session_key,
            classify(&eb, &cfg, &UaMarkers::new(&cfg))
                .unwrap()
                .session_key
        );
    }
}
