//! The remote auth API of seed 002: `POST refresh_url` with `Cookie: refreshToken=..`, answered
//! with JSON `{accessToken, refreshToken, userData}`.
//!
//! The call goes through Pingora's own connector so connections are pooled; Pingora only enforces
//! connect timeouts, so every read and write gets a timeout and the whole exchange a deadline.
//! Reading the answer is a pure function, tested without a socket.

use std::time::Duration;

use pingora::upstreams::peer::HttpPeer;

use crate::session::tokens::Claims;

mod answer;
mod client;

pub use answer::read_answer;
pub use client::AuthApiClient;

/// Longer answers are refused: three tokens and a user record fit in far less.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Where and how to call the auth API; built once from the config.
#[derive(Debug, Clone)]
pub struct AuthApiSettings {
    pub peer: HttpPeer,
    /// Sent as `Host`.
    pub authority: String,
    pub path_and_query: String,
    pub timeout: Duration,
    /// Browser cookies forwarded to the auth API (seed 002 sends only `refreshToken`).
    pub send_cookies: Vec<String>,
    pub fields: AuthFields,
    /// `auth_api.logout_url`: called on logout with the same cookies, best effort.
    pub logout: Option<ApiEndpoint>,
    /// Auth API calls in flight at most (refreshes and backend logouts).
    pub max_in_flight: usize,
}

/// Another URL of the auth API, called like the refresh.
#[derive(Debug, Clone)]
pub struct ApiEndpoint {
    pub peer: HttpPeer,
    pub authority: String,
    pub path_and_query: String,
}

/// JSON field names of the answer (seed 000 uses `newAccessToken`, `newRefreshToken`, `newEtlsUser`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFields {
    pub access_token: String,
    pub refresh_token: String,
    /// `None`: the auth API sends no user and `etlsUser` is left alone.
    pub user: Option<String>,
}

