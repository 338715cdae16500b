//! Heal actions as data: what healing may do to a workload, the observed state a decision is made
//! on, and the one executor interface every way of carrying an action out implements (dry-run,
//! kube direct, the remote heal API). Shared by the aggregator (which decides and sends) and the
//! heal API server (which carries out), so both agree on the request byte for byte.
//!
//! An [`ActionRequest`] always names the object's `uid` and `resourceVersion` the decision was
//! made on, and carries an idempotency key (`request_id`): an executor refuses a request whose
//! object has changed in between ([`ActionErrorKind::Conflict`]) and recognises a request it has
//! already applied ([`ActionOutcome::already_applied`]), so a re-sent action never acts twice.

use std::fmt;
use std::future::Future;

use serde::{Deserialize, Serialize};

/// The kind of workload an action targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum WorkloadKind {
    /// `apps/v1` Deployment.
    Deployment,
    /// `apps/v1` StatefulSet.
    StatefulSet,
}

impl WorkloadKind {
    /// The Kubernetes kind name (`Deployment`).
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
        }
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A workload, by namespace, kind and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Target {
    /// Its namespace.
    pub namespace: String,
    /// Deployment or StatefulSet.
    pub kind: WorkloadKind,
    /// Its name.
    pub name: String,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.kind, self.name)
    }
}

/// The version of an object a decision was made on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjectVersion {
    /// `metadata.uid`: a deleted and re-created object of the same name is another object.
    pub uid: String,
    /// `metadata.resourceVersion`.
    pub resource_version: String,
}

/// The HorizontalPodAutoscaler (autoscaling/v2) that owns a workload's replica count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HpaState {
    /// The HPA's name (same namespace as the workload).
    pub name: String,
    /// Its version.
    pub version: ObjectVersion,
    /// `spec.minReplicas` (Kubernetes' default 1 when unset).
    pub min_replicas: i32,
    /// `spec.maxReplicas`.
    pub max_replicas: i32,
    /// `status.currentReplicas`.
    pub current_replicas: i32,
    /// The value of the `selfheal.io/request-id` annotation, if any.
    pub last_request_id: Option<String>,
}

