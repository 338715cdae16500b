//! Incidents: what many anomalies from many pods and nodes become, and everything an incident
//! carries through its life (figures, severity, mutes, the lifecycle and its timeline). Types and
//! pure rules only, no I/O and no clock: the aggregator's engine (`aggregator/src/incident/`)
//! feeds them records and the time, its store persists them, and the healing code drives the
//! `acting` and `verifying` states through [`Incident::transition`].
//!
//! * Lifecycle ([`State`]): `open → acting → verifying → resolved | escalated`, plus
//!   `acknowledged` by a person. [`State::can_become`] is the one table of allowed moves; every
//!   move is an [`Event`] with its time, cause and [`Actor`].
//! * Severity ([`assess_severity`]): a documented weighted sum of score excess, breadth and
//!   duration, mapped to `info | warning | critical`.
//! * Mutes: [`Silence`]s (Alertmanager-style [`Matcher`]s with a start, an end, an author and a
//!   comment) and [`InhibitRule`]s. A muted incident is still recorded and counted; it carries
//!   [`MutedBy`] so "why is this quiet?" always has an answer.

use crate::family::Family;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// The labels an incident is matched on (silences, inhibition, API filters): `scope` (`node` or
/// `pod`), `family`, `namespace`, `workload` (`<kind>/<name>`), `node` (node-level incidents).
pub type Labels = BTreeMap<String, String>;

/// Most distinct pods (and, separately, nodes) an incident lists by name; beyond it only the
/// count grows, so one huge incident cannot grow without bound.
pub const MAX_LISTED_SUBJECTS: usize = 1024;
/// Most points of an incident's score series; older points are merged pairwise (keeping the
/// larger score) when it is full, so the sparkline always spans the whole incident.
pub const MAX_SERIES_POINTS: usize = 120;
/// Most model versions listed per incident.
pub const MAX_MODEL_VERSIONS: usize = 16;
/// Most distinct feature names tracked per incident (the top ones are shown).
pub const MAX_TRACKED_FEATURES: usize = 64;
/// Feature names shown as an incident's top features.
pub const TOP_FEATURES: usize = 5;

/// An incident id: twelve hex digits of the opening time (unix ms) then eight of the grouping
/// key's hash, so ids sort by opening time and the same key opened at the same millisecond
/// (a replay) names the same incident.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IncidentId(pub String);

impl IncidentId {
    /// The id of the incident of `key` opened at `opened_at_ms`.
    pub fn new(opened_at_ms: i64, key: &str) -> IncidentId {
        // FNV-1a: stable across builds and platforms, unlike std's randomly seeded hasher.
        let mut h: u32 = 0x811c_9dc5;
        for b in key.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        IncidentId(format!("{:012x}{h:08x}", opened_at_ms.max(0)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IncidentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether an incident is about a node or about pods of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Node-level anomalies (the node's own metrics).
    Node,
    /// Pod-level anomalies.
    Pod,
}

impl Scope {
    /// `node` or `pod`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Node => "node",
            Scope::Pod => "pod",
        }
    }
}

/// Where an incident is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Anomalies are arriving; nobody has acted yet.
    Open,
    /// A person has taken it.
    Acknowledged,
    /// Healing is applying an action.
    Acting,
    /// An action was applied; its effect is being verified.
    Verifying,
    /// Over: anomalies stopped (resolve timeout), an action was verified, or a person said so.
    Resolved,
    /// Healing gave up or was not allowed to act: a person must look.
    Escalated,
}

impl State {
    /// Every state, in lifecycle order.
    pub const ALL: [State; 6] = [
        State::Open,
        State::Acknowledged,
        State::Acting,
        State::Verifying,
        State::Resolved,
        State::Escalated,
    ];

    /// The state's name in JSON, the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Open => "open",
            State::Acknowledged => "acknowledged",
            State::Acting => "acting",
            State::Verifying => "verifying",
            State::Resolved => "resolved",
            State::Escalated => "escalated",
        }
    }

    /// Every state but `resolved`: new anomalies of the key join the incident.
    pub fn is_active(self) -> bool {
        self != State::Resolved
    }

    /// The lifecycle table. Resolved is final (new anomalies open a new incident); a person may
    /// acknowledge an open or escalated incident and resolve any active one; healing moves
    /// open/acknowledged → acting → verifying → resolved, or escalates from any of them (a
    /// failed verification, a refused action, an escalate-only playbook).
    pub fn can_become(self, to: State) -> bool {
        use State::*;
        matches!(
            (self, to),
            (Open | Escalated, Acknowledged)
                | (Open | Acknowledged, Acting)
                | (Acting, Verifying)
                | (Verifying, Acting)
                | (
                    Open | Acknowledged | Acting | Verifying | Escalated,
                    Resolved
                )
                | (Open | Acknowledged | Acting | Verifying, Escalated)
        )
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not a [`State`], [`Severity`] or [`MatchOp`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?} (expected one of {expected})")]
pub struct UnknownName {
    /// What was being parsed.
    pub what: &'static str,
    /// The text given.
    pub value: String,
    /// The accepted names.
    pub expected: &'static str,
}

impl FromStr for State {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        State::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownName {
                what: "state",
                value: s.to_owned(),
                expected: "open, acknowledged, acting, verifying, resolved, escalated",
            })
    }
}

