//! The agent on this machine's real cgroups, with real processes burning CPU and holding memory.
//!
//! The test builds a kubelet-like `kubepods/burstable/pod<uid>/<container>` tree inside a
//! uniquely named parent in the cgroup v1 `cpu`, `cpuacct` and `memory` hierarchies (v2 where the
//! host has controllers), starts processes inside it, and checks the agent against ground truth
//! read from the processes themselves. Where the machine forbids creating cgroups the test says
//! why and skips.

use crate::support::{KillOnDrop, envelopes, selfheal, stdout_of, write_file};
use selfheal_agent::collect::CycleErrors;
use selfheal_agent::collect::Pipeline;
use selfheal_agent::collect::pods::PodDirectory;
use selfheal_agent::config::AgentConfig;
use selfheal_core::schema::Subject;
use selfheal_core::{Family, Metric};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const ROOT: &str = "/sys/fs/cgroup";

/// The tests here load the machine on purpose (a busy loop, a UDP flood) and measure: one at a
/// time, so that one's load is not the other's noise.
static MACHINE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn machine() -> std::sync::MutexGuard<'static, ()> {
    MACHINE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A pod cgroup created for the test, removed (with its processes killed) on drop.
struct RealPod {
    uid: String,
    parent: String,
    /// Container directories, one per hierarchy, where processes go.
    containers: Vec<PathBuf>,
    procs: Vec<KillOnDrop>,
}

impl RealPod {
    fn create(tag: &str) -> Result<RealPod, String> {
        let root = Path::new(ROOT);
        let hierarchies: Vec<PathBuf> = if root.join("cgroup.controllers").is_file() {
            vec![root.to_owned()]
        } else {
            ["cpu", "cpuacct", "memory"]
                .iter()
                .map(|c| root.join(c))
                .collect()
        };
        let uid = format!("5e1f4ea1-0000-4000-8000-{:012x}", std::process::id());
        let parent = format!("selfheal-test-{tag}-{}", std::process::id());
        let mut containers = Vec::new();
        for h in &hierarchies {
            if !h.is_dir() {
                return Err(format!("{} is not mounted", h.display()));
            }
            let c = h
                .join(&parent)
                .join("kubepods/burstable")
                .join(format!("pod{uid}"))
                .join("app");
            std::fs::create_dir_all(&c)
                .map_err(|e| format!("cannot create cgroup {}: {e}", c.display()))?;
            containers.push(c);
        }
        Ok(RealPod {
            uid,
            parent,
            containers,
            procs: Vec::new(),
        })
    }

    /// Starts `script` under `sh`, moving the shell into the pod's cgroups before it execs, so
    /// everything the program does is charged to the pod.
    fn spawn(&mut self, program: &str) -> u32 {
        let moves: String = self
            .containers
            .iter()
            .map(|c| format!("echo $$ > {}/cgroup.procs && ", c.display()))
            .collect();
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("{moves} exec {program}"))
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn sh");
        let pid = child.id();
        self.procs.push(KillOnDrop(child));
        pid
    }
}

