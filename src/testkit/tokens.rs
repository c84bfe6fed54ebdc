//! Token signing for tests: keys over the test secrets, and tokens signed by another library
//! (`jsonwebtoken`) or by hand (escapes, duplicates, `kid` variants).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;
use sha2::Sha256;

use super::{ACCESS_SECRET, REFRESH_SECRET};
use crate::session::tokens::{TokenKeys, TokenTimes};

/// [`ACCESS_SECRET`] as bytes.
pub const ACCESS: &[u8] = ACCESS_SECRET.as_bytes();
/// [`REFRESH_SECRET`] as bytes.
pub const REFRESH: &[u8] = REFRESH_SECRET.as_bytes();

/// Keys over the test secrets with the seeds' lifetimes ([`TokenTimes::default`]).
pub fn keys() -> TokenKeys {
    TokenKeys::new(ACCESS, REFRESH, TokenTimes::default())
}

/// A token signed by `jsonwebtoken` (not by the code under test), `typ: JWT`.
pub fn sign(secret: &[u8], alg: Algorithm, claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("claims serialize")
}

/// An HS256 token over a payload written by hand (escapes, duplicates, trailing bytes).
pub fn sign_raw(secret: &[u8], payload_json: &str) -> String {
    sign_raw_header(secret, r#"{"alg":"HS256","typ":"JWT"}"#, payload_json)
}

/// Like [`sign_raw`], with the header written by hand too (`kid` variants).
pub fn sign_raw_header(secret: &[u8], header_json: &str, payload_json: &str) -> String {
    let message = format!("{}.{}", b64(header_json), b64(payload_json));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(message.as_bytes());
    format!(
        "{message}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

pub fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}
