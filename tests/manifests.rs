//! The deployment manifests: `kubectl kustomize daemonset/` and every overlay (the model
//! canary, the namespace opened to healing, the in-cluster aggregator and its canary) render,
//! every rendered object validates against the Kubernetes schema (`kubernetes-validate`), and
//! `checkov` finds no failed check in the files or the renders (the ones a pod cannot pass are
//! skipped in the manifest with the reason beside them). The hardening is checked on the rendered
//! objects: who each NetworkPolicy lets in and out, `fsGroup`, Pod Security per namespace (the
//! agent's exemption is its hostPath volumes and nothing more; everything else passes
//! `restricted`), least-privilege RBAC triple by triple, resources on every container, and that
//! the configs the manifests carry load with the programs' own config loaders.

use crate::support::{python, repo_root, venv_tool};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Every kustomization a user applies: the install and each overlay.
const RENDERS: &[&str] = &[
    "daemonset",
    "daemonset/canary",
    "daemonset/overlays/heal-namespace",
    "daemonset/overlays/in-cluster-aggregator",
    "daemonset/overlays/in-cluster-aggregator/canary",
];

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
    for &manifests in RENDERS {
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
        // One verdict per object: none was skipped as unknown.
        let objs = objects(manifests);
        let passed = text
            .lines()
            .filter(|l| l.contains(" passed for resource "))
            .count();
        assert_eq!(
            passed,
            objs.len(),
            "kubernetes-validate did not pass every object of {manifests}:\n{text}"
        );
    }
}

/// One `checkov` run over every tree it judges (it takes ~10 s to start and is run once per
/// test binary, not per test or object): the manifest files and the rendered kustomizations
/// of daemonset/ (frameworks `kubernetes` and `kustomize`) and terraform/ (`terraform`). The
/// reports, one per framework.
pub(crate) fn checkov_reports() -> &'static [Value] {
    static REPORTS: OnceLock<Vec<Value>> = OnceLock::new();
    REPORTS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(venv_tool("checkov"))
            // Not --quiet: it leaves the passed checks (and so the overlays') out of the report.
            .args(["--compact", "--output", "json", "--framework"])
            .args(["kubernetes", "kustomize", "terraform"])
            .arg("-d")
            .arg(repo_root().join("daemonset"))
            .arg("-d")
            .arg(repo_root().join("terraform"))
            .env("CHECKOV_RUN_SCA_PACKAGE_SCAN_V2", "false")
            .env("BC_SKIP_MAPPING", "TRUE")
            .current_dir(dir.path())
            .output()
            .expect("run checkov");
        let stdout = String::from_utf8_lossy(&out.stdout);
        // One JSON document per directory, each a report or a list of reports.
        let mut reports = Vec::new();
        for doc in serde_json::Deserializer::from_str(&stdout).into_iter::<Value>() {
            match doc.unwrap_or_else(|e| {
                panic!(
                    "checkov printed no JSON report ({e}):\n{stdout}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            }) {
                Value::Array(a) => reports.extend(a),
                other => reports.push(other),
            }
        }
        assert!(!reports.is_empty(), "checkov printed nothing");
        reports
    })
}

