//! `selfheal chaos`: the binary's edge (argument parsing, the data directory, signals, the
//! progress lines); the work is in [`crate::fault`] and [`crate::schedule`].

use crate::fault::{self, Ended, FaultSpec, Placement, RunningFault};
use crate::schedule::Schedule;
use crate::worker::WorkerArgs;
use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use selfheal_lake::labels::{FaultKind, LabelWindow, write_label};
use selfheal_lake::{LakeStore, S3Options};
use selfheal_runtime::instance::{self, Instance, InstanceError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio::sync::watch;

/// `selfheal chaos ...`.
#[derive(Debug, Subcommand)]
pub enum ChaosCommand {
    /// Inject one fault on this machine, in a cgroup laid out as a pod of `chaos/Deployment/<name>`.
    Run(RunArgs),
    /// Run a series of faults from a TOML file, with quiet gaps between them.
    Schedule(ScheduleArgs),
    /// A fault's workload inside the pod's cgroup (started by `run`; not for direct use).
    #[command(hide = true)]
    Worker(WorkerArgs),
}

/// The fault kinds, as the command line names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// CPU saturation threads under the pod's CPU quota.
    Cpu,
    /// A memory leak growing to the pod's memory limit.
    Memory,
    /// A loopback TCP flood against a port (a sink in the pod, or --target).
    Traffic,
    /// A kill/restart loop of the pod's container.
    Restart,
}

impl From<KindArg> for FaultKind {
    fn from(k: KindArg) -> FaultKind {
        match k {
            KindArg::Cpu => FaultKind::Cpu,
            KindArg::Memory => FaultKind::Memory,
            KindArg::Traffic => FaultKind::Traffic,
            KindArg::Restart => FaultKind::Restart,
        }
    }
}

/// Where runs put their pod, their labels, and which instance they report to.
#[derive(Debug, Clone, Args)]
pub struct PlaceArgs {
    /// The local instance's data directory (default `$XDG_DATA_HOME/selfheal`, else
    /// `~/.local/share/selfheal`): pods go to `<dir>/pods`, labels to the lake `<dir>/lake`.
    #[arg(long, env = "SELFHEAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The lake the label windows go to: a directory or s3://bucket/prefix (default
    /// `<data dir>/lake`).
    #[arg(long)]
    pub lake: Option<String>,
    /// Also add each run's window to this label windows file (the JSON `model train --labels` reads).
    #[arg(long)]
    pub labels_out: Option<PathBuf>,
    /// The node name the agent uses (default `$NODE_NAME`, else the hostname, as the agent).
    #[arg(long)]
    pub node: Option<String>,
    /// The cgroup file system.
    #[arg(long, default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,
    /// The directory under each cgroup hierarchy that holds the chaos pods' `kubepods/`; the
    /// agent's `kubepods_paths` must list `<parent>/kubepods`.
    #[arg(long, default_value = "selfheal-chaos")]
    pub cgroup_parent: String,
    /// A cluster target: the namespace of the pod to pick (not supported yet).
    #[arg(long)]
    pub namespace: Option<String>,
    /// A cluster target: the label selector of the pod to pick (not supported yet).
    #[arg(long)]
    pub selector: Option<String>,
}

/// `selfheal chaos run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The fault.
    pub kind: KindArg,
    /// Seconds the fault runs (at most 3600).
    #[arg(long, default_value_t = fault::DEFAULT_DURATION.as_secs())]
    pub duration: u64,
    /// The pod's CPU quota in cores (at most this machine's CPUs); the CPU fault runs this
    /// many threads, rounded up.
    #[arg(long, default_value_t = 1.0)]
    pub cpu_cores: f64,
    /// The pod's memory limit in MiB (64 to half this machine's memory, at most 8192); the
    /// memory fault grows to it less 32 MiB.
    #[arg(long, default_value_t = 256)]
    pub memory_mib: u64,
    /// How fast the memory fault grows, MiB a second.
    #[arg(long, default_value_t = 32)]
    pub leak_mib_per_sec: u64,
    /// Seconds between kills of the restart fault's container.
    #[arg(long, default_value_t = 10)]
    pub restart_every_secs: u64,
    /// The traffic fault's target, an address in 127.0.0.0/8 with a port (default: a sink
    /// started in the pod).
    #[arg(long)]
    pub target: Option<SocketAddr>,
    /// The Deployment the pod is named after (default `chaos-<kind>`).
    #[arg(long)]
    pub name: Option<String>,
    /// Where the pod, the labels and the instance are.
    #[command(flatten)]
    pub place: PlaceArgs,
}

