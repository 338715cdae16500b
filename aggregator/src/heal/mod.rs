//! Healing: the controller that turns incidents into actions, exactly once, and verifies them.
//! [`crate::policy`] decides (pure); this module carries decisions out and keeps the record.
//!
//! * [`controller`]: the [`Healer`]. Every `heal.interval_ms` it decides for incidents that are
//!   open or acknowledged ([`crate::policy::reconcile()`]), records each action's intent in the
//!   store with a conditional insert keyed `<incident>/<step>` *before* sending it, sends it
//!   through the executor, records the outcome, verifies it in a window, restores held values
//!   on time, and escalates what it cannot heal. Everything it does is a timeline event.
//! * [`executor`]: [`AnyExecutor`], the executor `heal.executor` names; [`dry_run`]: the
//!   default one, which records exactly what it would send.
//! * [`metrics`]: `selfheal_aggregator_heal_*`, with the efficacy per playbook.
//! * [`api`]: `/api/v1/heal/*` and the per-incident plan and actions; [`cli`]: `selfheal heal`.
//! * [`config`]: the `[heal]` section.

pub mod api;
pub mod cli;
pub mod config;
pub mod controller;
pub mod dry_run;
pub mod executor;
pub mod metrics;

pub use controller::Healer;
pub use dry_run::DryRunExecutor;
pub use executor::AnyExecutor;

use selfheal_core::action::{Action, ActionRequest};

/// A request in words, for the timeline and logs: `scale shop/Deployment/checkout 4 → 5`.
pub fn describe(req: &ActionRequest) -> String {
    let t = &req.target;
    match &req.action {
        Action::Scale { from, to } => format!("scale {t} {from} → {to} replicas"),
        Action::RolloutRestart { restarted_at } => {
            format!("rollout restart {t} (restartedAt {restarted_at})")
        }
        Action::DeletePod { pod } => format!("delete pod {pod} of {t}"),
        Action::SetHpaMinReplicas { hpa, from, to } => {
            format!("set HPA {hpa} minReplicas {from} → {to} ({t})")
        }
    }
}

#[cfg(test)]
mod tests;
