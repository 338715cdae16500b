//! What a workload looks like to the policy: its replica counts and whether a rollout is
//! unfinished, judged as `kubectl rollout status` judges it, and the HorizontalPodAutoscaler
//! (autoscaling/v2) whose `scaleTargetRef` names it.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use selfheal_core::action::{HpaState, ObjectVersion, REQUEST_ID_ANNOTATION, Target};

/// The condition reason the deployment controller sets when a rollout has stalled.
const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

/// Whether a Deployment's rollout is unfinished, by kubectl's rule: the latest generation is
/// not yet observed, its progress deadline is exceeded (kubectl fails the rollout; it is not
/// done either), fewer replicas are updated than wanted, old replicas are still terminating,
/// or updated ones are not all available yet.
pub fn deployment_rolling_out(d: &Deployment) -> bool {
    let generation = d.metadata.generation.unwrap_or(0);
    let Some(status) = &d.status else {
        return true;
    };
    if generation > status.observed_generation.unwrap_or(0) {
        return true;
    }
    let stalled = status.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some(PROGRESS_DEADLINE_EXCEEDED)
    });
    let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    stalled
        || updated < wanted
        || status.replicas.unwrap_or(0) > updated
        || status.available_replicas.unwrap_or(0) < updated
}

/// Whether a StatefulSet's rollout is unfinished, by kubectl's rule: generation not observed,
/// fewer ready replicas than wanted, and then either a partitioned update short of its
/// partition or an update revision not yet current. (kubectl refuses to judge an `OnDelete`
/// StatefulSet; here it counts as rolled out once observed and ready, since nothing will
/// progress without someone deleting pods.)
pub fn statefulset_rolling_out(s: &StatefulSet) -> bool {
    let generation = s.metadata.generation.unwrap_or(0);
    let Some(status) = &s.status else {
        return true;
    };
    let observed = status.observed_generation.unwrap_or(0);
    if observed == 0 || generation > observed {
        return true;
    }
    let spec = s.spec.as_ref();
    let wanted = spec.and_then(|s| s.replicas).unwrap_or(1);
    if status.ready_replicas.unwrap_or(0) < wanted {
        return true;
    }
    let strategy = spec.and_then(|s| s.update_strategy.as_ref());
    if strategy
        .and_then(|u| u.type_.as_deref())
        .is_some_and(|t| t != "RollingUpdate")
    {
        return false;
    }
    if let Some(partition) = strategy
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.partition)
    {
        return status.updated_replicas.unwrap_or(0) < wanted - partition;
    }
    status.update_revision != status.current_revision
}

/// An object's uid and resourceVersion.
pub fn version_of(meta: &ObjectMeta) -> ObjectVersion {
    ObjectVersion {
        uid: meta.uid.clone().unwrap_or_default(),
        resource_version: meta.resource_version.clone().unwrap_or_default(),
    }
}

/// The value of the request-id annotation.
pub fn request_id_of(meta: &ObjectMeta) -> Option<String> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REQUEST_ID_ANNOTATION))
        .cloned()
}

/// Whether `hpa`'s `scaleTargetRef` names `target` (an `apps` workload of that kind and
/// name; the HPA is in the target's namespace by construction).
pub fn hpa_targets(hpa: &HorizontalPodAutoscaler, target: &Target) -> bool {
    let Some(spec) = &hpa.spec else {
        return false;
    };
    let r = &spec.scale_target_ref;
    let group_ok = r
        .api_version
        .as_deref()
        .is_none_or(|v| v.split('/').next() == Some("apps"));
    group_ok && r.kind == target.kind.as_str() && r.name == target.name
}

/// The policy's view of an HPA.
pub fn hpa_state(hpa: &HorizontalPodAutoscaler) -> HpaState {
    let spec = hpa.spec.as_ref();
    HpaState {
        name: hpa.metadata.name.clone().unwrap_or_default(),
        version: version_of(&hpa.metadata),
        min_replicas: spec.and_then(|s| s.min_replicas).unwrap_or(1),
        max_replicas: spec.map_or(0, |s| s.max_replicas),
        current_replicas: hpa
            .status
            .as_ref()
            .and_then(|s| s.current_replicas)
            .unwrap_or(0),
        last_request_id: request_id_of(&hpa.metadata),
    }
}

