//! The agent's own health, in Prometheus form: `selfheal_agent_<name>_<unit>[_total]`.
//!
//! [`AgentMetrics`] owns the registry and every metric; stages update it once per cycle, never
//! per record, and [`crate::server`] renders it on `/metrics`. [`ForwardCollector`] adds the
//! spool's, the forwarder's and the sampler's numbers, read at scrape time.

use crate::forward::ForwardStats;
use crate::sample::SamplerStats;
use crate::spool::{DropReason, Lane, SpoolStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Labels of `selfheal_agent_collect_errors_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `read` or `parse`.
    pub kind: &'static str,
    /// File name (`stat`, `cpu.stat`, ...): bounded, unlike full paths.
    pub file: String,
}

/// Labels of `selfheal_agent_records_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabels {
    /// Metric family.
    pub family: &'static str,
}

/// Labels of `selfheal_agent_model_loads_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLoadLabels {
    /// Metric family of the model.
    pub family: &'static str,
    /// `loaded` or `refused`.
    pub result: &'static str,
}

/// Labels of `selfheal_agent_model_info`: one series per family, set to 1 for the version in use.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelInfoLabels {
    /// Metric family of the model.
    pub family: &'static str,
    /// `manifest.version`.
    pub version: String,
}

/// Every metric the agent exposes.
#[derive(Debug)]
pub struct AgentMetrics {
    registry: Registry,
    /// Collection cycles completed.
    pub cycles: Counter,
    /// Wall time of collect + normalize, seconds.
    pub cycle_duration: Histogram,
    /// Files that could not be read or parsed, by kind and file name.
    pub collect_errors: Family<ErrorLabels, Counter>,
    /// Records produced, by family.
    pub records: Family<FamilyLabels, Counter>,
    /// Pod cgroups found in the last cycle.
    pub pods: Gauge,
    /// Pods found in a cgroup but not (yet) known to the pod directory.
    pub pods_unresolved: Gauge,
    /// Pods that disappeared while being read.
    pub pods_vanished: Counter,
    /// Subjects with state held between cycles.
    pub series: Gauge,
    /// Counters that went backwards (restarted processes, recreated cgroups).
    pub counter_resets: Counter,
    /// Values dropped for not being finite.
    pub non_finite_values: Counter,
    /// Failed pod lists (API server or kubelet).
    pub pod_list_errors: Counter,
    /// Failed or broken pod watches.
    pub pod_watch_errors: Counter,
    /// Full re-lists of pods.
    pub pod_relists: Counter,
    /// Unix time of the last completed cycle, seconds.
    pub last_cycle_timestamp: Gauge<f64, AtomicU64>,
    /// Anomalies raised, by family.
    pub anomalies: Family<FamilyLabels, Counter>,
    /// Model directories loaded or refused, by family.
    pub model_loads: Family<ModelLoadLabels, Counter>,
    /// The model version in use per family (value 1).
    pub model_info: Family<ModelInfoLabels, Gauge>,
    /// Failed reads of a remote model store (S3 unreachable, denied, a download cut short).
    pub model_source_errors: Counter,
    /// Batches that failed to score, by family.
    pub score_errors: Family<FamilyLabels, Counter>,
    /// Wall time of the score stage of one cycle, seconds.
    pub score_duration: Histogram,
}

