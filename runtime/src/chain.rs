//! An error and its causes on one line (`top: cause: root cause`), for structured logs and for
//! the message a binary prints before exiting non-zero.
//!
//! Replaces the four hand-written copies: `ErrorChain` in agent/src/pods.rs, the `Chain` test
//! helper in agent/src/config.rs, and the `successors(...).join(": ")` in
//! agent/src/model_mirror.rs and agent/src/detect.rs (those two log the causes without the top
//! error, which [`ErrorChain::causes`] keeps).
//!
//! The AWS SDK is why this matters: its top-level `SdkError` displays as "dispatch failure" or
//! "service error", and what went wrong (connection refused, the service's error code) is only
//! in the causes.
//!
//! A cause whose text the previous message already ends with is skipped, so an error whose
//! message embeds its source (`#[error("reading {path}: {0}")]`) does not print it twice.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its causes, separated by `": "`.
///
/// ```
/// use selfheal_runtime::chain::ErrorChain;
/// let e = std::io::Error::other("disk on fire");
/// assert_eq!(ErrorChain::new(&e).to_string(), "disk on fire");
/// ```
#[derive(Clone, Copy)]
pub struct ErrorChain<'a> {
    error: &'a (dyn Error + 'static),
    skip_top: bool,
}

impl<'a> ErrorChain<'a> {
    /// The error and all its causes.
    pub fn new(error: &'a (dyn Error + 'static)) -> Self {
        ErrorChain {
            error,
            skip_top: false,
        }
    }

    /// Only the causes (empty when there are none): for a log line that already carries the
    /// error itself in another field (`error = %e, cause = %ErrorChain::causes(&e)`).
    pub fn causes(error: &'a (dyn Error + 'static)) -> Self {
        ErrorChain {
            error,
            skip_top: true,
        }
    }
}

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut previous = self.error.to_string();
        let mut first = true;
        if !self.skip_top {
            f.write_str(&previous)?;
            first = false;
        }
        let mut cause = self.error.source();
        while let Some(c) = cause {
            let text = c.to_string();
            if !(text.is_empty() || previous.ends_with(&text)) {
                if !first {
                    f.write_str(": ")?;
                }
                f.write_str(&text)?;
                first = false;
            }
            previous = text;
            cause = c.source();
        }
        Ok(())
    }
}

impl fmt::Debug for ErrorChain<'_> {
    /// The same as `Display`, so `Result<_, ErrorChain>` in a test prints the whole chain.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("loading the model")]
        Load(#[source] Middle),
        #[error("reading config: {0}")]
        Embeds(#[source] std::io::Error),
        #[error("no cause")]
        Alone,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("reading model.onnx")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn every_cause_follows_the_error() {
        let e = Outer::Load(Middle(std::io::Error::other("permission denied")));
        assert_eq!(
            ErrorChain::new(&e).to_string(),
            "loading the model: reading model.onnx: permission denied"
        );
        assert_eq!(
            ErrorChain::causes(&e).to_string(),
            "reading model.onnx: permission denied"
        );
        assert_eq!(
            format!("{:?}", ErrorChain::new(&e)),
            ErrorChain::new(&e).to_string()
        );
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let e = Outer::Embeds(std::io::Error::other("no such file"));
        assert_eq!(
            ErrorChain::new(&e).to_string(),
            "reading config: no such file"
        );
        // Beside an `error = %e` field the cause is already said, too.
        assert_eq!(ErrorChain::causes(&e).to_string(), "");
    }

    #[test]
    fn an_error_without_causes_is_just_itself() {
        assert_eq!(ErrorChain::new(&Outer::Alone).to_string(), "no cause");
        assert_eq!(ErrorChain::causes(&Outer::Alone).to_string(), "");
    }
}
