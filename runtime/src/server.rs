//! The admin server every service runs: `/metrics` (OpenMetrics text from a prometheus-client
//! [`Registry`]), `/healthz` (200 or 503 from a pluggable [`HealthCheck`]), any extra routes the
//! service merges in, and a graceful stop on [`Shutdown`].
//!
//! Replaces agent/src/server.rs and aggregator/src/server.rs, keeping the better half of each:
//! the aggregator's encoding failure answers 500 and is logged (the agent's served a truncated
//! page as 200) and its extra routes are merged (the HTTP ingest endpoint); the agent's
//! staleness clock counts from start before the first beat (so a service that never makes
//! progress goes unhealthy after `max_age` instead of never) and is lock-free to beat, which is
//! [`Heartbeat`]. Both bound the bind at start: an address in use fails `serve`, not a task.
//! Neither bounded its clients; this caps connections and times out slow heads, idle
//! keep-alives and slow requests ([`ConnectionLimits`], on by default).
//!
//! Health is liveness: a 503 should get the pod restarted by its probe, so a check reports only
//! what a restart can fix (a wedged loop, a consumer stuck on a dead connection), never a
//! dependency that is down for everyone.

use crate::shutdown::Shutdown;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// The content type of `/metrics`.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What `/healthz` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// 200 when true, 503 when false.
    pub healthy: bool,
    /// The body (one line, without the newline), e.g. `ok: last cycle 1.2s ago`.
    pub message: String,
}

/// Decides `/healthz`. Called once per request, so it must be cheap and must not block.
pub trait HealthCheck: Send + Sync + 'static {
    /// The current health.
    fn check(&self) -> Health;
}

impl<F: Fn() -> Health + Send + Sync + 'static> HealthCheck for F {
    fn check(&self) -> Health {
        self()
    }
}

/// Healthy while something beat within `max_age`: the loop that completes a cycle, the consumer
/// that got an answer from Kinesis. Before the first beat, the age counts from creation.
/// Clones share the clock.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    inner: Arc<HeartbeatInner>,
}

#[derive(Debug)]
struct HeartbeatInner {
    started: Instant,
    /// Milliseconds from `started` to the last beat.
    last_ms: AtomicU64,
    max_age: Duration,
    /// What beats, for the message: `cycle`, `Kinesis call`.
    what: &'static str,
}

impl Heartbeat {
    /// A clock that goes stale `max_age` after the last beat of `what`.
    pub fn new(what: &'static str, max_age: Duration) -> Self {
        Heartbeat {
            inner: Arc::new(HeartbeatInner {
                started: Instant::now(),
                last_ms: AtomicU64::new(0),
                max_age,
                what,
            }),
        }
    }

