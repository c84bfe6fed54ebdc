//! The eTLS JWTs: HS256 only, verified against keys built once at start.
//!
//! Verification is the hot path of every request, so it is done here without a heap
//! allocation: the segments are decoded into stack buffers, the HMAC state of the key is
//! precomputed and cloned, and only `exp`/`nbf` are read from the payload. The order is the
//! safe one: structure, `alg` pinned to HS256, signature (constant time), then claims, so an
//! expired token is only ever reported as such once its signature has been checked. Minting,
//! once per refresh, writes the token the same way (see `mint`); the tests decode what it mints,
//! and cross-check what verification accepts, with `jsonwebtoken`.
//!
//! Each kind of token the proxy mints carries its own `typ` header (RFC 8725 §3.11): an access
//! token is refused where its `typ` names another kind (an `etlsUser` is signed with the same
//! secret), while tokens without `typ`, or with the generic `JWT`, keep working (the old routes).
//! Refresh tokens carry `sid`, a keyed hash of the auth API cookies they were minted with, so a
//! refresh token only refreshes together with its own auth API session (see [`Binding`]).
//!
//! Time checks take an injected `now`, so `exp`, `nbf`, leeway and refresh-ahead behave the same
//! way in tests and in production.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, Header};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::session::verified::KeySetId;

mod claims;
mod mint;
mod verify;

/// Larger values are refused before any decoding: browsers cap a cookie near 4 KiB.
pub const MAX_TOKEN_BYTES: usize = 8192;

/// The `typ` header of each kind of token the proxy mints (RFC 8725 §3.11).
pub const TYP_ACCESS: &str = "etls-access+jwt";

pub const TYP_REFRESH: &str = "etls-refresh+jwt";

pub const TYP_USER: &str = "etls-user+jwt";

/// Bytes of the `sid` claim's keyed hash (HMAC-SHA256 truncated to 128 bits, as RFC 4868 does),
/// 22 characters in base64url.
pub const SID_BYTES: usize = 16;

pub type Claims = Map<String, Value>;

/// One secret, ready to sign and to verify.
struct HmacKey {
    /// The HMAC state after the key block, cloned per verification and per token minted.
    mac: Hmac<Sha256>,
    /// Names this secret in the tokens it signs: see [`key_id`].
    kid: String,
    /// The header segment of each kind of token this secret may sign, encoded once.
    headers: [(&'static str, String); 3],
}

/// A short, non-reversible name for a secret, carried as the `kid` header of the tokens it
/// signs: the first 8 bytes of SHA-256 over a fixed prefix and the secret, base64url. The prefix
/// keeps it from being a plain hash of the secret that could be looked up elsewhere.
pub fn key_id(secret: &[u8]) -> String {
    use sha2::Digest;
    let digest = Sha256::new()
        .chain_update(b"etls-proxy key id v1\0")
        .chain_update(secret)
        .finalize();
    URL_SAFE_NO_PAD.encode(&digest[..8])
}

impl HmacKey {
    fn new(secret: &[u8]) -> Self {
        let kid = key_id(secret);
        let headers =
            [TYP_ACCESS, TYP_REFRESH, TYP_USER].map(|typ| (typ, mint::header_segment(&kid, typ)));
        HmacKey {
            mac: Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length"),
            kid,
            headers,
        }
    }

    fn header_segment(&self, typ: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(t, _)| *t == typ)
            .map(|(_, h)| h.as_str())
    }
}

/// The secrets of one token kind, newest first: tokens are signed with the first; verified with
/// the one their `kid` names, or, without a `kid` (tokens of the old Next.js routes), with each.
struct KeySet {
    keys: Vec<HmacKey>,
    /// Files this set's verified tokens in the per-thread memory ([`crate::session::verified`]).
    id: KeySetId,
}

impl KeySet {
    fn new(secrets: &[&[u8]]) -> Self {
        assert!(
            !secrets.is_empty(),
            "at least one secret (checked by the configuration)"
        );
        KeySet {
            keys: secrets.iter().map(|s| HmacKey::new(s)).collect(),
            id: KeySetId::next(),
        }
    }

    fn signing(&self) -> &HmacKey {
        &self.keys[0]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTimes {
    pub access_ttl_secs: u64,
    pub refresh_ttl_secs: u64,
    pub leeway_secs: u64,
    pub refresh_ahead_secs: u64,
}

/// The seeds' lifetimes: 15 minutes for the access token, 12 hours for the refresh token, no
/// leeway, no refresh ahead of expiry.
impl Default for TokenTimes {
    fn default() -> Self {
        TokenTimes {
            access_ttl_secs: 900,
            refresh_ttl_secs: 43_200,
            leeway_secs: 0,
            refresh_ahead_secs: 0,
        }
    }
}

pub struct TokenKeys {
    access: KeySet,
    refresh: KeySet,
    /// One per refresh secret, in the same order: a token verified under one is checked with
    /// that one's; new tokens are bound with the first.
    bindings: Vec<BindingKey>,
    pub times: TokenTimes,
    /// `tokens.unbound_refresh`: what a refresh token without `sid` gets.
    pub unbound_refresh: UnboundRefresh,
}

/// What the access token says about the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessState {
    /// Valid and not due for refresh.
    Fresh,
    /// Valid, but expiring within `refresh_ahead_secs`: refresh, and forward if that fails.
    Due,
    /// Signature valid, `exp` passed: refresh.
    Expired,
    Invalid(TokenFault),
}

impl AccessState {
    /// Order used to pick one value among duplicate cookies: the best one wins, whatever the order.
    pub fn rank(self) -> u8 {
        match self {
            AccessState::Fresh => 3,
            AccessState::Due => 2,
            AccessState::Expired => 1,
            AccessState::Invalid(_) => 0,
        }
    }
}

/// What the refresh token says. Its claims are only read (`refresh_claims`) by the request that
/// actually calls the auth API: the others of the flight and of the grace window need not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshState {
    /// Signature, `typ` and time claims fine; with the auth API session it is bound to.
    Valid(Binding),
    Expired,
    Invalid(TokenFault),
}

/// The auth API session a refresh token belongs to: its `sid` claim, read with the time claims.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// No `sid`: minted by the old Next.js routes (`tokens.unbound_refresh` decides).
    Unbound,
    /// `sid`, decoded, and which refresh secret verified the token (whose binding key checks it).
    Bound { key: usize, sid: [u8; SID_BYTES] },
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Binding::Unbound => f.write_str("Unbound"),
            Binding::Bound { key, .. } => write!(f, "Bound(key {key})"),
        }
    }
}