impl AgentMetrics {
    /// Registers every metric under `selfheal_agent_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("selfheal_agent");
        let m = AgentMetrics {
            cycles: Counter::default(),
            cycle_duration: Histogram::new([
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
            ]),
            collect_errors: Family::default(),
            records: Family::default(),
            pods: Gauge::default(),
            pods_unresolved: Gauge::default(),
            pods_vanished: Counter::default(),
            series: Gauge::default(),
            counter_resets: Counter::default(),
            non_finite_values: Counter::default(),
            last_cycle_timestamp: Gauge::default(),
            pod_list_errors: Counter::default(),
            pod_watch_errors: Counter::default(),
            pod_relists: Counter::default(),
            anomalies: Family::default(),
            model_loads: Family::default(),
            model_info: Family::default(),
            model_source_errors: Counter::default(),
            score_errors: Family::default(),
            score_duration: Histogram::new([
                0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
            ]),
            registry: Registry::default(),
        };
        registry.register(
            "build",
            "Agent build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register("cycles", "Collection cycles completed", m.cycles.clone());
        registry.register(
            "cycle_duration_seconds",
            "Wall time of one collect + normalize cycle",
            m.cycle_duration.clone(),
        );
        registry.register(
            "collect_errors",
            "Files that could not be read or parsed",
            m.collect_errors.clone(),
        );
        registry.register("records", "Records produced", m.records.clone());
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
        registry.register(
            "pod_list_errors",
            "Failed pod lists from the API server or kubelet",
            m.pod_list_errors.clone(),
        );
        registry.register(
            "pod_watch_errors",
            "Failed or broken pod watches",
            m.pod_watch_errors.clone(),
        );
        registry.register(
            "pod_relists",
            "Full re-lists of pods",
            m.pod_relists.clone(),
        );
        registry.register(
            "last_cycle_timestamp_seconds",
            "Unix time of the last completed cycle",
            m.last_cycle_timestamp.clone(),
        );
        registry.register("anomalies", "Anomalies raised", m.anomalies.clone());
        registry.register(
            "model_loads",
            "Model directories loaded or refused",
            m.model_loads.clone(),
        );
        registry.register(
            "model_info",
            "Model version in use per family (value 1)",
            m.model_info.clone(),
        );
        registry.register(
            "model_source_errors",
            "Failed reads of a remote model store; the models in use stay",
            m.model_source_errors.clone(),
        );
        registry.register(
            "score_errors",
            "Batches that could not be scored",
            m.score_errors.clone(),
        );
        registry.register(
            "score_duration_seconds",
            "Wall time of the score stage of one cycle",
            m.score_duration.clone(),
        );
        AgentMetrics { registry, ..m }
    }

    /// The registry, for stages that register their own metrics at start.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Renders the OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Labels of the per-lane spool metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LaneLabels {
    /// `anomaly` or `sample`.
    lane: &'static str,
}

/// Labels of `selfheal_agent_spool_dropped_records_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    /// A [`DropReason`] label.
    reason: &'static str,
}

