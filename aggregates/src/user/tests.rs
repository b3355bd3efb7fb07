//! Given/when/then tests of the `User` aggregate: every command and every error.

use super::*;
use crate::values::{Email, Username};
use chrono::TimeZone;
use cqrs_es::test::TestFramework;

type UserTest = TestFramework<User>;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
        .single()
        .unwrap_or_default()
}

fn ids() -> (Uuid, Uuid, Uuid) {
    (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3))
}

fn link(request: u128, ttl_hours: i64) -> LinkIssue {
    LinkIssue {
        request_id: Uuid::from_u128(request),
        base_url: "https://app.example/activate/".into(),
        ttl: Duration::hours(ttl_hours),
    }
}

fn registered() -> Vec<UserEvent> {
    let (user_id, credential_id, request_id) = ids();
    vec![
        UserEvent::Registered {
            user_id,
            username: "alice".into(),
            email: "alice@example.com".into(),
            credential_id,
            registered_at: t0(),
            email_key: "alice@example.com".into(),
            username_key: "alice".into(),
        },
        UserEvent::ActivationLinkIssued {
            request_id,
            email: "alice@example.com".into(),
            username: "alice".into(),
            base_url: "https://app.example/activate/".into(),
            expires_at: t0() + Duration::hours(24),
            issued_at: t0(),
        },
    ]
}

fn activated() -> Vec<UserEvent> {
    let mut events = registered();
    events.push(UserEvent::Activated {
        method: ActivationMethod::Link,
        activated_at: t0(),
    });
    events
}

fn reset_requested(request: u128) -> UserEvent {
    UserEvent::PasswordResetRequested {
        request_id: Uuid::from_u128(request),
        email: "alice@example.com".into(),
        username: "alice".into(),
        base_url: "https://app.example/activate/".into(),
        expires_at: t0() + Duration::minutes(30),
        requested_at: t0(),
    }
}

fn register_command() -> UserCommand {
    let (user_id, credential_id, _) = ids();
    UserCommand::Register {
        user_id,
        username: Username::parse("alice").unwrap_or_else(|_| unreachable!()),
        email: Email::parse("alice@example.com").unwrap_or_else(|_| unreachable!()),
        credential_id,
        activation: link(3, 24),
        now: t0(),
    }
}

#[test]
fn register_records_the_account_and_issues_an_activation_link() {
    UserTest::with(())
        .given_no_previous_events()
        .when(register_command())
        .then_expect_events(registered());
}

#[test]
fn register_twice_is_refused() {
    UserTest::with(())
        .given(registered())
        .when(register_command())
        .then_expect_error(UserError::AlreadyRegistered);
}

#[test]
fn a_new_activation_link_replaces_the_old_one() {
    UserTest::with(())
        .given(registered())
        .when(UserCommand::IssueActivationLink {
            link: link(4, 24),
            now: t0(),
        })
        .then_expect_events(vec![UserEvent::ActivationLinkIssued {
            request_id: Uuid::from_u128(4),
            email: "alice@example.com".into(),
            username: "alice".into(),
            base_url: "https://app.example/activate/".into(),
            expires_at: t0() + Duration::hours(24),
            issued_at: t0(),
        }]);
    UserTest::with(())
        .given(registered())
        .and(vec![UserEvent::ActivationLinkIssued {
            request_id: Uuid::from_u128(4),
            email: "alice@example.com".into(),
            username: "alice".into(),
            base_url: "https://app.example/activate/".into(),
            expires_at: t0() + Duration::hours(24),
            issued_at: t0(),
        }])
        .when(UserCommand::Activate {
            request_id: Uuid::from_u128(3),
            now: t0(),
        })
        .then_expect_error(UserError::InvalidActivationLink);
}

#[test]
fn activation_links_are_not_issued_to_active_or_unknown_accounts() {
    UserTest::with(())
        .given(activated())
        .when(UserCommand::IssueActivationLink {
            link: link(4, 24),
            now: t0(),
        })
        .then_expect_error(UserError::AlreadyActive);
    UserTest::with(())
        .given_no_previous_events()
        .when(UserCommand::IssueActivationLink {
            link: link(4, 24),
            now: t0(),
        })
        .then_expect_error(UserError::NotFound);
}

