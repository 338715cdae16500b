//! Carrying out an [`ActionRequest`] exactly once. Every write names the request: the
//! `selfheal.io/request-id` annotation goes onto the object in the same write as the effect,
//! under a `resourceVersion` precondition equal to the version the decision was made on
//! (`req.expect`), so the API server itself refuses a stale decision (409) and a re-sent request
//! finds its own id on the object and is reported [`ActionOutcome::already_applied`].
//!
//! Where the effect cannot carry the annotation, two writes are chained:
//! - **Scale** goes through the `scale` subresource, whose `Scale` object has no annotations.
//!   First the workload is annotated (precondition: `req.expect`), then the Scale is replaced
//!   under the annotated object's resourceVersion. A re-send that finds the id and
//!   `spec.replicas == to` is already applied; one that finds the id and `spec.replicas == from`
//!   was cut between the two writes and finishes the scale (under the object's current
//!   version, so nothing that changed it meanwhile is overwritten); any other replica count
//!   means someone else scaled it since: a conflict.
//! - **DeletePod** annotates the workload with the id and the pod's uid (precondition:
//!   `req.expect`), then deletes the pod under a uid precondition. A re-send that finds the id
//!   deletes the pod only if that very pod (same uid) still exists; a pod of the same name with
//!   another uid is its replacement, so the request is already applied.
//!
//! A different uid than `req.expect` is always a conflict (the object was deleted and
//! re-created); a different resourceVersion is a conflict unless the object carries this
//! request's id.

use std::fmt::Debug;

