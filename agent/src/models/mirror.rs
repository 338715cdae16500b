//! Model mirror: keeps a local copy of an S3 model store so [`crate::detect::ModelRegistry`]
//! can read it exactly as it reads a published directory.
//!
//! The store's layout is `selfheal_core::store`'s (`<prefix>/<family>/<version>/{model.onnx,
//! manifest.json}` and `<prefix>/<family>/latest`). Each [`S3Mirror::sync`] fetches every
//! family's `latest` with `If-None-Match` on the ETag it last saw, so an unchanged store costs one
//! small conditional GET per family and poll. A new version is downloaded into a hidden temporary
//! directory of the cache, renamed into place, and only then does the cache's own `latest` move to
//! it; the registry, which runs after the sync on the same poll, then loads it with all its checks
//! (checksum, feature schema, input shape), refusing a bad model and keeping the previous one.
//! The mirror itself checks nothing about models: one place decides what is loadable.
//!
//! Failures (S3 unreachable, access denied, a download cut short) are events, not crashes: each
//! is logged and counted, the cache is left as it was (so the models in use keep scoring), and
//! the next poll tries again. Only the version `latest` names is kept in the cache: loaded
//! models live in memory, so older files are not needed.

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::SdkError;
use selfheal_core::Family;
use selfheal_core::model::{MANIFEST_FILE, MODEL_FILE};
use selfheal_core::store::{LATEST_FILE, S3Store, is_plain_name};
use selfheal_runtime::atomic;
use selfheal_runtime::aws::{AwsSettings, SdkRetry};
use selfheal_runtime::chain::ErrorChain;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest object the mirror downloads: a model far beyond any forest the trainer writes (a
/// 100-tree forest is ~0.3 MiB) is refused before it is read into memory.
pub const MAX_OBJECT_BYTES: i64 = 256 << 20;

/// S3 connection settings (the S3 part of `[models]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Settings {
    /// Region override; the standard chain otherwise.
    pub region: Option<String>,
    /// Endpoint override; `AWS_ENDPOINT_URL` works too.
    pub endpoint_url: Option<String>,
}

