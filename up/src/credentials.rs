//! The local instance's credentials: the node's ingest token (the agent's bearer token) and the
//! API's write token, 256 random bits each, made once and reused on every restart (mode 0600),
//! and the aggregator's token table, which names this node with the ingest token's SHA-256
//! digest only (so the table holds no secret).
//!
//! A credential file that group or others can read is refused rather than used or tightened:
//! whatever it held may have been read already, and silently fixing it would hide that (ssh
//! refuses a readable key for the same reason). Delete it and a new one is made.

use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Random bytes in a token: 256 bits.
const TOKEN_BYTES: usize = 32;

/// Why a credential cannot be made or used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// Group or others may read it.
    #[error(
        "{} is readable by others (mode {mode:o}): it may have leaked; delete it and `selfheal up` \
         makes a new one",
        path.display()
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// It does not hold a token (empty, too short, or not visible ASCII).
    #[error(
        "{} does not hold a token (at least 32 visible ASCII characters); delete it and \
         `selfheal up` makes a new one",
        .0.display()
    )]
    Invalid(PathBuf),
    /// The system's random source failed.
    #[error("cannot draw random bytes for a token: {0}")]
    Random(String),
    /// Reading failed.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Writing failed.
    #[error("cannot write a credential")]
    Write(#[from] selfheal_runtime::atomic::AtomicWriteError),
}

/// Reads the token in `path`, or makes one there when the file does not exist; true when it
/// was made.
pub fn ensure_token(path: &Path) -> Result<(String, bool), CredentialError> {
    let read_err = |source| CredentialError::Read {
        path: path.to_owned(),
        source,
    };
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(CredentialError::Exposed {
                    path: path.to_owned(),
                    mode,
                });
            }
            let text = std::fs::read_to_string(path).map_err(read_err)?;
            let token = text.trim();
            if token.len() < 32 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(CredentialError::Invalid(path.to_owned()));
            }
            Ok((token.to_owned(), false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; TOKEN_BYTES];
            getrandom::fill(&mut bytes).map_err(|e| CredentialError::Random(e.to_string()))?;
            let token = hex::encode(bytes);
            selfheal_runtime::atomic::write_private(path, format!("{token}\n").as_bytes())?;
            Ok((token, true))
        }
        Err(e) => Err(read_err(e)),
    }
}

/// Makes sure the token table at `path` admits `node` with `token` (as its SHA-256 digest);
/// lines for other nodes (agents of other machines the user added) are kept. True when the
/// file was (re)written.
pub fn ensure_table_entry(path: &Path, node: &str, token: &str) -> Result<bool, CredentialError> {
    let line = format!(
        "{node} sha256:{}",
        hex::encode(Sha256::digest(token.as_bytes()))
    );
    let existing = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(CredentialError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    // An entry's fields, comments and spacing aside (the table's own parsing rules).
    let fields = |l: &str| -> Vec<String> {
        let l = l.split('#').next().unwrap_or_default();
        l.split_whitespace().map(str::to_owned).collect()
    };
    let want = fields(&line);
    if existing.lines().any(|l| fields(l) == want) {
        return Ok(false);
    }
    let mut text = String::from(
        "# The aggregator's ingest credentials: one \"<node> <token>\" or \"<node> sha256:<digest>\"\n\
         # line per agent. `selfheal up` keeps this node's line in step with its ingest-token.\n",
    );
    for l in existing.lines() {
        let f = fields(l);
        if f.first().is_some_and(|n| n != node) {
            text.push_str(l);
            text.push('\n');
        }
    }
    text.push_str(&line);
    text.push('\n');
    selfheal_runtime::atomic::write_private(path, text.as_bytes())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_made_once_owner_only_then_reused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("ingest-token");
        let (made, created) = ensure_token(&path).expect("made");
        assert!(created);
        assert_eq!(made.len(), 64);
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, created) = ensure_token(&path).expect("reused");
        assert!(!created);
        assert_eq!(again, made);
        let (other, _) = ensure_token(&tmp.path().join("api-token")).expect("second");
        assert_ne!(other, made, "each token is drawn on its own");
    }

    #[test]
    fn a_readable_or_bad_token_file_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("t");
        ensure_token(&path).expect("made");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = ensure_token(&path).expect_err("readable");
        assert!(matches!(err, CredentialError::Exposed { .. }), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(&path, "short\n").expect("write");
        let err = ensure_token(&path).expect_err("short");
        assert!(matches!(err, CredentialError::Invalid(_)), "{err}");
    }

    #[test]
    fn the_table_names_this_node_by_digest_and_keeps_other_nodes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("ingest-tokens");
        let token = "a".repeat(64);
        assert!(ensure_table_entry(&path, "laptop", &token).expect("written"));
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(!text.contains(&token), "no secret in the table:\n{text}");
        let digest = hex::encode(Sha256::digest(token.as_bytes()));
        assert!(
            text.contains(&format!("laptop sha256:{digest}\n")),
            "{text}"
        );
        assert!(
            !ensure_table_entry(&path, "laptop", &token).expect("same"),
            "unchanged"
        );
        // A user's other agent stays; a rotated token replaces this node's line.
        std::fs::write(&path, format!("{text}pi sha256:{}\n", "b".repeat(64))).expect("add");
        assert!(ensure_table_entry(&path, "laptop", &"c".repeat(64)).expect("rotated"));
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            text.contains(&format!("pi sha256:{}", "b".repeat(64))),
            "{text}"
        );
        assert_eq!(text.matches("laptop ").count(), 1, "{text}");
        assert!(!text.contains(&digest), "{text}");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
