//! Pod identity: the pod UID found in a cgroup path → namespace, name, owner workload, QoS,
//! restarts and container health, for the pods on this node.
//!
//! [`cgroup`](crate::collect::cgroup) finds pod UIDs in the cgroup tree; this module names them. A
//! [`PodWatcher`] keeps a shared [`PodDirectory`] current from one of two sources:
//!
//! - **api** (the default in a cluster): LIST `/api/v1/pods?fieldSelector=spec.nodeName=<node>`,
//!   then WATCH from the list's `resourceVersion`. A `410 Gone`, an `ERROR` event or the end of
//!   the stream leads to a fresh LIST; failures back off exponentially. RBAC stays at
//!   get/list/watch on pods: Deployments are found from the ReplicaSet's name and the pod's
//!   `pod-template-hash` label, never by reading ReplicaSets.
//! - **kubelet**: poll the kubelet's `GET /pods` every `resync_secs`, for clusters where agents
//!   must not talk to the API server.
//! - **dir**: kubelet-format Pod JSON files in a local directory, read every `dir_poll_ms`
//!   ([`DirWatcher`]), for pods laid out on this machine by `selfheal chaos run` and
//!   `selfheal up`, where there is no kubelet.
//!
//! The bearer token is read again from its file on every (re)connect, because projected
//! service-account tokens rotate. Every failure is one `tracing` line plus a counter in
//! [`PodStats`], then the loop goes on: pod identity is enrichment, never a reason to stop
//! collecting. [`normalize`](crate::normalize) reads the directory once per cycle and, for a UID
//! it does not know yet, calls [`PodDirectory::request_relist`] (rate-limited by the watcher).
//!
//! Inside: [`config`](PodsConfig) of the source, the [`PodDirectory`] it fills, the decoding of
//! Kubernetes pod JSON into [`PodInfo`], and the watcher ([`PodWatcher`]) itself.
//!
//! **Why the client is hand-written** (decided on measurements, issue 10; `docs/benchmarks.md`,
//! "Pod watch"): the same list-then-watch on `kube_runtime::watcher` (field selector, decoding
//! only these fields, behind this directory) compiled, and cost the agent 60 more crates
//! (263 → 323 by `cargo tree -p selfheal-agent -e normal`: `k8s-openapi` with every API type, a
//! YAML parser for kubeconfigs, `jsonpath-rust`, `pest`, `regex`, ...). Enabling it after a
//! 29-minute cold release build recompiled 148 crates (feature unification reaches `serde`,
//! `tokio`, `hyper`, the AWS SDK and tract) and was still building after 20 minutes on the 2-core
//! CI-sized machine. It also caches the rotating token file for up to a minute where this client
//! re-reads it per request, and re-lists from the watch cache after a 410 where this one asks etcd
//! once. The agent needs one GET with a field selector and a line-delimited stream; the writes the
//! healing executors need (scale subresource, patch, HPA) live in the cloud half, which will add
//! `kube` there. The run-time footprint of the two was not compared (the `kube` binary did not
//! finish building in the session): this client measured 0.65 % of a core and 16.8 MiB with 100
//! pods and one watch event a second (`POD_WATCH=handwritten benches/agent_footprint.sh`).

mod config;
mod decode;
mod dir;
mod directory;
mod watch;

pub use config::{
    DEFAULT_CA_FILE, DEFAULT_KUBELET_URL, DEFAULT_TOKEN_FILE, PodSource, PodsConfig,
    PodsConfigError,
};
pub use decode::parse_pod_list;
pub use dir::{DirWatcher, MAX_POD_FILE_BYTES, MAX_POD_FILES};
pub use directory::{PodDirectory, PodInfo, SharedPodDirectory};
pub use watch::PodWatcher;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters the agent's telemetry exports (`selfheal_agent_pods_*`).
#[derive(Debug, Default)]
pub struct PodStats {
    /// Failed list (or kubelet poll) requests.
    pub list_errors_total: AtomicU64,
    /// Watch streams that failed or ended with an error event (`410 Gone` included).
    pub watch_errors_total: AtomicU64,
    /// Successful lists, the first one included.
    pub relists_total: AtomicU64,
    /// Watch events applied (ADDED, MODIFIED, DELETED).
    pub watch_events_total: AtomicU64,
    /// Re-lists asked for through [`PodDirectory::request_relist`] and served.
    pub relist_requests_total: AtomicU64,
    /// Pods currently known.
    pub pods_known: AtomicU64,
    /// Pod files the `dir` source refused (too large, beyond the file cap, not a Pod), once
    /// per version of each file.
    pub files_rejected_total: AtomicU64,
}

/// A plain copy of [`PodStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodStatsSnapshot {
    /// See [`PodStats::list_errors_total`].
    pub list_errors_total: u64,
    /// See [`PodStats::watch_errors_total`].
    pub watch_errors_total: u64,
    /// See [`PodStats::relists_total`].
    pub relists_total: u64,
    /// See [`PodStats::watch_events_total`].
    pub watch_events_total: u64,
    /// See [`PodStats::relist_requests_total`].
    pub relist_requests_total: u64,
    /// See [`PodStats::pods_known`].
    pub pods_known: u64,
    /// See [`PodStats::files_rejected_total`].
    pub files_rejected_total: u64,
}

