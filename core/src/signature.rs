//! Model signatures: who vouches for a model, and which models may follow which.
//!
//! The sha256 of `model.onnx` sits inside the manifest it protects, so whoever can write a
//! model's location (the bucket, the ConfigMap) can change `manifest.json` alone, or both files
//! and the checksum. A signature is made by the model's publisher with an Ed25519 key that
//! never leaves it, and checked by the agent with public keys from its own configuration or
//! image, never from the model's location. `signature.json` sits next to `manifest.json`:
//!
//! ```json
//! {"format": 1, "key_id": "9f2c61a0d3b4e587", "serial": 1764064800000,
//!  "signed_at_ms": 1764064800000, "rollback": false, "signature": "<128 hex digits>"}
//! ```
//!
//! # What is signed
//!
//! The Ed25519 message (RFC 8032, verified strictly: no small-order keys, no malleable
//! signatures) is the byte string
//!
//! ```text
//! selfheal-model-signature\n
//! format=1\n
//! serial=<serial, decimal>\n
//! signed_at_ms=<signed_at_ms, decimal>\n
//! rollback=<true|false>\n
//! model_sha256=<sha256 of model.onnx as read, 64 lowercase hex digits>\n
//! manifest=<the canonical JSON of manifest.json>
//! ```
//!
//! with no trailing newline. The canonical JSON is the manifest's JSON value written back with
//! nothing that formatting may change: object members sorted by key (byte order of the keys'
//! UTF-8), at every depth; no whitespace; strings as serde_json writes them (`"` and `\`
//! escaped, control characters as `\n`-style or `\u00XX` escapes, everything else as raw
//! UTF-8, so `"\u0041"` in the file is `"A"` here); integers that fit 64 bits in decimal,
//! other numbers as the shortest decimal that reads back as the same f64 (`0.62`, `1e300`,
//! `1.0`). A re-indented or re-ordered manifest therefore keeps its signature; any change of a
//! value breaks it. `format` and the first line keep a signature from meaning anything in
//! another protocol or a later version of this one.
//!
//! # Succession and rollback
//!
//! `serial` orders model versions (the publisher sets it when a version is first signed,
//! unix milliseconds by convention) and `signed_at_ms` orders signatures. A candidate model is
//! refused when ([`check_succession`]):
//!
//! * its signature is older than the loaded model's (`signed_at_ms` lower, or equal with other
//!   bytes): a replay of a model signed before, whatever version it is;
//! * its version is older than the loaded one (`serial` lower) and `rollback` is false.
//!
//! A rollback is therefore the old version's files signed anew: same `serial`, a current
//! `signed_at_ms`, and `rollback: true`, all three under the signature. Only the key's holder
//! can make one, and it cannot be replayed once a later signature has been loaded.

use crate::model::{MANIFEST_FILE, ModelManifest};
use crate::model_bounds::{MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES};
use ed25519_dalek::Signer;
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// File name of the signature in a model directory, next to [`MANIFEST_FILE`].
pub const SIGNATURE_FILE: &str = "signature.json";

/// The signature format this build writes and reads.
pub const FORMAT: u32 = 1;

/// First line of every signed message: domain separation.
const DOMAIN: &str = "selfheal-model-signature";

/// `signature.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    /// Always [`FORMAT`].
    pub format: u32,
    /// Which key signed: [`key_id`] of its public key.
    pub key_id: String,
    /// Orders model versions: set when the version was first signed, kept by its rollbacks.
    pub serial: u64,
    /// When this signature was made, unix milliseconds: orders signatures.
    pub signed_at_ms: u64,
    /// The publisher means this version to replace a newer one.
    pub rollback: bool,
    /// The Ed25519 signature, 128 lowercase hex digits.
    pub signature: String,
}

/// What a publisher states about a model when signing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statement {
    /// See [`SignatureFile::serial`].
    pub serial: u64,
    /// See [`SignatureFile::signed_at_ms`].
    pub signed_at_ms: u64,
    /// See [`SignatureFile::rollback`].
    pub rollback: bool,
}

/// A signature that verified: what the loader keeps of it, to order the next model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The key that signed.
    pub key_id: String,
    /// The signed statement.
    pub statement: Statement,
    /// The signature bytes: two signatures with the same time are the same only if these are.
    pub signature: [u8; 64],
}

