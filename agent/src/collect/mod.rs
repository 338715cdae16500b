//! The collect stage: one reading of the node and of every pod on it.
//!
//! The sources sit together here: [`procfs`] (node counters), [`cgroup`] (each pod cgroup) and
//! [`pods`] (who each pod is, from the API server or the kubelet). [`Collector::collect`] asks
//! them for one reading, and each pod's network namespace (through one of its processes) for
//! its traffic. The result is a [`Snapshot`] of raw counters; [`crate::normalize`] turns two of
//! them into records ([`Pipeline`] runs the two as one step). Errors are returned with the
//! snapshot, never raised: one bad file costs one metric ([`CollectMetrics`]) and, the first
//! time, one log line.

pub mod cgroup;
pub mod pods;
pub mod procfs;

use crate::collect::cgroup::{CgroupError, CgroupReader, PodCache, PodCgroup, PodCgroupSample};
use crate::collect::pods::{PodDirectory, SharedPodDirectory};
use crate::collect::procfs::{
    CollectError, NetCounters, NodeCollector, NodeSnapshot, read_pid_net_dev,
};
use crate::config::Settings;
use crate::normalize::{NormalizeMetrics, Normalizer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use selfheal_core::schema::Record;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

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

/// Labels of `selfheal_agent_collect_errors_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    /// `read` or `parse`.
    kind: &'static str,
    /// File name (`stat`, `cpu.stat`, ...): bounded, unlike full paths.
    file: String,
}

/// Most distinct failing files remembered for warn-once logging.
const MAX_WARNED_FILES: usize = 1024;

/// The collect stage's metrics, and the memory of which files already failed once.
#[derive(Debug)]
pub struct CollectMetrics {
    cycle_duration: Histogram,
    errors: Family<ErrorLabels, Counter>,
    pods: Gauge,
    pods_unresolved: Gauge,
    pods_vanished: Counter,
    warned: HashSet<String>,
}

impl CollectMetrics {
    /// Registers the collect stage's metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let m = CollectMetrics {
            cycle_duration: Histogram::new([
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
            ]),
            errors: Family::default(),
            pods: Gauge::default(),
            pods_unresolved: Gauge::default(),
            pods_vanished: Counter::default(),
            warned: HashSet::new(),
        };
        registry.register(
            "cycle_duration_seconds",
            "Wall time of one collect + normalize cycle",
            m.cycle_duration.clone(),
        );
        registry.register(
            "collect_errors",
            "Files that could not be read or parsed",
            m.errors.clone(),
        );
        registry.register(
            "pods",
            "Pod cgroups found in the last cycle",
            m.pods.clone(),
        );
        registry.register(
            "pods_unresolved",
            "Pods seen in cgroups but unknown to the pod directory",
            m.pods_unresolved.clone(),
        );
        registry.register(
            "pods_vanished",
            "Pods that disappeared while being read",
            m.pods_vanished.clone(),
        );
        m
    }

    /// Logs and counts a cycle's errors: one line per failed file, at WARN the first time a
    /// file fails and at DEBUG after, so a permanently missing file does not flood the log.
    fn observe(&mut self, errs: &CycleErrors, (pods, unresolved): (usize, usize), took: f64) {
        self.cycle_duration.observe(took);
        for e in &errs.errors {
            let file = file_label(e);
            let key = format!("{}:{file}", e.kind());
            self.errors
                .get_or_create(&ErrorLabels {
                    kind: e.kind(),
                    file,
                })
                .inc();
            if self.warned.len() < MAX_WARNED_FILES && self.warned.insert(key) {
                tracing::warn!(error = %e, source = ?std::error::Error::source(e).map(|s| s.to_string()), "CollectError");
            } else {
                tracing::debug!(error = %e, "CollectError");
            }
        }
        self.pods_vanished.inc_by(errs.pods_vanished);
        self.pods.set(pods as i64);
        self.pods_unresolved.set(unresolved as i64);
    }
}

fn file_label(e: &CollectError) -> String {
    let path = match e {
        CollectError::Read { path, .. } | CollectError::Parse { path, .. } => path,
    };
    path.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("?")
        .to_owned()
}

/// The collect → normalize part of the loop, usable on its own (`--once`, benches, tests).
#[derive(Debug)]
pub struct Pipeline {
    collector: Collector,
    normalizer: Normalizer,
    started: tokio::time::Instant,
    last_pods: (usize, usize),
    metrics: Option<(CollectMetrics, NormalizeMetrics)>,
}

impl Pipeline {
    /// A pipeline for `settings`. A host without a cgroup hierarchy is reported and collects
    /// node metrics only.
    pub fn new(settings: &Settings) -> Self {
        let (collector, err) = Collector::new(settings);
        if let Some(e) = err {
            tracing::warn!(error = %e, "CgroupUnavailable");
        } else if let Some(cg) = collector.cgroups() {
            tracing::info!(mode = ?cg.mode(), root = %cg.root().display(), "CgroupDetected");
        }
        Pipeline {
            collector,
            normalizer: Normalizer::new(settings.node_name.clone()),
            started: tokio::time::Instant::now(),
            last_pods: (0, 0),
            metrics: None,
        }
    }

    /// The same, with the collect and normalize stages' metrics registered in `registry` and
    /// kept by [`Pipeline::run_cycle`].
    pub fn with_metrics(settings: &Settings, registry: &mut Registry) -> Self {
        Pipeline {
            metrics: Some((
                CollectMetrics::register(registry),
                NormalizeMetrics::register(registry),
            )),
            ..Pipeline::new(settings)
        }
    }

    /// Pods found in the last cycle, and how many of them the pod directory did not know.
    pub fn last_pods(&self) -> (usize, usize) {
        self.last_pods
    }

    /// One cycle: read everything, turn it into records.
    pub fn cycle(&mut self, pods: &PodDirectory, errs: &mut CycleErrors) -> Vec<Record> {
        let ts_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let mono = self.started.elapsed().as_secs_f64();
        let snap = self.collector.collect(ts_ms, mono, errs);
        let unresolved = snap
            .pods
            .iter()
            .filter(|p| pods.get(&p.cgroup.uid).is_none())
            .count();
        self.last_pods = (snap.pods.len(), unresolved);
        self.normalizer.normalize(snap, pods)
    }

    /// The loop's cycle: [`Pipeline::cycle`] against the shared directory, asking it for a
    /// re-list when a pod it does not know has appeared, then logging and counting.
    pub fn run_cycle(&mut self, pods: &SharedPodDirectory) -> Vec<Record> {
        let t0 = Instant::now();
        let mut errs = CycleErrors::default();
        let records = {
            let dir = pods.read();
            let records = self.cycle(&dir, &mut errs);
            if self.last_pods.1 > 0 && dir.is_synced() {
                // A pod started since the last list: ask for a (rate-limited) re-list.
                dir.request_relist();
            }
            records
        };
        if let Some((collect, normalize)) = &mut self.metrics {
            collect.observe(&errs, self.last_pods, t0.elapsed().as_secs_f64());
            normalize.observe(&records, &self.normalizer);
        }
        records
    }

    /// The normalizer, for its statistics.
    pub fn normalizer(&self) -> &Normalizer {
        &self.normalizer
    }
}