/// How bad an incident is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth a look.
    Info,
    /// Someone should act soon.
    Warning,
    /// Act now.
    Critical,
}

impl Severity {
    /// Every level, mildest first.
    pub const ALL: [Severity; 3] = [Severity::Info, Severity::Warning, Severity::Critical];

    /// The level's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Severity {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Severity::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownName {
                what: "severity",
                value: s.to_owned(),
                expected: "info, warning, critical",
            })
    }
}

/// What [`assess_severity`] weighs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeverityInputs {
    /// The incident's peak score and the threshold it was compared with.
    pub peak_score: f64,
    /// The threshold of the peak.
    pub peak_threshold: f64,
    /// Distinct subjects affected (pods for a pod incident, nodes for a node incident).
    pub affected: u64,
    /// Subjects of the same kind seen recently in samples (the workload's pods, the fleet's
    /// nodes); 0 when nothing was sampled.
    pub known: u64,
    /// Milliseconds from the first to the last anomaly.
    pub duration_ms: i64,
}

/// Weight of the score excess in the severity score.
pub const SEVERITY_WEIGHT_EXCESS: f64 = 0.4;
/// Weight of breadth.
pub const SEVERITY_WEIGHT_BREADTH: f64 = 0.4;
/// Weight of duration.
pub const SEVERITY_WEIGHT_DURATION: f64 = 0.2;
/// Relative excess over the threshold at which the excess term is full (50 % over).
pub const SEVERITY_FULL_EXCESS: f64 = 0.5;
/// Duration at which the duration term is full (15 minutes).
pub const SEVERITY_FULL_DURATION_MS: i64 = 15 * 60 * 1000;
/// Severity score from which an incident is `warning`.
pub const SEVERITY_WARNING_AT: f64 = 0.4;
/// Severity score from which an incident is `critical`.
pub const SEVERITY_CRITICAL_AT: f64 = 0.7;

/// The severity formula:
///
/// ```text
/// excess   = clamp((peak - threshold) / max(|threshold|, 0.1) / 0.5, 0, 1)
/// breadth  = clamp(affected / max(known, affected), 0, 1)
/// duration = clamp((last - first) / 15 min, 0, 1)
/// s        = 0.4 excess + 0.4 breadth + 0.2 duration
/// level    = critical if s >= 0.7, warning if s >= 0.4, else info
/// ```
///
/// Excess is relative to the threshold (floored at 0.1 because a per-signal model's threshold is
/// about 0), so one scale fits every model. Breadth is the share of the workload's pods (or of
/// the fleet's nodes) affected; with no samples to say how many there are, the affected ones are
/// all that is known and breadth is 1. So: every pod of a workload far over its threshold for
/// minutes is critical; one pod of twenty, slightly over, briefly, is info.
pub fn assess_severity(i: SeverityInputs) -> (Severity, f64) {
    let excess = if i.peak_score.is_finite() && i.peak_threshold.is_finite() {
        ((i.peak_score - i.peak_threshold) / i.peak_threshold.abs().max(0.1) / SEVERITY_FULL_EXCESS)
            .clamp(0.0, 1.0)
    } else {
        0.0
    };
    let breadth = if i.affected == 0 {
        0.0
    } else {
        (i.affected as f64 / i.known.max(i.affected) as f64).clamp(0.0, 1.0)
    };
    let duration = (i.duration_ms.max(0) as f64 / SEVERITY_FULL_DURATION_MS as f64).clamp(0.0, 1.0);
    let s = SEVERITY_WEIGHT_EXCESS * excess
        + SEVERITY_WEIGHT_BREADTH * breadth
        + SEVERITY_WEIGHT_DURATION * duration;
    let level = if s >= SEVERITY_CRITICAL_AT {
        Severity::Critical
    } else if s >= SEVERITY_WARNING_AT {
        Severity::Warning
    } else {
        Severity::Info
    };
    (level, s)
}

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum Actor {
    /// The aggregator itself (anomalies, timers, mutes).
    System,
    /// The healing controller.
    Healer,
    /// A person, by the name they gave the API or CLI.
    Person(String),
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::System => f.write_str("system"),
            Actor::Healer => f.write_str("healer"),
            Actor::Person(p) => write!(f, "person:{p}"),
        }
    }
}

