//! The Kubernetes API double's write side, proven faithful with the real `kubectl` before any
//! executor is tested on it: `get` of Deployments, StatefulSets, ReplicaSets and HPAs,
//! `scale` (the scale subresource), `rollout restart` (the pod-template annotation), `patch`
//! (merge, strategic merge, JSON patch), `autoscale` (an HPA), `delete pod`, and a 409 Conflict
//! on a stale resourceVersion (`kubectl replace` of an old object, `scale --resource-version`).
//! Each also checks what the double logged as written.

use crate::support::kube_double::{
    KubeDouble, Write, deployments, hpa_object, hpas, pods, statefulset_object, statefulsets,
};
use selfheal_core::action::RESTARTED_AT_ANNOTATION;
use serde_json::{Value, json};
use std::process::Output;

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "kubectl failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Columns of the line whose first column is `name`.
fn row(table: &str, name: &str) -> Vec<String> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|cols| cols.first().map(String::as_str) == Some(name))
        .unwrap_or_else(|| panic!("no row {name} in\n{table}"))
}

fn deploy(double: &KubeDouble, name: &str) -> Value {
    double
        .store()
        .get(&deployments(), "default", name)
        .expect("deployment stored")
}

/// Writes that the double accepted (2xx).
fn accepted(double: &KubeDouble) -> Vec<Write> {
    double
        .store()
        .writes()
        .into_iter()
        .filter(|w| (200..300).contains(&w.status))
        .collect()
}

#[test]
fn kubectl_gets_deployments_statefulsets_replicasets_in_its_own_columns() {
    let double = KubeDouble::start();
    double.store().add_deployment_with_pods("default", "web", 3);
    double
        .store()
        .put(&statefulsets(), statefulset_object("default", "db", 2));
    let table = ok(&double.kubectl(&["get", "deploy", "-n", "default"]));
    let header = table.lines().next().unwrap_or_default();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "{table}"
    );
    assert_eq!(row(&table, "web")[1..4], ["3/3", "3", "3"]);
    let wide = ok(&double.kubectl(&["get", "deployments", "-o", "wide", "-n", "default"]));
    let web = row(&wide, "web");
    assert_eq!(
        web[5..],
        [
            "app,sidecar",
            "registry.example/app:1.4.2,registry.example/proxy:2.1",
            "app=web"
        ]
    );
    let sts = ok(&double.kubectl(&["get", "sts", "-n", "default"]));
    assert_eq!(row(&sts, "db")[1], "2/2");
    let rs = ok(&double.kubectl(&["get", "rs", "-n", "default"]));
    assert_eq!(row(&rs, "web-7c5b9d8f6")[1..4], ["3", "3", "3"]);
    let json: Value = serde_json::from_str(&ok(
        &double.kubectl(&["get", "deploy", "web", "-n", "default", "-o", "json"])
    ))
    .expect("JSON");
    assert_eq!(json["kind"], "Deployment");
    assert_eq!(json["metadata"]["generation"], 1);
    assert!(double.store().writes().is_empty(), "reads wrote nothing");
}

