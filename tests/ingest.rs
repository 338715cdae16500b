//! The HTTP transport end to end: the agent binary with `forward.sink = "http"` posting to the
//! `selfheal aggregator` binary with `ingest.source = "http"`, which logs each batch and writes
//! a local Parquet lake from the log. While the lake cannot be written the log fills and the
//! agent is answered 503 and keeps its records; once it can, every record the agent printed
//! must be in the lake exactly once. A body that is not a batch
//! is answered 400, one over `max_body_bytes` 413, and a framed record that is not a selfheal
//! record is counted as malformed and skipped.

use crate::agent_forward::{AgentFiles, metric, runtime, stop, wait_metrics};
use crate::lake::{Aggregator, all_rows, wait_for_ids};
use crate::support::{free_port, selfheal, write_file};
use selfheal_core::Family;
use selfheal_core::batch::{CONTENT_TYPE, encode_batch};
use selfheal_lake::format::RowKind;
use selfheal_lake::{LakeStore, S3Options, partition};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MAX_BODY_BYTES: usize = 256 * 1024;

/// node-a's ingest token in these tests (the agents' `AgentFiles::http` sends it).
pub(crate) const NODE_A_TOKEN: &str = "node-a-ingest-token-0123456789";
/// node-b's.
pub(crate) const NODE_B_TOKEN: &str = "node-b-ingest-token-0123456789";

/// Writes the aggregator's token table for node-a and node-b into `dir`; the
/// `[ingest.auth]` section naming it.
pub(crate) fn token_file(dir: &Path) -> String {
    let p = write_file(
        dir,
        "ingest-tokens",
        &format!("node-a {NODE_A_TOKEN}\nnode-b {NODE_B_TOKEN}\n"),
    );
    format!("[ingest.auth]\ntoken_file = \"{}\"\n", p.display())
}
const SERVICE_UNAVAILABLE: &str = "selfheal_aggregator_ingest_requests_total{status=\"503\"}";

/// Every regular file under `dir`.
fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read lake dir") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

async fn post(url: &str, body: Vec<u8>) -> u16 {
    reqwest::Client::new()
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
        .bearer_auth(NODE_A_TOKEN)
        .timeout(Duration::from_secs(5))
        .body(body)
        .send()
        .await
        .expect("the ingest endpoint answers")
        .status()
        .as_u16()
}