    /// Records progress now.
    pub fn beat(&self) {
        let ms = u64::try_from(self.inner.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.inner.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last beat (or since creation).
    pub fn age(&self) -> Duration {
        let last = Duration::from_millis(self.inner.last_ms.load(Ordering::Relaxed));
        self.inner.started.elapsed().saturating_sub(last)
    }

    /// True while beats keep coming.
    pub fn is_healthy(&self) -> bool {
        self.age() <= self.inner.max_age
    }
}

impl HealthCheck for Heartbeat {
    fn check(&self) -> Health {
        let age = self.age();
        let healthy = age <= self.inner.max_age;
        let word = if healthy { "ok" } else { "stale" };
        Health {
            healthy,
            message: format!(
                "{word}: last {} {:.1}s ago",
                self.inner.what,
                age.as_secs_f64()
            ),
        }
    }
}

/// Always healthy with a fixed message: for a service whose serving is its health (the HTTP
/// ingest source has no upstream to be wedged on).
#[derive(Debug, Clone)]
pub struct AlwaysHealthy(pub &'static str);

impl HealthCheck for AlwaysHealthy {
    fn check(&self) -> Health {
        Health {
            healthy: true,
            message: format!("ok: {}", self.0),
        }
    }
}

/// Bounds on what clients of the admin server can hold. Anything that can reach the port may be
/// hostile (the agent's listens on every node), so a client that opens connections and sends
/// nothing, or sends a request head a byte a minute, must not take the server from the
/// Prometheus scraper and the kubelet's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections served at once. One over the cap is accepted and closed at once,
    /// counted in `admin_connections_refused_total` and logged (`AdminConnectionRefused`, on the
    /// first refusal and each power of two after, so a flood is visible without flooding the
    /// log), rather than left in the kernel's backlog where nobody sees it.
    pub max_connections: usize,
    /// Most time a client has to send a whole request head. hyper starts this clock whenever it
    /// waits for a head, so it is also the idle timeout of a kept-alive connection.
    pub header_timeout: Duration,
    /// Most time one request may take, its body and the handler included; past it the answer is
    /// 408 and the connection is closed.
    pub request_timeout: Duration,
}

impl Default for ConnectionLimits {
    /// 64 connections, 10 s for a head (and for idling between requests), 30 s per request:
    /// room for a scraper, the probes and an operator's curl many times over, and
    /// long enough for a scrape over a slow link.
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 64,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// The admin server's own metrics (`admin_connections_open`, `admin_connections_refused_total`
/// under the registry's prefix). Clones share the values.
#[derive(Debug, Clone, Default)]
pub struct AdminMetrics {
    /// Connections being served now.
    pub connections_open: Gauge,
    /// Connections closed at accept because [`ConnectionLimits::max_connections`] were open.
    pub connections_refused: Counter,
}

impl AdminMetrics {
    /// Registers both in `registry` (before it goes into the [`AdminServer`]).
    pub fn register(registry: &mut Registry) -> Self {
        let m = AdminMetrics::default();
        registry.register(
            "admin_connections_open",
            "Connections the admin server is serving",
            m.connections_open.clone(),
        );
        registry.register(
            "admin_connections_refused",
            "Connections closed at accept because the admin server's connection cap was reached",
            m.connections_refused.clone(),
        );
        m
    }
}

/// The admin server, configured; [`AdminServer::serve`] starts it.
pub struct AdminServer {
    registry: Arc<Registry>,
    health: Arc<dyn HealthCheck>,
    routes: Router,
    limits: ConnectionLimits,
    metrics: AdminMetrics,
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServer")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    health: Arc<dyn HealthCheck>,
}

impl AdminServer {
    /// Serves `registry` on `/metrics`; `/healthz` answers `ok` until [`AdminServer::health`]
    /// sets a check. Connections are bounded by [`ConnectionLimits::default`].
    pub fn new(registry: Arc<Registry>) -> Self {
        AdminServer {
            registry,
            health: Arc::new(AlwaysHealthy("serving")),
            routes: Router::new(),
            limits: ConnectionLimits::default(),
            metrics: AdminMetrics::default(),
        }
    }

    /// `/healthz` answers what `check` says.
    pub fn health(mut self, check: impl HealthCheck) -> Self {
        self.health = Arc::new(check);
        self
    }

    /// Serves `routes` beside `/metrics` and `/healthz` (each route keeps its own state, body
    /// limits and authentication; the connection limits apply to all). Panics, as axum does, if
    /// a path is served twice.
    pub fn merge(mut self, routes: Router) -> Self {
        self.routes = self.routes.merge(routes);
        self
    }

    /// Bounds connections by `limits` instead of the defaults.
    pub fn limits(mut self, limits: ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Counts connections in `metrics` (from [`AdminMetrics::register`]).
    pub fn metrics(mut self, metrics: AdminMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Binds `addr` (failing fast when it cannot) and serves until `shutdown`; then requests in
    /// flight finish, idle connections close, and the task ends. Returns the bound address
    /// (`:0` picks a free port).
    ///
    /// The accept loop is written here rather than `axum::serve` because that exposes neither a
    /// connection cap nor hyper's header timeout.
    pub async fn serve(
        self,
        addr: SocketAddr,
        shutdown: Shutdown,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let limits = self.limits;
        let metrics = self.metrics.clone();
        let app = self.into_router();
        let handle = tokio::spawn(accept_loop(listener, app, limits, metrics, shutdown));
        Ok((local, handle))
    }

    /// The routes `serve` would serve (`/metrics`, `/healthz`, the merged routes, the request
    /// timeout), for a server that runs its own connection loop: the aggregator's HTTP ingest
    /// terminates TLS and keeps its own connection budget, so it serves this router there. The
    /// connection limits other than `request_timeout` are then that loop's business.
    pub fn into_router(self) -> Router {
        let limits = self.limits;
        Router::new()
            .route("/metrics", get(render_metrics))
            .route("/healthz", get(healthz))
            .with_state(AppState {
                registry: self.registry,
                health: self.health,
            })
            .merge(self.routes)
            .layer(axum::middleware::from_fn_with_state(
                limits.request_timeout,
                request_timeout,
            ))
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ConnectionLimits,
    metrics: AdminMetrics,
    mut shutdown: Shutdown,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.requested() => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // EMFILE and friends: the next accept may succeed once connections close; do not
                // spin on the error meanwhile.
                tracing::warn!(error = %e, "AdminAcceptError");
                if shutdown.sleep(Duration::from_millis(100)).await {
                    break;
                }
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            let refused = metrics.connections_refused.inc() + 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    refused_total = refused,
                    "AdminConnectionRefused"
                );
            }
            drop(stream);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        let open = metrics.connections_open.clone();
        open.inc();
        tokio::spawn(async move {
            // A client that goes away or times out ends its connection; nothing to report.
            let _ = conn.await;
            open.dec();
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn request_timeout(
    State(limit): State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            [(header::CONNECTION, "close")],
            "request took too long\n",
        )
            .into_response(),
    }
}

async fn render_metrics(State(s): State<AppState>) -> Response {
    let mut out = String::with_capacity(8192);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &s.registry) {
        tracing::error!(error = %e, "MetricsEncodeError");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        out,
    )
        .into_response()
}

async fn healthz(State(s): State<AppState>) -> Response {
    let h = s.health.check();
    let status = if h.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}\n", h.message),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One HTTP/1.1 request over loopback; returns the status code and the body.
    async fn fetch(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("send");
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.expect("read");
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, head.to_ascii_lowercase(), body.to_owned())
    }

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    #[tokio::test]
    async fn metrics_health_and_merged_routes_are_served_until_shutdown() {
        let mut registry = Registry::default();
        let requests = Counter::<u64>::default();
        registry.register("demo_requests", "Requests seen", requests.clone());
        requests.inc_by(3);
        let (trigger, stop) = shutdown::channel();
        let extra = Router::new().route("/ingest", get(|| async { "ingest here" }));
        let (addr, task) = AdminServer::new(Arc::new(registry))
            .merge(extra)
            .serve(loopback(), stop)
            .await
            .expect("bind");

        let (status, head, body) = fetch(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            head.contains("content-type: application/openmetrics-text"),
            "{head}"
        );
        assert!(body.contains("demo_requests_total 3"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert_eq!(fetch(addr, "/healthz").await.0, 200);
        assert_eq!(fetch(addr, "/ingest").await.2, "ingest here");
        assert_eq!(fetch(addr, "/nope").await.0, 404);

        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("stops promptly")
            .expect("join");
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "closed"
        );
    }

    #[tokio::test]
    async fn a_request_in_flight_at_shutdown_still_gets_its_answer() {
        let (trigger, stop) = shutdown::channel();
        let slow = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "done"
            }),
        );
        let (addr, task) = AdminServer::new(Arc::new(Registry::default()))
            .merge(slow)
            .serve(loopback(), stop)
            .await
            .expect("bind");
        let request = tokio::spawn(async move { fetch(addr, "/slow").await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        trigger.trigger();
        let (status, _, body) = request.await.expect("join");
        assert_eq!((status, body.as_str()), (200, "done"));
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("stops")
            .expect("join");
    }

    #[tokio::test]
    async fn healthz_follows_the_check_and_a_busy_port_fails_at_start() {
        let heartbeat = Heartbeat::new("cycle", Duration::from_secs(3600));
        let unhealthy = || Health {
            healthy: false,
            message: "stale: last Kinesis call 99.0s ago".into(),
        };
        let (_trigger, stop) = shutdown::channel();
        let (addr, _task) = AdminServer::new(Arc::new(Registry::default()))
            .health(heartbeat.clone())
            .serve(loopback(), stop.clone())
            .await
            .expect("bind");
        let (status, _, body) = fetch(addr, "/healthz").await;
        assert_eq!(status, 200);
        assert!(body.starts_with("ok: last cycle "), "{body}");

        let (addr2, _task2) = AdminServer::new(Arc::new(Registry::default()))
            .health(unhealthy)
            .serve(loopback(), stop.clone())
            .await
            .expect("bind");
        let (status, _, body) = fetch(addr2, "/healthz").await;
        assert_eq!(status, 503);
        assert_eq!(body, "stale: last Kinesis call 99.0s ago\n");

        let busy = AdminServer::new(Arc::new(Registry::default()))
            .serve(addr, stop)
            .await;
        assert!(busy.is_err(), "the port is taken");
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_goes_stale_after_max_age_and_recovers_on_a_beat() {
        let hb = Heartbeat::new("cycle", Duration::from_secs(30));
        assert!(hb.check().healthy, "fresh at start");
        tokio::time::advance(Duration::from_secs(31)).await;
        let h = hb.check();
        assert!(!h.healthy, "never beat: stale 30 s after start");
        assert_eq!(h.message, "stale: last cycle 31.0s ago");
        hb.clone().beat();
        assert_eq!(hb.age(), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(hb.is_healthy(), "exactly max_age is still fine");
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(!hb.is_healthy());
    }

    /// Reads until the server closes the connection; the bytes it sent before.
    async fn read_to_close(s: &mut tokio::net::TcpStream) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        out
    }

    fn limits(max_connections: usize, header_ms: u64, request_ms: u64) -> ConnectionLimits {
        ConnectionLimits {
            max_connections,
            header_timeout: Duration::from_millis(header_ms),
            request_timeout: Duration::from_millis(request_ms),
        }
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_at_once_and_counted() {
        let mut registry = Registry::with_prefix("demo");
        let metrics = AdminMetrics::register(&mut registry);
        let (_trigger, stop) = shutdown::channel();
        let (addr, _task) = AdminServer::new(Arc::new(registry))
            .limits(limits(2, 5_000, 5_000))
            .metrics(metrics.clone())
            .serve(loopback(), stop)
            .await
            .expect("bind");
        // Two clients that connect and say nothing hold both slots.
        let held: Vec<_> = futures_connect(addr, 2).await;
        wait_until(|| metrics.connections_open.get() == 2).await;
        let mut third = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let got = tokio::time::timeout(Duration::from_secs(5), read_to_close(&mut third))
            .await
            .expect("closed at once, not after the header timeout");
        assert!(got.is_empty(), "nothing served: {got:?}");
        assert_eq!(metrics.connections_refused.get(), 1);
        // A slot freed is a slot served again, and the metrics page shows both counts.
        drop(held);
        wait_until(|| metrics.connections_open.get() == 0).await;
        let (status, _, body) = fetch(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            body.contains("demo_admin_connections_refused_total 1"),
            "{body}"
        );
        assert!(body.contains("demo_admin_connections_open 1"), "{body}");
    }

    #[tokio::test]
    async fn a_slow_head_and_an_idle_keep_alive_are_closed_after_the_header_timeout() {
        let (_trigger, stop) = shutdown::channel();
        let (addr, _task) = AdminServer::new(Arc::new(Registry::default()))
            .limits(limits(8, 300, 5_000))
            .serve(loopback(), stop)
            .await
            .expect("bind");
        // Half a head, then silence.
        let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: a")
            .await
            .expect("send");
        let start = Instant::now();
        let got = tokio::time::timeout(Duration::from_secs(5), read_to_close(&mut slow))
            .await
            .expect("closed by the header timeout");
        let waited = start.elapsed();
        assert!(
            !String::from_utf8_lossy(&got).contains(" 200 "),
            "not served"
        );
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        // One full request on a kept-alive connection, then idling past the timeout.
        let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("send");
        let got = tokio::time::timeout(Duration::from_secs(5), read_to_close(&mut idle))
            .await
            .expect("closed after idling");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }

    #[tokio::test]
    async fn a_request_past_the_request_timeout_gets_408() {
        let (_trigger, stop) = shutdown::channel();
        let slow = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
        let (addr, _task) = AdminServer::new(Arc::new(Registry::default()))
            .merge(slow)
            .limits(limits(8, 5_000, 200))
            .serve(loopback(), stop)
            .await
            .expect("bind");
        let (status, _, body) = tokio::time::timeout(Duration::from_secs(5), fetch(addr, "/slow"))
            .await
            .expect("answered by the timeout");
        assert_eq!((status, body.as_str()), (408, "request took too long\n"));
        assert_eq!(
            fetch(addr, "/healthz").await.0,
            200,
            "other requests unaffected"
        );
    }

    #[test]
    fn the_default_limits_are_the_documented_ones() {
        assert_eq!(limits(64, 10_000, 30_000), ConnectionLimits::default());
    }

    async fn futures_connect(addr: SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        v
    }

    async fn wait_until(cond: impl Fn() -> bool) {
        for _ in 0..500 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(cond(), "condition not reached in 5 s");
    }
}
