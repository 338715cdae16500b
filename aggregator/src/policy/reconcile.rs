//! Deciding as reconciliation: [`reconcile`] maps an incident and the world as observed (the
//! policy, the guardrails' memory, the workload's state, the steps already recorded, the time)
//! to one [`Decision`]. It is pure: no I/O and no clock, so the same inputs always give the same
//! decision, and running it again after a crash, a redelivery or a restart decides the same
//! thing (kube-rs' `reconcile`). [`error_policy`] decides what a failed action leads to, and
//! [`verify`] whether an applied action worked; [`restore`] plans putting a held value back.
//!
//! A decision is about step 1 of an incident only (`<incident>/1`): once a step is recorded the
//! incident is healing's, and its outcome, verification and restore are followed by the
//! controller. An incident is acted on at most once; a failed verification escalates instead of
//! trying the same action again.

use super::guard::{self, GuardState, Refusal};
use super::{Playbook, Policy, Scaling};
use selfheal_core::action::{
    Action, ActionError, ActionErrorKind, ActionRequest, ObjectVersion, Target, WorkloadKind,
    WorkloadState,
};
use selfheal_core::incident::{Incident, Scope, State};
use serde::{Deserialize, Serialize};

/// How soon a transient refusal without a natural end (a mute, a rollout) is decided again.
pub const RECHECK_MS: i64 = 15_000;

/// What [`reconcile`] decides with.
#[derive(Debug, Clone, Copy)]
pub struct World<'a> {
    /// The policy in force.
    pub policy: &'a Policy,
    /// Recent actions.
    pub guard: &'a GuardState,
    /// The workload as the executor last saw it (`None`: not observed yet).
    pub observed: Option<&'a WorkloadState>,
    /// Steps already recorded for this incident.
    pub steps_taken: u32,
    /// Now, unix ms.
    pub now_ms: i64,
}

/// Putting a held value back later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restore {
    /// How long after the action, ms.
    pub after_ms: i64,
    /// The value the action changed, as it was.
    pub previous: i32,
}

/// An action to take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The playbook.
    pub playbook: String,
    /// The step (`request_id` is `<incident>/<step>`).
    pub step: u32,
    /// The request for the executor.
    pub request: ActionRequest,
    /// Whether and when to restore.
    pub restore: Option<Restore>,
}

/// What to do about an incident now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "decision")]
pub enum Decision {
    /// Nothing now.
    Wait {
        /// Why.
        why: String,
    },
    /// The workload's state is needed to decide.
    Observe {
        /// The workload.
        target: Target,
    },
    /// Carry out this plan.
    Act(Plan),
    /// A guardrail refused; retry at `retry_at_ms`, or escalate when it has none.
    Refuse(Refusal),
    /// No action applies: a person must look.
    Escalate {
        /// Why.
        reason: String,
    },
}

/// The workload an incident's `workload_key` (`<ns>/<kind>/<name>`) names, when healing can act
/// on its kind.
pub fn target_of(inc: &Incident) -> Option<Target> {
    let mut parts = inc.workload_key.splitn(3, '/');
    let (ns, kind, name) = (parts.next()?, parts.next()?, parts.next()?);
    let kind = match kind {
        "Deployment" => WorkloadKind::Deployment,
        "StatefulSet" => WorkloadKind::StatefulSet,
        _ => return None,
    };
    (!ns.is_empty() && !name.is_empty()).then(|| Target {
        namespace: ns.to_owned(),
        kind,
        name: name.to_owned(),
    })
}

