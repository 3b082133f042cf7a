//! Who may read `GET /findings`: it names the keys in use, the addresses and the accounts, all
//! an attacker would like to know.
//!
//! - A token is configured (`metrics.findings_token_env` or `metrics.findings_token_file`): every
//!   request must carry `Authorization: Bearer <token>`, whatever the address; a token that
//!   cannot be read stops the start, the error naming the option.
//! - No token, the listener on a loopback address (`127.0.0.0/8`, `::1`): open, as `/metrics`
//!   (only local processes reach it).
//! - No token, any other address (`0.0.0.0`, a LAN address): the endpoint is off, said loudly at
//!   start; `/metrics`, `/livez` and `/readyz` are served as before. Off rather than a refusal
//!   to start: deployments that bind `0.0.0.0:9898` for Prometheus (the Docker image) keep their
//!   metrics and health checks through an upgrade, and expose no finding.
//!
//! Tokens are compared in constant time (SHA-256 of both, then every byte compared), and a
//! refusal says nothing: 401, `WWW-Authenticate: Bearer`, an empty body, for a missing and a
//! wrong token alike.

use std::net::{IpAddr, SocketAddr};

use sha2::{Digest, Sha256};

use crate::config::MetricsConfig;

/// The shortest token accepted (a random 16 characters is out of reach of guessing over HTTP).
pub const MIN_TOKEN_LEN: usize = 16;

