//! The detect stage as the loop drives it: the [`SeriesDetector`], the [`ModelPoller`] that keeps its
//! models current, and the stage's metrics (anomalies raised, batches that failed to score, the
//! stage's wall time).

use super::{DetectError, SeriesDetector};
use crate::config::Settings;
use crate::models::poller::ModelPoller;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as MetricFamily;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use selfheal_core::schema::{Anomaly, Record};

/// Labels of the per-family detect metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabels {
    /// Metric family.
    family: &'static str,
}

/// The detector, its model source and its metrics.
#[derive(Debug)]
pub struct DetectStage {
    detector: SeriesDetector,
    models: ModelPoller,
    anomalies: MetricFamily<FamilyLabels, Counter>,
    score_errors: MetricFamily<FamilyLabels, Counter>,
    duration: Histogram,
}

impl DetectStage {
    /// Builds the stage and registers its metrics (the poller's included). No model is loaded
    /// until the first [`DetectStage::between_cycles`].
    pub async fn new(settings: &Settings, registry: &mut Registry) -> Self {
        let stage = DetectStage {
            detector: SeriesDetector::new(settings.models.window_records),
            models: ModelPoller::new(settings, registry).await,
            anomalies: MetricFamily::default(),
            score_errors: MetricFamily::default(),
            duration: Histogram::new([0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1]),
        };
        registry.register("anomalies", "Anomalies raised", stage.anomalies.clone());
        registry.register(
            "score_errors",
            "Batches that could not be scored",
            stage.score_errors.clone(),
        );
        registry.register(
            "score_duration_seconds",
            "Wall time of the score stage of one cycle",
            stage.duration.clone(),
        );
        stage
    }

    /// Between cycles: lets the poller start a poll or swap finished models in. With `wait`,
    /// waits for the poll, at most [`crate::models::poller::FIRST_POLL_WAIT`] (at start, so the
    /// first cycle is scored).
    pub async fn between_cycles(&mut self, wait: bool) {
        self.models.between_cycles(&mut self.detector, wait).await;
    }

    /// Scores a cycle's records and counts what happened.
    pub fn detect(&mut self, records: &[Record]) -> Vec<Anomaly> {
        let t0 = std::time::Instant::now();
        let detection = self.detector.detect(records);
        self.duration.observe(t0.elapsed().as_secs_f64());
        for a in &detection.anomalies {
            self.anomalies
                .get_or_create(&FamilyLabels {
                    family: a.record.family.as_str(),
                })
                .inc();
        }
        for e in &detection.errors {
            if let DetectError::Score { family, .. } = e {
                self.score_errors
                    .get_or_create(&FamilyLabels {
                        family: family.as_str(),
                    })
                    .inc();
            }
        }
        detection.anomalies
    }
}
