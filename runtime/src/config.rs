//! The error every `validate()` returns for a value that parsed but cannot be used, and the
//! checks that recur across the services' configurations.
//!
//! Replaces the six `{field, reason}` errors (`PodsConfigError` in agent/src/pods.rs,
//! `SpoolError::Invalid`, agent `ConfigError::Invalid`, `SamplingConfigError`,
//! `ForwardConfigError`, aggregator `ConfigError::Invalid`) and the validators written beside
//! them (`positive`/`secs`/`millis`, `check_url`). A component wraps [`FieldError`] as the
//! `#[source]` of its own variant (`#[error("invalid agent configuration")] Invalid(#[source]
//! FieldError)`), so [`crate::chain::ErrorChain`] prints
//! `invalid agent configuration: field `pods.resync_secs`: must be ...`.
//!
//! `field` is the dotted path from the configuration's root (`forward.kinesis.stream_name`), the
//! same path the TOML key and the `SELFHEAL_*__*` environment variable use, so the operator can
//! find what to fix.

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::time::Duration;

/// A configuration value that cannot be used: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct FieldError {
    /// Dotted path of the field from the configuration root, e.g. `pods.resync_secs`.
    pub field: &'static str,
    /// What is wrong with the value, including the value itself.
    pub reason: String,
}

impl FieldError {
    /// `field` is unusable because of `reason`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        FieldError {
            field,
            reason: reason.into(),
        }
    }
}

/// A number of seconds (a TOML float such as `interval_secs = 0.5`) in `(0, max]`.
pub fn secs(field: &'static str, value: f64, max: f64) -> Result<Duration, FieldError> {
    if value.is_finite() && value > 0.0 && value <= max {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(FieldError::new(
            field,
            format!("must be a number of seconds in (0, {max}], got {value}"),
        ))
    }
}

/// A number of milliseconds in `1..=max`.
pub fn millis(field: &'static str, value: u64, max: u64) -> Result<Duration, FieldError> {
    if value == 0 || value > max {
        return Err(FieldError::new(
            field,
            format!("must be in 1..={max} ms, got {value}"),
        ));
    }
    Ok(Duration::from_millis(value))
}

/// `value` within `range` (inclusive).
pub fn in_range<T: PartialOrd + Display>(
    field: &'static str,
    value: T,
    range: RangeInclusive<T>,
) -> Result<T, FieldError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(FieldError::new(
            field,
            format!(
                "must be in {}..={}, got {value}",
                range.start(),
                range.end()
            ),
        ))
    }
}

/// A string that is not empty (nor only whitespace).
pub fn non_empty<'a>(field: &'static str, value: &'a str) -> Result<&'a str, FieldError> {
    if value.trim().is_empty() {
        Err(FieldError::new(field, "must be set"))
    } else {
        Ok(value)
    }
}

/// Whether a URL's host (`Url::host_str`, `[::1]` brackets allowed) is this machine's loopback:
/// `localhost` or a loopback address. The one place a credential may travel over plain
/// `http://`, or a certificate go unchecked, because nobody else is on the path.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

/// An absolute `http://` or `https://` URL with a host (an endpoint override, the API server).
#[cfg(feature = "http")]
pub fn http_url(field: &'static str, value: &str) -> Result<http::Uri, FieldError> {
    let uri: http::Uri = value
        .parse()
        .map_err(|e| FieldError::new(field, format!("{value:?} is not a URL ({e})")))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let host_ok = uri.host().is_some_and(|h| !h.is_empty());
    // Credentials in a URL end up in logs; they belong in the SDK's credential chain.
    let no_userinfo = uri.authority().is_some_and(|a| !a.as_str().contains('@'));
    if !(scheme_ok && host_ok) {
        return Err(FieldError::new(
            field,
            format!("{value:?} must be an http:// or https:// URL with a host"),
        ));
    }
    if !no_userinfo {
        return Err(FieldError::new(
            field,
            format!("{value:?} must not carry credentials"),
        ));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_hosts_are_localhost_and_loopback_addresses_only() {
        for h in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.8.9.10",
            "[::1]",
            "::1",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "",
            "10.0.0.7",
            "[fd00::1]",
            "localhost.example",
            "kubernetes.default.svc",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    use super::*;

    #[test]
    fn the_message_names_the_field_and_the_value() {
        let e = secs("pods.resync_secs", -1.0, 3600.0).expect_err("negative");
        assert_eq!(e.field, "pods.resync_secs");
        assert_eq!(
            e.to_string(),
            "field `pods.resync_secs`: must be a number of seconds in (0, 3600], got -1"
        );
    }

    #[test]
    fn seconds_must_be_finite_positive_and_bounded() {
        assert_eq!(secs("f", 0.5, 10.0), Ok(Duration::from_millis(500)));
        assert_eq!(secs("f", 10.0, 10.0), Ok(Duration::from_secs(10)));
        for bad in [0.0, -0.1, 10.01, f64::NAN, f64::INFINITY] {
            assert!(secs("f", bad, 10.0).is_err(), "{bad}");
        }
    }

    #[test]
    fn millis_and_ranges_are_inclusive() {
        assert_eq!(millis("f", 1, 5), Ok(Duration::from_millis(1)));
        assert_eq!(millis("f", 5, 5), Ok(Duration::from_millis(5)));
        assert!(millis("f", 0, 5).is_err());
        assert!(millis("f", 6, 5).is_err());
        assert_eq!(in_range("f", 500, 1..=500), Ok(500));
        let e = in_range("forward.max_batch_records", 501, 1..=500).expect_err("over");
        assert_eq!(e.reason, "must be in 1..=500, got 501");
    }

    #[test]
    fn blank_strings_are_unset() {
        assert_eq!(non_empty("f", "x"), Ok("x"));
        for bad in ["", "  ", "\t\n"] {
            assert_eq!(
                non_empty("f", bad),
                Err(FieldError::new("f", "must be set"))
            );
        }
    }

    #[test]
    fn urls_need_a_web_scheme_and_a_host_and_no_credentials() {
        let u = http_url("f", "http://127.0.0.1:5000").expect("valid");
        assert_eq!(u.host(), Some("127.0.0.1"));
        assert!(http_url("f", "https://s3.eu-west-1.amazonaws.com/").is_ok());
        for bad in [
            "",
            "127.0.0.1:5000",
            "ftp://host/",
            "/just/a/path",
            "http://",
            "http://user:secret@host/",
            "http://ho st/",
        ] {
            assert!(http_url("f", bad).is_err(), "{bad:?}");
        }
    }
}
