//! The layout of a model store, shared by its writer (`selfheal model publish`, in
//! model-export) and its reader (the agent's model registry), so both agree on every name.
//!
//! A store is a directory or an S3 prefix holding, per family:
//!
//! ```text
//! <store>/<family>/<version>/model.onnx
//! <store>/<family>/<version>/manifest.json
//! <store>/<family>/latest            one line: the version agents should run
//! ```
//!
//! A version is written once and never changed; `latest` is written after the version is
//! complete, so a reader that follows `latest` always finds a whole version.

/// Name of the pointer, in a family's directory (or under its S3 prefix), naming the version to
/// run.
pub const LATEST_FILE: &str = "latest";

/// A store location that is not a usable `s3://bucket/prefix` URL.
pub use selfheal_runtime::s3url::S3UrlError;

/// An S3 store: a bucket and a key prefix (no leading or trailing `/`; may be empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Store {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix under which the families live.
    pub prefix: String,
}

impl S3Store {
    /// Parses `s3://bucket[/prefix]`; `Ok(None)` when `url` is not an `s3://` URL at all. The
    /// rules are [`selfheal_runtime::s3url::S3Url::parse`]'s, shared with the lake.
    pub fn parse(url: &str) -> Result<Option<S3Store>, S3UrlError> {
        Ok(
            selfheal_runtime::s3url::S3Url::parse(url)?.map(|u| S3Store {
                bucket: u.bucket,
                prefix: u.prefix,
            }),
        )
    }

    fn key(&self, rest: &str) -> String {
        if self.prefix.is_empty() {
            rest.to_owned()
        } else {
            format!("{}/{rest}", self.prefix)
        }
    }

    /// Key of a family's `latest` pointer.
    pub fn latest_key(&self, family: &str) -> String {
        self.key(&format!("{family}/{LATEST_FILE}"))
    }

    /// Key of `file` (`model.onnx`, `manifest.json`) in a version.
    pub fn file_key(&self, family: &str, version: &str, file: &str) -> String {
        self.key(&format!("{family}/{version}/{file}"))
    }
}

impl std::fmt::Display for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// True when `name` can be a family or version: one path component that cannot climb out of its
/// directory, is not the `latest` pointer and is not hidden (a leading `.` is kept for temporary
/// files and a ConfigMap mount's `..data` machinery).
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name != LATEST_FILE
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_parse_into_bucket_and_prefix() {
        let s = S3Store::parse("s3://models-bucket/fleet/prod/")
            .expect("valid")
            .expect("s3");
        assert_eq!(s.bucket, "models-bucket");
        assert_eq!(s.prefix, "fleet/prod");
        assert_eq!(s.latest_key("cpu"), "fleet/prod/cpu/latest");
        assert_eq!(
            s.file_key("cpu", "v1", "model.onnx"),
            "fleet/prod/cpu/v1/model.onnx"
        );
        let bare = S3Store::parse("s3://bkt").expect("valid").expect("s3");
        assert_eq!(bare.latest_key("cpu"), "cpu/latest");
        assert_eq!(S3Store::parse("/var/lib/models"), Ok(None));
        for bad in [
            "s3://",
            "s3://UPPER/x",
            "s3://b/x",
            "s3://bkt/a/../b",
            "s3://bkt/a//b",
        ] {
            assert!(S3Store::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_stay_inside_their_directory() {
        assert!(is_plain_name("20260101-1"));
        assert!(is_plain_name("v1.2"));
        for bad in ["", ".", "..", "../cpu", "a/b", "latest", "..data", ".tmp"] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
    }
}
