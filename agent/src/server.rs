//! The agent's HTTP endpoint: `/metrics` (Prometheus text) and `/healthz`.
//!
//! `/healthz` answers 200 while cycles keep completing and 503 once the last one is older than
//! three intervals (a stuck collector should get the pod restarted by its liveness probe).

use crate::telemetry::AgentMetrics;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Liveness: when the last cycle finished.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    last_cycle_ms: AtomicU64,
    max_age: Duration,
}

impl Health {
    /// Healthy while a cycle completed within `max_age` (counted from start before the first).
    pub fn new(max_age: Duration) -> Self {
        Health {
            started: Instant::now(),
            last_cycle_ms: AtomicU64::new(0),
            max_age,
        }
    }

    /// Records a completed cycle.
    pub fn cycle_done(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_cycle_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last completed cycle (or since start).
    pub fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last_cycle_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// True while cycles are keeping up.
    pub fn is_healthy(&self) -> bool {
        self.age() <= self.max_age
    }
}

#[derive(Debug, Clone)]
struct AppState {
    metrics: Arc<AgentMetrics>,
    health: Arc<Health>,
}

async fn render_metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    let age = s.health.age();
    if s.health.is_healthy() {
        (
            StatusCode::OK,
            format!("ok: last cycle {:.1}s ago\n", age.as_secs_f64()),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stale: last cycle {:.1}s ago\n", age.as_secs_f64()),
        )
    }
}

/// Binds `addr` (failing fast when it cannot) and serves until `shutdown` turns true.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<AgentMetrics>,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .with_state(AppState { metrics, health });
    let handle = tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "HttpServerError");
        }
    });
    Ok((local, handle))
}
