//! The deployment manifests: `kubectl kustomize daemonset/` renders, every object validates
//! against the Kubernetes schema (`kubernetes-validate`), and `checkov` finds no failed check
//! (the ones the agent cannot pass are skipped in the manifest with the reason beside them).

use crate::support::{repo_root, venv_tool};
use std::process::Command;

fn render() -> String {
    let out = Command::new("kubectl")
        .args(["kustomize"])
        .arg(repo_root().join("daemonset"))
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
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
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, render()).expect("write");
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
    assert!(out.status.success(), "kubernetes-validate failed:\n{text}");
    assert!(
        text.contains("INFO"),
        "kubernetes-validate printed no verdict:\n{text}"
    );
}

#[test]
fn checkov_passes_the_manifests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(venv_tool("checkov"))
        .args([
            "--quiet",
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
    for r in &reports {
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
        passed > 20,
        "checkov ran too few checks ({passed}):\n{stdout}"
    );
}
