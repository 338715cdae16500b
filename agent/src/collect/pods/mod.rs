//! Pod identity: the pod UID found in a cgroup path → namespace, name, owner workload, QoS,
//! restarts and container health, for the pods on this node.
//!
//! [`cgroup`](crate::cgroup) finds pod UIDs in the cgroup tree; this module names them. A
//! [`PodWatcher`] keeps a shared [`PodDirectory`] current from one of two sources:
//!
//! - **api** (the default in a cluster): LIST `/api/v1/pods?fieldSelector=spec.nodeName=<node>`,
//!   then WATCH from the list's `resourceVersion`. A `410 Gone`, an `ERROR` event or the end of
//!   the stream leads to a fresh LIST; failures back off exponentially. RBAC stays at
//!   get/list/watch on pods: Deployments are found from the ReplicaSet's name and the pod's
//!   `pod-template-hash` label, never by reading ReplicaSets.
//! - **kubelet**: poll the kubelet's `GET /pods` every `resync_secs`, for clusters where agents
//!   must not talk to the API server.
//!
//! The bearer token is read again from its file on every (re)connect, because projected
//! service-account tokens rotate. Every failure is one `tracing` line plus a counter in
//! [`PodStats`], then the loop goes on: pod identity is enrichment, never a reason to stop
//! collecting. [`normalize`](crate::normalize) reads the directory once per cycle and, for a UID
//! it does not know yet, calls [`PodDirectory::request_relist`] (rate-limited by the watcher).

use reqwest::Url;
use selfheal_core::schema::{OwnerRef, QosClass};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// Default path of the service-account token mounted into every pod.
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// Default path of the cluster CA bundle mounted next to the token.
pub const DEFAULT_CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// Default kubelet endpoint (the kubelet's authenticated port on the node itself).
pub const DEFAULT_KUBELET_URL: &str = "https://127.0.0.1:10250";

/// Annotation the kubelet puts on a static pod's mirror: the static pod's own UID, which is the
/// one its cgroup is named after (the mirror pod in the API server has a different UID).
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// Label the Deployment controller puts on every pod of a ReplicaSet it owns.
const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Longest wait between retries after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Largest watch event accepted; etcd caps objects at 1.5 MiB, so this is a broken stream.
const MAX_EVENT_BYTES: usize = 16 << 20;
/// First wait after a failure.
const MIN_BACKOFF: Duration = Duration::from_millis(250);

/// Which source pod identities come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodSource {
    /// `api` when `KUBERNETES_SERVICE_HOST` is set (running in a cluster), else `none`.
    #[default]
    Auto,
    /// The API server: list and watch this node's pods.
    Api,
    /// The kubelet's `/pods` endpoint, polled. The kubelet authorizes `/pods` as `get` on
    /// `nodes/proxy` (or `nodes/pods` with the `KubeletFineGrainedAuthz` feature), which is
    /// broader than the `api` source's get/list/watch on pods: prefer `api`.
    Kubelet,
    /// No pod identity: records carry only the UID from the cgroup path.
    None,
}

/// Where pod identities come from and how to reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PodsConfig {
    /// `auto` (default), `api`, `kubelet` or `none`. `auto` means `api` inside a cluster
    /// (`KUBERNETES_SERVICE_HOST` set) and `none` elsewhere.
    pub source: PodSource,
    /// API server base URL. Defaults to `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
    pub api_url: Option<String>,
    /// Kubelet base URL for the `kubelet` source.
    pub kubelet_url: String,
    /// File holding the bearer token; read again on every (re)connect because projected tokens
    /// rotate. A missing file means requests go without a token.
    pub token_file: PathBuf,
    /// PEM bundle of the CA that signs the API server's (or kubelet's) certificate; used for
    /// `https` URLs unless `insecure_skip_tls_verify` is set.
    pub ca_file: PathBuf,
    /// Accept any server certificate. DANGEROUS: anyone on the path can impersonate the server
    /// and read the token. Only for kubelets with self-signed serving certificates on a trusted
    /// node-local address.
    pub insecure_skip_tls_verify: bool,
    /// Seconds between full re-lists: the kubelet source polls this often, and the API source
    /// asks the server to end each watch after this long, then lists again.
    pub resync_secs: u64,
    /// Seconds allowed for one list request, and for a watch stream to stay silent beyond
    /// `resync_secs` before the connection is considered dead.
    pub request_timeout_secs: u64,
    /// Fewest seconds between two re-lists asked for by [`PodDirectory::request_relist`] (a
    /// cgroup of a pod not yet known), so a burst of new pods costs one list.
    pub min_relist_interval_secs: u64,
}

impl Default for PodsConfig {
    fn default() -> Self {
        PodsConfig {
            source: PodSource::Auto,
            api_url: None,
            kubelet_url: DEFAULT_KUBELET_URL.into(),
            token_file: PathBuf::from(DEFAULT_TOKEN_FILE),
            ca_file: PathBuf::from(DEFAULT_CA_FILE),
            insecure_skip_tls_verify: false,
            resync_secs: 300,
            request_timeout_secs: 30,
            min_relist_interval_secs: 5,
        }
    }
}

