//! The deployment manifests: `kubectl kustomize daemonset/` (and the model canary,
//! `daemonset/canary/`) renders, every object validates against the Kubernetes schema
//! (`kubernetes-validate`), and `checkov` finds no failed check (the ones the agent cannot pass
//! are skipped in the manifest with the reason beside them). The hardening is checked on the
//! rendered objects: who the NetworkPolicy lets in and out, `fsGroup`, and that the namespace's
//! Pod Security exemption is the hostPath volumes and nothing more.

use crate::support::{python, repo_root, venv_tool};
use serde_json::Value;
use std::process::{Command, Stdio};

fn render_dir(dir: &str) -> String {
    let out = Command::new("kubectl")
        .args(["kustomize"])
        .arg(repo_root().join(dir))
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

fn render() -> String {
    render_dir("daemonset")
}

/// The rendered objects of `dir` as JSON, parsed by PyYAML from the test venv (a YAML parser
/// the tests already carry, rather than a Rust one only for this file).
fn objects(dir: &str) -> Vec<Value> {
    use std::io::Write;
    let mut child = Command::new(python())
        .args([
            "-c",
            "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(render_dir(dir).as_bytes())
        .expect("write yaml");
    let out = child.wait_with_output().expect("python");
    assert!(out.status.success(), "yaml to json failed");
    match serde_json::from_slice(&out.stdout).expect("json") {
        Value::Array(docs) => docs,
        other => panic!("expected a list of objects, got {other}"),
    }
}

fn object<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among the rendered objects"))
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Whether `selector` (a `matchLabels` map) selects a pod with `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let want = selector.as_object().expect("matchLabels");
    !want.is_empty() && want.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn daemonset_renders_with_the_agents_contract() {
    let yaml = render();
    for needle in [
        "kind: DaemonSet",
        "mountPath: /host/proc",
        "readOnly: true",
        "fieldPath: spec.nodeName",
        "path: /healthz",
        "resources:\n  - pods\n  verbs:\n  - get\n  - list\n  - watch\n---",
        "readOnlyRootFilesystem: true",
        "runAsNonRoot: true",
        "kind: NetworkPolicy",
    ] {
        assert!(yaml.contains(needle), "rendered manifests lack {needle:?}");
    }
    // Least privilege: the agent's role grants nothing but reading pods.
    let role = yaml
        .split("\n---\n")
        .find(|d| d.contains("kind: ClusterRole\n"))
        .expect("a ClusterRole");
    assert_eq!(role.matches("resources:").count(), 1, "{role}");
    for forbidden in [
        "secrets", "nodes", "create", "update", "patch", "delete", "\"*\"",
    ] {
        assert!(
            !role.contains(forbidden),
            "the agent's role mentions {forbidden}:\n{role}"
        );
    }
}

#[test]
fn manifests_validate_against_the_kubernetes_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The install, and the canary overlay's DaemonSet.
    for (manifests, verdict) in [
        ("daemonset", "INFO"),
        ("daemonset/canary", "daemonset/selfheal-agent-canary"),
    ] {
        let file = dir.path().join("rendered.yaml");
        std::fs::write(&file, render_dir(manifests)).expect("write");
        let out = Command::new(venv_tool("kubernetes-validate"))
            .args(["--strict", "--kubernetes-version", "1.30"])
            .arg(&file)
            .output()
            .expect("run kubernetes-validate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "kubernetes-validate failed on {manifests}:\n{text}"
        );
        assert!(
            text.contains(verdict),
            "kubernetes-validate printed no verdict for {manifests}:\n{text}"
        );
    }
}

#[test]
fn checkov_passes_the_manifests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(venv_tool("checkov"))
        .args([
            // Not --quiet: it leaves the passed checks (and so the canary's) out of the report.
            "--compact",
            "--framework",
            "kustomize",
            "--output",
            "json",
            "-d",
        ])
        .arg(repo_root().join("daemonset"))
        .env("CHECKOV_RUN_SCA_PACKAGE_SCAN_V2", "false")
        .env("BC_SKIP_MAPPING", "TRUE")
        .current_dir(dir.path())
        .output()
        .expect("run checkov");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "checkov printed no JSON report ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let reports = match &report {
        serde_json::Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    };
    let mut passed = 0;
    let mut canary_checked = false;
    for r in &reports {
        canary_checked |= r["results"]["passed_checks"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| {
                c["resource"]
                    .as_str()
                    .is_some_and(|n| n.contains("selfheal-agent-canary"))
            });
        let failed = r["results"]["failed_checks"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let names: Vec<String> = failed
            .iter()
            .map(|c| format!("{} {} ({})", c["check_id"], c["check_name"], c["resource"]))
            .collect();
        assert!(
            failed.is_empty(),
            "checkov failed checks:\n{}",
            names.join("\n")
        );
        passed += r["summary"]["passed"].as_u64().unwrap_or(0);
    }
    assert!(
        canary_checked,
        "checkov did not check the canary DaemonSet:\n{stdout}"
    );
    assert!(
        passed > 20,
        "checkov ran too few checks ({passed}):\n{stdout}"
    );
}

#[test]
fn network_policy_admits_only_monitoring_and_lets_out_only_the_sinks() {
    let objs = objects("daemonset");
    let policy = &object(&objs, "NetworkPolicy", "selfheal-agent")["spec"];
    assert_eq!(strs(&policy["policyTypes"]), ["Ingress", "Egress"]);
    let pod_labels =
        &object(&objs, "DaemonSet", "selfheal-agent")["spec"]["template"]["metadata"]["labels"];
    assert!(
        selects(&policy["podSelector"]["matchLabels"], pod_labels),
        "the policy does not select the agent's pods: {policy}"
    );

    // Ingress: one rule, from the monitoring namespace (by the label the API server sets on
    // every namespace), to the metrics port only. No rule without `from`, which would admit
    // every source.
    let ingress = policy["ingress"].as_array().expect("ingress rules");
    assert_eq!(ingress.len(), 1, "{policy}");
    let from = ingress[0]["from"].as_array().expect("an ingress `from`");
    assert_eq!(from.len(), 1, "{policy}");
    assert_eq!(
        from[0]["namespaceSelector"]["matchLabels"],
        serde_json::json!({"kubernetes.io/metadata.name": "monitoring"}),
    );
    assert!(from[0].get("ipBlock").is_none() && from[0].get("podSelector").is_none());
    assert_eq!(
        ingress[0]["ports"],
        serde_json::json!([{"port": 9477, "protocol": "TCP"}])
    );

    // Egress: exactly HTTPS (Kinesis, S3, the API server's Service), the API server's port,
    // the aggregator's HTTP ingest and DNS.
    let mut open: Vec<(i64, String)> = policy["egress"]
        .as_array()
        .expect("egress rules")
        .iter()
        .flat_map(|rule| {
            assert!(rule.get("to").is_none() || rule["to"].is_array(), "{rule}");
            rule["ports"].as_array().cloned().unwrap_or_default()
        })
        .map(|p| {
            (
                p["port"].as_i64().expect("numeric port"),
                p["protocol"].as_str().expect("protocol").to_owned(),
            )
        })
        .collect();
    open.sort();
    let tcp = |p| (p, "TCP".to_owned());
    assert_eq!(
        open,
        [
            tcp(53),
            (53, "UDP".to_owned()),
            tcp(443),
            tcp(6443),
            tcp(9478)
        ],
        "{policy}"
    );
    assert!(
        policy["egress"]
            .as_array()
            .expect("egress")
            .iter()
            .all(|r| r["ports"].is_array()),
        "an egress rule without ports opens every port: {policy}"
    );
    // The aggregator's ingest port in the policy is the aggregator's default.
    let agg_config =
        std::fs::read_to_string(repo_root().join("aggregator/src/config.rs")).expect("read");
    assert!(
        agg_config.contains("\"0.0.0.0:9478\""),
        "the aggregator's default port moved"
    );
}

#[test]
fn the_non_root_agent_reads_its_secret_through_fs_group() {
    let objs = objects("daemonset");
    let pod = &object(&objs, "DaemonSet", "selfheal-agent")["spec"]["template"]["spec"];
    let sc = &pod["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    let agent = pod["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "agent")
        .expect("the agent container");
    let uid = agent["securityContext"]["runAsUser"]
        .as_i64()
        .or(sc["runAsUser"].as_i64())
        .expect("runAsUser");
    assert_ne!(uid, 0);
    // The kubelet writes Secret files owned by root with the volume's mode; only fsGroup
    // gives them to a group the agent is in (and adds group read to 0400).
    assert_eq!(sc["fsGroup"], sc["runAsGroup"], "{sc}");
    assert!(sc["fsGroup"].as_i64().is_some_and(|g| g != 0), "{sc}");
    let secret = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v.get("secret").is_some())
        .expect("a Secret volume");
    let mode = secret["secret"]["defaultMode"]
        .as_i64()
        .expect("defaultMode");
    assert_eq!(
        mode & 0o007,
        0,
        "the Secret is readable by others: {mode:o}"
    );
}

/// Pod Security Standards `baseline` capability allow-list (the Kubernetes docs, "Capabilities").
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

#[test]
fn namespace_is_privileged_only_for_the_agents_host_paths() {
    let objs = objects("daemonset");
    let labels = &object(&objs, "Namespace", "selfheal-system")["metadata"]["labels"];
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "privileged");
    assert_eq!(labels["pod-security.kubernetes.io/warn"], "restricted");
    assert_eq!(labels["pod-security.kubernetes.io/audit"], "restricted");
    let why = std::fs::read_to_string(repo_root().join("daemonset/namespace.yaml")).expect("read");
    assert!(
        why.contains("`baseline`") && why.contains("hostPath"),
        "{why}"
    );

    // `privileged` is the narrowest level only while hostPath volumes are the one `baseline`
    // rule the agent breaks: check every other baseline rule on both DaemonSets.
    let canary = objects("daemonset/canary");
    for ds in [
        object(&objs, "DaemonSet", "selfheal-agent"),
        object(&canary, "DaemonSet", "selfheal-agent-canary"),
    ] {
        let pod = &ds["spec"]["template"]["spec"];
        for host in ["hostNetwork", "hostPID", "hostIPC", "hostUsers"] {
            assert!(
                pod.get(host).is_none() || (host == "hostUsers" && pod[host] == true),
                "{host} is set"
            );
        }
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let containers = pod["containers"]
            .as_array()
            .into_iter()
            .chain(pod["initContainers"].as_array())
            .flatten();
        for c in containers {
            let name = &c["name"];
            let sc = &c["securityContext"];
            assert_ne!(sc["privileged"], true, "{name} is privileged");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"], "{name}");
            for cap in strs(&sc["capabilities"]["add"]) {
                assert!(BASELINE_CAPABILITIES.contains(&cap), "{name} adds {cap}");
            }
            for p in c["ports"].as_array().into_iter().flatten() {
                assert!(p.get("hostPort").is_none(), "{name} has a host port");
            }
            assert!(sc.get("procMount").is_none() && sc.get("seLinuxOptions").is_none());
        }
        let mut host_paths: Vec<&str> = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .filter_map(|v| v["hostPath"]["path"].as_str())
            .collect();
        host_paths.sort_unstable();
        assert_eq!(host_paths, ["/proc", "/sys", "/var/lib/selfheal/spool"]);
    }
}

#[test]
fn model_canary_runs_on_canary_nodes_only_and_reads_the_canary_models() {
    let stable = objects("daemonset");
    let canary = objects("daemonset/canary");
    assert_eq!(
        canary.len(),
        1,
        "the canary overlay adds one DaemonSet and nothing else"
    );
    let main = object(&stable, "DaemonSet", "selfheal-agent");
    let can = object(&canary, "DaemonSet", "selfheal-agent-canary");
    assert_eq!(can["metadata"]["namespace"], "selfheal-system");

    // Each node runs exactly one of the two: the same label, NotIn for the main one and In
    // for the canary.
    let term = |ds: &Value| {
        ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
            ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            .clone()
    };
    let expr = |op: &str| {
        serde_json::json!([{"matchExpressions": [
            {"key": "selfheal.dev/model-track", "operator": op, "values": ["canary"]}
        ]}])
    };
    assert_eq!(term(main), expr("NotIn"));
    assert_eq!(term(can), expr("In"));

    // The selectors do not overlap (neither selects the other's pods), and the one
    // NetworkPolicy covers both.
    let labels = |ds: &Value| ds["spec"]["template"]["metadata"]["labels"].clone();
    assert!(!selects(
        &main["spec"]["selector"]["matchLabels"],
        &labels(can)
    ));
    assert!(!selects(
        &can["spec"]["selector"]["matchLabels"],
        &labels(main)
    ));
    let policy = &object(&stable, "NetworkPolicy", "selfheal-agent")["spec"];
    assert!(selects(&policy["podSelector"]["matchLabels"], &labels(can)));

    // Same agent, other models: the pod specs differ only in the model ConfigMaps' names.
    let names = |ds: &Value| -> Vec<String> {
        ds["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .filter(|v| v["name"] == "models")
            .flat_map(|v| {
                v["projected"]["sources"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|s| s["configMap"]["name"].as_str().expect("name").to_owned())
            .collect()
    };
    let families = ["cpu", "memory", "traffic", "pressure", "restarts"];
    assert_eq!(names(main), families.map(|f| format!("selfheal-model-{f}")));
    assert_eq!(
        names(can),
        families.map(|f| format!("selfheal-model-canary-{f}"))
    );
    let strip = |ds: &Value| {
        let mut pod = ds["spec"]["template"]["spec"].clone();
        pod["affinity"] = Value::Null;
        for v in pod["volumes"].as_array_mut().expect("volumes") {
            if v["name"] == "models" {
                v["projected"] = Value::Null;
            }
        }
        pod
    };
    assert_eq!(
        strip(main),
        strip(can),
        "the canary agent drifted from the main one"
    );
}
