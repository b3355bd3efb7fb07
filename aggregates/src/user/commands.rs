use super::Profile;
use crate::values::{Email, Username};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A new e-mailed link: the caller makes the request id (the token is an HMAC over it).
#[derive(Debug, Clone, PartialEq)]
pub struct LinkIssue {
    pub request_id: Uuid,
    /// Already checked against the allow-list of link origins.
    pub base_url: String,
    pub ttl: Duration,
}

/// Commands carry the facts: ids, the clock, the credential already hashed and stored.
#[derive(Debug, Clone, PartialEq)]
pub enum UserCommand {
    Register {
        user_id: Uuid,
        username: Username,
        email: Email,
        credential_id: Uuid,
        activation: LinkIssue,
        now: DateTime<Utc>,
    },
    IssueActivationLink {
        link: LinkIssue,
        now: DateTime<Utc>,
    },
    /// The caller has checked the link's HMAC; the aggregate checks it is the latest, unexpired, unused.
    Activate {
        request_id: Uuid,
        now: DateTime<Utc>,
    },
    /// A genuine activation link was refused: record why.
    RecordActivationRefusal {
        request_id: Uuid,
        now: DateTime<Utc>,
    },
    NoteDuplicateRegistration {
        now: DateTime<Utc>,
    },
    UpdateProfile {
        changes: ProfileChanges,
        now: DateTime<Utc>,
    },
    /// The caller has verified the old password and stored the new hash under `credential_id`.
    ChangePassword {
        credential_id: Uuid,
        now: DateTime<Utc>,
    },
    RequestPasswordReset {
        link: LinkIssue,
        now: DateTime<Utc>,
    },
    ResetPassword {
        request_id: Uuid,
        credential_id: Uuid,
        now: DateTime<Utc>,
    },
    /// The caller stored a new, encrypted TOTP secret under `enrolment_id`.
    StartTotpSetup {
        enrolment_id: Uuid,
        now: DateTime<Utc>,
    },
    /// The caller checked a code of the pending secret and stored the hashes of the first
    /// recovery codes under `recovery_batch_id`.
    EnableTotp {
        enrolment_id: Uuid,
        recovery_batch_id: Uuid,
        recovery_codes: u32,
        now: DateTime<Utc>,
    },
    /// The caller checked the password and a code.
    DisableTotp {
        now: DateTime<Utc>,
    },
    /// The caller checked the password and stored the new codes' hashes under `batch_id`.
    RegenerateRecoveryCodes {
        batch_id: Uuid,
        count: u32,
        now: DateTime<Utc>,
    },
    /// The caller marked one code of `batch_id` used (single use is the store's: one update).
    UseRecoveryCode {
        batch_id: Uuid,
        now: DateTime<Utc>,
    },
    /// The caller verified the registration and stored the passkey under `passkey_id`; with
    /// `recovery_codes`, the hashes of first recovery codes it stored (for an account that has
    /// none yet).
    RegisterPasskey {
        passkey_id: Uuid,
        recovery_codes: Option<(Uuid, u32)>,
        now: DateTime<Utc>,
    },
    RemovePasskey {
        passkey_id: Uuid,
        now: DateTime<Utc>,
    },
    /// The caller checked the owner's password (or an operator asked).
    DeleteAccount {
        by: super::DeletionRequester,
        reason: Option<String>,
        now: DateTime<Utc>,
    },
}

/// The profile fields a request sets; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileChanges {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profession: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bio: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thoughts: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_img: Option<String>,
}

impl ProfileChanges {
    fn fields_mut(&mut self) -> [&mut Option<String>; 5] {
        [
            &mut self.country,
            &mut self.profession,
            &mut self.bio,
            &mut self.thoughts,
            &mut self.profile_img,
        ]
    }

    pub fn is_empty(&self) -> bool {
        self.clone().fields_mut().iter().all(|f| f.is_none())
    }

    /// Drops the fields that would not change `profile`.
    pub(crate) fn without_noops(mut self, profile: &Profile) -> Self {
        let current = [
            &profile.country,
            &profile.profession,
            &profile.bio,
            &profile.thoughts,
            &profile.profile_img,
        ];
        for (field, now) in self.fields_mut().into_iter().zip(current) {
            if field.as_deref() == Some(now.as_str()) {
                *field = None;
            }
        }
        self
    }

    pub fn apply_to(self, profile: &mut Profile) {
        let targets = [
            &mut profile.country,
            &mut profile.profession,
            &mut profile.bio,
            &mut profile.thoughts,
            &mut profile.profile_img,
        ];
        let values = [
            self.country,
            self.profession,
            self.bio,
            self.thoughts,
            self.profile_img,
        ];
        for (target, value) in targets.into_iter().zip(values) {
            if let Some(value) = value {
                *target = value;
            }
        }
    }
}
