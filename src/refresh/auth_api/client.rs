//! The call itself, through Pingora's HTTP/1 connector (pooled connections): one request, every
//! read and write under a timeout and the whole exchange under `auth_api.timeout_ms`.
//!
//! HTTP/1 only, as the auth API's peer offers (no ALPN `h2`): Pingora's connector for every
//! version makes a connect future of 8.8 KiB (TLS and HTTP/2 handshakes) part of each call's,
//! copied with it into its box on every refresh (three quarters of the proxy's page faults in the
//! storm). Here a pooled connection is taken by a small future, and only a new connection's is
//! boxed.
//!
//! The request is written in one `write` (head and body together): Pingora's client session
//! flushes the head on its own, and a second segment of two bytes cost every refresh a
//! syscall, a loopback TCP exchange and a second wake-up of the auth API.

use std::time::Duration;

use pingora::connectors::TransportConnector;
use pingora::http::RequestHeader;
use pingora::prelude::timeout;
use pingora::protocols::Stream;
use pingora::protocols::http::v1::client::{HttpSession, http_req_header_to_wire};
use pingora::upstreams::peer::Peer;
use pingora::{Error as PingoraError, ErrorType};
use tokio::io::AsyncWriteExt;

use super::*;

/// Below Node's default `keepAliveTimeout` (5 s), so the pool never hands out a connection
/// the auth API is about to close.
pub(super) const POOL_IDLE: Duration = Duration::from_secs(4);

/// The body of every call: seed 002's auth API reads only the `Cookie` header.
const BODY: &[u8] = b"{}";

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
    connector: TransportConnector,
}

impl Default for AuthApiClient {
    fn default() -> Self {
        AuthApiClient {
            connector: TransportConnector::new(None),
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
        // Pingora's timer, not tokio's: a tokio timer earlier than every other one wakes the
        // runtime's driver through its eventfd, a syscall on most refreshes.
        match timeout(deadline, attempt).await {
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
        let (mut stream, reused) = match self.connector.reused_stream(target.peer).await {
            Some(pooled) => (pooled, true),
            None => Box::pin(self.connector.new_stream(target.peer))
                .await
                .map(|fresh| (fresh, false))
                .map_err(|e| (Failure::from(e), false))?,
        };
        let request = build_request(target, cookie_header)
            .map_err(|e| (Failure::Internal(e.to_string()), false))?;
        let mut wire = http_req_header_to_wire(&request).ok_or_else(|| {
            let what = "request head not writable as HTTP/1.1";
            (Failure::Internal(what.into()), false)
        })?;
        wire.extend_from_slice(BODY);
        write_all(&mut stream, &wire, settings.timeout)
            .await
            .map_err(|failure| (failure, reused))?;
        let mut http = HttpSession::new_with_options(stream, target.peer);
        http.read_timeout = Some(settings.timeout);
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
        // Kept only when the answer allows it.
        http.respect_keepalive();
        if let Some(stream) = http.reuse().await {
            let key = target.peer.reuse_hash();
            self.connector.release_stream(stream, key, Some(POOL_IDLE));
        }
        Ok(answer)
    }
}

/// The whole request in one write, flushed, under the write timeout.
async fn write_all(stream: &mut Stream, wire: &[u8], limit: Duration) -> Result<(), Failure> {
    let write = async {
        stream.write_all(wire).await?;
        stream.flush().await
    };
    match timeout(limit, write).await {
        Err(_) => Err(Failure::Timeout),
        Ok(Err(_)) => Err(Failure::Io(ErrorType::WriteError.as_str().to_owned())),
        Ok(Ok(())) => Ok(()),
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
    req.insert_header("Content-Length", BODY.len())?;
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
