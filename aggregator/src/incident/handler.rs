//! The incident pipeline as the aggregator runs it: the [`Engine`] behind an async lock, its
//! [`IncidentStore`], the clock, the timer task and the metrics. [`Incidents`] is the shared
//! handle (the pipeline handler, the timer task and the HTTP API hold clones); [`IncidentHandler`]
//! is its [`Handler`].
//!
//! One lock orders everything: a batch, a tick or an API call computes its update and writes it
//! while holding it, so the store sees changes in the order the engine made them. A write that
//! fails leaves the engine ahead of the store; the engine is then rebuilt from the store before
//! the error is returned, so the batch's retry counts its records again, exactly once.
//!
//! Authentication: the records this handler sees come from the Kinesis stream (IAM) or from the
//! HTTP ingest route, which authenticates every agent and attributes its records to its node
//! ([`crate::auth`]); the API's writes (ack, resolve, silences) need a bearer token
//! ([`crate::api`]).

use super::IncidentSettings;
use super::engine::{BatchStats, Engine, EngineError, Notification, Update};
use crate::pipeline::{Batch, Handler, HandlerError};
use crate::store::{IncidentStore, StoreError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use selfheal_core::incident::{Actor, Incident, IncidentId, MutedBy, Severity, Silence, State};
use selfheal_core::schema::Envelope;
use selfheal_runtime::chain::ErrorChain;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, watch};

/// The aggregator's clock, injectable so tests can run the timers on paused tokio time.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Now, unix milliseconds.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}

/// A clock that starts at `base_ms` and follows tokio's (pausable) monotonic time.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    base_ms: i64,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `base_ms` now.
    pub fn starting_at(base_ms: i64) -> TokioClock {
        TokioClock {
            base_ms,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        self.base_ms + self.start.elapsed().as_millis() as i64
    }
}

/// Labels by severity.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SeverityLabels {
    /// `info`, `warning` or `critical`.
    pub severity: &'static str,
}

/// Labels by mute kind.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MuteLabels {
    /// `silence` or `inhibition`.
    pub by: &'static str,
}

/// Labels of notifications.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotifyLabels {
    /// `opened`, `updated`, `repeat` or `resolved`.
    pub reason: &'static str,
    /// `true` when a mute held it back.
    pub suppressed: &'static str,
}

/// The incident pipeline's metrics (`selfheal_aggregator_incidents_*`).
#[derive(Debug)]
pub struct IncidentMetrics {
    /// Active incidents by severity.
    pub open: Family<SeverityLabels, Gauge>,
    /// Active incidents muted, by what mutes them.
    pub muted: Family<MuteLabels, Gauge>,
    /// Anomalies counted into incidents.
    pub anomalies: Counter,
    /// Anomalies dropped as duplicates of a record already counted.
    pub deduplicated: Counter,
    /// Anomalies that joined a silenced incident.
    pub silenced: Counter,
    /// Anomalies that joined an inhibited incident.
    pub inhibited: Counter,
    /// Incidents opened.
    pub opened: Counter,
    /// Anomalies refused for a score or threshold that is not a finite number.
    pub invalid: Counter,
    /// Notifications due, by reason and whether suppressed.
    pub notifications: Family<NotifyLabels, Counter>,
    /// Seconds from a batch reaching the handler to its incident update being durable.
    pub decision_latency: Histogram,
    /// Store writes that failed (each retried by the source).
    pub store_errors: Counter,
    /// Record ids held for deduplication.
    pub seen_ids: Gauge,
}

impl Default for IncidentMetrics {
    fn default() -> Self {
        IncidentMetrics {
            open: Family::default(),
            muted: Family::default(),
            anomalies: Counter::default(),
            deduplicated: Counter::default(),
            silenced: Counter::default(),
            inhibited: Counter::default(),
            opened: Counter::default(),
            invalid: Counter::default(),
            notifications: Family::default(),
            decision_latency: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            store_errors: Counter::default(),
            seen_ids: Gauge::default(),
        }
    }
}

