//! Engine tests: plain numbers for time.

use super::engine::Engine;
use super::testkit::{anomaly, env, node_anomaly, sample};
use super::{IncidentSettings, Snapshot};
use selfheal_core::incident::{Actor, EventKind, MutedBy, NotifyReason, Severity, Silence, State};
use selfheal_core::schema::Envelope;

const S: i64 = 1000;
const T0: i64 = 1_000_000;

fn engine() -> Engine {
    Engine::new(IncidentSettings::default(), Snapshot::default()).expect("engine")
}

/// 3 nodes x 5 pods, each reporting `rounds` anomalies with fresh ids from `first_id`.
fn storm(first_id: u128, rounds: usize) -> Vec<Envelope> {
    let mut out = Vec::new();
    let mut id = first_id;
    for r in 0..rounds {
        for node in ["n1", "n2", "n3"] {
            for pod in 0..5 {
                let mut a = anomaly(id, node, pod, 0.7 + (r % 10) as f64 / 100.0);
                a.record.ts_ms = T0 + r as i64 * 600;
                out.push(env(a));
                id += 1;
            }
        }
    }
    out
}

#[test]
fn a_storm_from_fifteen_pods_on_three_nodes_is_one_incident() {
    let mut e = engine();
    let recs = storm(1, 200);
    let mut total = 0;
    let mut dups = 0;
    for (i, chunk) in recs.chunks(500).enumerate() {
        let (_, st) = e.apply(chunk, T0 + i as i64 * S);
        total += st.anomalies;
        // The same chunk again: every record a duplicate.
        let (up, st2) = e.apply(chunk, T0 + i as i64 * S);
        dups += st2.duplicates;
        assert_eq!(st2.anomalies, 0);
        assert!(up.seen.is_empty());
    }
    assert_eq!(total, 3000);
    assert_eq!(dups, 3000);
    let active: Vec<_> = e.active().collect();
    assert_eq!(active.len(), 1);
    let inc = active[0];
    assert_eq!(inc.anomaly_count, 3000);
    assert_eq!((inc.pod_count, inc.node_count), (15, 3));
    assert_eq!(inc.first_seen_ms, T0);
    assert_eq!(inc.last_seen_ms, T0 + 199 * 600);
    assert!((inc.peak.score - 0.79).abs() < 1e-9);
    assert_eq!(inc.peak.threshold, 0.6);
    assert!(inc.model_versions.contains("cpu-1"));
    assert_eq!(inc.top_features()[0].name, "cpu_usage_cores");
    assert!(!inc.series.is_empty() && inc.series.len() <= 120);
    assert_eq!(inc.state, State::Open);
}

#[test]
fn severity_uses_breadth_from_sampled_subjects_and_is_re_evaluated() {
    let mut e = engine();
    // The workload has 20 pods (seen in samples); one is anomalous, slightly.
    let samples: Vec<_> = (0..20)
        .map(|p| sample(10_000 + p as u128, "n1", p))
        .collect();
    e.apply(&samples, T0);
    let mut a = anomaly(1, "n1", 0, 0.62);
    a.record.ts_ms = T0;
    e.apply(&[env(a)], T0);
    assert_eq!(e.active().next().map(|i| i.severity), Some(Severity::Info));
    // Now all twenty, far over, for ten minutes.
    let mut all = Vec::new();
    for p in 0..20 {
        let mut a = anomaly(100 + p as u128, "n1", p, 0.95);
        a.record.ts_ms = T0 + 600 * S;
        all.push(env(a));
    }
    let (up, _) = e.apply(&all, T0 + 600 * S);
    let inc = e.active().next().expect("incident");
    assert_eq!(inc.severity, Severity::Critical);
    assert!(up.events.iter().any(|ev| matches!(
        ev.kind,
        EventKind::SeverityChanged {
            to: Severity::Critical,
            ..
        }
    )));
}

fn notified(up: &super::Update) -> Vec<NotifyReason> {
    up.events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Notified { reason } => Some(reason),
            _ => None,
        })
        .collect()
}

