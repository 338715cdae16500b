//! Per-handler, per-shard checkpoints: how far each handler has handled each shard.
//!
//! [`super::Delivery`] saves a checkpoint only after its [`super::Handler`] says the batch is
//! durable, so a crash replays at most the batches in flight (at-least-once), and before it
//! hands a batch over it saves the batch's range as [`Checkpoint::Pending`], so the replay is
//! the same batch (the lake names objects after the range, so a replay overwrites them).
//! [`CheckpointStore`] is the seam for other stores: the local-file [`FileCheckpoints`] is the
//! default (one aggregator replica with a persistent volume); a DynamoDB store, for several
//! replicas sharing shards with leases, is not written yet.

use std::future::Future;
use std::path::{Path, PathBuf};

/// Where a shard's reading resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    /// Resume after this sequence number.
    After(String),
    /// A batch was handed to the handler and may be partly done: resume after `after` (at the
    /// start when `None`) and cut the first batch at `through`, so the replay is that batch.
    Pending {
        /// Where the batch starts (after this sequence number).
        after: Option<String>,
        /// The batch's last sequence number.
        through: String,
    },
    /// The shard is closed and was read to its end: never read it again.
    ShardEnd,
}

impl Checkpoint {
    /// The sequence number reading resumes after (`None`: the start of the shard).
    pub fn resume_after(&self) -> Option<&str> {
        match self {
            Checkpoint::After(s) => Some(s),
            Checkpoint::Pending { after, .. } => after.as_deref(),
            Checkpoint::ShardEnd => None,
        }
    }

    /// Where the first batch must end, when a batch was in flight.
    pub fn cut_at(&self) -> Option<&str> {
        match self {
            Checkpoint::Pending { through, .. } => Some(through),
            _ => None,
        }
    }
}

/// A checkpoint that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file could not be read, written, synced or renamed.
    #[error("{op} checkpoint {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file holds something that is not a checkpoint (edited by hand, or a foreign file).
    #[error("checkpoint {path} is corrupt: {content:?}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What it holds (first 100 bytes).
        content: String,
    },
    /// A shard id that cannot be a file name.
    #[error("shard id {0:?} cannot name a checkpoint file")]
    BadShardId(String),
    /// The blocking file task did not complete.
    #[error("checkpoint file task did not complete")]
    Join(#[source] tokio::task::JoinError),
}

/// Durable per-shard checkpoints.
pub trait CheckpointStore: Send + Sync + 'static {
    /// The shard's checkpoint, `None` when it was never read.
    fn load(
        &self,
        shard_id: &str,
    ) -> impl Future<Output = Result<Option<Checkpoint>, CheckpointError>> + Send;

    /// Saves the shard's checkpoint durably before returning.
    fn save(
        &self,
        shard_id: &str,
        checkpoint: &Checkpoint,
    ) -> impl Future<Output = Result<(), CheckpointError>> + Send;
}

/// Checkpoints as one small text file per shard under a directory of their own (for Kinesis
/// `<checkpoint.dir>/<stream>/<handler>/`): `after <seq>`, `after <seq> pending <seq>`,
/// `pending <seq>` or `shard-end`. Each save writes a temporary file, syncs it, renames it over
/// the old one and syncs the directory, so a crash leaves the old checkpoint or the new one,
/// never a torn one.
#[derive(Debug, Clone)]
pub struct FileCheckpoints {
    dir: PathBuf,
    /// Read when `dir` has no checkpoint for a shard: where checkpoints were kept before there
    /// were handlers (`<checkpoint.dir>/<stream>/`), so the lake handler of an upgraded
    /// aggregator resumes where the old one stopped instead of re-reading the stream.
    legacy: Option<PathBuf>,
}

impl FileCheckpoints {
    /// Checkpoints in `dir` (created on first save).
    pub fn new(dir: PathBuf) -> FileCheckpoints {
        FileCheckpoints { dir, legacy: None }
    }

    /// Also reads checkpoints from `dir` for shards that have none of their own yet.
    pub fn with_legacy(mut self, dir: PathBuf) -> FileCheckpoints {
        self.legacy = Some(dir);
        self
    }

    fn path(&self, shard_id: &str) -> Result<PathBuf, CheckpointError> {
        // Kinesis shard ids are `shardId-<digits>`; refuse anything that could leave the dir.
        if shard_id.is_empty()
            || !shard_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(CheckpointError::BadShardId(shard_id.to_owned()));
        }
        Ok(self.dir.join(shard_id))
    }
}

