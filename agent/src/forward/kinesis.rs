//! The Kinesis [`Sink`]: one PutRecords call per batch through the AWS SDK, with per-record
//! outcomes so the [`Forwarder`](super::Forwarder) resends only what failed.
//!
//! Credentials, region and endpoint come from the SDK's standard chain (environment, profile,
//! web identity / IRSA, instance metadata; `AWS_ENDPOINT_URL`), overridable in [`KinesisConfig`].
//! The SDK's own retries are off: the forwarder retries with the spool behind it, and counts.

use super::{RecordOutcome, Sink, SinkError};
use crate::forward::spool::SpooledRecord;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::operation::put_records::PutRecordsError;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use selfheal_runtime::aws::{AwsSettings, SdkRetry};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Kinesis sink settings as written by the user (`forward.kinesis` section).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct KinesisConfig {
    /// Name of the stream to write to.
    pub stream_name: String,
    /// AWS region; defaults to the standard chain (`AWS_REGION`, profile, instance metadata).
    pub region: Option<String>,
    /// Endpoint override (a VPC endpoint, LocalStack, moto); `AWS_ENDPOINT_URL` works too.
    pub endpoint_url: Option<String>,
    /// Connect timeout, milliseconds (0 = the SDK default).
    pub connect_timeout_ms: u64,
}

/// A sink that writes to one Kinesis stream.
#[derive(Debug, Clone)]
pub struct KinesisSink {
    client: Client,
    stream: String,
}

impl KinesisSink {
    /// Builds a client from the standard AWS configuration chain plus `cfg`'s overrides.
    pub async fn from_config(
        cfg: &KinesisConfig,
    ) -> Result<KinesisSink, super::ForwardConfigError> {
        if cfg.stream_name.is_empty() {
            return Err(super::ForwardConfigError {
                field: "forward.kinesis.stream_name",
                reason: "must be set".into(),
            });
        }
        // The forwarder retries with its own backoff and counts each retry.
        let sdk = selfheal_runtime::aws::sdk_config(&AwsSettings {
            region: cfg.region.clone(),
            endpoint_url: cfg.endpoint_url.clone(),
            retry: SdkRetry::Disabled,
            connect_timeout: (cfg.connect_timeout_ms > 0)
                .then(|| Duration::from_millis(cfg.connect_timeout_ms)),
            attempt_timeout: None,
        })
        .await;
        Ok(KinesisSink::new(Client::new(&sdk), cfg.stream_name.clone()))
    }

    /// Wraps an existing client (tests, or an agent that builds its own SDK config).
    pub fn new(client: Client, stream: String) -> KinesisSink {
        KinesisSink { client, stream }
    }
}

impl Sink for KinesisSink {
    async fn send(&self, records: &[&SpooledRecord]) -> Result<Vec<RecordOutcome>, SinkError> {
        let entries = records
            .iter()
            .map(|r| {
                PutRecordsRequestEntry::builder()
                    .data(Blob::new(r.data.clone()))
                    .partition_key(&r.partition_key)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SinkError::Rejected(e.into()))?;
        let out = self
            .client
            .put_records()
            .stream_name(&self.stream)
            .set_records(Some(entries))
            .send()
            .await
            .map_err(classify)?;
        Ok(out
            .records()
            .iter()
            .map(|e| match e.error_code() {
                None => RecordOutcome::Accepted,
                // Kinesis fails single records only for throughput or internal faults: both
                // pass with time.
                Some(code) => RecordOutcome::Failed {
                    retryable: true,
                    code: code.to_owned(),
                },
            })
            .collect())
    }

    fn name(&self) -> &'static str {
        "kinesis"
    }
}

fn classify(
    e: SdkError<PutRecordsError, aws_sdk_kinesis::config::http::HttpResponse>,
) -> SinkError {
    let throttled = match &e {
        SdkError::ServiceError(se) => {
            matches!(
                se.err(),
                PutRecordsError::ProvisionedThroughputExceededException(_)
                    | PutRecordsError::KmsThrottlingException(_)
            ) || se.err().code().is_some_and(super::is_throttle_code)
        }
        _ => false,
    };
    let invalid = matches!(
        &e,
        SdkError::ServiceError(se) if matches!(se.err(), PutRecordsError::InvalidArgumentException(_))
    );
    // The SDK's Display says only "service error"; keep the whole chain in the message.
    let boxed: super::BoxError = aws_sdk_kinesis::error::DisplayErrorContext(&e)
        .to_string()
        .into();
    if throttled {
        SinkError::Throttled(boxed)
    } else if invalid {
        SinkError::Rejected(boxed)
    } else {
        SinkError::Transient(boxed)
    }
}
