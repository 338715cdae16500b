//! Healing through the real binary, with the dry-run executor (its request log is the record of
//! what would have been sent): a CPU storm on moto Kinesis becomes one scale decision, the next
//! storm meets the cooldown, verification resolves when the anomalies stop and escalates when
//! they do not; each guardrail blocks with its reason in history and nothing in the log; a bad
//! policy file stops the start naming the field and a bad reload keeps the old policy; a
//! SIGKILL after the intent and before the outcome, then a restart, sends the action once.
//!
//! Reuses the storm set-up of `tests/incidents.rs` (its aggregator, config and stream helpers).

use crate::incidents::{Agg, cli, config, now_ms, put, runtime, storm};

use crate::support::moto::{Moto, aws_env, create_stream, kinesis_client};
use crate::support::{free_port, selfheal, write_file};
use selfheal_aggregator::api::ShowBody;
use selfheal_aggregator::heal::dry_run::DryRunEntry;
use selfheal_aggregator::store::ActionRecord;
use selfheal_core::action::Action;
use selfheal_core::incident::{EventKind, Incident, State};
use selfheal_core::schema::{Anomaly, OwnerRef};
use selfheal_core::{Envelope, Family, Metric, Payload, PodRef, Record, RecordId, Subject};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Starts an aggregator on `moto` with `policy` as its policy file and `heal` extra `[heal]`
/// lines.
pub(crate) fn start(dir: &Path, moto: &Moto, port: u16, policy: &str, heal: &str) -> Agg {
    write_file(dir, "policy.toml", policy);
    let cfg = config(dir, port, "records");
    let mut text = std::fs::read_to_string(&cfg).expect("config");
    text.push_str(&format!(
        "[heal]\nenabled = true\npolicy_file = \"{}/policy.toml\"\ninterval_ms = 100\npolicy_poll_secs = 0.3\n{heal}\n",
        dir.display()
    ));
    std::fs::write(&cfg, text).expect("write config");
    let mut cmd = selfheal();
    aws_env(&mut cmd).env("AWS_ENDPOINT_URL", moto.endpoint());
    Agg::spawn(cmd, dir, &cfg, port)
}

/// `rounds` × 3 nodes × 5 pods of `family` anomalies of Deployment `ns/name`, at `t0`.
pub(crate) fn workload_storm(
    id_base: u128,
    t0: i64,
    family: Family,
    ns: &str,
    name: &str,
) -> Vec<Envelope> {
    let mut out = Vec::new();
    for round in 0..4 {
        for node in 0..3 {
            for pod in 0..5 {
                out.push(Envelope::new(Payload::Anomaly(Anomaly {
                    record: Record {
                        id: RecordId::from_u128(id_base + (round * 15 + node * 5 + pod) as u128),
                        ts_ms: t0 + round as i64 * 500,
                        node: format!("node-{node}"),
                        subject: Subject::Pod(PodRef {
                            uid: format!("{ns}-{name}-{node}-{pod}"),
                            namespace: Some(ns.into()),
                            name: Some(format!("{name}-{node}-{pod}")),
                            owner: Some(OwnerRef {
                                kind: "Deployment".into(),
                                name: name.into(),
                            }),
                            qos: None,
                        }),
                        family,
                        values: BTreeMap::from([(Metric::CpuUsageCores, 3.5)]),
                    },
                    score: 0.9,
                    threshold: 0.6,
                    model_version: "v1".into(),
                    features: vec![3.5],
                    top_features: vec![],
                    window: vec![],
                })));
            }
        }
    }
    out
}

fn log_entries(dir: &Path) -> Vec<DryRunEntry> {
    std::fs::read_to_string(dir.join("heal/dry-run.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a dry-run log line"))
        .collect()
}

pub(crate) fn events(agg: &Agg, inc: &Incident) -> Vec<EventKind> {
    let show: ShowBody = agg.get_json(&format!("/api/v1/incidents/{}", inc.id));
    show.events.into_iter().map(|e| e.kind).collect()
}

pub(crate) fn of(agg: &Agg, workload: &str) -> Vec<Incident> {
    agg.incidents(&format!("workload={workload}")).incidents
}

