//! The heal API's configuration: [`HealApiConfig`] is the file (`--config`) and the environment
//! (`SELFHEAL_HEAL_API_<FIELD>`, `__` between nested fields), unknown fields refused;
//! [`HealApiConfig::validate`] gives the [`Settings`] it runs on, naming the first bad field.
//!
//! ```toml
//! listen_addr = "0.0.0.0:8443"
//! audit_log = "/var/log/selfheal/heal-api-audit.jsonl"   # "-" for stdout
//! max_body_bytes = 16384
//! clock_window_secs = 60
//! [tls]
//! cert_file = "/etc/selfheal/tls/tls.crt"
//! key_file = "/etc/selfheal/tls/tls.key"
//! [keys]
//! file = "/etc/selfheal/heal-api-keys/keys"   # or secrets_manager_id = "selfheal/heal-api"
//! [allow]
//! namespaces = ["shop"]
//! actions = ["scale", "rollout_restart"]
//! [bounds]
//! min_replicas = 1
//! max_replicas = 20
//! max_step = 4
//! [kube]                      # the Kubernetes API the actions go to (default: in-cluster)
//! timeout_secs = 10
//! ```

use crate::keys::KeySource;
use crate::kube::KubeConfig;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use selfheal_core::action::ActionKind;
use selfheal_runtime::config::{self, FieldError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The configuration as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealApiConfig {
    /// HTTPS address (the API, `/metrics`, `/healthz`).
    pub listen_addr: String,
    /// Seconds after SIGTERM for requests in flight to finish.
    pub shutdown_grace_secs: f64,
    /// The JSON-lines audit log (appended to), or `-` for stdout.
    pub audit_log: String,
    /// Largest request body, bytes (413 above).
    pub max_body_bytes: usize,
    /// A signed timestamp may differ from the server's clock by this many seconds either way.
    pub clock_window_secs: u32,
    /// Nonces remembered at most (for twice the window); when full, requests are refused.
    pub max_nonces: usize,
    /// Requests per second per client (per peer address, then per key), sustained.
    pub rate_per_sec: f64,
    /// Requests a client may burst above the rate.
    pub rate_burst: u32,
    /// Connections open at once.
    pub max_connections: usize,
    /// Seconds for the TLS handshake and each request head.
    pub header_timeout_secs: f64,
    /// Seconds one request may take, the executor's call included.
    pub request_timeout_secs: f64,
    /// TLS (required).
    pub tls: TlsConfig,
    /// Where the signing keys come from.
    pub keys: KeysConfig,
    /// What may be acted on.
    pub allow: AllowConfig,
    /// Bounds on replica counts.
    pub bounds: BoundsConfig,
    /// `[kube]`: where the actions are carried out (default: the pod's service account).
    pub kube: KubeConfig,
}

/// `[tls]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Certificate chain, PEM.
    pub cert_file: PathBuf,
    /// Private key, PEM.
    pub key_file: PathBuf,
    /// When set, clients must also present a certificate from this CA bundle.
    pub client_ca_file: Option<PathBuf>,
}

/// `[keys]`: exactly one of `file` and `secrets_manager_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// A mounted Secret file of `<key id> <secret hex>` lines.
    pub file: Option<PathBuf>,
    /// An AWS Secrets Manager secret (name or ARN) holding the same text.
    pub secrets_manager_id: Option<String>,
    /// Region for Secrets Manager.
    pub region: Option<String>,
    /// Endpoint override for Secrets Manager.
    pub endpoint_url: Option<String>,
    /// Seconds between checks for new keys.
    pub reload_secs: f64,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            file: None,
            secrets_manager_id: None,
            region: None,
            endpoint_url: None,
            reload_secs: 10.0,
        }
    }
}

