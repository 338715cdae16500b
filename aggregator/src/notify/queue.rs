//! The delivery machinery every channel shares: [`Notifier`] (the pipeline's handle: hands a
//! message to each channel's bounded queue without waiting), one worker per channel (in-order
//! delivery, per-attempt timeout, jittered retries, the flush at shutdown) and the
//! `selfheal_aggregator_notify_*` metrics.

use super::payload::Message;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use selfheal_runtime::backoff::Backoff;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// It may pass later (connection refused, timeout, 5xx, 408, 429, throttling).
    #[error("{0}")]
    Retryable(String),
    /// It will fail the same way every time (4xx, a topic that does not exist, no permission):
    /// not retried.
    #[error("{0}")]
    Permanent(String),
}

/// A way of delivering one message.
pub trait Channel: Send + Sync + 'static {
    /// Delivers `msg` once, as the channel named `receiver`.
    fn send(
        &self,
        msg: &Message,
        receiver: &str,
    ) -> impl Future<Output = Result<(), SendError>> + Send;
}

/// Labels: the channel's configured name and what happened.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelOutcome {
    /// The channel's `name`.
    pub channel: String,
    /// Messages: `delivered`, `failed` (gave up, or refused for good), `dropped` (queue full or
    /// shutting down), `abandoned` (still queued when the shutdown flush ran out). Attempts:
    /// `ok`, `retryable`, `permanent`, `timeout`.
    pub outcome: &'static str,
}

/// Labels: the channel.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabel {
    /// The channel's `name`.
    pub channel: String,
}

/// `selfheal_aggregator_notify_*`.
#[derive(Debug)]
pub struct NotifyMetrics {
    /// Messages by final outcome.
    pub messages: Family<ChannelOutcome, Counter>,
    /// Delivery attempts by outcome.
    pub attempts: Family<ChannelOutcome, Counter>,
    /// Messages waiting in each channel's queue.
    pub queued: Family<ChannelLabel, Gauge>,
    /// Seconds from a moment being durable to its message being delivered.
    pub latency: Family<ChannelLabel, Histogram>,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
    ])
}

impl Default for NotifyMetrics {
    fn default() -> Self {
        NotifyMetrics {
            messages: Family::default(),
            attempts: Family::default(),
            queued: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl NotifyMetrics {
    /// Registers every metric (prefix `notify`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("notify");
        r.register(
            "messages",
            "Notification messages by channel and final outcome",
            self.messages.clone(),
        );
        r.register(
            "attempts",
            "Notification delivery attempts by channel and outcome",
            self.attempts.clone(),
        );
        r.register(
            "queued",
            "Notification messages waiting in each channel's queue",
            self.queued.clone(),
        );
        r.register(
            "delivery_latency_seconds",
            "From a notification moment being durable to its delivery",
            self.latency.clone(),
        );
    }

    fn message(&self, channel: &str, outcome: &'static str) {
        self.messages
            .get_or_create(&ChannelOutcome {
                channel: channel.to_owned(),
                outcome,
            })
            .inc();
    }

    fn attempt(&self, channel: &str, outcome: &'static str) {
        self.attempts
            .get_or_create(&ChannelOutcome {
                channel: channel.to_owned(),
                outcome,
            })
            .inc();
    }

    fn queued(&self, channel: &str) -> Gauge {
        self.queued
            .get_or_create(&ChannelLabel {
                channel: channel.to_owned(),
            })
            .clone()
    }
}

/// How a worker retries and flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Messages a channel's queue holds; more are dropped.
    pub queue_capacity: usize,
    /// Attempts per message, the first included.
    pub max_attempts: u32,
    /// First retry delay (full jitter below it).
    pub retry_initial: Duration,
    /// Largest retry delay.
    pub retry_max: Duration,
    /// Most time one attempt may take (set per channel by [`Builder::channel`]).
    pub attempt_timeout: Duration,
    /// Most time the shutdown flush may take.
    pub flush_timeout: Duration,
}

struct Queued {
    msg: Arc<Message>,
    at: Instant,
}

struct Intake {
    name: String,
    send_resolved: bool,
    tx: mpsc::Sender<Queued>,
    queued: Gauge,
}

/// The pipeline's handle: cheap to clone; [`Notifier::enqueue`] never waits.
#[derive(Clone)]
pub struct Notifier {
    intakes: Arc<Vec<Intake>>,
    metrics: Arc<NotifyMetrics>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.intakes.iter().map(|i| i.name.as_str()).collect();
        f.debug_struct("Notifier")
            .field("channels", &names)
            .finish()
    }
}

