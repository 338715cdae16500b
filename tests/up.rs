//! `selfheal up` through the real binary, on an empty data directory: the progress lines (each
//! component starting, then ready), the page served on the loopback port given, the generated
//! credential admitting records of this node at the ingest (and nothing else), the incident
//! they make and its dry-run action shown in headless Chromium (screenshots saved), `selfheal
//! incidents` finding the instance by its instance.json, a second `up` refused while one runs;
//! then SIGINT: a clean, ordered stop, no child process (none while running, none of its
//! process group after), instance.json removed, the CLI saying nothing runs; and a restart on
//! the same directory that reuses the credential, the configs and the incident.

use crate::incidents::runtime;
use crate::incidents_page::{browse, console_errors};
use crate::support::{KillOnDrop, free_port, selfheal, signal};
use selfheal_aggregator::api::{ListBody, ShowBody};
use selfheal_core::batch::{CONTENT_TYPE, encode_batch};
use selfheal_core::incident::{EventKind, Incident};
use selfheal_core::schema::{Anomaly, OwnerRef, encode_wire};
use selfheal_core::{Envelope, Family, Metric, Payload, PodRef, Record, RecordId, Subject};
use selfheal_runtime::instance::Instance;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `selfheal up`, its stdout lines as they come.
struct Up {
    child: KillOnDrop,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    started: Instant,
}

