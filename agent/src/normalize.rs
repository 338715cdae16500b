//! The normalize stage: two readings in, schema-v1 records out.
//!
//! Counters become per-second rates with [`selfheal_core::features::counter_increase`] (resets
//! and wraps handled and counted), gauges pass through, and every value lands under its
//! [`Metric`] in one [`Record`] per subject and family. Identity comes from the
//! [`PodDirectory`]; a pod the directory does not know yet is still reported, by UID.
//!
//! The normalizer keeps the previous reading of the node and of each pod. A pod missing from a
//! reading is forgotten at once, so memory follows the pods on the node, not the pods ever seen.

use crate::collect::pods::{PodDirectory, PodInfo};
use crate::collect::procfs::{DiskCounters, NetCounters, NodeSnapshot, PsiTotals};
use crate::collect::{PodSnapshot, Snapshot};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use selfheal_core::family::{Family, Metric};
use selfheal_core::features::{CounterIncrease, CounterWidth, counter_increase};
use selfheal_core::schema::{PodRef, Record, RecordId, Subject};
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};

/// Counts of what the normalizer had to work around, since it started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NormalizeStats {
    /// Counters that went backwards and were taken as restarted from zero.
    pub counter_resets: u64,
    /// 32-bit counters that wrapped.
    pub counter_wraps: u64,
    /// Values dropped because they were not finite numbers.
    pub non_finite: u64,
    /// Readings skipped because no time had passed since the previous one.
    pub zero_elapsed: u64,
}

/// Labels of `selfheal_agent_records_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabels {
    /// Metric family.
    family: &'static str,
}

/// The normalize stage's metrics: records made, series held, and what it worked around.
#[derive(Debug)]
pub struct NormalizeMetrics {
    records: prometheus_client::metrics::family::Family<FamilyLabels, Counter>,
    series: Gauge,
    counter_resets: Counter,
    non_finite_values: Counter,
    /// The normalizer's totals at the last observation, to count the difference.
    seen: NormalizeStats,
}

impl NormalizeMetrics {
    /// Registers the normalize stage's metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let m = NormalizeMetrics {
            records: Default::default(),
            series: Gauge::default(),
            counter_resets: Counter::default(),
            non_finite_values: Counter::default(),
            seen: NormalizeStats::default(),
        };
        registry.register("records", "Records produced", m.records.clone());
        registry.register(
            "series",
            "Subjects with state held between cycles",
            m.series.clone(),
        );
        registry.register(
            "counter_resets",
            "Counters that went backwards and were taken as reset",
            m.counter_resets.clone(),
        );
        registry.register(
            "non_finite_values",
            "Values dropped for not being finite numbers",
            m.non_finite_values.clone(),
        );
        m
    }

    /// Counts a cycle's records and what the normalizer worked around since the last one.
    pub fn observe(&mut self, records: &[Record], normalizer: &Normalizer) {
        for r in records {
            self.records
                .get_or_create(&FamilyLabels {
                    family: r.family.as_str(),
                })
                .inc();
        }
        let now = normalizer.stats();
        self.counter_resets
            .inc_by(now.counter_resets - self.seen.counter_resets);
        self.non_finite_values
            .inc_by(now.non_finite - self.seen.non_finite);
        self.seen = now;
        self.series.set(normalizer.series_count() as i64);
    }
}

/// Unique record ids: a random 64-bit prefix per process and a counter.
#[derive(Debug)]
struct IdGen {
    prefix: u64,
    next: u64,
}

impl IdGen {
    fn new() -> Self {
        // std's RandomState is seeded from the OS's randomness; mixing in the pid and time keeps
        // two agents started in the same instant apart even if it were not.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        IdGen {
            prefix: h.finish(),
            next: 0,
        }
    }

    fn next(&mut self) -> RecordId {
        self.next += 1;
        RecordId::from_u128((u128::from(self.prefix) << 64) | u128::from(self.next))
    }
}

