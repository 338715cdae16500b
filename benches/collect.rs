//! One agent cycle (collect + normalize) on this host's real procfs and a cgroup v2 tree with
//! 100 pods. Target: ≤ 2 ms of CPU per cycle. Two measurements: wall time (criterion's default)
//! and the thread's CPU time (user + system, `CLOCK_THREAD_CPUTIME_ID`), which is what the target
//! is about and what other load on the machine does not inflate.
//!
//! `cargo bench --bench collect`

#[path = "../tests/support/cgroup_fixture.rs"]
mod cgroup_fixture;

use criterion::{Criterion, criterion_group, criterion_main};
use selfheal_agent::collect::CycleErrors;
use selfheal_agent::collect::Pipeline;
use selfheal_agent::collect::pods::PodDirectory;
use selfheal_agent::config::AgentConfig;
use std::hint::black_box;
use std::time::Duration;

fn cycle_100_pods(c: &mut Criterion) {
    // cgroupfs lives in memory; so does the fixture tree, where the machine has a tmpfs.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("tempdir");
    cgroup_fixture::write_v2_pods(dir.path(), 100, 1);
    let settings = AgentConfig {
        node_name: Some("bench".into()),
        cgroup_root: Some(dir.path().to_owned()),
        ..AgentConfig::default()
    }
    .validate()
    .expect("settings");
    let mut pipeline = Pipeline::new(&settings);
    let pods = PodDirectory::default();
    let mut errs = CycleErrors::default();
    pipeline.cycle(&pods, &mut errs);
    assert_eq!(pipeline.last_pods().0, 100);
    c.bench_function("agent cycle, 100 pods: wall time", |b| {
        b.iter(|| {
            let mut errs = CycleErrors::default();
            black_box(pipeline.cycle(&pods, &mut errs))
        })
    });
    c.bench_function("agent cycle, 100 pods: thread CPU time", |b| {
        b.iter_custom(|iters| {
            let t0 = thread_cpu();
            for _ in 0..iters {
                let mut errs = CycleErrors::default();
                black_box(pipeline.cycle(&pods, &mut errs));
            }
            thread_cpu().saturating_sub(t0)
        })
    });
}

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

criterion_group!(benches, cycle_100_pods);
criterion_main!(benches);
