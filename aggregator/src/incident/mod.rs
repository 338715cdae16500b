//! The incident pipeline: anomalies from many pods and nodes become a few incidents, with
//! history. It is a pipeline [`Handler`](crate::pipeline::Handler) of its own beside the lake
//! writer ([`handler::IncidentHandler`], named `incidents`), reading the same records from either
//! source with its own reader and checkpoints.
//!
//! * [`key`]: the grouping key (`group_by`, Alertmanager-style).
//! * [`dedup`]: the bounded seen-id set; a redelivered record never counts twice.
//! * [`subjects`]: the pods and nodes seen recently, for severity's breadth.
//! * [`mute`]: silences and inhibition rules.
//! * [`engine`]: the rules (grouping, figures, severity, Alertmanager timing, lifecycle), pure:
//!   records and `now` in, an [`engine::Update`] out.
//! * [`handler`]: the engine behind a lock, its store ([`crate::store`]), the timer task and
//!   the metrics.
//!
//! The types (incident, state, severity, events, silences, matchers) are in
//! [`selfheal_core::incident`], shared with the CLI and, later, healing.

pub mod config;
pub mod dedup;
pub mod engine;
pub mod handler;
pub mod key;
pub mod mute;
pub mod subjects;

#[cfg(test)]
pub(crate) mod testkit;

pub use engine::{Engine, Snapshot, Update};
pub use handler::{IncidentHandler, IncidentMetrics, Incidents, start};
pub use key::GroupLabel;

/// The incident handler's name: its checkpoints, dead letters and metrics' `handler` label.
pub const HANDLER_NAME: &str = "incidents";

use selfheal_core::incident::InhibitRule;

/// Validated incident settings (see `[incidents]` in [`crate::config`]).
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentSettings {
    /// Labels anomalies are grouped by (pod-level anomalies; node-level ones always by node
    /// and family).
    pub group_by: Vec<GroupLabel>,
    /// Wait before the first notification of a new incident, ms (Alertmanager default 30 s).
    pub group_wait_ms: i64,
    /// Wait between flushes of an incident, ms (default 5 min).
    pub group_interval_ms: i64,
    /// Wait before repeating an unchanged notification, ms (default 4 h), a multiple of
    /// `group_interval_ms` (rounded up, as Alertmanager does).
    pub repeat_interval_ms: i64,
    /// An incident with no new anomaly for this long resolves, ms (default 5 min).
    pub resolve_timeout_ms: i64,
    /// How long record ids are remembered for deduplication, ms (default 1 h).
    pub dedup_window_ms: i64,
    /// Bucket width of the seen-id set, ms (default 1 min).
    pub dedup_bucket_ms: i64,
    /// Most ids remembered (default 4,000,000, about 160 MiB at worst).
    pub dedup_max_ids: usize,
    /// How long a pod or node seen in a record counts as present, ms (default 10 min).
    pub subjects_window_ms: i64,
    /// Most subjects tracked.
    pub subjects_max: usize,
    /// Inhibition rules (default: node incidents inhibit pod incidents on their nodes).
    pub inhibit_rules: Vec<InhibitRule>,
    /// Resolved incidents, their events and expired silences are kept this long, ms (30 days).
    pub retention_ms: i64,
    /// How often the timers run, ms (default 1 s).
    pub tick_ms: i64,
}

impl Default for IncidentSettings {
    fn default() -> Self {
        const S: i64 = 1000;
        IncidentSettings {
            group_by: key::default_group_by(),
            group_wait_ms: 30 * S,
            group_interval_ms: 300 * S,
            repeat_interval_ms: 4 * 3600 * S,
            resolve_timeout_ms: 300 * S,
            dedup_window_ms: 3600 * S,
            dedup_bucket_ms: 60 * S,
            dedup_max_ids: 4_000_000,
            subjects_window_ms: 600 * S,
            subjects_max: 200_000,
            inhibit_rules: vec![InhibitRule::node_inhibits_pods()],
            retention_ms: 30 * 86_400 * S,
            tick_ms: S,
        }
    }
}

#[cfg(test)]
mod tests;
