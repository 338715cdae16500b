//! The dry-run executor, the default: it records exactly the request it would send (one JSON
//! line per request in its log, written and synced before it answers) and sends nothing. It keeps
//! a simulated view of each workload (seeded by the controller from what the incident saw,
//! updated by every request it records), so a rehearsal decides on the same numbers a real run
//! would, and it recognises a request id already in its log as `already_applied`, as the real
//! executors recognise their annotation, so the exactly-once path is the same.

use selfheal_core::action::{
    Action, ActionError, ActionErrorKind, ActionOutcome, ActionRequest, Executor, ObjectVersion,
    Target, WorkloadState,
};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// One line of the dry-run log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DryRunEntry {
    /// When it was recorded, unix ms.
    pub at_ms: i64,
    /// The request, as it would have been sent.
    pub request: ActionRequest,
}

#[derive(Debug, Default)]
struct Inner {
    workloads: HashMap<Target, WorkloadState>,
    recorded: HashSet<String>,
}

/// The dry-run executor.
#[derive(Debug)]
pub struct DryRunExecutor {
    log: Option<PathBuf>,
    latency: Duration,
    inner: Mutex<Inner>,
}

/// Why the dry-run log could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the dry-run log {path}")]
pub struct DryRunLogError {
    /// The file.
    pub path: String,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl DryRunExecutor {
    /// An executor logging to `log` (its directory created; the request ids already in it
    /// recognised), answering `latency` after recording. `None`: memory only (benches).
    pub fn open(log: Option<&Path>, latency: Duration) -> Result<DryRunExecutor, DryRunLogError> {
        let mut inner = Inner::default();
        if let Some(p) = log {
            let err = |source| DryRunLogError {
                path: p.display().to_string(),
                source,
            };
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d).map_err(err)?;
            }
            match std::fs::read_to_string(p) {
                Ok(text) => {
                    // A torn last line (a crash mid-write) is skipped: its request was not
                    // answered, so it is re-sent and recorded again in full.
                    for e in text
                        .lines()
                        .filter_map(|l| serde_json::from_str::<DryRunEntry>(l).ok())
                    {
                        inner.recorded.insert(e.request.request_id);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(e)),
            }
        }
        Ok(DryRunExecutor {
            log: log.map(Path::to_owned),
            latency,
            inner: Mutex::new(inner),
        })
    }

    /// Seeds the simulated view of `target` with `replicas` (from the incident's pods) unless
    /// it is known already.
    pub fn assume(&self, target: &Target, replicas: i32) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.workloads
            .entry(target.clone())
            .or_insert_with(|| assumed(target, replicas));
    }

    /// Replaces the simulated view of a workload (tests: an HPA, a rollout in progress).
    pub fn set_state(&self, state: WorkloadState) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.workloads.insert(state.target.clone(), state);
    }

    fn record(&self, e: &DryRunEntry) -> Result<(), ActionError> {
        let Some(p) = &self.log else {
            return Ok(());
        };
        let line = serde_json::to_string(e)
            .map_err(|e| ActionError::new(ActionErrorKind::Invalid, e.to_string()))?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?;
            f.write_all(format!("{line}\n").as_bytes())?;
            f.sync_data()
        };
        write().map_err(|e| {
            ActionError::new(
                ActionErrorKind::Unavailable,
                format!("dry-run log {}: {e}", p.display()),
            )
        })
    }
}

fn assumed(target: &Target, replicas: i32) -> WorkloadState {
    let r = replicas.max(1);
    WorkloadState {
        target: target.clone(),
        version: ObjectVersion {
            uid: format!("dry-run:{target}"),
            resource_version: "1".into(),
        },
        generation: 1,
        observed_generation: 1,
        replicas: r,
        ready_replicas: r,
        updated_replicas: r,
        available_replicas: r,
        rolling_out: false,
        hpa: None,
        last_request_id: None,
    }
}

fn bump(v: &mut ObjectVersion) {
    let n: u64 = v.resource_version.parse().unwrap_or(0);
    v.resource_version = (n + 1).to_string();
}

