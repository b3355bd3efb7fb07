//! Second factors: TOTP secrets (RFC 6238, encrypted at rest) and recovery codes (keyed hashes).
//!
//! Both live beside the event store (`migrations/0016_second_factors.sql`); events only name
//! them. The key is `MFA_KEY_FILE`'s, generated on first start like the link key: it encrypts
//! TOTP secrets (XChaCha20-Poly1305, the enrolment id as associated data, so a secret copied
//! to another enrolment's row does not decrypt) and keys the recovery codes' HMAC.

use chacha20poly1305::aead::KeyInit;
use chacha20poly1305::XChaCha20Poly1305;
use hmac::{Hmac, Mac};
use rand::{Rng, RngCore};
use sha2::Sha256;
use std::path::Path;
use totp_rs::{Algorithm, TOTP};
use uuid::Uuid;

/// Seconds per TOTP step (RFC 6238's recommendation, what every authenticator app assumes).
pub const STEP_SECS: u64 = 30;
/// Digits per TOTP code.
pub const DIGITS: usize = 6;
/// Recovery codes made at once.
pub const RECOVERY_CODES: u32 = 10;
/// Bytes of a TOTP secret (160 bits, RFC 4226's recommendation).
const SECRET_BYTES: usize = 20;
/// Characters of a recovery code, before its dash: 10 of 32 letters and digits, 50 bits.
const RECOVERY_CODE_CHARS: usize = 10;
/// The alphabet of recovery codes: lower-case letters and digits without `0 o 1 l i u`.
const RECOVERY_ALPHABET: &[u8] = b"abcdefghjkmnpqrstvwxyz23456789";

/// What a code given at login or to turn TOTP off is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    /// Six digits (spaces and dashes dropped).
    Totp(String),
    /// Anything else, normalised: lower case, without spaces and dashes.
    Recovery(String),
}

impl Code {
    pub fn parse(text: &str) -> Self {
        let compact: String = text
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .collect();
        if compact.len() == DIGITS && compact.bytes().all(|b| b.is_ascii_digit()) {
            Code::Totp(compact)
        } else {
            Code::Recovery(compact.to_lowercase())
        }
    }
}

#[derive(Clone)]
pub struct SecondFactorKeys {
    key: [u8; 32],
}

impl SecondFactorKeys {
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    pub fn load_or_generate(path: &Path) -> anyhow::Result<Self> {
        crate::auth::secrets::load_or_generate_key(path, "second-factor key").map(Self::new)
    }

