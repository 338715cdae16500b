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

/// The admin server, configured; [`AdminServer::serve`] starts it.
pub struct AdminServer {
    registry: Arc<Registry>,
    health: Arc<dyn HealthCheck>,
    routes: Router,
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServer").finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    health: Arc<dyn HealthCheck>,
}

impl AdminServer {
    /// Serves `registry` on `/metrics`; `/healthz` answers `ok` until [`AdminServer::health`]
    /// sets a check.
    pub fn new(registry: Arc<Registry>) -> Self {
        AdminServer {
            registry,
            health: Arc::new(AlwaysHealthy("serving")),
            routes: Router::new(),
        }
    }

    /// `/healthz` answers what `check` says.
    pub fn health(mut self, check: impl HealthCheck) -> Self {
        self.health = Arc::new(check);
        self
    }

    /// Serves `routes` beside `/metrics` and `/healthz` (each route keeps its own state, body
    /// limits and authentication). Panics, as axum does, if a path is served twice.
    pub fn merge(mut self, routes: Router) -> Self {
        self.routes = self.routes.merge(routes);
        self
    }

    /// Binds `addr` (failing fast when it cannot) and serves until `shutdown`; then requests in
    /// flight finish and the task ends. Returns the bound address (`:0` picks a free port).
    pub async fn serve(
        self,
        addr: SocketAddr,
        shutdown: Shutdown,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let app = Router::new()
            .route("/metrics", get(render_metrics))
            .route("/healthz", get(healthz))
            .with_state(AppState {
                registry: self.registry,
                health: self.health,
            })
            .merge(self.routes);
        let handle = tokio::spawn(async move {
            let mut shutdown = shutdown;
            let stop = async move { shutdown.requested().await };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(error = %e, "HttpServerError");
            }
        });
        Ok((local, handle))
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
}
