//! The signed heal API over real TLS on loopback, with a recording executor double behind it
//! (the server is generic over the executor; the kube executor on the Kubernetes API double
//! replaces the double when it lands): every refusal of issue 14's list answers its status,
//! writes its reason to the audit log and reaches no executor; key rotation through the key
//! file and through Secrets Manager on moto; a signed scale request scales, through the remote
//! executor (the aggregator's client), and its replay after a restart is refused by the
//! object's version.

use crate::support::moto::Moto;
use crate::support::tls;
use selfheal_core::action::{
    Action, ActionError, ActionErrorKind, ActionOutcome, ActionRequest, Executor, ObjectVersion,
    Target, WorkloadKind, WorkloadState,
};
use selfheal_heal_api::audit::AuditRecord;
use selfheal_heal_api::client::{RemoteExecutor, RemoteSettings};
use selfheal_heal_api::config::HealApiConfig;
use selfheal_heal_api::keys::Keyring;
use selfheal_heal_api::server::{self, ACTIONS_PATH};
use selfheal_heal_api::sign::{self, Key};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(crate) const K1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
pub(crate) const K2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

pub(crate) fn key(id: &str, hex_secret: &str) -> Key {
    Key::new(id, hex::decode(hex_secret).expect("hex")).expect("key")
}

/// One Deployment, shop/checkout, with resourceVersion semantics, and the log of every write.
#[derive(Debug, Clone)]
struct Recording {
    state: Arc<Mutex<(WorkloadState, u64)>>,
    writes: Arc<Mutex<Vec<ActionRequest>>>,
}

fn target() -> Target {
    Target {
        namespace: "shop".into(),
        kind: WorkloadKind::Deployment,
        name: "checkout".into(),
    }
}

impl Recording {
    fn new() -> Recording {
        let v = ObjectVersion {
            uid: "uid-checkout".into(),
            resource_version: "100".into(),
        };
        let s = WorkloadState {
            target: target(),
            version: v,
            generation: 1,
            observed_generation: 1,
            replicas: 3,
            ready_replicas: 3,
            updated_replicas: 3,
            available_replicas: 3,
            rolling_out: false,
            hpa: None,
            last_request_id: None,
        };
        Recording {
            state: Arc::new(Mutex::new((s, 100))),
            writes: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn writes(&self) -> usize {
        self.writes.lock().expect("lock").len()
    }

    fn version(&self) -> ObjectVersion {
        self.state.lock().expect("lock").0.version.clone()
    }
}

impl Executor for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }

    async fn observe(&self, t: &Target) -> Result<WorkloadState, ActionError> {
        let s = self.state.lock().expect("lock");
        if *t != s.0.target {
            return Err(ActionError::new(
                ActionErrorKind::NotFound,
                "no such workload",
            ));
        }
        Ok(s.0.clone())
    }

