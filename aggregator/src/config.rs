//! Aggregator configuration, in two steps: [`AggregatorConfig`] is what the file and the
//! environment say (serde, unknown fields refused); [`Settings`] is the validated form the
//! aggregator runs on. Anything wrong fails at start, naming the field, before any work begins.
//!
//! Sources, later ones winning: built-in defaults, the TOML file (`--config`), then environment
//! variables `SELFHEAL_AGGREGATOR_<FIELD>` with `__` between nested fields, e.g.
//! `SELFHEAL_AGGREGATOR_KINESIS__STREAM_NAME=selfheal`. With `ingest.source = "http"` the
//! `[kinesis]` and `[checkpoint]` sections are not used (the handlers' checkpoints live in the
//! ingest log's directory); `[batch]` applies to both sources. AWS credentials, region and
//! endpoint come from the standard chain (`AWS_REGION`, `AWS_ENDPOINT_URL`, IRSA, ...) unless set
//! here.

use crate::auth::AuthSettings;
use crate::auth::tokenreview::ReviewSettings;
use crate::auth::tokens::TokenSource;
use crate::sources::http::IngestSettings;
use crate::sources::http::log::LogSettings;
use crate::sources::kinesis::ConsumerSettings;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use selfheal_lake::S3Options;
use selfheal_runtime::config::{self, FieldError};
use selfheal_runtime::conn::{ConnSettings, TlsSettings};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The aggregator's configuration as written by the user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    /// Address of the HTTP server for `/metrics` and `/healthz`.
    pub listen_addr: String,
    /// Seconds allowed after SIGTERM to write the open batches and checkpoint them; keep it
    /// below the pod's `terminationGracePeriodSeconds`.
    pub shutdown_grace_secs: f64,
    /// `/healthz` fails when no Kinesis call succeeded for this many seconds (Kinesis source).
    pub health_max_age_secs: f64,
    /// Where records come from: the Kinesis stream or agents POSTing to the HTTP server.
    pub ingest: IngestConfig,
    /// The stream to read.
    pub kinesis: KinesisSourceConfig,
    /// Where per-shard checkpoints are kept.
    pub checkpoint: CheckpointConfig,
    /// Batching between a source and each handler, and the handlers' retries.
    pub batch: BatchConfig,
    /// The data lake.
    pub lake: LakeConfig,
    /// The incident pipeline, its store, API and page.
    pub incidents: crate::incident::config::IncidentsConfig,
    /// Where incidents are notified (webhooks, SNS); none by default.
    pub notify: crate::notify::NotifyConfig,
    /// The healing controller (its policy is `heal.policy_file`).
    pub heal: crate::heal::config::HealConfig,
}

/// `[kinesis]`: the stream and how it is polled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KinesisSourceConfig {
    /// Name of the stream the agents write to.
    pub stream_name: String,
    /// AWS region; default: the standard chain.
    pub region: Option<String>,
    /// Endpoint override (VPC endpoint, moto); `AWS_ENDPOINT_URL` works too.
    pub endpoint_url: Option<String>,
    /// Pause after a GetRecords call that returned less than a full page, milliseconds.
    pub poll_interval_ms: u64,
    /// Most records per GetRecords call (1..=10000).
    pub get_records_limit: u32,
    /// How often the shard list is refreshed, seconds.
    pub shard_refresh_secs: f64,
    /// First retry delay after an error, milliseconds.
    pub retry_initial_ms: u64,
    /// Largest retry delay, milliseconds.
    pub retry_max_ms: u64,
}

/// Where the aggregator's records come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Read the stream of `[kinesis]`, with `[checkpoint]`s and `[batch]`ing.
    #[default]
    Kinesis,
    /// Accept batches POSTed by agents (`forward.sink = "http"`) on the HTTP server.
    Http,
}

