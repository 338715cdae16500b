//! One agent cycle (collect + normalize) on this host's real procfs and a cgroup v2 tree with
//! 100 pods. Target: ≤ 2 ms per cycle. The cycle runs on one thread and reads files from the page
//! cache, so its wall time is an upper bound on its CPU time.
//!
//! `cargo bench --bench collect`

#[path = "../tests/support/cgroup_fixture.rs"]
mod cgroup_fixture;

use criterion::{Criterion, criterion_group, criterion_main};
use selfheal_agent::collect::CycleErrors;
use selfheal_agent::config::AgentConfig;
use selfheal_agent::pods::PodDirectory;
use selfheal_agent::run::Pipeline;
use std::hint::black_box;

fn cycle_100_pods(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
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
    c.bench_function("agent cycle: collect + normalize, 100 pods (v2)", |b| {
        b.iter(|| {
            let mut errs = CycleErrors::default();
            black_box(pipeline.cycle(&pods, &mut errs))
        })
    });
}

criterion_group!(benches, cycle_100_pods);
criterion_main!(benches);
