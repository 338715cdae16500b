//! The heal API server: HTTPS (rustls, through the runtime's bounded connection loop), generic
//! over any [`Executor`], so the same server runs the kube executor in the cluster and a
//! recording double in tests.
//!
//! Routes (both POST, both signed, see [`crate::sign`]):
//! - `/v1/actions`: an [`ActionRequest`] → 200 with the [`selfheal_core::action::ActionOutcome`];
//! - `/v1/observe`: a [`Target`] → 200 with its [`selfheal_core::action::WorkloadState`];
//! - plus `/metrics` and `/healthz` (unsigned, read-only).
//!
//! Each request passes these gates in order, and the first that refuses answers (JSON
//! `{"error": <reason>, "message": ...}`), is written to the audit log and counted in
//! `selfheal_heal_api_requests_total{decision,reason}`; nothing refused reaches the executor:
//!
//! | gate | status | reason |
//! |---|---|---|
//! | per-peer rate | 429 | `rate_limited` |
//! | body over `max_body_bytes` | 413 | `body_too_large` |
//! | signature ([`Refusal`]) | 401 | `unsigned`, `malformed_signature`, `stale_timestamp`, `future_timestamp`, `unknown_key`, `bad_signature`, `replayed_nonce` (503 `nonce_cache_full`) |
//! | per-key rate | 429 | `rate_limited` |
//! | JSON | 400 | `malformed_json` |
//! | namespace allow-list | 403 | `namespace_not_allowed` |
//! | action allow-list | 403 | `action_not_allowed` |
//! | bounds | 422 | `out_of_bounds`, `invalid_request` |
//! | executor: object changed | 409 | `conflict` |
//! | executor: other | 404/403/422/503 | `not_found`, `forbidden`, `invalid`, `unavailable` |
//!
//! The object's uid and resourceVersion in the request are the executor's precondition, so a
//! replayed request (even after the nonce cache was lost with a restart) finds the object
//! changed and is refused with 409.

use crate::audit::{AuditLog, AuditRecord};
use crate::config::Policy;
use crate::keys::Keyring;
use crate::sign::{self, Refusal, RequestParts, Verifier};
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use selfheal_core::action::{
    Action, ActionError, ActionErrorKind, ActionRequest, Executor, Target,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The action route.
pub const ACTIONS_PATH: &str = "/v1/actions";
/// The observe route.
pub const OBSERVE_PATH: &str = "/v1/observe";

/// Labels of a request's outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `accepted`, `refused` or `failed`.
    pub decision: &'static str,
    /// The audit log's reason word.
    pub reason: &'static str,
}

/// Labels of a key reload.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `ok` or `error`.
    pub outcome: &'static str,
}

/// `selfheal_heal_api_*`.
#[derive(Debug)]
pub struct Metrics {
    /// Requests by decision and reason.
    pub requests: Family<DecisionLabels, Counter>,
    /// Seconds from the body being read to the answer (verification, gates, the executor).
    pub latency: Histogram,
    /// Keys in use.
    pub keys: Gauge,
    /// Key reloads by outcome.
    pub key_reloads: Family<OutcomeLabel, Counter>,
    /// Live nonces held.
    pub nonces: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            latency: Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0,
            ]),
            keys: Gauge::default(),
            key_reloads: Family::default(),
            nonces: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric (under the registry's prefix, `selfheal_heal_api`).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "requests",
            "Heal API requests by decision and reason",
            self.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "From a request's body being read to its answer",
            self.latency.clone(),
        );
        r.register("keys", "Signing keys in use", self.keys.clone());
        r.register(
            "key_reloads",
            "Signing key reloads by outcome",
            self.key_reloads.clone(),
        );
        r.register("nonces", "Nonces remembered", self.nonces.clone());
    }

    pub(crate) fn key_reload(&self, outcome: &'static str) {
        self.key_reloads
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }
}

/// A per-client token bucket, bounded in the clients it remembers.
#[derive(Debug)]
struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// Clients remembered at most; beyond it, the buckets that refilled are forgotten.
const MAX_CLIENTS: usize = 10_000;

