//! Signing a model directory for publication, and making the key pair that does it.
//!
//! `selfheal model keygen --out DIR` writes `DIR/model-signing.key` (the Ed25519 seed, 64 hex
//! digits, mode 0600, never overwritten) and `DIR/model-signing.pub` (the public key, what the
//! agents' `models.public_keys` or `models.public_key_files` hold). `selfheal model publish
//! --sign-key FILE` and `selfheal model sign` then write `signature.json` beside the manifest
//! (`selfheal_core::signature` defines what it covers).
//!
//! A version keeps its `serial` for life: when the version was signed before (its
//! `signature.json` in the store, or in the source directory), the new signature takes that
//! serial, so re-signing it (a key rotation, a rollback) does not make it look newer than the
//! versions published after it; otherwise the serial is the signing time. `signed_at_ms` is
//! always now (and after any earlier signature of the version), so agents take the latest
//! signature over any replay of an older one.

use super::PublishError;
use selfheal_core::model::{MANIFEST_FILE, MODEL_FILE};
use selfheal_core::signature::{
    self, SignatureFile, SigningKey, Statement, parse_signing_key, signing_key_text,
    verifying_key_text,
};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// File name of the signing key `keygen` writes.
pub const SIGNING_KEY_FILE: &str = "model-signing.key";
/// File name of the public key `keygen` writes.
pub const PUBLIC_KEY_FILE: &str = "model-signing.pub";

/// How a publish signs.
#[derive(Debug)]
pub struct Signing {
    /// The publisher's key.
    pub key: SigningKey,
    /// The version is meant to replace a newer one (see `selfheal_core::signature`).
    pub rollback: bool,
}

impl Signing {
    /// Reads the signing key from `path` (64 hex digits, as `keygen` writes it).
    pub fn from_key_file(path: &Path, rollback: bool) -> Result<Signing, PublishError> {
        let text = std::fs::read_to_string(path).map_err(|source| PublishError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(Signing {
            key: parse_signing_key(&text)?,
            rollback,
        })
    }

    /// The `signature.json` bytes for a model: `manifest_json` as published, `model` the
    /// bytes of its `model.onnx`, `previous` an earlier `signature.json` of the same version if
    /// one exists (its serial is kept).
    pub fn sign(
        &self,
        manifest_json: &[u8],
        model: &[u8],
        previous: Option<&[u8]>,
    ) -> Result<Vec<u8>, PublishError> {
        let previous = parse(previous);
        let now = now_ms();
        let statement = Statement {
            serial: previous.as_ref().map_or(now, |p| p.serial),
            signed_at_ms: previous
                .as_ref()
                .map_or(now, |p| now.max(p.signed_at_ms.saturating_add(1))),
            rollback: self.rollback,
        };
        let digest: [u8; 32] = Sha256::digest(model).into();
        let file = signature::sign(&self.key, manifest_json, &digest, statement)?;
        let mut bytes = serde_json::to_vec_pretty(&file).map_err(|e| PublishError::Io {
            path: PathBuf::from(signature::SIGNATURE_FILE),
            source: e.into(),
        })?;
        bytes.push(b'\n');
        tracing::info!(
            key_id = %file.key_id,
            serial = file.serial,
            signed_at_ms = file.signed_at_ms,
            rollback = file.rollback,
            "ModelSigned"
        );
        Ok(bytes)
    }

    /// Signs the model directory `dir` as it stands (see [`Signing::sign`]); `previous` as
    /// there.
    pub fn sign_dir(&self, dir: &Path, previous: Option<&[u8]>) -> Result<Vec<u8>, PublishError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| PublishError::Io { path, source })
        };
        self.sign(&read(MANIFEST_FILE)?, &read(MODEL_FILE)?, previous)
    }
}

fn parse(bytes: Option<&[u8]>) -> Option<SignatureFile> {
    bytes.and_then(|b| serde_json::from_slice(b).ok())
}

