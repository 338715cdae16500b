//! Per-agent bearer tokens outside a cluster: a file mapping node to token, or a directory of
//! one file per node (a mounted Secret, whose keys are node names). Only SHA-256 digests of the
//! tokens are kept in memory, and a presented token is hashed and compared with every digest in
//! constant time, so neither the table nor the comparison's timing gives a token away.
//!
//! Rotation without restart: the source is re-read at most once per [`RELOAD_EVERY`], on the
//! next request after that, and the new table replaces the old one only if it parses (a file
//! caught mid-rewrite, or a Secret mid-swap, keeps the last good table and logs why). So a new
//! token works, and a removed one stops working, within a second of the file changing.
//!
//! Format of `token_file`, one entry a line, `#` comments:
//!
//! ```text
//! node-a  3q2+7w8AbVb0R4Qk2m3x9w          # the token itself (at least 16 characters), or
//! node-b  sha256:<64 hex digits>           # its SHA-256 digest, so the file holds no secret
//! ```
//!
//! In `token_dir`, a file named after the node holds its token (or `sha256:<hex>`); names that
//! start with `.` (the `..data` links of a Secret volume) are ignored.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// How often the token source may be re-read (on demand, by the next request).
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);
/// Shortest plain token accepted: 16 characters of a random token are 96 bits or more.
pub const MIN_TOKEN_LEN: usize = 16;

/// Where the tokens are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A file of `<node> <token>` lines.
    File(PathBuf),
    /// A directory with one `<node>` file per node.
    Dir(PathBuf),
}

impl TokenSource {
    fn path(&self) -> &Path {
        match self {
            TokenSource::File(p) | TokenSource::Dir(p) => p,
        }
    }
}

/// The token source cannot be read or holds an unusable entry.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file or directory could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An entry is malformed (the message says which and why; never the token).
    #[error("{path}: {what}")]
    Entry {
        /// The file.
        path: PathBuf,
        /// What is wrong, e.g. `line 3: token shorter than 16 characters`.
        what: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    digest: [u8; 32],
    node: String,
}

/// A node name as Kubernetes allows it (a DNS-1123 subdomain).
pub fn valid_node_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !n.starts_with(['-', '.'])
        && !n.ends_with(['-', '.'])
}

/// SHA-256 of a token.
pub fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

fn parse_secret(text: &str) -> Result<[u8; 32], String> {
    if let Some(hex_digest) = text.strip_prefix("sha256:") {
        let mut d = [0u8; 32];
        hex::decode_to_slice(hex_digest, &mut d)
            .map_err(|_| "sha256: must be followed by 64 hex digits".to_owned())?;
        return Ok(d);
    }
    if text.len() < MIN_TOKEN_LEN {
        return Err(format!("token shorter than {MIN_TOKEN_LEN} characters"));
    }
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("token holds a character that cannot travel in a header".into());
    }
    Ok(digest(text.as_bytes()))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TokenFileError + '_ {
    move |source| TokenFileError::Io {
        path: path.to_owned(),
        source,
    }
}

