//! The hand-written pod watcher: list, then watch from the list's `resourceVersion` (or poll
//! the kubelet), over the agent's own `reqwest` client.

use super::config::{PodSource, PodsConfig};
use super::decode::{Pod, Status, WatchEvent, parse_pod_list};
use super::directory::SharedPodDirectory;
use super::{PodStats, PodsError, inc};
use reqwest::Url;
use selfheal_runtime::backoff::Backoff;
use selfheal_runtime::chain::ErrorChain;
use selfheal_runtime::shutdown::Shutdown;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// Longest wait between retries after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Largest watch event accepted; etcd caps objects at 1.5 MiB, so this is a broken stream.
const MAX_EVENT_BYTES: usize = 16 << 20;
/// First wait after a failure.
const MIN_BACKOFF: Duration = Duration::from_millis(250);

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
            // The directory source needs no client: `DirWatcher` keeps it.
            PodSource::None | PodSource::Auto | PodSource::Dir => return Ok(None),
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
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let mut shutdown = Shutdown::from(shutdown);
        let mut backoff = backoff();
        let mut state = PassState::default();
        loop {
            if shutdown.is_requested() {
                return;
            }
            let pass = match self.source {
                PodSource::Api => self.list_and_watch(&mut shutdown, &mut state).await,
                _ => self.poll_kubelet(&mut shutdown, &mut state).await,
            };
            match pass {
                Ok(Ended::Shutdown) => return,
                Ok(Ended::StreamEnd) => backoff.reset(),
                Err(failure) => {
                    if failure.progressed {
                        backoff.reset();
                    }
                    let err = &failure.error;
                    // After 410 Gone the cache served a version too old: read from etcd once.
                    state.consistent_list |= matches!(err, PodsError::Gone(_));
                    let counter = match failure.phase {
                        Phase::List => &self.stats.list_errors_total,
                        Phase::Watch => &self.stats.watch_errors_total,
                    };
                    inc(counter);
                    let wait = backoff.next_delay();
                    let retry_in_ms = wait.as_millis() as u64;
                    let retryable = err.is_retryable();
                    let error = ErrorChain::new(err).to_string();
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
                    if shutdown.sleep(wait).await {
                        return;
                    }
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
        shutdown: &mut Shutdown,
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
                () = shutdown.requested() => return Ok(Ended::Shutdown),
            }
        }
    }

    async fn list_and_watch(
        &self,
        shutdown: &mut Shutdown,
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
                () = shutdown.requested() => return Ok(Ended::Shutdown),
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

/// The watcher's retry delays: the runtime's [`Backoff`] with full jitter (each wait uniform in
/// `[0, min(MAX_BACKOFF, MIN_BACKOFF·2ⁿ)]`), so the nodes of a fleet that lost the API server
/// together spread their re-lists instead of arriving in lockstep.
pub(super) fn backoff() -> Backoff {
    Backoff::new(MIN_BACKOFF, MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PODS: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/kube/pods.json"
    ));
    const EVENTS: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/kube/watch-events.jsonl"
    ));

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
    fn backoff_is_full_jitter_under_a_doubling_ceiling() {
        let mut b = backoff();
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            let ceiling = b.ceiling(b.attempt());
            ceilings.push(ceiling);
            let waits: Vec<Duration> = (0..200).map(|_| b.delay_for(b.attempt())).collect();
            assert!(
                waits.iter().all(|w| *w <= ceiling),
                "{waits:?} over {ceiling:?}"
            );
            // Spread over the whole window, not bunched at its top.
            assert!(waits.iter().any(|w| *w < ceiling / 4), "{waits:?}");
            assert!(waits.iter().any(|w| *w > ceiling * 3 / 4), "{waits:?}");
            b.next_delay();
        }
        assert_eq!(ceilings[0], MIN_BACKOFF);
        assert_eq!(ceilings[1], MIN_BACKOFF * 2);
        assert_eq!(*ceilings.last().expect("ten"), MAX_BACKOFF);
        b.reset();
        assert_eq!(b.ceiling(b.attempt()), MIN_BACKOFF);
    }
}
