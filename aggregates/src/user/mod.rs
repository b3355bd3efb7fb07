//! The `User` aggregate: one stream per account.

mod commands;
mod error;
mod events;
#[cfg(test)]
mod tests;

pub use commands::{LinkIssue, ProfileChanges, UserCommand};
pub use error::UserError;
pub use events::{
    ActivationMethod, ActivationRefusal, DeletionRequester, SecondFactorRemoval, UserEvent,
};

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How often an owner is told that someone tried to register with their address. More attempts in
/// this window change nothing, so the endpoint cannot be used to flood a mailbox.
pub const DUPLICATE_NOTICE_INTERVAL: Duration = Duration::minutes(10);

/// Most mails an address is sent in any hour on others' request: activation links (the first
/// one included), reset links and duplicate-registration notices. Requests beyond it change
/// nothing (the endpoints answer the same), so nobody can mail-bomb an address through us; the
/// link mailed last stays the valid one.
pub const MAILS_PER_HOUR: usize = 5;
const MAIL_WINDOW: Duration = Duration::hours(1);

/// An e-mailed link that is still pending: its request id is what its token is derived from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingLink {
    pub request_id: Uuid,
    pub expires_at: DateTime<Utc>,
}

impl PendingLink {
    fn accepts(&self, request_id: Uuid, now: DateTime<Utc>) -> bool {
        self.request_id == request_id && now < self.expires_at
    }
}

/// The five free-text profile fields; `""` when unset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub country: String,
    pub profession: String,
    pub bio: String,
    pub thoughts: String,
    pub profile_img: String,
}

/// The state of one account, folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: Option<Uuid>,
    pub username: String,
    pub email: String,
    pub is_active: bool,
    /// Names the live password hash in the credential store.
    pub credential_id: Option<Uuid>,
    /// Bumped by every password change or reset; tokens issued under an older epoch are dead.
    pub token_epoch: u32,
    pub activation: Option<PendingLink>,
    pub reset: Option<PendingLink>,
    pub last_duplicate_notice_at: Option<DateTime<Utc>>,
    pub profile: Profile,
    /// When the last (at most [`MAILS_PER_HOUR`]) mails requested by others were sent.
    #[serde(default)]
    pub recent_mails: Vec<DateTime<Utc>>,
    /// The last refused activation link and when, so that a link clicked again and again is
    /// recorded once a minute.
    #[serde(default)]
    pub last_activation_refusal: Option<(Uuid, DateTime<Utc>)>,
    /// The second factors guarding logins.
    #[serde(default)]
    pub mfa: SecondFactors,
    /// When the account was deleted: it then holds nothing personal and takes no command.
    #[serde(default)]
    pub deleted_at: Option<DateTime<Utc>>,
}

/// An account's second factors. The secrets are not here: the ids name them in the tables
/// beside the store, as `credential_id` names the password hash.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SecondFactors {
    /// The enrolment whose secret logins are checked against; `None` when TOTP is off.
    pub totp: Option<Uuid>,
    /// A set-up waiting for its first code.
    pub pending_totp: Option<Uuid>,
    /// The current recovery codes: their batch and how many are unused.
    pub recovery_codes: Option<(Uuid, u32)>,
    /// The registered passkeys.
    #[serde(default)]
    pub passkeys: Vec<Uuid>,
}

impl SecondFactors {
    /// Whether a password login needs a second factor: TOTP is on or a passkey is registered.
    pub fn required(&self) -> bool {
        self.totp.is_some() || !self.passkeys.is_empty()
    }

    /// Recovery codes exist only while some second factor does.
    fn forget_recovery_codes_unless_required(&mut self) {
        if !self.required() {
            self.recovery_codes = None;
        }
    }

    pub fn recovery_codes_left(&self) -> u32 {
        self.recovery_codes.map_or(0, |(_, left)| left)
    }
}

impl User {
    pub fn is_registered(&self) -> bool {
        self.id.is_some()
    }