fn refusal(evs: &[EventKind]) -> Option<(String, String)> {
    evs.iter().find_map(|e| match e {
        EventKind::HealRefused {
            guardrail, reason, ..
        } => Some((guardrail.clone(), reason.clone())),
        _ => None,
    })
}

pub(crate) const FAST_VERIFY: &str = "[verify]\nwindow_secs = 5\nsettle_secs = 2\n";

#[test]
fn a_cpu_storm_is_one_scale_then_cooldown_and_verification_both_ways() {
    let rt = runtime();
    let moto = Moto::start();
    let kinesis = kinesis_client(&moto.endpoint());
    rt.block_on(create_stream(&kinesis, "records", 1));
    let dir = tempfile::tempdir().expect("dir");
    let agg = start(dir.path(), &moto, free_port(), FAST_VERIFY, "");
    // One PutRecords call: the storm lands in one batch, before the action.
    rt.block_on(put(
        &kinesis,
        "records",
        &workload_storm(1 << 64, now_ms() - 2_000, Family::Cpu, "shop", "checkout"),
    ));
    agg.wait("the incident verifying", Duration::from_secs(60), |a| {
        of(a, "Deployment/checkout")
            .first()
            .is_some_and(|i| i.state == State::Verifying)
    });
    let inc = of(&agg, "Deployment/checkout").remove(0);
    let log = log_entries(dir.path());
    assert_eq!(log.len(), 1, "one action: {log:?}");
    assert_eq!(log[0].request.request_id, format!("{}/1", inc.id));
    assert_eq!(log[0].request.action, Action::Scale { from: 15, to: 16 });
    let evs = events(&agg, &inc);
    assert!(
        evs.iter()
            .any(|e| matches!(e, EventKind::ActionIntent { dry_run: true, .. }))
    );
    // Visible in the CLI: the timeline and the plan.
    let shown = cli(&agg, &["incidents", "show", inc.id.as_str()]);
    assert!(
        shown.contains("dry-run: would scale shop/Deployment/checkout 15 → 16"),
        "{shown}"
    );
    let mut c = selfheal();
    c.args(["heal", "dry-run", inc.id.as_str(), "--url", &agg.url()]);
    let plan = crate::support::stdout_of(&mut c);
    assert!(
        plan.contains("decision  nothing now: incident is verifying")
            && plan.contains("recorded  [")
            && plan.contains("15 → 16"),
        "{plan}"
    );
    // The anomalies stopped: the window closes healed.
    agg.wait("resolved by verification", Duration::from_secs(30), |a| {
        of(a, "Deployment/checkout")[0].state == State::Resolved
    });
    assert!(
        events(&agg, &inc)
            .iter()
            .any(|e| matches!(e, EventKind::Verified { healed: true, .. }))
    );
    let eff: serde_json::Value = agg.get_json("/api/v1/heal/efficacy");
    assert_eq!(eff["playbooks"]["scale_out"]["share"], 1.0, "{eff}");
    assert_eq!(
        agg.metric("selfheal_aggregator_heal_efficacy_ratio{playbook=\"scale_out\"}"),
        1.0
    );

    // The next storm on the same Deployment: a new incident, refused by the cooldown.
    rt.block_on(put(
        &kinesis,
        "records",
        &workload_storm(2 << 64, now_ms(), Family::Cpu, "shop", "checkout"),
    ));
    agg.wait("the cooldown refusal", Duration::from_secs(60), |a| {
        of(a, "Deployment/checkout")
            .iter()
            .any(|i| i.state != State::Resolved && refusal(&events(a, i)).is_some())
    });
    let second = of(&agg, "Deployment/checkout")
        .into_iter()
        .find(|i| i.state != State::Resolved)
        .expect("second incident");
    let (guardrail, reason) = refusal(&events(&agg, &second)).expect("refused");
    assert_eq!(guardrail, "cooldown");
    assert!(reason.contains(&format!("{}/1", inc.id)), "{reason}");
    assert_eq!(log_entries(dir.path()).len(), 1, "nothing more sent");
    assert!(agg.metric("selfheal_aggregator_heal_refusals_total{guardrail=\"cooldown\"}") >= 1.0);

    // Another workload whose anomalies go on after its restart: escalated, not repeated.
    let t = now_ms();
    rt.block_on(put(
        &kinesis,
        "records",
        &workload_storm(3 << 64, t, Family::Memory, "shop", "cart"),
    ));
    agg.wait("cart acting", Duration::from_secs(60), |a| {
        of(a, "Deployment/cart")
            .first()
            .is_some_and(|i| i.state == State::Verifying)
    });
    std::thread::sleep(Duration::from_millis(2500));
    rt.block_on(put(
        &kinesis,
        "records",
        &workload_storm(4 << 64, now_ms(), Family::Memory, "shop", "cart"),
    ));
    agg.wait("cart escalated", Duration::from_secs(60), |a| {
        of(a, "Deployment/cart")[0].state == State::Escalated
    });
    let cart = of(&agg, "Deployment/cart").remove(0);
    let evs = events(&agg, &cart);
    assert!(
        evs.iter()
            .any(|e| matches!(e, EventKind::Verified { healed: false, .. }))
    );
    let restarts: Vec<_> = log_entries(dir.path())
        .into_iter()
        .filter(|e| matches!(e.request.action, Action::RolloutRestart { .. }))
        .collect();
    assert_eq!(restarts.len(), 1);
    agg.stop();
}

