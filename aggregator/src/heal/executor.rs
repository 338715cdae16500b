//! [`AnyExecutor`]: the executor chosen by `heal.executor`, dispatching to one implementation of
//! [`Executor`]: dry-run (the default), the Kubernetes API directly
//! ([`selfheal_heal_api::kube::KubeExecutor`], the same code the heal API server runs), or the
//! signed heal API in the target cluster ([`selfheal_heal_api::client::RemoteExecutor`]).

use super::dry_run::DryRunExecutor;
use selfheal_core::action::{
    ActionError, ActionOutcome, ActionRequest, Executor, Target, WorkloadState,
};
use selfheal_heal_api::client::RemoteExecutor;
use selfheal_heal_api::kube::KubeExecutor;
use std::sync::Arc;

/// The configured executor.
#[derive(Debug, Clone)]
pub enum AnyExecutor {
    /// Records only.
    DryRun(Arc<DryRunExecutor>),
    /// The Kubernetes API, through the `kube` crate.
    Kube(Arc<KubeExecutor>),
    /// The signed heal API, over HTTPS.
    HealApi(Arc<RemoteExecutor>),
}

impl AnyExecutor {
    /// Seeds a simulated executor's view of `target` (no-op for executors that observe a real
    /// cluster).
    pub fn assume(&self, target: &Target, replicas: i32) {
        match self {
            AnyExecutor::DryRun(d) => d.assume(target, replicas),
            AnyExecutor::Kube(_) | AnyExecutor::HealApi(_) => {}
        }
    }
}

impl Executor for AnyExecutor {
    fn name(&self) -> &'static str {
        match self {
            AnyExecutor::DryRun(d) => d.name(),
            AnyExecutor::Kube(k) => k.name(),
            AnyExecutor::HealApi(r) => r.name(),
        }
    }

    async fn observe(&self, target: &Target) -> Result<WorkloadState, ActionError> {
        match self {
            AnyExecutor::DryRun(d) => d.observe(target).await,
            AnyExecutor::Kube(k) => k.observe(target).await,
            AnyExecutor::HealApi(r) => r.observe(target).await,
        }
    }

    async fn apply(&self, req: &ActionRequest) -> Result<ActionOutcome, ActionError> {
        match self {
            AnyExecutor::DryRun(d) => d.apply(req).await,
            AnyExecutor::Kube(k) => k.apply(req).await,
            AnyExecutor::HealApi(r) => r.apply(req).await,
        }
    }
}