/// A [`PodsConfig`] value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid agent configuration: field `{field}`: {reason}")]
pub struct PodsConfigError {
    /// Dotted path of the field from the agent config root, e.g. `pods.resync_secs`.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl PodsConfig {
    /// The source in effect: `auto` resolved against the environment.
    pub fn resolved_source(&self) -> PodSource {
        self.resolve_source_with(std::env::var("KUBERNETES_SERVICE_HOST").ok().as_deref())
    }

    fn resolve_source_with(&self, service_host: Option<&str>) -> PodSource {
        match self.source {
            PodSource::Auto if service_host.is_some_and(|h| !h.is_empty()) => PodSource::Api,
            PodSource::Auto => PodSource::None,
            other => other,
        }
    }

    /// The API server URL in effect: `api_url`, or the in-cluster service address.
    pub fn resolved_api_url(&self) -> Option<String> {
        self.api_url.clone().or_else(|| {
            let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
            let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
            Some(in_cluster_url(&host, &port))
        })
    }

    /// Checks every field; the error names the field. Called by the agent's config validation.
    pub fn validate(&self) -> Result<(), PodsConfigError> {
        let bad = |field, reason: String| Err(PodsConfigError { field, reason });
        if !(1..=86_400).contains(&self.resync_secs) {
            return bad(
                "pods.resync_secs",
                format!("must be in 1..=86400, got {}", self.resync_secs),
            );
        }
        if !(1..=600).contains(&self.request_timeout_secs) {
            return bad(
                "pods.request_timeout_secs",
                format!("must be in 1..=600, got {}", self.request_timeout_secs),
            );
        }
        if self.min_relist_interval_secs > 3600 {
            return bad(
                "pods.min_relist_interval_secs",
                format!(
                    "must be at most 3600, got {}",
                    self.min_relist_interval_secs
                ),
            );
        }
        check_url("pods.kubelet_url", &self.kubelet_url)?;
        if let Some(u) = &self.api_url {
            check_url("pods.api_url", u)?;
        }
        if self.resolved_source() == PodSource::Api && self.resolved_api_url().is_none() {
            return bad(
                "pods.api_url",
                "source is `api` but api_url is unset and KUBERNETES_SERVICE_HOST is empty".into(),
            );
        }
        if self.token_file.as_os_str().is_empty() {
            return bad("pods.token_file", "must not be empty".into());
        }
        Ok(())
    }
}

fn in_cluster_url(host: &str, port: &str) -> String {
    if host.contains(':') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    }
}

fn check_url(field: &'static str, url: &str) -> Result<Url, PodsConfigError> {
    let parsed = Url::parse(url).map_err(|e| PodsConfigError {
        field,
        reason: format!("{url:?} is not a URL ({e})"),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(PodsConfigError {
            field,
            reason: format!("{url:?} must be an http:// or https:// URL with a host"),
        });
    }
    Ok(parsed)
}

/// What the agent knows about one pod on its node.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    /// The pod's UID as its cgroup is named (for a static pod, the static pod's UID, not the
    /// mirror pod's).
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Owning workload (Deployment through its ReplicaSet, StatefulSet, DaemonSet, ...).
    pub owner: Option<OwnerRef>,
    /// QoS class from the pod status.
    pub qos: Option<QosClass>,
    /// Restarts summed over containers.
    pub restarts_total: u64,
    /// Containers not ready.
    pub containers_not_ready: u64,
    /// A container's last termination was an OOM kill.
    pub last_termination_oom_killed: bool,
    /// A container's last termination was an error (non-zero exit, not OOM).
    pub last_termination_error: bool,
}

/// Pods on this node by UID, as last listed or watched.
#[derive(Debug, Default)]
pub struct PodDirectory {
    pods: HashMap<String, PodInfo>,
    /// Resource version of the last list or event seen (API source only).
    resource_version: Option<String>,
    /// True once a first list has succeeded.
    synced: bool,
    relist: Arc<Notify>,
}

impl PodDirectory {
    /// A directory holding exactly `pods`, as if just listed (for one-shot runs and tests).
    pub fn from_pods(pods: impl IntoIterator<Item = PodInfo>) -> PodDirectory {
        let mut dir = PodDirectory::default();
        dir.replace(pods.into_iter().collect(), None);
        dir
    }

    /// The pod with this UID, if known. Accepts the systemd cgroup driver's spelling too
    /// (`_` in place of `-`).
    pub fn get(&self, uid: &str) -> Option<&PodInfo> {
        let key = if uid.contains('_') {
            Cow::Owned(uid.replace('_', "-"))
        } else {
            Cow::Borrowed(uid)
        };
        self.pods.get(key.as_ref())
    }

