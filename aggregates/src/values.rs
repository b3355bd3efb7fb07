//! Value types: constructed only from valid input, so holding one proves it was checked.
//!
//! Identifiers have one canonical form, computed here and nowhere else: what the database stores
//! and indexes for uniqueness (`user_identities`), what every look-up and the login back-off key
//! on. The text is NFKC-normalised (as Django does for usernames), then case-folded with full
//! Unicode case folding, then normalised again (Unicode's `NFKC_Casefold` in effect). Usernames are
//! unique by their UTS #39 confusable skeleton, so `аdmin` (Cyrillic а), `ａｄｍｉｎ` and `adⅿin`
//! all collide with `admin`.

use serde::{Deserialize, Serialize};
use std::fmt;
use unicode_normalization::UnicodeNormalization;
use unicode_security::MixedScript;

/// Why a value was refused, in the wording the REST clients show to people (Django's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub &'static str);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// NFKC, full case folding, NFKC: the one folding of identifiers.
pub fn fold(text: &str) -> String {
    let nfkc: String = text.nfkc().collect();
    caseless::default_case_fold_str(&nfkc).nfkc().collect()
}

/// The key under which an e-mail address is unique and looked up: the folded local part and the
/// domain in its IDNA ASCII form. Any string gets one (a look-up of an address that could never
/// register finds nothing).
pub fn email_key(raw: &str) -> String {
    let trimmed = raw.trim();
    match trimmed.rsplit_once('@') {
        Some((local, domain)) => {
            let domain = idna::domain_to_ascii(domain).unwrap_or_else(|_| fold(domain));
            format!("{}@{}", fold(local), domain)
        }
        None => fold(trimmed),
    }
}

/// The key under which a username is unique: the UTS #39 skeleton of its folded form, so that
/// names people cannot tell apart cannot both exist.
pub fn username_key(raw: &str) -> String {
    let folded = fold(raw);
    let skeleton: String = unicode_security::skeleton(&folded).collect();
    // Folding again keeps the key stable when the skeleton maps to an upper-case prototype.
    fold(&skeleton)
}

/// Control characters (NUL and the rest of Unicode's Cc) have no place in any identifier.
fn has_control(text: &str) -> bool {
    text.chars().any(char::is_control)
}

/// A username as Django accepts it: 1–150 letters, digits and `@.+-_`, NFKC-normalised; letters
/// from one script only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Username(String);

