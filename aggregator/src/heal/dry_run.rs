//! The dry-run executor, the default: it records exactly the request it would send (one JSON
//! line per request in its log, written and synced before it answers) and sends nothing. It keeps
//! a simulated view of each workload (seeded by the controller from what the incident saw,
//! updated by every request it records), so a rehearsal decides on the same numbers a real run
//! would, and it recognises a request id already in its log as `already_applied`, as the real
//! executors recognise their annotation, so the exactly-once path is the same.
//!
//! The log rotates at [`ROTATE_AT_BYTES`]: the full file becomes `<log>.1` (replacing the one
//! before) and a new file starts, and the ids of the rotated file are still recognised. A resend
//! comes minutes after the first try (a crash between sending and recording the outcome), so two
//! generations of ~100,000 requests each cover it with room to spare, and disk and memory stay
//! bounded on an aggregator that rehearses for months.

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

/// Size at which the dry-run log rotates (see the module docs).
pub const ROTATE_AT_BYTES: u64 = 32 << 20;

#[derive(Debug, Default)]
struct Inner {
    workloads: HashMap<Target, WorkloadState>,
    ledger: Ledger,
}

/// What the log holds.
#[derive(Debug, Default)]
struct Ledger {
    /// Request ids in the current log file.
    recorded: HashSet<String>,
    /// Request ids in the rotated file (`<log>.1`).
    previous: HashSet<String>,
    /// Bytes in the current log file.
    log_bytes: u64,
}

impl Ledger {
    fn knows(&self, request_id: &str) -> bool {
        self.recorded.contains(request_id) || self.previous.contains(request_id)
    }
}

/// The dry-run executor.
#[derive(Debug)]
pub struct DryRunExecutor {
    log: Option<PathBuf>,
    rotate_at: u64,
    latency: Duration,
    inner: Mutex<Inner>,
}

/// `<log>.1`, where the log rotates to.
fn rotated(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// The request ids in one log file (none when it does not exist) and its size. A torn last line
/// (a crash mid-write) is skipped: its request was not answered, so it is re-sent and recorded
/// again in full.
fn read_ids(path: &Path) -> std::io::Result<(HashSet<String>, u64)> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((
            text.lines()
                .filter_map(|l| serde_json::from_str::<DryRunEntry>(l).ok())
                .map(|e| e.request.request_id)
                .collect(),
            text.len() as u64,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((HashSet::new(), 0)),
        Err(e) => Err(e),
    }
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
            (inner.ledger.previous, _) = read_ids(&rotated(p)).map_err(err)?;
            (inner.ledger.recorded, inner.ledger.log_bytes) = read_ids(p).map_err(err)?;
        }
        Ok(DryRunExecutor {
            log: log.map(Path::to_owned),
            rotate_at: ROTATE_AT_BYTES,
            latency,
            inner: Mutex::new(inner),
        })
    }

    /// Rotates the log at `bytes` instead of [`ROTATE_AT_BYTES`] (tests).
    pub fn rotating_at(mut self, bytes: u64) -> DryRunExecutor {
        self.rotate_at = bytes.max(1);
        self
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

    /// Appends `e` to the log and syncs it (rotating first when the file is full), and adds its
    /// request id to those recognised.
    fn record(&self, g: &mut Ledger, e: &DryRunEntry) -> Result<(), ActionError> {
        let Some(p) = &self.log else {
            g.recorded.insert(e.request.request_id.clone());
            return Ok(());
        };
        let unavailable = |e: &dyn std::fmt::Display| {
            ActionError::new(
                ActionErrorKind::Unavailable,
                format!("dry-run log {}: {e}", p.display()),
            )
        };
        if g.log_bytes >= self.rotate_at {
            std::fs::rename(p, rotated(p)).map_err(|e| unavailable(&e))?;
            if let Some(d) = p.parent() {
                selfheal_runtime::atomic::sync_dir(d).map_err(|e| unavailable(&e))?;
            }
            g.previous = std::mem::take(&mut g.recorded);
            g.log_bytes = 0;
            tracing::info!(log = %p.display(), "DryRunLogRotated");
        }
        let mut line = serde_json::to_string(e)
            .map_err(|e| ActionError::new(ActionErrorKind::Invalid, e.to_string()))?;
        line.push('\n');
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?;
            f.write_all(line.as_bytes())?;
            f.sync_data()
        };
        write().map_err(|e| unavailable(&e))?;
        g.log_bytes += line.len() as u64;
        g.recorded.insert(e.request.request_id.clone());
        Ok(())
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
            if g.ledger.knows(&req.request_id) {
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
            let entry = DryRunEntry {
                at_ms: now_ms(),
                request: req.clone(),
            };
            self.record(&mut g.ledger, &entry)?;
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

    #[tokio::test]
    async fn the_log_rotates_and_a_restart_still_recognises_the_rotated_requests() {
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("dry-run.jsonl");
        // An entry is a few hundred bytes: a 1000-byte file rotates every few requests.
        let ex = DryRunExecutor::open(Some(&log), Duration::ZERO)
            .expect("open")
            .rotating_at(1000);
        ex.assume(&t(), 1);
        let mut sent = Vec::new();
        for i in 0..12 {
            let s = ex.observe(&t()).await.expect("observe");
            let req = ActionRequest {
                request_id: format!("i/{i}"),
                target: t(),
                expect: s.version.clone(),
                action: Action::Scale {
                    from: s.replicas,
                    to: s.replicas + 1,
                },
            };
            assert!(!ex.apply(&req).await.expect("apply").already_applied);
            sent.push(req);
        }
        let lines = |p: &Path| std::fs::read_to_string(p).map_or(0, |t| t.lines().count());
        let (current, previous) = (lines(&log), lines(&rotated(&log)));
        assert!(current >= 1 && previous >= 1, "{current} + {previous}");
        assert!(
            current + previous < sent.len(),
            "the oldest generation was dropped"
        );
        let kept = current + previous;
        // Restarted: the requests of both files are recognised, an older one is not.
        let ex2 = DryRunExecutor::open(Some(&log), Duration::ZERO)
            .expect("reopen")
            .rotating_at(1000);
        ex2.assume(&t(), 1);
        for req in &sent[sent.len() - kept..] {
            assert!(
                ex2.apply(req).await.expect("resend").already_applied,
                "{}",
                req.request_id
            );
        }
        let g = ex2.inner.lock().expect("lock");
        assert!(!g.ledger.knows(&sent[0].request_id));
    }
}
