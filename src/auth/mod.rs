//! Authentication: password hashing and policy, signed access tokens, HMAC link and refresh
//! tokens, and the `AuthUser` extractor.

pub mod extractor;
pub mod jwt;
pub mod keyring;
pub mod links;
pub mod mfa;
pub mod password;
pub mod policy;
pub mod secrets;
pub mod throttle;

pub use extractor::AuthUser;
pub use jwt::{AccessClaims, Keys};
pub use links::{LinkSigner, Purpose};
pub use password::{PasswordHasher, SecretPassword};
