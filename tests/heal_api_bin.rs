//! The real `selfheal heal-api` binary on the Kubernetes API double (its `[kube]` section names
//! the double, with a bearer-token file): a signed scale request is applied once on the double
//! and `kubectl` sees it; a replayed nonce, a stale timestamp, a bad signature, a namespace not
//! allowed and an oversized body are each refused with their counter and audit line, and the
//! double receives nothing for them; SIGTERM drains and exits 0 with the audit log complete.
//! Then the whole chain through the real binaries: an aggregator with `heal.executor =
//! "heal-api"` heals a CPU storm through the signed API, exactly one write on the double.

use crate::heal_api::{K1, K2, certificates, key};
use crate::support::kube_double::{KubeDouble, deployments};
use crate::support::{KillOnDrop, free_port, selfheal, signal, write_file};
use selfheal_core::action::Executor;
use selfheal_core::action::{
    Action, ActionRequest, ObjectVersion, REQUEST_ID_ANNOTATION, Target, WorkloadKind,
};
use selfheal_heal_api::audit::AuditRecord;
use selfheal_heal_api::client::{RemoteExecutor, RemoteSettings};
use selfheal_heal_api::keys::Keyring;
use selfheal_heal_api::server::ACTIONS_PATH;
use selfheal_heal_api::sign::{self, Key};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const KUBE_TOKEN: &str = "heal-api-sa-token-0123456789";