/// What muted an incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum MutedBy {
    /// A silence, by id.
    Silence {
        /// The silence's id.
        id: String,
    },
    /// An inhibition rule, by name, and the incident that inhibits this one.
    Inhibition {
        /// The rule's name.
        rule: String,
        /// The inhibiting (source) incident.
        by: IncidentId,
    },
}

impl fmt::Display for MutedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MutedBy::Silence { id } => write!(f, "silence {id}"),
            MutedBy::Inhibition { rule, by } => write!(f, "inhibition rule {rule} (by {by})"),
        }
    }
}

/// Why a notification was sent (the Alertmanager timing's three moments, plus resolution).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyReason {
    /// `group_wait` after the incident opened.
    Opened,
    /// A `group_interval` flush found the incident changed.
    Updated,
    /// `repeat_interval` passed without a change.
    Repeat,
    /// The incident resolved after it had been notified.
    Resolved,
}

/// What happened, in an [`Event`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum EventKind {
    /// The incident was opened by its first anomaly.
    Opened,
    /// New anomalies joined, from one incoming batch.
    Anomalies {
        /// How many (after deduplication).
        added: u64,
        /// Distinct pods affected so far.
        pods: u64,
        /// Distinct nodes affected so far.
        nodes: u64,
        /// The largest score among the new ones.
        peak_score: f64,
        /// Its threshold.
        threshold: f64,
    },
    /// A lifecycle move.
    StateChanged {
        /// Before.
        from: State,
        /// After.
        to: State,
    },
    /// Re-evaluation changed the level.
    SeverityChanged {
        /// Before.
        from: Severity,
        /// After.
        to: Severity,
        /// The new severity score.
        score: f64,
    },
    /// A silence or inhibition started muting it.
    Muted {
        /// What mutes it.
        by: MutedBy,
    },
    /// It is no longer muted (the silence expired, the inhibiting incident resolved).
    Unmuted {
        /// What had muted it.
        was: MutedBy,
    },
    /// A notification was due and sent.
    Notified {
        /// Which moment.
        reason: NotifyReason,
    },
    /// A notification was due but the incident is muted.
    NotificationSuppressed {
        /// Which moment.
        reason: NotifyReason,
        /// Why it was held back.
        by: MutedBy,
    },
    /// Healing decided what to do (the playbook and the decision, in words).
    HealDecided {
        /// The playbook (`scale_out`, `stabilize`, `rollout_restart`, `restart_once`,
        /// `escalate`).
        playbook: String,
        /// What it decided.
        decision: String,
    },
    /// A guardrail refused an action.
    HealRefused {
        /// Which guardrail (`cooldown`, `rate_global`, `blast_radius`, `maintenance`, ...).
        guardrail: String,
        /// Why.
        reason: String,
        /// When healing decides again, unix ms; `None`: it will not (the incident escalates).
        retry_at_ms: Option<i64>,
    },
    /// An action's intent was recorded (before it is sent): exactly what will be sent.
    ActionIntent {
        /// Its idempotency key, `<incident>/<step>`.
        request_id: String,
        /// The executor (`dry-run`, `kube`, `heal-api`).
        executor: String,
        /// Only recorded, never sent.
        dry_run: bool,
        /// The request.
        request: crate::action::ActionRequest,
    },
    /// The executor carried the action out (or recognised it as already applied).
    ActionApplied {
        /// Its idempotency key.
        request_id: String,
        /// What the executor reported.
        outcome: crate::action::ActionOutcome,
    },
    /// The executor failed.
    ActionFailed {
        /// Its idempotency key.
        request_id: String,
        /// The error and its class.
        error: crate::action::ActionError,
        /// When it is retried, unix ms; `None`: not retried.
        retry_at_ms: Option<i64>,
    },
    /// The verification window opened.
    VerificationStarted {
        /// The action verified.
        request_id: String,
        /// When the window closes, unix ms.
        until_ms: i64,
    },
    /// The verification ended.
    Verified {
        /// The action verified.
        request_id: String,
        /// Whether the workload's anomalies stopped.
        healed: bool,
        /// What was seen.
        detail: String,
    },
}