#[test]
fn the_agent_posts_to_the_aggregator_and_every_record_lands_in_the_lake_once() {
    let rt = runtime();
    let tmp = tempfile::tempdir().expect("tempdir");
    let lake = tmp.path().join("lake");
    let port = free_port();
    let config = write_file(
        tmp.path(),
        "aggregator.toml",
        &format!(
            r#"listen_addr = "127.0.0.1:{port}"
shutdown_grace_secs = 10
[ingest]
source = "http"
max_body_bytes = {MAX_BODY_BYTES}
log_dir = "{}"
# Small, so that a lake outage fills it within a second or two and reaches the agent as 503s.
log_max_bytes = 4096
{auth}
[batch]
flush_interval_ms = 300
retry_max_ms = 500
[lake]
location = "{}"
"#,
            tmp.path().join("ingest-log").display(),
            lake.display(),
            auth = token_file(tmp.path()),
        ),
    );
    let aggregator = Aggregator::spawn(selfheal(), &config, port);
    let url = format!("http://127.0.0.1:{port}/v1/ingest");

    // Refused for good (the agent quarantines, never retries, these): broken framing, too
    // large.
    assert_eq!(rt.block_on(post(&url, vec![10, 0, 0, 0, b'a', b'b'])), 400);
    assert_eq!(rt.block_on(post(&url, vec![0; MAX_BODY_BYTES + 1])), 413);
    // Framed but not a selfheal record, beside one that is: skipped and counted, the request
    // succeeds. (Alone it would be 400: nothing in the body can be stored.)
    let junk = encode_batch([
        b"{\"not\": \"a wire record\"}".as_slice(),
        crate::support::records::node_a_wire(u128::MAX).as_slice(),
    ])
    .expect("frame");
    assert_eq!(rt.block_on(post(&url, junk)), 200);

    // Until the agent has been answered 503 a few times (the log filled up behind the lake
    // handler), the lake cannot be written: a file
    // stands where today's date partition directory must go. (A run that straddles midnight UTC
    // may see later records succeed at once; the first ones still fail.)
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis(),
    )
    .expect("time fits i64");
    let today = partition(now_ms, Family::Cpu);
    let blocker = lake.join(today.split('/').next().expect("dt=... component"));
    std::fs::write(&blocker, "not a directory").expect("write blocker");

    let agent = AgentFiles::http(&url, "[pods]\nsource = \"none\"\n");
    let mut child = agent.start("out");
    let start = Instant::now();
    while metric(&aggregator.metrics_text(), SERVICE_UNAVAILABLE) < 2.0 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the agent was not answered 503 twice within 15 s:\n{}",
            aggregator.metrics_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        all_files(&lake),
        vec![blocker.clone()],
        "a failed write left objects behind"
    );
    std::fs::remove_file(&blocker).expect("remove blocker");
    // The agent resends what was refused, then keeps forwarding.
    wait_metrics(&agent, "50 records sent", Duration::from_secs(15), |m| {
        metric(m, "selfheal_agent_forward_sent_records_total") >= 50.0
    });
    let status = stop(&mut child, Duration::from_secs(10));
    assert!(
        status.success(),
        "exit 0 after SIGTERM: {status:?}\n{}",
        agent.log("out")
    );
    let (printed, _) = agent.printed("out");
    assert!(printed.len() >= 50, "{} records printed", printed.len());

    // The agent exited after its spool drained, i.e. after every POST was answered 200, which
    // the aggregator sends once the records are in its log; the lake handler writes them within
    // a flush interval (300 ms here).
    let store = rt
        .block_on(LakeStore::open(
            &lake.to_string_lossy(),
            &S3Options::default(),
        ))
        .expect("open lake dir");
    rt.block_on(wait_for_ids(&store, &printed));
    // Give a second write of the same records (which would be a bug) time to land.
    std::thread::sleep(Duration::from_millis(1000));
    let rows = rt.block_on(all_rows(&store));
    let mut seen: HashMap<u128, usize> = HashMap::new();
    for (key, row) in &rows {
        let file = key.rsplit('/').next().expect("object name");
        assert!(
            file.starts_with("http-"),
            "{key} is not named after its HTTP batch"
        );
        if row.kind != RowKind::Window {
            *seen.entry(row.id.as_u128()).or_default() += 1;
        }
    }
    let missing = printed.iter().filter(|id| !seen.contains_key(id)).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} printed records are not in the lake",
        printed.len()
    );
    assert!(
        seen.contains_key(&u128::MAX),
        "the record posted beside junk is missing"
    );
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "records in the lake more than once: {twice:x?}"
    );
    assert_eq!(
        seen.len(),
        printed.len() + 1,
        "the lake holds records the agent never printed (besides the one posted by hand)"
    );

    let m = aggregator.metrics_text();
    assert_eq!(
        metric(&m, "selfheal_aggregator_consume_malformed_records_total"),
        1.0,
        "{m}"
    );
    assert!(
        metric(&m, "selfheal_aggregator_consume_records_total") >= printed.len() as f64,
        "{m}"
    );
    for (status, want) in [("400", 1.0), ("413", 1.0)] {
        assert_eq!(
            metric(
                &m,
                &format!("selfheal_aggregator_ingest_requests_total{{status=\"{status}\"}}")
            ),
            want,
            "{m}"
        );
    }
    assert!(
        metric(
            &m,
            "selfheal_aggregator_ingest_requests_total{status=\"200\"}"
        ) >= 2.0,
        "{m}"
    );
    aggregator.stop();
}

