//! The guardrails: checks every action passes before it is sent, pure functions of the policy,
//! the recent actions ([`GuardState`], rebuilt from the action store at start), the observed
//! workload and the time. Each failed check is a [`Refusal`] naming its [`Guardrail`] and the
//! reason in words; a refusal with a `retry_at_ms` is transient (the incident waits and is
//! decided again then), one without is final (the incident escalates).

use super::{Maintenance, Policy};
use selfheal_core::action::{Action, ActionKind, Target, WorkloadKind, WorkloadState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

const HOUR_MS: i64 = 3_600_000;
const WEEK_MINS: i64 = 7 * 24 * 60;

/// Which guardrail refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guardrail {
    /// The incident is silenced or inhibited.
    Muted,
    /// The namespace is not allowed (or is denied).
    Namespace,
    /// The action kind is not allowed.
    ActionKind,
    /// The workload is mid-rollout (generation not observed, or an unfinished rollout).
    MidRollout,
    /// Inside a maintenance window.
    Maintenance,
    /// The workload was acted on too recently.
    Cooldown,
    /// Too many actions in the last hour, all namespaces.
    RateGlobal,
    /// Too many actions in the last hour in the namespace.
    RateNamespace,
    /// Too many distinct workloads acted on in the namespace in the last hour.
    WorkloadsPerNamespace,
    /// The action would take down too large a share of the replicas at once.
    BlastRadius,
}

impl Guardrail {
    /// Every guardrail.
    pub const ALL: [Guardrail; 10] = [
        Guardrail::Muted,
        Guardrail::Namespace,
        Guardrail::ActionKind,
        Guardrail::MidRollout,
        Guardrail::Maintenance,
        Guardrail::Cooldown,
        Guardrail::RateGlobal,
        Guardrail::RateNamespace,
        Guardrail::WorkloadsPerNamespace,
        Guardrail::BlastRadius,
    ];

    /// Its name in events, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Guardrail::Muted => "muted",
            Guardrail::Namespace => "namespace",
            Guardrail::ActionKind => "action_kind",
            Guardrail::MidRollout => "mid_rollout",
            Guardrail::Maintenance => "maintenance",
            Guardrail::Cooldown => "cooldown",
            Guardrail::RateGlobal => "rate_global",
            Guardrail::RateNamespace => "rate_namespace",
            Guardrail::WorkloadsPerNamespace => "workloads_per_namespace",
            Guardrail::BlastRadius => "blast_radius",
        }
    }
}

impl fmt::Display for Guardrail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A guardrail's refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Which.
    pub guardrail: Guardrail,
    /// Why, in words.
    pub reason: String,
    /// When deciding again may pass, unix ms; `None`: never for this incident (it escalates).
    pub retry_at_ms: Option<i64>,
}

/// An action taken recently (from the action store), what the rate and cooldown checks count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recent {
    /// Its idempotency key.
    pub request_id: String,
    /// The incident it was for.
    pub incident: String,
    /// The workload.
    pub target: Target,
    /// What kind.
    pub kind: ActionKind,
    /// When its intent was recorded, unix ms.
    pub at_ms: i64,
    /// Whether it restores an earlier action (restores are not counted against limits).
    pub restore: bool,
}

/// Recent actions, oldest first; what the guardrails remember.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuardState {
    recent: Vec<Recent>,
}

/// How long actions are remembered: a day, the longest look-back (restart-once).
pub const REMEMBER_MS: i64 = 24 * HOUR_MS;

impl GuardState {
    /// Built from actions in any order.
    pub fn from_actions(mut recent: Vec<Recent>) -> GuardState {
        recent.sort_by_key(|r| r.at_ms);
        GuardState { recent }
    }

    /// Remembers an action (recorded at its intent, so a crash before its outcome still
    /// counts it).
    pub fn push(&mut self, r: Recent) {
        if self.recent.iter().any(|x| x.request_id == r.request_id) {
            return;
        }
        let at = self.recent.partition_point(|x| x.at_ms <= r.at_ms);
        self.recent.insert(at, r);
    }

    /// Forgets what is older than [`REMEMBER_MS`].
    pub fn expire(&mut self, now_ms: i64) {
        let keep_from = self
            .recent
            .partition_point(|x| x.at_ms < now_ms - REMEMBER_MS);
        self.recent.drain(..keep_from);
    }

    /// The actions remembered.
    pub fn recent(&self) -> &[Recent] {
        &self.recent
    }

    /// Counted actions (not restores) in the hour before `now_ms`, except `incident`'s own.
    fn last_hour<'a>(&'a self, now_ms: i64) -> impl Iterator<Item = &'a Recent> + 'a {
        self.recent
            .iter()
            .filter(move |r| !r.restore && r.at_ms > now_ms - HOUR_MS && r.at_ms <= now_ms)
    }

    /// A rolling restart of `target` by another incident within the day, if any.
    pub fn restarted_by_other(&self, target: &Target, incident: &str) -> Option<&Recent> {
        self.recent.iter().rev().find(|r| {
            &r.target == target && r.kind == ActionKind::RolloutRestart && r.incident != incident
        })
    }
}

