//! [`AnyExecutor`]: the executor chosen by `heal.executor`, dispatching to one implementation of
//! [`Executor`]. Only the dry-run executor is in this build; the kube executor
//! (`selfheal_heal_api::kube::KubeExecutor`) and the remote heal-API client are written on their
//! own branches and join here as variants (`Kube(..)`, `HealApi(..)`), with
//! [`crate::heal::config::ExecutorKind`] already naming them and refusing them until then.

use super::dry_run::DryRunExecutor;
use selfheal_core::action::{
    ActionError, ActionOutcome, ActionRequest, Executor, Target, WorkloadState,
};
use std::sync::Arc;

/// The configured executor.
#[derive(Debug, Clone)]
pub enum AnyExecutor {
    /// Records only.
    DryRun(Arc<DryRunExecutor>),
}

impl AnyExecutor {
    /// Seeds a simulated executor's view of `target` (no-op for executors that observe a real
    /// cluster).
    pub fn assume(&self, target: &Target, replicas: i32) {
        match self {
            AnyExecutor::DryRun(d) => d.assume(target, replicas),
        }
    }
}

impl Executor for AnyExecutor {
    fn name(&self) -> &'static str {
        match self {
            AnyExecutor::DryRun(d) => d.name(),
        }
    }

    async fn observe(&self, target: &Target) -> Result<WorkloadState, ActionError> {
        match self {
            AnyExecutor::DryRun(d) => d.observe(target).await,
        }
    }

    async fn apply(&self, req: &ActionRequest) -> Result<ActionOutcome, ActionError> {
        match self {
            AnyExecutor::DryRun(d) => d.apply(req).await,
        }
    }
}