#[test]
fn alertmanager_timing_group_wait_interval_repeat_and_resolve() {
    let mut e = engine();
    e.apply(&storm(1, 1), T0);
    assert!(
        notified(&e.tick(T0 + 29 * S).0).is_empty(),
        "before group_wait"
    );
    assert_eq!(notified(&e.tick(T0 + 30 * S).0), vec![NotifyReason::Opened]);
    // Unchanged at the next flush: nothing.
    e.apply(&storm(1000, 1), T0 + 100 * S);
    assert!(notified(&e.tick(T0 + 330 * S).0).is_empty());
    // A new node joins: the next flush (phase kept: 30 s + 2 x 5 min) says so.
    let mut a = anomaly(5000, "n9", 0, 0.9);
    a.record.ts_ms = T0;
    e.apply(&[env(a)], T0 + 400 * S);
    assert!(notified(&e.tick(T0 + 500 * S).0).is_empty());
    assert_eq!(
        notified(&e.tick(T0 + 630 * S).0),
        vec![NotifyReason::Updated]
    );
    // Kept alive without change: the repeat comes after repeat_interval (4 h).
    let mut t = T0 + 630 * S;
    let mut id = 10_000u128;
    let mut reasons = Vec::new();
    while t < T0 + 630 * S + 4 * 3600 * S + 300 * S {
        t += 60 * S;
        let mut a = anomaly(id, "n1", 0, 0.7);
        a.record.ts_ms = t;
        id += 1;
        e.apply(&[env(a)], t);
        reasons.extend(notified(&e.tick(t).0));
    }
    // (n9's 0.9 made it critical before the update above, so nothing changes any more.)
    assert_eq!(reasons, vec![NotifyReason::Repeat]);
    // Silence from the agents: resolve_timeout later it resolves, notified as resolved.
    let (up, _) = e.tick(t + 300 * S);
    assert_eq!(notified(&up), vec![NotifyReason::Resolved]);
    assert_eq!(up.incidents[0].state, State::Resolved);
    assert_eq!(e.active().count(), 0);
}

#[test]
fn an_incident_resolved_inside_group_wait_is_never_notified() {
    let mut e = IncidentSettings {
        resolve_timeout_ms: 10 * S,
        ..IncidentSettings::default()
    };
    e.group_wait_ms = 30 * S;
    let mut e = Engine::new(e, Snapshot::default()).expect("engine");
    e.apply(&storm(1, 1), T0);
    let (up, notes) = e.tick(T0 + 10 * S);
    assert!(notes.is_empty());
    assert_eq!(up.incidents[0].state, State::Resolved);
    // The next anomaly opens a new incident.
    e.apply(&storm(100, 1), T0 + 20 * S);
    let ids: Vec<_> = e.active().map(|i| i.id.clone()).collect();
    assert_eq!(ids.len(), 1);
    assert_ne!(ids[0], up.incidents[0].id);
}

fn silence(matchers: &[&str], start: i64, end: i64) -> Silence {
    Silence {
        id: "sil-1".into(),
        matchers: matchers
            .iter()
            .map(|m| m.parse().expect("matcher"))
            .collect(),
        starts_at_ms: start,
        ends_at_ms: end,
        created_by: "ana".into(),
        comment: "deploying".into(),
        created_at_ms: start,
        expired_by: None,
    }
}

#[test]
fn a_silence_mutes_visibly_suppresses_notifications_and_expires() {
    let mut e = engine();
    e.apply(&storm(1, 1), T0);
    let up = e
        .put_silence(
            silence(&["workload=Deployment/checkout"], T0, T0 + 60 * S),
            T0,
        )
        .expect("silence");
    assert!(
        up.events
            .iter()
            .any(|ev| matches!(ev.kind, EventKind::Muted { .. }))
    );
    let inc = e.active().next().expect("incident");
    assert_eq!(inc.muted, Some(MutedBy::Silence { id: "sil-1".into() }));
    // Still recorded: new anomalies count.
    let (_, st) = e.apply(&storm(100, 1), T0 + S);
    assert_eq!((st.anomalies, st.muted, st.silenced), (15, 15, 15));
    let (up, notes) = e.tick(T0 + 30 * S);
    assert!(notes.iter().all(|n| n.suppressed) && !notes.is_empty());
    assert!(
        up.events
            .iter()
            .any(|ev| matches!(ev.kind, EventKind::NotificationSuppressed { .. }))
    );
    // Expires by itself.
    let (up, _) = e.tick(T0 + 60 * S);
    assert!(
        up.events
            .iter()
            .any(|ev| matches!(ev.kind, EventKind::Unmuted { .. }))
    );
    assert_eq!(e.active().next().and_then(|i| i.muted.clone()), None);
}

