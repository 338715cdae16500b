//! SNS: one Publish per message to the configured topic. The message is the same JSON body as
//! the webhook's (a Lambda or an HTTPS subscriber reads it the same way), the subject its
//! one-line summary, and the attributes `status`, `moment`, `severity` and `family` (String),
//! so subscriptions can filter with a filter policy (e.g. only `critical`).
//!
//! The SDK's own retries are off: the worker retries with its backoff and counts each attempt.
//! Throttling, 5xx and transport errors are retried; a missing topic, a denied call or an
//! invalid parameter is not.

use super::config::SnsSettings;
use super::payload::Message;
use super::queue::{Channel, SendError};
use aws_sdk_sns::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sns::types::MessageAttributeValue;

/// An SNS channel.
#[derive(Debug)]
pub struct Sns {
    client: aws_sdk_sns::Client,
    topic_arn: String,
    external_url: String,
}

impl Sns {
    /// The channel for `settings`, with the standard credential chain.
    pub async fn new(settings: &SnsSettings, external_url: &str) -> Sns {
        let sdk = selfheal_runtime::aws::sdk_config(&selfheal_runtime::aws::AwsSettings {
            region: settings.region.clone(),
            endpoint_url: settings.endpoint_url.clone(),
            retry: selfheal_runtime::aws::SdkRetry::Disabled,
            connect_timeout: Some(settings.timeout),
            attempt_timeout: Some(settings.timeout),
        })
        .await;
        Sns {
            client: aws_sdk_sns::Client::new(&sdk),
            topic_arn: settings.topic_arn.clone(),
            external_url: external_url.to_owned(),
        }
    }
}

fn attr(v: &str) -> Result<MessageAttributeValue, SendError> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(v)
        .build()
        .map_err(|e| SendError::Permanent(e.to_string()))
}

/// Codes SNS answers for a call that may pass later.
const RETRYABLE_CODES: [&str; 5] = [
    "Throttled",
    "ThrottlingException",
    "InternalError",
    "InternalFailure",
    "KMSThrottling",
];

impl Channel for Sns {
    async fn send(&self, msg: &Message, receiver: &str) -> Result<(), SendError> {
        let body = msg.body(receiver, &self.external_url).to_string();
        let i = &msg.incident;
        let out = self
            .client
            .publish()
            .topic_arn(&self.topic_arn)
            .subject(msg.subject())
            .message(body)
            .message_attributes("status", attr(msg.moment.status())?)
            .message_attributes("moment", attr(msg.moment.as_str())?)
            .message_attributes("severity", attr(i.severity.as_str())?)
            .message_attributes("family", attr(i.family.as_str())?)
            .send()
            .await;
        match out {
            Ok(_) => Ok(()),
            Err(e) => {
                let text = selfheal_runtime::chain::ErrorChain::new(&e).to_string();
                let retry = match &e {
                    SdkError::ServiceError(s) => {
                        let code = s.err().code().unwrap_or("");
                        RETRYABLE_CODES.contains(&code) || s.raw().status().is_server_error()
                    }
                    SdkError::ConstructionFailure(_) => false,
                    _ => true,
                };
                let text = match e.code() {
                    Some(code) => format!("{code}: {text}"),
                    None => text,
                };
                if retry {
                    Err(SendError::Retryable(text))
                } else {
                    Err(SendError::Permanent(text))
                }
            }
        }
    }
}
