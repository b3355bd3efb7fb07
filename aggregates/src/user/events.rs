use super::commands::ProfileChanges;
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How an account became active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationMethod {
    /// The activation link was used.
    Link,
    /// A password reset by e-mailed link proved ownership of the address.
    PasswordReset,
}

/// Why an activation link we mailed was refused (a link we did not mail records nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationRefusal {
    /// The link's time ran out.
    Expired,
    /// A newer link was mailed since.
    Superseded,
    /// The account is active already (this link or another was used).
    AlreadyActive,
}

/// Why TOTP stopped guarding an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecondFactorRemoval {
    /// The owner turned it off (with the password and a code).
    Owner,
}

/// Who deleted an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeletionRequester {
    /// The owner, with their password (`POST /accounts/api/delete/account/`).
    Owner,
    /// An operator (`accounts user delete`), e.g. for a support request.
    Operator,
}

/// Facts about one account. No event ever holds a password, a hash or a usable token: links are
/// identified by `request_id` and their tokens are an HMAC of it with a server key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UserEvent {
    Registered {
        user_id: Uuid,
        username: String,
        email: String,
        credential_id: Uuid,
        registered_at: DateTime<Utc>,
        /// The key the address is unique and looked up under (`values::email_key`); absent
        /// (empty) in events written before it existed.
        #[serde(default)]
        email_key: String,
        /// The key the username is unique under (`values::username_key`: its confusable skeleton).
        #[serde(default)]
        username_key: String,
    },
    ActivationLinkIssued {
        request_id: Uuid,
        email: String,
        username: String,
        base_url: String,
        expires_at: DateTime<Utc>,
        issued_at: DateTime<Utc>,
    },
    Activated {
        method: ActivationMethod,
        activated_at: DateTime<Utc>,
    },
    /// A link we mailed was used but refused; at most one per link and minute.
    ActivationRefused {
        request_id: Uuid,
        reason: ActivationRefusal,
        refused_at: DateTime<Utc>,
    },
    /// Someone tried to register the owner's address again; the owner is told by mail.
    DuplicateRegistrationAttempted {
        email: String,
        username: String,
        attempted_at: DateTime<Utc>,
    },
    ProfileUpdated {
        changes: ProfileChanges,
        updated_at: DateTime<Utc>,
    },
    PasswordChanged {
        credential_id: Uuid,
        email: String,
        username: String,
        changed_at: DateTime<Utc>,
    },
    PasswordResetRequested {
        request_id: Uuid,
        email: String,
        username: String,
        base_url: String,
        expires_at: DateTime<Utc>,
        requested_at: DateTime<Utc>,
    },
    PasswordReset {
        request_id: Uuid,
        credential_id: Uuid,
        email: String,
        username: String,
        reset_at: DateTime<Utc>,
    },
    /// TOTP enrolment began: a secret was made. The secret itself is never in an event: it is
    /// held encrypted beside the store under `enrolment_id` (see `mfa_totp`).
    TotpSetupStarted {
        enrolment_id: Uuid,
        started_at: DateTime<Utc>,
    },
    /// The enrolment's first code was right: logins now need a second factor.
    TotpEnabled {
        enrolment_id: Uuid,
        enabled_at: DateTime<Utc>,
    },
    /// TOTP no longer guards the account; its recovery codes are void too.
    TotpDisabled {
        reason: SecondFactorRemoval,
        disabled_at: DateTime<Utc>,
    },
    /// `count` new recovery codes replace any earlier ones. They are shown once and held only
    /// as keyed hashes beside the store under `batch_id` (see `mfa_recovery_code`).
    RecoveryCodesGenerated {
        batch_id: Uuid,
        count: u32,
        generated_at: DateTime<Utc>,
    },
    /// One recovery code of `batch_id` was used (for a login or to turn TOTP off).
    RecoveryCodeUsed {
        batch_id: Uuid,
        remaining: u32,
        used_at: DateTime<Utc>,
    },
    /// A passkey (WebAuthn credential) was registered: it logs in without a password and
    /// completes a password login as a second factor. Its public key is held beside the store
    /// under `passkey_id`.
    PasskeyRegistered {
        passkey_id: Uuid,
        registered_at: DateTime<Utc>,
    },
    /// The owner removed a passkey.
    PasskeyRemoved {
        passkey_id: Uuid,
        removed_at: DateTime<Utc>,
    },
    /// The account was deleted: its data key was destroyed with this event (so every sealed
    /// value of the person's events, everywhere, is unreadable), its address and username are
    /// free, its sessions are over. Workers delete what they copied of the person.
    AccountDeleted {
        by: DeletionRequester,
        /// Why, as an operator recorded it (never personal data: it stays readable).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        deleted_at: DateTime<Utc>,
    },
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        match self {
            UserEvent::Registered { .. } => "Registered",
            UserEvent::ActivationLinkIssued { .. } => "ActivationLinkIssued",
            UserEvent::Activated { .. } => "Activated",
            UserEvent::ActivationRefused { .. } => "ActivationRefused",
            UserEvent::DuplicateRegistrationAttempted { .. } => "DuplicateRegistrationAttempted",
            UserEvent::ProfileUpdated { .. } => "ProfileUpdated",
            UserEvent::PasswordChanged { .. } => "PasswordChanged",
            UserEvent::PasswordResetRequested { .. } => "PasswordResetRequested",
            UserEvent::PasswordReset { .. } => "PasswordReset",
            UserEvent::TotpSetupStarted { .. } => "TotpSetupStarted",
            UserEvent::TotpEnabled { .. } => "TotpEnabled",
            UserEvent::TotpDisabled { .. } => "TotpDisabled",
            UserEvent::RecoveryCodesGenerated { .. } => "RecoveryCodesGenerated",
            UserEvent::RecoveryCodeUsed { .. } => "RecoveryCodeUsed",
            UserEvent::PasskeyRegistered { .. } => "PasskeyRegistered",
            UserEvent::PasskeyRemoved { .. } => "PasskeyRemoved",
            UserEvent::AccountDeleted { .. } => "AccountDeleted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        crate::EVENT_VERSION.to_owned()
    }
}