/// A model whose signature verified, with the manifest parsed from the very bytes verified.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The manifest. Use this one: parsing `manifest.json` again could read other bytes.
    pub manifest: ModelManifest,
    /// The signature's facts.
    pub signed: Signed,
}

/// Why a model's signature, or a key, was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// `signature.json` or `manifest.json` is larger than its bound.
    #[error("{file} is {bytes} bytes, more than {max}")]
    TooLarge {
        /// Which file.
        file: &'static str,
        /// Its size.
        bytes: usize,
        /// The bound ([`crate::model_bounds`]).
        max: u64,
    },
    /// `signature.json` does not parse.
    #[error("{SIGNATURE_FILE} does not parse")]
    File(#[source] serde_json::Error),
    /// `signature.json` is of a format this build does not read.
    #[error("{SIGNATURE_FILE} has format {0}, this build reads {FORMAT}")]
    Format(u32),
    /// The signature is not 128 hex digits.
    #[error("{SIGNATURE_FILE}: `signature` is not 128 hex digits")]
    Encoding,
    /// No configured key has the signature's `key_id`.
    #[error("signed by key {0}, which is not one of the configured model keys")]
    UnknownKey(String),
    /// `manifest.json` does not parse as a manifest (duplicate keys included).
    #[error("{MANIFEST_FILE} does not parse")]
    Manifest(#[source] serde_json::Error),
    /// The manifest's `model_sha256` is not the digest of the model read.
    #[error("{MANIFEST_FILE} gives model_sha256 {manifest}, the model read is {actual}")]
    DigestMismatch {
        /// What the manifest says.
        manifest: String,
        /// The digest of the bytes read.
        actual: String,
    },
    /// The signature does not verify: the manifest, the model or the statement changed, or
    /// another key signed.
    #[error("the model's signature does not verify with key {key_id}")]
    BadSignature {
        /// The key tried.
        key_id: String,
    },
    /// A key is not 64 hex digits or 44 of base64, or not a valid Ed25519 public key.
    #[error("{what} is not an Ed25519 key (64 hex digits or 44 base64 characters)")]
    Key {
        /// Which key (public or signing).
        what: &'static str,
    },
}

/// Why a verified model may not replace the loaded one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SuccessionError {
    /// The candidate's signature is older than the loaded model's: a replay.
    #[error("signature from {candidate} ms is not newer than the loaded model's ({loaded} ms)")]
    Stale {
        /// The candidate's `signed_at_ms`.
        candidate: u64,
        /// The loaded model's.
        loaded: u64,
    },
    /// The candidate is an older version and its signature does not say `rollback`.
    #[error(
        "version serial {candidate} is older than the loaded {loaded}, and not a signed rollback"
    )]
    UnsignedRollback {
        /// The candidate's `serial`.
        candidate: u64,
        /// The loaded model's.
        loaded: u64,
    },
}

/// The id of a public key in `signature.json`: the first 8 bytes of its sha256, in hex.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// 32 key bytes from 64 hex digits or 44 characters of standard padded base64 (the two forms
/// people paste: `xxd -p`, and `base64` or a Kubernetes Secret's data).
fn key_bytes(text: &str, what: &'static str) -> Result<[u8; 32], SignatureError> {
    use base64::Engine as _;
    let text = text.trim();
    let mut out = [0u8; 32];
    let ok = if text.len() == 64 {
        hex::decode_to_slice(text, &mut out).is_ok()
    } else {
        // A 44-character input decodes to at most 33 bytes: the buffer is never outgrown.
        let mut buf = [0u8; 33];
        text.len() == 44
            && base64::engine::general_purpose::STANDARD
                .decode_slice(text, &mut buf)
                .is_ok_and(|n| n == 32)
            && {
                out.copy_from_slice(&buf[..32]);
                true
            }
    };
    if ok {
        Ok(out)
    } else {
        Err(SignatureError::Key { what })
    }
}

/// A public key as [`parse_verifying_key`] reads it and `selfheal model keygen` writes it.
pub fn verifying_key_text(key: &VerifyingKey) -> String {
    hex::encode(key.as_bytes())
}