impl RateLimiter {
    fn allow(&self, client: &str) -> bool {
        let now = Instant::now();
        let mut b = match self.buckets.lock() {
            Ok(b) => b,
            Err(p) => p.into_inner(),
        };
        if b.len() >= MAX_CLIENTS && !b.contains_key(client) {
            let (rate, burst) = (self.rate, self.burst);
            b.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
            if b.len() >= MAX_CLIENTS {
                // Every remembered client is mid-burst: a flood of new ones waits.
                return false;
            }
        }
        let (tokens, at) = b.entry(client.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The server's state, shared by every request.
pub struct Api<E> {
    executor: E,
    policy: Policy,
    verifier: Verifier,
    keys: Keyring,
    audit: Arc<AuditLog>,
    metrics: Arc<Metrics>,
    limiter: RateLimiter,
}

impl<E> std::fmt::Debug for Api<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<E: Executor> Api<E> {
    /// The state for `executor` under `policy`, checking signatures against `keys`.
    pub fn new(
        executor: E,
        policy: Policy,
        keys: Keyring,
        audit: Arc<AuditLog>,
        metrics: Arc<Metrics>,
    ) -> Api<E> {
        metrics.keys.set(keys.current().len() as i64);
        Api {
            executor,
            verifier: Verifier::new(policy.clock_window_secs, policy.max_nonces),
            limiter: RateLimiter {
                rate: policy.rate_per_sec,
                burst: f64::from(policy.rate_burst),
                buckets: Mutex::new(HashMap::new()),
            },
            policy,
            keys,
            audit,
            metrics,
        }
    }

    /// The executor.
    pub fn executor(&self) -> &E {
        &self.executor
    }
}

/// The API routes (`/v1/actions`, `/v1/observe`), to merge under the admin server's.
pub fn router<E: Executor>(api: Arc<Api<E>>) -> Router {
    Router::new()
        .route(ACTIONS_PATH, axum::routing::post(actions::<E>))
        .route(OBSERVE_PATH, axum::routing::post(observe::<E>))
        .with_state(api)
}

/// An accepted request's status, reason word, detail and body.
type Accepted = (StatusCode, &'static str, String, serde_json::Value);

/// A refusal or failure: status, reason word, message.
struct Answer {
    status: StatusCode,
    decision: &'static str,
    reason: &'static str,
    message: String,
}

impl Answer {
    fn refuse(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Answer {
        Answer {
            status,
            decision: "refused",
            reason,
            message: message.into(),
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// What every request carries into the audit log.
struct Seen {
    started: Instant,
    peer: Option<SocketAddr>,
    method: String,
    path: String,
    key_id: Option<String>,
    request_id: Option<String>,
    target: Option<String>,
    action: Option<String>,
}

impl<E: Executor> Api<E> {
    /// Reads and authenticates a request: the gates up to the per-key rate.
    async fn admit(&self, req: Request, seen: &mut Seen) -> Result<axum::body::Bytes, Answer> {
        if let Some(peer) = seen.peer
            && !self.limiter.allow(&format!("ip:{}", peer.ip()))
        {
            return Err(Answer::refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests from this address",
            ));
        }
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, self.policy.max_body_bytes)
            .await
            .map_err(|_| {
                Answer::refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!(
                        "the body is over {} bytes (or was cut off)",
                        self.policy.max_body_bytes
                    ),
                )
            })?;
        let h = &parts.headers;
        let rp = RequestParts {
            method: parts.method.as_str(),
            path: &seen.path,
            key_id: header(h, sign::KEY_ID_HEADER),
            timestamp: header(h, sign::TIMESTAMP_HEADER),
            nonce: header(h, sign::NONCE_HEADER),
            signature: header(h, sign::SIGNATURE_HEADER),
        };
        let keys = self.keys.current();
        let verified = self.verifier.verify(&keys, &rp, &body, unix_now());
        self.metrics.nonces.set(self.verifier.nonces() as i64);
        match verified {
            Ok(id) => seen.key_id = Some(id.to_owned()),
            Err(r) => {
                let status = if r == Refusal::NonceCacheFull {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::UNAUTHORIZED
                };
                return Err(Answer::refuse(status, r.reason(), r.to_string()));
            }
        }
        if let Some(id) = &seen.key_id
            && !self.limiter.allow(&format!("key:{id}"))
        {
            return Err(Answer::refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests with this key",
            ));
        }
        Ok(body)
    }

    fn allowed(&self, target: &Target) -> Result<(), Answer> {
        if !self.policy.namespaces.contains(&target.namespace) {
            return Err(Answer::refuse(
                StatusCode::FORBIDDEN,
                "namespace_not_allowed",
                format!(
                    "namespace {:?} is not in allow.namespaces",
                    target.namespace
                ),
            ));
        }
        if !dns_name(&target.name, 253) {
            return Err(Answer::refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                "the target's name is not a Kubernetes name",
            ));
        }
        Ok(())
    }

    fn in_bounds(&self, req: &ActionRequest) -> Result<(), Answer> {
        let kind = req.action.kind();
        if !self.policy.actions.contains(&kind) {
            return Err(Answer::refuse(
                StatusCode::FORBIDDEN,
                "action_not_allowed",
                format!("action {kind} is not in allow.actions"),
            ));
        }
        let b = &self.policy.bounds;
        let counts = |what: &str, from: i32, to: i32| {
            if to < b.min_replicas || to > b.max_replicas {
                return Err(Answer::refuse(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "out_of_bounds",
                    format!(
                        "{what} {to} is outside {}..={}",
                        b.min_replicas, b.max_replicas
                    ),
                ));
            }
            if from < 0 || (i64::from(to) - i64::from(from)).abs() > i64::from(b.max_step) {
                return Err(Answer::refuse(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "out_of_bounds",
                    format!(
                        "{what} {from} -> {to} is a step over max_step {}",
                        b.max_step
                    ),
                ));
            }
            Ok(())
        };
        match &req.action {
            Action::Scale { from, to } => counts("replicas", *from, *to),
            Action::SetHpaMinReplicas { hpa, from, to } => {
                if !dns_name(hpa, 253) {
                    return Err(Answer::refuse(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_request",
                        "the HPA's name is not a Kubernetes name",
                    ));
                }
                counts("minReplicas", *from, *to)
            }
            Action::RolloutRestart { restarted_at } => {
                let ok = restarted_at.len() <= 64
                    && time::OffsetDateTime::parse(
                        restarted_at,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .is_ok();
                if ok {
                    Ok(())
                } else {
                    Err(Answer::refuse(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_request",
                        "restarted_at is not an RFC 3339 time",
                    ))
                }
            }
            Action::DeletePod { pod } => {
                if dns_name(pod, 253) {
                    Ok(())
                } else {
                    Err(Answer::refuse(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_request",
                        "the pod's name is not a Kubernetes name",
                    ))
                }
            }
        }
    }

    fn finish(&self, seen: Seen, result: Result<Accepted, Answer>) -> Response {
        let (status, decision, reason, detail, body) = match result {
            Ok((status, reason, detail, body)) => (status, "accepted", reason, detail, body),
            Err(a) => {
                let body = serde_json::json!({ "error": a.reason, "message": a.message });
                (a.status, a.decision, a.reason, a.message, body)
            }
        };
        self.metrics
            .latency
            .observe(seen.started.elapsed().as_secs_f64());
        self.metrics
            .requests
            .get_or_create(&DecisionLabels { decision, reason })
            .inc();
        let rec = AuditRecord {
            time: rfc3339_now(),
            key_id: seen.key_id,
            peer: seen.peer.map(|p| p.to_string()),
            method: seen.method,
            path: seen.path,
            request_id: seen.request_id,
            target: seen.target,
            action: seen.action,
            decision: decision.to_owned(),
            status: status.as_u16(),
            reason: reason.to_owned(),
            detail,
        };
        if decision == "accepted" {
            tracing::info!(key_id = ?rec.key_id, peer = ?rec.peer, request_id = ?rec.request_id, target = ?rec.target, action = ?rec.action, reason, "HealApiAccepted");
        } else {
            tracing::warn!(key_id = ?rec.key_id, peer = ?rec.peer, request_id = ?rec.request_id, target = ?rec.target, action = ?rec.action, status = status.as_u16(), reason, detail = %rec.detail, "HealApiRefused");
        }
        self.audit.write(&rec);
        (status, axum::Json(body)).into_response()
    }
}

fn executor_error(e: &ActionError) -> Answer {
    let (status, decision, reason) = match e.kind {
        ActionErrorKind::Conflict => (StatusCode::CONFLICT, "refused", "conflict"),
        ActionErrorKind::NotFound => (StatusCode::NOT_FOUND, "failed", "not_found"),
        ActionErrorKind::Forbidden => (StatusCode::FORBIDDEN, "failed", "forbidden"),
        ActionErrorKind::Invalid => (StatusCode::UNPROCESSABLE_ENTITY, "failed", "invalid"),
        ActionErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "failed", "unavailable"),
    };
    Answer {
        status,
        decision,
        reason,
        message: e.message.clone(),
    }
}

/// A DNS-1123 name of at most `max` characters (lowercase alphanumerics, `-` and `.`).
fn dns_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}

fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn seen_of(req: &Request) -> Seen {
    Seen {
        started: Instant::now(),
        peer: req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0),
        method: req.method().as_str().to_owned(),
        path: req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned()),
        key_id: None,
        request_id: None,
        target: None,
        action: None,
    }
}

