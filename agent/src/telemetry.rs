//! The agent's own health, in Prometheus form: `selfheal_agent_<name>_<unit>[_total]`.
//!
//! [`AgentMetrics`] owns the registry, the build info and the loop's own metrics (cycles, the
//! last cycle's time); every stage registers its own metrics in [`AgentMetrics::registry_mut`]
//! when it is built (`collect`, `normalize`, pod identity, `detect`, the model poller, the
//! sampler, the spool and the forwarder), updates them once per cycle or reads its atomics at
//! scrape time, and the runtime's admin server renders the whole on `/metrics`. [`counter`] and [`gauge`]
//! encode one scrape-time value, for the stages whose counters are plain atomics.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// The registry, and the metrics of the loop itself.
#[derive(Debug)]
pub struct AgentMetrics {
    registry: Registry,
    /// Collection cycles completed.
    pub cycles: Counter,
    /// Unix time of the last completed cycle, seconds.
    pub last_cycle_timestamp: Gauge<f64, AtomicU64>,
}

impl AgentMetrics {
    /// A registry under `selfheal_agent_` holding the build info and the loop's metrics; the
    /// stages add theirs through [`AgentMetrics::registry_mut`].
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("selfheal_agent");
        let cycles = Counter::default();
        let last_cycle_timestamp = Gauge::default();
        registry.register(
            "build",
            "Agent build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register("cycles", "Collection cycles completed", cycles.clone());
        registry.register(
            "last_cycle_timestamp_seconds",
            "Unix time of the last completed cycle",
            last_cycle_timestamp.clone(),
        );
        AgentMetrics {
            registry,
            cycles,
            last_cycle_timestamp,
        }
    }

    /// The registry, for stages that register their own metrics at start.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Counts a completed cycle and stamps its time.
    pub fn cycle_done(&self) {
        self.cycles.inc();
        self.last_cycle_timestamp.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
    }

    /// Takes the registry, filled by every stage, for the admin server to serve; the loop keeps
    /// its own metrics (they share their values with the registered copies).
    pub fn take_registry(&mut self) -> Registry {
        std::mem::take(&mut self.registry)
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Encodes one counter read at scrape time.
pub fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

/// Encodes one gauge read at scrape time.
pub fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: N,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}
