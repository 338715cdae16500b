//! The kube-direct executor: [`KubeExecutor`] carries out an [`ActionRequest`] on a cluster with
//! the `kube` crate (for an aggregator running in the cluster, and for the heal API server),
//! and observes a workload for the policy. See [`apply`] for how each action stays exactly once.
//!
//! Submodules: [`config`] (where the API server and credentials come from), [`observe`]
//! (rollout status as kubectl judges it, the owning HPA), [`apply`] (the writes and their
//! preconditions), [`error`] (API errors to [`ActionErrorKind`](selfheal_core::action::ActionErrorKind)).

pub mod apply;
pub mod config;
pub mod error;
pub mod observe;

use ::kube::api::{Api, ListParams};
use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::{Client, Config};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use selfheal_core::action::{
    ActionError, ActionOutcome, ActionRequest, Executor, Target, WorkloadKind, WorkloadState,
};
use selfheal_runtime::config::FieldError;

pub use config::{Connection, KubeConfig};

/// Why the kube executor could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KubeSetupError {
    /// A configuration field is unusable.
    #[error("invalid kube executor configuration")]
    Invalid(#[source] FieldError),
    /// Not running in a pod with a service account (or its files are unreadable).
    #[error("in-cluster Kubernetes configuration")]
    InCluster(#[source] ::kube::config::InClusterError),
    /// The kubeconfig file or context could not be loaded.
    #[error("kubeconfig")]
    Kubeconfig(#[source] ::kube::config::KubeconfigError),
    /// The client could not be built from the configuration (TLS setup, CA file).
    #[error("Kubernetes client")]
    Client(#[source] ::kube::Error),
}

/// Carries out heal actions on one cluster through its API server.
#[derive(Clone)]
pub struct KubeExecutor {
    client: Client,
    field_manager: String,
}

impl std::fmt::Debug for KubeExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeExecutor")
            .field("field_manager", &self.field_manager)
            .finish_non_exhaustive()
    }
}

impl KubeExecutor {
    /// Validates `config` and builds the client. Nothing is sent to the API server yet: the
    /// first [`Executor::observe`] is the first request.
    pub async fn connect(config: &KubeConfig) -> Result<KubeExecutor, KubeSetupError> {
        config.validate().map_err(KubeSetupError::Invalid)?;
        let mut kc = match &config.connection {
            Connection::InCluster => Config::incluster().map_err(KubeSetupError::InCluster)?,
            Connection::Kubeconfig { path, context } => {
                let options = KubeConfigOptions {
                    context: context.clone(),
                    ..KubeConfigOptions::default()
                };
                match path {
                    Some(p) => {
                        let file = Kubeconfig::read_from(p).map_err(KubeSetupError::Kubeconfig)?;
                        Config::from_custom_kubeconfig(file, &options).await
                    }
                    None => Config::from_kubeconfig(&options).await,
                }
                .map_err(KubeSetupError::Kubeconfig)?
            }
            Connection::Url {
                url,
                ca_file,
                token_file,
            } => {
                let uri = url.parse().map_err(|e| {
                    KubeSetupError::Invalid(FieldError::new(
                        "kube.connection.url",
                        format!("{url:?}: {e}"),
                    ))
                })?;
                let mut kc = Config::new(uri);
                // Re-read as it rotates, as for the in-cluster CA.
                kc.root_cert_file = ca_file.clone();
                kc.auth_info.token_file = token_file
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned());
                kc
            }
        };
        let timeout = Some(config.timeout());
        kc.connect_timeout = timeout;
        kc.read_timeout = timeout;
        kc.write_timeout = timeout;
        let client = Client::try_from(kc).map_err(KubeSetupError::Client)?;
        Ok(KubeExecutor::from_client(client, &config.field_manager))
    }

    /// An executor over an existing client.
    pub fn from_client(client: Client, field_manager: &str) -> KubeExecutor {
        KubeExecutor {
            client,
            field_manager: field_manager.to_owned(),
        }
    }

    fn deployments(&self, ns: &str) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), ns)
    }

    fn statefulsets(&self, ns: &str) -> Api<StatefulSet> {
        Api::namespaced(self.client.clone(), ns)
    }

    fn hpas(&self, ns: &str) -> Api<HorizontalPodAutoscaler> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// The HPA (autoscaling/v2) in the target's namespace whose `scaleTargetRef` names it.
    async fn owning_hpa(
        &self,
        target: &Target,
    ) -> Result<Option<HorizontalPodAutoscaler>, ActionError> {
        let list = self
            .hpas(&target.namespace)
            .list(&ListParams::default())
            .await
            .map_err(|e| error::classify(&format!("list HPAs in {}", target.namespace), e))?;
        let owners: Vec<&HorizontalPodAutoscaler> = list
            .items
            .iter()
            .filter(|h| observe::hpa_targets(h, target))
            .collect();
        if owners.len() > 1 {
            tracing::warn!(%target, hpas = owners.len(), "several HPAs target this workload; using the first by name");
        }
        Ok(observe::owning_hpa(&list.items, target).cloned())
    }
}

impl Executor for KubeExecutor {
    fn name(&self) -> &'static str {
        "kube"
    }

    async fn observe(&self, target: &Target) -> Result<WorkloadState, ActionError> {
        let what = format!("get {target}");
        let mut state = match target.kind {
            WorkloadKind::Deployment => {
                let d = self
                    .deployments(&target.namespace)
                    .get(&target.name)
                    .await
                    .map_err(|e| error::classify(&what, e))?;
                let status = d.status.clone().unwrap_or_default();
                WorkloadState {
                    target: target.clone(),
                    version: observe::version_of(&d.metadata),
                    generation: d.metadata.generation.unwrap_or(0),
                    observed_generation: status.observed_generation.unwrap_or(0),
                    replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                    ready_replicas: status.ready_replicas.unwrap_or(0),
                    updated_replicas: status.updated_replicas.unwrap_or(0),
                    available_replicas: status.available_replicas.unwrap_or(0),
                    rolling_out: observe::deployment_rolling_out(&d),
                    hpa: None,
                    last_request_id: observe::request_id_of(&d.metadata),
                }
            }
            WorkloadKind::StatefulSet => {
                let s = self
                    .statefulsets(&target.namespace)
                    .get(&target.name)
                    .await
                    .map_err(|e| error::classify(&what, e))?;
                let status = s.status.clone().unwrap_or_default();
                WorkloadState {
                    target: target.clone(),
                    version: observe::version_of(&s.metadata),
                    generation: s.metadata.generation.unwrap_or(0),
                    observed_generation: status.observed_generation.unwrap_or(0),
                    replicas: s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                    ready_replicas: status.ready_replicas.unwrap_or(0),
                    updated_replicas: status.updated_replicas.unwrap_or(0),
                    available_replicas: status.available_replicas.unwrap_or(0),
                    rolling_out: observe::statefulset_rolling_out(&s),
                    hpa: None,
                    last_request_id: observe::request_id_of(&s.metadata),
                }
            }
        };
        state.hpa = self
            .owning_hpa(target)
            .await?
            .as_ref()
            .map(observe::hpa_state);
        Ok(state)
    }

    async fn apply(&self, req: &ActionRequest) -> Result<ActionOutcome, ActionError> {
        apply::apply(self, req).await
    }
}
