//! Pod identity end to end. First the Kubernetes API double is proven faithful by driving it
//! with the real `kubectl`; then the agent's [`PodWatcher`] runs against it: identities, watch
//! events, 410 Gone, a dying API server, token rotation, and the kubelet source.

use crate::support::fixture;
use crate::support::kube_double::{KubeDouble, pods};
use selfheal_agent::collect::pods::{
    PodDirectory, PodInfo, PodSource, PodStatsSnapshot, PodWatcher, PodsConfig, SharedPodDirectory,
    parse_pod_list,
};
use selfheal_core::schema::{OwnerRef, QosClass};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

const KUBECTL: &str = "/usr/bin/kubectl";
const WEB_UID: &str = "0f6c1d3a-2b4e-4c8a-9e71-5a2d7c4b8e01";
const DEBUG_UID: &str = "7e9d5b3f-1a2c-4e6b-9d8f-3a5c7e9b1d04";
const STATIC_APISERVER_UID: &str = "4b2a8f1e6c9d3b7a5e0f2c4d6b8a1e3f";
const NODE_B_UID: &str = "8c0e2a4b-6d1f-4e3a-b5c7-9d1e3f5a7b08";

fn pod_list_fixture() -> Value {
    let text = std::fs::read_to_string(fixture("kube/pods.json")).expect("read kube/pods.json");
    serde_json::from_str(&text).expect("kube/pods.json is JSON")
}

fn fixture_pod(name: &str) -> Value {
    pod_list_fixture()["items"]
        .as_array()
        .and_then(|items| items.iter().find(|p| p["metadata"]["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("{name} not in the fixture"))
}

// ---- (a) kubectl against the double ------------------------------------------------------

/// `kubectl --server <double> --token x <args>`, isolated from any kubeconfig or cache.
fn kubectl_cmd(double: &KubeDouble, home: &Path, args: &[&str]) -> Command {
    assert!(
        Path::new(KUBECTL).is_file(),
        "{KUBECTL} not found: run scripts/test.sh, which installs the test tools"
    );
    let mut c = Command::new(KUBECTL);
    c.env_clear()
        .env("HOME", home)
        .env("KUBECONFIG", home.join("no-kubeconfig"))
        .args([
            "--server",
            &double.url(),
            "--token",
            "x",
            "--request-timeout=10s",
        ])
        .arg(format!("--cache-dir={}", home.join("cache").display()))
        .args(args);
    c
}

fn kubectl(double: &KubeDouble, args: &[&str]) -> Output {
    let home = tempfile::tempdir().expect("kubectl home");
    kubectl_cmd(double, home.path(), args)
        .output()
        .expect("run kubectl")
}

fn stdout_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "kubectl failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Columns of the line starting with `name`, split on whitespace.
fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&name))
        .unwrap_or_else(|| panic!("no row {name} in\n{table}"))
}

#[test]
fn kubectl_lists_a_nodes_pods_as_json() {
    let double = KubeDouble::with_pod_list(&pod_list_fixture());
    let out = stdout_ok(&kubectl(
        &double,
        &[
            "get",
            "pods",
            "-A",
            "-o",
            "json",
            "--field-selector",
            "spec.nodeName=node-a",
        ],
    ));
    let list: Value = serde_json::from_str(&out).expect("kubectl printed JSON");
    assert_eq!(list["kind"], "List");
    let mut names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| p["metadata"]["name"].as_str().expect("name"))
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "db-0",
            "debug",
            "kube-apiserver-node-a",
            "migrate-29148300-8jx4p",
            "node-exporter-k8t2q",
            "web-7d4b9c8f6d-x2x9k",
            "worker-rs-hz7mq",
        ]
    );
    let web = &list["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|p| p["metadata"]["uid"] == WEB_UID)
        .expect("web pod")["status"]["containerStatuses"][0];
    assert_eq!(web["lastState"]["terminated"]["reason"], "OOMKilled");
    // The selector reached the server: kubectl did not filter client-side.
    assert!(
        double
            .store()
            .requests()
            .iter()
            .any(|r| r.contains("fieldSelector=spec.nodeName%3Dnode-a")),
        "{:?}",
        double.store().requests()
    );
}

