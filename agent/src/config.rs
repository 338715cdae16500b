//! Agent configuration, in two steps: [`AgentConfig`] is what the file and the environment say
//! (serde, unknown fields refused); [`Settings`] is the validated form the agent runs on.
//! Anything wrong fails at start, naming the field, before any work begins.
//!
//! Sources, later ones winning: built-in defaults, the TOML file (`--config`), then environment
//! variables `SELFHEAL_AGENT_<FIELD>` with `__` between nested fields, e.g.
//! `SELFHEAL_AGENT_INTERVAL_SECS=1` or `SELFHEAL_AGENT_PODS__SOURCE=none`.

use crate::collect::pods::PodsConfig;
use crate::detect::{ModelSource, ModelsConfig};
use crate::forward::spool::{SpoolConfig, SpoolSettings};
use crate::forward::{ForwardConfig, ForwardSettings};
use crate::sample::{SamplingConfig, SamplingSettings};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use selfheal_runtime::config::FieldError;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The agent's configuration as written by the user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// This node's name. Defaults to the `NODE_NAME` environment variable (set from the downward
    /// API in the DaemonSet), then to the host name read from the proc root.
    pub node_name: Option<String>,
    /// Seconds between collection cycles.
    pub interval_secs: f64,
    /// Where the host's procfs is mounted (`/host/proc` in the DaemonSet).
    pub proc_root: PathBuf,
    /// Where the host's sysfs is mounted (`/host/sys` in the DaemonSet).
    pub sys_root: PathBuf,
    /// The cgroup hierarchy root; defaults to `<sys_root>/fs/cgroup`.
    pub cgroup_root: Option<PathBuf>,
    /// Pod cgroup hierarchy roots, relative to each cgroup hierarchy: `kubepods.slice` for the
    /// kubelet's systemd driver, `kubepods` for its cgroupfs driver.
    pub kubepods_paths: Vec<PathBuf>,
    /// Address of the HTTP server for `/metrics` and `/healthz`. Default `0.0.0.0:9477`: every
    /// interface, because Prometheus scrapes the pod IP from another pod and the kubelet probes
    /// it there; bind `127.0.0.1:9477` where only a local scraper reads it. Whatever the address,
    /// the server caps connections (64) and times out heads and idle keep-alives (10 s) and
    /// requests (30 s): see `selfheal_runtime::server::ConnectionLimits`.
    pub listen_addr: String,
    /// Network interfaces left out of node traffic. A trailing `*` matches any suffix. Pod
    /// veths and overlay devices are excluded by default so traffic is not counted twice.
    pub exclude_net_devices: Vec<String>,
    /// Block devices left out of node disk traffic (same pattern rules). Partitions are always
    /// left out (only devices under `<sys_root>/block` count), as are loop and ram devices.
    pub exclude_disk_devices: Vec<String>,
    /// Seconds allowed after SIGTERM to finish the cycle and flush before exiting; keep it below
    /// the pod's `terminationGracePeriodSeconds`.
    pub shutdown_grace_secs: f64,
    /// Pod identity source.
    pub pods: PodsConfig,
    /// Family models to score records with.
    pub models: ModelsConfig,
    /// The on-disk spool in front of the Kinesis and HTTP sinks.
    pub spool: SpoolConfig,
    /// Where selected records go (`sink`), and batching and retries.
    pub forward: ForwardConfig,
    /// Which normal records are forwarded: the byte budget and its blocks.
    pub sampling: SamplingConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            node_name: None,
            interval_secs: 5.0,
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
            cgroup_root: None,
            kubepods_paths: vec![PathBuf::from("kubepods.slice"), PathBuf::from("kubepods")],
            listen_addr: "0.0.0.0:9477".into(),
            exclude_net_devices: [
                "lo",
                "veth*",
                "cali*",
                "cilium_*",
                "lxc*",
                "flannel*",
                "cni*",
                "docker*",
                "br-*",
                "vxlan*",
                "tunl*",
                "kube-*",
                "genev_sys_*",
                "weave*",
                "virbr*",
            ]
            .map(String::from)
            .to_vec(),
            exclude_disk_devices: ["loop*", "ram*", "zram*", "sr*", "fd*"]
                .map(String::from)
                .to_vec(),
            shutdown_grace_secs: 10.0,
            pods: PodsConfig::default(),
            models: ModelsConfig::default(),
            spool: SpoolConfig::default(),
            forward: ForwardConfig::default(),
            sampling: SamplingConfig::default(),
        }
    }
}