type Worker = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The channels' workers, to run until shutdown (then they flush).
pub struct Workers {
    spawn: Vec<Box<dyn FnOnce(watch::Receiver<bool>) -> Worker + Send>>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("channels", &self.spawn.len())
            .finish()
    }
}

impl Workers {
    /// Runs every worker until `stop` turns true and each has flushed its queue (bounded by
    /// `flush_timeout`).
    pub async fn run(self, stop: watch::Receiver<bool>) {
        let all: Vec<Worker> = self.spawn.into_iter().map(|f| f(stop.clone())).collect();
        futures_util::future::join_all(all).await;
    }
}

/// Builds a [`Notifier`] and its [`Workers`], channel by channel.
pub struct Builder {
    delivery: Delivery,
    metrics: Arc<NotifyMetrics>,
    intakes: Vec<Intake>,
    workers: Workers,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("delivery", &self.delivery)
            .finish()
    }
}

impl Builder {
    /// A notifier with no channel yet.
    pub fn new(delivery: Delivery, metrics: Arc<NotifyMetrics>) -> Builder {
        Builder {
            delivery,
            metrics,
            intakes: Vec::new(),
            workers: Workers { spawn: Vec::new() },
        }
    }

    /// Adds `channel` under `name`, each attempt bounded by `attempt_timeout`;
    /// `send_resolved = false` skips resolved messages for it.
    pub fn channel<C: Channel>(
        mut self,
        name: &str,
        send_resolved: bool,
        attempt_timeout: Duration,
        channel: C,
    ) -> Builder {
        let (tx, rx) = mpsc::channel(self.delivery.queue_capacity.max(1));
        let queued = self.metrics.queued(name);
        // Every outcome appears on /metrics from the start, at 0.
        for o in ["delivered", "failed", "dropped", "abandoned"] {
            let _ = self.metrics.messages.get_or_create(&ChannelOutcome {
                channel: name.to_owned(),
                outcome: o,
            });
        }
        self.intakes.push(Intake {
            name: name.to_owned(),
            send_resolved,
            tx,
            queued: queued.clone(),
        });
        let worker = ChannelWorker {
            name: name.to_owned(),
            channel,
            delivery: Delivery {
                attempt_timeout,
                ..self.delivery
            },
            metrics: Arc::clone(&self.metrics),
            queued,
        };
        self.workers
            .spawn
            .push(Box::new(move |stop| Box::pin(worker.run(rx, stop))));
        self
    }

    /// The handle and the workers.
    pub fn build(self) -> (Notifier, Workers) {
        (
            Notifier {
                intakes: Arc::new(self.intakes),
                metrics: self.metrics,
            },
            self.workers,
        )
    }
}

impl Notifier {
    /// Hands each message to every channel's queue; a full (or closed) queue drops it, counted
    /// and logged.
    pub fn enqueue(&self, msgs: Vec<Message>) {
        let now = Instant::now();
        for msg in msgs {
            let msg = Arc::new(msg);
            tracing::info!(incident = %msg.incident.id, moment = %msg.moment, "NotifyQueued");
            for intake in self.intakes.iter() {
                if msg.moment == super::Moment::Resolved && !intake.send_resolved {
                    continue;
                }
                let q = Queued {
                    msg: Arc::clone(&msg),
                    at: now,
                };
                match intake.tx.try_send(q) {
                    Ok(()) => {
                        intake.queued.inc();
                    }
                    Err(e) => {
                        let why = match e {
                            mpsc::error::TrySendError::Full(_) => "queue full",
                            mpsc::error::TrySendError::Closed(_) => "shutting down",
                        };
                        self.metrics.message(&intake.name, "dropped");
                        tracing::warn!(channel = %intake.name, incident = %msg.incident.id, moment = %msg.moment, reason = why, "NotifyDropped");
                    }
                }
            }
        }
    }

    /// The channels' names.
    pub fn channels(&self) -> impl Iterator<Item = &str> {
        self.intakes.iter().map(|i| i.name.as_str())
    }
}

