//! The `Session` aggregate: one short stream per login, holding its refresh-token chain.
//!
//! A refresh token names its session and a generation. Each refresh spends the current generation
//! and moves to the next. Presenting the generation just spent again is answered again within a
//! short grace (a client that lost the response); any other spent generation revokes the chain.

#[cfg(test)]
mod tests;

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Wrong second-factor codes one login challenge takes before it is spent (the password must
/// then be given again, under its own guessing bound).
pub const MAX_SECOND_FACTOR_FAILURES: u32 = 5;

#[derive(Debug, Clone, PartialEq)]
pub enum SessionCommand {
    /// With `second_factor`, the stream must hold a live challenge for `user_id` (the code was
    /// checked by the caller); without, it must be new.
    Start {
        session_id: Uuid,
        user_id: Uuid,
        /// The user's token epoch at login; the chain dies when it moves on.
        token_epoch: u32,
        method: LoginMethod,
        second_factor: Option<SecondFactor>,
        ttl: Duration,
        now: DateTime<Utc>,
    },
    /// The password was right and the account has a second factor: the login waits for it.
    Challenge {
        user_id: Uuid,
        /// The user's token epoch: a change or reset of the password before the second factor
        /// voids the challenge.
        token_epoch: u32,
        methods: Vec<SecondFactor>,
        ttl: Duration,
        now: DateTime<Utc>,
    },
    /// A wrong (or replayed) code was given for the challenge.
    RecordSecondFactorFailure {
        method: SecondFactor,
        now: DateTime<Utc>,
    },
    Refresh {
        generation: u32,
        /// The user's current token epoch, read by the caller.
        current_epoch: u32,
        ttl: Duration,
        grace: Duration,
        now: DateTime<Utc>,
    },
    Logout {
        now: DateTime<Utc>,
    },
    /// A wrong password for a known account. Recorded in a stream of its own (an attempt that
    /// never became a session), so failures never lengthen any long-lived stream.
    RecordFailedLogin {
        user_id: Uuid,
        now: DateTime<Utc>,
    },
    /// The right password for an account that may not log in yet (not activated).
    RecordRefusedLogin {
        user_id: Uuid,
        reason: LoginRefusal,
        now: DateTime<Utc>,
    },
}

/// Why a login with the right password was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginRefusal {
    /// The account is not activated yet (the login answered 403).
    Inactive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationReason {
    /// A spent refresh token was presented again: it may have been stolen.
    RefreshTokenReuse,
}

/// A second factor a login can be completed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecondFactor {
    /// A code of the authenticator app (RFC 6238).
    Totp,
    /// One of the one-time recovery codes.
    RecoveryCode,
    /// A registered passkey (WebAuthn).
    Passkey,
}

/// A login waiting for its second factor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Challenge {
    pub user_id: Uuid,
    #[serde(default)]
    pub token_epoch: u32,
    pub expires_at: DateTime<Utc>,
    pub failures: u32,
}

/// How a user proved who they are at login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginMethod {
    Password,
    /// A discoverable passkey, without a password.
    Passkey,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SessionEvent {
    /// Version 2.0 added `method` (see `upcast`).
    Started {
        session_id: Uuid,
        user_id: Uuid,
        method: LoginMethod,
        /// The second factor that completed the login (absent when none was needed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        second_factor: Option<SecondFactor>,
        token_epoch: u32,
        expires_at: DateTime<Utc>,
        started_at: DateTime<Utc>,
    },
    /// The password was right; the login needs one of `methods` before `expires_at`.
    SecondFactorRequired {
        user_id: Uuid,
        /// The password's token epoch at the challenge.
        #[serde(default)]
        token_epoch: u32,
        methods: Vec<SecondFactor>,
        expires_at: DateTime<Utc>,
        challenged_at: DateTime<Utc>,
    },
    /// A wrong or replayed second-factor code.
    SecondFactorFailed {
        user_id: Uuid,
        method: SecondFactor,
        failed_at: DateTime<Utc>,
    },
    Refreshed {
        user_id: Uuid,
        generation: u32,
        expires_at: DateTime<Utc>,
        refreshed_at: DateTime<Utc>,
    },
    LoggedOut {
        user_id: Uuid,
        logged_out_at: DateTime<Utc>,
    },
    Revoked {
        user_id: Uuid,
        reason: RevocationReason,
        revoked_at: DateTime<Utc>,
    },
    LoginFailed {
        user_id: Uuid,
        failed_at: DateTime<Utc>,
    },
    /// The password was right, but the account may not log in (see [`LoginRefusal`]).
    LoginRefused {
        user_id: Uuid,
        reason: LoginRefusal,
        refused_at: DateTime<Utc>,
    },
}

