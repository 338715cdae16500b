//! Publishing a model directory into a versioned store that agents pull from.
//!
//! The layout is `selfheal_core::store`'s, the same for both kinds of store, so the agent reads
//! them with one piece of logic:
//!
//! * a directory ([`publish`]): `<store>/<family>/<version>/` (a copy of the model directory) and
//!   `<store>/<family>/latest`. The copy goes into a temporary directory beside its destination,
//!   its `model.onnx` checksum is checked against the manifest, then it is renamed into place;
//! * S3 ([`s3::publish`]): `model.onnx` then `manifest.json` under `<prefix>/<family>/<version>/`,
//!   then `<prefix>/<family>/latest`.
//!
//! The directory store's writes go through `selfheal_runtime::atomic`: the version directory is
//! fsynced whole before its rename and `latest` is replaced durably, so after a power cut
//! `latest` never names a version whose files did not reach the disk.
//!
//! With `--sign-key` each store also gets `signature.json` beside the manifest ([`signing`]),
//! before `latest` moves; without it, a `signature.json` in the source (from `selfheal model
//! sign`) is published as it is. Manifests outside `selfheal_core::model_bounds` are refused
//! before anything is written, since every agent would refuse them.
//!
//! Either way the source's checksum is verified first and `latest` is written last, so a reader
//! following `latest` always finds a complete, verified version. A published version is never
//! changed: publishing it again with the same files is a no-op that points `latest` at it again
//! (so a publish interrupted before `latest` can simply be re-run, and an older version can be
//! rolled back to); publishing it with different files is refused.

pub mod s3;
pub mod signing;

use crate::artifact::{ArtifactError, read_manifest, sha256_file};
use selfheal_core::model::{MANIFEST_FILE, MODEL_FILE, ModelManifest};
use selfheal_core::signature::SIGNATURE_FILE;
pub use selfheal_core::store::LATEST_FILE;
use selfheal_core::store::is_plain_name;
use selfheal_runtime::atomic::{self, AtomicWriteError};
pub use signing::Signing;
use std::path::{Path, PathBuf};

/// A publish that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The model directory could not be read.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// A file could not be copied or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `model.onnx` does not match the manifest's checksum (in the source or after copying).
    #[error("{path}: sha256 {actual} does not match the manifest's {expected:?}")]
    Checksum {
        /// The file checked.
        path: PathBuf,
        /// Checksum in the manifest.
        expected: String,
        /// Checksum of the file.
        actual: String,
    },
    /// A durable write into the store failed (the step and path are in the message).
    #[error(transparent)]
    Write(#[from] AtomicWriteError),
    /// That family and version are already in the store, with different files.
    #[error("{0} already exists with different content: versions are never overwritten")]
    Exists(String),
    /// A family or version that is not a single safe path component.
    #[error("{field} {value:?} is not a valid path component")]
    BadName {
        /// `family` or `version`.
        field: &'static str,
        /// The value.
        value: String,
    },
    /// The model could not be signed (a bad signing key, a manifest that is not JSON).
    #[error("signing the model")]
    Signature(#[from] selfheal_core::signature::SignatureError),
    /// A manifest field is outside the bounds agents enforce: they would refuse the model.
    #[error("the manifest is out of bounds, agents would refuse it")]
    Bounds(#[from] selfheal_core::model_bounds::BoundsError),
    /// A signed publish of a version older than the store's latest without `--rollback`.
    #[error(
        "{version} is older than the published latest {latest}: agents refuse it unless it is \
         signed as a rollback (pass --rollback)"
    )]
    Rollback {
        /// The version published.
        version: String,
        /// The version `latest` names.
        latest: String,
    },
    /// The destination is not a usable `s3://` URL.
    #[error(transparent)]
    S3Url(#[from] selfheal_core::store::S3UrlError),
    /// An S3 request failed.
    #[error("S3 {operation} s3://{bucket}/{key}")]
    S3 {
        /// `GetObject`, `PutObject`.
        operation: &'static str,
        /// The bucket.
        bucket: String,
        /// The object key.
        key: String,
        /// The SDK's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PublishError + '_ {
    move |source| PublishError::Io {
        path: path.to_owned(),
        source,
    }
}

fn safe_component(field: &'static str, value: &str) -> Result<(), PublishError> {
    if is_plain_name(value) {
        Ok(())
    } else {
        Err(PublishError::BadName {
            field,
            value: value.to_owned(),
        })
    }
}

/// Reads `model_dir`'s manifest, checks its names and that `model.onnx` matches its checksum:
/// what every store does before writing anything.
fn checked_source(model_dir: &Path) -> Result<ModelManifest, PublishError> {
    let manifest = read_manifest(model_dir)?;
    safe_component("family", &manifest.family)?;
    safe_component("version", &manifest.version)?;
    selfheal_core::model_bounds::check_manifest(&manifest)?;
    verify(model_dir, &manifest.model_sha256)?;
    Ok(manifest)
}

fn verify(dir: &Path, expected: &str) -> Result<(), PublishError> {
    let path = dir.join(MODEL_FILE);
    let actual = sha256_file(&path)?;
    if actual != expected {
        return Err(PublishError::Checksum {
            path,
            expected: expected.to_owned(),
            actual,
        });
    }
    Ok(())
}

/// The bytes of `dir/name`, `None` when it does not exist.
fn read_optional(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, PublishError> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PublishError::Io { path, source }),
    }
}