#[test]
fn the_latest_unexpired_link_activates() {
    UserTest::with(())
        .given(registered())
        .when(UserCommand::Activate {
            request_id: Uuid::from_u128(3),
            now: t0() + Duration::hours(23),
        })
        .then_expect_events(vec![UserEvent::Activated {
            method: ActivationMethod::Link,
            activated_at: t0() + Duration::hours(23),
        }]);
}

#[test]
fn an_expired_used_or_unknown_activation_link_is_refused() {
    for (given, request, at) in [
        (registered(), 3, t0() + Duration::hours(24)),
        (activated(), 3, t0()),
        (registered(), 99, t0()),
        (vec![], 3, t0()),
    ] {
        let expected = if given.is_empty() {
            UserError::NotFound
        } else {
            UserError::InvalidActivationLink
        };
        UserTest::with(())
            .given(given)
            .when(UserCommand::Activate {
                request_id: Uuid::from_u128(request),
                now: at,
            })
            .then_expect_error(expected);
    }
}

#[test]
fn duplicate_registration_notices_are_throttled() {
    let notice = UserEvent::DuplicateRegistrationAttempted {
        email: "alice@example.com".into(),
        username: "alice".into(),
        attempted_at: t0(),
    };
    UserTest::with(())
        .given(activated())
        .when(UserCommand::NoteDuplicateRegistration { now: t0() })
        .then_expect_events(vec![notice.clone()]);
    UserTest::with(())
        .given(activated())
        .and(vec![notice.clone()])
        .when(UserCommand::NoteDuplicateRegistration {
            now: t0() + Duration::minutes(9),
        })
        .then_expect_events(vec![]);
    UserTest::with(())
        .given(activated())
        .and(vec![notice])
        .when(UserCommand::NoteDuplicateRegistration {
            now: t0() + DUPLICATE_NOTICE_INTERVAL,
        })
        .then_expect_events(vec![UserEvent::DuplicateRegistrationAttempted {
            email: "alice@example.com".into(),
            username: "alice".into(),
            attempted_at: t0() + DUPLICATE_NOTICE_INTERVAL,
        }]);
}

#[test]
fn profile_updates_record_only_what_changes() {
    let first = ProfileChanges {
        country: Some("Nepal".into()),
        bio: Some("hi".into()),
        ..Default::default()
    };
    UserTest::with(())
        .given(activated())
        .when(UserCommand::UpdateProfile {
            changes: first.clone(),
            now: t0(),
        })
        .then_expect_events(vec![UserEvent::ProfileUpdated {
            changes: first.clone(),
            updated_at: t0(),
        }]);
    UserTest::with(())
        .given(activated())
        .and(vec![UserEvent::ProfileUpdated {
            changes: first,
            updated_at: t0(),
        }])
        .when(UserCommand::UpdateProfile {
            changes: ProfileChanges {
                country: Some("Nepal".into()),
                bio: Some("hello".into()),
                ..Default::default()
            },
            now: t0(),
        })
        .then_expect_events(vec![UserEvent::ProfileUpdated {
            changes: ProfileChanges {
                bio: Some("hello".into()),
                ..Default::default()
            },
            updated_at: t0(),
        }]);
}

#[test]
fn changing_the_password_names_the_new_credential_and_kills_pending_resets() {
    let changed = UserEvent::PasswordChanged {
        credential_id: Uuid::from_u128(9),
        email: "alice@example.com".into(),
        username: "alice".into(),
        changed_at: t0(),
    };
    UserTest::with(())
        .given(activated())
        .when(UserCommand::ChangePassword {
            credential_id: Uuid::from_u128(9),
            now: t0(),
        })
        .then_expect_events(vec![changed.clone()]);
    UserTest::with(())
        .given(activated())
        .and(vec![reset_requested(5), changed])
        .when(UserCommand::ResetPassword {
            request_id: Uuid::from_u128(5),
            credential_id: Uuid::from_u128(10),
            now: t0(),
        })
        .then_expect_error(UserError::InvalidResetLink);
}

