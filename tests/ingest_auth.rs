//! Who may post to the HTTP ingest, end to end with the `selfheal` binaries: per-agent tokens
//! from a token table (rotated while both run), and projected service-account tokens checked
//! by TokenReview against the Kubernetes API double, whose TokenReview endpoint real `kubectl`
//! drives first to show it answers as the API server does.

use crate::agent_forward::{AgentFiles, metric, runtime, stop, wait_metrics};
use crate::ingest::{NODE_A_TOKEN, NODE_B_TOKEN, token_file};
use crate::lake::Aggregator;
use crate::support::kube_double::{IssuedToken, KubeDouble};
use crate::support::records::{node_a_wire, node_wire, now_ms};
use crate::support::tls;
use crate::support::{free_port, selfheal, write_file};
use selfheal_core::batch::encode_batch;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const KUBECTL: &str = "/usr/bin/kubectl";

async fn post(url: &str, token: Option<&str>, body: Vec<u8>) -> u16 {
    let mut req = reqwest::Client::new()
        .post(url)
        .timeout(Duration::from_secs(10))
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send()
        .await
        .expect("the ingest endpoint answers")
        .status()
        .as_u16()
}

fn files_under(dir: &Path) -> usize {
    if !dir.exists() {
        return 0;
    }
    let mut n = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                n += 1;
            }
        }
    }
    n
}

fn aggregator_config(dir: &Path, port: u16, auth: &str) -> std::path::PathBuf {
    write_file(
        dir,
        "aggregator.toml",
        &format!(
            r#"listen_addr = "127.0.0.1:{port}"
shutdown_grace_secs = 10
[ingest]
source = "http"
log_dir = "{}"
{auth}
[batch]
flush_interval_ms = 200
retry_max_ms = 500
[lake]
location = "{}"
"#,
            dir.join("ingest-log").display(),
            dir.join("lake").display(),
        ),
    )
}

#[test]
fn without_a_credential_nothing_lands_a_foreign_record_is_403_and_a_rotated_token_keeps_working() {
    let rt = runtime();
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = aggregator_config(tmp.path(), port, &token_file(tmp.path()));
    let aggregator = Aggregator::spawn(selfheal(), &config, port);
    let url = format!("http://127.0.0.1:{port}/v1/ingest");
    let one = |id| encode_batch([node_a_wire(id).as_slice()]).expect("frame");

    assert_eq!(rt.block_on(post(&url, None, one(1))), 401);
    assert_eq!(
        rt.block_on(post(&url, Some("forged-token-of-nobody-000"), one(2))),
        401
    );
    // node-a's credential carrying a node-b record.
    let foreign = encode_batch([node_wire(3, "node-b", now_ms()).as_slice()]).expect("frame");
    assert_eq!(
        rt.block_on(post(&url, Some(NODE_A_TOKEN), foreign.clone())),
        403
    );
    assert_eq!(rt.block_on(post(&url, Some(NODE_B_TOKEN), foreign)), 200);
    // Several flush intervals: nothing refused may reach the lake; only node-b's record does.
    std::thread::sleep(Duration::from_millis(1000));
    let m = aggregator.metrics_text();
    assert_eq!(
        metric(&m, "selfheal_aggregator_ingest_auth_refused_total"),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "selfheal_aggregator_ingest_log_appended_records_total"),
        1.0,
        "{m}"
    );

    // The agent, with node-a's token in its token file.
    let agent = AgentFiles::http(&url, "[pods]\nsource = \"none\"\n");
    let mut child = agent.start("out");
    wait_metrics(&agent, "20 records sent", Duration::from_secs(20), |m| {
        metric(m, "selfheal_agent_forward_sent_records_total") >= 20.0
    });
    // Rotate node-a's token on both sides, agent's first (a window of 401s the agent rides
    // out with its spool), without restarting either.
    let rotated = "node-a-rotated-ingest-token-42";
    std::fs::write(agent.token_file(), format!("{rotated}\n")).expect("rotate agent token");
    write_file(
        tmp.path(),
        "ingest-tokens",
        &format!("node-a {rotated}\nnode-b {NODE_B_TOKEN}\n"),
    );
    let sent = |m: &str| metric(m, "selfheal_agent_forward_sent_records_total");
    let before = agent.metrics().map(|m| sent(&m)).unwrap_or_default();
    wait_metrics(
        &agent,
        "20 more records sent",
        Duration::from_secs(20),
        |m| sent(m) >= before + 20.0,
    );
    assert_eq!(
        rt.block_on(post(&url, Some(NODE_A_TOKEN), one(4))),
        401,
        "the replaced token still works"
    );
    let status = stop(&mut child, Duration::from_secs(10));
    assert!(status.success(), "{status:?}\n{}", agent.log("out"));
    let (printed, _) = agent.printed("out");
    // Everything the agent printed was acknowledged (its spool drained), so it is in the log.
    let start = Instant::now();
    loop {
        let logged = metric(
            &aggregator.metrics_text(),
            "selfheal_aggregator_ingest_log_appended_records_total",
        );
        if logged >= printed.len() as f64 + 1.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{logged} logged for {} printed",
            printed.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    aggregator.stop();
    assert!(files_under(&tmp.path().join("lake")) > 0);
}