/// One entry of an incident's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The incident.
    pub incident: IncidentId,
    /// Position in the incident's timeline, from 0 (the store's key with `incident`).
    pub seq: u64,
    /// When, unix ms (aggregator clock).
    pub at_ms: i64,
    /// What.
    pub kind: EventKind,
    /// Why, in words.
    pub cause: String,
    /// Who.
    pub actor: Actor,
}

/// A score and the threshold it was compared with, at a record time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScorePoint {
    /// Record time, unix ms.
    pub ts_ms: i64,
    /// The score.
    pub score: f64,
    /// The threshold.
    pub threshold: f64,
}

/// A feature that contributed to an incident's anomalies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureWeight {
    /// The feature's name.
    pub name: String,
    /// In how many anomalies it was among the top features.
    pub count: u64,
    /// Its largest contribution.
    pub max_contribution: f64,
}

/// Notification bookkeeping for the Alertmanager timing.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NotifyState {
    /// When the next flush is due (`opened + group_wait`, then every `group_interval`), unix ms.
    pub next_flush_ms: i64,
    /// When the last notification went out; `None` before the first.
    pub last_notified_ms: Option<i64>,
    /// What the last notification said (pods, nodes, severity), to tell whether a flush has news.
    pub notified_pods: u64,
    /// Nodes at the last notification.
    pub notified_nodes: u64,
    /// Severity at the last notification.
    pub notified_severity: Option<Severity>,
    /// Notifications sent.
    pub sent: u64,
}

/// One incident: many anomalies of one grouping key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Its id.
    pub id: IncidentId,
    /// The grouping key, rendered (`family=cpu,namespace=shop,workload=Deployment/checkout`).
    pub key: String,
    /// Labels for matching and filtering.
    pub labels: Labels,
    /// Node or pod.
    pub scope: Scope,
    /// The family of its anomalies.
    pub family: Family,
    /// The workload identity of its first anomaly (`<ns>/<kind>/<name>` or `node/<node>`).
    pub workload_key: String,
    /// Lifecycle state.
    pub state: State,
    /// Severity level, re-evaluated as it grows.
    pub severity: Severity,
    /// The severity score behind the level (see [`assess_severity`]).
    pub severity_score: f64,
    /// When it was opened, unix ms (aggregator clock).
    pub opened_at_ms: i64,
    /// When it last changed, unix ms (aggregator clock).
    pub updated_at_ms: i64,
    /// When it resolved.
    pub resolved_at_ms: Option<i64>,
    /// When an anomaly of it last arrived (aggregator clock): the lease `resolve_timeout` runs
    /// from, as Alertmanager's `EndsAt` does for re-sent alerts.
    pub last_arrival_ms: i64,
    /// Earliest anomaly record time.
    pub first_seen_ms: i64,
    /// Latest anomaly record time.
    pub last_seen_ms: i64,
    /// Anomalies counted (each record id once).
    pub anomaly_count: u64,
    /// Distinct pods affected (exact up to [`MAX_LISTED_SUBJECTS`], then a floor).
    pub pod_count: u64,
    /// Distinct nodes affected.
    pub node_count: u64,
    /// Affected pods by name (`<ns>/<name>`, or the uid while unresolved), at most
    /// [`MAX_LISTED_SUBJECTS`].
    pub pods: BTreeSet<String>,
    /// Affected nodes, at most [`MAX_LISTED_SUBJECTS`].
    pub nodes: BTreeSet<String>,
    /// The highest score seen and its threshold.
    pub peak: ScorePoint,
    /// The latest score (by record time) and its threshold.
    pub latest: ScorePoint,
    /// Model versions that raised its anomalies.
    pub model_versions: BTreeSet<String>,
    /// Features seen among the anomalies' top features, most frequent first.
    pub features: Vec<FeatureWeight>,
    /// Score series for the sparkline, oldest first, at most [`MAX_SERIES_POINTS`].
    pub series: Vec<ScorePoint>,
    /// What mutes it, if anything.
    pub muted: Option<MutedBy>,
    /// Who acknowledged it.
    pub acknowledged_by: Option<String>,
    /// Alertmanager-timing state.
    pub notify: NotifyState,
    /// Seq of the next timeline event.
    pub next_event_seq: u64,
    /// Anomalies counted since the last `anomalies` timeline event: the timeline gets one such
    /// event when a new pod or node joins, or at most once a minute, not one per batch (an
    /// HTTP-fed incident would otherwise log one per agent per second).
    pub pending_anomalies: u64,
    /// When the last `anomalies` event was written.
    pub anomalies_event_at_ms: i64,
}

