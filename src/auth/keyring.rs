//! The signing keys: one PEM configured by the operator (no rotation), or a keyring file in the
//! data directory that `accounts keys rotate` extends. A rotated-in key is published in the JWKS
//! at once but signs only from `sign_from` (so caches fetch it first); a rotated-out key stays
//! published until `publish_until`, when the last token it signed has expired.

use anyhow::Context;
use chrono::{DateTime, Duration, Utc};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One key of the ring, as stored (the file is written with mode 0600).
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredKey {
    pub pem: String,
    pub created_at: DateTime<Utc>,
    /// Signs new tokens from this moment on.
    pub sign_from: DateTime<Utc>,
    /// Published (and so accepted) until then; `None` while it is the newest key.
    pub publish_until: Option<DateTime<Utc>>,
}

/// Everything but the private key: a `{:?}` anywhere must not print it.
impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("pem", &"<redacted>")
            .field("created_at", &self.created_at)
            .field("sign_from", &self.sign_from)
            .field("publish_until", &self.publish_until)
            .finish()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoredRing {
    pub keys: Vec<StoredKey>,
}

impl StoredKey {
    pub fn generate(now: DateTime<Utc>, sign_from: DateTime<Utc>) -> anyhow::Result<Self> {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .context("cannot encode a signing key")?;
        Ok(Self {
            pem: pem.to_string(),
            created_at: now,
            sign_from,
            publish_until: None,
        })
    }

    pub fn signing_key(&self) -> anyhow::Result<SigningKey> {
        SigningKey::from_pkcs8_pem(&self.pem).context("a signing key is not Ed25519 PKCS#8 PEM")
    }
}

impl StoredRing {
    pub fn read(path: &Path) -> anyhow::Result<Option<Self>> {
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the keyring {}", path.display()))?;
        Ok(Some(
            serde_json::from_str(&text).context("the keyring file is not valid")?,
        ))
    }

    /// Writes the ring atomically (temporary file, then rename), owner-only.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_vec_pretty(self)?;
        let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
        crate::auth::secrets::write_private(&tmp, &text)?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
    }

    /// Reads the ring, generating a first key if there is none.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        if let Some(ring) = Self::read(path)? {
            if !ring.keys.is_empty() {
                return Ok(ring);
            }
        }
        let now = Utc::now();
        let ring = StoredRing {
            keys: vec![StoredKey::generate(now, now)?],
        };
        ring.write(path)?;
        tracing::info!(path = %path.display(), "generated a new signing key");
        Ok(ring)
    }

    /// Adds a key that signs from `now + delay`; the keys signing until then stay published until
    /// the last token they can sign has expired (`access_ttl` after the switch). Keys whose
    /// publication has ended are dropped.
    pub fn rotate(
        &mut self,
        now: DateTime<Utc>,
        delay: Duration,
        access_ttl: Duration,
    ) -> anyhow::Result<()> {
        let switch = now + delay;
        for key in &mut self.keys {
            if key.publish_until.is_none() {
                key.publish_until = Some(switch + access_ttl);
            }
        }
        self.keys
            .retain(|k| k.publish_until.is_none_or(|until| until > now));
        self.keys.push(StoredKey::generate(now, switch)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_publishes_the_new_key_first_and_retires_the_old_one_later() -> anyhow::Result<()> {
        let now = Utc::now();
        let mut ring = StoredRing {
            keys: vec![StoredKey::generate(now, now)?],
        };
        ring.rotate(now, Duration::minutes(10), Duration::minutes(15))?;
        assert_eq!(ring.keys.len(), 2);
        assert_eq!(
            ring.keys[0].publish_until,
            Some(now + Duration::minutes(25))
        );
        assert_eq!(ring.keys[1].sign_from, now + Duration::minutes(10));
        // A later rotation drops keys whose publication has ended.
        let later = now + Duration::hours(1);
        ring.rotate(later, Duration::zero(), Duration::minutes(15))?;
        assert_eq!(ring.keys.len(), 2);
        assert!(ring
            .keys
            .iter()
            .all(|k| k.created_at != now || k.sign_from != now));
        Ok(())
    }
}
