//! The HTTP transport end to end: the agent binary with `forward.sink = "http"` posting to the
//! `selfheal aggregator` binary with `ingest.source = "http"`, which writes a local Parquet lake.
//! While the lake cannot be written the agent is answered 503 and keeps its records; once it
//! can, every record the agent printed must be in the lake exactly once. A body that is not a batch
//! is answered 400, one over `max_body_bytes` 413, and a framed record that is not a selfheal
//! record is counted as malformed and skipped.

use crate::agent_forward::{AgentFiles, metric, runtime, stop, wait_metrics};
use crate::lake::{Aggregator, all_rows};
use crate::support::{free_port, selfheal, write_file};
use selfheal_aggregator::lake::format::RowKind;
use selfheal_aggregator::lake::{LakeStore, S3Options, partition};
use selfheal_core::Family;
use selfheal_core::batch::{CONTENT_TYPE, encode_batch};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MAX_BODY_BYTES: usize = 256 * 1024;
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
[lake]
location = "{}"
"#,
            lake.display()
        ),
    );
    let aggregator = Aggregator::spawn(selfheal(), &config, port);
    let url = format!("http://127.0.0.1:{port}/v1/ingest");

    // Refused for good (the agent drops, never retries, these): broken framing, too large.
    assert_eq!(rt.block_on(post(&url, vec![10, 0, 0, 0, b'a', b'b'])), 400);
    assert_eq!(rt.block_on(post(&url, vec![0; MAX_BODY_BYTES + 1])), 413);
    // Framed but not a selfheal record: skipped and counted, the request succeeds.
    let junk = encode_batch([b"{\"not\": \"a wire record\"}".as_slice()]).expect("frame");
    assert_eq!(rt.block_on(post(&url, junk)), 200);

    // Until the agent has been answered 503 a few times, the lake cannot be written: a file
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
    // the aggregator sends only once the objects are written: the lake is complete now.
    let store = rt
        .block_on(LakeStore::open(
            &lake.to_string_lossy(),
            &S3Options::default(),
        ))
        .expect("open lake dir");
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
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "records in the lake more than once: {twice:x?}"
    );
    assert_eq!(
        seen.len(),
        printed.len(),
        "the lake holds records the agent never printed"
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