/// `[allow]`: nothing is allowed unless listed.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AllowConfig {
    /// Namespaces whose workloads may be acted on. Empty (the shipped manifest's default)
    /// refuses every request; the server logs `HealApiNoNamespacesAllowed` at start.
    pub namespaces: Vec<String>,
    /// Action kinds (`scale`, `rollout_restart`, `delete_pod`, `set_hpa_min_replicas`).
    pub actions: Vec<ActionKind>,
}

/// `[bounds]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BoundsConfig {
    /// Fewest replicas (or HPA floor) an action may set.
    pub min_replicas: i32,
    /// Most replicas (or HPA floor) an action may set.
    pub max_replicas: i32,
    /// Largest change of replicas (or HPA floor) in one action.
    pub max_step: i32,
}

impl Default for BoundsConfig {
    fn default() -> Self {
        BoundsConfig {
            min_replicas: 1,
            max_replicas: 20,
            max_step: 5,
        }
    }
}

impl Default for HealApiConfig {
    fn default() -> Self {
        HealApiConfig {
            listen_addr: "0.0.0.0:8443".into(),
            shutdown_grace_secs: 20.0,
            audit_log: "-".into(),
            // An ActionRequest is a few hundred bytes.
            max_body_bytes: 16 * 1024,
            clock_window_secs: 60,
            max_nonces: 100_000,
            rate_per_sec: 5.0,
            rate_burst: 20,
            max_connections: 256,
            header_timeout_secs: 10.0,
            request_timeout_secs: 30.0,
            tls: TlsConfig::default(),
            keys: KeysConfig::default(),
            allow: AllowConfig::default(),
            bounds: BoundsConfig::default(),
            kube: KubeConfig::default(),
        }
    }
}

/// Where the audit log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    /// Standard output.
    Stdout,
    /// Appended to a file.
    File(PathBuf),
}

/// Validated settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// HTTPS address.
    pub listen_addr: SocketAddr,
    /// Grace after SIGTERM.
    pub shutdown_grace: Duration,
    /// The audit log.
    pub audit: AuditTarget,
    /// Request policy.
    pub policy: Policy,
    /// Keys.
    pub keys: KeySource,
    /// Key reload period.
    pub keys_reload: Duration,
    /// TLS files.
    pub tls: TlsConfig,
    /// Connection cap.
    pub max_connections: usize,
    /// Handshake and head timeout.
    pub header_timeout: Duration,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// The Kubernetes API connection, validated (field names `kube.*`).
    pub kube: KubeConfig,
}

