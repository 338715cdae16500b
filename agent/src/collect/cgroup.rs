//! Pod metrics from cgroups, v1, v2 and hybrid hosts, kubelet `cgroupfs` and `systemd` drivers.
//!
//! [`CgroupReader::discover`] finds pod cgroups under the kubepods hierarchy and tells each pod's
//! UID and QoS class from its path; [`CgroupReader::read`] reads one pod's raw counters into a
//! [`PodCgroupSample`]. Rates are [`crate::normalize`]'s job; names come from [`crate::collect::pods`].
//!
//! Layouts handled (the QoS level is absent for Guaranteed pods):
//!
//! | driver   | path of a pod cgroup                                                            |
//! |----------|---------------------------------------------------------------------------------|
//! | cgroupfs | `kubepods/burstable/pod<uid>`                                                   |
//! | systemd  | `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice` |
//!
//! On v1 and hybrid hosts the `cpu`, `cpuacct` and `memory` controllers are separate hierarchies
//! (`cpu,cpuacct` when co-mounted); on v2 there is one. Per-cgroup PSI exists only on v2.
//! Reading the pod-level cgroup rather than each container gives the pod's totals directly.

use crate::collect::procfs::{
    CollectError, ParseError, PsiTotals, parse_psi, read_parse, read_parse_opt,
};
use selfheal_core::schema::QosClass;
use std::path::{Path, PathBuf};

/// v1 reports "no memory limit" as a page-counter maximum near 2^63; anything above this is
/// unlimited.
const V1_UNLIMITED: u64 = 1 << 62;

/// Which cgroup layout the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// Only cgroup v1 hierarchies.
    V1,
    /// v1 controllers plus a v2 hierarchy at `unified/` without the controllers we read.
    Hybrid,
    /// One cgroup v2 hierarchy.
    V2,
}

/// The cgroup root is not usable.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Neither v2 (`cgroup.controllers`) nor v1 controller directories were found.
    #[error("no cgroup hierarchy under {0} (no cgroup.controllers, no cpu/memory directories)")]
    NoHierarchy(PathBuf),
}

/// A pod cgroup found on the host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodCgroup {
    /// The pod UID, with dashes (as the API server writes it).
    pub uid: String,
    /// QoS class from the placement.
    pub qos: QosClass,
    /// Path relative to the hierarchy root (the same in every v1 controller).
    pub rel: PathBuf,
}

/// One pod's raw cgroup counters. A field is `None` when its file is absent or failed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodCgroupSample {
    /// CPU time used, nanoseconds.
    pub cpu_usage_ns: Option<u64>,
    /// CFS periods elapsed.
    pub nr_periods: Option<u64>,
    /// CFS periods throttled.
    pub nr_throttled: Option<u64>,
    /// Time throttled, nanoseconds.
    pub throttled_ns: Option<u64>,
    /// CPU limit from quota/period, cores; `None` when unlimited.
    pub cpu_limit_cores: Option<f64>,
    /// Memory charged, bytes.
    pub memory_current: Option<u64>,
    /// Inactive file pages, bytes (for the working set).
    pub memory_inactive_file: Option<u64>,
    /// Memory limit, bytes; `None` when unlimited.
    pub memory_limit: Option<u64>,
    /// OOM kills since the cgroup was created.
    pub oom_kills: Option<u64>,
    /// CPU pressure (v2 only).
    pub psi_cpu: Option<PsiTotals>,
    /// Memory pressure (v2 only).
    pub psi_memory: Option<PsiTotals>,
    /// I/O pressure (v2 only).
    pub psi_io: Option<PsiTotals>,
    /// A process in the pod, for reading its network namespace.
    pub pid: Option<u32>,
}

impl PodCgroupSample {
    /// Working set as the kubelet computes it: usage minus inactive file pages.
    pub fn working_set(&self) -> Option<u64> {
        let cur = self.memory_current?;
        Some(cur.saturating_sub(self.memory_inactive_file.unwrap_or(0)))
    }
}

