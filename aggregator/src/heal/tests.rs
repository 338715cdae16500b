//! The controller on a real SQLite store and the dry-run executor, with a hand-driven clock:
//! one action per incident, exactly once across a restart, verification both ways, restores,
//! and refusals on the timeline.

use super::controller::Healer;
use super::metrics::HealMetrics;
use super::{AnyExecutor, DryRunExecutor};
use crate::incident::handler::Clock;
use crate::incident::testkit::{anomaly, env};
use crate::incident::{IncidentMetrics, IncidentSettings, Incidents};
use crate::policy::{Policy, PolicySource};
use crate::store::sqlite::SqliteStore;
use crate::store::{ActionStore, IncidentStore};
use selfheal_core::Family;
use selfheal_core::action::{Action, HpaState, ObjectVersion, Target, WorkloadKind, WorkloadState};
use selfheal_core::incident::{EventKind, Incident, State};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

const T0: i64 = 1_796_000_000_000;

#[derive(Debug)]
struct ManualClock(AtomicI64);

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

struct Rig {
    clock: Arc<ManualClock>,
    incidents: Incidents<SqliteStore>,
    dry: Arc<DryRunExecutor>,
    healer: Healer<SqliteStore>,
    log: std::path::PathBuf,
}

static IDS: AtomicU64 = AtomicU64::new(1);

impl Rig {
    async fn new(dir: &Path, policy: Policy) -> Rig {
        let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
        Rig::on(dir, policy, clock).await
    }

    async fn on(dir: &Path, policy: Policy, clock: Arc<ManualClock>) -> Rig {
        let store = SqliteStore::open(&dir.join("incidents"))
            .await
            .expect("store");
        let settings = IncidentSettings {
            resolve_timeout_ms: 3_600_000,
            ..IncidentSettings::default()
        };
        let incidents = Incidents::start(
            settings,
            store,
            clock.clone() as Arc<dyn Clock>,
            Arc::new(IncidentMetrics::default()),
        )
        .await
        .expect("incidents");
        let log = dir.join("dry-run.jsonl");
        let dry = Arc::new(DryRunExecutor::open(Some(&log), Duration::ZERO).expect("dry"));
        let healer = Healer::start(
            incidents.clone(),
            Arc::new(PolicySource::fixed(policy)),
            AnyExecutor::DryRun(Arc::clone(&dry)),
            Arc::clone(&dry),
            Arc::new(HealMetrics::default()),
        )
        .await
        .expect("healer");
        Rig {
            clock,
            incidents,
            dry,
            healer,
            log,
        }
    }