#[test]
fn each_guardrail_blocks_with_its_reason_in_history_and_sends_nothing() {
    let rt = runtime();
    let moto = Moto::start();
    let kinesis = kinesis_client(&moto.endpoint());
    rt.block_on(create_stream(&kinesis, "records", 1));
    let dir = tempfile::tempdir().expect("dir");
    let policy = "[guardrails]\nmax_actions_per_hour = 1\nmax_unavailable_share = 0.1\nallow_namespaces = [\"shop\"]\n";
    let agg = start(dir.path(), &moto, free_port(), policy, "");
    // A silence on one workload before its storm.
    cli(
        &agg,
        &[
            "silences",
            "add",
            "-m",
            "workload=Deployment/muted",
            "--duration",
            "1h",
            "--by",
            "test",
            "--comment",
            "deploy",
        ],
    );
    let t = now_ms();
    let mut recs = workload_storm(1 << 64, t, Family::Memory, "shop", "cart"); // blast radius
    recs.extend(workload_storm(2 << 64, t, Family::Cpu, "other", "api")); // namespace
    recs.extend(workload_storm(3 << 64, t, Family::Cpu, "shop", "muted")); // silence
    rt.block_on(put(&kinesis, "records", &recs));
    let want = [
        ("Deployment/cart", "blast_radius", "3 of 15"),
        ("Deployment/api", "namespace", "allow_namespaces"),
        ("Deployment/muted", "muted", "silence"),
    ];
    for (w, guardrail, why) in want {
        agg.wait(&format!("{w} refused"), Duration::from_secs(60), |a| {
            of(a, w)
                .first()
                .is_some_and(|i| refusal(&events(a, i)).is_some())
        });
        let inc = of(&agg, w).remove(0);
        let (g, reason) = refusal(&events(&agg, &inc)).expect("refusal");
        assert_eq!(g, guardrail, "{w}: {reason}");
        assert!(reason.contains(why), "{w}: {reason}");
    }
    // Rate: the first CPU storm acts (1 per hour), the second workload's is refused.
    rt.block_on(put(
        &kinesis,
        "records",
        &workload_storm(4 << 64, now_ms(), Family::Cpu, "shop", "first"),
    ));
    agg.wait("first acted", Duration::from_secs(60), |_| {
        !log_entries(dir.path()).is_empty()
    });
    rt.block_on(put(
        &kinesis,
        "records",
        &workload_storm(5 << 64, now_ms(), Family::Cpu, "shop", "second"),
    ));
    agg.wait("second refused", Duration::from_secs(60), |a| {
        of(a, "Deployment/second")
            .first()
            .is_some_and(|i| refusal(&events(a, i)).is_some())
    });
    let (g, _) = refusal(&events(&agg, &of(&agg, "Deployment/second")[0])).expect("r");
    assert_eq!(g, "rate_global");
    let log = log_entries(dir.path());
    assert_eq!(log.len(), 1, "only the allowed action was sent: {log:?}");
    assert_eq!(log[0].request.target.name, "first");
    agg.stop();
}

