//! Builds cgroup v2 `kubepods.slice` trees with any number of pods, for tests and benches that
//! need more pods than the recorded fixtures hold.

#![allow(dead_code)]

use std::path::Path;

/// The UID of synthetic pod `i`.
pub fn pod_uid(i: usize) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", i, i)
}

fn write(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir fixture");
    }
    std::fs::write(path, text).expect("write fixture");
}

/// Writes a v2 systemd-driver tree with `pods` burstable pods under `root`. `tick` scales the
/// counters so two calls with different ticks look like two readings.
pub fn write_v2_pods(root: &Path, pods: usize, tick: u64) {
    for i in 0..pods {
        write_v2_pod(root, &pod_uid(i), i, tick);
    }
}

/// Writes one burstable pod with UID `uid` into a v2 systemd-driver tree under `root`; `i`
/// varies its values a little.
pub fn write_v2_pod(root: &Path, uid: &str, i: usize, tick: u64) {
    write(
        &root.join("cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    );
    {
        let u = uid.replace('-', "_");
        let d = root
            .join("kubepods.slice/kubepods-burstable.slice")
            .join(format!("kubepods-burstable-pod{u}.slice"));
        let usage = 1_000_000 * tick + i as u64 * 1000;
        write(
            &d.join("cpu.stat"),
            &format!(
                "usage_usec {usage}\nuser_usec {usage}\nsystem_usec 0\nnr_periods {}\nnr_throttled {}\nthrottled_usec {}\n",
                100 * tick,
                tick,
                1000 * tick
            ),
        );
        write(&d.join("cpu.max"), "200000 100000\n");
        write(
            &d.join("memory.current"),
            &format!("{}\n", 100_000_000 + i * 4096),
        );
        write(&d.join("memory.max"), "536870912\n");
        write(
            &d.join("memory.stat"),
            "anon 90000000\nfile 10000000\ninactive_file 5000000\n",
        );
        write(
            &d.join("memory.events"),
            "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
        );
        let psi = format!(
            "some avg10=0.00 avg60=0.00 avg300=0.00 total={}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total={}\n",
            500 * tick,
            100 * tick
        );
        for f in ["cpu.pressure", "memory.pressure", "io.pressure"] {
            write(&d.join(f), &psi);
        }
        write(&d.join("cgroup.procs"), "");
        write(&d.join("cri-containerd-0.scope/cgroup.procs"), "");
    }
}