#[test]
fn expiring_a_silence_early_unmutes_at_once() {
    let mut e = engine();
    e.apply(&storm(1, 1), T0);
    e.put_silence(silence(&["namespace=shop"], T0, T0 + 3600 * S), T0)
        .expect("silence");
    let up = e
        .expire_silence("sil-1", "bob", T0 + 5 * S)
        .expect("expire");
    assert_eq!(up.silences[0].expired_by.as_deref(), Some("bob"));
    assert_eq!(e.active().next().and_then(|i| i.muted.clone()), None);
}

#[test]
fn a_node_incident_inhibits_pod_incidents_on_it_until_it_resolves() {
    let settings = IncidentSettings {
        resolve_timeout_ms: 60 * S,
        ..IncidentSettings::default()
    };
    let mut e = Engine::new(settings, Snapshot::default()).expect("engine");
    e.apply(&[env(node_anomaly(1, "n1"))], T0);
    let mut a = anomaly(2, "n1", 0, 0.9);
    a.record.ts_ms = T0;
    e.apply(&[env(a)], T0 + S);
    let pod = e
        .active()
        .find(|i| i.scope == selfheal_core::incident::Scope::Pod)
        .expect("pod incident");
    assert!(
        matches!(pod.muted, Some(MutedBy::Inhibition { .. })),
        "{:?}",
        pod.muted
    );
    // Keep the pod incident alive; the node one times out and the pod one unmutes.
    let mut a = anomaly(3, "n1", 0, 0.9);
    a.record.ts_ms = T0;
    e.apply(&[env(a)], T0 + 50 * S);
    let (up, _) = e.tick(T0 + 61 * S);
    assert!(
        up.events
            .iter()
            .any(|ev| matches!(ev.kind, EventKind::Unmuted { .. }))
    );
    assert_eq!(e.active().count(), 1);
    assert_eq!(e.active().next().and_then(|i| i.muted.clone()), None);
}

#[test]
fn lifecycle_moves_are_events_with_actor_and_cause() {
    let mut e = engine();
    e.apply(&storm(1, 1), T0);
    let id = e.active().next().expect("incident").id.clone();
    let up = e
        .transition(
            &id,
            State::Acknowledged,
            "looking",
            Actor::Person("ana".into()),
            T0 + S,
        )
        .expect("ack");
    let ev = up.events.last().expect("event");
    assert_eq!(ev.actor, Actor::Person("ana".into()));
    assert_eq!(ev.cause, "looking");
    assert_eq!(ev.at_ms, T0 + S);
    e.transition(&id, State::Acting, "scale out", Actor::Healer, T0 + 2 * S)
        .expect("acting");
    e.transition(&id, State::Verifying, "applied", Actor::Healer, T0 + 3 * S)
        .expect("verifying");
    assert!(
        e.transition(&id, State::Acknowledged, "x", Actor::System, T0 + 4 * S)
            .is_err()
    );
    // Acting/verifying do not time out: healing's verification ends them.
    e.tick(T0 + 3600 * S);
    assert_eq!(e.get(&id).map(|i| i.state), Some(State::Verifying));
    let up = e
        .transition(
            &id,
            State::Resolved,
            "verified",
            Actor::Healer,
            T0 + 3601 * S,
        )
        .expect("resolve");
    assert_eq!(up.incidents[0].state, State::Resolved);
    assert!(e.get(&id).is_none());
}

#[test]
fn restoring_a_snapshot_keeps_dedup_and_the_incident() {
    let mut e = engine();
    let recs = storm(1, 10);
    let (up, _) = e.apply(&recs, T0);
    let snap = Snapshot {
        active: up.incidents.clone(),
        silences: vec![],
        seen: up.seen.clone(),
    };
    let mut e2 = Engine::new(IncidentSettings::default(), snap).expect("restore");
    let (_, st) = e2.apply(&recs, T0 + S);
    assert_eq!((st.anomalies, st.duplicates), (0, 150));
    let (_, st) = e2.apply(&storm(10_000, 1), T0 + 2 * S);
    assert_eq!(st.opened, 0);
    assert_eq!(e2.active().next().map(|i| i.anomaly_count), Some(165));
}

#[test]
fn the_timeline_stays_short_under_many_small_batches() {
    let mut e = engine();
    let recs = storm(1, 200);
    let mut events = 0;
    for (i, r) in recs.iter().enumerate() {
        let (up, _) = e.apply(std::slice::from_ref(r), T0 + i as i64 * 40);
        events += up.events.len();
    }
    // 3000 one-record batches over 2 minutes: an event when a subject joins, else once a minute.
    assert!(events < 40, "{events}");
}
