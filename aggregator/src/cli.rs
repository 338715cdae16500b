//! `selfheal aggregator ...`: the binary's edge for the aggregator (the one place here that uses
//! anyhow).

use crate::config::AggregatorConfig;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::sync::watch;

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
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("ShutdownRequested");
            let _ = tx.send(true);
        });
        crate::run::run(settings, rx).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or SIGINT.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!("SignalHandlerError");
            std::future::pending::<()>().await;
        }
    }
}
