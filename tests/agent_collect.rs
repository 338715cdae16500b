//! The collect → normalize path on recorded fixture trees and hostile procfs contents.

use crate::support::{cgroup_fixture, fixture, write_file};
use selfheal_agent::collect::CycleErrors;
use selfheal_agent::collect::Pipeline;
use selfheal_agent::collect::cgroup::{CgroupMode, CgroupReader};
use selfheal_agent::collect::pods::PodDirectory;
use selfheal_agent::collect::procfs::CollectError;
use selfheal_agent::config::{AgentConfig, Settings};
use selfheal_core::schema::{QosClass, Record, Subject};
use selfheal_core::{Family, Metric};
use std::path::{Path, PathBuf};

const GUARANTEED: &str = "0c6d1a3e-7a0e-4d55-9d8e-1f6a2b3c4d5e";
const BURSTABLE: &str = "5b2f9c71-3e44-4a8b-b1f0-9a8e7d6c5b4a";
const BESTEFFORT: &str = "a9e8d7c6-b5a4-4321-8fed-cba987654321";

fn settings(cgroup_root: &Path, proc_root: Option<&Path>) -> Settings {
    AgentConfig {
        node_name: Some("node-a".into()),
        cgroup_root: Some(cgroup_root.to_owned()),
        proc_root: proc_root.map_or_else(|| PathBuf::from("/proc"), Path::to_owned),
        ..AgentConfig::default()
    }
    .validate()
    .expect("valid settings")
}

fn pod_value(records: &[Record], uid: &str, family: Family, metric: Metric) -> Option<f64> {
    records.iter().find_map(|r| match &r.subject {
        Subject::Pod(p) if p.uid == uid && r.family == family => r.values.get(&metric).copied(),
        _ => None,
    })
}

fn discover(root: &Path) -> (CgroupMode, Vec<(String, QosClass)>) {
    let r = CgroupReader::new(
        root,
        &[PathBuf::from("kubepods.slice"), PathBuf::from("kubepods")],
    )
    .expect("hierarchy");
    let pods = r.discover().into_iter().map(|p| (p.uid, p.qos)).collect();
    (r.mode(), pods)
}

#[test]
fn recorded_fixture_trees_are_parsed_to_the_right_pods() {
    for (layout, mode) in [
        ("cgroup/v2-systemd", CgroupMode::V2),
        ("cgroup/v1-cgroupfs", CgroupMode::V1),
    ] {
        let (found, pods) = discover(&fixture(layout));
        assert_eq!(found, mode, "{layout}");
        assert_eq!(
            pods,
            vec![
                (GUARANTEED.to_owned(), QosClass::Guaranteed),
                (BURSTABLE.to_owned(), QosClass::Burstable),
                (BESTEFFORT.to_owned(), QosClass::BestEffort),
            ],
            "{layout}"
        );
    }
}

#[test]
fn fixture_values_are_normalized_identically_on_v1_and_v2() {
    for layout in ["cgroup/v2-systemd", "cgroup/v1-cgroupfs"] {
        let mut p = Pipeline::new(&settings(&fixture(layout), None));
        let mut errs = CycleErrors::default();
        let records = p.cycle(&PodDirectory::default(), &mut errs);
        // The fixture pids do not exist on this machine: no pod traffic, and no error for it.
        assert!(errs.errors.is_empty(), "{layout}: {:?}", errs.errors);
        let g = |uid, f, m| pod_value(&records, uid, f, m);
        assert_eq!(
            g(GUARANTEED, Family::Cpu, Metric::CpuLimitCores),
            Some(2.0),
            "{layout}"
        );
        assert_eq!(
            g(BURSTABLE, Family::Cpu, Metric::CpuLimitCores),
            None,
            "{layout}"
        );
        assert_eq!(
            g(GUARANTEED, Family::Memory, Metric::MemoryWorkingSetBytes),
            Some((268_435_456 - 16_777_216) as f64),
            "{layout}"
        );
        assert_eq!(
            g(BURSTABLE, Family::Memory, Metric::MemoryLimitUsageRatio),
            Some((134_217_728.0 - 33_554_432.0) / 1_073_741_824.0),
            "{layout}"
        );
        assert_eq!(
            g(BESTEFFORT, Family::Memory, Metric::MemoryLimitBytes),
            None,
            "{layout}"
        );
        // Counters need two readings: no CPU usage in the first.
        assert_eq!(
            g(GUARANTEED, Family::Cpu, Metric::CpuUsageCores),
            None,
            "{layout}"
        );
    }
}

/// A pod tree in a temp dir that tests can change between cycles.
fn temp_tree(pods: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    cgroup_fixture::write_v2_pods(dir.path(), pods, 1);
    dir
}

