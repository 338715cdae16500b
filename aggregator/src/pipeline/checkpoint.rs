//! Per-shard checkpoints: how far each shard has been written downstream.
//!
//! [`super::Consumer`] saves a checkpoint only after its [`super::BatchHandler`] says the batch is
//! durable, so a crash replays at most the batches in flight (at-least-once; the lake names
//! objects so a replay overwrites them). [`CheckpointStore`] is the seam for other stores: the
//! local-file [`FileCheckpoints`] is the default (one aggregator replica with a persistent
//! volume); a DynamoDB store, for several replicas sharing shards with leases, is not written yet.

use std::future::Future;
use std::path::{Path, PathBuf};

/// Where a shard's reading resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    /// Resume after this sequence number.
    After(String),
    /// The shard is closed and was read to its end: never read it again.
    ShardEnd,
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

/// Checkpoints as one small text file per shard under `<dir>/<stream>/`: `after <seq>` or
/// `shard-end`. Each save writes a temporary file, syncs it, renames it over the old one and
/// syncs the directory, so a crash leaves the old checkpoint or the new one, never a torn one.
#[derive(Debug, Clone)]
pub struct FileCheckpoints {
    dir: PathBuf,
}

impl FileCheckpoints {
    /// Checkpoints of `stream` under `root` (created on first save).
    pub fn new(root: &Path, stream: &str) -> FileCheckpoints {
        FileCheckpoints {
            dir: root.join(stream),
        }
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
    match t.strip_prefix("after ") {
        Some(seq) if !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(Checkpoint::After(seq.to_owned()))
        }
        _ => Err(CheckpointError::Corrupt {
            path: path.to_owned(),
            content: t.chars().take(100).collect(),
        }),
    }
}

fn save_sync(dir: &Path, path: &Path, text: &str) -> Result<(), CheckpointError> {
    use std::io::Write;
    let io = |op: &'static str, p: &Path| {
        let p = p.to_owned();
        move |source| CheckpointError::Io {
            op,
            path: p,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io("creating directory for", dir))?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
    f.write_all(text.as_bytes()).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io("renaming", path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing directory of", dir))
}

impl CheckpointStore for FileCheckpoints {
    async fn load(&self, shard_id: &str) -> Result<Option<Checkpoint>, CheckpointError> {
        let path = self.path(shard_id)?;
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

    async fn save(&self, shard_id: &str, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let path = self.path(shard_id)?;
        let text = match checkpoint {
            Checkpoint::After(seq) => format!("after {seq}\n"),
            Checkpoint::ShardEnd => "shard-end\n".to_owned(),
        };
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || save_sync(&dir, &path, &text))
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
        let cps = FileCheckpoints::new(tmp.path(), "s");
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
}
