//! `run(settings, shutdown)`: the aggregator's stages wired together: a source feeding the
//! [`LakeWriter`], and the `/metrics` + `/healthz` server. The source is the Kinesis
//! [`Consumer`], with checkpoints in files, or the HTTP [`ingest`](crate::ingest) endpoint on the
//! same server.
//!
//! Shutdown: when `shutdown` turns true every shard reader writes its open batch and
//! checkpoints it, or the server stops accepting and answers the requests in flight once their
//! writes are done; `run` waits for that at most `shutdown_grace` and then returns (an error if
//! the grace ran out: those batches are read again on the next start, or resent by the agents,
//! which were not answered; nothing is lost).

use crate::config::Settings;
use crate::consume::{BatchHandler, ConsumeMetrics, Consumer, FileCheckpoints};
use crate::incident::handler::{Both, IncidentHandler};
use crate::ingest::{IngestMetrics, IngestSettings};
use crate::lake::{LakeStore, LakeWriter, StoreError};
use aws_sdk_kinesis::config::retry::RetryConfig;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tokio::sync::watch;

/// Why the aggregator stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The lake could not be opened.
    #[error("cannot open the lake")]
    Lake(#[source] StoreError),
    /// The HTTP address could not be bound.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The incident store could not be opened or read.
    #[error("cannot start the incident pipeline")]
    Incidents(#[source] crate::incident::handler::IncidentError),
    /// Open batches were not all written within the shutdown grace period.
    #[error("shutdown grace of {0:?} ran out before every batch was written")]
    GraceExceeded(std::time::Duration),
}

/// Runs source → lake until `shutdown` turns true.
pub async fn run(settings: Settings, shutdown: watch::Receiver<bool>) -> Result<(), RunError> {
    let mut registry = Registry::with_prefix("selfheal_aggregator");
    let consume_metrics = Arc::new(ConsumeMetrics::default());
    consume_metrics.register(&mut registry);

    let store = LakeStore::open(&settings.lake_location, &settings.lake_s3)
        .await
        .map_err(RunError::Lake)?;
    let writer = LakeWriter::new(store);
    writer.stats().register(&mut registry);
    let lake = writer.store().location().to_string();
    // The incident pipeline rides behind the lake writer until the pipeline module gives
    // each handler its own checkpoint (the restructuring issue).
    let (incidents, routes) = match &settings.incidents {
        Some((inc, store)) => {
            let (h, routes) = crate::incident::start(inc, store, &mut registry, shutdown.clone())
                .await
                .map_err(RunError::Incidents)?;
            (Some(IncidentHandler(h)), routes)
        }
        None => (None, axum::Router::new()),
    };
    let handler = Both(writer, incidents);
    match settings.http_ingest.clone() {
        Some(ingest) => {
            run_http(
                &settings,
                &ingest,
                registry,
                consume_metrics,
                (handler, lake, routes),
                shutdown,
            )
            .await
        }
        None => {
            run_kinesis(
                &settings,
                registry,
                consume_metrics,
                (handler, lake, routes),
                shutdown,
            )
            .await
        }
    }
}

/// The HTTP source: the ingest route on the server, nothing else running.
async fn run_http<H: BatchHandler>(
    settings: &Settings,
    ingest: &IngestSettings,
    mut registry: Registry,
    consume_metrics: Arc<ConsumeMetrics>,
    (writer, lake, routes): (H, String, axum::Router),
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), RunError> {
    let ingest_metrics = Arc::new(IngestMetrics::default());
    ingest_metrics.register(&mut registry);
    tracing::info!(
        path = %ingest.path,
        lake = %lake,
        "AggregatorStarting"
    );
    let routes =
        crate::ingest::router(ingest, writer, consume_metrics, ingest_metrics).merge(routes);
    let (addr, server) = crate::server::serve(
        settings.listen_addr,
        Arc::new(registry),
        None,
        settings.health_max_age,
        routes,
        shutdown.clone(),
    )
    .await
    .map_err(|source| RunError::Listen {
        addr: settings.listen_addr,
        source,
    })?;
    tracing::info!(%addr, path = %ingest.path, "HttpServerListening");
    let _ = shutdown.wait_for(|s| *s).await;
    // The server stops accepting; requests in flight finish their lake writes and are answered.
    match tokio::time::timeout(settings.shutdown_grace, server).await {
        Ok(_) => {
            tracing::info!("AggregatorStopped");
            Ok(())
        }
        Err(_) => Err(RunError::GraceExceeded(settings.shutdown_grace)),
    }
}

/// The Kinesis source: the consumer, and the server for `/metrics` and `/healthz`.
async fn run_kinesis<H: BatchHandler>(
    settings: &Settings,
    registry: Registry,
    consume_metrics: Arc<ConsumeMetrics>,
    (writer, lake, routes): (H, String, axum::Router),
    shutdown: watch::Receiver<bool>,
) -> Result<(), RunError> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        // The consumer retries with its own backoff and counts each retry.
        .retry_config(RetryConfig::disabled());
    if let Some(r) = &settings.kinesis_region {
        loader = loader.region(aws_sdk_kinesis::config::Region::new(r.clone()));
    }
    if let Some(u) = &settings.kinesis_endpoint_url {
        loader = loader.endpoint_url(u);
    }
    let client = aws_sdk_kinesis::Client::new(&loader.load().await);
    let checkpoints = FileCheckpoints::new(&settings.checkpoint_dir, &settings.consumer.stream);
    tracing::info!(
        stream = %settings.consumer.stream,
        lake = %lake,
        checkpoints = %settings.checkpoint_dir.display(),
        "AggregatorStarting"
    );
    let consumer = Consumer::new(
        client,
        settings.consumer.clone(),
        checkpoints,
        writer,
        Arc::clone(&consume_metrics),
    );
    let (addr, server) = crate::server::serve(
        settings.listen_addr,
        Arc::new(registry),
        Some(consumer.progress()),
        settings.health_max_age,
        routes,
        shutdown.clone(),
    )
    .await
    .map_err(|source| RunError::Listen {
        addr: settings.listen_addr,
        source,
    })?;
    tracing::info!(%addr, "HttpServerListening");
    let mut task = tokio::spawn(consumer.run(shutdown.clone()));
    let mut stop = shutdown;
    tokio::select! {
        _ = stop.wait_for(|s| *s) => {}
        r = &mut task => {
            // The consumer returns only on shutdown; a panic ends up here.
            if let Err(e) = r {
                tracing::error!(error = %e, "ConsumerPanicked");
            }
            server.abort();
            return Ok(());
        }
    }
    let drained = tokio::time::timeout(settings.shutdown_grace, task).await;
    let _ = server.await;
    match drained {
        Ok(_) => {
            tracing::info!("AggregatorStopped");
            Ok(())
        }
        Err(_) => Err(RunError::GraceExceeded(settings.shutdown_grace)),
    }
}