/// The HPA among `hpas` that targets `target`: the first by name when several do (a
/// misconfiguration the HPA controller itself reports as ambiguous).
pub fn owning_hpa<'a>(
    hpas: &'a [HorizontalPodAutoscaler],
    target: &Target,
) -> Option<&'a HorizontalPodAutoscaler> {
    hpas.iter()
        .filter(|h| hpa_targets(h, target))
        .min_by(|a, b| a.metadata.name.cmp(&b.metadata.name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{
        DeploymentCondition, DeploymentSpec, DeploymentStatus, RollingUpdateStatefulSetStrategy,
        StatefulSetSpec, StatefulSetStatus, StatefulSetUpdateStrategy,
    };

    fn deployment(generation: i64, replicas: i32, status: DeploymentStatus) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                generation: Some(generation),
                ..ObjectMeta::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                ..DeploymentSpec::default()
            }),
            status: Some(status),
        }
    }

    fn settled(generation: i64, n: i32) -> DeploymentStatus {
        DeploymentStatus {
            observed_generation: Some(generation),
            replicas: Some(n),
            updated_replicas: Some(n),
            ready_replicas: Some(n),
            available_replicas: Some(n),
            ..DeploymentStatus::default()
        }
    }

    #[test]
    fn a_deployment_is_rolled_out_only_when_kubectl_would_say_so() {
        assert!(!deployment_rolling_out(&deployment(3, 4, settled(3, 4))));
        // Spec not yet observed.
        assert!(deployment_rolling_out(&deployment(4, 4, settled(3, 4))));
        // Scaled up, new replicas not all updated.
        assert!(deployment_rolling_out(&deployment(3, 6, settled(3, 4))));
        // Old replicas still terminating.
        let mut s = settled(3, 4);
        s.replicas = Some(5);
        assert!(deployment_rolling_out(&deployment(3, 4, s)));
        // Updated but not yet available.
        let mut s = settled(3, 4);
        s.available_replicas = Some(3);
        assert!(deployment_rolling_out(&deployment(3, 4, s)));
        // Stalled past its progress deadline.
        let mut s = settled(3, 4);
        s.conditions = Some(vec![DeploymentCondition {
            type_: "Progressing".into(),
            status: "False".into(),
            reason: Some(PROGRESS_DEADLINE_EXCEEDED.into()),
            ..DeploymentCondition::default()
        }]);
        assert!(deployment_rolling_out(&deployment(3, 4, s)));
        // No status at all: a brand-new object.
        let mut d = deployment(1, 1, settled(1, 1));
        d.status = None;
        assert!(deployment_rolling_out(&d));
    }

    fn statefulset(
        replicas: i32,
        status: StatefulSetStatus,
        strategy: Option<StatefulSetUpdateStrategy>,
    ) -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                generation: Some(2),
                ..ObjectMeta::default()
            },
            spec: Some(StatefulSetSpec {
                replicas: Some(replicas),
                update_strategy: strategy,
                ..StatefulSetSpec::default()
            }),
            status: Some(status),
        }
    }

    fn sts_status(ready: i32, updated: i32, current: &str, update: &str) -> StatefulSetStatus {
        StatefulSetStatus {
            observed_generation: Some(2),
            replicas: ready,
            ready_replicas: Some(ready),
            updated_replicas: Some(updated),
            current_revision: Some(current.into()),
            update_revision: Some(update.into()),
            ..StatefulSetStatus::default()
        }
    }

    #[test]
    fn a_statefulset_is_rolled_out_only_when_kubectl_would_say_so() {
        assert!(!statefulset_rolling_out(&statefulset(
            3,
            sts_status(3, 3, "r2", "r2"),
            None
        )));
        assert!(statefulset_rolling_out(&statefulset(
            3,
            sts_status(2, 3, "r2", "r2"),
            None
        )));
        assert!(statefulset_rolling_out(&statefulset(
            3,
            sts_status(3, 1, "r1", "r2"),
            None
        )));
        let mut unobserved = sts_status(3, 3, "r2", "r2");
        unobserved.observed_generation = Some(1);
        assert!(statefulset_rolling_out(&statefulset(3, unobserved, None)));
        // A partition of 2 on 3 replicas: one updated pod finishes the rollout.
        let partitioned = Some(StatefulSetUpdateStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateStatefulSetStrategy {
                partition: Some(2),
                ..RollingUpdateStatefulSetStrategy::default()
            }),
        });
        assert!(!statefulset_rolling_out(&statefulset(
            3,
            sts_status(3, 1, "r1", "r2"),
            partitioned.clone()
        )));
        assert!(statefulset_rolling_out(&statefulset(
            3,
            sts_status(3, 0, "r1", "r2"),
            partitioned
        )));
    }
}
