//! One chaos run on this machine: check the caps, lay the pod out (cgroup with its limits, Pod
//! JSON), start the workload inside, drive it (the restart loop's kills, a worker that died),
//! and stop cleanly at the deadline or when asked, whatever happened before.
//!
//! **Caps** ([`FaultSpec::validate`], each refusal naming its option): a duration of at most
//! [`MAX_DURATION`], a CPU share of at most the machine's CPUs, a memory ceiling between
//! [`MIN_MEMORY_BYTES`] and half the machine's memory (at most [`MAX_MEMORY_BYTES`]), and a
//! traffic target in 127.0.0.0/8 only. The CPU share and the memory ceiling are the pod
//! cgroup's limits for every kind, so the kernel enforces them whatever the workload does.
//!
//! **Clean stop**: [`RunningFault`] owns the workers, the pod file and the [`PodCgroup`];
//! [`RunningFault::stop`] (and its `Drop`, for every early return and panic) kills the workers,
//! waits for them, removes the pod file and then the cgroups (killing anything else found in
//! them). Workers also exit by themselves at the deadline and when their stdin closes, i.e.
//! when this process is gone, so even a SIGKILL of the run leaves no load behind (only the
//! empty cgroup and the pod file, which the next run's start does not reuse).

use crate::cgroup::{CPU_PERIOD_US, CgroupError, Limits, PodCgroup};
use crate::pod::ChaosPod;
use crate::worker::is_allowed_target;
use selfheal_lake::labels::{FaultKind, LabelWindow};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Default length of a run.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(60);
/// Longest run allowed.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Smallest memory ceiling: the worker itself needs a few MiB.
pub const MIN_MEMORY_BYTES: u64 = 64 << 20;
/// Largest memory ceiling, whatever the machine (also at most half its memory).
pub const MAX_MEMORY_BYTES: u64 = 8 << 30;
/// Room left under the ceiling for the worker's own code and stacks: the leak grows to the
/// ceiling minus this, so the fault is a leak at its bound, not an OOM kill.
pub const LEAK_HEADROOM_BYTES: u64 = 32 << 20;
/// How long after the run's deadline a worker ends by itself if nobody stopped it.
const WORKER_GRACE_MS: i64 = 5_000;
/// The container's name in the pod.
pub const CONTAINER: &str = "app";

/// A run option outside its caps.
#[derive(Debug, thiserror::Error)]
#[error("{option}: {reason}")]
pub struct CapError {
    /// The command-line option (or schedule field).
    pub option: &'static str,
    /// What is wrong.
    pub reason: String,
}

