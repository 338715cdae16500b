//! The fault's cgroups, laid out as the kubelet's cgroupfs driver lays out a Burstable pod:
//! `<root>/<hierarchy>/<parent>/kubepods/burstable/pod<uid>/<container>`, so the agent (with
//! `<parent>/kubepods` among its `kubepods_paths`) finds the pod and reads it as it reads a
//! kubelet's. On cgroup v1 the tree is made in the `cpu`, `cpuacct` and `memory` hierarchies
//! (once when `cpu,cpuacct` are co-mounted); on v2 (`cgroup.controllers` at the root) in the one
//! tree, with the `cpu` and `memory` controllers enabled down to the pod.
//!
//! The limits are the run's safety caps and sit on the pod-level cgroup, as a pod's limits do:
//! a CPU quota (`cpu.cfs_quota_us` over a 100 ms `cpu.cfs_period_us`, or `cpu.max`) and a
//! memory limit (`memory.limit_in_bytes`, or `memory.max`), so whatever runs inside cannot take
//! more of the machine than the run was allowed even if the workload misbehaves.
//!
//! [`PodCgroup::remove`] (also run on drop) kills every process left in the cgroups, waits for
//! them to leave, and removes the directories leaf first, up to and including the parent when
//! nothing else is in it: `rmdir` is the only way to delete a cgroup, and it fails while a
//! process or a child cgroup remains, so another run's pod under the same parent is never
//! disturbed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The CFS period the CPU quota is expressed in (the kernel's and the kubelet's default).
pub const CPU_PERIOD_US: u64 = 100_000;
/// The cgroup v1 controllers a pod tree is made in.
const V1_HIERARCHIES: [&str; 3] = ["cpu", "cpuacct", "memory"];

/// A cgroup operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A hierarchy the pod needs is not mounted.
    #[error("{0} is not mounted (need cgroup v2, or the v1 cpu, cpuacct and memory hierarchies)")]
    NotMounted(PathBuf),
    /// A cgroup file or directory could not be made, written or read.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Processes were still in the cgroup after they were killed.
    #[error("{pids} processes still in {path} after SIGKILL")]
    Busy {
        /// The cgroup.
        path: PathBuf,
        /// How many were left.
        pids: usize,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The pod's limits: the run's caps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// CPU time per [`CPU_PERIOD_US`], in microseconds (`cores × 100000`).
    pub cpu_quota_us: u64,
    /// Memory limit in bytes.
    pub memory_bytes: u64,
}

/// Which cgroup version the pod was made in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// v1: one tree per controller.
    V1,
    /// v2: the unified tree.
    V2,
}

/// A pod's cgroups on this machine; removed on drop.
#[derive(Debug)]
pub struct PodCgroup {
    version: Version,
    /// `<hierarchy>/<parent>` per hierarchy: the top this pod may remove.
    tops: Vec<PathBuf>,
    /// The pod-level cgroup per hierarchy.
    pods: Vec<PathBuf>,
    /// The container cgroup per hierarchy, where processes go.
    containers: Vec<PathBuf>,
    removed: bool,
}

impl PodCgroup {
    /// Makes the pod `pod<uid>` with one container under `<root>/.../<parent>/kubepods/burstable`
    /// and sets its limits. On error, whatever was made is removed.
    pub fn create(
        root: &Path,
        parent: &str,
        uid: &str,
        container: &str,
        limits: Limits,
    ) -> Result<PodCgroup, CgroupError> {
        let version = if root.join("cgroup.controllers").is_file() {
            Version::V2
        } else {
            Version::V1
        };
        let hierarchies: Vec<PathBuf> = match version {
            Version::V2 => vec![root.to_owned()],
            Version::V1 => {
                let mut hs: Vec<PathBuf> = Vec::new();
                for h in V1_HIERARCHIES.map(|c| root.join(c)) {
                    if !h.is_dir() {
                        return Err(CgroupError::NotMounted(h));
                    }
                    // `cpu` and `cpuacct` are often links to one `cpu,cpuacct` hierarchy.
                    let real = std::fs::canonicalize(&h).map_err(io("resolving", &h))?;
                    if !hs.contains(&real) {
                        hs.push(real);
                    }
                }
                hs
            }
        };
        let mut cg = PodCgroup {
            version,
            tops: Vec::new(),
            pods: Vec::new(),
            containers: Vec::new(),
            removed: false,
        };
        let rel_pod = Path::new(parent)
            .join("kubepods/burstable")
            .join(format!("pod{uid}"));
        for h in &hierarchies {
            let pod = h.join(&rel_pod);
            let c = pod.join(container);
            cg.tops.push(h.join(parent));
            cg.pods.push(pod.clone());
            cg.containers.push(c.clone());
            if version == Version::V2 {
                // Controllers must be enabled in every ancestor's subtree_control before the
                // pod's own cpu.max and memory.max exist.
                let mut dir = h.clone();
                enable_controllers(&dir)?;
                for part in rel_pod.components() {
                    dir.push(part);
                    std::fs::create_dir_all(&dir).map_err(io("creating cgroup", &dir))?;
                    if dir != pod {
                        enable_controllers(&dir)?;
                    }
                }
            }
            std::fs::create_dir_all(&c).map_err(io("creating cgroup", &c))?;
        }
        cg.set_limits(limits)?;
        Ok(cg)
    }