#[test]
fn kubectl_prints_a_namespace_as_the_server_side_table() {
    let double = KubeDouble::with_pod_list(&pod_list_fixture());
    let out = stdout_ok(&kubectl(&double, &["get", "pods", "-n", "shop"]));
    let header: Vec<&str> = out
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    assert_eq!(out.lines().count(), 4, "{out}");
    assert_eq!(row(&out, "db-0")[1..4], ["1/1", "Running", "0"]);
    assert_eq!(
        row(&out, "web-7d4b9c8f6d-x2x9k")[1..4],
        ["2/2", "Running", "3"]
    );
    assert_eq!(
        row(&out, "web-7d4b9c8f6d-q5w8r")[1..4],
        ["2/2", "Running", "0"]
    );

    let out = stdout_ok(&kubectl(&double, &["get", "pods", "-A"]));
    let header: Vec<&str> = out
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(header[..2], ["NAMESPACE", "NAME"]);
    assert_eq!(out.lines().count(), 9, "{out}");
    assert_eq!(row(&out, "kube-system")[1], "kube-apiserver-node-a");

    let out = stdout_ok(&kubectl(&double, &["get", "namespaces", "-o", "name"]));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "namespace/batch",
            "namespace/default",
            "namespace/kube-system",
            "namespace/legacy",
            "namespace/monitoring",
            "namespace/shop",
        ]
    );

    let out = stdout_ok(&kubectl(&double, &["get", "pods", "-n", "default"]));
    assert_eq!(row(&out, "debug")[1..4], ["0/1", "CrashLoopBackOff", "5"]);

    let out = stdout_ok(&kubectl(
        &double,
        &["get", "pods", "-A", "-l", "app=web", "-o", "name"],
    ));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["pod/web-7d4b9c8f6d-q5w8r", "pod/web-7d4b9c8f6d-x2x9k"]
    );
}

#[test]
fn kubectl_gets_one_pod_by_name_and_reports_a_missing_one() {
    let double = KubeDouble::with_pod_list(&pod_list_fixture());
    let out = stdout_ok(&kubectl(
        &double,
        &[
            "get",
            "pod",
            "db-0",
            "-n",
            "shop",
            "-o",
            "jsonpath={.metadata.uid} {.status.qosClass} {.metadata.ownerReferences[0].kind}",
        ],
    ));
    assert_eq!(
        out,
        "3c9e2a71-5f0d-4b6e-8a13-7d2c9b4e6f02 Guaranteed StatefulSet"
    );

    let out = kubectl(&double, &["get", "pod", "nope", "-n", "shop"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(r#"pods "nope" not found"#),
        "{stderr} {:?}",
        double.store().requests()
    );
}

#[test]
fn kubectl_raw_watch_sees_410_gone_for_a_compacted_version() {
    let double = KubeDouble::with_pod_list(&pod_list_fixture());
    let before = double.store().resource_version();
    double
        .store()
        .delete(&pods(), "default", "debug")
        .expect("debug");
    // Still in history: the watch replays the deletion, then ends at the timeout.
    let path = format!("/api/v1/pods?watch=true&resourceVersion={before}&timeoutSeconds=1");
    let out = stdout_ok(&kubectl(&double, &["get", "--raw", &path]));
    let event: Value = serde_json::from_str(out.lines().next().expect("an event")).expect("JSON");
    assert_eq!(event["type"], "DELETED");
    assert_eq!(event["object"]["metadata"]["name"], "debug");

    double.store().compact();
    let out = stdout_ok(&kubectl(&double, &["get", "--raw", &path]));
    let event: Value = serde_json::from_str(out.trim()).expect("one JSON event");
    assert_eq!(event["type"], "ERROR");
    assert_eq!(event["object"]["code"], 410);
    assert_eq!(event["object"]["reason"], "Expired");
}

/// Lines from a child's stdout, read on a thread so waits can time out.
fn line_reader(stdout: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Reads lines into `seen` until `done(seen)` holds; panics after 15 s.
fn read_until(
    rx: &mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    done: impl Fn(&[String]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => panic!("kubectl did not print the expected line; got {seen:#?}"),
        }
    }
}

fn rows_of<'a>(seen: &'a [String], name: &str) -> Vec<Vec<&'a str>> {
    seen.iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|c| c.first() == Some(&name))
        .collect()
}