/// `kubectl --server <double> --token x create -f <file> -o json`, isolated from any config.
fn kubectl_create(double: &KubeDouble, file: &Path) -> Value {
    let home = tempfile::tempdir().expect("kubectl home");
    let out = Command::new(KUBECTL)
        .env_clear()
        .env("HOME", home.path())
        .env("KUBECONFIG", home.path().join("no-kubeconfig"))
        .args([
            "--server",
            &double.url(),
            "--token",
            "x",
            "--request-timeout=10s",
        ])
        .arg(format!(
            "--cache-dir={}",
            home.path().join("cache").display()
        ))
        .args(["create", "--validate=false", "-o", "json", "-f"])
        .arg(file)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl create failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("kubectl printed JSON")
}

fn review_file(dir: &Path, token: &str) -> std::path::PathBuf {
    write_file(
        dir,
        &format!("review-{}.json", token.len()),
        &serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": ["selfheal-ingest"]},
        })
        .to_string(),
    )
}

#[test]
fn kubectl_creates_token_reviews_on_the_double_as_on_an_api_server() {
    let double = KubeDouble::start();
    double.store().issue_token(
        "sa-token-of-the-agent-on-node-a",
        IssuedToken {
            service_account: "selfheal-system:selfheal-agent".into(),
            node: Some("node-a".into()),
            audiences: vec!["selfheal-ingest".into()],
        },
    );
    double.store().issue_token(
        "sa-token-for-the-api-audience",
        IssuedToken {
            service_account: "selfheal-system:selfheal-agent".into(),
            node: Some("node-a".into()),
            audiences: vec!["https://kubernetes.default.svc.cluster.local".into()],
        },
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let ok = kubectl_create(
        &double,
        &review_file(tmp.path(), "sa-token-of-the-agent-on-node-a"),
    );
    assert_eq!(ok["kind"], "TokenReview");
    assert_eq!(ok["status"]["authenticated"], true, "{ok:#}");
    assert_eq!(
        ok["status"]["user"]["username"],
        "system:serviceaccount:selfheal-system:selfheal-agent"
    );
    assert_eq!(
        ok["status"]["user"]["extra"]["authentication.kubernetes.io/node-name"][0],
        "node-a"
    );
    assert_eq!(ok["status"]["audiences"][0], "selfheal-ingest");
    let other = kubectl_create(
        &double,
        &review_file(tmp.path(), "sa-token-for-the-api-audience"),
    );
    assert!(other["status"]["authenticated"].is_null(), "{other:#}");
    assert!(
        other["status"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("audiences")),
        "{other:#}"
    );
    let bad = kubectl_create(&double, &review_file(tmp.path(), "no-such-token"));
    assert!(bad["status"]["authenticated"].is_null(), "{bad:#}");
    assert!(
        double
            .store()
            .requests()
            .iter()
            .any(|r| r.starts_with("POST /apis/authentication.k8s.io/v1/tokenreviews")),
        "{:?}",
        double.store().requests()
    );
}

#[test]
fn in_a_cluster_the_node_comes_from_the_token_review_never_from_the_record() {
    let rt = runtime();
    let double = KubeDouble::start();
    let agent_sa = "selfheal-system:selfheal-agent";
    let issue = |token: &str, sa: &str, node: Option<&str>, aud: &str| {
        double.store().issue_token(
            token,
            IssuedToken {
                service_account: sa.into(),
                node: node.map(str::to_owned),
                audiences: vec![aud.into()],
            },
        );
    };
    issue(
        "projected-token-node-a-0001",
        agent_sa,
        Some("node-a"),
        "selfheal-ingest",
    );
    issue(
        "projected-token-node-b-0001",
        agent_sa,
        Some("node-b"),
        "selfheal-ingest",
    );
    issue(
        "projected-token-other-audience",
        agent_sa,
        Some("node-a"),
        "https://kubernetes.default.svc.cluster.local",
    );
    issue(
        "projected-token-other-sa",
        "shop:web",
        Some("node-a"),
        "selfheal-ingest",
    );
    issue(
        "projected-token-not-pod-bound",
        agent_sa,
        None,
        "selfheal-ingest",
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let own = write_file(tmp.path(), "aggregator-sa-token", "aggregator-own-token\n");
    double.store().require_token(Some("aggregator-own-token"));
    let port = free_port();
    let config = aggregator_config(
        tmp.path(),
        port,
        &format!(
            "[ingest.auth.kubernetes]\napi_url = \"{}\"\ntoken_file = \"{}\"\ncache_secs = 1\n",
            double.url(),
            own.display()
        ),
    );
    // No CA file: the default (the pod's service-account CA) does not exist here.
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace("cache_secs = 1\n", "cache_secs = 1\nca_file = \"\"\n"),
    )
    .expect("config");
    let aggregator = Aggregator::spawn(selfheal(), &config, port);
    let url = format!("http://127.0.0.1:{port}/v1/ingest");
    let a = || encode_batch([node_a_wire(fastrand_id()).as_slice()]).expect("frame");

    assert_eq!(rt.block_on(post(&url, None, a())), 401);
    assert_eq!(
        rt.block_on(post(&url, Some("projected-token-node-a-0001"), a())),
        200
    );
    // Cached: a second request within cache_secs costs no review.
    let reviews = || {
        double
            .store()
            .requests()
            .iter()
            .filter(|r| r.contains("tokenreviews"))
            .count()
    };
    let before = reviews();
    assert_eq!(
        rt.block_on(post(&url, Some("projected-token-node-a-0001"), a())),
        200
    );
    assert_eq!(reviews(), before, "the review was not cached");
    // node-b's agent speaking for node-a.
    assert_eq!(
        rt.block_on(post(&url, Some("projected-token-node-b-0001"), a())),
        403
    );
    for refused in [
        "projected-token-other-audience",
        "projected-token-other-sa",
        "projected-token-not-pod-bound",
        "never-issued-token",
    ] {
        assert_eq!(
            rt.block_on(post(&url, Some(refused), a())),
            401,
            "{refused}"
        );
    }
    // Rotation: the kubelet writes a new token; the old one is revoked. No restart.
    issue(
        "projected-token-node-a-0002",
        agent_sa,
        Some("node-a"),
        "selfheal-ingest",
    );
    double.store().revoke_token("projected-token-node-a-0001");
    assert_eq!(
        rt.block_on(post(&url, Some("projected-token-node-a-0002"), a())),
        200
    );
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        rt.block_on(post(&url, Some("projected-token-node-a-0001"), a())),
        401,
        "a revoked token outlived the cache"
    );
    // Every review carried the aggregator's own token (the double refuses others with 401,
    // which the aggregator would answer as 503).
    assert!(
        double
            .store()
            .tokens_seen()
            .contains(&"aggregator-own-token".to_owned())
    );
    let m = aggregator.metrics_text();
    assert_eq!(
        metric(
            &m,
            "selfheal_aggregator_ingest_requests_total{status=\"200\"}"
        ),
        3.0,
        "{m}"
    );
    aggregator.stop();
}