    fn advance(&self, ms: i64) {
        self.clock.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// A storm of `family` anomalies from 4 pods of shop/Deployment/`name`.
    async fn storm(&self, family: Family, name: &str) {
        let recs: Vec<_> = (0..40)
            .map(|i| {
                let mut a = anomaly(
                    u128::from(IDS.fetch_add(1, Ordering::SeqCst)),
                    "n1",
                    i % 4,
                    0.9,
                );
                a.record.family = family;
                a.record.ts_ms = self.clock.now_ms();
                if let selfheal_core::schema::Subject::Pod(p) = &mut a.record.subject {
                    p.owner = Some(selfheal_core::schema::OwnerRef {
                        kind: "Deployment".into(),
                        name: name.into(),
                    });
                    p.uid = format!("{name}-{}", i % 4);
                }
                env(a)
            })
            .collect();
        self.incidents
            .apply_batch(recs.iter())
            .await
            .expect("batch");
    }

    async fn only(&self) -> Incident {
        let page = self
            .incidents
            .store()
            .list(&crate::store::Query {
                limit: 10,
                ..Default::default()
            })
            .await
            .expect("list");
        assert_eq!(page.incidents.len(), 1, "{:?}", page.incidents);
        page.incidents[0].clone()
    }

    async fn events(&self, inc: &Incident) -> Vec<EventKind> {
        self.incidents
            .store()
            .events(&inc.id, 0, 1000)
            .await
            .expect("events")
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }

    fn log_lines(&self) -> usize {
        std::fs::read_to_string(&self.log).map_or(0, |s| s.lines().count())
    }
}

fn intents(evs: &[EventKind]) -> usize {
    evs.iter()
        .filter(|e| matches!(e, EventKind::ActionIntent { .. }))
        .count()
}

#[tokio::test]
async fn a_cpu_storm_scales_once_and_resolves_when_the_anomalies_stop() {
    let dir = tempfile::tempdir().expect("dir");
    let rig = Rig::new(dir.path(), Policy::default()).await;
    rig.storm(Family::Cpu, "checkout").await;
    rig.healer.tick().await;
    rig.healer.tick().await;
    let inc = rig.only().await;
    assert_eq!(inc.state, State::Verifying);
    let evs = rig.events(&inc).await;
    assert_eq!(intents(&evs), 1);
    let Some(EventKind::ActionIntent {
        request, dry_run, ..
    }) = evs
        .iter()
        .find(|e| matches!(e, EventKind::ActionIntent { .. }))
    else {
        panic!("intent");
    };
    assert!(*dry_run);
    assert_eq!(request.action, Action::Scale { from: 4, to: 5 });
    assert_eq!(rig.log_lines(), 1);
    // The window passes with no new anomaly: healed.
    rig.advance(301_000);
    rig.healer.tick().await;
    let inc = rig.only().await;
    assert_eq!(inc.state, State::Resolved, "{:?}", rig.events(&inc).await);
    let evs = rig.events(&inc).await;
    assert!(
        evs.iter()
            .any(|e| matches!(e, EventKind::Verified { healed: true, .. }))
    );
    let acts = rig
        .incidents
        .store()
        .actions_of(&inc.id)
        .await
        .expect("actions");
    assert_eq!(acts.len(), 1);
    assert!(acts[0].is_finished());
    assert_eq!(
        crate::store::efficacy(&acts)["scale_out"].share(),
        Some(1.0)
    );

    // The next storm on the same Deployment within the cooldown is refused, with its reason.
    rig.advance(60_000);
    rig.storm(Family::Cpu, "checkout").await;
    rig.healer.tick().await;
    rig.healer.tick().await;
    let page = rig
        .incidents
        .store()
        .list(&crate::store::Query {
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("list");
    let second = page
        .incidents
        .iter()
        .find(|i| i.state != State::Resolved)
        .expect("a second incident");
    let evs = rig.events(second).await;
    let refusals: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            EventKind::HealRefused {
                guardrail, reason, ..
            } => Some((guardrail.clone(), reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(refusals.len(), 1, "recorded once: {evs:?}");
    assert_eq!(refusals[0].0, "cooldown");
    assert_eq!(intents(&evs), 0);
    assert_eq!(rig.log_lines(), 1, "nothing more sent");
}

#[tokio::test]
async fn anomalies_that_go_on_escalate_and_the_action_is_not_repeated() {
    let dir = tempfile::tempdir().expect("dir");
    let rig = Rig::new(dir.path(), Policy::default()).await;
    rig.storm(Family::Memory, "cart").await;
    rig.healer.tick().await;
    rig.advance(40_000);
    rig.storm(Family::Memory, "cart").await;
    rig.healer.tick().await;
    let inc = rig.only().await;
    assert_eq!(inc.state, State::Escalated);
    let evs = rig.events(&inc).await;
    assert!(
        evs.iter()
            .any(|e| matches!(e, EventKind::Verified { healed: false, .. }))
    );
    for _ in 0..3 {
        rig.advance(400_000);
        rig.storm(Family::Memory, "cart").await;
        rig.healer.tick().await;
    }
    let evs = rig.events(&rig.only().await).await;
    assert_eq!(intents(&evs), 1, "never loops the same action");
    assert!(matches!(
        evs.iter().find(|e| matches!(e, EventKind::ActionIntent { .. })),
        Some(EventKind::ActionIntent { request, .. }) if matches!(request.action, Action::RolloutRestart { .. })
    ));
}

#[tokio::test]
async fn an_intent_without_an_outcome_is_resent_once_after_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
    let id;
    {
        let rig = Rig::on(dir.path(), Policy::default(), clock.clone()).await;
        rig.storm(Family::Cpu, "checkout").await;
        let inc = rig.only().await;
        id = inc.id.clone();
        // What a crash after the intent and before the outcome leaves: the intent alone.
        let record = crate::store::ActionRecord {
            request_id: format!("{id}/1"),
            incident: id.clone(),
            step: 1,
            playbook: "scale_out".into(),
            executor: "dry-run".into(),
            dry_run: true,
            request: selfheal_core::action::ActionRequest {
                request_id: format!("{id}/1"),
                target: Target {
                    namespace: "shop".into(),
                    kind: WorkloadKind::Deployment,
                    name: "checkout".into(),
                },
                expect: ObjectVersion {
                    uid: "dry-run:shop/Deployment/checkout".into(),
                    resource_version: "1".into(),
                },
                action: Action::Scale { from: 4, to: 5 },
            },
            intent_at_ms: T0,
            attempts: 0,
            outcome: None,
            verification: None,
            restore: None,
        };
        assert!(
            rig.incidents
                .store()
                .insert_intent(&record)
                .await
                .expect("insert")
        );
        assert!(
            !rig.incidents
                .store()
                .insert_intent(&record)
                .await
                .expect("again"),
            "conditional"
        );
    }
    let rig = Rig::on(dir.path(), Policy::default(), clock).await;
    rig.healer.tick().await;
    rig.healer.tick().await;
    let acts = rig
        .incidents
        .store()
        .actions_of(&id)
        .await
        .expect("actions");
    assert_eq!(acts.len(), 1);
    assert!(acts[0].outcome.is_some(), "{:?}", acts[0]);
    assert_eq!(rig.log_lines(), 1, "sent exactly once");
    let evs = rig.events(&rig.only().await).await;
    assert!(
        evs.iter()
            .any(|e| matches!(e, EventKind::ActionApplied { .. }))
    );
    assert_eq!(
        intents(&evs),
        0,
        "no new decision: the stored record was followed"
    );
}

#[tokio::test]
async fn an_hpa_floor_is_raised_held_and_restored() {
    let dir = tempfile::tempdir().expect("dir");
    let rig = Rig::new(dir.path(), Policy::default()).await;
    let t = Target {
        namespace: "shop".into(),
        kind: WorkloadKind::Deployment,
        name: "web".into(),
    };
    rig.dry.set_state(WorkloadState {
        target: t.clone(),
        version: ObjectVersion {
            uid: "d".into(),
            resource_version: "5".into(),
        },
        generation: 2,
        observed_generation: 2,
        replicas: 3,
        ready_replicas: 3,
        updated_replicas: 3,
        available_replicas: 3,
        rolling_out: false,
        hpa: Some(HpaState {
            name: "web".into(),
            version: ObjectVersion {
                uid: "h".into(),
                resource_version: "9".into(),
            },
            min_replicas: 2,
            max_replicas: 10,
            current_replicas: 3,
            last_request_id: None,
        }),
        last_request_id: None,
    });
    rig.storm(Family::Traffic, "web").await;
    rig.healer.tick().await;
    let inc = rig.only().await;
    assert_eq!(inc.state, State::Verifying);
    assert_eq!(floor(&rig, &t).await, 4);
    // Verified healed at 5 min, but the floor is held for stabilize_for (15 min) first.
    rig.advance(301_000);
    rig.healer.tick().await;
    assert_eq!(rig.only().await.state, State::Verifying);
    rig.advance(600_000);
    rig.healer.tick().await;
    assert_eq!(floor(&rig, &t).await, 2, "restored");
    let inc = rig.only().await;
    assert_eq!(inc.state, State::Resolved);
    let acts = rig
        .incidents
        .store()
        .actions_of(&inc.id)
        .await
        .expect("actions");
    assert_eq!(acts.len(), 2);
    assert_eq!(
        acts[1].request.action,
        Action::SetHpaMinReplicas {
            hpa: "web".into(),
            from: 4,
            to: 2
        }
    );
    assert_eq!(rig.log_lines(), 2);
}

#[tokio::test]
async fn guardrails_refuse_on_the_timeline_and_send_nothing() {
    // Mid-rollout, an allow-list, a silence: each blocks with its reason.
    let dir = tempfile::tempdir().expect("dir");
    let mut p = Policy::default();
    p.guardrails.allow_actions = [selfheal_core::action::ActionKind::Scale].into();
    let rig = Rig::new(dir.path(), p).await;
    let t = |name: &str| Target {
        namespace: "shop".into(),
        kind: WorkloadKind::Deployment,
        name: name.into(),
    };
    rig.dry.assume(&t("rolling"), 3);
    {
        use selfheal_core::action::Executor;
        let mut s = rig.dry.observe(&t("rolling")).await.expect("s");
        s.generation = 5;
        s.observed_generation = 4;
        rig.dry.set_state(s);
    }
    rig.storm(Family::Cpu, "rolling").await;
    rig.storm(Family::Memory, "leaky").await;
    rig.healer.tick().await;
    let page = rig
        .incidents
        .store()
        .list(&crate::store::Query {
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("list");
    let mut seen = Vec::new();
    for inc in &page.incidents {
        for e in rig.events(inc).await {
            if let EventKind::HealRefused { guardrail, .. } = e {
                seen.push((inc.workload_key.clone(), guardrail, inc.state));
            }
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (
                "shop/Deployment/leaky".into(),
                "action_kind".into(),
                State::Escalated
            ),
            (
                "shop/Deployment/rolling".into(),
                "mid_rollout".into(),
                State::Open
            ),
        ]
    );
    assert_eq!(rig.log_lines(), 0);
}

async fn floor(rig: &Rig, t: &Target) -> i32 {
    use selfheal_core::action::Executor;
    rig.dry
        .observe(t)
        .await
        .expect("observe")
        .hpa
        .expect("hpa")
        .min_replicas
}
