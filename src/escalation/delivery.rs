//! Delivery mechanics: how an answer is classified, how long to wait before the next attempt,
//! and the per-destination rate limit.

use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::StatusCode;

/// The longest `Retry-After` honoured; a longer one is cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What one attempt came to.
#[derive(Debug, Clone)]
pub enum Attempt {
    /// 2xx.
    Delivered,
    /// Timeout, connection failure, 408, 429 or 5xx: try again (after `after` if the
    /// destination said so).
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Any other answer (3xx, 4xx): retrying would get the same answer. `status` is the HTTP
    /// status (0 when the answer was not an HTTP error, as for an entry an AWS API failed on).
    Rejected { status: u16, body: String },
}

/// Error codes that say a request or entry is malformed: sending it again would get the same
/// answer. Any other AWS error (throttling, a service fault, a missing permission, a bus or hub
/// not set up yet) is retried: an operator can fix it, and nothing is dropped meanwhile.
const INVALID_CODES: &[&str] = &[
    "ValidationException",
    "InvalidInput",
    "InvalidInputException",
    "InvalidParameterValue",
    "InvalidArgument",
    "MalformedDetail",
    "InvalidEventPatternException",
    "SerializationException",
];

/// The outcome of one entry an AWS API failed on within a call that succeeded
/// (`BatchImportFindings`' `FailedFindings`, `PutEvents`' failed `Entries`).
pub fn entry_failure(code: &str, message: &str) -> Attempt {
    if INVALID_CODES.contains(&code) {
        Attempt::Rejected {
            status: 0,
            body: format!("{code}: {message}"),
        }
    } else {
        Attempt::Retry {
            reason: format!("{code}: {message}"),
            after: None,
        }
    }
}

/// The outcome of an AWS SDK call that failed (after the SDK's own retries).
pub fn sdk_attempt<E, R>(e: &aws_sdk_eventbridge::error::SdkError<E, R>) -> Attempt
where
    E: aws_sdk_eventbridge::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    use aws_sdk_eventbridge::error::SdkError;
    match e {
        SdkError::ServiceError(se) => {
            let err = se.err();
            let code = err.code().unwrap_or("unknown error");
            let message = err.message().unwrap_or("");
            entry_failure(code, message)
        }
        SdkError::ConstructionFailure(_) => Attempt::Rejected {
            status: 0,
            body: format!("the request could not be built: {}", describe(e)),
        },
        _ => Attempt::Retry {
            reason: describe(e),
            after: None,
        },
    }
}

/// An error with its chain of sources, on one line.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

/// The account of the credentials in `sdk` (`sts:GetCallerIdentity`).
pub async fn caller_account(sdk: &aws_config::SdkConfig) -> Result<String, Attempt> {
    let sts = aws_sdk_sts::Client::new(sdk);
    match sts.get_caller_identity().send().await {
        Ok(out) => out.account().map(str::to_string).ok_or(Attempt::Retry {
            reason: "sts:GetCallerIdentity returned no account".into(),
            after: None,
        }),
        Err(e) => Err(Attempt::Retry {
            reason: format!(
                "sts:GetCallerIdentity (set account_id to skip it): {}",
                describe(&e)
            ),
            after: None,
        }),
    }
}

/// Now, RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// Whether an answer is worth retrying.
pub fn retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

/// `Retry-After`: delay-seconds, or an HTTP date (IMF-fixdate, RFC 850 or asctime), relative to
/// `now`. A date in the past means "now"; anything else unparseable is ignored.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v)
        .map(|d| d.with_timezone(&chrono::Utc))
        .ok()
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(v, "%A, %d-%b-%y %H:%M:%S GMT")
                .ok()
                .map(|n| n.and_utc())
        })
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(v, "%a %b %e %H:%M:%S %Y")
                .ok()
                .map(|n| n.and_utc())
        })?;
    let ms = (at - now).num_milliseconds().max(0) as u64;
    Some(Duration::from_millis(ms).min(MAX_RETRY_AFTER))
}

/// Exponential backoff with jitter: after the `failures`-th consecutive failure, a delay drawn
/// from [d/2, d] where d = base·2^(failures-1), at most `max`.
pub fn backoff(failures: u32, base: Duration, max: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let d = base.saturating_mul(1u32 << exp).min(max);
    let half = d / 2;
    let jitter_ms = rand::rng().random_range(0..=half.as_millis() as u64);
    half + Duration::from_millis(jitter_ms)
}

/// A token bucket: `burst` attempts at once, refilled at `per_minute`.
#[derive(Debug)]
pub struct TokenBucket {
    capacity: f64,
    tokens: f64,
    per_sec: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(burst: u32, per_minute: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            capacity: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            per_sec: per_minute.max(1) as f64 / 60.0,
            last: now,
        }
    }

    /// Takes a token, or says how long until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_entry_failures_are_retried_unless_the_record_is_invalid() {
        for code in ["InvalidInput", "ValidationException", "MalformedDetail"] {
            match entry_failure(code, "bad") {
                Attempt::Rejected { status, body } => {
                    assert_eq!(status, 0);
                    assert_eq!(body, format!("{code}: bad"));
                }
                other => panic!("{code}: {other:?}"),
            }
        }
        for code in [
            "ThrottlingException",
            "InternalFailure",
            "AccessDeniedException",
            "InvalidAccessException",
            "ResourceNotFoundException",
            "",
        ] {
            assert!(
                matches!(entry_failure(code, "x"), Attempt::Retry { after: None, .. }),
                "{code}"
            );
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:28:10 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed Oct 21 07:28:05 2015", now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn backoff_grows_within_bounds() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for _ in 0..100 {
            let d1 = backoff(1, base, max);
            assert!(d1 >= Duration::from_millis(50) && d1 <= base, "{d1:?}");
            let d4 = backoff(4, base, max);
            assert!(d4 >= Duration::from_millis(400) && d4 <= Duration::from_millis(800));
            let big = backoff(40, base, max);
            assert!(big >= max / 2 && big <= max);
        }
    }

    #[test]
    fn classification() {
        assert!(retryable(StatusCode::SERVICE_UNAVAILABLE));
        assert!(retryable(StatusCode::TOO_MANY_REQUESTS));
        assert!(retryable(StatusCode::REQUEST_TIMEOUT));
        assert!(!retryable(StatusCode::BAD_REQUEST));
        assert!(!retryable(StatusCode::NOT_FOUND));
        assert!(!retryable(StatusCode::MOVED_PERMANENTLY));
    }

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, 60, t0);
        for _ in 0..3 {
            assert!(b.take(t0).is_ok());
        }
        let wait = b.take(t0).unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::from_millis(900));
        assert!(b.take(t0 + Duration::from_millis(1001)).is_ok());
        assert!(b.take(t0 + Duration::from_millis(1002)).is_err());
        // Never more than the burst, however long it was idle.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(b.take(later).is_ok());
        }
        assert!(b.take(later).is_err());
    }
}