impl IncidentMetrics {
    /// Registers every metric (prefix `incidents`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("incidents");
        r.register("open", "Active incidents by severity", self.open.clone());
        r.register(
            "muted",
            "Active incidents muted, by what",
            self.muted.clone(),
        );
        r.register(
            "anomalies",
            "Anomalies counted into incidents",
            self.anomalies.clone(),
        );
        r.register(
            "anomalies_deduplicated",
            "Anomalies dropped as redeliveries of a record already counted",
            self.deduplicated.clone(),
        );
        r.register(
            "anomalies_silenced",
            "Anomalies that joined a silenced incident",
            self.silenced.clone(),
        );
        r.register(
            "anomalies_inhibited",
            "Anomalies that joined an inhibited incident",
            self.inhibited.clone(),
        );
        r.register("opened", "Incidents opened", self.opened.clone());
        r.register(
            "anomalies_invalid",
            "Anomalies refused: score or threshold not a finite number",
            self.invalid.clone(),
        );
        r.register(
            "notifications",
            "Notifications due, by reason and whether a mute held them back",
            self.notifications.clone(),
        );
        r.register(
            "decision_latency_seconds",
            "From a batch reaching the incident handler to its update being durable",
            self.decision_latency.clone(),
        );
        r.register(
            "store_errors",
            "Incident store writes that failed",
            self.store_errors.clone(),
        );
        r.register(
            "seen_ids",
            "Record ids held for deduplication",
            self.seen_ids.clone(),
        );
    }
}