/// `selfheal chaos schedule`.
#[derive(Debug, Clone, Args)]
pub struct ScheduleArgs {
    /// The schedule (TOML: `quiet_secs` and `[[runs]]`; see the documentation).
    pub file: PathBuf,
    /// Where the pod, the labels and the instance are.
    #[command(flatten)]
    pub place: PlaceArgs,
}

/// Runs `selfheal chaos`.
pub fn main(cmd: ChaosCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ChaosCommand::Worker(args) => {
            crate::worker::main(args)?;
            Ok(ExitCode::SUCCESS)
        }
        ChaosCommand::Run(a) => {
            let mut spec = FaultSpec::new(a.kind.into());
            spec.duration = Duration::from_secs(a.duration);
            spec.cpu_cores = a.cpu_cores;
            spec.memory_bytes = a.memory_mib.saturating_mul(1 << 20);
            spec.leak_bytes_per_sec = a.leak_mib_per_sec.saturating_mul(1 << 20);
            spec.restart_every = Duration::from_secs(a.restart_every_secs);
            spec.target = a.target;
            if let Some(n) = a.name {
                spec.name = n;
            }
            let (cpus, mem) = fault::machine();
            spec.validate(cpus, mem).context("refused")?;
            let schedule = Schedule {
                quiet_before: Duration::ZERO,
                runs: vec![(spec, Duration::ZERO)],
            };
            execute(&a.place, schedule)
        }
        ChaosCommand::Schedule(a) => {
            let (cpus, mem) = fault::machine();
            let schedule = Schedule::load(&a.file, cpus, mem)?;
            execute(&a.place, schedule)
        }
    }
}

/// Where things go, resolved once.
struct Resolved {
    placement: Placement,
    lake: String,
    labels_out: Option<PathBuf>,
}

fn resolve(p: &PlaceArgs) -> anyhow::Result<Resolved> {
    if p.namespace.is_some() || p.selector.is_some() {
        bail!(
            "chaos against a cluster pod (--namespace, --selector) is not supported yet: \
             `selfheal chaos run` injects faults into pods it lays out on this machine"
        );
    }
    let data_dir = instance::data_dir(p.data_dir.as_deref()).context("the data directory")?;
    match Instance::find(&data_dir) {
        Ok(i) => report_instance(&i),
        Err(e @ (InstanceError::NotRunning { .. } | InstanceError::Stale { .. })) => {
            tracing::warn!(
                event = "ChaosNoInstance", data_dir = %data_dir.display(), reason = %e,
                "no local instance runs on this data directory (start one with `selfheal up`); \
                 labels and the pod file are written all the same"
            )
        }
        Err(e) => return Err(e).context("the local instance"),
    }
    let pods_dir = data_dir.join("pods");
    std::fs::create_dir_all(&pods_dir)
        .with_context(|| format!("cannot create {}", pods_dir.display()))?;
    let cp = &p.cgroup_parent;
    if cp.is_empty() || cp.contains('/') || cp.starts_with('.') {
        bail!("--cgroup-parent: {cp:?} must be one directory name");
    }
    Ok(Resolved {
        placement: Placement {
            cgroup_root: p.cgroup_root.clone(),
            cgroup_parent: cp.clone(),
            pods_dir,
            node: p.node.clone().unwrap_or_else(fault::node_name),
            exe: std::env::current_exe().context("cannot find the selfheal binary")?,
        },
        lake: p
            .lake
            .clone()
            .unwrap_or_else(|| data_dir.join("lake").to_string_lossy().into_owned()),
        labels_out: p.labels_out.clone(),
    })
}