/// One failed step of a sync.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// An S3 request failed (unreachable, denied, throttled, cut short).
    #[error("S3 GetObject s3://{bucket}/{key}")]
    S3 {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// The SDK's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// S3 could not be reached or did not answer in time (connect failure, timeout, a
    /// connection cut mid-response): the rest of the sync waits for the next poll.
    #[error("S3 unreachable at s3://{bucket}/{key}")]
    Unreachable {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// The SDK's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An object larger than [`MAX_OBJECT_BYTES`].
    #[error("s3://{bucket}/{key} is {bytes} bytes, more than the {MAX_OBJECT_BYTES} allowed")]
    TooLarge {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// Its size.
        bytes: i64,
    },
    /// `latest` does not name a plain version.
    #[error("s3://{bucket}/{key} names {value:?}, which is not a version name")]
    BadPointer {
        /// The bucket.
        bucket: String,
        /// The key of `latest`.
        key: String,
        /// What it holds.
        value: String,
    },
    /// The cache could not be written.
    #[error("{path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A durable write into the cache (`latest`, a version's directory) failed.
    #[error("cannot write the model cache")]
    Write(#[source] atomic::AtomicWriteError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MirrorError + '_ {
    move |source| MirrorError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What one sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Versions downloaded into the cache, per family.
    pub downloaded: Vec<(Family, String)>,
    /// Steps that failed (each already logged).
    pub errors: Vec<(Family, MirrorError)>,
}

/// Mirrors an S3 model store into a cache directory; see the module docs.
#[derive(Debug, Clone)]
pub struct S3Mirror {
    client: Client,
    store: S3Store,
    cache: PathBuf,
    /// ETag of each family's `latest` as last mirrored.
    etags: HashMap<Family, String>,
}

/// An S3 client from the standard AWS chain plus `settings`, addressed by the runtime's one
/// path-style rule. Timeouts bound a poll when S3 hangs; the SDK retries a request once more,
/// and the next poll retries anyway.
pub async fn s3_client(settings: &S3Settings) -> Client {
    let sdk = selfheal_runtime::aws::sdk_config(&AwsSettings {
        region: settings.region.clone(),
        endpoint_url: settings.endpoint_url.clone(),
        retry: SdkRetry::Attempts(2),
        connect_timeout: Some(Duration::from_secs(3)),
        attempt_timeout: Some(Duration::from_secs(60)),
    })
    .await;
    selfheal_runtime::aws::s3_client(&sdk)
}

/// What a conditional GET of `latest` found.
enum Pointer {
    /// Same ETag as last time.
    Unchanged,
    /// No `latest` for this family.
    Absent,
    /// A new value, with its ETag.
    Changed { version: String, etag: String },
}

impl S3Mirror {
    /// A mirror of `store` into `cache` (which must exist).
    pub fn new(client: Client, store: S3Store, cache: PathBuf) -> Self {
        S3Mirror {
            client,
            store,
            cache,
            etags: HashMap::new(),
        }
    }

    /// The cache directory: the root to give the [`crate::detect::ModelRegistry`].
    pub fn cache(&self) -> &Path {
        &self.cache
    }

    /// Brings the cache up to date with the store's `latest` pointers. Never fails as a whole:
    /// each family's failure is logged, counted in the report and retried next time.
    pub async fn sync(&mut self) -> SyncReport {
        let mut report = SyncReport::default();
        for family in Family::ALL {
            match self.sync_family(family).await {
                Ok(Some(version)) => report.downloaded.push((family, version)),
                Ok(None) => {}
                Err(e) => {
                    let chain = ErrorChain::causes(&e).to_string();
                    tracing::warn!(%family, store = %self.store, error = %e, cause = %chain, "ModelMirrorError");
                    let unreachable = matches!(e, MirrorError::Unreachable { .. });
                    report.errors.push((family, e));
                    if unreachable {
                        // Every family would wait out the same timeouts: try again next poll.
                        break;
                    }
                }
            }
        }
        report
    }

    async fn sync_family(&mut self, family: Family) -> Result<Option<String>, MirrorError> {
        let (version, etag) = match self.pointer(family).await? {
            Pointer::Unchanged | Pointer::Absent => return Ok(None),
            Pointer::Changed { version, etag } => (version, etag),
        };
        let family_dir = self.cache.join(family.as_str());
        std::fs::create_dir_all(&family_dir).map_err(io(&family_dir))?;
        let dest = family_dir.join(&version);
        let downloaded = if dest.join(MANIFEST_FILE).is_file() {
            false
        } else {
            self.download(family, &version, &family_dir, &dest).await?;
            true
        };
        let latest = family_dir.join(LATEST_FILE);
        atomic::write(&latest, format!("{version}\n").as_bytes()).map_err(MirrorError::Write)?;
        self.etags.insert(family, etag);
        prune(&family_dir, &version);
        if downloaded {
            tracing::info!(%family, %version, store = %self.store, "ModelDownloaded");
            Ok(Some(version))
        } else {
            Ok(None)
        }
    }

    async fn pointer(&self, family: Family) -> Result<Pointer, MirrorError> {
        let key = self.store.latest_key(family.as_str());
        let mut get = self
            .client
            .get_object()
            .bucket(&self.store.bucket)
            .key(&key);
        if let Some(etag) = self.etags.get(&family) {
            get = get.if_none_match(etag);
        }
        let out = match get.send().await {
            Ok(out) => out,
            Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() => {
                return Ok(Pointer::Absent);
            }
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 304) => {
                return Ok(Pointer::Unchanged);
            }
            Err(e) => return Err(self.sdk_error(&key, e)),
        };
        let etag = out.e_tag().unwrap_or_default().to_owned();
        let bytes = self.body(&key, out).await?;
        let value = String::from_utf8_lossy(&bytes).trim().to_owned();
        if !is_plain_name(&value) {
            return Err(MirrorError::BadPointer {
                bucket: self.store.bucket.clone(),
                key,
                value,
            });
        }
        Ok(Pointer::Changed {
            version: value,
            etag,
        })
    }

    /// Downloads a version's two files into a hidden temporary directory, then renames it to
    /// `dest`: the cache never holds half a version under its real name.
    async fn download(
        &self,
        family: Family,
        version: &str,
        family_dir: &Path,
        dest: &Path,
    ) -> Result<(), MirrorError> {
        let tmp = family_dir.join(format!(".{version}.tmp"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir(&tmp).map_err(io(&tmp))?;
        for name in [MODEL_FILE, MANIFEST_FILE] {
            let key = self.store.file_key(family.as_str(), version, name);
            let out = self
                .client
                .get_object()
                .bucket(&self.store.bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| self.sdk_error(&key, e))?;
            let bytes = self.body(&key, out).await?;
            let path = tmp.join(name);
            std::fs::write(&path, bytes).map_err(io(&path))?;
        }
        if dest.exists() {
            // A half-written leftover from a crash between rename and `latest`: never loaded,
            // since `latest` did not name it yet.
            std::fs::remove_dir_all(dest).map_err(io(dest))?;
        }
        atomic::rename_dir(&tmp, dest).map_err(MirrorError::Write)
    }

    async fn body(
        &self,
        key: &str,
        out: aws_sdk_s3::operation::get_object::GetObjectOutput,
    ) -> Result<Vec<u8>, MirrorError> {
        if let Some(bytes) = out.content_length().filter(|&n| n > MAX_OBJECT_BYTES) {
            return Err(MirrorError::TooLarge {
                bucket: self.store.bucket.clone(),
                key: key.to_owned(),
                bytes,
            });
        }
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| self.s3_error(key, e))?;
        Ok(body.into_bytes().to_vec())
    }

    /// Classifies an SDK error: no answer from S3 is [`MirrorError::Unreachable`], an answer
    /// (denied, no such bucket, throttled) is [`MirrorError::S3`].
    fn sdk_error<E>(&self, key: &str, e: SdkError<E, HttpResponse>) -> MirrorError
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        match e {
            SdkError::DispatchFailure(_)
            | SdkError::TimeoutError(_)
            | SdkError::ResponseError(_) => MirrorError::Unreachable {
                bucket: self.store.bucket.clone(),
                key: key.to_owned(),
                source: Box::new(e),
            },
            e => self.s3_error(key, e),
        }
    }

    fn s3_error(
        &self,
        key: &str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> MirrorError {
        MirrorError::S3 {
            bucket: self.store.bucket.clone(),
            key: key.to_owned(),
            source: Box::new(e),
        }
    }
}

/// Removes every version directory but `keep` (best effort: a file left over is only disk).
fn prune(family_dir: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(family_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name == keep || !is_plain_name(&name) || !e.path().is_dir() {
            continue;
        }
        if let Err(error) = std::fs::remove_dir_all(e.path()) {
            tracing::debug!(path = %e.path().display(), %error, "ModelCachePruneError");
        }
    }
}