fn parse(path: &Path, text: &str) -> Result<Checkpoint, CheckpointError> {
    let t = text.trim();
    if t == "shard-end" {
        return Ok(Checkpoint::ShardEnd);
    }
    let seq =
        |s: &str| (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.to_owned());
    let words: Vec<&str> = t.split(' ').collect();
    let parsed = match words.as_slice() {
        ["after", a] => seq(a).map(Checkpoint::After),
        ["after", a, "pending", b] => seq(a).zip(seq(b)).map(|(a, b)| Checkpoint::Pending {
            after: Some(a),
            through: b,
        }),
        ["pending", b] => seq(b).map(|b| Checkpoint::Pending {
            after: None,
            through: b,
        }),
        _ => None,
    };
    parsed.ok_or_else(|| CheckpointError::Corrupt {
        path: path.to_owned(),
        content: t.chars().take(100).collect(),
    })
}

fn text(checkpoint: &Checkpoint) -> String {
    match checkpoint {
        Checkpoint::After(seq) => format!("after {seq}\n"),
        Checkpoint::Pending {
            after: Some(a),
            through,
        } => format!("after {a} pending {through}\n"),
        Checkpoint::Pending {
            after: None,
            through,
        } => format!("pending {through}\n"),
        Checkpoint::ShardEnd => "shard-end\n".to_owned(),
    }
}

async fn load_file(path: PathBuf) -> Result<Option<Checkpoint>, CheckpointError> {
    match tokio::fs::read_to_string(&path).await {
        Ok(text) => parse(&path, &text).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CheckpointError::Io {
            op: "reading",
            path,
            source,
        }),
    }
}

/// The runtime's durable write (temporary sibling, fsync, rename over `path`, fsync the
/// directory): a crash leaves the old file or the new one, never a torn one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    selfheal_runtime::atomic::write(path, bytes).map_err(|e| CheckpointError::Io {
        op: e.op,
        path: e.path,
        source: e.source,
    })
}

impl CheckpointStore for FileCheckpoints {
    async fn load(&self, shard_id: &str) -> Result<Option<Checkpoint>, CheckpointError> {
        let path = self.path(shard_id)?;
        match (load_file(path).await?, &self.legacy) {
            (None, Some(legacy)) => load_file(legacy.join(shard_id)).await,
            (found, _) => Ok(found),
        }
    }

    async fn save(&self, shard_id: &str, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let path = self.path(shard_id)?;
        let text = text(checkpoint);
        tokio::task::spawn_blocking(move || write_atomic(&path, text.as_bytes()))
            .await
            .map_err(CheckpointError::Join)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn save_load_overwrite_and_corruption() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cps = FileCheckpoints::new(tmp.path().join("s"));
        assert_eq!(cps.load("shardId-000").await.expect("load"), None);
        let a = Checkpoint::After("4960".into());
        cps.save("shardId-000", &a).await.expect("save");
        assert_eq!(cps.load("shardId-000").await.expect("load"), Some(a));
        cps.save("shardId-000", &Checkpoint::ShardEnd)
            .await
            .expect("save");
        assert_eq!(
            cps.load("shardId-000").await.expect("load"),
            Some(Checkpoint::ShardEnd)
        );
        assert!(!tmp.path().join("s/shardId-000.tmp").exists());
        std::fs::write(tmp.path().join("s/shardId-001"), "after x").expect("write");
        assert!(matches!(
            cps.load("shardId-001").await,
            Err(CheckpointError::Corrupt { .. })
        ));
        assert!(matches!(
            cps.load("../etc").await,
            Err(CheckpointError::BadShardId(_))
        ));
    }

    #[tokio::test]
    async fn pending_round_trips_and_legacy_checkpoints_are_read_until_replaced() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let legacy = tmp.path().join("stream");
        std::fs::create_dir_all(&legacy).expect("mkdir");
        std::fs::write(legacy.join("shardId-000"), "after 17\n").expect("legacy checkpoint");
        let cps = FileCheckpoints::new(legacy.join("lake")).with_legacy(legacy.clone());
        assert_eq!(
            cps.load("shardId-000").await.expect("load"),
            Some(Checkpoint::After("17".into()))
        );
        for cp in [
            Checkpoint::Pending {
                after: Some("17".into()),
                through: "90".into(),
            },
            Checkpoint::Pending {
                after: None,
                through: "5".into(),
            },
        ] {
            cps.save("shardId-000", &cp).await.expect("save");
            assert_eq!(
                cps.load("shardId-000").await.expect("load"),
                Some(cp.clone())
            );
        }
        assert_eq!(
            Checkpoint::Pending {
                after: Some("17".into()),
                through: "90".into()
            }
            .resume_after(),
            Some("17")
        );
    }
}