/// Largest flight recorder per series: bounds memory at pods × families × this many records.
const MAX_WINDOW_RECORDS: usize = 1000;

/// A configuration that cannot be used. The message always names the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be read or parsed into [`AgentConfig`].
    #[error("invalid agent configuration")]
    Parse(#[from] Box<figment::Error>),
    /// A field parsed but its value is not acceptable.
    #[error("invalid agent configuration: {0}")]
    Invalid(#[from] FieldError),
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's name.
    pub node_name: String,
    /// Time between cycles.
    pub interval: Duration,
    /// Host procfs root.
    pub proc_root: PathBuf,
    /// Host sysfs root.
    pub sys_root: PathBuf,
    /// cgroup hierarchy root.
    pub cgroup_root: PathBuf,
    /// Pod cgroup roots relative to each hierarchy.
    pub kubepods_paths: Vec<PathBuf>,
    /// HTTP listen address.
    pub listen_addr: SocketAddr,
    /// Excluded network interface patterns.
    pub exclude_net_devices: Vec<String>,
    /// Excluded block device patterns.
    pub exclude_disk_devices: Vec<String>,
    /// Grace period after SIGTERM.
    pub shutdown_grace: Duration,
    /// Pod identity source.
    pub pods: PodsConfig,
    /// Family models.
    pub models: ModelsConfig,
    /// Spool (opened only for the Kinesis and HTTP sinks).
    pub spool: SpoolSettings,
    /// The sink and its settings, as configured (checked).
    pub forward: ForwardConfig,
    /// Batching and retries.
    pub forward_settings: ForwardSettings,
    /// The sampler.
    pub sampling: SamplingSettings,
    /// Where models come from (`models.source` parsed and checked), `None` without scoring.
    pub models_source: Option<ModelSource>,
    /// The model public keys (`models.public_keys` and `models.public_key_files`, parsed).
    pub model_keys: std::sync::Arc<[selfheal_core::signature::VerifyingKey]>,
}

impl AgentConfig {
    /// Loads defaults, then `file` (if any), then `SELFHEAL_AGENT_*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<AgentConfig, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(AgentConfig::default()));
        if let Some(f) = file {
            if !f.is_file() {
                return Err(ConfigError::Invalid(FieldError::new(
                    "--config",
                    format!("{} is not a readable file", f.display()),
                )));
            }
            fig = fig.merge(Toml::file_exact(f));
        }
        fig = fig.merge(Env::prefixed("SELFHEAL_AGENT_").split("__"));
        fig.extract().map_err(|e| ConfigError::Parse(Box::new(e)))
    }

    /// Checks every field and resolves defaults that depend on the host.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let positive = selfheal_runtime::config::secs;
        let interval = positive("interval_secs", self.interval_secs, 3600.0)?;
        if interval < Duration::from_millis(100) {
            return Err(ConfigError::Invalid(FieldError::new(
                "interval_secs",
                format!("must be at least 0.1 s, got {}", self.interval_secs),
            )));
        }
        let shutdown_grace = positive("shutdown_grace_secs", self.shutdown_grace_secs, 600.0)?;
        let listen_addr = self.listen_addr.parse::<SocketAddr>().map_err(|e| {
            ConfigError::Invalid(FieldError::new(
                "listen_addr",
                format!("{:?} is not an address:port ({e})", self.listen_addr),
            ))
        })?;
        if !self.proc_root.join("stat").is_file() {
            return Err(ConfigError::Invalid(FieldError::new(
                "proc_root",
                format!(
                    "{} has no `stat` file: not a procfs",
                    self.proc_root.display()
                ),
            )));
        }
        let cgroup_root = self
            .cgroup_root
            .clone()
            .unwrap_or_else(|| self.sys_root.join("fs/cgroup"));
        let node_name = match self.node_name.clone().filter(|n| !n.is_empty()) {
            Some(n) => n,
            None => match std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()) {
                Some(n) => n,
                None => std::fs::read_to_string(self.proc_root.join("sys/kernel/hostname"))
                    .map(|s| s.trim().to_owned())
                    .ok()
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        ConfigError::Invalid(FieldError::new(
                            "node_name",
                            "not set, NODE_NAME is empty and the host name is unreadable",
                        ))
                    })?,
            },
        };
        for (field, pats) in [
            ("exclude_net_devices", &self.exclude_net_devices),
            ("exclude_disk_devices", &self.exclude_disk_devices),
        ] {
            if let Some(bad) = pats
                .iter()
                .find(|p| p.is_empty() || p[..p.len() - 1].contains('*'))
            {
                return Err(ConfigError::Invalid(FieldError::new(
                    field,
                    format!("pattern {bad:?}: only a trailing `*` is supported"),
                )));
            }
        }
        if let Some(bad) = self.kubepods_paths.iter().find(|p| {
            p.is_absolute()
                || p.components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
        }) {
            return Err(ConfigError::Invalid(FieldError::new(
                "kubepods_paths",
                format!("{} must be a plain relative path", bad.display()),
            )));
        }
        self.pods.validate()?;
        positive("models.poll_secs", self.models.poll_secs, 86400.0)?;
        if self.models.window_records > MAX_WINDOW_RECORDS {
            return Err(ConfigError::Invalid(FieldError::new(
                "models.window_records",
                format!(
                    "must be at most {MAX_WINDOW_RECORDS}, got {}",
                    self.models.window_records
                ),
            )));
        }
        let models_source = self.models.validate()?;
        let model_keys = self.models.verifying_keys()?.into();
        let invalid = |field: &'static str, reason: String| {
            ConfigError::Invalid(FieldError::new(field, reason))
        };
        let spool = self.spool.validate().map_err(|e| match e {
            crate::forward::spool::SpoolError::Invalid(e) => ConfigError::Invalid(e),
            other => invalid("spool", other.to_string()),
        })?;
        let forward_settings = self.forward.validate()?;
        let sampling = self.sampling.validate(interval, &node_name)?;
        Ok(Settings {
            spool,
            forward: self.forward,
            forward_settings,
            sampling,
            node_name,
            interval,
            proc_root: self.proc_root,
            sys_root: self.sys_root,
            cgroup_root,
            kubepods_paths: self.kubepods_paths,
            listen_addr,
            exclude_net_devices: self.exclude_net_devices,
            exclude_disk_devices: self.exclude_disk_devices,
            shutdown_grace,
            pods: self.pods,
            models: self.models,
            models_source,
            model_keys,
        })
    }
}

