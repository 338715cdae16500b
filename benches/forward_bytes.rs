//! Bytes forwarded per node-hour at the default sampling, with every anomaly delivered: the real
//! agent binary against a real moto Kinesis on this machine (a bench command, not criterion: the
//! figure of merit is a rate over minutes of a running agent).
//!
//!   cargo bench --bench forward_bytes [-- SECONDS [PODS]]     # default 600 s, 100 pods
//!
//! `SELFHEAL_BIN=path/to/selfheal` runs another build of the binary (e.g. `--release` while the
//! bench itself is built with `--profile dev`).
//!
//! 1. Training: the agent runs `--print` for 120 s at a 1 s interval over the real /proc and a
//!    synthetic cgroup v2 tree of PODS pods; its CPU records become one CSV per series, and
//!    `selfheal model train --family cpu` (default contamination and k-of-n alarm rule) writes the
//!    model the next phase scores with.
//! 2. Measurement: the agent runs SECONDS at a 1 s interval (Fluent Bit's rate in the
//!    comparison) with `forward.sink = "kinesis"` to moto and the DEFAULT `[sampling]`, scoring
//!    with that model. A third of the way in, two busy loops load the CPU for 60 s, so the model
//!    has something real to alarm on. Then SIGTERM (the agent drains its spool) and the stream is
//!    read back.
//!
//! Reported: bytes selected per hour over the window after the first sampling block (the first
//! block is sized from the very first cycle), the sampler's offered load (what shipping every
//! record would cost), the anomalies the agent raised vs the anomaly records on the stream
//! (counted by id), and the agent's CPU time per 1,000 records forwarded (all of its work —
//! collection, scoring, sampling, spool, PutRecords — divided by records forwarded).

#[path = "../tests/support/mod.rs"]
mod support;

use selfheal_core::schema::decode_wire;
use selfheal_core::{Envelope, Payload};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::cgroup_fixture::{pod_uid, write_v2_pod};
use support::forest::Rng;
use support::moto::{Moto, aws_env, create_stream, kinesis_client, read_stream};
use support::{KillOnDrop, free_port, http_get, selfheal, signal};

const CPU_METRICS: [&str; 13] = [
    "cpu_usage_cores",
    "cpu_user_ratio",
    "cpu_system_ratio",
    "cpu_iowait_ratio",
    "cpu_steal_ratio",
    "cpu_max_core_busy_ratio",
    "cpu_load1",
    "cpu_procs_running",
    "cpu_procs_blocked",
    "cpu_context_switches_per_sec",
    "cpu_limit_cores",
    "cpu_throttled_ratio",
    "cpu_throttled_secs_per_sec",
];

/// The binary under test: `$SELFHEAL_BIN`, else the one cargo built with this bench.
fn selfheal_bin() -> Command {
    match std::env::var_os("SELFHEAL_BIN") {
        Some(path) => {
            let mut c = Command::new(path);
            c.env_remove("NODE_NAME");
            c
        }
        None => selfheal(),
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    tick(11) + tick(12)
}

fn agent_config(dir: &Path, cgroup: &Path, port: u16, extra: &str) -> std::path::PathBuf {
    let text = format!(
        "node_name = \"bench-node\"\ninterval_secs = 1\nlisten_addr = \"127.0.0.1:{port}\"\n\
         cgroup_root = \"{}\"\nshutdown_grace_secs = 20\n[pods]\nsource = \"none\"\n{extra}",
        cgroup.display()
    );
    support::write_file(dir, &format!("agent-{port}.toml"), &text)
}

/// Phase 1: `secs` of `--print`, then one CSV per CPU series, then `selfheal model train`.
fn train(dir: &Path, cgroup: &Path, secs: u64) -> std::path::PathBuf {
    let port = free_port();
    let config = agent_config(dir, cgroup, port, "");
    let out = std::fs::File::create(dir.join("train.jsonl")).expect("train output");
    let mut agent = KillOnDrop(
        selfheal_bin()
            .env("SELFHEAL_LOG", "warn")
            .args(["agent", "--print", "--config"])
            .arg(&config)
            .stdout(Stdio::from(out))
            .spawn()
            .expect("start agent"),
    );
    std::thread::sleep(Duration::from_secs(secs));
    signal(agent.0.id(), "TERM");
    let _ = agent.0.wait();
    let text = std::fs::read_to_string(dir.join("train.jsonl")).expect("read training output");
    let mut series: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let Ok(env) = serde_json::from_str::<Envelope>(line) else {
            continue;
        };
        let Payload::Sample { record, .. } = env.payload else {
            continue;
        };
        if record.family.as_str() != "cpu" {
            continue;
        }
        let row: Vec<String> = CPU_METRICS
            .iter()
            .map(|name| {
                record
                    .values
                    .iter()
                    .find(|(m, _)| m.as_str() == *name)
                    .map_or("0".into(), |(_, v)| v.to_string())
            })
            .collect();
        let key = record.subject.workload_key(&record.node).replace('/', "_");
        series.entry(key).or_default().push(row.join(","));
    }
    let csv_dir = dir.join("train-csv");
    std::fs::create_dir_all(&csv_dir).expect("csv dir");
    for (key, rows) in &series {
        let mut f = std::fs::File::create(csv_dir.join(format!("{key}.csv"))).expect("csv");
        writeln!(f, "{}", CPU_METRICS.join(",")).expect("write csv");
        for r in rows {
            writeln!(f, "{r}").expect("write csv");
        }
    }
    let models = dir.join("models");
    let status = selfheal_bin()
        .env("SELFHEAL_LOG", "warn")
        .args(["model", "train", "--family", "cpu", "--input"])
        .arg(&csv_dir)
        .arg("--out")
        .arg(models.join("cpu"))
        .status()
        .expect("run model train");
    assert!(status.success(), "model train failed");
    println!(
        "training: {} CPU series × ~{} rows → {}",
        series.len(),
        series.values().map(Vec::len).max().unwrap_or(0),
        models.join("cpu").display()
    );
    models
}

