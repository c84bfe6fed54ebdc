//! The remote auth API of seed 002: `POST refresh_url` with `Cookie: refreshToken=..`, answered
//! with JSON `{accessToken, refreshToken, userData}`.
//!
//! The call goes through Pingora's own connector so connections are pooled; Pingora only enforces
//! connect timeouts, so every read and write gets a timeout and the whole exchange a deadline.
//! Reading the answer is a pure function, tested without a socket.

use std::time::Duration;

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error as PingoraError, ErrorType};
use serde_json::Value;

use crate::session::cookies::is_cookie_octets;
use crate::session::tokens::Claims;

/// Longer answers are refused: three tokens and a user record fit in far less.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Below Node's default `keepAliveTimeout` (5 s), so the pool never hands out a connection
/// the auth API is about to close.
const POOL_IDLE: Duration = Duration::from_secs(4);

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

/// Where one call goes.
#[derive(Clone, Copy)]
struct Target<'a> {
    peer: &'a HttpPeer,
    authority: &'a str,
    path_and_query: &'a str,
}

impl AuthApiSettings {
    fn refresh_target(&self) -> Target<'_> {
        Target {
            peer: &self.peer,
            authority: &self.authority,
            path_and_query: &self.path_and_query,
        }
    }
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

/// Pooled client; one per process, shared by every refresh.
pub struct AuthApiClient {
    connector: Connector,
}

impl Default for AuthApiClient {
    fn default() -> Self {
        AuthApiClient {
            connector: Connector::new(None),
        }
    }
}

impl AuthApiClient {
    /// One refresh round trip, bounded by `settings.timeout` from start to last body byte.
    pub async fn refresh(
        &self,
        settings: &AuthApiSettings,
        cookie_header: &str,
    ) -> Result<ApiTokens, AuthApiError> {
        let read = |status: u16, content_type: Option<&[u8]>, body: &[u8]| {
            read_answer(status, content_type, body, &settings.fields)
        };
        self.call(settings, settings.refresh_target(), cookie_header, read)
            .await
    }

    /// The backend logout: `POST logout_url` with the session's cookies, as the refresh is
    /// sent, bounded by the same deadline. Any 2xx is `Ok`, whatever its body; `Ok` too when no
    /// `logout_url` is configured.
    pub async fn logout(
        &self,
        settings: &AuthApiSettings,
        cookie_header: &str,
    ) -> Result<(), AuthApiError> {
        let Some(endpoint) = &settings.logout else {
            return Ok(());
        };
        let target = Target {
            peer: &endpoint.peer,
            authority: &endpoint.authority,
            path_and_query: &endpoint.path_and_query,
        };
        self.call(settings, target, cookie_header, read_logout_answer)
            .await
    }

    async fn call<R>(
        &self,
        settings: &AuthApiSettings,
        target: Target<'_>,
        cookie_header: &str,
        read: impl Fn(u16, Option<&[u8]>, &[u8]) -> Result<R, AuthApiError>,
    ) -> Result<R, AuthApiError> {
        let deadline = settings.timeout;
        let attempt = async {
            match self.exchange(settings, target, cookie_header, &read).await {
                // A pooled connection the server had closed: the request never got through
                // whole, so it cannot have been processed; one fresh try.
                Err((Failure::Io(_), true)) => {
                    self.exchange(settings, target, cookie_header, &read).await
                }
                other => other,
            }
        };
        match tokio::time::timeout(deadline, attempt).await {
            Err(_) => Err(AuthApiError::Timeout(deadline)),
            Ok(Ok(answer)) => answer,
            Ok(Err((failure, _))) => Err(failure.into_error(deadline)),
        }
    }

    /// `Ok` holds the reading of a complete answer; `Err` a transport failure and whether it is
    /// safe to try again: only when writing to a pooled connection failed. Once the request is
    /// written, the auth API may have rotated the token, and a second call would replay it.
    async fn exchange<R>(
        &self,
        settings: &AuthApiSettings,
        target: Target<'_>,
        cookie_header: &str,
        read: &impl Fn(u16, Option<&[u8]>, &[u8]) -> Result<R, AuthApiError>,
    ) -> Result<Result<R, AuthApiError>, (Failure, bool)> {
        let (mut http, reused) = self
            .connector
            .get_http_session(target.peer)
            .await
            .map_err(|e| (Failure::from(e), false))?;
        http.set_read_timeout(Some(settings.timeout));
        http.set_write_timeout(Some(settings.timeout));
        let request = build_request(target, cookie_header)
            .map_err(|e| (Failure::Internal(e.to_string()), false))?;
        let writing = |e: Box<PingoraError>| (Failure::from(e), reused);
        http.write_request_header(Box::new(request))
            .await
            .map_err(writing)?;
        http.write_request_body(Bytes::from_static(b"{}"), true)
            .await
            .map_err(writing)?;
        http.finish_request_body().await.map_err(writing)?;
        let reading = |e: Box<PingoraError>| (Failure::from(e), false);
        http.read_response_header().await.map_err(reading)?;
        let (status, content_type) = match http.response_header() {
            Some(h) => (
                h.status.as_u16(),
                h.headers.get("content-type").map(|v| v.as_bytes().to_vec()),
            ),
            None => return Err((Failure::Internal("no response header".into()), reused)),
        };
        let mut body = Vec::new();
        while let Some(chunk) = http.read_response_body().await.map_err(reading)? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Ok(Err(AuthApiError::BadAnswer(format!(
                    "answer body over {MAX_ANSWER_BYTES} bytes"
                ))));
            }
            body.extend_from_slice(&chunk);
        }
        let answer = read(status, content_type.as_deref(), &body);
        if let HttpSession::H1(h1) = &mut http {
            h1.respect_keepalive();
        }
        self.connector
            .release_http_session(http, target.peer, Some(POOL_IDLE))
            .await;
        Ok(answer)
    }
}

