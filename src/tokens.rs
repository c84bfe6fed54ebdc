//! The eTLS JWTs: HS256 only, verified against keys built once at start.
//!
//! Time checks are done here, not by `jsonwebtoken`, so one injected `now` drives `exp`, `nbf`,
//! leeway and refresh-ahead the same way in tests and in production, and so an expired token is
//! only ever reported as such after its signature has been checked.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Larger values are refused before any decoding: browsers cap a cookie near 4 KiB.
pub const MAX_TOKEN_BYTES: usize = 8192;

/// JWT claims defined by RFC 7519 §4.1; everything else is the session's own and is carried over
/// on refresh.
const REGISTERED_CLAIMS: [&str; 7] = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];

pub type Claims = Map<String, Value>;

/// Keys and lifetimes for one token kind.
struct HmacKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl HmacKey {
    fn new(secret: &[u8]) -> Self {
        HmacKey {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTimes {
    pub access_ttl_secs: u64,
    pub refresh_ttl_secs: u64,
    pub leeway_secs: u64,
    pub refresh_ahead_secs: u64,
}

pub struct TokenKeys {
    access: HmacKey,
    refresh: HmacKey,
    validation: Validation,
    pub times: TokenTimes,
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

#[derive(Debug, Clone, PartialEq)]
pub enum RefreshState {
    Valid(Claims),
    Expired,
    Invalid(TokenFault),
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
    /// integer, `nbf` in the future).
    Claims,
}

#[derive(Debug, thiserror::Error)]
#[error("could not sign a token: {0}")]
pub struct MintError(String);

/// `exp` and `nbf` read loosely, so a wrongly typed claim is reported as such.
#[derive(Deserialize)]
struct TimeFields {
    #[serde(default)]
    exp: Option<Value>,
    #[serde(default)]
    nbf: Option<Value>,
}

/// `exp` must be a positive integer; `nbf`, when present, too.
fn time_claims(exp: Option<&Value>, nbf: Option<&Value>) -> Result<(u64, Option<u64>), TokenFault> {
    let exp = exp
        .and_then(Value::as_u64)
        .filter(|e| *e > 0)
        .ok_or(TokenFault::Claims)?;
    let nbf = match nbf {
        None => None,
        Some(v) => Some(v.as_u64().ok_or(TokenFault::Claims)?),
    };
    Ok((exp, nbf))
}

impl TokenKeys {
    pub fn new(access_secret: &[u8], refresh_secret: &[u8], times: TokenTimes) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        validation.reject_tokens_expiring_in_less_than = 0;
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.aud = None;
        validation.iss = None;
        validation.sub = None;
        TokenKeys {
            access: HmacKey::new(access_secret),
            refresh: HmacKey::new(refresh_secret),
            validation,
            times,
        }
    }

    pub fn check_access(&self, token: &[u8], now: u64) -> AccessState {
        let fields: TimeFields = match self.decode(token, &self.access.decoding) {
            Ok(c) => c,
            Err(fault) => return AccessState::Invalid(fault),
        };
        match self.remaining(fields.exp.as_ref(), fields.nbf.as_ref(), now) {
            Err(fault) => AccessState::Invalid(fault),
            Ok(0) => AccessState::Expired,
            Ok(left) if left <= self.times.refresh_ahead_secs => AccessState::Due,
            Ok(_) => AccessState::Fresh,
        }
    }

    pub fn check_refresh(&self, token: &[u8], now: u64) -> RefreshState {
        let claims: Claims = match self.decode(token, &self.refresh.decoding) {
            Ok(c) => c,
            Err(fault) => return RefreshState::Invalid(fault),
        };
        match self.remaining(claims.get("exp"), claims.get("nbf"), now) {
            Err(fault) => RefreshState::Invalid(fault),
            Ok(0) => RefreshState::Expired,
            Ok(_) => RefreshState::Valid(session_claims(claims)),
        }
    }

    /// Seconds of validity left (0: expired), leeway included.
    fn remaining(
        &self,
        exp: Option<&Value>,
        nbf: Option<&Value>,
        now: u64,
    ) -> Result<u64, TokenFault> {
        let (exp, nbf) = time_claims(exp, nbf)?;
        let leeway = self.times.leeway_secs;
        if nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
            return Err(TokenFault::Claims);
        }
        Ok(exp.saturating_add(leeway).saturating_sub(now))
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        token: &[u8],
        key: &DecodingKey,
    ) -> Result<T, TokenFault> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenFault::TooLarge);
        }
        jsonwebtoken::decode::<T>(token, key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                        TokenFault::Signature
                    }
                    _ => TokenFault::Malformed,
                }
            })
    }

    pub fn mint_access(&self, claims: &Claims, now: u64) -> Result<String, MintError> {
        self.mint(
            claims,
            now.saturating_add(self.times.access_ttl_secs),
            &self.access.encoding,
        )
    }

    pub fn mint_refresh(&self, claims: &Claims, now: u64) -> Result<String, MintError> {
        self.mint(
            claims,
            now.saturating_add(self.times.refresh_ttl_secs),
            &self.refresh.encoding,
        )
    }

    /// Seed 002's user token: the auth API's `userData` fields, signed with the access secret and
    /// the access lifetime.
    pub fn mint_user(&self, user: &Claims, now: u64) -> Result<String, MintError> {
        self.mint_access(user, now)
    }

    fn mint(&self, claims: &Claims, exp: u64, key: &EncodingKey) -> Result<String, MintError> {
        let mut body = claims.clone();
        body.insert("exp".into(), Value::from(exp));
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &body, key)
            .map_err(|e| MintError(e.to_string()))
    }
}

/// The claims a refreshed token carries over: all but the registered ones, which are re-issued.
fn session_claims(mut claims: Claims) -> Claims {
    claims.retain(|k, _| !REGISTERED_CLAIMS.contains(&k.as_str()));
    claims
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub const ACCESS: &[u8] = b"access-secret-access-secret-0123";
    pub const REFRESH: &[u8] = b"refresh-secret-refresh-secret-01";
    pub const NOW: u64 = 1_800_000_000;

    pub fn keys() -> TokenKeys {
        TokenKeys::new(
            ACCESS,
            REFRESH,
            TokenTimes {
                access_ttl_secs: 900,
                refresh_ttl_secs: 43_200,
                leeway_secs: 0,
                refresh_ahead_secs: 0,
            },
        )
    }

    pub fn sign(secret: &[u8], alg: Algorithm, claims: Value) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    pub fn b64(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
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
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}"),
        ] {
            assert_eq!(
                k.check_access(token.as_bytes(), NOW),
                AccessState::Invalid(TokenFault::Malformed)
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
        let RefreshState::Valid(claims) = k.check_refresh(token.as_bytes(), NOW) else {
            panic!("valid refresh token refused");
        };
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
        let refresh = k.mint_refresh(&claims, NOW).unwrap();
        assert_eq!(k.check_access(access.as_bytes(), NOW), AccessState::Fresh);
        assert_eq!(
            k.check_access(access.as_bytes(), NOW + 900),
            AccessState::Expired
        );
        assert!(matches!(
            k.check_access(refresh.as_bytes(), NOW),
            AccessState::Invalid(_)
        ));
        assert_eq!(
            k.check_refresh(refresh.as_bytes(), NOW + 43_199),
            RefreshState::Valid(claims.clone())
        );
        let header = jsonwebtoken::decode_header(&access).unwrap();
        assert_eq!(header.alg, Algorithm::HS256);
    }
}
