//! Identity to the app: claims of the verified access token as request headers
//! (`upstream_headers: {username: X-Etls-User}`). Headers of those names sent by the client are
//! always removed first, on every path, so the app can trust them.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityHeaders {
    /// `(claim, header)` in the order configured.
    pub map: Vec<(String, HeaderName)>,
}

impl IdentityHeaders {
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &HeaderName> {
        self.map.iter().map(|(_, h)| h)
    }

    /// The headers for a token the decision has already verified (its payload is only read
    /// here). A claim that is absent, null, or not representable as a header value is left out.
    pub fn from_verified(&self, token: &[u8]) -> Vec<(HeaderName, HeaderValue)> {
        let Some(claims) = payload(token) else {
            return Vec::new();
        };
        self.map
            .iter()
            .filter_map(|(claim, header)| Some((header.clone(), claim_value(claims.get(claim)?)?)))
            .collect()
    }
}

fn payload(token: &[u8]) -> Option<Map<String, Value>> {
    let segment = token.split(|b| *b == b'.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(segment).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Strings as they are, numbers and booleans as JSON text, arrays and objects as compact JSON.
fn claim_value(value: &Value) -> Option<HeaderValue> {
    let text = match value {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    HeaderValue::from_str(&text).ok()
}

/// Headers an identity header may never be: the ones that frame or route the request, or that
/// the proxy itself manages.
pub fn is_reserved(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "cookie"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "upgrade"
            | "te"
            | "trailer"
            | "expect"
            | "proxy-authorization"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn token(claims: Value) -> Vec<u8> {
        format!(
            "eyJhbGciOiJIUzI1NiJ9.{}.sig",
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
        .into_bytes()
    }

    fn headers(map: &[(&str, &str)]) -> IdentityHeaders {
        IdentityHeaders {
            map: map
                .iter()
                .map(|(c, h)| (c.to_string(), HeaderName::from_bytes(h.as_bytes()).unwrap()))
                .collect(),
        }
    }

    #[test]
    fn claims_become_header_values() {
        let h = headers(&[
            ("username", "x-etls-user"),
            ("id", "x-etls-id"),
            ("admin", "x-etls-admin"),
            ("roles", "x-etls-roles"),
            ("missing", "x-etls-missing"),
            ("nothing", "x-etls-nothing"),
            ("evil", "x-etls-evil"),
        ]);
        let t = token(json!({
            "username": "ann", "id": 7, "admin": true, "roles": ["a", "b"],
            "nothing": null, "evil": "a\r\nx-injected: 1",
        }));
        let got: Vec<(String, String)> = h
            .from_verified(&t)
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        let want = [
            ("x-etls-user", "ann"),
            ("x-etls-id", "7"),
            ("x-etls-admin", "true"),
            ("x-etls-roles", "[\"a\",\"b\"]"),
        ];
        assert_eq!(
            got,
            want.map(|(a, b)| (a.to_owned(), b.to_owned())).to_vec()
        );
    }

    #[test]
    fn unreadable_payloads_give_no_headers() {
        let h = headers(&[("username", "x-etls-user")]);
        for t in [&b"nodots"[..], b"a.!!!.c", b"a.bnVsbA.c"] {
            assert!(h.from_verified(t).is_empty());
        }
    }

    #[test]
    fn framing_and_managed_headers_are_reserved() {
        for (name, reserved) in [("cookie", true), ("host", true), ("x-etls-user", false)] {
            assert_eq!(
                is_reserved(&HeaderName::from_static(name)),
                reserved,
                "{name}"
            );
        }
    }
}
