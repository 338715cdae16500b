//! The signing keys the server accepts, from a mounted Kubernetes Secret file (re-read when it
//! changes) or an AWS Secrets Manager secret (re-fetched every `reload_secs`), so a key is
//! rotated without a restart: put the new key beside the old one, move the clients to it, then
//! remove the old one.
//!
//! Format (the file, or the secret's `SecretString`): one key a line, `<key id> <secret hex>`,
//! `#` comments and blank lines ignored; one or two keys (the current one, and the previous one
//! during a rotation), each secret at least 32 bytes (64 hex digits).
//!
//! A reload that fails (unreadable, malformed, no key) keeps the keys in use and says why
//! (`HealApiKeysReloadError`, `key_reloads_total{outcome="error"}`); at start it is fatal.

use crate::sign::{Key, KeyError};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// Most keys in use at once: the current one and, during a rotation, the previous one.
pub const MAX_KEYS: usize = 2;

/// Most bytes of a key file or secret.
const MAX_KEYS_BYTES: usize = 64 * 1024;

/// Where the keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file (a Secret mount), re-read when its modification time or size changes.
    File(PathBuf),
    /// An AWS Secrets Manager secret, re-fetched.
    SecretsManager {
        /// Its name or ARN.
        secret_id: String,
        /// Region; default the chain's.
        region: Option<String>,
        /// Endpoint override (moto, a VPC endpoint).
        endpoint_url: Option<String>,
    },
}

/// Why the keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Secrets Manager did not answer with the secret.
    #[error("cannot get secret {secret_id} from Secrets Manager: {message}")]
    Secret {
        /// The secret.
        secret_id: String,
        /// What it said.
        message: String,
    },
    /// The text is not `<id> <hex>` lines.
    #[error("line {line}: {reason}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A key is unusable.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// No key, more than [`MAX_KEYS`], a duplicate id, or too large.
    #[error("{0}")]
    Count(String),
}

/// Parses the keys text (see the module docs).
pub fn parse(text: &str) -> Result<Vec<Key>, KeysError> {
    if text.len() > MAX_KEYS_BYTES {
        return Err(KeysError::Count(format!(
            "{} bytes, more than {MAX_KEYS_BYTES}",
            text.len()
        )));
    }
    let mut keys: Vec<Key> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(id), Some(secret), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(KeysError::Syntax {
                line: n + 1,
                reason: "expected `<key id> <secret hex>`".into(),
            });
        };
        let secret = hex::decode(secret).map_err(|e| KeysError::Syntax {
            line: n + 1,
            reason: format!("the secret is not hex ({e})"),
        })?;
        let key = Key::new(id, secret)?;
        if keys.iter().any(|k| k.id == key.id) {
            return Err(KeysError::Count(format!("key id {id:?} appears twice")));
        }
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(KeysError::Count("no key".into()));
    }
    if keys.len() > MAX_KEYS {
        return Err(KeysError::Count(format!(
            "{} keys; at most {MAX_KEYS} (the current one and the previous one)",
            keys.len()
        )));
    }
    Ok(keys)
}

/// The keys in use, shared by the request handlers and the reload task.
#[derive(Debug, Clone)]
pub struct Keyring {
    keys: Arc<RwLock<Arc<Vec<Key>>>>,
}

impl Keyring {
    /// A keyring holding `keys`.
    pub fn new(keys: Vec<Key>) -> Keyring {
        Keyring {
            keys: Arc::new(RwLock::new(Arc::new(keys))),
        }
    }

    /// The keys now (a cheap snapshot).
    pub fn current(&self) -> Arc<Vec<Key>> {
        match self.keys.read() {
            Ok(k) => Arc::clone(&k),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn replace(&self, keys: Vec<Key>) {
        let mut w = match self.keys.write() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        };
        *w = Arc::new(keys);
    }
}

/// Loads keys from a source and reloads them.
#[derive(Debug)]
pub struct KeyLoader {
    source: KeySource,
    sm: Option<aws_sdk_secretsmanager::Client>,
    /// The file's (modified, len) at the last load.
    seen: Option<(Option<SystemTime>, u64)>,
}

impl KeyLoader {
    /// A loader for `source` (building the Secrets Manager client from the standard chain).
    pub async fn new(source: KeySource) -> KeyLoader {
        let sm = match &source {
            KeySource::SecretsManager {
                region,
                endpoint_url,
                ..
            } => {
                let sdk = selfheal_runtime::aws::sdk_config(&selfheal_runtime::aws::AwsSettings {
                    region: region.clone(),
                    endpoint_url: endpoint_url.clone(),
                    connect_timeout: Some(Duration::from_secs(5)),
                    attempt_timeout: Some(Duration::from_secs(10)),
                    ..Default::default()
                })
                .await;
                Some(aws_sdk_secretsmanager::Client::new(&sdk))
            }
            KeySource::File(_) => None,
        };
        KeyLoader {
            source,
            sm,
            seen: None,
        }
    }