/// Refuses to sign, without `--rollback`, a version older than the store's latest: every agent
/// that loaded the latest would refuse it (`unsigned_rollback`). `previous` is the version's
/// earlier signature (its serial is kept), `latest` the signature of the version `latest`
/// names now, if another.
pub fn check_not_an_unsigned_rollback(
    signing: &Signing,
    version: &str,
    previous: Option<&[u8]>,
    latest: Option<(&str, &[u8])>,
) -> Result<(), PublishError> {
    if signing.rollback {
        return Ok(());
    }
    let (Some(ours), Some((latest_version, latest))) = (parse(previous), latest) else {
        return Ok(());
    };
    match parse(Some(latest)) {
        Some(l) if l.serial > ours.serial => Err(PublishError::Rollback {
            version: version.to_owned(),
            latest: latest_version.to_owned(),
        }),
        _ => Ok(()),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What `keygen` wrote.
#[derive(Debug)]
pub struct KeyPair {
    /// The signing key file (mode 0600).
    pub signing_key: PathBuf,
    /// The public key file.
    pub public_key: PathBuf,
    /// The public key's id, as `signature.json` names it.
    pub key_id: String,
}

/// Makes a new Ed25519 key pair in `dir` (created if missing) from the operating system's
/// random source. Refuses to overwrite an existing key: losing one strands every agent that
/// trusts it.
pub fn keygen(dir: &Path) -> Result<KeyPair, PublishError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PublishError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| PublishError::Io {
        path: dir.to_owned(),
        source: std::io::Error::other(format!("no random source: {e}")),
    })?;
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);
    let signing_key = dir.join(SIGNING_KEY_FILE);
    let public_key = dir.join(PUBLIC_KEY_FILE);
    for path in [&signing_key, &public_key] {
        if path.exists() {
            return Err(PublishError::Io {
                path: path.clone(),
                source: std::io::ErrorKind::AlreadyExists.into(),
            });
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&signing_key)
        .map_err(io(&signing_key))?;
    f.write_all(format!("{}\n", signing_key_text(&key)).as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io(&signing_key))?;
    let vk = key.verifying_key();
    selfheal_runtime::atomic::write(
        &public_key,
        format!("{}\n", verifying_key_text(&vk)).as_bytes(),
    )?;
    Ok(KeyPair {
        signing_key,
        public_key,
        key_id: signature::key_id(&vk),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfheal_core::signature::{parse_verifying_key, verify};

    #[test]
    fn keygen_writes_a_private_key_and_its_public_half_and_never_overwrites() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let pair = keygen(&tmp.path().join("keys")).expect("keygen");
        let mode = std::fs::metadata(&pair.signing_key)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let signing = Signing::from_key_file(&pair.signing_key, false).expect("read key");
        let public = parse_verifying_key(
            &std::fs::read_to_string(&pair.public_key).expect("read public key"),
        )
        .expect("public key parses");
        assert_eq!(signing.key.verifying_key(), public);
        assert_eq!(pair.key_id, signature::key_id(&public));
        assert!(keygen(&tmp.path().join("keys")).is_err(), "no overwrite");
        let other = keygen(&tmp.path().join("other")).expect("second pair");
        assert_ne!(
            std::fs::read(&other.public_key).expect("read"),
            std::fs::read(&pair.public_key).expect("read"),
            "fresh randomness"
        );
    }

    #[test]
    fn a_resigned_version_keeps_its_serial_and_signs_later() {
        let signing = Signing {
            key: SigningKey::from_bytes(&[5; 32]),
            rollback: false,
        };
        let model = b"graph";
        let manifest = format!(
            r#"{{"model_sha256": "{}"}}"#,
            hex::encode(Sha256::digest(model))
        );
        let first = signing
            .sign(manifest.as_bytes(), model, None)
            .expect("sign");
        let first: SignatureFile = serde_json::from_slice(&first).expect("parse");
        let previous = SignatureFile {
            serial: 42,
            signed_at_ms: u64::MAX - 1,
            ..first.clone()
        };
        let rollback = Signing {
            rollback: true,
            ..signing
        };
        let again = rollback
            .sign(
                manifest.as_bytes(),
                model,
                Some(&serde_json::to_vec(&previous).expect("json")),
            )
            .expect("re-sign");
        let again: SignatureFile = serde_json::from_slice(&again).expect("parse");
        assert_eq!(again.serial, 42);
        assert_eq!(again.signed_at_ms, u64::MAX);
        assert!(again.rollback);
        // The manifest here is not a full one: `verify` refuses it as a manifest, after the
        // signature file itself parsed and named the right key.
        let err = verify(
            &[rollback.key.verifying_key()],
            &serde_json::to_vec(&again).expect("json"),
            manifest.as_bytes(),
            &Sha256::digest(model).into(),
        )
        .expect_err("not a manifest");
        assert!(
            matches!(err, signature::SignatureError::Manifest(_)),
            "{err}"
        );
    }
}
