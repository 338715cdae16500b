//! `[heal]`: the healing controller's configuration as written, and its validation into
//! [`HealSettings`]. The policy itself (playbooks, guardrails, verification) is its own file,
//! `heal.policy_file`, so it can be reloaded without a restart; it is read and validated here
//! at start, so a bad one stops the aggregator naming the field.

use crate::policy::{PolicyError, PolicySource};
use selfheal_heal_api::client::RemoteSettings;
use selfheal_heal_api::config::KeysConfig;
use selfheal_heal_api::keys::KeySource;
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
    /// The policy file (TOML); unset, the built-in defaults (dry-run, the issue's playbooks).
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
    /// `[heal.heal_api]`: the signed heal API in the target cluster. Read only with
    /// `executor = "heal-api"`.
    pub heal_api: RemoteConfig,
}

/// `[heal.heal_api]`: how the remote executor reaches and signs for the heal API.
///
/// ```toml
/// [heal.heal_api]
/// url = "https://heal-api.selfheal-system.svc:8443"
/// ca_file = "/etc/selfheal-heal-api-ca/ca.crt"
/// [heal.heal_api.keys]
/// file = "/etc/selfheal-hmac/keys"     # or secrets_manager_id = "selfheal/heal-api"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteConfig {
    /// The heal API's base URL, `https://` (it serves nothing else).
    pub url: String,
    /// PEM CA bundle that signed the heal API's certificate (unset: the system roots).
    pub ca_file: Option<PathBuf>,
    /// Seconds one attempt may take (connect, send, answer).
    pub timeout_secs: f64,
    /// Attempts per call, the first included; only retryable failures are retried.
    pub max_attempts: u32,
    /// First retry delay, milliseconds (jittered, doubling).
    pub retry_initial_ms: u64,
    /// Largest retry delay, milliseconds.
    pub retry_max_ms: u64,
    /// The signing keys (the heal API's own `[keys]` format: the same Secret or secret). The
    /// first key signs; a rotation puts the new key first.
    pub keys: KeysConfig,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            url: String::new(),
            ca_file: None,
            timeout_secs: 10.0,
            max_attempts: 3,
            retry_initial_ms: 200,
            retry_max_ms: 5_000,
            keys: KeysConfig::default(),
        }
    }
}

/// The validated `[heal.heal_api]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteExecutorSettings {
    /// The client's connection and retries.
    pub client: RemoteSettings,
    /// Where the signing keys come from.
    pub keys: KeySource,
    /// How often the keys are re-read.
    pub keys_reload: Duration,
}

impl RemoteConfig {
    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<RemoteExecutorSettings, FieldError> {
        use selfheal_runtime::config::{http_url, in_range, millis, secs};
        let uri = http_url("heal.heal_api.url", &self.url)?;
        if uri.scheme_str() != Some("https") {
            return Err(FieldError::new(
                "heal.heal_api.url",
                format!(
                    "{:?}: must be https:// (the heal API serves HTTPS only)",
                    self.url
                ),
            ));
        }
        if let Some(f) = &self.ca_file
            && !f.is_file()
        {
            return Err(FieldError::new(
                "heal.heal_api.ca_file",
                format!("{} is not a readable file", f.display()),
            ));
        }
        let timeout = secs("heal.heal_api.timeout_secs", self.timeout_secs, 300.0)?;
        in_range("heal.heal_api.max_attempts", self.max_attempts, 1..=10)?;
        let retry_initial = millis(
            "heal.heal_api.retry_initial_ms",
            self.retry_initial_ms,
            60_000,
        )?;
        let retry_max = millis("heal.heal_api.retry_max_ms", self.retry_max_ms, 300_000)?;
        if retry_max < retry_initial {
            return Err(FieldError::new(
                "heal.heal_api.retry_max_ms",
                format!(
                    "must be at least retry_initial_ms ({}), got {}",
                    self.retry_initial_ms, self.retry_max_ms
                ),
            ));
        }
        let k = &self.keys;
        let keys = match (&k.file, &k.secrets_manager_id) {
            (Some(f), None) if !f.as_os_str().is_empty() => KeySource::File(f.clone()),
            (None, Some(id)) if !id.trim().is_empty() => KeySource::SecretsManager {
                secret_id: id.clone(),
                region: k.region.clone(),
                endpoint_url: k.endpoint_url.clone(),
            },
            _ => {
                return Err(FieldError::new(
                    "heal.heal_api.keys",
                    "set exactly one of file and secrets_manager_id",
                ));
            }
        };
        if let Some(u) = &k.endpoint_url {
            http_url("heal.heal_api.keys.endpoint_url", u)?;
        }
        let keys_reload = secs("heal.heal_api.keys.reload_secs", k.reload_secs, 3600.0)?;
        Ok(RemoteExecutorSettings {
            client: RemoteSettings {
                base_url: self.url.trim_end_matches('/').to_owned(),
                ca_file: self.ca_file.clone(),
                timeout,
                max_attempts: self.max_attempts,
                retry_initial,
                retry_max,
            },
            keys,
            keys_reload,
        })
    }
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
            heal_api: RemoteConfig::default(),
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
    /// The remote executor's settings, validated (`Some` with [`ExecutorKind::HealApi`]).
    pub heal_api: Option<RemoteExecutorSettings>,
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
            ExecutorKind::HealApi => {}
        }
        let heal_api = match self.executor {
            ExecutorKind::HealApi => Some(self.heal_api.validate()?),
            ExecutorKind::DryRun | ExecutorKind::Kube => None,
        };
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
            heal_api,
        })
    }
}