fn checkout() -> Target {
    Target {
        namespace: "shop".into(),
        kind: WorkloadKind::Deployment,
        name: "checkout".into(),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A `selfheal heal-api` process and where it keeps things.
struct HealApi {
    child: KillOnDrop,
    port: u16,
    dir: PathBuf,
}

impl HealApi {
    /// Writes certificates, the key file, the kube token and the config into `dir`, starts the
    /// binary on a free port and waits for `/healthz`. `extra` is appended at the top level.
    fn start(dir: &Path, double: &KubeDouble, extra: &str) -> HealApi {
        certificates(dir);
        write_file(dir, "keys", &format!("k1 {K1}\n"));
        let token = write_file(dir, "kube-token", KUBE_TOKEN);
        let port = free_port();
        let cfg = write_file(
            dir,
            "heal-api.toml",
            &format!(
                r#"listen_addr = "127.0.0.1:{port}"
audit_log = "{d}/audit.jsonl"
max_body_bytes = 4096
shutdown_grace_secs = 10
{extra}
[tls]
cert_file = "{d}/server.crt"
key_file = "{d}/server.key"
[keys]
file = "{d}/keys"
[allow]
namespaces = ["shop"]
actions = ["scale"]
[bounds]
min_replicas = 1
max_replicas = 20
max_step = 5
[kube]
timeout_secs = 5
[kube.connection]
source = "url"
url = "{url}"
token_file = "{tok}"
"#,
                d = dir.display(),
                url = double.url(),
                tok = token.display(),
            ),
        );
        let mut cmd = selfheal();
        cmd.args(["heal-api", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = KillOnDrop(cmd.spawn().expect("start selfheal heal-api"));
        let api = HealApi {
            child,
            port,
            dir: dir.to_owned(),
        };
        let http = api.http();
        let start = Instant::now();
        loop {
            let ok = blocking(async {
                http.get(api.url("/healthz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            });
            if ok {
                return api;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "heal-api /healthz not 200 within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A client trusting only the test CA.
    fn http(&self) -> reqwest::Client {
        let pem = std::fs::read(self.ca()).expect("ca");
        reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).expect("pem"))
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client")
    }

    fn audit(&self) -> Vec<AuditRecord> {
        std::fs::read_to_string(self.dir.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    fn metrics(&self) -> String {
        let http = self.http();
        blocking(async {
            http.get(self.url("/metrics"))
                .send()
                .await
                .expect("/metrics answers")
                .text()
                .await
                .expect("/metrics text")
        })
    }

    /// `selfheal_heal_api_requests_total{decision,reason}`, 0 when absent.
    fn requests(&self, decision: &str, reason: &str) -> f64 {
        let name = format!(
            "selfheal_heal_api_requests_total{{decision=\"{decision}\",reason=\"{reason}\"}} "
        );
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(&name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// SIGTERM, then a clean exit within 30 s.
    fn stop(mut self) {
        signal(self.child.0.id(), "TERM");
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.0.try_wait().expect("wait") {
                assert!(st.success(), "heal-api exited with {st}");
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "heal-api did not exit within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs `f` on a fresh current-thread runtime (the tests drive the binary from plain threads).
fn blocking<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// One request exactly as it went on the wire, so it can be replayed byte for byte.
struct Sent {
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

fn signed(k: &Key, body: Vec<u8>, ts: i64, nonce: &str) -> Sent {
    let s = sign::sign(k, "POST", ACTIONS_PATH, ts, nonce, &body);
    let headers = s
        .headers()
        .iter()
        .map(|(n, v)| (*n, (*v).to_owned()))
        .collect();
    Sent { body, headers }
}

fn send(api: &HealApi, sent: &Sent) -> (u16, serde_json::Value) {
    let http = api.http();
    blocking(async {
        let mut req = http.post(api.url(ACTIONS_PATH)).body(sent.body.clone());
        for (n, v) in &sent.headers {
            req = req.header(*n, v);
        }
        let resp = req.send().await.expect("heal-api answers");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or_default())
    })
}

fn scale(version: &ObjectVersion, request_id: &str, ns: &str, to: i32) -> Vec<u8> {
    let mut target = checkout();
    target.namespace = ns.into();
    serde_json::to_vec(&ActionRequest {
        request_id: request_id.into(),
        target,
        expect: version.clone(),
        action: Action::Scale { from: 3, to },
    })
    .expect("json")
}

fn scale_writes(double: &KubeDouble) -> usize {
    double
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
        .count()
}

#[test]
fn the_binary_applies_a_signed_scale_once_on_the_double_and_refuses_each_forgery_before_it() {
    let double = KubeDouble::start();
    double.store().require_token(Some(KUBE_TOKEN));
    double
        .store()
        .add_deployment_with_pods("shop", "checkout", 3);
    let dir = tempfile::tempdir().expect("dir");
    let api = HealApi::start(dir.path(), &double, "");
    // What the aggregator's client would see (a signed observe, through the binary).
    let remote = RemoteExecutor::new(
        RemoteSettings {
            base_url: api.url(""),
            ca_file: Some(api.ca()),
            timeout: Duration::from_secs(5),
            max_attempts: 1,
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_millis(50),
        },
        Keyring::new(vec![key("k1", K1)]),
    )
    .expect("client");
    let seen = blocking(remote.observe(&checkout())).expect("observe through the heal API");
    assert_eq!(seen.replicas, 3);
    // The signed scale: applied once.
    let k1 = key("k1", K1);
    let good = signed(
        &k1,
        scale(&seen.version, "inc-42/1", "shop", 5),
        now(),
        "bin-nonce-0000000001",
    );
    let (status, answer) = send(&api, &good);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["already_applied"], false, "{answer}");
    assert_eq!(scale_writes(&double), 1);
    let stored = double
        .store()
        .get(&deployments(), "shop", "checkout")
        .expect("checkout");
    assert_eq!(stored["spec"]["replicas"], 5);
    assert_eq!(
        stored["metadata"]["annotations"][REQUEST_ID_ANNOTATION],
        "inc-42/1"
    );
    // The binary authenticated to the API server with its token file.
    assert!(
        double.store().tokens_seen().iter().any(|t| t == KUBE_TOKEN),
        "{:?}",
        double.store().tokens_seen()
    );
    // kubectl (its own token) while the double takes any token.
    double.store().require_token(None);
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
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5");
    double.store().require_token(Some(KUBE_TOKEN));
    // From here on, nothing may reach the double.
    let writes = double.store().writes().len();
    let requests = double.store().requests().len();
    let fresh = scale(&seen.version, "inc-42/2", "shop", 4);
    let cases: Vec<(&str, Sent, u16, &str)> = vec![
        (
            "the same request replayed (same nonce)",
            Sent {
                body: good.body.clone(),
                headers: good.headers.clone(),
            },
            401,
            "replayed_nonce",
        ),
        (
            "a timestamp 61 s old",
            signed(&k1, fresh.clone(), now() - 61, "bin-nonce-0000000002"),
            401,
            "stale_timestamp",
        ),
        (
            "a signature by another secret under k1",
            signed(&key("k1", K2), fresh.clone(), now(), "bin-nonce-0000000003"),
            401,
            "bad_signature",
        ),
        (
            "a namespace not allowed",
            signed(
                &k1,
                scale(&seen.version, "inc-42/3", "kube-system", 4),
                now(),
                "bin-nonce-0000000004",
            ),
            403,
            "namespace_not_allowed",
        ),
        (
            "a body over max_body_bytes",
            signed(&k1, vec![b' '; 8192], now(), "bin-nonce-0000000005"),
            413,
            "body_too_large",
        ),
    ];
    for (what, sent, want, reason) in cases {
        let before = api.requests("refused", reason);
        let (status, answer) = send(&api, &sent);
        assert_eq!(status, want, "{what}: {answer}");
        assert_eq!(answer["error"], reason, "{what}: {answer}");
        assert_eq!(
            api.requests("refused", reason),
            before + 1.0,
            "{what}: counted"
        );
        let last = api.audit().pop().expect("an audit line");
        assert_eq!(
            (last.decision.as_str(), last.status, last.reason.as_str()),
            ("refused", want, reason),
            "{what}: audited"
        );
        assert_eq!(double.store().writes().len(), writes, "{what} wrote");
        assert_eq!(
            double.store().requests().len(),
            requests,
            "{what} reached the API server"
        );
    }
    assert_eq!(api.requests("accepted", "applied"), 1.0);
    assert_eq!(scale_writes(&double), 1);
    // A clean stop: every answered request is in the audit log.
    api.stop();
    let audit: Vec<AuditRecord> = std::fs::read_to_string(dir.path().join("audit.jsonl"))
        .expect("audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let reasons: Vec<&str> = audit.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "observed",
            "applied",
            "replayed_nonce",
            "stale_timestamp",
            "bad_signature",
            "namespace_not_allowed",
            "body_too_large"
        ]
    );
    assert_eq!(audit[1].request_id.as_deref(), Some("inc-42/1"));
    assert_eq!(audit[1].key_id.as_deref(), Some("k1"));
}

#[test]
fn an_aggregator_heals_through_the_signed_heal_api_with_exactly_one_write() {
    use crate::heal::{FAST_VERIFY, events, of, start, workload_storm};
    use crate::incidents::{now_ms, put, runtime};
    use crate::support::moto::{Moto, create_stream, kinesis_client};
    use selfheal_core::Family;
    use selfheal_core::incident::{EventKind, State};
    let rt = runtime();
    let moto = Moto::start();
    let kinesis = kinesis_client(&moto.endpoint());
    rt.block_on(create_stream(&kinesis, "records", 1));
    let double = KubeDouble::start();
    double.store().require_token(Some(KUBE_TOKEN));
    double
        .store()
        .add_deployment_with_pods("shop", "checkout", 3);
    let api_dir = tempfile::tempdir().expect("dir");
    // The controller observes on every pass: a rate that a test's passes do not hit.
    let api = HealApi::start(
        api_dir.path(),
        &double,
        "rate_per_sec = 200\nrate_burst = 400",
    );
    let dir = tempfile::tempdir().expect("dir");
    let heal = format!(
        "executor = \"heal-api\"\n[heal.heal_api]\nurl = \"{}\"\nca_file = \"{}\"\ntimeout_secs = 5\n[heal.heal_api.keys]\nfile = \"{}\"\n",
        api.url(""),
        api.ca().display(),
        api_dir.path().join("keys").display(),
    );
    let policy = format!("dry_run = false\n{FAST_VERIFY}");
    let agg = start(dir.path(), &moto, free_port(), &policy, &heal);
    rt.block_on(put(
        &kinesis,
        "records",
        &workload_storm(9 << 64, now_ms() - 2_000, Family::Cpu, "shop", "checkout"),
    ));
    agg.wait("the incident verifying", Duration::from_secs(60), |a| {
        of(a, "Deployment/checkout")
            .first()
            .is_some_and(|i| i.state == State::Verifying)
    });
    let inc = of(&agg, "Deployment/checkout").remove(0);
    let evs = events(&agg, &inc);
    let to = evs
        .iter()
        .find_map(|e| match e {
            EventKind::ActionIntent {
                dry_run: false,
                request,
                ..
            } => match request.action {
                Action::Scale { from: 3, to } => Some(to),
                _ => None,
            },
            _ => None,
        })
        .unwrap_or_else(|| panic!("a real scale from 3 on the timeline: {evs:?}"));
    let request_id = format!("{}/1", inc.id);
    assert_eq!(scale_writes(&double), 1, "{:?}", double.store().writes());
    let stored = double
        .store()
        .get(&deployments(), "shop", "checkout")
        .expect("checkout");
    assert_eq!(stored["spec"]["replicas"], to);
    assert_eq!(
        stored["metadata"]["annotations"][REQUEST_ID_ANNOTATION],
        request_id.as_str()
    );
    // The heal API signed off exactly one action, the incident's first step, by key k1.
    let applied: Vec<AuditRecord> = api
        .audit()
        .into_iter()
        .filter(|r| r.action.as_deref() == Some("scale"))
        .collect();
    assert_eq!(applied.len(), 1, "{applied:?}");
    assert_eq!(applied[0].reason, "applied");
    assert_eq!(applied[0].request_id.as_deref(), Some(request_id.as_str()));
    assert_eq!(applied[0].key_id.as_deref(), Some("k1"));
    assert!(
        api.audit().iter().all(|r| r.decision == "accepted"),
        "no refusal on the way: {:?}",
        api.audit()
    );
    agg.stop();
    api.stop();
    assert_eq!(scale_writes(&double), 1);
}

/// The aggregator's start with `[heal]` = `heal` (policy defaults): its exit status and stderr.
fn aggregator_start_error(heal: &str) -> String {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = crate::incidents::config(dir.path(), free_port(), "records");
    write_file(
        dir.path(),
        "api-token",
        "heal-api-bin-test-api-token-0123456789abcdef\n",
    );
    let mut text = std::fs::read_to_string(&cfg).expect("config");
    text.push_str(&format!("[heal]\nenabled = true\n{heal}"));
    std::fs::write(&cfg, text).expect("write");
    let out = selfheal()
        .args(["aggregator", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(!out.status.success(), "started with {heal}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_heal_api_section_stops_the_aggregator_naming_the_field() {
    let err = aggregator_start_error("executor = \"heal-api\"\n");
    assert!(err.contains("heal.heal_api.url"), "{err}");
    let err = aggregator_start_error(
        "executor = \"heal-api\"\n[heal.heal_api]\nurl = \"http://127.0.0.1:8443\"\n[heal.heal_api.keys]\nfile = \"/k\"\n",
    );
    assert!(
        err.contains("heal.heal_api.url") && err.contains("https"),
        "{err}"
    );
    let err = aggregator_start_error(
        "executor = \"heal-api\"\n[heal.heal_api]\nurl = \"https://127.0.0.1:8443\"\n",
    );
    assert!(err.contains("heal.heal_api.keys"), "{err}");
    let err = aggregator_start_error(
        "executor = \"heal-api\"\n[heal.heal_api]\nurl = \"https://127.0.0.1:8443\"\nca_file = \"/nonexistent/ca.crt\"\n[heal.heal_api.keys]\nfile = \"/k\"\n",
    );
    assert!(err.contains("heal.heal_api.ca_file"), "{err}");
    // Valid, but the key file is missing: the start fails rather than every action later.
    let err = aggregator_start_error(
        "executor = \"heal-api\"\n[heal.heal_api]\nurl = \"https://127.0.0.1:8443\"\n[heal.heal_api.keys]\nfile = \"/nonexistent/keys\"\n",
    );
    assert!(err.contains("heal.heal_api.keys"), "{err}");
    let err = aggregator_start_error("[heal.heal_api]\nurll = \"https://x\"\n");
    assert!(err.contains("urll"), "unknown field named: {err}");
}
