//! Heal API measurements (a bench command, not a timed test):
//!
//! 1. Signed requests verified per second on one core: `Verifier::verify` of a realistic
//!    action request (400-byte body, fresh nonce each time, so the nonce cache works as in
//!    production), on one thread; `sign::sign` alone likewise; the peer is parsing the same
//!    body as an `ActionRequest` (work every request does anyway).
//! 2. The heal API's added latency per request over loopback TLS: p50/p99 of a signed
//!    `POST /v1/actions` answered by an executor that does nothing, against an unsigned
//!    `GET /healthz` on the same kept-alive TLS connection (the transport's own cost), so the
//!    difference is what signing, verification, the gates and the audit line add. The same
//!    for a refused request (a bad signature): what a forger costs the server.
//! 3. Requests per second through the server (client and server in this process, 2 worker
//!    threads, 32 concurrent callers on kept-alive connections) for signed actions, refused
//!    forgeries and `/healthz`.
//!
//! Run: `cargo bench --bench heal_api` (prints the figures; docs/benchmarks.md "Heal API").

use selfheal_core::action::{
    Action, ActionError, ActionOutcome, ActionRequest, Executor, ObjectVersion, Target,
    WorkloadKind, WorkloadState,
};
use selfheal_heal_api::sign::{self, Key, RequestParts, Verifier};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn request() -> ActionRequest {
    ActionRequest {
        request_id: "01JDZ8M3Q6W4Y7T5R2N9K0B1C3/1".into(),
        target: Target {
            namespace: "shop".into(),
            kind: WorkloadKind::Deployment,
            name: "checkout".into(),
        },
        expect: ObjectVersion {
            uid: "8c2f6d3e-2b51-4c5e-9d7a-0f9b6c1e4a21".into(),
            resource_version: "123456789".into(),
        },
        action: Action::Scale { from: 3, to: 5 },
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn verify_rate() {
    let key = Key::new("k1", vec![7u8; 32]).expect("key");
    let keys = [key.clone(), Key::new("k0", vec![8u8; 32]).expect("key")];
    let body = serde_json::to_vec(&request()).expect("json");
    let n = 200_000usize;
    let t = now();
    let signed: Vec<_> = (0..n)
        .map(|i| sign::sign(&key, "POST", "/v1/actions", t, &format!("{i:032x}"), &body))
        .collect();
    let start = Instant::now();
    for (i, _) in signed.iter().enumerate().take(n) {
        std::hint::black_box(sign::sign(
            &key,
            "POST",
            "/v1/actions",
            t,
            &format!("{i:032x}"),
            &body,
        ));
    }
    let sign_each = start.elapsed().as_secs_f64() / n as f64;
    let start = Instant::now();
    for _ in 0..n {
        let r: ActionRequest = serde_json::from_slice(std::hint::black_box(&body)).expect("parse");
        std::hint::black_box(r);
    }
    let parse_each = start.elapsed().as_secs_f64() / n as f64;
    let v = Verifier::new(60, n + 1);
    let start = Instant::now();
    for s in &signed {
        let p = RequestParts {
            method: "POST",
            path: "/v1/actions",
            key_id: Some(&s.key_id),
            timestamp: Some(&s.timestamp),
            nonce: Some(&s.nonce),
            signature: Some(&s.signature),
        };
        assert!(v.verify(&keys, &p, &body, t).is_ok());
    }
    let el = start.elapsed();
    println!(
        "verify: {n} signed requests ({} B body) in {:.3} s on one thread: {:.0} verified/s ({:.2} µs each)",
        body.len(),
        el.as_secs_f64(),
        n as f64 / el.as_secs_f64(),
        el.as_secs_f64() * 1e6 / n as f64
    );
    let verify_each = el.as_secs_f64() / n as f64;
    println!(
        "sign: {:.2} µs each ({:.0}/s); peer, parsing the body as an ActionRequest: {:.2} µs; \
         sign = {:.2}× parse, verify = {:.2}× parse, sign+verify = {:.2}× parse",
        sign_each * 1e6,
        1.0 / sign_each,
        parse_each * 1e6,
        sign_each / parse_each,
        verify_each / parse_each,
        (sign_each + verify_each) / parse_each
    );
}

#[derive(Debug, Clone)]
struct Noop;

impl Executor for Noop {
    fn name(&self) -> &'static str {
        "noop"
    }
    async fn observe(&self, _t: &Target) -> Result<WorkloadState, ActionError> {
        Err(ActionError::new(
            selfheal_core::action::ActionErrorKind::NotFound,
            "noop",
        ))
    }
    async fn apply(&self, _r: &ActionRequest) -> Result<ActionOutcome, ActionError> {
        Ok(ActionOutcome {
            already_applied: false,
            dry_run: true,
            version_after: None,
            detail: "noop".into(),
        })
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let ok = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl")
        .status
        .success();
    assert!(ok, "openssl {args:?}");
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e6
}

fn latency() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    // A CA and a server certificate it signed (rustls refuses a self-signed end entity).
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let run = |line: String| openssl(d, &line.split_whitespace().collect::<Vec<_>>());
    run(format!(
        "req -x509 {ec} -keyout ca.key -out ca.crt -days 1 -subj /CN=bench-ca"
    ));
    std::fs::write(
        d.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    run(format!(
        "req {ec} -keyout server.key -out server.csr -subj /CN=heal-api"
    ));
    run("x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 1 -extfile server.ext".into());
    std::fs::write(d.join("keys"), format!("k1 {}\n", "07".repeat(32))).expect("keys");
    let toml = format!(
        "listen_addr = \"127.0.0.1:0\"\naudit_log = \"{d}/audit.jsonl\"\nrate_per_sec = 10000\nrate_burst = 100000\nmax_nonces = 10000000\n\
         [tls]\ncert_file = \"{d}/server.crt\"\nkey_file = \"{d}/server.key\"\n[keys]\nfile = \"{d}/keys\"\n\
         [allow]\nnamespaces = [\"shop\"]\nactions = [\"scale\"]\n",
        d = d.display()
    );
    std::fs::write(d.join("c.toml"), toml).expect("config");
    let settings = selfheal_heal_api::config::HealApiConfig::load(Some(&d.join("c.toml")))
        .expect("load")
        .validate()
        .expect("valid");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let (stop, rx) = tokio::sync::watch::channel(false);
        let running = selfheal_heal_api::server::start(&settings, Noop, rx)
            .await
            .expect("start");
        let pem = std::fs::read(d.join("ca.crt")).expect("ca");
        let http = reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).expect("pem"))
            .pool_max_idle_per_host(1)
            .build()
            .expect("client");
        let key = Key::new("k1", vec![7u8; 32]).expect("key");
        let body = serde_json::to_vec(&request()).expect("json");
        let base = format!("https://{}", running.addr);
        let n = 5000;
        let forger = Key::new("k1", vec![9u8; 32]).expect("key");
        let mut refused = Vec::with_capacity(n);
        let (mut signed, mut plain) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n + 200 {
            let t0 = Instant::now();
            let s = http.get(format!("{base}/healthz")).send().await.expect("healthz");
            let _ = s.bytes().await;
            let e0 = t0.elapsed();
            let t1 = Instant::now();
            let sg = sign::sign(&key, "POST", "/v1/actions", now(), &format!("{i:032x}"), &body);
            let mut req = http.post(format!("{base}/v1/actions")).body(body.clone());
            for (h, v) in sg.headers() {
                req = req.header(h, v);
            }
            let r = req.send().await.expect("action");
            assert_eq!(r.status(), 200);
            let _ = r.bytes().await;
            let e1 = t1.elapsed();
            let t2 = Instant::now();
            let sg = sign::sign(&forger, "POST", "/v1/actions", now(), &format!("f{i:031x}"), &body);
            let mut req = http.post(format!("{base}/v1/actions")).body(body.clone());
            for (h, v) in sg.headers() {
                req = req.header(h, v);
            }
            let r = req.send().await.expect("forgery");
            assert_eq!(r.status(), 401);
            let _ = r.bytes().await;
            let e2 = t2.elapsed();
            // The first 200 warm the connection and the allocator.
            if i >= 200 {
                plain.push(e0);
                signed.push(e1);
                refused.push(e2);
            }
        }
        let (p50r, p99r) = (pct(&mut refused, 0.5), pct(&mut refused, 0.99));
        let (p50s, p99s) = (pct(&mut signed, 0.5), pct(&mut signed, 0.99));
        let (p50p, p99p) = (pct(&mut plain, 0.5), pct(&mut plain, 0.99));
        println!(
            "latency over loopback TLS ({n} requests, kept-alive): signed POST /v1/actions p50 {p50s:.0} µs p99 {p99s:.0} µs; \
             GET /healthz p50 {p50p:.0} µs p99 {p99p:.0} µs; added p50 {:.0} µs p99 {:.0} µs",
            p50s - p50p,
            p99s - p99p
        );
        println!(
            "refusal (bad signature) over loopback TLS: p50 {p50r:.0} µs p99 {p99r:.0} µs = {:.2}× / {:.2}× an accepted signed action, {:.2}× / {:.2}× GET /healthz",
            p50r / p50s,
            p99r / p99s,
            p50r / p50p,
            p99r / p99p
        );
        for (phase, (what, path, k)) in [
            ("signed actions", "/v1/actions", Some(&key)),
            ("refused forgeries", "/v1/actions", Some(&forger)),
            ("GET /healthz", "/healthz", None),
        ]
        .into_iter()
        .enumerate()
        {
            let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let until = Instant::now() + Duration::from_secs(3);
            let mut tasks = Vec::new();
            for c in 0..32u64 {
                let (http, base, body, done) =
                    (http.clone(), base.clone(), body.clone(), done.clone());
                let k = k.cloned();
                tasks.push(tokio::spawn(async move {
                    let mut i = 0u64;
                    while Instant::now() < until {
                        i += 1;
                        let r = match &k {
                            Some(k) => {
                                let sg = sign::sign(k, "POST", path, now(), &format!("p{phase}c{c:08x}i{i:024x}"), &body);
                                let mut req = http.post(format!("{base}{path}")).body(body.clone());
                                for (h, v) in sg.headers() {
                                    req = req.header(h, v);
                                }
                                req.send().await
                            }
                            None => http.get(format!("{base}{path}")).send().await,
                        };
                        if let Ok(r) = r {
                            let _ = r.bytes().await;
                            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
            let n = done.load(std::sync::atomic::Ordering::Relaxed);
            println!("throughput, 32 callers for 3 s: {what}: {:.0} requests/s", n as f64 / 3.0);
        }
        stop.send_replace(true);
        let _ = running.server.await;
    });
}

fn main() {
    verify_rate();
    latency();
}
