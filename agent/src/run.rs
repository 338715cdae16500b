//! The agent's main loop: every interval, collect → normalize → score (`detect`) → sample →
//! forward; serve `/metrics` and `/healthz`; on shutdown finish the cycle in hand, flush, and
//! return. Models are polled on a task of their own (S3 requests async, file reads and graph
//! compilation on a blocking thread) and swapped in between cycles.
//!
//! Forwarding is decoupled from the loop by the [`Spool`]: the loop only appends to it (a local
//! file write), and a [`Forwarder`] task drains it to Kinesis or HTTP at its own pace, so an
//! unreachable sink never stalls collection. On shutdown the loop stops first, then the forwarder
//! gets `shutdown_grace` to drain what the last cycle queued; the rest waits on disk for the next
//! start. `--print` ([`Output`]) is independent of all this: it prints every record.

use crate::collect::{Collector, CycleErrors};
use crate::config::Settings;
use crate::detect::{Detector, ModelEvent, ModelRegistry, ModelSource};
use crate::forward::http::HttpSink;
use crate::forward::kinesis::KinesisSink;
use crate::forward::{ForwardConfigError, ForwardStats, Forwarder, Sink, SinkKind};
use crate::model_mirror::{S3Mirror, S3Settings, s3_client};
use crate::normalize::Normalizer;
use crate::pods::{PodDirectory, PodStatsSnapshot, PodWatcher, PodsError, SharedPodDirectory};
use crate::procfs::CollectError;
use crate::sample::{Sampler, Selected};
use crate::server::{Health, serve};
use crate::spool::{Spool, SpoolError};
use crate::telemetry::{
    AgentMetrics, ErrorLabels, FamilyLabels, ForwardCollector, ModelInfoLabels, ModelLoadLabels,
};
use selfheal_core::Family;
use selfheal_core::schema::{Anomaly, Envelope, Payload, Record};
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The HTTP listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The pod identity source could not be set up (bad URL, unreadable CA file).
    #[error("cannot start the pod watcher")]
    Pods(#[source] PodsError),
    /// Writing records to the output failed (e.g. stdout closed).
    #[error("cannot write records")]
    Output(#[source] std::io::Error),
    /// The spool directory could not be opened.
    #[error("cannot open the spool")]
    Spool(#[source] SpoolError),
    /// The sink could not be set up.
    #[error("cannot set up the sink")]
    Sink(#[source] ForwardConfigError),
}

/// Where records go. The forwarding stage (Kinesis, HTTP) plugs in here.
pub enum Output {
    /// Drop them (metrics only).
    Discard,
    /// One JSON envelope per line, as a sampled record with probability 1.
    JsonLines(Box<dyn Write + Send>),
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Output::Discard => "Output::Discard",
            Output::JsonLines(_) => "Output::JsonLines",
        })
    }
}

impl Output {
    /// True when records are dropped (no `--print`).
    pub fn is_discard(&self) -> bool {
        matches!(self, Output::Discard)
    }

    /// Writes a cycle's records, then its anomalies.
    pub fn write(
        &mut self,
        records: Vec<Record>,
        anomalies: Vec<Anomaly>,
    ) -> Result<(), AgentError> {
        match self {
            Output::Discard => Ok(()),
            Output::JsonLines(w) => {
                let samples = records.into_iter().map(|record| Payload::Sample {
                    record,
                    inclusion_probability: 1.0,
                });
                for payload in samples.chain(anomalies.into_iter().map(Payload::Anomaly)) {
                    let env = Envelope::new(payload);
                    serde_json::to_writer(&mut *w, &env)
                        .map_err(|e| AgentError::Output(e.into()))?;
                    w.write_all(b"\n").map_err(AgentError::Output)?;
                }
                w.flush().map_err(AgentError::Output)
            }
        }
    }

    /// Flushes anything buffered.
    pub fn flush(&mut self) -> Result<(), AgentError> {
        match self {
            Output::Discard => Ok(()),
            Output::JsonLines(w) => w.flush().map_err(AgentError::Output),
        }
    }
}

/// The forward stage as the loop drives it: where selected envelopes go, and the forwarder task
/// draining the spool.
#[derive(Debug)]
struct Forwarding {
    dest: Destination,
    task: Option<tokio::task::JoinHandle<()>>,
    stop: watch::Sender<bool>,
    stats: Option<Arc<ForwardStats>>,
}

#[derive(Debug)]
enum Destination {
    None,
    Stdout(std::io::BufWriter<std::io::Stdout>),
    Spool(Arc<Spool>),
}