/// `[ingest]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// `kinesis` (default) or `http`.
    pub source: SourceKind,
    /// With `source = "http"`: the path agents POST to, on `listen_addr`.
    pub path: String,
    /// With `source = "http"`: the largest body accepted, bytes (larger ones are answered 413).
    /// Keep it above the agent's `forward.max_batch_bytes` plus 4 bytes a record.
    pub max_body_bytes: usize,
    /// With `source = "http"`: requests read and written at once; more are answered 429 and
    /// retried by the agents. Bounds memory to this × `max_body_bytes`.
    pub max_concurrent_requests: usize,
    /// With `source = "http"`: the directory of the durable ingest log (segments, and the
    /// handlers' checkpoints and dead letters). Put it on a persistent volume: a request is
    /// answered 200 once it is here.
    pub log_dir: PathBuf,
    /// With `source = "http"`: requests are answered 503 once the log holds this many bytes
    /// not yet consumed by every handler (the agents keep spooling and retry).
    pub log_max_bytes: u64,
    /// With `source = "http"`: seconds a body may take to arrive after its head (else 408).
    pub body_timeout_secs: f64,
    /// With `source = "http"`: seconds for the TLS handshake and for a request head, counted
    /// from when the connection waits for one (so also how long an idle connection stays open).
    pub header_timeout_secs: f64,
    /// With `source = "http"`: connections open at once; more are closed at accept.
    pub max_connections: usize,
    /// With `source = "http"`: records older than this many seconds are refused (400).
    pub max_record_age_secs: f64,
    /// With `source = "http"`: records more than this many seconds ahead are refused (400).
    pub max_record_ahead_secs: f64,
    /// With `source = "http"`: most lake partitions (hour × family) one request may touch.
    pub max_partitions_per_request: usize,
    /// With `source = "http"`: who may post (required: at least one credential source).
    pub auth: IngestAuthConfig,
    /// With `source = "http"`: TLS on the server (`/metrics` and `/healthz` too).
    pub tls: Option<IngestTlsConfig>,
}

/// `[ingest.auth]`: per-node credentials. The token table is tried first, then TokenReview.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestAuthConfig {
    /// A file of `<node> <token>` (or `<node> sha256:<hex>`) lines, re-read on change.
    pub token_file: Option<PathBuf>,
    /// A directory of one file per node, named after it, holding its token (a Secret mount).
    pub token_dir: Option<PathBuf>,
    /// TokenReview of projected service-account tokens, in a cluster.
    pub kubernetes: Option<TokenReviewConfig>,
}

/// `[ingest.auth.kubernetes]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenReviewConfig {
    /// The API server; `https://` (plain `http://` only on a loopback address).
    pub api_url: String,
    /// CA bundle of the API server; empty: the system roots.
    pub ca_file: Option<PathBuf>,
    /// The aggregator's own service-account token (needs `create` on `tokenreviews`); empty:
    /// none sent.
    pub token_file: Option<PathBuf>,
    /// The audience the agents' projected tokens are issued for.
    pub audience: String,
    /// Service accounts allowed to post, `namespace:name`.
    pub service_accounts: Vec<String>,
    /// Seconds an accepted review is cached (a refused one a fifth of that).
    pub cache_secs: f64,
    /// Seconds one review may take.
    pub timeout_secs: f64,
}

impl Default for TokenReviewConfig {
    fn default() -> Self {
        let sa = Path::new("/var/run/secrets/kubernetes.io/serviceaccount");
        TokenReviewConfig {
            api_url: "https://kubernetes.default.svc".into(),
            ca_file: Some(sa.join("ca.crt")),
            token_file: Some(sa.join("token")),
            audience: "selfheal-ingest".into(),
            service_accounts: vec!["selfheal-system:selfheal-agent".into()],
            cache_secs: 30.0,
            timeout_secs: 5.0,
        }
    }
}

