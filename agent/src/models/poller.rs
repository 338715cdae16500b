//! The model poller: keeps the detect stage's models current without delaying a cycle.
//!
//! A [`ModelRegistry`] watches a directory (the configured one, or the [`S3Mirror`]'s cache for
//! an S3 source). Each poll runs on a task of its own: the mirror's async S3 requests on the
//! runtime, the registry's file reads and graph compilation on a blocking thread. Between
//! cycles the loop calls [`ModelPoller::between_cycles`], which starts a poll when one is due
//! and hands a finished poll's events to the [`SeriesDetector`], so a cycle sees the old model
//! or the new one, never a mix. A poll task that panics is logged and the poller starts over
//! with a fresh registry (every model loaded again).

use crate::config::Settings;
use crate::detect::{ModelEvent, ModelRegistry, ModelSource, SeriesDetector};
use crate::models::mirror::{S3Mirror, S3Settings, s3_client};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as MetricFamily;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use selfheal_core::Family;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;

/// How long the agent waits at start for the first model poll before running unscored cycles.
pub const FIRST_POLL_WAIT: Duration = Duration::from_secs(10);

/// File in `models.cache_dir` that keeps the signatures of the loaded models across restarts
/// (with model keys configured).
pub const MODEL_STATE_FILE: &str = ".model-signatures.json";

/// Labels of `selfheal_agent_model_loads_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLoadLabels {
    /// Metric family of the model.
    family: &'static str,
    /// `loaded` or `refused`.
    result: &'static str,
}

/// Labels of `selfheal_agent_model_refused_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelRefusedLabels {
    /// Metric family of the model.
    family: &'static str,
    /// Why ([`crate::detect::DetectError::reason`]): `unsigned`, `bad_signature`, `bounds`, ...
    reason: &'static str,
}

/// Labels of `selfheal_agent_model_info`: one series per family, set to 1 for the version in use.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelInfoLabels {
    /// Metric family of the model.
    family: &'static str,
    /// `manifest.version`.
    version: String,
}

/// The poller's metrics.
#[derive(Debug, Default)]
struct PollerMetrics {
    loads: MetricFamily<ModelLoadLabels, Counter>,
    refused: MetricFamily<ModelRefusedLabels, Counter>,
    info: MetricFamily<ModelInfoLabels, Gauge>,
    source_errors: Counter,
}

impl PollerMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = PollerMetrics::default();
        registry.register(
            "model_loads",
            "Model directories loaded or refused",
            m.loads.clone(),
        );
        registry.register(
            "model_refused",
            "Model directories refused, by reason (unsigned, bad_signature, bounds, ...); the \
             previous model stays",
            m.refused.clone(),
        );
        registry.register(
            "model_info",
            "Model version in use per family (value 1)",
            m.info.clone(),
        );
        registry.register(
            "model_source_errors",
            "Failed reads of a remote model store; the models in use stay",
            m.source_errors.clone(),
        );
        m
    }
}

/// What a poll task carries out and brings back.
#[derive(Debug)]
struct Source {
    registry: ModelRegistry,
    mirror: Option<S3Mirror>,
}

/// A finished poll: the source to put back (`None` if loading panicked), its events, and how
/// many source requests failed.
#[derive(Debug)]
struct PollOutcome {
    source: Option<Source>,
    events: Vec<ModelEvent>,
    source_errors: u64,
}

impl Source {
    async fn poll(mut self) -> PollOutcome {
        let source_errors = match self.mirror.as_mut() {
            Some(mirror) => mirror.sync().await.errors.len() as u64,
            None => 0,
        };
        let Source {
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
                source: Some(Source { registry, mirror }),
                events,
                source_errors,
            },
            Err(e) => {
                tracing::error!(error = %e, "ModelPollFailed");
                PollOutcome {
                    source: None,
                    events: Vec::new(),
                    source_errors,
                }
            }
        }
    }
}

/// The model source, either idle here or out on a task being polled.
#[derive(Debug)]
pub struct ModelPoller {
    /// Registry root: the source directory, or the S3 mirror's cache.
    root: Option<PathBuf>,
    source: Option<Source>,
    /// A mirror with no ETags yet, to start over from if a poll task dies.
    fresh_mirror: Option<S3Mirror>,
    polling: Option<tokio::task::JoinHandle<PollOutcome>>,
    poll_every: Duration,
    next_poll: Instant,
    versions: HashMap<Family, String>,
    metrics: PollerMetrics,
    /// The model public keys from the config, for every registry made.
    keys: std::sync::Arc<[selfheal_core::signature::VerifyingKey]>,
    /// The registry's state file ([`MODEL_STATE_FILE`] in the cache), with keys only.
    state: Option<PathBuf>,
}

