//! The kube-direct executor ([`KubeExecutor`]) against the Kubernetes API double (proven with
//! kubectl in `tests/kube_double.rs`): observe, scale through the scale subresource, rolling
//! restart, an HPA floor raised and restored, a pod deleted, each exactly once (a re-sent
//! request is recognised by its id on the object, including one cut between the annotation and
//! the scale), a stale decision refused as a conflict, and API failures classified.

use crate::support::kube_double::{
    KubeDouble, Write, deployments, hpa_object, hpas, pods, statefulset_object, statefulsets,
};
use selfheal_core::action::{
    Action, ActionErrorKind, ActionRequest, Executor, ObjectVersion, REQUEST_ID_ANNOTATION,
    RESTARTED_AT_ANNOTATION, Target, WorkloadKind, WorkloadState,
};
use selfheal_heal_api::kube::apply::DELETE_POD_UID_ANNOTATION;
use selfheal_heal_api::kube::{Connection, KubeConfig, KubeExecutor};
use serde_json::Value;
use std::future::Future;

/// One runtime for every test here: a kube client runs a worker task on the runtime it was
/// built in, so an executor must live and be used on one runtime.
fn block_on<F: Future>(f: F) -> F::Output {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test runtime")
    })
    .block_on(f)
}

/// An executor on the double's URL with a bearer-token file, as a test configures one.
fn executor(double: &KubeDouble, dir: &std::path::Path) -> KubeExecutor {
    let token = dir.join("token");
    std::fs::write(&token, "heal-token").expect("token file");
    let config = KubeConfig {
        connection: Connection::Url {
            url: double.url(),
            ca_file: None,
            token_file: Some(token),
        },
        timeout_secs: 5,
        ..KubeConfig::default()
    };
    block_on(KubeExecutor::connect(&config)).expect("connect")
}

fn web() -> Target {
    Target {
        namespace: "default".into(),
        kind: WorkloadKind::Deployment,
        name: "web".into(),
    }
}

fn request(id: &str, state: &WorkloadState, action: Action) -> ActionRequest {
    ActionRequest {
        request_id: id.into(),
        target: state.target.clone(),
        expect: state.version.clone(),
        action,
    }
}

/// Writes the double accepted (2xx), in order.
fn accepted(double: &KubeDouble) -> Vec<Write> {
    double
        .store()
        .writes()
        .into_iter()
        .filter(|w| (200..300).contains(&w.status))
        .collect()
}

fn deploy(double: &KubeDouble) -> Value {
    double
        .store()
        .get(&deployments(), "default", "web")
        .expect("web stored")
}

fn kubectl_row(double: &KubeDouble, args: &[&str], name: &str) -> Vec<String> {
    let out = double.kubectl(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|c| c.first().map(String::as_str) == Some(name))
        .unwrap_or_else(|| panic!("no {name} in\n{table}"))
}

