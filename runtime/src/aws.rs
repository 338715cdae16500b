//! The AWS SDK configuration every service builds: the standard chain (credentials from the
//! environment, profile, web identity / IRSA or instance metadata; region; `AWS_ENDPOINT_URL*`)
//! plus the service's overrides, and the S3 client with the one addressing rule.
//!
//! Replaces the five `aws_config::defaults(..)` builders: agent/src/model_mirror.rs,
//! agent/src/forward/kinesis.rs, aggregator/src/run.rs, aggregator/src/lake/store.rs and
//! model-export/src/publish/s3.rs. They decided path-style addressing two ways: from the loaded
//! config's endpoint (which misses `AWS_ENDPOINT_URL_S3`) or from the setting and two environment
//! variables (which misses an `endpoint_url` in the profile), so the same environment could give
//! the lake one style and the model store the other.
//!
//! **The rule** ([`s3_client`]): path-style (`http://host/bucket/key`) exactly when an endpoint
//! override is in effect for S3 — the service's setting, `AWS_ENDPOINT_URL`, the profile's
//! `endpoint_url`, or `AWS_ENDPOINT_URL_S3` (unless `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`).
//! Local and private S3s (moto, MinIO, Ceph on 127.0.0.1 or a cluster DNS name) have no
//! per-bucket host names; AWS's own endpoints keep virtual-hosted style, which is what AWS
//! recommends and what bucket names with dots need for TLS.

use aws_config::SdkConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use std::time::Duration;

/// How many times the SDK itself tries a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SdkRetry {
    /// The SDK's standard mode (3 attempts, its own backoff).
    #[default]
    Standard,
    /// One attempt: the caller retries with its own backoff and counts every retry (the Kinesis
    /// consumer and the forwarder, whose retries are metrics).
    Disabled,
    /// The standard mode with this many attempts in all.
    Attempts(u32),
}

/// A service's overrides of the standard chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsSettings {
    /// Region; `None` takes it from the chain (`AWS_REGION`, profile, instance metadata).
    pub region: Option<String>,
    /// Endpoint URL (validate it with `config::http_url`); `None` takes it from the
    /// chain (`AWS_ENDPOINT_URL`, profile) or uses AWS's.
    pub endpoint_url: Option<String>,
    /// The SDK's own retries.
    pub retry: SdkRetry,
    /// Most time to establish a connection; `None` is the SDK's default.
    pub connect_timeout: Option<Duration>,
    /// Most time for one attempt of a request, including reading the answer; `None` is none.
    pub attempt_timeout: Option<Duration>,
}

/// Loads the standard chain with `settings` applied.
pub async fn sdk_config(settings: &AwsSettings) -> SdkConfig {
    let retry = match settings.retry {
        SdkRetry::Standard => RetryConfig::standard(),
        SdkRetry::Disabled => RetryConfig::disabled(),
        SdkRetry::Attempts(n) => RetryConfig::standard().with_max_attempts(n.max(1)),
    };
    let mut timeouts = TimeoutConfig::builder();
    if let Some(t) = settings.connect_timeout {
        timeouts = timeouts.connect_timeout(t);
    }
    if let Some(t) = settings.attempt_timeout {
        timeouts = timeouts.operation_attempt_timeout(t);
    }
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .retry_config(retry)
        .timeout_config(timeouts.build());
    if let Some(region) = &settings.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &settings.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

/// An S3 client for `sdk`, path-style exactly when an endpoint override is in effect (the module
/// docs give the rule).
pub fn s3_client(sdk: &SdkConfig) -> aws_sdk_s3::Client {
    let path_style = endpoint_overridden(sdk, |k| std::env::var(k).ok());
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(path_style)
            .build(),
    )
}

/// The rule, with the environment passed in (tests cannot set variables safely in a threaded
/// test binary).
fn endpoint_overridden(sdk: &SdkConfig, env: impl Fn(&str) -> Option<String>) -> bool {
    let set = |k: &str| env(k).is_some_and(|v| !v.trim().is_empty());
    let ignore_env = env("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    sdk.endpoint_url().is_some() || (!ignore_env && set("AWS_ENDPOINT_URL_S3"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn settings(endpoint: Option<&str>) -> AwsSettings {
        AwsSettings {
            region: Some("eu-west-1".into()),
            endpoint_url: endpoint.map(str::to_owned),
            retry: SdkRetry::Disabled,
            connect_timeout: Some(Duration::from_secs(2)),
            attempt_timeout: Some(Duration::from_secs(5)),
        }
    }

    #[tokio::test]
    async fn the_settings_land_in_the_sdk_config() {
        let sdk = sdk_config(&settings(Some("http://127.0.0.1:9"))).await;
        assert_eq!(sdk.region().map(|r| r.as_ref()), Some("eu-west-1"));
        assert_eq!(sdk.endpoint_url(), Some("http://127.0.0.1:9"));
        assert_eq!(sdk.retry_config().map(|r| r.max_attempts()), Some(1));
        let t = sdk.timeout_config().expect("timeouts");
        assert_eq!(t.connect_timeout(), Some(Duration::from_secs(2)));
        assert_eq!(t.operation_attempt_timeout(), Some(Duration::from_secs(5)));
        let three = sdk_config(&AwsSettings {
            retry: SdkRetry::Attempts(3),
            ..settings(None)
        })
        .await;
        assert_eq!(three.retry_config().map(|r| r.max_attempts()), Some(3));
    }

    #[test]
    fn path_style_follows_any_endpoint_override_for_s3() {
        let aws = SdkConfig::builder().build();
        let local = SdkConfig::builder()
            .endpoint_url("http://127.0.0.1:5000")
            .build();
        assert!(!endpoint_overridden(&aws, env(&[])));
        assert!(endpoint_overridden(&local, env(&[])));
        assert!(endpoint_overridden(
            &aws,
            env(&[("AWS_ENDPOINT_URL_S3", "http://minio:9000")])
        ));
        assert!(!endpoint_overridden(
            &aws,
            env(&[("AWS_ENDPOINT_URL_S3", " ")])
        ));
        assert!(!endpoint_overridden(
            &aws,
            env(&[
                ("AWS_ENDPOINT_URL_S3", "http://minio:9000"),
                ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true"),
            ])
        ));
    }

    /// The request an S3 client built here sends to an overridden endpoint names the bucket in
    /// the path, not in the host (which a local S3 could not resolve).
    #[tokio::test]
    async fn a_local_endpoint_gets_path_style_requests() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            let _ = conn
                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                .await;
            String::from_utf8_lossy(&head).into_owned()
        });
        let sdk = sdk_config(&settings(Some(&format!("http://{addr}"))))
            .await
            .to_builder()
            .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(
                aws_sdk_s3::config::Credentials::new("test", "test", None, None, "test"),
            ))
            .build();
        let client = s3_client(&sdk);
        let result = client
            .get_object()
            .bucket("lake-bucket")
            .key("a/b.parquet")
            .send()
            .await;
        assert!(result.is_err(), "the fake answers 404");
        let head = server.await.expect("join");
        let first = head.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("GET /lake-bucket/a/b.parquet"),
            "request line {first:?}"
        );
        let host = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("host:"))
            .unwrap_or_default();
        assert_eq!(host.to_ascii_lowercase(), format!("host: {addr}"));
    }
}
