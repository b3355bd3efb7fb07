//! API tests: the real service (all roles in-process) against the real Postgres and NATS, with
//! mails captured from a real SMTP conversation. One binary; one module per concern.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;

mod analytics;
mod attacks;
mod bad_input;
mod concurrency;
mod contract;
mod erasure;
mod events;
mod export;
mod flow;
mod history;
mod jwt_attacks;
mod links;
mod login;
mod meta;
mod mfa;
mod operations;
mod passkeys;
mod processes;
mod registration;
mod security;
mod sessions;
mod transport;