async fn actions<E: Executor>(State(api): State<Arc<Api<E>>>, req: Request<Body>) -> Response {
    let mut seen = seen_of(&req);
    let result: Result<Accepted, Answer> = async {
        let body = api.admit(req, &mut seen).await?;
        let ar: ActionRequest = serde_json::from_slice(&body).map_err(|e| {
            Answer::refuse(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("not an action request: {e}"),
            )
        })?;
        seen.request_id = Some(ar.request_id.clone());
        seen.target = Some(ar.target.to_string());
        seen.action = Some(ar.action.kind().as_str().to_owned());
        if ar.request_id.is_empty() || ar.request_id.len() > 253 {
            return Err(Answer::refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                "request_id must be 1 to 253 characters",
            ));
        }
        api.allowed(&ar.target)?;
        api.in_bounds(&ar)?;
        let out = api
            .executor
            .apply(&ar)
            .await
            .map_err(|e| executor_error(&e))?;
        let reason = if out.already_applied {
            "already_applied"
        } else {
            "applied"
        };
        let body = serde_json::to_value(&out).unwrap_or_default();
        Ok((StatusCode::OK, reason, out.detail.clone(), body))
    }
    .await;
    api.finish(seen, result)
}

async fn observe<E: Executor>(State(api): State<Arc<Api<E>>>, req: Request<Body>) -> Response {
    let mut seen = seen_of(&req);
    let result: Result<Accepted, Answer> = async {
        let body = api.admit(req, &mut seen).await?;
        let t: Target = serde_json::from_slice(&body).map_err(|e| {
            Answer::refuse(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("not a target: {e}"),
            )
        })?;
        seen.target = Some(t.to_string());
        seen.action = Some("observe".into());
        api.allowed(&t)?;
        let state = api
            .executor
            .observe(&t)
            .await
            .map_err(|e| executor_error(&e))?;
        let body = serde_json::to_value(&state).unwrap_or_default();
        Ok((StatusCode::OK, "observed", String::new(), body))
    }
    .await;
    api.finish(seen, result)
}