/// The forwarding path's metrics, read at scrape time from the atomics the spool and forwarder
/// keep (so `/metrics` is exact even between cycles and while the loop waits), plus the
/// sampler's last state, which the loop stores once per cycle.
#[derive(Debug)]
pub struct ForwardCollector {
    /// Spool counters, when a spool is open.
    pub spool: Option<Arc<SpoolStats>>,
    /// Forwarder counters, when a forwarder runs.
    pub forward: Option<Arc<ForwardStats>>,
    /// The sampler's state after the last cycle.
    pub sampler: Arc<Mutex<SamplerStats>>,
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: N,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for ForwardCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = *self.sampler.lock().unwrap_or_else(|p| p.into_inner());
        gauge(
            &mut enc,
            "sample_inclusion_probability",
            "Inclusion probability of normal series in the current sampling block",
            s.probability,
        )?;
        gauge(
            &mut enc,
            "sample_budget_bytes_per_hour",
            "Configured forwarding budget",
            s.budget_bytes_per_hour,
        )?;
        gauge(
            &mut enc,
            "sample_offered_bytes_per_hour",
            "Moving average of the bytes per hour all normal records would take",
            s.offered_bytes_per_hour,
        )?;
        gauge(
            &mut enc,
            "sample_anomaly_bytes_per_hour",
            "Moving average of the bytes per hour anomalies take",
            s.anomaly_bytes_per_hour,
        )?;
        let counters = [
            (
                "sample_offered_records",
                "Normal records offered to the sampler",
                s.offered_records,
            ),
            (
                "sample_offered_bytes",
                "Wire bytes of the normal records offered",
                s.offered_bytes,
            ),
            (
                "sample_selected_records",
                "Normal records selected for forwarding",
                s.selected_records,
            ),
            (
                "sample_selected_bytes",
                "Wire bytes of the normal records selected",
                s.selected_bytes,
            ),
            (
                "sample_anomaly_records",
                "Anomalies selected for forwarding (all of them)",
                s.anomaly_records,
            ),
            (
                "sample_anomaly_bytes",
                "Wire bytes of the anomalies selected",
                s.anomaly_bytes,
            ),
        ];
        for (name, help, v) in counters {
            counter(&mut enc, name, help, v)?;
        }
        if let Some(sp) = &self.spool {
            for (name, help, f) in [
                (
                    "spool_depth_records",
                    "Records queued in the spool and not yet acknowledged",
                    SpoolStats::depth_records_in as fn(&SpoolStats, Lane) -> u64,
                ),
                (
                    "spool_depth_bytes",
                    "Bytes of spool segment files",
                    SpoolStats::depth_bytes_in,
                ),
            ] {
                let g = ConstGauge::new(0u64);
                let mut m = enc.encode_descriptor(name, help, None, g.metric_type())?;
                for lane in Lane::ALL {
                    ConstGauge::new(f(sp, lane)).encode(m.encode_family(&LaneLabels {
                        lane: lane.as_str(),
                    })?)?;
                }
            }
            let c = ConstCounter::new(0u64);
            let mut m = enc.encode_descriptor(
                "spool_appended_records",
                "Records written to the spool",
                None,
                c.metric_type(),
            )?;
            for lane in Lane::ALL {
                ConstCounter::new(sp.appended(lane)).encode(m.encode_family(&LaneLabels {
                    lane: lane.as_str(),
                })?)?;
            }
            let mut m = enc.encode_descriptor(
                "spool_dropped_records",
                "Records lost, by reason",
                None,
                c.metric_type(),
            )?;
            for reason in DropReason::ALL {
                ConstCounter::new(sp.dropped(reason)).encode(m.encode_family(
                    &ReasonLabels {
                        reason: reason.as_str(),
                    },
                )?)?;
            }
            let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            counter(
                &mut enc,
                "spool_acked_records",
                "Records the sink accepted and the spool released",
                load(&sp.acked_records),
            )?;
            counter(
                &mut enc,
                "spool_corrupt_regions",
                "Corrupt or torn spool regions skipped",
                load(&sp.corrupt_regions),
            )?;
            counter(
                &mut enc,
                "spool_io_errors",
                "Spool write, fsync or checkpoint errors",
                load(&sp.io_errors),
            )?;
        }
        if let Some(f) = &self.forward {
            let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            let counters = [
                (
                    "forward_sent_records",
                    "Records the sink accepted",
                    load(&f.records_sent),
                ),
                (
                    "forward_sent_bytes",
                    "Wire bytes (data plus partition keys) the sink accepted",
                    load(&f.bytes_sent),
                ),
                (
                    "forward_retried_records",
                    "Records sent again after a refusal or failed call",
                    load(&f.records_retried),
                ),
                (
                    "forward_failed_records",
                    "Record refusals by the sink (each failed retry counts)",
                    load(&f.records_failed),
                ),
                (
                    "forward_rejected_records",
                    "Records the sink refused for good",
                    load(&f.records_rejected),
                ),
                ("forward_calls", "Calls made to the sink", load(&f.calls)),
                (
                    "forward_call_errors",
                    "Sink calls that failed as a whole",
                    load(&f.call_errors),
                ),
                (
                    "forward_throttled",
                    "Calls or records refused for throttling",
                    load(&f.throttled),
                ),
            ];
            for (name, help, v) in counters {
                counter(&mut enc, name, help, v)?;
            }
        }
        Ok(())
    }
}