/// The key `sid` hashes are made with, one per refresh secret: HMAC-SHA256 under
/// HMAC(secret, "etls-proxy binding v1"), so neither the secret nor any token ever is the key.
/// Prints nothing of itself.
struct BindingKey(Hmac<Sha256>);

impl std::fmt::Debug for BindingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BindingKey(..)")
    }
}

impl BindingKey {
    fn new(refresh_secret: &[u8]) -> Self {
        let mut derive = Hmac::<Sha256>::new_from_slice(refresh_secret)
            .expect("HMAC accepts keys of any length");
        derive.update(b"etls-proxy binding v1");
        let key = derive.finalize().into_bytes();
        BindingKey(Hmac::<Sha256>::new_from_slice(&key).expect("HMAC accepts keys of any length"))
    }

    fn mac(&self, api_cookies: &str) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        mac.update(api_cookies.as_bytes());
        mac
    }

    /// The `sid` claim for a token minted for the auth API session `api_cookies`.
    fn sid(&self, api_cookies: &str) -> String {
        let tag = self.mac(api_cookies).finalize().into_bytes();
        URL_SAFE_NO_PAD.encode(&tag[..SID_BYTES])
    }

    /// Constant-time comparison of a presented `sid` with the one `api_cookies` gives.
    fn matches(&self, api_cookies: &str, sid: &[u8; SID_BYTES]) -> bool {
        self.mac(api_cookies).verify_truncated_left(sid).is_ok()
    }
}

/// What to do with a refresh token without `sid` (`tokens.unbound_refresh`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnboundRefresh {
    /// Refresh it (once; the new token is bound): the migration from the old routes.
    #[default]
    Allow,
    /// The logout response.
    Refuse,
}

/// Why a token was refused; logged (never the token itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFault {
    TooLarge,
    /// Not a JWT we can read: segments, base64, JSON, an unknown `alg` such as `none`.
    Malformed,
    /// An `alg` other than HS256, or a signature that does not match.
    Signature,
    /// Signature fine but the claims are not what we issue (`exp` missing or not a positive
    /// integer, `nbf` in the future, a `sid` that is not one of ours).
    Claims,
    /// Signature fine but the `typ` header names another kind of token (an `etlsUser` sent as
    /// the access token).
    Type,
}

#[derive(Debug, thiserror::Error)]
#[error("could not sign a token: {0}")]
pub struct MintError(String);

impl TokenKeys {
    pub fn new(access_secret: &[u8], refresh_secret: &[u8], times: TokenTimes) -> Self {
        TokenKeys::rotating(&[access_secret], &[refresh_secret], times)
    }

    /// Several secrets per kind, newest first (secret rotation). Each list holds at least one.
    pub fn rotating(access: &[&[u8]], refresh: &[&[u8]], times: TokenTimes) -> Self {
        TokenKeys {
            access: KeySet::new(access),
            refresh: KeySet::new(refresh),
            bindings: refresh.iter().map(|s| BindingKey::new(s)).collect(),
            times,
            unbound_refresh: UnboundRefresh::default(),
        }
    }

