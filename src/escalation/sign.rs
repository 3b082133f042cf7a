//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>, spec v1).
//!
//! The signed content is `{webhook-id}.{webhook-timestamp}.{body}`; the signature is
//! `v1,` followed by the standard base64 of its HMAC-SHA256. The secret is `whsec_` followed by
//! the base64 of the key bytes; a secret without the prefix is used as raw bytes.
//!
//! Rotation without a restart: the secret may hold several secrets, one per line, and every
//! delivery is signed with each (`webhook-signature: v1,<old> v1,<new>`, as the spec allows), so a
//! receiver that knows either accepts it during the overlap. With `secret_file`, the file is read
//! again when it changes: add the new secret, let receivers switch, remove the old one.

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

/// The keys of one destination, from its secret (one per line).
pub fn parse_keys(secret: &str) -> Result<Vec<SigningKey>, String> {
    let keys = secret
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, l)| SigningKey::parse(l).map_err(|e| format!("secret {}: {e}", i + 1)))
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err("the secret is empty".into());
    }
    Ok(keys)
}

/// A file's modification time and length: it changed when they did.
type Stamp = (std::time::SystemTime, u64);

/// Signs with every key of a destination, reading its `secret_file` again when it changed.
pub struct Signer {
    file: Option<std::path::PathBuf>,
    state: std::sync::Mutex<(Option<Stamp>, Vec<SigningKey>)>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Signer {
    /// `keys` as read at start; `file`, when the secret came from one, is watched for changes.
    pub fn new(keys: Vec<SigningKey>, file: Option<std::path::PathBuf>) -> Signer {
        let seen = file.as_deref().and_then(stamp);
        Signer {
            file,
            state: std::sync::Mutex::new((seen, keys)),
        }
    }

    /// The `webhook-signature` header: one `v1,…` per key, space-separated.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(path) = &self.file {
            let now = stamp(path);
            if now.is_some() && now != st.0 {
                st.0 = now;
                match std::fs::read_to_string(path)
                    .map_err(|e| e.to_string())
                    .and_then(|t| parse_keys(&t))
                {
                    Ok(keys) => {
                        tracing::info!(file = %path.display(), keys = keys.len(), "webhook signing secret reloaded");
                        st.1 = keys;
                    }
                    // The keys in use stay: a half-written file must not stop deliveries.
                    Err(e) => {
                        tracing::warn!(file = %path.display(), "webhook signing secret not reloaded ({e}); still signing with the previous keys")
                    }
                }
            }
        }
        st.1.iter()
            .map(|k| k.sign(id, timestamp, body))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_keys_sign_together_and_a_changed_file_is_read_again() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("secret");
        std::fs::write(&f, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
        let keys = parse_keys(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let s = Signer::new(keys, Some(f.clone()));
        let one = s.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(one, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        // Rotation: the new secret is added beside the old one.
        std::fs::write(
            &f,
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\nraw-new-secret\n",
        )
        .unwrap();
        let two = s.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        let parts: Vec<&str> = two.split(' ').collect();
        assert_eq!(parts.len(), 2, "{two}");
        assert_eq!(parts[0], one);
        let raw = SigningKey::parse("raw-new-secret").unwrap();
        assert_eq!(
            parts[1],
            raw.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            )
        );
        // A broken file keeps the keys in use.
        std::fs::write(&f, "whsec_%%%\n").unwrap();
        let three = s.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(three, two);
        // The old one removed.
        std::fs::write(&f, "raw-new-secret\n").unwrap();
        let four = s.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(four, parts[1]);
    }

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
