//! The `selfheal agent` command line: one-shot output, bad configuration, the HTTP endpoints,
//! graceful shutdown.

use crate::support::{
    KillOnDrop, envelopes, free_port, http_get, selfheal, signal, stdout_of, write_file,
};
use selfheal_core::Family;
use selfheal_core::schema::Subject;
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn once_prints_one_cycle_of_node_records_as_json() {
    let envs = envelopes(&stdout_of(
        selfheal()
            .args(["agent", "--once", "--once-gap-ms", "300"])
            .env("SELFHEAL_AGENT_NODE_NAME", "node-x"),
    ));
    let node_families: Vec<Family> = envs
        .iter()
        .filter(|e| e.record().subject == Subject::Node)
        .map(|e| e.record().family)
        .collect();
    for f in [Family::Cpu, Family::Memory, Family::Traffic] {
        assert!(
            node_families.contains(&f),
            "no node {f} record in {node_families:?}"
        );
    }
    assert!(
        envs.iter()
            .all(|e| e.schema_version == 1 && e.record().node == "node-x")
    );
}

fn fails_naming(field: &str, toml: &str, env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_file(dir.path(), "agent.toml", toml);
    let mut cmd = selfheal();
    cmd.args(["agent", "--once", "--config"]).arg(&cfg);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "config {toml:?} {env:?} was accepted"
    );
    assert!(
        stderr.to_lowercase().contains(field),
        "error does not name {field}: {stderr}"
    );
    assert!(out.stdout.is_empty(), "no work may start on a bad config");
}

#[test]
fn bad_config_fails_fast_naming_the_field() {
    fails_naming("interval_secs", "interval_secs = 0\n", &[]);
    fails_naming("scrape_interval", "scrape_interval = 5\n", &[]);
    fails_naming("listen_addr", "listen_addr = \"localhost\"\n", &[]);
    fails_naming(
        "interval_secs",
        "",
        &[("SELFHEAL_AGENT_INTERVAL_SECS", "soon")],
    );
    fails_naming("kubepods_paths", "kubepods_paths = [\"../etc\"]\n", &[]);
}

#[test]
fn serves_metrics_and_health_then_stops_gracefully_on_sigterm() {
    let port = free_port();
    let child = selfheal()
        .args(["--log-format", "json", "agent"])
        .env("SELFHEAL_AGENT_INTERVAL_SECS", "0.2")
        .env("SELFHEAL_AGENT_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent");
    let mut agent = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        if let Some((200, body)) = http_get(port, "/metrics")
            && (body.contains("selfheal_agent_cycles_total 2")
                || body.contains("selfheal_agent_cycles_total 3"))
        {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "agent never served two cycles of metrics"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for name in [
        "selfheal_agent_records_total{family=\"cpu\"}",
        "selfheal_agent_cycle_duration_seconds_bucket",
        "selfheal_agent_series ",
        "selfheal_agent_build_info",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
    let (status, body) = http_get(port, "/healthz").expect("healthz answers");
    assert_eq!(status, 200, "{body}");

    signal(agent.0.id(), "TERM");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = agent.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "agent did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "agent exited with {status}");
    let mut stderr = String::new();
    agent
        .0
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read");
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).expect("structured JSON log line"))
        .collect();
    let messages: Vec<&str> = events
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    for m in [
        "AgentStarted",
        "ShutdownRequested",
        "AgentStopping",
        "AgentStopped",
    ] {
        assert!(messages.contains(&m), "{m} not logged: {messages:?}");
    }
}

#[test]
fn once_names_pods_after_the_api_servers_pod_list() {
    use crate::support::{cgroup_fixture, fixture, kube_double::KubeDouble};
    let list: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("kube/pods.json")).expect("pods.json"),
    )
    .expect("PodList JSON");
    let double = KubeDouble::with_pod_list(&list);
    let cg = tempfile::tempdir().expect("tempdir");
    // Cgroups for a Deployment's pod, a StatefulSet's pod, and one the API does not know.
    let web = "0f6c1d3a-2b4e-4c8a-9e71-5a2d7c4b8e01";
    let db = "3c9e2a71-5f0d-4b6e-8a13-7d2c9b4e6f02";
    let stranger = "99999999-0000-4000-8000-000000000000";
    for (i, uid) in [web, db, stranger].into_iter().enumerate() {
        cgroup_fixture::write_v2_pod(cg.path(), uid, i, 1);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let token = write_file(dir.path(), "token", "test-token\n");
    let mut cmd = selfheal();
    cmd.args(["agent", "--once", "--once-gap-ms", "100"])
        .env("SELFHEAL_AGENT_NODE_NAME", "node-a")
        .env("SELFHEAL_AGENT_CGROUP_ROOT", cg.path())
        .env("SELFHEAL_AGENT_PODS__SOURCE", "api")
        .env("SELFHEAL_AGENT_PODS__API_URL", double.url())
        .env("SELFHEAL_AGENT_PODS__TOKEN_FILE", &token);
    let mut keys = std::collections::BTreeMap::new();
    for env in envelopes(&stdout_of(&mut cmd)) {
        if let Subject::Pod(p) = &env.record().subject {
            keys.insert(p.uid.clone(), env.record().subject.workload_key("node-a"));
        }
    }
    assert_eq!(
        keys.get(web).map(String::as_str),
        Some("shop/Deployment/web")
    );
    assert_eq!(
        keys.get(db).map(String::as_str),
        Some("shop/StatefulSet/db")
    );
    assert_eq!(
        keys.get(stranger).map(String::as_str),
        Some("pod-uid/99999999-0000-4000-8000-000000000000")
    );
    assert!(
        double
            .store()
            .tokens_seen()
            .iter()
            .any(|t| t == "test-token"),
        "the agent authenticates with the token file"
    );
}
