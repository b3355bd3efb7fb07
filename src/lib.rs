//! accounts: an event-sourced account and authentication service.
//!
//! A map of this crate (the server; the write model is in `aggregates`, read models in
//! `projections`):
//!
//! - [`config`]: every setting, as flags and environment variables.
//! - [`startup`]: builds the service and runs its roles (API, relay, projectors, mailer).
//! - [`routes`]: the HTTP endpoints of `API.md`, one module per group.
//! - [`extract`], [`error`]: the request body and the error body in the DRF contract's shape.
//! - [`auth`]: password hashing and policy, access tokens (EdDSA JWT), link and refresh tokens.
//! - [`commands`]: executing commands on the event-sourced aggregates.
//! - [`store`]: the credential store and the identity table beside the event store.
//! - [`relay`]: publishes events to NATS JetStream.
//! - [`mailer`]: the worker that sends the e-mails events call for.
//! - [`wake`]: Postgres notifications that wake the readers.
//! - [`throttle`]: per-account login back-off; [`http`]: HTTP hardening layers.
//! - [`db`], [`secrets`], [`state`], [`openapi`]: plumbing.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod auth;
pub mod cli;
pub mod commands;
pub mod config;
pub mod db;
pub mod error;
pub mod event_store;
pub mod extract;
pub mod http;
pub mod mailer;
pub mod observe;
pub mod openapi;
pub mod relay;
pub mod routes;
pub mod secrets;
pub mod seed;
pub mod serve;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod throttle;
pub mod timetravel;
pub mod wake;

pub use config::Settings;
pub use startup::{Application, Roles};