impl PodStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> PodStatsSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PodStatsSnapshot {
            list_errors_total: r(&self.list_errors_total),
            watch_errors_total: r(&self.watch_errors_total),
            relists_total: r(&self.relists_total),
            watch_events_total: r(&self.watch_events_total),
            relist_requests_total: r(&self.relist_requests_total),
            pods_known: r(&self.pods_known),
            files_rejected_total: r(&self.files_rejected_total),
        }
    }
}

/// The pod source's metrics (`selfheal_agent_pod_*`), read at scrape time from [`PodStats`].
#[derive(Debug)]
struct PodMetrics(Arc<PodStats>);

impl prometheus_client::collector::Collector for PodMetrics {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use crate::telemetry::counter;
        let s = self.0.snapshot();
        counter(
            &mut enc,
            "pod_list_errors",
            "Failed pod lists from the API server or kubelet",
            s.list_errors_total,
        )?;
        counter(
            &mut enc,
            "pod_watch_errors",
            "Failed or broken pod watches",
            s.watch_errors_total,
        )?;
        counter(
            &mut enc,
            "pod_relists",
            "Full re-lists of pods",
            s.relists_total,
        )?;
        counter(
            &mut enc,
            "pod_files_rejected",
            "Pod files the dir source refused (too large, beyond the file cap, not a Pod)",
            s.files_rejected_total,
        )
    }
}

/// Starts keeping the pod directory current: spawns the configured source's watcher (it stops
/// when `shutdown` turns true) and registers its metrics. With no source, the directory stays
/// empty and records carry only the UID from the cgroup path.
pub fn start(
    config: &PodsConfig,
    node_name: &str,
    registry: &mut prometheus_client::registry::Registry,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<SharedPodDirectory, PodsError> {
    let watcher = PodWatcher::new(config, node_name)?;
    let (directory, stats) = match (DirWatcher::new(config), watcher) {
        (Some(d), _) => {
            tracing::info!(event = "PodDirWatched", dir = ?config.dir, "pods named from a local directory");
            let parts = (d.directory(), d.stats());
            tokio::spawn(d.run(shutdown));
            parts
        }
        (None, Some(w)) => {
            let parts = (w.directory(), w.stats());
            tokio::spawn(w.run(shutdown));
            parts
        }
        (None, None) => {
            tracing::info!("PodIdentityDisabled");
            (SharedPodDirectory::default(), Arc::default())
        }
    };
    registry.register_collector(Box::new(PodMetrics(stats)));
    Ok(directory)
}

fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Why talking to the pod source failed.
#[derive(Debug, thiserror::Error)]
pub enum PodsError {
    /// The CA bundle could not be read or parsed; fixing it needs a restart.
    #[error("cannot load CA bundle {path}")]
    CaBundle {
        /// The `ca_file`.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
    /// The token file exists but could not be read.
    #[error("cannot read token file {path}")]
    Token {
        /// The `token_file`.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The request failed in transport (connect, TLS, timeout, reset).
    #[error("request to {url} failed")]
    Request {
        /// The URL requested.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("{url} answered {status}: {message}")]
    Status {
        /// The URL requested.
        url: String,
        /// HTTP status code.
        status: u16,
        /// The server's message (Kubernetes `Status.message` when present).
        message: String,
    },
    /// The resource version we watch from has been compacted away: list again.
    #[error("resource version expired (410 Gone): {0}")]
    Gone(String),
    /// The watch stream delivered an `ERROR` event other than 410.
    #[error("watch error event {code}: {message}")]
    WatchEvent {
        /// `Status.code` of the event.
        code: u16,
        /// `Status.message` of the event.
        message: String,
    },
    /// A body could not be decoded as the expected Kubernetes JSON.
    #[error("cannot decode {what}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A watch event grew beyond any real object's size without a line end.
    #[error("watch event exceeds {0} bytes without a line end")]
    EventTooLarge(usize),
    /// The base URL is not usable.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as configured.
        url: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The watch stream went silent for longer than the server was asked to keep it open.
    #[error("watch stream silent for {0:?}")]
    Stalled(Duration),
    /// The `dir` source's directory could not be listed.
    #[error("cannot list the pod directory {path}")]
    Dir {
        /// The `pods.dir`.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl PodsError {
    /// Whether trying again (after a backoff) can succeed without a change of configuration.
    /// The watcher retries every error anyway, since a token or RBAC fix can arrive at any
    /// time, but logs this so operators know which ones need them.
    pub fn is_retryable(&self) -> bool {
        match self {
            PodsError::CaBundle { .. }
            | PodsError::Client(_)
            | PodsError::Decode { .. }
            | PodsError::InvalidUrl { .. } => false,
            PodsError::Status { status, .. } => {
                // 401 heals itself when a rotated token is picked up; 403 needs RBAC.
                *status == 401 || *status == 408 || *status == 429 || *status >= 500
            }
            PodsError::WatchEvent { code, .. } => *code == 0 || *code == 429 || *code >= 500,
            PodsError::Token { .. }
            | PodsError::Request { .. }
            | PodsError::Gone(_)
            | PodsError::Stalled(_)
            | PodsError::Dir { .. }
            | PodsError::EventTooLarge(_) => true,
        }
    }
}
