//! In a cluster: the agent presents its projected service-account token (a dedicated audience,
//! `selfheal-ingest` by default, so the token is good for nothing else and no other token is
//! good here), and the aggregator asks the API server who it is with a TokenReview
//! (`POST /apis/authentication.k8s.io/v1/tokenreviews`, which needs the `system:auth-delegator`
//! ClusterRole or `create` on `tokenreviews`). A token is accepted when the API server says it
//! is authenticated for that audience, it belongs to one of the allowed service accounts, and
//! it is bound to a pod on a node: the node is the `authentication.kubernetes.io/node-name`
//! extra the API server adds to a pod-bound token (Kubernetes 1.30 and later), never a claim of
//! the caller's.
//!
//! Answers are cached by the token's SHA-256 for `cache_ttl` (accepted) or a fifth of it
//! (refused), at most [`CACHE_ENTRIES`] tokens, so a fleet posting every second costs the API
//! server one review per agent per TTL and a flood of bad tokens one per token per TTL/5.
//! Rotation needs nothing: the kubelet writes a new token, the agent reads it, the first
//! request with it is a cache miss and gets reviewed. An API server that cannot be reached is
//! not a refusal: the request is answered 503 and the agent retries.

use crate::auth::tokens::{digest, valid_node_name};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most tokens whose review is remembered.
pub const CACHE_ENTRIES: usize = 16_384;
/// The extra a pod-bound service-account token carries: the node its pod runs on.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// Validated TokenReview settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewSettings {
    /// The API server, `https://...` (plain `http://` only on a loopback address).
    pub api_url: String,
    /// CA bundle of the API server (PEM); `None`: the system roots.
    pub ca_file: Option<PathBuf>,
    /// The aggregator's own token for the API server, re-read on every review (rotated by the
    /// kubelet); `None`: no `Authorization` header.
    pub token_file: Option<PathBuf>,
    /// The audience agents' tokens must be issued for.
    pub audience: String,
    /// Service accounts allowed, `namespace:name`.
    pub service_accounts: Vec<String>,
    /// How long an accepted review is remembered.
    pub cache_ttl: Duration,
    /// Timeout of one review.
    pub timeout: Duration,
}

/// Why the review could not be made (not a refusal of the token).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The client could not be built (CA file unreadable or not PEM).
    #[error("cannot build the TokenReview client: {0}")]
    Client(String),
    /// The API server could not be reached or answered something other than a TokenReview.
    #[error("TokenReview against {url} failed: {reason}")]
    Api {
        /// The API server.
        url: String,
        /// What happened.
        reason: String,
    },
}

/// The outcome of a review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Review {
    /// The token is an allowed agent's on `node`.
    Node(String),
    /// The token is refused; the reason is for the log (never the token).
    Refused(String),
}

#[derive(Debug)]
struct Cached {
    at: Instant,
    review: Review,
}

/// A TokenReview client with its cache.
#[derive(Debug)]
pub struct TokenReviewer {
    settings: ReviewSettings,
    client: reqwest::Client,
    url: String,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

impl TokenReviewer {
    /// Builds the client (reads the CA file now: a bad one fails at start).
    pub fn new(settings: ReviewSettings) -> Result<TokenReviewer, ReviewError> {
        let mut b = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &settings.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| ReviewError::Client(format!("{}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| ReviewError::Client(format!("{}: {e}", ca.display())))?;
            b = b.tls_certs_only(certs);
        }
        let client = b.build().map_err(|e| ReviewError::Client(e.to_string()))?;
        let url = format!(
            "{}/apis/authentication.k8s.io/v1/tokenreviews",
            settings.api_url.trim_end_matches('/')
        );
        Ok(TokenReviewer {
            settings,
            client,
            url,
            cache: Mutex::new(HashMap::new()),
        })
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Review> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let c = cache.get(key)?;
        let ttl = match c.review {
            Review::Node(_) => self.settings.cache_ttl,
            Review::Refused(_) => self.settings.cache_ttl / 5,
        };
        (c.at.elapsed() < ttl).then(|| c.review.clone())
    }

    fn remember(&self, key: [u8; 32], review: &Review) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            let ttl = self.settings.cache_ttl;
            cache.retain(|_, c| c.at.elapsed() < ttl);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(
            key,
            Cached {
                at: Instant::now(),
                review: review.clone(),
            },
        );
    }

    /// Reviews `token` (from the cache when fresh).
    pub async fn review(&self, token: &str) -> Result<Review, ReviewError> {
        let key = digest(token.as_bytes());
        if let Some(r) = self.cached(&key) {
            return Ok(r);
        }
        let body = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self.settings.audience]},
        });
        let mut req = self.client.post(&self.url).json(&body);
        if let Some(f) = &self.settings.token_file {
            let own = tokio::fs::read_to_string(f)
                .await
                .map_err(|e| ReviewError::Api {
                    url: self.url.clone(),
                    reason: format!("cannot read the aggregator's token {}: {e}", f.display()),
                })?;
            req = req.bearer_auth(own.trim());
        }
        let api = |reason: String| ReviewError::Api {
            url: self.url.clone(),
            reason,
        };
        let resp = req.send().await.map_err(|e| api(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(api(format!("answered {status}")));
        }
        let answer: Value = resp.json().await.map_err(|e| api(e.to_string()))?;
        if answer["kind"] != "TokenReview" {
            return Err(api("the answer is not a TokenReview".into()));
        }
        let review = self.judge(&answer["status"]);
        self.remember(key, &review);
        Ok(review)
    }

    /// Reads a TokenReview's `status`.
    fn judge(&self, status: &Value) -> Review {
        if status["authenticated"] != true {
            let why = status["error"].as_str().unwrap_or("not authenticated");
            return Review::Refused(format!("the API server refused the token: {why}"));
        }
        if let Some(auds) = status["audiences"].as_array()
            && !auds.iter().any(|a| a == self.settings.audience.as_str())
        {
            return Review::Refused(format!(
                "the token is not for audience {}",
                self.settings.audience
            ));
        }
        let user = status["user"]["username"].as_str().unwrap_or_default();
        let Some(sa) = user.strip_prefix("system:serviceaccount:") else {
            return Review::Refused(format!("{user:?} is not a service account"));
        };
        if !self.settings.service_accounts.iter().any(|a| a == sa) {
            return Review::Refused(format!("service account {sa} is not allowed to ingest"));
        }
        let node = status["user"]["extra"][NODE_NAME_EXTRA]
            .as_array()
            .and_then(|v| v.first())
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !valid_node_name(node) {
            return Review::Refused(format!(
                "the token of {sa} is not bound to a pod on a node (no {NODE_NAME_EXTRA})"
            ));
        }
        Review::Node(node.to_owned())
    }
}