/// Whether healing may act in `namespace` at all.
pub fn namespace_allowed(p: &Policy, namespace: &str) -> Result<(), Refusal> {
    let g = &p.guardrails;
    if g.deny_namespaces.contains(namespace) {
        return Err(Refusal {
            guardrail: Guardrail::Namespace,
            reason: format!("namespace {namespace} is in guardrails.deny_namespaces"),
            retry_at_ms: None,
        });
    }
    if !(g.allow_namespaces.contains("*") || g.allow_namespaces.contains(namespace)) {
        return Err(Refusal {
            guardrail: Guardrail::Namespace,
            reason: format!("namespace {namespace} is not in guardrails.allow_namespaces"),
            retry_at_ms: None,
        });
    }
    Ok(())
}

/// The maintenance window `now_ms` is in, with its end.
pub fn in_maintenance(p: &Policy, now_ms: i64) -> Option<(&str, i64)> {
    p.guardrails.maintenance.iter().find_map(|m| match m {
        Maintenance::Absolute {
            name,
            starts_at_ms,
            ends_at_ms,
        } => (now_ms >= *starts_at_ms && now_ms < *ends_at_ms)
            .then_some((name.as_str(), *ends_at_ms)),
        Maintenance::Weekly(w) => {
            let day = now_ms.div_euclid(86_400_000);
            // 1970-01-01 was a Thursday (Monday = 0).
            let weekday = (day + 3).rem_euclid(7);
            let minute_of_week = weekday * 1440 + now_ms.rem_euclid(86_400_000) / 60_000;
            w.days.iter().find_map(|d| {
                let start = i64::from(*d) * 1440 + i64::from(w.start_minute);
                let into = (minute_of_week - start).rem_euclid(WEEK_MINS);
                (into < i64::from(w.duration_mins)).then(|| {
                    let ms_into = into * 60_000 + now_ms.rem_euclid(60_000);
                    (
                        w.name.as_str(),
                        now_ms - ms_into + i64::from(w.duration_mins) * 60_000,
                    )
                })
            })
        }
    })
}

/// Replicas `action` takes down at once on `state`: a rolling restart of a Deployment
/// Kubernetes' default `maxUnavailable` (25 %, rounded down; 0 means it surges first), of a
/// StatefulSet one pod; a pod deletion one; a scale-in the replicas removed; a scale-out or a
/// raised HPA floor none.
pub fn disrupted(action: &Action, state: &WorkloadState) -> i32 {
    match action {
        Action::RolloutRestart { .. } => match state.target.kind {
            WorkloadKind::Deployment => state.replicas.max(0) / 4,
            WorkloadKind::StatefulSet => i32::from(state.replicas > 0),
        },
        Action::DeletePod { .. } => 1,
        Action::Scale { from, to } => (from - to).max(0),
        Action::SetHpaMinReplicas { .. } => 0,
    }
}

