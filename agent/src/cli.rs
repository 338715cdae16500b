//! `selfheal agent ...`: the binary's edge for the agent (the one place here that uses anyhow).

use crate::config::AgentConfig;
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// `selfheal agent` arguments.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentArgs {
    /// TOML configuration file; `SELFHEAL_AGENT_*` environment variables override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Run one collection cycle, print the normalized records and exit.
    #[arg(long)]
    pub once: bool,
    /// Output format for `--once`.
    #[arg(long, value_enum, default_value = "json", requires = "once")]
    pub format: OutputFormat,
    /// Agent maintenance commands.
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
}

/// Output formats for records printed to stdout.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    /// One JSON envelope per line.
    Json,
}

/// `selfheal agent <command>`.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Inspect or drain the on-disk spool.
    #[command(subcommand)]
    Spool(crate::spool::cli::SpoolCommand),
}

/// Runs `selfheal agent`.
pub fn main(args: AgentArgs) -> anyhow::Result<ExitCode> {
    if let Some(cmd) = args.command {
        return match cmd {
            AgentCommand::Spool(c) => crate::spool::cli::main(c),
        };
    }
    let _settings = AgentConfig::load(args.config.as_deref())?.validate()?;
    Ok(ExitCode::SUCCESS)
}