impl Username {
    pub const MAX_CHARS: usize = 150;

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let normalized: String = raw.nfkc().collect();
        if normalized.chars().count() > Self::MAX_CHARS {
            return Err(Invalid(
                "Ensure this field has no more than 150 characters.",
            ));
        }
        let valid = normalized
            .chars()
            .all(|c| c.is_alphanumeric() || "@.+-_".contains(c));
        if normalized.is_empty() || !valid || has_control(&normalized) {
            return Err(Invalid("Enter a valid username. This value may contain only letters, numbers, and @/./+/-/_ characters."));
        }
        if !normalized.is_single_script() {
            return Err(Invalid(
                "Enter a valid username. Letters from different scripts may not be mixed.",
            ));
        }
        Ok(Self(normalized))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// See [`username_key`].
    pub fn key(&self) -> String {
        username_key(&self.0)
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `atext` of RFC 5322 plus the non-ASCII characters of RFC 6531: what a dot-atom local part
/// may hold. Quoted local parts (`"a b"@x`) and comments are refused: they cannot be told apart
/// reliably and many servers do not deliver to them.
fn local_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
}

/// An e-mail address that the mailer can deliver to: a dot-atom local part and a DNS domain name
/// (no address literals like `[127.0.0.1]`), at most 254 characters, NFKC-normalised and otherwise
/// stored as typed (mail goes to it as typed; uniqueness and look-ups use [`Email::key`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Email(String);

impl Email {
    pub const MAX_CHARS: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        const INVALID: Invalid = Invalid("Enter a valid email address.");
        let trimmed: String = raw.trim().nfkc().collect();
        if trimmed.chars().count() > Self::MAX_CHARS {
            return Err(Invalid(
                "Ensure this field has no more than 254 characters.",
            ));
        }
        if has_control(&trimmed) {
            return Err(INVALID);
        }
        let parsed: email_address::EmailAddress = trimmed.parse().map_err(|_| INVALID)?;
        // Django also refuses display names and domains without a dot-free literal form.
        if parsed.display_part() != "" || trimmed.contains('<') {
            return Err(INVALID);
        }
        let (local, domain) = trimmed.rsplit_once('@').ok_or(INVALID)?;
        let dot_atom = !local.is_empty()
            && local.len() <= 64
            && local
                .split('.')
                .all(|atom| !atom.is_empty() && atom.chars().all(local_char));
        if !dot_atom {
            return Err(INVALID);
        }
        let ascii = idna::domain_to_ascii_strict(domain).map_err(|_| INVALID)?;
        let hostname = ascii.contains('.')
            && ascii.len() <= 253
            && ascii.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
            && !ascii
                .rsplit('.')
                .next()
                .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()));
        if !hostname {
            return Err(INVALID);
        }
        Ok(Self(trimmed))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// See [`email_key`].
    pub fn key(&self) -> String {
        email_key(&self.0)
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_follow_djangos_rules() {
        assert!(Username::parse("alice.b+c-d_e@x").is_ok());
        assert!(Username::parse("élodie").is_ok());
        assert!(Username::parse("").is_err());
        assert!(Username::parse("has space").is_err());
        assert!(Username::parse("nul\u{0}").is_err());
        assert!(Username::parse(&"a".repeat(150)).is_ok());
        assert!(Username::parse(&"a".repeat(151)).is_err());
    }

    #[test]
    fn look_alike_usernames_share_one_key() {
        let admin = Username::parse("admin").expect("valid").key();
        // Fullwidth letters and the small roman numeral ⅿ are NFKC-equal to `admin`.
        for alike in ["ａｄｍｉｎ", "adⅿin", "ADMIN", "Admin", "adrnin"] {
            let parsed = Username::parse(alike).expect(alike);
            assert_eq!(parsed.key(), admin, "{alike}");
        }
        // Cyrillic а mixed with Latin letters is refused outright; all-Cyrillic look-alikes share
        // the skeleton.
        assert!(Username::parse("аdmin").is_err());
        assert_eq!(username_key("аdmin"), admin);
        assert_ne!(Username::parse("alice").expect("valid").key(), admin);
        assert_eq!(
            Username::parse("ａｄｍｉｎ").expect("valid").as_str(),
            "admin"
        );
    }

    #[test]
    fn emails_are_checked_and_keyed_for_lookups() {
        let email = Email::parse(" Alice@Example.COM ").expect("valid");
        assert_eq!(email.as_str(), "Alice@Example.COM");
        assert_eq!(email.key(), "alice@example.com");
        for bad in [
            "",
            "alice",
            "alice@",
            "@example.com",
            "a b@example.com",
            "\"a b\"@example.com",
            "a@[127.0.0.1]",
            "a@127.0.0.1",
            "a..b@example.com",
            ".a@example.com",
            "a@example",
            "a@-x.example.com",
            "a\u{0}b@example.com",
            "Alice <a@example.com>",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad} accepted");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse(&long).is_err());
    }

    #[test]
    fn case_folding_is_one_function_for_every_script() {
        // U+0130 (İ) folds to `i̇`, not `i`: it cannot claim `alice@`.
        let dotted = Email::parse("alİce@example.com").expect("valid");
        assert_ne!(dotted.key(), email_key("alice@example.com"));
        // Greek final and medial sigma fold alike, so an upper-case address finds itself.
        let greek = Email::parse("ΟΔΟΣ@example.com").expect("valid");
        assert_eq!(greek.key(), email_key("οδος@example.com"));
        assert_eq!(greek.key(), email_key("οδοσ@EXAMPLE.com"));
        // The key of an address is the key of its key.
        assert_eq!(email_key(&greek.key()), greek.key());
        // IDN domains are keyed by their ASCII form.
        assert_eq!(email_key("a@BÜCHER.example"), "a@xn--bcher-kva.example");
    }
}