    fn set_limits(&self, limits: Limits) -> Result<(), CgroupError> {
        let write = |path: PathBuf, value: String| {
            std::fs::write(&path, value).map_err(io("writing", &path))
        };
        for pod in &self.pods {
            match self.version {
                Version::V2 => {
                    write(
                        pod.join("cpu.max"),
                        format!("{} {CPU_PERIOD_US}", limits.cpu_quota_us),
                    )?;
                    write(pod.join("memory.max"), limits.memory_bytes.to_string())?;
                }
                Version::V1 => {
                    if pod.join("cpu.cfs_quota_us").exists() {
                        write(pod.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
                        write(
                            pod.join("cpu.cfs_quota_us"),
                            limits.cpu_quota_us.to_string(),
                        )?;
                    }
                    if pod.join("memory.limit_in_bytes").exists() {
                        write(
                            pod.join("memory.limit_in_bytes"),
                            limits.memory_bytes.to_string(),
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The cgroup version in use.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The container cgroup directories (one per hierarchy).
    pub fn containers(&self) -> &[PathBuf] {
        &self.containers
    }

    /// The pod-level cgroup directories (one per hierarchy).
    pub fn pods(&self) -> &[PathBuf] {
        &self.pods
    }

    /// Moves process `pid` (all its threads) into the container in every hierarchy.
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        for c in &self.containers {
            let procs = c.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string()).map_err(io("writing", &procs))?;
        }
        Ok(())
    }

    /// Processes in the container, over every hierarchy.
    pub fn pids(&self) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .containers
            .iter()
            .filter_map(|c| std::fs::read_to_string(c.join("cgroup.procs")).ok())
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| l.trim().parse::<u32>().ok())
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Kills every process in the pod and removes its cgroups, leaf first, up to the parent if
    /// it is empty. Idempotent.
    pub fn remove(&mut self) -> Result<(), CgroupError> {
        if self.removed {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for pid in &pids {
                if let Some(p) = rustix::process::Pid::from_raw(*pid as i32) {
                    // ESRCH: it exited between the read and the kill.
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::Busy {
                    path: self.containers[0].clone(),
                    pids: pids.len(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for ((c, pod), top) in self.containers.iter().zip(&self.pods).zip(&self.tops) {
            remove_dir(c)?;
            remove_dir(pod)?;
            // burstable, kubepods, the parent: shared with other runs, so only when empty.
            let mut dir = pod.clone();
            while dir.pop() && dir.starts_with(top) {
                if std::fs::remove_dir(&dir).is_err() {
                    break;
                }
            }
        }
        self.removed = true;
        Ok(())
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::error!(
                event = "ChaosCgroupRemoveError",
                error = %selfheal_runtime::chain::ErrorChain::new(&e),
                "a chaos cgroup could not be removed"
            );
        }
    }
}

fn remove_dir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CgroupError::Io {
            op: "removing cgroup",
            path: dir.to_owned(),
            source,
        }),
    }
}

fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.subtree_control");
    let now = std::fs::read_to_string(&path).map_err(io("reading", &path))?;
    let has = |c: &str| now.split_whitespace().any(|x| x == c);
    if has("cpu") && has("memory") {
        return Ok(());
    }
    std::fs::write(&path, "+cpu +memory").map_err(io("writing", &path))
}