    /// Asks the watcher for a fresh list soon, e.g. because a cgroup names an unknown pod.
    /// Cheap and safe to call every cycle: requests coalesce and the watcher lists at most once
    /// per `min_relist_interval_secs`.
    pub fn request_relist(&self) {
        self.relist.notify_one();
    }

    /// Number of pods known.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// True when no pod is known.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// True once the source has been listed successfully at least once, so an unknown UID is
    /// really unknown rather than not loaded yet.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The API server resource version the content reflects (`None` for the kubelet source).
    pub fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }

    /// All known pods, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &PodInfo> {
        self.pods.values()
    }

    /// Replaces the whole content with a fresh list: pods absent from it are forgotten.
    fn replace(&mut self, pods: Vec<PodInfo>, resource_version: Option<String>) {
        self.pods = pods.into_iter().map(|p| (p.uid.clone(), p)).collect();
        self.resource_version = resource_version;
        self.synced = true;
    }
}

/// The directory shared between the watcher (writer) and the collector (reader).
#[derive(Debug, Clone, Default)]
pub struct SharedPodDirectory(Arc<RwLock<PodDirectory>>);

impl SharedPodDirectory {
    /// Read access. Held only for a lookup, never across an await.
    pub fn read(&self) -> RwLockReadGuard<'_, PodDirectory> {
        // A poisoned lock means a panic while writing plain data; the map is still usable.
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, PodDirectory> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the pod with this UID, if known.
    pub fn get(&self, uid: &str) -> Option<PodInfo> {
        self.read().get(uid).cloned()
    }
}

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
        }
    }
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
            | PodsError::EventTooLarge(_) => true,
        }
    }
}

// ---- Kubernetes JSON: only the fields used, unknown fields ignored -------------------------