/// A move the lifecycle does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("incident {id} cannot go from {from} to {to}")]
pub struct TransitionError {
    /// The incident.
    pub id: IncidentId,
    /// Its state.
    pub from: State,
    /// The state asked for.
    pub to: State,
}

/// One anomaly as the incident sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation<'a> {
    /// Record time.
    pub ts_ms: i64,
    /// The pod (`<ns>/<name>` or uid), for pod-level anomalies.
    pub pod: Option<&'a str>,
    /// The node.
    pub node: &'a str,
    /// Score.
    pub score: f64,
    /// Threshold.
    pub threshold: f64,
    /// Model version.
    pub model_version: &'a str,
    /// Top features with contributions.
    pub top_features: &'a [(String, f64)],
}

impl Incident {
    /// A new open incident and its `opened` event.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        key: String,
        labels: Labels,
        scope: Scope,
        family: Family,
        workload_key: String,
        now_ms: i64,
        first_flush_ms: i64,
    ) -> (Incident, Event) {
        let id = IncidentId::new(now_ms, &key);
        // Placeholders until the first anomaly (documents are JSON: no infinities).
        let zero = ScorePoint {
            ts_ms: 0,
            score: 0.0,
            threshold: 0.0,
        };
        let mut inc = Incident {
            id,
            key,
            labels,
            scope,
            family,
            workload_key,
            state: State::Open,
            severity: Severity::Info,
            severity_score: 0.0,
            opened_at_ms: now_ms,
            updated_at_ms: now_ms,
            resolved_at_ms: None,
            last_arrival_ms: now_ms,
            first_seen_ms: i64::MAX,
            last_seen_ms: i64::MIN,
            anomaly_count: 0,
            pod_count: 0,
            node_count: 0,
            pods: BTreeSet::new(),
            nodes: BTreeSet::new(),
            peak: zero,
            latest: zero,
            model_versions: BTreeSet::new(),
            features: Vec::new(),
            series: Vec::new(),
            muted: None,
            acknowledged_by: None,
            notify: NotifyState {
                next_flush_ms: first_flush_ms,
                ..NotifyState::default()
            },
            next_event_seq: 0,
            pending_anomalies: 0,
            anomalies_event_at_ms: 0,
        };
        let ev = inc.event(now_ms, EventKind::Opened, "first anomaly", Actor::System);
        (inc, ev)
    }

    /// A timeline event of this incident, taking the next seq.
    pub fn event(
        &mut self,
        at_ms: i64,
        kind: EventKind,
        cause: impl Into<String>,
        actor: Actor,
    ) -> Event {
        let seq = self.next_event_seq;
        self.next_event_seq += 1;
        self.updated_at_ms = self.updated_at_ms.max(at_ms);
        Event {
            incident: self.id.clone(),
            seq,
            at_ms,
            kind,
            cause: cause.into(),
            actor,
        }
    }

    /// Adds one (already deduplicated) anomaly to the figures. The caller has checked that its
    /// score and threshold are finite (incidents are stored as JSON, which has no NaN).
    pub fn observe(&mut self, o: &Observation<'_>, now_ms: i64) {
        self.anomaly_count += 1;
        self.pending_anomalies += 1;
        self.last_arrival_ms = self.last_arrival_ms.max(now_ms);
        self.updated_at_ms = self.updated_at_ms.max(now_ms);
        self.first_seen_ms = self.first_seen_ms.min(o.ts_ms);
        self.last_seen_ms = self.last_seen_ms.max(o.ts_ms);
        if let Some(p) = o.pod {
            insert_capped(&mut self.pods, p, &mut self.pod_count);
        }
        insert_capped(&mut self.nodes, o.node, &mut self.node_count);
        let point = ScorePoint {
            ts_ms: o.ts_ms,
            score: o.score,
            threshold: o.threshold,
        };
        let first = self.anomaly_count == 1;
        if first || o.score > self.peak.score {
            self.peak = point;
        }
        if first || o.ts_ms >= self.latest.ts_ms {
            self.latest = point;
        }
        if self.model_versions.len() < MAX_MODEL_VERSIONS {
            self.model_versions.insert(o.model_version.to_owned());
        }
        for (name, w) in o
            .top_features
            .iter()
            .take(TOP_FEATURES)
            .filter(|(_, w)| w.is_finite())
        {
            if let Some(f) = self.features.iter_mut().find(|f| &f.name == name) {
                f.count += 1;
                if *w > f.max_contribution {
                    f.max_contribution = *w;
                }
            } else if self.features.len() < MAX_TRACKED_FEATURES {
                self.features.push(FeatureWeight {
                    name: name.clone(),
                    count: 1,
                    max_contribution: *w,
                });
            }
        }
        push_series(&mut self.series, point);
    }

    /// Orders the features (most frequent, then largest contribution, first). Called once per
    /// batch rather than per anomaly.
    pub fn sort_features(&mut self) {
        self.features.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(b.max_contribution.total_cmp(&a.max_contribution))
                .then_with(|| a.name.cmp(&b.name))
        });
    }

    /// The top features, for people.
    pub fn top_features(&self) -> &[FeatureWeight] {
        &self.features[..self.features.len().min(TOP_FEATURES)]
    }

    /// Moves to `to`, returning the event; refuses moves [`State::can_become`] does not allow.
    pub fn transition(
        &mut self,
        to: State,
        at_ms: i64,
        cause: impl Into<String>,
        actor: Actor,
    ) -> Result<Event, TransitionError> {
        let from = self.state;
        if !from.can_become(to) {
            return Err(TransitionError {
                id: self.id.clone(),
                from,
                to,
            });
        }
        self.state = to;
        match to {
            State::Resolved => self.resolved_at_ms = Some(at_ms),
            State::Acknowledged => {
                if let Actor::Person(p) = &actor {
                    self.acknowledged_by = Some(p.clone());
                }
            }
            _ => {}
        }
        Ok(self.event(at_ms, EventKind::StateChanged { from, to }, cause, actor))
    }
}