fn fastrand_id() -> u128 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    u128::from(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

#[test]
fn over_tls_with_client_certificates_the_agents_sink_posts_and_plain_or_anonymous_clients_fail() {
    use selfheal_agent::forward::Sink;
    use selfheal_agent::forward::http::{HttpConfig, HttpSink};
    use selfheal_agent::forward::spool::{Lane, SpooledRecord};
    let rt = runtime();
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    tls::certificates(d, &[tls::SERVER, tls::CLIENT]);
    let port = free_port();
    let tls = format!(
        "{}[ingest.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
        token_file(d),
        d.join("server.crt").display(),
        d.join("server.key").display(),
        d.join("ca.crt").display(),
    );
    let config = aggregator_config(d, port, &tls);
    let mut cmd = selfheal();
    cmd.args(["aggregator", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null());
    let _aggregator = crate::support::KillOnDrop(cmd.spawn().expect("start aggregator"));

    let agent_token = write_file(d, "agent-token", NODE_A_TOKEN);
    let sink_config = |client_cert: bool| HttpConfig {
        url: format!("https://127.0.0.1:{port}/v1/ingest"),
        connect_timeout_ms: 1000,
        token_file: Some(agent_token.clone()),
        ca_file: Some(d.join("ca.crt")),
        client_cert_file: client_cert.then(|| d.join("client.crt")),
        client_key_file: client_cert.then(|| d.join("client.key")),
    };
    let sink = HttpSink::from_config(&sink_config(true)).expect("sink with client cert");
    let record = SpooledRecord {
        lane: Lane::Sample,
        partition_key: "node/node-a".into(),
        data: node_a_wire(1),
        appended_ms: now_ms(),
    };
    // Wait for the server to listen, then post as the agent does.
    let start = Instant::now();
    let outcome = loop {
        match rt.block_on(sink.send(&[&record])) {
            Ok(o) => break o,
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "never answered: {e}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    assert_eq!(outcome.len(), 1);

    // Without a client certificate the handshake fails: nothing is answered.
    let anonymous = HttpSink::from_config(&sink_config(false)).expect("sink without cert");
    assert!(rt.block_on(anonymous.send(&[&record])).is_err());
    // Plain HTTP to the TLS port gets no HTTP answer.
    assert!(crate::support::http_get(port, "/healthz").is_none_or(|(s, _)| s != 200));
    // A token over plain http:// to anything but loopback is a config error.
    let clear = HttpConfig {
        url: "http://aggregator.example:9478/v1/ingest".into(),
        ..sink_config(true)
    };
    let e = HttpSink::from_config(&clear).expect_err("token in clear");
    assert!(e.to_string().contains("forward.http.url"), "{e}");
}
