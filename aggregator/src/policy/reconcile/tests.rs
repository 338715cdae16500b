//! reconcile, restore, error_policy and verify with plain values, and properties over arbitrary
//! worlds: idempotent, never acts twice, never past a guardrail, always within bounds.

use super::*;
use crate::policy::guard::{Guardrail, Recent};
use crate::policy::{Maintenance, Policy};
use proptest::prelude::*;
use selfheal_core::Family;
use selfheal_core::action::{ActionKind, HpaState};
use selfheal_core::incident::{Labels, MutedBy};

const NOW: i64 = 1_796_000_000_000;

fn incident(family: Family, key: &str) -> Incident {
    Incident::open(
        format!("family={family},workload={key}"),
        Labels::new(),
        Scope::Pod,
        family,
        key.into(),
        NOW - 60_000,
        NOW,
    )
    .0
}

fn target(ns: &str, name: &str) -> Target {
    Target {
        namespace: ns.into(),
        kind: WorkloadKind::Deployment,
        name: name.into(),
    }
}

fn state(t: Target, replicas: i32) -> WorkloadState {
    WorkloadState {
        target: t,
        version: ObjectVersion {
            uid: "u1".into(),
            resource_version: "41".into(),
        },
        generation: 3,
        observed_generation: 3,
        replicas,
        ready_replicas: replicas,
        updated_replicas: replicas,
        available_replicas: replicas,
        rolling_out: false,
        hpa: None,
        last_request_id: None,
    }
}

fn world<'a>(p: &'a Policy, g: &'a GuardState, s: Option<&'a WorkloadState>) -> World<'a> {
    World {
        policy: p,
        guard: g,
        observed: s,
        steps_taken: 0,
        now_ms: NOW,
    }
}

fn recent(id: &str, inc: &str, t: Target, kind: ActionKind, at_ms: i64) -> Recent {
    Recent {
        request_id: id.into(),
        incident: inc.into(),
        target: t,
        kind,
        at_ms,
        restore: false,
    }
}

fn refused(d: &Decision) -> Option<Guardrail> {
    match d {
        Decision::Refuse(r) => Some(r.guardrail),
        _ => None,
    }
}

#[test]
fn a_cpu_incident_scales_out_by_step_or_factor_within_max() {
    let p = Policy::default();
    let g = GuardState::default();
    let inc = incident(Family::Cpu, "shop/Deployment/checkout");
    let s = state(target("shop", "checkout"), 4);
    assert_eq!(
        reconcile(&inc, &world(&p, &g, None)),
        Decision::Observe {
            target: target("shop", "checkout")
        }
    );
    let Decision::Act(plan) = reconcile(&inc, &world(&p, &g, Some(&s))) else {
        panic!("acts");
    };
    assert_eq!(plan.request.request_id, format!("{}/1", inc.id));
    assert_eq!(plan.request.action, Action::Scale { from: 4, to: 5 });
    assert_eq!(plan.request.expect, s.version);
    assert_eq!(plan.playbook, "scale_out");
    assert_eq!(plan.restore, None, "cpu scale-out without an HPA stays");
    // ×factor wins when it adds more; max_replicas caps.
    let mut p2 = p.clone();
    p2.playbooks.insert(
        Family::Cpu,
        Playbook::ScaleOut(Scaling {
            step: 1,
            factor: 2.0,
            max_replicas: 6,
            hold_ms: 1000,
        }),
    );
    let Decision::Act(plan) = reconcile(&inc, &world(&p2, &g, Some(&s))) else {
        panic!("acts");
    };
    assert_eq!(plan.request.action, Action::Scale { from: 4, to: 6 });
    let at_max = state(target("shop", "checkout"), 6);
    assert!(matches!(
        reconcile(&inc, &world(&p2, &g, Some(&at_max))),
        Decision::Escalate { .. }
    ));
}