#[test]
fn kubectl_scale_goes_through_the_scale_subresource_and_bumps_the_generation() {
    let double = KubeDouble::start();
    double.store().add_deployment_with_pods("default", "web", 3);
    let before = deploy(&double, "web");
    let out = ok(&double.kubectl(&["scale", "deploy/web", "--replicas=5", "-n", "default"]));
    assert!(out.contains("deployment.apps/web scaled"), "{out}");
    let after = deploy(&double, "web");
    assert_eq!(after["spec"]["replicas"], 5);
    assert_eq!(after["metadata"]["generation"], 2);
    assert_ne!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
    // The status is the controller's: a write to the spec leaves it as it was.
    assert_eq!(after["status"]["readyReplicas"], 3);
    let writes = accepted(&double);
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert!(
        writes[0]
            .path
            .starts_with("/apis/apps/v1/namespaces/default/deployments/web/scale"),
        "{writes:?}"
    );
    assert_eq!(writes[0].json()["spec"]["replicas"], 5);
    // kubectl now sees the rollout in progress: 3 of 5 ready.
    let table = ok(&double.kubectl(&["get", "deploy", "web", "-n", "default"]));
    assert_eq!(row(&table, "web")[1], "3/5");
    // Once the controller catches up, all are ready.
    double
        .store()
        .complete_rollout(&deployments(), "default", "web");
    let table = ok(&double.kubectl(&["get", "deploy", "web", "-n", "default"]));
    assert_eq!(row(&table, "web")[1..4], ["5/5", "5", "5"]);
    // The Scale itself, as GET .../scale serves it.
    let out = ok(&double.kubectl(&[
        "get",
        "--raw",
        "/apis/apps/v1/namespaces/default/deployments/web/scale",
    ]));
    let scale: Value = serde_json::from_str(&out).expect("Scale JSON");
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["apiVersion"], "autoscaling/v1");
    assert_eq!(scale["spec"]["replicas"], 5);
    assert_eq!(scale["status"]["selector"], "app=web");
    assert_eq!(scale["metadata"]["uid"], after["metadata"]["uid"]);
}

#[test]
fn kubectl_scales_a_statefulset_too() {
    let double = KubeDouble::start();
    double
        .store()
        .put(&statefulsets(), statefulset_object("default", "db", 2));
    ok(&double.kubectl(&[
        "scale",
        "statefulset",
        "db",
        "--replicas=4",
        "-n",
        "default",
    ]));
    let sts = double
        .store()
        .get(&statefulsets(), "default", "db")
        .expect("sts");
    assert_eq!(sts["spec"]["replicas"], 4);
    assert_eq!(sts["metadata"]["generation"], 2);
}