/// The report of one checkov framework, after asserting it failed nothing, parsed everything,
/// and that every skip carries its reason.
pub(crate) fn checkov_report(check_type: &str) -> Value {
    // A framework may report once per directory (and checkov 3.3 repeats some reports in a
    // second document): merge the distinct ones.
    let mut r = json!({"results": {"passed_checks": [], "failed_checks": [], "skipped_checks": []},
                       "summary": {"passed": 0, "parsing_errors": 0}});
    let mut seen: Vec<&Value> = Vec::new();
    for part in checkov_reports()
        .iter()
        .filter(|p| p["check_type"] == check_type)
    {
        if seen.contains(&part) {
            continue;
        }
        seen.push(part);
        for list in ["passed_checks", "failed_checks", "skipped_checks"] {
            let more = part["results"][list]
                .as_array()
                .cloned()
                .unwrap_or_default();
            r["results"][list]
                .as_array_mut()
                .expect("list")
                .extend(more);
        }
        for n in ["passed", "parsing_errors"] {
            let sum =
                r["summary"][n].as_u64().unwrap_or(0) + part["summary"][n].as_u64().unwrap_or(0);
            r["summary"][n] = json!(sum);
        }
    }
    assert!(!seen.is_empty(), "checkov wrote no {check_type} report");
    let failed: Vec<String> = r["results"]["failed_checks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| format!("{} {} ({})", c["check_id"], c["check_name"], c["resource"]))
        .collect();
    assert!(
        failed.is_empty(),
        "checkov {check_type}: failed checks:\n{}",
        failed.join("\n")
    );
    assert_eq!(
        r["summary"]["parsing_errors"], 0,
        "checkov {check_type}: {}",
        r["summary"]
    );
    for c in r["results"]["skipped_checks"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let why = c["check_result"]["suppress_comment"].as_str().unwrap_or("");
        assert!(
            why.split_whitespace().count() >= 5,
            "checkov {check_type}: {} is skipped on {} without a written reason",
            c["check_id"],
            c["resource"]
        );
    }
    r
}

fn checked_resources(r: &Value) -> BTreeSet<String> {
    r["results"]["passed_checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["resource"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn checkov_passes_the_manifests() {
    // The files as written (each must stand on its own: namespace and image set in place)...
    let files = checkov_report("kubernetes");
    assert!(
        files["summary"]["passed"].as_u64().unwrap_or(0) > 200,
        "checkov ran too few checks on the files: {}",
        files["summary"]
    );
    // ...and every kustomization rendered: the install, the canary and each overlay.
    let rendered = checkov_report("kustomize");
    let resources = checked_resources(&rendered);
    for wanted in [
        "selfheal-agent-canary",
        "overlay:heal-namespace:Role.shop.selfheal-heal-api",
        "overlay:in-cluster-aggregator:Deployment.selfheal-control.selfheal-aggregator",
        "overlay:in-cluster-aggregator:DaemonSet.selfheal-system.selfheal-agent",
        "Deployment.selfheal-control.selfheal-heal-api",
    ] {
        assert!(
            resources.iter().any(|r| r.contains(wanted)),
            "checkov did not check {wanted}: {resources:?}"
        );
    }
    assert!(
        rendered["summary"]["passed"].as_u64().unwrap_or(0) > 1000,
        "checkov ran too few checks on the renders: {}",
        rendered["summary"]
    );
    // What is waived, exactly: an image pinned by tag (the overlay pins the digest) and a
    // service-account token the pod needs. Anything else skipped is a new waiver to review.
    let skipped: BTreeSet<&str> = rendered["results"]["skipped_checks"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            files["results"]["skipped_checks"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .filter_map(|c| c["check_id"].as_str())
        .collect();
    assert_eq!(
        skipped,
        BTreeSet::from(["CKV_K8S_25", "CKV_K8S_38", "CKV_K8S_43"]),
        "the waived checks changed"
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
    let why =
        std::fs::read_to_string(repo_root().join("daemonset/system/namespace.yaml")).expect("read");
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

// ---- The heal API, the in-cluster aggregator and the agents' HTTPS sink -------------------

/// TOML text as JSON, parsed by the test venv's Python (`tomllib`), for configs whose loader is
/// not linked into this test binary.
fn toml_json(text: &str) -> Value {
    use std::io::Write;
    let mut child = Command::new(python())
        .args([
            "-c",
            "import json, sys, tomllib; json.dump(tomllib.loads(sys.stdin.read()), sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write toml");
    let out = child.wait_with_output().expect("python");
    assert!(out.status.success(), "not TOML:\n{text}");
    serde_json::from_slice(&out.stdout).expect("json")
}

fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

fn workloads(objs: &[Value]) -> impl Iterator<Item = &Value> {
    objs.iter().filter(|o| {
        ["Deployment", "DaemonSet", "StatefulSet"].contains(&o["kind"].as_str().unwrap_or(""))
    })
}

fn all_containers(pod: &Value) -> impl Iterator<Item = &Value> {
    pod["containers"]
        .as_array()
        .into_iter()
        .chain(pod["initContainers"].as_array())
        .flatten()
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    all_containers(pod)
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn container_port(c: &Value, name: &str) -> i64 {
    c["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_i64())
        .unwrap_or_else(|| panic!("no port {name} on {}", c["name"]))
}

fn volume<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

fn mount_path<'a>(c: &'a Value, volume: &str) -> &'a str {
    c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == volume)
        .and_then(|m| m["mountPath"].as_str())
        .unwrap_or_else(|| panic!("{} does not mount {volume}", c["name"]))
}

/// The config file a workload mounts from the ConfigMap of its volume `volume`.
fn mounted_config(objs: &[Value], workload: &Value, volume_name: &str, key: &str) -> String {
    let cm = volume(pod_spec(workload), volume_name)["configMap"]["name"]
        .as_str()
        .expect("a ConfigMap volume");
    object(objs, "ConfigMap", cm)["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap {cm} has no {key}"))
        .to_owned()
}

fn port_of(addr: &str) -> i64 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("host:port")
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/')
        .map(|(d, _)| d)
        .expect("an absolute path")
}

/// `(port, protocol)` of every egress rule; each rule must name its ports.
fn egress_ports(policy: &Value) -> Vec<(i64, String)> {
    let mut open: Vec<(i64, String)> = policy["egress"]
        .as_array()
        .expect("egress rules")
        .iter()
        .flat_map(|rule| {
            assert!(
                rule["ports"].is_array(),
                "an egress rule without ports: {rule}"
            );
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
    open
}

#[test]
fn heal_api_runs_two_replicas_behind_a_disruption_budget_and_a_service() {
    let objs = objects("daemonset");
    let dep = object(&objs, "Deployment", "selfheal-heal-api");
    assert_eq!(dep["metadata"]["namespace"], "selfheal-control");
    assert_eq!(dep["spec"]["replicas"], 2);
    let labels = &dep["spec"]["template"]["metadata"]["labels"];
    let pod = pod_spec(dep);
    assert_eq!(pod["serviceAccountName"], "selfheal-heal-api");
    // The two replicas land on different nodes when there are two.
    let spread = &pod["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");
    assert!(selects(&spread["labelSelector"]["matchLabels"], labels));

    let pdb = object(&objs, "PodDisruptionBudget", "selfheal-heal-api");
    assert_eq!(pdb["metadata"]["namespace"], "selfheal-control");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], labels));
    assert_eq!(
        pdb["spec"]["minAvailable"], 1,
        "a drain may take one replica, not both"
    );

    let svc = object(&objs, "Service", "selfheal-heal-api");
    assert!(selects(&svc["spec"]["selector"], labels));
    let ports = svc["spec"]["ports"].as_array().expect("ports");
    assert_eq!(
        ports.len(),
        1,
        "only the signed API is a Service port: {ports:?}"
    );
    assert_eq!(ports[0]["port"], 8443);
    let c = container(pod, "heal-api");
    assert_eq!(
        container_port(c, ports[0]["targetPort"].as_str().expect("named")),
        8443
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            c[probe]["httpGet"],
            json!({"path": "/healthz", "port": "https", "scheme": "HTTPS"}),
            "{probe}"
        );
    }
}

#[test]
fn heal_api_admits_only_the_aggregator() {
    let objs = objects("daemonset/overlays/in-cluster-aggregator");
    let heal = object(&objs, "Deployment", "selfheal-heal-api");
    let agg = object(&objs, "Deployment", "selfheal-aggregator");
    let agent = object(&objs, "DaemonSet", "selfheal-agent");
    let labels = |w: &Value| w["spec"]["template"]["metadata"]["labels"].clone();
    let policy_obj = object(&objs, "NetworkPolicy", "selfheal-heal-api");
    let policy = &policy_obj["spec"];
    assert_eq!(strs(&policy["policyTypes"]), ["Ingress", "Egress"]);
    assert!(selects(
        &policy["podSelector"]["matchLabels"],
        &labels(heal)
    ));

    // One port (the signed API, /metrics and /healthz all on 8443), two sources: the
    // aggregator's pods, in the heal API's own namespace (a bare podSelector), and the
    // monitoring namespace for /metrics. No rule without `from` (which would admit everyone),
    // no address rule, no other namespace.
    let ingress = policy["ingress"].as_array().expect("ingress rules");
    assert_eq!(ingress.len(), 2, "{policy}");
    for rule in ingress {
        assert!(
            rule["from"].is_array(),
            "a rule without `from` admits everyone: {rule}"
        );
        assert_eq!(
            rule["ports"],
            json!([{"port": 8443, "protocol": "TCP"}]),
            "{rule}"
        );
    }
    let from = ingress[0]["from"].as_array().expect("from");
    assert_eq!(from.len(), 1, "{policy}");
    assert!(from[0].get("namespaceSelector").is_none() && from[0].get("ipBlock").is_none());
    let sel = &from[0]["podSelector"]["matchLabels"];
    assert!(
        selects(sel, &labels(agg)),
        "the aggregator is not admitted: {policy}"
    );
    assert_eq!(
        agg["metadata"]["namespace"],
        policy_obj["metadata"]["namespace"]
    );
    for other in [heal, agent] {
        assert!(
            !selects(sel, &labels(other)),
            "{} is admitted",
            other["metadata"]["name"]
        );
    }
    assert_eq!(
        ingress[1]["from"],
        json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}])
    );
    // Out: the API server and DNS, nothing else.
    let tcp = |p| (p, "TCP".to_owned());
    assert_eq!(
        egress_ports(policy),
        [tcp(53), (53, "UDP".to_owned()), tcp(443), tcp(6443)],
        "{policy}"
    );

    // The aggregator may call the heal API (its egress names the heal API's pods and port) and
    // is reached by the agents and monitoring only.
    let ap = &object(&objs, "NetworkPolicy", "selfheal-aggregator")["spec"];
    assert!(selects(&ap["podSelector"]["matchLabels"], &labels(agg)));
    let to_heal = ap["egress"]
        .as_array()
        .expect("egress")
        .iter()
        .find(|r| r["ports"] == json!([{"port": 8443, "protocol": "TCP"}]))
        .expect("egress to the heal API");
    assert!(selects(
        &to_heal["to"][0]["podSelector"]["matchLabels"],
        &labels(heal)
    ));
    let ai = ap["ingress"].as_array().expect("ingress");
    assert_eq!(ai.len(), 1, "{ap}");
    assert_eq!(ai[0]["ports"], json!([{"port": 9478, "protocol": "TCP"}]));
    let froms = ai[0]["from"].as_array().expect("from");
    assert_eq!(froms.len(), 2, "{ap}");
    assert_eq!(
        froms[0]["namespaceSelector"]["matchLabels"],
        json!({"kubernetes.io/metadata.name": "selfheal-system"})
    );
    assert!(selects(
        &froms[0]["podSelector"]["matchLabels"],
        &labels(agent)
    ));
    assert_eq!(
        froms[1],
        json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}})
    );
}

