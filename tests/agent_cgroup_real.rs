//! The agent on this machine's real cgroups, with real processes burning CPU and holding memory.
//!
//! The test builds a kubelet-like `kubepods/burstable/pod<uid>/<container>` tree inside a
//! uniquely named parent in the cgroup v1 `cpu`, `cpuacct` and `memory` hierarchies (v2 where the
//! host has controllers), starts processes inside it, and checks the agent against ground truth
//! read from the processes themselves. Where the machine forbids creating cgroups the test says
//! why and skips.

use crate::support::{KillOnDrop, selfheal, write_file};
use selfheal_agent::collect::CycleErrors;
use selfheal_agent::config::AgentConfig;
use selfheal_agent::pods::PodDirectory;
use selfheal_agent::run::Pipeline;
use selfheal_core::schema::{Envelope, Subject};
use selfheal_core::{Family, Metric};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const ROOT: &str = "/sys/fs/cgroup";

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
    out.lines()
        .map(|l| serde_json::from_str::<Envelope>(l).expect("JSON envelope per line"))
        .find_map(|e| {
            let r = e.record().clone();
            match &r.subject {
                Subject::Pod(p) if p.uid == uid && r.family == family => {
                    r.values.get(&metric).copied()
                }
                _ => None,
            }
        })
}

#[test]
fn real_cgroups_cpu_memory_and_removal() {
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
    // Wait (bounded) for the hog to fill its 256 MiB.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while rss_bytes(hog) < 250 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the memory hog never filled its memory"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_file(
        dir.path(),
        "agent.toml",
        &format!(
            "node_name = \"test-node\"\nkubepods_paths = [\"{}/kubepods\"]\n",
            pod.parent
        ),
    );
    let ticks0 = cpu_ticks(burner);
    let t0 = std::time::Instant::now();
    let out = selfheal()
        .args(["agent", "--once", "--once-gap-ms", "3000", "--config"])
        .arg(&config)
        .output()
        .expect("run agent");
    let truth = (cpu_ticks(burner) - ticks0) as f64 / 100.0 / t0.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf8");

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