/// Why a run could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// An option outside its caps.
    #[error(transparent)]
    Cap(#[from] CapError),
    /// The pod's cgroups could not be made, limited or removed.
    #[error("pod cgroup")]
    Cgroup(#[from] CgroupError),
    /// The pod file could not be written.
    #[error("pod file")]
    PodFile(#[source] selfheal_runtime::atomic::AtomicWriteError),
    /// The pod file could not be removed.
    #[error("removing pod file {path}")]
    PodFileRemove {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A worker could not be started or told to begin.
    #[error("starting the {what} worker")]
    Spawn {
        /// Which worker.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The traffic sink did not say where it listens.
    #[error("the traffic sink did not start: {0}")]
    Sink(String),
}

/// What to inject, within the caps.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpec {
    /// The fault.
    pub kind: FaultKind,
    /// How long it runs.
    pub duration: Duration,
    /// CPU share of the pod, in cores (its CPU quota; the CPU fault runs this many threads,
    /// rounded up).
    pub cpu_cores: f64,
    /// The pod's memory limit, bytes.
    pub memory_bytes: u64,
    /// How fast the memory fault grows, bytes a second.
    pub leak_bytes_per_sec: u64,
    /// How often the restart fault kills its container.
    pub restart_every: Duration,
    /// The traffic fault's target; `None` starts a sink in the pod and floods it.
    pub target: Option<SocketAddr>,
    /// The Deployment the pod belongs to.
    pub name: String,
    /// The pod's namespace.
    pub namespace: String,
}

impl FaultSpec {
    /// The defaults for `kind`.
    pub fn new(kind: FaultKind) -> FaultSpec {
        FaultSpec {
            kind,
            duration: DEFAULT_DURATION,
            cpu_cores: 1.0,
            memory_bytes: 256 << 20,
            leak_bytes_per_sec: 32 << 20,
            restart_every: Duration::from_secs(10),
            target: None,
            name: format!("chaos-{kind}"),
            namespace: "chaos".into(),
        }
    }

    /// Checks every cap against this machine (`cpus`, `mem_total` bytes).
    pub fn validate(&self, cpus: usize, mem_total: u64) -> Result<(), CapError> {
        let bad = |option, reason: String| Err(CapError { option, reason });
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            return bad(
                "--duration",
                format!(
                    "must be 1 to {} seconds, got {}",
                    MAX_DURATION.as_secs(),
                    self.duration.as_secs_f64()
                ),
            );
        }
        if !(self.cpu_cores.is_finite() && self.cpu_cores >= 0.01 && self.cpu_cores <= cpus as f64)
        {
            return bad(
                "--cpu-cores",
                format!(
                    "must be 0.01 to {cpus} (this machine's CPUs), got {}",
                    self.cpu_cores
                ),
            );
        }
        let max_mem = (mem_total / 2).min(MAX_MEMORY_BYTES);
        if !(MIN_MEMORY_BYTES..=max_mem).contains(&self.memory_bytes) {
            return bad(
                "--memory-mib",
                format!(
                    "must be {} to {} MiB (half this machine's memory, at most {} MiB), got {}",
                    MIN_MEMORY_BYTES >> 20,
                    max_mem >> 20,
                    MAX_MEMORY_BYTES >> 20,
                    self.memory_bytes >> 20
                ),
            );
        }
        if self.leak_bytes_per_sec < (1 << 20) || self.leak_bytes_per_sec > (1 << 30) {
            return bad(
                "--leak-mib-per-sec",
                format!(
                    "must be 1 to 1024, got {}",
                    self.leak_bytes_per_sec as f64 / 1048576.0
                ),
            );
        }
        if self.restart_every < Duration::from_secs(1) || self.restart_every > MAX_DURATION {
            return bad(
                "--restart-every-secs",
                format!(
                    "must be 1 to {}, got {}",
                    MAX_DURATION.as_secs(),
                    self.restart_every.as_secs_f64()
                ),
            );
        }
        if let Some(t) = &self.target
            && !is_allowed_target(t)
        {
            return bad(
                "--target",
                format!("{t} is not in 127.0.0.0/8: the traffic fault floods loopback only"),
            );
        }
        if self.target.is_some() && self.kind != FaultKind::Traffic {
            return bad("--target", "only the traffic fault has a target".into());
        }
        // A DNS-1123 label, so the Deployment name is one Kubernetes would accept.
        let name_ok = |s: &str, max: usize| {
            !s.is_empty()
                && s.len() <= max
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !s.starts_with('-')
                && !s.ends_with('-')
        };
        if !name_ok(&self.name, 47) {
            return bad(
                "--name",
                format!(
                    "{:?} must be 1 to 47 lowercase letters, digits or '-'",
                    self.name
                ),
            );
        }
        if !name_ok(&self.namespace, 63) {
            return bad(
                "namespace",
                format!(
                    "{:?} must be 1 to 63 lowercase letters, digits or '-'",
                    self.namespace
                ),
            );
        }
        Ok(())
    }

    /// The pod's cgroup limits.
    pub fn limits(&self) -> Limits {
        Limits {
            cpu_quota_us: ((self.cpu_cores * CPU_PERIOD_US as f64).round() as u64).max(1000),
            memory_bytes: self.memory_bytes,
        }
    }
}

/// Where a run lays its pod out.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The cgroup file system root (`/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    /// The directory under each hierarchy holding `kubepods/` (the agent's `kubepods_paths`
    /// must list `<parent>/kubepods`).
    pub cgroup_parent: String,
    /// Where the Pod JSON goes (`<data dir>/pods`).
    pub pods_dir: PathBuf,
    /// The node name (as the agent's `node_name`).
    pub node: String,
    /// The `selfheal` binary that runs the workers.
    pub exe: PathBuf,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It ran its whole duration.
    Completed,
    /// Ctrl-C, SIGTERM or a schedule's stop.
    Stopped,
    /// A worker other than the restart loop's exited by itself (e.g. killed from outside).
    WorkerExited,
}

impl Ended {
    /// A word for the progress line.
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Completed => "completed",
            Ended::Stopped => "stopped",
            Ended::WorkerExited => "worker exited",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Load,
    Sink,
    Container,
}

#[derive(Debug)]
struct Worker {
    role: Role,
    child: Child,
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// RFC 3339 (seconds, UTC) of a unix millisecond time.
pub fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    // The OS generator does not fail on Linux once booted; a fixed id would only risk a
    // collision with another run, never a wrong label.
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn random_uid() -> String {
    let h = random_hex(16);
    // A version 4 UUID's shape, as the API server makes them.
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// A fault running on this machine. Dropping it stops it and removes everything it made.
#[derive(Debug)]
pub struct RunningFault {
    spec: FaultSpec,
    placement: Placement,
    run_id: String,
    pod: ChaosPod,
    pod_file: Option<PathBuf>,
    cgroup: Option<PodCgroup>,
    workers: Vec<Worker>,
    target: Option<SocketAddr>,
    start_ms: i64,
    deadline_ms: i64,
}

impl RunningFault {
    /// Lays the pod out and starts the fault. `spec` must have passed
    /// [`FaultSpec::validate`].
    pub fn start(
        spec: FaultSpec,
        placement: Placement,
        run_id: String,
    ) -> Result<RunningFault, FaultError> {
        let uid = random_uid();
        let hash = random_hex(5)[..9].to_owned();
        let pod = ChaosPod {
            uid: uid.clone(),
            namespace: spec.namespace.clone(),
            deployment: spec.name.clone(),
            name: format!("{}-{hash}-{}", spec.name, &random_hex(3)[..5]),
            hash,
            node: placement.node.clone(),
            container: CONTAINER.into(),
            run_id: run_id.clone(),
            started_at: rfc3339(now_ms()),
            restarts: 0,
            last_terminated: None,
        };
        let mut fault = RunningFault {
            deadline_ms: now_ms() + spec.duration.as_millis() as i64,
            spec,
            run_id,
            pod,
            pod_file: None,
            cgroup: None,
            workers: Vec::new(),
            target: None,
            start_ms: 0,
            placement,
        };
        // From here every early return drops `fault`, which removes what was made.
        fault.cgroup = Some(PodCgroup::create(
            &fault.placement.cgroup_root,
            &fault.placement.cgroup_parent,
            &uid,
            CONTAINER,
            fault.spec.limits(),
        )?);
        fault.pod_file = Some(
            fault
                .pod
                .write(&fault.placement.pods_dir)
                .map_err(FaultError::PodFile)?,
        );
        fault.start_workers()?;
        fault.start_ms = now_ms();
        fault.deadline_ms = fault.start_ms + fault.spec.duration.as_millis() as i64;
        tracing::info!(
            event = "ChaosRunStarted", run_id = %fault.run_id, kind = %fault.spec.kind,
            target = %fault.pod.workload(), pod_uid = %fault.pod.uid,
            cgroup = ?fault.cgroup.as_ref().map(|c| c.pods().to_vec())
        );
        Ok(fault)
    }

    /// The pod the fault runs in.
    pub fn pod(&self) -> &ChaosPod {
        &self.pod
    }

    /// The pod's cgroups.
    pub fn cgroup(&self) -> Option<&PodCgroup> {
        self.cgroup.as_ref()
    }

    /// The traffic fault's target, once started.
    pub fn target(&self) -> Option<SocketAddr> {
        self.target
    }

    fn start_workers(&mut self) -> Result<(), FaultError> {
        match self.spec.kind {
            FaultKind::Cpu => {
                let threads = self.spec.cpu_cores.ceil().max(1.0) as usize;
                self.spawn(
                    Role::Load,
                    "cpu",
                    &["cpu", "--threads", &threads.to_string()],
                )?;
            }
            FaultKind::Memory => {
                let bytes = self.spec.memory_bytes.saturating_sub(LEAK_HEADROOM_BYTES);
                self.spawn(
                    Role::Load,
                    "memory",
                    &[
                        "memory",
                        "--bytes",
                        &bytes.to_string(),
                        "--bytes-per-sec",
                        &self.spec.leak_bytes_per_sec.to_string(),
                    ],
                )?;
            }
            FaultKind::Traffic => {
                let target = match self.spec.target {
                    Some(t) => t,
                    None => {
                        self.spawn(Role::Sink, "sink", &["sink", "--listen", "127.0.0.1:0"])?;
                        self.sink_address()?
                    }
                };
                self.target = Some(target);
                self.spawn(
                    Role::Load,
                    "flood",
                    &["flood", "--target", &target.to_string()],
                )?;
            }
            FaultKind::Restart => {
                self.spawn(Role::Container, "container", &["idle"])?;
            }
        }
        Ok(())
    }

    /// Starts `selfheal chaos worker <args>`, moves it into the pod, and tells it to begin.
    fn spawn(&mut self, role: Role, what: &'static str, args: &[&str]) -> Result<(), FaultError> {
        let err = |source| FaultError::Spawn { what, source };
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(&self.placement.exe)
            .args(["chaos", "worker", "--deadline-ms"])
            // Past the run's own end, so the run, not the worker, ends a run on time.
            .arg((self.deadline_ms + WORKER_GRACE_MS).to_string())
            // A process group of its own: Ctrl-C in a terminal reaches the run, which stops
            // the workers itself, rather than killing them under its feet.
            .process_group(0)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(if role == Role::Sink {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .spawn()
            .map_err(err)?;
        let moved = self.cgroup.as_ref().map_or(Ok(()), |cg| cg.add(child.id()));
        if let Err(e) = moved {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e.into());
        }
        let go = child
            .stdin
            .as_mut()
            .map_or(Ok(()), |s| s.write_all(b"go\n").and_then(|()| s.flush()));
        self.workers.push(Worker { role, child });
        go.map_err(err)
    }

    fn sink_address(&mut self) -> Result<SocketAddr, FaultError> {
        let Some(out) = self
            .workers
            .iter_mut()
            .find(|w| w.role == Role::Sink)
            .and_then(|w| w.child.stdout.take())
        else {
            return Err(FaultError::Sink("no sink worker".into()));
        };
        let mut line = String::new();
        // The sink binds before anything else; a failure closes the pipe (an empty line).
        BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| FaultError::Sink(e.to_string()))?;
        line.trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| FaultError::Sink(format!("it said {:?}", line.trim())))
    }

    /// Runs until the deadline or until `stop` turns true, then stops and cleans up. Returns
    /// the run's ground-truth window.
    pub async fn run(
        mut self,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(LabelWindow, Ended), FaultError> {
        let mut next_kill = self.start_ms + self.spec.restart_every.as_millis() as i64;
        let ended = loop {
            if *stop.borrow() {
                break Ended::Stopped;
            }
            let now = now_ms();
            if now >= self.deadline_ms {
                break Ended::Completed;
            }
            if self.spec.kind == FaultKind::Restart && now >= next_kill {
                self.restart_container()?;
                next_kill = now + self.spec.restart_every.as_millis() as i64;
            }
            if let Some(role) = self.exited_worker() {
                if role == Role::Container {
                    // The container died by itself: the kubelet would restart it too.
                    self.restart_container()?;
                } else {
                    break Ended::WorkerExited;
                }
            }
            let wait = (self.deadline_ms - now).clamp(1, 100) as u64;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                _ = stop.changed() => {}
            }
        };
        let end_ms = now_ms();
        self.stop()?;
        let window = LabelWindow {
            run_id: self.run_id.clone(),
            kind: self.spec.kind,
            target: self.pod.workload(),
            node: self.placement.node.clone(),
            pod_uid: Some(self.pod.uid.clone()),
            start_ms: self.start_ms,
            end_ms,
        };
        tracing::info!(
            event = "ChaosRunEnded", run_id = %self.run_id, kind = %self.spec.kind,
            ended = ended.as_str(), restarts = self.pod.restarts,
            secs = (end_ms - self.start_ms) as f64 / 1000.0
        );
        Ok((window, ended))
    }

    fn exited_worker(&mut self) -> Option<Role> {
        self.workers
            .iter_mut()
            .find_map(|w| matches!(w.child.try_wait(), Ok(Some(_))).then_some(w.role))
    }

    /// Kills the container (SIGKILL, exit code 137 as the kubelet reports it), counts the
    /// restart in the pod file, and starts it again.
    fn restart_container(&mut self) -> Result<(), FaultError> {
        let mut code = 137;
        if let Some(i) = self.workers.iter().position(|w| w.role == Role::Container) {
            let mut w = self.workers.remove(i);
            let _ = w.child.kill();
            if let Ok(status) = w.child.wait() {
                use std::os::unix::process::ExitStatusExt;
                code = status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(9));
            }
        }
        self.pod.restarts += 1;
        self.pod.last_terminated = Some((code, "Error".into(), rfc3339(now_ms())));
        self.pod
            .write(&self.placement.pods_dir)
            .map_err(FaultError::PodFile)?;
        tracing::debug!(
            event = "ChaosContainerRestarted",
            restarts = self.pod.restarts
        );
        self.spawn(Role::Container, "container", &["idle"])
    }

    /// Kills every worker, removes the pod file and the cgroups. Idempotent; also run on drop.
    pub fn stop(&mut self) -> Result<(), FaultError> {
        for w in &mut self.workers {
            let _ = w.child.kill();
        }
        for mut w in self.workers.drain(..) {
            let _ = w.child.wait();
        }
        let mut first_err = None;
        if let Some(path) = self.pod_file.take() {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => first_err = Some(FaultError::PodFileRemove { path, source }),
            }
        }
        if let Some(mut cg) = self.cgroup.take()
            && let Err(e) = cg.remove()
            && first_err.is_none()
        {
            first_err = Some(e.into());
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for RunningFault {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!(
                event = "ChaosCleanupError", run_id = %self.run_id,
                error = %selfheal_runtime::chain::ErrorChain::new(&e),
                "a chaos run could not remove everything it made"
            );
        }
    }
}

/// This machine's CPUs and memory (bytes), for the caps.
pub fn machine() -> (usize, u64) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    (cpus, mem)
}

