//! HMAC-derived tokens. A link token is `<request id>-<HMAC(user, purpose, request id)>`: nothing
//! secret is stored anywhere, the mailer recomputes it from the event, and the aggregate decides
//! whether that request is still the live, unexpired, unused one. Refresh tokens work the same
//! way over `(session, generation)`, so a lost response can be answered again.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::Path;
use subtle::ConstantTimeEq;
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

/// What a token is for; a token of one purpose never verifies as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Activation,
    PasswordReset,
    Refresh,
    SecondFactorChallenge,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Activation => b"activation",
            Purpose::PasswordReset => b"password-reset",
            Purpose::Refresh => b"refresh",
            Purpose::SecondFactorChallenge => b"second-factor-challenge",
        }
    }
}

#[derive(Clone)]
pub struct LinkSigner {
    key: [u8; 32],
}

impl LinkSigner {
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// Reads the hex key at `path`, generating it first if the file does not exist.
    pub fn load_or_generate(path: &Path) -> anyhow::Result<Self> {
        crate::auth::secrets::load_or_generate_key(path, "link key").map(Self::new)
    }

    fn mac(&self, purpose: Purpose, subject: Uuid, nonce: &[u8]) -> [u8; 32] {
        // A 32-byte key is always accepted by HMAC.
        let mut mac = match HmacSha256::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        for part in [purpose.label(), subject.as_bytes().as_slice(), nonce] {
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// The token of an e-mailed link.
    pub fn link_token(&self, purpose: Purpose, user_id: Uuid, request_id: Uuid) -> String {
        let mac = self.mac(purpose, user_id, request_id.as_bytes());
        format!("{}-{}", request_id.simple(), URL_SAFE_NO_PAD.encode(mac))
    }

    /// The request id inside a genuine link token; `None` for anything forged or malformed.
    pub fn verify_link(&self, purpose: Purpose, user_id: Uuid, token: &str) -> Option<Uuid> {
        let (request, mac) = token.split_once('-')?;
        if request.len() != 32 {
            return None;
        }
        let request_id = Uuid::try_parse(request).ok()?;
        let given = URL_SAFE_NO_PAD.decode(mac).ok()?;
        let expected = self.mac(purpose, user_id, request_id.as_bytes());
        bool::from(given.ct_eq(&expected)).then_some(request_id)
    }

    /// The refresh token of one generation of a session.
    pub fn refresh_token(&self, session_id: Uuid, generation: u32) -> String {
        let mac = self.mac(Purpose::Refresh, session_id, &generation.to_be_bytes());
        format!(
            "{}.{}.{}",
            session_id.simple(),
            generation,
            URL_SAFE_NO_PAD.encode(mac)
        )
    }

    /// `(session, generation)` of a genuine refresh token.
    pub fn verify_refresh(&self, token: &str) -> Option<(Uuid, u32)> {
        let mut parts = token.split('.');
        let (session, generation, mac) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || session.len() != 32 || generation.len() > 10 {
            return None;
        }
        let session_id = Uuid::try_parse(session).ok()?;
        let generation: u32 = generation.parse().ok()?;
        let given = URL_SAFE_NO_PAD.decode(mac).ok()?;
        let expected = self.mac(Purpose::Refresh, session_id, &generation.to_be_bytes());
        bool::from(given.ct_eq(&expected)).then_some((session_id, generation))
    }
}

impl LinkSigner {
    /// The token of a login's second-factor challenge: `<session id>~<HMAC>` (the session
    /// stream holds the challenge; the aggregate decides whether it is still live).
    pub fn challenge_token(&self, session_id: Uuid) -> String {
        let mac = self.mac(Purpose::SecondFactorChallenge, session_id, &[]);
        format!("{}~{}", session_id.simple(), URL_SAFE_NO_PAD.encode(mac))
    }

    /// The session a genuine challenge token names.
    pub fn verify_challenge(&self, token: &str) -> Option<Uuid> {
        let (session, mac) = token.split_once('~')?;
        if session.len() != 32 {
            return None;
        }
        let session_id = Uuid::try_parse(session).ok()?;
        let given = URL_SAFE_NO_PAD.decode(mac).ok()?;
        let expected = self.mac(Purpose::SecondFactorChallenge, session_id, &[]);
        bool::from(given.ct_eq(&expected)).then_some(session_id)
    }
}

/// `uidb64` of a link: the unpadded url-safe base64 of the user id's text, as Django makes it.
pub fn uidb64(user_id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(user_id.to_string())
}

pub fn parse_uidb64(text: &str) -> Option<Uuid> {
    let bytes = URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()?;
    Uuid::try_parse(std::str::from_utf8(&bytes).ok()?).ok()
}

/// The link a mail carries: `<base>` + `<uidb64>/<token>/`, with exactly one `/` between.
pub fn link_url(base: &str, user_id: Uuid, token: &str) -> String {
    format!(
        "{}/{}/{}/",
        base.trim_end_matches('/'),
        uidb64(user_id),
        token
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_tokens_bind_user_and_purpose() {
        let signer = LinkSigner::new([7; 32]);
        let (user, other, request) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let token = signer.link_token(Purpose::Activation, user, request);
        assert_eq!(
            signer.verify_link(Purpose::Activation, user, &token),
            Some(request)
        );
        assert_eq!(
            signer.verify_link(Purpose::PasswordReset, user, &token),
            None
        );
        assert_eq!(signer.verify_link(Purpose::Activation, other, &token), None);
        let forged = format!("{}-{}", request.simple(), "A".repeat(43));
        assert_eq!(signer.verify_link(Purpose::Activation, user, &forged), None);
        assert_eq!(
            LinkSigner::new([8; 32]).verify_link(Purpose::Activation, user, &token),
            None
        );
    }

    #[test]
    fn refresh_tokens_round_trip_and_refuse_tampering() {
        let signer = LinkSigner::new([7; 32]);
        let session = Uuid::new_v4();
        let token = signer.refresh_token(session, 3);
        assert_eq!(signer.verify_refresh(&token), Some((session, 3)));
        let bumped = token.replacen(".3.", ".4.", 1);
        assert_eq!(signer.verify_refresh(&bumped), None);
    }

    #[test]
    fn challenge_tokens_round_trip_and_are_no_refresh_tokens() {
        let signer = LinkSigner::new([7; 32]);
        let session = Uuid::new_v4();
        let token = signer.challenge_token(session);
        assert_eq!(signer.verify_challenge(&token), Some(session));
        assert_eq!(signer.verify_refresh(&token), None);
        assert_eq!(
            signer.verify_challenge(&signer.refresh_token(session, 0)),
            None
        );
        assert_eq!(LinkSigner::new([8; 32]).verify_challenge(&token), None);
    }

    #[test]
    fn uidb64_round_trips_and_links_have_one_slash() {
        let user = Uuid::new_v4();
        assert_eq!(parse_uidb64(&uidb64(user)), Some(user));
        assert_eq!(parse_uidb64("not-base64!"), None);
        let link = link_url("https://app.example/verify/", user, "tok");
        assert_eq!(
            link,
            format!("https://app.example/verify/{}/tok/", uidb64(user))
        );
        assert_eq!(link_url("https://app.example/verify", user, "tok"), link);
    }
}
