//! Given/when/then tests of the `Session` aggregate: rotation, grace retry, reuse, logout.

use super::*;
use chrono::TimeZone;
use cqrs_es::test::TestFramework;

type SessionTest = TestFramework<Session>;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
        .single()
        .unwrap_or_default()
}

fn user() -> Uuid {
    Uuid::from_u128(1)
}

fn started() -> SessionEvent {
    SessionEvent::Started {
        session_id: Uuid::from_u128(7),
        user_id: user(),
        method: LoginMethod::Password,
        second_factor: None,
        token_epoch: 0,
        expires_at: t0() + Duration::days(7),
        started_at: t0(),
    }
}

fn refreshed(generation: u32, at: DateTime<Utc>) -> SessionEvent {
    SessionEvent::Refreshed {
        user_id: user(),
        generation,
        expires_at: at + Duration::days(7),
        refreshed_at: at,
    }
}

fn refresh(generation: u32, epoch: u32, at: DateTime<Utc>) -> SessionCommand {
    SessionCommand::Refresh {
        generation,
        current_epoch: epoch,
        ttl: Duration::days(7),
        grace: Duration::seconds(30),
        now: at,
    }
}

#[test]
fn login_starts_a_session() {
    SessionTest::with(())
        .given_no_previous_events()
        .when(SessionCommand::Start {
            session_id: Uuid::from_u128(7),
            user_id: user(),
            token_epoch: 0,
            method: LoginMethod::Password,
            second_factor: None,
            ttl: Duration::days(7),
            now: t0(),
        })
        .then_expect_events(vec![started()]);
    SessionTest::with(())
        .given(vec![started()])
        .when(SessionCommand::Start {
            session_id: Uuid::from_u128(7),
            user_id: user(),
            token_epoch: 0,
            method: LoginMethod::Password,
            second_factor: None,
            ttl: Duration::days(7),
            now: t0(),
        })
        .then_expect_error(SessionError::AlreadyStarted);
}

#[test]
fn refreshing_the_live_token_rotates_it() {
    SessionTest::with(())
        .given(vec![started()])
        .when(refresh(0, 0, t0()))
        .then_expect_events(vec![refreshed(1, t0())]);
}

#[test]
fn an_immediate_retry_of_the_last_rotation_changes_nothing() {
    SessionTest::with(())
        .given(vec![started(), refreshed(1, t0())])
        .when(refresh(0, 0, t0() + Duration::seconds(30)))
        .then_expect_events(vec![]);
}

#[test]
fn reuse_of_a_spent_token_revokes_the_chain() {
    let late = t0() + Duration::seconds(31);
    SessionTest::with(())
        .given(vec![started(), refreshed(1, t0())])
        .when(refresh(0, 0, late))
        .then_expect_events(vec![SessionEvent::Revoked {
            user_id: user(),
            reason: RevocationReason::RefreshTokenReuse,
            revoked_at: late,
        }]);
    SessionTest::with(())
        .given(vec![started(), refreshed(1, t0()), refreshed(2, t0())])
        .when(refresh(0, 0, t0()))
        .then_expect_events(vec![SessionEvent::Revoked {
            user_id: user(),
            reason: RevocationReason::RefreshTokenReuse,
            revoked_at: t0(),
        }]);
}

#[test]
fn dead_sessions_refuse_every_refresh() {
    let revoked = SessionEvent::Revoked {
        user_id: user(),
        reason: RevocationReason::RefreshTokenReuse,
        revoked_at: t0(),
    };
    let logged_out = SessionEvent::LoggedOut {
        user_id: user(),
        logged_out_at: t0(),
    };
    let cases = [
        (vec![], refresh(0, 0, t0())),
        (vec![started(), revoked], refresh(1, 0, t0())),
        (vec![started(), logged_out], refresh(0, 0, t0())),
        (vec![started()], refresh(0, 0, t0() + Duration::days(7))),
        (vec![started()], refresh(0, 1, t0())),
        (vec![started()], refresh(5, 0, t0())),
    ];
    for (given, command) in cases {
        SessionTest::with(())
            .given(given)
            .when(command)
            .then_expect_error(SessionError::InvalidToken);
    }
}

#[test]
fn logout_ends_the_session_once() {
    SessionTest::with(())
        .given(vec![started()])
        .when(SessionCommand::Logout { now: t0() })
        .then_expect_events(vec![SessionEvent::LoggedOut {
            user_id: user(),
            logged_out_at: t0(),
        }]);
    SessionTest::with(())
        .given(vec![
            started(),
            SessionEvent::LoggedOut {
                user_id: user(),
                logged_out_at: t0(),
            },
        ])
        .when(SessionCommand::Logout { now: t0() })
        .then_expect_events(vec![]);
    SessionTest::with(())
        .given_no_previous_events()
        .when(SessionCommand::Logout { now: t0() })
        .then_expect_error(SessionError::InvalidToken);
}