type Triple = (String, String, String);

/// `(apiGroup, resource, verb)` for every combination a Role or ClusterRole grants, refusing
/// wildcards, resourceNames-free `*` and non-resource URLs on the way.
fn triples(role: &Value) -> BTreeSet<Triple> {
    let name = &role["metadata"]["name"];
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        assert!(rule.get("nonResourceURLs").is_none(), "{name}: {rule}");
        for field in ["apiGroups", "resources", "verbs"] {
            assert!(
                !strs(&rule[field]).contains(&"*"),
                "{name} has a wildcard: {rule}"
            );
        }
        for g in strs(&rule["apiGroups"]) {
            for r in strs(&rule["resources"]) {
                for v in strs(&rule["verbs"]) {
                    out.insert((g.to_owned(), r.to_owned(), v.to_owned()));
                }
            }
        }
    }
    out
}

fn set(items: &[(&str, &str, &[&str])]) -> BTreeSet<Triple> {
    items
        .iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(move |v| ((*g).to_owned(), (*r).to_owned(), (*v).to_owned()))
        })
        .collect()
}

/// What the heal API may do in a namespace opened to it: its four actions and the reads that
/// precede them, nothing more.
fn heal_api_grants() -> BTreeSet<Triple> {
    set(&[
        ("apps", "deployments", &["get", "list", "patch"]),
        ("apps", "statefulsets", &["get", "list", "patch"]),
        ("apps", "deployments/scale", &["get", "update", "patch"]),
        ("apps", "statefulsets/scale", &["get", "update", "patch"]),
        ("apps", "replicasets", &["get", "list"]),
        ("", "pods", &["get", "list", "delete"]),
        (
            "autoscaling",
            "horizontalpodautoscalers",
            &["get", "list", "patch"],
        ),
    ])
}