#[test]
fn observe_reports_replicas_rollout_status_and_the_owning_hpa() {
    let double = KubeDouble::start();
    let dir = tempfile::tempdir().expect("tmp");
    double.store().add_deployment_with_pods("default", "web", 3);
    double
        .store()
        .put(&hpas(), hpa_object("default", "web", "web", 2, 8));
    // An HPA on another workload is not this one's.
    double
        .store()
        .put(&hpas(), hpa_object("default", "api", "api", 1, 4));
    let exec = executor(&double, dir.path());
    let state = block_on(exec.observe(&web())).expect("observe");
    let stored = deploy(&double);
    assert_eq!(state.version.uid, stored["metadata"]["uid"]);
    assert_eq!(
        state.version.resource_version,
        stored["metadata"]["resourceVersion"]
    );
    assert_eq!((state.replicas, state.ready_replicas), (3, 3));
    assert_eq!((state.generation, state.observed_generation), (1, 1));
    assert!(!state.rolling_out);
    assert_eq!(state.last_request_id, None);
    let hpa = state.hpa.expect("the HPA that targets web");
    assert_eq!(hpa.name, "web");
    assert_eq!((hpa.min_replicas, hpa.max_replicas), (2, 8));
    // The bearer token from the file was presented.
    assert_eq!(double.store().tokens_seen(), ["heal-token"]);

    // A spec change the controller has not observed yet is a rollout in progress.
    let out = double.kubectl(&[
        "set",
        "image",
        "deploy/web",
        "app=registry.example/app:1.5",
        "-n",
        "default",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = block_on(exec.observe(&web())).expect("observe");
    assert!(state.rolling_out);
    assert_eq!((state.generation, state.observed_generation), (2, 1));
    double
        .store()
        .complete_rollout(&deployments(), "default", "web");
    assert!(!block_on(exec.observe(&web())).expect("observe").rolling_out);

    let sts = Target {
        namespace: "default".into(),
        kind: WorkloadKind::StatefulSet,
        name: "db".into(),
    };
    double
        .store()
        .put(&statefulsets(), statefulset_object("default", "db", 2));
    let state = block_on(exec.observe(&sts)).expect("observe sts");
    assert_eq!(state.replicas, 2);
    assert!(!state.rolling_out);
    assert!(state.hpa.is_none());
    assert!(
        double
            .store()
            .writes()
            .iter()
            .all(|w| w.path.contains("deployments/web") && w.method == "PATCH"),
        "observe wrote nothing: {:?}",
        double.store().writes()
    );
}

#[test]
fn scale_goes_through_the_scale_subresource_once_and_kubectl_shows_it() {
    let double = KubeDouble::start();
    let dir = tempfile::tempdir().expect("tmp");
    double.store().add_deployment_with_pods("default", "web", 3);
    let exec = executor(&double, dir.path());
    let state = block_on(exec.observe(&web())).expect("observe");
    let req = request("inc-7/1", &state, Action::Scale { from: 3, to: 5 });
    let out = block_on(exec.apply(&req)).expect("scale");
    assert!(!out.already_applied && !out.dry_run, "{out:?}");
    let d = deploy(&double);
    assert_eq!(d["spec"]["replicas"], 5);
    assert_eq!(
        d["metadata"]["annotations"][REQUEST_ID_ANNOTATION],
        "inc-7/1"
    );
    assert_eq!(
        out.version_after
            .as_ref()
            .map(|v| v.resource_version.as_str()),
        d["metadata"]["resourceVersion"].as_str()
    );
    assert_eq!(
        kubectl_row(&double, &["get", "deploy", "-n", "default"], "web")[1],
        "3/5"
    );
    // Two writes: the annotation under the decision's version, then the Scale under the
    // annotated one.
    let w = accepted(&double);
    assert_eq!(w.len(), 2, "{w:?}");
    assert_eq!(
        (w[0].method.as_str(), w[1].method.as_str()),
        ("PATCH", "PUT")
    );
    assert_eq!(
        w[0].json()["metadata"]["resourceVersion"],
        state.version.resource_version.as_str()
    );
    assert!(
        w[1].path
            .starts_with("/apis/apps/v1/namespaces/default/deployments/web/scale")
    );
    assert_eq!(w[1].json()["kind"], "Scale");
    assert_eq!(w[1].json()["spec"]["replicas"], 5);

    // The same request again (a re-send after a lost answer): recognised, nothing written.
    let again = block_on(exec.apply(&req)).expect("re-send");
    assert!(again.already_applied, "{again:?}");
    assert_eq!(accepted(&double).len(), 2);
    double
        .store()
        .complete_rollout(&deployments(), "default", "web");
    assert_eq!(
        kubectl_row(&double, &["get", "deploy", "-n", "default"], "web")[1..4],
        ["5/5", "5", "5"]
    );
    // Recognised also after the controller moved the version on.
    assert!(block_on(exec.apply(&req)).expect("re-send").already_applied);
    assert_eq!(accepted(&double).len(), 2);
}

#[test]
fn a_request_cut_between_annotate_and_scale_is_finished_once_when_re_sent() {
    let double = KubeDouble::start();
    let dir = tempfile::tempdir().expect("tmp");
    double.store().add_deployment_with_pods("default", "web", 3);
    let exec = executor(&double, dir.path());
    let state = block_on(exec.observe(&web())).expect("observe");
    let req = request("inc-9/1", &state, Action::Scale { from: 3, to: 6 });
    // The executor dies (as far as the API can tell) after the annotation: its scale never
    // lands.
    double
        .store()
        .fail_next(Some("PUT"), "/deployments/web/scale", 500, 1);
    let err = block_on(exec.apply(&req)).expect_err("the scale failed");
    assert_eq!(err.kind, ActionErrorKind::Unavailable);
    assert!(err.is_retryable());
    let d = deploy(&double);
    assert_eq!(
        d["metadata"]["annotations"][REQUEST_ID_ANNOTATION],
        "inc-9/1"
    );
    assert_eq!(d["spec"]["replicas"], 3);
    // Meanwhile the deployment controller updates the status: a new resourceVersion.
    double
        .store()
        .modify(&deployments(), "default", "web", |d| {
            d["status"]["conditions"][0]["lastUpdateTime"] = "2026-12-01T15:00:00Z".into();
        });
    // A fresh executor (the restarted process) re-sends the same request.
    let exec = executor(&double, dir.path());
    let out = block_on(exec.apply(&req)).expect("finished");
    assert!(!out.already_applied, "it did write the scale: {out:?}");
    assert!(out.detail.contains("finished"), "{out:?}");
    assert_eq!(deploy(&double)["spec"]["replicas"], 6);
    let again = block_on(exec.apply(&req)).expect("re-send");
    assert!(again.already_applied);
    // Exactly one effective scale write, one annotation.
    let w = accepted(&double);
    let scales: Vec<&Write> = w.iter().filter(|w| w.path.contains("/scale")).collect();
    assert_eq!(scales.len(), 1, "{w:?}");
    let patches = w.iter().filter(|w| w.method == "PATCH").count();
    assert_eq!(patches, 1, "{w:?}");

    // Someone else scaled it while the request was cut: finishing would undo them.
    double.store().add_deployment_with_pods("default", "api", 2);
    let api = Target {
        name: "api".into(),
        ..web()
    };
    let state = block_on(exec.observe(&api)).expect("observe api");
    let req = request("inc-10/1", &state, Action::Scale { from: 2, to: 4 });
    double
        .store()
        .fail_next(Some("PUT"), "/deployments/api/scale", 500, 1);
    assert!(block_on(exec.apply(&req)).is_err());
    let out = double.kubectl(&["scale", "deploy/api", "--replicas=3", "-n", "default"]);
    assert!(out.status.success());
    let err = block_on(exec.apply(&req)).expect_err("conflict");
    assert_eq!(err.kind, ActionErrorKind::Conflict, "{err}");
    assert_eq!(
        double
            .store()
            .get(&deployments(), "default", "api")
            .expect("api")["spec"]["replicas"],
        3
    );
}

#[test]
fn a_stale_or_re_created_object_is_a_conflict_and_nothing_is_written() {
    let double = KubeDouble::start();
    let dir = tempfile::tempdir().expect("tmp");
    double.store().add_deployment_with_pods("default", "web", 3);
    let exec = executor(&double, dir.path());
    let state = block_on(exec.observe(&web())).expect("observe");
    // A user edits the deployment after the decision.
    let out = double.kubectl(&["label", "deploy", "web", "team=payments", "-n", "default"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = accepted(&double).len();
    for action in [
        Action::Scale { from: 3, to: 5 },
        Action::RolloutRestart {
            restarted_at: "2026-12-01T15:04:05Z".into(),
        },
    ] {
        let err = block_on(exec.apply(&request("inc-3/1", &state, action))).expect_err("stale");
        assert_eq!(err.kind, ActionErrorKind::Conflict, "{err}");
        assert!(!err.is_retryable());
        assert!(err.message.contains("changed since the decision"), "{err}");
    }
    assert_eq!(
        accepted(&double).len(),
        before,
        "a refused action reached the API"
    );
    assert_eq!(deploy(&double)["spec"]["replicas"], 3);

    // Deleted and re-created under the same name: another uid, another object.
    double.store().delete(&deployments(), "default", "web");
    double.store().add_deployment_with_pods("default", "web", 3);
    let mut fresh = block_on(exec.observe(&web())).expect("observe");
    assert_ne!(fresh.version.uid, state.version.uid);
    fresh.version = ObjectVersion {
        uid: state.version.uid.clone(),
        resource_version: fresh.version.resource_version.clone(),
    };
    let err = block_on(exec.apply(&request(
        "inc-3/2",
        &fresh,
        Action::Scale { from: 3, to: 5 },
    )))
    .expect_err("another object");
    assert_eq!(err.kind, ActionErrorKind::Conflict);
    assert!(err.message.contains("another object"), "{err}");

    // The API server's own 409 (someone wrote between our read and our write) is a conflict too.
    let state = block_on(exec.observe(&web())).expect("observe");
    double
        .store()
        .fail_next(Some("PATCH"), "/deployments/web", 409, 1);
    let err = block_on(exec.apply(&request(
        "inc-3/3",
        &state,
        Action::Scale { from: 3, to: 4 },
    )))
    .expect_err("409");
    assert_eq!(err.kind, ActionErrorKind::Conflict);
}

#[test]
fn rollout_restart_sets_the_template_annotation_once() {
    let double = KubeDouble::start();
    let dir = tempfile::tempdir().expect("tmp");
    double.store().add_deployment_with_pods("default", "web", 3);
    let exec = executor(&double, dir.path());
    let state = block_on(exec.observe(&web())).expect("observe");
    let at = "2026-12-01T15:04:05Z";
    let req = request(
        "inc-4/1",
        &state,
        Action::RolloutRestart {
            restarted_at: at.into(),
        },
    );
    let out = block_on(exec.apply(&req)).expect("restart");
    assert!(!out.already_applied);
    let d = deploy(&double);
    assert_eq!(
        d["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT_ANNOTATION],
        at
    );
    assert_eq!(
        d["metadata"]["annotations"][REQUEST_ID_ANNOTATION],
        "inc-4/1"
    );
    assert_eq!(d["metadata"]["generation"], 2);
    assert_eq!(
        accepted(&double).len(),
        1,
        "one write: annotation and restart together"
    );
    // kubectl sees the restart as a rollout.
    let out = double.kubectl(&[
        "get",
        "deploy",
        "web",
        "-n",
        "default",
        "-o",
        "jsonpath={.spec.template.metadata.annotations.kubectl\\.kubernetes\\.io/restartedAt}",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), at);
    assert!(block_on(exec.observe(&web())).expect("observe").rolling_out);
    assert!(block_on(exec.apply(&req)).expect("re-send").already_applied);
    assert_eq!(accepted(&double).len(), 1);

    // A StatefulSet is restarted the same way.
    double
        .store()
        .put(&statefulsets(), statefulset_object("default", "db", 2));
    let db = Target {
        namespace: "default".into(),
        kind: WorkloadKind::StatefulSet,
        name: "db".into(),
    };
    let state = block_on(exec.observe(&db)).expect("observe db");
    block_on(exec.apply(&request(
        "inc-5/1",
        &state,
        Action::RolloutRestart {
            restarted_at: at.into(),
        },
    )))
    .expect("restart db");
    let sts = double
        .store()
        .get(&statefulsets(), "default", "db")
        .expect("db");
    assert_eq!(
        sts["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT_ANNOTATION],
        at
    );
}

#[test]
fn the_hpa_floor_is_raised_and_restored_and_kubectl_shows_both() {
    let double = KubeDouble::start();
    let dir = tempfile::tempdir().expect("tmp");
    double.store().add_deployment_with_pods("default", "web", 2);
    double
        .store()
        .put(&hpas(), hpa_object("default", "web", "web", 2, 10));
    let exec = executor(&double, dir.path());
    let state = block_on(exec.observe(&web())).expect("observe");
    let hpa = state.hpa.clone().expect("hpa");
    let raise = ActionRequest {
        request_id: "inc-6/1".into(),
        target: web(),
        expect: hpa.version.clone(),
        action: Action::SetHpaMinReplicas {
            hpa: "web".into(),
            from: 2,
            to: 6,
        },
    };
    let out = block_on(exec.apply(&raise)).expect("raise");
    assert!(!out.already_applied);
    let row = kubectl_row(&double, &["get", "hpa", "-n", "default"], "web");
    assert_eq!(row[4..6], ["6", "10"], "{row:?}");
    assert!(
        block_on(exec.apply(&raise))
            .expect("re-send")
            .already_applied
    );

    // Restored after stabilize_for: a new request on the version the raise left.
    let restore = ActionRequest {
        request_id: "inc-6/2".into(),
        target: web(),
        expect: out.version_after.clone().expect("version after"),
        action: Action::SetHpaMinReplicas {
            hpa: "web".into(),
            from: 6,
            to: 2,
        },
    };
    block_on(exec.apply(&restore)).expect("restore");
    let row = kubectl_row(&double, &["get", "hpa", "-n", "default"], "web");
    assert_eq!(row[4], "2");
    let stored = double.store().get(&hpas(), "default", "web").expect("hpa");
    assert_eq!(
        stored["metadata"]["annotations"][REQUEST_ID_ANNOTATION],
        "inc-6/2"
    );
    assert_eq!(stored["metadata"]["generation"], 3);
    // The old raise re-sent now: its id is no longer on the object and the version moved on.
    let err = block_on(exec.apply(&raise)).expect_err("stale raise");
    assert_eq!(err.kind, ActionErrorKind::Conflict);
    assert_eq!(accepted(&double).len(), 2);

    // Out of bounds: a floor above maxReplicas never reaches the API.
    let state = block_on(exec.observe(&web())).expect("observe");
    let hpa = state.hpa.expect("hpa");
    let too_high = ActionRequest {
        request_id: "inc-6/3".into(),
        target: web(),
        expect: hpa.version,
        action: Action::SetHpaMinReplicas {
            hpa: "web".into(),
            from: 2,
            to: 11,
        },
    };
    let err = block_on(exec.apply(&too_high)).expect_err("above max");
    assert_eq!(err.kind, ActionErrorKind::Invalid);
    // An HPA that targets another workload is not this target's to change.
    double
        .store()
        .put(&hpas(), hpa_object("default", "other", "api", 1, 3));
    let other = double
        .store()
        .get(&hpas(), "default", "other")
        .expect("other");
    let wrong = ActionRequest {
        request_id: "inc-6/4".into(),
        target: web(),
        expect: ObjectVersion {
            uid: other["metadata"]["uid"].as_str().expect("uid").into(),
            resource_version: other["metadata"]["resourceVersion"]
                .as_str()
                .expect("rv")
                .into(),
        },
        action: Action::SetHpaMinReplicas {
            hpa: "other".into(),
            from: 1,
            to: 2,
        },
    };
    let err = block_on(exec.apply(&wrong)).expect_err("not web's HPA");
    assert_eq!(err.kind, ActionErrorKind::Forbidden);
    assert_eq!(accepted(&double).len(), 2, "refusals reached the API");
}

#[test]
fn delete_pod_deletes_that_pod_of_the_workload_once() {
    let double = KubeDouble::start();
    let dir = tempfile::tempdir().expect("tmp");
    double.store().add_deployment_with_pods("default", "web", 2);
    double.store().add_deployment_with_pods("default", "api", 1);
    let exec = executor(&double, dir.path());
    let state = block_on(exec.observe(&web())).expect("observe");
    let victim = "web-7c5b9d8f6-p001";
    let uid =
        double.store().get(&pods(), "default", victim).expect("pod")["metadata"]["uid"].clone();
    let req = request("inc-8/1", &state, Action::DeletePod { pod: victim.into() });
    let out = block_on(exec.apply(&req)).expect("delete");
    assert!(!out.already_applied);
    assert!(double.store().get(&pods(), "default", victim).is_none());
    let d = deploy(&double);
    assert_eq!(d["metadata"]["annotations"][DELETE_POD_UID_ANNOTATION], uid);
    let w = accepted(&double);
    assert_eq!(w.len(), 2, "{w:?}");
    assert_eq!(w[1].method, "DELETE");
    assert_eq!(w[1].json()["preconditions"]["uid"], uid);
    // The ReplicaSet re-creates a pod of the same name (as a StatefulSet would): another uid,
    // so the re-sent request is recognised as done and deletes nothing.
    let mut replacement = double
        .store()
        .get(&pods(), "default", "web-7c5b9d8f6-p000")
        .expect("p000");
    replacement["metadata"]["name"] = victim.into();
    replacement["metadata"]["uid"] = "a-new-incarnation".into();
    double.store().put(&pods(), replacement);
    assert!(block_on(exec.apply(&req)).expect("re-send").already_applied);
    assert!(double.store().get(&pods(), "default", victim).is_some());
    assert_eq!(accepted(&double).len(), 2, "the re-send wrote nothing");

    // A pod of another workload is refused before anything is written.
    let state = block_on(exec.observe(&web())).expect("observe");
    let err = block_on(exec.apply(&request(
        "inc-8/2",
        &state,
        Action::DeletePod {
            pod: "api-7c5b9d8f6-p000".into(),
        },
    )))
    .expect_err("not web's pod");
    assert_eq!(err.kind, ActionErrorKind::Forbidden, "{err}");
    assert!(
        double
            .store()
            .get(&pods(), "default", "api-7c5b9d8f6-p000")
            .is_some()
    );
    assert_eq!(
        accepted(&double).len(),
        2,
        "a refused delete reached the API"
    );
}

#[test]
fn api_failures_are_classified_and_only_unavailable_is_retryable() {
    let mut double = KubeDouble::start();
    let dir = tempfile::tempdir().expect("tmp");
    double.store().add_deployment_with_pods("default", "web", 3);
    let exec = executor(&double, dir.path());
    let state = block_on(exec.observe(&web())).expect("observe");
    let req = request("inc-11/1", &state, Action::Scale { from: 3, to: 4 });

    double
        .store()
        .fail_next(Some("PATCH"), "/deployments/web", 403, 1);
    let err = block_on(exec.apply(&req)).expect_err("403");
    assert_eq!(err.kind, ActionErrorKind::Forbidden, "{err}");
    assert!(!err.is_retryable());
    assert!(err.message.contains("403"), "{err}");

    double
        .store()
        .fail_next(Some("PATCH"), "/deployments/web", 500, 1);
    let err = block_on(exec.apply(&req)).expect_err("500");
    assert_eq!(err.kind, ActionErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable());

    // (kube's client itself retries 429, 503 and 504 with backoff before giving up.)
    double
        .store()
        .fail_next(Some("GET"), "/deployments/web", 500, 1);
    let err = block_on(exec.observe(&web())).expect_err("500 on read");
    assert_eq!(err.kind, ActionErrorKind::Unavailable);
    assert_eq!(deploy(&double)["spec"]["replicas"], 3, "nothing applied");

    let missing = Target {
        name: "nope".into(),
        ..web()
    };
    let err = block_on(exec.observe(&missing)).expect_err("404");
    assert_eq!(err.kind, ActionErrorKind::NotFound, "{err}");

    // The API server is gone: unavailable, retryable.
    double.stop();
    let err = block_on(exec.observe(&web())).expect_err("down");
    assert_eq!(err.kind, ActionErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable());
    double.restart();
    // And back: the retried request applies once.
    let out = block_on(exec.apply(&req)).expect("applied after the failures");
    assert!(!out.already_applied);
    assert_eq!(deploy(&double)["spec"]["replicas"], 4);
}

#[test]
fn a_kubeconfig_file_and_context_select_the_api_server() {
    let double = KubeDouble::start();
    double.store().add_deployment_with_pods("default", "web", 3);
    let dir = tempfile::tempdir().expect("tmp");
    let kubeconfig = dir.path().join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: elsewhere\n\
             clusters:\n- name: double\n  cluster:\n    server: {url}\n\
             - name: nowhere\n  cluster:\n    server: http://127.0.0.1:9\n\
             users:\n- name: healer\n  user:\n    token: from-kubeconfig\n\
             contexts:\n- name: double\n  context:\n    cluster: double\n    user: healer\n\
             - name: elsewhere\n  context:\n    cluster: nowhere\n    user: healer\n",
            url = double.url()
        ),
    )
    .expect("kubeconfig");
    let config = KubeConfig {
        connection: Connection::Kubeconfig {
            path: Some(kubeconfig),
            context: Some("double".into()),
        },
        ..KubeConfig::default()
    };
    let exec = block_on(KubeExecutor::connect(&config)).expect("connect");
    let state = block_on(exec.observe(&web())).expect("observe through the kubeconfig");
    assert_eq!(state.replicas, 3);
    assert_eq!(double.store().tokens_seen(), ["from-kubeconfig"]);

    let bad = KubeConfig {
        connection: Connection::Url {
            url: "http://10.1.2.3:6443".into(),
            ca_file: None,
            token_file: None,
        },
        ..KubeConfig::default()
    };
    let err = block_on(KubeExecutor::connect(&bad)).expect_err("token over the network in clear");
    let chain = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(chain.contains("kube.connection.url"), "{chain}");
}