/// A signing key (its seed) as [`parse_signing_key`] reads it.
pub fn signing_key_text(key: &SigningKey) -> String {
    hex::encode(key.to_bytes())
}

/// Parses a public key: 64 hex digits or 44 characters of base64 (surrounding whitespace
/// ignored). An Ed25519 key made with OpenSSL converts with
/// `openssl pkey -in key.pem -pubout -outform DER | tail -c 32 | xxd -p -c 32`.
pub fn parse_verifying_key(text: &str) -> Result<VerifyingKey, SignatureError> {
    let what = "the model public key";
    let key = VerifyingKey::from_bytes(&key_bytes(text, what)?)
        .map_err(|_| SignatureError::Key { what })?;
    if key.is_weak() {
        return Err(SignatureError::Key { what });
    }
    Ok(key)
}

/// Parses a signing key file: the 32-byte Ed25519 seed as 64 hex digits (or base64). From
/// OpenSSL:
/// `openssl genpkey -algorithm ed25519 -outform DER | tail -c 32 | xxd -p -c 32`.
pub fn parse_signing_key(text: &str) -> Result<SigningKey, SignatureError> {
    Ok(SigningKey::from_bytes(&key_bytes(
        text,
        "the model signing key",
    )?))
}

/// The canonical JSON of `manifest_json` (see the module docs).
pub fn canonical_manifest(manifest_json: &[u8]) -> Result<Vec<u8>, SignatureError> {
    let value: Value = serde_json::from_slice(manifest_json).map_err(SignatureError::Manifest)?;
    let mut out = Vec::with_capacity(manifest_json.len());
    write_canonical(&value, &mut out).map_err(SignatureError::Manifest)?;
    Ok(out)
}

/// Depth is bounded by serde_json's recursion limit (128) on the way in.
fn write_canonical(v: &Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match v {
        Value::Object(map) => {
            // Sorted here, not by the map: serde_json's `preserve_order` feature, enabled by
            // any crate in the build, would keep the file's order instead.
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k)?;
                out.push(b':');
                write_canonical(v, out)?;
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out)?;
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar)?,
    }
    Ok(())
}

/// The message an Ed25519 signature covers (see the module docs).
pub fn signed_message(
    manifest_json: &[u8],
    model_sha256: &[u8; 32],
    st: &Statement,
) -> Result<Vec<u8>, SignatureError> {
    let manifest = canonical_manifest(manifest_json)?;
    let mut msg = format!(
        "{DOMAIN}\nformat={FORMAT}\nserial={}\nsigned_at_ms={}\nrollback={}\nmodel_sha256={}\nmanifest=",
        st.serial,
        st.signed_at_ms,
        st.rollback,
        hex::encode(model_sha256)
    )
    .into_bytes();
    msg.extend_from_slice(&manifest);
    Ok(msg)
}

/// Signs a model: `manifest_json` as it will be published and the sha256 of its `model.onnx`.
pub fn sign(
    key: &SigningKey,
    manifest_json: &[u8],
    model_sha256: &[u8; 32],
    statement: Statement,
) -> Result<SignatureFile, SignatureError> {
    let msg = signed_message(manifest_json, model_sha256, &statement)?;
    Ok(SignatureFile {
        format: FORMAT,
        key_id: key_id(&key.verifying_key()),
        serial: statement.serial,
        signed_at_ms: statement.signed_at_ms,
        rollback: statement.rollback,
        signature: hex::encode(key.sign(&msg).to_bytes()),
    })
}

fn bounded(file: &'static str, bytes: &[u8], max: u64) -> Result<(), SignatureError> {
    if bytes.len() as u64 > max {
        return Err(SignatureError::TooLarge {
            file,
            bytes: bytes.len(),
            max,
        });
    }
    Ok(())
}