    /// An account that exists and was not deleted.
    fn registered(&self) -> Result<Uuid, UserError> {
        if self.deleted_at.is_some() {
            return Err(UserError::Deleted);
        }
        self.id.ok_or(UserError::NotFound)
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some()
    }

    /// Whether one more mail may be sent at `now` under [`MAILS_PER_HOUR`].
    fn may_mail(&self, now: DateTime<Utc>) -> bool {
        self.recent_mails
            .iter()
            .filter(|at| now - **at < MAIL_WINDOW)
            .count()
            < MAILS_PER_HOUR
    }

    fn note_mail(&mut self, at: DateTime<Utc>) {
        self.recent_mails.push(at);
        if self.recent_mails.len() > MAILS_PER_HOUR {
            self.recent_mails.remove(0);
        }
    }
}

impl Aggregate for User {
    const TYPE: &'static str = "User";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;
    type Services = ();

    async fn handle(
        &mut self,
        command: UserCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), UserError> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: UserEvent) {
        match event {
            UserEvent::Registered {
                user_id,
                username,
                email,
                credential_id,
                ..
            } => {
                self.id = Some(user_id);
                self.username = username;
                self.email = email;
                self.credential_id = Some(credential_id);
            }
            UserEvent::ActivationLinkIssued {
                request_id,
                expires_at,
                issued_at,
                ..
            } => {
                self.note_mail(issued_at);
                self.activation = Some(PendingLink {
                    request_id,
                    expires_at,
                })
            }
            UserEvent::Activated { .. } => {
                self.is_active = true;
                self.activation = None;
            }
            UserEvent::ActivationRefused {
                request_id,
                refused_at,
                ..
            } => self.last_activation_refusal = Some((request_id, refused_at)),
            UserEvent::DuplicateRegistrationAttempted { attempted_at, .. } => {
                self.note_mail(attempted_at);
                self.last_duplicate_notice_at = Some(attempted_at)
            }
            UserEvent::ProfileUpdated { changes, .. } => changes.apply_to(&mut self.profile),
            UserEvent::PasswordChanged { credential_id, .. } => {
                self.credential_id = Some(credential_id);
                self.token_epoch += 1;
                self.reset = None;
            }
            UserEvent::PasswordResetRequested {
                request_id,
                expires_at,
                requested_at,
                ..
            } => {
                self.note_mail(requested_at);
                self.reset = Some(PendingLink {
                    request_id,
                    expires_at,
                })
            }
            UserEvent::PasswordReset { credential_id, .. } => {
                self.credential_id = Some(credential_id);
                self.token_epoch += 1;
                self.reset = None;
            }
            UserEvent::TotpSetupStarted { enrolment_id, .. } => {
                self.mfa.pending_totp = Some(enrolment_id)
            }
            UserEvent::TotpEnabled { enrolment_id, .. } => {
                self.mfa.totp = Some(enrolment_id);
                self.mfa.pending_totp = None;
            }
            UserEvent::TotpDisabled { .. } => {
                self.mfa.totp = None;
                self.mfa.pending_totp = None;
                self.mfa.forget_recovery_codes_unless_required();
            }
            UserEvent::PasskeyRegistered { passkey_id, .. } => self.mfa.passkeys.push(passkey_id),
            UserEvent::PasskeyRemoved { passkey_id, .. } => {
                self.mfa.passkeys.retain(|id| *id != passkey_id);
                self.mfa.forget_recovery_codes_unless_required();
            }
            UserEvent::RecoveryCodesGenerated {
                batch_id, count, ..
            } => self.mfa.recovery_codes = Some((batch_id, count)),
            UserEvent::RecoveryCodeUsed {
                batch_id,
                remaining,
                ..
            } => self.mfa.recovery_codes = Some((batch_id, remaining)),
            UserEvent::AccountDeleted { deleted_at, .. } => {
                // Nothing personal stays in memory: the state is the anonymous rest.
                *self = User {
                    id: self.id,
                    token_epoch: self.token_epoch + 1,
                    deleted_at: Some(deleted_at),
                    ..User::default()
                };
            }
        }
    }
}