impl ModelsConfig {
    /// The configured model public keys, each parsed; a key file inside the models source or
    /// cache is refused (whoever writes models there could write the key too).
    fn verifying_keys(&self) -> Result<Vec<selfheal_core::signature::VerifyingKey>, ConfigError> {
        use selfheal_core::signature::parse_verifying_key;
        let mut keys = Vec::new();
        for (i, text) in self.public_keys.iter().enumerate() {
            keys.push(parse_verifying_key(text).map_err(|e| {
                ConfigError::Invalid(FieldError::new(
                    "models.public_keys",
                    format!("entry {i}: {e}"),
                ))
            })?);
        }
        let model_dirs: Vec<PathBuf> = [
            self.source
                .as_deref()
                .filter(|s| !s.starts_with("s3://"))
                .map(PathBuf::from),
            Some(self.cache_dir.clone()),
        ]
        .into_iter()
        .flatten()
        .filter_map(|d| std::fs::canonicalize(d).ok())
        .collect();
        for path in &self.public_key_files {
            let invalid = |reason: String| {
                ConfigError::Invalid(FieldError::new(
                    "models.public_key_files",
                    format!("{}: {reason}", path.display()),
                ))
            };
            let real = std::fs::canonicalize(path).map_err(|e| invalid(e.to_string()))?;
            if let Some(dir) = model_dirs.iter().find(|d| real.starts_with(d)) {
                return Err(invalid(format!(
                    "is inside the models directory {}: a key must not come from where the \
                     models come from",
                    dir.display()
                )));
            }
            // A key is 64 or 44 characters: reading more than a line's worth is never needed.
            let mut text = String::new();
            std::io::Read::read_to_string(
                &mut std::io::Read::take(
                    std::fs::File::open(&real).map_err(|e| invalid(e.to_string()))?,
                    4096,
                ),
                &mut text,
            )
            .map_err(|e| invalid(e.to_string()))?;
            keys.push(parse_verifying_key(&text).map_err(|e| invalid(e.to_string()))?);
        }
        Ok(keys)
    }