#[test]
fn rbac_is_least_privilege_in_every_render() {
    let cluster_roles = [
        (
            "selfheal-agent",
            set(&[("", "pods", &["get", "list", "watch"])]),
        ),
        (
            "selfheal-aggregator-tokenreview",
            set(&[("authentication.k8s.io", "tokenreviews", &["create"])]),
        ),
    ];
    let heal_sa = json!({"kind": "ServiceAccount", "name": "selfheal-heal-api", "namespace": "selfheal-control"});
    let mut heal_namespaces = std::collections::BTreeMap::new();
    for &dir in RENDERS {
        let objs = objects(dir);
        for o in &objs {
            assert_ne!(
                o["metadata"]["namespace"], "selfheal-unset-namespace",
                "{dir}: heal-api/access/ was included without a namespace"
            );
            match o["kind"].as_str() {
                // Cluster-wide: only the agent's pod reads and the aggregator's TokenReview.
                Some("ClusterRole") => {
                    let name = o["metadata"]["name"].as_str().expect("name");
                    let (_, want) = cluster_roles
                        .iter()
                        .find(|(n, _)| *n == name)
                        .unwrap_or_else(|| panic!("{dir}: unexpected ClusterRole {name}"));
                    assert_eq!(&triples(o), want, "{dir}: ClusterRole {name}");
                }
                Some("ClusterRoleBinding") => {
                    assert_eq!(o["roleRef"]["kind"], "ClusterRole");
                    let role = o["roleRef"]["name"].as_str().expect("roleRef");
                    assert!(cluster_roles.iter().any(|(n, _)| *n == role), "{dir}: {o}");
                    for s in o["subjects"].as_array().expect("subjects") {
                        assert_ne!(s, &heal_sa, "{dir}: the heal API holds a cluster-wide role");
                    }
                }
                Some("Role") => {
                    assert_eq!(o["metadata"]["name"], "selfheal-heal-api", "{dir}: {o}");
                    assert_eq!(triples(o), heal_api_grants(), "{dir}: the heal API's Role");
                }
                Some("RoleBinding") => {
                    let ns = o["metadata"]["namespace"].as_str().expect("namespace");
                    assert_eq!(
                        o["roleRef"],
                        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "selfheal-heal-api"})
                    );
                    assert_eq!(o["subjects"], json!([heal_sa]), "{dir}");
                    let role = objs.iter().find(|r| {
                        r["kind"] == "Role"
                            && r["metadata"]["name"] == "selfheal-heal-api"
                            && r["metadata"]["namespace"] == ns
                    });
                    assert!(
                        role.is_some(),
                        "{dir}: a RoleBinding in {ns} without its Role"
                    );
                    heal_namespaces
                        .entry(dir)
                        .or_insert_with(BTreeSet::new)
                        .insert(ns.to_owned());
                }
                _ => {}
            }
        }
        // The heal API's allow-list names exactly the namespaces whose Role binds it.
        if let Some(dep) = workloads(&objs).find(|w| w["metadata"]["name"] == "selfheal-heal-api") {
            let cfg = toml_json(&mounted_config(&objs, dep, "config", "heal-api.toml"));
            let allowed: BTreeSet<String> = strs(&cfg["allow"]["namespaces"])
                .into_iter()
                .map(str::to_owned)
                .collect();
            assert_eq!(
                Some(&allowed).filter(|a| !a.is_empty()),
                heal_namespaces.get(dir),
                "{dir}: the heal API's allow.namespaces and its RoleBindings disagree"
            );
        }
    }
    // No namespace is opened by the install itself; the overlay opens `shop`.
    assert!(!heal_namespaces.contains_key("daemonset"));
    assert_eq!(
        heal_namespaces.get("daemonset/overlays/heal-namespace"),
        Some(&BTreeSet::from(["shop".to_owned()]))
    );
}

