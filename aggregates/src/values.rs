//! Value types: constructed only from valid input, so holding one proves it was checked.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a value was refused, in the wording the REST clients show to people (Django's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub &'static str);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// A username as Django accepts it: 1–150 letters, digits and `@.+-_`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Username(String);

impl Username {
    pub const MAX_CHARS: usize = 150;

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        if raw.chars().count() > Self::MAX_CHARS {
            return Err(Invalid(
                "Ensure this field has no more than 150 characters.",
            ));
        }
        let valid = raw
            .chars()
            .all(|c| c.is_alphanumeric() || "@.+-_".contains(c));
        if raw.is_empty() || !valid {
            return Err(Invalid("Enter a valid username. This value may contain only letters, numbers, and @/./+/-/_ characters."));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An e-mail address of at most 254 characters, stored as typed (uniqueness is case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Email(String);

impl Email {
    pub const MAX_CHARS: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let trimmed = raw.trim();
        if trimmed.chars().count() > Self::MAX_CHARS {
            return Err(Invalid(
                "Ensure this field has no more than 254 characters.",
            ));
        }
        let parsed: email_address::EmailAddress = trimmed
            .parse()
            .map_err(|_| Invalid("Enter a valid email address."))?;
        // Django also refuses display names and domains without a dot-free literal form.
        if parsed.display_part() != "" || !parsed.domain().contains('.') || trimmed.contains('<') {
            return Err(Invalid("Enter a valid email address."));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form used for uniqueness and look-ups.
    pub fn normalized(&self) -> String {
        self.0.to_lowercase()
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
        assert!(Username::parse(&"a".repeat(150)).is_ok());
        assert!(Username::parse(&"a".repeat(151)).is_err());
    }

    #[test]
    fn emails_are_checked_and_normalized_for_lookups() {
        let email = Email::parse(" Alice@Example.COM ").expect("valid");
        assert_eq!(email.as_str(), "Alice@Example.COM");
        assert_eq!(email.normalized(), "alice@example.com");
        for bad in [
            "",
            "alice",
            "alice@",
            "@example.com",
            "a b@example.com",
            "Alice <a@example.com>",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad} accepted");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse(&long).is_err());
    }
}