fn build_request(target: Target<'_>, cookie_header: &str) -> pingora::Result<RequestHeader> {
    let mut req = RequestHeader::build("POST", target.path_and_query.as_bytes(), Some(5))?;
    req.insert_header("Host", target.authority)?;
    req.insert_header("Content-Type", "application/json")?;
    req.insert_header("Accept", "application/json")?;
    req.insert_header("Cookie", cookie_header)?;
    req.insert_header("Content-Length", "2")?;
    Ok(req)
}

/// A backend logout succeeded on any 2xx; its body is not read further.
fn read_logout_answer(status: u16, _: Option<&[u8]>, _: &[u8]) -> Result<(), AuthApiError> {
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(AuthApiError::BadAnswer(format!("HTTP {status}")))
    }
}

enum Failure {
    Timeout,
    Io(String),
    Internal(String),
}

impl From<Box<PingoraError>> for Failure {
    fn from(e: Box<PingoraError>) -> Self {
        match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                Failure::Timeout
            }
            other => Failure::Io(other.as_str().to_owned()),
        }
    }
}

impl Failure {
    fn into_error(self, deadline: Duration) -> AuthApiError {
        match self {
            Failure::Timeout => AuthApiError::Timeout(deadline),
            Failure::Io(what) | Failure::Internal(what) => AuthApiError::Unreachable(what),
        }
    }
}

/// Seed 000's checks, made strict: only a 2xx `application/json` answer with the configured
/// fields counts; 400/401/403 end the session; everything else is the auth API's failure.
pub fn read_answer(
    status: u16,
    content_type: Option<&[u8]>,
    body: &[u8],
    fields: &AuthFields,
) -> Result<ApiTokens, AuthApiError> {
    if matches!(status, 400 | 401 | 403) {
        return Err(AuthApiError::Rejected(status));
    }
    let bad = |why: String| Err(AuthApiError::BadAnswer(why));
    if !(200..300).contains(&status) {
        return bad(format!("HTTP {status}"));
    }
    if !content_type.is_some_and(is_json_media_type) {
        return bad("content type is not application/json".into());
    }
    let Ok(Value::Object(mut doc)) = serde_json::from_slice::<Value>(body) else {
        return bad("body is not a JSON object".into());
    };
    let mut token = |name: &str| -> Result<String, AuthApiError> {
        match doc.remove(name) {
            Some(Value::String(s)) if !s.is_empty() => check_cookie_value(name, s),
            Some(Value::String(_)) => Err(AuthApiError::BadAnswer(format!("`{name}` is empty"))),
            Some(_) => Err(AuthApiError::BadAnswer(format!("`{name}` is not a string"))),
            None => Err(AuthApiError::BadAnswer(format!("`{name}` is missing"))),
        }
    };
    let access_token = token(&fields.access_token)?;
    let refresh_token = token(&fields.refresh_token)?;
    let user = match &fields.user {
        None => None,
        Some(name) => Some(match doc.remove(name) {
            Some(Value::Object(record)) => UserData::Record(record),
            Some(Value::String(s)) if !s.is_empty() => {
                UserData::Token(check_cookie_value(name, s)?)
            }
            Some(_) => {
                return bad(format!(
                    "`{name}` is neither an object nor a non-empty string"
                ));
            }
            None => return bad(format!("`{name}` is missing")),
        }),
    };
    Ok(ApiTokens {
        access_token,
        refresh_token,
        user,
    })
}

fn check_cookie_value(field: &str, value: String) -> Result<String, AuthApiError> {
    if !is_cookie_octets(value.as_bytes()) {
        return Err(AuthApiError::BadAnswer(format!(
            "`{field}` holds characters not allowed in a cookie"
        )));
    }
    Ok(value)
}

/// `application/json`, any case, parameters allowed.
fn is_json_media_type(value: &[u8]) -> bool {
    let media = value.split(|b| *b == b';').next().unwrap_or_default();
    media.trim_ascii().eq_ignore_ascii_case(b"application/json")
}

#[cfg(test)]
mod tests {
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