/// Why the server could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The keys could not be loaded at start.
    #[error("cannot load the signing keys")]
    Keys(#[source] crate::keys::KeysError),
    /// The TLS files could not be loaded.
    #[error("cannot load the TLS certificate and key")]
    Tls(#[source] selfheal_runtime::conn::TlsError),
    /// The audit log could not be opened.
    #[error("cannot open the audit log {path}")]
    Audit {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The address could not be bound.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A started server.
#[derive(Debug)]
pub struct Running {
    /// The address bound.
    pub addr: SocketAddr,
    /// Ends after the shutdown, once connections closed.
    pub server: tokio::task::JoinHandle<()>,
    /// The key reload task.
    pub keys: tokio::task::JoinHandle<()>,
    /// The audit log, to flush once the server has drained.
    pub audit: Arc<AuditLog>,
}

/// Loads the keys, opens the audit log, binds and serves `executor` until `shutdown`.
pub async fn start<E: Executor>(
    settings: &crate::config::Settings,
    executor: E,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Running, ServerError> {
    let loader = crate::keys::KeyLoader::new(settings.keys.clone()).await;
    start_with_keys(settings, executor, loader, shutdown).await
}

/// [`start`], with the keys from `loader` instead of the one `settings.keys` names.
pub async fn start_with_keys<E: Executor>(
    settings: &crate::config::Settings,
    executor: E,
    mut loader: crate::keys::KeyLoader,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Running, ServerError> {
    let keys = loader.load().await.map_err(ServerError::Keys)?;
    tracing::info!(keys = ?keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), "HealApiKeysLoaded");
    let ring = Keyring::new(keys);
    let audit = match &settings.audit {
        crate::config::AuditTarget::Stdout => AuditLog::stdout(),
        crate::config::AuditTarget::File(p) => {
            AuditLog::file(p).map_err(|source| ServerError::Audit {
                path: p.clone(),
                source,
            })?
        }
    };
    let mut registry = Registry::with_prefix("selfheal_heal_api");
    let metrics = Arc::new(Metrics::default());
    metrics.register(&mut registry);
    registry.register(
        "audit_write_errors",
        "Audit lines that could not be written",
        audit.errors(),
    );
    let conn_metrics = Arc::new(selfheal_runtime::conn::ConnMetrics::default());
    conn_metrics.register(&mut registry);
    let tls_settings = selfheal_runtime::conn::TlsSettings {
        cert_file: settings.tls.cert_file.clone(),
        key_file: settings.tls.key_file.clone(),
        client_ca_file: settings.tls.client_ca_file.clone(),
    };
    let tls = Arc::new(
        selfheal_runtime::conn::ReloadingTls::load(tls_settings.clone())
            .map_err(ServerError::Tls)?,
    );
    let audit = Arc::new(audit);
    let api = Arc::new(Api::new(
        executor,
        settings.policy.clone(),
        ring.clone(),
        Arc::clone(&audit),
        Arc::clone(&metrics),
    ));
    let app = selfheal_runtime::server::AdminServer::new(Arc::new(registry))
        .health(selfheal_runtime::server::AlwaysHealthy("heal api"))
        .limits(selfheal_runtime::server::ConnectionLimits {
            max_connections: settings.max_connections,
            header_timeout: settings.header_timeout,
            request_timeout: settings.request_timeout,
        })
        .merge(router(api))
        .into_router();
    let listen_err = |source| ServerError::Listen {
        addr: settings.listen_addr,
        source,
    };
    let listener = tokio::net::TcpListener::bind(settings.listen_addr)
        .await
        .map_err(listen_err)?;
    let addr = listener.local_addr().map_err(listen_err)?;
    let bounded = selfheal_runtime::conn::Bounded {
        settings: selfheal_runtime::conn::ConnSettings {
            max_connections: settings.max_connections,
            header_timeout: settings.header_timeout,
            tls: Some(tls_settings),
        },
        tls: Some(Arc::clone(&tls)),
        metrics: Arc::clone(&conn_metrics),
    };
    let server = tokio::spawn(selfheal_runtime::conn::serve(
        listener,
        app,
        bounded,
        shutdown.clone(),
    ));
    // A renewed certificate (cert-manager, a rotated Secret) is picked up without a restart.
    tokio::spawn(tls.watch(
        selfheal_runtime::conn::ReloadingTls::DEFAULT_CHECK_EVERY,
        conn_metrics,
        shutdown.clone(),
    ));
    let keys = tokio::spawn(loader.watch(ring, settings.keys_reload, metrics, shutdown));
    tracing::info!(%addr, "HealApiListening");
    if settings.policy.namespaces.is_empty() {
        // Valid (the shipped manifest is closed until an overlay opens namespaces), but an
        // operator who forgot the overlay should see why every action is refused.
        tracing::warn!(
            reason = "allow.namespaces is empty: every action is refused",
            "HealApiNoNamespacesAllowed"
        );
    }
    Ok(Running {
        addr,
        server,
        keys,
        audit,
    })
}
