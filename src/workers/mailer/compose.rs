//! The mails, one per event type that calls for one.

use super::IntegrationEvent;
use crate::auth::links::{link_url, Purpose};
use crate::auth::LinkSigner;
use anyhow::Context;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::Message;
use serde_json::Value;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq)]
pub struct Mail {
    pub kind: &'static str,
    pub to: String,
    pub name: String,
    pub subject: &'static str,
    pub body: String,
}

impl Mail {
    pub fn to_message(&self, from: &Mailbox) -> anyhow::Result<Message> {
        let to = Mailbox::new(
            Some(self.name.clone()),
            self.to.parse().context("recipient address")?,
        );
        Message::builder()
            .from(from.clone())
            .to(to)
            .subject(self.subject)
            .header(ContentType::TEXT_PLAIN)
            .body(self.body.clone())
            .context("cannot build the mail")
    }
}

fn text<'a>(data: &'a Value, field: &str) -> anyhow::Result<&'a str> {
    data.get(field)
        .and_then(Value::as_str)
        .with_context(|| format!("event has no {field}"))
}

/// Security notices whose events name no address: the mailer adds the owner's address and name
/// from the profile read model before composing (none when the account has no profile).
pub const NOTICES_WITHOUT_ADDRESS: [&str; 6] = [
    "TotpEnabled",
    "TotpDisabled",
    "RecoveryCodesGenerated",
    "RecoveryCodeUsed",
    "PasskeyRegistered",
    "PasskeyRemoved",
];

/// The kind of the mail confirming an account's deletion (its address is kept apart until it is
/// sent, and recorded nowhere after).
pub const FAREWELL: &str = "account_deleted";

/// The mail an event calls for, or `None`.
pub fn compose(event: &IntegrationEvent, links: &LinkSigner) -> anyhow::Result<Option<Mail>> {
    let data = &event.data;
    let addressless = NOTICES_WITHOUT_ADDRESS.contains(&event.event_type.as_str())
        || event.event_type == "AccountDeleted";
    if addressless && data.get("email").is_none() {
        return Ok(None);
    }
    let link = |purpose: Purpose| -> anyhow::Result<String> {
        let user_id: Uuid = event.aggregate_id.parse().context("aggregate id")?;
        let request_id: Uuid = text(data, "request_id")?.parse().context("request id")?;
        let token = links.link_token(purpose, user_id, request_id);
        Ok(link_url(text(data, "base_url")?, user_id, &token))
    };
    let (kind, subject, body) = match event.event_type.as_str() {
        "ActivationLinkIssued" => (
            "activation",
            "Activate your account",
            format!(
                "Hello {name},\n\nPlease activate your account by opening this link:\n\n{link}\n\n\
                 The link works once and expires in 24 hours unless your administrator set \
                 otherwise. If you did not register, ignore this mail.\n",
                name = text(data, "username")?,
                link = link(Purpose::Activation)?
            ),
        ),
        "DuplicateRegistrationAttempted" => (
            "duplicate_registration",
            "Someone tried to register with your address",
            format!(
                "Hello {name},\n\nSomebody tried to create a new account with this e-mail \
                 address, which already belongs to your account. No account was created.\n\n\
                 If it was you, log in instead, or reset your password if you forgot it.\n",
                name = text(data, "username")?
            ),
        ),
        "PasswordResetRequested" => (
            "password_reset",
            "Reset your password",
            format!(
                "Hello {name},\n\nTo set a new password, open this link:\n\n{link}\n\n\
                 The link works once and expires soon. If you did not ask for it, ignore this \
                 mail: your password stays as it is.\n",
                name = text(data, "username")?,
                link = link(Purpose::PasswordReset)?
            ),
        ),
        "PasswordChanged" => (
            "password_changed",
            "Your password was changed",
            format!(
                "Hello {name},\n\nThe password of your account was just changed, and every \
                 other session was signed out.\n\nIf this was not you, reset your password now.\n",
                name = text(data, "username")?
            ),
        ),
        "PasswordReset" => (
            "password_reset_done",
            "Your password was reset",
            format!(
                "Hello {name},\n\nThe password of your account was reset with an e-mailed link, \
                 and every session was signed out.\n\nIf this was not you, reset it again now.\n",
                name = text(data, "username")?
            ),
        ),
        "TotpEnabled" => (
            "totp_enabled",
            "Two-factor authentication is on",
            format!(
                "Hello {name},\n\nLogins to your account now need a code from your \
                 authenticator app, or one of your recovery codes, after the password.\n\n\
                 If this was not you, reset your password now: someone else may be able to log \
                 in to your account.\n",
                name = text(data, "username")?
            ),
        ),
        "TotpDisabled" => (
            "totp_disabled",
            "Two-factor authentication was turned off",
            format!(
                "Hello {name},\n\nTwo-factor authentication was turned off for your account: \
                 logins need only the password again, and your recovery codes no longer work.\n\n\
                 If this was not you, reset your password now and turn it on again.\n",
                name = text(data, "username")?
            ),
        ),
        "RecoveryCodeUsed" => (
            "recovery_code_used",
            "A recovery code was used",
            format!(
                "Hello {name},\n\nOne of your recovery codes was just used on your account; \
                 {left} are left. Each works once: create new ones when you run low.\n\n\
                 If this was not you, reset your password now and create new recovery codes.\n",
                name = text(data, "username")?,
                left = data.get("remaining").and_then(Value::as_u64).unwrap_or(0)
            ),
        ),
        "RecoveryCodesGenerated" => (
            "recovery_codes_generated",
            "New recovery codes for your account",
            format!(
                "Hello {name},\n\nNew recovery codes were created for your account; any \
                 earlier ones no longer work.\n\nIf this was not you, reset your password now \
                 and create new recovery codes.\n",
                name = text(data, "username")?
            ),
        ),
        "PasskeyRegistered" => (
            "passkey_registered",
            "A passkey was added to your account",
            format!(
                "Hello {name},\n\nA passkey was added to your account: it logs in without \
                 your password.\n\nIf this was not you, remove it (your account's security \
                 settings) and reset your password now.\n",
                name = text(data, "username")?
            ),
        ),
        "PasskeyRemoved" => (
            "passkey_removed",
            "A passkey was removed from your account",
            format!(
                "Hello {name},\n\nA passkey was removed from your account.\n\nIf this was \
                 not you, reset your password now.\n",
                name = text(data, "username")?
            ),
        ),
        "AccountDeleted" => (
            FAREWELL,
            "Your account was deleted",
            format!(
                "Hello {name},\n\nYour account was deleted, as asked. Your personal data can no \
                 longer be read anywhere in our systems, and this address is free to register \
                 again.\n\nIf you did not ask for this, contact support: the account cannot be \
                 restored, but we can look into how it happened.\n",
                name = text(data, "username")?
            ),
        ),
        _ => return Ok(None),
    };
    Ok(Some(Mail {
        kind,
        to: text(data, "email")?.to_owned(),
        name: text(data, "username")?.to_owned(),
        subject,
        body,
    }))
}
