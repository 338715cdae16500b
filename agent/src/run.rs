//! The agent's main loop: every interval, collect → normalize → detect → sample → spool; serve
//! `/metrics` and `/healthz`; on shutdown finish the cycle in hand, flush, and return.
//!
//! Each stage is built here once, registers its own metrics, and is called once per cycle:
//! [`Pipeline`] (collect and normalize, against the [`pods`] directory a watcher keeps
//! current), [`DetectStage`] (scoring, with models polled on a task of their own and swapped in
//! between cycles), [`Sampler`], and [`ForwardStage`] (the spool, drained to Kinesis or HTTP by
//! a forwarder task at its own pace, so an unreachable sink never stalls collection). On
//! shutdown the loop stops first, then the forwarder gets `shutdown_grace` to drain what the
//! last cycle queued; the rest waits on disk for the next start. `--print` ([`Output`]) is
//! independent of all this: it prints every record.

use crate::collect::Pipeline;
use crate::collect::pods::{self, PodsError};
use crate::config::Settings;
use crate::detect::DetectStage;
use crate::forward::stage::{ForwardStage, ForwardStartError};
use crate::sample::{SampleMetrics, Sampler};
use crate::telemetry::AgentMetrics;
use selfheal_core::schema::{Anomaly, Envelope, Payload, Record};
use selfheal_runtime::server::{AdminMetrics, AdminServer, Heartbeat};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

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
    /// The forward stage could not start (spool or sink).
    #[error("cannot start forwarding")]
    Forward(#[source] ForwardStartError),
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

/// Runs the agent until `shutdown` turns true.
pub async fn run(
    settings: Settings,
    mut output: Output,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let mut metrics = AgentMetrics::new();
    let registry = metrics.registry_mut();
    let mut forward = ForwardStage::start(&settings, registry)
        .await
        .map_err(AgentError::Forward)?;
    let pods = pods::start(
        &settings.pods,
        &settings.node_name,
        registry,
        shutdown.clone(),
    )
    .map_err(AgentError::Pods)?;
    let mut pipeline = Pipeline::with_metrics(&settings, registry);
    let mut detect = DetectStage::new(&settings, registry).await;
    let mut sampler = Sampler::new(settings.sampling.clone());
    let sample_metrics = SampleMetrics::register(registry);
    sample_metrics.publish(sampler.stats());
    let admin_metrics = AdminMetrics::register(registry);
    // A stuck collector should get the pod restarted by its liveness probe: 503 once the last
    // completed cycle is three intervals old.
    let health = Heartbeat::new("cycle", settings.interval * 3);
    let (addr, server) = AdminServer::new(Arc::new(metrics.take_registry()))
        .health(health.clone())
        .metrics(admin_metrics)
        .serve(settings.listen_addr, shutdown.clone().into())
        .await
        .map_err(|source| AgentError::Bind {
            addr: settings.listen_addr,
            source,
        })?;
    tracing::info!(%addr, node = %settings.node_name, interval_secs = settings.interval.as_secs_f64(), "AgentStarted");

    detect.between_cycles(true).await;
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => break Ok(()),
            _ = ticker.tick() => {}
        }
        detect.between_cycles(false).await;
        let records = pipeline.run_cycle(&pods);
        let anomalies = detect.detect(&records);
        // Printing sees every record; the sampler takes them after.
        let printed = (!output.is_discard()).then(|| (records.clone(), anomalies.clone()));
        let selected = sampler.select(now_ms(), records, anomalies);
        sample_metrics.publish(sampler.stats());
        // Spool first, print second: whatever `--print` showed is already on disk.
        if let Err(e) = forward.push(selected) {
            break Err(AgentError::Output(e));
        }
        if let Some((records, anomalies)) = printed
            && let Err(e) = output.write(records, anomalies)
        {
            break Err(e);
        }
        metrics.cycle_done();
        health.beat();
    };
    tracing::info!("AgentStopping");
    let flushed = output.flush();
    forward.finish(settings.shutdown_grace).await;
    let _ = tokio::time::timeout(settings.shutdown_grace, server).await;
    tracing::info!("AgentStopped");
    result.and(flushed)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
