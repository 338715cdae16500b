//! `run(settings, shutdown)`: the aggregator's stages wired together: a source feeding every
//! handler (the lake writer, and the incident pipeline unless `incidents.enabled = false`)
//! through its own reader and checkpoints, and the `/metrics` + `/healthz` server with the
//! incident API and page. The source is the Kinesis stream (one
//! [`Consumer`] per handler, checkpoints under `<checkpoint.dir>/<stream>/<handler>/`) or the
//! HTTP ingest endpoint with its log (one [`LogReader`] per handler, checkpoints under
//! `<ingest.log_dir>/checkpoints/<handler>/`).
//!
//! Shutdown: when `shutdown` turns true the server stops accepting and answers the requests in
//! flight, and every reader hands over its open batch and checkpoints it; `run` waits for that at
//! most `shutdown_grace` and then returns (an error if the grace ran out: those batches are read
//! again on the next start, cut where they were; nothing is lost).
//!
//! A task that panics (a reader, a handler inside it, the server) stops the others the same way
//! and makes `run` return [`RunError::TaskPanicked`], so the process exits non-zero and its
//! supervisor restarts it, instead of running on with a shard nobody reads.

use crate::config::Settings;
use crate::lake::LakeHandler;
use crate::pipeline::dead_letter::DeadLetters;
use crate::pipeline::{CheckpointError, Delivery, FileCheckpoints, PipelineMetrics, SharedHandler};
use crate::sources::http::log::{IngestLog, LogError, LogMetrics};
use crate::sources::http::reader::{BatchLimits, LogReader};
use crate::sources::http::{IngestMetrics, IngestSettings};
use crate::sources::kinesis::{ConsumeMetrics, Consumer};
use aws_sdk_kinesis::config::retry::RetryConfig;
use prometheus_client::registry::Registry;
use selfheal_lake::{LakeStore, LakeWriter, StoreError};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Why the aggregator stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The lake could not be opened.
    #[error("cannot open the lake")]
    Lake(#[source] StoreError),
    /// The HTTP ingest log could not be opened.
    #[error("cannot open the ingest log")]
    Log(#[source] LogError),
    /// A handler's checkpoint could not be read at start.
    #[error("cannot read the checkpoint of handler {handler}")]
    Checkpoint {
        /// The handler.
        handler: &'static str,
        /// The cause.
        #[source]
        source: CheckpointError,
    },
    /// The HTTP address could not be bound.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The incident pipeline could not start (its store, or the API token file).
    #[error("cannot start the incident pipeline")]
    Incidents(#[source] crate::incident::handler::StartError),
    /// A task panicked (its message is on stderr); the others were stopped.
    #[error("the {0} task panicked")]
    TaskPanicked(String),
    /// A task that runs until shutdown ended before it.
    #[error("the {0} task ended before shutdown")]
    TaskEnded(String),
    /// Open batches were not all written within the shutdown grace period.
    #[error("shutdown grace of {0:?} ran out before every batch was written")]
    GraceExceeded(std::time::Duration),
}

/// Runs the source into the lake until `shutdown` turns true.
pub async fn run(settings: Settings, shutdown: watch::Receiver<bool>) -> Result<(), RunError> {
    let mut registry = Registry::with_prefix("selfheal_aggregator");
    let store = LakeStore::open(&settings.lake_location, &settings.lake_s3)
        .await
        .map_err(RunError::Lake)?;
    let writer = LakeWriter::new(store);
    writer.stats().register(&mut registry);
    tracing::info!(lake = %writer.store().location(), "LakeOpened");
    let mut handlers: Vec<SharedHandler> = vec![Arc::new(LakeHandler::new(writer))];
    let mut extras = Extras::default();
    if let Some(inc) = &settings.incidents {
        let started = crate::incident::start(inc, &mut registry)
            .await
            .map_err(RunError::Incidents)?;
        handlers.push(Arc::new(crate::incident::IncidentHandler(
            started.incidents.clone(),
        )));
        extras.routes = started.routes;
        let timers = started.incidents;
        extras.tasks.push((
            "incident timers".into(),
            Box::new(move |stop| Box::pin(timers.run_timers(stop))),
        ));
    }
    run_with_extras(settings, handlers, extras, registry, shutdown).await
}

/// A task that runs until the shutdown signal it is given turns true.
pub type ServiceTask = Box<
    dyn FnOnce(watch::Receiver<bool>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send,
>;

/// What handlers bring besides themselves: routes for the HTTP server (the incident API and
/// page) and tasks supervised like the readers (the incident timers).
#[derive(Default)]
pub struct Extras {
    /// Merged into the server's routes.
    pub routes: axum::Router,
    /// Run until shutdown, by name; one ending early stops the aggregator.
    pub tasks: Vec<(String, ServiceTask)>,
}

impl std::fmt::Debug for Extras {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.tasks.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Extras").field("tasks", &names).finish()
    }
}

/// The tasks `run` supervises, by name.
#[derive(Debug, Default)]
struct Tasks {
    set: JoinSet<()>,
    names: HashMap<tokio::task::Id, String>,
}

impl Tasks {
    fn spawn(&mut self, name: String, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Waits for the next task to end: its name, or the error when it panicked.
    async fn next(&mut self) -> Option<Result<String, RunError>> {
        let done = self.set.join_next_with_id().await?;
        Some(match done {
            Ok((id, ())) => Ok(self.names.remove(&id).unwrap_or_default()),
            Err(e) => {
                let name = self.names.remove(&e.id()).unwrap_or_default();
                if e.is_panic() {
                    tracing::error!(task = %name, "TaskPanicked");
                    Err(RunError::TaskPanicked(name))
                } else {
                    Ok(name)
                }
            }
        })
    }
}

/// Runs the configured source into `handlers` until `shutdown` turns true; `registry` holds the
/// handlers' own metrics already. The seam tests and later handlers use.
pub async fn run_with(
    settings: Settings,
    handlers: Vec<SharedHandler>,
    registry: Registry,
    shutdown: watch::Receiver<bool>,
) -> Result<(), RunError> {
    run_with_extras(settings, handlers, Extras::default(), registry, shutdown).await
}

/// [`run_with`], with the routes and tasks the handlers bring.
pub async fn run_with_extras(
    settings: Settings,
    handlers: Vec<SharedHandler>,
    extras: Extras,
    mut registry: Registry,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), RunError> {
    let consume = Arc::new(ConsumeMetrics::default());
    consume.register(&mut registry);
    let pipeline = Arc::new(PipelineMetrics::default());
    pipeline.register(&mut registry);
    // Follows `shutdown`, and is raised when a task fails, so the others drain the same way.
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Tasks::default();
    match settings.http_ingest.clone() {
        Some(ingest) => {
            start_http(
                &settings,
                &ingest,
                handlers,
                extras.routes,
                registry,
                consume,
                pipeline,
                &stop,
                &mut tasks,
            )
            .await?;
        }
        None => {
            start_kinesis(
                &settings,
                handlers,
                extras.routes,
                registry,
                consume,
                pipeline,
                &stop,
                &mut tasks,
            )
            .await?;
        }
    }
    for (name, task) in extras.tasks {
        tasks.spawn(name, task(stop.clone()));
    }
    let mut failure = tokio::select! {
        _ = shutdown.wait_for(|s| *s) => None,
        Some(ended) = tasks.next() => Some(match ended {
            Ok(name) => RunError::TaskEnded(name),
            Err(e) => e,
        }),
    };
    stop_tx.send_replace(true);
    let drained = tokio::time::timeout(settings.shutdown_grace, async {
        while let Some(ended) = tasks.next().await {
            if let Err(e) = ended {
                failure.get_or_insert(e);
            }
        }
    })
    .await;
    if let Some(e) = failure {
        return Err(e);
    }
    match drained {
        Ok(()) => {
            tracing::info!("AggregatorStopped");
            Ok(())
        }
        Err(_) => Err(RunError::GraceExceeded(settings.shutdown_grace)),
    }
}

/// The HTTP source: the ingest route and its log, one log reader per handler.
#[allow(clippy::too_many_arguments)]
async fn start_http(
    settings: &Settings,
    ingest: &IngestSettings,
    handlers: Vec<SharedHandler>,
    extra_routes: axum::Router,
    mut registry: Registry,
    consume: Arc<ConsumeMetrics>,
    pipeline: Arc<PipelineMetrics>,
    stop: &watch::Receiver<bool>,
    tasks: &mut Tasks,
) -> Result<(), RunError> {
    let ingest_metrics = Arc::new(IngestMetrics::default());
    ingest_metrics.register(&mut registry);
    let log_metrics = Arc::new(LogMetrics::default());
    log_metrics.register(&mut registry);
    let log_settings = ingest.log.clone();
    let log = tokio::task::spawn_blocking(move || IngestLog::open(log_settings, log_metrics))
        .await
        .map_err(|e| RunError::Log(LogError::Join(e)))?
        .map_err(RunError::Log)?;
    let log = Arc::new(log);
    let limits = BatchLimits {
        max_records: settings.consumer.batch_max_records,
        max_bytes: settings.consumer.batch_max_bytes,
        flush_interval: settings.consumer.flush_interval,
        retry_initial: settings.handler_retry.0,
        retry_max: settings.handler_retry.1,
    };
    // Every reader registers before any runs: no segment is deleted under one not started.
    let mut readers = Vec::new();
    for h in handlers {
        let name = crate::pipeline::Handler::name(&h);
        let delivery = Delivery::new(
            h,
            FileCheckpoints::new(ingest.log.dir.join("checkpoints").join(name)),
            DeadLetters::new(ingest.log.dir.join("dead-letter").join(name)),
            Arc::clone(&pipeline),
            settings.handler_retry,
        );
        let limits = BatchLimits {
            flush_interval: flush_interval_for(settings, name),
            ..limits
        };
        let reader = LogReader::register(Arc::clone(&log), delivery, limits)
            .await
            .map_err(|source| RunError::Checkpoint {
                handler: name,
                source,
            })?;
        readers.push((name, reader));
    }
    tracing::info!(path = %ingest.path, log = %ingest.log.dir.display(), "AggregatorStarting");
    let routes = crate::sources::http::router(ingest, Arc::clone(&log), consume, ingest_metrics)
        .merge(extra_routes);
    let (addr, server) = crate::server::serve(
        settings.listen_addr,
        Arc::new(registry),
        None,
        settings.health_max_age,
        routes,
        stop.clone(),
    )
    .await
    .map_err(|source| RunError::Listen {
        addr: settings.listen_addr,
        source,
    })?;
    tracing::info!(%addr, path = %ingest.path, "HttpServerListening");
    tasks.spawn("server".into(), join(server));
    for (name, reader) in readers {
        tasks.spawn(format!("{name} reader"), reader.run(stop.clone()));
    }
    Ok(())
}

/// The Kinesis source: one consumer per handler, and the server for `/metrics` and `/healthz`.
#[allow(clippy::too_many_arguments)]
async fn start_kinesis(
    settings: &Settings,
    handlers: Vec<SharedHandler>,
    extra_routes: axum::Router,
    registry: Registry,
    consume: Arc<ConsumeMetrics>,
    pipeline: Arc<PipelineMetrics>,
    stop: &watch::Receiver<bool>,
    tasks: &mut Tasks,
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
    let stream_dir = settings.checkpoint_dir.join(&settings.consumer.stream);
    tracing::info!(
        stream = %settings.consumer.stream,
        checkpoints = %settings.checkpoint_dir.display(),
        "AggregatorStarting"
    );
    let mut consumers = Vec::new();
    let mut progress = None;
    for (i, h) in handlers.into_iter().enumerate() {
        let name = crate::pipeline::Handler::name(&h);
        let mut checkpoints = FileCheckpoints::new(stream_dir.join(name));
        if name == "lake" {
            // Before handlers had namespaces the lake's checkpoints sat in the stream's dir.
            checkpoints = checkpoints.with_legacy(stream_dir.clone());
        }
        let delivery = Delivery::new(
            h,
            checkpoints,
            DeadLetters::new(
                settings
                    .checkpoint_dir
                    .join("dead-letter")
                    .join(&settings.consumer.stream)
                    .join(name),
            ),
            Arc::clone(&pipeline),
            settings.handler_retry,
        );
        let mut consumer_settings = settings.consumer.clone();
        consumer_settings.flush_interval = flush_interval_for(settings, name);
        let consumer = Consumer::new(
            client.clone(),
            consumer_settings,
            delivery,
            Arc::clone(&consume),
            i == 0,
        );
        progress.get_or_insert_with(|| consumer.progress());
        consumers.push((name, consumer));
    }
    let (addr, server) = crate::server::serve(
        settings.listen_addr,
        Arc::new(registry),
        progress,
        settings.health_max_age,
        extra_routes,
        stop.clone(),
    )
    .await
    .map_err(|source| RunError::Listen {
        addr: settings.listen_addr,
        source,
    })?;
    tracing::info!(%addr, "HttpServerListening");
    tasks.spawn("server".into(), join(server));
    for (name, consumer) in consumers {
        tasks.spawn(format!("{name} consumer"), consumer.run(stop.clone()));
    }
    Ok(())
}

/// How long a handler's open batch may wait: `[batch]`'s interval, but the incident handler's
/// own (`incidents.flush_interval_ms`, default 1 s) when shorter, since an incident waits for
/// its batch while the lake wants large objects.
fn flush_interval_for(settings: &Settings, handler: &str) -> std::time::Duration {
    let batch = settings.consumer.flush_interval;
    match &settings.incidents {
        Some(inc) if handler == crate::incident::HANDLER_NAME => inc.flush_interval.min(batch),
        _ => batch,
    }
}

/// Waits for a spawned task, re-raising its panic in the waiting task.
async fn join(task: tokio::task::JoinHandle<()>) {
    if let Err(e) = task.await
        && e.is_panic()
    {
        std::panic::resume_unwind(e.into_panic());
    }
}
