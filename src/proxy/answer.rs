//! Every response the proxy writes itself, and the one place where outcomes and errors become
//! HTTP status codes.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};

use crate::refresh::auth_api::AuthApiError;
use crate::refresh::renew::{RefreshError, RenewedSession};

/// Request bodies read before an early answer, so the connection can be kept; beyond this the
/// connection is closed instead.
const DRAIN_LIMIT: usize = 64 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// An answer of the proxy's own, decided while the request is read and written once it is not:
/// it owns its Set-Cookie lines (each a shared `HeaderValue`, no copy of the bytes), so the
/// decision returns it as it is. Only its request id is borrowed, at the end.
pub struct Answer<'a> {
    pub status: u16,
    body: Cow<'static, [u8]>,
    location: Option<String>,
    set_cookie: Vec<HeaderValue>,
    /// Per-request lines after `set_cookie`: chunk cookies to clear.
    more_cookies: Vec<HeaderValue>,
    allow: Option<&'static str>,
    retry_after: Option<&'static str>,
    request_id: Option<&'a HeaderValue>,
    /// The connection ends with this answer (a request too broken to trust what follows).
    close: bool,
}

/// `Retry-After` of a refresh refused because the auth API is busy: a refresh takes well under
/// a second, so one second later a place is likely free.
const BUSY_RETRY_AFTER: &str = "1";

impl<'a> Answer<'a> {
    fn json(status: u16, body: &'static [u8]) -> Self {
        Answer {
            status,
            body: Cow::Borrowed(body),
            location: None,
            set_cookie: Vec::new(),
            more_cookies: Vec::new(),
            allow: None,
            retry_after: None,
            request_id: None,
            close: false,
        }
    }

    /// The request's `X-Request-Id`, on every answer the proxy writes itself.
    pub fn with_request_id(self, request_id: Option<&'a HeaderValue>) -> Self {
        Answer { request_id, ..self }
    }