fn report_instance(i: &Instance) {
    tracing::info!(
        event = "ChaosInstanceFound",
        api_url = %i.api_url,
        pid = i.pid,
        "reporting to the local instance"
    );
}

fn execute(place: &PlaceArgs, schedule: Schedule) -> anyhow::Result<ExitCode> {
    let r = resolve(place)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let (tx, mut stop) = watch::channel(false);
        // Before any process or cgroup exists: a signal from now on is a clean stop.
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("cannot handle SIGINT")?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot handle SIGTERM")?;
        tokio::spawn(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            tracing::info!(
                event = "ChaosStopRequested",
                "stopping: killing the fault and removing its pod"
            );
            let _ = tx.send(true);
        });
        let store = LakeStore::open(&r.lake, &S3Options::default())
            .await
            .with_context(|| format!("cannot open the lake at {}", r.lake))?;
        let total = schedule.runs.len();
        if !schedule.quiet_before.is_zero() {
            println!("quiet {}s", schedule.quiet_before.as_secs());
            if sleep_or_stop(schedule.quiet_before, &mut stop).await {
                return Ok(ExitCode::from(130));
            }
        }
        for (i, (spec, quiet_after)) in schedule.runs.into_iter().enumerate() {
            let run_id = fault::random_hex(8);
            let kind = spec.kind;
            let secs = spec.duration.as_secs();
            let running = RunningFault::start(spec, r.placement.clone(), run_id.clone())
                .with_context(|| format!("cannot start the {kind} fault"))?;
            println!(
                "[{}/{total}] {kind} against {} on {} for {secs}s (run {run_id}, pod {})",
                i + 1,
                running.pod().workload(),
                r.placement.node,
                running.pod().uid,
            );
            let (window, ended) = running.run(&mut stop).await?;
            record(&store, r.labels_out.as_deref(), &window).await?;
            println!(
                "[{}/{total}] {kind} {}: {} → {} ({:.1}s)",
                i + 1,
                ended.as_str(),
                fault::rfc3339(window.start_ms),
                fault::rfc3339(window.end_ms),
                (window.end_ms - window.start_ms) as f64 / 1000.0
            );
            if ended == Ended::Stopped {
                return Ok(ExitCode::from(130));
            }
            if !quiet_after.is_zero() && i + 1 < total {
                println!("quiet {}s", quiet_after.as_secs());
                if sleep_or_stop(quiet_after, &mut stop).await {
                    return Ok(ExitCode::from(130));
                }
            }
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

/// Sleeps `d`; true when a stop came first.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    let waited = tokio::time::timeout(d, stop.wait_for(|s| *s))
        .await
        .map(|r| r.is_ok());
    match waited {
        Ok(true) => true,
        // The sender is gone (only after it sent a stop).
        Ok(false) => *stop.borrow(),
        Err(_) => false,
    }
}

/// Writes the window to the lake and the labels file. A failure prints the window so the
/// ground truth is not lost.
async fn record(
    store: &LakeStore,
    labels_out: Option<&std::path::Path>,
    w: &LabelWindow,
) -> anyhow::Result<()> {
    let lake = write_label(store, w).await;
    let file = labels_out.map(|p| crate::label_file::append(p, std::slice::from_ref(w)));
    let failed = lake.is_err() || matches!(file, Some(Err(_)));
    if failed {
        eprintln!(
            "label window (not stored): {}",
            serde_json::to_string(w).unwrap_or_default()
        );
    }
    let key =
        lake.with_context(|| format!("cannot write the label window to {}", store.location()))?;
    tracing::info!(event = "ChaosLabelWritten", key = %key, lake = %store.location());
    if let Some(r) = file {
        r.context("cannot write --labels-out")?;
    }
    Ok(())
}