/// RFC 3339 (seconds, UTC) of unix ms, as `kubectl rollout restart` writes it.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// The decision for `inc` in `w`.
pub fn reconcile(inc: &Incident, w: &World<'_>) -> Decision {
    if !matches!(inc.state, State::Open | State::Acknowledged) {
        return Decision::Wait {
            why: format!("incident is {}", inc.state),
        };
    }
    if w.steps_taken > 0 {
        return Decision::Wait {
            why: format!("step {} already recorded", w.steps_taken),
        };
    }
    if inc.scope == Scope::Node {
        return Decision::Escalate {
            reason: "node-level incident: escalate only".into(),
        };
    }
    let Some(playbook) = w.policy.playbooks.get(&inc.family).copied() else {
        return Decision::Escalate {
            reason: format!("no playbook for family {}", inc.family),
        };
    };
    if playbook == Playbook::Escalate {
        return Decision::Escalate {
            reason: format!("the {} playbook only escalates", inc.family),
        };
    }
    let Some(target) = target_of(inc) else {
        return Decision::Escalate {
            reason: format!(
                "{} is not a Deployment or StatefulSet: nothing healing may act on",
                inc.workload_key
            ),
        };
    };
    if let Some(m) = &inc.muted {
        return Decision::Refuse(Refusal {
            guardrail: guard::Guardrail::Muted,
            reason: format!("muted by {m}"),
            retry_at_ms: Some(w.now_ms + RECHECK_MS),
        });
    }
    if let Err(r) = guard::namespace_allowed(w.policy, &target.namespace) {
        return Decision::Refuse(r);
    }
    let Some(state) = w.observed.filter(|s| s.target == target) else {
        return Decision::Observe { target };
    };
    if let Err(r) = guard::mid_rollout(state, w.now_ms, RECHECK_MS) {
        return Decision::Refuse(r);
    }
    let planned = match playbook {
        Playbook::ScaleOut(s) => scale(&s, state, false),
        Playbook::Stabilize(s) => scale(&s, state, true),
        Playbook::RolloutRestart => Ok(restart(state, w.now_ms)),
        Playbook::RestartOnce => match w.guard.restarted_by_other(&target, inc.id.as_str()) {
            Some(r) => Err(format!(
                "restarted once already ({}); restarts escalate after one restart",
                r.request_id
            )),
            None => Ok(restart(state, w.now_ms)),
        },
        Playbook::Escalate => Err("escalate only".into()),
    };
    let (action, expect, restore) = match planned {
        Ok(p) => p,
        Err(reason) => return Decision::Escalate { reason },
    };
    if let Err(r) =
        guard::check_action(w.policy, w.guard, inc.id.as_str(), state, &action, w.now_ms)
    {
        return Decision::Refuse(r);
    }
    Decision::Act(Plan {
        playbook: playbook.name().into(),
        step: 1,
        request: ActionRequest {
            request_id: format!("{}/1", inc.id),
            target,
            expect,
            action,
        },
        restore,
    })
}

type Planned = (Action, ObjectVersion, Option<Restore>);

fn restart(state: &WorkloadState, now_ms: i64) -> Planned {
    (
        Action::RolloutRestart {
            restarted_at: rfc3339(now_ms),
        },
        state.version.clone(),
        None,
    )
}

/// Scale out, or raise the HPA's floor when an HPA owns the replica count (scaling the
/// workload under an HPA would be undone by it at its next sync).
fn scale(s: &Scaling, state: &WorkloadState, stabilize: bool) -> Result<Planned, String> {
    if let Some(h) = &state.hpa {
        let base = h.current_replicas.max(h.min_replicas);
        let to = s.target(base, h.max_replicas);
        if to <= h.min_replicas {
            return Err(format!(
                "HPA {} floor {} cannot rise (maxReplicas {}, playbook max_replicas {})",
                h.name, h.min_replicas, h.max_replicas, s.max_replicas
            ));
        }
        return Ok((
            Action::SetHpaMinReplicas {
                hpa: h.name.clone(),
                from: h.min_replicas,
                to,
            },
            h.version.clone(),
            Some(Restore {
                after_ms: s.hold_ms,
                previous: h.min_replicas,
            }),
        ));
    }
    let to = s.target(state.replicas, i32::MAX);
    if to <= state.replicas {
        return Err(format!(
            "{} replicas already at max_replicas {}",
            state.replicas, s.max_replicas
        ));
    }
    Ok((
        Action::Scale {
            from: state.replicas,
            to,
        },
        state.version.clone(),
        stabilize.then_some(Restore {
            after_ms: s.hold_ms,
            previous: state.replicas,
        }),
    ))
}

/// What to do about a held value whose time is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "restore")]
pub enum RestoreDecision {
    /// Send this request.
    Act(ActionRequest),
    /// Not now (mid-rollout); again later.
    Wait {
        /// Why.
        why: String,
    },
    /// Not at all: the value was changed by someone else since, or the object is gone.
    Skip {
        /// Why.
        reason: String,
    },
}