impl Executor for DryRunExecutor {
    fn name(&self) -> &'static str {
        "dry-run"
    }

    async fn observe(&self, target: &Target) -> Result<WorkloadState, ActionError> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.workloads.get(target).cloned().ok_or_else(|| {
            ActionError::new(
                ActionErrorKind::NotFound,
                format!("dry-run knows nothing of {target}"),
            )
        })
    }

    async fn apply(&self, req: &ActionRequest) -> Result<ActionOutcome, ActionError> {
        let detail = format!(
            "dry-run: would {}; recorded, not sent",
            super::describe(req)
        );
        let version_after = {
            let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let g = &mut *guard;
            if g.recorded.contains(&req.request_id) {
                return Ok(ActionOutcome {
                    already_applied: true,
                    dry_run: true,
                    version_after: g.workloads.get(&req.target).map(|w| w.version.clone()),
                    detail: format!("dry-run: {} was recorded already", req.request_id),
                });
            }
            let Some(w) = g.workloads.get_mut(&req.target) else {
                return Err(ActionError::new(
                    ActionErrorKind::NotFound,
                    format!("dry-run knows nothing of {}", req.target),
                ));
            };
            let on_hpa = matches!(req.action, Action::SetHpaMinReplicas { .. });
            let current = match (&w.hpa, on_hpa) {
                (Some(h), true) => &h.version,
                (None, true) => {
                    return Err(ActionError::new(
                        ActionErrorKind::NotFound,
                        format!("{} has no HPA", req.target),
                    ));
                }
                (_, false) => &w.version,
            };
            if current != &req.expect {
                return Err(ActionError::new(
                    ActionErrorKind::Conflict,
                    format!(
                        "expected resourceVersion {}, object is at {}",
                        req.expect.resource_version, current.resource_version
                    ),
                ));
            }
            self.record(&DryRunEntry {
                at_ms: now_ms(),
                request: req.clone(),
            })?;
            g.recorded.insert(req.request_id.clone());
            match &req.action {
                Action::Scale { to, .. } => {
                    w.replicas = *to;
                    w.ready_replicas = *to;
                    w.updated_replicas = *to;
                    w.available_replicas = *to;
                    bump(&mut w.version);
                }
                Action::RolloutRestart { .. } | Action::DeletePod { .. } => bump(&mut w.version),
                Action::SetHpaMinReplicas { to, .. } => {
                    if let Some(h) = w.hpa.as_mut() {
                        h.min_replicas = *to;
                        h.current_replicas = h.current_replicas.max(*to);
                        h.last_request_id = Some(req.request_id.clone());
                        bump(&mut h.version);
                    }
                }
            }
            w.last_request_id = Some(req.request_id.clone());
            if on_hpa {
                w.hpa.as_ref().map(|h| h.version.clone())
            } else {
                Some(w.version.clone())
            }
        };
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        Ok(ActionOutcome {
            already_applied: false,
            dry_run: true,
            version_after,
            detail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfheal_core::action::WorkloadKind;

    fn t() -> Target {
        Target {
            namespace: "shop".into(),
            kind: WorkloadKind::Deployment,
            name: "checkout".into(),
        }
    }

    #[tokio::test]
    async fn records_once_recognises_a_resend_and_refuses_a_stale_version() {
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("d/dry-run.jsonl");
        let ex = DryRunExecutor::open(Some(&log), Duration::ZERO).expect("open");
        ex.assume(&t(), 3);
        let s = ex.observe(&t()).await.expect("observe");
        let req = ActionRequest {
            request_id: "i/1".into(),
            target: t(),
            expect: s.version.clone(),
            action: Action::Scale { from: 3, to: 4 },
        };
        let out = ex.apply(&req).await.expect("apply");
        assert!(out.dry_run && !out.already_applied);
        assert_eq!(ex.observe(&t()).await.expect("again").replicas, 4);
        // A restarted executor reads its log and recognises the request.
        let ex2 = DryRunExecutor::open(Some(&log), Duration::ZERO).expect("reopen");
        ex2.assume(&t(), 3);
        let again = ex2.apply(&req).await.expect("resend");
        assert!(again.already_applied);
        let lines = std::fs::read_to_string(&log).expect("log");
        assert_eq!(lines.lines().count(), 1, "{lines}");
        // A request on a stale version is a conflict.
        let stale = ActionRequest {
            request_id: "i/2".into(),
            ..req
        };
        let e = ex.apply(&stale).await.expect_err("stale");
        assert_eq!(e.kind, ActionErrorKind::Conflict);
    }
}