#[test]
fn an_hpa_owned_workload_gets_its_floor_raised_for_a_bounded_time() {
    let p = Policy::default();
    let g = GuardState::default();
    let inc = incident(Family::Cpu, "shop/Deployment/checkout");
    let mut s = state(target("shop", "checkout"), 3);
    s.hpa = Some(HpaState {
        name: "checkout".into(),
        version: ObjectVersion {
            uid: "h1".into(),
            resource_version: "7".into(),
        },
        min_replicas: 2,
        max_replicas: 10,
        current_replicas: 3,
        last_request_id: None,
    });
    let Decision::Act(plan) = reconcile(&inc, &world(&p, &g, Some(&s))) else {
        panic!("acts");
    };
    assert_eq!(
        plan.request.action,
        Action::SetHpaMinReplicas {
            hpa: "checkout".into(),
            from: 2,
            to: 4
        }
    );
    assert_eq!(plan.request.expect.uid, "h1", "the HPA's version");
    assert_eq!(
        plan.restore,
        Some(Restore {
            after_ms: 1_800_000,
            previous: 2
        })
    );
    // Restoring: the floor is what healing set, so it goes back.
    let mut now = s.clone();
    if let Some(h) = now.hpa.as_mut() {
        h.min_replicas = 4;
        h.version.resource_version = "8".into();
    }
    let RestoreDecision::Act(r) = restore(&plan.request, 2, &now, NOW) else {
        panic!("restores");
    };
    assert_eq!(r.request_id, format!("{}/2", inc.id));
    assert_eq!(
        r.action,
        Action::SetHpaMinReplicas {
            hpa: "checkout".into(),
            from: 4,
            to: 2
        }
    );
    assert_eq!(r.expect.resource_version, "8");
    // Someone changed it since: left alone.
    if let Some(h) = now.hpa.as_mut() {
        h.min_replicas = 5;
    }
    assert!(matches!(
        restore(&plan.request, 2, &now, NOW),
        RestoreDecision::Skip { .. }
    ));
}

#[test]
fn traffic_stabilizes_and_restores_the_previous_replicas() {
    let p = Policy::default();
    let g = GuardState::default();
    let inc = incident(Family::Traffic, "shop/Deployment/web");
    let s = state(target("shop", "web"), 2);
    let Decision::Act(plan) = reconcile(&inc, &world(&p, &g, Some(&s))) else {
        panic!("acts");
    };
    assert_eq!(plan.request.action, Action::Scale { from: 2, to: 3 });
    assert_eq!(
        plan.restore,
        Some(Restore {
            after_ms: 900_000,
            previous: 2
        })
    );
    let later = state(target("shop", "web"), 3);
    let RestoreDecision::Act(r) = restore(&plan.request, 2, &later, NOW) else {
        panic!("restores");
    };
    assert_eq!(r.action, Action::Scale { from: 3, to: 2 });
    let mut rolling = later.clone();
    rolling.rolling_out = true;
    assert!(matches!(
        restore(&plan.request, 2, &rolling, NOW),
        RestoreDecision::Wait { .. }
    ));
}

#[test]
fn memory_restarts_and_restarts_restart_once_then_escalate() {
    let p = Policy::default();
    let inc = incident(Family::Memory, "shop/Deployment/cart");
    let s = state(target("shop", "cart"), 4);
    let Decision::Act(plan) = reconcile(&inc, &world(&p, &GuardState::default(), Some(&s))) else {
        panic!("acts");
    };
    assert_eq!(
        plan.request.action,
        Action::RolloutRestart {
            restarted_at: rfc3339(NOW)
        }
    );
    assert!(rfc3339(NOW).ends_with('Z'), "{}", rfc3339(NOW));
    let crash = incident(Family::Restarts, "shop/Deployment/cart");
    let Decision::Act(_) = reconcile(&crash, &world(&p, &GuardState::default(), Some(&s))) else {
        panic!("the first crash loop restarts");
    };
    // Long after the cooldown, another crash-loop incident of the same workload escalates.
    let g = GuardState::from_actions(vec![recent(
        "old/1",
        "old",
        target("shop", "cart"),
        ActionKind::RolloutRestart,
        NOW - 3 * 3_600_000,
    )]);
    assert!(matches!(
        reconcile(&crash, &world(&p, &g, Some(&s))),
        Decision::Escalate { .. }
    ));
}

#[test]
fn pressure_and_node_incidents_only_escalate() {
    let p = Policy::default();
    let g = GuardState::default();
    let inc = incident(Family::Pressure, "shop/Deployment/a");
    assert!(matches!(
        reconcile(&inc, &world(&p, &g, None)),
        Decision::Escalate { .. }
    ));
    let mut node = incident(Family::Cpu, "node/n1");
    node.scope = Scope::Node;
    assert!(matches!(
        reconcile(&node, &world(&p, &g, None)),
        Decision::Escalate { .. }
    ));
    let ds = incident(Family::Cpu, "shop/DaemonSet/x");
    assert!(matches!(
        reconcile(&ds, &world(&p, &g, None)),
        Decision::Escalate { .. }
    ));
}

