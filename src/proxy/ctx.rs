//! What one request carries through the hooks: the configuration it started with, what the
//! decision settled for the app, and what it came to (for the metrics and the access log).

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;
use pingora::proxy::Session;

use crate::config::RuntimeConfig;
use crate::ops::metrics::Decision;
use crate::proxy::forwarded::Caller;
use crate::refresh::flight::{Joined, SessionKey};
use crate::refresh::renew::RenewedSession;
use crate::session::decision::Refusal;

/// What happened to a request, for logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Outcome {
    #[default]
    Pending,
    Public,
    Passed,
    Refreshed(Joined),
    RefreshEndpoint(Joined),
    LoggedOut,
    Refused(Refusal),
    AuthApiFailed,
    MethodNotAllowed,
    CookiesTooLarge,
    /// No Host, or an invalid one (400).
    BadHost,
    /// A `Connection` header the app's request cannot be built with (400).
    BadConnection,
    /// A cross-site POST to an endpoint of the proxy (403).
    CrossSite,
}

pub struct RequestCtx {
    /// The configuration this request started with, kept through a reload.
    pub(super) config: Arc<RuntimeConfig>,
    /// For the access log's total time; no clock read per request without one.
    pub(super) started: Option<Instant>,
    /// Time spent waiting for a refresh.
    pub(super) auth_wait: Option<Duration>,
    /// Connections refused by an app instance on this request (each retried on the next one).
    pub(super) refused_connects: usize,
    /// Identity headers from the verified (or freshly minted) access token.
    pub(super) identity: Vec<(http::HeaderName, HeaderValue)>,
    /// The one Cookie header the app gets, when it differs from what the browser sent.
    pub(super) forward_cookie: Option<HeaderValue>,
    /// Set-Cookie lines to append to the app's answer.
    pub(super) renewed: Option<Arc<RenewedSession>>,
    /// When `renewed` was decided, with `store: redis` only (see `ended_since_decided`).
    pub(super) decided: Option<Instant>,
    /// `renewed` is a result kept in the table, held until this request's answer has left.
    pub(super) held: bool,
    pub outcome: Outcome,
    pub session: Option<SessionKey>,
    /// Peer, trust and request id, settled first so every answer carries the id.
    pub(super) caller: Option<Caller>,
    /// Whether the request holds chunk cookies, once `decide` has looked (`None`: not known).
    pub(super) sent_chunks: Option<bool>,
}

impl RequestCtx {
    pub fn new(config: Arc<RuntimeConfig>) -> Self {
        RequestCtx {
            started: config.access_log.is_some().then(Instant::now),
            config,
            auth_wait: None,
            refused_connects: 0,
            identity: Vec::new(),
            forward_cookie: None,
            renewed: None,
            decided: None,
            held: false,
            outcome: Outcome::Pending,
            session: None,
            caller: None,
            sent_chunks: None,
        }
    }
}

pub(super) fn caller(session: &Session, ctx: &RequestCtx) -> Caller {
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    let sent_id = session.req_header().headers.get("x-request-id");
    Caller::new(peer, tls, sent_id, &ctx.config.trusted_proxies)
}

pub(super) fn request_id(ctx: &RequestCtx) -> Option<&HeaderValue> {
    ctx.caller.as_ref().map(|c| &c.request_id)
}

/// What a request came to, for metrics and the access log.
pub(super) fn decision(outcome: Outcome, status: u16, app_failed: bool) -> Decision {
    match outcome {
        Outcome::Public | Outcome::Passed | Outcome::Refreshed(_) if app_failed => {
            Decision::AppError
        }
        Outcome::Public => Decision::Public,
        Outcome::Passed => Decision::Passed,
        Outcome::Refreshed(Joined::Led) => Decision::Refreshed,
        Outcome::Refreshed(Joined::Waited) => Decision::Coalesced,
        Outcome::Refreshed(Joined::Grace) => Decision::GraceHit,
        Outcome::RefreshEndpoint(_) => Decision::RefreshEndpoint,
        Outcome::LoggedOut => Decision::LogoutEndpoint,
        Outcome::Refused(_) if status == 302 => Decision::Redirected,
        Outcome::Refused(_) => Decision::LoggedOut,
        Outcome::AuthApiFailed => Decision::AuthApiError,
        Outcome::Pending
        | Outcome::MethodNotAllowed
        | Outcome::CookiesTooLarge
        | Outcome::BadHost
        | Outcome::BadConnection
        | Outcome::CrossSite => Decision::Rejected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_request_came_to_by_outcome_status_and_app_failure() {
        let cases = [
            (Outcome::Public, 200, false, Decision::Public),
            (Outcome::Public, 502, true, Decision::AppError),
            (Outcome::Passed, 200, false, Decision::Passed),
            (Outcome::Passed, 504, true, Decision::AppError),
            (
                Outcome::Refreshed(Joined::Led),
                200,
                false,
                Decision::Refreshed,
            ),
            (
                Outcome::Refreshed(Joined::Waited),
                200,
                false,
                Decision::Coalesced,
            ),
            (
                Outcome::Refreshed(Joined::Grace),
                200,
                false,
                Decision::GraceHit,
            ),
            (
                Outcome::Refreshed(Joined::Led),
                502,
                true,
                Decision::AppError,
            ),
            (
                Outcome::RefreshEndpoint(Joined::Led),
                200,
                false,
                Decision::RefreshEndpoint,
            ),
            (Outcome::LoggedOut, 200, false, Decision::LogoutEndpoint),
            (
                Outcome::Refused(Refusal::SessionEnded),
                302,
                false,
                Decision::Redirected,
            ),
            (
                Outcome::Refused(Refusal::SessionEnded),
                401,
                false,
                Decision::LoggedOut,
            ),
            (Outcome::AuthApiFailed, 502, false, Decision::AuthApiError),
            (Outcome::Pending, 0, false, Decision::Rejected),
            (Outcome::MethodNotAllowed, 405, false, Decision::Rejected),
            (Outcome::CookiesTooLarge, 431, false, Decision::Rejected),
            (Outcome::BadHost, 400, false, Decision::Rejected),
            (Outcome::BadConnection, 400, false, Decision::Rejected),
            (Outcome::CrossSite, 403, false, Decision::Rejected),
        ];
        for (outcome, status, app_failed, want) in cases {
            assert_eq!(
                decision(outcome, status, app_failed),
                want,
                "{outcome:?} {status}"
            );
        }
    }
}
