//! Kubernetes pod JSON, decoded into only the fields the agent uses (unknown fields ignored),
//! and turned into [`PodInfo`]: the cgroup's UID (a static pod's, through its mirror), the
//! owning workload, QoS and container health.

use super::PodsError;
use super::directory::PodInfo;
use selfheal_core::schema::{OwnerRef, QosClass};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Annotation the kubelet puts on a static pod's mirror: the static pod's own UID, which is the
/// one its cgroup is named after (the mirror pod in the API server has a different UID).
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// Label the Deployment controller puts on every pod of a ReplicaSet it owns.
const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// `v1.PodList`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PodList {
    metadata: ListMeta,
    items: Vec<Pod>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ListMeta {
    resource_version: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(super) struct Pod {
    pub(super) metadata: ObjectMeta,
    pub(super) spec: PodSpec,
    pub(super) status: PodStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct ObjectMeta {
    pub(super) uid: String,
    pub(super) name: String,
    pub(super) namespace: String,
    pub(super) resource_version: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub(super) labels: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_as_default")]
    pub(super) annotations: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_as_default")]
    pub(super) owner_references: Vec<OwnerReference>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(super) struct OwnerReference {
    pub(super) kind: String,
    pub(super) name: String,
    pub(super) controller: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(super) struct PodSpec {
    #[serde(deserialize_with = "null_as_default")]
    pub(super) containers: Vec<serde::de::IgnoredAny>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct PodStatus {
    pub(super) qos_class: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub(super) container_statuses: Vec<ContainerStatus>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct ContainerStatus {
    ready: bool,
    restart_count: u64,
    state: ContainerState,
    last_state: ContainerState,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(super) struct ContainerState {
    terminated: Option<Terminated>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct Terminated {
    exit_code: i64,
    reason: Option<String>,
}

/// Kubernetes writes `null` for empty lists and maps in places (bookmarks carry
/// `"containers": null`); read it as empty.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// One line of a watch stream.
#[derive(Debug, Deserialize)]
pub(super) struct WatchEvent {
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) object: serde_json::Value,
}

/// `meta.v1.Status`, as sent in `ERROR` events and error responses.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Status {
    pub(super) code: u16,
    pub(super) message: String,
    pub(super) reason: String,
}

impl Pod {
    /// The UID the pod's cgroup carries: a mirror pod stands for a static pod whose UID is in
    /// the mirror annotation.
    pub(super) fn cgroup_uid(&self) -> &str {
        self.metadata
            .annotations
            .get(MIRROR_ANNOTATION)
            .map(String::as_str)
            .filter(|u| !u.is_empty())
            .unwrap_or(&self.metadata.uid)
    }

    fn owner(&self) -> Option<OwnerRef> {
        let refs = &self.metadata.owner_references;
        let r = refs
            .iter()
            .find(|r| r.controller == Some(true))
            .or_else(|| refs.first())?;
        if r.kind == "ReplicaSet" {
            // `<deployment>-<pod-template-hash>` is how the Deployment controller names its
            // ReplicaSets; a bare ReplicaSet's pods lack the label (or it does not match).
            let deployment = self
                .metadata
                .labels
                .get(POD_TEMPLATE_HASH)
                .and_then(|hash| r.name.strip_suffix(hash.as_str()))
                .and_then(|s| s.strip_suffix('-'))
                .filter(|d| !d.is_empty());
            if let Some(d) = deployment {
                return Some(OwnerRef {
                    kind: "Deployment".into(),
                    name: d.into(),
                });
            }
        }
        Some(OwnerRef {
            kind: r.kind.clone(),
            name: r.name.clone(),
        })
    }

    pub(super) fn info(&self) -> Option<PodInfo> {
        let uid = self.cgroup_uid();
        if uid.is_empty() {
            return None;
        }
        let statuses = &self.status.container_statuses;
        let ready = statuses.iter().filter(|c| c.ready).count();
        // Before the kubelet reports statuses, every declared container counts as not ready.
        let declared = self.spec.containers.len().max(statuses.len());
        let mut oom = false;
        let mut error = false;
        for t in statuses
            .iter()
            .flat_map(|c| [&c.last_state.terminated, &c.state.terminated])
            .flatten()
        {
            if t.reason.as_deref() == Some("OOMKilled") {
                oom = true;
            } else if t.exit_code != 0 {
                error = true;
            }
        }
        Some(PodInfo {
            uid: uid.to_owned(),
            namespace: self.metadata.namespace.clone(),
            name: self.metadata.name.clone(),
            owner: self.owner(),
            qos: match self.status.qos_class.as_deref() {
                Some("Guaranteed") => Some(QosClass::Guaranteed),
                Some("Burstable") => Some(QosClass::Burstable),
                Some("BestEffort") => Some(QosClass::BestEffort),
                _ => None,
            },
            restarts_total: statuses.iter().map(|c| c.restart_count).sum(),
            containers_not_ready: (declared - ready) as u64,
            last_termination_oom_killed: oom,
            last_termination_error: error,
        })
    }
}

/// Parses a `v1.PodList` body into pod identities and the list's resource version.
pub fn parse_pod_list(body: &[u8]) -> Result<(Vec<PodInfo>, Option<String>), PodsError> {
    let list: PodList = serde_json::from_slice(body).map_err(|source| PodsError::Decode {
        what: "PodList",
        source,
    })?;
    let pods = list.items.iter().filter_map(Pod::info).collect();
    Ok((pods, list.metadata.resource_version))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PODS: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/kube/pods.json"
    ));

    fn by_name(pods: &[PodInfo], name: &str) -> PodInfo {
        pods.iter()
            .find(|p| p.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} missing from fixture"))
    }

    fn owner(kind: &str, name: &str) -> Option<OwnerRef> {
        Some(OwnerRef {
            kind: kind.into(),
            name: name.into(),
        })
    }

    #[test]
    fn fixture_pods_resolve_to_their_identity() {
        let (pods, rv) = parse_pod_list(PODS.as_bytes()).expect("fixture parses");
        assert_eq!(rv.as_deref(), Some("1240"));
        assert_eq!(pods.len(), 8);

        let web = by_name(&pods, "web-7d4b9c8f6d-x2x9k");
        assert_eq!(
            web,
            PodInfo {
                uid: "0f6c1d3a-2b4e-4c8a-9e71-5a2d7c4b8e01".into(),
                namespace: "shop".into(),
                name: "web-7d4b9c8f6d-x2x9k".into(),
                owner: owner("Deployment", "web"),
                qos: Some(QosClass::Burstable),
                restarts_total: 3,
                containers_not_ready: 0,
                last_termination_oom_killed: true,
                last_termination_error: false,
            }
        );

        let db = by_name(&pods, "db-0");
        assert_eq!(db.owner, owner("StatefulSet", "db"));
        assert_eq!(db.qos, Some(QosClass::Guaranteed));
        assert!(!db.last_termination_oom_killed && !db.last_termination_error);

        let ne = by_name(&pods, "node-exporter-k8t2q");
        assert_eq!(ne.owner, owner("DaemonSet", "node-exporter"));
        assert_eq!(ne.qos, Some(QosClass::BestEffort));

        let debug = by_name(&pods, "debug");
        assert_eq!(debug.owner, None);
        assert_eq!(debug.restarts_total, 5);
        assert_eq!(debug.containers_not_ready, 1);
        assert!(debug.last_termination_error && !debug.last_termination_oom_killed);

        let apiserver = by_name(&pods, "kube-apiserver-node-a");
        assert_eq!(apiserver.owner, owner("Node", "node-a"));
        // Keyed by the static pod's UID (its cgroup's), not the mirror pod's.
        assert_eq!(apiserver.uid, "4b2a8f1e6c9d3b7a5e0f2c4d6b8a1e3f");

        let bare_rs = by_name(&pods, "worker-rs-hz7mq");
        assert_eq!(bare_rs.owner, owner("ReplicaSet", "worker-rs"));

        let job = by_name(&pods, "migrate-29148300-8jx4p");
        assert_eq!(job.owner, owner("Job", "migrate-29148300"));
        assert!(!job.last_termination_error, "exit 0 is not an error");
        assert_eq!(job.containers_not_ready, 1);
    }

    #[test]
    fn replicaset_name_without_matching_hash_stays_a_replicaset() {
        let pod: Pod = serde_json::from_str(
            r#"{"metadata":{"uid":"u","name":"x","namespace":"n",
                "labels":{"pod-template-hash":"abc"},
                "ownerReferences":[{"kind":"ReplicaSet","name":"web-def","controller":true}]}}"#,
        )
        .expect("pod");
        assert_eq!(pod.owner(), owner("ReplicaSet", "web-def"));
    }
}
