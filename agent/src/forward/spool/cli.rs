//! `selfheal agent spool ...`: operator commands on a spool directory (the binary's edge, so
//! anyhow is used here).
//!
//! `inspect` shows what is queued without changing anything; `drain` forwards everything queued
//! to Kinesis and exits (before decommissioning a node, or after an outage with the agent gone).

use super::{Spool, SpoolConfig, inspect};
use crate::forward::kinesis::{KinesisConfig, KinesisSink};
use crate::forward::{ForwardConfig, Forwarder};
use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// `selfheal agent spool <command>`.
#[derive(Debug, Subcommand)]
pub enum SpoolCommand {
    /// Show the queued records: segments, records by kind, bytes, oldest age.
    Inspect {
        /// Spool directory.
        #[arg(long, default_value = "/var/lib/selfheal/spool")]
        dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Forward every queued record to a Kinesis stream, then exit.
    Drain(DrainArgs),
}

/// `selfheal agent spool drain` arguments.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// Spool directory.
    #[arg(long, default_value = "/var/lib/selfheal/spool")]
    pub dir: PathBuf,
    /// Kinesis stream name.
    #[arg(long)]
    pub stream: String,
    /// Endpoint override (otherwise `AWS_ENDPOINT_URL` or the region's endpoint).
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// AWS region (otherwise the standard chain).
    #[arg(long)]
    pub region: Option<String>,
    /// Give up after this many seconds; what is left stays queued.
    #[arg(long, default_value_t = 300.0)]
    pub timeout_secs: f64,
}

/// Runs a `selfheal agent spool` command.
pub fn main(cmd: SpoolCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SpoolCommand::Inspect { dir, json } => {
            let ins = inspect(&dir).with_context(|| format!("inspecting {}", dir.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&ins)?);
                return Ok(ExitCode::SUCCESS);
            }
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            println!("spool {}", dir.display());
            println!("lane       segments  records       bytes  oldest  corrupt");
            for (name, l) in [
                ("anomaly", &ins.anomaly),
                ("sample", &ins.sample),
                ("quarantine", &ins.quarantine),
            ] {
                let age = l.oldest_ms.map_or_else(
                    || "-".to_owned(),
                    |ms| format!("{}s", (now_ms - ms).max(0) / 1000),
                );
                println!(
                    "{name:<10} {:>8} {:>8} {:>11} {age:>7} {:>8}",
                    l.segments, l.records, l.bytes, l.corrupt_regions
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SpoolCommand::Drain(args) => drain(args),
    }
}

fn drain(args: DrainArgs) -> anyhow::Result<ExitCode> {
    let timeout = Duration::try_from_secs_f64(args.timeout_secs)
        .context("--timeout-secs must be a non-negative number")?;
    let settings = SpoolConfig {
        dir: args.dir.clone(),
        ..SpoolConfig::default()
    }
    .validate()?;
    let forward = ForwardConfig {
        linger_ms: 0,
        ..ForwardConfig::default()
    }
    .validate()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let spool = Arc::new(Spool::open(settings)?);
        let queued = spool.depth();
        let sink = KinesisSink::from_config(&KinesisConfig {
            stream_name: args.stream,
            region: args.region,
            endpoint_url: args.endpoint_url,
            connect_timeout_ms: 2000,
        })
        .await?;
        let forwarder = Forwarder::new(Arc::clone(&spool), sink, forward);
        let stats = forwarder.stats();
        // Shutdown from the start: the forwarder drains until empty or the timeout.
        let (_tx, rx) = tokio::sync::watch::channel(true);
        forwarder.run(rx, timeout).await;
        let left = spool.depth();
        eprintln!(
            "drained {} of {queued} records; {left} left",
            stats.records_sent.load(Ordering::Relaxed)
        );
        Ok(if left == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}
