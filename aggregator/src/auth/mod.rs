//! Who is posting: the HTTP ingest endpoint's authentication. Every request carries
//! `Authorization: Bearer <token>`, and the token names exactly one node: through the
//! per-agent [`tokens`] table outside a cluster, or a Kubernetes [`tokenreview`] of the agent's
//! projected service-account token inside one. The endpoint then refuses any record whose
//! `node` is not that node (see `sources::http`), so a node can speak only for itself.
//!
//! Both sources may be configured at once (a cluster migrating from token files): the table is
//! tried first, then the API server. No token is 401; a token neither knows is 401; an API
//! server that cannot be asked is 503, so a control-plane blip makes agents retry, never drop.

pub mod tokenreview;
pub mod tokens;

use axum::http::{HeaderMap, header};
use tokenreview::{Review, ReviewError, ReviewSettings, TokenReviewer};
use tokens::{TokenFileError, TokenSource, TokenTable};

/// Validated authentication settings: at least one of the two is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// Per-agent tokens.
    pub tokens: Option<TokenSource>,
    /// TokenReview against the API server.
    pub review: Option<ReviewSettings>,
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The node the credential belongs to.
    pub node: String,
    /// How it was established: `token_file` or `token_review`.
    pub via: &'static str,
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No `Authorization: Bearer` header (401).
    #[error("no bearer token")]
    Missing,
    /// A token nobody knows, or one the API server refused (401).
    #[error("{0}")]
    Invalid(String),
    /// The API server could not be asked (503: retry).
    #[error("{0}")]
    Unavailable(String),
}

impl Refusal {
    /// The label of `selfheal_aggregator_ingest_auth_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Invalid(_) => "invalid",
            Refusal::Unavailable(_) => "unavailable",
        }
    }
}

/// Authentication could not be set up (at start).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token file or directory is unusable.
    #[error("ingest.auth token source")]
    Tokens(#[source] TokenFileError),
    /// The TokenReview client could not be built.
    #[error("ingest.auth.kubernetes")]
    Review(#[source] ReviewError),
}

/// Authenticates ingest requests.
#[derive(Debug)]
pub struct Authenticator {
    tokens: Option<TokenTable>,
    review: Option<TokenReviewer>,
}

impl Authenticator {
    /// Loads the token table and builds the TokenReview client.
    pub fn new(settings: &AuthSettings) -> Result<Authenticator, AuthError> {
        let tokens = settings
            .tokens
            .clone()
            .map(TokenTable::open)
            .transpose()
            .map_err(AuthError::Tokens)?;
        let review = settings
            .review
            .clone()
            .map(TokenReviewer::new)
            .transpose()
            .map_err(AuthError::Review)?;
        Ok(Authenticator { tokens, review })
    }

    /// The caller of a request with `headers`.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, Refusal> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or(Refusal::Missing)?;
        if let Some(node) = self
            .tokens
            .as_ref()
            .and_then(|t| t.node_of(token.as_bytes()))
        {
            return Ok(Caller {
                node,
                via: "token_file",
            });
        }
        let Some(review) = &self.review else {
            return Err(Refusal::Invalid("unknown token".into()));
        };
        match review.review(token).await {
            Ok(Review::Node(node)) => Ok(Caller {
                node,
                via: "token_review",
            }),
            Ok(Review::Refused(why)) => Err(Refusal::Invalid(why)),
            Err(e) => Err(Refusal::Unavailable(e.to_string())),
        }
    }
}