#[test]
fn kubectl_watch_shows_a_change() {
    let double = KubeDouble::with_pod_list(&pod_list_fixture());
    let home = tempfile::tempdir().expect("kubectl home");
    let mut child = crate::support::KillOnDrop(
        kubectl_cmd(
            &double,
            home.path(),
            &["get", "pods", "-n", "shop", "--watch"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kubectl --watch"),
    );
    let rx = line_reader(child.0.stdout.take().expect("stdout"));
    let mut seen = Vec::new();
    read_until(&rx, &mut seen, |s| !rows_of(s, "db-0").is_empty());
    assert_eq!(rows_of(&seen, "db-0")[0][1..4], ["1/1", "Running", "0"]);
    // kubectl lists, then watches from the list's version: wait for the watch to be open.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !double
        .store()
        .requests()
        .iter()
        .any(|r| r.contains("watch=true"))
    {
        assert!(Instant::now() < deadline, "kubectl never opened a watch");
        std::thread::sleep(Duration::from_millis(20));
    }
    double
        .store()
        .modify(&pods(), "shop", "db-0", |p| {
            let c = &mut p["status"]["containerStatuses"][0];
            c["restartCount"] = json!(1);
            c["ready"] = json!(false);
            c["state"] = json!({"waiting": {"reason": "CrashLoopBackOff"}});
        })
        .expect("db-0 exists");
    read_until(&rx, &mut seen, |s| rows_of(s, "db-0").len() >= 2);
    assert_eq!(
        rows_of(&seen, "db-0")[1][1..4],
        ["0/1", "CrashLoopBackOff", "1"]
    );
    // A new pod shows up in the same watch.
    let mut extra = fixture_pod("db-0");
    extra["metadata"]["name"] = json!("db-1");
    extra["metadata"]["uid"] = json!("3c9e2a71-5f0d-4b6e-8a13-7d2c9b4e6f99");
    double.store().put(&pods(), extra);
    read_until(&rx, &mut seen, |s| !rows_of(s, "db-1").is_empty());
    drop(child);
}

// ---- (b) the agent's watcher against the double ------------------------------------------

/// A running [`PodWatcher`] with its shutdown switch; stops the watcher when dropped.
struct Running {
    directory: SharedPodDirectory,
    stats: Arc<selfheal_agent::collect::pods::PodStats>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    token_file: tempfile::NamedTempFile,
}

impl Running {
    fn start(
        double: &KubeDouble,
        source: PodSource,
        tweak: impl FnOnce(&mut PodsConfig),
    ) -> Running {
        let token_file = tempfile::NamedTempFile::new().expect("token file");
        std::fs::write(token_file.path(), "token-1\n").expect("write token");
        let mut config = PodsConfig {
            source,
            api_url: Some(double.url()),
            kubelet_url: double.url(),
            token_file: token_file.path().to_owned(),
            resync_secs: 300,
            request_timeout_secs: 5,
            min_relist_interval_secs: 0,
            ..PodsConfig::default()
        };
        tweak(&mut config);
        config.validate().expect("valid pods config");
        let watcher = PodWatcher::new(&config, "node-a")
            .expect("watcher builds")
            .expect("source is not none");
        let (stop, shutdown) = watch::channel(false);
        let directory = watcher.directory();
        let stats = watcher.stats();
        let task = tokio::spawn(watcher.run(shutdown));
        Running {
            directory,
            stats,
            stop,
            task: Some(task),
            token_file,
        }
    }

    fn stats(&self) -> PodStatsSnapshot {
        self.stats.snapshot()
    }

    /// Waits (bounded) until `cond` holds on the directory and stats.
    async fn until(&self, what: &str, cond: impl Fn(&PodDirectory, PodStatsSnapshot) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if cond(&self.directory.read(), self.stats()) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; stats {:?}, pods {:?}",
                self.stats(),
                self.directory
                    .read()
                    .iter()
                    .map(|p| &p.name)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn shutdown(mut self) {
        self.stop.send(true).expect("watcher alive");
        let task = self.task.take().expect("task");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("watcher stops within 5 s of shutdown")
            .expect("watcher task did not panic");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

fn node_a_expected() -> Vec<PodInfo> {
    let text = std::fs::read(fixture("kube/pods.json")).expect("fixture");
    let (pods, _) = parse_pod_list(&text).expect("fixture parses");
    pods.into_iter().filter(|p| p.uid != NODE_B_UID).collect()
}

/// Waits (10 s at most) until the watcher has opened a watch on the double, so that changes
/// made after this arrive as watch events rather than in a list.
async fn watch_opened(double: &KubeDouble) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !double
        .store()
        .requests()
        .iter()
        .any(|r| r.contains("watch=true"))
    {
        assert!(Instant::now() < deadline, "no watch opened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn api_watcher_names_every_pod_on_its_node() {
    let double = KubeDouble::with_pod_list(&pod_list_fixture());
    let w = Running::start(&double, PodSource::Api, |_| {});
    w.until("first list", |d, _| d.is_synced()).await;
    {
        let dir = w.directory.read();
        assert_eq!(dir.len(), 7, "node-b's pod is not ours");
        for want in node_a_expected() {
            assert_eq!(dir.get(&want.uid), Some(&want));
        }
        assert!(dir.get(NODE_B_UID).is_none());
        let web = dir.get(WEB_UID).expect("web");
        assert_eq!(
            web.owner,
            Some(OwnerRef {
                kind: "Deployment".into(),
                name: "web".into()
            })
        );
        assert!(web.last_termination_oom_killed);
        let apiserver = dir
            .get(STATIC_APISERVER_UID)
            .expect("static pod by its cgroup UID");
        assert_eq!(apiserver.name, "kube-apiserver-node-a");
        assert_eq!(apiserver.qos, Some(QosClass::Burstable));
    }
    assert_eq!(double.store().tokens_seen(), ["token-1"]);
    let requests = double.store().requests();
    assert!(
        requests
            .iter()
            .any(|r| r
                .starts_with("GET /api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a&watch=true")),
        "{requests:?}"
    );
    let s = w.stats();
    assert_eq!(
        (s.relists_total, s.pods_known, s.list_errors_total),
        (1, 7, 0)
    );
    w.shutdown().await;
}

#[tokio::test]
async fn watch_events_add_delete_and_count_restarts() {
    let double = KubeDouble::with_pod_list(&pod_list_fixture());
    let w = Running::start(&double, PodSource::Api, |_| {});
    w.until("first list", |d, _| d.is_synced()).await;
    // Let the watch open before changing anything, so the changes arrive as events.
    watch_opened(&double).await;

    double
        .store()
        .delete(&pods(), "default", "debug")
        .expect("debug exists");
    w.until("debug gone", |d, _| d.get(DEBUG_UID).is_none())
        .await;

    let mut added = fixture_pod("web-7d4b9c8f6d-x2x9k");
    added["metadata"]["name"] = json!("web-7d4b9c8f6d-n3v7z");
    added["metadata"]["uid"] = json!("aa11bb22-cc33-4d44-8e55-ff6677889900");
    double.store().put(&pods(), added);
    w.until("new pod", |d, _| {
        d.get("aa11bb22-cc33-4d44-8e55-ff6677889900")
            .is_some_and(|p| p.name == "web-7d4b9c8f6d-n3v7z")
    })
    .await;

    // A pod scheduled elsewhere never shows up.
    let mut elsewhere = fixture_pod("web-7d4b9c8f6d-q5w8r");
    elsewhere["metadata"]["name"] = json!("web-7d4b9c8f6d-zzzzz");
    elsewhere["metadata"]["uid"] = json!("bb11bb22-cc33-4d44-8e55-ff6677889900");
    double.store().put(&pods(), elsewhere);

    double
        .store()
        .modify(&pods(), "shop", "web-7d4b9c8f6d-x2x9k", |p| {
            p["status"]["containerStatuses"][0]["restartCount"] = json!(4);
        })
        .expect("web exists");
    w.until("restart seen", |d, _| {
        d.get(WEB_UID).is_some_and(|p| p.restarts_total == 4)
    })
    .await;
    let s = w.stats();
    assert!(
        w.directory
            .get("bb11bb22-cc33-4d44-8e55-ff6677889900")
            .is_none()
    );
    assert_eq!(s.watch_events_total, 3, "{s:?}");
    assert_eq!(s.relists_total, 1, "no re-list needed: {s:?}");
    assert_eq!(s.pods_known, 7);
    w.shutdown().await;
}

#[tokio::test]
async fn gone_410_relists_with_the_rotated_token() {
    let double = KubeDouble::with_pod_list(&pod_list_fixture());
    double.store().require_token(Some("token-1"));
    let w = Running::start(&double, PodSource::Api, |_| {});
    w.until("first list", |d, _| d.is_synced()).await;
    watch_opened(&double).await;
    // The projected token rotates; the server stops accepting the old one.
    std::fs::write(w.token_file.path(), "token-2\n").expect("rotate token");
    double.store().require_token(Some("token-2"));
    // Changes the open watch will never deliver: only the re-list can show them.
    double
        .store()
        .delete(&pods(), "default", "debug")
        .expect("debug");
    double.store().compact();
    double.store().expire_watches();
    w.until("re-list after 410", |d, s| {
        s.relists_total >= 2 && d.get(DEBUG_UID).is_none()
    })
    .await;
    let s = w.stats();
    assert!(s.watch_errors_total >= 1, "{s:?}");
    assert_eq!(s.list_errors_total, 0, "the new token was read: {s:?}");
    assert_eq!(double.store().tokens_seen(), ["token-1", "token-2"]);
    let requests = double.store().requests();
    assert!(
        requests[0].ends_with("&resourceVersion=0"),
        "the first list may come from the cache: {requests:?}"
    );
    assert!(
        requests.contains(&"GET /api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a".to_owned()),
        "after 410 the list is a consistent read: {requests:?}"
    );
    w.shutdown().await;
}

#[tokio::test]
async fn api_server_dying_mid_watch_is_counted_and_recovered_from() {
    let mut double = KubeDouble::with_pod_list(&pod_list_fixture());
    let w = Running::start(&double, PodSource::Api, |_| {});
    w.until("first list", |d, _| d.is_synced()).await;
    watch_opened(&double).await;
    double.stop();
    w.until("failures counted", |_, s| s.list_errors_total >= 1)
        .await;
    // While it is down the cluster moves on; the store outlives the server.
    double
        .store()
        .delete(&pods(), "default", "debug")
        .expect("debug");
    assert_eq!(
        w.directory.read().len(),
        7,
        "last known state is kept while down"
    );
    double.restart();
    w.until("recovered", |d, s| {
        s.relists_total >= 2 && d.get(DEBUG_UID).is_none() && d.len() == 6
    })
    .await;
    // And the new watch works.
    double
        .store()
        .modify(&pods(), "shop", "db-0", |p| {
            p["status"]["containerStatuses"][0]["restartCount"] = json!(2);
        })
        .expect("db-0");
    w.until("watch after recovery", |d, _| {
        d.get("3c9e2a71-5f0d-4b6e-8a13-7d2c9b4e6f02")
            .is_some_and(|p| p.restarts_total == 2)
    })
    .await;
    w.shutdown().await;
}

#[tokio::test]
async fn kubelet_source_polls_pods_and_serves_relist_requests() {
    let double = KubeDouble::with_pod_list(&pod_list_fixture());
    let w = Running::start(&double, PodSource::Kubelet, |c| c.resync_secs = 300);
    w.until("first poll", |d, _| d.is_synced()).await;
    {
        let dir = w.directory.read();
        assert_eq!(dir.len(), 7);
        for want in node_a_expected() {
            assert_eq!(dir.get(&want.uid), Some(&want), "{}", want.name);
        }
    }
    assert!(double.store().requests().iter().all(|r| r == "GET /pods"));
    // A pod the collector saw in a cgroup but the directory lacks: ask for a poll now rather
    // than in resync_secs.
    let mut added = fixture_pod("db-0");
    added["metadata"]["name"] = json!("db-1");
    added["metadata"]["uid"] = json!("3c9e2a71-5f0d-4b6e-8a13-7d2c9b4e6f99");
    double.store().put(&pods(), added);
    double
        .store()
        .delete(&pods(), "default", "debug")
        .expect("debug");
    w.directory.read().request_relist();
    w.until("polled on request", |d, s| {
        s.relist_requests_total == 1
            && d.get("3c9e2a71-5f0d-4b6e-8a13-7d2c9b4e6f99").is_some()
            && d.get(DEBUG_UID).is_none()
    })
    .await;
    assert_eq!(w.stats().relists_total, 2);
    w.shutdown().await;
}

#[tokio::test]
async fn relist_requests_coalesce_and_wait_for_the_minimum_interval() {
    let double = KubeDouble::with_pod_list(&pod_list_fixture());
    let started = Instant::now();
    let w = Running::start(&double, PodSource::Api, |c| c.min_relist_interval_secs = 1);
    w.until("first list", |d, _| d.is_synced()).await;
    // A burst of unknown cgroups in one cycle.
    for _ in 0..5 {
        w.directory.read().request_relist();
    }
    w.until("one re-list", |_, s| s.relists_total == 2).await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "re-listed before min_relist_interval_secs"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = w.stats();
    assert_eq!((s.relists_total, s.relist_requests_total), (2, 1), "{s:?}");
    w.shutdown().await;
}

#[tokio::test]
async fn sync_once_fills_the_directory_without_watching() {
    let double = KubeDouble::with_pod_list(&pod_list_fixture());
    let config = PodsConfig {
        source: PodSource::Api,
        api_url: Some(double.url()),
        token_file: "/nonexistent/token".into(),
        ..PodsConfig::default()
    };
    let watcher = PodWatcher::new(&config, "node-a")
        .expect("watcher builds")
        .expect("source is not none");
    assert_eq!(watcher.sync_once().await.expect("one list"), 7);
    assert!(watcher.directory().get(WEB_UID).is_some());
    assert!(
        double
            .store()
            .requests()
            .iter()
            .all(|r| !r.contains("watch"))
    );
    assert!(
        double.store().tokens_seen().is_empty(),
        "no token file, no token"
    );

    let mut double = double;
    double.stop();
    let err = watcher.sync_once().await.expect_err("server gone");
    assert!(err.is_retryable(), "{err}");
    assert_eq!(watcher.stats().snapshot().list_errors_total, 1);
}