#[test]
fn each_guardrail_refuses_with_its_reason() {
    let p = Policy::default();
    let g = GuardState::default();
    let t = target("shop", "checkout");
    let s = state(t.clone(), 4);
    let mut inc = incident(Family::Cpu, "shop/Deployment/checkout");

    // Muted.
    inc.muted = Some(MutedBy::Silence { id: "s1".into() });
    let d = reconcile(&inc, &world(&p, &g, Some(&s)));
    assert_eq!(refused(&d), Some(Guardrail::Muted));
    inc.muted = None;

    // Namespace: denied by default, or not allowed; final.
    let sys = incident(Family::Cpu, "kube-system/Deployment/coredns");
    let Decision::Refuse(r) = reconcile(&sys, &world(&p, &g, None)) else {
        panic!("kube-system refused");
    };
    assert_eq!((r.guardrail, r.retry_at_ms), (Guardrail::Namespace, None));
    let mut only = p.clone();
    only.guardrails.allow_namespaces = ["payments".to_owned()].into();
    assert_eq!(
        refused(&reconcile(&inc, &world(&only, &g, Some(&s)))),
        Some(Guardrail::Namespace)
    );

    // Mid-rollout: generation not observed, or unfinished.
    let mut rolling = s.clone();
    rolling.observed_generation = 2;
    let Decision::Refuse(r) = reconcile(&inc, &world(&p, &g, Some(&rolling))) else {
        panic!("mid-rollout refused");
    };
    assert_eq!(r.guardrail, Guardrail::MidRollout);
    assert!(r.reason.contains("generation 3"), "{}", r.reason);
    rolling.observed_generation = 3;
    rolling.rolling_out = true;
    assert_eq!(
        refused(&reconcile(&inc, &world(&p, &g, Some(&rolling)))),
        Some(Guardrail::MidRollout)
    );

    // Action kind.
    let mut no_scale = p.clone();
    no_scale.guardrails.allow_actions = [ActionKind::RolloutRestart].into();
    assert_eq!(
        refused(&reconcile(&inc, &world(&no_scale, &g, Some(&s)))),
        Some(Guardrail::ActionKind)
    );

    // Maintenance.
    let mut maint = p.clone();
    maint.guardrails.maintenance = vec![Maintenance::Absolute {
        name: "freeze".into(),
        starts_at_ms: NOW - 1,
        ends_at_ms: NOW + 1000,
    }];
    let Decision::Refuse(r) = reconcile(&inc, &world(&maint, &g, Some(&s))) else {
        panic!("maintenance refused");
    };
    assert_eq!(
        (r.guardrail, r.retry_at_ms),
        (Guardrail::Maintenance, Some(NOW + 1000))
    );
    assert!(r.reason.contains("freeze"));

    // Cooldown: another incident acted on the same workload 5 minutes ago.
    let g2 = GuardState::from_actions(vec![recent(
        "a/1",
        "a",
        t.clone(),
        ActionKind::Scale,
        NOW - 300_000,
    )]);
    let Decision::Refuse(r) = reconcile(&inc, &world(&p, &g2, Some(&s))) else {
        panic!("cooldown refused");
    };
    assert_eq!(r.guardrail, Guardrail::Cooldown);
    assert_eq!(r.retry_at_ms, Some(NOW - 300_000 + 900_000));
    assert!(r.reason.contains("a/1"), "{}", r.reason);

    // Rates: global, then per namespace, then distinct workloads per namespace.
    let mut rate = p.clone();
    rate.guardrails.max_actions_per_hour = 2;
    let others = |ns: &str| {
        GuardState::from_actions(
            (0..2)
                .map(|i| {
                    recent(
                        &format!("o{i}/1"),
                        &format!("o{i}"),
                        target(ns, &format!("w{i}")),
                        ActionKind::Scale,
                        NOW - 60_000 * (i + 1),
                    )
                })
                .collect(),
        )
    };
    assert_eq!(
        refused(&reconcile(&inc, &world(&rate, &others("other"), Some(&s)))),
        Some(Guardrail::RateGlobal)
    );
    let mut rate_ns = p.clone();
    rate_ns.guardrails.max_actions_per_hour_per_namespace = 2;
    assert_eq!(
        refused(&reconcile(
            &inc,
            &world(&rate_ns, &others("shop"), Some(&s))
        )),
        Some(Guardrail::RateNamespace)
    );
    assert!(matches!(
        reconcile(&inc, &world(&rate_ns, &others("other"), Some(&s))),
        Decision::Act(_)
    ));
    let mut wl = p.clone();
    wl.guardrails.max_workloads_per_namespace_per_hour = 2;
    assert_eq!(
        refused(&reconcile(&inc, &world(&wl, &others("shop"), Some(&s)))),
        Some(Guardrail::WorkloadsPerNamespace)
    );
    // An hour later they no longer count.
    let old = GuardState::from_actions(
        others("shop")
            .recent()
            .iter()
            .cloned()
            .map(|mut r| {
                r.at_ms -= 3_600_000;
                r
            })
            .collect(),
    );
    assert!(matches!(
        reconcile(&inc, &world(&rate_ns, &old, Some(&s))),
        Decision::Act(_)
    ));

    // Blast radius: a restart of 4 replicas takes 1 down (25 %).
    let mem = incident(Family::Memory, "shop/Deployment/checkout");
    let mut tight = p.clone();
    tight.guardrails.max_unavailable_share = 0.2;
    let Decision::Refuse(r) = reconcile(&mem, &world(&tight, &g, Some(&s))) else {
        panic!("blast radius refused");
    };
    assert_eq!(r.guardrail, Guardrail::BlastRadius);
    assert!(r.reason.contains("1 of 4"), "{}", r.reason);
    assert!(matches!(
        reconcile(&mem, &world(&p, &g, Some(&s))),
        Decision::Act(_)
    ));
}

