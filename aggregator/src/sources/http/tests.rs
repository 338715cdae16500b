//! The ingest endpoint behind its bounded connection loop, on loopback: authentication and
//! attribution, slow clients, whole-request refusals, one log line per request.

use super::*;
use crate::auth::AuthSettings;
use crate::auth::tokens::TokenSource;
use selfheal_core::batch::encode_batch;
use selfheal_core::schema::{Envelope, Payload, Record, RecordId, Subject, encode_wire};
use selfheal_core::{Family as MetricFamily, Metric};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN_A: &str = "node-a-token-0123456789";
const TOKEN_B: &str = "node-b-token-0123456789";

fn now() -> i64 {
    now_ms()
}

fn wire(id: u128, node: &str, ts_ms: i64) -> Vec<u8> {
    let env = Envelope::new(Payload::Sample {
        record: Record {
            id: RecordId::from_u128(id),
            ts_ms,
            node: node.into(),
            subject: Subject::Node,
            family: MetricFamily::Cpu,
            values: BTreeMap::from([(Metric::CpuUsageCores, 0.5)]),
        },
        inclusion_probability: 1.0,
    });
    encode_wire(&env).expect("encode")
}

fn body(id: u128, node: &str) -> Vec<u8> {
    encode_batch([wire(id, node, now()).as_slice()]).expect("frame")
}

struct Server {
    addr: SocketAddr,
    log: Arc<IngestLog>,
    metrics: Arc<IngestMetrics>,
    token_file: std::path::PathBuf,
    _tmp: tempfile::TempDir,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(max_concurrent_requests: usize, header_timeout: Duration) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let token_file = tmp.path().join("tokens");
        std::fs::write(&token_file, format!("node-a {TOKEN_A}\nnode-b {TOKEN_B}\n"))
            .expect("tokens");
        let settings = IngestSettings {
            path: DEFAULT_PATH.into(),
            max_body_bytes: 8 << 20,
            max_concurrent_requests,
            body_timeout: Duration::from_secs(5),
            max_record_age: Duration::from_secs(7 * 86_400),
            max_record_ahead: Duration::from_secs(3600),
            max_partitions: 48,
            auth: AuthSettings {
                tokens: Some(TokenSource::File(token_file.clone())),
                review: None,
            },
            conn: selfheal_runtime::conn::ConnSettings {
                max_connections: 64,
                header_timeout,
                tls: None,
            },
            log: log::LogSettings {
                dir: tmp.path().join("log"),
                max_bytes: 1 << 24,
            },
        };
        let log = Arc::new(IngestLog::open(settings.log.clone(), Arc::default()).expect("log"));
        let metrics = Arc::new(IngestMetrics::default());
        let auth = Arc::new(Authenticator::new(&settings.auth).expect("auth"));
        let app = router(
            &settings,
            auth,
            Arc::clone(&log),
            Arc::new(ConsumeMetrics::default()),
            Arc::clone(&metrics),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        let (stop, rx) = tokio::sync::watch::channel(false);
        let bounded = selfheal_runtime::conn::Bounded {
            settings: settings.conn.clone(),
            tls: None,
            metrics: Arc::default(),
        };
        let task = tokio::spawn(selfheal_runtime::conn::serve(listener, app, bounded, rx));
        Server {
            addr,
            log,
            metrics,
            token_file,
            _tmp: tmp,
            stop,
            task,
        }
    }

    fn count(&self, status: u16) -> u64 {
        self.metrics
            .requests
            .get_or_create(&StatusLabels { status })
            .get()
    }

