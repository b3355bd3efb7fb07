//! The password policy: Django's four validators (length, similarity to the user's attributes,
//! common passwords, entirely numeric) with its wording, plus a maximum length. "Common" is
//! judged by the zxcvbn strength estimator, which knows the leaked-password lists and patterns.

use zxcvbn::Score;

pub const MIN_CHARS: usize = 8;
pub const MAX_CHARS: usize = 1024;
/// zxcvbn's cost grows with length (and with l33t substitutions, steeply: ~100 ms for 128 such
/// characters, ~40 ms for 64, in an optimised build); what it says of the first 64 characters is
/// what matters, since a password that long and not common in its head is not common.
pub const ESTIMATE_CHARS: usize = 64;
const MAX_SIMILARITY: f64 = 0.7;

/// The messages for `password`, empty when it is acceptable. `attributes` are the user's
/// `(verbose name, value)` pairs, e.g. `("username", "alice")`, `("email address", "a@x.io")`.
pub fn check(password: &str, attributes: &[(&str, &str)]) -> Vec<String> {
    let chars = password.chars().count();
    if chars > MAX_CHARS {
        return vec![format!(
            "Ensure this field has no more than {MAX_CHARS} characters."
        )];
    }
    let mut errors = Vec::new();
    if chars < MIN_CHARS {
        errors.push(format!(
            "This password is too short. It must contain at least {MIN_CHARS} characters."
        ));
    }
    if let Some(name) = too_similar(password, attributes) {
        errors.push(format!("The password is too similar to the {name}."));
    }
    if is_common(password, attributes) {
        errors.push("This password is too common.".to_owned());
    }
    if !password.is_empty() && password.chars().all(|c| c.is_numeric()) {
        errors.push("This password is entirely numeric.".to_owned());
    }
    errors
}

fn is_common(password: &str, attributes: &[(&str, &str)]) -> bool {
    let head: String = password.chars().take(ESTIMATE_CHARS).collect();
    let inputs: Vec<&str> = attributes.iter().map(|(_, value)| *value).collect();
    zxcvbn::zxcvbn(&head, &inputs).score() < Score::Two
}

/// Django's UserAttributeSimilarityValidator: each attribute, and each part of it split on
/// non-word characters, is compared with difflib's `quick_ratio`.
fn too_similar<'a>(password: &str, attributes: &[(&'a str, &str)]) -> Option<&'a str> {
    let password = password.to_lowercase();
    let password: Vec<char> = password.chars().collect();
    for (name, value) in attributes {
        let value = value.to_lowercase();
        let mut parts: Vec<&str> = value
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|p| !p.is_empty())
            .collect();
        parts.push(&value);
        for part in parts {
            let part: Vec<char> = part.chars().collect();
            if exceeds_length_ratio(password.len(), part.len()) {
                continue;
            }
            if quick_ratio(&password, &part) >= MAX_SIMILARITY {
                return Some(name);
            }
        }
    }
    None
}

fn exceeds_length_ratio(password_len: usize, value_len: usize) -> bool {
    let bound = MAX_SIMILARITY / 2.0 * password_len as f64;
    password_len >= 10 * value_len && (value_len as f64) < bound
}

/// difflib's `SequenceMatcher.quick_ratio`: 2 × (common characters, with multiplicity) / total.
fn quick_ratio(a: &[char], b: &[char]) -> f64 {
    let total = a.len() + b.len();
    if total == 0 {
        return 1.0;
    }
    let mut counts = std::collections::HashMap::new();
    for c in b {
        *counts.entry(*c).or_insert(0i32) += 1;
    }
    let mut matches = 0;
    for c in a {
        if let Some(n) = counts.get_mut(c) {
            if *n > 0 {
                *n -= 1;
                matches += 1;
            }
        }
    }
    2.0 * matches as f64 / total as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: [(&str, &str); 2] = [
        ("username", "alice"),
        ("email address", "alice@example.com"),
    ];

    #[test]
    fn a_strong_password_passes() {
        assert!(check("correct horse battery staple", &ALICE).is_empty());
    }

    #[test]
    fn each_rule_reports_in_djangos_words() {
        assert_eq!(
            check("x7#Qp", &ALICE),
            vec![
                "This password is too short. It must contain at least 8 characters.",
                "This password is too common."
            ]
        );
        assert!(check("password", &ALICE).contains(&"This password is too common.".to_owned()));
        assert!(
            check("83920174659", &ALICE).contains(&"This password is entirely numeric.".to_owned())
        );
        assert!(
            check("alice@example.com", &ALICE)
                .contains(&"The password is too similar to the username.".to_owned())
                || check("alice@example.com", &ALICE)
                    .contains(&"The password is too similar to the email address.".to_owned())
        );
        assert_eq!(
            check(&"a".repeat(1025), &ALICE),
            vec!["Ensure this field has no more than 1024 characters."]
        );
    }

    #[test]
    fn quick_ratio_matches_difflib() {
        let a: Vec<char> = "abcd".chars().collect();
        let b: Vec<char> = "bcde".chars().collect();
        assert!((quick_ratio(&a, &b) - 0.75).abs() < 1e-9);
    }
}