#[test]
fn a_recorded_step_or_a_state_healing_holds_means_wait() {
    let p = Policy::default();
    let g = GuardState::default();
    let s = state(target("shop", "checkout"), 4);
    let mut inc = incident(Family::Cpu, "shop/Deployment/checkout");
    let mut w = world(&p, &g, Some(&s));
    w.steps_taken = 1;
    assert!(matches!(reconcile(&inc, &w), Decision::Wait { .. }));
    for st in [
        State::Acting,
        State::Verifying,
        State::Escalated,
        State::Resolved,
    ] {
        inc.state = st;
        assert!(matches!(
            reconcile(&inc, &world(&p, &g, Some(&s))),
            Decision::Wait { .. }
        ));
    }
    inc.state = State::Acknowledged;
    assert!(matches!(
        reconcile(&inc, &world(&p, &g, Some(&s))),
        Decision::Act(_)
    ));
}

#[test]
fn error_policy_retries_what_may_pass_and_escalates_the_rest() {
    let unavailable = ActionError::new(ActionErrorKind::Unavailable, "503");
    assert_eq!(
        error_policy(&unavailable, 1),
        ErrorAction::Retry { after_ms: 1000 }
    );
    assert_eq!(
        error_policy(&unavailable, 3),
        ErrorAction::Retry { after_ms: 4000 }
    );
    assert!(matches!(
        error_policy(&unavailable, MAX_ATTEMPTS),
        ErrorAction::Escalate { .. }
    ));
    let conflict = ActionError::new(ActionErrorKind::Conflict, "409");
    assert_eq!(error_policy(&conflict, 1), ErrorAction::Redecide);
    for k in [
        ActionErrorKind::Forbidden,
        ActionErrorKind::NotFound,
        ActionErrorKind::Invalid,
    ] {
        assert!(matches!(
            error_policy(&ActionError::new(k, "x"), 1),
            ErrorAction::Escalate { .. }
        ));
    }
}

#[test]
fn verification_waits_the_window_and_fails_early_on_new_anomalies() {
    let p = Policy::default();
    let mut inc = incident(Family::Cpu, "shop/Deployment/checkout");
    let applied = NOW;
    inc.last_arrival_ms = applied + 5_000; // in flight: within settle
    assert_eq!(
        verify(&inc, applied, &p, applied + 60_000),
        Verdict::Pending {
            until_ms: applied + 300_000
        }
    );
    assert!(matches!(
        verify(&inc, applied, &p, applied + 300_000),
        Verdict::Healed { .. }
    ));
    inc.last_arrival_ms = applied + 31_000;
    assert!(matches!(
        verify(&inc, applied, &p, applied + 40_000),
        Verdict::NotHealed { .. }
    ));
}

