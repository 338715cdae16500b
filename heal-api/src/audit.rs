//! The audit log: one JSON line per request, accepted or refused, with who (key id, peer), on
//! what (target, action, request id), the decision and its reason. Appended to a file (or
//! stdout), flushed per line, so `tail -f | jq` and a log shipper both see each request as it
//! is decided. A line that cannot be written is counted and logged; the request's answer does
//! not wait on the log's disk beyond the write itself.
//!
//! ```json
//! {"time":"2026-12-01T15:00:00.123Z","key_id":"k1","peer":"10.0.0.7:41234","method":"POST",
//!  "path":"/v1/actions","request_id":"inc-1/1","target":"shop/Deployment/checkout",
//!  "action":"scale","decision":"accepted","status":200,"reason":"applied","detail":"..."}
//! ```

use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AuditRecord {
    /// RFC 3339, UTC.
    pub time: String,
    /// The key that signed it, once the signature was checked.
    pub key_id: Option<String>,
    /// The client's address, when the connection loop knows it.
    pub peer: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The action's request id, once the body was read.
    pub request_id: Option<String>,
    /// `namespace/Kind/name`, once the body was read.
    pub target: Option<String>,
    /// The action kind, once the body was read.
    pub action: Option<String>,
    /// `accepted`, `refused` (by the heal API) or `failed` (the executor could not).
    pub decision: String,
    /// The HTTP status answered.
    pub status: u16,
    /// One word: `applied`, `already_applied`, `unsigned`, `bad_signature`, `conflict`, ...
    pub reason: String,
    /// More, in words.
    pub detail: String,
}

enum Sink {
    Stdout,
    File(std::fs::File),
}

/// The audit log.
pub struct AuditLog {
    sink: Mutex<Sink>,
    errors: prometheus_client::metrics::counter::Counter,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Appends to `path` (created if missing).
    pub fn file(path: &Path) -> std::io::Result<AuditLog> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(AuditLog {
            sink: Mutex::new(Sink::File(f)),
            errors: Default::default(),
        })
    }

    /// Writes to standard output.
    pub fn stdout() -> AuditLog {
        AuditLog {
            sink: Mutex::new(Sink::Stdout),
            errors: Default::default(),
        }
    }

    /// Lines that could not be written.
    pub fn errors(&self) -> prometheus_client::metrics::counter::Counter {
        self.errors.clone()
    }

    /// Makes every line written so far durable (the file's data synced to disk; stdout
    /// flushed): called at shutdown, after the last request was answered, so the trail of a
    /// stopped heal API survives a node crash right after it.
    pub fn flush(&self) -> std::io::Result<()> {
        let mut sink = match self.sink.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        match &mut *sink {
            Sink::Stdout => std::io::stdout().lock().flush(),
            Sink::File(f) => f.sync_data(),
        }
    }

    /// Appends `rec` as one line.
    pub fn write(&self, rec: &AuditRecord) {
        let mut line = match serde_json::to_vec(rec) {
            Ok(l) => l,
            Err(e) => {
                self.errors.inc();
                tracing::error!(error = %e, "HealApiAuditEncodeError");
                return;
            }
        };
        line.push(b'\n');
        let mut sink = match self.sink.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        let r = match &mut *sink {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&line).and_then(|()| out.flush())
            }
            Sink::File(f) => f.write_all(&line),
        };
        if let Err(e) = r {
            self.errors.inc();
            tracing::error!(error = %e, "HealApiAuditWriteError");
        }
    }
}