impl Forwarding {
    /// Opens the spool and starts the forwarder for the configured sink.
    async fn start(settings: &Settings) -> Result<Forwarding, AgentError> {
        let (stop, stop_rx) = watch::channel(false);
        let mut fwd = Forwarding {
            dest: Destination::None,
            task: None,
            stop,
            stats: None,
        };
        let kind = settings.forward.sink;
        if !kind.is_spooled() {
            if kind == SinkKind::Stdout {
                fwd.dest = Destination::Stdout(std::io::BufWriter::new(std::io::stdout()));
            }
            tracing::info!(sink = ?kind, "ForwardingConfigured");
            return Ok(fwd);
        }
        let spool = Arc::new(Spool::open(settings.spool.clone()).map_err(AgentError::Spool)?);
        let grace = settings.shutdown_grace;
        fn spawn<S: Sink>(
            spool: &Arc<Spool>,
            sink: S,
            settings: &Settings,
            stop: watch::Receiver<bool>,
            grace: Duration,
        ) -> (Arc<ForwardStats>, tokio::task::JoinHandle<()>) {
            let f = Forwarder::new(Arc::clone(spool), sink, settings.forward_settings.clone());
            (f.stats(), tokio::spawn(f.run(stop, grace)))
        }
        let (stats, task) = match kind {
            SinkKind::Kinesis => {
                let sink = KinesisSink::from_config(&settings.forward.kinesis)
                    .await
                    .map_err(AgentError::Sink)?;
                spawn(&spool, sink, settings, stop_rx, grace)
            }
            _ => {
                let sink =
                    HttpSink::from_config(&settings.forward.http).map_err(AgentError::Sink)?;
                spawn(&spool, sink, settings, stop_rx, grace)
            }
        };
        tracing::info!(sink = ?kind, spool = %settings.spool.dir.display(), queued = spool.depth(), "ForwardingConfigured");
        fwd.stats = Some(stats);
        fwd.task = Some(task);
        fwd.dest = Destination::Spool(spool);
        Ok(fwd)
    }

    fn spool_stats(&self) -> Option<Arc<crate::spool::SpoolStats>> {
        match &self.dest {
            Destination::Spool(s) => Some(Arc::clone(s.stats())),
            _ => None,
        }
    }

    /// Hands a cycle's selection on. Spool drops are counted by the spool itself.
    fn push(&mut self, selected: Vec<Selected>) -> Result<(), AgentError> {
        match &mut self.dest {
            Destination::None => Ok(()),
            Destination::Spool(spool) => {
                for s in &selected {
                    let _ = spool.push(&s.envelope);
                }
                Ok(())
            }
            Destination::Stdout(w) => {
                for s in &selected {
                    serde_json::to_writer(&mut *w, &s.envelope)
                        .map_err(|e| AgentError::Output(e.into()))?;
                    w.write_all(b"\n").map_err(AgentError::Output)?;
                }
                w.flush().map_err(AgentError::Output)
            }
        }
    }

    /// After the last cycle: syncs the spool, then lets the forwarder drain for the grace period.
    async fn finish(self, grace: Duration) {
        if let Destination::Spool(spool) = &self.dest {
            spool.sync();
        }
        self.stop.send_replace(true);
        if let Some(task) = self.task {
            // The forwarder bounds itself by `grace`; the margin covers its final sync.
            if tokio::time::timeout(grace + Duration::from_secs(1), task)
                .await
                .is_err()
            {
                tracing::warn!("ForwarderShutdownTimeout");
            }
        }
    }
}

fn file_label(e: &CollectError) -> String {
    let path = match e {
        CollectError::Read { path, .. } | CollectError::Parse { path, .. } => path,
    };
    path.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("?")
        .to_owned()
}

/// Logs and counts a cycle's errors: one line per failed file, at WARN the first time a file
/// fails and at DEBUG after, so a permanently missing file does not flood the log.
fn report_errors(
    metrics: &AgentMetrics,
    errs: &CycleErrors,
    first: &mut std::collections::HashSet<String>,
) {
    for e in &errs.errors {
        let file = file_label(e);
        let key = format!("{}:{file}", e.kind());
        metrics
            .collect_errors
            .get_or_create(&ErrorLabels {
                kind: e.kind(),
                file: file.clone(),
            })
            .inc();
        if first.len() < 1024 && first.insert(key) {
            tracing::warn!(error = %e, source = ?std::error::Error::source(e).map(|s| s.to_string()), "CollectError");
        } else {
            tracing::debug!(error = %e, "CollectError");
        }
    }
    metrics.pods_vanished.inc_by(errs.pods_vanished);
}