#[test]
fn heal_api_config_matches_its_ports_mounts_and_actions() {
    let objs = objects("daemonset");
    let dep = object(&objs, "Deployment", "selfheal-heal-api");
    let pod = pod_spec(dep);
    let c = container(pod, "heal-api");
    let cfg = toml_json(&mounted_config(&objs, dep, "config", "heal-api.toml"));
    let cfg_path = c["args"]
        .as_array()
        .and_then(|a| a.iter().skip_while(|x| *x != "--config").nth(1))
        .and_then(Value::as_str)
        .expect("--config FILE");
    assert_eq!(
        cfg_path,
        format!("{}/heal-api.toml", mount_path(c, "config"))
    );
    assert_eq!(
        port_of(cfg["listen_addr"].as_str().expect("listen_addr")),
        container_port(c, "https")
    );
    // The audit log goes to stdout (the root filesystem is read-only; the pod's log outlives it).
    assert_eq!(cfg["audit_log"], "-");
    // No action may scale a workload to zero.
    assert!(cfg["bounds"]["min_replicas"].as_i64() >= Some(1), "{cfg}");
    for key in ["cert_file", "key_file"] {
        assert_eq!(
            parent(cfg["tls"][key].as_str().expect(key)),
            mount_path(c, "tls"),
            "{key}"
        );
    }
    assert_eq!(
        cfg["keys"]["file"],
        format!("{}/keys", mount_path(c, "hmac"))
    );
    assert_eq!(
        volume(pod, "tls")["secret"]["secretName"],
        "selfheal-heal-api-tls"
    );
    assert_eq!(
        volume(pod, "hmac")["secret"]["secretName"],
        "selfheal-heal-api-hmac"
    );
    for m in c["volumeMounts"].as_array().expect("mounts") {
        assert!(
            m.get("subPath").is_none(),
            "a subPath mount never sees a rotated Secret: {m}"
        );
    }
    // Every action kind the core defines is allowed, by its wire name, and the Role grants
    // each one (rbac_is_least_privilege_in_every_render checks the Role itself).
    let kinds: Vec<Value> = selfheal_core::action::ActionKind::ALL
        .iter()
        .map(|k| serde_json::to_value(k).expect("kind"))
        .collect();
    assert_eq!(cfg["allow"]["actions"], Value::Array(kinds));
    assert_eq!(
        cfg["allow"]["namespaces"],
        json!([]),
        "the install opens no namespace"
    );
}

/// Pod Security `restricted` volume types (the Kubernetes docs, "Volume Types").
const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