fn load(source: &TokenSource) -> Result<Vec<Entry>, TokenFileError> {
    let mut out = Vec::new();
    let entry_err = |path: &Path, what: String| TokenFileError::Entry {
        path: path.to_owned(),
        what,
    };
    match source {
        TokenSource::File(path) => {
            let text = std::fs::read_to_string(path).map_err(io(path))?;
            for (i, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or_default().trim();
                if line.is_empty() {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let (Some(node), Some(secret), None) = (parts.next(), parts.next(), parts.next())
                else {
                    return Err(entry_err(
                        path,
                        format!("line {}: want `<node> <token>`", i + 1),
                    ));
                };
                if !valid_node_name(node) {
                    return Err(entry_err(
                        path,
                        format!("line {}: {node:?} is not a node name", i + 1),
                    ));
                }
                let digest = parse_secret(secret)
                    .map_err(|e| entry_err(path, format!("line {}: {e}", i + 1)))?;
                out.push(Entry {
                    digest,
                    node: node.to_owned(),
                });
            }
        }
        TokenSource::Dir(dir) => {
            for e in std::fs::read_dir(dir).map_err(io(dir))? {
                let e = e.map_err(io(dir))?;
                let name = e.file_name();
                let Some(node) = name.to_str() else { continue };
                if node.starts_with('.') {
                    continue;
                }
                let path = e.path();
                // Follows the symlinks a Secret volume is made of.
                if !std::fs::metadata(&path).map_err(io(&path))?.is_file() {
                    continue;
                }
                if !valid_node_name(node) {
                    return Err(entry_err(&path, format!("{node:?} is not a node name")));
                }
                let text = std::fs::read_to_string(&path).map_err(io(&path))?;
                let digest = parse_secret(text.trim()).map_err(|e| entry_err(&path, e))?;
                out.push(Entry {
                    digest,
                    node: node.to_owned(),
                });
            }
            out.sort_by(|a, b| a.node.cmp(&b.node));
        }
    }
    for (i, a) in out.iter().enumerate() {
        if let Some(b) = out[i + 1..].iter().find(|b| b.digest == a.digest) {
            return Err(entry_err(
                source.path(),
                format!("nodes {} and {} share a token", a.node, b.node),
            ));
        }
    }
    Ok(out)
}

#[derive(Debug)]
struct Table {
    entries: Vec<Entry>,
    checked: Instant,
}

/// The token table, re-read on change.
#[derive(Debug)]
pub struct TokenTable {
    source: TokenSource,
    table: Mutex<Table>,
}

impl TokenTable {
    /// Loads the table; fails (at start) when the source is unreadable or an entry is bad.
    pub fn open(source: TokenSource) -> Result<TokenTable, TokenFileError> {
        let entries = load(&source)?;
        if entries.is_empty() {
            tracing::warn!(source = %source.path().display(), "IngestTokenTableEmpty");
        }
        Ok(TokenTable {
            source,
            table: Mutex::new(Table {
                entries,
                checked: Instant::now(),
            }),
        })
    }

    /// Number of nodes with a token.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no node has a token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node `token` belongs to, if any. Re-reads the source first when it was last read
    /// [`RELOAD_EVERY`] ago. The read is synchronous on purpose: a few KB at most once a
    /// second, under a lock no other path holds long.
    pub fn node_of(&self, token: &[u8]) -> Option<String> {
        let presented = digest(token);
        let mut t = self.lock();
        if t.checked.elapsed() >= RELOAD_EVERY {
            t.checked = Instant::now();
            match load(&self.source) {
                Ok(entries) if entries != t.entries => {
                    tracing::info!(source = %self.source.path().display(), nodes = entries.len(), "IngestTokensReloaded");
                    t.entries = entries;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %selfheal_runtime::chain::ErrorChain::new(&e), "IngestTokensReloadError");
                }
            }
        }
        // Every entry is compared, each in constant time.
        let mut found = None;
        for e in &t.entries {
            if bool::from(e.digest.ct_eq(&presented)) {
                found = Some(e.node.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_maps_tokens_and_digests_to_nodes_and_rejects_weak_or_shared_tokens() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = tmp.path().join("tokens");
        let b_digest = hex::encode(digest(b"node-b-secret-token-0001"));
        std::fs::write(
            &p,
            format!(
                "# agents\nnode-a aaaaaaaaaaaaaaaaaaaa1\n\nnode-b sha256:{b_digest} # hashed\n"
            ),
        )
        .expect("write");
        let t = TokenTable::open(TokenSource::File(p.clone())).expect("open");
        assert_eq!(
            t.node_of(b"aaaaaaaaaaaaaaaaaaaa1").as_deref(),
            Some("node-a")
        );
        assert_eq!(
            t.node_of(b"node-b-secret-token-0001").as_deref(),
            Some("node-b")
        );
        assert_eq!(t.node_of(b"aaaaaaaaaaaaaaaaaaaa2"), None);
        assert_eq!(t.node_of(b""), None);

        std::fs::write(&p, "node-a tiny1\n").expect("write");
        let e = TokenTable::open(TokenSource::File(p.clone())).expect_err("weak");
        assert!(e.to_string().contains("line 1"), "{e}");
        assert!(
            !e.to_string().contains("tiny1"),
            "the error shows the token: {e}"
        );
        std::fs::write(
            &p,
            "node-a aaaaaaaaaaaaaaaaaaaa1\nnode-b aaaaaaaaaaaaaaaaaaaa1\n",
        )
        .expect("write");
        let e = TokenTable::open(TokenSource::File(p)).expect_err("shared");
        assert!(e.to_string().contains("share a token"), "{e}");
    }

    #[test]
    fn a_directory_is_read_like_a_secret_volume_and_reloaded_on_change() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path();
        std::fs::create_dir(d.join("..2026_12_01")).expect("data dir");
        std::fs::write(d.join("..2026_12_01/node-a"), "first-token-of-node-a\n").expect("write");
        std::os::unix::fs::symlink("..2026_12_01", d.join("..data")).expect("link");
        std::os::unix::fs::symlink("..data/node-a", d.join("node-a")).expect("link");
        let t = TokenTable::open(TokenSource::Dir(d.to_owned())).expect("open");
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.node_of(b"first-token-of-node-a").as_deref(),
            Some("node-a")
        );

        std::fs::write(d.join("..2026_12_01/node-a"), "second-token-of-node-a\n").expect("rotate");
        // Within the reload interval the old table stands; after it, the new one.
        assert_eq!(t.node_of(b"second-token-of-node-a"), None);
        t.lock().checked -= RELOAD_EVERY;
        assert_eq!(
            t.node_of(b"second-token-of-node-a").as_deref(),
            Some("node-a")
        );
        assert_eq!(t.node_of(b"first-token-of-node-a"), None);

        // A broken rewrite keeps the last good table.
        std::fs::write(d.join("..2026_12_01/node-a"), "x\n").expect("break");
        t.lock().checked -= RELOAD_EVERY;
        assert_eq!(
            t.node_of(b"second-token-of-node-a").as_deref(),
            Some("node-a")
        );
    }
}