/// Inserts `v` into a capped set, counting it when new. The count is exact while the set is under
/// its cap and stops there (names past the cap cannot be told apart without keeping them); the
/// API shows the cap as "1024+".
fn insert_capped(set: &mut BTreeSet<String>, v: &str, count: &mut u64) {
    if set.len() < MAX_LISTED_SUBJECTS && !set.contains(v) {
        set.insert(v.to_owned());
        *count += 1;
    }
}

/// Appends a point to a bounded series: when full, adjacent pairs merge (the larger score wins,
/// so spikes survive), halving the resolution instead of dropping the start.
fn push_series(series: &mut Vec<ScorePoint>, p: ScorePoint) {
    if series.len() >= MAX_SERIES_POINTS {
        let merged: Vec<ScorePoint> = series
            .chunks(2)
            .map(|c| {
                c.iter()
                    .copied()
                    .max_by(|a, b| a.score.total_cmp(&b.score))
                    .unwrap_or(c[0])
            })
            .collect();
        *series = merged;
    }
    // Records of one batch arrive roughly in time order; keep the series sorted anyway.
    let at = series.partition_point(|q| q.ts_ms <= p.ts_ms);
    series.insert(at, p);
}

/// How a [`Matcher`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatchOp {
    /// `=`: equal.
    #[serde(rename = "=")]
    Eq,
    /// `!=`: not equal (also true when the label is absent).
    #[serde(rename = "!=")]
    NotEq,
    /// `=~`: the whole value matches the regular expression.
    #[serde(rename = "=~")]
    Regex,
    /// `!~`: the whole value does not match.
    #[serde(rename = "!~")]
    NotRegex,
}

impl MatchOp {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            MatchOp::Eq => "=",
            MatchOp::NotEq => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        }
    }
}

/// A label matcher, Alertmanager's syntax: `namespace=shop`, `workload=~Deployment/check.*`,
/// `node!=n1`. Values match against an incident's [`Labels`]; `node` also matches any affected
/// node of a pod incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matcher {
    /// The label.
    pub name: String,
    /// The comparison.
    pub op: MatchOp,
    /// The value or regular expression.
    pub value: String,
}

/// Labels a matcher may name.
pub const MATCHER_LABELS: [&str; 6] = ["namespace", "workload", "family", "node", "scope", "key"];

/// A matcher that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatcherError {
    /// Not `label<op>value`.
    #[error("{0:?} is not a matcher (label=value, label!=value, label=~regex, label!~regex)")]
    Syntax(String),
    /// A label matchers cannot name.
    #[error("unknown label {0:?} (expected one of namespace, workload, family, node, scope, key)")]
    Label(String),
}

impl FromStr for Matcher {
    type Err = MatcherError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Longest operators first, so `!=` is not read as `!` + `=`.
        let ops = [
            ("=~", MatchOp::Regex),
            ("!~", MatchOp::NotRegex),
            ("!=", MatchOp::NotEq),
            ("=", MatchOp::Eq),
        ];
        let (at, len, op) = ops
            .iter()
            .filter_map(|(t, op)| s.find(t).map(|i| (i, t.len(), *op)))
            .min_by_key(|(i, len, _)| (*i, std::cmp::Reverse(*len)))
            .ok_or_else(|| MatcherError::Syntax(s.to_owned()))?;
        let name = s[..at].trim();
        let value = s[at + len..].trim().trim_matches('"');
        if name.is_empty() {
            return Err(MatcherError::Syntax(s.to_owned()));
        }
        if !MATCHER_LABELS.contains(&name) {
            return Err(MatcherError::Label(name.to_owned()));
        }
        Ok(Matcher {
            name: name.to_owned(),
            op,
            value: value.to_owned(),
        })
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.name, self.op.as_str(), self.value)
    }
}

