//! `selfheal`: the one binary. It parses arguments, starts logging and hands over to a library's
//! `run`; everything else lives in the workspace crates.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "selfheal",
    version,
    about = "A Kubernetes fleet that notices its own failures and repairs them"
)]
struct Cli {
    /// Log format: `text` for people, `json` for log pipelines.
    #[arg(
        long,
        global = true,
        env = "SELFHEAL_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole loop on this machine: the agent, the aggregator (ingest, lake, incidents,
    /// dry-run healing) and the incident page, in one data directory.
    Up(selfheal_up::cli::UpArgs),
    /// Run the node agent: collect, normalize, score and forward.
    Agent(selfheal_agent::cli::AgentArgs),
    /// Read the agents' stream into the data lake (and, later, incidents and healing).
    Aggregator(selfheal_aggregator::cli::AggregatorArgs),
    /// List, show, acknowledge and resolve incidents (through an aggregator's API).
    Incidents(selfheal_aggregator::api::cli::IncidentsArgs),
    /// Add, list and expire silences (through an aggregator's API).
    Silences(selfheal_aggregator::api::cli::SilencesArgs),
    /// What healing would do about an incident (through an aggregator's API).
    Heal(selfheal_aggregator::heal::cli::HealArgs),
    /// Serve the signed heal API in the cluster: carry out the aggregator's actions.
    HealApi(selfheal_heal_api::cli::HealApiArgs),
    /// Train, score, evaluate and publish models.
    #[command(subcommand)]
    Model(selfheal_model_export::cli::ModelCommand),
    /// Inject real faults on this machine and record when they ran (label windows).
    #[command(subcommand)]
    Chaos(selfheal_chaos::cli::ChaosCommand),
}

fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter =
        EnvFilter::try_from_env("SELFHEAL_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    // Logs go to stderr: stdout belongs to commands that print records.
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `up` talks to a person on its terminal with its own progress lines: its logs default to
    // warnings and errors (`SELFHEAL_LOG=info` shows them all).
    let default_level = match cli.command {
        Command::Up(_) => "warn",
        _ => "info",
    };
    init_logging(cli.log_format, default_level);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            // Causes on one line, a cause already in its parent's message said once.
            eprintln!(
                "error: {}",
                selfheal_runtime::chain::ErrorChain::new(e.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Up(args) => selfheal_up::cli::main(args),
        Command::Agent(args) => selfheal_agent::cli::main(args),
        Command::Aggregator(args) => selfheal_aggregator::cli::main(args),
        Command::Model(cmd) => selfheal_model_export::cli::main(cmd),
        Command::Incidents(args) => selfheal_aggregator::api::cli::incidents_main(args),
        Command::Silences(args) => selfheal_aggregator::api::cli::silences_main(args),
        Command::Heal(args) => selfheal_aggregator::heal::cli::main(args),
        Command::HealApi(args) => selfheal_heal_api::cli::main(args),
        Command::Chaos(cmd) => selfheal_chaos::cli::main(cmd),
    }
}
