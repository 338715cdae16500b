//! `selfheal aggregator ...`: the binary's edge for the aggregator (the one place here that uses
//! anyhow).

use crate::config::AggregatorConfig;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

/// `selfheal aggregator` arguments.
#[derive(Debug, Args)]
pub struct AggregatorArgs {
    /// TOML configuration file; `SELFHEAL_AGGREGATOR_*` environment variables override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Runs `selfheal aggregator`.
pub fn main(args: AggregatorArgs) -> anyhow::Result<ExitCode> {
    let settings = AggregatorConfig::load(args.config.as_deref())?.validate()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let (trigger, stop) = selfheal_runtime::shutdown::channel();
        trigger
            .on_signals()
            .context("cannot install the SIGTERM and SIGINT handlers")?;
        crate::run::run(settings, stop.receiver()).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