/// A bearer token, kept as its SHA-256 only.
#[derive(Clone)]
pub struct Token {
    digest: [u8; 32],
    /// The option it came from, for the start-up log.
    pub source: &'static str,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// A token from its text, checked: at least [`MIN_TOKEN_LEN`] visible ASCII characters (a
    /// header value carries it as is). Errors do not repeat the token.
    pub fn new(text: &str, source: &'static str) -> Result<Token, String> {
        if text.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "metrics.{source}: the token is {} characters; use at least {MIN_TOKEN_LEN} \
                 (e.g. `openssl rand -hex 32`)",
                text.chars().count()
            ));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "metrics.{source}: the token must be visible ASCII characters only (no spaces)"
            ));
        }
        Ok(Token {
            digest: Sha256::digest(text.as_bytes()).into(),
            source,
        })
    }

    /// Whether `presented` is this token, in time independent of where they differ (and of
    /// the presented length: both are hashed first).
    pub fn matches(&self, presented: &[u8]) -> bool {
        let got: [u8; 32] = Sha256::digest(presented).into();
        got.iter()
            .zip(self.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Reads the configured token, if any. Errors name the option.
pub fn read_token(cfg: &MetricsConfig) -> anyhow::Result<Option<Token>> {
    let secret = crate::private::read_secret(
        cfg.findings_token_env
            .as_deref()
            .map(|v| (v, "metrics.findings_token_env")),
        cfg.findings_token_file
            .as_deref()
            .map(|p| (p, "metrics.findings_token_file")),
    )?;
    let option = if cfg.findings_token_env.is_some() {
        "findings_token_env"
    } else {
        "findings_token_file"
    };
    secret
        .map(|v| Token::new(&v, option).map_err(anyhow::Error::msg))
        .transpose()
}

/// Whether a listener on `ip` can be reached from other machines. Loopback addresses (also
/// IPv4-mapped `::ffff:127.0.0.1`) cannot; everything else can, the unspecified `0.0.0.0` and
/// `::` (every interface) first of all.
pub fn beyond_loopback(ip: IpAddr) -> bool {
    !ip.to_canonical().is_loopback()
}

/// What `GET /findings` does.
#[derive(Debug, Clone)]
pub enum Access {
    /// Anyone who reaches the listener (a loopback address, no token configured).
    Open,
    /// Only requests with this bearer token.
    Token(Token),
    /// Not served (404), for this reason.
    Off(String),
}

impl Access {
    /// The decision for a listener bound at `bound` (the address actually bound, so that a
    /// host name is judged by what it resolved to).
    pub fn decide(cfg: &MetricsConfig, bound: SocketAddr, token: Option<Token>) -> Access {
        if cfg.findings_capacity == 0 {
            return Access::Off("metrics.findings_capacity = 0".into());
        }
        match token {
            Some(t) => Access::Token(t),
            None if !beyond_loopback(bound.ip()) => Access::Open,
            None => Access::Off(format!(
                "metrics.addr {bound} can be reached from other machines and no \
                 metrics.findings_token_env or metrics.findings_token_file is set"
            )),
        }
    }

    /// Whether a request with these headers may read the findings.
    pub fn allows(&self, headers: &axum::http::HeaderMap) -> bool {
        match self {
            Access::Open => true,
            Access::Off(_) => false,
            Access::Token(t) => headers
                .get_all(axum::http::header::AUTHORIZATION)
                .iter()
                .any(|v| bearer(v.as_bytes()).is_some_and(|p| t.matches(p))),
        }
    }

    /// Says at start what the endpoint does.
    pub fn log(&self, bound: SocketAddr) {
        match self {
            Access::Open => tracing::info!(
                %bound,
                "GET /findings is open: metrics.addr is a loopback address and no token is set"
            ),
            Access::Token(t) => tracing::info!(
                %bound,
                "GET /findings requires the bearer token of metrics.{}",
                t.source
            ),
            Access::Off(why) => tracing::warn!(
                %bound,
                "GET /findings is OFF: {why}; set a token to serve the recent findings \
                 (/metrics, /livez and /readyz are served)"
            ),
        }
    }
}

/// The credentials of an `Authorization: Bearer <token>` value (the scheme in any case).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let start = rest.iter().position(|b| *b != b' ')?;
    let end = rest.iter().rposition(|b| *b != b' ')? + 1;
    Some(&rest[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    const TOKEN: &str = "0123456789abcdef-token";

    fn cfg() -> MetricsConfig {
        MetricsConfig::default()
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("authorization", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_loopback_listeners_are_not_reachable_from_other_machines() {
        for (addr, beyond) in [
            ("127.0.0.1", false),
            ("127.1.2.3", false),
            ("::1", false),
            ("::ffff:127.0.0.1", false),
            ("0.0.0.0", true),
            ("::", true),
            ("10.0.0.5", true),
            ("192.168.1.2", true),
            ("fe80::1", true),
            ("::ffff:10.0.0.5", true),
        ] {
            let ip: IpAddr = addr.parse().unwrap();
            assert_eq!(beyond_loopback(ip), beyond, "{addr}");
        }
    }

    #[test]
    fn the_decision_follows_the_bound_address_and_the_token() {
        let token = || Some(Token::new(TOKEN, "findings_token_env").unwrap());
        let at = |a: &str| a.parse::<SocketAddr>().unwrap();
        let c = cfg();
        assert!(matches!(
            Access::decide(&c, at("127.0.0.1:9898"), None),
            Access::Open
        ));
        assert!(matches!(
            Access::decide(&c, at("[::1]:9898"), None),
            Access::Open
        ));
        match Access::decide(&c, at("0.0.0.0:9898"), None) {
            Access::Off(why) => assert!(why.contains("metrics.findings_token_env"), "{why}"),
            other => panic!("0.0.0.0 without a token: {other:?}"),
        }
        assert!(matches!(
            Access::decide(&c, at("[::]:9898"), None),
            Access::Off(_)
        ));
        assert!(matches!(
            Access::decide(&c, at("0.0.0.0:9898"), token()),
            Access::Token(_)
        ));
        // A configured token is required on loopback too.
        assert!(matches!(
            Access::decide(&c, at("127.0.0.1:9898"), token()),
            Access::Token(_)
        ));
        let off = MetricsConfig {
            findings_capacity: 0,
            ..cfg()
        };
        assert!(matches!(
            Access::decide(&off, at("127.0.0.1:9898"), token()),
            Access::Off(_)
        ));
    }

    #[test]
    fn only_the_right_bearer_token_is_allowed() {
        let a = Access::Token(Token::new(TOKEN, "findings_token_file").unwrap());
        assert!(a.allows(&headers(&[&format!("Bearer {TOKEN}")])));
        assert!(a.allows(&headers(&[&format!("bearer  {TOKEN} ")])));
        assert!(a.allows(&headers(&["Basic eDp5", &format!("Bearer {TOKEN}")])));
        for bad in [
            String::new(),
            TOKEN.to_string(),
            format!("Basic {TOKEN}"),
            format!("Bearer {TOKEN}x"),
            format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]),
            "Bearer ".to_string(),
            "Bearer".to_string(),
        ] {
            assert!(!a.allows(&headers(&[&bad])), "{bad:?}");
        }
        assert!(!a.allows(&HeaderMap::new()));
        assert!(Access::Open.allows(&HeaderMap::new()));
        assert!(!Access::Off("x".into()).allows(&headers(&[&format!("Bearer {TOKEN}")])));
    }

    #[test]
    fn tokens_are_read_from_the_environment_or_a_file_and_errors_name_the_option() {
        let dir = tempfile::tempdir().unwrap();
        let var = "CREDWATCH_TEST_FINDINGS_TOKEN_7731";
        let env_cfg = MetricsConfig {
            findings_token_env: Some(var.into()),
            ..cfg()
        };
        std::env::remove_var(var);
        let err = read_token(&env_cfg).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "metrics.findings_token_env: environment variable CREDWATCH_TEST_FINDINGS_TOKEN_7731 is not set"
            ),
            "{err}"
        );
        std::env::set_var(var, "short");
        let err = read_token(&env_cfg).unwrap_err().to_string();
        assert!(
            err.starts_with("metrics.findings_token_env: the token is 5 characters"),
            "{err}"
        );
        assert!(!err.contains("short"), "the token is not echoed: {err}");
        std::env::set_var(var, format!(" {TOKEN}\n"));
        let t = read_token(&env_cfg).unwrap().unwrap();
        assert!(t.matches(TOKEN.as_bytes()));
        assert!(!format!("{t:?}").contains(TOKEN));
        std::env::remove_var(var);

        let path = dir.path().join("token");
        let file_cfg = MetricsConfig {
            findings_token_file: Some(path.clone()),
            ..cfg()
        };
        let err = read_token(&file_cfg).unwrap_err().to_string();
        assert!(
            err.starts_with("metrics.findings_token_file: reading"),
            "{err}"
        );
        std::fs::write(&path, "\n").unwrap();
        let err = read_token(&file_cfg).unwrap_err().to_string();
        assert!(err.ends_with("is empty"), "{err}");
        std::fs::write(&path, "has a space inside it\n").unwrap();
        let err = read_token(&file_cfg).unwrap_err().to_string();
        assert!(err.contains("visible ASCII"), "{err}");
        std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
        assert!(read_token(&file_cfg)
            .unwrap()
            .unwrap()
            .matches(TOKEN.as_bytes()));
        assert!(read_token(&cfg()).unwrap().is_none());
    }
}
