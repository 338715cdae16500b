//! The pod directory: what the agent knows about each pod on its node, by the UID its cgroup
//! carries. One watcher writes it, the collect stage reads it once per cycle.

use selfheal_core::schema::{OwnerRef, QosClass};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::sync::Notify;

/// What the agent knows about one pod on its node.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    /// The pod's UID as its cgroup is named (for a static pod, the static pod's UID, not the
    /// mirror pod's).
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Owning workload (Deployment through its ReplicaSet, StatefulSet, DaemonSet, ...).
    pub owner: Option<OwnerRef>,
    /// QoS class from the pod status.
    pub qos: Option<QosClass>,
    /// Restarts summed over containers.
    pub restarts_total: u64,
    /// Containers not ready.
    pub containers_not_ready: u64,
    /// A container's last termination was an OOM kill.
    pub last_termination_oom_killed: bool,
    /// A container's last termination was an error (non-zero exit, not OOM).
    pub last_termination_error: bool,
}

/// Pods on this node by UID, as last listed or watched.
#[derive(Debug, Default)]
pub struct PodDirectory {
    pub(super) pods: HashMap<String, PodInfo>,
    /// Resource version of the last list or event seen (API source only).
    pub(super) resource_version: Option<String>,
    /// True once a first list has succeeded.
    synced: bool,
    pub(super) relist: Arc<Notify>,
}

impl PodDirectory {
    /// A directory holding exactly `pods`, as if just listed (for one-shot runs and tests).
    pub fn from_pods(pods: impl IntoIterator<Item = PodInfo>) -> PodDirectory {
        let mut dir = PodDirectory::default();
        dir.replace(pods.into_iter().collect(), None);
        dir
    }

    /// The pod with this UID, if known. Accepts the systemd cgroup driver's spelling too
    /// (`_` in place of `-`).
    pub fn get(&self, uid: &str) -> Option<&PodInfo> {
        let key = if uid.contains('_') {
            Cow::Owned(uid.replace('_', "-"))
        } else {
            Cow::Borrowed(uid)
        };
        self.pods.get(key.as_ref())
    }

    /// Asks the watcher for a fresh list soon, e.g. because a cgroup names an unknown pod.
    /// Cheap and safe to call every cycle: requests coalesce and the watcher lists at most once
    /// per `min_relist_interval_secs`.
    pub fn request_relist(&self) {
        self.relist.notify_one();
    }

    /// Number of pods known.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// True when no pod is known.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// True once the source has been listed successfully at least once, so an unknown UID is
    /// really unknown rather than not loaded yet.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The API server resource version the content reflects (`None` for the kubelet source).
    pub fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }

    /// All known pods, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &PodInfo> {
        self.pods.values()
    }

    /// Replaces the whole content with a fresh list: pods absent from it are forgotten.
    pub(super) fn replace(&mut self, pods: Vec<PodInfo>, resource_version: Option<String>) {
        self.pods = pods.into_iter().map(|p| (p.uid.clone(), p)).collect();
        self.resource_version = resource_version;
        self.synced = true;
    }
}

/// The directory shared between the watcher (writer) and the collector (reader).
#[derive(Debug, Clone, Default)]
pub struct SharedPodDirectory(Arc<RwLock<PodDirectory>>);

impl SharedPodDirectory {
    /// Read access. Held only for a lookup, never across an await.
    pub fn read(&self) -> RwLockReadGuard<'_, PodDirectory> {
        // A poisoned lock means a panic while writing plain data; the map is still usable.
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn write(&self) -> RwLockWriteGuard<'_, PodDirectory> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the pod with this UID, if known.
    pub fn get(&self, uid: &str) -> Option<PodInfo> {
        self.read().get(uid).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::pods::parse_pod_list;

    const PODS: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/kube/pods.json"
    ));

    #[test]
    fn systemd_cgroup_spelling_finds_the_pod() {
        let (pods, rv) = parse_pod_list(PODS.as_bytes()).expect("fixture parses");
        let mut dir = PodDirectory::default();
        dir.replace(pods, rv);
        let info = dir
            .get("0f6c1d3a_2b4e_4c8a_9e71_5a2d7c4b8e01")
            .expect("underscored uid");
        assert_eq!(info.name, "web-7d4b9c8f6d-x2x9k");
        assert!(dir.get("00000000-0000-0000-0000-000000000000").is_none());
    }
}