    /// Whether a refresh token's binding names the auth API session `api_cookies` (the string
    /// sent to the auth API). Compared in constant time; an unbound token names none.
    pub fn bound_to(&self, binding: Binding, api_cookies: &str) -> bool {
        match binding {
            Binding::Unbound => false,
            Binding::Bound { key, sid } => self
                .bindings
                .get(key)
                .is_some_and(|b| b.matches(api_cookies, &sid)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::testkit::NOW;
    use crate::testkit::tokens::{ACCESS, REFRESH, b64, keys, sign, sign_raw, sign_raw_header};

    #[test]
    fn a_remembered_token_still_follows_the_clock_and_its_own_keys() {
        let k = keys();
        let token = sign(
            ACCESS,
            Algorithm::HS256,
            json!({"username": "ann", "exp": NOW + 60}),
        );
        // Checked twice (the second from this thread's memory), with the clock moving on.
        for _ in 0..2 {
            assert_eq!(k.check_access(token.as_bytes(), NOW), AccessState::Fresh);
        }
        assert_eq!(
            k.check_access(token.as_bytes(), NOW + 61),
            AccessState::Expired
        );
        assert_eq!(k.check_access(token.as_bytes(), NOW), AccessState::Fresh);
        // A reload with another access secret: the remembered token verifies no more.
        let rotated = TokenKeys::new(b"another-access-secret-0123456789", REFRESH, k.times);
        assert_eq!(
            rotated.check_access(token.as_bytes(), NOW),
            AccessState::Invalid(TokenFault::Signature)
        );
        // A refresh token's `nbf` is checked on every hit too.
        let later = sign(
            REFRESH,
            Algorithm::HS256,
            json!({"exp": NOW + 600, "nbf": NOW + 30}),
        );
        for _ in 0..2 {
            assert_eq!(
                k.check_refresh(later.as_bytes(), NOW),
                RefreshState::Invalid(TokenFault::Claims)
            );
        }
        assert_eq!(
            k.check_refresh(later.as_bytes(), NOW + 30),
            RefreshState::Valid(Binding::Unbound)
        );
    }

    #[test]
    fn access_states_by_table() {
        let k = keys();
        let good = |claims: Value| sign(ACCESS, Algorithm::HS256, claims);
        let cases: Vec<(&str, String, AccessState)> = vec![
            (
                "fresh",
                good(json!({"username":"u","exp": NOW + 60})),
                AccessState::Fresh,
            ),
            (
                "expired",
                good(json!({"exp": NOW - 1})),
                AccessState::Expired,
            ),
            (
                "expires now",
                good(json!({"exp": NOW})),
                AccessState::Expired,
            ),
            (
                "other secret",
                sign(REFRESH, Algorithm::HS256, json!({"exp": NOW + 60})),
                AccessState::Invalid(TokenFault::Signature),
            ),
            (
                "expired with bad signature",
                sign(
                    b"another-secret-another-secret-01",
                    Algorithm::HS256,
                    json!({"exp": NOW - 60}),
                ),
                AccessState::Invalid(TokenFault::Signature),
            ),
            (
                "HS384",
                sign(ACCESS, Algorithm::HS384, json!({"exp": NOW + 60})),
                AccessState::Invalid(TokenFault::Signature),
            ),
            (
                "HS512",
                sign(ACCESS, Algorithm::HS512, json!({"exp": NOW + 60})),
                AccessState::Invalid(TokenFault::Signature),
            ),
            (
                "no exp",
                good(json!({"username":"u"})),
                AccessState::Invalid(TokenFault::Claims),
            ),
            (
                "exp string",
                good(json!({"exp": "1900000000"})),
                AccessState::Invalid(TokenFault::Claims),
            ),
            (
                "exp negative",
                good(json!({"exp": -5})),
                AccessState::Invalid(TokenFault::Claims),
            ),
            (
                "exp float",
                good(json!({"exp": 1e30})),
                AccessState::Invalid(TokenFault::Claims),
            ),
            (
                "nbf future",
                good(json!({"exp": NOW + 60, "nbf": NOW + 30})),
                AccessState::Invalid(TokenFault::Claims),
            ),
            (
                "nbf past",
                good(json!({"exp": NOW + 60, "nbf": NOW - 30})),
                AccessState::Fresh,
            ),
            (
                "exp zero",
                good(json!({"exp": 0})),
                AccessState::Invalid(TokenFault::Claims),
            ),
            (
                "nbf string",
                good(json!({"exp": NOW + 60, "nbf": "x"})),
                AccessState::Invalid(TokenFault::Claims),
            ),
            (
                "garbage",
                "not-a-jwt".into(),
                AccessState::Invalid(TokenFault::Malformed),
            ),
            (
                "two segments",
                "eyJhbGciOiJIUzI1NiJ9.e30".into(),
                AccessState::Invalid(TokenFault::Malformed),
            ),
            (
                "four segments",
                format!("{}.x", good(json!({"exp": NOW + 60}))),
                AccessState::Invalid(TokenFault::Malformed),
            ),
            // The signature is checked before the payload is decoded.
            (
                "bad base64 payload",
                "eyJhbGciOiJIUzI1NiJ9.!!!.abc".into(),
                AccessState::Invalid(TokenFault::Signature),
            ),
            (
                "empty",
                String::new(),
                AccessState::Invalid(TokenFault::Malformed),
            ),
            (
                "huge",
                "a".repeat(100_000),
                AccessState::Invalid(TokenFault::TooLarge),
            ),
        ];
        for (name, token, want) in cases {
            assert_eq!(k.check_access(token.as_bytes(), NOW), want, "{name}");
        }
    }

    #[test]
    fn alg_none_and_tampered_payload_are_refused() {
        let k = keys();
        let header = b64(r#"{"alg":"none","typ":"JWT"}"#);
        let payload = b64(&format!(r#"{{"username":"admin","exp":{}}}"#, NOW + 60));
        for (token, fault) in [
            (format!("{header}.{payload}."), TokenFault::Signature),
            (format!("{header}.{payload}"), TokenFault::Malformed),
            (
                format!("{}.{payload}.", b64(r#"{"typ":"JWT"}"#)),
                TokenFault::Malformed,
            ),
            (
                format!("{}.{payload}.", b64(r#"{"alg":"HS256""#)),
                TokenFault::Malformed,
            ),
        ] {
            assert_eq!(
                k.check_access(token.as_bytes(), NOW),
                AccessState::Invalid(fault),
                "{token}"
            );
        }
        let real = sign(
            ACCESS,
            Algorithm::HS256,
            json!({"username":"bob","exp": NOW + 60}),
        );
        let sig = real.rsplit('.').next().unwrap();
        let head = real.split('.').next().unwrap();
        let forged = format!("{head}.{payload}.{sig}");
        assert_eq!(
            k.check_access(forged.as_bytes(), NOW),
            AccessState::Invalid(TokenFault::Signature)
        );
        // Well signed, but naming extensions that must be understood (RFC 7515 §4.1.11): none
        // is, so none passes; forged, it is a bad signature first.
        let payload_json = format!(r#"{{"username":"bob","exp":{}}}"#, NOW + 60);
        for crit in [r#"["exp"]"#, "[]", r#"["b64"]"#] {
            let header = format!(r#"{{"alg":"HS256","crit":{crit},"exp":1}}"#);
            let signed = sign_raw_header(ACCESS, &header, &payload_json);
            assert_eq!(
                k.check_access(signed.as_bytes(), NOW),
                AccessState::Invalid(TokenFault::Malformed),
                "{header}"
            );
            let forged =
                sign_raw_header(b"another-secret-another-secret-000", &header, &payload_json);
            assert_eq!(
                k.check_access(forged.as_bytes(), NOW),
                AccessState::Invalid(TokenFault::Signature),
                "{header}"
            );
        }
        let plain = sign_raw_header(ACCESS, r#"{"alg":"HS256"}"#, &payload_json);
        assert_eq!(k.check_access(plain.as_bytes(), NOW), AccessState::Fresh);
    }

    #[test]
    fn leeway_and_refresh_ahead() {
        let mut k = keys();
        k.times.leeway_secs = 5;
        k.times.refresh_ahead_secs = 30;
        let t = |exp: u64| sign(ACCESS, Algorithm::HS256, json!({"exp": exp}));
        assert_eq!(k.check_access(t(NOW - 1).as_bytes(), NOW), AccessState::Due);
        assert_eq!(
            k.check_access(t(NOW - 5).as_bytes(), NOW),
            AccessState::Expired
        );
        assert_eq!(
            k.check_access(t(NOW + 20).as_bytes(), NOW),
            AccessState::Due
        );
        assert_eq!(
            k.check_access(t(NOW + 100).as_bytes(), NOW),
            AccessState::Fresh
        );
    }

    #[test]
    fn refresh_token_carries_session_claims_only() {
        let k = keys();
        let token = sign(
            REFRESH,
            Algorithm::HS256,
            json!({"username":"ann","role":"x","exp": NOW + 60,"iat": NOW - 5,"sub":"s"}),
        );
        assert_eq!(
            k.check_refresh(token.as_bytes(), NOW),
            RefreshState::Valid(Binding::Unbound)
        );
        let claims = k.refresh_claims(token.as_bytes()).unwrap();
        assert_eq!(Value::Object(claims), json!({"username":"ann","role":"x"}));
        let expired = sign(
            REFRESH,
            Algorithm::HS256,
            json!({"username":"ann","exp": NOW - 1}),
        );
        assert_eq!(
            k.check_refresh(expired.as_bytes(), NOW),
            RefreshState::Expired
        );
        let wrong = sign(ACCESS, Algorithm::HS256, json!({"exp": NOW + 60}));
        assert_eq!(
            k.check_refresh(wrong.as_bytes(), NOW),
            RefreshState::Invalid(TokenFault::Signature)
        );
        let no_exp = sign(REFRESH, Algorithm::HS256, json!({"username":"ann"}));
        assert_eq!(
            k.check_refresh(no_exp.as_bytes(), NOW),
            RefreshState::Invalid(TokenFault::Claims)
        );
    }

    #[test]
    fn minted_tokens_verify_with_their_own_key_only() {
        let k = keys();
        let claims: Claims = serde_json::from_value(json!({"username":"ann"})).unwrap();
        let access = k.mint_access(&claims, NOW).unwrap();
        let refresh = k.mint_refresh(&claims, "refreshToken=rt", NOW).unwrap();
        assert_eq!(k.check_access(access.as_bytes(), NOW), AccessState::Fresh);
        assert_eq!(
            k.check_access(access.as_bytes(), NOW + 900),
            AccessState::Expired
        );
        assert!(matches!(
            k.check_access(refresh.as_bytes(), NOW),
            AccessState::Invalid(_)
        ));
        assert!(matches!(
            k.check_refresh(refresh.as_bytes(), NOW + 43_199),
            RefreshState::Valid(Binding::Bound { key: 0, .. })
        ));
        // The claims carried on hold no `sid` (nor `typ`) of the old token.
        assert_eq!(k.refresh_claims(refresh.as_bytes()), Ok(claims.clone()));
        let header = jsonwebtoken::decode_header(&access).unwrap();
        assert_eq!(header.alg, Algorithm::HS256);
    }

    /// What is minted, decoded by `jsonwebtoken` (the reference): its header names HS256, the kind
    /// and the signing key; its claims are the carried ones, with `exp` (and, for refresh tokens,
    /// `sid`) replacing any claim of that name; anything else in the carried claims is kept as is.
    #[test]
    fn minted_tokens_decode_with_jsonwebtoken_by_table() {
        use jsonwebtoken::{DecodingKey, Validation, decode};
        let k = keys();
        let sid = k.bindings[0].sid("refreshToken=rt");
        type MintFn = fn(&TokenKeys, &Claims) -> String;
        let access: MintFn = |k, c| k.mint_access(c, NOW).unwrap();
        let refresh: MintFn = |k, c| k.mint_refresh(c, "refreshToken=rt", NOW).unwrap();
        let user: MintFn = |k, c| k.mint_user(c, NOW).unwrap();
        let odd = json!({"name":"Ann \"A\" <a@b>\u{2028}é","n":[1,{"x":null}],"big":u64::MAX});
        #[allow(clippy::type_complexity)]
        let table: &[(&str, MintFn, &[u8], &str, Value, Value)] = &[
            (
                "access, no claims",
                access,
                ACCESS,
                TYP_ACCESS,
                json!({}),
                json!({"exp": NOW + 900}),
            ),
            (
                "access, exp replaced",
                access,
                ACCESS,
                TYP_ACCESS,
                json!({"exp": 1, "username": "ann"}),
                json!({"exp": NOW + 900, "username": "ann"}),
            ),
            (
                "access keeps a sid",
                access,
                ACCESS,
                TYP_ACCESS,
                json!({"sid": "x"}),
                json!({"sid": "x", "exp": NOW + 900}),
            ),
            (
                "refresh, sid and exp added",
                refresh,
                REFRESH,
                TYP_REFRESH,
                json!({"username": "ann"}),
                json!({"username": "ann", "sid": sid, "exp": NOW + 43_200}),
            ),
            (
                "refresh, sid and exp replaced",
                refresh,
                REFRESH,
                TYP_REFRESH,
                json!({"sid": "old", "exp": 5, "a": 1}),
                json!({"a": 1, "sid": sid, "exp": NOW + 43_200}),
            ),
            (
                "user, odd values kept",
                user,
                ACCESS,
                TYP_USER,
                odd.clone(),
                json!({"name": odd["name"], "n": odd["n"], "big": u64::MAX, "exp": NOW + 900}),
            ),
        ];
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        for (what, mint, secret, typ, carried, expected) in table {
            let carried: Claims = serde_json::from_value(carried.clone()).unwrap();
            let token = mint(&k, &carried);
            let decoded = decode::<Value>(&token, &DecodingKey::from_secret(secret), &validation)
                .unwrap_or_else(|e| panic!("{what}: jsonwebtoken refused it: {e}"));
            assert_eq!(decoded.claims, *expected, "{what}");
            assert_eq!(decoded.header.alg, Algorithm::HS256, "{what}");
            assert_eq!(decoded.header.typ.as_deref(), Some(*typ), "{what}");
            assert_eq!(decoded.header.kid, Some(key_id(secret)), "{what}");
            // A replaced claim is written once, not twice with the last one winning.
            let payload = URL_SAFE_NO_PAD
                .decode(token.split('.').nth(1).unwrap())
                .unwrap();
            let payload = String::from_utf8(payload).unwrap();
            for name in ["\"exp\":", "\"sid\":"] {
                assert!(payload.matches(name).count() <= 1, "{what}: {payload}");
            }
            let header = String::from_utf8(
                URL_SAFE_NO_PAD
                    .decode(token.split('.').next().unwrap())
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(
                header,
                format!(
                    r#"{{"typ":"{typ}","alg":"HS256","kid":"{}"}}"#,
                    key_id(secret)
                ),
                "{what}"
            );
        }
    }

    /// Rotation: signed with the first secret under its `kid`; a `kid` selects its secret among
    /// the configured ones only; tokens without `kid` are tried against every secret.
    #[test]
    fn rotation_selects_the_key_by_kid_and_tries_all_without_one() {
        const OLD: &[u8] = b"old-access-secret-old-access-secret-0";
        const NEW: &[u8] = b"new-access-secret-new-access-secret-0";
        let times = keys().times;
        let phase = |access: &[&[u8]]| TokenKeys::rotating(access, &[REFRESH], times);
        let claims: Claims = serde_json::from_value(json!({"username": "ann"})).unwrap();
        let with_kid = |secret: &[u8], kid: &str| {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(kid.to_owned());
            jsonwebtoken::encode(
                &header,
                &json!({"exp": NOW + 60}),
                &jsonwebtoken::EncodingKey::from_secret(secret),
            )
            .unwrap()
        };
        let old_minted = phase(&[OLD]).mint_access(&claims, NOW).unwrap();
        let new_minted = phase(&[NEW, OLD]).mint_access(&claims, NOW).unwrap();
        let no_kid_old = sign(OLD, Algorithm::HS256, json!({"exp": NOW + 60}));
        assert_eq!(
            jsonwebtoken::decode_header(&new_minted).unwrap().kid,
            Some(key_id(NEW)),
            "signed with the first secret, named by its kid"
        );
        let fresh =
            |k: &TokenKeys, t: &str| k.check_access(t.as_bytes(), NOW) == AccessState::Fresh;
        let cases: [(&str, &[&[u8]], &str, bool); 9] = [
            ("old kid, old only", &[OLD], &old_minted, true),
            ("old kid, new + old", &[NEW, OLD], &old_minted, true),
            ("new kid, new + old", &[NEW, OLD], &new_minted, true),
            ("no kid, new + old", &[NEW, OLD], &no_kid_old, true),
            ("old kid, new only", &[NEW], &old_minted, false),
            ("no kid, new only", &[NEW], &no_kid_old, false),
            ("new kid, old only", &[OLD], &new_minted, false),
            (
                "unknown kid",
                &[NEW, OLD],
                &with_kid(OLD, "someone-elses"),
                false,
            ),
            (
                "kid of one secret, signed by the other",
                &[NEW, OLD],
                &with_kid(OLD, &key_id(NEW)),
                false,
            ),
        ];
        for (what, secrets, token, passes) in cases {
            assert_eq!(fresh(&phase(secrets), token), passes, "{what}");
        }
        // A kid naming no configured key is a signature fault: no key is ever taken from it.
        for token in [with_kid(OLD, "someone-elses"), with_kid(NEW, &key_id(OLD))] {
            assert_eq!(
                phase(&[NEW]).check_access(token.as_bytes(), NOW),
                AccessState::Invalid(TokenFault::Signature),
                "{token}"
            );
        }
        // Access and user tokens are signed with the first secret only, under its kid.
        let signed_with = |token: &str, secret: &[u8]| {
            let mut v = jsonwebtoken::Validation::new(Algorithm::HS256);
            v.required_spec_claims.clear();
            v.validate_exp = false;
            let key = jsonwebtoken::DecodingKey::from_secret(secret);
            jsonwebtoken::decode::<Value>(token, &key, &v).is_ok()
        };
        let user = phase(&[NEW, OLD]).mint_user(&claims, NOW).unwrap();
        for token in [&new_minted, &user] {
            assert!(
                signed_with(token, NEW) && !signed_with(token, OLD),
                "{token}"
            );
            let kid = jsonwebtoken::decode_header(token).unwrap().kid;
            assert_eq!(kid, Some(key_id(NEW)));
        }
        assert_eq!(
            jsonwebtoken::decode_header(&old_minted).unwrap().kid,
            Some(key_id(OLD))
        );

        // The refresh secrets rotate the same way, independently of the access ones.
        const OLD_R: &[u8] = b"old-refresh-secret-old-refresh-secr";
        let refresh_phase = |refresh: &[&[u8]]| TokenKeys::rotating(&[NEW], refresh, times);
        let old_refresh = refresh_phase(&[OLD_R])
            .mint_refresh(&claims, "refreshToken=rt", NOW)
            .unwrap();
        let new_refresh = refresh_phase(&[REFRESH, OLD_R])
            .mint_refresh(&claims, "refreshToken=rt", NOW)
            .unwrap();
        assert!(signed_with(&new_refresh, REFRESH) && !signed_with(&new_refresh, OLD_R));
        let no_kid_old_refresh = sign(OLD_R, Algorithm::HS256, json!({"exp": NOW + 60}));
        let cases: [(&str, &[&[u8]], &str, bool); 7] = [
            ("old kid, new + old", &[REFRESH, OLD_R], &old_refresh, true),
            ("new kid, new + old", &[REFRESH, OLD_R], &new_refresh, true),
            (
                "no kid, new + old",
                &[REFRESH, OLD_R],
                &no_kid_old_refresh,
                true,
            ),
            ("old kid, new only", &[REFRESH], &old_refresh, false),
            ("no kid, new only", &[REFRESH], &no_kid_old_refresh, false),
            ("new kid, new only", &[REFRESH], &new_refresh, true),
            ("an access token", &[REFRESH, OLD_R], &new_minted, false),
        ];
        for (what, secrets, token, passes) in cases {
            let keys = refresh_phase(secrets);
            let state = keys.check_refresh(token.as_bytes(), NOW);
            let valid = matches!(state, RefreshState::Valid(_));
            assert_eq!(valid, passes, "refresh: {what}");
            // A bound token is checked with the binding key of the secret that verified it.
            if let RefreshState::Valid(binding @ Binding::Bound { .. }) = state {
                assert!(keys.bound_to(binding, "refreshToken=rt"), "bound: {what}");
                assert!(!keys.bound_to(binding, "refreshToken=rx"), "bound: {what}");
            }
            assert_eq!(
                keys.refresh_claims(token.as_bytes()).is_ok(),
                passes,
                "refresh claims: {what}"
            );
        }
    }

    #[test]
    fn key_ids_are_short_distinct_and_not_the_plain_hash() {
        use sha2::Digest;
        let (a, b) = (key_id(ACCESS), key_id(REFRESH));
        assert_eq!(a.len(), 11);
        assert_ne!(a, b);
        let plain = URL_SAFE_NO_PAD.encode(&Sha256::digest(ACCESS)[..8]);
        assert_ne!(a, plain);
    }

    /// The hand-written verifier agrees with `jsonwebtoken` on every token, well formed or not,
    /// with one secret and with two (rotation): the reference for a token with a `kid` is the
    /// secret whose kid matches, for one without, any configured secret.
    #[test]
    fn verification_agrees_with_jsonwebtoken() {
        const OTHER: &[u8] = b"other-access-secret-other-access-s";
        let good = sign(
            ACCESS,
            Algorithm::HS256,
            json!({"username":"ann","exp": NOW + 60}),
        );
        let header_with = |kid: &str| format!(r#"{{"alg":"HS256","typ":"JWT","kid":{kid}}}"#);
        let payload = format!(r#"{{"exp":{}}}"#, NOW + 60);
        let ours = format!("\"{}\"", key_id(ACCESS));
        // The same kid with its first character written as a JSON escape.
        let escaped = format!("\"\\u{:04x}{}", ours.as_bytes()[1], &ours[2..]);
        let minted = TokenKeys::rotating(&[ACCESS, OTHER], &[REFRESH], keys().times)
            .mint_access(&Claims::new(), NOW)
            .unwrap();
        let (h, rest) = good.split_once('.').unwrap();
        let (p, sig) = rest.split_once('.').unwrap();
        let mut tokens = vec![
            good.clone(),
            sign(
                ACCESS,
                Algorithm::HS256,
                json!({"exp": NOW - 60, "nested": {"a": [1, 2, "x\"y"]}}),
            ),
            sign(ACCESS, Algorithm::HS256, json!({"exp": "soon"})),
            sign(ACCESS, Algorithm::HS256, json!([1, 2])),
            sign(ACCESS, Algorithm::HS384, json!({"exp": NOW + 60})),
            sign(REFRESH, Algorithm::HS256, json!({"exp": NOW + 60})),
            format!("{h}.{p}.{sig}="),
            format!("{h}.{p}.{sig}.{sig}"),
            format!("{h}..{sig}"),
            format!(".{p}.{sig}"),
            format!("{h}.{p}."),
            format!("{h}.{p}"),
            format!("{h}.{p}.{}", &sig[..sig.len() - 1]),
            format!("{h} .{p}.{sig}"),
            format!(
                "{}.{p}.{sig}",
                b64(r#"{"alg":"HS256","typ":"JWT","kid":"x"}"#)
            ),
            sign_raw(ACCESS, &format!(r#"{{"\u0065xp":{}}}"#, NOW + 60)),
            sign_raw(ACCESS, &format!(r#"{{"exp":1,"exp":{}}}"#, NOW + 60)),
            sign_raw(ACCESS, &format!(r#"{{"exp":{}}} "#, NOW + 60)),
            sign_raw(ACCESS, &format!(r#"{{"exp":{}}}x"#, NOW + 60)),
            sign_raw(ACCESS, "null"),
            "".into(),
            "...".into(),
            sign(OTHER, Algorithm::HS256, json!({"exp": NOW + 60})),
            minted.clone(),
        ];
        let kids = [
            ours.clone(),
            escaped,
            format!("\"{}\"", key_id(OTHER)),
            format!("\"{}\"", key_id(REFRESH)),
            r#""\u0041nother""#.into(),
            r#""""#.into(),
            "null".into(),
            "7".into(),
            format!(r#"{ours},"kid":{ours}"#),
        ];
        for kid in &kids {
            for secret in [ACCESS, OTHER, REFRESH] {
                tokens.push(sign_raw_header(secret, &header_with(kid), &payload));
            }
        }
        // Every single-character change, with and without a kid.
        for token in [&good, &minted] {
            for i in 0..token.len() {
                let mut bytes = token.clone().into_bytes();
                bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
                tokens.push(String::from_utf8(bytes).unwrap());
            }
        }
        let mut accepted = [0; 2];
        for (n, secrets) in [&[ACCESS][..], &[ACCESS, OTHER]].into_iter().enumerate() {
            let k = TokenKeys::rotating(secrets, &[REFRESH], keys().times);
            for t in &tokens {
                let ours = matches!(
                    k.check_access(t.as_bytes(), NOW),
                    AccessState::Fresh | AccessState::Expired
                );
                let reference = secrets
                    .iter()
                    .any(|s| crate::fuzzing::reference_exp(t.as_bytes(), s, NOW).is_some());
                assert_eq!(ours, reference, "{} secret(s): {t}", secrets.len());
                accepted[n] += usize::from(ours);
            }
        }
        // Not vacuous: the second secret admits what it signed (with its kid or none).
        assert!(
            accepted[1] > accepted[0] && accepted[0] >= 6,
            "{accepted:?}"
        );
    }

    /// `typ` (RFC 8725 §3.11): untyped (none, `JWT` in any case) and the expected kind pass;
    /// another kind is refused once the signature holds; a `typ` that is not a string is not a
    /// header we read.
    #[test]
    fn typ_by_table() {
        let k = keys();
        let payload = format!(r#"{{"username":"admin","exp":{}}}"#, NOW + 60);
        let header = |typ: &str| format!(r#"{{"alg":"HS256","typ":{typ}}}"#);
        let access = |h: &str| k.check_access(sign_raw_header(ACCESS, h, &payload).as_bytes(), NOW);
        let refresh =
            |h: &str| k.check_refresh(sign_raw_header(REFRESH, h, &payload).as_bytes(), NOW);
        let fresh = AccessState::Fresh;
        let typed = AccessState::Invalid(TokenFault::Type);
        let cases: Vec<(String, AccessState, bool)> = vec![
            // (header, as an access token, passes as a refresh token)
            (r#"{"alg":"HS256"}"#.into(), fresh, true),
            (header(r#""JWT""#), fresh, true),
            (header(r#""jwt""#), fresh, true),
            (header(r#""application/JWT""#), fresh, true),
            (header(r#"null"#), fresh, true),
            (header(r#""\u004aWT""#), fresh, true),
            (header(r#""etls-access+jwt""#), fresh, false),
            (header(r#""ETLS-Access+JWT""#), fresh, false),
            (header(r#""application/etls-access+jwt""#), fresh, false),
            (header(r#""etls-user+jwt""#), typed, false),
            (header(r#""application/etls-user+jwt""#), typed, false),
            (header(r#""etls-refresh+jwt""#), typed, true),
            (header(r#""at+jwt""#), typed, false),
            (header(r#""JWS""#), typed, false),
            (header(r#""""#), typed, false),
            (header(r#""application/""#), typed, false),
            (header(r#""jwt ""#), typed, false),
            (
                header("7"),
                AccessState::Invalid(TokenFault::Malformed),
                false,
            ),
        ];
        for (h, as_access, as_refresh) in cases {
            assert_eq!(access(&h), as_access, "access {h}");
            assert_eq!(
                matches!(refresh(&h), RefreshState::Valid(_)),
                as_refresh,
                "refresh {h}"
            );
        }
        // The signature is checked first: a foreign typ under a bad signature is a bad signature.
        let forged = sign_raw_header(REFRESH, &header(r#""etls-user+jwt""#), &payload);
        assert_eq!(
            k.check_access(forged.as_bytes(), NOW),
            AccessState::Invalid(TokenFault::Signature)
        );
        // An expired token of another kind is still refused for its kind, not refreshed.
        let old = format!(r#"{{"exp":{}}}"#, NOW - 60);
        let user = sign_raw_header(ACCESS, &header(r#""etls-user+jwt""#), &old);
        assert_eq!(k.check_access(user.as_bytes(), NOW), typed);
        // What the proxy mints: each kind passes as itself only.
        let claims: Claims = serde_json::from_value(json!({"username": "ann"})).unwrap();
        let user = k.mint_user(&claims, NOW).unwrap();
        assert_eq!(k.check_access(user.as_bytes(), NOW), typed);
        let access = k.mint_access(&claims, NOW).unwrap();
        assert_eq!(k.check_access(access.as_bytes(), NOW), fresh);
        assert_eq!(
            jsonwebtoken::decode_header(&user).unwrap().typ.as_deref(),
            Some(TYP_USER)
        );
    }

    /// `sid`: read with the time claims of a refresh token only, exactly as we write it.
    #[test]
    fn sid_by_table() {
        let k = keys();
        let exp = NOW + 60;
        let good_sid = k.bindings[0].sid("refreshToken=rt");
        assert_eq!(good_sid.len(), 22);
        let with_sid = |sid: &str| format!(r#"{{"username":"ann","exp":{exp},"sid":{sid}}}"#);
        let check = |payload: &str| k.check_refresh(sign_raw(REFRESH, payload).as_bytes(), NOW);
        let claims = RefreshState::Invalid(TokenFault::Claims);
        let cases: Vec<(String, Option<RefreshState>)> = vec![
            (
                format!(r#"{{"exp":{exp}}}"#),
                Some(RefreshState::Valid(Binding::Unbound)),
            ),
            (with_sid(&format!("\"{good_sid}\"")), None),
            (with_sid(&format!("\"{}\"", &good_sid[..21])), Some(claims)),
            (with_sid(&format!("\"{good_sid}A\"")), Some(claims)),
            (with_sid(&format!("\"{good_sid}AA\"")), Some(claims)),
            (with_sid(r#""!!!!!!!!!!!!!!!!!!!!!!""#), Some(claims)),
            (with_sid(r#""""#), Some(claims)),
            (with_sid("7"), Some(claims)),
            (with_sid("null"), Some(claims)),
            (with_sid(r#"["a"]"#), Some(claims)),
            // Escaped: never ours (base64url needs none).
            (
                with_sid(&format!(
                    "\"\\u00{:02x}{}\"",
                    good_sid.as_bytes()[0],
                    &good_sid[1..]
                )),
                Some(claims),
            ),
            (
                format!(r#"{{"exp":{exp},"sid":"{good_sid}","sid":"{good_sid}"}}"#),
                Some(claims),
            ),
        ];
        for (payload, want) in cases {
            let got = check(&payload);
            match want {
                Some(want) => assert_eq!(got, want, "{payload}"),
                None => {
                    let RefreshState::Valid(binding @ Binding::Bound { key: 0, .. }) = got else {
                        panic!("{payload}: {got:?}");
                    };
                    assert!(k.bound_to(binding, "refreshToken=rt"));
                    for other in ["refreshToken=rt ", "refreshToken=rT", "", "refreshToken=r"] {
                        assert!(!k.bound_to(binding, other), "{other}");
                    }
                }
            }
        }
        assert!(!k.bound_to(Binding::Unbound, "refreshToken=rt"));
        // Access tokens do not read `sid`: whatever it holds changes nothing for them.
        let access = sign_raw(ACCESS, &with_sid("7"));
        assert_eq!(k.check_access(access.as_bytes(), NOW), AccessState::Fresh);
        // A binding key of one refresh secret does not vouch for another's sid, and the sid is
        // neither the cookies nor a plain hash of them.
        let other = TokenKeys::new(ACCESS, b"another-refresh-secret-another-ref", k.times);
        assert_ne!(other.bindings[0].sid("refreshToken=rt"), good_sid);
        use sha2::Digest;
        let plain = URL_SAFE_NO_PAD.encode(&Sha256::digest(b"refreshToken=rt")[..SID_BYTES]);
        assert_ne!(good_sid, plain);
        assert_eq!(format!("{:?}", k.bindings[0]), "BindingKey(..)");
    }
}