/// The must-show of the ingest log: one agent at 1 s over 100 pods for 5 minutes, on a
/// compressed timescale: the agent runs at 0.2 s (5× faster) for 300 cycles (a minute of wall
/// time), and the flush interval is 2 s (10 s compressed 5×). The aggregator is SIGKILLed
/// mid-run and restarted on the same log. At most one object per family per flush interval
/// (plus the partial batch each start and stop cuts), and every record the agent printed is in
/// the lake exactly once.
#[test]
fn http_ingest_from_100_pods_makes_one_object_per_family_per_flush_interval_across_a_sigkill() {
    const FLUSH_MS: u64 = 2000;
    let rt = runtime();
    let tmp = tempfile::tempdir().expect("tempdir");
    let cgroup = tmp.path().join("cgroup");
    crate::support::cgroup_fixture::write_v2_pods(&cgroup, 100, 1);
    let lake = tmp.path().join("lake");
    let port = free_port();
    let config = write_file(
        tmp.path(),
        "aggregator.toml",
        &format!(
            r#"listen_addr = "127.0.0.1:{port}"
shutdown_grace_secs = 20
[ingest]
source = "http"
log_dir = "{}"
{auth}
[batch]
flush_interval_ms = {FLUSH_MS}
retry_max_ms = 500
[lake]
location = "{}"
"#,
            tmp.path().join("ingest-log").display(),
            lake.display(),
            auth = token_file(tmp.path()),
        ),
    );
    let started = Instant::now();
    let aggregator = Aggregator::spawn(selfheal(), &config, port);
    let url = format!("http://127.0.0.1:{port}/v1/ingest");
    let agent = AgentFiles::http(
        &url,
        &format!(
            "cgroup_root = \"{}\"\n[pods]\nsource = \"none\"\n",
            cgroup.display()
        ),
    );
    let mut child = agent.start("out");
    wait_metrics(&agent, "150 cycles", Duration::from_secs(120), |m| {
        metric(m, "selfheal_agent_cycles_total") >= 150.0
    });
    let requests_before = metric(
        &aggregator.metrics_text(),
        "selfheal_aggregator_ingest_requests_total{status=\"200\"}",
    );
    aggregator.kill();
    // The agent spools while nobody listens, then resends.
    std::thread::sleep(Duration::from_secs(2));
    let aggregator = Aggregator::spawn(selfheal(), &config, port);
    wait_metrics(&agent, "300 cycles", Duration::from_secs(120), |m| {
        metric(m, "selfheal_agent_cycles_total") >= 300.0
    });
    let status = stop(&mut child, Duration::from_secs(30));
    assert!(
        status.success(),
        "agent exit 0: {status:?}\n{}",
        agent.log("out")
    );
    let (printed, _) = agent.printed("out");
    assert!(
        printed.len() >= 300 * 100,
        "{} records printed",
        printed.len()
    );

    let store = rt
        .block_on(LakeStore::open(
            &lake.to_string_lossy(),
            &S3Options::default(),
        ))
        .expect("open lake dir");
    rt.block_on(wait_for_ids(&store, &printed));
    let requests = requests_before
        + metric(
            &aggregator.metrics_text(),
            "selfheal_aggregator_ingest_requests_total{status=\"200\"}",
        );
    aggregator.stop();
    let elapsed = started.elapsed();
    let rows = rt.block_on(all_rows(&store));

    let mut seen: HashMap<u128, usize> = HashMap::new();
    let mut names: HashMap<Family, std::collections::HashSet<String>> = HashMap::new();
    for (key, row) in &rows {
        if row.kind != RowKind::Window {
            *seen.entry(row.id.as_u128()).or_default() += 1;
        }
        let file = key.rsplit('/').next().expect("object name").to_owned();
        names.entry(row.family).or_default().insert(file);
    }
    let twice = seen.values().filter(|n| **n > 1).count();
    assert_eq!(twice, 0, "{twice} records in the lake more than once");
    let missing = printed.iter().filter(|id| !seen.contains_key(id)).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} printed records missing",
        printed.len()
    );
    assert_eq!(
        seen.len(),
        printed.len(),
        "the lake holds records never printed"
    );

    // One object per family per flush interval of wall time, plus one partial batch at each of
    // the two starts (the replay after the kill is the interrupted batch, under its own name)
    // and one at the final stop.
    let intervals = elapsed.as_millis().div_ceil(u128::from(FLUSH_MS)) as usize;
    let bound = intervals + 3;
    let objects: usize = names.values().map(|n| n.len()).sum();
    eprintln!(
        "{} records over {elapsed:?} in {requests} requests answered 200 -> {objects} objects in {} families (bound {bound} per family)",
        printed.len(),
        names.len()
    );
    for (family, files) in &names {
        assert!(
            files.len() <= bound,
            "{} objects of {family:?} in {elapsed:?} (at most {bound})",
            files.len()
        );
    }
    // Before the log, every request wrote one object per family it held.
    assert!(
        (objects as f64) < requests * names.len() as f64 / 5.0,
        "{objects} objects for {requests} requests of {} families: the log is not batching",
        names.len()
    );
}
