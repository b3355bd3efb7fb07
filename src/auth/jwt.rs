//! EdDSA (Ed25519) access tokens: signed with our key, verified with the algorithm pinned and
//! `iss`, `aud`, `exp`, `nbf` and `token_type` checked. The public key is served as a JWKS.

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::Path;
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
}

/// The signing key, its id, and how tokens are checked.
pub struct Keys {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    public_x: String,
    validation: Validation,
    issuer: String,
    audience: String,
}

impl Keys {
    /// Reads the PKCS#8 PEM key at `path`, generating it first if the file does not exist.
    pub fn load_or_generate(path: &Path, issuer: &str, audience: &str) -> anyhow::Result<Self> {
        let signing = if path.exists() {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the signing key {}", path.display()))?;
            SigningKey::from_pkcs8_pem(&pem)
                .context("the signing key is not an Ed25519 PKCS#8 PEM")?
        } else {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .context("cannot encode the signing key")?;
            crate::secrets::write_private(path, pem.as_bytes())?;
            tracing::info!(path = %path.display(), "generated a new signing key");
            key
        };
        Self::from_signing_key(&signing, issuer, audience)
    }

    fn from_signing_key(key: &SigningKey, issuer: &str, audience: &str) -> anyhow::Result<Self> {
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .context("cannot encode the signing key")?;
        let public = key.verifying_key().to_bytes();
        let public_x = URL_SAFE_NO_PAD.encode(public);
        let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(public)[..12]);
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub", "nbf"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        Ok(Self {
            kid,
            encoding: EncodingKey::from_ed_pem(pem.as_bytes()).context("signing key")?,
            decoding: DecodingKey::from_ed_components(&public_x).context("verifying key")?,
            public_x,
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
    }

    pub fn issue(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        epoch: u32,
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
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding).context("cannot sign a token")
    }

    /// The claims of a valid access token; `None` for anything else.
    pub fn verify(&self, token: &str) -> Option<AccessClaims> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.alg != Algorithm::EdDSA || header.kid.as_deref() != Some(self.kid.as_str()) {
            return None;
        }
        let data =
            jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation).ok()?;
        (data.claims.token_type == ACCESS).then_some(data.claims)
    }

    /// The JSON Web Key Set that verifies our access tokens.
    pub fn jwks(&self) -> Value {
        json!({
            "keys": [{
                "kty": "OKP",
                "crv": "Ed25519",
                "alg": "EdDSA",
                "use": "sig",
                "kid": self.kid,
                "x": self.public_x,
            }]
        })
    }
}
