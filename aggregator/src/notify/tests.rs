//! Notification tests: which moments an update yields, the payload, and the queue's retries,
//! drops and flush on paused time with a scripted channel.

use super::config::{NotifyConfig, SnsConfig, WebhookConfig};
use super::queue::{Builder, Channel, Delivery, NotifyMetrics, SendError};
use super::{Message, Moment, moments};
use crate::incident::testkit::{anomaly, env};
use crate::incident::{Engine, IncidentSettings, Snapshot};
use prometheus_client::registry::Registry;
use selfheal_core::incident::{Actor, Incident, State};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T0: i64 = 1_000_000;

fn opened_engine() -> (Engine, Incident) {
    let mut e = Engine::new(IncidentSettings::default(), Snapshot::default()).expect("engine");
    let recs: Vec<_> = (0..5)
        .map(|p| env(anomaly(p as u128 + 1, "n1", p, 0.9)))
        .collect();
    let (up, _) = e.apply(&recs, T0);
    assert!(moments(&up).is_empty(), "opening is not yet a notification");
    let inc = e.active().next().expect("an incident").clone();
    (e, inc)
}

fn kinds(msgs: &[Message]) -> Vec<Moment> {
    msgs.iter().map(|m| m.moment).collect()
}

#[test]
fn opened_then_escalated_then_resolved_each_notify_once() {
    let (mut e, inc) = opened_engine();
    let wait = e.settings().group_wait_ms;
    let (up, _) = e.tick(T0 + wait);
    let m = moments(&up);
    assert_eq!(kinds(&m), [Moment::Opened]);
    assert_eq!(m[0].incident.id, inc.id);
    let up = e
        .transition(
            &inc.id,
            State::Escalated,
            "verification failed",
            Actor::System,
            T0 + wait + 1,
        )
        .expect("escalate");
    let m = moments(&up);
    assert_eq!(kinds(&m), [Moment::Escalated]);
    assert_eq!(m[0].incident.state, State::Escalated);
    // The engine notifies this resolve itself (it was notified as open): sent once, not twice.
    let up = e
        .transition(
            &inc.id,
            State::Resolved,
            "fixed",
            Actor::Person("ana".into()),
            T0 + wait + 2,
        )
        .expect("resolve");
    assert_eq!(kinds(&moments(&up)), [Moment::Resolved]);
}

#[test]
fn an_escalation_inside_group_wait_is_sent_and_so_is_its_resolve() {
    let (mut e, inc) = opened_engine();
    let up = e
        .transition(
            &inc.id,
            State::Escalated,
            "escalate-only playbook",
            Actor::System,
            T0 + 10,
        )
        .expect("escalate");
    assert_eq!(kinds(&moments(&up)), [Moment::Escalated]);
    let up = e
        .transition(
            &inc.id,
            State::Resolved,
            "fixed",
            Actor::Person("ana".into()),
            T0 + 20,
        )
        .expect("resolve");
    assert_eq!(kinds(&moments(&up)), [Moment::Resolved]);
}

#[test]
fn an_incident_resolved_before_it_was_notified_sends_nothing() {
    let (mut e, inc) = opened_engine();
    let up = e
        .transition(
            &inc.id,
            State::Resolved,
            "noise",
            Actor::Person("ana".into()),
            T0 + 10,
        )
        .expect("resolve");
    assert!(moments(&up).is_empty());
}

