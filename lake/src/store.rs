//! Where lake objects live: a local directory (the default) or an S3 bucket and prefix.
//!
//! [`LakeStore`] puts, lists and gets whole objects by key (`dt=.../hour=.../family=.../x.parquet`);
//! [`super::LakeWriter`] decides the keys and the trainer reads through [`super::read_family`].
//! A put is atomic in both: the directory writes a temporary file, syncs it and renames it over the
//! key (then syncs the directory, so the rename survives a power cut); S3's PutObject replaces
//! whole objects. So a retried put of the same key overwrites and never leaves half a file.

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use selfheal_runtime::aws::AwsSettings;
use std::path::{Path, PathBuf};

/// A lake object that could not be written, listed or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A local file operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An S3 call failed (the message carries the SDK's whole error chain).
    #[error("S3 {op} s3://{bucket}/{key}: {message}")]
    S3 {
        /// The operation.
        op: &'static str,
        /// The bucket.
        bucket: String,
        /// The key or prefix.
        key: String,
        /// The SDK's error, with its causes.
        message: String,
    },
    /// A location that is neither a directory path nor `s3://bucket[/prefix]`.
    #[error("lake location {0:?}: expected a directory or s3://bucket[/prefix]")]
    BadLocation(String),
    /// A blocking file task did not finish (the runtime is shutting down).
    #[error("file task did not complete")]
    Join(#[source] tokio::task::JoinError),
}

/// Endpoint and region overrides for S3; the rest comes from the standard AWS chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    /// AWS region; default: the standard chain.
    pub region: Option<String>,
    /// Endpoint override; `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3` work too.
    pub endpoint_url: Option<String>,
}

/// A lake: a local directory or an S3 bucket and key prefix.
#[derive(Debug, Clone)]
pub enum LakeStore {
    /// Objects are files under this directory.
    Dir(PathBuf),
    /// Objects are keys under `prefix` (empty, or ending in `/`) in `bucket`.
    S3 {
        /// The client.
        client: aws_sdk_s3::Client,
        /// The bucket.
        bucket: String,
        /// Key prefix, empty or ending in `/`.
        prefix: String,
    },
}

/// Splits `s3://bucket/prefix` into bucket and a prefix that is empty or ends in `/`.
pub fn parse_s3_url(location: &str) -> Option<(String, String)> {
    // The runtime's parser validates the bucket and prefix, so a bad name fails at start.
    let url = selfheal_runtime::s3url::S3Url::parse(location).ok()??;
    let prefix = url.dir_prefix();
    Some((url.bucket, prefix))
}

