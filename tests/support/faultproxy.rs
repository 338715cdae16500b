//! An HTTP proxy in front of moto that injects partial PutRecords failures: the first time it
//! sees a record, every `fail_every`-th one is answered as failed with
//! `ProvisionedThroughputExceededException` (and never reaches moto); everything else passes
//! through unchanged. It counts the PutRecords entries it sees, so a test can prove the client
//! resent only the failed records.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Counters kept by the proxy.
#[derive(Default)]
pub struct FaultStats {
    /// PutRecords entries received from the client, resends included.
    pub entries_seen: AtomicU64,
    /// Entries answered as failed.
    pub injected: AtomicU64,
    seen: Mutex<HashSet<String>>,
    first_seen: AtomicU64,
}

struct Shared {
    upstream: String,
    fail_every: u64,
    client: reqwest::Client,
    stats: Arc<FaultStats>,
}

/// A running fault proxy; stops when dropped.
pub struct FaultProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Its counters.
    pub stats: Arc<FaultStats>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`http://host:port`) failing every `fail_every`-th new record.
    pub async fn start(upstream: String, fail_every: u64) -> FaultProxy {
        let stats = Arc::new(FaultStats::default());
        let shared = Arc::new(Shared {
            upstream,
            fail_every,
            client: reqwest::Client::new(),
            stats: Arc::clone(&stats),
        });
        let app = axum::Router::new().fallback(handle).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fault proxy");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FaultProxy { addr, stats, task }
    }

    /// `http://<addr>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    s: &Shared,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    let url = format!(
        "{}{}",
        s.upstream,
        uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut req = s.client.request(method, url).body(body);
    for (name, value) in headers {
        if name != "host" && name != "content-length" {
            req = req.header(name, value);
        }
    }
    let resp = req.send().await.expect("moto answers the proxy");
    let status = resp.status();
    (status, resp.bytes().await.expect("moto body").to_vec())
}

async fn handle(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let is_put_records = headers
        .get("x-amz-target")
        .is_some_and(|v| v.as_bytes().ends_with(b".PutRecords"));
    if !is_put_records {
        let (status, body) = forward(&s, method, &uri, &headers, body.to_vec()).await;
        return (status, body).into_response();
    }
    let mut req: Value = serde_json::from_slice(&body).expect("PutRecords JSON");
    let entries = req["Records"].as_array().cloned().unwrap_or_default();
    s.stats
        .entries_seen
        .fetch_add(entries.len() as u64, Ordering::Relaxed);
    let mut fail = Vec::with_capacity(entries.len());
    {
        let mut seen = s.stats.seen.lock().expect("lock");
        for e in &entries {
            let data = e["Data"].as_str().unwrap_or_default().to_owned();
            let first = seen.insert(data);
            let n = if first {
                s.stats.first_seen.fetch_add(1, Ordering::Relaxed)
            } else {
                1
            };
            fail.push(first && n % s.fail_every == 0);
        }
    }
    let passed: Vec<Value> = entries
        .iter()
        .zip(&fail)
        .filter(|(_, f)| !**f)
        .map(|(e, _)| e.clone())
        .collect();
    let mut upstream_results = Vec::new().into_iter();
    let mut failed_count = 0;
    if !passed.is_empty() {
        req["Records"] = Value::Array(passed);
        let (status, body) = forward(
            &s,
            method,
            &uri,
            &headers,
            serde_json::to_vec(&req).expect("json"),
        )
        .await;
        if !status.is_success() {
            return (status, body).into_response();
        }
        let resp: Value = serde_json::from_slice(&body).expect("moto PutRecords JSON");
        failed_count = resp["FailedRecordCount"].as_u64().unwrap_or(0);
        upstream_results = resp["Records"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter();
    }
    let mut results = Vec::with_capacity(entries.len());
    for f in fail {
        if f {
            s.stats.injected.fetch_add(1, Ordering::Relaxed);
            failed_count += 1;
            results.push(json!({
                "ErrorCode": "ProvisionedThroughputExceededException",
                "ErrorMessage": "Rate exceeded for shard shardId-000000000000 (injected)"
            }));
        } else {
            results.push(
                upstream_results
                    .next()
                    .expect("one result per passed entry"),
            );
        }
    }
    let out = json!({ "FailedRecordCount": failed_count, "Records": results });
    (
        StatusCode::OK,
        [("content-type", "application/x-amz-json-1.1")],
        serde_json::to_vec(&out).expect("json"),
    )
        .into_response()
}