/// Cycles between re-reads of a pod's limits (`cpu.max`, `memory.max`, ...), which change only
/// on an in-place resize; skipping them saves a third of the agent's file reads.
pub const LIMITS_REFRESH_CYCLES: u32 = 12;

/// What the reader keeps about a pod between cycles.
#[derive(Debug, Clone, Default)]
pub struct PodCache {
    limits: Option<(Option<f64>, Option<u64>)>,
    limits_age: u32,
    pid: Option<u32>,
    /// Whether `pid` shares the host's network namespace, once looked up for that pid.
    host_netns: Option<bool>,
}

impl PodCache {
    /// Forgets the cached process (it exited, or its `/proc` entry could not be read).
    pub fn forget_pid(&mut self) {
        self.pid = None;
        self.host_netns = None;
    }

    /// Whether the cached process shares the host's network namespace, computed by `lookup` the
    /// first time it is asked for this process and kept until [`PodCache::forget_pid`].
    pub fn host_netns(&mut self, lookup: impl FnOnce() -> bool) -> bool {
        *self.host_netns.get_or_insert_with(lookup)
    }
}

/// Reads pod cgroups under one cgroup root.
#[derive(Debug, Clone)]
pub struct CgroupReader {
    root: PathBuf,
    mode: CgroupMode,
    kubepods: Vec<PathBuf>,
    cpu: PathBuf,
    cpuacct: PathBuf,
    memory: PathBuf,
}

fn first_dir(root: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|n| root.join(n)).find(|p| p.is_dir())
}

impl CgroupReader {
    /// Detects the layout under `root` (e.g. `/host/sys/fs/cgroup`). `kubepods` are the pod
    /// hierarchy roots to search, relative to each hierarchy (default `kubepods.slice`,
    /// `kubepods`).
    pub fn new(root: &Path, kubepods: &[PathBuf]) -> Result<Self, CgroupError> {
        let kubepods = kubepods.to_vec();
        if root.join("cgroup.controllers").is_file() {
            return Ok(CgroupReader {
                root: root.to_owned(),
                mode: CgroupMode::V2,
                kubepods,
                cpu: root.to_owned(),
                cpuacct: root.to_owned(),
                memory: root.to_owned(),
            });
        }
        let cpu = first_dir(root, &["cpu,cpuacct", "cpu", "cpuacct,cpu"]);
        let cpuacct = first_dir(root, &["cpu,cpuacct", "cpuacct", "cpuacct,cpu"]);
        let memory = first_dir(root, &["memory"]);
        match (cpu, cpuacct, memory) {
            (Some(cpu), Some(cpuacct), Some(memory)) => Ok(CgroupReader {
                root: root.to_owned(),
                mode: if root.join("unified/cgroup.controllers").is_file() {
                    CgroupMode::Hybrid
                } else {
                    CgroupMode::V1
                },
                kubepods,
                cpu,
                cpuacct,
                memory,
            }),
            _ => Err(CgroupError::NoHierarchy(root.to_owned())),
        }
    }

    /// The detected layout.
    pub fn mode(&self) -> CgroupMode {
        self.mode
    }

    /// The root this reader was made for.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Finds every pod cgroup. A kubepods root that does not exist yields nothing (a node
    /// without pods, or the other driver's layout).
    pub fn discover(&self) -> Vec<PodCgroup> {
        let mut out = Vec::new();
        // The memory hierarchy exists in every mode and holds every pod.
        for kp in &self.kubepods {
            let base = self.memory.join(kp);
            let Ok(rd) = std::fs::read_dir(&base) else {
                continue;
            };
            for entry in rd.filter_map(Result::ok) {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if let Some(uid) = pod_uid_from_name(name) {
                    out.push(PodCgroup {
                        uid,
                        qos: QosClass::Guaranteed,
                        rel: kp.join(name),
                    });
                } else if let Some(qos) = qos_from_name(name) {
                    let Ok(inner) = std::fs::read_dir(entry.path()) else {
                        continue;
                    };
                    for e in inner.filter_map(Result::ok) {
                        let n = e.file_name();
                        let Some(n) = n.to_str() else { continue };
                        if let Some(uid) = pod_uid_from_name(n)
                            && e.file_type().is_ok_and(|t| t.is_dir())
                        {
                            out.push(PodCgroup {
                                uid,
                                qos,
                                rel: kp.join(name).join(n),
                            });
                        }
                    }
                }
            }
        }
        out.sort_by(|a, b| a.uid.cmp(&b.uid));
        out.dedup_by(|a, b| a.uid == b.uid);
        out
    }

