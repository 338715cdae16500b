//! The collect stage: one reading of the node and of every pod on it.
//!
//! [`Collector::collect`] asks [`crate::procfs`] for node counters, [`crate::cgroup`] for each
//! pod cgroup, and each pod's network namespace (through one of its processes) for its traffic.
//! The result is a [`Snapshot`] of raw counters; [`crate::normalize`] turns two of them into
//! records. Errors are returned with the snapshot, never raised: one bad file costs one metric.

use crate::cgroup::{CgroupError, CgroupReader, PodCache, PodCgroup, PodCgroupSample};
use crate::config::Settings;
use crate::procfs::{CollectError, NetCounters, NodeCollector, NodeSnapshot, read_pid_net_dev};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One pod's raw reading.
#[derive(Debug, Clone)]
pub struct PodSnapshot {
    /// Where the pod's cgroup is and who it is.
    pub cgroup: PodCgroup,
    /// Its cgroup counters.
    pub sample: PodCgroupSample,
    /// Its network interfaces, when it has its own network namespace.
    pub net: Option<Vec<(String, NetCounters)>>,
}

/// One reading of everything.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Wall-clock time of the reading, unix milliseconds (for records).
    pub ts_ms: i64,
    /// Monotonic time of the reading, seconds (for rates; immune to clock steps).
    pub mono_secs: f64,
    /// Node counters.
    pub node: NodeSnapshot,
    /// Pods found this cycle.
    pub pods: Vec<PodSnapshot>,
}

/// What went wrong in a cycle, for logging and counting.
#[derive(Debug, Default)]
pub struct CycleErrors {
    /// Files that failed.
    pub errors: Vec<CollectError>,
    /// Pods whose cgroup disappeared between discovery and reading (not an error).
    pub pods_vanished: u64,
}

/// Reads the node and its pods.
#[derive(Debug)]
pub struct Collector {
    node: NodeCollector,
    cgroups: Option<CgroupReader>,
    proc_root: PathBuf,
    host_netns: Option<PathBuf>,
    /// Per-pod state kept between cycles (limits, a process); only pods of the last cycle.
    cache: HashMap<String, PodCache>,
    buf: Vec<u8>,
}

impl Collector {
    /// A collector for validated settings. A host without a usable cgroup hierarchy still gets
    /// node metrics; the error is returned alongside for the caller to report once.
    pub fn new(settings: &Settings) -> (Self, Option<CgroupError>) {
        let (cgroups, err) =
            match CgroupReader::new(&settings.cgroup_root, &settings.kubepods_paths) {
                Ok(r) => (Some(r), None),
                Err(e) => (None, Some(e)),
            };
        let proc_root = settings.proc_root.clone();
        let host_netns = std::fs::read_link(proc_root.join("1/ns/net")).ok();
        (
            Collector {
                node: NodeCollector::new(
                    settings.proc_root.clone(),
                    settings.sys_root.clone(),
                    settings.exclude_net_devices.clone(),
                    settings.exclude_disk_devices.clone(),
                ),
                cgroups,
                proc_root,
                host_netns,
                cache: HashMap::new(),
                buf: Vec::with_capacity(8 * 1024),
            },
            err,
        )
    }

    /// The cgroup reader, if the host has a usable hierarchy.
    pub fn cgroups(&self) -> Option<&CgroupReader> {
        self.cgroups.as_ref()
    }

    /// Takes one reading. `ts_ms` and `mono_secs` come from the caller's clock.
    pub fn collect(&mut self, ts_ms: i64, mono_secs: f64, errs: &mut CycleErrors) -> Snapshot {
        let node = self.node.collect(&mut errs.errors);
        let mut pods = Vec::new();
        let mut cache = HashMap::with_capacity(self.cache.len());
        if let Some(cg) = &self.cgroups {
            for pod in cg.discover() {
                let mut pod_errors = Vec::new();
                let mut pc = self.cache.remove(&pod.uid).unwrap_or_default();
                let sample = cg.read(&pod, &mut pc, &mut self.buf, &mut pod_errors);
                if !pod_errors.is_empty() && !cg.exists(&pod) {
                    // Deleted while we read it: the pod is gone, its series go with it.
                    errs.pods_vanished += 1;
                    continue;
                }
                errs.errors.append(&mut pod_errors);
                let net = sample.pid.and_then(|pid| {
                    let (proc_root, host) = (&self.proc_root, self.host_netns.as_deref());
                    if pc.host_netns(|| shares_host_netns(proc_root, host, pid)) {
                        // hostNetwork pods see the node's interfaces: counted as node traffic.
                        return None;
                    }
                    let mut ignore = Vec::new();
                    // The process may exit between listing and reading; not worth an error,
                    // but another process of the pod is looked for next cycle.
                    let net = read_pid_net_dev(&self.proc_root, pid, &mut self.buf, &mut ignore);
                    if net.is_none() {
                        pc.forget_pid();
                    }
                    net
                });
                cache.insert(pod.uid.clone(), pc);
                pods.push(PodSnapshot {
                    cgroup: pod,
                    sample,
                    net,
                });
            }
        }
        self.cache = cache;
        Snapshot {
            ts_ms,
            mono_secs,
            node,
            pods,
        }
    }
}

fn shares_host_netns(proc_root: &Path, host: Option<&Path>, pid: u32) -> bool {
    match (host, netns_of(proc_root, pid)) {
        (Some(host), Some(ns)) => host == ns,
        _ => false,
    }
}

fn netns_of(proc_root: &Path, pid: u32) -> Option<PathBuf> {
    std::fs::read_link(proc_root.join(pid.to_string()).join("ns/net")).ok()
}