#[test]
fn reset_requests_are_recorded_for_known_accounts_only() {
    UserTest::with(())
        .given(activated())
        .when(UserCommand::RequestPasswordReset {
            link: LinkIssue {
                ttl: Duration::minutes(30),
                ..link(5, 0)
            },
            now: t0(),
        })
        .then_expect_events(vec![reset_requested(5)]);
    UserTest::with(())
        .given_no_previous_events()
        .when(UserCommand::RequestPasswordReset {
            link: link(5, 1),
            now: t0(),
        })
        .then_expect_error(UserError::NotFound);
}

#[test]
fn a_valid_reset_link_sets_the_password_and_activates_an_inactive_account() {
    let reset = UserEvent::PasswordReset {
        request_id: Uuid::from_u128(5),
        credential_id: Uuid::from_u128(10),
        email: "alice@example.com".into(),
        username: "alice".into(),
        reset_at: t0(),
    };
    UserTest::with(())
        .given(activated())
        .and(vec![reset_requested(5)])
        .when(UserCommand::ResetPassword {
            request_id: Uuid::from_u128(5),
            credential_id: Uuid::from_u128(10),
            now: t0(),
        })
        .then_expect_events(vec![reset.clone()]);
    UserTest::with(())
        .given(registered())
        .and(vec![reset_requested(5)])
        .when(UserCommand::ResetPassword {
            request_id: Uuid::from_u128(5),
            credential_id: Uuid::from_u128(10),
            now: t0(),
        })
        .then_expect_events(vec![
            reset,
            UserEvent::Activated {
                method: ActivationMethod::PasswordReset,
                activated_at: t0(),
            },
        ]);
}

#[test]
fn a_used_superseded_expired_or_activation_link_does_not_reset() {
    let used = UserEvent::PasswordReset {
        request_id: Uuid::from_u128(5),
        credential_id: Uuid::from_u128(10),
        email: "alice@example.com".into(),
        username: "alice".into(),
        reset_at: t0(),
    };
    let cases = [
        (vec![reset_requested(5), used], 5, t0()),
        (vec![reset_requested(5), reset_requested(6)], 5, t0()),
        (vec![reset_requested(5)], 5, t0() + Duration::minutes(30)),
        // The activation link's request id (3) is no reset link.
        (vec![reset_requested(5)], 3, t0()),
    ];
    for (events, request, at) in cases {
        UserTest::with(())
            .given(registered())
            .and(events)
            .when(UserCommand::ResetPassword {
                request_id: Uuid::from_u128(request),
                credential_id: Uuid::from_u128(11),
                now: at,
            })
            .then_expect_error(UserError::InvalidResetLink);
    }
}

#[test]
fn state_tracks_credential_and_token_epoch() {
    let mut user = User::default();
    for event in activated() {
        user.apply(event);
    }
    assert!(user.is_active);
    assert_eq!(user.credential_id, Some(Uuid::from_u128(2)));
    user.apply(UserEvent::PasswordChanged {
        credential_id: Uuid::from_u128(9),
        email: "alice@example.com".into(),
        username: "alice".into(),
        changed_at: t0(),
    });
    assert_eq!(user.credential_id, Some(Uuid::from_u128(9)));
    assert_eq!(user.token_epoch, 1);
}