/// A silence: incidents matching every matcher are muted between `starts_at_ms` and
/// `ends_at_ms` (or until expired early).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    /// Its id.
    pub id: String,
    /// All must match.
    pub matchers: Vec<Matcher>,
    /// Start, unix ms.
    pub starts_at_ms: i64,
    /// End, unix ms; set to the expiry time when expired early.
    pub ends_at_ms: i64,
    /// Who made it.
    pub created_by: String,
    /// Why.
    pub comment: String,
    /// When it was created.
    pub created_at_ms: i64,
    /// When it was expired early, and by whom.
    pub expired_by: Option<String>,
}

/// Where a silence is in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SilenceState {
    /// Starts later.
    Pending,
    /// Muting now.
    Active,
    /// Over.
    Expired,
}

impl Silence {
    /// Its state at `now_ms`.
    pub fn state(&self, now_ms: i64) -> SilenceState {
        if now_ms >= self.ends_at_ms {
            SilenceState::Expired
        } else if now_ms < self.starts_at_ms {
            SilenceState::Pending
        } else {
            SilenceState::Active
        }
    }
}

/// An inhibition rule (Alertmanager's shape): while an active incident matches `source`, active
/// incidents matching `target` whose `equal` labels have the same values are muted. `node` in
/// `equal` compares the source's node with every node of the target: a pod incident is muted
/// only when each node it affects has a matching source incident, since then the nodes'
/// trouble explains every pod's symptom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InhibitRule {
    /// The rule's name, shown on the incidents it mutes.
    pub name: String,
    /// Matchers of the inhibiting incident.
    pub source: Vec<Matcher>,
    /// Matchers of the inhibited incidents.
    pub target: Vec<Matcher>,
    /// Labels that must be equal on both.
    pub equal: Vec<String>,
}