/// What an executor saw of a workload: what the policy decides on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadState {
    /// The workload.
    pub target: Target,
    /// Its version.
    pub version: ObjectVersion,
    /// `metadata.generation`.
    pub generation: i64,
    /// `status.observedGeneration`: below `generation`, the controller has not yet seen the
    /// latest spec (mid-rollout).
    pub observed_generation: i64,
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.readyReplicas`.
    pub ready_replicas: i32,
    /// `status.updatedReplicas`.
    pub updated_replicas: i32,
    /// `status.availableReplicas`.
    pub available_replicas: i32,
    /// Whether a rollout is unfinished (as `kubectl rollout status` judges it: generation not
    /// observed, or updated/available replicas short of `spec.replicas`).
    pub rolling_out: bool,
    /// The HPA that targets it, if any.
    pub hpa: Option<HpaState>,
    /// The value of the `selfheal.io/request-id` annotation, if any: the last action applied.
    pub last_request_id: Option<String>,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Action {
    /// Set `spec.replicas` from `from` to `to` (the scale subresource).
    Scale {
        /// Replicas the decision saw.
        from: i32,
        /// Replicas wanted.
        to: i32,
    },
    /// Rolling restart: set the pod template's `kubectl.kubernetes.io/restartedAt` annotation
    /// to `restarted_at` (RFC 3339), as `kubectl rollout restart` does.
    RolloutRestart {
        /// The annotation's value.
        restarted_at: String,
    },
    /// Delete one pod of the workload (its controller re-creates it).
    DeletePod {
        /// The pod's name.
        pod: String,
    },
    /// Set the owning HPA's `spec.minReplicas` from `from` to `to`: raise the floor instead
    /// of fighting the autoscaler, and later restore it.
    SetHpaMinReplicas {
        /// The HPA's name.
        hpa: String,
        /// The floor the decision saw.
        from: i32,
        /// The floor wanted.
        to: i32,
    },
}

impl Action {
    /// The action's kind, for allow-lists, metrics and logs.
    pub fn kind(&self) -> ActionKind {
        match self {
            Action::Scale { .. } => ActionKind::Scale,
            Action::RolloutRestart { .. } => ActionKind::RolloutRestart,
            Action::DeletePod { .. } => ActionKind::DeletePod,
            Action::SetHpaMinReplicas { .. } => ActionKind::SetHpaMinReplicas,
        }
    }
}

/// An [`Action`]'s kind without its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// [`Action::Scale`].
    Scale,
    /// [`Action::RolloutRestart`].
    RolloutRestart,
    /// [`Action::DeletePod`].
    DeletePod,
    /// [`Action::SetHpaMinReplicas`].
    SetHpaMinReplicas,
}

impl ActionKind {
    /// Every kind.
    pub const ALL: [ActionKind; 4] = [
        ActionKind::Scale,
        ActionKind::RolloutRestart,
        ActionKind::DeletePod,
        ActionKind::SetHpaMinReplicas,
    ];

    /// The kind's name in configuration, JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Scale => "scale",
            ActionKind::RolloutRestart => "rollout_restart",
            ActionKind::DeletePod => "delete_pod",
            ActionKind::SetHpaMinReplicas => "set_hpa_min_replicas",
        }
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One action to carry out, exactly once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRequest {
    /// The idempotency key, `<incident id>/<step>`: recorded in the store before the action is
    /// sent, and written onto the object with it (the `selfheal.io/request-id` annotation), so
    /// a re-sent request is recognised.
    pub request_id: String,
    /// The workload.
    pub target: Target,
    /// The version of the object the action applies to (the workload, or the HPA for
    /// [`Action::SetHpaMinReplicas`]): a different version is a conflict.
    pub expect: ObjectVersion,
    /// What to do.
    pub action: Action,
}

/// What an executor did with a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionOutcome {
    /// The object already carried this request id: nothing was written this time.
    pub already_applied: bool,
    /// Nothing was written because the executor only records (dry-run).
    pub dry_run: bool,
    /// The object's version after the action.
    pub version_after: Option<ObjectVersion>,
    /// What was done, in words (for the timeline).
    pub detail: String,
}

/// Why an action could not be carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionErrorKind {
    /// The object changed (or is another object) since the decision: decide again.
    Conflict,
    /// The object does not exist.
    NotFound,
    /// The executor is not allowed to do this (RBAC, allow-list, bounds, authentication).
    Forbidden,
    /// The request is malformed or out of bounds.
    Invalid,
    /// The API or the heal API could not be reached, timed out, or answered 5xx/429.
    Unavailable,
}

impl ActionErrorKind {
    /// The kind's name in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionErrorKind::Conflict => "conflict",
            ActionErrorKind::NotFound => "not_found",
            ActionErrorKind::Forbidden => "forbidden",
            ActionErrorKind::Invalid => "invalid",
            ActionErrorKind::Unavailable => "unavailable",
        }
    }
}

/// An executor's error: its class and what happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}", kind = kind.as_str())]
pub struct ActionError {
    /// The class, which decides whether to retry.
    pub kind: ActionErrorKind,
    /// What happened.
    pub message: String,
}

impl ActionError {
    /// An error of `kind`.
    pub fn new(kind: ActionErrorKind, message: impl Into<String>) -> ActionError {
        ActionError {
            kind,
            message: message.into(),
        }
    }

    /// Whether the same request may succeed later: only [`ActionErrorKind::Unavailable`].
    /// A conflict is not retried as is; the decision is made again on the new state.
    pub fn is_retryable(&self) -> bool {
        self.kind == ActionErrorKind::Unavailable
    }
}

/// How an action is carried out: dry-run, kube direct, or the remote heal API.
pub trait Executor: Send + Sync + 'static {
    /// A short name for logs, metrics and the timeline (`dry-run`, `kube`, `heal-api`).
    fn name(&self) -> &'static str;

    /// The workload's current state (and its HPA's), for the policy to decide on.
    fn observe(
        &self,
        target: &Target,
    ) -> impl Future<Output = Result<WorkloadState, ActionError>> + Send;

    /// Carries out `req` once: refuses it if the object is no longer `req.expect`, and reports
    /// [`ActionOutcome::already_applied`] if the object already carries `req.request_id`.
    fn apply(
        &self,
        req: &ActionRequest,
    ) -> impl Future<Output = Result<ActionOutcome, ActionError>> + Send;
}

/// The annotation on the workload (or HPA) that names the last request applied to it.
pub const REQUEST_ID_ANNOTATION: &str = "selfheal.io/request-id";

/// The pod-template annotation `kubectl rollout restart` sets.
pub const RESTARTED_AT_ANNOTATION: &str = "kubectl.kubernetes.io/restartedAt";
