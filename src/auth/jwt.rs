//! EdDSA (Ed25519) access tokens: signed with the current key of the ring, verified with the
//! algorithm pinned, the `kid` looked up among the published keys, and `iss`, `aud`, `exp`, `nbf`
//! and `token_type` checked. The published keys are served as a JWKS.

use super::keyring::{StoredKey, StoredRing};
use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use ed25519_dalek::Signer;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use uuid::Uuid;

pub const ACCESS: &str = "access";

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    pub sub: Uuid,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: Uuid,
    pub token_type: String,
    /// The login session (refresh chain) this token belongs to.
    pub sid: Uuid,
    /// The user's token epoch when issued; a password change moves it on.
    pub epoch: u32,
    /// On tokens issued by a login: when the session started, in microseconds since the epoch.
    /// The read models may not show that login yet; the first read that needs it waits for it
    /// (read-your-writes without a wait at login).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_us: Option<i64>,
    /// The sequence of the session's `Started` event, when it is not the stream's first (a
    /// login completed by a second factor): what that first read waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_seq: Option<i64>,
}

struct Key {
    kid: String,
    /// Parsed once: `jsonwebtoken::encode` parses its key's PKCS#8 and derives the public key
    /// again on every token (half of what signing one costs).
    signing: ed25519_dalek::SigningKey,
    decoding: DecodingKey,
    x: String,
    sign_from: DateTime<Utc>,
    publish_until: Option<DateTime<Utc>>,
}

impl Key {
    fn from_stored(stored: &StoredKey) -> anyhow::Result<Self> {
        let signing = stored.signing_key()?;
        let public = signing.verifying_key().to_bytes();
        let x = URL_SAFE_NO_PAD.encode(public);
        Ok(Self {
            kid: URL_SAFE_NO_PAD.encode(&Sha256::digest(public)[..12]),
            signing,
            decoding: DecodingKey::from_ed_components(&x).context("verifying key")?,
            x,
            sign_from: stored.sign_from,
            publish_until: stored.publish_until,
        })
    }

    fn published(&self, now: DateTime<Utc>) -> bool {
        self.publish_until.is_none_or(|until| now < until)
    }
}

/// Where the keys come from.
enum Source {
    /// A PEM configured by the operator: one key, never rotated here.
    Pem,
    /// The keyring file, re-read by [`Keys::reload`] so rotations reach running processes.
    Ring(PathBuf),
}

/// Tokens whose signature already verified, so a client's next requests skip the Ed25519 check
/// (~50 µs, the largest cost of an authenticated read). Keyed by the whole token; its time claims
/// and its key's publication are checked again on every use; cleared when the keys change.
struct Verified {
    claims: AccessClaims,
    key_publish_until: Option<DateTime<Utc>>,
}

const VERIFIED_CACHE_ENTRIES: usize = 20_000;
const LEEWAY_SECS: i64 = 5;

pub struct Keys {
    keys: RwLock<Vec<Key>>,
    verified: std::sync::Mutex<std::collections::HashMap<String, Verified>>,
    source: Source,
    validation: Validation,
    issuer: String,
    audience: String,
}

fn read_pem(path: &Path) -> anyhow::Result<StoredKey> {
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the signing key {}", path.display()))?;
    let epoch = DateTime::<Utc>::UNIX_EPOCH;
    let key = StoredKey {
        pem,
        created_at: epoch,
        sign_from: epoch,
        publish_until: None,
    };
    key.signing_key()?;
    Ok(key)
}