impl Drop for RealPod {
    fn drop(&mut self) {
        self.procs.clear();
        std::thread::sleep(Duration::from_millis(100));
        for c in &self.containers {
            // Leaf first; rmdir is the only way to delete a cgroup.
            let mut dir = c.clone();
            while dir.file_name().is_some_and(|n| n != self.parent.as_str()) {
                let _ = std::fs::remove_dir(&dir);
                dir.pop();
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// Polls `ready` every 100 ms until it holds, failing with `what` after `secs` seconds.
fn wait_until(secs: u64, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !ready() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `selfheal agent --once` over the test pod's kubepods tree, two readings `gap_ms` apart,
/// and returns what it printed.
fn agent_once(pod: &RealPod, gap_ms: u32) -> String {
    agent_once_with(pod, gap_ms, "")
}

/// [`agent_once`] with more configuration lines.
fn agent_once_with(pod: &RealPod, gap_ms: u32, extra: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_file(
        dir.path(),
        "agent.toml",
        &format!(
            "node_name = \"test-node\"\nkubepods_paths = [\"{}/kubepods\"]\n{extra}",
            pod.parent
        ),
    );
    stdout_of(
        selfheal()
            .args([
                "agent",
                "--once",
                "--once-gap-ms",
                &gap_ms.to_string(),
                "--config",
            ])
            .arg(&config),
    )
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').expect("comm").1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

fn pod_metric(out: &str, uid: &str, family: Family, metric: Metric) -> Option<f64> {
    envelopes(out).into_iter().find_map(|e| {
        let r = e.record().clone();
        match &r.subject {
            Subject::Pod(p) if p.uid == uid && r.family == family => r.values.get(&metric).copied(),
            _ => None,
        }
    })
}

#[test]
fn real_cgroups_cpu_memory_and_removal() {
    let _machine = machine();
    let mut pod = match RealPod::create("collect") {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED real cgroup test: {why}");
            return;
        }
    };
    // Niced up so that parallel tests and builds cannot starve it below one core.
    let burner = pod.spawn("nice -n -10 sh -c 'while :; do :; done'");
    let hog =
        pod.spawn("python3 -c 'import time; b = bytes(range(256)) * (1 << 20); time.sleep(120)'");
    wait_until(30, "the memory hog never filled its 256 MiB", || {
        rss_bytes(hog) >= 250 << 20
    });

    let ticks0 = cpu_ticks(burner);
    let t0 = std::time::Instant::now();
    let stdout = agent_once(&pod, 3000);
    let truth = (cpu_ticks(burner) - ticks0) as f64 / 100.0 / t0.elapsed().as_secs_f64();

    let cores = pod_metric(&stdout, &pod.uid, Family::Cpu, Metric::CpuUsageCores)
        .expect("the pod's CPU usage is reported");
    eprintln!("agent: {cores:.3} cores; the burner's own accounting: {truth:.3} cores");
    // The burner is one busy loop: one core when the machine has one to give it.
    assert!(
        truth > 0.5,
        "the burner only got {truth:.2} cores: machine overloaded"
    );
    assert!(
        (cores - truth).abs() <= 0.15 * truth,
        "agent {cores} vs truth {truth}"
    );
    if truth > 0.9 {
        assert!(
            (cores - 1.0).abs() <= 0.15,
            "agent {cores}, expected ~1 core"
        );
    }

    let ws = pod_metric(
        &stdout,
        &pod.uid,
        Family::Memory,
        Metric::MemoryWorkingSetBytes,
    )
    .expect("the pod's working set is reported");
    let rss = rss_bytes(hog) as f64;
    eprintln!(
        "agent working set {:.1} MiB; hog RSS {:.1} MiB",
        ws / 1048576.0,
        rss / 1048576.0
    );
    assert!(
        (ws - rss).abs() <= 0.10 * rss,
        "working set {ws} vs RSS {rss}"
    );

    // Remove the pod: its series disappear from the next cycle and its state is dropped.
    let settings = AgentConfig {
        node_name: Some("test-node".into()),
        kubepods_paths: vec![PathBuf::from(format!("{}/kubepods", pod.parent))],
        ..AgentConfig::default()
    }
    .validate()
    .expect("settings");
    let mut pipeline = Pipeline::new(&settings);
    let dirpods = PodDirectory::default();
    let mut errs = CycleErrors::default();
    pipeline.cycle(&dirpods, &mut errs);
    let series_with_pod = pipeline.normalizer().series_count();
    let uid = pod.uid.clone();
    drop(pod);
    let records = pipeline.cycle(&dirpods, &mut errs);
    assert!(
        !records
            .iter()
            .any(|r| matches!(&r.subject, Subject::Pod(p) if p.uid == uid)),
        "series of a removed pod must disappear"
    );
    assert_eq!(pipeline.normalizer().series_count(), series_with_pod - 1);
}

#[test]
fn a_pod_in_the_local_pod_directory_is_named_after_its_deployment() {
    let _machine = machine();
    let mut pod = match RealPod::create("dir") {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED pod directory test: {why}");
            return;
        }
    };
    pod.spawn("sleep 60");
    let pods = tempfile::tempdir().expect("tempdir");
    // The Deployment controller's naming: ReplicaSet `<deployment>-<hash>`, the hash as a label.
    let json = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"uid":"{uid}",
        "name":"checkout-6f7c9d8b5-q2w3e","namespace":"chaos",
        "labels":{{"pod-template-hash":"6f7c9d8b5"}},
        "ownerReferences":[{{"apiVersion":"apps/v1","kind":"ReplicaSet",
        "name":"checkout-6f7c9d8b5","controller":true}}]}},
        "spec":{{"nodeName":"test-node","containers":[{{"name":"app"}}]}},
        "status":{{"phase":"Running","qosClass":"Burstable",
        "containerStatuses":[{{"name":"app","ready":true,"restartCount":4,"state":{{"running":{{}}}}}}]}}}}"#,
        uid = pod.uid
    );
    write_file(pods.path(), &format!("{}.json", pod.uid), &json);
    // Files that are not pods are skipped, not fatal.
    write_file(pods.path(), "garbage.json", "{ not json");
    let extra = format!(
        "[pods]\nsource = \"dir\"\ndir = \"{}\"\n",
        pods.path().display()
    );
    let stdout = agent_once_with(&pod, 500, &extra);
    let subjects: Vec<(Subject, Family, Option<f64>)> = envelopes(&stdout)
        .into_iter()
        .map(|e| {
            let r = e.record().clone();
            let restarts = r.values.get(&Metric::RestartsTotal).copied();
            (r.subject, r.family, restarts)
        })
        .collect();
    let ours: Vec<&(Subject, Family, Option<f64>)> = subjects
        .iter()
        .filter(|(s, _, _)| matches!(s, Subject::Pod(p) if p.uid == pod.uid))
        .collect();
    assert!(!ours.is_empty(), "the pod's records: {subjects:?}");
    for (s, _, _) in &ours {
        assert_eq!(s.workload_key("test-node"), "chaos/Deployment/checkout");
    }
    let restarts = ours
        .iter()
        .find_map(|(_, f, r)| (*f == Family::Restarts).then_some(*r).flatten());
    assert_eq!(restarts, Some(4.0), "restart count from containerStatuses");

    // A bad [pods] dir stops the start, naming the field.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_file(
        dir.path(),
        "agent.toml",
        "node_name = \"n\"\n[pods]\nsource = \"dir\"\ndir = \"/nonexistent/pods\"\n",
    );
    let out = selfheal()
        .args(["agent", "--once", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pods.dir"), "{err}");
}

/// A pair of network namespaces joined by a veth, made for one test and deleted on drop: the
/// pod's namespace and a peer it can send to. Nothing leaves them.
struct NetnsPair {
    pod: String,
    peer: String,
}

impl NetnsPair {
    fn create() -> Result<NetnsPair, String> {
        let id = std::process::id();
        let pair = NetnsPair {
            pod: format!("selfheal-pod-{id}"),
            peer: format!("selfheal-peer-{id}"),
        };
        let (a, b) = (format!("shp{id}"), format!("shq{id}"));
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &pair.pod],
            vec!["netns", "add", &pair.peer],
            vec!["link", "add", &a, "type", "veth", "peer", "name", &b],
            vec!["link", "set", &a, "netns", &pair.pod],
            vec!["link", "set", &b, "netns", &pair.peer],
            vec!["-n", &pair.pod, "addr", "add", "169.254.77.1/30", "dev", &a],
            vec![
                "-n",
                &pair.peer,
                "addr",
                "add",
                "169.254.77.2/30",
                "dev",
                &b,
            ],
            vec!["-n", &pair.pod, "link", "set", &a, "up"],
            vec!["-n", &pair.peer, "link", "set", &b, "up"],
        ];
        for step in steps {
            let out = Command::new("ip")
                .args(&step)
                .output()
                .map_err(|e| format!("cannot run ip: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "ip {}: {}",
                    step.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(pair)
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.pod, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn tx_bytes(pid: u32, dev_prefix: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).expect("net/dev");
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| name.trim().starts_with(dev_prefix))
        .map(|(_, rest)| {
            rest.split_whitespace()
                .nth(8)
                .and_then(|v| v.parse::<u64>().ok())
                .expect("tx_bytes")
        })
        .sum()
}

#[test]
fn real_pod_traffic_is_read_from_the_pods_network_namespace() {
    let _machine = machine();
    let mut pod = match RealPod::create("net") {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED pod network test: {why}");
            return;
        }
    };
    let ns = match NetnsPair::create() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("SKIPPED pod network test: cannot create network namespaces: {why}");
            return;
        }
    };
    // A bounded UDP flood from the pod's namespace to its peer (90 s at most).
    let flooder = pod.spawn(&format!(
        "ip netns exec {} python3 -c 'import socket,time\n\
         s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         p=bytes(1400); end=time.time()+90\n\
         while time.time()<end:\n    s.sendto(p,(\"169.254.77.2\",9))'",
        ns.pod
    ));
    let dev = format!("shp{}", std::process::id());
    wait_until(20, "the flood never started", || {
        tx_bytes(flooder, &dev) >= 1 << 20
    });

    let b0 = tx_bytes(flooder, &dev);
    let t0 = std::time::Instant::now();
    let stdout = agent_once(&pod, 2000);
    let truth = (tx_bytes(flooder, &dev) - b0) as f64 / t0.elapsed().as_secs_f64();
    let tx = pod_metric(&stdout, &pod.uid, Family::Traffic, Metric::NetTxBytesPerSec)
        .expect("the pod's traffic is reported");
    eprintln!(
        "agent: pod sends {:.1} MB/s; the interface's own counter: {:.1} MB/s",
        tx / 1e6,
        truth / 1e6
    );
    assert!(
        truth > 1e6,
        "the flood is too slow to measure ({truth} B/s)"
    );
    assert!(
        (tx - truth).abs() <= 0.25 * truth,
        "agent {tx} vs interface {truth}"
    );
    // The node's traffic is the host namespace's: the flood is not counted there.
    let node_tx = envelopes(&stdout)
        .iter()
        .find_map(|e| {
            let r = e.record();
            (r.subject == Subject::Node && r.family == Family::Traffic)
                .then(|| r.values.get(&Metric::NetTxBytesPerSec).copied())
                .flatten()
        })
        .expect("node traffic");
    assert!(
        node_tx < 0.5 * truth,
        "node tx {node_tx} counts the pod's flood {truth}"
    );
}