    fn logged(&self) -> Vec<u128> {
        self.log
            .read(0)
            .expect("read log")
            .records
            .iter()
            .map(|r| decode_wire(&r.wire).expect("wire").record().id.as_u128())
            .collect()
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// Sends the head of a POST of `len` body bytes with `token`; the connection, to send the body.
async fn post_head(addr: SocketAddr, token: Option<&str>, len: usize) -> tokio::net::TcpStream {
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST {DEFAULT_PATH} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.expect("write head");
    conn
}

/// Sends `body` on `conn`; the answer's status line and headers.
async fn finish(mut conn: tokio::net::TcpStream, body: &[u8]) -> String {
    conn.write_all(body).await.expect("write body");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.expect("read answer");
    answer
}

async fn post(addr: SocketAddr, token: Option<&str>, body: &[u8]) -> String {
    let conn = post_head(addr, token, body.len()).await;
    finish(conn, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_is_401_a_foreign_record_is_403_and_a_rotated_token_works_without_restart() {
    let srv = Server::start(8, Duration::from_secs(5)).await;
    let none = post(srv.addr, None, &body(1, "node-a")).await;
    assert!(none.starts_with("HTTP/1.1 401"), "{none}");
    assert!(
        none.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{none}"
    );
    let wrong = post(
        srv.addr,
        Some("not-a-token-of-anyone-at-all"),
        &body(1, "node-a"),
    )
    .await;
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    assert!(
        srv.logged().is_empty(),
        "an unauthenticated record was logged"
    );

    // node-a's credential carrying node-b's record, even among node-a's own: all refused.
    let mixed = encode_batch([
        wire(2, "node-a", now()).as_slice(),
        wire(3, "node-b", now()).as_slice(),
    ])
    .expect("frame");
    let foreign = post(srv.addr, Some(TOKEN_A), &mixed).await;
    assert!(foreign.starts_with("HTTP/1.1 403"), "{foreign}");
    assert!(
        srv.logged().is_empty(),
        "a record of a refused request was logged"
    );
    assert_eq!(
        srv.metrics
            .refused_records
            .get_or_create(&ReasonLabels {
                reason: "node_mismatch"
            })
            .get(),
        2
    );

    let ok = post(srv.addr, Some(TOKEN_A), &body(4, "node-a")).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let ok = post(srv.addr, Some(TOKEN_B), &body(5, "node-b")).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");

    // Rotate node-a's token in place; the next reload (within a second) takes it.
    let rotated = "node-a-rotated-token-9876543210";
    let mut f = std::fs::File::create(&srv.token_file).expect("rewrite tokens");
    write!(f, "node-a {rotated}\nnode-b {TOKEN_B}\n").expect("write tokens");
    drop(f);
    tokio::time::sleep(crate::auth::tokens::RELOAD_EVERY + Duration::from_millis(100)).await;
    let new = post(srv.addr, Some(rotated), &body(6, "node-a")).await;
    assert!(new.starts_with("HTTP/1.1 200"), "{new}");
    let old = post(srv.addr, Some(TOKEN_A), &body(7, "node-a")).await;
    assert!(
        old.starts_with("HTTP/1.1 401"),
        "the replaced token still works: {old}"
    );
    assert_eq!(srv.logged(), vec![4, 5, 6]);
    assert_eq!((srv.count(401), srv.count(403)), (3, 1));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_slow_clients_do_not_delay_an_agents_post_and_idle_ones_are_cut() {
    // One request's worth of body budget, as with the old single request slot.
    let srv = Server::start(1, Duration::from_millis(1500)).await;
    let b = body(1, "node-a");
    // Eight clients that sent a head and then dribble their bodies, byte by byte.
    let mut slow = Vec::new();
    for i in 0..8 {
        let big = body(100 + i, "node-a");
        let mut c = post_head(srv.addr, Some(TOKEN_A), big.len()).await;
        c.write_all(&big[..1]).await.expect("first byte");
        slow.push((c, big));
    }
    // Eight more that opened a connection and send nothing at all.
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(
            tokio::net::TcpStream::connect(srv.addr)
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let ok = tokio::time::timeout(Duration::from_secs(2), post(srv.addr, Some(TOKEN_A), &b))
        .await
        .expect("the agent's POST was answered within 2 s");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    eprintln!(
        "agent POST answered in {:?} beside 8 slow and 8 idle clients",
        started.elapsed()
    );
    // The slow ones still complete.
    for (c, big) in slow {
        let answer = finish(c, &big[1..]).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    // The silent ones were closed by the head timeout (1.5 s): reading sees the end.
    for mut c in idle {
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf))
            .await
            .expect("an idle connection is closed by the head timeout");
        assert!(n.is_ok());
    }
    assert_eq!(srv.logged().len(), 9);
    srv.stop().await;
}

/// A writer into a shared buffer, for counting log lines.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn two_million_empty_frames_are_one_400_and_one_log_line() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let srv = Server::start(2, Duration::from_secs(5)).await;
    let empty: Vec<&[u8]> = vec![&[]; 2_000_000];
    let body = encode_batch(empty).expect("frame");
    assert_eq!(body.len(), 8_000_000);
    let answer = post(srv.addr, Some(TOKEN_A), &body).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    srv.stop().await;
    let text = String::from_utf8(captured.0.lock().expect("log").clone()).expect("utf-8");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("Malformed"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(lines[0].contains("malformed=2000000"), "{}", lines[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_spanning_10000_hours_is_400_and_too_many_partitions_too() {
    let srv = Server::start(2, Duration::from_secs(5)).await;
    let t = now();
    let span = encode_batch([
        wire(1, "node-a", t - 10_000 * 3_600_000).as_slice(),
        wire(2, "node-a", t).as_slice(),
    ])
    .expect("frame");
    let answer = post(srv.addr, Some(TOKEN_A), &span).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // Inside the window (the last day) but over 48 hourly partitions: 49 hours of records.
    let hours: Vec<Vec<u8>> = (0..49)
        .map(|h| {
            wire(
                10 + h,
                "node-a",
                t - i64::try_from(h).expect("small") * 1_800_000,
            )
        })
        .collect();
    let ok = post(
        srv.addr,
        Some(TOKEN_A),
        &encode_batch(hours[..30].iter().map(Vec::as_slice)).expect("frame"),
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "15 hours fit: {ok}");
    let far: Vec<Vec<u8>> = (0..49)
        .map(|h| {
            wire(
                100 + h,
                "node-a",
                t - i64::try_from(h).expect("small") * 3_600_000,
            )
        })
        .collect();
    let many = post(
        srv.addr,
        Some(TOKEN_A),
        &encode_batch(far.iter().map(Vec::as_slice)).expect("frame"),
    )
    .await;
    assert!(many.starts_with("HTTP/1.1 400"), "{many}");
    assert_eq!(srv.logged().len(), 30);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_version_is_503_and_nothing_of_the_request_is_logged() {
    let srv = Server::start(2, Duration::from_secs(5)).await;
    let mut next = wire(1, "node-a", now());
    next[2..4].copy_from_slice(&(SCHEMA_VERSION + 1).to_le_bytes());
    let both = encode_batch([wire(2, "node-a", now()).as_slice(), next.as_slice()]).expect("frame");
    let answer = post(srv.addr, Some(TOKEN_A), &both).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after"),
        "{answer}"
    );
    // Junk alone is 400; junk beside a good record is skipped and the request succeeds.
    let junk = encode_batch([b"junk".as_slice()]).expect("frame");
    let answer = post(srv.addr, Some(TOKEN_A), &junk).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let mixed =
        encode_batch([b"junk".as_slice(), wire(3, "node-a", now()).as_slice()]).expect("frame");
    let answer = post(srv.addr, Some(TOKEN_A), &mixed).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(srv.logged(), vec![3]);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dribbling_a_body_does_not_hold_shutdown_past_the_head_timeout() {
    let srv = Server::start(2, Duration::from_secs(1)).await;
    let b = body(1, "node-a");
    let mut slow = post_head(srv.addr, Some(TOKEN_A), b.len()).await;
    slow.write_all(&b[..1]).await.expect("first byte");
    tokio::time::sleep(Duration::from_millis(200)).await;
    srv.stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(3), srv.task)
        .await
        .expect("the server stopped within the head timeout")
        .expect("no panic");
}
