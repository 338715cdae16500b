//! The fault's pod as the agent's `dir` pod source reads it: one kubelet-format Pod JSON object
//! in `<data dir>/pods/<uid>.json`, written with the runtime's temp-then-rename so the agent
//! reads a whole old or new file.
//!
//! The pod is named as the Deployment controller names pods (`<deployment>-<hash>-<suffix>`,
//! owned by the ReplicaSet `<deployment>-<hash>`, the hash in the `pod-template-hash` label),
//! so the agent names it `<namespace>/Deployment/<deployment>` with no extra lookup. Restarts
//! of the restart loop show as the container's `restartCount` and its `lastState.terminated`,
//! as the kubelet reports them.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// Label carrying the run id on the pod, so a leftover pod file can be traced to its run.
pub const RUN_LABEL: &str = "selfheal.io/chaos-run";

/// The fault's pod: what its Pod JSON says.
#[derive(Debug, Clone)]
pub struct ChaosPod {
    /// The pod UID (also in its cgroup's name).
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// The owning Deployment's name.
    pub deployment: String,
    /// The ReplicaSet's `pod-template-hash`.
    pub hash: String,
    /// The pod's name.
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// The one container's name.
    pub container: String,
    /// The run that made it.
    pub run_id: String,
    /// When it started, RFC 3339.
    pub started_at: String,
    /// Container restarts so far.
    pub restarts: u64,
    /// The last termination (exit code, reason, finished at) of the container, if it restarted.
    pub last_terminated: Option<(i32, String, String)>,
}

impl ChaosPod {
    /// The workload key records carry for this pod: `<namespace>/Deployment/<deployment>`.
    pub fn workload(&self) -> String {
        format!("{}/Deployment/{}", self.namespace, self.deployment)
    }

    /// The Pod object.
    pub fn to_json(&self) -> Value {
        let last_state = match &self.last_terminated {
            Some((code, reason, at)) => json!({
                "terminated": {"exitCode": code, "reason": reason, "finishedAt": at}
            }),
            None => json!({}),
        };
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "uid": self.uid,
                "name": self.name,
                "namespace": self.namespace,
                "labels": {
                    "app": self.deployment,
                    "pod-template-hash": self.hash,
                    RUN_LABEL: self.run_id,
                },
                "ownerReferences": [{
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": format!("{}-{}", self.deployment, self.hash),
                    "controller": true,
                }],
            },
            "spec": {
                "nodeName": self.node,
                "containers": [{"name": self.container}],
            },
            "status": {
                "phase": "Running",
                "qosClass": "Burstable",
                "startTime": self.started_at,
                "containerStatuses": [{
                    "name": self.container,
                    "ready": true,
                    "restartCount": self.restarts,
                    "state": {"running": {"startedAt": self.started_at}},
                    "lastState": last_state,
                }],
            },
        })
    }

    /// Where the file lives in `pods_dir`.
    pub fn path(&self, pods_dir: &Path) -> PathBuf {
        pods_dir.join(format!("{}.json", self.uid))
    }

    /// Writes (or replaces) the pod file in `pods_dir`, atomically and durably.
    pub fn write(
        &self,
        pods_dir: &Path,
    ) -> Result<PathBuf, selfheal_runtime::atomic::AtomicWriteError> {
        let path = self.path(pods_dir);
        let mut bytes = serde_json::to_vec_pretty(&self.to_json()).unwrap_or_default();
        bytes.push(b'\n');
        selfheal_runtime::atomic::write(&path, &bytes)?;
        Ok(path)
    }
}