#[test]
fn every_container_is_sized_and_everything_but_the_agent_is_restricted() {
    for &dir in RENDERS {
        let objs = objects(dir);
        for w in workloads(&objs) {
            let name = w["metadata"]["name"].as_str().expect("name");
            let ns = w["metadata"]["namespace"].as_str().expect("namespace");
            let pod = pod_spec(w);
            for c in all_containers(pod) {
                for (kind, res) in [
                    ("requests", "cpu"),
                    ("requests", "memory"),
                    ("limits", "cpu"),
                    ("limits", "memory"),
                ] {
                    assert!(
                        c["resources"][kind][res].is_string(),
                        "{dir}: {name}/{} has no {kind}.{res}",
                        c["name"]
                    );
                }
            }
            if w["kind"] == "DaemonSet" {
                // The node agent, alone in its namespace (checked for `baseline` minus
                // hostPath in namespace_is_privileged_only_for_the_agents_host_paths).
                assert_eq!(ns, "selfheal-system", "{dir}: {name}");
                continue;
            }
            assert_eq!(
                ns, "selfheal-control",
                "{dir}: {name} outside the restricted namespace"
            );
            let sc = &pod["securityContext"];
            assert_eq!(sc["runAsNonRoot"], true, "{dir}: {name}");
            assert_eq!(
                sc["seccompProfile"]["type"], "RuntimeDefault",
                "{dir}: {name}"
            );
            assert!(
                sc["runAsUser"].as_i64().is_some_and(|u| u > 0),
                "{dir}: {name}"
            );
            for host in ["hostNetwork", "hostPID", "hostIPC"] {
                assert!(pod.get(host).is_none(), "{dir}: {name} sets {host}");
            }
            for v in pod["volumes"].as_array().expect("volumes") {
                let kind = v
                    .as_object()
                    .expect("volume")
                    .keys()
                    .find(|k| *k != "name")
                    .expect("a volume type");
                assert!(
                    RESTRICTED_VOLUMES.contains(&kind.as_str()),
                    "{dir}: {name} mounts {kind}"
                );
            }
            for c in all_containers(pod) {
                let cn = &c["name"];
                let csc = &c["securityContext"];
                assert_eq!(csc["allowPrivilegeEscalation"], false, "{dir}: {cn}");
                assert_eq!(csc["readOnlyRootFilesystem"], true, "{dir}: {cn}");
                assert_eq!(csc["runAsNonRoot"], true, "{dir}: {cn}");
                assert_ne!(csc["runAsUser"], 0, "{dir}: {cn}");
                assert_ne!(csc["privileged"], true, "{dir}: {cn}");
                assert_eq!(strs(&csc["capabilities"]["drop"]), ["ALL"], "{dir}: {cn}");
                assert!(strs(&csc["capabilities"]["add"]).is_empty(), "{dir}: {cn}");
                for p in c["ports"].as_array().into_iter().flatten() {
                    assert!(p.get("hostPort").is_none(), "{dir}: {cn} has a host port");
                }
            }
        }
        // Where the heal API runs, Pod Security enforces `restricted`.
        if let Some(ns) = objs
            .iter()
            .find(|o| o["kind"] == "Namespace" && o["metadata"]["name"] == "selfheal-control")
        {
            let labels = &ns["metadata"]["labels"];
            for mode in ["enforce", "audit", "warn"] {
                assert_eq!(
                    labels[format!("pod-security.kubernetes.io/{mode}")],
                    "restricted"
                );
            }
        }
    }
}

