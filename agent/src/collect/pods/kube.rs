//! The `api` source on `kube_runtime::watcher` (cargo feature `kube`): the same list-then-watch
//! of this node's pods (field selector `spec.nodeName=<node>`, lists served from the API
//! server's watch cache), decoded into the same few fields as the hand-written client — a small
//! [`kube::Resource`] of its own instead of the full `k8s-openapi` `Pod`.

use super::config::PodsConfig;
use super::decode::{self, Pod, PodSpec, PodStatus};
use super::directory::{PodInfo, SharedPodDirectory};
use super::watch::{KubeBackoff, backoff};
use super::{PodStats, PodsError, inc};
use futures_util::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde::Deserialize;
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A pod with only the fields the agent reads; everything else in the JSON is skipped.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct KubePod {
    metadata: ObjectMeta,
    #[serde(default)]
    spec: PodSpec,
    #[serde(default)]
    status: PodStatus,
}

impl kube::Resource for KubePod {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("Pod")
    }
    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("pods")
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl KubePod {
    /// The same decoding as the hand-written client's, through its [`Pod`].
    fn pod(&self) -> Pod {
        let m = &self.metadata;
        Pod {
            metadata: decode::ObjectMeta {
                uid: m.uid.clone().unwrap_or_default(),
                name: m.name.clone().unwrap_or_default(),
                namespace: m.namespace.clone().unwrap_or_default(),
                resource_version: m.resource_version.clone(),
                labels: m.labels.clone().unwrap_or_default(),
                annotations: m.annotations.clone().unwrap_or_default(),
                owner_references: m
                    .owner_references
                    .iter()
                    .flatten()
                    .map(|o| decode::OwnerReference {
                        kind: o.kind.clone(),
                        name: o.name.clone(),
                        controller: o.controller,
                    })
                    .collect(),
            },
            spec: self.spec.clone(),
            status: self.status.clone(),
        }
    }
}

/// Builds the client for the `api` source: the CA bundle (or none, when told not to verify),
/// the token file when it exists (kube re-reads it at least once a minute), the timeouts.
pub(super) fn client(
    config: &PodsConfig,
    url: &str,
    request_timeout: Duration,
) -> Result<kube::Client, PodsError> {
    let invalid = |e: &dyn std::fmt::Display| PodsError::InvalidUrl {
        url: url.to_owned(),
        reason: e.to_string(),
    };
    let uri = match url.parse() {
        Ok(uri) => uri,
        Err(e) => return Err(invalid(&e)),
    };
    let mut c = kube::Config::new(uri);
    c.connect_timeout = Some(request_timeout);
    // A watch silent for longer than the server was asked to keep it open is dead.
    c.read_timeout = Some(Duration::from_secs(config.resync_secs) + request_timeout);
    if url.starts_with("https") {
        if config.insecure_skip_tls_verify {
            c.accept_invalid_certs = true;
        } else {
            c.root_cert_file = Some(config.ca_file.clone());
        }
    }
    if config.token_file.exists() {
        c.auth_info.token_file = Some(config.token_file.display().to_string());
    }
    kube::Client::try_from(c).map_err(PodsError::Kube)
}

/// What the kube watcher needs from the [`super::PodWatcher`].
pub(super) struct Context<'a> {
    pub(super) client: &'a kube::Client,
    pub(super) node_name: &'a str,
    pub(super) resync: Duration,
    pub(super) min_relist_interval: Duration,
    pub(super) directory: &'a SharedPodDirectory,
    pub(super) stats: &'a Arc<PodStats>,
    pub(super) relist: &'a Arc<Notify>,
}

