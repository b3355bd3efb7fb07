/// Why the `User` aggregate refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("this account is already registered")]
    AlreadyRegistered,
    #[error("no such account")]
    NotFound,
    #[error("this account is already active")]
    AlreadyActive,
    #[error("activation link is invalid or expired")]
    InvalidActivationLink,
    #[error("reset link is invalid or expired")]
    InvalidResetLink,
    #[error("a second factor is enabled already")]
    SecondFactorEnabled,
    #[error("no second factor is enabled")]
    SecondFactorNotEnabled,
    #[error("no TOTP set-up is pending with this secret")]
    NoPendingSetup,
    #[error("this recovery code is not one of the current ones")]
    StaleRecoveryCodes,
    #[error("no such passkey")]
    UnknownPasskey,
    #[error("this account was deleted")]
    Deleted,
}
