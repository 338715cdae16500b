//! Request signatures: HMAC-SHA256 over the method, the path (with its query), a timestamp, a
//! nonce, the key id and the body's SHA-256, as docs/ARCHITECTURE.md's security model asks.
//! The client ([`sign`]) and the server ([`Verifier`]) share this module, so they cannot
//! disagree on a byte of the canonical string.
//!
//! Headers: `x-selfheal-key-id`, `x-selfheal-timestamp` (unix seconds), `x-selfheal-nonce`
//! (16 to 64 of `[A-Za-z0-9_-]`) and `x-selfheal-signature: v1=<64 hex>`. The body digest is
//! not sent: the server computes it from the bytes it got, so a tampered body fails the MAC.
//!
//! ```text
//! selfheal-v1\n<METHOD>\n<path?query>\n<timestamp>\n<nonce>\n<key id>\n<hex sha256(body)>
//! ```
//!
//! Checks, cheapest first, and each refusal its own [`Refusal`]: headers present and well
//! formed; timestamp within `window` (60 s) of the server's clock either way; key id known;
//! MAC equal (the `hmac` crate's constant-time `verify_slice`); nonce not seen. The nonce is
//! remembered only after the MAC passed, so unsigned junk cannot fill the cache, and for
//! `2 × window` (the longest a timestamp stays acceptable), in a cache of bounded size: when it
//! is full of live nonces the request is refused (`nonce_cache_full`), never a nonce evicted
//! early, since an evicted nonce could be replayed.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::Mutex;

type HmacSha256 = Hmac<Sha256>;

/// Header: the key id.
pub const KEY_ID_HEADER: &str = "x-selfheal-key-id";
/// Header: unix seconds.
pub const TIMESTAMP_HEADER: &str = "x-selfheal-timestamp";
/// Header: the nonce.
pub const NONCE_HEADER: &str = "x-selfheal-nonce";
/// Header: `v1=<hex>`.
pub const SIGNATURE_HEADER: &str = "x-selfheal-signature";

/// The clock window either way, seconds.
pub const DEFAULT_WINDOW_SECS: i64 = 60;

/// Shortest secret accepted, bytes (HMAC-SHA256's block is 64; 32 is its strength).
pub const MIN_SECRET_BYTES: usize = 32;

/// One signing key.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    /// Its id (1 to 64 of `[A-Za-z0-9._-]`), sent with each request.
    pub id: String,
    secret: Vec<u8>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret, not even in a debug log.
        f.debug_struct("Key")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The id is empty, too long, or has characters outside `[A-Za-z0-9._-]`.
    #[error("key id {0:?} must be 1 to 64 of [A-Za-z0-9._-]")]
    BadId(String),
    /// The secret is shorter than [`MIN_SECRET_BYTES`].
    #[error("key {id}: secret of {len} bytes, at least {MIN_SECRET_BYTES} needed")]
    ShortSecret {
        /// The key.
        id: String,
        /// Its length.
        len: usize,
    },
}

fn id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Key {
    /// A key; the id's characters and the secret's length are checked.
    pub fn new(id: impl Into<String>, secret: impl Into<Vec<u8>>) -> Result<Key, KeyError> {
        let id = id.into();
        let secret = secret.into();
        if !id_ok(&id) {
            return Err(KeyError::BadId(id));
        }
        if secret.len() < MIN_SECRET_BYTES {
            return Err(KeyError::ShortSecret {
                id,
                len: secret.len(),
            });
        }
        Ok(Key { id, secret })
    }

    fn mac(&self, canonical: &[u8]) -> HmacSha256 {
        // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
        let mut m = match HmacSha256::new_from_slice(&self.secret) {
            Ok(m) => m,
            Err(_) => unreachable_hmac(),
        };
        m.update(canonical);
        m
    }
}

#[cold]
fn unreachable_hmac() -> ! {
    // hmac's `InvalidLength` is only returned by fixed-key-size MACs.
    panic!("HMAC-SHA256 refused a key length")
}

/// The headers of a signed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// `x-selfheal-key-id`.
    pub key_id: String,
    /// `x-selfheal-timestamp`.
    pub timestamp: String,
    /// `x-selfheal-nonce`.
    pub nonce: String,
    /// `x-selfheal-signature`.
    pub signature: String,
}

