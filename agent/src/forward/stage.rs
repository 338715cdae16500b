//! The forward stage as the loop drives it: where a cycle's selected envelopes go — the
//! [`Spool`] (drained by a [`Forwarder`] task to Kinesis or HTTP), stdout, or nowhere — and the
//! forwarder's shutdown. The loop only appends to the spool (a local file write), so an
//! unreachable sink never stalls collection. Registers the spool's and the forwarder's metrics.

use super::http::HttpSink;
use super::kinesis::KinesisSink;
use super::spool::{Spool, SpoolError, SpoolMetrics};
use super::{ForwardConfigError, ForwardMetrics, Forwarder, Sink, SinkKind};
use crate::config::Settings;
use crate::sample::Selected;
use prometheus_client::registry::Registry;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Why the forward stage could not start.
#[derive(Debug, thiserror::Error)]
pub enum ForwardStartError {
    /// The spool directory could not be opened.
    #[error("cannot open the spool")]
    Spool(#[source] SpoolError),
    /// The sink could not be set up.
    #[error("cannot set up the sink")]
    Sink(#[source] ForwardConfigError),
}

/// Where selected envelopes go, and the forwarder task draining the spool.
#[derive(Debug)]
pub struct ForwardStage {
    dest: Destination,
    task: Option<tokio::task::JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

#[derive(Debug)]
enum Destination {
    None,
    Stdout(std::io::BufWriter<std::io::Stdout>),
    Spool(Arc<Spool>),
}

impl ForwardStage {
    /// Opens the spool and starts the forwarder for the configured sink.
    pub async fn start(
        settings: &Settings,
        registry: &mut Registry,
    ) -> Result<ForwardStage, ForwardStartError> {
        let (stop, stop_rx) = watch::channel(false);
        let mut stage = ForwardStage {
            dest: Destination::None,
            task: None,
            stop,
        };
        let kind = settings.forward.sink;
        if !kind.is_spooled() {
            if kind == SinkKind::Stdout {
                stage.dest = Destination::Stdout(std::io::BufWriter::new(std::io::stdout()));
            }
            tracing::info!(sink = ?kind, "ForwardingConfigured");
            return Ok(stage);
        }
        let spool =
            Arc::new(Spool::open(settings.spool.clone()).map_err(ForwardStartError::Spool)?);
        fn spawn<S: Sink>(
            spool: &Arc<Spool>,
            sink: S,
            settings: &Settings,
            stop: watch::Receiver<bool>,
            registry: &mut Registry,
        ) -> tokio::task::JoinHandle<()> {
            let f = Forwarder::new(Arc::clone(spool), sink, settings.forward_settings.clone());
            registry.register_collector(Box::new(ForwardMetrics(f.stats())));
            tokio::spawn(f.run(stop, settings.shutdown_grace))
        }
        let task = match kind {
            SinkKind::Kinesis => {
                let sink = KinesisSink::from_config(&settings.forward.kinesis)
                    .await
                    .map_err(ForwardStartError::Sink)?;
                spawn(&spool, sink, settings, stop_rx, registry)
            }
            _ => {
                let sink = HttpSink::from_config(&settings.forward.http)
                    .map_err(ForwardStartError::Sink)?;
                spawn(&spool, sink, settings, stop_rx, registry)
            }
        };
        registry.register_collector(Box::new(SpoolMetrics(Arc::clone(spool.stats()))));
        tracing::info!(sink = ?kind, spool = %settings.spool.dir.display(), queued = spool.depth(), "ForwardingConfigured");
        stage.task = Some(task);
        stage.dest = Destination::Spool(spool);
        Ok(stage)
    }

    /// Hands a cycle's selection on. Spool drops are counted by the spool itself; the error is
    /// a failed write to stdout.
    pub fn push(&mut self, selected: Vec<Selected>) -> std::io::Result<()> {
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
                    serde_json::to_writer(&mut *w, &s.envelope)?;
                    w.write_all(b"\n")?;
                }
                w.flush()
            }
        }
    }

    /// After the last cycle: syncs the spool, then lets the forwarder drain for the grace period.
    pub async fn finish(self, grace: Duration) {
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
