//! The call itself, through Pingora's HTTP/1 connector (pooled connections): one request, every
//! read and write under a timeout and the whole exchange under `auth_api.timeout_ms`.
//!
//! HTTP/1 only, as the auth API's peer offers (no ALPN `h2`): Pingora's connector for every
//! version makes a connect future of 8.8 KiB (TLS and HTTP/2 handshakes) part of each call's,
//! copied with it into its box on every refresh (three quarters of the proxy's page faults in the
//! storm). Here a pooled connection is taken by a small future, and only a new connection's is
//! boxed.

use std::time::Duration;

use pingora::connectors::http::v1::Connector;
use pingora::http::RequestHeader;
use pingora::{Error as PingoraError, ErrorType};

use super::*;

/// Below Node's default `keepAliveTimeout` (5 s), so the pool never hands out a connection
/// the auth API is about to close.
pub(super) const POOL_IDLE: Duration = Duration::from_secs(4);

/// Interim (1xx) answers read before the final one; more is a server that never answers.
const MAX_INTERIM_ANSWERS: usize = 16;

/// Where one call goes.
#[derive(Clone, Copy)]
pub(super) struct Target<'a> {
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
        let (mut http, reused) = match self.connector.reused_http_session(target.peer).await {
            Some(pooled) => (pooled, true),
            None => Box::pin(self.connector.get_http_session(target.peer))
                .await
                .map_err(|e| (Failure::from(e), false))?,
        };
        http.read_timeout = Some(settings.timeout);
        http.write_timeout = Some(settings.timeout);
        let request = build_request(target, cookie_header)
            .map_err(|e| (Failure::Internal(e.to_string()), false))?;
        let writing = |e: Box<PingoraError>| (Failure::from(e), reused);
        http.write_request_header(Box::new(request))
            .await
            .map_err(writing)?;
        http.write_body(b"{}").await.map_err(writing)?;
        http.finish_body().await.map_err(writing)?;
        let reading = |e: Box<PingoraError>| (Failure::from(e), false);
        // Interim answers (100 Continue, 103 Early Hints) may come before the final one, asked
        // for or not (RFC 9110 §15.2); 101 is final, and no answer to a refresh: the connection
        // is someone else's now, never pooled, its bytes never read.
        for interim in 0.. {
            http.read_response().await.map_err(reading)?;
            match http.resp_header().map(|h| h.status.as_u16()) {
                Some(101) => return Ok(read(101, None, b"")),
                Some(100..=199) if interim < MAX_INTERIM_ANSWERS => {}
                Some(100..=199) => {
                    return Ok(Err(AuthApiError::BadAnswer(format!(
                        "more than {MAX_INTERIM_ANSWERS} interim (1xx) answers"
                    ))));
                }
                _ => break,
            }
        }
        let (status, content_type) = match http.resp_header() {
            Some(h) => (
                h.status.as_u16(),
                h.headers.get("content-type").map(|v| v.as_bytes().to_vec()),
            ),
            None => return Err((Failure::Internal("no response header".into()), reused)),
        };
        let mut body = Vec::new();
        while let Some(chunk) = http.read_body_bytes().await.map_err(reading)? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Ok(Err(AuthApiError::BadAnswer(format!(
                    "answer body over {MAX_ANSWER_BYTES} bytes"
                ))));
            }
            body.extend_from_slice(&chunk);
        }
        let answer = read(status, content_type.as_deref(), &body);
        // Kept only when the answer allows it (`respect_keepalive` inside).
        self.connector
            .release_http_session(http, target.peer, Some(POOL_IDLE))
            .await;
        Ok(answer)
    }
}

pub(super) fn build_request(
    target: Target<'_>,
    cookie_header: &str,
) -> pingora::Result<RequestHeader> {
    let mut req = RequestHeader::build("POST", target.path_and_query.as_bytes(), Some(5))?;
    req.insert_header("Host", target.authority)?;
    req.insert_header("Content-Type", "application/json")?;
    req.insert_header("Accept", "application/json")?;
    req.insert_header("Cookie", cookie_header)?;
    req.insert_header("Content-Length", "2")?;
    Ok(req)
}

/// A backend logout succeeded on any 2xx; its body is not read further.
pub(super) fn read_logout_answer(
    status: u16,
    _: Option<&[u8]>,
    _: &[u8],
) -> Result<(), AuthApiError> {
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(AuthApiError::BadAnswer(format!("HTTP {status}")))
    }
}

pub(super) enum Failure {
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
    pub(super) fn into_error(self, deadline: Duration) -> AuthApiError {
        match self {
            Failure::Timeout => AuthApiError::Timeout(deadline),
            Failure::Io(what) | Failure::Internal(what) => AuthApiError::Unreachable(what),
        }
    }
}