#[test]
fn mails_others_request_are_capped_per_hour_and_the_last_link_stays_valid() {
    // The registration's own link counts: four more fit in its hour, then requests are no-ops.
    let mut given = registered();
    for n in 0..(MAILS_PER_HOUR as u128 - 1) {
        given.push(UserEvent::ActivationLinkIssued {
            request_id: Uuid::from_u128(10 + n),
            email: "alice@example.com".into(),
            username: "alice".into(),
            base_url: "https://app.example/activate/".into(),
            expires_at: t0() + Duration::hours(24),
            issued_at: t0() + Duration::minutes(n as i64),
        });
    }
    let later = t0() + Duration::minutes(30);
    UserTest::with(())
        .given(given.clone())
        .when(UserCommand::IssueActivationLink {
            link: link(99, 24),
            now: later,
        })
        .then_expect_events(vec![]);
    UserTest::with(())
        .given(given.clone())
        .when(UserCommand::RequestPasswordReset {
            link: link(98, 1),
            now: later,
        })
        .then_expect_events(vec![]);
    UserTest::with(())
        .given(given.clone())
        .when(UserCommand::NoteDuplicateRegistration { now: later })
        .then_expect_events(vec![]);
    // The last link mailed is still the one that activates.
    UserTest::with(())
        .given(given.clone())
        .when(UserCommand::Activate {
            request_id: Uuid::from_u128(10 + MAILS_PER_HOUR as u128 - 2),
            now: later,
        })
        .then_expect_events(vec![UserEvent::Activated {
            method: ActivationMethod::Link,
            activated_at: later,
        }]);
    // An hour after the oldest of them, one more fits.
    let next_hour = t0() + Duration::minutes(61);
    UserTest::with(())
        .given(given)
        .when(UserCommand::RequestPasswordReset {
            link: link(97, 1),
            now: next_hour,
        })
        .then_expect_events(vec![UserEvent::PasswordResetRequested {
            request_id: Uuid::from_u128(97),
            email: "alice@example.com".into(),
            username: "alice".into(),
            base_url: "https://app.example/activate/".into(),
            expires_at: next_hour + Duration::hours(1),
            requested_at: next_hour,
        }]);
}

#[test]
fn a_refused_activation_link_records_why_once_a_minute() {
    let refuse = |request: u128, minutes: i64| UserCommand::RecordActivationRefusal {
        request_id: Uuid::from_u128(request),
        now: t0() + Duration::minutes(minutes),
    };
    let refused = |request: u128, reason, minutes: i64| UserEvent::ActivationRefused {
        request_id: Uuid::from_u128(request),
        reason,
        refused_at: t0() + Duration::minutes(minutes),
    };
    // The live link, past its 24 hours.
    UserTest::with(())
        .given(registered())
        .when(refuse(3, 25 * 60))
        .then_expect_events(vec![refused(3, ActivationRefusal::Expired, 25 * 60)]);
    // An older link than the live one.
    UserTest::with(())
        .given(registered())
        .when(refuse(9, 1))
        .then_expect_events(vec![refused(9, ActivationRefusal::Superseded, 1)]);
    // Any link once the account is active.
    UserTest::with(())
        .given(activated())
        .when(refuse(3, 1))
        .then_expect_events(vec![refused(3, ActivationRefusal::AlreadyActive, 1)]);
    // The live link within its time is no refusal: nothing to record.
    UserTest::with(())
        .given(registered())
        .when(refuse(3, 1))
        .then_expect_events(vec![]);
    // The same link clicked again within a minute is recorded once; a minute later again.
    let mut given = activated();
    given.push(refused(3, ActivationRefusal::AlreadyActive, 1));
    UserTest::with(())
        .given(given.clone())
        .when(refuse(3, 1))
        .then_expect_events(vec![]);
    UserTest::with(())
        .given(given)
        .when(refuse(3, 2))
        .then_expect_events(vec![refused(3, ActivationRefusal::AlreadyActive, 2)]);
}