    /// True when the pod's cgroup still exists (to tell a pod that went away mid-cycle from a
    /// real read error).
    pub fn exists(&self, pod: &PodCgroup) -> bool {
        self.memory.join(&pod.rel).is_dir()
    }

    /// Reads one pod's counters. Failures are appended to `errors`; callers should check
    /// [`CgroupReader::exists`] before counting them, since a pod can vanish mid-read.
    pub fn read(
        &self,
        pod: &PodCgroup,
        cache: &mut PodCache,
        buf: &mut Vec<u8>,
        errors: &mut Vec<CollectError>,
    ) -> PodCgroupSample {
        let refresh = cache.limits.is_none() || cache.limits_age >= LIMITS_REFRESH_CYCLES;
        let mut s = match self.mode {
            CgroupMode::V2 => self.read_v2(pod, refresh, buf, errors),
            CgroupMode::V1 | CgroupMode::Hybrid => self.read_v1(pod, refresh, buf, errors),
        };
        if refresh {
            cache.limits = Some((s.cpu_limit_cores, s.memory_limit));
            cache.limits_age = 0;
        } else if let Some((cpu, mem)) = cache.limits {
            s.cpu_limit_cores = cpu;
            s.memory_limit = mem;
        }
        cache.limits_age += 1;
        if cache.pid.is_none() {
            cache.pid = match self.mode {
                CgroupMode::V2 => first_pid(&self.root.join(&pod.rel), buf),
                _ => first_pid(&self.cpu.join(&pod.rel), buf)
                    .or_else(|| first_pid(&self.memory.join(&pod.rel), buf)),
            };
        }
        s.pid = cache.pid;
        s
    }

    fn read_v2(
        &self,
        pod: &PodCgroup,
        limits: bool,
        buf: &mut Vec<u8>,
        errors: &mut Vec<CollectError>,
    ) -> PodCgroupSample {
        let dir = self.root.join(&pod.rel);
        let mut s = PodCgroupSample::default();
        if let Some(kv) = read_parse(&dir.join("cpu.stat"), buf, parse_flat_keyed, errors) {
            s.cpu_usage_ns = kv.get("usage_usec").map(|v| v.saturating_mul(1000));
            s.nr_periods = kv.get("nr_periods");
            s.nr_throttled = kv.get("nr_throttled");
            s.throttled_ns = kv.get("throttled_usec").map(|v| v.saturating_mul(1000));
        }
        if limits {
            s.cpu_limit_cores =
                read_parse_opt(&dir.join("cpu.max"), buf, parse_cpu_max, errors, true).flatten();
            s.memory_limit =
                read_parse_opt(&dir.join("memory.max"), buf, parse_max_u64, errors, true).flatten();
        }
        s.memory_current = read_parse(&dir.join("memory.current"), buf, parse_u64, errors);
        if let Some(kv) = read_parse(&dir.join("memory.stat"), buf, parse_flat_keyed, errors) {
            s.memory_inactive_file = kv.get("inactive_file");
        }
        if let Some(kv) = read_parse_opt(
            &dir.join("memory.events"),
            buf,
            parse_flat_keyed,
            errors,
            true,
        ) {
            s.oom_kills = kv.get("oom_kill");
        }
        s.psi_cpu = read_parse_opt(&dir.join("cpu.pressure"), buf, parse_psi, errors, true);
        s.psi_memory = read_parse_opt(&dir.join("memory.pressure"), buf, parse_psi, errors, true);
        s.psi_io = read_parse_opt(&dir.join("io.pressure"), buf, parse_psi, errors, true);
        s
    }