impl Signed {
    /// The four headers, name and value.
    pub fn headers(&self) -> [(&'static str, &str); 4] {
        [
            (KEY_ID_HEADER, &self.key_id),
            (TIMESTAMP_HEADER, &self.timestamp),
            (NONCE_HEADER, &self.nonce),
            (SIGNATURE_HEADER, &self.signature),
        ]
    }
}

fn canonical(
    method: &str,
    path: &str,
    ts: &str,
    nonce: &str,
    key_id: &str,
    body: &[u8],
) -> Vec<u8> {
    let digest = hex::encode(Sha256::digest(body));
    format!("selfheal-v1\n{method}\n{path}\n{ts}\n{nonce}\n{key_id}\n{digest}").into_bytes()
}

/// Signs a request: `path` with its query, exactly as sent; `nonce` fresh per request
/// ([`new_nonce`]).
pub fn sign(
    key: &Key,
    method: &str,
    path: &str,
    unix_secs: i64,
    nonce: &str,
    body: &[u8],
) -> Signed {
    let ts = unix_secs.to_string();
    let mac = key.mac(&canonical(method, path, &ts, nonce, &key.id, body));
    Signed {
        key_id: key.id.clone(),
        timestamp: ts,
        nonce: nonce.to_owned(),
        signature: format!("v1={}", hex::encode(mac.finalize().into_bytes())),
    }
}

/// A random nonce: 32 hex characters from the OS's generator.
pub fn new_nonce() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b)?;
    Ok(hex::encode(b))
}

/// Why a request's signature was refused; [`Refusal::reason`] is the audit log's word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// None of the signature headers.
    #[error("the request is not signed")]
    Unsigned,
    /// Some headers missing, or one not well formed.
    #[error("a signature header is missing or malformed")]
    Malformed,
    /// The timestamp is older than the window.
    #[error("the timestamp is older than the clock window")]
    Stale,
    /// The timestamp is ahead by more than the window.
    #[error("the timestamp is ahead of the clock window")]
    Future,
    /// No key has this id.
    #[error("no key has this id")]
    UnknownKey,
    /// The MAC does not match (a wrong key, a changed method, path, header or body).
    #[error("the signature does not match")]
    BadSignature,
    /// The nonce was used within the window.
    #[error("the nonce was already used")]
    Replayed,
    /// The nonce cache is full of live nonces.
    #[error("too many requests in the window to remember their nonces")]
    NonceCacheFull,
}

impl Refusal {
    /// The reason's word in the audit log and on `/metrics`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::Malformed => "malformed_signature",
            Refusal::Stale => "stale_timestamp",
            Refusal::Future => "future_timestamp",
            Refusal::UnknownKey => "unknown_key",
            Refusal::BadSignature => "bad_signature",
            Refusal::Replayed => "replayed_nonce",
            Refusal::NonceCacheFull => "nonce_cache_full",
        }
    }
}

/// The parts of a request the signature covers, as received.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// `POST`.
    pub method: &'a str,
    /// Path and query, as on the request line.
    pub path: &'a str,
    /// `x-selfheal-key-id`, if present.
    pub key_id: Option<&'a str>,
    /// `x-selfheal-timestamp`, if present.
    pub timestamp: Option<&'a str>,
    /// `x-selfheal-nonce`, if present.
    pub nonce: Option<&'a str>,
    /// `x-selfheal-signature`, if present.
    pub signature: Option<&'a str>,
}

