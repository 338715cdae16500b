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
use prometheus_client::registry::Registry;
use selfheal_lake::{LakeStore, LakeWriter, StoreError};
use selfheal_runtime::server::{AdminMetrics, AdminServer, AlwaysHealthy, Health, HealthCheck};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Why the aggregator stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The lake could not be opened.
    #[error("cannot open the lake")]
    Lake(#[source] StoreError),
    /// The HTTP ingest log could not be opened.
    #[error("cannot open the ingest log")]
    Log(#[source] LogError),
    /// The ingest credentials could not be loaded.
    #[error("cannot set up ingest authentication")]
    Auth(#[source] crate::auth::AuthError),
    /// The ingest server's TLS files could not be loaded.
    #[error("cannot set up TLS on the ingest server")]
    Tls(#[source] selfheal_runtime::conn::TlsError),
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
    /// A notification channel could not be set up.
    #[error("cannot set up notifications")]
    Notify(#[source] crate::notify::NotifyError),
    /// The healing controller could not start (its dry-run log, its action records).
    #[error("cannot start the healing controller")]
    Heal(#[source] crate::heal::controller::StartError),
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
        if let Some(n) = &settings.notify {
            let (notifier, workers) = crate::notify::start(n, &mut registry)
                .await
                .map_err(RunError::Notify)?;
            started.incidents.notify_with(notifier);
            // Supervised like the readers; at shutdown it flushes its queues within
            // notify.flush_timeout_secs.
            extras.tasks.push((
                "notifier".into(),
                Box::new(move |stop| Box::pin(workers.run(stop))),
            ));
        }
        if let Some(heal) = &settings.heal {
            let (routes, tasks) =
                crate::heal::controller::start(started.incidents.clone(), heal, &mut registry)
                    .await
                    .map_err(RunError::Heal)?;
            extras.routes = extras.routes.merge(routes);
            extras.tasks.extend(tasks);
        }
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
    let auth = crate::auth::Authenticator::new(&ingest.auth).map_err(RunError::Auth)?;
    let tls = ingest
        .conn
        .tls
        .clone()
        .map(selfheal_runtime::conn::ReloadingTls::load)
        .transpose()
        .map_err(RunError::Tls)?
        .map(Arc::new);
    let conn_metrics = Arc::new(selfheal_runtime::conn::ConnMetrics::default());
    conn_metrics.register(&mut registry);
    let routes = crate::sources::http::router(
        ingest,
        Arc::new(auth),
        Arc::clone(&log),
        consume,
        ingest_metrics,
    );
    if let Some(tls) = &tls {
        // A rotated certificate (or client CA) takes effect for new connections.
        let watch = Arc::clone(tls).watch(
            selfheal_runtime::conn::ReloadingTls::DEFAULT_CHECK_EVERY,
            Arc::clone(&conn_metrics),
            stop.clone(),
        );
        tasks.spawn("tls reload".into(), watch);
    }
    let bounded = selfheal_runtime::conn::Bounded {
        settings: ingest.conn.clone(),
        tls,
        metrics: conn_metrics,
    };
    // The ingest port runs its own connection loop (TLS, its connection cap and head timeout:
    // `selfheal_runtime::conn`) around the runtime's admin routes. No upstream to be wedged on:
    // the server answering is the health.
    let app = AdminServer::new(Arc::new(registry))
        .health(AlwaysHealthy("http ingest"))
        .merge(routes.merge(extra_routes))
        .into_router();
    let listen_err = |source| RunError::Listen {
        addr: settings.listen_addr,
        source,
    };
    let listener = tokio::net::TcpListener::bind(settings.listen_addr)
        .await
        .map_err(listen_err)?;
    let addr = listener.local_addr().map_err(listen_err)?;
    let server = tokio::spawn(selfheal_runtime::conn::serve(
        listener,
        app,
        bounded,
        stop.clone(),
    ));
    tracing::info!(%addr, path = %ingest.path, tls = ingest.conn.tls.is_some(), "HttpServerListening");
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
    mut registry: Registry,
    consume: Arc<ConsumeMetrics>,
    pipeline: Arc<PipelineMetrics>,
    stop: &watch::Receiver<bool>,
    tasks: &mut Tasks,
) -> Result<(), RunError> {
    let sdk = selfheal_runtime::aws::sdk_config(&selfheal_runtime::aws::AwsSettings {
        region: settings.kinesis_region.clone(),
        endpoint_url: settings.kinesis_endpoint_url.clone(),
        // The consumer retries with its own backoff and counts each retry.
        retry: selfheal_runtime::aws::SdkRetry::Disabled,
        ..Default::default()
    })
    .await;
    let client = aws_sdk_kinesis::Client::new(&sdk);
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
    let admin = AdminMetrics::register(&mut registry);
    let mut server = AdminServer::new(Arc::new(registry))
        .metrics(admin)
        .merge(extra_routes);
    if let Some(progress) = progress {
        server = server.health(kinesis_health(progress, settings.health_max_age));
    }
    let (addr, server) = server
        .serve(settings.listen_addr, stop.clone().into())
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

/// `/healthz` with the Kinesis source: 200 while the consumer keeps talking to Kinesis (a
/// successful ListShards, GetShardIterator or GetRecords within `max_age`) and 503 after, so a
/// consumer wedged on a dead endpoint or bad credentials gets its pod restarted by the liveness
/// probe.
fn kinesis_health(progress: watch::Receiver<Instant>, max_age: Duration) -> impl HealthCheck {
    move || {
        let age = progress.borrow().elapsed();
        let healthy = age <= max_age;
        let word = if healthy { "ok" } else { "stale" };
        Health {
            healthy,
            message: format!("{word}: last Kinesis call {:.1}s ago", age.as_secs_f64()),
        }
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
