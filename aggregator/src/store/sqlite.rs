//! The embedded store: one SQLite file (`incidents.db` under the data directory) in WAL mode,
//! `synchronous = FULL` so a committed update survives power loss, the schema migrated in code
//! by `PRAGMA user_version` (each migration runs once, in order, in its own transaction; a file
//! from a newer build is refused rather than misread).
//!
//! Incidents are JSON documents beside the columns the API filters on; events are keyed by
//! (incident, seq); seen ids are 16-byte blobs keyed by (bucket, id) so pruning a bucket is a
//! range delete. SQLite is synchronous: every call runs on the blocking pool, one connection
//! behind a mutex (one writer is all SQLite allows anyway; WAL lets readers of the file, such
//! as `sqlite3` by hand, read during writes).

use super::{
    ActionRecord, ActionStore, Counts, IncidentStore, Page, Pruned, Query, StoreError, corrupt,
};
use crate::incident::dedup::SeenId;
use crate::incident::{Snapshot, Update};
use rusqlite::{Connection, OptionalExtension, params};
use selfheal_core::RecordId;
use selfheal_core::incident::{Event, Incident, IncidentId, Severity, Silence, State};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The schema, one migration per entry; `user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE incidents (
        id TEXT PRIMARY KEY,
        key TEXT NOT NULL,
        state TEXT NOT NULL,
        severity TEXT NOT NULL,
        namespace TEXT,
        workload TEXT,
        family TEXT NOT NULL,
        opened_at_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        resolved_at_ms INTEGER,
        doc TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX incidents_state ON incidents (state);
    CREATE INDEX incidents_resolved ON incidents (resolved_at_ms) WHERE resolved_at_ms IS NOT NULL;
    CREATE TABLE events (
        incident TEXT NOT NULL,
        seq INTEGER NOT NULL,
        doc TEXT NOT NULL,
        PRIMARY KEY (incident, seq)
    ) WITHOUT ROWID;
    CREATE TABLE silences (
        id TEXT PRIMARY KEY,
        ends_at_ms INTEGER NOT NULL,
        doc TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE seen_ids (
        bucket_ms INTEGER NOT NULL,
        id BLOB NOT NULL,
        PRIMARY KEY (bucket_ms, id)
    ) WITHOUT ROWID;",
    // 2: healing's action records, keyed by idempotency key.
    "CREATE TABLE actions (
        request_id TEXT PRIMARY KEY,
        incident TEXT NOT NULL,
        intent_at_ms INTEGER NOT NULL,
        finished INTEGER NOT NULL,
        doc TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX actions_incident ON actions (incident);
    CREATE INDEX actions_intent_at ON actions (intent_at_ms);
    CREATE INDEX actions_unfinished ON actions (finished) WHERE finished = 0;",
];

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

fn sq(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { context, source }
}

impl SqliteStore {
    /// Opens (creating and migrating) `dir/incidents.db`.
    pub async fn open(dir: &Path) -> Result<SqliteStore, StoreError> {
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(&dir))
            .await
            .map_err(StoreError::Join)?
    }

    fn open_blocking(dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let path = dir.join("incidents.db");
        let mut conn = Connection::open(&path).map_err(sq("open"))?;
        // One aggregator owns the file: a second one (a misconfigured replica) fails at start
        // instead of keeping a second, diverging engine over the same incidents.
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(sq("locking_mode"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sq("journal_mode"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sq("synchronous"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sq("busy_timeout"))?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves the connection usable: SQLite rolled back
            // any open transaction when its guard dropped.
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut c)
        })
        .await
        .map_err(StoreError::Join)?
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let have: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sq("user_version"))?;
    let supported = MIGRATIONS.len() as i64;
    if have > supported {
        return Err(StoreError::Schema {
            found: have,
            supported,
        });
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(have as usize) {
        let tx = conn.transaction().map_err(sq("migrate"))?;
        tx.execute_batch(m).map_err(sq("migrate"))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(sq("migrate"))?;
        tx.commit().map_err(sq("migrate"))?;
        tracing::info!(version = i + 1, "IncidentStoreMigrated");
    }
    Ok(())
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Serializing our own types to a String cannot fail (no maps with non-string keys, no
    // custom serializers that error).
    serde_json::to_string(v).unwrap_or_default()
}

fn apply_tx(conn: &mut Connection, up: &Update) -> Result<(), StoreError> {
    let tx = conn.transaction().map_err(sq("begin"))?;
    {
        let mut seen = tx
            .prepare_cached("INSERT OR IGNORE INTO seen_ids (bucket_ms, id) VALUES (?1, ?2)")
            .map_err(sq("prepare seen"))?;
        for s in &up.seen {
            seen.execute(params![s.bucket_ms, &s.id.0[..]])
                .map_err(sq("insert seen"))?;
        }
        let mut inc = tx
            .prepare_cached(
                "INSERT INTO incidents (id, key, state, severity, namespace, workload, family,
                     opened_at_ms, last_seen_ms, resolved_at_ms, doc)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state,
                     severity = excluded.severity, last_seen_ms = excluded.last_seen_ms,
                     resolved_at_ms = excluded.resolved_at_ms, doc = excluded.doc",
            )
            .map_err(sq("prepare incident"))?;
        for i in &up.incidents {
            inc.execute(params![
                i.id.as_str(),
                i.key,
                i.state.as_str(),
                i.severity.as_str(),
                i.labels.get("namespace"),
                i.labels.get("workload"),
                i.family.as_str(),
                i.opened_at_ms,
                i.last_seen_ms,
                i.resolved_at_ms,
                to_json(i),
            ])
            .map_err(sq("upsert incident"))?;
        }
        let mut ev = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO events (incident, seq, doc) VALUES (?1, ?2, ?3)",
            )
            .map_err(sq("prepare event"))?;
        for e in &up.events {
            ev.execute(params![e.incident.as_str(), e.seq as i64, to_json(e)])
                .map_err(sq("insert event"))?;
        }
        let mut sil = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO silences (id, ends_at_ms, doc) VALUES (?1, ?2, ?3)",
            )
            .map_err(sq("prepare silence"))?;
        for s in &up.silences {
            sil.execute(params![s.id, s.ends_at_ms, to_json(s)])
                .map_err(sq("upsert silence"))?;
        }
    }
    tx.commit().map_err(sq("commit"))
}

fn parse<T: serde::de::DeserializeOwned>(what: &'static str, s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(corrupt(what))
}

impl IncidentStore for SqliteStore {
    async fn load(
        &self,
        seen_since_ms: i64,
        silences_since_ms: i64,
    ) -> Result<Snapshot, StoreError> {
        self.with(move |c| {
            let mut snap = Snapshot::default();
            let mut st = c
                .prepare("SELECT doc FROM incidents WHERE state != 'resolved'")
                .map_err(sq("load incidents"))?;
            let docs = st
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(sq("load incidents"))?;
            for d in docs {
                snap.active
                    .push(parse("incident", &d.map_err(sq("load incidents"))?)?);
            }
            let mut st = c
                .prepare("SELECT doc FROM silences WHERE ends_at_ms >= ?1")
                .map_err(sq("load silences"))?;
            let docs = st
                .query_map([silences_since_ms], |r| r.get::<_, String>(0))
                .map_err(sq("load silences"))?;
            for d in docs {
                snap.silences
                    .push(parse("silence", &d.map_err(sq("load silences"))?)?);
            }
            let mut st = c
                .prepare("SELECT bucket_ms, id FROM seen_ids WHERE bucket_ms >= ?1")
                .map_err(sq("load seen"))?;
            let rows = st
                .query_map([seen_since_ms], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
                })
                .map_err(sq("load seen"))?;
            for row in rows {
                let (bucket_ms, id) = row.map_err(sq("load seen"))?;
                if let Ok(raw) = <[u8; 16]>::try_from(id.as_slice()) {
                    snap.seen.push(SeenId {
                        bucket_ms,
                        id: RecordId(raw),
                    });
                }
            }
            Ok(snap)
        })
        .await
    }

    async fn apply(&self, update: &Update) -> Result<(), StoreError> {
        if update.is_empty() {
            return Ok(());
        }
        // The update is cloned onto the blocking pool; it is what the batch changed, not the
        // batch itself (ids are 24 bytes each, incidents one document each).
        let up = update.clone();
        self.with(move |c| apply_tx(c, &up)).await
    }

    async fn list(&self, q: &Query) -> Result<Page, StoreError> {
        let q = q.clone();
        self.with(move |c| {
            let mut sql = String::from("SELECT doc, id FROM incidents WHERE 1=1");
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
            let mut any_of = |col: &str, vals: Vec<String>, sql: &mut String| {
                if !vals.is_empty() {
                    sql.push_str(&format!(" AND {col} IN ("));
                    for (i, v) in vals.into_iter().enumerate() {
                        if i > 0 {
                            sql.push(',');
                        }
                        sql.push('?');
                        args.push(v.into());
                    }
                    sql.push(')');
                }
            };
            any_of(
                "state",
                q.states.iter().map(|s| s.as_str().to_owned()).collect(),
                &mut sql,
            );
            any_of(
                "severity",
                q.severities.iter().map(|s| s.as_str().to_owned()).collect(),
                &mut sql,
            );
            any_of("namespace", q.namespace.iter().cloned().collect(), &mut sql);
            any_of("workload", q.workload.iter().cloned().collect(), &mut sql);
            any_of(
                "family",
                q.family.iter().map(|f| f.as_str().to_owned()).collect(),
                &mut sql,
            );
            if let Some(t) = q.since_ms {
                sql.push_str(" AND last_seen_ms >= ?");
                args.push(t.into());
            }
            if let Some(t) = q.until_ms {
                sql.push_str(" AND opened_at_ms <= ?");
                args.push(t.into());
            }
            if let Some(a) = &q.after {
                sql.push_str(" AND id < ?");
                args.push(a.0.clone().into());
            }
            // One more than asked tells whether there is a next page.
            sql.push_str(" ORDER BY id DESC LIMIT ?");
            args.push(((q.limit.max(1) + 1) as i64).into());
            let mut st = c.prepare(&sql).map_err(sq("list"))?;
            let rows = st
                .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(0))
                .map_err(sq("list"))?;
            let mut incidents: Vec<Incident> = Vec::new();
            for d in rows {
                incidents.push(parse("incident", &d.map_err(sq("list"))?)?);
            }
            let next = if incidents.len() > q.limit.max(1) {
                incidents.truncate(q.limit.max(1));
                incidents.last().map(|i| i.id.clone())
            } else {
                None
            };
            Ok(Page { incidents, next })
        })
        .await
    }

    async fn get(&self, id: &IncidentId) -> Result<Option<Incident>, StoreError> {
        let id = id.clone();
        self.with(move |c| {
            let d: Option<String> = c
                .query_row(
                    "SELECT doc FROM incidents WHERE id = ?1",
                    [id.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sq("get"))?;
            d.map(|d| parse("incident", &d)).transpose()
        })
        .await
    }

    async fn events(
        &self,
        id: &IncidentId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let id = id.clone();
        self.with(move |c| {
            let mut st = c
                .prepare(
                    "SELECT doc FROM events WHERE incident = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
                )
                .map_err(sq("events"))?;
            let rows = st
                .query_map(params![id.as_str(), from_seq as i64, limit as i64], |r| {
                    r.get::<_, String>(0)
                })
                .map_err(sq("events"))?;
            let mut out = Vec::new();
            for d in rows {
                out.push(parse("event", &d.map_err(sq("events"))?)?);
            }
            Ok(out)
        })
        .await
    }

    async fn silences(&self) -> Result<Vec<Silence>, StoreError> {
        self.with(|c| {
            let mut st = c
                .prepare("SELECT doc FROM silences ORDER BY id DESC")
                .map_err(sq("silences"))?;
            let rows = st
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(sq("silences"))?;
            let mut out = Vec::new();
            for d in rows {
                out.push(parse("silence", &d.map_err(sq("silences"))?)?);
            }
            Ok(out)
        })
        .await
    }

    async fn counts(&self) -> Result<Counts, StoreError> {
        self.with(|c| {
            let mut st = c
                .prepare("SELECT state, severity, COUNT(*) FROM incidents GROUP BY state, severity")
                .map_err(sq("counts"))?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(sq("counts"))?;
            let mut out = Counts::default();
            for row in rows {
                let (state, sev, n) = row.map_err(sq("counts"))?;
                let (Ok(state), Ok(sev)) = (state.parse::<State>(), sev.parse::<Severity>()) else {
                    continue;
                };
                for _ in 0..n {
                    out.add(state, sev);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn prune(&self, before_ms: i64, seen_before_ms: i64) -> Result<Pruned, StoreError> {
        self.with(move |c| {
            let tx = c.transaction().map_err(sq("prune"))?;
            tx.execute(
                "DELETE FROM events WHERE incident IN
                   (SELECT id FROM incidents WHERE resolved_at_ms < ?1)",
                [before_ms],
            )
            .map_err(sq("prune events"))?;
            let incidents = tx
                .execute(
                    "DELETE FROM incidents WHERE resolved_at_ms < ?1",
                    [before_ms],
                )
                .map_err(sq("prune incidents"))?;
            let silences = tx
                .execute("DELETE FROM silences WHERE ends_at_ms < ?1", [before_ms])
                .map_err(sq("prune silences"))?;
            tx.execute(
                "DELETE FROM actions WHERE finished = 1 AND intent_at_ms < ?1",
                [before_ms],
            )
            .map_err(sq("prune actions"))?;
            let seen_ids = tx
                .execute(
                    "DELETE FROM seen_ids WHERE bucket_ms < ?1",
                    [seen_before_ms],
                )
                .map_err(sq("prune seen"))?;
            tx.commit().map_err(sq("prune"))?;
            Ok(Pruned {
                incidents: incidents as u64,
                silences: silences as u64,
                seen_ids: seen_ids as u64,
            })
        })
        .await
    }
}

fn actions_where(
    c: &mut Connection,
    sql_where: &str,
    arg: rusqlite::types::Value,
) -> Result<Vec<ActionRecord>, StoreError> {
    let mut st = c
        .prepare_cached(&format!(
            "SELECT doc FROM actions WHERE {sql_where} ORDER BY intent_at_ms, request_id"
        ))
        .map_err(sq("actions"))?;
    let rows = st
        .query_map([arg], |r| r.get::<_, String>(0))
        .map_err(sq("actions"))?;
    let mut out = Vec::new();
    for d in rows {
        out.push(parse("action", &d.map_err(sq("actions"))?)?);
    }
    Ok(out)
}

impl ActionStore for SqliteStore {
    async fn insert_intent(&self, record: &ActionRecord) -> Result<bool, StoreError> {
        let r = record.clone();
        self.with(move |c| {
            let n = c
                .prepare_cached(
                    "INSERT INTO actions (request_id, incident, intent_at_ms, finished, doc)
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (request_id) DO NOTHING",
                )
                .map_err(sq("prepare intent"))?
                .execute(params![
                    r.request_id,
                    r.incident.as_str(),
                    r.intent_at_ms,
                    r.is_finished(),
                    to_json(&r)
                ])
                .map_err(sq("insert intent"))?;
            Ok(n == 1)
        })
        .await
    }

    async fn update_action(&self, record: &ActionRecord) -> Result<(), StoreError> {
        let r = record.clone();
        self.with(move |c| {
            c.prepare_cached("UPDATE actions SET finished = ?2, doc = ?3 WHERE request_id = ?1")
                .map_err(sq("prepare action"))?
                .execute(params![r.request_id, r.is_finished(), to_json(&r)])
                .map_err(sq("update action"))?;
            Ok(())
        })
        .await
    }

    async fn action(&self, request_id: &str) -> Result<Option<ActionRecord>, StoreError> {
        let id = request_id.to_owned();
        self.with(move |c| Ok(actions_where(c, "request_id = ?1", id.into())?.pop()))
            .await
    }

    async fn actions_since(&self, since_ms: i64) -> Result<Vec<ActionRecord>, StoreError> {
        self.with(move |c| actions_where(c, "intent_at_ms >= ?1", since_ms.into()))
            .await
    }

    async fn unfinished_actions(&self) -> Result<Vec<ActionRecord>, StoreError> {
        self.with(|c| actions_where(c, "finished = ?1", 0_i64.into()))
            .await
    }

    async fn actions_of(&self, incident: &IncidentId) -> Result<Vec<ActionRecord>, StoreError> {
        let id = incident.0.clone();
        self.with(move |c| {
            let mut v = actions_where(c, "incident = ?1", id.into())?;
            v.sort_by_key(|r| r.step);
            Ok(v)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = SqliteStore::open(dir.path()).await.expect("open");
        drop(s);
        let c = Connection::open(dir.path().join("incidents.db")).expect("raw");
        c.pragma_update(None, "user_version", 99).expect("bump");
        drop(c);
        let e = SqliteStore::open(dir.path()).await.expect_err("newer");
        assert!(matches!(e, StoreError::Schema { found: 99, .. }), "{e}");
        assert!(!e.is_retryable());
    }

    #[tokio::test]
    async fn opening_twice_migrates_once_and_uses_wal() {
        let dir = tempfile::tempdir().expect("tmp");
        drop(SqliteStore::open(dir.path()).await.expect("open"));
        let s = SqliteStore::open(dir.path()).await.expect("reopen");
        let mode: String = s
            .with(|c| {
                c.pragma_query_value(None, "journal_mode", |r| r.get(0))
                    .map_err(sq("mode"))
            })
            .await
            .expect("mode");
        assert_eq!(mode, "wal");
    }
}
