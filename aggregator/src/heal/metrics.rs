//! The healing controller's metrics (`selfheal_aggregator_heal_*`): decisions by kind, refusals
//! by guardrail, actions by kind and result, verifications and the efficacy per playbook (the
//! share of verified actions that healed), and the time from intent to outcome.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Labels by decision.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `act`, `refuse`, `escalate`.
    pub decision: &'static str,
}

/// Labels by guardrail.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuardrailLabels {
    /// The guardrail.
    pub guardrail: &'static str,
}

/// Labels of actions.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// The action kind.
    pub kind: &'static str,
    /// `applied`, `already_applied`, `dry_run`, `retry`, `failed`.
    pub result: &'static str,
}

/// Labels by playbook.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlaybookLabels {
    /// The playbook.
    pub playbook: String,
}

/// Labels of verifications.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerifyLabels {
    /// The playbook.
    pub playbook: String,
    /// `healed` or `not_healed`.
    pub result: &'static str,
}

/// The metrics.
#[derive(Debug)]
pub struct HealMetrics {
    /// Decisions recorded (not counting "wait").
    pub decisions: Family<DecisionLabels, Counter>,
    /// Refusals recorded, by guardrail.
    pub refusals: Family<GuardrailLabels, Counter>,
    /// Executor answers.
    pub actions: Family<ActionLabels, Counter>,
    /// Verifications.
    pub verifications: Family<VerifyLabels, Counter>,
    /// Share of verified actions that healed, per playbook.
    pub efficacy: Family<PlaybookLabels, Gauge<f64, AtomicU64>>,
    /// From an intent recorded to its outcome recorded.
    pub intent_to_outcome: Histogram,
    /// From the incident opening to its action's intent recorded.
    pub opened_to_intent: Histogram,
    /// Store writes that failed (the step is retried on the next pass).
    pub store_errors: Counter,
}

impl Default for HealMetrics {
    fn default() -> Self {
        let buckets = [
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0, 300.0,
        ];
        HealMetrics {
            decisions: Family::default(),
            refusals: Family::default(),
            actions: Family::default(),
            verifications: Family::default(),
            efficacy: Family::default(),
            intent_to_outcome: Histogram::new(buckets),
            opened_to_intent: Histogram::new(buckets),
            store_errors: Counter::default(),
        }
    }
}

impl HealMetrics {
    /// Registers every metric (prefix `heal`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("heal");
        r.register(
            "decisions",
            "Healing decisions recorded, by kind",
            self.decisions.clone(),
        );
        r.register(
            "refusals",
            "Actions refused by a guardrail, by guardrail",
            self.refusals.clone(),
        );
        r.register(
            "actions",
            "Executor answers, by action kind and result",
            self.actions.clone(),
        );
        r.register(
            "verifications",
            "Verifications, by playbook and result",
            self.verifications.clone(),
        );
        r.register(
            "efficacy_ratio",
            "Share of verified actions that healed, by playbook",
            self.efficacy.clone(),
        );
        r.register(
            "intent_to_outcome_seconds",
            "From an action's intent recorded to its outcome recorded",
            self.intent_to_outcome.clone(),
        );
        r.register(
            "opened_to_intent_seconds",
            "From an incident opening to its action's intent recorded",
            self.opened_to_intent.clone(),
        );
        r.register(
            "store_errors",
            "Healing store writes that failed",
            self.store_errors.clone(),
        );
    }
}