/// The node name as the agent finds it: `$NODE_NAME`, else the kernel's hostname.
pub fn node_name() -> String {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_name_their_option() {
        let (cpus, mem) = (2, 8 << 30);
        let opt = |f: &dyn Fn(&mut FaultSpec)| {
            let mut s = FaultSpec::new(FaultKind::Traffic);
            f(&mut s);
            s.validate(cpus, mem).err().map(|e| e.option)
        };
        assert_eq!(opt(&|_| {}), None);
        assert_eq!(
            opt(&|s| s.duration = Duration::from_secs(3601)),
            Some("--duration")
        );
        assert_eq!(opt(&|s| s.duration = Duration::ZERO), Some("--duration"));
        assert_eq!(opt(&|s| s.cpu_cores = 2.5), Some("--cpu-cores"));
        assert_eq!(opt(&|s| s.cpu_cores = f64::NAN), Some("--cpu-cores"));
        assert_eq!(opt(&|s| s.memory_bytes = 5 << 30), Some("--memory-mib"));
        assert_eq!(opt(&|s| s.memory_bytes = 1 << 20), Some("--memory-mib"));
        assert_eq!(
            opt(&|s| s.target = Some("10.0.0.1:80".parse().expect("addr"))),
            Some("--target")
        );
        assert_eq!(
            opt(&|s| s.target = Some("[::1]:80".parse().expect("addr"))),
            Some("--target")
        );
        assert_eq!(
            opt(&|s| s.target = Some("127.0.0.2:80".parse().expect("addr"))),
            None
        );
        assert_eq!(opt(&|s| s.name = "Bad_Name".into()), Some("--name"));
        assert_eq!(
            FaultSpec::new(FaultKind::Cpu).limits(),
            Limits {
                cpu_quota_us: 100_000,
                memory_bytes: 256 << 20
            }
        );
    }

    #[test]
    fn uids_and_times_have_their_shapes() {
        let u = random_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, random_uid());
        assert_eq!(rfc3339(1_764_000_000_500), "2025-11-24T16:00:00Z");
    }
}
