//! `selfheal chaos` through the real binary, on this machine's real cgroups and processes.
//!
//! Each test gives its runs a cgroup parent of its own (`--cgroup-parent`), a data directory
//! of its own, and a [`Leftovers`] guard that, even when an assertion fails, stops the run and
//! removes whatever cgroup it left, so a failing test never leaves load or cgroups behind. The
//! tests then check the run's own cleanup: after it ends there must be no process, no cgroup
//! and no pod file.

use crate::support::{envelopes, selfheal, write_file};
use selfheal_core::schema::Subject;
use selfheal_core::{Family, Metric};
use selfheal_lake::labels::{FaultKind, read_labels};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROOT: &str = "/sys/fs/cgroup";

/// The runs load the machine on purpose: one test at a time.
static MACHINE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The cgroup hierarchies a run uses here (v2, or v1's cpu, cpuacct and memory).
fn hierarchies() -> Vec<PathBuf> {
    let root = Path::new(ROOT);
    if root.join("cgroup.controllers").is_file() {
        vec![root.to_owned()]
    } else {
        ["cpu", "cpuacct", "memory"]
            .iter()
            .map(|c| root.join(c))
            .collect()
    }
}

/// A test's data directory and cgroup parent; on drop, kills the run and removes every cgroup
/// left under the parent (processes killed first, directories leaf first).
struct Leftovers {
    data: tempfile::TempDir,
    parent: String,
    run: Option<Child>,
}

impl Leftovers {
    /// `None` (the test skips) where this machine does not let us make cgroups.
    fn new(tag: &str) -> Option<Leftovers> {
        let parent = format!("selfheal-chaos-test-{tag}-{}", std::process::id());
        for h in hierarchies() {
            let probe = h.join(&parent);
            if let Err(e) = std::fs::create_dir_all(&probe) {
                eprintln!(
                    "SKIPPED chaos test: cannot create cgroup {}: {e}",
                    probe.display()
                );
                return None;
            }
            let _ = std::fs::remove_dir(&probe);
        }
        Some(Leftovers {
            data: tempfile::tempdir().expect("tempdir"),
            parent,
            run: None,
        })
    }

    fn data_dir(&self) -> &Path {
        self.data.path()
    }

    fn pods_dir(&self) -> PathBuf {
        self.data.path().join("pods")
    }

    /// `selfheal chaos <args> --data-dir ... --cgroup-parent ... --node test-node`.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = selfheal();
        c.arg("chaos")
            .args(args)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--cgroup-parent", &self.parent, "--node", "test-node"])
            .arg("--labels-out")
            .arg(self.data_dir().join("labels.json"));
        c
    }

    /// Starts a run in the background, stdout piped.
    fn start(&mut self, args: &[&str]) -> u32 {
        let child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn selfheal chaos");
        let pid = child.id();
        self.run = Some(child);
        pid
    }

    /// Waits for the background run to exit; returns its exit code and stdout.
    fn wait(&mut self, secs: u64) -> (Option<i32>, String) {
        let mut child: Child = self.run.take().expect("a run");
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                let mut out = String::new();
                if let Some(mut s) = child.stdout.take() {
                    use std::io::Read;
                    s.read_to_string(&mut out).expect("stdout");
                }
                return (status.code(), out);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the chaos run did not end within {secs}s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pod files in the data directory.
    fn pod_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.pods_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits for the run's pod file and returns the Pod JSON.
    fn wait_for_pod(&self) -> serde_json::Value {
        wait_until(20, "the run never wrote its pod file", || {
            self.pod_files().len() == 1
        });
        let path = &self.pod_files()[0];
        serde_json::from_slice(&std::fs::read(path).expect("pod file")).expect("pod JSON")
    }

    /// The pod-level cgroup directories of `uid`.
    fn pod_cgroups(&self, uid: &str) -> Vec<PathBuf> {
        hierarchies()
            .iter()
            .map(|h| {
                h.join(&self.parent)
                    .join("kubepods/burstable")
                    .join(format!("pod{uid}"))
            })
            .collect()
    }

    /// Every cgroup directory left under the parent, in any hierarchy.
    fn cgroups_left(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for h in hierarchies() {
            let mut stack = vec![h.join(&self.parent)];
            while let Some(d) = stack.pop() {
                if d.is_dir() {
                    out.push(d.clone());
                    if let Ok(rd) = std::fs::read_dir(&d) {
                        stack.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
                    }
                }
            }
        }
        out
    }

    /// Asserts the run left nothing: no pod file, no cgroup, none of `pids` alive.
    fn assert_clean(&self, pids: &[u32]) {
        assert_eq!(self.pod_files(), Vec::<PathBuf>::new(), "pod files left");
        assert_eq!(self.cgroups_left(), Vec::<PathBuf>::new(), "cgroups left");
        for pid in pids {
            assert!(
                !alive(*pid),
                "worker {pid} still running after the run ended"
            );
        }
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if let Some(mut run) = self.run.take() {
            let _ = run.kill();
            let _ = run.wait();
        }
        let mut dirs = self.cgroups_left();
        for d in &dirs {
            if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    if let Some(p) = rustix::process::Pid::from_raw(pid) {
                        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        // Deepest first.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

fn alive(pid: u32) -> bool {
    // A zombie is dead for our purpose (its parent has not reaped it yet).
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

fn wait_until(secs: u64, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ready() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn procs_of(pod: &Path) -> Vec<u32> {
    std::fs::read_to_string(pod.join("app/cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn sigterm(pid: u32) {
    let p = rustix::process::Pid::from_raw(pid as i32).expect("pid");
    rustix::process::kill_process(p, rustix::process::Signal::TERM).expect("SIGTERM");
}

fn labels(data: &Path) -> Vec<selfheal_lake::labels::LabelWindow> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = selfheal_lake::LakeStore::open(
            &data.join("lake").to_string_lossy(),
            &selfheal_lake::S3Options::default(),
        )
        .await
        .expect("lake");
        read_labels(&store).await.expect("labels")
    })
}

#[test]
fn chaos_cpu_is_a_pod_of_its_deployment_under_its_quota_and_sigterm_leaves_nothing() {
    let _m = MACHINE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut t) = Leftovers::new("cpu") else {
        return;
    };
    let pid = t.start(&["run", "cpu", "--duration", "60", "--cpu-cores", "0.5"]);
    let pod = t.wait_for_pod();
    let uid = pod["metadata"]["uid"].as_str().expect("uid").to_owned();
    let cgroups = t.pod_cgroups(&uid);
    wait_until(10, "the CPU worker never joined the pod", || {
        cgroups.iter().all(|c| !procs_of(c).is_empty())
    });
    let workers = procs_of(&cgroups[0]);
    // The caps are the pod cgroup's own limits.
    if !Path::new(ROOT).join("cgroup.controllers").is_file() {
        let cpu = Path::new(ROOT).join("cpu").join(&t.parent);
        let pod_cpu = cpu.join(format!("kubepods/burstable/pod{uid}"));
        assert_eq!(read_u64(&pod_cpu.join("cpu.cfs_quota_us")), 50_000);
        assert_eq!(read_u64(&pod_cpu.join("cpu.cfs_period_us")), 100_000);
        let mem = Path::new(ROOT)
            .join("memory")
            .join(&t.parent)
            .join(format!("kubepods/burstable/pod{uid}"));
        assert_eq!(read_u64(&mem.join("memory.limit_in_bytes")), 256 << 20);
    }

    // The agent, reading the pods directory and the chaos parent, names the pod after its
    // Deployment and sees it held to half a core.
    let cfg = tempfile::tempdir().expect("tempdir");
    let config = write_file(
        cfg.path(),
        "agent.toml",
        &format!(
            "node_name = \"test-node\"\nkubepods_paths = [\"{}/kubepods\"]\n\
             [pods]\nsource = \"dir\"\ndir = \"{}\"\n",
            t.parent,
            t.pods_dir().display()
        ),
    );
    let out = selfheal()
        .args(["agent", "--once", "--once-gap-ms", "3000", "--config"])
        .arg(&config)
        .output()
        .expect("agent");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let cores = envelopes(&stdout)
        .into_iter()
        .find_map(|e| {
            let r = e.record().clone();
            match &r.subject {
                Subject::Pod(p) if p.uid == uid && r.family == Family::Cpu => {
                    assert_eq!(
                        r.subject.workload_key("test-node"),
                        "chaos/Deployment/chaos-cpu"
                    );
                    r.values.get(&Metric::CpuUsageCores).copied()
                }
                _ => None,
            }
        })
        .expect("the agent reports the chaos pod's CPU");
    eprintln!("chaos cpu pod under a 0.5-core quota: agent reads {cores:.3} cores");
    assert!(cores <= 0.55, "the quota holds: {cores} cores");
    assert!(cores >= 0.3, "the fault saturates its share: {cores} cores");

    // SIGTERM: a clean stop, early, with the window written.
    let t0 = Instant::now();
    sigterm(pid);
    let (code, stdout) = t.wait(15);
    eprintln!("stopped in {:?}; stdout:\n{stdout}", t0.elapsed());
    assert_eq!(code, Some(130), "a stopped run exits 130");
    assert!(stdout.contains("cpu stopped"), "{stdout}");
    t.assert_clean(&workers);
    let ws = labels(t.data_dir());
    assert_eq!(ws.len(), 1, "{ws:?}");
    let w = &ws[0];
    assert_eq!(w.kind, FaultKind::Cpu);
    assert_eq!(w.target, "chaos/Deployment/chaos-cpu");
    assert_eq!(w.node, "test-node");
    assert_eq!(w.pod_uid.as_deref(), Some(uid.as_str()));
    assert!(
        w.end_ms - w.start_ms >= 3000 && w.end_ms - w.start_ms < 60_000,
        "{w:?}"
    );
    let file: serde_json::Value = serde_json::from_slice(
        &std::fs::read(t.data_dir().join("labels.json")).expect("labels-out"),
    )
    .expect("json");
    assert_eq!(
        file["cpu/chaos/Deployment/chaos-cpu"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(file["cpu/node/test-node"].as_array().map(Vec::len), Some(1));
}

#[test]
fn chaos_restart_counts_restarts_in_the_pod_and_memory_grows_to_its_ceiling() {
    let _m = MACHINE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut t) = Leftovers::new("restart") else {
        return;
    };
    t.start(&[
        "run",
        "restart",
        "--duration",
        "5",
        "--restart-every-secs",
        "1",
    ]);
    let pod = t.wait_for_pod();
    let uid = pod["metadata"]["uid"].as_str().expect("uid").to_owned();
    let mut seen_restarts = 0;
    let mut containers = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !t.pod_files().is_empty() {
        if let Some(p) = t.pod_files().first()
            && let Ok(bytes) = std::fs::read(p)
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
        {
            let s = &v["status"]["containerStatuses"][0];
            seen_restarts = seen_restarts.max(s["restartCount"].as_u64().unwrap_or(0));
            if seen_restarts > 0 {
                assert_eq!(s["lastState"]["terminated"]["exitCode"], 137);
            }
        }
        for c in t.pod_cgroups(&uid) {
            containers.extend(procs_of(&c));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, stdout) = t.wait(15);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        seen_restarts >= 3,
        "restarts seen in the pod file: {seen_restarts}"
    );
    assert!(containers.len() >= 3, "container processes: {containers:?}");
    let workers: Vec<u32> = containers.into_iter().collect();
    t.assert_clean(&workers);
    let ws = labels(t.data_dir());
    assert_eq!(ws.len(), 1);
    assert_eq!(ws[0].kind, FaultKind::Restart);
    let secs = (ws[0].end_ms - ws[0].start_ms) as f64 / 1000.0;
    assert!((4.9..6.5).contains(&secs), "window {secs}s for a 5 s run");

    // Memory: the leak grows to the ceiling less its headroom and stays under the limit.
    t.start(&[
        "run",
        "memory",
        "--duration",
        "8",
        "--memory-mib",
        "128",
        "--leak-mib-per-sec",
        "64",
    ]);
    let pod = t.wait_for_pod();
    let uid = pod["metadata"]["uid"].as_str().expect("uid").to_owned();
    let mem = hierarchies()
        .into_iter()
        .find(|h| h.ends_with("memory") || h.join("cgroup.controllers").is_file())
        .expect("memory hierarchy");
    let v2 = mem.join("cgroup.controllers").is_file();
    let pod_mem = mem
        .join(&t.parent)
        .join(format!("kubepods/burstable/pod{uid}"));
    let (usage_file, limit_file) = if v2 {
        ("memory.current", "memory.max")
    } else {
        ("memory.usage_in_bytes", "memory.limit_in_bytes")
    };
    assert_eq!(read_u64(&pod_mem.join(limit_file)), 128 << 20);
    let mut workers = Vec::new();
    wait_until(8, "the leak never reached 90 MiB", || {
        workers.extend(procs_of(&pod_mem));
        read_u64(&pod_mem.join(usage_file)) >= 90 << 20
    });
    let usage = read_u64(&pod_mem.join(usage_file));
    eprintln!("memory fault: {} MiB under a 128 MiB limit", usage >> 20);
    assert!(usage <= 128 << 20);
    let (code, stdout) = t.wait(20);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("memory completed"), "{stdout}");
    t.assert_clean(&workers);
    assert_eq!(labels(t.data_dir()).len(), 2);
}

#[test]
fn chaos_traffic_floods_loopback_only_and_a_schedule_runs_its_series() {
    let _m = MACHINE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut t) = Leftovers::new("traffic") else {
        return;
    };
    // Refusals come before anything is made.
    for (args, needle) in [
        (
            vec!["run", "traffic", "--target", "10.0.0.1:80"],
            "--target",
        ),
        (vec!["run", "traffic", "--target", "[::1]:80"], "--target"),
        (vec!["run", "cpu", "--duration", "3601"], "--duration"),
        (vec!["run", "cpu", "--cpu-cores", "64"], "--cpu-cores"),
        (
            vec!["run", "memory", "--memory-mib", "999999"],
            "--memory-mib",
        ),
        (
            vec!["run", "cpu", "--namespace", "shop", "--selector", "app=web"],
            "not supported yet",
        ),
    ] {
        let out = t.command(&args).output().expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    t.assert_clean(&[]);

    // A flood against the pod's own sink: two processes in the pod, bytes on loopback.
    let lo_tx = || -> u64 {
        std::fs::read_to_string("/proc/net/dev")
            .expect("net/dev")
            .lines()
            .find_map(|l| l.trim().strip_prefix("lo:").map(str::to_owned))
            .and_then(|r| r.split_whitespace().nth(8).and_then(|v| v.parse().ok()))
            .expect("lo")
    };
    let before = lo_tx();
    t.start(&["run", "traffic", "--duration", "4"]);
    let pod = t.wait_for_pod();
    let uid = pod["metadata"]["uid"].as_str().expect("uid").to_owned();
    let cg = t.pod_cgroups(&uid);
    let mut workers = Vec::new();
    wait_until(5, "sink and flood never both ran in the pod", || {
        workers = procs_of(&cg[0]);
        workers.len() >= 2
    });
    let (code, stdout) = t.wait(15);
    assert_eq!(code, Some(0), "{stdout}");
    let sent = lo_tx() - before;
    eprintln!(
        "traffic fault: {} MB over loopback in 4 s",
        sent / 1_000_000
    );
    assert!(sent > 50_000_000, "only {sent} bytes on loopback");
    t.assert_clean(&workers);

    // A schedule: progress line per run, a window per run, quiet between.
    let sched = write_file(
        t.data_dir(),
        "schedule.toml",
        "quiet_secs = 1\n[[runs]]\nkind = \"cpu\"\nduration_secs = 2\ncpu_cores = 0.2\n\
         [[runs]]\nkind = \"restart\"\nduration_secs = 2\nrestart_every_secs = 1\n",
    );
    let out = t
        .command(&["schedule", &sched.to_string_lossy()])
        .output()
        .expect("schedule");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "[1/2] cpu against chaos/Deployment/chaos-cpu",
        "[1/2] cpu completed",
        "quiet 1s",
        "[2/2] restart completed",
    ] {
        assert!(stdout.contains(needle), "{needle:?} in {stdout}");
    }
    t.assert_clean(&[]);
    let kinds: Vec<FaultKind> = labels(t.data_dir()).iter().map(|w| w.kind).collect();
    assert_eq!(
        kinds,
        [FaultKind::Traffic, FaultKind::Cpu, FaultKind::Restart]
    );
    let ws = labels(t.data_dir());
    assert!(
        ws[2].start_ms - ws[1].end_ms >= 1000,
        "the quiet gap: {ws:?}"
    );
}
