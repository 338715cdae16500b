//! `s3://bucket[/prefix]` locations, parsed and validated once for every store that lives in S3
//! (the model store, the lake).
//!
//! Replaces `S3Store::parse` in core/src/store.rs (which validated) and `parse_s3_url` in
//! aggregator/src/lake/store.rs (which did not: `s3://Bad_Bucket` got as far as the first request
//! and failed there with an SDK error instead of at start with the field's name). core's
//! `S3Store` now parses through [`S3Url::parse`].
//!
//! The prefix is kept without leading or trailing `/`; [`S3Url::key`] joins keys under it and
//! [`S3Url::dir_prefix`] gives the `prefix/` form a `ListObjectsV2` call wants.

use std::fmt;
use std::str::FromStr;

/// A location that is not a usable `s3://bucket/prefix` URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url:?} is not a valid s3://bucket/prefix URL: {reason}")]
pub struct S3UrlError {
    /// The URL given.
    pub url: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// A bucket and a key prefix (no leading or trailing `/`; may be empty).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct S3Url {
    /// Bucket name, valid by S3's naming rules.
    pub bucket: String,
    /// Key prefix, without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
}

/// S3 refuses keys longer than this (bytes).
const MAX_KEY_BYTES: usize = 1024;

impl S3Url {
    /// Parses `s3://bucket[/prefix]`; `Ok(None)` when `url` is not an `s3://` URL at all (so a
    /// location may be either a directory or S3).
    pub fn parse(url: &str) -> Result<Option<S3Url>, S3UrlError> {
        let Some(rest) = url.strip_prefix("s3://") else {
            return Ok(None);
        };
        let err = |reason| S3UrlError {
            url: url.to_owned(),
            reason,
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if !valid_bucket(bucket) {
            return Err(err(
                "the bucket name is not a valid S3 bucket name (3-63 lowercase letters, digits, \
                 '.' and '-', starting and ending with a letter or digit)",
            ));
        }
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty()
            && prefix
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Err(err("the prefix has an empty, `.` or `..` component"));
        }
        if prefix.chars().any(char::is_control) {
            return Err(err("the prefix has a control character"));
        }
        if prefix.len() >= MAX_KEY_BYTES {
            return Err(err("the prefix is longer than an S3 key may be"));
        }
        Ok(Some(S3Url {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        }))
    }

    /// The key of `rest` under the prefix.
    pub fn key(&self, rest: &str) -> String {
        if self.prefix.is_empty() {
            rest.to_owned()
        } else {
            format!("{}/{rest}", self.prefix)
        }
    }

    /// The prefix as a listing wants it: empty, or ending in `/` (so `lake` does not also match
    /// `lake-old/`).
    pub fn dir_prefix(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }
}

/// S3's bucket naming rules (general purpose buckets): 3-63 characters of lowercase letters,
/// digits, `.` and `-`, starting and ending with a letter or digit, no `..`, not an IPv4 address.
fn valid_bucket(b: &str) -> bool {
    let bytes = b.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (3..=63).contains(&bytes.len())
        && bytes.iter().all(|&c| alnum(c) || c == b'.' || c == b'-')
        && bytes.first().is_some_and(|&c| alnum(c))
        && bytes.last().is_some_and(|&c| alnum(c))
        && !b.contains("..")
        && b.parse::<std::net::Ipv4Addr>().is_err()
}

impl FromStr for S3Url {
    type Err = S3UrlError;

    /// Like [`S3Url::parse`], for a value that must be in S3.
    fn from_str(url: &str) -> Result<S3Url, S3UrlError> {
        S3Url::parse(url)?.ok_or_else(|| S3UrlError {
            url: url.to_owned(),
            reason: "it does not start with s3://",
        })
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_splits_into_bucket_and_prefix() {
        let u = S3Url::parse("s3://models-bucket/fleet/prod/")
            .expect("valid")
            .expect("s3");
        assert_eq!(u.bucket, "models-bucket");
        assert_eq!(u.prefix, "fleet/prod");
        assert_eq!(u.key("cpu/latest"), "fleet/prod/cpu/latest");
        assert_eq!(u.dir_prefix(), "fleet/prod/");
        assert_eq!(u.to_string(), "s3://models-bucket/fleet/prod");
        let bare: S3Url = "s3://bkt".parse().expect("valid");
        assert_eq!(bare.key("cpu/latest"), "cpu/latest");
        assert_eq!(bare.dir_prefix(), "");
        assert_eq!(bare.to_string(), "s3://bkt");
        assert_eq!(S3Url::parse("s3://bkt/").expect("valid"), Some(bare));
    }

    #[test]
    fn a_path_is_not_s3_but_must_be_when_required() {
        assert_eq!(S3Url::parse("/var/lib/models"), Ok(None));
        let e = "/var/lib/models".parse::<S3Url>().expect_err("not s3");
        assert_eq!(e.reason, "it does not start with s3://");
    }

    #[test]
    fn invalid_buckets_and_prefixes_are_refused() {
        for bad in [
            "s3://",
            "s3:///x",
            "s3://b/x",
            "s3://UPPER/x",
            "s3://Bad_Bucket/models",
            "s3://-bucket",
            "s3://bucket-",
            "s3://my..bucket",
            "s3://192.168.0.1/x",
            "s3://bkt/a/../b",
            "s3://bkt/./b",
            "s3://bkt/a//b",
            "s3://bkt/a\nb",
        ] {
            assert!(S3Url::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("s3://bkt/{}", "a".repeat(MAX_KEY_BYTES));
        assert!(S3Url::parse(&long).is_err());
        let e = S3Url::parse("s3://UPPER/x").expect_err("upper");
        assert!(
            e.to_string().starts_with("\"s3://UPPER/x\" is not a valid"),
            "{e}"
        );
    }
}