impl DomainEvent for SessionEvent {
    fn event_type(&self) -> String {
        match self {
            SessionEvent::Started { .. } => "Started",
            SessionEvent::Refreshed { .. } => "Refreshed",
            SessionEvent::LoggedOut { .. } => "LoggedOut",
            SessionEvent::Revoked { .. } => "Revoked",
            SessionEvent::LoginFailed { .. } => "LoginFailed",
            SessionEvent::LoginRefused { .. } => "LoginRefused",
            SessionEvent::SecondFactorRequired { .. } => "SecondFactorRequired",
            SessionEvent::SecondFactorFailed { .. } => "SecondFactorFailed",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        match self {
            SessionEvent::Started { .. } => "2.0",
            _ => crate::EVENT_VERSION,
        }
        .to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("session already started")]
    AlreadyStarted,
    /// Unknown, expired, logged out, revoked, or outdated by a password change.
    #[error("refresh token is not valid")]
    InvalidToken,
    /// Unknown, expired, spent by too many wrong codes, or used already.
    #[error("login challenge is not valid")]
    InvalidChallenge,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub user_id: Option<Uuid>,
    pub token_epoch: u32,
    /// The generation of the one live refresh token.
    pub generation: u32,
    pub last_refreshed_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub ended: bool,
    /// When the login started the session.
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    /// The second-factor challenge this login began with, if any.
    #[serde(default)]
    pub challenge: Option<Challenge>,
    /// Events applied so far: the stream's last sequence.
    #[serde(default)]
    pub events: i64,
    /// The sequence of the `Started` event (1 unless a challenge came first).
    #[serde(default)]
    pub start_sequence: Option<i64>,
}

impl Session {
    /// The challenge, while it can still complete the login at `now`.
    pub fn live_challenge(&self, now: DateTime<Utc>) -> Option<&Challenge> {
        self.challenge.as_ref().filter(|c| {
            self.user_id.is_none()
                && !self.ended
                && now < c.expires_at
                && c.failures < MAX_SECOND_FACTOR_FAILURES
        })
    }
}

impl Session {
    pub fn decide(&self, command: SessionCommand) -> Result<Vec<SessionEvent>, SessionError> {
        match command {
            SessionCommand::Start {
                session_id,
                user_id,
                token_epoch,
                method,
                second_factor,
                ttl,
                now,
            } => {
                if self.user_id.is_some() {
                    return Err(SessionError::AlreadyStarted);
                }
                match second_factor {
                    Some(_) => match self.live_challenge(now) {
                        Some(challenge)
                            if challenge.user_id == user_id
                                && challenge.token_epoch == token_epoch => {}
                        _ => return Err(SessionError::InvalidChallenge),
                    },
                    None if self.challenge.is_some() || self.ended => {
                        return Err(SessionError::AlreadyStarted)
                    }
                    None => {}
                }
                Ok(vec![SessionEvent::Started {
                    session_id,
                    user_id,
                    method,
                    second_factor,
                    token_epoch,
                    expires_at: now + ttl,
                    started_at: now,
                }])
            }
            SessionCommand::Challenge {
                user_id,
                token_epoch,
                methods,
                ttl,
                now,
            } => {
                if self.user_id.is_some() || self.challenge.is_some() || self.ended {
                    return Err(SessionError::AlreadyStarted);
                }
                Ok(vec![SessionEvent::SecondFactorRequired {
                    user_id,
                    token_epoch,
                    methods,
                    expires_at: now + ttl,
                    challenged_at: now,
                }])
            }
            SessionCommand::RecordSecondFactorFailure { method, now } => {
                let challenge = self
                    .live_challenge(now)
                    .ok_or(SessionError::InvalidChallenge)?;
                Ok(vec![SessionEvent::SecondFactorFailed {
                    user_id: challenge.user_id,
                    method,
                    failed_at: now,
                }])
            }
            SessionCommand::Refresh {
                generation,
                current_epoch,
                ttl,
                grace,
                now,
            } => {
                let user_id = self.user_id.ok_or(SessionError::InvalidToken)?;
                let expired = self.expires_at.is_none_or(|at| now >= at);
                if self.ended || expired || current_epoch != self.token_epoch {
                    return Err(SessionError::InvalidToken);
                }
                if generation == self.generation {
                    return Ok(vec![SessionEvent::Refreshed {
                        user_id,
                        generation: self.generation + 1,
                        expires_at: now + ttl,
                        refreshed_at: now,
                    }]);
                }
                let just_spent = generation + 1 == self.generation
                    && self.last_refreshed_at.is_some_and(|at| now - at <= grace);
                if just_spent {
                    // The caller answers again with the live generation; nothing changes.
                    return Ok(vec![]);
                }
                if generation < self.generation {
                    return Ok(vec![SessionEvent::Revoked {
                        user_id,
                        reason: RevocationReason::RefreshTokenReuse,
                        revoked_at: now,
                    }]);
                }
                Err(SessionError::InvalidToken)
            }
            SessionCommand::RecordFailedLogin { user_id, now } => {
                if self.user_id.is_some() || self.challenge.is_some() || self.ended {
                    return Err(SessionError::AlreadyStarted);
                }
                Ok(vec![SessionEvent::LoginFailed {
                    user_id,
                    failed_at: now,
                }])
            }
            SessionCommand::RecordRefusedLogin {
                user_id,
                reason,
                now,
            } => {
                if self.user_id.is_some() || self.challenge.is_some() || self.ended {
                    return Err(SessionError::AlreadyStarted);
                }
                Ok(vec![SessionEvent::LoginRefused {
                    user_id,
                    reason,
                    refused_at: now,
                }])
            }
            SessionCommand::Logout { now } => {
                let user_id = self.user_id.ok_or(SessionError::InvalidToken)?;
                if self.ended {
                    return Ok(vec![]);
                }
                Ok(vec![SessionEvent::LoggedOut {
                    user_id,
                    logged_out_at: now,
                }])
            }
        }
    }
}

impl Aggregate for Session {
    const TYPE: &'static str = "Session";
    type Command = SessionCommand;
    type Event = SessionEvent;
    type Error = SessionError;
    type Services = ();

