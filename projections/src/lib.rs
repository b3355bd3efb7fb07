//! Read models, derived from the event store and rebuildable from it.
//!
//! - [`reader`]: the checkpointed reader of ARCHITECTURE.md §6 (`StoredEvent`, checkpoints).
//! - [`runner`]: the [`Projector`] trait, catch-ups, and the loop that drives the projectors as
//!   one group.
//! - [`profile`]: the profile read model (also what token checks read).
//! - [`history`]: the user-history read model.
//! - [`activity`]: active users per day, week and month, for the analysts' views.
//! - [`pii`]: crypto-shredding: personal data in events sealed under a per-person data key.
//! - [`rebuild`]: rebuilding a read model without a window of emptiness; readers' status.
//!
//! A projector writes its rows and its checkpoint in one transaction, so it resumes exactly where
//! it stopped after a crash, and any process may run a catch-up at any time: the checkpoint row
//! lock serialises them.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod activity;
pub mod history;
pub mod pii;
pub mod profile;
pub mod reader;
pub mod rebuild;
pub mod runner;

pub use reader::{Checkpoint, StoredEvent};
pub use runner::{catch_up, run_group, CatchUpGate, Projector, Target};

/// Every projector this crate provides, in a stable order, opening personal data with `vault`.
pub fn all(vault: &pii::Vault) -> Vec<std::sync::Arc<dyn Projector>> {
    vec![
        std::sync::Arc::new(profile::ProfileProjector::live(vault.clone())),
        std::sync::Arc::new(history::HistoryProjector::live(vault.clone())),
        std::sync::Arc::new(activity::ActivityProjector::live(vault.clone())),
    ]
}

/// The live projector called `name` (`profile`, `history`, `activity`).
pub fn by_name(name: &str, vault: &pii::Vault) -> Option<std::sync::Arc<dyn Projector>> {
    all(vault).into_iter().find(|p| p.name() == name)
}