#[test]
fn the_body_is_alertmanagers_webhook_payload() {
    let (mut e, inc) = opened_engine();
    let (up, _) = e.tick(T0 + e.settings().group_wait_ms);
    let m = &moments(&up)[0];
    let b = m.body("oncall", "https://selfheal.example");
    assert_eq!(b["version"], "4");
    assert_eq!(b["status"], "firing");
    assert_eq!(b["receiver"], "oncall");
    assert_eq!(b["groupKey"], inc.key.as_str());
    assert_eq!(b["groupLabels"]["namespace"], "shop");
    let a = &b["alerts"][0];
    assert_eq!(a["status"], "firing");
    assert_eq!(a["labels"]["alertname"], "SelfhealIncident");
    assert_eq!(a["labels"]["incident"], inc.id.as_str());
    assert_eq!(a["labels"]["family"], "cpu");
    assert_eq!(a["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(a["startsAt"], "1970-01-01T00:16:40Z");
    assert_eq!(
        a["generatorURL"],
        format!("https://selfheal.example/incidents/{}", inc.id)
    );
    assert_eq!(a["fingerprint"].as_str().map(str::len), Some(16));
    assert_eq!(b["selfheal"]["moment"], "opened");
    assert_eq!(b["selfheal"]["pods"], 5);
    assert!(
        a["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("[FIRING:"))
    );
    let r = Message::new(m.incident.clone(), Moment::Resolved, T0 + 5000);
    let b = r.body("oncall", "");
    assert_eq!(b["status"], "resolved");
    assert_eq!(b["alerts"][0]["endsAt"], "1970-01-01T00:16:45Z");
    assert_eq!(b["alerts"][0]["generatorURL"], "");
    assert!(r.subject().chars().count() <= super::payload::SNS_SUBJECT_MAX);
}

/// A channel that fails its first `fail` attempts (retryably, or for good), then delivers.
#[derive(Clone, Default)]
struct Scripted {
    fail: Arc<AtomicU32>,
    permanent: bool,
    hang: bool,
    got: Arc<Mutex<Vec<(String, Moment)>>>,
    attempts: Arc<AtomicU32>,
}

impl Channel for Scripted {
    async fn send(&self, msg: &Message, receiver: &str) -> Result<(), SendError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if self.hang {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        if self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(if self.permanent {
                SendError::Permanent("400".into())
            } else {
                SendError::Retryable("503".into())
            });
        }
        self.got
            .lock()
            .expect("lock")
            .push((receiver.to_owned(), msg.moment));
        Ok(())
    }
}

fn delivery(capacity: usize) -> Delivery {
    Delivery {
        queue_capacity: capacity,
        max_attempts: 5,
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_secs(2),
        attempt_timeout: Duration::from_secs(1),
        flush_timeout: Duration::from_secs(5),
    }
}

fn msg(moment: Moment) -> Message {
    let (_, inc) = opened_engine();
    Message::new(inc, moment, T0)
}

fn metric(m: &NotifyMetrics, kind: &str, channel: &str, outcome: &str) -> u64 {
    let mut r = Registry::default();
    m.register(&mut r);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &r).expect("encode");
    let want = format!("notify_{kind}_total{{channel=\"{channel}\",outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&want))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn a_failing_receiver_gets_the_message_after_retries_in_order() {
    let metrics = Arc::new(NotifyMetrics::default());
    let ch = Scripted {
        fail: Arc::new(AtomicU32::new(3)),
        ..Scripted::default()
    };
    let (notifier, workers) = Builder::new(delivery(8), Arc::clone(&metrics))
        .channel("hook", true, Duration::from_secs(1), ch.clone())
        .build();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(workers.run(stop));
    notifier.enqueue(vec![msg(Moment::Opened), msg(Moment::Resolved)]);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        *ch.got.lock().expect("lock"),
        [
            ("hook".to_owned(), Moment::Opened),
            ("hook".to_owned(), Moment::Resolved)
        ]
    );
    assert_eq!(ch.attempts.load(Ordering::SeqCst), 5);
    assert_eq!(metric(&metrics, "messages", "hook", "delivered"), 2);
    assert_eq!(metric(&metrics, "attempts", "hook", "retryable"), 3);
    stop_tx.send_replace(true);
    task.await.expect("workers end");
}

#[tokio::test(start_paused = true)]
async fn a_refusal_is_not_retried_and_a_dead_receiver_is_given_up_on() {
    let metrics = Arc::new(NotifyMetrics::default());
    let refuse = Scripted {
        fail: Arc::new(AtomicU32::new(1)),
        permanent: true,
        ..Scripted::default()
    };
    let dead = Scripted {
        fail: Arc::new(AtomicU32::new(u32::MAX)),
        ..Scripted::default()
    };
    let (notifier, workers) = Builder::new(delivery(8), Arc::clone(&metrics))
        .channel("refuse", true, Duration::from_secs(1), refuse.clone())
        .channel("dead", true, Duration::from_secs(1), dead.clone())
        .build();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(workers.run(stop));
    notifier.enqueue(vec![msg(Moment::Opened)]);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(refuse.attempts.load(Ordering::SeqCst), 1);
    assert_eq!(metric(&metrics, "messages", "refuse", "failed"), 1);
    assert_eq!(dead.attempts.load(Ordering::SeqCst), 5, "max_attempts");
    assert_eq!(metric(&metrics, "messages", "dead", "failed"), 1);
    stop_tx.send_replace(true);
    task.await.expect("workers end");
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_drops_and_counts_and_a_hung_attempt_times_out() {
    let metrics = Arc::new(NotifyMetrics::default());
    let ch = Scripted {
        hang: true,
        ..Scripted::default()
    };
    let (notifier, workers) = Builder::new(delivery(2), Arc::clone(&metrics))
        .channel("slow", false, Duration::from_secs(1), ch.clone())
        .build();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(workers.run(stop));
    notifier.enqueue(vec![msg(Moment::Opened)]);
    tokio::task::yield_now().await;
    // The worker holds one; the queue takes two more; the rest are dropped. Resolved messages
    // are not for this channel at all.
    notifier.enqueue((0..5).map(|_| msg(Moment::Updated)).collect());
    notifier.enqueue(vec![msg(Moment::Resolved)]);
    assert_eq!(metric(&metrics, "messages", "slow", "dropped"), 3);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(metric(&metrics, "attempts", "slow", "timeout") >= 1);
    stop_tx.send_replace(true);
    task.await.expect("workers end");
}

#[tokio::test(start_paused = true)]
async fn shutdown_flushes_the_queue_then_abandons_what_is_left() {
    let metrics = Arc::new(NotifyMetrics::default());
    let ok = Scripted::default();
    let dead = Scripted {
        fail: Arc::new(AtomicU32::new(u32::MAX)),
        ..Scripted::default()
    };
    let mut d = delivery(16);
    d.max_attempts = 1000;
    let (notifier, workers) = Builder::new(d, Arc::clone(&metrics))
        .channel("ok", true, Duration::from_secs(1), ok.clone())
        .channel("dead", true, Duration::from_secs(1), dead.clone())
        .build();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    // Queued before the workers run, then the shutdown: the flush still delivers them.
    notifier.enqueue((0..4).map(|_| msg(Moment::Opened)).collect());
    stop_tx.send_replace(true);
    let start = tokio::time::Instant::now();
    workers.run(stop).await;
    assert_eq!(ok.got.lock().expect("lock").len(), 4);
    assert!(
        start.elapsed() <= Duration::from_secs(6),
        "bounded by flush_timeout"
    );
    assert_eq!(metric(&metrics, "messages", "dead", "abandoned"), 4);
    // After the flush nothing is taken.
    notifier.enqueue(vec![msg(Moment::Opened)]);
    assert_eq!(metric(&metrics, "messages", "ok", "dropped"), 1);
}

fn hook(name: &str, url: &str) -> WebhookConfig {
    WebhookConfig {
        name: name.into(),
        url: url.into(),
        bearer_token_file: None,
        timeout_secs: 5.0,
        send_resolved: true,
    }
}

#[test]
fn bad_configuration_names_the_field() {
    let field = |c: NotifyConfig| c.validate().err().map(|e| e.field);
    let ok = NotifyConfig {
        webhook: vec![hook("a", "https://h.example/x")],
        ..NotifyConfig::default()
    };
    assert!(ok.validate().is_ok_and(|s| s.any()));
    assert!(!NotifyConfig::default().validate().expect("default").any());
    let mut c = ok.clone();
    c.webhook.push(hook("a", "https://h.example/y"));
    assert_eq!(field(c), Some("notify.webhook.name"));
    let mut c = ok.clone();
    c.webhook[0].name = "Bad Name".into();
    assert_eq!(field(c), Some("notify.webhook.name"));
    let mut c = ok.clone();
    c.webhook[0].url = "ftp://h".into();
    assert_eq!(field(c), Some("notify.webhook.url"));
    let dir = tempfile::tempdir().expect("dir");
    let tok = dir.path().join("t");
    std::fs::write(&tok, "secret\n").expect("write");
    let mut c = ok.clone();
    c.webhook[0].url = "http://h.example/x".into();
    c.webhook[0].bearer_token_file = Some(tok.clone());
    assert_eq!(
        field(c),
        Some("notify.webhook.url"),
        "token over plain http"
    );
    let mut c = ok.clone();
    c.webhook[0].url = "http://127.0.0.1:9/x".into();
    c.webhook[0].bearer_token_file = Some(tok);
    assert!(c.validate().is_ok(), "loopback may be plain http");
    let mut c = ok.clone();
    c.webhook[0].bearer_token_file = Some(dir.path().join("missing"));
    assert_eq!(field(c), Some("notify.webhook.bearer_token_file"));
    let mut c = ok.clone();
    c.webhook[0].timeout_secs = 0.0;
    assert_eq!(field(c), Some("notify.webhook.timeout_secs"));
    let mut c = ok.clone();
    c.retry_max_ms = 1;
    assert_eq!(field(c), Some("notify.retry_max_ms"));
    let mut c = ok.clone();
    c.queue_capacity = 0;
    assert_eq!(field(c), Some("notify.queue_capacity"));
    let sns = |arn: &str| SnsConfig {
        name: "seed".into(),
        topic_arn: arn.into(),
        region: None,
        endpoint_url: None,
        timeout_secs: 5.0,
        send_resolved: true,
    };
    let mut c = ok.clone();
    c.sns
        .push(sns("arn:aws:sns:us-east-1:123456789012:selfheal"));
    assert!(c.validate().is_ok());
    let mut c = ok;
    c.sns.push(sns("arn:aws:sqs:us-east-1:123456789012:q"));
    assert_eq!(field(c), Some("notify.sns.topic_arn"));
}