    /// A loader of the secret `secret_id` through `client` (one built by the caller: tests
    /// point it at moto).
    pub fn secrets_manager(
        client: aws_sdk_secretsmanager::Client,
        secret_id: impl Into<String>,
    ) -> KeyLoader {
        KeyLoader {
            source: KeySource::SecretsManager {
                secret_id: secret_id.into(),
                region: None,
                endpoint_url: None,
            },
            sm: Some(client),
            seen: None,
        }
    }

    /// Loads the keys now.
    pub async fn load(&mut self) -> Result<Vec<Key>, KeysError> {
        match &self.source {
            KeySource::File(path) => {
                let meta = std::fs::metadata(path).map_err(|source| KeysError::Read {
                    path: path.clone(),
                    source,
                })?;
                let text = std::fs::read_to_string(path).map_err(|source| KeysError::Read {
                    path: path.clone(),
                    source,
                })?;
                let keys = parse(&text)?;
                self.seen = Some((meta.modified().ok(), meta.len()));
                Ok(keys)
            }
            KeySource::SecretsManager { secret_id, .. } => {
                let Some(sm) = &self.sm else {
                    return Err(KeysError::Secret {
                        secret_id: secret_id.clone(),
                        message: "no client".into(),
                    });
                };
                let out = sm
                    .get_secret_value()
                    .secret_id(secret_id)
                    .send()
                    .await
                    .map_err(|e| KeysError::Secret {
                        secret_id: secret_id.clone(),
                        message: selfheal_runtime::chain::ErrorChain::new(&e).to_string(),
                    })?;
                let text = out.secret_string().ok_or_else(|| KeysError::Secret {
                    secret_id: secret_id.clone(),
                    message: "the secret has no SecretString".into(),
                })?;
                parse(text)
            }
        }
    }

    /// Whether a reload may find something new: the file's time or size changed (always for
    /// Secrets Manager).
    fn changed(&self) -> bool {
        match &self.source {
            KeySource::File(path) => {
                let now = std::fs::metadata(path)
                    .ok()
                    .map(|m| (m.modified().ok(), m.len()));
                now.is_none() || now != self.seen
            }
            KeySource::SecretsManager { .. } => true,
        }
    }

    /// Reloads every `every` until `shutdown`; a bad reload keeps the keys in use.
    pub async fn watch(
        mut self,
        ring: Keyring,
        every: Duration,
        metrics: Arc<crate::server::Metrics>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            if !self.changed() {
                continue;
            }
            match self.load().await {
                Ok(keys) => {
                    let old: Vec<String> = ring.current().iter().map(|k| k.id.clone()).collect();
                    let new: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
                    metrics.keys.set(keys.len() as i64);
                    ring.replace(keys);
                    metrics.key_reload("ok");
                    if old != new {
                        tracing::info!(?old, ?new, "HealApiKeysReloaded");
                    }
                }
                Err(e) => {
                    metrics.key_reload("error");
                    tracing::warn!(error = %selfheal_runtime::chain::ErrorChain::new(&e), "HealApiKeysReloadError");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn the_format_is_one_or_two_id_hex_lines() {
        let keys = parse(&format!("# rotation\nk2 {A}\n\nk1 {A}\n")).expect("two keys");
        assert_eq!(
            keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
            ["k2", "k1"]
        );
        assert!(matches!(parse(""), Err(KeysError::Count(_))));
        assert!(matches!(
            parse(&format!("a {A}\nb {A}\nc {A}")),
            Err(KeysError::Count(_))
        ));
        assert!(matches!(
            parse(&format!("a {A}\na {A}")),
            Err(KeysError::Count(_))
        ));
        assert!(matches!(
            parse("a zz"),
            Err(KeysError::Syntax { line: 1, .. })
        ));
        assert!(matches!(parse("a"), Err(KeysError::Syntax { .. })));
        assert!(matches!(parse("a 0011"), Err(KeysError::Key(_))));
    }
}
