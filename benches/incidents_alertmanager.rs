//! selfheal's incident pipeline beside Prometheus Alertmanager (Debian `prometheus-alertmanager`)
//! in one run, fed the same storm with the same grouping and timing (group by workload and
//! family; group_wait 30 s, group_interval 5 min, repeat_interval 4 h, resolve timeout 5 min):
//! 3 nodes x 5 pods of one Deployment report the same CPU anomaly every 600 ms for 2 minutes
//! (3,000 reports), a third of them delivered twice (the at-least-once redelivery both must
//! absorb). selfheal gets them as agents send them (HTTP ingest, one batch per node per round);
//! Alertmanager as Prometheus would (its v2 API, one alert per report, re-sent while firing).
//!
//! Measured for each: notifications (Alertmanager: webhook calls to a receiver on loopback;
//! selfheal: notifications due, from its metrics), time from the first report to the first
//! notification and to the first incident/alert group visible in the API, CPU seconds and peak
//! RSS of the process (from /proc).
//!
//!   cargo bench --bench incidents_alertmanager [-- STORM_SECS]

#[path = "../tests/support/mod.rs"]
mod support;

use axum::Router;
use axum::routing::post;
use selfheal_core::batch::{CONTENT_TYPE, encode_batch};
use selfheal_core::schema::encode_wire;
use selfheal_core::{Envelope, Subject};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::records::checkout_cpu_anomaly;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn proc_figures(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    (cpu, hwm)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The body of a GET, or `None` if it failed.
fn fetch(rt: &tokio::runtime::Runtime, client: &reqwest::Client, url: String) -> Option<String> {
    rt.block_on(async { client.get(url).send().await.ok()?.text().await.ok() })
}

fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Waits until `path` on 127.0.0.1:`port` answers 200 (a bare HTTP/1.1 GET).
fn wait_http(port: u16, path: &str) {
    use std::io::{Read, Write};
    let start = Instant::now();
    loop {
        let ok = std::net::TcpStream::connect(("127.0.0.1", port))
            .and_then(|mut s| {
                write!(
                    s,
                    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                )?;
                let mut buf = String::new();
                s.read_to_string(&mut buf)?;
                Ok(buf.starts_with("HTTP/1.1 200"))
            })
            .unwrap_or(false);
        if ok {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{path} on {port} did not answer"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_alertmanager(dir: &Path, port: u16, hook: u16) -> Kill {
    let cfg = dir.join("alertmanager.yml");
    std::fs::write(
        &cfg,
        format!(
            "route:\n  receiver: hook\n  group_by: [workload, family]\n  group_wait: 30s\n  group_interval: 5m\n  repeat_interval: 4h\nreceivers:\n- name: hook\n  webhook_configs:\n  - url: http://127.0.0.1:{hook}/am\n    send_resolved: true\n"
        ),
    )
    .expect("write config");
    let child = Command::new("prometheus-alertmanager")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.path={}", dir.join("am-data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus-alertmanager (apt-get install prometheus-alertmanager)");
    Kill(child)
}

fn start_selfheal(dir: &Path, port: u16) -> Kill {
    let cfg = dir.join("aggregator.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen_addr = \"127.0.0.1:{port}\"\n[ingest]\nsource = \"http\"\nlog_dir = \"{log}\"\n[lake]\nlocation = \"{lake}\"\n[incidents]\ngroup_by = [\"workload\", \"family\"]\n[incidents.store]\ndir = \"{inc}\"\n",
            lake = dir.join("lake").display(),
            log = dir.join("ingest-log").display(),
            inc = dir.join("incidents").display()
        ),
    )
    .expect("write config");
    let child = Command::new(env!("CARGO_BIN_EXE_selfheal"))
        .args(["aggregator", "--config"])
        .arg(&cfg)
        .env("SELFHEAL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start selfheal");
    Kill(child)
}

fn main() {
    let storm_secs: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(120);
    let rounds = (storm_secs * 1000 / 600) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tmp");
    let hook_port = free_port();
    let hooks: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
    {
        let hooks = Arc::clone(&hooks);
        rt.spawn(async move {
            let app = Router::new().route(
                "/am",
                post(move || {
                    let hooks = Arc::clone(&hooks);
                    async move {
                        hooks
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(Instant::now());
                        "ok"
                    }
                }),
            );
            let l = tokio::net::TcpListener::bind(("127.0.0.1", hook_port))
                .await
                .expect("bind hook");
            let _ = axum::serve(l, app).await;
        });
    }
    let am_port = free_port();
    let sh_port = free_port();
    let am = start_alertmanager(dir.path(), am_port, hook_port);
    let sh = start_selfheal(dir.path(), sh_port);
    wait_http(am_port, "/-/ready");
    wait_http(sh_port, "/healthz");
    let (am_cpu0, _) = proc_figures(am.0.id());
    let (sh_cpu0, _) = proc_figures(sh.0.id());

    let client = reqwest::Client::new();
    let start = Instant::now();
    let mut first_sh_incident = None;
    let mut first_am_group = None;
    let mut first_sh_note = None;
    let mut sent = 0usize;
    let end = Duration::from_secs(storm_secs + 40);
    let mut round = 0usize;
    let mut next_round = Duration::ZERO;
    while start.elapsed() < end {
        if round < rounds && start.elapsed() >= next_round {
            let ts = now_ms();
            for node in 0..3 {
                let envs: Vec<Envelope> = (0..5)
                    .map(|pod| {
                        checkout_cpu_anomaly(
                            ((round * 15 + node * 5 + pod) as u128) + (7 << 64),
                            ts,
                            node,
                            pod,
                            0.8,
                        )
                    })
                    .collect();
                let wires: Vec<Vec<u8>> = envs
                    .iter()
                    .map(|e| encode_wire(e).expect("encode"))
                    .collect();
                let body = encode_batch(wires.iter().map(Vec::as_slice)).expect("batch");
                // Every third round is delivered twice, as a retrying agent would.
                let times = if round.is_multiple_of(3) { 2 } else { 1 };
                for _ in 0..times {
                    let r = rt.block_on(
                        client
                            .post(format!("http://127.0.0.1:{sh_port}/v1/ingest"))
                            .header("content-type", CONTENT_TYPE)
                            .body(body.clone())
                            .send(),
                    );
                    assert!(r.is_ok_and(|r| r.status().is_success()), "selfheal ingest");
                    let alerts: Vec<serde_json::Value> = envs
                        .iter()
                        .map(|e| {
                            let r = e.record();
                            let pod = match &r.subject {
                                Subject::Pod(p) => p.name.clone().unwrap_or_default(),
                                Subject::Node => String::new(),
                            };
                            serde_json::json!({
                                "labels": {
                                    "alertname": "SelfhealAnomaly",
                                    "family": "cpu",
                                    "namespace": "shop",
                                    "workload": "shop/Deployment/checkout",
                                    "pod": pod,
                                    "node": r.node,
                                },
                                "annotations": { "score": "0.8", "threshold": "0.6" },
                            })
                        })
                        .collect();
                    let r = rt.block_on(
                        client
                            .post(format!("http://127.0.0.1:{am_port}/api/v2/alerts"))
                            .json(&alerts)
                            .send(),
                    );
                    assert!(
                        r.is_ok_and(|r| r.status().is_success()),
                        "alertmanager post"
                    );
                    sent += envs.len();
                }
            }
            round += 1;
            next_round = Duration::from_millis(600 * round as u64);
        }
        if first_sh_incident.is_none() {
            let body = fetch(
                &rt,
                &client,
                format!("http://127.0.0.1:{sh_port}/api/v1/counts"),
            );
            if body.is_some_and(|b| b.contains("\"open\":1")) {
                first_sh_incident = Some(start.elapsed());
            }
        }
        if first_am_group.is_none() {
            let body = fetch(
                &rt,
                &client,
                format!("http://127.0.0.1:{am_port}/api/v2/alerts/groups"),
            );
            if body.is_some_and(|b| b.contains("SelfhealAnomaly")) {
                first_am_group = Some(start.elapsed());
            }
        }
        if first_sh_note.is_none() {
            let body = fetch(&rt, &client, format!("http://127.0.0.1:{sh_port}/metrics"))
                .unwrap_or_default();
            if metric(&body, "selfheal_aggregator_incidents_notifications_total") >= 1.0 {
                first_sh_note = Some(start.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics =
        fetch(&rt, &client, format!("http://127.0.0.1:{sh_port}/metrics")).unwrap_or_default();
    let sh_notes = metric(
        &metrics,
        "selfheal_aggregator_incidents_notifications_total",
    );
    let sh_dedup = metric(
        &metrics,
        "selfheal_aggregator_incidents_anomalies_deduplicated_total",
    );
    let sh_counted = metric(&metrics, "selfheal_aggregator_incidents_anomalies_total");
    let (am_cpu, am_rss) = proc_figures(am.0.id());
    let (sh_cpu, sh_rss) = proc_figures(sh.0.id());
    let hooks = hooks.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let am_first = hooks.first().map(|t| t.duration_since(start));
    let secs =
        |d: Option<Duration>| d.map_or("never".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()));
    println!(
        "storm: {rounds} rounds x 15 reports over {storm_secs} s, {sent} deliveries (redeliveries included); observed {} s",
        end.as_secs()
    );
    println!(
        "selfheal: notifications {sh_notes}, first notification {}, first incident {}, anomalies counted {sh_counted}, deduplicated {sh_dedup}, CPU {:.2} s, peak RSS {} KiB",
        secs(first_sh_note),
        secs(first_sh_incident),
        sh_cpu - sh_cpu0,
        sh_rss
    );
    println!(
        "alertmanager: notifications {}, first notification {}, first alert group {}, CPU {:.2} s, peak RSS {} KiB",
        hooks.len(),
        secs(am_first),
        secs(first_am_group),
        am_cpu - am_cpu0,
        am_rss
    );
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}", a / b)
        } else {
            "n/a".into()
        }
    };
    let d = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64());
    println!(
        "ratios selfheal/alertmanager: notifications {}, time to first notification {}, time to first incident/group {}, CPU {}, peak RSS {}",
        ratio(sh_notes, hooks.len() as f64),
        ratio(d(first_sh_note), d(am_first)),
        ratio(d(first_sh_incident), d(first_am_group)),
        ratio(sh_cpu - sh_cpu0, am_cpu - am_cpu0),
        ratio(sh_rss as f64, am_rss as f64)
    );
    drop(sh);
    drop(am);
}
