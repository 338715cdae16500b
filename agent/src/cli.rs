//! `selfheal agent ...`: the binary's edge for the agent (the one place here that uses anyhow).

use crate::collect::CycleErrors;
use crate::collect::Pipeline;
use crate::collect::pods::{DirWatcher, PodWatcher, SharedPodDirectory};
use crate::config::AgentConfig;
use crate::run::{Output, run};
use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `selfheal agent` arguments.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentArgs {
    /// TOML configuration file; `SELFHEAL_AGENT_*` environment variables override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Run one collection cycle (two readings, `--once-gap-ms` apart, since rates need two),
    /// print the normalized records and exit.
    #[arg(long)]
    pub once: bool,
    /// Time between the two readings of `--once`.
    #[arg(long, default_value_t = 1000, requires = "once")]
    pub once_gap_ms: u64,
    /// Output format for printed records.
    #[arg(long, value_enum, default_value = "json")]
    pub format: OutputFormat,
    /// While running, also print every cycle's records to stdout.
    #[arg(long, conflicts_with = "once")]
    pub print: bool,
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
    Spool(crate::forward::spool::cli::SpoolCommand),
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // One thread: the agent's work is a few milliseconds per interval, and every extra worker
    // thread costs memory on every node.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs `selfheal agent`.
pub fn main(args: AgentArgs) -> anyhow::Result<ExitCode> {
    if let Some(cmd) = args.command {
        return match cmd {
            AgentCommand::Spool(c) => crate::forward::spool::cli::main(c),
        };
    }
    let settings = AgentConfig::load(args.config.as_deref())?.validate()?;
    if args.once {
        let mut pipeline = Pipeline::new(&settings);
        // Inside the runtime: a client may spawn its connection tasks when it is built.
        let pods = if let Some(mut d) = DirWatcher::new(&settings.pods) {
            let n = d.sync_once().context("cannot read the pod directory")?;
            tracing::info!(pods = n, "PodsListed");
            d.directory()
        } else {
            runtime()?.block_on(async {
                anyhow::Ok(
                    match PodWatcher::new(&settings.pods, &settings.node_name)? {
                        Some(w) => {
                            let n = w
                                .sync_once()
                                .await
                                .context("cannot list the pods on this node")?;
                            tracing::info!(pods = n, "PodsListed");
                            w.directory()
                        }
                        None => SharedPodDirectory::default(),
                    },
                )
            })?
        };
        let mut errs = CycleErrors::default();
        let _ = pipeline.cycle(&pods.read(), &mut errs);
        std::thread::sleep(Duration::from_millis(args.once_gap_ms.max(1)));
        let records = pipeline.cycle(&pods.read(), &mut errs);
        for e in &errs.errors {
            tracing::warn!(error = %e, "CollectError");
        }
        let mut out = Output::JsonLines(Box::new(std::io::BufWriter::new(std::io::stdout())));
        out.write(records, Vec::new())?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.print && settings.forward.sink == crate::forward::SinkKind::Stdout {
        anyhow::bail!(
            "--print and forward.sink = \"stdout\" would both write to stdout: choose one"
        );
    }
    let output = if args.print {
        Output::JsonLines(Box::new(std::io::stdout()))
    } else {
        Output::Discard
    };
    let rt = runtime()?;
    rt.block_on(async move {
        let (trigger, stop) = selfheal_runtime::shutdown::channel();
        trigger
            .on_signals()
            .context("cannot install the SIGTERM and SIGINT handlers")?;
        run(settings, output, stop.receiver()).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