    /// A new random TOTP secret.
    pub fn new_secret() -> Vec<u8> {
        let mut secret = vec![0u8; SECRET_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        secret
    }

    /// `nonce || ciphertext` of `secret`, bound to `enrolment_id`.
    pub fn seal(&self, enrolment_id: Uuid, secret: &[u8]) -> anyhow::Result<Vec<u8>> {
        let cipher = XChaCha20Poly1305::new((&self.key).into());
        Ok(projections::pii::seal_bytes(
            &cipher,
            enrolment_id.as_bytes(),
            secret,
        ))
    }

    /// The secret [`SecondFactorKeys::seal`] sealed for `enrolment_id`.
    pub fn open(&self, enrolment_id: Uuid, sealed: &[u8]) -> anyhow::Result<Vec<u8>> {
        anyhow::ensure!(sealed.len() > 24, "a sealed TOTP secret is too short");
        let cipher = XChaCha20Poly1305::new((&self.key).into());
        projections::pii::open_bytes(&cipher, enrolment_id.as_bytes(), sealed)
            .ok_or_else(|| anyhow::anyhow!("a TOTP secret does not decrypt under MFA_KEY_FILE"))
    }

    /// The keyed hash a recovery code is stored and looked up under.
    pub fn recovery_hash(&self, user_id: Uuid, code: &str) -> Vec<u8> {
        let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(b"recovery-code");
        mac.update(user_id.as_bytes());
        mac.update(code.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

/// New recovery codes as shown to the owner: `xxxxx-xxxxx`.
pub fn new_recovery_codes() -> Vec<String> {
    let mut rng = rand::rngs::OsRng;
    (0..RECOVERY_CODES)
        .map(|_| {
            let chars: String = (0..RECOVERY_CODE_CHARS)
                .map(|_| RECOVERY_ALPHABET[rng.gen_range(0..RECOVERY_ALPHABET.len())] as char)
                .collect();
            format!("{}-{}", &chars[..5], &chars[5..])
        })
        .collect()
}

/// The TOTP of `secret` as authenticator apps see it: SHA-1, six digits, 30-second steps.
pub fn totp(secret: Vec<u8>, issuer: &str, account: &str) -> anyhow::Result<TOTP> {
    // The otpauth label is `issuer:account`: neither may hold a colon.
    TOTP::new(
        Algorithm::SHA1,
        DIGITS,
        1,
        STEP_SECS,
        secret,
        Some(issuer.replace(':', " ")),
        account.replace(':', " "),
    )
    .map_err(|error| anyhow::anyhow!("cannot make a TOTP: {error:?}"))
}

/// The step (`unix time / 30`) whose code `code` is, among the current step and one either
/// side (clock drift), if any. Every candidate is compared, in constant time each.
pub fn matching_step(totp: &TOTP, code: &str, unix_secs: u64) -> Option<i64> {
    let now = unix_secs / STEP_SECS;
    let mut found = None;
    for step in [now.saturating_sub(1), now, now + 1] {
        let expected = totp.generate(step * STEP_SECS);
        let equal: bool =
            subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), code.as_bytes()).into();
        if equal && found.is_none() {
            found = Some(step as i64);
        }
    }
    found
}

/// The WebAuthn relying party of the settings: passkeys are bound to `WEBAUTHN_RP_ID` and
/// accepted from the pages of `WEBAUTHN_ORIGINS` only.
pub fn relying_party(settings: &crate::config::Settings) -> anyhow::Result<webauthn_rs::Webauthn> {
    use anyhow::Context;
    let origins: Vec<url::Url> = settings
        .webauthn_origins
        .iter()
        .map(|origin| {
            url::Url::parse(origin.trim())
                .with_context(|| format!("WEBAUTHN_ORIGINS: {origin} is not a URL"))
        })
        .collect::<anyhow::Result<_>>()?;
    let first = origins
        .first()
        .context("WEBAUTHN_ORIGINS names no origin")?;
    let mut builder = webauthn_rs::WebauthnBuilder::new(&settings.webauthn_rp_id, first)
        .with_context(|| {
            format!(
                "WEBAUTHN_RP_ID {} does not fit the origin {first}",
                settings.webauthn_rp_id
            )
        })?
        .rp_name(&settings.webauthn_rp_name);
    for origin in &origins[1..] {
        builder = builder.append_allowed_origin(origin);
    }
    builder.build().context("WEBAUTHN_RP_ID / WEBAUTHN_ORIGINS")
}

/// An SVG QR code of `uri`, for the set-up screen.
pub fn qr_svg(uri: &str) -> anyhow::Result<String> {
    let code = qrcode::QrCode::new(uri.as_bytes())?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_told_apart_and_normalised() {
        assert_eq!(Code::parse(" 123 456 "), Code::Totp("123456".into()));
        assert_eq!(Code::parse("123-456"), Code::Totp("123456".into()));
        assert_eq!(
            Code::parse("ABCDE-fghjk"),
            Code::Recovery("abcdefghjk".into())
        );
        assert_eq!(Code::parse("12345"), Code::Recovery("12345".into()));
    }

    #[test]
    fn sealed_secrets_open_only_for_their_enrolment_and_key() {
        let keys = SecondFactorKeys::new([3; 32]);
        let (one, other) = (Uuid::new_v4(), Uuid::new_v4());
        let secret = SecondFactorKeys::new_secret();
        let sealed = keys.seal(one, &secret).unwrap();
        assert!(!sealed.windows(secret.len()).any(|w| w == secret.as_slice()));
        assert_eq!(keys.open(one, &sealed).unwrap(), secret);
        assert!(keys.open(other, &sealed).is_err());
        assert!(SecondFactorKeys::new([4; 32]).open(one, &sealed).is_err());
    }

    #[test]
    fn rfc_6238_vectors_and_the_drift_window() {
        // RFC 6238 appendix B, SHA-1, with the last six digits.
        let secret = b"12345678901234567890".to_vec();
        let totp = totp(secret, "accounts", "a@example.com").unwrap();
        assert_eq!(totp.generate(59), "287082");
        assert_eq!(totp.generate(1_111_111_109), "081804");
        assert_eq!(
            matching_step(&totp, "081804", 1_111_111_109),
            Some(37_037_036)
        );
        // One step later still matches (drift); two steps later it does not.
        assert_eq!(
            matching_step(&totp, "081804", 1_111_111_109 + 30),
            Some(37_037_036)
        );
        assert_eq!(matching_step(&totp, "081804", 1_111_111_109 + 60), None);
        assert_eq!(matching_step(&totp, "000000", 1_111_111_109), None);
    }

    #[test]
    fn recovery_codes_are_distinct_and_hash_per_user() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES as usize);
        let unique: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(unique.len(), codes.len());
        let keys = SecondFactorKeys::new([3; 32]);
        let code = match Code::parse(&codes[0]) {
            Code::Recovery(code) => code,
            other => panic!("{other:?}"),
        };
        assert_ne!(
            keys.recovery_hash(Uuid::from_u128(1), &code),
            keys.recovery_hash(Uuid::from_u128(2), &code)
        );
    }
}