fn nonce_ok(n: &str) -> bool {
    (16..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// Live nonces, oldest first, bounded.
#[derive(Debug)]
struct Nonces {
    order: VecDeque<(i64, String)>,
    set: HashSet<String>,
    capacity: usize,
}

impl Nonces {
    fn insert(&mut self, now: i64, keep_secs: i64, key: String) -> Result<(), Refusal> {
        while let Some((exp, _)) = self.order.front() {
            if *exp > now {
                break;
            }
            if let Some((_, k)) = self.order.pop_front() {
                self.set.remove(&k);
            }
        }
        if self.set.contains(&key) {
            return Err(Refusal::Replayed);
        }
        if self.set.len() >= self.capacity {
            return Err(Refusal::NonceCacheFull);
        }
        self.set.insert(key.clone());
        self.order.push_back((now + keep_secs, key));
        Ok(())
    }
}

/// Checks signatures against the current keys; one per server (the nonce cache is shared).
#[derive(Debug)]
pub struct Verifier {
    window: i64,
    nonces: Mutex<Nonces>,
}

impl Verifier {
    /// A verifier with a clock window of `window_secs` either way and room for `max_nonces`
    /// live nonces.
    pub fn new(window_secs: i64, max_nonces: usize) -> Verifier {
        Verifier {
            window: window_secs.max(1),
            nonces: Mutex::new(Nonces {
                order: VecDeque::new(),
                set: HashSet::new(),
                capacity: max_nonces.max(1),
            }),
        }
    }

    /// Live nonces held.
    pub fn nonces(&self) -> usize {
        self.nonces.lock().map_or(0, |n| n.set.len())
    }

    /// Verifies `req` with `body` at `now` (unix seconds) against `keys` (looked up by id);
    /// returns the key id that signed it.
    pub fn verify<'k>(
        &self,
        keys: &'k [Key],
        req: &RequestParts<'_>,
        body: &[u8],
        now: i64,
    ) -> Result<&'k str, Refusal> {
        let (key_id, ts, nonce, sig) = match (req.key_id, req.timestamp, req.nonce, req.signature) {
            (None, None, None, None) => return Err(Refusal::Unsigned),
            (Some(k), Some(t), Some(n), Some(s)) => (k, t, n, s),
            _ => return Err(Refusal::Malformed),
        };
        if !id_ok(key_id) || !nonce_ok(nonce) {
            return Err(Refusal::Malformed);
        }
        // Digits only: no sign, no spaces, so the string signed is the number parsed.
        if ts.is_empty() || ts.len() > 12 || !ts.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Refusal::Malformed);
        }
        let t: i64 = ts.parse().map_err(|_| Refusal::Malformed)?;
        let mac = sig
            .strip_prefix("v1=")
            .filter(|h| h.len() == 64)
            .and_then(|h| hex::decode(h).ok())
            .ok_or(Refusal::Malformed)?;
        if t < now.saturating_sub(self.window) {
            return Err(Refusal::Stale);
        }
        if t > now.saturating_add(self.window) {
            return Err(Refusal::Future);
        }
        let key = keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or(Refusal::UnknownKey)?;
        let m = key.mac(&canonical(req.method, req.path, ts, nonce, key_id, body));
        m.verify_slice(&mac).map_err(|_| Refusal::BadSignature)?;
        let mut nonces = self.nonces.lock().map_err(|_| Refusal::NonceCacheFull)?;
        nonces.insert(now, 2 * self.window, format!("{key_id}\n{nonce}"))?;
        Ok(&key.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_800_000_000;

    fn key(id: &str, fill: u8) -> Key {
        Key::new(id, vec![fill; 32]).expect("key")
    }

    fn parts<'a>(s: &'a Signed, method: &'a str, path: &'a str) -> RequestParts<'a> {
        RequestParts {
            method,
            path,
            key_id: Some(&s.key_id),
            timestamp: Some(&s.timestamp),
            nonce: Some(&s.nonce),
            signature: Some(&s.signature),
        }
    }

    const NONCE: &str = "0123456789abcdef0123";

    #[test]
    fn a_signed_request_verifies_once() {
        let keys = [key("k1", 1)];
        let v = Verifier::new(60, 100);
        let s = sign(&keys[0], "POST", "/v1/actions", NOW, NONCE, b"{}");
        assert_eq!(
            v.verify(&keys, &parts(&s, "POST", "/v1/actions"), b"{}", NOW),
            Ok("k1")
        );
        assert_eq!(
            v.verify(&keys, &parts(&s, "POST", "/v1/actions"), b"{}", NOW + 1),
            Err(Refusal::Replayed)
        );
    }

    #[test]
    fn each_tampering_is_its_own_refusal() {
        let keys = [key("k1", 1), key("k2", 2)];
        let v = Verifier::new(60, 100);
        let mut n = 0;
        let mut fresh = |t: i64| {
            n += 1;
            sign(
                &keys[0],
                "POST",
                "/v1/actions",
                t,
                &format!("{NONCE}{n}"),
                b"body",
            )
        };
        let s = fresh(NOW);
        let none = RequestParts {
            method: "POST",
            path: "/v1/actions",
            key_id: None,
            timestamp: None,
            nonce: None,
            signature: None,
        };
        assert_eq!(v.verify(&keys, &none, b"body", NOW), Err(Refusal::Unsigned));
        let mut p = parts(&s, "POST", "/v1/actions");
        p.signature = None;
        assert_eq!(v.verify(&keys, &p, b"body", NOW), Err(Refusal::Malformed));
        let p = parts(&s, "POST", "/v1/actions");
        assert_eq!(
            v.verify(&keys, &p, b"bodY", NOW),
            Err(Refusal::BadSignature)
        );
        let p = parts(&s, "POST", "/v1/actionz");
        assert_eq!(
            v.verify(&keys, &p, b"body", NOW),
            Err(Refusal::BadSignature)
        );
        let p = parts(&s, "PUT", "/v1/actions");
        assert_eq!(
            v.verify(&keys, &p, b"body", NOW),
            Err(Refusal::BadSignature)
        );
        // The same signature claimed by another key id.
        let mut p = parts(&s, "POST", "/v1/actions");
        p.key_id = Some("k2");
        assert_eq!(
            v.verify(&keys, &p, b"body", NOW),
            Err(Refusal::BadSignature)
        );
        p.key_id = Some("k3");
        assert_eq!(v.verify(&keys, &p, b"body", NOW), Err(Refusal::UnknownKey));
        let s = fresh(NOW - 61);
        assert_eq!(
            v.verify(&keys, &parts(&s, "POST", "/v1/actions"), b"body", NOW),
            Err(Refusal::Stale)
        );
        let s = fresh(NOW + 61);
        assert_eq!(
            v.verify(&keys, &parts(&s, "POST", "/v1/actions"), b"body", NOW),
            Err(Refusal::Future)
        );
        let s = fresh(NOW - 60);
        assert!(
            v.verify(&keys, &parts(&s, "POST", "/v1/actions"), b"body", NOW)
                .is_ok()
        );
        // A wrong key: signed with a secret the server does not have, under a known id.
        let wrong = key("k1", 9);
        let s = sign(
            &wrong,
            "POST",
            "/v1/actions",
            NOW,
            "ffffffffffffffffffff",
            b"body",
        );
        assert_eq!(
            v.verify(&keys, &parts(&s, "POST", "/v1/actions"), b"body", NOW),
            Err(Refusal::BadSignature)
        );
        // Refused requests do not take a nonce: only the one accepted is held.
        assert_eq!(v.nonces(), 1);
    }

    #[test]
    fn the_nonce_cache_is_bounded_and_forgets_after_twice_the_window() {
        let keys = [key("k1", 1)];
        let v = Verifier::new(60, 3);
        for i in 0..3 {
            let s = sign(&keys[0], "POST", "/", NOW, &format!("{NONCE}{i}"), b"");
            assert!(v.verify(&keys, &parts(&s, "POST", "/"), b"", NOW).is_ok());
        }
        let s = sign(&keys[0], "POST", "/", NOW, &format!("{NONCE}x"), b"");
        assert_eq!(
            v.verify(&keys, &parts(&s, "POST", "/"), b"", NOW),
            Err(Refusal::NonceCacheFull)
        );
        let s = sign(&keys[0], "POST", "/", NOW + 120, &format!("{NONCE}y"), b"");
        assert!(
            v.verify(&keys, &parts(&s, "POST", "/"), b"", NOW + 120)
                .is_ok()
        );
        assert_eq!(v.nonces(), 1);
    }

    #[test]
    fn keys_are_checked_and_never_printed() {
        assert!(matches!(
            Key::new("a b", vec![0; 32]),
            Err(KeyError::BadId(_))
        ));
        assert!(matches!(
            Key::new("a", vec![0; 31]),
            Err(KeyError::ShortSecret { .. })
        ));
        let k = key("k1", 0x41);
        assert!(!format!("{k:?}").contains("AAAA"));
    }

    proptest! {
        /// Arbitrary headers and bodies never panic, and never verify without the key.
        #[test]
        fn arbitrary_requests_never_panic_nor_pass(
            method in "\\PC{0,8}",
            path in "\\PC{0,40}",
            key_id in proptest::option::of("\\PC{0,70}"),
            ts in proptest::option::of("\\PC{0,20}"),
            nonce in proptest::option::of("\\PC{0,70}"),
            sig in proptest::option::of("\\PC{0,80}"),
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let keys = [key("k1", 1)];
            let v = Verifier::new(60, 16);
            let p = RequestParts {
                method: &method,
                path: &path,
                key_id: key_id.as_deref(),
                timestamp: ts.as_deref(),
                nonce: nonce.as_deref(),
                signature: sig.as_deref(),
            };
            prop_assert!(v.verify(&keys, &p, &body, NOW).is_err());
        }

        /// A signed request verifies; any change to one byte of the body, path or signature
        /// fails it.
        #[test]
        fn any_one_byte_change_is_refused(
            path in "/[a-z0-9/]{0,30}",
            body in proptest::collection::vec(any::<u8>(), 1..256),
            at in 0usize..1000,
            flip in 1u8..=255,
        ) {
            let keys = [key("k1", 1)];
            let s = sign(&keys[0], "POST", &path, NOW, NONCE, &body);
            let v = Verifier::new(60, 16);
            prop_assert!(v.verify(&keys, &parts(&s, "POST", &path), &body, NOW).is_ok());
            let v = Verifier::new(60, 16);
            let mut b = body.clone();
            let i = at % b.len();
            b[i] ^= flip;
            prop_assert_eq!(v.verify(&keys, &parts(&s, "POST", &path), &b, NOW), Err(Refusal::BadSignature));
            let mut sb = s.signature.clone().into_bytes();
            let j = 3 + at % 64;
            sb[j] = if sb[j] == b'0' { b'1' } else { b'0' };
            let mut s2 = s.clone();
            s2.signature = String::from_utf8(sb).unwrap_or_default();
            prop_assert_eq!(v.verify(&keys, &parts(&s2, "POST", &path), &body, NOW), Err(Refusal::BadSignature));
            let p2 = format!("{path}x");
            prop_assert_eq!(v.verify(&keys, &parts(&s, "POST", &p2), &body, NOW), Err(Refusal::BadSignature));
        }
    }
}