struct ChannelWorker<C> {
    name: String,
    channel: C,
    delivery: Delivery,
    metrics: Arc<NotifyMetrics>,
    queued: Gauge,
}

impl<C: Channel> ChannelWorker<C> {
    async fn run(self, mut rx: mpsc::Receiver<Queued>, mut stop: watch::Receiver<bool>) {
        // Set once the shutdown began: the flush ends there.
        let mut deadline: Option<Instant> = None;
        loop {
            let next = match deadline {
                Some(_) => rx.recv().await,
                None => tokio::select! {
                    q = rx.recv() => q,
                    _ = stop.wait_for(|s| *s) => {
                        deadline = Some(self.begin_flush(&mut rx));
                        continue;
                    }
                },
            };
            let Some(q) = next else { break };
            self.queued.dec();
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.metrics.message(&self.name, "abandoned");
                tracing::warn!(channel = %self.name, incident = %q.msg.incident.id, moment = %q.msg.moment, "NotifyAbandoned");
                continue;
            }
            self.deliver(&q, &mut deadline, &mut stop, &mut rx).await;
        }
    }

    fn begin_flush(&self, rx: &mut mpsc::Receiver<Queued>) -> Instant {
        // What is queued now is flushed; nothing new is taken.
        rx.close();
        tracing::info!(channel = %self.name, queued = rx.len(), "NotifyFlushing");
        Instant::now() + self.delivery.flush_timeout
    }

    async fn deliver(
        &self,
        q: &Queued,
        deadline: &mut Option<Instant>,
        stop: &mut watch::Receiver<bool>,
        rx: &mut mpsc::Receiver<Queued>,
    ) {
        let msg = &q.msg;
        let mut backoff = Backoff::new(self.delivery.retry_initial, self.delivery.retry_max);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut limit = self.delivery.attempt_timeout;
            if let Some(d) = *deadline {
                limit = limit.min(d.saturating_duration_since(Instant::now()));
            }
            let (label, e) = match tokio::time::timeout(limit, self.channel.send(msg, &self.name))
                .await
            {
                Ok(Ok(())) => {
                    self.metrics.attempt(&self.name, "ok");
                    self.metrics.message(&self.name, "delivered");
                    let secs = q.at.elapsed().as_secs_f64();
                    self.metrics
                        .latency
                        .get_or_create(&ChannelLabel {
                            channel: self.name.clone(),
                        })
                        .observe(secs);
                    tracing::info!(channel = %self.name, incident = %msg.incident.id, moment = %msg.moment, attempt, "NotifyDelivered");
                    return;
                }
                Ok(Err(SendError::Permanent(e))) => {
                    self.metrics.attempt(&self.name, "permanent");
                    self.metrics.message(&self.name, "failed");
                    tracing::error!(channel = %self.name, incident = %msg.incident.id, moment = %msg.moment, attempt, error = %e, "NotifyFailed");
                    return;
                }
                Ok(Err(SendError::Retryable(e))) => ("retryable", e),
                Err(_) => (
                    "timeout",
                    format!("no answer within {:.1}s", limit.as_secs_f64()),
                ),
            };
            self.metrics.attempt(&self.name, label);
            if attempt >= self.delivery.max_attempts {
                self.metrics.message(&self.name, "failed");
                tracing::error!(channel = %self.name, incident = %msg.incident.id, moment = %msg.moment, attempt, error = %e, "NotifyFailed");
                return;
            }
            let delay = backoff.next_delay();
            tracing::warn!(channel = %self.name, incident = %msg.incident.id, moment = %msg.moment, attempt, error = %e, retry_in_ms = delay.as_millis() as u64, "NotifyRetrying");
            match *deadline {
                Some(d) => {
                    if Instant::now() + delay >= d {
                        self.metrics.message(&self.name, "abandoned");
                        tracing::warn!(channel = %self.name, incident = %msg.incident.id, moment = %msg.moment, "NotifyAbandoned");
                        return;
                    }
                    tokio::time::sleep(delay).await;
                }
                None => {
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = stop.wait_for(|s| *s) => {
                            *deadline = Some(self.begin_flush(rx));
                        }
                    }
                }
            }
        }
    }
}