#[test]
fn in_cluster_aggregator_config_loads_and_trusts_only_the_agents_tokens() {
    use selfheal_aggregator::config::{AggregatorConfig, SourceKind};
    let objs = objects("daemonset/overlays/in-cluster-aggregator");
    let agg = object(&objs, "Deployment", "selfheal-aggregator");
    assert_eq!(
        agg["spec"]["replicas"], 1,
        "the state is files on one volume"
    );
    assert_eq!(agg["spec"]["strategy"]["type"], "Recreate");
    let pod = pod_spec(agg);
    let c = container(pod, "aggregator");
    let text = mounted_config(&objs, agg, "config", "aggregator.toml");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("aggregator.toml");
    std::fs::write(&file, &text).expect("write");
    // The aggregator's own loader (deny_unknown_fields): a misspelled field fails here.
    let cfg = AggregatorConfig::load(Some(&file)).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    assert_eq!(cfg.ingest.source, SourceKind::Http);
    let listen = port_of(&cfg.listen_addr);
    assert_eq!(listen, container_port(c, "https"));
    let svc = object(&objs, "Service", "selfheal-aggregator");
    assert_eq!(svc["spec"]["ports"][0]["port"], listen);
    assert!(selects(
        &svc["spec"]["selector"],
        &agg["spec"]["template"]["metadata"]["labels"]
    ));
    let tls = cfg.ingest.tls.as_ref().expect("TLS on the ingest");
    for f in [&tls.cert_file, &tls.key_file] {
        assert!(f.starts_with(mount_path(c, "tls")), "{}", f.display());
    }
    let data = mount_path(c, "data");
    for d in [&cfg.ingest.log_dir, &cfg.checkpoint.dir] {
        assert!(d.starts_with(data), "{} is not on the volume", d.display());
    }
    assert_eq!(
        volume(pod, "data")["persistentVolumeClaim"]["claimName"],
        "selfheal-aggregator"
    );

    // TokenReview: the agents' audience and service account, nobody else's.
    let review = cfg.ingest.auth.kubernetes.as_ref().expect("TokenReview");
    let agent = object(&objs, "DaemonSet", "selfheal-agent");
    let agent_sa = format!(
        "{}:{}",
        agent["metadata"]["namespace"].as_str().expect("ns"),
        pod_spec(agent)["serviceAccountName"].as_str().expect("sa")
    );
    assert_eq!(review.service_accounts, [agent_sa]);
    let token =
        &volume(pod_spec(agent), "ingest-token")["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(
        review.audience,
        token["audience"].as_str().expect("audience")
    );
    let binding = object(
        &objs,
        "ClusterRoleBinding",
        "selfheal-aggregator-tokenreview",
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": "selfheal-control"}])
    );
}

/// The agent's config as the in-cluster overlay makes it: the ConfigMap's agent.toml, then the
/// container's `SELFHEAL_AGENT_*` overrides applied as the agent applies them (`__` between
/// nested fields), then deserialized again (deny_unknown_fields: a misspelled variable fails).
fn agent_config_with_env(
    agent_toml: &str,
    container: &Value,
) -> selfheal_agent::config::AgentConfig {
    use selfheal_agent::config::AgentConfig;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, agent_toml).expect("write");
    let base = AgentConfig::load(Some(&file)).expect("agent.toml loads");
    let mut v = serde_json::to_value(&base).expect("serialize");
    for e in container["env"].as_array().expect("env") {
        let Some(var) = e["name"]
            .as_str()
            .and_then(|n| n.strip_prefix("SELFHEAL_AGENT_"))
        else {
            continue;
        };
        let path: Vec<String> = var.split("__").map(str::to_lowercase).collect();
        let (last, parents) = path.split_last().expect("a field");
        let mut at = &mut v;
        for p in parents {
            at = &mut at[p.as_str()];
        }
        at[last.as_str()] = e["value"].clone();
    }
    serde_json::from_value(v)
        .unwrap_or_else(|e| panic!("the overrides do not fit AgentConfig: {e}"))
}

