//! accounts: an event-sourced account and authentication service.
//!
//! A map of this crate (the server; the write model is in `aggregates`, read models in
//! `projections`):
//!
//! - [`api`]: the HTTP surface: the router and endpoints of `API.md`, their typed bodies and
//!   errors (DRF-shaped), the OpenAPI document made from them, the hardening layers, the listeners.
//! - [`auth`]: password hashing and policy, the guessing bound, access tokens (EdDSA JWT), link and
//!   refresh tokens, key files.
//! - [`store`]: Postgres: the pool and migrations, the event repository, the command bus, the
//!   credential and identity tables, wake-ups for readers, time travel.
//! - [`workers`]: what runs beside the API: the relay to NATS JetStream and the mailer.
//! - [`ops`]: operator commands (the CLI) and the data generator.
//! - [`config`]: every setting; [`startup`]: builds the service and runs its roles;
//!   [`observe`], [`telemetry`]: metrics and logs.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
pub mod auth;
pub mod config;
pub mod observe;
pub mod ops;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod workers;

pub use config::Settings;
pub use startup::{Application, Roles};