/// `[ingest.tls]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestTlsConfig {
    /// Certificate chain, PEM.
    pub cert_file: PathBuf,
    /// Private key, PEM.
    pub key_file: PathBuf,
    /// When set, clients must present a certificate signed by this CA bundle (PEM).
    pub client_ca_file: Option<PathBuf>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            source: SourceKind::Kinesis,
            path: crate::sources::http::DEFAULT_PATH.into(),
            // The agent's largest batch (5 MiB, the PutRecords limit) plus framing, with room.
            max_body_bytes: 8 * 1024 * 1024,
            // A few appends in flight keep the disk busy; beyond that requests only queue.
            max_concurrent_requests: 8,
            log_dir: PathBuf::from("/var/lib/selfheal/ingest-log"),
            // An hour of a 300-node fleet at 1 s (about 300 KB/s on the wire).
            log_max_bytes: 1024 * 1024 * 1024,
            // An 8 MiB body at 2 Mbit/s, with room.
            body_timeout_secs: 60.0,
            header_timeout_secs: 10.0,
            max_connections: 1024,
            // A week: an agent's spool replayed after a long outage still lands.
            max_record_age_secs: 7.0 * 86_400.0,
            max_record_ahead_secs: 3600.0,
            // 500 records (one agent batch) over two hours of six families, with room.
            max_partitions_per_request: 48,
            auth: IngestAuthConfig::default(),
            tls: None,
        }
    }
}

/// `[checkpoint]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Directory of checkpoint files (one per shard, under a directory named after the stream).
    /// Put it on a persistent volume: losing it replays the stream from its trim horizon.
    pub dir: PathBuf,
}

/// `[batch]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// A shard's batch is handed to a handler when it holds this many records...
    pub max_records: usize,
    /// ... or this many bytes of wire records (the lake makes one object per family of it; an
    /// open batch holds about 1 KB of memory per record, decoded)...
    pub max_bytes: usize,
    /// ... or when its first record was read this many milliseconds ago.
    pub flush_interval_ms: u64,
    /// First delay before a handler retries a batch it failed on, milliseconds.
    pub retry_initial_ms: u64,
    /// Largest such delay, milliseconds.
    pub retry_max_ms: u64,
}

/// `[lake]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LakeConfig {
    /// A directory, or `s3://bucket[/prefix]`.
    pub location: String,
    /// AWS region for S3; default: the standard chain.
    pub region: Option<String>,
    /// S3 endpoint override; `AWS_ENDPOINT_URL` works too.
    pub endpoint_url: Option<String>,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            listen_addr: "0.0.0.0:9478".into(),
            shutdown_grace_secs: 20.0,
            health_max_age_secs: 120.0,
            ingest: IngestConfig::default(),
            kinesis: KinesisSourceConfig::default(),
            checkpoint: CheckpointConfig::default(),
            batch: BatchConfig::default(),
            lake: LakeConfig::default(),
            incidents: crate::incident::config::IncidentsConfig::default(),
            notify: crate::notify::NotifyConfig::default(),
            heal: crate::heal::config::HealConfig::default(),
        }
    }
}

impl Default for KinesisSourceConfig {
    fn default() -> Self {
        KinesisSourceConfig {
            stream_name: String::new(),
            region: None,
            endpoint_url: None,
            poll_interval_ms: 1000,
            get_records_limit: 10_000,
            shard_refresh_secs: 60.0,
            retry_initial_ms: 200,
            retry_max_ms: 10_000,
        }
    }
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            dir: PathBuf::from("/var/lib/selfheal/checkpoints"),
        }
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            // Bytes, not records, cut a batch by default: 64 MiB of ~260-byte records is ~35 MB
            // of Parquet, so the larger families' objects reach 8 MB before the interval does.
            max_records: 1_000_000,
            max_bytes: 64 * 1024 * 1024,
            flush_interval_ms: 60_000,
            retry_initial_ms: 200,
            retry_max_ms: 10_000,
        }
    }
}

impl Default for LakeConfig {
    fn default() -> Self {
        LakeConfig {
            location: "/var/lib/selfheal/lake".into(),
            region: None,
            endpoint_url: None,
        }
    }
}