#[derive(Debug, Clone)]
struct PodPrev {
    mono_secs: f64,
    sample: crate::collect::cgroup::PodCgroupSample,
    net: Option<Vec<(String, NetCounters)>>,
    restarts_total: Option<u64>,
}

/// Turns snapshots into records.
#[derive(Debug)]
pub struct Normalizer {
    node_name: String,
    prev_node: Option<(f64, NodeSnapshot)>,
    prev_pods: HashMap<String, PodPrev>,
    ids: IdGen,
    stats: NormalizeStats,
}

struct Builder<'a> {
    out: &'a mut Vec<Record>,
    ids: &'a mut IdGen,
    stats: &'a mut NormalizeStats,
    node: &'a str,
    ts_ms: i64,
}

impl Builder<'_> {
    fn emit(&mut self, subject: &Subject, family: Family, values: Vec<(Metric, Option<f64>)>) {
        let mut map = BTreeMap::new();
        for (m, v) in values {
            debug_assert_eq!(m.family(), family);
            match v {
                Some(v) if v.is_finite() => {
                    map.insert(m, v);
                }
                Some(_) => self.stats.non_finite += 1,
                None => {}
            }
        }
        if map.is_empty() {
            return;
        }
        self.out.push(Record {
            id: self.ids.next(),
            ts_ms: self.ts_ms,
            node: self.node.to_owned(),
            subject: subject.clone(),
            family,
            values: map,
        });
    }
}

fn increase(stats: &mut NormalizeStats, prev: u64, cur: u64) -> u64 {
    match counter_increase(prev, cur, CounterWidth::U64) {
        CounterIncrease::Normal(v) => v,
        CounterIncrease::Wrapped(v) => {
            stats.counter_wraps += 1;
            v
        }
        CounterIncrease::Reset(v) => {
            stats.counter_resets += 1;
            tracing::debug!(prev, cur, "CounterReset");
            v
        }
    }
}

fn opt_increase(stats: &mut NormalizeStats, prev: Option<u64>, cur: Option<u64>) -> Option<u64> {
    Some(increase(stats, prev?, cur?))
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| (num as f64 / den as f64).clamp(0.0, 1.0))
}

/// Per-device increases summed over devices present in both readings, so a device that comes or
/// goes does not look like a counter reset.
fn sum_devices<T: Copy>(
    stats: &mut NormalizeStats,
    prev: &[(String, T)],
    cur: &[(String, T)],
    fields: &[fn(&T) -> u64],
) -> Vec<u64> {
    let mut sums = vec![0u64; fields.len()];
    for (name, c) in cur {
        if let Some((_, p)) = prev.iter().find(|(n, _)| n == name) {
            for (i, f) in fields.iter().enumerate() {
                sums[i] = sums[i].saturating_add(increase(stats, f(p), f(c)));
            }
        }
    }
    sums
}

fn net_values(
    stats: &mut NormalizeStats,
    prev: &[(String, NetCounters)],
    cur: &[(String, NetCounters)],
    dt: f64,
) -> Vec<(Metric, Option<f64>)> {
    let s = sum_devices(
        stats,
        prev,
        cur,
        &[
            |c| c.rx_bytes,
            |c| c.tx_bytes,
            |c| c.rx_packets,
            |c| c.tx_packets,
            |c| c.errors,
            |c| c.drops,
        ],
    );
    vec![
        (Metric::NetRxBytesPerSec, Some(s[0] as f64 / dt)),
        (Metric::NetTxBytesPerSec, Some(s[1] as f64 / dt)),
        (Metric::NetRxPacketsPerSec, Some(s[2] as f64 / dt)),
        (Metric::NetTxPacketsPerSec, Some(s[3] as f64 / dt)),
        (Metric::NetErrorsPerSec, Some(s[4] as f64 / dt)),
        (Metric::NetDropsPerSec, Some(s[5] as f64 / dt)),
    ]
}