#[test]
fn totp_is_enabled_only_for_the_pending_set_up_and_recovery_codes_are_counted() {
    let (enrolment, other, batch) = (
        Uuid::from_u128(41),
        Uuid::from_u128(42),
        Uuid::from_u128(43),
    );
    let mut history = activated();
    history.push(UserEvent::TotpSetupStarted {
        enrolment_id: enrolment,
        started_at: t0(),
    });
    // A set-up replaced by a newer one cannot be confirmed.
    UserTest::with(())
        .given(history.clone())
        .when(UserCommand::EnableTotp {
            enrolment_id: other,
            recovery_batch_id: batch,
            recovery_codes: 10,
            now: t0(),
        })
        .then_expect_error(UserError::NoPendingSetup);
    UserTest::with(())
        .given(history.clone())
        .when(UserCommand::EnableTotp {
            enrolment_id: enrolment,
            recovery_batch_id: batch,
            recovery_codes: 10,
            now: t0(),
        })
        .then_expect_events(vec![
            UserEvent::TotpEnabled {
                enrolment_id: enrolment,
                enabled_at: t0(),
            },
            UserEvent::RecoveryCodesGenerated {
                batch_id: batch,
                count: 10,
                generated_at: t0(),
            },
        ]);
    history.extend([
        UserEvent::TotpEnabled {
            enrolment_id: enrolment,
            enabled_at: t0(),
        },
        UserEvent::RecoveryCodesGenerated {
            batch_id: batch,
            count: 1,
            generated_at: t0(),
        },
    ]);
    // On: no new set-up; the last recovery code is used once, and a code of an older batch
    // never.
    UserTest::with(())
        .given(history.clone())
        .when(UserCommand::StartTotpSetup {
            enrolment_id: other,
            now: t0(),
        })
        .then_expect_error(UserError::SecondFactorEnabled);
    UserTest::with(())
        .given(history.clone())
        .when(UserCommand::UseRecoveryCode {
            batch_id: other,
            now: t0(),
        })
        .then_expect_error(UserError::StaleRecoveryCodes);
    history.push(UserEvent::RecoveryCodeUsed {
        batch_id: batch,
        remaining: 0,
        used_at: t0(),
    });
    UserTest::with(())
        .given(history.clone())
        .when(UserCommand::UseRecoveryCode {
            batch_id: batch,
            now: t0(),
        })
        .then_expect_error(UserError::StaleRecoveryCodes);
    // Off: everything goes, and turning off again is refused.
    history.push(UserEvent::TotpDisabled {
        reason: SecondFactorRemoval::Owner,
        disabled_at: t0(),
    });
    UserTest::with(())
        .given(history)
        .when(UserCommand::DisableTotp { now: t0() })
        .then_expect_error(UserError::SecondFactorNotEnabled);
}

#[test]
fn passkeys_bring_recovery_codes_once_and_the_last_one_removed_voids_them() {
    let (first, second, batch) = (
        Uuid::from_u128(51),
        Uuid::from_u128(52),
        Uuid::from_u128(53),
    );
    UserTest::with(())
        .given(activated())
        .when(UserCommand::RegisterPasskey {
            passkey_id: first,
            recovery_codes: Some((batch, 10)),
            now: t0(),
        })
        .then_expect_events(vec![
            UserEvent::PasskeyRegistered {
                passkey_id: first,
                registered_at: t0(),
            },
            UserEvent::RecoveryCodesGenerated {
                batch_id: batch,
                count: 10,
                generated_at: t0(),
            },
        ]);
    let mut history = activated();
    history.extend([
        UserEvent::PasskeyRegistered {
            passkey_id: first,
            registered_at: t0(),
        },
        UserEvent::RecoveryCodesGenerated {
            batch_id: batch,
            count: 10,
            generated_at: t0(),
        },
    ]);
    // Codes exist already: a second passkey brings none.
    UserTest::with(())
        .given(history.clone())
        .when(UserCommand::RegisterPasskey {
            passkey_id: second,
            recovery_codes: Some((Uuid::from_u128(54), 10)),
            now: t0(),
        })
        .then_expect_events(vec![UserEvent::PasskeyRegistered {
            passkey_id: second,
            registered_at: t0(),
        }]);
    UserTest::with(())
        .given(history.clone())
        .when(UserCommand::RemovePasskey {
            passkey_id: second,
            now: t0(),
        })
        .then_expect_error(UserError::UnknownPasskey);
    // The last factor removed: the recovery codes are void.
    history.push(UserEvent::PasskeyRemoved {
        passkey_id: first,
        removed_at: t0(),
    });
    UserTest::with(())
        .given(history)
        .when(UserCommand::UseRecoveryCode {
            batch_id: batch,
            now: t0(),
        })
        .then_expect_error(UserError::StaleRecoveryCodes);
}