/// The checks that need the action: allow-list, maintenance, cooldown, rates, blast radius.
/// `incident` is the deciding incident's id (its own earlier actions are not a cooldown).
pub fn check_action(
    p: &Policy,
    g: &GuardState,
    incident: &str,
    state: &WorkloadState,
    action: &Action,
    now_ms: i64,
) -> Result<(), Refusal> {
    let gr = &p.guardrails;
    let kind = action.kind();
    if !gr.allow_actions.contains(&kind) {
        return Err(Refusal {
            guardrail: Guardrail::ActionKind,
            reason: format!("{kind} is not in guardrails.allow_actions"),
            retry_at_ms: None,
        });
    }
    if let Some((name, end)) = in_maintenance(p, now_ms) {
        return Err(Refusal {
            guardrail: Guardrail::Maintenance,
            reason: format!("inside maintenance window {name:?}"),
            retry_at_ms: Some(end),
        });
    }
    let target = &state.target;
    if let Some(last) = g
        .recent
        .iter()
        .rev()
        .find(|r| &r.target == target && r.incident != incident && !r.restore)
        && now_ms - last.at_ms < gr.cooldown_ms
    {
        return Err(Refusal {
            guardrail: Guardrail::Cooldown,
            reason: format!(
                "{target} was acted on {}s ago ({}); cooldown is {}s",
                (now_ms - last.at_ms) / 1000,
                last.request_id,
                gr.cooldown_ms / 1000
            ),
            retry_at_ms: Some(last.at_ms + gr.cooldown_ms),
        });
    }
    let hour: Vec<&Recent> = g.last_hour(now_ms).collect();
    if hour.len() >= gr.max_actions_per_hour as usize {
        return Err(Refusal {
            guardrail: Guardrail::RateGlobal,
            reason: format!(
                "{} actions in the last hour; guardrails.max_actions_per_hour is {}",
                hour.len(),
                gr.max_actions_per_hour
            ),
            retry_at_ms: hour.first().map(|r| r.at_ms + HOUR_MS),
        });
    }
    let ns = &target.namespace;
    let in_ns: Vec<&&Recent> = hour.iter().filter(|r| &r.target.namespace == ns).collect();
    if in_ns.len() >= gr.max_actions_per_hour_per_namespace as usize {
        return Err(Refusal {
            guardrail: Guardrail::RateNamespace,
            reason: format!(
                "{} actions in namespace {ns} in the last hour; guardrails.max_actions_per_hour_per_namespace is {}",
                in_ns.len(),
                gr.max_actions_per_hour_per_namespace
            ),
            retry_at_ms: in_ns.first().map(|r| r.at_ms + HOUR_MS),
        });
    }
    let workloads: BTreeSet<&Target> = in_ns
        .iter()
        .map(|r| &r.target)
        .filter(|t| *t != target)
        .collect();
    if workloads.len() >= gr.max_workloads_per_namespace_per_hour as usize {
        return Err(Refusal {
            guardrail: Guardrail::WorkloadsPerNamespace,
            reason: format!(
                "{} other workloads of namespace {ns} were acted on in the last hour; guardrails.max_workloads_per_namespace_per_hour is {}",
                workloads.len(),
                gr.max_workloads_per_namespace_per_hour
            ),
            retry_at_ms: in_ns.first().map(|r| r.at_ms + HOUR_MS),
        });
    }
    let down = disrupted(action, state);
    if down > 0 {
        let share = f64::from(down) / f64::from(state.replicas.max(1));
        if share > gr.max_unavailable_share {
            return Err(Refusal {
                guardrail: Guardrail::BlastRadius,
                reason: format!(
                    "{kind} takes {down} of {} replicas down at once ({:.0} %); guardrails.max_unavailable_share is {:.0} %",
                    state.replicas,
                    share * 100.0,
                    gr.max_unavailable_share * 100.0
                ),
                retry_at_ms: None,
            });
        }
    }
    Ok(())
}

/// Whether `state` is mid-rollout: its controller has not observed the latest spec, or the
/// rollout has not finished.
pub fn mid_rollout(state: &WorkloadState, now_ms: i64, recheck_ms: i64) -> Result<(), Refusal> {
    if state.observed_generation < state.generation {
        return Err(Refusal {
            guardrail: Guardrail::MidRollout,
            reason: format!(
                "generation {} not yet observed (observed {})",
                state.generation, state.observed_generation
            ),
            retry_at_ms: Some(now_ms + recheck_ms),
        });
    }
    if state.rolling_out {
        return Err(Refusal {
            guardrail: Guardrail::MidRollout,
            reason: format!(
                "rollout unfinished: {} of {} replicas updated, {} available",
                state.updated_replicas, state.replicas, state.available_replicas
            ),
            retry_at_ms: Some(now_ms + recheck_ms),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weekly_windows_follow_the_calendar() {
        let mut p = Policy::default();
        p.guardrails.maintenance = vec![Maintenance::Weekly(super::super::Weekly {
            name: "sat".into(),
            days: BTreeSet::from([5]),
            start_minute: 2 * 60,
            duration_mins: 120,
        })];
        // 2026-12-05 is a Saturday.
        let sat_0230 = 1_796_437_800_000; // 2026-12-05T02:30:00Z
        let (name, end) = in_maintenance(&p, sat_0230).expect("inside");
        assert_eq!(name, "sat");
        assert_eq!(end, sat_0230 + 90 * 60_000);
        assert!(
            in_maintenance(&p, sat_0230 - 31 * 60_000).is_none(),
            "01:59"
        );
        assert!(
            in_maintenance(&p, sat_0230 + 90 * 60_000).is_none(),
            "04:00"
        );
        assert!(
            in_maintenance(&p, sat_0230 + 86_400_000).is_none(),
            "sunday"
        );
        assert!(
            in_maintenance(&p, sat_0230 + 7 * 86_400_000).is_some(),
            "next week"
        );
    }

    #[test]
    fn a_window_across_the_week_boundary_wraps() {
        let mut p = Policy::default();
        p.guardrails.maintenance = vec![Maintenance::Weekly(super::super::Weekly {
            name: "sun-night".into(),
            days: BTreeSet::from([6]),
            start_minute: 23 * 60,
            duration_mins: 120,
        })];
        // 2026-12-07T00:30:00Z is a Monday.
        let mon_0030 = 1_796_603_400_000;
        assert!(in_maintenance(&p, mon_0030).is_some());
    }
}