#[test]
fn maintenance_blocks_and_a_bad_reload_keeps_the_old_policy() {
    let rt = runtime();
    let moto = Moto::start();
    let kinesis = kinesis_client(&moto.endpoint());
    rt.block_on(create_stream(&kinesis, "records", 1));
    let dir = tempfile::tempdir().expect("dir");
    let policy = "[[guardrails.maintenance]]\nname = \"change freeze\"\nstarts_at = \"2020-01-01T00:00:00Z\"\nends_at = \"2100-01-01T00:00:00Z\"\n";
    let agg = start(dir.path(), &moto, free_port(), policy, "");
    rt.block_on(put(&kinesis, "records", &storm(1 << 64, now_ms())));
    agg.wait("refused", Duration::from_secs(60), |a| {
        of(a, "Deployment/checkout")
            .first()
            .is_some_and(|i| refusal(&events(a, i)).is_some())
    });
    let (g, reason) = refusal(&events(&agg, &of(&agg, "Deployment/checkout")[0])).expect("r");
    assert_eq!(g, "maintenance");
    assert!(reason.contains("change freeze"), "{reason}");
    assert!(log_entries(dir.path()).is_empty());
    // A bad file: refused, counted, the reason names the field; the freeze stays in force.
    write_file(
        dir.path(),
        "policy.toml",
        "[playbooks.cpu]\naction = \"scale_out\"\nmax_replicas = 0\n",
    );
    agg.wait("the bad reload counted", Duration::from_secs(20), |a| {
        a.metric("selfheal_aggregator_heal_policy_reloads_total{result=\"error\"}") >= 1.0
    });
    let p: serde_json::Value = agg.get_json("/api/v1/heal/policy");
    let err = p["last_reload_error"].as_str().unwrap_or_default();
    assert!(err.contains("playbooks.cpu.max_replicas"), "{p}");
    assert_eq!(
        p["policy"]["guardrails"]["maintenance"][0]["name"], "change freeze",
        "the old policy is kept: {p}"
    );
    assert_eq!(agg.metric("selfheal_aggregator_heal_policy_healthy"), 0.0);
    // A good file replaces it.
    write_file(
        dir.path(),
        "policy.toml",
        "[guardrails]\ncooldown_secs = 5\n",
    );
    agg.wait("the good reload", Duration::from_secs(20), |a| {
        a.metric("selfheal_aggregator_heal_policy_reloads_total{result=\"ok\"}") >= 1.0
    });
    let p: serde_json::Value = agg.get_json("/api/v1/heal/policy");
    assert_eq!(p["policy"]["guardrails"]["cooldown_ms"], 5000, "{p}");
    assert!(p["last_reload_error"].is_null());
    agg.stop();
}