/// The collect → normalize part of the loop, usable on its own (`--once`, benches, tests).
#[derive(Debug)]
pub struct Pipeline {
    collector: Collector,
    normalizer: Normalizer,
    started: Instant,
    last_pods: (usize, usize),
}

impl Pipeline {
    /// A pipeline for `settings`. A host without a cgroup hierarchy is reported and collects
    /// node metrics only.
    pub fn new(settings: &Settings) -> Self {
        let (collector, err) = Collector::new(settings);
        if let Some(e) = err {
            tracing::warn!(error = %e, "CgroupUnavailable");
        } else if let Some(cg) = collector.cgroups() {
            tracing::info!(mode = ?cg.mode(), root = %cg.root().display(), "CgroupDetected");
        }
        Pipeline {
            collector,
            normalizer: Normalizer::new(settings.node_name.clone()),
            started: Instant::now(),
            last_pods: (0, 0),
        }
    }

    /// Pods found in the last cycle, and how many of them the pod directory did not know.
    pub fn last_pods(&self) -> (usize, usize) {
        self.last_pods
    }

    /// One cycle: read everything, turn it into records.
    pub fn cycle(&mut self, pods: &PodDirectory, errs: &mut CycleErrors) -> Vec<Record> {
        let ts_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let mono = self.started.elapsed().as_secs_f64();
        let snap = self.collector.collect(ts_ms, mono, errs);
        let unresolved = snap
            .pods
            .iter()
            .filter(|p| pods.get(&p.cgroup.uid).is_none())
            .count();
        self.last_pods = (snap.pods.len(), unresolved);
        self.normalizer.normalize(snap, pods)
    }

    /// The normalizer, for its statistics.
    pub fn normalizer(&self) -> &Normalizer {
        &self.normalizer
    }
}

/// The score stage as the loop drives it: a [`Detector`], and the model source — a
/// [`ModelRegistry`] over a directory, plus an [`S3Mirror`] filling that directory for an S3
/// source — either idle here or out on a task being polled. The poll task runs the mirror's
/// async S3 requests on the runtime and the registry's file reads and graph compilation on a
/// blocking thread, so neither delays a cycle.
#[derive(Debug)]
struct Scoring {
    detector: Detector,
    /// Registry root: the source directory, or the S3 mirror's cache.
    root: Option<PathBuf>,
    source: Option<ModelPoller>,
    /// A mirror with no ETags yet, to start over from if a poll task dies.
    fresh_mirror: Option<S3Mirror>,
    polling: Option<tokio::task::JoinHandle<PollOutcome>>,
    poll_every: Duration,
    next_poll: Instant,
    versions: HashMap<Family, String>,
}

/// How long the agent waits at start for the first model poll before running unscored cycles.
const FIRST_POLL_WAIT: Duration = Duration::from_secs(10);

/// What a poll task carries out and brings back.
#[derive(Debug)]
struct ModelPoller {
    registry: ModelRegistry,
    mirror: Option<S3Mirror>,
}

/// A finished poll: the poller to put back (`None` if loading panicked), its events, and how
/// many source requests failed.
#[derive(Debug)]
struct PollOutcome {
    poller: Option<ModelPoller>,
    events: Vec<ModelEvent>,
    source_errors: u64,
}

impl ModelPoller {
    async fn poll(mut self) -> PollOutcome {
        let source_errors = match self.mirror.as_mut() {
            Some(mirror) => mirror.sync().await.errors.len() as u64,
            None => 0,
        };
        let ModelPoller {
            mut registry,
            mirror,
        } = self;
        match tokio::task::spawn_blocking(move || {
            let events = registry.poll();
            (registry, events)
        })
        .await
        {
            Ok((registry, events)) => PollOutcome {
                poller: Some(ModelPoller { registry, mirror }),
                events,
                source_errors,
            },
            Err(e) => {
                tracing::error!(error = %e, "ModelPollFailed");
                PollOutcome {
                    poller: None,
                    events: Vec::new(),
                    source_errors,
                }
            }
        }
    }
}

