//! `[heal]`: the healing controller's configuration as written, and its validation into
//! [`HealSettings`]. The policy itself (playbooks, guardrails, verification) is its own file,
//! `heal.policy_file`, so it can be reloaded without a restart; it is read and validated here
//! at start, so a bad one stops the aggregator naming the field.

use crate::policy::{PolicyError, PolicySource};
use selfheal_heal_api::kube::KubeConfig;
use selfheal_runtime::config::FieldError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Which executor carries actions out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecutorKind {
    /// Record what would be done; send nothing (the default).
    #[default]
    DryRun,
    /// The Kubernetes API directly (the `kube` crate; an aggregator inside the cluster).
    Kube,
    /// The remote signed heal API.
    HealApi,
}

/// `[heal]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealConfig {
    /// Run the healing controller (needs `[incidents]`). Off by default: turning healing on
    /// is a decision, and even then the default policy is dry-run.
    pub enabled: bool,
    /// The policy file (TOML); unset, the built-in defaults (dry-run, the playbooks).
    /// Reloaded on SIGHUP and when it changes; a bad reload keeps the policy in force.
    pub policy_file: Option<PathBuf>,
    /// `dry-run` (default), `kube` or `heal-api`.
    pub executor: ExecutorKind,
    /// Milliseconds between the controller's passes over the incidents.
    pub interval_ms: u64,
    /// Seconds between checks of the policy file for a change.
    pub policy_poll_secs: f64,
    /// The dry-run executor's record of every request it would have sent (JSON lines). Default:
    /// `heal/dry-run.jsonl` in the aggregator's data directory.
    pub dry_run_log: Option<PathBuf>,
    /// Milliseconds the dry-run executor takes to answer after recording, as a real API would
    /// (rehearsals and crash tests; 0 by default).
    pub dry_run_latency_ms: u64,
    /// `[heal.kube]`: where the `kube` executor finds the API server (default: the pod's
    /// service account). Read only with `executor = "kube"`.
    pub kube: KubeConfig,
}

impl Default for HealConfig {
    fn default() -> Self {
        HealConfig {
            enabled: false,
            policy_file: None,
            executor: ExecutorKind::DryRun,
            interval_ms: 250,
            policy_poll_secs: 2.0,
            dry_run_log: None,
            dry_run_latency_ms: 0,
            kube: KubeConfig::default(),
        }
    }
}

/// The validated `[heal]`.
#[derive(Debug, Clone)]
pub struct HealSettings {
    /// The policy, loaded and validated.
    pub policy: Arc<PolicySource>,
    /// The executor.
    pub executor: ExecutorKind,
    /// Controller pass interval.
    pub interval: Duration,
    /// Policy file check interval.
    pub policy_poll: Duration,
    /// The dry-run log.
    pub dry_run_log: PathBuf,
    /// The dry-run executor's answer delay.
    pub dry_run_latency: Duration,
    /// The kube executor's connection, validated (used with [`ExecutorKind::Kube`]).
    pub kube: KubeConfig,
}

/// A `[heal]` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HealConfigError {
    /// A `[heal]` field.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// The policy file.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

impl HealConfig {
    /// Checks every field and loads the policy file.
    pub fn validate(&self, data_dir: &Path) -> Result<HealSettings, HealConfigError> {
        use selfheal_runtime::config::{millis, secs};
        match self.executor {
            ExecutorKind::DryRun => {}
            ExecutorKind::Kube => self
                .kube
                .validate()
                .map_err(|e| FieldError::new("heal.kube", format!("{}: {}", e.field, e.reason)))?,
            // The remote heal API's client (issue 14) is not wired into
            // `heal::executor::AnyExecutor` yet: asking for it is refused rather than silently
            // running dry.
            ExecutorKind::HealApi => {
                return Err(FieldError::new(
                    "heal.executor",
                    format!(
                        "{:?} is not wired into this build yet; use \"dry-run\"",
                        self.executor
                    ),
                )
                .into());
            }
        }
        let interval = millis("heal.interval_ms", self.interval_ms, 60_000)?;
        let policy_poll = secs("heal.policy_poll_secs", self.policy_poll_secs, 3600.0)?;
        if self.dry_run_latency_ms > 60_000 {
            return Err(FieldError::new(
                "heal.dry_run_latency_ms",
                format!("must be at most 60000, got {}", self.dry_run_latency_ms),
            )
            .into());
        }
        let policy = Arc::new(PolicySource::open(self.policy_file.as_deref())?);
        Ok(HealSettings {
            policy,
            executor: self.executor,
            interval,
            policy_poll,
            dry_run_log: self
                .dry_run_log
                .clone()
                .unwrap_or_else(|| data_dir.join("heal").join("dry-run.jsonl")),
            dry_run_latency: Duration::from_millis(self.dry_run_latency_ms),
            kube: self.kube.clone(),
        })
    }
}
