//! Notifications through the real binary: a storm opens an incident and a webhook receiver on
//! loopback gets Alertmanager's payload with the bearer token; resolving it sends `resolved`; a
//! receiver that fails at first gets the message after retries; an SNS topic on moto gets it
//! (through moto's own HTTP delivery to a subscriber on loopback).

use crate::support::moto::{Moto, aws_env};
use crate::support::records::checkout_cpu_anomaly;
use crate::support::{KillOnDrop, free_port, http_get, selfheal, signal, stdout_of, write_file};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use selfheal_core::schema::encode_wire;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const API_TOKEN: &str = "notify-test-api-token-0123456789abcdef";
const HOOK_TOKEN: &str = "notify-test-webhook-token-0123456789";
const INGEST_TOKEN: &str = "node-0-notify-ingest-token-0123456789";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What a receiver got: (Authorization header, body).
type Received = Arc<Mutex<Vec<(Option<String>, Value)>>>;

#[derive(Clone, Default)]
struct Receiver {
    got: Received,
    /// Requests to answer 503 before accepting.
    fail_first: Arc<AtomicU32>,
    requests: Arc<AtomicU32>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
    r.requests.fetch_add(1, Ordering::SeqCst);
    if r.fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    r.got.lock().expect("lock").push((auth, v));
    StatusCode::OK
}

impl Receiver {
    /// Serves on a free loopback port; returns the port.
    fn serve(&self, rt: &tokio::runtime::Runtime) -> u16 {
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .route("/sns", axum::routing::post(receive))
            .with_state(self.clone());
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind receiver");
        let port = listener.local_addr().expect("addr").port();
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        port
    }

    fn bodies(&self) -> Vec<Value> {
        self.got
            .lock()
            .expect("lock")
            .iter()
            .map(|(_, b)| b.clone())
            .collect()
    }

