//! Policy and guardrails: what the aggregator may do about an incident, and what it must never
//! do. It decides; [`crate::heal`] carries decisions out through an executor and verifies them.
//!
//! * [`mod@file`]: the policy file (TOML), validated into a [`Policy`] with the bad field named.
//! * [`guard`]: the guardrails (cooldown, hourly rates, blast radius, maintenance windows,
//!   allow-lists, mid-rollout, mutes), each refusal a [`Refusal`] with its reason.
//! * [`mod@reconcile`]: `reconcile(incident, world) -> Decision`, pure and idempotent (kube-rs'
//!   controller shape), the verification verdict and the `error_policy` for failed actions.
//! * [`PolicySource`]: the current policy, reloaded on SIGHUP and when the file changes; a bad
//!   reload keeps the old policy, logs and counts why.

pub mod file;
pub mod guard;
pub mod reconcile;

pub use guard::{GuardState, Guardrail, Recent, Refusal};
pub use reconcile::{Decision, ErrorAction, Plan, Verdict, World, error_policy, reconcile, verify};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as MetricFamily;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use selfheal_core::Family;
use selfheal_core::action::ActionKind;
use selfheal_runtime::config::FieldError;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// How far a scale-out goes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scaling {
    /// Replicas added, at least.
    pub step: i32,
    /// Replicas multiplied by this (rounded up) when that adds more.
    pub factor: f64,
    /// Ceiling.
    pub max_replicas: i32,
    /// How long a raised floor is held before it is restored, ms (scale-out with an HPA;
    /// stabilize always).
    pub hold_ms: i64,
}

impl Scaling {
    /// Replicas wanted from `current`, capped at `ceiling` (the playbook's, or the HPA's).
    pub fn target(&self, current: i32, ceiling: i32) -> i32 {
        let by_factor = (f64::from(current.max(0)) * self.factor).ceil() as i32;
        current
            .saturating_add(self.step)
            .max(by_factor)
            .min(ceiling.min(self.max_replicas))
    }
}

/// What a family's incidents get.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Playbook {
    /// Scale out; with an HPA, raise its floor for `hold_ms`, then restore it.
    ScaleOut(Scaling),
    /// Scale out (or raise the HPA floor) and restore the previous value after `hold_ms`.
    Stabilize(Scaling),
    /// Rolling restart.
    RolloutRestart,
    /// One rolling restart per workload (per day); a later incident escalates.
    RestartOnce,
    /// Escalate only.
    Escalate,
}

impl Playbook {
    /// The playbook's name, in metrics, events and the efficacy table.
    pub fn name(&self) -> &'static str {
        match self {
            Playbook::ScaleOut(_) => "scale_out",
            Playbook::Stabilize(_) => "stabilize",
            Playbook::RolloutRestart => "rollout_restart",
            Playbook::RestartOnce => "restart_once",
            Playbook::Escalate => "escalate",
        }
    }
}

/// A weekly recurring window, UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Weekly {
    /// Its name.
    pub name: String,
    /// Days it starts on, Monday = 0.
    pub days: BTreeSet<u8>,
    /// Start, minutes after midnight UTC.
    pub start_minute: u32,
    /// Length, minutes.
    pub duration_mins: u32,
}

/// A window in which healing does not act.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Maintenance {
    /// From `starts_at_ms` to `ends_at_ms`.
    Absolute {
        /// Its name.
        name: String,
        /// Start, unix ms.
        starts_at_ms: i64,
        /// End, unix ms.
        ends_at_ms: i64,
    },
    /// Every week.
    Weekly(Weekly),
}

/// The guardrails' limits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Guardrails {
    /// After an action on a workload, no other for this long, ms.
    pub cooldown_ms: i64,
    /// Actions per rolling hour, all namespaces.
    pub max_actions_per_hour: u32,
    /// Actions per rolling hour per namespace.
    pub max_actions_per_hour_per_namespace: u32,
    /// Largest share of a workload's replicas an action takes down at once.
    pub max_unavailable_share: f64,
    /// Distinct workloads acted on per namespace per rolling hour.
    pub max_workloads_per_namespace_per_hour: u32,
    /// Namespaces allowed (`*`: all).
    pub allow_namespaces: BTreeSet<String>,
    /// Namespaces refused.
    pub deny_namespaces: BTreeSet<String>,
    /// Action kinds allowed.
    pub allow_actions: BTreeSet<ActionKind>,
    /// No action inside these.
    pub maintenance: Vec<Maintenance>,
}

