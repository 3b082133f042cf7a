//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>, spec v1).
//!
//! The signed content is `{webhook-id}.{webhook-timestamp}.{body}`; the signature is
//! `v1,` followed by the standard base64 of its HMAC-SHA256. The secret is `whsec_` followed by
//! the base64 of the key bytes; a secret without the prefix is used as raw bytes.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The key a webhook is signed with. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({} bytes)", self.0.len())
    }
}

impl SigningKey {
    /// Parses `whsec_<base64>` (the spec's form) or takes a raw secret's bytes.
    pub fn parse(secret: &str) -> Result<SigningKey, String> {
        let secret = secret.trim();
        let key = match secret.strip_prefix("whsec_") {
            Some(b64) => STANDARD
                .decode(b64)
                .map_err(|e| format!("whsec_ secret is not valid base64: {e}"))?,
            None => secret.as_bytes().to_vec(),
        };
        if key.is_empty() {
            return Err("the secret is empty".into());
        }
        Ok(SigningKey(key))
    }

    /// The `webhook-signature` header value for one delivery attempt.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference vector of the Standard Webhooks test suite.
    #[test]
    fn reference_vector() {
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            key.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn raw_secret_and_errors() {
        let raw = SigningKey::parse("not-prefixed\n").unwrap();
        assert_eq!(raw.0, b"not-prefixed");
        assert!(SigningKey::parse("whsec_%%%").is_err());
        assert!(SigningKey::parse("  ").is_err());
        assert!(!format!("{raw:?}").contains("not-prefixed"));
    }
}