/// `signature.json` for `model_dir` as it will be published: signed now with `signing`
/// (keeping the serial of `previous`, an earlier signature of the version, else of the
/// source's own), or the source's `signature.json` as it is, or none.
fn signature_for(
    model_dir: &Path,
    signing: Option<&Signing>,
    previous: Option<&[u8]>,
) -> Result<Option<Vec<u8>>, PublishError> {
    let source = read_optional(model_dir, SIGNATURE_FILE)?;
    match signing {
        Some(signing) => Ok(Some(
            signing.sign_dir(model_dir, previous.or(source.as_deref()))?,
        )),
        None => Ok(source),
    }
}

/// Publishes `model_dir` into the directory store `to`, signed with `signing` if given (see
/// [`signing`]); returns the version directory. `signature.json` is the one file of a version
/// that may change: re-signing (a rollback, a new key) replaces it.
pub fn publish(
    model_dir: &Path,
    to: &Path,
    signing: Option<&Signing>,
) -> Result<PathBuf, PublishError> {
    let manifest = checked_source(model_dir)?;
    let family_dir = to.join(&manifest.family);
    atomic::create_dir_all(&family_dir)?;
    let dest = family_dir.join(&manifest.version);
    if dest.exists() {
        for name in [MODEL_FILE, MANIFEST_FILE] {
            let (a, b) = (model_dir.join(name), dest.join(name));
            let same = std::fs::read(&a).map_err(io(&a))? == std::fs::read(&b).map_err(io(&b))?;
            if !same {
                return Err(PublishError::Exists(dest.display().to_string()));
            }
        }
        tracing::info!(family = %manifest.family, version = %manifest.version, "ModelAlreadyPublished");
        let previous = read_optional(&dest, SIGNATURE_FILE)?;
        if let Some(signing) = signing {
            let latest = latest_version(to, &manifest.family).ok();
            let latest_sig = match latest.as_deref() {
                Some(l) if l != manifest.version && is_plain_name(l) => {
                    read_optional(&family_dir.join(l), SIGNATURE_FILE)?.map(|b| (l.to_owned(), b))
                }
                _ => None,
            };
            signing::check_not_an_unsigned_rollback(
                signing,
                &manifest.version,
                previous.as_deref(),
                latest_sig.as_ref().map(|(l, b)| (l.as_str(), b.as_slice())),
            )?;
        }
        if let Some(sig) = signature_for(model_dir, signing, previous.as_deref())?
            && previous.as_deref() != Some(&sig[..])
        {
            atomic::write(&dest.join(SIGNATURE_FILE), &sig)?;
        }
    } else {
        let tmp = family_dir.join(format!(".{}.tmp-{}", manifest.version, std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir(&tmp).map_err(io(&tmp))?;
        let copied = copy_files(model_dir, &tmp)
            .and_then(|()| verify(&tmp, &manifest.model_sha256))
            .and_then(|()| match signature_for(model_dir, signing, None)? {
                Some(sig) => {
                    let path = tmp.join(SIGNATURE_FILE);
                    std::fs::write(&path, sig).map_err(io(&path))
                }
                None => Ok(()),
            });
        if let Err(e) = copied {
            // Best effort: a leftover temp dir is harmless (hidden, never read) and reported above.
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        atomic::rename_dir(&tmp, &dest)?;
    }
    let latest = family_dir.join(LATEST_FILE);
    atomic::write(&latest, format!("{}\n", manifest.version).as_bytes())?;
    tracing::info!(family = %manifest.family, version = %manifest.version, dest = %dest.display(), "ModelPublished");
    Ok(dest)
}

/// Copies the regular files of `from` (not subdirectories) into `to`, manifest last.
fn copy_files(from: &Path, to: &Path) -> Result<(), PublishError> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(from).map_err(io(from))? {
        let e = e.map_err(io(from))?;
        if e.file_type().map_err(io(&e.path()))?.is_file() {
            names.push(e.file_name());
        }
    }
    names.sort_by_key(|n| n == MANIFEST_FILE);
    for n in names {
        let src = from.join(&n);
        std::fs::copy(&src, to.join(&n)).map_err(io(&src))?;
    }
    Ok(())
}

/// The version `latest` names in a store's family directory.
pub fn latest_version(store: &Path, family: &str) -> Result<String, PublishError> {
    let path = store.join(family).join(LATEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    Ok(text.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfheal_core::features::FeatureSpec;
    use selfheal_core::model::{AlarmRule, ModelManifest};
    use sha2::{Digest, Sha256};

    /// A model directory whose `model.onnx` is `bytes` and whose manifest claims `sha`.
    fn model_dir(root: &Path, version: &str, bytes: &[u8], sha: Option<String>) -> PathBuf {
        let dir = root.join(format!("model-{version}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(MODEL_FILE), bytes).expect("write model");
        let spec = FeatureSpec::standard(vec!["a".into()]);
        let manifest = ModelManifest {
            family: "cpu".into(),
            version: version.into(),
            feature_names: spec.names(),
            features: spec,
            threshold: 0.6,
            alarm: AlarmRule::default(),
            ordinary_score: None,
            spike_threshold: None,
            n_trees: 1,
            forests: 1,
            max_samples: 256,
            seed: 0,
            training_data_sha256: String::new(),
            created_at: "2026-11-25T00:00:00Z".into(),
            model_sha256: sha.unwrap_or_else(|| hex::encode(Sha256::digest(bytes))),
        };
        std::fs::write(
            dir.join(MANIFEST_FILE),
            serde_json::to_vec(&manifest).expect("json"),
        )
        .expect("write manifest");
        dir
    }

    #[test]
    fn versions_land_verified_and_latest_follows() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = tmp.path().join("store");
        let to = store.as_path();
        let v1 = model_dir(tmp.path(), "v1", b"one", None);
        let dest = publish(&v1, to, None).expect("publish v1");
        assert_eq!(dest, store.join("cpu/v1"));
        assert_eq!(std::fs::read(dest.join(MODEL_FILE)).expect("model"), b"one");
        assert_eq!(latest_version(&store, "cpu").expect("latest"), "v1");
        let v2 = model_dir(tmp.path(), "v2", b"two", None);
        publish(&v2, to, None).expect("publish v2");
        assert_eq!(latest_version(&store, "cpu").expect("latest"), "v2");
        // The same v1 again: a no-op that points `latest` back at it. Other bytes: refused.
        publish(&v1, to, None).expect("republish v1");
        assert_eq!(latest_version(&store, "cpu").expect("latest"), "v1");
        let other = model_dir(&tmp.path().join("other"), "v1", b"uno", None);
        assert!(matches!(
            publish(&other, to, None),
            Err(PublishError::Exists(_))
        ));
        assert_eq!(std::fs::read(dest.join(MODEL_FILE)).expect("model"), b"one");
        // No temporary file or directory is left behind.
        let mut names: Vec<String> = std::fs::read_dir(store.join("cpu"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["latest", "v1", "v2"]);
    }

    #[test]
    fn a_model_that_fails_its_checksum_is_not_published() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = tmp.path().join("store");
        let bad = model_dir(tmp.path(), "v1", b"one", Some("00".repeat(32)));
        assert!(matches!(
            publish(&bad, &store, None),
            Err(PublishError::Checksum { .. })
        ));
        assert!(!store.join("cpu/v1").exists());
        assert!(!store.join("cpu/latest").exists());
    }

    #[test]
    fn unsafe_names_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for name in ["..", "latest", ".hidden"] {
            let evil = model_dir(
                &tmp.path().join(name.replace('.', "dot")),
                name,
                b"one",
                None,
            );
            assert!(matches!(
                publish(&evil, &tmp.path().join("s"), None),
                Err(PublishError::BadName { .. })
            ));
        }
    }
}