impl User {
    /// Decides which events a command produces, without touching state.
    pub fn decide(&self, command: UserCommand) -> Result<Vec<UserEvent>, UserError> {
        match command {
            UserCommand::Register {
                user_id,
                username,
                email,
                credential_id,
                activation,
                now,
            } => {
                if self.is_registered() {
                    return Err(UserError::AlreadyRegistered);
                }
                Ok(vec![
                    UserEvent::Registered {
                        user_id,
                        username: username.as_str().to_owned(),
                        email: email.as_str().to_owned(),
                        credential_id,
                        registered_at: now,
                        email_key: email.key(),
                        username_key: username.key(),
                    },
                    UserEvent::ActivationLinkIssued {
                        request_id: activation.request_id,
                        email: email.as_str().to_owned(),
                        username: username.as_str().to_owned(),
                        base_url: activation.base_url,
                        expires_at: now + activation.ttl,
                        issued_at: now,
                    },
                ])
            }
            UserCommand::IssueActivationLink { link, now } => {
                self.registered()?;
                if self.is_active {
                    return Err(UserError::AlreadyActive);
                }
                if !self.may_mail(now) {
                    return Ok(vec![]);
                }
                Ok(vec![UserEvent::ActivationLinkIssued {
                    request_id: link.request_id,
                    email: self.email.clone(),
                    username: self.username.clone(),
                    base_url: link.base_url,
                    expires_at: now + link.ttl,
                    issued_at: now,
                }])
            }
            UserCommand::Activate { request_id, now } => {
                self.registered()?;
                match &self.activation {
                    Some(link) if !self.is_active && link.accepts(request_id, now) => {
                        Ok(vec![UserEvent::Activated {
                            method: ActivationMethod::Link,
                            activated_at: now,
                        }])
                    }
                    _ => Err(UserError::InvalidActivationLink),
                }
            }
            UserCommand::RecordActivationRefusal { request_id, now } => {
                self.registered()?;
                let reason = match &self.activation {
                    _ if self.is_active => ActivationRefusal::AlreadyActive,
                    Some(link) if link.request_id == request_id => {
                        if link.accepts(request_id, now) {
                            return Ok(vec![]); // not refused: it would activate
                        }
                        ActivationRefusal::Expired
                    }
                    _ => ActivationRefusal::Superseded,
                };
                let repeated = self
                    .last_activation_refusal
                    .is_some_and(|(id, at)| id == request_id && now - at < Duration::minutes(1));
                if repeated {
                    return Ok(vec![]);
                }
                Ok(vec![UserEvent::ActivationRefused {
                    request_id,
                    reason,
                    refused_at: now,
                }])
            }
            UserCommand::NoteDuplicateRegistration { now } => {
                self.registered()?;
                let recent = self
                    .last_duplicate_notice_at
                    .is_some_and(|at| now - at < DUPLICATE_NOTICE_INTERVAL);
                if recent || !self.may_mail(now) {
                    return Ok(vec![]);
                }
                Ok(vec![UserEvent::DuplicateRegistrationAttempted {
                    email: self.email.clone(),
                    username: self.username.clone(),
                    attempted_at: now,
                }])
            }
            UserCommand::UpdateProfile { changes, now } => {
                self.registered()?;
                let changes = changes.without_noops(&self.profile);
                if changes.is_empty() {
                    return Ok(vec![]);
                }
                Ok(vec![UserEvent::ProfileUpdated {
                    changes,
                    updated_at: now,
                }])
            }
            UserCommand::ChangePassword { credential_id, now } => {
                self.registered()?;
                Ok(vec![UserEvent::PasswordChanged {
                    credential_id,
                    email: self.email.clone(),
                    username: self.username.clone(),
                    changed_at: now,
                }])
            }
            UserCommand::RequestPasswordReset { link, now } => {
                self.registered()?;
                if !self.may_mail(now) {
                    return Ok(vec![]);
                }
                Ok(vec![UserEvent::PasswordResetRequested {
                    request_id: link.request_id,
                    email: self.email.clone(),
                    username: self.username.clone(),
                    base_url: link.base_url,
                    expires_at: now + link.ttl,
                    requested_at: now,
                }])
            }
            UserCommand::ResetPassword {
                request_id,
                credential_id,
                now,
            } => {
                self.registered()?;
                match &self.reset {
                    Some(link) if link.accepts(request_id, now) => {
                        let mut events = vec![UserEvent::PasswordReset {
                            request_id,
                            credential_id,
                            email: self.email.clone(),
                            username: self.username.clone(),
                            reset_at: now,
                        }];
                        if !self.is_active {
                            events.push(UserEvent::Activated {
                                method: ActivationMethod::PasswordReset,
                                activated_at: now,
                            });
                        }
                        Ok(events)
                    }
                    _ => Err(UserError::InvalidResetLink),
                }
            }
            UserCommand::StartTotpSetup { enrolment_id, now } => {
                self.registered()?;
                if self.mfa.totp.is_some() {
                    return Err(UserError::SecondFactorEnabled);
                }
                Ok(vec![UserEvent::TotpSetupStarted {
                    enrolment_id,
                    started_at: now,
                }])
            }
            UserCommand::EnableTotp {
                enrolment_id,
                recovery_batch_id,
                recovery_codes,
                now,
            } => {
                self.registered()?;
                if self.mfa.totp.is_some() {
                    return Err(UserError::SecondFactorEnabled);
                }
                if self.mfa.pending_totp != Some(enrolment_id) {
                    return Err(UserError::NoPendingSetup);
                }
                Ok(vec![
                    UserEvent::TotpEnabled {
                        enrolment_id,
                        enabled_at: now,
                    },
                    UserEvent::RecoveryCodesGenerated {
                        batch_id: recovery_batch_id,
                        count: recovery_codes,
                        generated_at: now,
                    },
                ])
            }
            UserCommand::DisableTotp { now } => {
                self.registered()?;
                if self.mfa.totp.is_none() {
                    return Err(UserError::SecondFactorNotEnabled);
                }
                Ok(vec![UserEvent::TotpDisabled {
                    reason: SecondFactorRemoval::Owner,
                    disabled_at: now,
                }])
            }
            UserCommand::RegenerateRecoveryCodes {
                batch_id,
                count,
                now,
            } => {
                self.registered()?;
                if !self.mfa.required() {
                    return Err(UserError::SecondFactorNotEnabled);
                }
                Ok(vec![UserEvent::RecoveryCodesGenerated {
                    batch_id,
                    count,
                    generated_at: now,
                }])
            }
            UserCommand::UseRecoveryCode { batch_id, now } => {
                self.registered()?;
                match self.mfa.recovery_codes {
                    Some((current, left)) if current == batch_id && left > 0 => {
                        Ok(vec![UserEvent::RecoveryCodeUsed {
                            batch_id,
                            remaining: left - 1,
                            used_at: now,
                        }])
                    }
                    _ => Err(UserError::StaleRecoveryCodes),
                }
            }
            UserCommand::RegisterPasskey {
                passkey_id,
                recovery_codes,
                now,
            } => {
                self.registered()?;
                let mut events = vec![UserEvent::PasskeyRegistered {
                    passkey_id,
                    registered_at: now,
                }];
                if let (Some((batch_id, count)), None) = (recovery_codes, self.mfa.recovery_codes) {
                    events.push(UserEvent::RecoveryCodesGenerated {
                        batch_id,
                        count,
                        generated_at: now,
                    });
                }
                Ok(events)
            }
            UserCommand::RemovePasskey { passkey_id, now } => {
                self.registered()?;
                if !self.mfa.passkeys.contains(&passkey_id) {
                    return Err(UserError::UnknownPasskey);
                }
                Ok(vec![UserEvent::PasskeyRemoved {
                    passkey_id,
                    removed_at: now,
                }])
            }
            UserCommand::DeleteAccount { by, reason, now } => {
                self.registered()?;
                Ok(vec![UserEvent::AccountDeleted {
                    by,
                    reason,
                    deleted_at: now,
                }])
            }
        }
    }
}