/// Verifies a model: the bytes of `signature.json` and `manifest.json` as read, and the
/// sha256 of the `model.onnx` bytes read, against the configured `keys`. Returns the manifest
/// parsed from exactly the bytes verified.
pub fn verify(
    keys: &[VerifyingKey],
    signature_json: &[u8],
    manifest_json: &[u8],
    model_sha256: &[u8; 32],
) -> Result<Verified, SignatureError> {
    bounded(SIGNATURE_FILE, signature_json, MAX_SIGNATURE_BYTES)?;
    bounded(MANIFEST_FILE, manifest_json, MAX_MANIFEST_BYTES)?;
    let file: SignatureFile =
        serde_json::from_slice(signature_json).map_err(SignatureError::File)?;
    if file.format != FORMAT {
        return Err(SignatureError::Format(file.format));
    }
    let key = keys
        .iter()
        .find(|k| key_id(k) == file.key_id)
        .ok_or_else(|| SignatureError::UnknownKey(file.key_id.clone()))?;
    let mut sig = [0u8; 64];
    hex::decode_to_slice(&file.signature, &mut sig).map_err(|_| SignatureError::Encoding)?;
    let manifest: ModelManifest =
        serde_json::from_slice(manifest_json).map_err(SignatureError::Manifest)?;
    let actual = hex::encode(model_sha256);
    if manifest.model_sha256 != actual {
        return Err(SignatureError::DigestMismatch {
            manifest: manifest.model_sha256,
            actual,
        });
    }
    let statement = Statement {
        serial: file.serial,
        signed_at_ms: file.signed_at_ms,
        rollback: file.rollback,
    };
    let msg = signed_message(manifest_json, model_sha256, &statement)?;
    key.verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(&sig))
        .map_err(|_| SignatureError::BadSignature {
            key_id: file.key_id.clone(),
        })?;
    Ok(Verified {
        manifest,
        signed: Signed {
            key_id: file.key_id,
            statement,
            signature: sig,
        },
    })
}

