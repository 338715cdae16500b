//! Starts a real moto server (PyPI `moto[server]`, from the test venv) on a free loopback port,
//! killed when the handle drops; plus Kinesis and S3 clients pointed at it.

use super::{KillOnDrop, free_port, venv_tool};
use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A running moto server.
pub struct Moto {
    _child: KillOnDrop,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Moto {
    /// Starts moto and waits (at most 30 s) until it answers.
    pub fn start() -> Moto {
        let bin = venv_tool("moto_server");
        let port = free_port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let moto = Moto {
            _child: KillOnDrop(child),
            port,
        };
        let start = Instant::now();
        while super::http_get(port, "/moto-api/").is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "moto_server did not answer on port {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Environment for a child process that talks to moto with the standard AWS chain.
pub fn aws_env(cmd: &mut Command) -> &mut Command {
    cmd.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
}

/// A Kinesis client for `endpoint` with fixed test credentials and no SDK retries.
pub fn kinesis_client(endpoint: &str) -> aws_sdk_kinesis::Client {
    let conf = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_kinesis::Client::from_conf(conf)
}

/// Creates a stream with `shards` shards.
pub async fn create_stream(client: &aws_sdk_kinesis::Client, name: &str, shards: i32) {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .expect("create stream in moto");
}

/// Every record on the stream, as (partition key, data), read from the start of each shard.
pub async fn read_stream(client: &aws_sdk_kinesis::Client, name: &str) -> Vec<(String, Vec<u8>)> {
    let shards = client
        .list_shards()
        .stream_name(name)
        .send()
        .await
        .expect("list shards");
    let mut out = Vec::new();
    for shard in shards.shards() {
        let mut it = client
            .get_shard_iterator()
            .stream_name(name)
            .shard_id(shard.shard_id())
            .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
            .send()
            .await
            .expect("shard iterator")
            .shard_iterator
            .expect("an iterator");
        for _ in 0..10_000 {
            let page = client
                .get_records()
                .shard_iterator(&it)
                .limit(10_000)
                .send()
                .await
                .expect("get records");
            if page.records().is_empty() {
                break;
            }
            out.extend(
                page.records()
                    .iter()
                    .map(|r| (r.partition_key().to_owned(), r.data().as_ref().to_vec())),
            );
            match page.next_shard_iterator {
                Some(next) => it = next,
                None => break,
            }
        }
    }
    out
}

/// An S3 client for `endpoint` with fixed test credentials, path-style addressing (moto serves
/// buckets under the path) and no SDK retries.
pub fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Creates `bucket`.
pub async fn create_bucket(client: &aws_sdk_s3::Client, bucket: &str) {
    client
        .create_bucket()
        .bucket(bucket)
        .send()
        .await
        .expect("create bucket in moto");
}

/// Writes `bytes` at `key`, unconditionally (as a careless or hostile writer would).
pub async fn put_object(client: &aws_sdk_s3::Client, bucket: &str, key: &str, bytes: Vec<u8>) {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(aws_sdk_s3::primitives::ByteStream::from(bytes))
        .send()
        .await
        .expect("put object in moto");
}

/// The object at `key`, or `None` when there is none.
pub async fn get_object(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Option<Vec<u8>> {
    match client.get_object().bucket(bucket).key(key).send().await {
        Ok(out) => Some(
            out.body
                .collect()
                .await
                .expect("read object body")
                .into_bytes()
                .to_vec(),
        ),
        Err(e)
            if e.as_service_error()
                .is_some_and(aws_sdk_s3::operation::get_object::GetObjectError::is_no_such_key) =>
        {
            None
        }
        Err(e) => panic!("get s3://{bucket}/{key}: {e:?}"),
    }
}

/// Every key in `bucket`, sorted.
pub async fn list_keys(client: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    let out = client
        .list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .expect("list objects");
    let mut keys: Vec<String> = out
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect();
    keys.sort();
    keys
}