impl Up {
    fn start(data: &Path, port: u16, agent_port: u16) -> Up {
        let mut cmd = selfheal();
        cmd.args(["up", "--data-dir"])
            .arg(data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--agent-listen", &format!("127.0.0.1:{agent_port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own process group, so whatever it might leave behind is findable after it
            // exited (an orphan is re-parented, but keeps its group).
            .process_group(0);
        let started = Instant::now();
        let mut child = cmd.spawn().expect("start selfheal up");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("up| {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Up {
            child: KillOnDrop(child),
            lines,
            seen: Vec::new(),
            started,
        }
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Reads lines until one contains `text`; fails after `limit`.
    fn wait_line(&mut self, text: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        if let Some(l) = self.seen.iter().find(|l| l.contains(text)) {
            return l.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(text) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no line with {text:?} within {limit:?}; saw:\n{:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Sends `sig` and waits for a successful exit; the lines it printed while stopping.
    fn stop(mut self, sig: &str) -> Vec<String> {
        signal(self.pid(), sig);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.child.0.try_wait().expect("wait") {
                assert!(st.success(), "selfheal up exited with {st} after SIG{sig}");
                break;
            }
            assert!(Instant::now() < deadline, "no exit within 60 s of SIG{sig}");
            std::thread::sleep(Duration::from_millis(50));
        }
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(l);
        }
        self.seen
    }
}

/// (pid, parent pid, process group) of every process.
fn processes() -> Vec<(u32, u32, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if let (Some(ppid), Some(pgrp)) = (
            f.get(1).and_then(|v| v.parse().ok()),
            f.get(2).and_then(|v| v.parse().ok()),
        ) {
            out.push((pid, ppid, pgrp));
        }
    }
    out
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn get(url: &str) -> Option<(u16, String)> {
    let rt = runtime();
    rt.block_on(async {
        let r = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .ok()?
            .get(url)
            .send()
            .await
            .ok()?;
        let status = r.status().as_u16();
        Some((status, r.text().await.ok()?))
    })
}

/// CPU anomalies of four rounds of three pods of Deployment demo/web on `node`, ending now.
fn storm(node: &str, id_base: u128) -> Vec<Vec<u8>> {
    let now = crate::incidents::now_ms();
    let mut out = Vec::new();
    for round in 0..4i64 {
        for pod in 0..3u128 {
            let env = Envelope::new(Payload::Anomaly(Anomaly {
                record: Record {
                    id: RecordId::from_u128(id_base + round as u128 * 3 + pod),
                    ts_ms: now - (3 - round) * 1000,
                    node: node.into(),
                    subject: Subject::Pod(PodRef {
                        uid: format!("demo-web-{pod}"),
                        namespace: Some("demo".into()),
                        name: Some(format!("web-5d8f7-{pod}")),
                        owner: Some(OwnerRef {
                            kind: "Deployment".into(),
                            name: "web".into(),
                        }),
                        qos: None,
                    }),
                    family: Family::Cpu,
                    values: BTreeMap::from([(Metric::CpuUsageCores, 3.9)]),
                },
                score: 0.92,
                threshold: 0.6,
                model_version: "cpu-test".into(),
                features: vec![3.9],
                top_features: vec![("cpu_usage_cores_z60".into(), 5.0)],
                window: vec![],
            }));
            out.push(encode_wire(&env).expect("encode"));
        }
    }
    out
}

fn post(url: &str, token: &str, records: &[Vec<u8>]) -> u16 {
    let body = encode_batch(records.iter().map(Vec::as_slice)).expect("batch");
    runtime().block_on(async {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .bearer_auth(token)
            .timeout(Duration::from_secs(10))
            .body(body)
            .send()
            .await
            .expect("the ingest answers")
            .status()
            .as_u16()
    })
}

/// `selfheal <args> --data-dir <data>` (no --url: the instance is found by instance.json).
fn cli(data: &Path, args: &[&str]) -> std::process::Output {
    selfheal()
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("SELFHEAL_URL")
        .env_remove("SELFHEAL_API_TOKEN_FILE")
        .output()
        .expect("run the CLI")
}

fn cli_ok(data: &Path, args: &[&str]) -> String {
    let out = cli(data, args);
    assert!(
        out.status.success(),
        "selfheal {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

fn the_incident(data: &Path) -> Option<Incident> {
    let list: ListBody =
        serde_json::from_str(&cli_ok(data, &["incidents", "list", "--json"])).expect("--json");
    list.incidents
        .into_iter()
        .find(|i| i.labels.get("workload").map(String::as_str) == Some("Deployment/web"))
}

#[test]
fn up_on_an_empty_data_dir_serves_the_page_shows_an_incident_and_stops_clean_on_ctrl_c() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data: PathBuf = tmp.path().join("selfheal");
    let (port, agent_port) = (free_port(), free_port());
    let mut up = Up::start(&data, port, agent_port);

    // Progress: each component starting, then ready; then the page's URL.
    up.wait_line(
        "credentials  made ingest-token and api-token",
        Duration::from_secs(60),
    );
    up.wait_line("aggregator   starting", Duration::from_secs(60));
    up.wait_line("aggregator   ready", Duration::from_secs(60));
    up.wait_line("healing      dry-run", Duration::from_secs(10));
    up.wait_line("agent        starting", Duration::from_secs(10));
    up.wait_line("agent        ready", Duration::from_secs(60));
    up.wait_line("models       none for cpu, memory", Duration::from_secs(10));
    let page = format!("http://127.0.0.1:{port}/incidents");
    let ready = up.wait_line("selfheal is up", Duration::from_secs(10));
    assert!(ready.contains(&page), "{ready}");
    let (status, html) = get(&page).expect("the page answers");
    assert_eq!(status, 200);
    assert!(
        html.contains("<html") || html.contains("<!doctype"),
        "{html}"
    );
    eprintln!(
        "selfheal up: start to page served {:.2} s (empty data dir)",
        up.started.elapsed().as_secs_f64()
    );

    // What it left in the data directory, and where it says it is.
    assert_eq!(mode(&data), 0o700);
    for f in [
        "ingest-token",
        "api-token",
        "ingest-tokens",
        "instance.json",
    ] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    for f in ["agent.toml", "aggregator.toml"] {
        assert!(data.join(f).is_file(), "{f} generated");
    }
    for d in [
        "lake",
        "pods",
        "models",
        "spool",
        "store",
        "ingest-log",
        "heal",
    ] {
        assert!(data.join(d).is_dir(), "{d}/");
    }
    let inst = Instance::find(&data).expect("instance.json names the running instance");
    assert_eq!(inst.pid, up.pid());
    assert_eq!(inst.page_url, page);
    assert_eq!(inst.api_url, format!("http://127.0.0.1:{port}"));
    assert_eq!(inst.agent_url, format!("http://127.0.0.1:{agent_port}"));
    assert_eq!(inst.ingest_token_file, data.join("ingest-token"));
    let token = std::fs::read_to_string(&inst.ingest_token_file).expect("token");
    let token = token.trim().to_owned();
    assert!(
        !std::fs::read_to_string(data.join("ingest-tokens"))
            .expect("table")
            .contains(&token),
        "the aggregator's table holds the digest, not the token"
    );
    let (status, _) = get(&format!("{}/healthz", inst.agent_url)).expect("agent /healthz");
    assert_eq!(status, 200);

    // A second `up` on the same directory is refused, naming the one running.
    let second = selfheal()
        .args(["up", "--data-dir"])
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .expect("second up");
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("another `selfheal up` is running") && err.contains(&page),
        "{err}"
    );

    // The ingest: the generated credential admits this node's records, nothing else gets in.
    let records = storm(&inst.node, 1 << 80);
    assert_eq!(
        post(&inst.ingest_url, "wrong-token-0123456789abcdef", &records),
        401
    );
    assert_eq!(
        post(&inst.ingest_url, &token, &storm("another-node", 1 << 90)),
        403
    );
    assert_eq!(post(&inst.ingest_url, &token, &records), 200);

    // The incident and its dry-run action, through the CLI that finds the instance itself.
    let deadline = Instant::now() + Duration::from_secs(60);
    let inc = loop {
        if let Some(i) = the_incident(&data) {
            break i;
        }
        assert!(Instant::now() < deadline, "no incident within 60 s");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(inc.anomaly_count, 12);
    let deadline = Instant::now() + Duration::from_secs(60);
    let shown = loop {
        let shown = cli_ok(&data, &["incidents", "show", inc.id.as_str()]);
        if shown.contains("dry-run: would scale demo/Deployment/web") {
            break shown;
        }
        assert!(
            Instant::now() < deadline,
            "no dry-run action within 60 s:\n{shown}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(shown.contains("opened"), "{shown}");
    let table = cli_ok(&data, &["incidents", "list"]);
    assert!(table.contains(inc.id.as_str()), "{table}");
    let dry_run = std::fs::read_to_string(data.join("heal/dry-run.jsonl")).expect("dry-run log");
    assert!(dry_run.contains(&format!("{}/1", inc.id)), "{dry_run}");
    // An API write with the instance's own token (found through instance.json) is accepted.
    cli_ok(
        &data,
        &[
            "silences",
            "add",
            "-m",
            "namespace=elsewhere",
            "--by",
            "tester",
            "--comment",
            "written with the token instance.json names",
        ],
    );
    assert!(cli_ok(&data, &["silences", "list"]).contains("namespace=elsewhere"));
    let show: ShowBody = serde_json::from_str(&cli_ok(
        &data,
        &["incidents", "show", inc.id.as_str(), "--json"],
    ))
    .expect("show --json");
    assert!(
        show.events
            .iter()
            .any(|e| matches!(e.kind, EventKind::ActionIntent { dry_run: true, .. })),
        "{:?}",
        show.events
    );

    // The page in a real browser: the incident listed, its timeline with the dry-run action.
    let (dom, err) = browse(&page, &["--dump-dom"]);
    assert!(
        console_errors(&err).is_empty(),
        "{:?}",
        console_errors(&err)
    );
    assert!(dom.contains(&format!("data-id=\"{}\"", inc.id)), "{dom}");
    let (dom, err) = browse(&format!("{page}/{}", inc.id), &["--dump-dom"]);
    assert!(
        console_errors(&err).is_empty(),
        "{:?}",
        console_errors(&err)
    );
    assert!(
        dom.contains("id=\"timeline\"") && dom.contains("would scale"),
        "the dry-run action on the timeline:\n{dom}"
    );
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("up");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    for (name, url) in [
        ("list.png", page.clone()),
        ("incident.png", format!("{page}/{}", inc.id)),
    ] {
        let png = shots.join(name);
        let _ = std::fs::remove_file(&png);
        browse(&url, &[&format!("--screenshot={}", png.display())]);
        let len = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        assert!(
            len > 10_000,
            "{} is a real screenshot ({len} bytes)",
            png.display()
        );
    }

    // One process: no child while running.
    let pid = up.pid();
    eprintln!("selfheal up: RSS {} KiB while running", rss_kib(pid));
    let children: Vec<_> = processes().into_iter().filter(|p| p.1 == pid).collect();
    assert!(children.is_empty(), "children of selfheal up: {children:?}");

    // Ctrl-C: the agent stops first, then the aggregator; nothing is left behind.
    let lines = up.stop("INT");
    let pos = |text: &str| {
        lines
            .iter()
            .position(|l| l.contains(text))
            .unwrap_or_else(|| panic!("no {text:?} in {lines:#?}"))
    };
    assert!(pos("agent        stopped") < pos("aggregator   stopped"));
    pos("selfheal up: stopped");
    let left: Vec<_> = processes().into_iter().filter(|p| p.2 == pid).collect();
    assert!(left.is_empty(), "processes of its group left: {left:?}");
    assert!(
        !data.join("instance.json").exists(),
        "instance.json removed"
    );
    let out = cli(&data, &["incidents", "list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no local instance is running"), "{err}");

    // Again on the same directory: the credential, the configs and the incident are reused.
    let mut again = Up::start(&data, port, agent_port);
    again.wait_line(
        "credentials  reused ingest-token and api-token",
        Duration::from_secs(60),
    );
    again.wait_line(
        "configs      agent.toml, aggregator.toml (as found)",
        Duration::from_secs(10),
    );
    again.wait_line("selfheal is up", Duration::from_secs(60));
    assert_eq!(
        std::fs::read_to_string(data.join("ingest-token"))
            .expect("token")
            .trim(),
        token
    );
    assert_eq!(
        the_incident(&data).map(|i| i.id),
        Some(inc.id.clone()),
        "the incident store was reused"
    );
    let pid = again.pid();
    again.stop("TERM");
    assert!(processes().into_iter().all(|p| p.2 != pid));
    assert!(!data.join("instance.json").exists());
}