/// What a request may ask, and how often.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Largest body.
    pub max_body_bytes: usize,
    /// Clock window, seconds.
    pub clock_window_secs: i64,
    /// Nonce cache size.
    pub max_nonces: usize,
    /// Sustained rate per client.
    pub rate_per_sec: f64,
    /// Burst per client.
    pub rate_burst: u32,
    /// Allowed namespaces.
    pub namespaces: BTreeSet<String>,
    /// Allowed action kinds.
    pub actions: BTreeSet<ActionKind>,
    /// Replica bounds.
    pub bounds: BoundsConfig,
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be parsed.
    #[error("invalid heal API configuration")]
    Parse(#[from] Box<figment::Error>),
    /// A field's value is not acceptable.
    #[error("invalid heal API configuration: {0}")]
    Invalid(#[from] FieldError),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(FieldError::new(field, reason))
}

impl HealApiConfig {
    /// Defaults, then `file`, then `SELFHEAL_HEAL_API_*`.
    pub fn load(file: Option<&Path>) -> Result<HealApiConfig, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(HealApiConfig::default()));
        if let Some(f) = file {
            if !f.is_file() {
                return Err(invalid(
                    "--config",
                    format!("{} is not a readable file", f.display()),
                ));
            }
            fig = fig.merge(Toml::file_exact(f));
        }
        fig = fig.merge(Env::prefixed("SELFHEAL_HEAL_API_").split("__"));
        fig.extract().map_err(|e| ConfigError::Parse(Box::new(e)))
    }

    /// Checks every field.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let listen_addr = self.listen_addr.parse::<SocketAddr>().map_err(|e| {
            invalid(
                "listen_addr",
                format!("{:?} is not an address:port ({e})", self.listen_addr),
            )
        })?;
        let audit = match self.audit_log.as_str() {
            "" => return Err(invalid("audit_log", "must be a file or \"-\" for stdout")),
            "-" => AuditTarget::Stdout,
            p => AuditTarget::File(PathBuf::from(p)),
        };
        config::in_range("max_body_bytes", self.max_body_bytes, 256..=1024 * 1024)?;
        config::in_range("clock_window_secs", self.clock_window_secs, 1..=60)?;
        config::in_range("max_nonces", self.max_nonces, 16..=10_000_000)?;
        if !(self.rate_per_sec.is_finite()
            && self.rate_per_sec > 0.0
            && self.rate_per_sec <= 10_000.0)
        {
            return Err(invalid(
                "rate_per_sec",
                format!("must be in (0, 10000], got {}", self.rate_per_sec),
            ));
        }
        config::in_range("rate_burst", self.rate_burst, 1..=100_000)?;
        config::in_range("max_connections", self.max_connections, 1..=100_000)?;
        if self.tls.cert_file.as_os_str().is_empty() || self.tls.key_file.as_os_str().is_empty() {
            return Err(invalid(
                "tls",
                "cert_file and key_file must be set: the heal API serves HTTPS only",
            ));
        }
        let keys = match (&self.keys.file, &self.keys.secrets_manager_id) {
            (Some(f), None) => KeySource::File(f.clone()),
            (None, Some(id)) if !id.trim().is_empty() => KeySource::SecretsManager {
                secret_id: id.clone(),
                region: self.keys.region.clone(),
                endpoint_url: self.keys.endpoint_url.clone(),
            },
            _ => {
                return Err(invalid(
                    "keys",
                    "set exactly one of keys.file and keys.secrets_manager_id",
                ));
            }
        };
        if let Some(u) = &self.keys.endpoint_url {
            config::http_url("keys.endpoint_url", u)?;
        }
        // An empty list is a valid, closed door: the shipped manifest leaves it empty and an
        // overlay opens namespaces (with the Role bound in each). The server warns at start and
        // refuses every action with namespace_not_allowed.
        for ns in &self.allow.namespaces {
            let ok = !ns.is_empty()
                && ns.len() <= 63
                && ns
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(invalid(
                    "allow.namespaces",
                    format!("{ns:?} is not a namespace name"),
                ));
            }
        }
        if self.allow.actions.is_empty() {
            return Err(invalid(
                "allow.actions",
                "must list at least one action kind: nothing is allowed unless listed",
            ));
        }
        let b = &self.bounds;
        if b.min_replicas < 0 || b.max_replicas < b.min_replicas || b.max_replicas > 10_000 {
            return Err(invalid(
                "bounds.max_replicas",
                format!(
                    "need 0 <= min_replicas ({}) <= max_replicas ({}) <= 10000",
                    b.min_replicas, b.max_replicas
                ),
            ));
        }
        self.kube.validate()?;
        if b.max_step < 1 {
            return Err(invalid(
                "bounds.max_step",
                format!("must be at least 1, got {}", b.max_step),
            ));
        }
        Ok(Settings {
            listen_addr,
            shutdown_grace: config::secs("shutdown_grace_secs", self.shutdown_grace_secs, 600.0)?,
            audit,
            policy: Policy {
                max_body_bytes: self.max_body_bytes,
                clock_window_secs: i64::from(self.clock_window_secs),
                max_nonces: self.max_nonces,
                rate_per_sec: self.rate_per_sec,
                rate_burst: self.rate_burst,
                namespaces: self.allow.namespaces.iter().cloned().collect(),
                actions: self.allow.actions.iter().copied().collect(),
                bounds: self.bounds.clone(),
            },
            keys,
            keys_reload: config::secs("keys.reload_secs", self.keys.reload_secs, 3600.0)?,
            tls: self.tls,
            max_connections: self.max_connections,
            header_timeout: config::secs("header_timeout_secs", self.header_timeout_secs, 600.0)?,
            request_timeout: config::secs(
                "request_timeout_secs",
                self.request_timeout_secs,
                600.0,
            )?,
            kube: self.kube,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
    }

    fn minimal() -> HealApiConfig {
        let mut c = HealApiConfig::default();
        c.tls.cert_file = "/tls/tls.crt".into();
        c.tls.key_file = "/tls/tls.key".into();
        c.keys.file = Some("/keys".into());
        c.allow.namespaces = vec!["shop".into()];
        c.allow.actions = vec![ActionKind::Scale];
        c
    }

    #[test]
    fn the_shipped_manifest_loads_and_allows_no_namespace() {
        let path = manifest("daemonset/heal-api/heal-api.toml");
        let s = HealApiConfig::load(Some(&path))
            .expect("daemonset/heal-api/heal-api.toml parses")
            .validate()
            .expect("daemonset/heal-api/heal-api.toml validates");
        assert_eq!(s.listen_addr, "0.0.0.0:8443".parse().expect("addr"));
        assert_eq!(s.shutdown_grace, Duration::from_secs(20));
        assert_eq!(s.audit, AuditTarget::Stdout);
        assert_eq!(s.keys, KeySource::File("/etc/selfheal-hmac/keys".into()));
        assert_eq!(s.tls.cert_file, Path::new("/etc/selfheal-tls/tls.crt"));
        assert!(s.policy.namespaces.is_empty());
        assert_eq!(s.policy.actions.len(), 4);
        assert_eq!(s.policy.bounds, BoundsConfig::default());
        assert_eq!(s.kube, KubeConfig::default(), "in-cluster by default");
    }

    #[test]
    fn a_bad_kube_section_names_its_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "[tls]\ncert_file = \"/c\"\nkey_file = \"/k\"\n[keys]\nfile = \"/keys\"\n\
             [allow]\nactions = [\"scale\"]\n\
             [kube.connection]\nsource = \"url\"\nurl = \"http://10.0.0.1:6443\"\n",
        )
        .expect("write");
        let e = HealApiConfig::load(Some(&f))
            .expect("parses")
            .validate()
            .expect_err("plain http off loopback");
        assert!(e.to_string().contains("kube.connection.url"), "{e}");
    }

    #[test]
    fn the_overlay_opens_its_namespace() {
        let path = manifest("daemonset/overlays/heal-namespace/heal-api.toml");
        let s = HealApiConfig::load(Some(&path))
            .expect("overlay parses")
            .validate()
            .expect("overlay validates");
        assert_eq!(s.policy.namespaces, BTreeSet::from(["shop".to_string()]));
    }

    #[test]
    fn an_empty_namespace_list_is_accepted_but_bad_names_are_not() {
        let mut c = minimal();
        c.allow.namespaces.clear();
        assert!(
            c.validate()
                .expect("empty is valid")
                .policy
                .namespaces
                .is_empty()
        );
        let mut c = minimal();
        c.allow.namespaces = vec!["Shop_1".into()];
        let e = c.validate().expect_err("not a namespace name").to_string();
        assert!(e.contains("allow.namespaces"), "{e}");
    }

    #[test]
    fn an_empty_action_list_is_refused() {
        let mut c = minimal();
        c.allow.actions.clear();
        let e = c.validate().expect_err("no actions").to_string();
        assert!(e.contains("allow.actions"), "{e}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[allow]\nnamespace = [\"shop\"]\n").expect("write");
        assert!(matches!(
            HealApiConfig::load(Some(&f)),
            Err(ConfigError::Parse(_))
        ));
    }
}