    async fn handle(
        &mut self,
        command: SessionCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), SessionError> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: SessionEvent) {
        self.events += 1;
        match event {
            SessionEvent::Started {
                user_id,
                token_epoch,
                expires_at,
                started_at,
                ..
            } => {
                self.user_id = Some(user_id);
                self.token_epoch = token_epoch;
                self.expires_at = Some(expires_at);
                self.started_at = Some(started_at);
                self.start_sequence = Some(self.events);
            }
            SessionEvent::Refreshed {
                generation,
                expires_at,
                refreshed_at,
                ..
            } => {
                self.generation = generation;
                self.expires_at = Some(expires_at);
                self.last_refreshed_at = Some(refreshed_at);
            }
            SessionEvent::SecondFactorRequired {
                user_id,
                token_epoch,
                expires_at,
                ..
            } => {
                self.challenge = Some(Challenge {
                    user_id,
                    token_epoch,
                    expires_at,
                    failures: 0,
                })
            }
            SessionEvent::SecondFactorFailed { .. } => {
                if let Some(challenge) = &mut self.challenge {
                    challenge.failures += 1;
                }
            }
            SessionEvent::LoggedOut { .. }
            | SessionEvent::Revoked { .. }
            | SessionEvent::LoginFailed { .. }
            | SessionEvent::LoginRefused { .. } => self.ended = true,
        }
    }
}