fn psi_ratio(
    stats: &mut NormalizeStats,
    prev: Option<PsiTotals>,
    cur: Option<PsiTotals>,
    full: bool,
    dt: f64,
) -> Option<f64> {
    let (p, c) = (prev?, cur?);
    let (p, c) = if full {
        (p.full_us?, c.full_us?)
    } else {
        (p.some_us, c.some_us)
    };
    Some((increase(stats, p, c) as f64 / (dt * 1e6)).clamp(0.0, 1.0))
}

fn pressure_values(
    stats: &mut NormalizeStats,
    prev: [Option<PsiTotals>; 3],
    cur: [Option<PsiTotals>; 3],
    dt: f64,
) -> Vec<(Metric, Option<f64>)> {
    vec![
        (
            Metric::PsiCpuSomeRatio,
            psi_ratio(stats, prev[0], cur[0], false, dt),
        ),
        (
            Metric::PsiMemorySomeRatio,
            psi_ratio(stats, prev[1], cur[1], false, dt),
        ),
        (
            Metric::PsiMemoryFullRatio,
            psi_ratio(stats, prev[1], cur[1], true, dt),
        ),
        (
            Metric::PsiIoSomeRatio,
            psi_ratio(stats, prev[2], cur[2], false, dt),
        ),
        (
            Metric::PsiIoFullRatio,
            psi_ratio(stats, prev[2], cur[2], true, dt),
        ),
    ]
}

impl Normalizer {
    /// A normalizer for records of `node_name`.
    pub fn new(node_name: String) -> Self {
        Normalizer {
            node_name,
            prev_node: None,
            prev_pods: HashMap::new(),
            ids: IdGen::new(),
            stats: NormalizeStats::default(),
        }
    }

    /// What it has had to work around so far.
    pub fn stats(&self) -> NormalizeStats {
        self.stats
    }

    /// Subjects with a previous reading held (the node plus live pods).
    pub fn series_count(&self) -> usize {
        self.prev_pods.len() + usize::from(self.prev_node.is_some())
    }

    /// Turns a snapshot into records, using the previous one for rates. The first snapshot of a
    /// subject yields only what needs no previous reading.
    pub fn normalize(&mut self, snap: Snapshot, pods: &PodDirectory) -> Vec<Record> {
        let mut out = Vec::with_capacity(8 + snap.pods.len() * 5);
        let mut b = Builder {
            out: &mut out,
            ids: &mut self.ids,
            stats: &mut self.stats,
            node: &self.node_name,
            ts_ms: snap.ts_ms,
        };
        let prev_node = self.prev_node.take();
        match prev_node {
            Some((t, ref prev)) if snap.mono_secs - t > 0.0 => {
                node_records(&mut b, prev, &snap.node, snap.mono_secs - t);
            }
            Some(_) => b.stats.zero_elapsed += 1,
            None => node_records_first(&mut b, &snap.node),
        }
        self.prev_node = Some((snap.mono_secs, snap.node));

        let mut next_pods = HashMap::with_capacity(snap.pods.len());
        for pod in snap.pods {
            let info = pods.get(&pod.cgroup.uid);
            let prev = self.prev_pods.remove(&pod.cgroup.uid);
            let restarts_total = info.map(|i| i.restarts_total);
            pod_records(&mut b, &pod, info, prev.as_ref(), snap.mono_secs);
            next_pods.insert(
                pod.cgroup.uid,
                PodPrev {
                    mono_secs: snap.mono_secs,
                    sample: pod.sample,
                    net: pod.net,
                    restarts_total,
                },
            );
        }
        // Whatever was not seen this cycle is gone.
        self.prev_pods = next_pods;
        out
    }
}

fn node_records_first(b: &mut Builder<'_>, cur: &NodeSnapshot) {
    let subject = Subject::Node;
    b.emit(&subject, Family::Memory, node_memory(cur));
}

