//! Metric families and the metrics that belong to them.
//!
//! A family is the unit of modelling: one isolation forest is trained per family, over the
//! features of the family's metrics in the order [`Family::metrics`] gives. Adding a metric to a
//! family changes that order, so it is a schema change (bump [`crate::schema::SCHEMA_VERSION`]).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A group of related metrics that one model scores together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// CPU time: usage, throttling, run queue.
    Cpu,
    /// Memory: usage, working set, limits, OOM kills.
    Memory,
    /// Bytes and packets moved: network interfaces and block devices.
    Traffic,
    /// Pressure stall information (PSI): time tasks spent waiting on CPU, memory or I/O.
    Pressure,
    /// Container restarts and terminations.
    Restarts,
}

impl Family {
    /// Every family, in a fixed order.
    pub const ALL: [Family; 5] = [
        Family::Cpu,
        Family::Memory,
        Family::Traffic,
        Family::Pressure,
        Family::Restarts,
    ];

    /// The family's name as used in configs, file names and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Cpu => "cpu",
            Family::Memory => "memory",
            Family::Traffic => "traffic",
            Family::Pressure => "pressure",
            Family::Restarts => "restarts",
        }
    }

    /// The family's metrics in their schema order.
    pub fn metrics(self) -> impl Iterator<Item = Metric> {
        Metric::ALL
            .iter()
            .copied()
            .filter(move |m| m.family() == self)
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A family name that is not one of [`Family::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown metric family {0:?} (expected one of cpu, memory, traffic, pressure, restarts)")]
pub struct UnknownFamily(pub String);

impl FromStr for Family {
    type Err = UnknownFamily;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Family::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| UnknownFamily(s.to_owned()))
    }
}

macro_rules! metrics {
    ($( $(#[doc = $doc:literal])* $variant:ident => ($name:literal, $family:ident, $unit:literal), )*) => {
        /// One normalized metric. Its name carries its unit; ratios are in 0..=1 (per core for CPU
        /// shares of the whole node), rates are per second.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum Metric {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl Metric {
            /// Every metric, in schema order.
            pub const ALL: &'static [Metric] = &[$(Metric::$variant,)*];

            /// The metric's name as it appears in JSON, CSV headers and feature names.
            pub fn as_str(self) -> &'static str {
                match self { $(Metric::$variant => $name,)* }
            }

            /// The family the metric belongs to.
            pub fn family(self) -> Family {
                match self { $(Metric::$variant => Family::$family,)* }
            }

            /// The metric's unit, for people.
            pub fn unit(self) -> &'static str {
                match self { $(Metric::$variant => $unit,)* }
            }
        }
    };
}

metrics! {
    /// CPU time used, in cores (1.0 = one core busy for the whole interval).
    CpuUsageCores => ("cpu_usage_cores", Cpu, "cores"),
    /// Node: share of all CPU time spent in user mode (incl. nice).
    CpuUserRatio => ("cpu_user_ratio", Cpu, "ratio"),
    /// Node: share of all CPU time spent in the kernel (incl. irq, softirq).
    CpuSystemRatio => ("cpu_system_ratio", Cpu, "ratio"),
    /// Node: share of all CPU time idle waiting for I/O.
    CpuIowaitRatio => ("cpu_iowait_ratio", Cpu, "ratio"),
    /// Node: share of all CPU time stolen by the hypervisor.
    CpuStealRatio => ("cpu_steal_ratio", Cpu, "ratio"),
    /// Node: busy share of the busiest single core.
    CpuMaxCoreBusyRatio => ("cpu_max_core_busy_ratio", Cpu, "ratio"),
    /// Node: one-minute load average.
    CpuLoad1 => ("cpu_load1", Cpu, "tasks"),
    /// Node: runnable tasks.
    CpuProcsRunning => ("cpu_procs_running", Cpu, "tasks"),
    /// Node: tasks blocked on I/O.
    CpuProcsBlocked => ("cpu_procs_blocked", Cpu, "tasks"),
    /// Node: context switches per second.
    CpuContextSwitchesPerSec => ("cpu_context_switches_per_sec", Cpu, "1/s"),
    /// Pod: CPU limit from the CFS quota, in cores.
    CpuLimitCores => ("cpu_limit_cores", Cpu, "cores"),
    /// Pod: share of CFS periods in which the cgroup was throttled.
    CpuThrottledRatio => ("cpu_throttled_ratio", Cpu, "ratio"),
    /// Pod: seconds of throttling per second.
    CpuThrottledSecsPerSec => ("cpu_throttled_secs_per_sec", Cpu, "s/s"),

    /// Node: memory in use (total minus available).
    MemoryUsedBytes => ("memory_used_bytes", Memory, "bytes"),
    /// Node: share of memory available.
    MemoryAvailableRatio => ("memory_available_ratio", Memory, "ratio"),
    /// Node: swap in use.
    MemorySwapUsedBytes => ("memory_swap_used_bytes", Memory, "bytes"),
    /// Pod: memory charged to the cgroup (v2 memory.current, v1 memory.usage_in_bytes).
    MemoryCurrentBytes => ("memory_current_bytes", Memory, "bytes"),
    /// Pod: working set, the kubelet's definition: usage minus inactive file pages.
    MemoryWorkingSetBytes => ("memory_working_set_bytes", Memory, "bytes"),
    /// Pod: memory limit; absent when unlimited.
    MemoryLimitBytes => ("memory_limit_bytes", Memory, "bytes"),
    /// Pod: working set as a share of the limit; absent when unlimited.
    MemoryLimitUsageRatio => ("memory_limit_usage_ratio", Memory, "ratio"),
    /// Pod: OOM kills in this interval.
    MemoryOomKills => ("memory_oom_kills", Memory, "events"),

    /// Bytes received per second on network interfaces (loopback excluded).
    NetRxBytesPerSec => ("net_rx_bytes_per_sec", Traffic, "B/s"),
    /// Bytes sent per second on network interfaces (loopback excluded).
    NetTxBytesPerSec => ("net_tx_bytes_per_sec", Traffic, "B/s"),
    /// Packets received per second.
    NetRxPacketsPerSec => ("net_rx_packets_per_sec", Traffic, "1/s"),
    /// Packets sent per second.
    NetTxPacketsPerSec => ("net_tx_packets_per_sec", Traffic, "1/s"),
    /// Receive and transmit errors per second.
    NetErrorsPerSec => ("net_errors_per_sec", Traffic, "1/s"),
    /// Receive and transmit drops per second.
    NetDropsPerSec => ("net_drops_per_sec", Traffic, "1/s"),
    /// Node: bytes read from block devices per second.
    DiskReadBytesPerSec => ("disk_read_bytes_per_sec", Traffic, "B/s"),
    /// Node: bytes written to block devices per second.
    DiskWriteBytesPerSec => ("disk_write_bytes_per_sec", Traffic, "B/s"),
    /// Node: busy share of the busiest block device.
    DiskMaxUtilRatio => ("disk_max_util_ratio", Traffic, "ratio"),

    /// Share of time some task waited for CPU.
    PsiCpuSomeRatio => ("psi_cpu_some_ratio", Pressure, "ratio"),
    /// Share of time some task waited for memory.
    PsiMemorySomeRatio => ("psi_memory_some_ratio", Pressure, "ratio"),
    /// Share of time all non-idle tasks waited for memory.
    PsiMemoryFullRatio => ("psi_memory_full_ratio", Pressure, "ratio"),
    /// Share of time some task waited for I/O.
    PsiIoSomeRatio => ("psi_io_some_ratio", Pressure, "ratio"),
    /// Share of time all non-idle tasks waited for I/O.
    PsiIoFullRatio => ("psi_io_full_ratio", Pressure, "ratio"),

    /// Pod: container restarts since the pod started, summed over containers.
    RestartsTotal => ("restarts_total", Restarts, "restarts"),
    /// Pod: container restarts in this interval.
    RestartsDelta => ("restarts_delta", Restarts, "restarts"),
    /// Pod: containers not ready.
    ContainersNotReady => ("containers_not_ready", Restarts, "containers"),
    /// Pod: 1 if a container's last termination was an OOM kill.
    LastTerminationOomKilled => ("last_termination_oom_killed", Restarts, "bool"),
    /// Pod: 1 if a container's last termination was an error (non-zero exit, not OOM).
    LastTerminationError => ("last_termination_error", Restarts, "bool"),
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_unique_and_prefixed_by_nothing_surprising() {
        let mut names: Vec<_> = Metric::ALL.iter().map(|m| m.as_str()).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate metric names");
    }

    #[test]
    fn serde_name_matches_as_str() {
        for m in Metric::ALL {
            let json = serde_json::to_string(m).expect("serialize metric");
            assert_eq!(json, format!("\"{}\"", m.as_str()));
        }
        for f in Family::ALL {
            let json = serde_json::to_string(&f).expect("serialize family");
            assert_eq!(json, format!("\"{f}\""));
            assert_eq!(f.as_str().parse::<Family>().ok(), Some(f));
        }
    }

    #[test]
    fn every_family_has_metrics() {
        for f in Family::ALL {
            assert!(f.metrics().count() >= 3, "{f} has too few metrics");
        }
        assert!("disk".parse::<Family>().is_err());
    }
}
