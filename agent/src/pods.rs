//! Pod identity: cgroup pod UID → namespace, name, owner workload, restarts.
//!
//! Placeholder interface; the kubelet / API server client lands here.

use selfheal_core::schema::{OwnerRef, QosClass};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Where pod identities come from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodsConfig {}

/// What the agent knows about one pod on its node.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    /// The pod's UID.
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

/// Pods on this node by UID, as last listed.
#[derive(Debug, Default)]
pub struct PodDirectory {
    pods: HashMap<String, PodInfo>,
}

impl PodDirectory {
    /// The pod with this UID, if known.
    pub fn get(&self, uid: &str) -> Option<&PodInfo> {
        self.pods.get(uid)
    }
}