impl Scoring {
    async fn new(settings: &Settings) -> Self {
        let (root, mirror) = match &settings.models_source {
            None => (None, None),
            Some(ModelSource::Dir(dir)) => (Some(dir.clone()), None),
            Some(ModelSource::S3(store)) => {
                let client = s3_client(&S3Settings {
                    region: settings.models.region.clone(),
                    endpoint_url: settings.models.endpoint_url.clone(),
                })
                .await;
                let cache = settings.models.cache_dir.clone();
                tracing::info!(%store, cache = %cache.display(), "ModelSourceS3");
                (
                    Some(cache.clone()),
                    Some(S3Mirror::new(client, store.clone(), cache)),
                )
            }
        };
        Scoring {
            detector: Detector::new(settings.models.window_records),
            source: root.clone().map(|root| ModelPoller {
                registry: ModelRegistry::new(root),
                mirror: mirror.clone(),
            }),
            root,
            fresh_mirror: mirror,
            polling: None,
            poll_every: Duration::from_secs_f64(settings.models.poll_secs),
            next_poll: Instant::now(),
            versions: HashMap::new(),
        }
    }

    /// Between cycles: starts a poll when one is due, and applies a finished one. With `wait`,
    /// waits for the poll, at most [`FIRST_POLL_WAIT`] (at start, so the first cycle is scored).
    async fn between_cycles(&mut self, metrics: &AgentMetrics, wait: bool) {
        if self.polling.is_none()
            && Instant::now() >= self.next_poll
            && let Some(poller) = self.source.take()
        {
            self.next_poll = Instant::now() + self.poll_every;
            self.polling = Some(tokio::spawn(poller.poll()));
        }
        let Some(handle) = self.polling.as_mut() else {
            return;
        };
        let finished = if wait {
            // Bounded: an unreachable store must not hold the first cycle back for long; the
            // models arrive between later cycles instead.
            match tokio::time::timeout(FIRST_POLL_WAIT, &mut *handle).await {
                Ok(finished) => finished,
                Err(_) => {
                    tracing::warn!(wait_secs = FIRST_POLL_WAIT.as_secs(), "ModelPollSlow");
                    return;
                }
            }
        } else if handle.is_finished() {
            handle.await
        } else {
            return;
        };
        self.polling = None;
        let outcome = finished.unwrap_or_else(|e| {
            tracing::error!(error = %e, "ModelPollFailed");
            PollOutcome {
                poller: None,
                events: Vec::new(),
                source_errors: 0,
            }
        });
        metrics.model_source_errors.inc_by(outcome.source_errors);
        self.apply(&outcome.events, metrics);
        // After a panic, start over with a fresh registry (all reloaded).
        self.source = outcome.poller.or_else(|| {
            self.root.clone().map(|root| ModelPoller {
                registry: ModelRegistry::new(root),
                mirror: self.fresh_mirror.clone(),
            })
        });
    }

    fn apply(&mut self, events: &[ModelEvent], metrics: &AgentMetrics) {
        for event in events {
            let (family, result) = match event {
                ModelEvent::Loaded { family, scorer } => {
                    let version = scorer.manifest().version.clone();
                    if let Some(old) = self.versions.insert(*family, version.clone()) {
                        metrics.model_info.remove(&ModelInfoLabels {
                            family: family.as_str(),
                            version: old,
                        });
                    }
                    metrics
                        .model_info
                        .get_or_create(&ModelInfoLabels {
                            family: family.as_str(),
                            version,
                        })
                        .set(1);
                    (*family, "loaded")
                }
                ModelEvent::Refused { family, .. } => (*family, "refused"),
            };
            metrics
                .model_loads
                .get_or_create(&ModelLoadLabels {
                    family: family.as_str(),
                    result,
                })
                .inc();
        }
        self.detector.apply(events);
    }

    /// Scores a cycle's records and counts what happened.
    fn detect(&mut self, records: &[Record], metrics: &AgentMetrics) -> Vec<Anomaly> {
        let t0 = std::time::Instant::now();
        let detection = self.detector.detect(records);
        metrics.score_duration.observe(t0.elapsed().as_secs_f64());
        for a in &detection.anomalies {
            metrics
                .anomalies
                .get_or_create(&FamilyLabels {
                    family: a.record.family.as_str(),
                })
                .inc();
        }
        for e in &detection.errors {
            if let crate::detect::DetectError::Score { family, .. } = e {
                metrics
                    .score_errors
                    .get_or_create(&FamilyLabels {
                        family: family.as_str(),
                    })
                    .inc();
            }
        }
        detection.anomalies
    }
}

