//! The agent's own health, in Prometheus form: `selfheal_agent_<name>_<unit>[_total]`.
//!
//! [`AgentMetrics`] owns the registry and every metric; stages update it once per cycle, never
//! per record, and [`crate::server`] renders it on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

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