/// Plans restoring what `applied` (the request of step 1) changed, on `state` as observed now.
pub fn restore(
    applied: &ActionRequest,
    previous: i32,
    state: &WorkloadState,
    now_ms: i64,
) -> RestoreDecision {
    let request_id = match applied.request_id.rsplit_once('/') {
        Some((inc, _)) => format!("{inc}/2"),
        None => format!("{}/2", applied.request_id),
    };
    let req = |action, expect| {
        RestoreDecision::Act(ActionRequest {
            request_id: request_id.clone(),
            target: applied.target.clone(),
            expect,
            action,
        })
    };
    match &applied.action {
        Action::SetHpaMinReplicas { hpa, to, .. } => match &state.hpa {
            Some(h) if &h.name == hpa && h.min_replicas == *to => req(
                Action::SetHpaMinReplicas {
                    hpa: hpa.clone(),
                    from: *to,
                    to: previous,
                },
                h.version.clone(),
            ),
            Some(h) if &h.name == hpa => RestoreDecision::Skip {
                reason: format!(
                    "HPA {hpa} minReplicas is {} now, not the {to} healing set: changed since, left alone",
                    h.min_replicas
                ),
            },
            _ => RestoreDecision::Skip {
                reason: format!("HPA {hpa} no longer targets {}", applied.target),
            },
        },
        Action::Scale { to, .. } => {
            if let Err(r) = guard::mid_rollout(state, now_ms, RECHECK_MS) {
                return RestoreDecision::Wait { why: r.reason };
            }
            if state.replicas == *to {
                req(
                    Action::Scale {
                        from: *to,
                        to: previous,
                    },
                    state.version.clone(),
                )
            } else {
                RestoreDecision::Skip {
                    reason: format!(
                        "replicas are {} now, not the {to} healing set: changed since, left alone",
                        state.replicas
                    ),
                }
            }
        }
        other => RestoreDecision::Skip {
            reason: format!("{} holds nothing to restore", other.kind()),
        },
    }
}

/// What a failed action leads to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "then")]
pub enum ErrorAction {
    /// Send the same request again after this long.
    Retry {
        /// Delay, ms.
        after_ms: i64,
    },
    /// The object changed: observe again and re-plan the same step on the new version.
    Redecide,
    /// Give up: a person must look.
    Escalate {
        /// Why.
        reason: String,
    },
}

/// Most attempts at one step before it escalates.
pub const MAX_ATTEMPTS: u32 = 6;

/// The error policy: an unavailable API is retried with exponential backoff (1 s doubling to
/// 60 s), a conflict is re-decided on the new version, anything else (forbidden, not found,
/// invalid) escalates at once; after [`MAX_ATTEMPTS`] any of them escalates. `attempts` counts
/// the failures so far, this one included.
pub fn error_policy(err: &ActionError, attempts: u32) -> ErrorAction {
    if attempts >= MAX_ATTEMPTS {
        return ErrorAction::Escalate {
            reason: format!("{attempts} attempts failed, the last: {err}"),
        };
    }
    match err.kind {
        ActionErrorKind::Unavailable => ErrorAction::Retry {
            after_ms: (1000_i64 << attempts.saturating_sub(1).min(6)).min(60_000),
        },
        ActionErrorKind::Conflict => ErrorAction::Redecide,
        ActionErrorKind::NotFound | ActionErrorKind::Forbidden | ActionErrorKind::Invalid => {
            ErrorAction::Escalate {
                reason: format!("not retryable: {err}"),
            }
        }
    }
}

/// A verification's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum Verdict {
    /// The window is still open.
    Pending {
        /// When it closes, unix ms.
        until_ms: i64,
    },
    /// The workload's anomalies stopped.
    Healed {
        /// What was seen.
        detail: String,
    },
    /// They did not.
    NotHealed {
        /// What was seen.
        detail: String,
    },
}

/// Whether the action applied at `applied_at_ms` worked: when the window closes, the
/// incident's anomalies must have stopped, that is no anomaly arrived later than `settle_ms`
/// after the action. Agents send an anomaly only for a score over its threshold, so no anomaly
/// means every score of the workload scored in the window was back under it.
pub fn verify(inc: &Incident, applied_at_ms: i64, p: &Policy, now_ms: i64) -> Verdict {
    let until_ms = applied_at_ms + p.verify.window_ms;
    let quiet_from = applied_at_ms + p.verify.settle_ms;
    if inc.last_arrival_ms > quiet_from {
        // Decided as soon as it is clear: waiting out the window changes nothing.
        return Verdict::NotHealed {
            detail: format!(
                "anomalies still arriving {}s after the action (latest score {:.3} vs threshold {:.3})",
                (inc.last_arrival_ms - applied_at_ms) / 1000,
                inc.latest.score,
                inc.latest.threshold
            ),
        };
    }
    if now_ms < until_ms {
        return Verdict::Pending { until_ms };
    }
    Verdict::Healed {
        detail: format!(
            "no anomaly for {}s after the action (settle {}s)",
            (now_ms - quiet_from.max(inc.last_arrival_ms)) / 1000,
            p.verify.settle_ms / 1000
        ),
    }
}

#[cfg(test)]
mod tests;