/// Pods whose CPU and memory move like busy services: every second each pod's CPU counters grow
/// by a random 5–60 % of a core (some of it throttled) and its memory wanders. Identical flat
/// pods would make every training row tie, and a contamination threshold over ties flags them
/// all.
fn animate_pods(root: &Path, pods: usize, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let mut rng = Rng::new(42);
    let mut usage = vec![0u64; pods];
    let mut throttled = vec![0u64; pods];
    let mut periods = vec![0u64; pods];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        for i in 0..pods {
            let u = pod_uid(i).replace('-', "_");
            let d = root
                .join("kubepods.slice/kubepods-burstable.slice")
                .join(format!("kubepods-burstable-pod{u}.slice"));
            let busy = 50_000 + rng.below(550_000) as u64;
            usage[i] += busy;
            periods[i] += 10;
            let thr = if busy > 500_000 { 1 } else { 0 };
            throttled[i] += thr * 20_000;
            // Write then rename, so the agent never reads a half-written file.
            let put = |name: &str, text: String| {
                let tmp = d.join(format!(".{name}.tmp"));
                let _ =
                    std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, d.join(name)));
            };
            put(
                "cpu.stat",
                format!(
                    "usage_usec {}\nuser_usec {}\nsystem_usec {}\nnr_periods {}\nnr_throttled {}\nthrottled_usec {}\n",
                    usage[i],
                    usage[i] * 4 / 5,
                    usage[i] / 5,
                    periods[i],
                    throttled[i] / 20_000,
                    throttled[i]
                ),
            );
            let mem = 100_000_000 + rng.below(50_000_000) as u64;
            put("memory.current", format!("{mem}\n"));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let secs: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(600);
    let pods: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100);
    let dir = tempfile::tempdir().expect("tempdir");
    let cgroup = dir.path().join("cgroup");
    for i in 0..pods {
        write_v2_pod(&cgroup, &pod_uid(i), i, 1);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let animator = {
        let (root, stop) = (cgroup.clone(), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || animate_pods(&root, pods, stop))
    };
    let models = train(dir.path(), &cgroup, 120);

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let moto = Moto::start();
    rt.block_on(create_stream(&kinesis_client(&moto.endpoint()), "bytes", 4));
    let port = free_port();
    let config = agent_config(
        dir.path(),
        &cgroup,
        port,
        &format!(
            "[models]\nsource = \"{}\"\n[spool]\ndir = \"{}\"\n[forward]\nsink = \"kinesis\"\n\
             [forward.kinesis]\nstream_name = \"bytes\"\nendpoint_url = \"{}\"\nregion = \"us-east-1\"\n",
            models.display(),
            dir.path().join("spool").display(),
            moto.endpoint()
        ),
    );
    let mut cmd = selfheal_bin();
    aws_env(&mut cmd)
        .env("SELFHEAL_LOG", "warn")
        .args(["agent", "--config"])
        .arg(&config)
        .stdout(Stdio::null());
    let mut agent = KillOnDrop(cmd.spawn().expect("start agent"));
    let pid = agent.0.id();
    let scrape = || {
        http_get(port, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    };
    let start = Instant::now();
    let ticks0 = cpu_ticks(pid);
    // Window starts after the first (partial) sampling block: blocks are 120 cycles of 1 s.
    let warmup = Duration::from_secs(130.min(secs / 3));
    std::thread::sleep(warmup);
    let m0 = scrape();
    let t0 = Instant::now();
    let burn_at = Duration::from_secs(secs / 3);
    std::thread::sleep(burn_at.saturating_sub(start.elapsed()));
    let burners: Vec<KillOnDrop> = (0..2)
        .map(|_| {
            KillOnDrop(
                Command::new("timeout")
                    .args(["60", "sh", "-c", "while :; do :; done"])
                    .spawn()
                    .expect("start a busy loop"),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs).saturating_sub(start.elapsed()));
    drop(burners);
    let m1 = scrape();
    let window = t0.elapsed().as_secs_f64();
    // CPU up to the last scrape (the shutdown drain is not counted).
    let hz = 100.0; // USER_HZ on Linux
    let cpu_secs = cpu_ticks(pid).saturating_sub(ticks0) as f64 / hz;
    let total = start.elapsed().as_secs_f64();
    signal(pid, "TERM");
    let status = agent.0.wait().expect("agent exit");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = animator.join();
    let on_stream = rt.block_on(read_stream(&kinesis_client(&moto.endpoint()), "bytes"));
    let mut ids = HashSet::new();
    let (mut anomalies, mut stream_bytes) = (HashSet::new(), 0usize);
    for (key, data) in &on_stream {
        stream_bytes += key.len() + data.len();
        let env = decode_wire(data).expect("wire record");
        let id = env.record().id.as_u128();
        ids.insert(id);
        if matches!(env.payload, Payload::Anomaly(_)) {
            anomalies.insert(id);
        }
    }
    let d = |name: &str| metric(&m1, name) - metric(&m0, name);
    let per_hour = |bytes: f64| bytes / window * 3600.0;
    let selected = d("selfheal_agent_sample_selected_bytes_total");
    let anomaly_bytes = d("selfheal_agent_sample_anomaly_bytes_total");
    let offered = d("selfheal_agent_sample_offered_bytes_total");
    let raised = metric(&m1, "selfheal_agent_anomalies_total");
    let sent = metric(&m1, "selfheal_agent_forward_sent_records_total");
    let fwd_rate = per_hour(selected + anomaly_bytes);
    println!(
        "agent exit: {status:?}; run {total:.0} s, {pods} pods, 1 s interval, default sampling"
    );
    println!(
        "window {window:.0} s: offered (every record, wire) {:.1} MB/h; forwarded {:.2} MB/h \
         (samples {:.2} + anomalies {:.2}); p now {:.4}",
        per_hour(offered) / 1e6,
        fwd_rate / 1e6,
        per_hour(selected) / 1e6,
        per_hour(anomaly_bytes) / 1e6,
        metric(&m1, "selfheal_agent_sample_inclusion_probability"),
    );
    println!(
        "vs Fluent Bit node metrics as JSON, 115 MB/h: {:.1}× less",
        115e6 / fwd_rate
    );
    println!(
        "stream: {} records ({} distinct), {:.2} MB; anomalies raised {raised}, on stream {} \
         ({:.1}%); spool drops {}",
        on_stream.len(),
        ids.len(),
        stream_bytes as f64 / 1e6,
        anomalies.len(),
        100.0 * anomalies.len() as f64 / raised.max(1.0),
        metric(&m1, "selfheal_agent_spool_dropped_records_total"),
    );
    println!(
        "agent CPU {cpu_secs:.1} s over {total:.0} s ({:.2}% of a core); {} records forwarded \
         by the last scrape → {:.0} ms CPU per 1,000 records forwarded (all agent work)",
        100.0 * cpu_secs / total,
        sent,
        cpu_secs * 1000.0 / sent.max(1.0) * 1000.0,
    );
}