    /// Seed 000's `logoutResponse()`: 401 and the five cookies cleared; a page navigation gets
    /// the login redirect instead when one is configured.
    pub fn logout(clear_cookies: &[HeaderValue], location: Option<String>) -> Self {
        let mut answer = match location {
            Some(location) => Answer {
                location: Some(location),
                ..Answer::json(302, b"")
            },
            None => Answer::json(401, br#"{"error":"Unauthorized"}"#),
        };
        answer.set_cookie = clear_cookies.to_vec();
        answer
    }

    /// Adds per-request Set-Cookie lines after the others (chunk cookies to clear).
    pub fn with_cookies(self, more: Vec<HeaderValue>) -> Self {
        Answer {
            more_cookies: more,
            ..self
        }
    }

    pub fn logged_out(clear_cookies: &[HeaderValue]) -> Self {
        Answer {
            set_cookie: clear_cookies.to_vec(),
            ..Answer::json(200, br#"{"message":"Logged out"}"#)
        }
    }

    pub fn refreshed(session: &RenewedSession) -> Self {
        Answer {
            set_cookie: session.set_cookie().to_vec(),
            ..Answer::json(200, br#"{"message":"Tokens refreshed"}"#)
        }
    }

    /// Cookie headers over `downstream.max_cookie_bytes`: refused before any token is read.
    pub fn cookies_too_large() -> Self {
        Answer::json(431, br#"{"error":"Request Header Fields Too Large"}"#)
    }

    /// A POST to the logout or refresh endpoint from another site (`guard::same_origin`).
    pub fn forbidden() -> Self {
        Answer::json(403, br#"{"error":"Forbidden"}"#)
    }

    /// No `Host`, several, or one outside RFC 9110's grammar (`guard::check_host`). As nginx:
    /// a request this broken ends its connection.
    pub fn bad_request() -> Self {
        Answer {
            close: true,
            ..Answer::json(400, br#"{"error":"Bad Request"}"#)
        }
    }

    pub fn method_not_allowed() -> Self {
        Answer {
            allow: Some("POST"),
            ..Answer::json(405, br#"{"error":"Method Not Allowed"}"#)
        }
    }

    /// A refresh that failed on the auth API's side: the user's cookies are kept (no
    /// Set-Cookie), so the next request simply tries again. A rejection is a logout and is
    /// answered by [`Answer::logout`] instead. Not sent at all because `auth_api.max_in_flight`
    /// calls were in flight: 503 with `Retry-After`, cookies kept too.
    pub fn refresh_failed(error: &RefreshError) -> Self {
        match error {
            RefreshError::Busy => Answer {
                retry_after: Some(BUSY_RETRY_AFTER),
                ..Answer::json(
                    503,
                    br#"{"error":"Service Unavailable","reason":"auth API busy"}"#,
                )
            },
            RefreshError::AuthApi(AuthApiError::Timeout(_)) => Answer::json(
                504,
                br#"{"error":"Gateway Timeout","reason":"auth API timed out"}"#,
            ),
            // It answered, but not with what a session can be built from: say why (the reasons
            // name fields and sizes, never a value).
            RefreshError::AuthApi(AuthApiError::BadAnswer(why)) => {
                let body = serde_json::json!({
                    "error": "Bad Gateway",
                    "reason": format!("auth API answer unusable: {why}"),
                });
                Answer {
                    body: Cow::Owned(body.to_string().into_bytes()),
                    ..Answer::json(502, b"")
                }
            }
            // The auth API answered; the proxy could not sign the new tokens.
            RefreshError::Mint(_) => Answer::json(
                500,
                br#"{"error":"Internal Server Error","reason":"could not mint the new tokens"}"#,
            ),
            _ => Answer::json(
                502,
                br#"{"error":"Bad Gateway","reason":"auth API unavailable"}"#,
            ),
        }
    }

    /// The app could not be reached (or failed mid-way). After a refresh, the new cookies go
    /// out anyway: a rotated refresh token must never be lost.
    pub fn app_failed(status: u16, renewed: Option<&RenewedSession>) -> Self {
        let body: &'static [u8] = match status {
            502 => br#"{"error":"Bad Gateway","reason":"app unavailable"}"#,
            504 => br#"{"error":"Gateway Timeout","reason":"app timed out"}"#,
            400 => br#"{"error":"Bad Request"}"#,
            _ => br#"{"error":"Internal Server Error"}"#,
        };
        Answer {
            set_cookie: renewed.map_or_else(Vec::new, |r| r.set_cookie().to_vec()),
            ..Answer::json(status, body)
        }
    }

    pub fn header(&self) -> pingora::Result<ResponseHeader> {
        let lines = self.set_cookie.len() + self.more_cookies.len();
        let mut h = ResponseHeader::build(self.status, Some(7 + lines))?;
        if !self.body.is_empty() {
            h.insert_header("Content-Type", "application/json")?;
        }
        h.insert_header("Content-Length", self.body.len().to_string())?;
        // An answer carrying session cookies says `private` too, as the app's answers get it.
        let cache = match self.set_cookie[..] {
            [] => "no-store",
            _ => crate::session::cache_control::PRIVATE,
        };
        h.insert_header("Cache-Control", cache)?;
        if let Some(location) = &self.location {
            h.insert_header("Location", location.as_str())?;
        }
        if let Some(allow) = self.allow {
            h.insert_header("Allow", allow)?;
        }
        if let Some(seconds) = self.retry_after {
            h.insert_header("Retry-After", seconds)?;
        }
        if let Some(id) = self.request_id {
            h.insert_header("X-Request-Id", id.clone())?;
        }
        for line in self.set_cookie.iter().chain(&self.more_cookies) {
            h.append_header("Set-Cookie", line.clone())?;
        }
        Ok(h)
    }

    /// Writes the whole answer; the request body, if any, is drained first (bounded) so the
    /// connection stays usable.
    pub async fn send(&self, session: &mut Session) -> pingora::Result<()> {
        if self.close {
            session.set_keepalive(None);
        }
        drain_request_body(session).await;
        let header = self.header()?;
        let head_only = session.req_header().method == http::Method::HEAD;
        session
            .write_response_header(Box::new(header), self.body.is_empty() || head_only)
            .await?;
        if !self.body.is_empty() && !head_only {
            session
                .write_response_body(Some(self.body_bytes()), true)
                .await?;
        }
        Ok(())
    }
}

impl Answer<'_> {
    fn body_bytes(&self) -> Bytes {
        match &self.body {
            Cow::Borrowed(b) => Bytes::from_static(b),
            Cow::Owned(v) => Bytes::copy_from_slice(v),
        }
    }
}

/// Status for a request that could not be proxied, Pingora's rules with timeouts as 504.
pub fn failure_status(e: &Error) -> u16 {
    match (e.etype(), e.esource()) {
        (ErrorType::HTTPStatus(code), _) => *code,
        (
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout,
            ErrorSource::Upstream,
        ) => 504,
        (_, ErrorSource::Upstream) => 502,
        (
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
            ErrorSource::Downstream,
        ) => 0,
        (_, ErrorSource::Downstream) => 400,
        _ => 500,
    }
}

async fn drain_request_body(session: &mut Session) {
    if session.is_body_done() {
        return;
    }
    // A client waiting for `100 Continue` sends no body: answer now and close instead.
    let expects_continue = session
        .req_header()
        .headers
        .get("expect")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue && session.body_bytes_read() == 0 {
        session.set_keepalive(None);
        return;
    }
    let mut read = 0;
    let drained = tokio::time::timeout(DRAIN_TIME, async {
        while let Ok(Some(chunk)) = session.read_request_body().await {
            read += chunk.len();
            if read > DRAIN_LIMIT {
                return false;
            }
        }
        true
    })
    .await;
    if !matches!(drained, Ok(true)) || !session.is_body_done() {
        session.set_keepalive(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(n: usize) -> Vec<HeaderValue> {
        (0..n)
            .map(|i| HeaderValue::from_str(&format!("c{i}=; Max-Age=0")).unwrap())
            .collect()
    }

    fn set_cookies(h: &ResponseHeader) -> Vec<String> {
        h.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn a_failure_to_proxy_gets_pingoras_status_with_timeouts_as_504() {
        let status = |etype: ErrorType, up: bool| {
            let e = if up {
                Error::new_up(etype)
            } else {
                Error::new_down(etype)
            };
            failure_status(&e)
        };
        assert_eq!(status(ErrorType::HTTPStatus(413), false), 413);
        assert_eq!(status(ErrorType::ConnectTimedout, true), 504);
        assert_eq!(status(ErrorType::ReadTimedout, true), 504);
        assert_eq!(status(ErrorType::WriteTimedout, true), 504);
        assert_eq!(status(ErrorType::ConnectRefused, true), 502);
        assert_eq!(
            status(ErrorType::ConnectionClosed, false),
            0,
            "the browser left"
        );
        assert_eq!(status(ErrorType::ReadError, false), 0);
        assert_eq!(status(ErrorType::InvalidHTTPHeader, false), 400);
        assert_eq!(failure_status(&Error::new(ErrorType::InternalError)), 500);
    }

    #[test]
    fn only_a_bad_request_ends_its_connection() {
        assert!(Answer::bad_request().close);
        for answer in [
            Answer::forbidden(),
            Answer::cookies_too_large(),
            Answer::method_not_allowed(),
            Answer::logout(&[], None),
            Answer::refresh_failed(&RefreshError::Busy),
        ] {
            assert!(!answer.close, "{}", answer.status);
        }
    }

    #[test]
    fn logout_is_401_with_each_cookie_cleared_on_its_own_line() {
        let clear = lines(5);
        let a = Answer::logout(&clear, None);
        let h = a.header().unwrap();
        assert_eq!(h.status.as_u16(), 401);
        assert_eq!(&*a.body, br#"{"error":"Unauthorized"}"#);
        assert_eq!(set_cookies(&h).len(), 5);
        assert_eq!(
            h.headers["content-length"],
            a.body.len().to_string().as_str()
        );
        assert_eq!(h.headers["cache-control"], "private, no-store");
        let h = Answer::cookies_too_large().header().unwrap();
        assert_eq!(h.headers["cache-control"], "no-store");
    }

    #[test]
    fn logout_for_a_page_is_a_redirect_that_still_clears() {
        let clear = lines(5);
        let h = Answer::logout(&clear, Some("/login?next=/x".into()))
            .header()
            .unwrap();
        assert_eq!(h.status.as_u16(), 302);
        assert_eq!(h.headers["location"], "/login?next=/x");
        assert_eq!(h.headers["content-length"], "0");
        assert_eq!(set_cookies(&h).len(), 5);
    }

    #[test]
    fn refresh_failures_keep_cookies() {
        let timeout = RefreshError::AuthApi(AuthApiError::Timeout(Duration::from_secs(2)));
        let down = RefreshError::AuthApi(AuthApiError::Unreachable("refused".into()));
        let bad = RefreshError::AuthApi(AuthApiError::BadAnswer("HTTP 500".into()));
        for (err, status) in [
            (timeout, 504),
            (down, 502),
            (bad, 502),
            (RefreshError::Lost, 502),
        ] {
            let h = Answer::refresh_failed(&err).header().unwrap();
            assert_eq!(h.status.as_u16(), status, "{err:?}");
            assert!(set_cookies(&h).is_empty());
            assert!(h.headers.get("retry-after").is_none());
        }
    }

    #[test]
    fn a_busy_auth_api_is_503_with_retry_after_and_cookies_kept() {
        let a = Answer::refresh_failed(&RefreshError::Busy);
        let h = a.header().unwrap();
        assert_eq!(h.status.as_u16(), 503);
        assert_eq!(
            &*a.body,
            &br#"{"error":"Service Unavailable","reason":"auth API busy"}"#[..]
        );
        assert_eq!(h.headers["retry-after"], "1");
        assert!(set_cookies(&h).is_empty());
    }

    #[test]
    fn refresh_failure_reasons_tell_what_happened() {
        let cases = [
            (
                RefreshError::AuthApi(AuthApiError::Unreachable("refused".into())),
                "auth API unavailable",
            ),
            (
                RefreshError::AuthApi(AuthApiError::BadAnswer("HTTP 500".into())),
                "auth API answer unusable: HTTP 500",
            ),
            (
                RefreshError::AuthApi(AuthApiError::BadAnswer(
                    "`etlsUser` needs 9 cookies of at most 4096 bytes, over cookies.max_chunks (8)"
                        .into(),
                )),
                "auth API answer unusable: `etlsUser` needs 9 cookies of at most 4096 bytes, over cookies.max_chunks (8)",
            ),
            (
                RefreshError::Mint("`accessTokenEtls` is over 8192 bytes".into()),
                "could not mint the new tokens",
            ),
            (
                RefreshError::AuthApi(AuthApiError::BadAnswer("`a\"b` is missing".into())),
                "auth API answer unusable: `a\"b` is missing",
            ),
        ];
        for (err, reason) in cases {
            let a = Answer::refresh_failed(&err);
            let h = a.header().unwrap();
            let mint = matches!(err, RefreshError::Mint(_));
            assert_eq!(h.status.as_u16(), if mint { 500 } else { 502 });
            assert_eq!(
                h.headers["content-length"],
                a.body.len().to_string().as_str()
            );
            let body: serde_json::Value = serde_json::from_slice(&a.body_bytes()).unwrap();
            assert_eq!(
                body["error"],
                if mint {
                    "Internal Server Error"
                } else {
                    "Bad Gateway"
                }
            );
            assert_eq!(body["reason"], reason, "{err:?}");
        }
    }

    #[test]
    fn per_request_lines_follow_the_shared_ones() {
        let (clear, more) = (lines(5), lines(2));
        let h = Answer::logged_out(&clear)
            .with_cookies(more[1..].to_vec())
            .header()
            .unwrap();
        let got = set_cookies(&h);
        assert_eq!(got.len(), 6);
        assert_eq!(got[5], "c1=; Max-Age=0");
    }

    #[test]
    fn app_failure_after_refresh_still_carries_the_new_cookies() {
        let lines: Vec<String> = (0..5).map(|i| format!("c{i}=v; Path=/")).collect();
        let renewed = RenewedSession::from_lines(&lines).unwrap();
        let h = Answer::app_failed(502, Some(&renewed)).header().unwrap();
        assert_eq!(h.status.as_u16(), 502);
        assert_eq!(set_cookies(&h).len(), 5);
    }

    #[test]
    fn refusals_before_any_token_keep_cookies() {
        for (answer, status, body) in [
            (Answer::forbidden(), 403, &br#"{"error":"Forbidden"}"#[..]),
            (
                Answer::bad_request(),
                400,
                &br#"{"error":"Bad Request"}"#[..],
            ),
        ] {
            let h = answer.header().unwrap();
            assert_eq!(h.status.as_u16(), status);
            assert_eq!(answer.body, body);
            assert!(set_cookies(&h).is_empty());
        }
    }

    #[test]
    fn the_request_id_is_on_the_answer_when_given() {
        let id = HeaderValue::from_static("0af7651916cd43dd8448eb211c80319c");
        let clear = lines(5);
        let with = Answer::logout(&clear, None).with_request_id(Some(&id));
        assert_eq!(with.header().unwrap().headers["x-request-id"], id);
        let without = Answer::logout(&clear, None).header().unwrap();
        assert!(!without.headers.contains_key("x-request-id"));
    }

    #[test]
    fn method_not_allowed_names_post() {
        let h = Answer::method_not_allowed().header().unwrap();
        assert_eq!(h.status.as_u16(), 405);
        assert_eq!(h.headers["allow"], "POST");
    }
}