impl LakeStore {
    /// Opens `location`: `s3://bucket[/prefix]`, or else a directory path (created if absent).
    pub async fn open(location: &str, s3: &S3Options) -> Result<LakeStore, StoreError> {
        if location.starts_with("s3://") {
            let (bucket, prefix) = parse_s3_url(location)
                .ok_or_else(|| StoreError::BadLocation(location.to_owned()))?;
            let sdk = selfheal_runtime::aws::sdk_config(&AwsSettings {
                region: s3.region.clone(),
                endpoint_url: s3.endpoint_url.clone(),
                ..AwsSettings::default()
            })
            .await;
            return Ok(LakeStore::S3 {
                client: selfheal_runtime::aws::s3_client(&sdk),
                bucket,
                prefix,
            });
        }
        if location.is_empty() {
            return Err(StoreError::BadLocation(location.to_owned()));
        }
        let dir = PathBuf::from(location);
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            op: "creating",
            path: dir.clone(),
            source,
        })?;
        Ok(LakeStore::Dir(dir))
    }

    /// Writes `bytes` at `key`, replacing what is there, atomically.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        match self {
            LakeStore::Dir(dir) => {
                let path = dir.join(key);
                tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
                    .await
                    .map_err(StoreError::Join)?
            }
            LakeStore::S3 {
                client,
                bucket,
                prefix,
            } => {
                let full = format!("{prefix}{key}");
                client
                    .put_object()
                    .bucket(bucket)
                    .key(&full)
                    .content_type(if key.ends_with(".json") {
                        "application/json"
                    } else {
                        "application/vnd.apache.parquet"
                    })
                    .body(ByteStream::from(bytes))
                    .send()
                    .await
                    .map_err(|e| StoreError::S3 {
                        op: "PutObject",
                        bucket: bucket.clone(),
                        key: full,
                        message: DisplayErrorContext(&e).to_string(),
                    })?;
                Ok(())
            }
        }
    }

    /// Keys of every object whose key ends in `suffix`, relative to the lake root, sorted.
    pub async fn list(&self, suffix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = match self {
            LakeStore::Dir(dir) => {
                let dir = dir.clone();
                let suffix = suffix.to_owned();
                tokio::task::spawn_blocking(move || list_dir(&dir, &suffix))
                    .await
                    .map_err(StoreError::Join)??
            }
            LakeStore::S3 {
                client,
                bucket,
                prefix,
            } => {
                let mut keys = Vec::new();
                let mut pages = client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(prefix)
                    .into_paginator()
                    .send();
                while let Some(page) = pages.next().await {
                    let page = page.map_err(|e| StoreError::S3 {
                        op: "ListObjectsV2",
                        bucket: bucket.clone(),
                        key: prefix.clone(),
                        message: DisplayErrorContext(&e).to_string(),
                    })?;
                    keys.extend(
                        page.contents()
                            .iter()
                            .filter_map(|o| o.key())
                            .filter(|k| k.ends_with(suffix))
                            .filter_map(|k| k.strip_prefix(prefix.as_str()))
                            .map(str::to_owned),
                    );
                }
                keys
            }
        };
        keys.sort();
        Ok(keys)
    }

    /// Reads the object at `key`.
    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        match self {
            LakeStore::Dir(dir) => {
                let path = dir.join(key);
                tokio::fs::read(&path)
                    .await
                    .map(Bytes::from)
                    .map_err(|source| StoreError::Io {
                        op: "reading",
                        path,
                        source,
                    })
            }
            LakeStore::S3 {
                client,
                bucket,
                prefix,
            } => {
                let full = format!("{prefix}{key}");
                let err = |e: String| StoreError::S3 {
                    op: "GetObject",
                    bucket: bucket.clone(),
                    key: full.clone(),
                    message: e,
                };
                let out = client
                    .get_object()
                    .bucket(bucket)
                    .key(&full)
                    .send()
                    .await
                    .map_err(|e| err(DisplayErrorContext(&e).to_string()))?;
                let body = out.body.collect().await.map_err(|e| err(e.to_string()))?;
                Ok(body.into_bytes())
            }
        }
    }

    /// Where the lake is, for logs: the directory or `s3://bucket/prefix`.
    pub fn location(&self) -> String {
        match self {
            LakeStore::Dir(d) => d.display().to_string(),
            LakeStore::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}"),
        }
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Durably replaces `path` (the runtime's atomic write: temporary sibling, fsync, rename,
/// fsync the directory).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    selfheal_runtime::atomic::write(path, bytes).map_err(|e| StoreError::Io {
        op: e.op,
        path: e.path,
        source: e.source,
    })
}

fn list_dir(root: &Path, suffix: &str) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).map_err(io("listing", &dir))? {
            let e = e.map_err(io("listing", &dir))?;
            let path = e.path();
            let ty = e.file_type().map_err(io("listing", &path))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if ty.is_dir() {
                stack.push(path);
            } else if !name.starts_with('.')
                && name.ends_with(suffix)
                && let Ok(rel) = path.strip_prefix(root)
            {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls() {
        // Bucket names are S3's (three characters at least): the runtime's parser validates.
        assert_eq!(
            parse_s3_url("s3://bkt/lake/x/"),
            Some(("bkt".into(), "lake/x/".into()))
        );
        assert_eq!(
            parse_s3_url("s3://bkt"),
            Some(("bkt".into(), String::new()))
        );
        assert_eq!(parse_s3_url("s3:///x"), None);
        assert_eq!(parse_s3_url("/tmp/x"), None);
        assert_eq!(parse_s3_url("s3://Bad_Bucket/x"), None);
        assert_eq!(parse_s3_url("s3://bkt/a/../b"), None);
    }

    #[tokio::test]
    async fn dir_put_overwrites_and_lists_only_finished_objects() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let loc = tmp.path().join("lake");
        let store = LakeStore::open(&loc.to_string_lossy(), &S3Options::default())
            .await
            .expect("open");
        store
            .put("dt=x/a.parquet", b"one".to_vec())
            .await
            .expect("put");
        store
            .put("dt=x/a.parquet", b"two".to_vec())
            .await
            .expect("put again");
        std::fs::write(loc.join("dt=x/.b.parquet.tmp-1"), b"partial").expect("stray temp");
        assert_eq!(
            store.list(".parquet").await.expect("list"),
            ["dt=x/a.parquet"]
        );
        assert_eq!(&store.get("dt=x/a.parquet").await.expect("get")[..], b"two");
    }
}