    async fn apply(&self, req: &ActionRequest) -> Result<ActionOutcome, ActionError> {
        let mut s = self.state.lock().expect("lock");
        if req.target != s.0.target {
            return Err(ActionError::new(
                ActionErrorKind::NotFound,
                "no such workload",
            ));
        }
        if s.0.last_request_id.as_deref() == Some(req.request_id.as_str()) {
            return Ok(ActionOutcome {
                already_applied: true,
                dry_run: false,
                version_after: Some(s.0.version.clone()),
                detail: "already applied".into(),
            });
        }
        if req.expect != s.0.version {
            return Err(ActionError::new(
                ActionErrorKind::Conflict,
                format!("object is at {:?}", s.0.version),
            ));
        }
        let Action::Scale { to, .. } = req.action else {
            return Err(ActionError::new(
                ActionErrorKind::Invalid,
                "the double only scales",
            ));
        };
        s.1 += 1;
        s.0.replicas = to;
        s.0.version.resource_version = s.1.to_string();
        s.0.last_request_id = Some(req.request_id.clone());
        self.writes.lock().expect("lock").push(req.clone());
        Ok(ActionOutcome {
            already_applied: false,
            dry_run: false,
            version_after: Some(s.0.version.clone()),
            detail: format!("scaled to {to}"),
        })
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
pub(crate) fn certificates(dir: &Path) {
    tls::certificates(dir, &[tls::SERVER]);
}

struct Server {
    dir: PathBuf,
    addr: std::net::SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    running: Option<server::Running>,
}

fn settings(dir: &Path, keys: &str, extra: &str) -> selfheal_heal_api::config::Settings {
    let toml = format!(
        r#"listen_addr = "127.0.0.1:0"
audit_log = "{d}/audit.jsonl"
max_body_bytes = 4096
{extra}
[tls]
cert_file = "{d}/server.crt"
key_file = "{d}/server.key"
[keys]
{keys}
reload_secs = 0.1
[allow]
namespaces = ["shop"]
actions = ["scale"]
[bounds]
min_replicas = 1
max_replicas = 10
max_step = 3
"#,
        d = dir.display()
    );
    let f = dir.join("heal-api.toml");
    std::fs::write(&f, toml).expect("write config");
    HealApiConfig::load(Some(&f))
        .expect("load")
        .validate()
        .expect("valid")
}

impl Server {
    async fn start(dir: &Path, keys: &str, extra: &str, exec: Recording) -> Server {
        let s = settings(dir, keys, extra);
        let (stop, rx) = tokio::sync::watch::channel(false);
        let running = server::start(&s, exec, rx).await.expect("server starts");
        Server {
            dir: dir.to_owned(),
            addr: running.addr,
            stop,
            running: Some(running),
        }
    }

    async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(r) = self.running.take() {
            r.server.await.expect("server ends");
            r.keys.await.expect("key task ends");
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    fn audit(&self) -> Vec<AuditRecord> {
        std::fs::read_to_string(self.dir.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }
}

fn client(dir: &Path) -> reqwest::Client {
    let pem = std::fs::read(dir.join("ca.crt")).expect("ca");
    reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).expect("pem"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

fn scale_to(to: i32, version: ObjectVersion, id: &str) -> ActionRequest {
    ActionRequest {
        request_id: id.into(),
        target: target(),
        expect: version,
        action: Action::Scale { from: 3, to },
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// POSTs `body` to `path` with headers signed over (`sign_path`, `sign_body`, `ts`).
#[allow(clippy::too_many_arguments)]
async fn post(
    http: &reqwest::Client,
    srv: &Server,
    k: Option<&Key>,
    path: &str,
    sign_path: &str,
    body: &[u8],
    sign_body: &[u8],
    ts: i64,
    nonce: &str,
) -> (u16, serde_json::Value) {
    let mut req = http.post(srv.url(path)).body(body.to_vec());
    if let Some(k) = k {
        let s = sign::sign(k, "POST", sign_path, ts, nonce, sign_body);
        for (n, v) in s.headers() {
            req = req.header(n, v);
        }
    }
    let resp = req.send().await.expect("server answers");
    let status = resp.status().as_u16();
    let v = resp.json().await.unwrap_or_default();
    (status, v)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn every_refusal_answers_its_status_is_audited_and_reaches_no_executor() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    certificates(d);
    std::fs::write(d.join("keys"), format!("k1 {K1}\n")).expect("keys");
    let exec = Recording::new();
    rt.block_on(async {
        let srv = Server::start(
            d,
            &format!("file = \"{}/keys\"", d.display()),
            "",
            exec.clone(),
        )
        .await;
        let http = client(d);
        let k1 = key("k1", K1);
        let good = serde_json::to_vec(&scale_to(5, exec.version(), "inc-1/1")).expect("json");
        let mut n = 0u32;
        let mut nonce = || {
            n += 1;
            format!("nonce-{n:016}")
        };
        let wrong = key("k1", K2);
        let unknown = key("k9", K1);
        let mut tampered = good.clone();
        let at = tampered.iter().position(|b| *b == b'5').expect("a 5");
        tampered[at] = b'9';
        let replay_nonce = nonce();
        let (s, _) = post(
            &http,
            &srv,
            Some(&k1),
            ACTIONS_PATH,
            ACTIONS_PATH,
            b"{}",
            b"{}",
            now(),
            &replay_nonce,
        )
        .await;
        assert_eq!(s, 400, "signed but not an action: malformed JSON");
        let ns_body = {
            let mut r = scale_to(5, exec.version(), "inc-1/2");
            r.target.namespace = "kube-system".into();
            serde_json::to_vec(&r).expect("json")
        };
        let action_body = {
            let mut r = scale_to(5, exec.version(), "inc-1/3");
            r.action = Action::RolloutRestart {
                restarted_at: "2026-12-01T15:00:00Z".into(),
            };
            serde_json::to_vec(&r).expect("json")
        };
        let big_scale = serde_json::to_vec(&scale_to(10, exec.version(), "inc-1/4")).expect("json");
        let over_max = serde_json::to_vec(&scale_to(11, exec.version(), "inc-1/5")).expect("json");
        let stale = serde_json::to_vec(&scale_to(
            5,
            ObjectVersion {
                uid: "uid-checkout".into(),
                resource_version: "99".into(),
            },
            "inc-1/6",
        ))
        .expect("json");
        let oversized = vec![b' '; 8192];
        type Case<'a> = (
            &'a str,
            Option<&'a Key>,
            &'a str,
            &'a [u8],
            &'a [u8],
            i64,
            u16,
            &'a str,
        );
        let cases: Vec<Case> = vec![
            (
                "unsigned",
                None,
                ACTIONS_PATH,
                &good,
                &good,
                now(),
                401,
                "unsigned",
            ),
            (
                "wrong key",
                Some(&wrong),
                ACTIONS_PATH,
                &good,
                &good,
                now(),
                401,
                "bad_signature",
            ),
            (
                "unknown key id",
                Some(&unknown),
                ACTIONS_PATH,
                &good,
                &good,
                now(),
                401,
                "unknown_key",
            ),
            (
                "tampered body",
                Some(&k1),
                ACTIONS_PATH,
                &tampered,
                &good,
                now(),
                401,
                "bad_signature",
            ),
            (
                "tampered path",
                Some(&k1),
                "/v1/observe",
                &good,
                &good,
                now(),
                401,
                "bad_signature",
            ),
            (
                "stale timestamp",
                Some(&k1),
                ACTIONS_PATH,
                &good,
                &good,
                now() - 61,
                401,
                "stale_timestamp",
            ),
            (
                "future timestamp",
                Some(&k1),
                ACTIONS_PATH,
                &good,
                &good,
                now() + 61,
                401,
                "future_timestamp",
            ),
            (
                "disallowed namespace",
                Some(&k1),
                ACTIONS_PATH,
                &ns_body,
                &ns_body,
                now(),
                403,
                "namespace_not_allowed",
            ),
            (
                "disallowed action",
                Some(&k1),
                ACTIONS_PATH,
                &action_body,
                &action_body,
                now(),
                403,
                "action_not_allowed",
            ),
            (
                "a step over max_step",
                Some(&k1),
                ACTIONS_PATH,
                &big_scale,
                &big_scale,
                now(),
                422,
                "out_of_bounds",
            ),
            (
                "over max_replicas",
                Some(&k1),
                ACTIONS_PATH,
                &over_max,
                &over_max,
                now(),
                422,
                "out_of_bounds",
            ),
            (
                "stale resourceVersion",
                Some(&k1),
                ACTIONS_PATH,
                &stale,
                &stale,
                now(),
                409,
                "conflict",
            ),
            (
                "oversized body",
                Some(&k1),
                ACTIONS_PATH,
                &oversized,
                &oversized,
                now(),
                413,
                "body_too_large",
            ),
            (
                "malformed JSON",
                Some(&k1),
                ACTIONS_PATH,
                b"{\"request_id\":",
                b"{\"request_id\":",
                now(),
                400,
                "malformed_json",
            ),
        ];
        for (what, k, path, body, signed_body, ts, want, reason) in cases {
            let (status, answer) = post(
                &http,
                &srv,
                k,
                path,
                ACTIONS_PATH,
                body,
                signed_body,
                ts,
                &nonce(),
            )
            .await;
            assert_eq!(status, want, "{what}: {answer}");
            assert_eq!(answer["error"], reason, "{what}");
            let last = srv.audit().pop().expect("an audit line");
            assert_eq!(last.reason, reason, "{what}");
            assert_eq!(last.status, want, "{what}");
            assert_ne!(last.decision, "accepted", "{what}");
            assert_eq!(exec.writes(), 0, "{what} reached the executor");
        }
        // A replayed nonce: the first use was accepted by the signature check.
        let (s, a) = post(
            &http,
            &srv,
            Some(&k1),
            ACTIONS_PATH,
            ACTIONS_PATH,
            b"{}",
            b"{}",
            now(),
            &replay_nonce,
        )
        .await;
        assert_eq!((s, a["error"].as_str()), (401, Some("replayed_nonce")));
        assert_eq!(exec.writes(), 0);
        // The audit log names the key once it was verified, and the target once read.
        let audit = srv.audit();
        let ns = audit
            .iter()
            .find(|r| r.reason == "namespace_not_allowed")
            .expect("ns line");
        assert_eq!(ns.key_id.as_deref(), Some("k1"));
        assert_eq!(
            ns.target.as_deref(),
            Some("kube-system/Deployment/checkout")
        );
        assert_eq!(ns.action.as_deref(), Some("scale"));
        assert!(
            audit
                .iter()
                .find(|r| r.reason == "unsigned")
                .is_some_and(|r| r.key_id.is_none())
        );
        // The refusals are on /metrics.
        let metrics = http
            .get(srv.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        assert!(
            metrics.contains(
                "selfheal_heal_api_requests_total{decision=\"refused\",reason=\"bad_signature\"} 3"
            ),
            "{metrics}"
        );
        let health = http
            .get(srv.url("/healthz"))
            .send()
            .await
            .expect("healthz")
            .status();
        assert_eq!(health, 200);
        srv.shutdown().await;
    });
}

#[test]
fn a_signed_scale_request_scales_once_and_its_replay_after_a_restart_is_refused() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    certificates(d);
    std::fs::write(d.join("keys"), format!("k1 {K1}\n")).expect("keys");
    let exec = Recording::new();
    rt.block_on(async {
        let keys_line = format!("file = \"{}/keys\"", d.display());
        let srv = Server::start(d, &keys_line, "", exec.clone()).await;
        let remote = RemoteExecutor::new(
            RemoteSettings {
                base_url: srv.url(""),
                ca_file: Some(d.join("ca.crt")),
                timeout: Duration::from_secs(5),
                max_attempts: 3,
                retry_initial: Duration::from_millis(50),
                retry_max: Duration::from_millis(200),
            },
            Keyring::new(vec![key("k1", K1)]),
        )
        .expect("client");
        let seen = remote.observe(&target()).await.expect("observe");
        assert_eq!(seen.replicas, 3);
        let req = scale_to(5, seen.version.clone(), "inc-7/1");
        let out = remote.apply(&req).await.expect("scaled");
        assert!(!out.already_applied);
        assert_eq!(exec.writes(), 1);
        assert_eq!(
            remote.observe(&target()).await.expect("observe").replicas,
            5
        );
        // The client re-sending the same action (its answer lost): recognised, not re-applied.
        let again = remote.apply(&req).await.expect("recognised");
        assert!(again.already_applied);
        assert_eq!(exec.writes(), 1);
        let accepted = srv
            .audit()
            .into_iter()
            .find(|r| r.reason == "applied")
            .expect("audited");
        assert_eq!(accepted.request_id.as_deref(), Some("inc-7/1"));
        assert_eq!(accepted.decision, "accepted");
        // A conflict is returned as such, not retried.
        let stale = scale_to(4, seen.version.clone(), "inc-7/2");
        let e = remote.apply(&stale).await.expect_err("stale");
        assert_eq!(e.kind, ActionErrorKind::Conflict);
        // The exact signed request captured, replayed after a restart (the nonce cache is
        // gone): the object's version is its precondition, so it is refused.
        let body = serde_json::to_vec(&scale_to(6, seen.version.clone(), "inc-7/3")).expect("json");
        srv.shutdown().await;
        let srv = Server::start(d, &keys_line, "", exec.clone()).await;
        let http = client(d);
        let (s, a) = post(
            &http,
            &srv,
            Some(&key("k1", K1)),
            ACTIONS_PATH,
            ACTIONS_PATH,
            &body,
            &body,
            now(),
            "replay-after-restart-0001",
        )
        .await;
        assert_eq!((s, a["error"].as_str()), (409, Some("conflict")));
        assert_eq!(exec.writes(), 1);
        srv.shutdown().await;
    });
}

async fn metrics_text(http: &reqwest::Client, srv: &Server) -> String {
    http.get(srv.url("/metrics"))
        .send()
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("/metrics text")
}

/// Whether a signed observe with `k` is accepted.
async fn accepted(http: &reqwest::Client, srv: &Server, k: &Key, n: &str) -> (u16, String) {
    let body = serde_json::to_vec(&target()).expect("json");
    let (s, a) = post(
        http,
        srv,
        Some(k),
        "/v1/observe",
        "/v1/observe",
        &body,
        &body,
        now(),
        n,
    )
    .await;
    (s, a["error"].as_str().unwrap_or("").to_owned())
}

#[test]
fn keys_rotate_through_the_secret_file_without_a_restart() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    certificates(d);
    std::fs::write(d.join("keys"), format!("k1 {K1}\n")).expect("keys");
    let exec = Recording::new();
    let (k1, k2) = (key("k1", K1), key("k2", K2));
    rt.block_on(async {
        let srv = Server::start(d, &format!("file = \"{}/keys\"", d.display()), "", exec).await;
        let http = client(d);
        assert_eq!(
            accepted(&http, &srv, &k1, "rotation-nonce-0001").await.0,
            200
        );
        assert_eq!(
            accepted(&http, &srv, &k2, "rotation-nonce-0002").await,
            (401, "unknown_key".into())
        );
        // Rotation: the new key first, the old one still valid.
        std::fs::write(d.join("keys"), format!("k2 {K2}\nk1 {K1}\n")).expect("keys");
        let mut i = 10;
        loop {
            i += 1;
            if accepted(&http, &srv, &k2, &format!("rotation-nonce-{i:04}"))
                .await
                .0
                == 200
            {
                break;
            }
            assert!(i < 300, "k2 not accepted after the file changed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            accepted(&http, &srv, &k1, "rotation-nonce-0003").await.0,
            200
        );
        // A broken file keeps the keys in use.
        std::fs::write(d.join("keys"), "k3 not-hex\n").expect("keys");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !metrics_text(&http, &srv)
            .await
            .contains("selfheal_heal_api_key_reloads_total{outcome=\"error\"}")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the broken key file was not reloaded within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            accepted(&http, &srv, &k2, "rotation-nonce-0004").await.0,
            200
        );
        // The rotation ends: the old key is refused.
        std::fs::write(d.join("keys"), format!("k2 {K2}\n")).expect("keys");
        let mut i = 500;
        loop {
            i += 1;
            let (s, why) = accepted(&http, &srv, &k1, &format!("rotation-nonce-{i:04}")).await;
            if s == 401 {
                assert_eq!(why, "unknown_key");
                break;
            }
            assert!(i < 800, "k1 still accepted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            accepted(&http, &srv, &k2, "rotation-nonce-0005").await.0,
            200
        );
        let metrics = metrics_text(&http, &srv).await;
        assert!(
            metrics.contains("selfheal_heal_api_key_reloads_total{outcome=\"error\"}"),
            "{metrics}"
        );
        srv.shutdown().await;
    });
}

#[test]
fn keys_come_from_secrets_manager_on_moto_and_rotate_there() {
    let rt = runtime();
    let moto = Moto::start();
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    certificates(d);
    let sm = {
        use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
        let conf = aws_sdk_secretsmanager::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(moto.endpoint())
            .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
            .build();
        aws_sdk_secretsmanager::Client::from_conf(conf)
    };
    rt.block_on(async {
        sm.create_secret()
            .name("selfheal/heal-api")
            .secret_string(format!("k1 {K1}\n"))
            .send()
            .await
            .expect("create secret");
        // The server is handed a Secrets Manager client pointed at moto (in a pod the same
        // client comes from the standard chain: IRSA, the region, the endpoint).
        let keys_line = "secrets_manager_id = \"selfheal/heal-api\"";
        let s = settings(d, keys_line, "");
        let loader =
            selfheal_heal_api::keys::KeyLoader::secrets_manager(sm.clone(), "selfheal/heal-api");
        let (stop, rx) = tokio::sync::watch::channel(false);
        let running = server::start_with_keys(&s, Recording::new(), loader, rx)
            .await
            .expect("server starts");
        let srv = Server {
            dir: d.to_owned(),
            addr: running.addr,
            stop,
            running: Some(running),
        };
        let http = client(d);
        let (k1, k2) = (key("k1", K1), key("k2", K2));
        assert_eq!(
            accepted(&http, &srv, &k1, "secrets-nonce-00001").await.0,
            200
        );
        sm.put_secret_value()
            .secret_id("selfheal/heal-api")
            .secret_string(format!("k2 {K2}\nk1 {K1}\n"))
            .send()
            .await
            .expect("rotate");
        let mut i = 10;
        loop {
            i += 1;
            if accepted(&http, &srv, &k2, &format!("secrets-nonce-{i:05}"))
                .await
                .0
                == 200
            {
                break;
            }
            assert!(i < 300, "k2 not accepted after the secret changed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            accepted(&http, &srv, &k1, "secrets-nonce-00002").await.0,
            200
        );
        srv.shutdown().await;
    });
}
