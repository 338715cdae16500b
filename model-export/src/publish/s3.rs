//! Publishing into an S3 store (`selfheal model publish DIR --to s3://bucket/prefix`).
//!
//! Same layout and rules as the directory store (see [`super`]): the source is verified, then
//! `model.onnx`, `manifest.json` and (signed) `signature.json` are uploaded under
//! `<prefix>/<family>/<version>/`, and only then is `<prefix>/<family>/latest` written, so an agent polling `latest` never sees a pointer
//! to a version that is not all there. An object already at a version's key is read back and
//! compared byte for byte: the same bytes are left alone, other bytes refuse the publish. Each
//! new object is written with `If-None-Match: *`, so two publishers racing on one version cannot
//! both win; the loser re-reads and compares like any other re-publish.
//!
//! The client comes from the standard AWS chain ([`client_from_env`]): credentials (environment,
//! profile, web identity / IRSA, instance metadata), region, and `AWS_ENDPOINT_URL`, with the
//! addressing rule of `selfheal_runtime::aws` that the agent's mirror of this store shares.

use super::{PublishError, Signing, checked_source, signature_for};
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use selfheal_core::model::{MANIFEST_FILE, MODEL_FILE};
use selfheal_core::signature::SIGNATURE_FILE;
use selfheal_core::store::S3Store;
use std::path::Path;

/// An S3 client from the standard AWS configuration chain (path-style when an endpoint is
/// overridden: `selfheal_runtime::aws::s3_client`).
pub async fn client_from_env() -> Client {
    let sdk =
        selfheal_runtime::aws::sdk_config(&selfheal_runtime::aws::AwsSettings::default()).await;
    selfheal_runtime::aws::s3_client(&sdk)
}

fn s3_error<'a, E>(
    operation: &'static str,
    store: &'a S3Store,
    key: &'a str,
) -> impl FnOnce(E) -> PublishError + 'a
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |e| PublishError::S3 {
        operation,
        bucket: store.bucket.clone(),
        key: key.to_owned(),
        source: Box::new(e),
    }
}

/// The object's bytes, or `None` when there is no such key.
async fn get(client: &Client, store: &S3Store, key: &str) -> Result<Option<Vec<u8>>, PublishError> {
    match client
        .get_object()
        .bucket(&store.bucket)
        .key(key)
        .send()
        .await
    {
        Ok(out) => {
            let body = out
                .body
                .collect()
                .await
                .map_err(s3_error("GetObject", store, key))?;
            Ok(Some(body.into_bytes().to_vec()))
        }
        Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() => Ok(None),
        Err(e) => Err(s3_error("GetObject", store, key)(e)),
    }
}

/// What [`put_once`] did.
#[derive(Debug, PartialEq, Eq)]
enum Put {
    /// The object was written.
    Written,
    /// An object with the same bytes was already there.
    AlreadyThere,
}

/// Writes `bytes` at `key` unless an object is already there; an existing object with the same
/// bytes is fine, one with other bytes is [`PublishError::Exists`].
async fn put_once(
    client: &Client,
    store: &S3Store,
    key: &str,
    bytes: &[u8],
) -> Result<Put, PublishError> {
    let compare = |existing: Vec<u8>| {
        if existing == bytes {
            Ok(Put::AlreadyThere)
        } else {
            Err(PublishError::Exists(format!("s3://{}/{key}", store.bucket)))
        }
    };
    if let Some(existing) = get(client, store, key).await? {
        return compare(existing);
    }
    let put = client
        .put_object()
        .bucket(&store.bucket)
        .key(key)
        .if_none_match("*")
        .body(ByteStream::from(bytes.to_vec()))
        .send()
        .await;
    match put {
        Ok(_) => Ok(Put::Written),
        // Another publisher wrote it between our read and our write.
        Err(SdkError::ServiceError(e)) if e.err().code() == Some("PreconditionFailed") => {
            match get(client, store, key).await? {
                Some(existing) => compare(existing),
                None => Err(s3_error("PutObject", store, key)(SdkError::ServiceError(e))),
            }
        }
        Err(e) => Err(s3_error("PutObject", store, key)(e)),
    }
}

/// Publishes `model_dir` into `store`, signed with `signing` if given; returns the version's
/// URL, `s3://bucket/.../<version>/`. `signature.json` is written after the manifest and
/// before `latest`, and is the one object of a version that is replaced (a re-signed version:
/// a rollback, a new key).
pub async fn publish(
    client: &Client,
    model_dir: &Path,
    store: &S3Store,
    signing: Option<&Signing>,
) -> Result<String, PublishError> {
    let manifest = checked_source(model_dir)?;
    let (family, version) = (&manifest.family, &manifest.version);
    let mut written = 0;
    // The manifest last: a version whose manifest is there has its model there too.
    for name in [MODEL_FILE, MANIFEST_FILE] {
        let path = model_dir.join(name);
        let bytes = std::fs::read(&path).map_err(|source| PublishError::Io {
            path: path.clone(),
            source,
        })?;
        if name == MODEL_FILE {
            // Re-check what is uploaded, not what was checked a moment ago.
            let actual = crate::artifact::sha256_bytes(&bytes);
            if actual != manifest.model_sha256 {
                return Err(PublishError::Checksum {
                    path,
                    expected: manifest.model_sha256.clone(),
                    actual,
                });
            }
        }
        let key = store.file_key(family, version, name);
        if put_once(client, store, &key, &bytes).await? == Put::Written {
            written += 1;
        }
    }
    let key = store.file_key(family, version, SIGNATURE_FILE);
    let previous = get(client, store, &key).await?;
    if let Some(signing) = signing {
        let latest = get(client, store, &store.latest_key(family))
            .await?
            .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
            .filter(|l| l != version && selfheal_core::store::is_plain_name(l));
        let latest_sig = match latest {
            Some(l) => get(client, store, &store.file_key(family, &l, SIGNATURE_FILE))
                .await?
                .map(|b| (l, b)),
            None => None,
        };
        super::signing::check_not_an_unsigned_rollback(
            signing,
            version,
            previous.as_deref(),
            latest_sig.as_ref().map(|(l, b)| (l.as_str(), b.as_slice())),
        )?;
    }
    if let Some(sig) = signature_for(model_dir, signing, previous.as_deref())?
        && previous.as_deref() != Some(&sig[..])
    {
        client
            .put_object()
            .bucket(&store.bucket)
            .key(&key)
            .content_type("application/json")
            .body(ByteStream::from(sig))
            .send()
            .await
            .map_err(s3_error("PutObject", store, &key))?;
        written += 1;
    }
    let key = store.latest_key(family);
    client
        .put_object()
        .bucket(&store.bucket)
        .key(&key)
        .content_type("text/plain")
        .body(ByteStream::from(format!("{version}\n").into_bytes()))
        .send()
        .await
        .map_err(s3_error("PutObject", store, &key))?;
    let url = format!(
        "s3://{}/{}",
        store.bucket,
        store.file_key(family, version, "")
    );
    tracing::info!(%family, %version, %url, objects_written = written, "ModelPublished");
    Ok(url)
}