/// Why an API or healing request failed.
#[derive(Debug, thiserror::Error)]
pub enum IncidentError {
    /// Refused by the engine (not active, lifecycle, matcher, unknown silence).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The store failed; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug)]
struct Shared<S> {
    engine: Mutex<Engine>,
    store: S,
    metrics: Arc<IncidentMetrics>,
    clock: Arc<dyn Clock>,
    /// A write failed and the engine is ahead of the store.
    stale: AtomicBool,
    /// Where durable notification moments go, once set.
    notifier: std::sync::OnceLock<crate::notify::Notifier>,
}

/// The shared handle on the incident pipeline.
#[derive(Debug)]
pub struct Incidents<S> {
    inner: Arc<Shared<S>>,
}

impl<S> Clone for Incidents<S> {
    fn clone(&self) -> Self {
        Incidents {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S: IncidentStore> Incidents<S> {
    /// Restores the engine from `store` and returns the handle.
    pub async fn start(
        settings: IncidentSettings,
        store: S,
        clock: Arc<dyn Clock>,
        metrics: Arc<IncidentMetrics>,
    ) -> Result<Incidents<S>, IncidentError> {
        let engine = restore(&settings, &store, clock.now_ms()).await?;
        tracing::info!(
            active = engine.active().count(),
            seen_ids = engine.seen().len(),
            silences = engine.silences().iter().count(),
            "IncidentsRestored"
        );
        let me = Incidents {
            inner: Arc::new(Shared {
                engine: Mutex::new(engine),
                store,
                metrics,
                clock,
                stale: AtomicBool::new(false),
                notifier: std::sync::OnceLock::new(),
            }),
        };
        me.refresh_gauges(&*me.inner.engine.lock().await);
        Ok(me)
    }

    /// Sends every notification moment from now on to `notifier` (opened, updated, repeat,
    /// resolved, and moves to escalated), once its update is durable; see [`crate::notify`].
    /// A second call is ignored.
    pub fn notify_with(&self, notifier: crate::notify::Notifier) {
        if self.inner.notifier.set(notifier).is_err() {
            tracing::warn!("IncidentNotifierAlreadySet");
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<IncidentMetrics> {
        &self.inner.metrics
    }

    /// Now, by the pipeline's clock.
    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// Applies a batch and writes its update; returns once it is durable.
    pub async fn apply_batch<'a>(
        &self,
        records: impl IntoIterator<Item = &'a Envelope>,
    ) -> Result<BatchStats, StoreError> {
        let arrived = std::time::Instant::now();
        let mut engine = self.inner.engine.lock().await;
        self.resync(&mut engine).await?;
        let now = self.now_ms();
        let (up, stats) = engine.apply(records, now);
        self.write(&mut engine, &up).await?;
        let m = &self.inner.metrics;
        m.anomalies.inc_by(stats.anomalies);
        m.deduplicated.inc_by(stats.duplicates);
        m.opened.inc_by(stats.opened);
        if stats.invalid > 0 {
            m.invalid.inc_by(stats.invalid);
            tracing::warn!(count = stats.invalid, "IncidentAnomalyInvalid");
        }
        m.silenced.inc_by(stats.silenced);
        m.inhibited.inc_by(stats.inhibited);
        self.refresh_gauges(&engine);
        m.decision_latency.observe(arrived.elapsed().as_secs_f64());
        Ok(stats)
    }

    /// Runs the timers once.
    pub async fn tick(&self) -> Result<Vec<Notification>, StoreError> {
        let mut engine = self.inner.engine.lock().await;
        self.resync(&mut engine).await?;
        let (up, notes) = engine.tick(self.now_ms());
        self.write(&mut engine, &up).await?;
        for n in &notes {
            self.inner
                .metrics
                .notifications
                .get_or_create(&NotifyLabels {
                    reason: reason_str(n.reason),
                    suppressed: if n.suppressed { "true" } else { "false" },
                })
                .inc();
            tracing::info!(incident = %n.incident, reason = reason_str(n.reason), suppressed = n.suppressed, "IncidentNotificationDue");
        }
        self.refresh_gauges(&engine);
        Ok(notes)
    }

    /// Moves an incident through its lifecycle and returns it as written.
    pub async fn transition(
        &self,
        id: &IncidentId,
        to: State,
        cause: &str,
        actor: Actor,
    ) -> Result<Incident, IncidentError> {
        let mut engine = self.inner.engine.lock().await;
        self.resync(&mut engine).await?;
        let up = engine.transition(id, to, cause, actor, self.now_ms())?;
        self.write(&mut engine, &up).await?;
        self.refresh_gauges(&engine);
        up.incidents
            .into_iter()
            .find(|i| &i.id == id)
            .ok_or_else(|| IncidentError::Engine(EngineError::NotActive(id.clone())))
    }

    /// Appends healing's events to an active incident and optionally moves it, in one write;
    /// returns the incident as written.
    pub async fn annotate(
        &self,
        id: &IncidentId,
        events: Vec<(selfheal_core::incident::EventKind, String)>,
        to: Option<(State, String)>,
    ) -> Result<Incident, IncidentError> {
        let mut engine = self.inner.engine.lock().await;
        self.resync(&mut engine).await?;
        let up = engine.annotate(id, events, to, Actor::Healer, self.now_ms())?;
        self.write(&mut engine, &up).await?;
        self.refresh_gauges(&engine);
        up.incidents
            .into_iter()
            .find(|i| &i.id == id)
            .ok_or_else(|| IncidentError::Engine(EngineError::NotActive(id.clone())))
    }

    /// Copies of the active incidents `keep` selects (healing's view; the filter runs under
    /// the lock so only the selected ones are cloned).
    pub async fn select(&self, mut keep: impl FnMut(&Incident) -> bool) -> Vec<Incident> {
        let engine = self.inner.engine.lock().await;
        engine.active().filter(|i| keep(i)).cloned().collect()
    }

    /// An active incident, by id.
    pub async fn active(&self, id: &IncidentId) -> Option<Incident> {
        self.inner.engine.lock().await.get(id).cloned()
    }

    /// Creates or replaces a silence.
    pub async fn put_silence(&self, s: Silence) -> Result<Silence, IncidentError> {
        let mut engine = self.inner.engine.lock().await;
        self.resync(&mut engine).await?;
        let up = engine.put_silence(s.clone(), self.now_ms())?;
        self.write(&mut engine, &up).await?;
        self.refresh_gauges(&engine);
        Ok(s)
    }

    /// Expires a silence now.
    pub async fn expire_silence(&self, id: &str, by: &str) -> Result<Silence, IncidentError> {
        let mut engine = self.inner.engine.lock().await;
        self.resync(&mut engine).await?;
        let up = engine.expire_silence(id, by, self.now_ms())?;
        self.write(&mut engine, &up).await?;
        self.refresh_gauges(&engine);
        up.silences
            .into_iter()
            .next()
            .ok_or_else(|| IncidentError::Engine(EngineError::NoSilence(id.to_owned())))
    }

    /// The timer task: ticks every `tick_ms` and prunes the store every hour, until `shutdown`.
    pub async fn run_timers(self, mut shutdown: watch::Receiver<bool>) {
        let (tick_ms, retention_ms) = {
            let e = self.inner.engine.lock().await;
            (e.settings().tick_ms, e.settings().retention_ms)
        };
        let mut tick = tokio::time::interval(Duration::from_millis(tick_ms.max(1) as u64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = self.tick().await {
                        tracing::warn!(error = %ErrorChain::new(&e), "IncidentTickError");
                    }
                }
                _ = prune.tick() => {
                    let now = self.now_ms();
                    let horizon = self.inner.engine.lock().await.seen().horizon_ms(now);
                    match self.inner.store.prune(now - retention_ms, horizon).await {
                        Ok(p) => tracing::info!(incidents = p.incidents, silences = p.silences, seen_ids = p.seen_ids, "IncidentStorePruned"),
                        Err(e) => tracing::warn!(error = %ErrorChain::new(&e), "IncidentStorePruneError"),
                    }
                }
                () = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
            }
        }
    }

    async fn write(&self, engine: &mut Engine, up: &Update) -> Result<(), StoreError> {
        let Err(e) = self.inner.store.apply(up).await else {
            if let Some(n) = self.inner.notifier.get() {
                n.enqueue(crate::notify::moments(up));
            }
            return Ok(());
        };
        self.inner.metrics.store_errors.inc();
        tracing::warn!(error = %ErrorChain::new(&e), "IncidentStoreWriteError");
        // The engine ran ahead of the store: go back to what the store holds, so the retry
        // counts the batch again (once).
        self.inner.stale.store(true, Ordering::SeqCst);
        self.resync(engine).await?;
        Err(e)
    }

    /// Rebuilds the engine from the store if a failed write left it ahead; until that works,
    /// every call fails (and its batch is retried), so no record is taken as seen that the
    /// store never counted.
    async fn resync(&self, engine: &mut Engine) -> Result<(), StoreError> {
        if !self.inner.stale.load(Ordering::SeqCst) {
            return Ok(());
        }
        let settings = engine.settings().clone();
        match restore(&settings, &self.inner.store, self.now_ms()).await {
            Ok(fresh) => {
                *engine = fresh;
                self.inner.stale.store(false, Ordering::SeqCst);
                Ok(())
            }
            Err(IncidentError::Store(e)) => Err(e),
            Err(IncidentError::Engine(e)) => {
                // Only a silence whose matcher no longer compiles can get here; it was
                // accepted once, so this is a broken invariant worth a loud log.
                tracing::error!(error = %e, "IncidentEngineRestoreError");
                Ok(())
            }
        }
    }

    fn refresh_gauges(&self, engine: &Engine) {
        let m = &self.inner.metrics;
        for sev in Severity::ALL {
            let n = engine.active().filter(|i| i.severity == sev).count();
            m.open
                .get_or_create(&SeverityLabels {
                    severity: sev.as_str(),
                })
                .set(n as i64);
        }
        let (mut sil, mut inh) = (0, 0);
        for i in engine.active() {
            match i.muted {
                Some(MutedBy::Silence { .. }) => sil += 1,
                Some(MutedBy::Inhibition { .. }) => inh += 1,
                None => {}
            }
        }
        m.muted
            .get_or_create(&MuteLabels { by: "silence" })
            .set(sil);
        m.muted
            .get_or_create(&MuteLabels { by: "inhibition" })
            .set(inh);
        m.seen_ids.set(engine.seen().len() as i64);
    }
}

async fn restore<S: IncidentStore>(
    settings: &IncidentSettings,
    store: &S,
    now_ms: i64,
) -> Result<Engine, IncidentError> {
    let probe = super::dedup::SeenIds::new(
        settings.dedup_window_ms,
        settings.dedup_bucket_ms,
        settings.dedup_max_ids,
    );
    let snap = store
        .load(probe.horizon_ms(now_ms), now_ms - settings.retention_ms)
        .await?;
    Engine::new(settings.clone(), snap).map_err(|e| IncidentError::Engine(EngineError::from(e)))
}

fn reason_str(r: selfheal_core::incident::NotifyReason) -> &'static str {
    use selfheal_core::incident::NotifyReason::*;
    match r {
        Opened => "opened",
        Updated => "updated",
        Repeat => "repeat",
        Resolved => "resolved",
    }
}

/// The pipeline as a pipeline [`Handler`], named `incidents`: its own reader and checkpoints on
/// each source, beside the lake's. A batch is done once its update is durable in the store.
///
/// Store failures are classified by [`StoreError::is_batch_fault`]: the store refusing what this
/// batch made (an item over DynamoDB's size limit, a value SQLite cannot hold) will refuse it
/// every time, so the batch is poison and set aside (its records kept in the dead-letter file);
/// anything else (the store down, locked, throttled, a disk full, a corrupt or newer store) is
/// outside the batch and retried, holding back this handler only.
#[derive(Debug)]
pub struct IncidentHandler<S>(pub Incidents<S>);

impl<S: IncidentStore> Handler for IncidentHandler<S> {
    fn name(&self) -> &'static str {
        super::HANDLER_NAME
    }

    async fn handle(&self, batch: &Batch) -> Result<(), HandlerError> {
        match self
            .0
            .apply_batch(batch.records.iter().map(|r| &r.envelope))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_batch_fault() => Err(HandlerError::poison(e)),
            Err(e) => Err(HandlerError::retryable(e)),
        }
    }
}

/// What [`start`] hands the aggregator: the pipeline handler, the API and page routes, and the
/// timer task (to be run until shutdown).
#[derive(Debug)]
pub struct Started {
    /// The shared handle.
    pub incidents: Incidents<crate::store::AnyStore>,
    /// The API and page.
    pub routes: axum::Router,
}

/// Why the incident pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened or the engine restored from it.
    #[error("cannot restore the incident pipeline from its store")]
    Restore(#[source] IncidentError),
    /// The API token file could not be read or holds no usable token.
    #[error(transparent)]
    Token(#[from] crate::api::auth::TokenError),
}

/// Opens the configured store, restores the pipeline, registers its metrics (and the API's) and
/// returns the handle with the API and page routes. The caller runs
/// [`Incidents::run_timers`] until shutdown and feeds [`IncidentHandler`] from each source.
pub async fn start(
    settings: &super::config::Validated,
    registry: &mut Registry,
) -> Result<Started, StartError> {
    use super::config::StoreSettings;
    use crate::store::AnyStore;
    let auth = crate::api::auth::WriteAuth::load(settings.api_token_file.as_deref())?;
    let store = match &settings.store {
        StoreSettings::Sqlite { dir } => AnyStore::Sqlite(
            crate::store::sqlite::SqliteStore::open(dir)
                .await
                .map_err(|e| StartError::Restore(e.into()))?,
        ),
        StoreSettings::Dynamodb {
            table,
            region,
            endpoint_url,
        } => {
            let sdk = selfheal_runtime::aws::sdk_config(&selfheal_runtime::aws::AwsSettings {
                region: region.clone(),
                endpoint_url: endpoint_url.clone(),
                ..Default::default()
            })
            .await;
            let client = aws_sdk_dynamodb::Client::new(&sdk);
            AnyStore::Dynamo(
                crate::store::dynamodb::DynamoStore::open(client, table)
                    .await
                    .map_err(|e| StartError::Restore(e.into()))?,
            )
        }
    };
    let metrics = Arc::new(IncidentMetrics::default());
    metrics.register(registry);
    auth.metrics().register(registry);
    let incidents = Incidents::start(
        settings.engine.clone(),
        store,
        Arc::new(SystemClock),
        metrics,
    )
    .await
    .map_err(StartError::Restore)?;
    let routes = crate::api::router(incidents.clone(), auth);
    Ok(Started { incidents, routes })
}