impl ModelPoller {
    /// A poller for the configured model source (none: it never loads anything), with its
    /// metrics registered in `registry`.
    pub async fn new(settings: &Settings, registry: &mut Registry) -> Self {
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
        if root.is_some() && settings.model_keys.is_empty() {
            tracing::warn!(
                "ModelKeysUnset: no model public key is configured (models.public_keys); models \
                 will load without a signature check"
            );
        }
        let keys = settings.model_keys.clone();
        // With keys, the loaded models' signatures outlive a restart in the cache directory
        // (an emptyDir in the DaemonSet), so a restart is no chance to replay an older model.
        let state = (!keys.is_empty())
            .then(|| {
                let dir = &settings.models.cache_dir;
                match std::fs::create_dir_all(dir) {
                    Ok(()) => Some(dir.join(MODEL_STATE_FILE)),
                    Err(error) => {
                        tracing::warn!(dir = %dir.display(), %error, "ModelStateUnavailable");
                        None
                    }
                }
            })
            .flatten();
        let make_registry = |root: PathBuf| {
            let r = ModelRegistry::with_keys(root, keys.clone());
            match &state {
                Some(path) => r.with_state(path.clone()),
                None => r,
            }
        };
        ModelPoller {
            source: root.clone().map(|root| Source {
                registry: make_registry(root),
                mirror: mirror.clone(),
            }),
            root,
            fresh_mirror: mirror,
            polling: None,
            poll_every: Duration::from_secs_f64(settings.models.poll_secs),
            next_poll: Instant::now(),
            versions: HashMap::new(),
            metrics: PollerMetrics::register(registry),
            keys,
            state,
        }
    }

    /// Between cycles: starts a poll when one is due, and applies a finished one to
    /// `detector`. With `wait`, waits for the poll, at most [`FIRST_POLL_WAIT`] (at start, so
    /// the first cycle is scored).
    pub async fn between_cycles(&mut self, detector: &mut SeriesDetector, wait: bool) {
        if self.polling.is_none()
            && Instant::now() >= self.next_poll
            && let Some(source) = self.source.take()
        {
            self.next_poll = Instant::now() + self.poll_every;
            self.polling = Some(tokio::spawn(source.poll()));
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
                source: None,
                events: Vec::new(),
                source_errors: 0,
            }
        });
        self.metrics.source_errors.inc_by(outcome.source_errors);
        self.count(&outcome.events);
        detector.apply(&outcome.events);
        // After a panic, start over with a fresh registry (all reloaded).
        self.source = outcome.source.or_else(|| {
            self.root.clone().map(|root| {
                let registry = ModelRegistry::with_keys(root, self.keys.clone());
                Source {
                    registry: match &self.state {
                        Some(path) => registry.with_state(path.clone()),
                        None => registry,
                    },
                    mirror: self.fresh_mirror.clone(),
                }
            })
        });
    }

    fn count(&mut self, events: &[ModelEvent]) {
        for event in events {
            let (family, result) = match event {
                ModelEvent::Loaded { family, scorer } => {
                    let version = scorer.manifest().version.clone();
                    if let Some(old) = self.versions.insert(*family, version.clone()) {
                        self.metrics.info.remove(&ModelInfoLabels {
                            family: family.as_str(),
                            version: old,
                        });
                    }
                    self.metrics
                        .info
                        .get_or_create(&ModelInfoLabels {
                            family: family.as_str(),
                            version,
                        })
                        .set(1);
                    (*family, "loaded")
                }
                ModelEvent::Refused { family, error, .. } => {
                    self.metrics
                        .refused
                        .get_or_create(&ModelRefusedLabels {
                            family: family.as_str(),
                            reason: error.reason(),
                        })
                        .inc();
                    (*family, "refused")
                }
            };
            self.metrics
                .loads
                .get_or_create(&ModelLoadLabels {
                    family: family.as_str(),
                    result,
                })
                .inc();
        }
    }
}