#[test]
fn agents_send_to_the_in_cluster_aggregator_with_a_projected_token() {
    use selfheal_agent::forward::SinkKind;
    let objs = objects("daemonset/overlays/in-cluster-aggregator");
    let svc = object(&objs, "Service", "selfheal-aggregator");
    let want_url = format!(
        "https://{}.{}.svc:{}{}",
        svc["metadata"]["name"].as_str().expect("name"),
        svc["metadata"]["namespace"].as_str().expect("ns"),
        svc["spec"]["ports"][0]["port"],
        selfheal_aggregator::sources::http::DEFAULT_PATH
    );
    let agent_toml = object(&objs, "ConfigMap", "selfheal-agent")["data"]["agent.toml"]
        .as_str()
        .expect("agent.toml")
        .to_owned();
    let canary = objects("daemonset/overlays/in-cluster-aggregator/canary");
    for ds in [
        object(&objs, "DaemonSet", "selfheal-agent"),
        object(&canary, "DaemonSet", "selfheal-agent-canary"),
    ] {
        let name = &ds["metadata"]["name"];
        let pod = pod_spec(ds);
        let c = container(pod, "agent");
        let cfg = agent_config_with_env(&agent_toml, c);
        assert_eq!(cfg.forward.sink, SinkKind::Http, "{name}");
        assert_eq!(cfg.forward.http.url, want_url, "{name}");
        // The token: projected for the aggregator's audience, bound to this pod, short-lived.
        let token_file = cfg.forward.http.token_file.as_ref().expect("token_file");
        let token_file = token_file.to_str().expect("utf8");
        assert_eq!(parent(token_file), mount_path(c, "ingest-token"), "{name}");
        let projected = &volume(pod, "ingest-token")["projected"];
        let sources = projected["sources"].as_array().expect("sources");
        assert_eq!(sources.len(), 1, "{name}: only the token in that volume");
        let sat = &sources[0]["serviceAccountToken"];
        assert_eq!(sat["audience"], "selfheal-ingest", "{name}");
        assert_eq!(
            Some(sat["path"].as_str().expect("path")),
            token_file.rsplit('/').next()
        );
        let ttl = sat["expirationSeconds"]
            .as_i64()
            .expect("expirationSeconds");
        assert!((600..=3600).contains(&ttl), "{name}: a token valid {ttl} s");
        assert_eq!(
            projected["defaultMode"].as_i64().map(|m| m & 0o007),
            Some(0),
            "{name}"
        );
        // The aggregator's CA, pinned.
        let ca = cfg.forward.http.ca_file.as_ref().expect("ca_file");
        assert_eq!(
            parent(ca.to_str().expect("utf8")),
            mount_path(c, "aggregator-ca")
        );
        assert_eq!(
            volume(pod, "aggregator-ca")["configMap"]["name"],
            "selfheal-aggregator-ca"
        );
    }
    // Without the overlay the agents keep the ConfigMap's Kinesis sink and carry no token.
    let base = objects("daemonset");
    let ds = object(&base, "DaemonSet", "selfheal-agent");
    let cfg = agent_config_with_env(&agent_toml, container(pod_spec(ds), "agent"));
    assert_eq!(cfg.forward.sink, SinkKind::Kinesis);
    assert!(
        pod_spec(ds)["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .all(|v| v["name"] != "ingest-token")
    );
}

#[test]
fn heal_api_writes_are_bounded_by_admission_policies() {
    let objs = objects("daemonset");
    let dep = object(&objs, "Deployment", "selfheal-heal-api");
    let user = format!(
        "system:serviceaccount:{}:{}",
        dep["metadata"]["namespace"].as_str().expect("ns"),
        pod_spec(dep)["serviceAccountName"].as_str().expect("sa")
    );
    let policies: Vec<&Value> = objs
        .iter()
        .filter(|o| o["kind"] == "ValidatingAdmissionPolicy")
        .collect();
    assert_eq!(policies.len(), 3, "workloads, their scale, HPAs");
    // Every (group, resource) the heal API's Role may write is under a policy for UPDATE.
    let mut covered = BTreeSet::new();
    for p in &policies {
        let name = p["metadata"]["name"].as_str().expect("name");
        let spec = &p["spec"];
        assert_eq!(spec["failurePolicy"], "Fail", "{name}");
        assert_eq!(
            spec["matchConditions"],
            json!([{"name": "heal-api-only", "expression": format!("request.userInfo.username == '{user}'")}]),
            "{name} must apply to the heal API's writes, and only to them"
        );
        assert!(
            spec["validations"]
                .as_array()
                .is_some_and(|v| !v.is_empty()),
            "{name}"
        );
        for rule in spec["matchConstraints"]["resourceRules"]
            .as_array()
            .expect("rules")
        {
            assert_eq!(strs(&rule["operations"]), ["UPDATE"], "{name}");
            for g in strs(&rule["apiGroups"]) {
                for r in strs(&rule["resources"]) {
                    covered.insert((g.to_owned(), r.to_owned()));
                }
            }
        }
        let binding = object(&objs, "ValidatingAdmissionPolicyBinding", name);
        assert_eq!(binding["spec"]["policyName"], name);
        assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
        assert!(
            binding["spec"].get("matchResources").is_none(),
            "{name}: bound in every namespace"
        );
    }
    let writes: BTreeSet<(String, String)> = heal_api_grants()
        .into_iter()
        .filter(|(_, _, v)| v == "patch" || v == "update")
        .map(|(g, r, _)| (g, r))
        .collect();
    assert_eq!(
        covered, writes,
        "writes without a policy, or policies for nothing"
    );

    // The scale policy's floor and step are the heal API's own bounds, enforced a second time
    // by the API server (a stolen token gets no further than the heal API would go).
    let cfg = toml_json(&mounted_config(&objs, dep, "config", "heal-api.toml"));
    let scale = policies
        .iter()
        .find(|p| p["metadata"]["name"] == "selfheal-heal-api-scale")
        .expect("the scale policy");
    let exprs: Vec<&str> = scale["spec"]["validations"]
        .as_array()
        .expect("validations")
        .iter()
        .filter_map(|v| v["expression"].as_str())
        .collect();
    let min = cfg["bounds"]["min_replicas"]
        .as_i64()
        .expect("min_replicas");
    let step = cfg["bounds"]["max_step"].as_i64().expect("max_step");
    assert_eq!(
        exprs,
        [
            format!("object.spec.replicas >= {min}"),
            format!(
                "object.spec.replicas - oldObject.spec.replicas <= {step} && oldObject.spec.replicas - object.spec.replicas <= {step}"
            ),
        ]
    );
}