fn arb_state() -> impl Strategy<Value = WorkloadState> {
    (
        0..40i32,
        0..3i64,
        any::<bool>(),
        prop::option::of((1..10i32, 1..40i32, 0..40i32)),
    )
        .prop_map(|(replicas, lag, rolling, hpa)| {
            let mut s = state(target("shop", "checkout"), replicas);
            s.observed_generation = s.generation - lag;
            s.rolling_out = rolling;
            s.hpa = hpa.map(|(min, extra, cur)| HpaState {
                name: "checkout".into(),
                version: ObjectVersion {
                    uid: "h".into(),
                    resource_version: "1".into(),
                },
                min_replicas: min,
                max_replicas: min + extra,
                current_replicas: cur,
                last_request_id: None,
            });
            s
        })
}

fn arb_guard() -> impl Strategy<Value = GuardState> {
    prop::collection::vec(
        (0..3usize, 0..3usize, 0..7_200_000i64, any::<bool>()),
        0..12,
    )
    .prop_map(|v| {
        GuardState::from_actions(
            v.into_iter()
                .enumerate()
                .map(|(i, (ns, w, ago, restart))| Recent {
                    request_id: format!("r{i}/1"),
                    incident: format!("r{i}"),
                    target: target(["shop", "pay", "web"][ns], ["checkout", "a", "b"][w]),
                    kind: if restart {
                        ActionKind::RolloutRestart
                    } else {
                        ActionKind::Scale
                    },
                    at_ms: NOW - ago,
                    restore: false,
                })
                .collect(),
        )
    })
}

fn arb_family() -> impl Strategy<Value = Family> {
    prop::sample::select(Family::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn reconcile_is_idempotent_and_never_acts_past_a_guardrail(
        fam in arb_family(),
        s in arb_state(),
        g in arb_guard(),
        muted in any::<bool>(),
        steps in 0..2u32,
        max_per_hour in 1..6u32,
        share in 0.05..1.0f64,
    ) {
        let mut p = Policy::default();
        p.guardrails.max_actions_per_hour = max_per_hour;
        p.guardrails.max_unavailable_share = share;
        let mut inc = incident(fam, "shop/Deployment/checkout");
        if muted {
            inc.muted = Some(MutedBy::Silence { id: "s".into() });
        }
        let w = World { policy: &p, guard: &g, observed: Some(&s), steps_taken: steps, now_ms: NOW };
        let d = reconcile(&inc, &w);
        prop_assert_eq!(&d, &reconcile(&inc, &w), "same world, same decision");
        if let Decision::Act(plan) = &d {
            prop_assert_eq!(steps, 0, "never a second step-1 action");
            prop_assert!(!muted);
            prop_assert!(s.observed_generation >= s.generation && !s.rolling_out);
            prop_assert!(guard::check_action(&p, &g, inc.id.as_str(), &s, &plan.request.action, NOW).is_ok());
            let hour = g.recent().iter().filter(|r| r.at_ms > NOW - 3_600_000).count();
            prop_assert!(hour < max_per_hour as usize);
            prop_assert!(g.recent().iter().all(|r| r.target != s.target || NOW - r.at_ms >= p.guardrails.cooldown_ms));
            match &plan.request.action {
                Action::Scale { from, to } => {
                    prop_assert_eq!(*from, s.replicas);
                    prop_assert!(*to > *from && *to <= 20);
                    prop_assert!(s.hpa.is_none(), "never fights an HPA");
                }
                Action::SetHpaMinReplicas { from, to, .. } => {
                    let h = s.hpa.as_ref().expect("an HPA");
                    prop_assert_eq!(*from, h.min_replicas);
                    prop_assert!(*to > *from && *to <= h.max_replicas);
                    prop_assert!(plan.restore.is_some(), "a raised floor is always restored");
                }
                Action::RolloutRestart { .. } => {
                    prop_assert!(guard::disrupted(&plan.request.action, &s) as f64 <= share * s.replicas.max(1) as f64);
                }
                Action::DeletePod { .. } => prop_assert!(false, "no default playbook deletes pods"),
            }
        }
    }
}