    /// Checks `source` (an existing directory, or a valid `s3://` URL whose cache directory can
    /// be created) and returns it parsed.
    fn validate(&self) -> Result<Option<ModelSource>, ConfigError> {
        let invalid = |field, reason| ConfigError::Invalid(FieldError::new(field, reason));
        let source = self
            .parsed_source()
            .map_err(|e| invalid("models.source", e.to_string()))?;
        match &source {
            Some(ModelSource::Dir(dir)) if !dir.is_dir() => {
                return Err(invalid(
                    "models.source",
                    format!("{} is not a directory", dir.display()),
                ));
            }
            Some(ModelSource::S3(_)) => {
                std::fs::create_dir_all(&self.cache_dir).map_err(|e| {
                    invalid(
                        "models.cache_dir",
                        format!("cannot create {}: {e}", self.cache_dir.display()),
                    )
                })?;
            }
            _ => {}
        }
        Ok(source)
    }
}

/// True when `name` matches `pattern` (exact, or prefix when the pattern ends in `*`).
pub fn matches_pattern(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The error with its causes, as the binary prints it.
    struct Chain(ConfigError);

    impl std::fmt::Display for Chain {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            selfheal_runtime::chain::ErrorChain::new(&self.0).fmt(f)
        }
    }

    impl std::fmt::Debug for Chain {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            std::fmt::Display::fmt(self, f)
        }
    }

    fn load_str(toml: &str) -> Result<Settings, Chain> {
        let mut f = tempfile::NamedTempFile::new().expect("tempfile");
        f.write_all(toml.as_bytes()).expect("write");
        AgentConfig::load(Some(f.path()))
            .and_then(AgentConfig::validate)
            .map_err(Chain)
    }

    #[test]
    fn defaults_validate_on_this_host() {
        let s = load_str("").expect("defaults are valid");
        assert_eq!(s.interval, Duration::from_secs(5));
        assert!(!s.node_name.is_empty());
    }

    #[test]
    fn model_keys_come_inline_or_from_files_never_from_the_models_directory() {
        let key = selfheal_core::signature::SigningKey::from_bytes(&[3; 32]).verifying_key();
        let hex = selfheal_core::signature::verifying_key_text(&key);
        let keys = tempfile::tempdir().expect("tempdir");
        let models = tempfile::tempdir().expect("tempdir");
        let outside = keys.path().join("model.pub");
        std::fs::write(&outside, format!("{hex}\n")).expect("write key");
        let s = load_str(&format!(
            "[models]\nsource = {:?}\npublic_keys = [{hex:?}]\npublic_key_files = [{:?}]",
            models.path(),
            outside
        ))
        .expect("inline and file keys");
        assert_eq!(&s.model_keys[..], &[key, key]);
        assert!(load_str("").expect("defaults").model_keys.is_empty());
        let inside = models.path().join("model.pub");
        std::fs::write(&inside, &hex).expect("write key");
        let err = load_str(&format!(
            "[models]\nsource = {:?}\npublic_key_files = [{inside:?}]",
            models.path()
        ))
        .expect_err("a key beside the models")
        .to_string();
        assert!(err.contains("inside the models directory"), "{err}");
    }

    #[test]
    fn unknown_field_is_named() {
        let err = load_str("intervall_secs = 3")
            .expect_err("typo must fail")
            .to_string();
        assert!(err.contains("intervall_secs"), "{err}");
    }

    #[test]
    fn bad_values_name_their_field() {
        let err = load_str("interval_secs = -1")
            .expect_err("negative")
            .to_string();
        assert!(err.contains("`interval_secs`"), "{err}");
        let err = load_str("interval_secs = \"fast\"")
            .expect_err("string")
            .to_string();
        assert!(err.contains("interval_secs"), "{err}");
        let err = load_str("listen_addr = \"nowhere\"")
            .expect_err("addr")
            .to_string();
        assert!(err.contains("`listen_addr`"), "{err}");
        let err = load_str("proc_root = \"/nonexistent\"")
            .expect_err("proc")
            .to_string();
        assert!(err.contains("`proc_root`"), "{err}");
        let err = load_str("exclude_net_devices = [\"*eth\"]")
            .expect_err("glob")
            .to_string();
        assert!(err.contains("`exclude_net_devices`"), "{err}");
        let err = load_str("[models]\npoll_secs = 0")
            .expect_err("poll")
            .to_string();
        assert!(err.contains("`models.poll_secs`"), "{err}");
        let err = load_str("[models]\nsource = \"/nonexistent\"")
            .expect_err("dir")
            .to_string();
        assert!(err.contains("`models.source`"), "{err}");
        let err = load_str("[models]\nsource = \"s3://B/x\"")
            .expect_err("bucket")
            .to_string();
        assert!(err.contains("`models.source`"), "{err}");
        let err = load_str("[forward]\nsink = \"kinesis\"")
            .expect_err("no stream")
            .to_string();
        assert!(err.contains("`forward.kinesis.stream_name`"), "{err}");
        let err = load_str("[forward]\nsink = \"carrier-pigeon\"")
            .expect_err("sink")
            .to_string();
        assert!(err.contains("carrier-pigeon"), "{err}");
        let err = load_str("[forward.kinesis]\nstream = \"x\"")
            .expect_err("unknown")
            .to_string();
        assert!(err.contains("stream"), "{err}");
        let err = load_str("[spool]\nsegment_bytes = 10")
            .expect_err("segment")
            .to_string();
        assert!(err.contains("`spool.segment_bytes`"), "{err}");
        let err = load_str("[sampling]\nmin_probability = 0")
            .expect_err("p")
            .to_string();
        assert!(err.contains("`sampling.min_probability`"), "{err}");
        let err = load_str("[models]\npublic_keys = [\"abcd\"]")
            .expect_err("not a key")
            .to_string();
        assert!(err.contains("`models.public_keys`"), "{err}");
        let err = load_str("[models]\npublic_key_files = [\"/nonexistent/key.pub\"]")
            .expect_err("no such file")
            .to_string();
        assert!(err.contains("`models.public_key_files`"), "{err}");
        let err = load_str("[models]\nwindow_records = 100000")
            .expect_err("window")
            .to_string();
        assert!(err.contains("`models.window_records`"), "{err}");
    }

    #[test]
    fn forwarding_sections_load_from_file_and_environment() {
        let s = load_str(
            "[forward]\nsink = \"kinesis\"\nlinger_ms = 50\n[forward.kinesis]\nstream_name = \"s\"\n\
             [spool]\ndir = \"/tmp/x\"\n[sampling]\nbudget_bytes_per_hour = 1000\nblock_cycles = 12\n",
        )
        .expect("valid");
        assert_eq!(s.forward.sink, crate::forward::SinkKind::Kinesis);
        assert_eq!(s.forward.kinesis.stream_name, "s");
        assert_eq!(s.forward_settings.linger, Duration::from_millis(50));
        assert_eq!(s.spool.dir, Path::new("/tmp/x"));
        assert_eq!(s.sampling.budget_bytes_per_hour, 1000.0);
        assert_eq!(s.sampling.block, Duration::from_secs(60));
        let d = load_str("").expect("defaults");
        assert_eq!(d.forward.sink, crate::forward::SinkKind::None);
    }

    #[test]
    fn missing_file_is_reported() {
        let err = AgentConfig::load(Some(Path::new("/nonexistent/agent.toml")))
            .expect_err("missing")
            .to_string();
        assert!(err.contains("--config"), "{err}");
    }

    #[test]
    fn patterns() {
        assert!(matches_pattern("veth*", "veth12ab"));
        assert!(matches_pattern("lo", "lo"));
        assert!(!matches_pattern("lo", "lo0"));
        assert!(!matches_pattern("veth*", "eth0"));
    }
}