    fn wait_for(&self, what: &str, mut ok: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let b = self.bodies();
            if ok(&b) {
                return b;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{what}: not within 60 s; got {b:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// An aggregator on HTTP ingest with `notify` (TOML) appended.
fn start(dir: &Path, port: u16, notify: &str, moto: Option<&Moto>) -> KillOnDrop {
    write_file(dir, "api-token", &format!("{API_TOKEN}\n"));
    write_file(dir, "ingest-tokens", &format!("node-0 {INGEST_TOKEN}\n"));
    let cfg = write_file(
        dir,
        "aggregator.toml",
        &format!(
            r#"listen_addr = "127.0.0.1:{port}"
shutdown_grace_secs = 20
[ingest]
source = "http"
log_dir = "{dir}/ingest-log"
[ingest.auth]
token_file = "{dir}/ingest-tokens"
[batch]
max_records = 500
flush_interval_ms = 200
[lake]
location = "{dir}/lake"
[incidents]
group_wait_secs = 1
group_interval_secs = 1
resolve_timeout_secs = 600
api_token_file = "{dir}/api-token"
[incidents.store]
dir = "{dir}/incidents"
{notify}"#,
            dir = dir.display()
        ),
    );
    let mut cmd = selfheal();
    if let Some(m) = moto {
        aws_env(&mut cmd).env("AWS_ENDPOINT_URL", m.endpoint());
    }
    cmd.args(["aggregator", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let child = KillOnDrop(cmd.spawn().expect("start aggregator"));
    let start = Instant::now();
    while http_get(port, "/healthz").is_none_or(|(s, _)| s != 200) {
        assert!(start.elapsed() < Duration::from_secs(30), "no /healthz");
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

/// 5 pods of shop/checkout on node-0, 10 anomalies each.
fn storm(rt: &tokio::runtime::Runtime, port: u16, id_base: u128) {
    let t0 = now_ms() - 10_000;
    let frames: Vec<Vec<u8>> = (0..50)
        .map(|i| {
            let e =
                checkout_cpu_anomaly(id_base + i, t0 + i as i64 * 100, 0, (i % 5) as usize, 0.9);
            encode_wire(&e).expect("encode")
        })
        .collect();
    let body = selfheal_core::batch::encode_batch(frames.iter().map(Vec::as_slice)).expect("frame");
    let status = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/v1/ingest"))
            .bearer_auth(INGEST_TOKEN)
            .header(
                reqwest::header::CONTENT_TYPE,
                selfheal_core::batch::CONTENT_TYPE,
            )
            .body(body)
            .send()
            .await
            .expect("ingest answers")
            .status()
            .as_u16()
    });
    assert_eq!(status, 200);
}

fn metric(port: u16, name: &str) -> f64 {
    let (_, body) = http_get(port, "/metrics").expect("/metrics");
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Waits until `name` reads `want` on `/metrics`: a counter is bumped when the channel has the
/// answer, which may be after the receiver already recorded the message.
fn wait_metric(port: u16, name: &str, want: f64) {
    let start = Instant::now();
    loop {
        let got = metric(port, name);
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{name} is {got}, not {want}, after 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(mut child: KillOnDrop) {
    signal(child.0.id(), "TERM");
    let start = Instant::now();
    loop {
        if let Some(st) = child.0.try_wait().expect("wait") {
            assert!(st.success(), "aggregator exited with {st}");
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn moment(b: &Value) -> &str {
    b["selfheal"]["moment"].as_str().unwrap_or("")
}

#[test]
fn a_storm_notifies_the_webhook_after_its_failures_and_a_resolve_notifies_resolved() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    let recv = Receiver::default();
    // The receiver is down for its first three requests (503), then recovers.
    recv.fail_first.store(3, Ordering::SeqCst);
    let hook_port = recv.serve(&rt);
    let token_file: PathBuf = write_file(dir.path(), "hook-token", &format!("{HOOK_TOKEN}\n"));
    let port = free_port();
    let agg = start(
        dir.path(),
        port,
        &format!(
            r#"[notify]
external_url = "http://127.0.0.1:{port}"
retry_initial_ms = 100
retry_max_ms = 400
max_attempts = 10
[[notify.webhook]]
name = "oncall"
url = "http://127.0.0.1:{hook_port}/hook"
bearer_token_file = "{tok}"
timeout_secs = 2
"#,
            tok = token_file.display()
        ),
        None,
    );
    storm(&rt, port, 1 << 64);
    let got = recv.wait_for("opened delivered", |b| {
        b.iter().any(|b| moment(b) == "opened")
    });
    let opened = got.iter().find(|b| moment(b) == "opened").expect("opened");
    assert!(
        recv.requests.load(Ordering::SeqCst) >= 4,
        "three failures, then the delivery"
    );
    assert_eq!(opened["status"], "firing");
    assert_eq!(opened["version"], "4");
    assert_eq!(opened["receiver"], "oncall");
    let alert = &opened["alerts"][0];
    assert_eq!(alert["labels"]["namespace"], "shop");
    assert_eq!(alert["labels"]["alertname"], "SelfhealIncident");
    assert_eq!(opened["selfheal"]["pods"], 5);
    let id = opened["selfheal"]["incident"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(
        alert["generatorURL"],
        format!("http://127.0.0.1:{port}/incidents/{id}")
    );
    assert_eq!(
        recv.got.lock().expect("lock")[0].0.as_deref(),
        Some(format!("Bearer {HOOK_TOKEN}").as_str())
    );
    wait_metric(
        port,
        "selfheal_aggregator_notify_attempts_total{channel=\"oncall\",outcome=\"retryable\"}",
        3.0,
    );
    // A person resolves it: the resolved message follows.
    let mut cli = selfheal();
    cli.args(["incidents", "resolve", &id, "--by", "ana"])
        .args(["--url", &format!("http://127.0.0.1:{port}")])
        .arg("--token-file")
        .arg(dir.path().join("api-token"));
    stdout_of(&mut cli);
    let got = recv.wait_for("resolved delivered", |b| {
        b.iter().any(|b| moment(b) == "resolved")
    });
    let resolved = got
        .iter()
        .find(|b| moment(b) == "resolved")
        .expect("resolved");
    assert_eq!(resolved["status"], "resolved");
    assert_eq!(resolved["alerts"][0]["status"], "resolved");
    assert_ne!(resolved["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(resolved["selfheal"]["incident"], id.as_str());
    // Resolved comes after every firing message of the incident.
    let last = got.last().expect("some");
    assert_eq!(moment(last), "resolved");
    wait_metric(
        port,
        "selfheal_aggregator_notify_messages_total{channel=\"oncall\",outcome=\"delivered\"}",
        got.len() as f64,
    );
    assert_eq!(
        metric(
            port,
            "selfheal_aggregator_notify_messages_total{channel=\"oncall\",outcome=\"dropped\"}"
        ),
        0.0
    );
    stop(agg);
}

#[test]
fn an_sns_topic_on_moto_gets_the_message() {
    let rt = runtime();
    let moto = Moto::start();
    let dir = tempfile::tempdir().expect("dir");
    let recv = Receiver::default();
    let sub_port = recv.serve(&rt);
    let sns = {
        use aws_sdk_sns::config::{BehaviorVersion, Credentials, Region};
        let conf = aws_sdk_sns::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(moto.endpoint())
            .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
            .build();
        aws_sdk_sns::Client::from_conf(conf)
    };
    let arn = rt
        .block_on(sns.create_topic().name("selfheal").send())
        .expect("create topic")
        .topic_arn
        .expect("arn");
    // moto delivers what is published to an HTTP subscriber itself: the receiver sees exactly
    // what SNS accepted.
    rt.block_on(
        sns.subscribe()
            .topic_arn(&arn)
            .protocol("http")
            .endpoint(format!("http://127.0.0.1:{sub_port}/sns"))
            .send(),
    )
    .expect("subscribe");
    let port = free_port();
    let agg = start(
        dir.path(),
        port,
        &format!(
            r#"[notify]
retry_initial_ms = 100
retry_max_ms = 400
[[notify.sns]]
name = "seed"
topic_arn = "{arn}"
region = "us-east-1"
"#
        ),
        Some(&moto),
    );
    storm(&rt, port, 2 << 64);
    let got = recv.wait_for("SNS notification", |b| {
        b.iter().any(|n| n["Type"] == "Notification")
    });
    let n = got
        .iter()
        .find(|n| n["Type"] == "Notification")
        .expect("one");
    assert_eq!(n["TopicArn"], arn.as_str());
    let subject = n["Subject"].as_str().expect("subject");
    assert!(subject.starts_with("[FIRING:"), "{subject}");
    let body: Value = serde_json::from_str(n["Message"].as_str().expect("message")).expect("JSON");
    assert_eq!(body["receiver"], "seed");
    assert_eq!(body["selfheal"]["moment"], "opened");
    assert_eq!(
        body["alerts"][0]["labels"]["workload"],
        "Deployment/checkout"
    );
    // moto delivers to the subscriber before it answers the publish.
    wait_metric(
        port,
        "selfheal_aggregator_notify_messages_total{channel=\"seed\",outcome=\"delivered\"}",
        1.0,
    );
    stop(agg);
}