    fn read_v1(
        &self,
        pod: &PodCgroup,
        limits: bool,
        buf: &mut Vec<u8>,
        errors: &mut Vec<CollectError>,
    ) -> PodCgroupSample {
        let cpu = self.cpu.join(&pod.rel);
        let acct = self.cpuacct.join(&pod.rel);
        let mem = self.memory.join(&pod.rel);
        let mut s = PodCgroupSample {
            cpu_usage_ns: read_parse(&acct.join("cpuacct.usage"), buf, parse_u64, errors),
            ..PodCgroupSample::default()
        };
        if let Some(kv) = read_parse(&cpu.join("cpu.stat"), buf, parse_flat_keyed, errors) {
            s.nr_periods = kv.get("nr_periods");
            s.nr_throttled = kv.get("nr_throttled");
            s.throttled_ns = kv.get("throttled_time");
        }
        if limits {
            let quota = read_parse_opt(&cpu.join("cpu.cfs_quota_us"), buf, parse_i64, errors, true);
            let period =
                read_parse_opt(&cpu.join("cpu.cfs_period_us"), buf, parse_i64, errors, true);
            s.cpu_limit_cores = match (quota, period) {
                (Some(q), Some(p)) if q > 0 && p > 0 => Some(q as f64 / p as f64),
                _ => None,
            };
            s.memory_limit = read_parse(&mem.join("memory.limit_in_bytes"), buf, parse_u64, errors)
                .filter(|&l| l < V1_UNLIMITED);
        }
        s.memory_current = read_parse(&mem.join("memory.usage_in_bytes"), buf, parse_u64, errors);
        if let Some(kv) = read_parse(&mem.join("memory.stat"), buf, parse_flat_keyed, errors) {
            // The `total_` entries include child cgroups (the containers).
            s.memory_inactive_file = kv
                .get("total_inactive_file")
                .or_else(|| kv.get("inactive_file"));
        }
        if let Some(kv) = read_parse_opt(
            &mem.join("memory.oom_control"),
            buf,
            parse_flat_keyed,
            errors,
            true,
        ) {
            s.oom_kills = kv.get("oom_kill");
        }
        s
    }
}

/// The first process found in the cgroup or its children (pod cgroups hold only container
/// cgroups, which hold the processes).
fn first_pid(dir: &Path, buf: &mut Vec<u8>) -> Option<u32> {
    let mut ignore = Vec::new();
    let direct = read_parse(&dir.join("cgroup.procs"), buf, parse_first_pid, &mut ignore).flatten();
    if direct.is_some() {
        return direct;
    }
    let mut children: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    // Deterministic choice; the pause container and app containers share the network namespace.
    children.sort();
    children.into_iter().find_map(|c| {
        read_parse(&c.join("cgroup.procs"), buf, parse_first_pid, &mut ignore).flatten()
    })
}

fn parse_first_pid(t: &str) -> Result<Option<u32>, ParseError> {
    Ok(t.lines().find_map(|l| l.trim().parse().ok()))
}

/// A pod UID from a cgroup directory name: `pod<uid>` or `...-pod<uid_with_underscores>.slice`.
pub fn pod_uid_from_name(name: &str) -> Option<String> {
    let raw = if let Some(stem) = name.strip_suffix(".slice") {
        stem.rsplit_once("-pod")?.1
    } else {
        name.strip_prefix("pod")?
    };
    let uid = raw.replace('_', "-");
    let ok = uid.len() >= 8
        && uid.len() <= 64
        && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    ok.then_some(uid)
}

