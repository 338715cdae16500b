//! The remote executor: the aggregator's client of the heal API. It implements [`Executor`] by
//! POSTing signed requests to `/v1/observe` and `/v1/actions` over HTTPS, so healing uses the
//! in-cluster API exactly as it would use the kube executor.
//!
//! - Each attempt is signed afresh (new timestamp and nonce) with the first key of its
//!   [`Keyring`] (the current one; the server accepts it and the previous one during a
//!   rotation).
//! - Only what may pass later is retried ([`ActionError::is_retryable`]: no answer, 429, 5xx),
//!   with the runtime's jittered backoff, up to `max_attempts`. A conflict, a refusal or a bad
//!   request is returned at once: retrying it as is cannot succeed.
//! - The action's `request_id` is in the signed body (the executor's idempotency key on the
//!   object) and in the `x-selfheal-request-id` header for the server's logs; a retry of a
//!   request whose answer was lost is recognised by the server's executor as already applied.

use crate::keys::Keyring;
use crate::server::{ACTIONS_PATH, OBSERVE_PATH};
use crate::sign;
use selfheal_core::action::{
    ActionError, ActionErrorKind, ActionOutcome, ActionRequest, Executor, Target, WorkloadState,
};
use selfheal_runtime::backoff::Backoff;
use std::path::PathBuf;
use std::time::Duration;

/// Header carrying the action's request id (also in the signed body).
pub const REQUEST_ID_HEADER: &str = "x-selfheal-request-id";

/// How to reach the heal API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSettings {
    /// `https://heal-api.selfheal-system.svc:8443` (no trailing slash).
    pub base_url: String,
    /// CA bundle that signed the server's certificate; `None`: the system roots.
    pub ca_file: Option<PathBuf>,
    /// Most time one attempt may take.
    pub timeout: Duration,
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Largest retry delay.
    pub retry_max: Duration,
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA file could not be read or parsed.
    #[error("cannot read the CA bundle {path}: {reason}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client")]
    Http(#[source] reqwest::Error),
}

/// The remote executor.
#[derive(Debug, Clone)]
pub struct RemoteExecutor {
    http: reqwest::Client,
    settings: RemoteSettings,
    keys: Keyring,
}

impl RemoteExecutor {
    /// A client of the heal API at `settings.base_url`, signing with `keys`.
    pub fn new(settings: RemoteSettings, keys: Keyring) -> Result<RemoteExecutor, ClientError> {
        let mut b = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("selfheal/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &settings.ca_file {
            let err = |reason: String| ClientError::Ca {
                path: ca.clone(),
                reason,
            };
            let pem = std::fs::read(ca).map_err(|e| err(e.to_string()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| err(e.to_string()))?;
            b = b.tls_certs_only(certs);
        }
        let http = b.build().map_err(ClientError::Http)?;
        let mut settings = settings;
        settings.base_url = settings.base_url.trim_end_matches('/').to_owned();
        Ok(RemoteExecutor {
            http,
            settings,
            keys,
        })
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
        request_id: Option<&str>,
    ) -> Result<T, ActionError> {
        let mut backoff = Backoff::new(self.settings.retry_initial, self.settings.retry_max);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.attempt(path, &body, request_id).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && attempt < self.settings.max_attempts.max(1) => {
                    let d = backoff.next_delay();
                    tracing::warn!(path, request_id, attempt, error = %e, retry_in_ms = d.as_millis() as u64, "HealApiClientRetrying");
                    tokio::time::sleep(d).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn attempt<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &[u8],
        request_id: Option<&str>,
    ) -> Result<T, ActionError> {
        let keys = self.keys.current();
        let key = keys
            .first()
            .ok_or_else(|| ActionError::new(ActionErrorKind::Forbidden, "no signing key"))?;
        let nonce = sign::new_nonce().map_err(|e| {
            ActionError::new(
                ActionErrorKind::Unavailable,
                format!("no randomness for a nonce: {e}"),
            )
        })?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let signed = sign::sign(key, "POST", path, now, &nonce, body);
        let mut req = self
            .http
            .post(format!("{}{path}", self.settings.base_url))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        for (name, value) in signed.headers() {
            req = req.header(name, value);
        }
        if let Some(id) = request_id {
            req = req.header(REQUEST_ID_HEADER, id);
        }
        let resp = req.send().await.map_err(|e| {
            ActionError::new(
                ActionErrorKind::Unavailable,
                format!("heal API: {}", selfheal_runtime::chain::ErrorChain::new(&e)),
            )
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| {
            ActionError::new(
                ActionErrorKind::Unavailable,
                format!("heal API answer cut off: {e}"),
            )
        })?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                ActionError::new(
                    ActionErrorKind::Unavailable,
                    format!("heal API answer is not JSON: {e}"),
                )
            });
        }
        let err: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let reason = err["error"].as_str().unwrap_or("");
        let message = err["message"].as_str().unwrap_or("");
        let kind = match status.as_u16() {
            409 => ActionErrorKind::Conflict,
            404 => ActionErrorKind::NotFound,
            401 | 403 => ActionErrorKind::Forbidden,
            400 | 413 | 422 => ActionErrorKind::Invalid,
            _ => ActionErrorKind::Unavailable,
        };
        Err(ActionError::new(
            kind,
            format!("heal API answered {status} {reason}: {message}"),
        ))
    }
}

impl Executor for RemoteExecutor {
    fn name(&self) -> &'static str {
        "heal-api"
    }

    async fn observe(&self, target: &Target) -> Result<WorkloadState, ActionError> {
        let body = serde_json::to_vec(target)
            .map_err(|e| ActionError::new(ActionErrorKind::Invalid, e.to_string()))?;
        self.call(OBSERVE_PATH, body, None).await
    }

    async fn apply(&self, req: &ActionRequest) -> Result<ActionOutcome, ActionError> {
        let body = serde_json::to_vec(req)
            .map_err(|e| ActionError::new(ActionErrorKind::Invalid, e.to_string()))?;
        self.call(ACTIONS_PATH, body, Some(&req.request_id)).await
    }
}