impl Context<'_> {
    fn api(&self) -> Api<KubePod> {
        Api::all(self.client.clone())
    }

    fn selector(&self) -> String {
        format!("spec.nodeName={}", self.node_name)
    }

    /// One list, no watch (`--once`).
    pub(super) async fn sync_once(&self) -> Result<usize, PodsError> {
        let params = ListParams::default().fields(&self.selector()).match_any();
        match self.api().list(&params).await {
            Ok(list) => {
                let pods: Vec<PodInfo> = list.items.iter().filter_map(|p| p.pod().info()).collect();
                let n = pods.len();
                self.directory
                    .write()
                    .replace(pods, list.metadata.resource_version);
                self.stats.pods_known.store(n as u64, Ordering::Relaxed);
                inc(&self.stats.relists_total);
                Ok(n)
            }
            Err(e) => {
                inc(&self.stats.list_errors_total);
                Err(PodsError::Kube(e))
            }
        }
    }

    /// Lists and watches until shutdown; a served relist request starts a fresh watcher (which
    /// lists first).
    pub(super) async fn run(&self, shutdown: &mut selfheal_runtime::shutdown::Shutdown) {
        let timeout = u32::try_from(self.resync.as_secs()).unwrap_or(u32::MAX);
        let config = watcher::Config::default()
            .fields(&self.selector())
            .timeout(timeout)
            .any_semantic();
        // Read by the relist future while the loop below updates it.
        let last_list = std::sync::Mutex::new(None::<Instant>);
        let last = || *last_list.lock().unwrap_or_else(|e| e.into_inner());
        let set_last = |at| *last_list.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
        loop {
            let stream =
                watcher::watcher(self.api(), config.clone()).backoff(KubeBackoff(backoff()));
            let mut stream = std::pin::pin!(stream);
            let relist = async {
                self.relist.notified().await;
                if let Some(at) = last() {
                    tokio::time::sleep_until(at + self.min_relist_interval).await;
                }
            };
            let mut relist = std::pin::pin!(relist);
            let mut listing: Option<Vec<PodInfo>> = None;
            loop {
                let event = tokio::select! {
                    e = stream.next() => e,
                    _ = &mut relist => {
                        inc(&self.stats.relist_requests_total);
                        break;
                    }
                    () = shutdown.requested() => return,
                };
                let Some(event) = event else { break };
                match event {
                    Ok(Event::Init) => listing = Some(Vec::new()),
                    Ok(Event::InitApply(p)) => {
                        if let (Some(l), Some(info)) = (listing.as_mut(), p.pod().info()) {
                            l.push(info);
                        }
                    }
                    Ok(Event::InitDone) => {
                        let pods = listing.take().unwrap_or_default();
                        let n = pods.len();
                        self.directory.write().replace(pods, None);
                        self.stats.pods_known.store(n as u64, Ordering::Relaxed);
                        inc(&self.stats.relists_total);
                        set_last(Instant::now());
                        tracing::debug!(event = "PodsListed", pods = n);
                    }
                    Ok(Event::Apply(p)) => {
                        let pod = p.pod();
                        let mut dir = self.directory.write();
                        dir.resource_version = pod.metadata.resource_version.clone();
                        if let Some(info) = pod.info() {
                            dir.pods.insert(info.uid.clone(), info);
                        }
                        self.stats
                            .pods_known
                            .store(dir.pods.len() as u64, Ordering::Relaxed);
                        inc(&self.stats.watch_events_total);
                    }
                    Ok(Event::Delete(p)) => {
                        let pod = p.pod();
                        let mut dir = self.directory.write();
                        dir.pods.remove(pod.cgroup_uid());
                        self.stats
                            .pods_known
                            .store(dir.pods.len() as u64, Ordering::Relaxed);
                        inc(&self.stats.watch_events_total);
                    }
                    Err(e) => {
                        let list = matches!(e, watcher::Error::InitialListFailed(_));
                        if list {
                            set_last(Instant::now());
                        }
                        let counter = if list {
                            &self.stats.list_errors_total
                        } else {
                            &self.stats.watch_errors_total
                        };
                        inc(counter);
                        let error = selfheal_runtime::chain::ErrorChain::new(&e);
                        if list {
                            tracing::warn!(event = "PodListError", error = %error, "listing pods failed; retrying");
                        } else {
                            tracing::warn!(event = "PodWatchError", error = %error, "pod watch failed; listing again");
                        }
                    }
                }
            }
        }
    }
}