/// A configuration that cannot be used. The message always names the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be read or parsed into [`AggregatorConfig`].
    #[error("invalid aggregator configuration")]
    Parse(#[from] Box<figment::Error>),
    /// An `[incidents]` field is not acceptable.
    #[error("invalid aggregator configuration: {0}")]
    Incidents(#[from] crate::incident::config::FieldError),
    /// A field parsed but its value is not acceptable.
    #[error("invalid aggregator configuration: {0}")]
    Invalid(#[from] FieldError),
    /// `[heal]` or the policy file it names is not acceptable.
    #[error("invalid aggregator configuration")]
    Heal(#[source] crate::heal::config::HealConfigError),
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `/metrics` and `/healthz` address.
    pub listen_addr: SocketAddr,
    /// Time allowed to drain at shutdown.
    pub shutdown_grace: Duration,
    /// `/healthz` staleness limit.
    pub health_max_age: Duration,
    /// The HTTP ingest endpoint, when it is the source (`None`: the Kinesis consumer is).
    pub http_ingest: Option<IngestSettings>,
    /// First and largest delay before a handler retries a failed batch.
    pub handler_retry: (Duration, Duration),
    /// Consumer settings.
    pub consumer: ConsumerSettings,
    /// Kinesis region override.
    pub kinesis_region: Option<String>,
    /// Kinesis endpoint override.
    pub kinesis_endpoint_url: Option<String>,
    /// Checkpoint directory.
    pub checkpoint_dir: PathBuf,
    /// Lake location (directory or `s3://...`).
    pub lake_location: String,
    /// S3 overrides.
    pub lake_s3: S3Options,
    /// The incident pipeline, unless `incidents.enabled = false`.
    pub incidents: Option<crate::incident::config::Validated>,
    /// `[notify]`, when a channel is configured (it needs the incident pipeline).
    pub notify: Option<crate::notify::NotifySettings>,
    /// The healing controller, unless `heal.enabled = false` (or incidents are off).
    pub heal: Option<crate::heal::config::HealSettings>,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(FieldError::new(field, reason))
}

fn secs(field: &'static str, v: f64, max: f64) -> Result<Duration, ConfigError> {
    Ok(config::secs(field, v, max)?)
}

fn millis(field: &'static str, v: u64, max: u64) -> Result<Duration, ConfigError> {
    Ok(config::millis(field, v, max)?)
}

impl AggregatorConfig {
    /// Loads defaults, then `file` (if any), then `SELFHEAL_AGGREGATOR_*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<AggregatorConfig, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(AggregatorConfig::default()));
        if let Some(f) = file {
            if !f.is_file() {
                return Err(invalid(
                    "--config",
                    format!("{} is not a readable file", f.display()),
                ));
            }
            fig = fig.merge(Toml::file_exact(f));
        }
        fig = fig.merge(Env::prefixed("SELFHEAL_AGGREGATOR_").split("__"));
        fig.extract().map_err(|e| ConfigError::Parse(Box::new(e)))
    }

    /// Checks every field.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let k = &self.kinesis;
        let http_ingest = match self.ingest.source {
            SourceKind::Kinesis => None,
            SourceKind::Http => Some(self.ingest.validate()?),
        };
        if http_ingest.is_none() && k.stream_name.is_empty() {
            return Err(invalid("kinesis.stream_name", "must be set"));
        }
        if !(1..=10_000).contains(&k.get_records_limit) {
            return Err(invalid(
                "kinesis.get_records_limit",
                format!("must be in 1..=10000, got {}", k.get_records_limit),
            ));
        }
        let retry_initial = millis("kinesis.retry_initial_ms", k.retry_initial_ms, 60_000)?;
        let retry_max = millis("kinesis.retry_max_ms", k.retry_max_ms, 600_000)?;
        if retry_max < retry_initial {
            return Err(invalid(
                "kinesis.retry_max_ms",
                format!("must be at least retry_initial_ms ({})", k.retry_initial_ms),
            ));
        }
        if self.batch.max_records == 0 || self.batch.max_records > 10_000_000 {
            return Err(invalid(
                "batch.max_records",
                format!("must be in 1..=10000000, got {}", self.batch.max_records),
            ));
        }
        if !(1024..=1024 * 1024 * 1024).contains(&self.batch.max_bytes) {
            return Err(invalid(
                "batch.max_bytes",
                format!("must be in 1024..=1073741824, got {}", self.batch.max_bytes),
            ));
        }
        let handler_retry_initial = millis(
            "batch.retry_initial_ms",
            self.batch.retry_initial_ms,
            60_000,
        )?;
        let handler_retry_max = millis("batch.retry_max_ms", self.batch.retry_max_ms, 600_000)?;
        if handler_retry_max < handler_retry_initial {
            return Err(invalid(
                "batch.retry_max_ms",
                format!(
                    "must be at least retry_initial_ms ({})",
                    self.batch.retry_initial_ms
                ),
            ));
        }
        if self.lake.location.is_empty() {
            return Err(invalid(
                "lake.location",
                "must be a directory or s3://bucket[/prefix]",
            ));
        }
        if self.lake.location.starts_with("s3://")
            && selfheal_lake::store::parse_s3_url(&self.lake.location).is_none()
        {
            return Err(invalid(
                "lake.location",
                format!("{:?} has no bucket", self.lake.location),
            ));
        }
        if self.checkpoint.dir.as_os_str().is_empty() {
            return Err(invalid("checkpoint.dir", "must be set"));
        }
        let listen_addr = self.listen_addr.parse::<SocketAddr>().map_err(|e| {
            invalid(
                "listen_addr",
                format!("{:?} is not an address:port ({e})", self.listen_addr),
            )
        })?;
        // The data directory holds what the aggregator keeps locally beside its checkpoints.
        let local_lake =
            (!self.lake.location.starts_with("s3://")).then(|| PathBuf::from(&self.lake.location));
        let data_dir = match (&http_ingest, local_lake) {
            (Some(_), Some(lake)) => lake.parent().map(Path::to_path_buf),
            _ => self.checkpoint.dir.parent().map(Path::to_path_buf),
        }
        .unwrap_or_else(|| PathBuf::from("/var/lib/selfheal"));
        let incidents = if self.incidents.enabled {
            Some(self.incidents.validate(&data_dir)?)
        } else {
            None
        };
        let notify = self.notify.validate()?;
        let notify = match (notify.any(), &incidents) {
            (false, _) => None,
            (true, Some(_)) => Some(notify),
            (true, None) => {
                return Err(invalid(
                    "notify",
                    "channels are configured but incidents.enabled = false: nothing to notify",
                ));
            }
        };
        let heal = if self.heal.enabled && incidents.is_some() {
            Some(self.heal.validate(&data_dir).map_err(ConfigError::Heal)?)
        } else {
            None
        };
        Ok(Settings {
            listen_addr,
            incidents,
            notify,
            heal,
            shutdown_grace: secs("shutdown_grace_secs", self.shutdown_grace_secs, 600.0)?,
            health_max_age: secs("health_max_age_secs", self.health_max_age_secs, 86_400.0)?,
            http_ingest,
            handler_retry: (handler_retry_initial, handler_retry_max),
            consumer: ConsumerSettings {
                stream: k.stream_name.clone(),
                batch_max_records: self.batch.max_records,
                batch_max_bytes: self.batch.max_bytes,
                flush_interval: millis(
                    "batch.flush_interval_ms",
                    self.batch.flush_interval_ms,
                    3_600_000,
                )?,
                poll_interval: millis("kinesis.poll_interval_ms", k.poll_interval_ms, 60_000)?,
                get_records_limit: i32::try_from(k.get_records_limit).unwrap_or(10_000),
                shard_refresh: secs("kinesis.shard_refresh_secs", k.shard_refresh_secs, 3600.0)?,
                retry_initial,
                retry_max,
            },
            kinesis_region: k.region.clone(),
            kinesis_endpoint_url: k.endpoint_url.clone(),
            checkpoint_dir: self.checkpoint.dir.clone(),
            lake_location: self.lake.location.clone(),
            lake_s3: S3Options {
                region: self.lake.region.clone(),
                endpoint_url: self.lake.endpoint_url.clone(),
            },
        })
    }
}

impl IngestConfig {
    fn validate(&self) -> Result<IngestSettings, ConfigError> {
        let reserved = ["/metrics", "/healthz"];
        if !self.path.starts_with('/')
            || self.path.len() < 2
            || reserved.contains(&self.path.as_str())
        {
            return Err(invalid(
                "ingest.path",
                format!(
                    "must be a path starting with / other than {reserved:?}, got {:?}",
                    self.path
                ),
            ));
        }
        if !(1024..=1024 * 1024 * 1024).contains(&self.max_body_bytes) {
            return Err(invalid(
                "ingest.max_body_bytes",
                format!("must be in 1024..=1073741824, got {}", self.max_body_bytes),
            ));
        }
        if !(1..=4096).contains(&self.max_concurrent_requests) {
            return Err(invalid(
                "ingest.max_concurrent_requests",
                format!("must be in 1..=4096, got {}", self.max_concurrent_requests),
            ));
        }
        if self.log_dir.as_os_str().is_empty() {
            return Err(invalid("ingest.log_dir", "must be set"));
        }
        if !(4096..=1 << 40).contains(&self.log_max_bytes) {
            return Err(invalid(
                "ingest.log_max_bytes",
                format!(
                    "must be in 4096..=1099511627776, got {}",
                    self.log_max_bytes
                ),
            ));
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err(invalid(
                "ingest.max_connections",
                format!("must be in 1..=1000000, got {}", self.max_connections),
            ));
        }
        if !(1..=100_000).contains(&self.max_partitions_per_request) {
            return Err(invalid(
                "ingest.max_partitions_per_request",
                format!(
                    "must be in 1..=100000, got {}",
                    self.max_partitions_per_request
                ),
            ));
        }
        let tls = self
            .tls
            .as_ref()
            .map(|t| {
                if t.cert_file.as_os_str().is_empty() || t.key_file.as_os_str().is_empty() {
                    return Err(invalid(
                        "ingest.tls",
                        "cert_file and key_file must both be set",
                    ));
                }
                let settings = TlsSettings {
                    cert_file: t.cert_file.clone(),
                    key_file: t.key_file.clone(),
                    client_ca_file: t.client_ca_file.clone(),
                };
                // Fail at start on an unreadable or mismatched certificate and key.
                selfheal_runtime::conn::server_config(&settings).map_err(|e| {
                    invalid(
                        "ingest.tls",
                        selfheal_runtime::chain::ErrorChain::new(&e).to_string(),
                    )
                })?;
                Ok(settings)
            })
            .transpose()?;
        Ok(IngestSettings {
            path: self.path.clone(),
            max_body_bytes: self.max_body_bytes,
            max_concurrent_requests: self.max_concurrent_requests,
            body_timeout: secs("ingest.body_timeout_secs", self.body_timeout_secs, 3600.0)?,
            max_record_age: secs(
                "ingest.max_record_age_secs",
                self.max_record_age_secs,
                366.0 * 86_400.0,
            )?,
            max_record_ahead: secs(
                "ingest.max_record_ahead_secs",
                self.max_record_ahead_secs,
                86_400.0,
            )?,
            max_partitions: self.max_partitions_per_request,
            auth: self.auth.validate()?,
            conn: ConnSettings {
                max_connections: self.max_connections,
                header_timeout: secs(
                    "ingest.header_timeout_secs",
                    self.header_timeout_secs,
                    600.0,
                )?,
                tls,
            },
            log: LogSettings {
                dir: self.log_dir.clone(),
                max_bytes: self.log_max_bytes,
            },
        })
    }
}

impl IngestAuthConfig {
    fn validate(&self) -> Result<AuthSettings, ConfigError> {
        let tokens = match (&self.token_file, &self.token_dir) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "ingest.auth.token_dir",
                    "set token_file or token_dir, not both",
                ));
            }
            (Some(f), None) => Some(TokenSource::File(f.clone())),
            (None, Some(d)) => Some(TokenSource::Dir(d.clone())),
            (None, None) => None,
        };
        let review = self
            .kubernetes
            .as_ref()
            .map(TokenReviewConfig::validate)
            .transpose()?;
        if tokens.is_none() && review.is_none() {
            return Err(invalid(
                "ingest.auth",
                "HTTP ingest needs a credential per node: set token_file, token_dir or \
                 [ingest.auth.kubernetes]",
            ));
        }
        let settings = AuthSettings { tokens, review };
        // Fail at start on an unreadable token table or CA bundle.
        crate::auth::Authenticator::new(&settings).map_err(|e| {
            invalid(
                "ingest.auth",
                selfheal_runtime::chain::ErrorChain::new(&e).to_string(),
            )
        })?;
        Ok(settings)
    }
}