fn node_memory(cur: &NodeSnapshot) -> Vec<(Metric, Option<f64>)> {
    let mem = cur.mem;
    vec![
        (
            Metric::MemoryUsedBytes,
            mem.map(|m| m.total.saturating_sub(m.available) as f64),
        ),
        (
            Metric::MemoryAvailableRatio,
            mem.and_then(|m| ratio(m.available, m.total)),
        ),
        (
            Metric::MemorySwapUsedBytes,
            mem.map(|m| m.swap_total.saturating_sub(m.swap_free) as f64),
        ),
    ]
}

fn node_records(b: &mut Builder<'_>, prev: &NodeSnapshot, cur: &NodeSnapshot, dt: f64) {
    let subject = Subject::Node;
    let mut cpu = vec![(Metric::CpuLoad1, cur.load1)];
    if let (Some(p), Some(c)) = (&prev.stat, &cur.stat) {
        let s = &mut *b.stats;
        let total = increase(s, p.total.total(), c.total.total());
        let part = |s: &mut NormalizeStats, f: fn(&crate::collect::procfs::CpuTicks) -> u64| {
            ratio(increase(s, f(&p.total), f(&c.total)), total)
        };
        let busy = part(s, |t| t.busy());
        cpu.extend([
            (
                Metric::CpuUsageCores,
                busy.map(|r| r * c.per_cpu.len().max(1) as f64),
            ),
            (Metric::CpuUserRatio, part(s, |t| t.user)),
            (Metric::CpuSystemRatio, part(s, |t| t.system)),
            (Metric::CpuIowaitRatio, part(s, |t| t.iowait)),
            (Metric::CpuStealRatio, part(s, |t| t.steal)),
            (Metric::CpuProcsRunning, Some(c.procs_running as f64)),
            (Metric::CpuProcsBlocked, Some(c.procs_blocked as f64)),
            (
                Metric::CpuContextSwitchesPerSec,
                Some(increase(s, p.ctxt, c.ctxt) as f64 / dt),
            ),
        ]);
        if p.per_cpu.len() == c.per_cpu.len() {
            let max_core = p
                .per_cpu
                .iter()
                .zip(&c.per_cpu)
                .filter_map(|(p, c)| {
                    ratio(
                        increase(s, p.busy(), c.busy()),
                        increase(s, p.total(), c.total()),
                    )
                })
                .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
            cpu.push((Metric::CpuMaxCoreBusyRatio, max_core));
        }
    }
    b.emit(&subject, Family::Cpu, cpu);
    b.emit(&subject, Family::Memory, node_memory(cur));

    let mut traffic = Vec::new();
    if let (Some(p), Some(c)) = (&prev.net, &cur.net) {
        traffic.extend(net_values(b.stats, p, c, dt));
    }
    if let (Some(p), Some(c)) = (&prev.disks, &cur.disks) {
        let s = sum_devices(
            b.stats,
            p,
            c,
            &[|d: &DiskCounters| d.sectors_read, |d| d.sectors_written],
        );
        let max_util = c
            .iter()
            .filter_map(|(n, c)| {
                let (_, p) = p.iter().find(|(pn, _)| pn == n)?;
                Some((increase(b.stats, p.io_ms, c.io_ms) as f64 / (dt * 1000.0)).clamp(0.0, 1.0))
            })
            .fold(0.0f64, f64::max);
        traffic.extend([
            (Metric::DiskReadBytesPerSec, Some(s[0] as f64 * 512.0 / dt)),
            (Metric::DiskWriteBytesPerSec, Some(s[1] as f64 * 512.0 / dt)),
            (Metric::DiskMaxUtilRatio, Some(max_util)),
        ]);
    }
    b.emit(&subject, Family::Traffic, traffic);

    let pressure = pressure_values(
        b.stats,
        [prev.psi_cpu, prev.psi_memory, prev.psi_io],
        [cur.psi_cpu, cur.psi_memory, cur.psi_io],
        dt,
    );
    b.emit(&subject, Family::Pressure, pressure);
}

