//! Tokens as the tests sign and read them (secrets and signing from `etls_proxy::testkit`), and
//! the sessions and logout answers the tests share.

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

use super::*;

pub use etls_proxy::testkit::{ACCESS_SECRET, REFRESH_SECRET};

pub fn now() -> u64 {
    etls_proxy::unix_now()
}

/// An HS256 token over `claims`, signed by `jsonwebtoken` (the test kit's signing).
pub fn sign(secret: &str, claims: Value) -> String {
    etls_proxy::testkit::tokens::sign(secret.as_bytes(), Algorithm::HS256, claims)
}

pub fn access_token(exp_from_now: i64) -> String {
    sign(
        ACCESS_SECRET,
        json!({"username": "ann", "exp": now() as i64 + exp_from_now}),
    )
}

pub fn refresh_token(exp_from_now: i64) -> String {
    sign(
        REFRESH_SECRET,
        json!({"username": "ann", "exp": now() as i64 + exp_from_now}),
    )
}

/// The `sid` the proxy must write for the auth API session `api_cookies`, computed here from
/// the documented construction: HMAC-SHA256 under HMAC(refresh secret, "etls-proxy binding
/// v1"), first 16 bytes, base64url.
pub fn expected_sid(api_cookies: &str) -> String {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let mut derive = Hmac::<sha2::Sha256>::new_from_slice(REFRESH_SECRET.as_bytes()).unwrap();
    derive.update(b"etls-proxy binding v1");
    let key = derive.finalize().into_bytes();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(api_cookies.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&mac.finalize().into_bytes()[..16])
}

/// A `refreshTokenEtls` as the proxy mints it: bound (`sid`) to the auth API session
/// `api_cookies`.
pub fn bound_refresh_token(api_cookies: &str, exp_from_now: i64) -> String {
    sign(
        REFRESH_SECRET,
        json!({"username": "ann", "exp": now() as i64 + exp_from_now, "sid": expected_sid(api_cookies)}),
    )
}

/// Decodes a JWT's payload without checking it (the test checks the signature separately).
pub fn payload(token: &str) -> Value {
    use base64::Engine;
    let part = token.split('.').nth(1).expect("three segments");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

pub fn verifies(token: &str, secret: &str) -> bool {
    let mut v = jsonwebtoken::Validation::new(Algorithm::HS256);
    v.required_spec_claims.clear();
    v.validate_aud = false;
    jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
        &v,
    )
    .is_ok()
}

// ---------------------------------------------------------------------------------------------
// Sessions and answers shared by the tests

pub const CLEARED: [&str; 5] = [
    "accessTokenEtls",
    "refreshTokenEtls",
    "accessToken",
    "refreshToken",
    "etlsUser",
];

/// Seed 000's logout response: 401 and the five cookies cleared.
/// The logout answer to a request that carried none of the five cookies: 401, nothing cleared.
pub fn assert_refused_without_clears(r: &Response) {
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json(), json!({"error": "Unauthorized"}));
    assert!(r.set_cookies().is_empty(), "{:?}", r.set_cookies());
}

pub fn assert_logout(r: &Response) {
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json(), json!({"error": "Unauthorized"}));
    let lines = r.set_cookies();
    assert_eq!(lines.len(), 5, "{lines:?}");
    for (line, name) in lines.iter().zip(CLEARED) {
        assert!(line.starts_with(&format!("{name}=;")), "{line}");
        assert!(
            line.contains("Max-Age=0") && line.contains("Path=/"),
            "{line}"
        );
    }
}

/// A session whose access token has expired and whose refresh token is good; `rt` is the auth
/// API's refresh token, which the stand-in auth API derives the new tokens from.
pub fn expired_session(rt: &str) -> String {
    format!(
        "theme=dark; accessTokenEtls={}; refreshTokenEtls={}; accessToken=old-api-access; refreshToken={rt}; etlsUser=old-user; lang=uk",
        access_token(-30),
        refresh_token(3600)
    )
}

// ---------------------------------------------------------------------------------------------
// Stand-in servers