fn qos_from_name(name: &str) -> Option<QosClass> {
    match name {
        "burstable" | "kubepods-burstable.slice" => Some(QosClass::Burstable),
        "besteffort" | "kubepods-besteffort.slice" => Some(QosClass::BestEffort),
        _ => None,
    }
}

/// `key value` lines (cpu.stat, memory.stat, memory.events, memory.oom_control).
#[derive(Debug, Default)]
pub struct FlatKeyed(Vec<(String, u64)>);

impl FlatKeyed {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<u64> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

/// Parses `key value` lines; lines whose value is not a number are skipped (memory.oom_control
/// has them), a file with no numeric line at all is an error.
pub fn parse_flat_keyed(t: &str) -> Result<FlatKeyed, ParseError> {
    let v: Vec<(String, u64)> = t
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect();
    if v.is_empty() && !t.trim().is_empty() {
        return Err(ParseError::Missing("key value lines"));
    }
    Ok(FlatKeyed(v))
}

fn parse_u64(t: &str) -> Result<u64, ParseError> {
    let s = t.trim();
    s.parse().map_err(|_| ParseError::BadNumber {
        field: "cgroup value",
        value: s.chars().take(32).collect(),
    })
}

fn parse_i64(t: &str) -> Result<i64, ParseError> {
    let s = t.trim();
    s.parse().map_err(|_| ParseError::BadNumber {
        field: "cgroup value",
        value: s.chars().take(32).collect(),
    })
}

/// `max` or a number.
fn parse_max_u64(t: &str) -> Result<Option<u64>, ParseError> {
    if t.trim() == "max" {
        Ok(None)
    } else {
        parse_u64(t).map(Some)
    }
}

/// v2 `cpu.max`: `max 100000` or `<quota> <period>`.
fn parse_cpu_max(t: &str) -> Result<Option<f64>, ParseError> {
    let mut it = t.split_ascii_whitespace();
    let quota = it.next().ok_or(ParseError::Missing("cpu.max quota"))?;
    let period: f64 = parse_u64(it.next().unwrap_or("100000"))? as f64;
    if quota == "max" || period <= 0.0 {
        return Ok(None);
    }
    Ok(Some(parse_u64(quota)? as f64 / period))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_from_both_drivers() {
        assert_eq!(
            pod_uid_from_name("pod3f1c2a9e-0b7d-4c1e-9a57-6d2f8e4b1c00").as_deref(),
            Some("3f1c2a9e-0b7d-4c1e-9a57-6d2f8e4b1c00")
        );
        assert_eq!(
            pod_uid_from_name("kubepods-burstable-pod3f1c2a9e_0b7d_4c1e_9a57_6d2f8e4b1c00.slice")
                .as_deref(),
            Some("3f1c2a9e-0b7d-4c1e-9a57-6d2f8e4b1c00")
        );
        assert_eq!(
            pod_uid_from_name("kubepods-pod3f1c2a9e_0b7d_4c1e_9a57_6d2f8e4b1c00.slice").as_deref(),
            Some("3f1c2a9e-0b7d-4c1e-9a57-6d2f8e4b1c00")
        );
        assert_eq!(pod_uid_from_name("kubepods-burstable.slice"), None);
        assert_eq!(pod_uid_from_name("burstable"), None);
        assert_eq!(pod_uid_from_name("cri-containerd-abc.scope"), None);
        assert_eq!(pod_uid_from_name("pod../../etc"), None);
    }

    #[test]
    fn value_files() {
        assert_eq!(parse_cpu_max("max 100000\n"), Ok(None));
        assert_eq!(parse_cpu_max("150000 100000\n"), Ok(Some(1.5)));
        assert_eq!(parse_max_u64("max\n"), Ok(None));
        assert_eq!(parse_max_u64("1048576\n"), Ok(Some(1_048_576)));
        let kv = parse_flat_keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").expect("kv");
        assert_eq!(kv.get("oom_kill"), Some(2));
        assert!(parse_flat_keyed("garbage\n").is_err());
        assert!(parse_u64("12a").is_err());
    }
}