#[test]
fn a_bad_policy_file_stops_the_start_naming_the_field() {
    let dir = tempfile::tempdir().expect("dir");
    write_file(
        dir.path(),
        "policy.toml",
        "[guardrails]\nmax_unavailable_share = 2.0\n",
    );
    let cfg = config(dir.path(), free_port(), "records");
    let mut text = std::fs::read_to_string(&cfg).expect("config");
    text.push_str(&format!(
        "[heal]\nenabled = true\npolicy_file = \"{}/policy.toml\"\n",
        dir.path().display()
    ));
    std::fs::write(&cfg, text).expect("write");
    let out = selfheal()
        .args(["aggregator", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("guardrails.max_unavailable_share"), "{err}");
}

#[test]
fn a_sigkill_between_intent_and_outcome_then_a_restart_acts_once() {
    let rt = runtime();
    let moto = Moto::start();
    let kinesis = kinesis_client(&moto.endpoint());
    rt.block_on(create_stream(&kinesis, "records", 1));
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    // The dry-run executor answers 30 s after recording: the kill lands in between.
    let agg = start(
        dir.path(),
        &moto,
        port,
        FAST_VERIFY,
        "dry_run_latency_ms = 30000",
    );
    rt.block_on(put(&kinesis, "records", &storm(1 << 64, now_ms())));
    agg.wait(
        "an intent without an outcome",
        Duration::from_secs(60),
        |a| {
            of(a, "Deployment/checkout").first().is_some_and(|i| {
                let acts: Vec<ActionRecord> =
                    a.get_json(&format!("/api/v1/incidents/{}/actions", i.id));
                acts.len() == 1 && acts[0].outcome.is_none()
            }) && log_entries(dir.path()).len() == 1
        },
    );
    let inc = of(&agg, "Deployment/checkout").remove(0);
    agg.kill();
    // Restarted (the records are redelivered from the last checkpoint), answering at once.
    let agg = start(dir.path(), &moto, port, FAST_VERIFY, "");
    agg.wait("the outcome", Duration::from_secs(60), |a| {
        let acts: Vec<ActionRecord> = a.get_json(&format!("/api/v1/incidents/{}/actions", inc.id));
        acts.first().is_some_and(|r| r.outcome.is_some())
    });
    let acts: Vec<ActionRecord> = agg.get_json(&format!("/api/v1/incidents/{}/actions", inc.id));
    assert_eq!(acts.len(), 1);
    let outcome = acts[0]
        .outcome
        .as_ref()
        .and_then(|o| o.result.as_ref().ok())
        .expect("applied");
    assert!(outcome.already_applied, "{outcome:?}");
    assert_eq!(log_entries(dir.path()).len(), 1, "exactly one action");
    assert_eq!(agg.incidents("").incidents.len(), 1, "no second incident");
    agg.stop();
}

#[test]
fn with_the_kube_executor_a_cpu_storm_scales_the_deployment_on_the_api_double_once() {
    use crate::support::kube_double::{KubeDouble, deployments};
    use selfheal_core::action::REQUEST_ID_ANNOTATION;
    let rt = runtime();
    let moto = Moto::start();
    let kinesis = kinesis_client(&moto.endpoint());
    rt.block_on(create_stream(&kinesis, "records", 1));
    let double = KubeDouble::start();
    double
        .store()
        .add_deployment_with_pods("shop", "checkout", 3);
    let dir = tempfile::tempdir().expect("dir");
    let token = write_file(dir.path(), "kube-token", "heal-token");
    let heal = format!(
        "executor = \"kube\"\n[heal.kube]\ntimeout_secs = 5\n[heal.kube.connection]\nsource = \"url\"\nurl = \"{}\"\ntoken_file = \"{}\"\n",
        double.url(),
        token.display()
    );
    let policy = format!("dry_run = false\n{FAST_VERIFY}");
    let agg = start(dir.path(), &moto, free_port(), &policy, &heal);
    rt.block_on(put(
        &kinesis,
        "records",
        &workload_storm(5 << 64, now_ms() - 2_000, Family::Cpu, "shop", "checkout"),
    ));
    agg.wait("the incident verifying", Duration::from_secs(60), |a| {
        of(a, "Deployment/checkout")
            .first()
            .is_some_and(|i| i.state == State::Verifying)
    });
    let inc = of(&agg, "Deployment/checkout").remove(0);
    let evs = events(&agg, &inc);
    let (from, to) = evs
        .iter()
        .find_map(|e| match e {
            EventKind::ActionIntent {
                dry_run: false,
                request,
                ..
            } => match request.action {
                Action::Scale { from, to } => Some((from, to)),
                _ => None,
            },
            _ => None,
        })
        .unwrap_or_else(|| panic!("a real scale intent on the timeline: {evs:?}"));
    // Decided on what the API server said (3 replicas), not on the pods the anomalies named.
    assert_eq!(from, 3);
    assert!(to > 3, "scaled out: {from} → {to}");
    // Nothing went to the dry-run log: the double got the action.
    assert!(log_entries(dir.path()).is_empty());
    let stored = double
        .store()
        .get(&deployments(), "shop", "checkout")
        .expect("checkout stored");
    assert_eq!(stored["spec"]["replicas"], to);
    assert_eq!(
        stored["metadata"]["annotations"][REQUEST_ID_ANNOTATION],
        format!("{}/1", inc.id)
    );
    let scales: Vec<_> = double
        .store()
        .writes()
        .into_iter()
        .filter(|w| {
            (200..300).contains(&w.status)
                && w.path
                    .split('?')
                    .next()
                    .is_some_and(|p| p.ends_with("/scale"))
        })
        .collect();
    assert_eq!(scales.len(), 1, "one scale write: {scales:?}");
    // The real kubectl sees the new replica count.
    let out = double.kubectl(&[
        "get",
        "deploy",
        "checkout",
        "-n",
        "shop",
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), to.to_string());
}