#[test]
fn a_failed_login_is_recorded_in_a_stream_of_its_own() {
    SessionTest::with(())
        .given_no_previous_events()
        .when(SessionCommand::RecordFailedLogin {
            user_id: user(),
            now: t0(),
        })
        .then_expect_events(vec![SessionEvent::LoginFailed {
            user_id: user(),
            failed_at: t0(),
        }]);
    SessionTest::with(())
        .given(vec![started()])
        .when(SessionCommand::RecordFailedLogin {
            user_id: user(),
            now: t0(),
        })
        .then_expect_error(SessionError::AlreadyStarted);
    // A failed attempt is no session: nothing can refresh it.
    SessionTest::with(())
        .given(vec![SessionEvent::LoginFailed {
            user_id: user(),
            failed_at: t0(),
        }])
        .when(refresh(0, 0, t0()))
        .then_expect_error(SessionError::InvalidToken);
}

#[test]
fn a_login_refused_as_inactive_is_recorded_in_a_stream_of_its_own_and_is_no_session() {
    let refused = SessionEvent::LoginRefused {
        user_id: user(),
        reason: LoginRefusal::Inactive,
        refused_at: t0(),
    };
    SessionTest::with(())
        .given_no_previous_events()
        .when(SessionCommand::RecordRefusedLogin {
            user_id: user(),
            reason: LoginRefusal::Inactive,
            now: t0(),
        })
        .then_expect_events(vec![refused.clone()]);
    SessionTest::with(())
        .given(vec![started()])
        .when(SessionCommand::RecordRefusedLogin {
            user_id: user(),
            reason: LoginRefusal::Inactive,
            now: t0(),
        })
        .then_expect_error(SessionError::AlreadyStarted);
    SessionTest::with(())
        .given(vec![refused])
        .when(refresh(0, 0, t0()))
        .then_expect_error(SessionError::InvalidToken);
}

fn challenged() -> SessionEvent {
    SessionEvent::SecondFactorRequired {
        user_id: user(),
        token_epoch: 0,
        methods: vec![SecondFactor::Totp, SecondFactor::RecoveryCode],
        expires_at: t0() + Duration::minutes(5),
        challenged_at: t0(),
    }
}

fn failed() -> SessionEvent {
    SessionEvent::SecondFactorFailed {
        user_id: user(),
        method: SecondFactor::Totp,
        failed_at: t0(),
    }
}

fn start_with(factor: Option<SecondFactor>, at: DateTime<Utc>) -> SessionCommand {
    SessionCommand::Start {
        session_id: Uuid::from_u128(7),
        user_id: user(),
        token_epoch: 0,
        method: LoginMethod::Password,
        second_factor: factor,
        ttl: Duration::days(7),
        now: at,
    }
}

#[test]
fn a_challenge_completes_once_before_it_expires_and_five_wrong_codes_spend_it() {
    let at = t0() + Duration::minutes(1);
    let mut completed = started();
    if let SessionEvent::Started {
        second_factor,
        expires_at,
        started_at,
        ..
    } = &mut completed
    {
        *second_factor = Some(SecondFactor::Totp);
        *expires_at = at + Duration::days(7);
        *started_at = at;
    }
    SessionTest::with(())
        .given(vec![challenged(), failed()])
        .when(start_with(Some(SecondFactor::Totp), at))
        .then_expect_events(vec![completed.clone()]);
    // Used once: a second start is refused.
    SessionTest::with(())
        .given(vec![challenged(), completed])
        .when(start_with(Some(SecondFactor::RecoveryCode), at))
        .then_expect_error(SessionError::AlreadyStarted);
    // Expired.
    SessionTest::with(())
        .given(vec![challenged()])
        .when(start_with(
            Some(SecondFactor::Totp),
            t0() + Duration::minutes(5),
        ))
        .then_expect_error(SessionError::InvalidChallenge);
    // Spent by five wrong codes: neither a start nor a sixth failure is recorded.
    let five = std::iter::once(challenged())
        .chain(std::iter::repeat_n(
            failed(),
            MAX_SECOND_FACTOR_FAILURES as usize,
        ))
        .collect::<Vec<_>>();
    SessionTest::with(())
        .given(five.clone())
        .when(start_with(Some(SecondFactor::Totp), at))
        .then_expect_error(SessionError::InvalidChallenge);
    SessionTest::with(())
        .given(five)
        .when(SessionCommand::RecordSecondFactorFailure {
            method: SecondFactor::Totp,
            now: at,
        })
        .then_expect_error(SessionError::InvalidChallenge);
    // A start without a second factor cannot skip a challenge, and one with a second factor
    // needs a challenge.
    SessionTest::with(())
        .given(vec![challenged()])
        .when(start_with(None, at))
        .then_expect_error(SessionError::AlreadyStarted);
    SessionTest::with(())
        .given_no_previous_events()
        .when(start_with(Some(SecondFactor::Totp), at))
        .then_expect_error(SessionError::InvalidChallenge);
    // The password changed after the challenge: its epoch is not the user's any more.
    let mut later_epoch = start_with(Some(SecondFactor::Totp), at);
    if let SessionCommand::Start { token_epoch, .. } = &mut later_epoch {
        *token_epoch = 1;
    }
    SessionTest::with(())
        .given(vec![challenged()])
        .when(later_epoch)
        .then_expect_error(SessionError::InvalidChallenge);
}
