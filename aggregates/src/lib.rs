//! The write model of the account service: pure aggregates, their commands, events and errors.
//!
//! - [`user`]: the `User` aggregate, one stream per account (registration, activation, profile,
//!   password). Its stream stays short: logins do not land here.
//! - [`session`]: the `Session` aggregate, one short stream per login (refresh-token chain).
//! - [`upcast`]: how events stored in an older shape are read in the current one.
//! - [`values`]: value types that cannot hold invalid input (`Username`, `Email`).
//!
//! Aggregates do no IO: the caller hashes passwords, checks HMACs, reads the clock and makes ids,
//! and passes the facts in the command. `apply` never fails.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod session;
pub mod upcast;
pub mod user;
pub mod values;

pub use session::{SecondFactor, Session, SessionCommand, SessionError, SessionEvent};
pub use user::{User, UserCommand, UserError, UserEvent};

/// Whose personal data an aggregate's events hold: the person whose data key seals them (see
/// `projections::pii`). `None` before the aggregate names one.
pub trait DataSubject {
    fn data_subject(&self) -> Option<uuid::Uuid>;
}

impl DataSubject for User {
    fn data_subject(&self) -> Option<uuid::Uuid> {
        self.id
    }
}

impl DataSubject for Session {
    fn data_subject(&self) -> Option<uuid::Uuid> {
        self.user_id
            .or_else(|| self.challenge.as_ref().map(|c| c.user_id))
    }
}

/// The version string every event currently carries; a change of shape bumps it and adds an upcaster.
pub const EVENT_VERSION: &str = "1.0";
