//! The aggregator's HTTP endpoint: `/metrics` (Prometheus text), `/healthz`, and the routes of
//! the source, if it has any (the HTTP [`crate::ingest`] endpoint).
//!
//! With the Kinesis source, `/healthz` answers 200 while the consumer keeps talking to Kinesis (a
//! successful ListShards, GetShardIterator or GetRecords within `health_max_age`) and 503 after,
//! so a consumer wedged on a dead endpoint or bad credentials gets its pod restarted by the
//! liveness probe. With the HTTP source there is no upstream to be wedged on: the server
//! answering is the health.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Debug, Clone)]
struct AppState {
    registry: Arc<Registry>,
    /// Time of the last successful Kinesis call; `None` with the HTTP source.
    progress: Option<watch::Receiver<Instant>>,
    max_age: Duration,
}

async fn render_metrics(State(s): State<AppState>) -> impl IntoResponse {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &s.registry) {
        tracing::error!(error = %e, "MetricsEncodeError");
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            String::new(),
        );
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    let Some(progress) = &s.progress else {
        return (StatusCode::OK, "ok: http ingest\n".to_owned());
    };
    let age = progress.borrow().elapsed();
    let status = if age <= s.max_age {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = if status == StatusCode::OK {
        "ok"
    } else {
        "stale"
    };
    (
        status,
        format!("{word}: last Kinesis call {:.1}s ago\n", age.as_secs_f64()),
    )
}

/// Binds `addr` (failing fast when it cannot) and serves `/metrics`, `/healthz` and `source`'s
/// routes until `shutdown` turns true; then in-flight requests finish before the task ends.
/// With `bounded` (the HTTP ingest source), connections go through the bounded loop of
/// [`crate::sources::http::conn`] (cap, timeouts, TLS) instead of `axum::serve`.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    progress: Option<watch::Receiver<Instant>>,
    max_age: Duration,
    source: Router,
    bounded: Option<crate::sources::http::conn::Bounded>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .with_state(AppState {
            registry,
            progress,
            max_age,
        })
        .merge(source);
    if let Some(b) = bounded {
        let handle = tokio::spawn(crate::sources::http::conn::serve(
            listener, app, b, shutdown,
        ));
        return Ok((local, handle));
    }
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