/// How actions are verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Verify {
    /// The verification window, ms.
    pub window_ms: i64,
    /// Anomalies arriving this soon after the action are taken as in flight, ms.
    pub settle_ms: i64,
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    /// Record only; send nothing.
    pub dry_run: bool,
    /// Per family.
    pub playbooks: BTreeMap<Family, Playbook>,
    /// Limits.
    pub guardrails: Guardrails,
    /// Verification.
    pub verify: Verify,
}

impl Default for Policy {
    fn default() -> Self {
        // The built-in defaults are valid by construction (a unit test proves it).
        file::PolicyFile::default()
            .validate()
            .unwrap_or_else(|e| panic!("built-in policy invalid: {e}"))
    }
}

/// Why a policy file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read the policy file {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A field is not acceptable.
    #[error("invalid policy file {path}")]
    Invalid {
        /// The file.
        path: String,
        /// The field and why.
        #[source]
        source: FieldError,
    },
}

/// Loads and validates `path`.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.display().to_string(),
        source,
    })?;
    file::PolicyFile::parse(&text)
        .and_then(|f| f.validate())
        .map_err(|source| PolicyError::Invalid {
            path: path.display().to_string(),
            source,
        })
}

/// Labels of policy reloads.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// The policy in force, and how it is reloaded.
#[derive(Debug)]
pub struct PolicySource {
    path: Option<PathBuf>,
    current: RwLock<Arc<Policy>>,
    /// (modified time, length) of the file last read, to notice a change.
    stamp: Mutex<Option<(std::time::SystemTime, u64)>>,
    last_error: Mutex<Option<String>>,
    reloads: MetricFamily<ReloadLabels, Counter>,
    healthy: Gauge,
}

fn stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    // `metadata` follows symlinks, so a ConfigMap's `..data` swap shows as a change.
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl PolicySource {
    /// The built-in policy, or `path`'s; fails (naming the field) when the file is bad.
    pub fn open(path: Option<&Path>) -> Result<PolicySource, PolicyError> {
        let policy = match path {
            Some(p) => load(p)?,
            None => Policy::default(),
        };
        let healthy = Gauge::default();
        healthy.set(1);
        Ok(PolicySource {
            path: path.map(Path::to_owned),
            stamp: Mutex::new(path.and_then(stamp)),
            current: RwLock::new(Arc::new(policy)),
            last_error: Mutex::new(None),
            reloads: MetricFamily::default(),
            healthy,
        })
    }

    /// A source holding `policy` (tests, benches).
    pub fn fixed(policy: Policy) -> PolicySource {
        let s = PolicySource::open(None).unwrap_or_else(|e| panic!("{e}"));
        *s.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
        s
    }

    /// Registers `policy_reloads` and `policy_healthy`.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "policy_reloads",
            "Policy file reloads, by result (an error keeps the old policy)",
            self.reloads.clone(),
        );
        r.register(
            "policy_healthy",
            "1 when the last policy (re)load succeeded, 0 when the file in place is refused",
            self.healthy.clone(),
        );
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<Policy> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Why the file in place was refused, if the last reload failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the file again. A bad file keeps the policy in force; the error is logged,
    /// counted and returned (and kept for the API).
    pub fn reload(&self, why: &str) -> Result<(), PolicyError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = stamp(path);
        match load(path) {
            Ok(p) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(p);
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                self.reloads
                    .get_or_create(&ReloadLabels { result: "ok" })
                    .inc();
                self.healthy.set(1);
                tracing::info!(path = %path.display(), why, "HealPolicyReloaded");
                Ok(())
            }
            Err(e) => {
                let msg = selfheal_runtime::chain::ErrorChain::new(&e).to_string();
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg.clone());
                self.reloads
                    .get_or_create(&ReloadLabels { result: "error" })
                    .inc();
                self.healthy.set(0);
                tracing::error!(error = %msg, why, "HealPolicyReloadError");
                Err(e)
            }
        }
    }

    /// Reloads on SIGHUP and when the file's modification time or length changes (checked
    /// every `poll`), until `shutdown`. Polling a stat is hand-written on purpose: it notices
    /// a Kubernetes ConfigMap update (a symlink swap that inotify on the file misses) and
    /// needs no watcher dependency.
    pub async fn watch(self: Arc<Self>, poll: Duration, mut shutdown: watch::Receiver<bool>) {
        let Some(path) = self.path.clone() else {
            let _ = shutdown.wait_for(|s| *s).await;
            return;
        };
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "HealPolicySighupUnavailable");
                None
            }
        };
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    let _ = self.reload("SIGHUP");
                }
                _ = tick.tick() => {
                    let now = stamp(&path);
                    let changed = *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) != now;
                    if changed {
                        let _ = self.reload("file changed");
                    }
                }
                () = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
            }
        }
    }
}
