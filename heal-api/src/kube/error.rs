//! How an error from the Kubernetes API becomes an [`ActionError`]: its HTTP status decides the
//! class (and so whether the controller retries), and the API server's own message is kept.

use selfheal_core::action::{ActionError, ActionErrorKind};

/// The class of an API status code: 404 NotFound, 401/403 Forbidden, 409 Conflict (a stale
/// resourceVersion or uid precondition, or AlreadyExists), 400/422 Invalid, 429 and 5xx
/// Unavailable (retryable). Anything else (405, 415, ...) means this client asked something
/// the server does not do: Invalid, not worth retrying.
pub fn kind_of_status(code: u16) -> ActionErrorKind {
    match code {
        404 | 410 => ActionErrorKind::NotFound,
        401 | 403 => ActionErrorKind::Forbidden,
        409 => ActionErrorKind::Conflict,
        429 | 500..=599 => ActionErrorKind::Unavailable,
        _ => ActionErrorKind::Invalid,
    }
}

/// `what` failed with `err`.
pub fn classify(what: &str, err: ::kube::Error) -> ActionError {
    match err {
        ::kube::Error::Api(status) => ActionError::new(
            kind_of_status(status.code),
            format!(
                "{what}: {} {}: {}",
                status.code, status.reason, status.message
            ),
        ),
        // The request was never built: this executor's own fault, not the cluster's.
        ::kube::Error::BuildRequest(e) => {
            ActionError::new(ActionErrorKind::Invalid, format!("{what}: {e}"))
        }
        // Transport errors, timeouts (tower's timeout layer surfaces as a service error), a
        // body cut short or not the object asked for: the API was not (fully) reached.
        other => ActionError::new(ActionErrorKind::Unavailable, format!("{what}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_statuses_map_to_the_documented_classes() {
        use ActionErrorKind::*;
        for (code, kind) in [
            (400, Invalid),
            (401, Forbidden),
            (403, Forbidden),
            (404, NotFound),
            (405, Invalid),
            (409, Conflict),
            (415, Invalid),
            (422, Invalid),
            (429, Unavailable),
            (500, Unavailable),
            (503, Unavailable),
            (504, Unavailable),
        ] {
            assert_eq!(kind_of_status(code), kind, "{code}");
        }
    }
}
