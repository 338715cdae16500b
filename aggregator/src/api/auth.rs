//! Authentication of the API's write routes (acknowledge, resolve, create and expire silences):
//! `Authorization: Bearer <token>`, the token read at start from the file named by
//! `incidents.api_token_file`. Without that setting every write is refused (403): nothing that
//! can reach the port can mute or close an incident unless an operator chose a token.
//!
//! The comparison is constant-time over SHA-256 digests of the presented and the expected
//! token (`subtle`), so neither the content nor the length of the token leaks through timing.
//! Every refusal is counted (`selfheal_aggregator_api_auth_refused_total{reason}`) and logged
//! with the route and the peer's address when known, never the presented token.

use crate::auth::tokens::digest;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Shortest token accepted (characters): 32 hex characters are 128 bits.
pub const MIN_TOKEN_LEN: usize = 32;
/// Longest token file read, bytes.
const MAX_TOKEN_FILE: u64 = 4096;

/// Why the token file is not usable.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error("cannot read the API token file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no token of the accepted form.
    #[error(
        "API token file {path}: {reason} (one line of at least {MIN_TOKEN_LEN} visible ASCII characters)"
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Reads a token file: one line, trimmed, at least [`MIN_TOKEN_LEN`] visible ASCII characters.
/// The CLI uses it too.
pub fn read_token_file(path: &Path) -> Result<String, TokenError> {
    let read = |source| TokenError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    let invalid = |reason| TokenError::Invalid {
        path: path.to_owned(),
        reason,
    };
    if meta.len() > MAX_TOKEN_FILE {
        return Err(invalid("larger than 4 KiB"));
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let token = text.trim();
    if token.contains(['\n', '\r']) {
        return Err(invalid("more than one line"));
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err(invalid("too short"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("characters other than visible ASCII"));
    }
    Ok(token.to_owned())
}

/// Labels of refusals.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `missing` (no bearer token), `invalid` (wrong token) or `disabled` (no token configured).
    pub reason: &'static str,
}

/// The write routes' counters (`selfheal_aggregator_api_auth_*`).
#[derive(Debug, Default)]
pub struct AuthMetrics {
    /// Write requests refused, by reason.
    pub refused: Family<RefusedLabels, Counter>,
    /// Write requests let through.
    pub accepted: Counter,
}

impl AuthMetrics {
    /// Registers the counters (prefix `api_auth`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("api_auth");
        r.register(
            "refused",
            "API write requests refused, by reason",
            self.refused.clone(),
        );
        r.register(
            "accepted",
            "API write requests with a valid token",
            self.accepted.clone(),
        );
    }
}

/// The write routes' gate: the expected token's digest (none: writes disabled) and counters.
#[derive(Clone)]
pub struct WriteAuth {
    expected: Option<[u8; 32]>,
    metrics: Arc<AuthMetrics>,
}

impl std::fmt::Debug for WriteAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the digest: it is as good as the token for an offline guess of a weak one.
        f.debug_struct("WriteAuth")
            .field("enabled", &self.expected.is_some())
            .finish()
    }
}

impl WriteAuth {
    /// The gate for the token in `file`; `None`: every write refused.
    pub fn load(file: Option<&Path>) -> Result<WriteAuth, TokenError> {
        let expected = match file {
            Some(p) => Some(digest(read_token_file(p)?.as_bytes())),
            None => {
                tracing::warn!(
                    "ApiWritesDisabled: incidents.api_token_file is not set; acknowledge, resolve and silences are refused"
                );
                None
            }
        };
        Ok(WriteAuth {
            expected,
            metrics: Arc::default(),
        })
    }

    /// A gate expecting `token` (tests, benches).
    pub fn with_token(token: &str) -> WriteAuth {
        WriteAuth {
            expected: Some(digest(token.as_bytes())),
            metrics: Arc::default(),
        }
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<AuthMetrics> {
        &self.metrics
    }

    /// Whether `authorization` (the header's value) carries the token; the refusal reason if not.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), &'static str> {
        let Some(expected) = &self.expected else {
            return Err("disabled");
        };
        let Some(presented) = authorization.and_then(bearer) else {
            return Err("missing");
        };
        if bool::from(digest(presented).ct_eq(expected)) {
            Ok(())
        } else {
            Err("invalid")
        }
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 6750).
fn bearer(v: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = (v.get(..7)?, v.get(7..)?);
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// The middleware in front of the write routes.
pub async fn require_token(State(auth): State<WriteAuth>, req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match auth.check(header) {
        Ok(()) => {
            auth.metrics.accepted.inc();
            next.run(req).await
        }
        Err(reason) => {
            auth.metrics
                .refused
                .get_or_create(&RefusedLabels { reason })
                .inc();
            let peer = req
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.to_string());
            tracing::warn!(
                method = %req.method(),
                path = %req.uri().path(),
                peer = peer.as_deref().unwrap_or("unknown"),
                reason,
                "ApiWriteRefused"
            );
            let (status, msg) = match reason {
                "disabled" => (
                    StatusCode::FORBIDDEN,
                    "API writes are disabled: the aggregator has no incidents.api_token_file",
                ),
                "missing" => (
                    StatusCode::UNAUTHORIZED,
                    "this route needs Authorization: Bearer <token>",
                ),
                _ => (StatusCode::UNAUTHORIZED, "invalid token"),
            };
            let mut resp =
                (status, axum::Json(serde_json::json!({ "error": msg }))).into_response();
            if status == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"selfheal\""),
                );
            }
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn only_the_right_bearer_token_passes() {
        let a = WriteAuth::with_token(TOKEN);
        assert_eq!(a.check(Some(format!("Bearer {TOKEN}").as_bytes())), Ok(()));
        assert_eq!(
            a.check(Some(format!("bearer  {TOKEN} ").as_bytes())),
            Ok(())
        );
        assert_eq!(a.check(None), Err("missing"));
        assert_eq!(a.check(Some(b"Basic abc")), Err("missing"));
        assert_eq!(a.check(Some(b"Bearer ")), Err("missing"));
        assert_eq!(
            a.check(Some(format!("Bearer {TOKEN}x").as_bytes())),
            Err("invalid")
        );
        assert_eq!(a.check(Some(&TOKEN.as_bytes()[..31])), Err("missing"));
        let off = WriteAuth::load(None).expect("no file");
        assert_eq!(
            off.check(Some(format!("Bearer {TOKEN}").as_bytes())),
            Err("disabled")
        );
        assert!(!format!("{a:?}").contains("expected"));
    }

    #[test]
    fn token_files_are_checked() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = tmp.path().join("t");
        std::fs::write(&p, format!("{TOKEN}\n")).expect("write");
        assert_eq!(read_token_file(&p).expect("ok"), TOKEN);
        std::fs::write(&p, "short\n").expect("write");
        assert!(matches!(
            read_token_file(&p),
            Err(TokenError::Invalid {
                reason: "too short",
                ..
            })
        ));
        std::fs::write(&p, format!("{TOKEN}\n{TOKEN}\n")).expect("write");
        assert!(matches!(
            read_token_file(&p),
            Err(TokenError::Invalid { .. })
        ));
        std::fs::write(&p, format!("{TOKEN} {TOKEN}")).expect("write");
        assert!(matches!(
            read_token_file(&p),
            Err(TokenError::Invalid { .. })
        ));
        assert!(matches!(
            read_token_file(&tmp.path().join("missing")),
            Err(TokenError::Read { .. })
        ));
    }
}