/// Runs the agent until `shutdown` turns true.
pub async fn run(
    settings: Settings,
    mut output: Output,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let mut forwarding = Forwarding::start(&settings).await?;
    let mut sampler = Sampler::new(settings.sampling.clone());
    let sampler_stats = Arc::new(Mutex::new(sampler.stats()));
    let mut metrics = AgentMetrics::new();
    metrics
        .registry_mut()
        .register_collector(Box::new(ForwardCollector {
            spool: forwarding.spool_stats(),
            forward: forwarding.stats.clone(),
            sampler: Arc::clone(&sampler_stats),
        }));
    let metrics = Arc::new(metrics);
    let health = Arc::new(Health::new(settings.interval * 3));
    let (addr, server) = serve(
        settings.listen_addr,
        metrics.clone(),
        health.clone(),
        shutdown.clone(),
    )
    .await
    .map_err(|source| AgentError::Bind {
        addr: settings.listen_addr,
        source,
    })?;
    tracing::info!(%addr, node = %settings.node_name, interval_secs = settings.interval.as_secs_f64(), "AgentStarted");

    let watcher = PodWatcher::new(&settings.pods, &settings.node_name).map_err(AgentError::Pods)?;
    let (pods, pod_stats) = match watcher {
        Some(w) => {
            let dir = w.directory();
            let stats = w.stats();
            tokio::spawn(w.run(shutdown.clone()));
            (dir, Some(stats))
        }
        None => {
            tracing::info!("PodIdentityDisabled");
            (SharedPodDirectory::default(), None)
        }
    };
    let mut prev_pod_stats = PodStatsSnapshot::default();
    let mut pipeline = Pipeline::new(&settings);
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut warned = std::collections::HashSet::new();
    let mut prev_resets = 0;
    let mut prev_non_finite = 0;
    let mut scoring = Scoring::new(&settings).await;
    scoring.between_cycles(&metrics, true).await;
    let result = loop {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => break Ok(()),
            _ = ticker.tick() => {}
        }
        scoring.between_cycles(&metrics, false).await;
        let t0 = std::time::Instant::now();
        let mut errs = CycleErrors::default();
        let records = {
            let dir = pods.read();
            let records = pipeline.cycle(&dir, &mut errs);
            if pipeline.last_pods().1 > 0 && dir.is_synced() {
                // A pod started since the last list: ask for a (rate-limited) re-list.
                dir.request_relist();
            }
            records
        };
        if let Some(stats) = &pod_stats {
            let now = stats.snapshot();
            metrics
                .pod_list_errors
                .inc_by(now.list_errors_total - prev_pod_stats.list_errors_total);
            metrics
                .pod_watch_errors
                .inc_by(now.watch_errors_total - prev_pod_stats.watch_errors_total);
            metrics
                .pod_relists
                .inc_by(now.relists_total - prev_pod_stats.relists_total);
            prev_pod_stats = now;
        }
        metrics.cycle_duration.observe(t0.elapsed().as_secs_f64());
        report_errors(&metrics, &errs, &mut warned);
        for r in &records {
            metrics
                .records
                .get_or_create(&FamilyLabels {
                    family: r.family.as_str(),
                })
                .inc();
        }
        let stats = pipeline.normalizer().stats();
        metrics
            .counter_resets
            .inc_by(stats.counter_resets - prev_resets);
        metrics
            .non_finite_values
            .inc_by(stats.non_finite - prev_non_finite);
        prev_resets = stats.counter_resets;
        prev_non_finite = stats.non_finite;
        let (n_pods, unresolved) = pipeline.last_pods();
        metrics.pods.set(n_pods as i64);
        metrics.pods_unresolved.set(unresolved as i64);
        metrics
            .series
            .set(pipeline.normalizer().series_count() as i64);
        let anomalies = scoring.detect(&records, &metrics);
        // Printing sees every record; the sampler takes them after.
        let printed = (!output.is_discard()).then(|| (records.clone(), anomalies.clone()));
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let selected = sampler.select(now_ms, records, anomalies);
        *sampler_stats.lock().unwrap_or_else(|p| p.into_inner()) = sampler.stats();
        // Spool first, print second: whatever `--print` showed is already on disk.
        if let Err(e) = forwarding.push(selected) {
            break Err(e);
        }
        if let Some((records, anomalies)) = printed
            && let Err(e) = output.write(records, anomalies)
        {
            break Err(e);
        }
        metrics.cycles.inc();
        metrics.last_cycle_timestamp.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        health.cycle_done();
    };
    tracing::info!("AgentStopping");
    let flushed = output.flush();
    forwarding.finish(settings.shutdown_grace).await;
    let _ = tokio::time::timeout(settings.shutdown_grace, server).await;
    tracing::info!("AgentStopped");
    result.and(flushed)
}