use ::kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use ::kube::core::NamespaceResourceScope;
use ::kube::{Resource, ResourceExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v1::{Scale, ScaleSpec};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use selfheal_core::action::{
    Action, ActionError, ActionErrorKind, ActionOutcome, ActionRequest, ObjectVersion,
    REQUEST_ID_ANNOTATION, RESTARTED_AT_ANNOTATION, Target, WorkloadKind,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::KubeExecutor;
use super::error::classify;
use super::observe::{hpa_targets, request_id_of, version_of};

/// The annotation naming the pod a DeletePod request deletes (its uid), written with the
/// request id, so that a re-sent request tells the pod it meant from its replacement.
pub const DELETE_POD_UID_ANNOTATION: &str = "selfheal.io/delete-pod-uid";

/// The longest request id accepted (it is an annotation value, logged and shown everywhere).
const MAX_REQUEST_ID: usize = 253;

/// A workload kind the executor writes: its API type and replica count.
trait Workload:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + Debug
    + Send
    + Sync
    + 'static
{
    /// `spec.replicas`, with the API server's default of 1.
    fn replicas(&self) -> i32;
}

impl Workload for Deployment {
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
}

impl Workload for StatefulSet {
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
}

/// Carries out `req`; see the module documentation for the exactly-once protocol.
pub(super) async fn apply(
    exec: &KubeExecutor,
    req: &ActionRequest,
) -> Result<ActionOutcome, ActionError> {
    check_request_id(&req.request_id)?;
    let t = &req.target;
    let result = match (&req.action, t.kind) {
        (Action::Scale { from, to }, WorkloadKind::Deployment) => {
            scale(exec, &exec.deployments(&t.namespace), req, *from, *to).await
        }
        (Action::Scale { from, to }, WorkloadKind::StatefulSet) => {
            scale(exec, &exec.statefulsets(&t.namespace), req, *from, *to).await
        }
        (Action::RolloutRestart { restarted_at }, WorkloadKind::Deployment) => {
            restart(exec, &exec.deployments(&t.namespace), req, restarted_at).await
        }
        (Action::RolloutRestart { restarted_at }, WorkloadKind::StatefulSet) => {
            restart(exec, &exec.statefulsets(&t.namespace), req, restarted_at).await
        }
        (Action::DeletePod { pod }, WorkloadKind::Deployment) => {
            delete_pod(exec, &exec.deployments(&t.namespace), req, pod).await
        }
        (Action::DeletePod { pod }, WorkloadKind::StatefulSet) => {
            delete_pod(exec, &exec.statefulsets(&t.namespace), req, pod).await
        }
        (Action::SetHpaMinReplicas { hpa, from, to }, _) => {
            set_hpa_min(exec, req, hpa, *from, *to).await
        }
    };
    match &result {
        Ok(o) => tracing::info!(
            request_id = %req.request_id, target = %t, action = %req.action.kind(),
            already_applied = o.already_applied, detail = %o.detail, "heal action applied"
        ),
        Err(e) => tracing::warn!(
            request_id = %req.request_id, target = %t, action = %req.action.kind(),
            error = %e, "heal action not applied"
        ),
    }
    result
}

fn check_request_id(id: &str) -> Result<(), ActionError> {
    if id.is_empty() || id.len() > MAX_REQUEST_ID || id.chars().any(char::is_control) {
        return Err(ActionError::new(
            ActionErrorKind::Invalid,
            format!("request id must be 1..={MAX_REQUEST_ID} printable characters"),
        ));
    }
    Ok(())
}

fn invalid(msg: String) -> ActionError {
    ActionError::new(ActionErrorKind::Invalid, msg)
}

fn conflict(msg: String) -> ActionError {
    ActionError::new(ActionErrorKind::Conflict, msg)
}

fn params(exec: &KubeExecutor) -> PatchParams {
    PatchParams {
        field_manager: Some(exec.field_manager.clone()),
        ..PatchParams::default()
    }
}

/// Reads the object the request is about and refuses another object of the same name.
async fn fetch<K: Resource + Clone + DeserializeOwned + Debug>(
    api: &Api<K>,
    name: &str,
    what: &str,
    expect: &ObjectVersion,
) -> Result<K, ActionError> {
    let obj = api
        .get(name)
        .await
        .map_err(|e| classify(&format!("get {what}"), e))?;
    let uid = obj.meta().uid.clone().unwrap_or_default();
    if uid != expect.uid {
        return Err(conflict(format!(
            "{what} is another object now: uid {uid}, the decision was made on {}",
            expect.uid
        )));
    }
    Ok(obj)
}

/// Refuses a request whose object changed since the decision.
fn check_unchanged(
    meta: &ObjectMeta,
    what: &str,
    expect: &ObjectVersion,
) -> Result<(), ActionError> {
    let rv = meta.resource_version.as_deref().unwrap_or_default();
    if rv != expect.resource_version {
        return Err(conflict(format!(
            "{what} changed since the decision: resourceVersion {rv}, the decision was made on {}",
            expect.resource_version
        )));
    }
    Ok(())
}

/// A merge patch that sets `annotations` under a resourceVersion precondition (the API server
/// answers 409 if the object is no longer at `rv`), plus `rest` at the top level.
fn annotated(rv: &str, annotations: Map<String, Value>, rest: Map<String, Value>) -> Value {
    let mut patch = rest;
    patch.insert(
        "metadata".into(),
        json!({"resourceVersion": rv, "annotations": annotations}),
    );
    Value::Object(patch)
}

fn request_annotation(req: &ActionRequest) -> Map<String, Value> {
    let mut a = Map::new();
    a.insert(REQUEST_ID_ANNOTATION.into(), json!(req.request_id));
    a
}

fn outcome(already_applied: bool, meta: &ObjectMeta, detail: String) -> ActionOutcome {
    ActionOutcome {
        already_applied,
        dry_run: false,
        version_after: Some(version_of(meta)),
        detail,
    }
}

async fn scale<K: Workload>(
    exec: &KubeExecutor,
    api: &Api<K>,
    req: &ActionRequest,
    from: i32,
    to: i32,
) -> Result<ActionOutcome, ActionError> {
    let t = &req.target;
    if to < 0 || from == to {
        return Err(invalid(format!(
            "scale of {t} from {from} to {to}: the target must be a different, non-negative count"
        )));
    }
    let obj = fetch(api, &t.name, &t.to_string(), &req.expect).await?;
    let replicas = obj.replicas();
    if request_id_of(obj.meta()).as_deref() == Some(req.request_id.as_str()) {
        if replicas == to {
            return Ok(outcome(
                true,
                obj.meta(),
                format!("{t} already scaled to {to} by this request"),
            ));
        }
        if replicas != from {
            return Err(conflict(format!(
                "{t} carries this request's id but has {replicas} replicas, neither {from} nor {to}: scaled by someone else since"
            )));
        }
        // Cut between the annotation and the scale: finish it.
        let rv = obj.meta().resource_version.clone().unwrap_or_default();
        let done = put_scale(exec, api, t, &rv, to).await?;
        return Ok(outcome(
            false,
            &done.metadata,
            format!(
                "finished scaling {t} from {from} to {to} (scale subresource; annotated earlier)"
            ),
        ));
    }
    check_unchanged(obj.meta(), &t.to_string(), &req.expect)?;
    if replicas != from {
        return Err(invalid(format!(
            "scale of {t} from {from}: the object at the expected version has {replicas} replicas"
        )));
    }
    let patch = annotated(
        &req.expect.resource_version,
        request_annotation(req),
        Map::new(),
    );
    let marked = api
        .patch(&t.name, &params(exec), &Patch::Merge(&patch))
        .await
        .map_err(|e| classify(&format!("annotate {t} with the request id"), e))?;
    let rv = marked.meta().resource_version.clone().unwrap_or_default();
    let done = put_scale(exec, api, t, &rv, to).await?;
    Ok(outcome(
        false,
        &done.metadata,
        format!("scaled {t} from {from} to {to} (scale subresource)"),
    ))
}

/// Replaces the workload's Scale with `replicas` under resourceVersion `rv`.
async fn put_scale<K: Workload>(
    exec: &KubeExecutor,
    api: &Api<K>,
    t: &Target,
    rv: &str,
    replicas: i32,
) -> Result<Scale, ActionError> {
    let scale = Scale {
        metadata: ObjectMeta {
            name: Some(t.name.clone()),
            namespace: Some(t.namespace.clone()),
            resource_version: Some(rv.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(ScaleSpec {
            replicas: Some(replicas),
        }),
        status: None,
    };
    let pp = PostParams {
        field_manager: Some(exec.field_manager.clone()),
        ..PostParams::default()
    };
    api.replace_scale(&t.name, &pp, &scale)
        .await
        .map_err(|e| classify(&format!("scale {t} to {replicas}"), e))
}

async fn restart<K: Workload>(
    exec: &KubeExecutor,
    api: &Api<K>,
    req: &ActionRequest,
    restarted_at: &str,
) -> Result<ActionOutcome, ActionError> {
    let t = &req.target;
    if restarted_at.is_empty() || restarted_at.len() > 64 {
        return Err(invalid(format!(
            "rollout restart of {t}: restarted_at must be an RFC 3339 time"
        )));
    }
    let obj = fetch(api, &t.name, &t.to_string(), &req.expect).await?;
    if request_id_of(obj.meta()).as_deref() == Some(req.request_id.as_str()) {
        return Ok(outcome(
            true,
            obj.meta(),
            format!("{t} already restarted by this request"),
        ));
    }
    check_unchanged(obj.meta(), &t.to_string(), &req.expect)?;
    let mut rest = Map::new();
    rest.insert(
        "spec".into(),
        json!({"template": {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: restarted_at}}}}),
    );
    let patch = annotated(&req.expect.resource_version, request_annotation(req), rest);
    let done = api
        .patch(&t.name, &params(exec), &Patch::Merge(&patch))
        .await
        .map_err(|e| classify(&format!("restart {t}"), e))?;
    Ok(outcome(
        false,
        done.meta(),
        format!("rolling restart of {t} ({RESTARTED_AT_ANNOTATION}={restarted_at})"),
    ))
}

async fn delete_pod<K: Workload>(
    exec: &KubeExecutor,
    api: &Api<K>,
    req: &ActionRequest,
    pod: &str,
) -> Result<ActionOutcome, ActionError> {
    let t = &req.target;
    let pods: Api<Pod> = Api::namespaced(exec.client.clone(), &t.namespace);
    let obj = fetch(api, &t.name, &t.to_string(), &req.expect).await?;
    let what = format!("pod {}/{pod}", t.namespace);
    if request_id_of(obj.meta()).as_deref() == Some(req.request_id.as_str()) {
        let meant = obj
            .annotations()
            .get(DELETE_POD_UID_ANNOTATION)
            .cloned()
            .unwrap_or_default();
        let current = pods
            .get_opt(pod)
            .await
            .map_err(|e| classify(&format!("get {what}"), e))?;
        return match current {
            Some(p) if p.metadata.uid.as_deref() == Some(meant.as_str()) => {
                // Cut between the annotation and the delete: finish it.
                remove_pod(&pods, pod, &what, &meant).await?;
                Ok(outcome(
                    false,
                    obj.meta(),
                    format!("finished deleting {what} of {t} (annotated earlier)"),
                ))
            }
            _ => Ok(outcome(
                true,
                obj.meta(),
                format!("{what} of {t} already deleted by this request"),
            )),
        };
    }
    check_unchanged(obj.meta(), &t.to_string(), &req.expect)?;
    let p = pods
        .get(pod)
        .await
        .map_err(|e| classify(&format!("get {what}"), e))?;
    let owner = workload_uid_of_pod(exec, &p, t.kind).await?;
    let uid = obj.meta().uid.clone().unwrap_or_default();
    if owner.as_deref() != Some(uid.as_str()) {
        return Err(ActionError::new(
            ActionErrorKind::Forbidden,
            format!("{what} is not a pod of {t}"),
        ));
    }
    let pod_uid = p.metadata.uid.clone().unwrap_or_default();
    let mut annotations = request_annotation(req);
    annotations.insert(DELETE_POD_UID_ANNOTATION.into(), json!(pod_uid));
    let patch = annotated(&req.expect.resource_version, annotations, Map::new());
    let marked = api
        .patch(&t.name, &params(exec), &Patch::Merge(&patch))
        .await
        .map_err(|e| classify(&format!("annotate {t} with the request id"), e))?;
    remove_pod(&pods, pod, &what, &pod_uid).await?;
    Ok(outcome(
        false,
        marked.meta(),
        format!("deleted {what} of {t} (its controller re-creates it)"),
    ))
}

/// Deletes pod `name` only if it is still the incarnation `uid`.
async fn remove_pod(pods: &Api<Pod>, name: &str, what: &str, uid: &str) -> Result<(), ActionError> {
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    pods.delete(name, &dp)
        .await
        .map(|_| ())
        .map_err(|e| classify(&format!("delete {what}"), e))
}

/// The uid of the workload that controls `pod`: its StatefulSet, or for a Deployment the owner
/// of its ReplicaSet.
async fn workload_uid_of_pod(
    exec: &KubeExecutor,
    pod: &Pod,
    kind: WorkloadKind,
) -> Result<Option<String>, ActionError> {
    let controller =
        |refs: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>,
         kind: &str| {
            refs.into_iter()
                .flatten()
                .find(|r| r.controller == Some(true) && r.kind == kind)
                .cloned()
        };
    match kind {
        WorkloadKind::StatefulSet => {
            Ok(controller(pod.metadata.owner_references.as_ref(), "StatefulSet").map(|r| r.uid))
        }
        WorkloadKind::Deployment => {
            let Some(rs_ref) = controller(pod.metadata.owner_references.as_ref(), "ReplicaSet")
            else {
                return Ok(None);
            };
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let rss: Api<ReplicaSet> = Api::namespaced(exec.client.clone(), &ns);
            let rs = rss
                .get_opt(&rs_ref.name)
                .await
                .map_err(|e| classify(&format!("get replicaset {ns}/{}", rs_ref.name), e))?;
            Ok(rs
                .filter(|rs| rs.metadata.uid.as_deref() == Some(rs_ref.uid.as_str()))
                .and_then(|rs| controller(rs.metadata.owner_references.as_ref(), "Deployment"))
                .map(|r| r.uid))
        }
    }
}

async fn set_hpa_min(
    exec: &KubeExecutor,
    req: &ActionRequest,
    name: &str,
    from: i32,
    to: i32,
) -> Result<ActionOutcome, ActionError> {
    let t = &req.target;
    let api = exec.hpas(&t.namespace);
    let what = format!("HPA {}/{name}", t.namespace);
    let hpa: HorizontalPodAutoscaler = fetch(&api, name, &what, &req.expect).await?;
    if !hpa_targets(&hpa, t) {
        return Err(ActionError::new(
            ActionErrorKind::Forbidden,
            format!("{what} does not target {t}"),
        ));
    }
    if request_id_of(&hpa.metadata).as_deref() == Some(req.request_id.as_str()) {
        return Ok(outcome(
            true,
            &hpa.metadata,
            format!("{what} floor already set to {to} by this request"),
        ));
    }
    check_unchanged(&hpa.metadata, &what, &req.expect)?;
    let spec = hpa.spec.as_ref();
    let current = spec.and_then(|s| s.min_replicas).unwrap_or(1);
    let max = spec.map_or(0, |s| s.max_replicas);
    if current != from {
        return Err(invalid(format!(
            "{what}: minReplicas is {current} at the expected version, the request says {from}"
        )));
    }
    if to < 1 || to > max || to == from {
        return Err(invalid(format!(
            "{what}: minReplicas {to} must differ from {from} and be in 1..={max} (its maxReplicas)"
        )));
    }
    let mut rest = Map::new();
    rest.insert("spec".into(), json!({"minReplicas": to}));
    let patch = annotated(&req.expect.resource_version, request_annotation(req), rest);
    let done = api
        .patch(name, &params(exec), &Patch::Merge(&patch))
        .await
        .map_err(|e| classify(&format!("set {what} minReplicas to {to}"), e))?;
    Ok(outcome(
        false,
        &done.metadata,
        format!("{what} minReplicas {from} -> {to} (for {t})"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_bounded_printable_strings() {
        check_request_id("inc-42/1").expect("plain id");
        assert!(check_request_id("").is_err());
        assert!(check_request_id("a\nb").is_err());
        assert!(check_request_id(&"x".repeat(MAX_REQUEST_ID + 1)).is_err());
    }

    #[test]
    fn the_annotation_patch_carries_the_version_precondition() {
        let mut rest = Map::new();
        rest.insert("spec".into(), json!({"minReplicas": 3}));
        let p = annotated("41", request_annotation_for("inc/2"), rest);
        assert_eq!(
            p,
            json!({"metadata": {"resourceVersion": "41", "annotations": {REQUEST_ID_ANNOTATION: "inc/2"}},
                   "spec": {"minReplicas": 3}})
        );
    }

    fn request_annotation_for(id: &str) -> Map<String, Value> {
        let mut a = Map::new();
        a.insert(REQUEST_ID_ANNOTATION.into(), json!(id));
        a
    }
}
