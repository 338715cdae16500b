//! Model mirror: keeps a local copy of an S3 model store so [`crate::detect::ModelRegistry`]
//! can read it exactly as it reads a published directory.
//!
//! The store's layout is `selfheal_core::store`'s (`<prefix>/<family>/<version>/{model.onnx,
//! manifest.json}` and `<prefix>/<family>/latest`). Each [`S3Mirror::sync`] fetches every
//! family's `latest` with `If-None-Match` on the ETag it last saw, so an unchanged store costs one
//! small conditional GET per family and poll. A new version (`model.onnx`, `manifest.json` and,
//! when the store has one, `signature.json`, each capped at its bound as it arrives) is
//! downloaded into a hidden temporary directory of the cache, renamed into place, and only then
//! does the cache's own `latest` move to it; a `latest` moved back to the cached version
//! refreshes only its `signature.json` (a signed rollback). The registry, which runs after the
//! sync on the same poll, then loads it with all its checks (signature, bounds, checksum,
//! feature schema, input shape), refusing a bad model and keeping the previous one.
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
use selfheal_core::model_bounds::{
    MAX_LATEST_BYTES, MAX_MANIFEST_BYTES, MAX_MODEL_BYTES, MAX_SIGNATURE_BYTES,
};
use selfheal_core::signature::SIGNATURE_FILE;
use selfheal_core::store::{LATEST_FILE, S3Store, is_plain_name};
use selfheal_runtime::atomic;
use selfheal_runtime::aws::{AwsSettings, SdkRetry};
use selfheal_runtime::chain::ErrorChain;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest object the mirror downloads for each file: the bounds of
/// `selfheal_core::model_bounds` (16 MiB for `model.onnx`, against the agent pod's 128 MiB).
/// A larger object is refused by its `Content-Length` before its body is read, and, when the
/// length is absent or wrong, as soon as one byte more than the bound has arrived.
pub fn max_object_bytes(name: &str) -> u64 {
    match name {
        MODEL_FILE => MAX_MODEL_BYTES,
        MANIFEST_FILE => MAX_MANIFEST_BYTES,
        SIGNATURE_FILE => MAX_SIGNATURE_BYTES,
        _ => MAX_LATEST_BYTES,
    }
}

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
    /// An object larger than its bound ([`max_object_bytes`]): refused by its length, or
    /// when more bytes than the bound arrived.
    #[error("s3://{bucket}/{key} is larger than the {max} bytes allowed")]
    TooLarge {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// The bound.
        max: u64,
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
            // `latest` moved back to the cached version, perhaps re-signed (a rollback).
            self.refresh_signature(family, &version, &dest).await?;
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
        let bytes = self.body(&key, out, MAX_LATEST_BYTES).await?;
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
        for name in [MODEL_FILE, MANIFEST_FILE, SIGNATURE_FILE] {
            // An unsigned version has no signature: the registry decides whether it loads.
            let Some(bytes) = self.file(family, version, name).await? else {
                continue;
            };
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

    /// One file of a version, within its bound; `None` for a signature the store does not
    /// have (any other missing file is an error).
    async fn file(
        &self,
        family: Family,
        version: &str,
        name: &str,
    ) -> Result<Option<Vec<u8>>, MirrorError> {
        let key = self.store.file_key(family.as_str(), version, name);
        let out = match self
            .client
            .get_object()
            .bucket(&self.store.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(SdkError::ServiceError(e))
                if name == SIGNATURE_FILE && e.err().is_no_such_key() =>
            {
                return Ok(None);
            }
            Err(e) => return Err(self.sdk_error(&key, e)),
        };
        self.body(&key, out, max_object_bytes(name)).await.map(Some)
    }

    /// Brings a cached version's `signature.json` in line with the store's (replaced, or
    /// removed when the store has none), by a rename so a load never reads half of it.
    async fn refresh_signature(
        &self,
        family: Family,
        version: &str,
        dest: &Path,
    ) -> Result<(), MirrorError> {
        let path = dest.join(SIGNATURE_FILE);
        match self.file(family, version, SIGNATURE_FILE).await? {
            Some(bytes) => {
                if std::fs::read(&path).ok().as_deref() == Some(&bytes[..]) {
                    return Ok(());
                }
                let tmp = dest.join(format!(".{SIGNATURE_FILE}.tmp"));
                std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
                std::fs::rename(&tmp, &path).map_err(io(&path))
            }
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
                _ => Ok(()),
            },
        }
    }

    /// The body of `out`, refused once more than `max` bytes arrive (or by its length, before
    /// reading): a body without `Content-Length` never grows past the bound in memory.
    async fn body(
        &self,
        key: &str,
        out: aws_sdk_s3::operation::get_object::GetObjectOutput,
        max: u64,
    ) -> Result<Vec<u8>, MirrorError> {
        let too_large = || MirrorError::TooLarge {
            bucket: self.store.bucket.clone(),
            key: key.to_owned(),
            max,
        };
        let declared = out.content_length();
        if declared.is_some_and(|n| u64::try_from(n).map_or(true, |n| n > max)) {
            return Err(too_large());
        }
        let mut body = out.body;
        let mut bytes = Vec::new();
        while let Some(chunk) = body.try_next().await.map_err(|e| self.s3_error(key, e))? {
            if (bytes.len() + chunk.len()) as u64 > max {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
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