impl Keys {
    /// The operator's PEM when `pem` is given, else the keyring at `ring` (created if missing).
    pub fn load(
        pem: Option<&Path>,
        ring: &Path,
        issuer: &str,
        audience: &str,
    ) -> anyhow::Result<Self> {
        let (stored, source) = match pem {
            Some(path) => (vec![read_pem(path)?], Source::Pem),
            None => (
                StoredRing::load_or_create(ring)?.keys,
                Source::Ring(ring.to_owned()),
            ),
        };
        let keys = stored
            .iter()
            .map(Key::from_stored)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub", "nbf"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS as u64;
        Ok(Self {
            keys: RwLock::new(keys),
            verified: Default::default(),
            source,
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
    }

    /// Re-reads the keyring file (a rotation by another process); a no-op for a configured PEM.
    pub fn reload(&self) -> anyhow::Result<()> {
        let Source::Ring(path) = &self.source else {
            return Ok(());
        };
        let Some(ring) = StoredRing::read(path)? else {
            return Ok(());
        };
        let keys = ring
            .keys
            .iter()
            .map(Key::from_stored)
            .collect::<anyhow::Result<Vec<_>>>()?;
        if !keys.is_empty() {
            if let Ok(mut current) = self.keys.write() {
                *current = keys;
            }
            if let Ok(mut verified) = self.verified.lock() {
                verified.clear();
            }
        }
        Ok(())
    }

    pub fn issue(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        epoch: u32,
        login: Option<(DateTime<Utc>, i64)>,
        now: DateTime<Utc>,
        ttl_secs: u64,
    ) -> anyhow::Result<String> {
        let iat = now.timestamp();
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user_id,
            exp: iat + ttl_secs as i64,
            iat,
            nbf: iat,
            jti: Uuid::new_v4(),
            token_type: ACCESS.to_owned(),
            sid: session_id,
            epoch,
            login_us: login.map(|(at, _)| at.timestamp_micros()),
            login_seq: login.and_then(|(_, sequence)| (sequence != 1).then_some(sequence)),
        };
        let keys = self
            .keys
            .read()
            .map_err(|_| anyhow::anyhow!("keyring lock poisoned"))?;
        // The newest key whose signing time has come.
        let key = keys
            .iter()
            .filter(|k| k.sign_from <= now)
            .max_by_key(|k| k.sign_from)
            .context("no signing key is active yet")?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        sign(&header, &claims, &key.signing).context("cannot sign a token")
    }

    /// The claims of a valid access token; `None` for anything else.
    pub fn verify(&self, token: &str) -> Option<AccessClaims> {
        let now = Utc::now();
        if let Ok(verified) = self.verified.lock() {
            if let Some(hit) = verified.get(token) {
                let t = now.timestamp();
                let live = hit.claims.exp >= t - LEEWAY_SECS
                    && hit.claims.nbf <= t + LEEWAY_SECS
                    && hit.key_publish_until.is_none_or(|until| now < until);
                return live.then(|| hit.claims.clone());
            }
        }
        let (claims, key_publish_until) = self.verify_signature(token, now)?;
        if let Ok(mut verified) = self.verified.lock() {
            if verified.len() >= VERIFIED_CACHE_ENTRIES {
                verified.clear();
            }
            verified.insert(
                token.to_owned(),
                Verified {
                    claims: claims.clone(),
                    key_publish_until,
                },
            );
        }
        Some(claims)
    }

    fn verify_signature(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Option<(AccessClaims, Option<DateTime<Utc>>)> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.alg != Algorithm::EdDSA {
            return None;
        }
        let kid = header.kid?;
        let keys = self.keys.read().ok()?;
        let key = keys.iter().find(|k| k.kid == kid && k.published(now))?;
        let data =
            jsonwebtoken::decode::<AccessClaims>(token, &key.decoding, &self.validation).ok()?;
        (data.claims.token_type == ACCESS).then_some((data.claims, key.publish_until))
    }

    /// The JSON Web Key Set of every published key.
    pub fn jwks(&self) -> Vec<Value> {
        let now = Utc::now();
        let keys: Vec<Value> = self
            .keys
            .read()
            .map(|keys| {
                keys.iter()
                    .filter(|k| k.published(now))
                    .map(|k| {
                        json!({
                            "kty": "OKP",
                            "crv": "Ed25519",
                            "alg": "EdDSA",
                            "use": "sig",
                            "kid": k.kid,
                            "x": k.x,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        keys
    }
}

/// A JWS in compact form, as `jsonwebtoken::encode` makes it (the header and the claims as JSON,
/// base64url without padding, signed with Ed25519), with a key parsed once.
fn sign<T: Serialize>(
    header: &Header,
    claims: &T,
    key: &ed25519_dalek::SigningKey,
) -> anyhow::Result<String> {
    let mut token = URL_SAFE_NO_PAD.encode(serde_json::to_vec(header)?);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?));
    let signature = key.sign(token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature.to_bytes()));
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_byte_for_byte_what_jsonwebtoken_signs() -> anyhow::Result<()> {
        let stored = StoredKey::generate(Utc::now(), Utc::now())?;
        let key = Key::from_stored(&stored)?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        let claims = json!({ "sub": Uuid::new_v4(), "login_us": 1, "name": "Zoë \"ok\"" });
        let ours = sign(&header, &claims, &key.signing)?;
        let theirs = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_ed_pem(stored.pem.as_bytes())?,
        )?;
        // Ed25519 signatures are deterministic: the same key and message, the same bytes.
        assert_eq!(ours, theirs);
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let decoded = jsonwebtoken::decode::<Value>(&ours, &key.decoding, &validation)?;
        assert_eq!(decoded.claims, claims);
        Ok(())
    }

    #[test]
    fn a_cached_token_is_checked_for_expiry_on_every_use() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("jwt-{}", Uuid::new_v4().simple()));
        let keys = Keys::load(None, &dir.join("keyring.json"), "iss", "aud")?;
        let token = keys.issue(Uuid::new_v4(), Uuid::new_v4(), 0, None, Utc::now(), 900)?;
        assert!(keys.verify(&token).is_some());
        assert!(keys.verify(&token).is_some(), "served from the cache");
        if let Ok(mut verified) = keys.verified.lock() {
            if let Some(entry) = verified.get_mut(&token) {
                entry.claims.exp = Utc::now().timestamp() - 60;
            }
        }
        assert!(keys.verify(&token).is_none(), "expired while cached");
        let mut tampered = token.clone();
        tampered.push('x');
        assert!(keys.verify(&tampered).is_none());
        std::fs::remove_dir_all(dir)?;
        Ok(())
    }
}