fn pod_subject(pod: &PodSnapshot, info: Option<&PodInfo>) -> Subject {
    Subject::Pod(PodRef {
        uid: pod.cgroup.uid.clone(),
        namespace: info.map(|i| i.namespace.clone()),
        name: info.map(|i| i.name.clone()),
        owner: info.and_then(|i| i.owner.clone()),
        qos: Some(info.and_then(|i| i.qos).unwrap_or(pod.cgroup.qos)),
    })
}

fn pod_records(
    b: &mut Builder<'_>,
    pod: &PodSnapshot,
    info: Option<&PodInfo>,
    prev: Option<&PodPrev>,
    now: f64,
) {
    let subject = pod_subject(pod, info);
    let c = &pod.sample;
    let dt = prev.map(|p| now - p.mono_secs).filter(|&dt| dt > 0.0);

    let limit = c.memory_limit;
    let ws = c.working_set();
    let mut memory = vec![
        (
            Metric::MemoryCurrentBytes,
            c.memory_current.map(|v| v as f64),
        ),
        (Metric::MemoryWorkingSetBytes, ws.map(|v| v as f64)),
        (Metric::MemoryLimitBytes, limit.map(|v| v as f64)),
        (
            Metric::MemoryLimitUsageRatio,
            match (ws, limit) {
                (Some(w), Some(l)) if l > 0 => Some(w as f64 / l as f64),
                _ => None,
            },
        ),
    ];
    let mut cpu = vec![(Metric::CpuLimitCores, c.cpu_limit_cores)];

    if let (Some(p), Some(dt)) = (prev, dt) {
        let s = &mut *b.stats;
        let p_s = &p.sample;
        memory.push((
            Metric::MemoryOomKills,
            opt_increase(s, p_s.oom_kills, c.oom_kills).map(|v| v as f64),
        ));
        let periods = opt_increase(s, p_s.nr_periods, c.nr_periods);
        let throttled = opt_increase(s, p_s.nr_throttled, c.nr_throttled);
        cpu.extend([
            (
                Metric::CpuUsageCores,
                opt_increase(s, p_s.cpu_usage_ns, c.cpu_usage_ns).map(|ns| ns as f64 / 1e9 / dt),
            ),
            (
                Metric::CpuThrottledRatio,
                // No CFS period elapsed (no quota, or idle): nothing could be throttled.
                match (throttled, periods) {
                    (Some(t), Some(p)) => Some(ratio(t, p).unwrap_or(0.0)),
                    _ => None,
                },
            ),
            (
                Metric::CpuThrottledSecsPerSec,
                opt_increase(s, p_s.throttled_ns, c.throttled_ns).map(|ns| ns as f64 / 1e9 / dt),
            ),
        ]);
        if let (Some(pn), Some(cn)) = (&p.net, &pod.net) {
            let traffic = net_values(s, pn, cn, dt);
            b.emit(&subject, Family::Traffic, traffic);
        }
        let pressure = pressure_values(
            b.stats,
            [p_s.psi_cpu, p_s.psi_memory, p_s.psi_io],
            [c.psi_cpu, c.psi_memory, c.psi_io],
            dt,
        );
        b.emit(&subject, Family::Pressure, pressure);
    }
    b.emit(&subject, Family::Cpu, cpu);
    b.emit(&subject, Family::Memory, memory);

    if let Some(i) = info {
        let delta = prev
            .and_then(|p| p.restarts_total)
            .map(|p| i.restarts_total.saturating_sub(p) as f64);
        let restarts = vec![
            (Metric::RestartsTotal, Some(i.restarts_total as f64)),
            (Metric::RestartsDelta, delta),
            (
                Metric::ContainersNotReady,
                Some(i.containers_not_ready as f64),
            ),
            (
                Metric::LastTerminationOomKilled,
                Some(f64::from(u8::from(i.last_termination_oom_killed))),
            ),
            (
                Metric::LastTerminationError,
                Some(f64::from(u8::from(i.last_termination_error))),
            ),
        ];
        b.emit(&subject, Family::Restarts, restarts);
    }
}
