//! `selfheal model ...`: the binary's edge for model work (may use anyhow).

use clap::Subcommand;
use std::process::ExitCode;

/// `selfheal model` subcommands.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {}

/// Runs a `selfheal model` subcommand.
pub fn main(cmd: ModelCommand) -> anyhow::Result<ExitCode> {
    match cmd {}
}