#[test]
fn a_stale_resource_version_is_a_409_conflict_with_a_status_body() {
    let double = KubeDouble::start();
    double.store().add_deployment_with_pods("default", "web", 3);
    let dir = tempfile::tempdir().expect("tmp");
    let old = dir.path().join("web.json");
    std::fs::write(
        &old,
        ok(&double.kubectl(&["get", "deploy", "web", "-n", "default", "-o", "json"])),
    )
    .expect("save the old object");
    ok(&double.kubectl(&["scale", "deploy/web", "--replicas=4", "-n", "default"]));
    let replaced = double.kubectl(&[
        "replace",
        "-f",
        old.to_str().expect("path"),
        "--validate=false",
    ]);
    assert!(
        !replaced.status.success(),
        "replace of a stale object succeeded"
    );
    let err = String::from_utf8_lossy(&replaced.stderr);
    assert!(
        err.contains("Operation cannot be fulfilled on deployments.apps \"web\": the object has been modified"),
        "{err}"
    );
    assert_eq!(
        deploy(&double, "web")["spec"]["replicas"],
        4,
        "nothing written"
    );
    let refused = double
        .store()
        .writes()
        .into_iter()
        .find(|w| w.method == "PUT");
    let refused = refused.expect("the PUT reached the double");
    assert_eq!(refused.status, 409);

    // A scale under a stale version is refused the same way.
    let stale = old_rv(&old);
    let out = double.kubectl(&[
        "scale",
        "deploy/web",
        "--replicas=6",
        &format!("--resource-version={stale}"),
        "-n",
        "default",
    ]);
    assert!(!out.status.success(), "stale scale succeeded");
    // kubectl compares the Scale's resourceVersion itself before writing.
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("Expected resource version to be {stale}")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(deploy(&double, "web")["spec"]["replicas"], 4);
    // And at the current version it goes through.
    let current = deploy(&double, "web")["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_owned();
    ok(&double.kubectl(&[
        "scale",
        "deploy/web",
        "--replicas=6",
        &format!("--resource-version={current}"),
        "-n",
        "default",
    ]));
    assert_eq!(deploy(&double, "web")["spec"]["replicas"], 6);
}

fn old_rv(path: &std::path::Path) -> String {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
    v["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_owned()
}

#[test]
fn kubectl_rollout_restart_sets_the_pod_template_annotation() {
    let double = KubeDouble::start();
    double.store().add_deployment_with_pods("default", "web", 3);
    let out = ok(&double.kubectl(&["rollout", "restart", "deployment/web", "-n", "default"]));
    assert!(out.contains("deployment.apps/web restarted"), "{out}");
    let d = deploy(&double, "web");
    let at = d["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT_ANNOTATION]
        .as_str()
        .expect("restartedAt set");
    assert!(at.len() >= 20 && at.contains('T'), "RFC 3339: {at}");
    assert_eq!(
        d["metadata"]["generation"], 2,
        "a template change is a spec change"
    );
    // Both containers kept: the patch merged, not replaced.
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let writes = accepted(&double);
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].method, "PATCH");
    assert!(
        writes[0]
            .content_type
            .starts_with("application/strategic-merge-patch+json"),
        "{writes:?}"
    );
    // kubectl sees the rollout as unfinished until the controller observes it.
    let table = ok(&double.kubectl(&["get", "deploy", "web", "-n", "default", "-o", "json"]));
    let v: Value = serde_json::from_str(&table).expect("json");
    assert_eq!(v["status"]["observedGeneration"], 1);
    double
        .store()
        .complete_rollout(&deployments(), "default", "web");
    let out = ok(&double.kubectl(&[
        "rollout",
        "status",
        "deployment/web",
        "-n",
        "default",
        "--timeout=10s",
    ]));
    assert!(out.contains("successfully rolled out"), "{out}");
}

#[test]
fn kubectl_patch_merges_strategically_by_key_and_by_merge_patch_as_a_whole() {
    let double = KubeDouble::start();
    double.store().add_deployment_with_pods("default", "web", 3);
    // Strategic (kubectl's default): the `app` container is merged by name, `sidecar` kept.
    ok(&double.kubectl(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "default",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"app","image":"registry.example/app:1.5.0"}]}}}}"#,
    ]));
    let d = deploy(&double, "web");
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .clone();
    assert_eq!(containers.len(), 2, "{containers:?}");
    assert_eq!(containers[0]["image"], "registry.example/app:1.5.0");
    assert_eq!(
        containers[0]["ports"][0]["containerPort"], 8080,
        "fields kept"
    );
    assert_eq!(containers[1]["name"], "sidecar");
    assert_eq!(d["metadata"]["generation"], 2);

    // Strategic delete directive: the sidecar goes.
    ok(&double.kubectl(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "default",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","$patch":"delete"}]}}}}"#,
    ]));
    let d = deploy(&double, "web");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // Merge patch: a metadata-only change, no new generation.
    ok(&double.kubectl(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "default",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"tier":"frontend"}}}"#,
    ]));
    let d = deploy(&double, "web");
    assert_eq!(d["metadata"]["labels"]["tier"], "frontend");
    assert_eq!(d["metadata"]["labels"]["app"], "web");
    assert_eq!(d["metadata"]["generation"], 3, "labels are not spec");

    // Merge patch replaces a list as a whole.
    ok(&double.kubectl(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "default",
        "--type=merge",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"only","image":"busybox"}]}}}}"#,
    ]));
    let d = deploy(&double, "web");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"],
        json!([{"name": "only", "image": "busybox"}])
    );

    // JSON patch.
    ok(&double.kubectl(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "default",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":7}]"#,
    ]));
    assert_eq!(deploy(&double, "web")["spec"]["replicas"], 7);

    // A patch that changes nothing writes nothing: same version.
    let rv = deploy(&double, "web")["metadata"]["resourceVersion"].clone();
    ok(&double.kubectl(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "default",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":7}}"#,
    ]));
    assert_eq!(deploy(&double, "web")["metadata"]["resourceVersion"], rv);

    // An invalid value is a 422 naming the field.
    let out = double.kubectl(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "default",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":-1}}"#,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.replicas: Invalid value: -1: must be greater than or equal to 0"),
        "{err}"
    );
    let kinds: Vec<String> = double
        .store()
        .writes()
        .iter()
        .map(|w| {
            w.content_type
                .split(';')
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert!(kinds.contains(&"application/strategic-merge-patch+json".to_owned()));
    assert!(kinds.contains(&"application/merge-patch+json".to_owned()));
    assert!(kinds.contains(&"application/json-patch+json".to_owned()));
}

#[test]
fn an_autoscaling_v1_hpa_as_kubectl_autoscale_makes_it_is_shown_by_get_hpa_in_both_versions() {
    let double = KubeDouble::start();
    double.store().add_deployment_with_pods("default", "web", 3);
    // `kubectl autoscale` (1.32) POSTs this object as protobuf, which the double does not
    // decode yet; the same autoscaling/v1 object as JSON goes through `kubectl create`.
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("hpa.json");
    std::fs::write(
        &file,
        r#"{"kind":"HorizontalPodAutoscaler","apiVersion":"autoscaling/v1","metadata":{"name":"web","namespace":"default","creationTimestamp":null},"spec":{"scaleTargetRef":{"kind":"Deployment","name":"web","apiVersion":"apps/v1"},"minReplicas":2,"maxReplicas":6,"targetCPUUtilizationPercentage":65},"status":{"currentReplicas":0,"desiredReplicas":0}}"#,
    )
    .expect("hpa file");
    let path = file.to_str().expect("path").to_owned();
    let out = ok(&double.kubectl(&["create", "-f", &path, "--validate=false"]));
    assert!(
        out.contains("horizontalpodautoscaler.autoscaling/web created"),
        "{out}"
    );
    let create = accepted(&double);
    assert_eq!(create.len(), 1, "{create:?}");
    assert_eq!(create[0].method, "POST");
    assert_eq!(create[0].status, 201);
    // Stored as autoscaling/v2, whatever version kubectl wrote.
    let hpa = double
        .store()
        .get(&hpas(), "default", "web")
        .expect("HPA stored");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["spec"]["minReplicas"], 2);
    assert_eq!(hpa["spec"]["maxReplicas"], 6);
    assert_eq!(
        hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        65
    );
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "web");
    assert_eq!(hpa["metadata"]["generation"], 1);

    let table = ok(&double.kubectl(&["get", "hpa", "-n", "default"]));
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "REFERENCE",
            "TARGETS",
            "MINPODS",
            "MAXPODS",
            "REPLICAS",
            "AGE"
        ],
        "{table}"
    );
    let web = row(&table, "web");
    assert_eq!(web[1], "Deployment/web");
    assert_eq!(web[2..4], ["cpu:", "<unknown>/65%"], "{table}");
    assert_eq!(web[4..6], ["2", "6"]);
    let v2: Value = serde_json::from_str(&ok(&double.kubectl(&[
        "get",
        "horizontalpodautoscalers.v2.autoscaling",
        "web",
        "-n",
        "default",
        "-o",
        "json",
    ])))
    .expect("json");
    assert_eq!(v2["apiVersion"], "autoscaling/v2");
    let v1: Value = serde_json::from_str(&ok(&double.kubectl(&[
        "get",
        "horizontalpodautoscalers.v1.autoscaling",
        "web",
        "-n",
        "default",
        "-o",
        "json",
    ])))
    .expect("json");
    assert_eq!(v1["apiVersion"], "autoscaling/v1");
    assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 65);

    // Raising the floor with a patch, as healing does.
    ok(&double.kubectl(&[
        "patch",
        "hpa",
        "web",
        "-n",
        "default",
        "--type=merge",
        "-p",
        r#"{"spec":{"minReplicas":4}}"#,
    ]));
    let hpa = double.store().get(&hpas(), "default", "web").expect("HPA");
    assert_eq!(hpa["spec"]["minReplicas"], 4);
    assert_eq!(hpa["metadata"]["generation"], 2);
    // A floor above the ceiling is refused, as the API server validates it.
    let out = double.kubectl(&[
        "patch",
        "hpa",
        "web",
        "-n",
        "default",
        "--type=merge",
        "-p",
        r#"{"spec":{"minReplicas":9}}"#,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is invalid"));
    // Creating it again is AlreadyExists.
    let out = double.kubectl(&["create", "-f", &path, "--validate=false"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kubectl_get_hpa_shows_a_stored_v2_hpa() {
    let double = KubeDouble::start();
    double.store().add_deployment_with_pods("default", "web", 3);
    double
        .store()
        .put(&hpas(), hpa_object("default", "web-hpa", "web", 3, 10));
    let table = ok(&double.kubectl(&["get", "hpa", "-A"]));
    let web = row(&table, "default");
    assert_eq!(web[1..3], ["web-hpa", "Deployment/web"], "{table}");
    assert_eq!(web[5..8], ["3", "10", "3"], "{table}");
}

#[test]
fn kubectl_deletes_a_pod_and_a_stale_uid_precondition_is_refused() {
    let double = KubeDouble::start();
    double.store().add_deployment_with_pods("default", "web", 2);
    let out = ok(&double.kubectl(&[
        "delete",
        "pod",
        "web-7c5b9d8f6-p000",
        "-n",
        "default",
        "--wait=false",
    ]));
    assert!(out.contains("pod \"web-7c5b9d8f6-p000\" deleted"), "{out}");
    assert!(
        double
            .store()
            .get(&pods(), "default", "web-7c5b9d8f6-p000")
            .is_none()
    );
    assert!(
        double
            .store()
            .get(&pods(), "default", "web-7c5b9d8f6-p001")
            .is_some()
    );
    let out = double.kubectl(&["delete", "pod", "nope", "-n", "default"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pods \"nope\" not found"));
    // Deletion under a uid precondition that is not the pod's: 409, the pod stays.
    let dir = tempfile::tempdir().expect("tmp");
    let opts = dir.path().join("delete.json");
    std::fs::write(
        &opts,
        r#"{"kind":"DeleteOptions","apiVersion":"v1","preconditions":{"uid":"not-this-pod"}}"#,
    )
    .expect("write DeleteOptions");
    let out = double.kubectl(&[
        "delete",
        "--raw",
        "/api/v1/namespaces/default/pods/web-7c5b9d8f6-p001",
        "-f",
        opts.to_str().expect("path"),
    ]);
    assert!(
        !out.status.success(),
        "a stale uid precondition deleted the pod"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("Precondition failed: UID in precondition: not-this-pod"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        double
            .store()
            .get(&pods(), "default", "web-7c5b9d8f6-p001")
            .is_some()
    );
    let statuses: Vec<u16> = double.store().writes().iter().map(|w| w.status).collect();
    assert_eq!(statuses, [200, 404, 409]);
}

#[test]
fn injected_failures_are_answered_as_the_api_server_would_and_logged() {
    let double = KubeDouble::start();
    double.store().add_deployment_with_pods("default", "web", 3);
    double
        .store()
        .fail_next(Some("PATCH"), "/deployments/web", 403, 1);
    let out = double.kubectl(&["scale", "deploy/web", "--replicas=5", "-n", "default"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("forbidden"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(deploy(&double, "web")["spec"]["replicas"], 3);
    let w = double.store().writes();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].status, 403);
    // Consumed: the next one goes through.
    ok(&double.kubectl(&["scale", "deploy/web", "--replicas=5", "-n", "default"]));
    assert_eq!(deploy(&double, "web")["spec"]["replicas"], 5);
}
