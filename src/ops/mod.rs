//! Operator commands: the CLI's subcommands and the data generator behind `accounts seed`.

pub mod cli;
pub mod seed;
