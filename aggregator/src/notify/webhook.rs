//! The generic JSON webhook: one POST of the Alertmanager-style body ([`super::payload`]) per
//! message, `Content-Type: application/json`, an optional bearer token, and a `User-Agent` of
//! `selfheal/<version>`.
//!
//! Any 2xx is delivered. 408, 429 and 5xx, and any transport error, are retried; other 4xx
//! are the receiver refusing this message for good (a bad token, a payload it cannot read)
//! and are not. Redirects are not followed: a token must not travel to a host not configured.

use super::config::WebhookSettings;
use super::payload::Message;
use super::queue::{Channel, SendError};
use std::path::{Path, PathBuf};

/// Most bytes of a token file.
const MAX_TOKEN_BYTES: u64 = 16 * 1024;

/// Reads a bearer token file: its first line, trimmed; empty or oversized is an error.
pub fn read_token(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX_TOKEN_BYTES {
        return Err(format!(
            "{}: {} bytes, more than a token ({MAX_TOKEN_BYTES})",
            path.display(),
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(format!("{} holds no token", path.display()));
    }
    Ok(token.to_owned())
}

/// A webhook channel.
#[derive(Debug)]
pub struct Webhook {
    client: reqwest::Client,
    url: String,
    external_url: String,
    token_file: Option<PathBuf>,
}

/// Why a webhook channel could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client of webhook {name}")]
pub struct WebhookError {
    /// The channel.
    pub name: String,
    /// The cause.
    #[source]
    pub source: reqwest::Error,
}

impl Webhook {
    /// The channel for `settings`.
    pub fn new(settings: &WebhookSettings, external_url: &str) -> Result<Webhook, WebhookError> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("selfheal/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| WebhookError {
                name: settings.name.clone(),
                source,
            })?;
        Ok(Webhook {
            client,
            url: settings.url.clone(),
            external_url: external_url.to_owned(),
            token_file: settings.bearer_token_file.clone(),
        })
    }
}

impl Channel for Webhook {
    async fn send(&self, msg: &Message, receiver: &str) -> Result<(), SendError> {
        let body = msg.body(receiver, &self.external_url);
        let mut req = self.client.post(&self.url).json(&body);
        if let Some(f) = &self.token_file {
            // Re-read each time: a rotated Secret mount is picked up without a restart. A file
            // that went missing may come back (a Secret being re-mounted): retried.
            let token = read_token(f).map_err(SendError::Retryable)?;
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.map_err(|e| {
            SendError::Retryable(selfheal_runtime::chain::ErrorChain::new(&e).to_string())
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let code = status.as_u16();
        let retry = code == 408 || code == 429 || status.is_server_error();
        let msg = format!("answered {status}");
        if retry {
            Err(SendError::Retryable(msg))
        } else {
            Err(SendError::Permanent(msg))
        }
    }
}