#[test]
fn rates_resets_and_gone_pods() {
    let dir = temp_tree(3);
    let mut p = Pipeline::new(&settings(dir.path(), None));
    let pods = PodDirectory::default();
    let mut errs = CycleErrors::default();
    p.cycle(&pods, &mut errs);
    std::thread::sleep(std::time::Duration::from_millis(200));
    cgroup_fixture::write_v2_pods(dir.path(), 3, 2);
    let r = p.cycle(&pods, &mut errs);
    let uid0 = cgroup_fixture::pod_uid(0);
    let cores = pod_value(&r, &uid0, Family::Cpu, Metric::CpuUsageCores).expect("cpu rate");
    // 1 s of CPU in ~0.2 s of wall time.
    assert!(cores > 2.0 && cores < 6.0, "cores {cores}");
    let throttled = pod_value(&r, &uid0, Family::Cpu, Metric::CpuThrottledRatio).expect("ratio");
    assert!((throttled - 0.01).abs() < 1e-9, "{throttled}");
    assert!(pod_value(&r, &uid0, Family::Pressure, Metric::PsiCpuSomeRatio).is_some());

    // The cgroup is recreated: counters restart from a small value. No panic, no negative rate,
    // one reset counted per counter that went back.
    let before = p.normalizer().stats().counter_resets;
    cgroup_fixture::write_v2_pods(dir.path(), 3, 0);
    let r = p.cycle(&pods, &mut errs);
    let cores = pod_value(&r, &uid0, Family::Cpu, Metric::CpuUsageCores).expect("cpu rate");
    assert!(cores >= 0.0);
    assert!(p.normalizer().stats().counter_resets > before);

    // Pod 2 goes away: its series disappear and its state is dropped.
    assert_eq!(p.normalizer().series_count(), 4);
    let gone = cgroup_fixture::pod_uid(2).replace('-', "_");
    std::fs::remove_dir_all(
        dir.path()
            .join("kubepods.slice/kubepods-burstable.slice")
            .join(format!("kubepods-burstable-pod{gone}.slice")),
    )
    .expect("remove pod");
    let r = p.cycle(&pods, &mut errs);
    assert!(
        pod_value(
            &r,
            &cgroup_fixture::pod_uid(2),
            Family::Memory,
            Metric::MemoryCurrentBytes
        )
        .is_none()
    );
    assert_eq!(p.normalizer().series_count(), 3);
    assert!(errs.errors.is_empty(), "{:?}", errs.errors);
}

#[test]
fn a_pod_that_vanishes_between_discovery_and_read_is_not_an_error() {
    let dir = temp_tree(2);
    let r = CgroupReader::new(dir.path(), &[PathBuf::from("kubepods.slice")]).expect("v2");
    let pods = r.discover();
    assert_eq!(pods.len(), 2);
    std::fs::remove_dir_all(dir.path().join(&pods[0].rel)).expect("remove");
    let mut buf = Vec::new();
    let mut errors = Vec::new();
    let mut cache = selfheal_agent::collect::cgroup::PodCache::default();
    let sample = r.read(&pods[0], &mut cache, &mut buf, &mut errors);
    assert_eq!(sample.memory_current, None);
    assert!(!errors.is_empty());
    // What the collector checks before counting the errors:
    assert!(!r.exists(&pods[0]));
    assert!(r.exists(&pods[1]));
}

#[test]
fn unreadable_and_garbage_files_are_counted_not_fatal() {
    let dir = temp_tree(1);
    // A directory where a file should be cannot be read; garbage cannot be parsed.
    let pod = CgroupReader::new(dir.path(), &[PathBuf::from("kubepods.slice")])
        .expect("v2")
        .discover()
        .remove(0);
    let pod_dir = dir.path().join(&pod.rel);
    std::fs::remove_file(pod_dir.join("memory.current")).expect("rm");
    std::fs::create_dir(pod_dir.join("memory.current")).expect("dir in place of file");
    std::fs::write(pod_dir.join("cpu.stat"), "\u{0}\u{ff}garbage\n").expect("garbage");

    let proc = tempfile::tempdir().expect("proc");
    write_file(proc.path(), "stat", "cpu 1 2 3 4 5 6 7 8\nctxt 10\n");
    write_file(proc.path(), "meminfo", "MemTotal: many kB\n");
    write_file(proc.path(), "loadavg", "0.1 0.2 0.3 1/2 3\n");
    std::fs::create_dir_all(proc.path().join("net")).expect("net");
    write_file(&proc.path().join("net"), "dev", "h\nh\n eth0: 1 2 3\n");
    write_file(proc.path(), "diskstats", "\u{1F4A5}\n");

    let mut p = Pipeline::new(&settings(dir.path(), Some(proc.path())));
    let mut errs = CycleErrors::default();
    let records = p.cycle(&PodDirectory::default(), &mut errs);
    let mut failed: Vec<(String, &str)> = errs
        .errors
        .iter()
        .map(|e| {
            let path = match e {
                CollectError::Read { path, .. } | CollectError::Parse { path, .. } => path,
            };
            let file = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_owned();
            (file, e.kind())
        })
        .collect();
    failed.sort();
    assert!(failed.contains(&("meminfo".into(), "parse")), "{failed:?}");
    assert!(failed.contains(&("dev".into(), "parse")), "{failed:?}");
    assert!(
        failed.contains(&("diskstats".into(), "parse")),
        "{failed:?}"
    );
    assert!(failed.contains(&("cpu.stat".into(), "parse")), "{failed:?}");
    assert!(
        failed.contains(&("memory.current".into(), "read")),
        "{failed:?}"
    );
    // What could be read still is: the pod's memory limit, the node's load.
    assert!(pod_value(&records, &pod.uid, Family::Memory, Metric::MemoryLimitBytes).is_some());
}