/// Seed 002's names.
impl Default for AuthFields {
    fn default() -> Self {
        AuthFields {
            access_token: "accessToken".into(),
            refresh_token: "refreshToken".into(),
            user: Some("userData".into()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiTokens {
    pub access_token: String,
    pub refresh_token: String,
    pub user: Option<UserData>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum UserData {
    /// Seed 002: signed into an HS256 JWT.
    Record(Claims),
    /// Seed 000: used as the cookie value as is.
    Token(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthApiError {
    /// 400, 401 or 403: the session is over.
    #[error("auth API refused the refresh token (HTTP {0})")]
    Rejected(u16),
    #[error("auth API did not answer within {0:?}")]
    Timeout(Duration),
    #[error("auth API unreachable: {0}")]
    Unreachable(String),
    #[error("auth API answer unusable: {0}")]
    BadAnswer(String),
}

#[cfg(test)]
mod tests {
    use pingora::{Error as PingoraError, ErrorType};

    use super::client::*;
    use super::*;

    fn fields() -> AuthFields {
        AuthFields::default()
    }

    const JSON: Option<&[u8]> = Some(b"application/json; charset=utf-8");

    #[test]
    fn reads_seed_002_answer() {
        let body =
            br#"{"accessToken":"a1","refreshToken":"r1","userData":{"id":1,"role":"admin"}}"#;
        let t = read_answer(200, JSON, body, &fields()).unwrap();
        assert_eq!(t.access_token, "a1");
        assert_eq!(t.refresh_token, "r1");
        let Some(UserData::Record(rec)) = t.user else {
            panic!("user record expected")
        };
        assert_eq!(rec["role"], "admin");
    }

    #[test]
    fn reads_seed_000_field_names_and_string_user() {
        let f = AuthFields {
            access_token: "newAccessToken".into(),
            refresh_token: "newRefreshToken".into(),
            user: Some("newEtlsUser".into()),
        };
        let body = br#"{"newAccessToken":"a","newRefreshToken":"r","newEtlsUser":"u.jwt"}"#;
        let t = read_answer(201, Some(b"Application/JSON"), body, &f).unwrap();
        assert_eq!(t.user, Some(UserData::Token("u.jwt".into())));
    }

    #[test]
    fn user_field_null_means_no_user() {
        let f = AuthFields {
            user: None,
            ..fields()
        };
        let t = read_answer(200, JSON, br#"{"accessToken":"a","refreshToken":"r"}"#, &f).unwrap();
        assert_eq!(t.user, None);
    }

    #[test]
    fn rejections_and_failures_by_table() {
        let ok = br#"{"accessToken":"a","refreshToken":"r","userData":{}}"#.as_slice();
        let long = format!(
            r#"{{"accessToken":"{}","refreshToken":"r","userData":{{}}}}"#,
            "a".repeat(4097)
        );
        type Case<'a> = (u16, Option<&'a [u8]>, &'a [u8], Result<(), AuthApiError>);
        let cases: Vec<Case> = vec![
            (400, JSON, ok, Err(AuthApiError::Rejected(400))),
            (401, None, b"", Err(AuthApiError::Rejected(401))),
            (
                403,
                JSON,
                br#"{"error":"invalid_grant"}"#,
                Err(AuthApiError::Rejected(403)),
            ),
            (200, JSON, ok, Ok(())),
            (
                404,
                JSON,
                ok,
                Err(AuthApiError::BadAnswer("HTTP 404".into())),
            ),
            (
                302,
                JSON,
                ok,
                Err(AuthApiError::BadAnswer("HTTP 302".into())),
            ),
            (
                429,
                JSON,
                ok,
                Err(AuthApiError::BadAnswer("HTTP 429".into())),
            ),
            (
                500,
                JSON,
                ok,
                Err(AuthApiError::BadAnswer("HTTP 500".into())),
            ),
            (
                200,
                Some(b"text/html"),
                ok,
                Err(AuthApiError::BadAnswer(
                    "content type is not application/json".into(),
                )),
            ),
            (
                200,
                Some(b"text/plain"),
                ok,
                Err(AuthApiError::BadAnswer(
                    "content type is not application/json".into(),
                )),
            ),
            (
                200,
                None,
                ok,
                Err(AuthApiError::BadAnswer(
                    "content type is not application/json".into(),
                )),
            ),
            (
                200,
                JSON,
                b"",
                Err(AuthApiError::BadAnswer("body is not a JSON object".into())),
            ),
            (
                200,
                JSON,
                b"<html>",
                Err(AuthApiError::BadAnswer("body is not a JSON object".into())),
            ),
            (
                200,
                JSON,
                b"[1]",
                Err(AuthApiError::BadAnswer("body is not a JSON object".into())),
            ),
            (
                200,
                JSON,
                br#"{"refreshToken":"r","userData":{}}"#,
                Err(AuthApiError::BadAnswer("`accessToken` is missing".into())),
            ),
            (
                200,
                JSON,
                br#"{"accessToken":"","refreshToken":"r","userData":{}}"#,
                Err(AuthApiError::BadAnswer("`accessToken` is empty".into())),
            ),
            (
                200,
                JSON,
                br#"{"accessToken":5,"refreshToken":"r","userData":{}}"#,
                Err(AuthApiError::BadAnswer(
                    "`accessToken` is not a string".into(),
                )),
            ),
            (
                200,
                JSON,
                br#"{"accessToken":"a","refreshToken":"r"}"#,
                Err(AuthApiError::BadAnswer("`userData` is missing".into())),
            ),
            (
                200,
                JSON,
                br#"{"accessToken":"a","refreshToken":"r","userData":7}"#,
                Err(AuthApiError::BadAnswer(
                    "`userData` is neither an object nor a non-empty string".into(),
                )),
            ),
            // Over one cookie: split into chunks when the cookies are built, not refused here.
            (200, JSON, long.as_bytes(), Ok(())),
        ];
        for (status, ct, body, want) in cases {
            let got = read_answer(status, ct, body, &fields()).map(|_| ());
            assert_eq!(got, want, "{status} {:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn a_backend_logout_succeeds_on_any_2xx() {
        for (status, ok) in [
            (200, true),
            (204, true),
            (302, false),
            (401, false),
            (500, false),
        ] {
            assert_eq!(
                read_logout_answer(status, None, b"").is_ok(),
                ok,
                "{status}"
            );
        }
        assert_eq!(
            read_logout_answer(503, JSON, b"{}"),
            Err(AuthApiError::BadAnswer("HTTP 503".into()))
        );
    }

    #[test]
    fn transport_failures_by_kind() {
        let d = Duration::from_millis(300);
        let kind = |t| Failure::from(PingoraError::new(t)).into_error(d);
        assert_eq!(kind(ErrorType::ConnectTimedout), AuthApiError::Timeout(d));
        assert_eq!(kind(ErrorType::ReadTimedout), AuthApiError::Timeout(d));
        assert_eq!(kind(ErrorType::WriteTimedout), AuthApiError::Timeout(d));
        assert!(matches!(
            kind(ErrorType::ConnectRefused),
            AuthApiError::Unreachable(_)
        ));
        assert!(matches!(
            kind(ErrorType::ConnectionClosed),
            AuthApiError::Unreachable(_)
        ));
    }

    #[test]
    fn tokens_that_would_break_a_cookie_are_refused() {
        for bad in [
            "a\r\nSet-Cookie: x=1",
            "a;b",
            "a,b",
            "a b",
            "a\"b",
            "a\\b",
            "a\u{1}b",
        ] {
            let body =
                serde_json::json!({"accessToken": "ok", "refreshToken": bad, "userData": {}})
                    .to_string();
            let got = read_answer(200, JSON, body.as_bytes(), &fields());
            assert_eq!(
                got,
                Err(AuthApiError::BadAnswer(
                    "`refreshToken` holds characters not allowed in a cookie".into()
                )),
                "{bad:?}"
            );
        }
    }
}