/// Whether `candidate` may replace `loaded` (the rule in the module docs). The same signature
/// again (a reload, a restart) is always allowed.
pub fn check_succession(
    loaded: Option<&Signed>,
    candidate: &Signed,
) -> Result<(), SuccessionError> {
    let Some(loaded) = loaded else {
        return Ok(());
    };
    let (l, c) = (&loaded.statement, &candidate.statement);
    if loaded.signature == candidate.signature {
        return Ok(());
    }
    if c.signed_at_ms <= l.signed_at_ms {
        return Err(SuccessionError::Stale {
            candidate: c.signed_at_ms,
            loaded: l.signed_at_ms,
        });
    }
    if c.serial < l.serial && !c.rollback {
        return Err(SuccessionError::UnsignedRollback {
            candidate: c.serial,
            loaded: l.serial,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"{
  "family": "cpu",
  "version": "cpu-2026.11.25-1",
  "features": {"schema_version": 1, "signals": ["cpu_usage_cores"], "value": true,
               "delta": false, "windows": [], "mean": false, "std": false, "zscore": false},
  "feature_names": ["cpu_usage_cores"],
  "threshold": 0.62,
  "alarm": {"k": 3, "n": 5},
  "n_trees": 100,
  "max_samples": 256,
  "seed": 7,
  "training_data_sha256": "abababababababababababababababababababababababababababababababab",
  "created_at": "2026-11-25T10:00:00Z",
  "model_sha256": "MODEL"
}"#;

    const MODEL: &[u8] = b"the bytes of model.onnx";

    fn digest(model: &[u8]) -> [u8; 32] {
        Sha256::digest(model).into()
    }

    fn manifest_for(model: &[u8]) -> String {
        MANIFEST.replace("MODEL", &hex::encode(digest(model)))
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn statement(serial: u64, signed_at_ms: u64, rollback: bool) -> Statement {
        Statement {
            serial,
            signed_at_ms,
            rollback,
        }
    }

    fn signed(manifest: &str, st: Statement) -> Vec<u8> {
        let file = sign(&key(1), manifest.as_bytes(), &digest(MODEL), st).expect("sign");
        serde_json::to_vec_pretty(&file).expect("json")
    }

    fn check(sig: &[u8], manifest: &str, model: &[u8]) -> Result<Verified, SignatureError> {
        verify(
            &[key(1).verifying_key()],
            sig,
            manifest.as_bytes(),
            &digest(model),
        )
    }

    #[test]
    fn a_signed_model_verifies_and_gives_its_manifest() {
        let manifest = manifest_for(MODEL);
        let sig = signed(&manifest, statement(10, 10, false));
        let v = check(&sig, &manifest, MODEL).expect("verifies");
        assert_eq!(v.manifest.threshold, 0.62);
        assert_eq!(v.signed.statement, statement(10, 10, false));
        assert_eq!(v.signed.key_id, key_id(&key(1).verifying_key()));
        assert_eq!(v.signed.key_id.len(), 16);
    }

    #[test]
    fn a_tampered_manifest_with_a_recomputed_checksum_is_refused() {
        let manifest = manifest_for(MODEL);
        let sig = signed(&manifest, statement(10, 10, false));
        // threshold 1e300 silences the family; the checksum inside still matches the model.
        let silenced = manifest.replace("\"threshold\": 0.62", "\"threshold\": 1e300");
        assert_ne!(silenced, manifest);
        assert!(matches!(
            check(&sig, &silenced, MODEL),
            Err(SignatureError::BadSignature { .. })
        ));
        // Another model with the manifest's checksum recomputed for it.
        let other = b"another graph";
        let swapped = manifest_for(other);
        assert!(matches!(
            check(&sig, &swapped, other),
            Err(SignatureError::BadSignature { .. })
        ));
        // The model swapped and the manifest left alone: the digest no longer matches.
        assert!(matches!(
            check(&sig, &manifest, other),
            Err(SignatureError::DigestMismatch { .. })
        ));
        // The statement edited: a rollback flag or a newer time added by the attacker.
        let mut file: SignatureFile = serde_json::from_slice(&sig).expect("parse");
        file.rollback = true;
        let edited = serde_json::to_vec(&file).expect("json");
        assert!(matches!(
            check(&edited, &manifest, MODEL),
            Err(SignatureError::BadSignature { .. })
        ));
    }

    #[test]
    fn formatting_and_key_order_do_not_matter_values_do() {
        let manifest = manifest_for(MODEL);
        let sig = signed(&manifest, statement(1, 1, false));
        let value: Value = serde_json::from_str(&manifest).expect("parse");
        let compact = serde_json::to_string(&value).expect("json");
        check(&sig, &compact, MODEL).expect("compact form verifies");
        // Members reversed at every depth, and escapes spelled out.
        let reversed = {
            let mut m: Vec<(String, Value)> = value
                .as_object()
                .expect("object")
                .clone()
                .into_iter()
                .collect();
            m.reverse();
            let body: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("  {} :\n {}", serde_json::to_string(k).expect("k"), v))
                .collect();
            format!("{{\n{}\n}}", body.join(",\n")).replace("\"cpu\"", "\"\\u0063pu\"")
        };
        assert_ne!(reversed, manifest);
        check(&sig, &reversed, MODEL).expect("reordered form verifies");
        assert_eq!(
            canonical_manifest(reversed.as_bytes()).expect("canonical"),
            canonical_manifest(manifest.as_bytes()).expect("canonical")
        );
        let canonical =
            String::from_utf8(canonical_manifest(manifest.as_bytes()).expect("c")).expect("utf8");
        assert!(
            canonical.starts_with(r#"{"alarm":{"k":3,"n":5},"created_at":"#),
            "{canonical}"
        );
        assert!(!canonical.contains(' '), "{canonical}");
    }

    #[test]
    fn unknown_keys_bad_files_and_duplicate_fields_are_refused() {
        let manifest = manifest_for(MODEL);
        let sig = signed(&manifest, statement(1, 1, false));
        let other = verify(
            &[key(2).verifying_key()],
            &sig,
            manifest.as_bytes(),
            &digest(MODEL),
        );
        assert!(matches!(other, Err(SignatureError::UnknownKey(_))));
        // A key with the right id cannot be forged; a second configured key is tried by id.
        let both = [key(2).verifying_key(), key(1).verifying_key()];
        verify(&both, &sig, manifest.as_bytes(), &digest(MODEL)).expect("found by id");
        // A duplicate `threshold`: serde_json's value keeps the last, the manifest refuses both.
        let dup = manifest.replace(
            "\"threshold\": 0.62,",
            "\"threshold\": 0.62, \"threshold\": 1e300,",
        );
        assert!(matches!(
            check(&sig, &dup, MODEL),
            Err(SignatureError::Manifest(_))
        ));
        assert!(matches!(
            check(b"{}", &manifest, MODEL),
            Err(SignatureError::File(_))
        ));
        let mut file: SignatureFile = serde_json::from_slice(&sig).expect("parse");
        file.format = 2;
        assert!(matches!(
            check(&serde_json::to_vec(&file).expect("j"), &manifest, MODEL),
            Err(SignatureError::Format(2))
        ));
        file.format = 1;
        file.signature.truncate(10);
        assert!(matches!(
            check(&serde_json::to_vec(&file).expect("j"), &manifest, MODEL),
            Err(SignatureError::Encoding)
        ));
        let huge = vec![b' '; MAX_SIGNATURE_BYTES as usize + 1];
        assert!(matches!(
            check(&huge, &manifest, MODEL),
            Err(SignatureError::TooLarge { .. })
        ));
    }

    #[test]
    fn keys_parse_from_hex_and_weak_keys_are_refused() {
        let sk = key(9);
        let hex_seed = format!("{}\n", hex::encode(sk.to_bytes()));
        assert_eq!(
            parse_signing_key(&hex_seed).expect("seed").to_bytes(),
            sk.to_bytes()
        );
        let vk_hex = hex::encode(sk.verifying_key().as_bytes());
        assert_eq!(
            parse_verifying_key(&vk_hex).expect("public"),
            sk.verifying_key()
        );
        assert!(parse_verifying_key("abcd").is_err());
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(sk.verifying_key().as_bytes());
        assert_eq!(b64.len(), 44);
        assert_eq!(
            parse_verifying_key(&format!(" {b64}\n")).expect("base64"),
            sk.verifying_key()
        );
        assert_eq!(verifying_key_text(&sk.verifying_key()), vk_hex);
        assert_eq!(signing_key_text(&sk), hex::encode(sk.to_bytes()));
        // 33 bytes of base64, and 44 characters that are not base64.
        assert!(
            parse_verifying_key(&base64::engine::general_purpose::STANDARD.encode([7u8; 33]))
                .is_err()
        );
        assert!(parse_verifying_key(&"!".repeat(44)).is_err());
        assert!(parse_verifying_key(&"zz".repeat(32)).is_err());
        // The identity point, a small-order key that "verifies" forged signatures.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(parse_verifying_key(&hex::encode(identity)).is_err());
    }

    fn facts(manifest: &str, st: Statement) -> Signed {
        check(&signed(manifest, st), manifest, MODEL)
            .expect("verifies")
            .signed
    }

    #[test]
    fn older_versions_need_a_signed_rollback_and_old_signatures_are_not_replayed() {
        let manifest = manifest_for(MODEL);
        let v1 = facts(&manifest, statement(100, 100, false));
        let v2 = facts(&manifest, statement(200, 200, false));
        check_succession(None, &v1).expect("first model");
        check_succession(Some(&v1), &v2).expect("newer version");
        check_succession(Some(&v2), &v2).expect("the same signature again");
        // v1 served again after v2: a replay.
        assert_eq!(
            check_succession(Some(&v2), &v1),
            Err(SuccessionError::Stale {
                candidate: 100,
                loaded: 200
            })
        );
        // v1 re-signed later without saying rollback: refused.
        let resigned = facts(&manifest, statement(100, 300, false));
        assert_eq!(
            check_succession(Some(&v2), &resigned),
            Err(SuccessionError::UnsignedRollback {
                candidate: 100,
                loaded: 200
            })
        );
        // A signed rollback to v1 is accepted...
        let rollback = facts(&manifest, statement(100, 300, true));
        check_succession(Some(&v2), &rollback).expect("signed rollback");
        // ...and once something newer is loaded, cannot be replayed.
        let v3 = facts(&manifest, statement(400, 400, false));
        assert!(check_succession(Some(&v3), &rollback).is_err());
        // Two different signatures with the same time cannot be ordered: refused.
        let same_time = facts(&manifest, statement(500, 400, false));
        assert!(matches!(
            check_succession(Some(&v3), &same_time),
            Err(SuccessionError::Stale { .. })
        ));
    }
}
