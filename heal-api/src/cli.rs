//! `selfheal heal-api [--config FILE]`: the binary's edge (the one module here using anyhow):
//! load and validate the configuration, set up the [`KubeExecutor`] on `[kube]`, start the
//! server with it, run until SIGTERM/SIGINT, then let requests in flight finish within
//! `shutdown_grace_secs` and make the audit log durable.

use crate::config::{HealApiConfig, Settings};
use crate::kube::KubeExecutor;
use anyhow::Context;
use clap::Args;
use selfheal_core::action::Executor;
use std::path::PathBuf;
use std::process::ExitCode;

/// `selfheal heal-api` arguments.
#[derive(Debug, Args)]
pub struct HealApiArgs {
    /// TOML configuration file; `SELFHEAL_HEAL_API_*` environment variables override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Loads and validates the configuration named by `args`.
pub fn settings(args: &HealApiArgs) -> anyhow::Result<Settings> {
    Ok(HealApiConfig::load(args.config.as_deref())?.validate()?)
}

/// `selfheal heal-api`: the server on the Kubernetes API `[kube]` names.
pub fn main(args: HealApiArgs) -> anyhow::Result<ExitCode> {
    let settings = settings(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let executor = KubeExecutor::connect(&settings.kube)
            .await
            .context("cannot set up the Kubernetes client ([kube])")?;
        run_until_signal(settings, executor).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Serves with `executor` until a signal, then drains within the grace period.
pub async fn run_until_signal<E: Executor>(settings: Settings, executor: E) -> anyhow::Result<()> {
    let (trigger, stop) = selfheal_runtime::shutdown::channel();
    trigger
        .on_signals()
        .context("cannot install the SIGTERM and SIGINT handlers")?;
    let running = crate::server::start(&settings, executor, stop.receiver()).await?;
    let mut rx = stop.receiver();
    let _ = rx.wait_for(|s| *s).await;
    tracing::info!("HealApiStopping");
    let drained = tokio::time::timeout(settings.shutdown_grace, async {
        let _ = running.server.await;
        let _ = running.keys.await;
    })
    .await;
    // Whatever was answered is on disk before the process ends, drained or not.
    if let Err(e) = running.audit.flush() {
        tracing::error!(error = %e, "HealApiAuditFlushError");
    }
    match drained {
        Ok(()) => {
            tracing::info!("HealApiStopped");
            Ok(())
        }
        Err(_) => anyhow::bail!(
            "shutdown grace of {:?} ran out with requests in flight",
            settings.shutdown_grace
        ),
    }
}