/// `v1.PodList`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PodList {
    metadata: ListMeta,
    items: Vec<Pod>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ListMeta {
    resource_version: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Pod {
    metadata: ObjectMeta,
    spec: PodSpec,
    status: PodStatus,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ObjectMeta {
    uid: String,
    name: String,
    namespace: String,
    resource_version: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    labels: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_as_default")]
    annotations: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_as_default")]
    owner_references: Vec<OwnerReference>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OwnerReference {
    kind: String,
    name: String,
    controller: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PodSpec {
    #[serde(deserialize_with = "null_as_default")]
    containers: Vec<serde::de::IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct PodStatus {
    qos_class: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    container_statuses: Vec<ContainerStatus>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ContainerStatus {
    ready: bool,
    restart_count: u64,
    state: ContainerState,
    last_state: ContainerState,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ContainerState {
    terminated: Option<Terminated>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Terminated {
    exit_code: i64,
    reason: Option<String>,
}

/// Kubernetes writes `null` for empty lists and maps in places (bookmarks carry
/// `"containers": null`); read it as empty.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// One line of a watch stream.
#[derive(Debug, Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

/// `meta.v1.Status`, as sent in `ERROR` events and error responses.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Status {
    code: u16,
    message: String,
    reason: String,
}

impl Pod {
    /// The UID the pod's cgroup carries: a mirror pod stands for a static pod whose UID is in
    /// the mirror annotation.
    fn cgroup_uid(&self) -> &str {
        self.metadata
            .annotations
            .get(MIRROR_ANNOTATION)
            .map(String::as_str)
            .filter(|u| !u.is_empty())
            .unwrap_or(&self.metadata.uid)
    }

    fn owner(&self) -> Option<OwnerRef> {
        let refs = &self.metadata.owner_references;
        let r = refs
            .iter()
            .find(|r| r.controller == Some(true))
            .or_else(|| refs.first())?;
        if r.kind == "ReplicaSet" {
            // `<deployment>-<pod-template-hash>` is how the Deployment controller names its
            // ReplicaSets; a bare ReplicaSet's pods lack the label (or it does not match).
            let deployment = self
                .metadata
                .labels
                .get(POD_TEMPLATE_HASH)
                .and_then(|hash| r.name.strip_suffix(hash.as_str()))
                .and_then(|s| s.strip_suffix('-'))
                .filter(|d| !d.is_empty());
            if let Some(d) = deployment {
                return Some(OwnerRef {
                    kind: "Deployment".into(),
                    name: d.into(),
                });
            }
        }
        Some(OwnerRef {
            kind: r.kind.clone(),
            name: r.name.clone(),
        })
    }

    fn info(&self) -> Option<PodInfo> {
        let uid = self.cgroup_uid();
        if uid.is_empty() {
            return None;
        }
        let statuses = &self.status.container_statuses;
        let ready = statuses.iter().filter(|c| c.ready).count();
        // Before the kubelet reports statuses, every declared container counts as not ready.
        let declared = self.spec.containers.len().max(statuses.len());
        let mut oom = false;
        let mut error = false;
        for t in statuses
            .iter()
            .flat_map(|c| [&c.last_state.terminated, &c.state.terminated])
            .flatten()
        {
            if t.reason.as_deref() == Some("OOMKilled") {
                oom = true;
            } else if t.exit_code != 0 {
                error = true;
            }
        }
        Some(PodInfo {
            uid: uid.to_owned(),
            namespace: self.metadata.namespace.clone(),
            name: self.metadata.name.clone(),
            owner: self.owner(),
            qos: match self.status.qos_class.as_deref() {
                Some("Guaranteed") => Some(QosClass::Guaranteed),
                Some("Burstable") => Some(QosClass::Burstable),
                Some("BestEffort") => Some(QosClass::BestEffort),
                _ => None,
            },
            restarts_total: statuses.iter().map(|c| c.restart_count).sum(),
            containers_not_ready: (declared - ready) as u64,
            last_termination_oom_killed: oom,
            last_termination_error: error,
        })
    }
}

/// Parses a `v1.PodList` body into pod identities and the list's resource version.
pub fn parse_pod_list(body: &[u8]) -> Result<(Vec<PodInfo>, Option<String>), PodsError> {
    let list: PodList = serde_json::from_slice(body).map_err(|source| PodsError::Decode {
        what: "PodList",
        source,
    })?;
    let pods = list.items.iter().filter_map(Pod::info).collect();
    Ok((pods, list.metadata.resource_version))
}

// ---- The watcher -------------------------------------------------------------------------

/// Which request a failure came from; decides the counter and the log event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    List,
    Watch,
}

/// A pass of a source that ended in an error.
#[derive(Debug)]
struct Failure {
    error: PodsError,
    phase: Phase,
    /// A list succeeded earlier in this pass, so the source was healthy: restart the backoff.
    progressed: bool,
}

/// What the watcher carries from one pass to the next.
#[derive(Debug, Default)]
struct PassState {
    /// When the last list was attempted, for rate-limiting requested re-lists.
    last_list: Option<Instant>,
    /// The next list must be a consistent read, not one served from the API server's cache.
    consistent_list: bool,
}

/// How one pass of a source ended without error.
enum Ended {
    /// Shutdown was signalled.
    Shutdown,
    /// The watch stream ended (server timeout): list again.
    StreamEnd,
}

/// Keeps a [`SharedPodDirectory`] current from the configured source until shutdown.
#[derive(Debug)]
pub struct PodWatcher {
    source: PodSource,
    base: Url,
    node_name: String,
    token_file: PathBuf,
    client: reqwest::Client,
    resync: Duration,
    request_timeout: Duration,
    min_relist_interval: Duration,
    directory: SharedPodDirectory,
    stats: Arc<PodStats>,
    relist: Arc<Notify>,
}

impl PodWatcher {
    /// Builds a watcher for `node_name`'s pods from a validated config. `Ok(None)` when the
    /// resolved source is `none`. Loads the CA bundle for `https` URLs.
    pub fn new(config: &PodsConfig, node_name: &str) -> Result<Option<PodWatcher>, PodsError> {
        let source = config.resolved_source();
        let url = match source {
            PodSource::None | PodSource::Auto => return Ok(None),
            PodSource::Api => config.resolved_api_url().unwrap_or_default(),
            PodSource::Kubelet => config.kubelet_url.clone(),
        };
        let base = Url::parse(&url).map_err(|e| PodsError::InvalidUrl {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let request_timeout = Duration::from_secs(config.request_timeout_secs);
        let mut builder = reqwest::Client::builder()
            .connect_timeout(request_timeout)
            .user_agent(concat!("selfheal-agent/", env!("CARGO_PKG_VERSION")));
        if base.scheme() == "https" {
            if config.insecure_skip_tls_verify {
                tracing::warn!(
                    event = "PodSourceInsecure",
                    url = %base,
                    "TLS verification is off for the pod source (insecure_skip_tls_verify)"
                );
                builder = builder.danger_accept_invalid_certs(true);
            } else {
                builder = builder.tls_certs_only(load_ca(&config.ca_file)?);
            }
        }
        let client = builder.build().map_err(PodsError::Client)?;
        let directory = SharedPodDirectory::default();
        let relist = directory.read().relist.clone();
        Ok(Some(PodWatcher {
            source,
            base,
            node_name: node_name.to_owned(),
            token_file: config.token_file.clone(),
            client,
            resync: Duration::from_secs(config.resync_secs),
            request_timeout,
            min_relist_interval: Duration::from_secs(config.min_relist_interval_secs),
            directory,
            stats: Arc::new(PodStats::default()),
            relist,
        }))
    }

    /// The directory this watcher keeps current; clone it to the collector before `run`.
    pub fn directory(&self) -> SharedPodDirectory {
        self.directory.clone()
    }

    /// The watcher's counters.
    pub fn stats(&self) -> Arc<PodStats> {
        self.stats.clone()
    }

    /// Lists once and fills the directory, without watching: for `selfheal agent --once`, which
    /// needs names for one cycle. Returns the number of pods known. Counts a failure in
    /// [`PodStats::list_errors_total`].
    pub async fn sync_once(&self) -> Result<usize, PodsError> {
        let url = match self.source {
            PodSource::Api => {
                let selector = format!("spec.nodeName={}", self.node_name);
                self.url(
                    "/api/v1/pods",
                    &[("fieldSelector", &selector), ("resourceVersion", "0")],
                )
            }
            _ => self.url("/pods", &[]),
        };
        match self.list(url, &mut PassState::default()).await {
            Ok(_) => Ok(self.directory.read().len()),
            Err(failure) => {
                inc(&self.stats.list_errors_total);
                Err(failure.error)
            }
        }
    }

    /// Lists and watches (or polls) until `shutdown` becomes true or its sender is dropped.
    /// Never returns an error: failures are logged, counted and retried with backoff.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = MIN_BACKOFF;
        let mut state = PassState::default();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let pass = match self.source {
                PodSource::Api => self.list_and_watch(&mut shutdown, &mut state).await,
                _ => self.poll_kubelet(&mut shutdown, &mut state).await,
            };
            match pass {
                Ok(Ended::Shutdown) => return,
                Ok(Ended::StreamEnd) => backoff = MIN_BACKOFF,
                Err(failure) => {
                    if failure.progressed {
                        backoff = MIN_BACKOFF;
                    }
                    let err = &failure.error;
                    // After 410 Gone the cache served a version too old: read from etcd once.
                    state.consistent_list |= matches!(err, PodsError::Gone(_));
                    let counter = match failure.phase {
                        Phase::List => &self.stats.list_errors_total,
                        Phase::Watch => &self.stats.watch_errors_total,
                    };
                    inc(counter);
                    let retry_in_ms = backoff.as_millis() as u64;
                    let retryable = err.is_retryable();
                    let error = ErrorChain(err);
                    match failure.phase {
                        Phase::List => tracing::warn!(
                            event = "PodListError", source_kind = ?self.source, retryable,
                            retry_in_ms, error = %error, "listing pods failed; retrying"
                        ),
                        Phase::Watch => tracing::warn!(
                            event = "PodWatchError", source_kind = ?self.source, retryable,
                            retry_in_ms, error = %error, "pod watch failed; listing again"
                        ),
                    }
                    if sleep_or_shutdown(backoff, &mut shutdown).await {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn url(&self, path: &str, query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        let base_path = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base_path}{path}"));
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    async fn get(
        &self,
        url: Url,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, PodsError> {
        let mut req = self.client.get(url.clone());
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        if let Some(token) = read_token(&self.token_file).await? {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.map_err(|source| PodsError::Request {
            url: url.to_string(),
            source,
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.bytes().await.unwrap_or_default();
        let message = serde_json::from_slice::<Status>(&body)
            .map(|s| s.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(200).collect());
        if status.as_u16() == 410 {
            return Err(PodsError::Gone(message));
        }
        Err(PodsError::Status {
            url: url.to_string(),
            status: status.as_u16(),
            message,
        })
    }

    /// GETs a PodList and replaces the directory with it.
    async fn list(&self, url: Url, state: &mut PassState) -> Result<Option<String>, Failure> {
        let result = async {
            let resp = self.get(url.clone(), Some(self.request_timeout)).await?;
            let body = resp.bytes().await.map_err(|source| PodsError::Request {
                url: url.to_string(),
                source,
            })?;
            parse_pod_list(&body)
        }
        .await;
        state.last_list = Some(Instant::now());
        let (pods, rv) = result.map_err(|error| Failure {
            error,
            phase: Phase::List,
            progressed: false,
        })?;
        let n = pods.len();
        self.directory.write().replace(pods, rv.clone());
        self.stats.pods_known.store(n as u64, Ordering::Relaxed);
        inc(&self.stats.relists_total);
        tracing::debug!(event = "PodsListed", pods = n, resource_version = ?rv);
        Ok(rv)
    }

    /// Resolves when a relist was requested and `min_relist_interval` has passed since the last
    /// list. Callers keep one pinned instance per pass so a request is never lost.
    async fn relist_requested(&self, last_list: Option<Instant>) {
        self.relist.notified().await;
        if let Some(at) = last_list {
            tokio::time::sleep_until(at + self.min_relist_interval).await;
        }
        inc(&self.stats.relist_requests_total);
    }

    async fn poll_kubelet(
        &self,
        shutdown: &mut watch::Receiver<bool>,
        state: &mut PassState,
    ) -> Result<Ended, Failure> {
        let url = self.url("/pods", &[]);
        let mut progressed = false;
        loop {
            self.list(url.clone(), state)
                .await
                .map_err(|f| Failure { progressed, ..f })?;
            progressed = true;
            tokio::select! {
                _ = tokio::time::sleep(self.resync) => {}
                _ = self.relist_requested(state.last_list) => {}
                _ = shutdown_signalled(shutdown) => return Ok(Ended::Shutdown),
            }
        }
    }

    async fn list_and_watch(
        &self,
        shutdown: &mut watch::Receiver<bool>,
        state: &mut PassState,
    ) -> Result<Ended, Failure> {
        let selector = format!("spec.nodeName={}", self.node_name);
        // resourceVersion=0 lets the API server answer from its watch cache instead of etcd,
        // which matters when every node of a large fleet re-lists; after a 410 the cache was
        // behind, so that one list goes to etcd.
        let consistent = std::mem::take(&mut state.consistent_list);
        let mut query = vec![("fieldSelector", selector.as_str())];
        if !consistent {
            query.push(("resourceVersion", "0"));
        }
        let list_url = self.url("/api/v1/pods", &query);
        let mut rv = self
            .list(list_url, state)
            .await
            .inspect_err(|_| state.consistent_list = consistent)?
            .unwrap_or_default();
        let watch_failed = |error| Failure {
            error,
            phase: Phase::Watch,
            progressed: true,
        };
        let timeout_secs = self.resync.as_secs().to_string();
        let watch_url = self.url(
            "/api/v1/pods",
            &[
                ("fieldSelector", &selector),
                ("watch", "true"),
                ("resourceVersion", &rv),
                ("allowWatchBookmarks", "true"),
                ("timeoutSeconds", &timeout_secs),
            ],
        );
        let mut resp = self.get(watch_url, None).await.map_err(watch_failed)?;
        let silence = self.resync + self.request_timeout;
        let relist = self.relist_requested(state.last_list);
        tokio::pin!(relist);
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let chunk = tokio::select! {
                c = tokio::time::timeout(silence, resp.chunk()) => c,
                _ = &mut relist => return Ok(Ended::StreamEnd),
                _ = shutdown_signalled(shutdown) => return Ok(Ended::Shutdown),
            };
            let chunk = match chunk {
                Err(_) => Err(PodsError::Stalled(silence)),
                Ok(Err(source)) => Err(PodsError::Request {
                    url: "watch stream".into(),
                    source,
                }),
                Ok(Ok(None)) => return Ok(Ended::StreamEnd),
                Ok(Ok(Some(c))) => Ok(c),
            }
            .map_err(watch_failed)?;
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                self.apply_event(&line, &mut rv).map_err(watch_failed)?;
            }
            if buf.len() > MAX_EVENT_BYTES {
                return Err(watch_failed(PodsError::EventTooLarge(buf.len())));
            }
        }
    }

    fn apply_event(&self, line: &[u8], rv: &mut String) -> Result<(), PodsError> {
        let decode = |source| PodsError::Decode {
            what: "watch event",
            source,
        };
        let event: WatchEvent = serde_json::from_slice(line).map_err(decode)?;
        if event.kind == "ERROR" {
            let status: Status = serde_json::from_value(event.object).unwrap_or_default();
            return Err(if status.code == 410 || status.reason == "Expired" {
                PodsError::Gone(status.message)
            } else {
                PodsError::WatchEvent {
                    code: status.code,
                    message: status.message,
                }
            });
        }
        let pod: Pod = serde_json::from_value(event.object).map_err(decode)?;
        if let Some(v) = &pod.metadata.resource_version {
            rv.clone_from(v);
        }
        let mut dir = self.directory.write();
        dir.resource_version = Some(rv.clone());
        match event.kind.as_str() {
            "ADDED" | "MODIFIED" => {
                if let Some(info) = pod.info() {
                    tracing::trace!(event = "PodUpdated", uid = %info.uid, name = %info.name);
                    dir.pods.insert(info.uid.clone(), info);
                }
            }
            "DELETED" => {
                dir.pods.remove(pod.cgroup_uid());
            }
            _ => return Ok(()), // BOOKMARK: only the resource version moves.
        }
        self.stats
            .pods_known
            .store(dir.pods.len() as u64, Ordering::Relaxed);
        inc(&self.stats.watch_events_total);
        Ok(())
    }
}

fn load_ca(path: &Path) -> Result<Vec<reqwest::Certificate>, PodsError> {
    let err = |source: Box<dyn std::error::Error + Send + Sync>| PodsError::CaBundle {
        path: path.to_owned(),
        source,
    };
    let pem = std::fs::read(path).map_err(|e| err(Box::new(e)))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| err(Box::new(e)))?;
    if certs.is_empty() {
        return Err(err("no certificate in the bundle".into()));
    }
    Ok(certs)
}

async fn read_token(path: &Path) -> Result<Option<String>, PodsError> {
    match tokio::fs::read_to_string(path).await {
        Ok(t) => Ok(Some(t.trim().to_owned()).filter(|t| !t.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PodsError::Token {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Resolves once shutdown is signalled: the value turns true or the sender is dropped.
async fn shutdown_signalled(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which is a shutdown too.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Sleeps, or returns true early when shutdown is signalled.
async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown_signalled(shutdown) => true,
    }
}

/// Displays an error with its causes, `a: b: c`, for one-line logs.
struct ErrorChain<'a>(&'a (dyn std::error::Error + Send + Sync + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PODS: &str = include_str!("../../tests/fixtures/kube/pods.json");
    const EVENTS: &str = include_str!("../../tests/fixtures/kube/watch-events.jsonl");

    fn by_name(pods: &[PodInfo], name: &str) -> PodInfo {
        pods.iter()
            .find(|p| p.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} missing from fixture"))
    }

    fn owner(kind: &str, name: &str) -> Option<OwnerRef> {
        Some(OwnerRef {
            kind: kind.into(),
            name: name.into(),
        })
    }

    #[test]
    fn fixture_pods_resolve_to_their_identity() {
        let (pods, rv) = parse_pod_list(PODS.as_bytes()).expect("fixture parses");
        assert_eq!(rv.as_deref(), Some("1240"));
        assert_eq!(pods.len(), 8);

        let web = by_name(&pods, "web-7d4b9c8f6d-x2x9k");
        assert_eq!(
            web,
            PodInfo {
                uid: "0f6c1d3a-2b4e-4c8a-9e71-5a2d7c4b8e01".into(),
                namespace: "shop".into(),
                name: "web-7d4b9c8f6d-x2x9k".into(),
                owner: owner("Deployment", "web"),
                qos: Some(QosClass::Burstable),
                restarts_total: 3,
                containers_not_ready: 0,
                last_termination_oom_killed: true,
                last_termination_error: false,
            }
        );

        let db = by_name(&pods, "db-0");
        assert_eq!(db.owner, owner("StatefulSet", "db"));
        assert_eq!(db.qos, Some(QosClass::Guaranteed));
        assert!(!db.last_termination_oom_killed && !db.last_termination_error);

        let ne = by_name(&pods, "node-exporter-k8t2q");
        assert_eq!(ne.owner, owner("DaemonSet", "node-exporter"));
        assert_eq!(ne.qos, Some(QosClass::BestEffort));

        let debug = by_name(&pods, "debug");
        assert_eq!(debug.owner, None);
        assert_eq!(debug.restarts_total, 5);
        assert_eq!(debug.containers_not_ready, 1);
        assert!(debug.last_termination_error && !debug.last_termination_oom_killed);

        let apiserver = by_name(&pods, "kube-apiserver-node-a");
        assert_eq!(apiserver.owner, owner("Node", "node-a"));
        // Keyed by the static pod's UID (its cgroup's), not the mirror pod's.
        assert_eq!(apiserver.uid, "4b2a8f1e6c9d3b7a5e0f2c4d6b8a1e3f");

        let bare_rs = by_name(&pods, "worker-rs-hz7mq");
        assert_eq!(bare_rs.owner, owner("ReplicaSet", "worker-rs"));

        let job = by_name(&pods, "migrate-29148300-8jx4p");
        assert_eq!(job.owner, owner("Job", "migrate-29148300"));
        assert!(!job.last_termination_error, "exit 0 is not an error");
        assert_eq!(job.containers_not_ready, 1);
    }

    #[test]
    fn replicaset_name_without_matching_hash_stays_a_replicaset() {
        let pod: Pod = serde_json::from_str(
            r#"{"metadata":{"uid":"u","name":"x","namespace":"n",
                "labels":{"pod-template-hash":"abc"},
                "ownerReferences":[{"kind":"ReplicaSet","name":"web-def","controller":true}]}}"#,
        )
        .expect("pod");
        assert_eq!(pod.owner(), owner("ReplicaSet", "web-def"));
    }

    #[test]
    fn systemd_cgroup_spelling_finds_the_pod() {
        let (pods, rv) = parse_pod_list(PODS.as_bytes()).expect("fixture parses");
        let mut dir = PodDirectory::default();
        dir.replace(pods, rv);
        let info = dir
            .get("0f6c1d3a_2b4e_4c8a_9e71_5a2d7c4b8e01")
            .expect("underscored uid");
        assert_eq!(info.name, "web-7d4b9c8f6d-x2x9k");
        assert!(dir.get("00000000-0000-0000-0000-000000000000").is_none());
    }

    #[test]
    fn watch_events_update_the_directory_and_410_means_gone() {
        let config = PodsConfig {
            source: PodSource::Kubelet,
            kubelet_url: "http://127.0.0.1:1".into(),
            ..PodsConfig::default()
        };
        let watcher = PodWatcher::new(&config, "node-a")
            .expect("client")
            .expect("source is not none");
        let (pods, rv) = parse_pod_list(PODS.as_bytes()).expect("fixture parses");
        watcher.directory.write().replace(pods, rv);
        let mut rv = "1240".to_owned();
        let mut lines = EVENTS.lines();
        let mut next = || lines.next().expect("event line").as_bytes();

        watcher.apply_event(next(), &mut rv).expect("MODIFIED");
        let dir = watcher.directory();
        assert_eq!(
            dir.get("0f6c1d3a-2b4e-4c8a-9e71-5a2d7c4b8e01")
                .map(|p| p.restarts_total),
            Some(4)
        );
        watcher.apply_event(next(), &mut rv).expect("DELETED");
        assert!(dir.get("7e9d5b3f-1a2c-4e6b-9d8f-3a5c7e9b1d04").is_none());
        watcher.apply_event(next(), &mut rv).expect("ADDED");
        let added = dir
            .get("aa11bb22-cc33-4d44-8e55-ff6677889900")
            .expect("added");
        assert_eq!(added.containers_not_ready, 2, "pending: no statuses yet");
        assert_eq!(rv, "1252");
        watcher.apply_event(next(), &mut rv).expect("BOOKMARK");
        assert_eq!(rv, "1260");
        assert_eq!(watcher.directory().read().resource_version(), Some("1260"));
        let err = watcher.apply_event(next(), &mut rv).expect_err("ERROR 410");
        assert!(matches!(err, PodsError::Gone(_)), "{err}");
        assert!(err.is_retryable());
        let stats = watcher.stats().snapshot();
        assert_eq!(stats.watch_events_total, 3);
        assert_eq!(stats.pods_known, 8);
    }

    #[test]
    fn https_sources_need_a_readable_ca_unless_told_not_to_verify() {
        let https = |ca_file: &str, insecure| PodsConfig {
            source: PodSource::Kubelet,
            kubelet_url: "https://127.0.0.1:10250".into(),
            ca_file: PathBuf::from(ca_file),
            insecure_skip_tls_verify: insecure,
            ..PodsConfig::default()
        };
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/kube/ca.crt");
        assert!(PodWatcher::new(&https(ca, false), "n").is_ok());
        let err =
            PodWatcher::new(&https("/nonexistent/ca.crt", false), "n").expect_err("missing CA");
        assert!(matches!(err, PodsError::CaBundle { .. }) && !err.is_retryable());
        let not_pem = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let err = PodWatcher::new(&https(not_pem, false), "n").expect_err("not a PEM bundle");
        assert!(matches!(err, PodsError::CaBundle { .. }), "{err}");
        assert!(PodWatcher::new(&https("/nonexistent/ca.crt", true), "n").is_ok());
        let none = PodsConfig {
            source: PodSource::None,
            ..PodsConfig::default()
        };
        assert!(PodWatcher::new(&none, "n").expect("none").is_none());
    }

    #[test]
    fn auto_source_follows_the_environment() {
        let c = PodsConfig::default();
        assert_eq!(c.resolve_source_with(Some("10.96.0.1")), PodSource::Api);
        assert_eq!(c.resolve_source_with(None), PodSource::None);
        assert_eq!(c.resolve_source_with(Some("")), PodSource::None);
        let k = PodsConfig {
            source: PodSource::Kubelet,
            ..c
        };
        assert_eq!(k.resolve_source_with(Some("10.96.0.1")), PodSource::Kubelet);
        assert_eq!(in_cluster_url("fd00::1", "443"), "https://[fd00::1]:443");
    }

    #[test]
    fn invalid_values_name_their_field() {
        let field = |c: PodsConfig| c.validate().expect_err("invalid").field;
        let base = PodsConfig {
            source: PodSource::None,
            ..PodsConfig::default()
        };
        base.validate().expect("defaults are valid");
        assert_eq!(
            field(PodsConfig {
                resync_secs: 0,
                ..base.clone()
            }),
            "pods.resync_secs"
        );
        assert_eq!(
            field(PodsConfig {
                request_timeout_secs: 0,
                ..base.clone()
            }),
            "pods.request_timeout_secs"
        );
        assert_eq!(
            field(PodsConfig {
                kubelet_url: "127.0.0.1:10250".into(),
                ..base.clone()
            }),
            "pods.kubelet_url"
        );
        assert_eq!(
            field(PodsConfig {
                api_url: Some("ftp://x".into()),
                ..base.clone()
            }),
            "pods.api_url"
        );
        let msg = PodsConfig {
            resync_secs: 0,
            ..base
        }
        .validate()
        .expect_err("invalid")
        .to_string();
        assert!(msg.contains("`pods.resync_secs`"), "{msg}");
    }

    #[test]
    fn unknown_config_fields_are_refused() {
        let err = serde_json::from_str::<PodsConfig>(r#"{"sorce":"api"}"#)
            .expect_err("typo")
            .to_string();
        assert!(err.contains("sorce"), "{err}");
        let c: PodsConfig = serde_json::from_str(r#"{"source":"kubelet"}"#).expect("valid");
        assert_eq!(c.source, PodSource::Kubelet);
        assert_eq!(c.kubelet_url, DEFAULT_KUBELET_URL);
    }
}
