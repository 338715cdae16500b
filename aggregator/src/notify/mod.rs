//! Notifications: what the incident pipeline tells people, and the channels that carry it (a
//! generic JSON webhook, SNS). The incident engine decides *when* (Alertmanager timing: opened,
//! updated, repeat, resolved); healing decides when an incident is escalated. This module turns
//! those durable moments into messages and delivers them, never blocking the pipeline.
//!
//! Decisions:
//! - **Fed from durable updates, not from `tick`'s return value.** [`moments`] reads an update's
//!   timeline events (`notified`, and the state change to `escalated`) after the store has
//!   written it, so every path that changes an incident (the timers, the API's resolve,
//!   healing's controller through `Incidents::transition`) notifies the same way, and nothing is
//!   sent that the store does not hold.
//! - **One bounded queue and one worker per channel.** A dead receiver delays only its own
//!   channel. Messages go out in order per channel (an incident's `resolved` never overtakes its
//!   `firing`), each retried with the runtime's full-jitter backoff up to `max_attempts`; when
//!   the queue is full the new message is dropped, counted and logged, so a long outage costs
//!   bounded memory and the pipeline never waits on a receiver.
//! - **The payload is Alertmanager's webhook payload** (version 4: `status`, `groupKey`,
//!   `alerts[]` with `labels`, `annotations`, `startsAt`, `endsAt`, `fingerprint`), so a receiver
//!   written for Alertmanager takes it as is, plus a `selfheal` object with the incident's own
//!   fields (documented in [`payload`]).
//! - **Graceful flush.** At shutdown each worker keeps delivering what is queued for at most
//!   `flush_timeout`, then counts the rest as `abandoned` (the incident store still holds every
//!   moment; nothing else is lost).
//! - Escalation: healing moves an incident to `escalated` when it gave up or may not act; that is
//!   the moment a person must look, so it is sent as its own `escalated` message (`firing`), even
//!   inside `group_wait`. Its later resolution is sent too: the engine only sends `resolved` for
//!   an incident it notified as open, so a resolve straight from `escalated` is sent here.

pub mod config;
pub mod payload;
mod queue;
pub mod sns;
pub mod webhook;

pub use config::{NotifyConfig, NotifySettings};
pub use payload::{Message, Moment};
pub use queue::{Builder, Channel, Delivery, Notifier, NotifyMetrics, SendError, Workers};

use selfheal_core::incident::{EventKind, NotifyReason, State};

/// The messages an update, once durable, asks for: one per `notified` event, per move to
/// `escalated` (unless muted), and per resolve straight from `escalated` that the engine did not
/// notify itself.
pub fn moments(up: &crate::incident::Update) -> Vec<Message> {
    let mut out = Vec::new();
    for ev in &up.events {
        let Some(inc) = up.incidents.iter().find(|i| i.id == ev.incident) else {
            continue;
        };
        let moment = match &ev.kind {
            EventKind::Notified { reason } => Some(match reason {
                NotifyReason::Opened => Moment::Opened,
                NotifyReason::Updated => Moment::Updated,
                NotifyReason::Repeat => Moment::Repeat,
                NotifyReason::Resolved => Moment::Resolved,
            }),
            EventKind::StateChanged {
                to: State::Escalated,
                ..
            } if inc.muted.is_none() => Some(Moment::Escalated),
            EventKind::StateChanged {
                from: State::Escalated,
                to: State::Resolved,
            } if inc.muted.is_none() && !resolved_notified(up, ev) => Some(Moment::Resolved),
            _ => None,
        };
        if let Some(moment) = moment {
            out.push(Message::new(inc.clone(), moment, ev.at_ms));
        }
    }
    out
}

fn resolved_notified(up: &crate::incident::Update, ev: &selfheal_core::incident::Event) -> bool {
    up.events.iter().any(|e| {
        e.incident == ev.incident
            && matches!(
                e.kind,
                EventKind::Notified {
                    reason: NotifyReason::Resolved
                }
            )
    })
}

/// Why notifications could not start.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A webhook's HTTP client could not be built.
    #[error(transparent)]
    Webhook(#[from] webhook::WebhookError),
}

/// Builds every configured channel and registers the metrics; the caller hands the
/// [`Notifier`] to the incident pipeline and runs the [`Workers`] until shutdown.
pub async fn start(
    settings: &NotifySettings,
    registry: &mut prometheus_client::registry::Registry,
) -> Result<(Notifier, Workers), NotifyError> {
    let metrics = std::sync::Arc::new(NotifyMetrics::default());
    metrics.register(registry);
    let mut b = Builder::new(settings.delivery, metrics);
    for w in &settings.webhooks {
        let ch = webhook::Webhook::new(w, &settings.external_url)?;
        b = b.channel(&w.name, w.send_resolved, w.timeout, ch);
        tracing::info!(channel = %w.name, url = %w.url, "NotifyWebhookConfigured");
    }
    for s in &settings.sns {
        let ch = sns::Sns::new(s, &settings.external_url).await;
        b = b.channel(&s.name, s.send_resolved, s.timeout, ch);
        tracing::info!(channel = %s.name, topic = %s.topic_arn, "NotifySnsConfigured");
    }
    Ok(b.build())
}

#[cfg(test)]
mod tests;