impl TokenReviewConfig {
    fn validate(&self) -> Result<ReviewSettings, ConfigError> {
        let field = "ingest.auth.kubernetes.api_url";
        let url = reqwest::Url::parse(&self.api_url)
            .map_err(|e| invalid(field, format!("{:?} is not a URL: {e}", self.api_url)))?;
        let loopback =
            selfheal_runtime::config::is_loopback_host(url.host_str().unwrap_or_default());
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            _ => {
                return Err(invalid(
                    field,
                    format!(
                        "{:?}: the token must not travel in clear; use https:// (http:// only on loopback)",
                        self.api_url
                    ),
                ));
            }
        }
        if self.audience.is_empty() {
            return Err(invalid("ingest.auth.kubernetes.audience", "must be set"));
        }
        if self.service_accounts.is_empty()
            || self
                .service_accounts
                .iter()
                .any(|a| a.split(':').count() != 2 || a.starts_with(':') || a.ends_with(':'))
        {
            return Err(invalid(
                "ingest.auth.kubernetes.service_accounts",
                "must list at least one `namespace:name`",
            ));
        }
        let set = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
        Ok(ReviewSettings {
            api_url: self.api_url.clone(),
            ca_file: set(&self.ca_file),
            token_file: set(&self.token_file),
            audience: self.audience.clone(),
            service_accounts: self.service_accounts.clone(),
            cache_ttl: secs("ingest.auth.kubernetes.cache_secs", self.cache_secs, 3600.0)?,
            timeout: secs(
                "ingest.auth.kubernetes.timeout_secs",
                self.timeout_secs,
                60.0,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> Result<Settings, ConfigError> {
        let cfg: AggregatorConfig =
            Figment::from(Serialized::defaults(AggregatorConfig::default()))
                .merge(Toml::string(text))
                .extract()
                .map_err(|e| ConfigError::Parse(Box::new(e)))?;
        cfg.validate()
    }

    #[test]
    fn errors_name_the_field() {
        let e = from_toml("").expect_err("no stream").to_string();
        assert!(e.contains("`kinesis.stream_name`"), "{e}");
        let e = from_toml("[kinesis]\nstream_name = \"s\"\nget_records_limit = 0\n")
            .expect_err("limit")
            .to_string();
        assert!(e.contains("`kinesis.get_records_limit`"), "{e}");
        let e = from_toml("[kinesis]\nstream_name = \"s\"\n[lake]\nlocation = \"s3://\"\n")
            .expect_err("bucket")
            .to_string();
        assert!(e.contains("`lake.location`"), "{e}");
        let e = from_toml("[kinesis]\nstream_name = \"s\"\nbogus = 1\n").expect_err("unknown");
        let chain = format!("{:?}", e);
        assert!(chain.contains("bogus"), "{chain}");
    }

    #[test]
    fn defaults_validate_once_the_stream_is_named() {
        let s = from_toml("[kinesis]\nstream_name = \"s\"\n").expect("valid");
        assert_eq!(s.consumer.get_records_limit, 10_000);
        assert_eq!(s.lake_location, "/var/lib/selfheal/lake");
        assert_eq!(s.http_ingest, None);
    }

    /// `[ingest]` with the HTTP source and a token file, then `rest` of that section.
    fn http(tokens: &Path, rest: &str) -> String {
        format!(
            "[ingest]\nsource = \"http\"\n{rest}\n[ingest.auth]\ntoken_file = \"{}\"\n",
            tokens.display()
        )
    }

    #[test]
    fn the_http_source_needs_no_stream_and_checks_its_path() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let tokens = tmp.path().join("tokens");
        std::fs::write(&tokens, "node-a node-a-token-0123456789\n").expect("tokens");
        let s = from_toml(&http(&tokens, "")).expect("valid");
        assert_eq!(
            s.http_ingest.expect("http ingest").path,
            crate::sources::http::DEFAULT_PATH
        );
        let e = from_toml(&http(&tokens, "path = \"/metrics\""))
            .expect_err("reserved path")
            .to_string();
        assert!(e.contains("`ingest.path`"), "{e}");
        let e = from_toml(&http(&tokens, "max_body_bytes = 10"))
            .expect_err("tiny body")
            .to_string();
        assert!(e.contains("`ingest.max_body_bytes`"), "{e}");
        let e = from_toml(&http(&tokens, "max_concurrent_requests = 0"))
            .expect_err("no permits")
            .to_string();
        assert!(e.contains("`ingest.max_concurrent_requests`"), "{e}");
        let e = from_toml(&http(&tokens, "log_max_bytes = 10"))
            .expect_err("tiny log")
            .to_string();
        assert!(e.contains("`ingest.log_max_bytes`"), "{e}");
        let e = from_toml(
            "[kinesis]\nstream_name = \"s\"\n[batch]\nretry_initial_ms = 900\nretry_max_ms = 100\n",
        )
        .expect_err("retry order")
        .to_string();
        assert!(e.contains("`batch.retry_max_ms`"), "{e}");
    }

    #[test]
    fn http_ingest_without_credentials_or_with_a_clear_text_api_server_is_refused() {
        let e = from_toml("[ingest]\nsource = \"http\"\n")
            .expect_err("no auth")
            .to_string();
        assert!(e.contains("`ingest.auth`"), "{e}");
        let e = from_toml(
            "[ingest]\nsource = \"http\"\n[ingest.auth.kubernetes]\napi_url = \"http://10.96.0.1\"\n",
        )
        .expect_err("clear text")
        .to_string();
        assert!(e.contains("`ingest.auth.kubernetes.api_url`"), "{e}");
        let s = from_toml(
            "[ingest]\nsource = \"http\"\n[ingest.auth.kubernetes]\napi_url = \"http://127.0.0.1:6443\"\nca_file = \"\"\ntoken_file = \"\"\n",
        )
        .expect("loopback API server, system roots, no token of its own");
        let review = s.http_ingest.expect("http").auth.review.expect("review");
        assert_eq!((review.ca_file, review.token_file), (None, None));
        let e = from_toml(
            "[ingest]\nsource = \"http\"\n[ingest.auth.kubernetes]\napi_url = \"https://10.96.0.1\"\nca_file = \"/nonexistent/ca.crt\"\n",
        )
        .expect_err("unreadable CA")
        .to_string();
        assert!(e.contains("/nonexistent/ca.crt"), "{e}");
        let e = from_toml(
            "[ingest]\nsource = \"http\"\n[ingest.auth]\ntoken_file = \"/nonexistent/tokens\"\n",
        )
        .expect_err("missing file")
        .to_string();
        assert!(e.contains("/nonexistent/tokens"), "{e}");
    }
}