impl InhibitRule {
    /// The default rule: an active node-level incident mutes pod-level incidents on that node.
    pub fn node_inhibits_pods() -> InhibitRule {
        InhibitRule {
            name: "node-inhibits-pods".into(),
            source: vec![Matcher {
                name: "scope".into(),
                op: MatchOp::Eq,
                value: "node".into(),
            }],
            target: vec![Matcher {
                name: "scope".into(),
                op: MatchOp::Eq,
                value: "pod".into(),
            }],
            equal: vec!["node".into()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inc() -> Incident {
        Incident::open(
            "family=cpu,workload=Deployment/a".into(),
            Labels::new(),
            Scope::Pod,
            Family::Cpu,
            "ns/Deployment/a".into(),
            1_000,
            31_000,
        )
        .0
    }

    fn obs(ts: i64, pod: &str, node: &str, score: f64) -> Observation<'static> {
        let pod: &'static str = Box::leak(pod.to_owned().into_boxed_str());
        let node: &'static str = Box::leak(node.to_owned().into_boxed_str());
        Observation {
            ts_ms: ts,
            pod: Some(pod),
            node,
            score,
            threshold: 0.6,
            model_version: "v1",
            top_features: &[],
        }
    }

    #[test]
    fn ids_sort_by_opening_time_and_are_stable() {
        let a = IncidentId::new(1_000, "k");
        let b = IncidentId::new(2_000, "k");
        assert!(a < b);
        assert_eq!(a, IncidentId::new(1_000, "k"));
        assert_ne!(a, IncidentId::new(1_000, "other"));
        assert_eq!(a.as_str().len(), 20);
    }

    #[test]
    fn lifecycle_table() {
        use State::*;
        assert!(Open.can_become(Acting));
        assert!(Acting.can_become(Verifying));
        assert!(Verifying.can_become(Resolved));
        assert!(Verifying.can_become(Escalated));
        assert!(Open.can_become(Acknowledged));
        assert!(!Resolved.can_become(Open));
        assert!(!Resolved.can_become(Acknowledged));
        assert!(!Open.can_become(Verifying));
        assert!(!Escalated.can_become(Acting));
        let mut i = inc();
        let e = i
            .transition(Acknowledged, 5, "on it", Actor::Person("ana".into()))
            .expect("ack");
        assert_eq!(e.seq, 1);
        assert_eq!(i.acknowledged_by.as_deref(), Some("ana"));
        let err = i
            .transition(Verifying, 6, "x", Actor::Healer)
            .expect_err("not allowed");
        assert_eq!(err.from, Acknowledged);
        i.transition(Resolved, 7, "fixed", Actor::System)
            .expect("resolve");
        assert_eq!(i.resolved_at_ms, Some(7));
    }

    #[test]
    fn figures_count_distinct_subjects_and_track_peak_and_latest() {
        let mut i = inc();
        i.observe(&obs(10, "ns/p1", "n1", 0.7), 100);
        i.observe(&obs(30, "ns/p2", "n1", 0.9), 101);
        i.observe(&obs(20, "ns/p1", "n2", 0.8), 102);
        assert_eq!(i.anomaly_count, 3);
        assert_eq!((i.pod_count, i.node_count), (2, 2));
        assert_eq!(i.peak.score, 0.9);
        assert_eq!(i.latest.ts_ms, 30);
        assert_eq!((i.first_seen_ms, i.last_seen_ms), (10, 30));
        let ts: Vec<i64> = i.series.iter().map(|p| p.ts_ms).collect();
        assert_eq!(ts, vec![10, 20, 30]);
    }

    #[test]
    fn the_series_stays_bounded_and_keeps_spikes() {
        let mut i = inc();
        for t in 0..10_000 {
            let s = if t == 5 { 9.0 } else { 0.7 };
            i.observe(&obs(t, "ns/p", "n", s), t);
        }
        assert!(i.series.len() <= MAX_SERIES_POINTS);
        assert!(i.series.iter().any(|p| p.score == 9.0));
        assert!(i.series.first().map_or(-1, |p| p.ts_ms) <= 5);
    }

    #[test]
    fn severity_formula() {
        let base = SeverityInputs {
            peak_score: 0.61,
            peak_threshold: 0.6,
            affected: 1,
            known: 20,
            duration_ms: 0,
        };
        assert_eq!(assess_severity(base).0, Severity::Info);
        let wide = SeverityInputs {
            affected: 20,
            ..base
        };
        assert_eq!(assess_severity(wide).0, Severity::Warning);
        let bad = SeverityInputs {
            peak_score: 0.95,
            duration_ms: 10 * 60 * 1000,
            ..wide
        };
        let (level, s) = assess_severity(bad);
        assert_eq!(level, Severity::Critical, "{s}");
        // No samples: the affected ones are the whole known population.
        let unknown = SeverityInputs { known: 0, ..base };
        assert!(assess_severity(unknown).1 >= 0.4);
        // Per-signal models: threshold about 0 still scales.
        let zero = SeverityInputs {
            peak_score: 0.2,
            peak_threshold: 0.0,
            ..base
        };
        assert!(assess_severity(zero).1 > assess_severity(base).1);
    }

    #[test]
    fn matchers_parse_and_print() {
        let m: Matcher = "workload=~Deployment/check.*".parse().expect("regex");
        assert_eq!(m.op, MatchOp::Regex);
        assert_eq!(m.value, "Deployment/check.*");
        let m: Matcher = "node!=n1".parse().expect("neq");
        assert_eq!((m.name.as_str(), m.op), ("node", MatchOp::NotEq));
        assert_eq!(m.to_string(), "node!=n1");
        assert!(matches!(
            "bogus=1".parse::<Matcher>(),
            Err(MatcherError::Label(_))
        ));
        assert!(matches!(
            "namespace".parse::<Matcher>(),
            Err(MatcherError::Syntax(_))
        ));
    }

    #[test]
    fn silence_states() {
        let s = Silence {
            id: "s".into(),
            matchers: vec![],
            starts_at_ms: 10,
            ends_at_ms: 20,
            created_by: "a".into(),
            comment: "c".into(),
            created_at_ms: 0,
            expired_by: None,
        };
        assert_eq!(s.state(5), SilenceState::Pending);
        assert_eq!(s.state(10), SilenceState::Active);
        assert_eq!(s.state(20), SilenceState::Expired);
    }

    #[test]
    fn json_names() {
        let j = serde_json::to_string(&State::Acknowledged).expect("json");
        assert_eq!(j, "\"acknowledged\"");
        let m: Matcher =
            serde_json::from_str(r#"{"name":"node","op":"!=","value":"a"}"#).expect("matcher json");
        assert_eq!(m.op, MatchOp::NotEq);
        assert_eq!(
            "critical".parse::<Severity>().ok(),
            Some(Severity::Critical)
        );
    }
}
