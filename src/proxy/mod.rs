//! The Pingora glue: moves data between Pingora's session and the modules that decide, and
//! holds nothing but the shared state those modules need.

pub mod answer;
pub mod app_request;
pub mod app_response;
pub mod cache_control;
mod ctx;
mod decide;
pub mod downstream;
pub mod forwarded;
pub mod guard;
pub mod status;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::HeaderValue;
use http::header::SET_COOKIE;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::config::RuntimeConfig;
use crate::ops::access_log::AccessEntry;
use crate::ops::metrics::Metrics;
use crate::proxy::answer::Answer;
use crate::proxy::app_request::AppEdits;
use crate::proxy::forwarded::X_REQUEST_ID;
use crate::proxy::forwarded::client_address;
use crate::proxy::upstream::AppUpstream;
use crate::refresh::auth_api::AuthApiClient;
use crate::refresh::shared_store::SharedStore;
use crate::session::chunks;
use crate::session::set_cookie::AppLine;
use crate::state::{Flights, LiveConfig, State};
use ctx::{caller, decision, request_id};
use decide::{Step, chunk_clears};

pub use ctx::{Outcome, RequestCtx};

/// The app's Set-Cookie lines for the five cookies, as the browser reads them (none, without
/// an allocation, when the answer sets no cookie: the usual valid-path answer).
fn app_lines_for_ours(
    config: &RuntimeConfig,
    req: &RequestHeader,
    response: &ResponseHeader,
) -> Vec<AppLine> {
    if !response.headers.contains_key(SET_COOKIE) {
        return Vec::new();
    }
    let ours = config.names.all();
    let lines = response.headers.get_all(SET_COOKIE);
    let lines = lines.iter().filter_map(|v| v.to_str().ok());
    let mut found = config.cookie_policy.app_lines(lines, req.uri.path());
    found.retain(|l| ours.contains(&l.name.as_str()));
    found
}

/// Whether the app's lines delete a cookie the session refreshes with: the app logging the
/// user out, which ends the session as the logout endpoint does.
fn logs_out(config: &RuntimeConfig, lines: &[AppLine]) -> bool {
    lines.iter().any(|l| {
        l.deletes
            && (l.name == config.names.refresh_etls
                || config.auth_api.send_cookies.contains(&l.name))
    })
}

pub struct EtlsProxy {
    pub(super) live: Arc<LiveConfig>,
    pub(super) flights: Arc<Flights>,
    pub(super) client: Arc<AuthApiClient>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) app: Arc<AppUpstream>,
    /// `refresh.store: redis`: the flights' leaders coordinate with the other instances.
    pub(super) shared: Option<Arc<SharedStore>>,
}

impl EtlsProxy {
    /// The answer carrying a kept result has left (its head is written, or its client has
    /// gone): the result stays a grace window from now, for the browser's next request with
    /// the old cookies. Once per request.
    fn release_held(&self, ctx: &mut RequestCtx) {
        if std::mem::take(&mut ctx.held)
            && let Some(key) = ctx.session
        {
            self.flights.release(&key);
        }
    }

    pub fn new(state: &State, app: Arc<AppUpstream>) -> Self {
        EtlsProxy {
            live: Arc::clone(&state.live),
            flights: Arc::clone(&state.flights),
            client: Arc::new(AuthApiClient::default()),
            metrics: Arc::clone(&state.metrics),
            app,
            shared: None,
        }
    }

    pub fn with_shared_store(mut self, shared: Option<Arc<SharedStore>>) -> Self {
        self.shared = shared;
        self
    }
}

#[async_trait]
impl ProxyHttp for EtlsProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.live.load())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        downstream::header_read(session);
        downstream::keepalive(session, ctx.config.keepalive_secs);
        downstream::pipelining(session);
        ctx.caller = Some(caller(session, ctx));
        match self.decide(session.req_header(), ctx).await {
            Step::Forward => Ok(false),
            Step::Reply(reply) => {
                self.reply(session, ctx, reply).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        self.app.peer(&ctx.config.upstream)
    }

    /// An instance that refused the connection never saw the request: with several instances,
    /// the request goes to the next one (at most once per other instance) instead of failing
    /// before the health check has noticed.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if *e.etype() == ErrorType::ConnectRefused
            && ctx.refused_connects + 1 < self.app.instances()
        {
            ctx.refused_connects += 1;
            e.set_retry(true);
        }
        e
    }

    /// Runs again on each retry with a fresh copy of the request, so the rewrite lives in ctx.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        app_request::rebuild(
            upstream_request,
            &AppEdits {
                cookie: ctx.forward_cookie.as_ref(),
                identity_names: Some(&ctx.config.identity),
                identity: &ctx.identity,
                caller: ctx.caller.as_ref(),
            },
        )?;
        // An HTTP/1.0 client may leave Host out, but the app is spoken to in HTTP/1.1, which
        // requires it (RFC 9112 §3.2; Node answers 400 without): the app's own name, as nginx
        // sends `$proxy_host`.
        if session.req_header().version <= http::Version::HTTP_10
            && !upstream_request.headers.contains_key(http::header::HOST)
            && let Some(peer) = ctx.config.upstream.peers.first()
        {
            let default_port = if peer.is_tls() { 443 } else { 80 };
            let host = match (peer.sni.as_str(), peer._address.as_inet()) {
                ("", _) | (_, None) => peer._address.to_string(),
                (sni, Some(addr)) if addr.port() == default_port => sni.to_owned(),
                (sni, Some(addr)) => format!("{sni}:{}", addr.port()),
            };
            upstream_request.insert_header(http::header::HOST, host)?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Interim responses (100, 103) carry no cookies a browser keeps; a 101 is final.
        if crate::proxy::status::is_interim(response.status) {
            return Ok(());
        }
        let Some(renewed) = ctx.renewed.clone() else {
            if let Some(id) = request_id(ctx) {
                app_response::edit(response, 1, |headers| {
                    headers.insert(X_REQUEST_ID, id.clone());
                })?;
            }
            // The app logging the user out on a valid request ends the session in the table
            // too, or a result still kept for it would hand the old cookies fresh tokens.
            let app_lines = app_lines_for_ours(&ctx.config, session.req_header(), response);
            if logs_out(&ctx.config, &app_lines) {
                Box::pin(self.end_session(session.req_header(), ctx)).await;
            }
            return Ok(());
        };
        // A logout that landed while the app was answering: this answer must not bring the
        // session back, so it clears the cookies instead of renewing them.
        let ended = self.ended_since_decided(ctx).await;
        let req = session.req_header();
        let names = &ctx.config.names;
        if ended {
            // Nothing of the session: the logout's answer has cleared this browser's cookies
            // already, and clear lines here would also wipe a login made since.
            log::debug!("session ended while its answer was on the way: no cookies set");
            if let Some(id) = request_id(ctx) {
                app_response::edit(response, 1, |headers| {
                    headers.insert(X_REQUEST_ID, id.clone());
                })?;
            }
            return Ok(());
        }
        // The app's own lines for one of the five (deleting it: a logout; setting it: a login as
        // someone else) win over the refresh; ours for the other names follow the app's.
        let app_lines = app_lines_for_ours(&ctx.config, req, response);
        // The app logging the user out (deleting a refresh cookie): none of the renewal goes
        // out, not only the names it deleted.
        let app_logout = logs_out(&ctx.config, &app_lines);
        let claimed = |name: &str| app_logout || app_lines.iter().any(|l| l.name == name);
        let ours: Vec<&HeaderValue> = renewed
            .cookie_lines()
            .filter(|(name, _)| !claimed(name))
            .flat_map(|(_, lines)| lines)
            .collect();
        // Chunks this request holds that the new values no longer use; all of them for a
        // cookie the app set or deleted.
        let replaced: Vec<String> = match app_logout {
            true => names.all().map(String::from).to_vec(),
            false => app_lines.iter().map(|l| l.name.clone()).collect(),
        };
        let layout = chunks::with_deleted(renewed.layout(names), names, &replaced);
        let clears = chunk_clears(ctx, req, &layout);
        let host_only = ctx.config.clear_host_only.iter().cloned();
        let id = request_id(ctx);
        let more = ours.len() + clears.len() + host_only.len() + 2;
        app_response::edit(response, more, |headers| {
            if let Some(id) = id {
                headers.insert(X_REQUEST_ID, id.clone());
            }
            for line in ours {
                headers.append(SET_COOKIE, line.clone());
            }
            for line in clears.into_iter().chain(host_only) {
                headers.append(SET_COOKIE, line);
            }
            // A response carrying session cookies must never sit in a shared cache.
            cache_control::keep_private(headers);
        })?;
        if app_logout {
            Box::pin(self.end_session(session.req_header(), ctx)).await;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = answer::failure_status(e);
        let final_written = session
            .response_written()
            .is_some_and(|h| !crate::proxy::status::is_interim(h.status));
        if code > 0 && !final_written {
            let more = ctx.renewed.as_deref().map_or_else(Vec::new, |r| {
                chunk_clears(ctx, session.req_header(), &r.layout(&ctx.config.names))
            });
            let answer = Answer::app_failed(code, ctx.renewed.as_deref())
                .with_cookies(more)
                .with_request_id(request_id(ctx));
            if let Err(write_error) = answer.send(session).await {
                log::debug!("could not send the error answer: {write_error}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Pingora's error lines name the request: never with its query or raw Host bytes.
    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        guard::request_summary(session.req_header())
    }

    /// A client that goes away mid-answer is not the proxy's error: over HTTP/1 a closed
    /// connection, over HTTP/2 a stream it reset (a fetch aborted, a page left, an EventSource
    /// closed: `RST_STREAM(CANCEL)`). Kept out of the error log; the per-request debug line
    /// still records it.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        *error.esource() == ErrorSource::Downstream
            && matches!(
                error.etype(),
                ErrorType::ConnectionClosed
                    | ErrorType::WriteError
                    | ErrorType::ReadError
                    | ErrorType::H2Error
            )
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        downstream::next_request(
            session,
            ctx.config.header_timeout,
            Duration::from_secs(ctx.config.keepalive_secs),
        );
        let status = session.response_written().map_or(0, |h| h.status.as_u16());
        // A client gone before the answer's head was written.
        self.release_held(ctx);
        let app_failed = e.is_some_and(|e| *e.esource() == ErrorSource::Upstream);
        let decision = decision(ctx.outcome, status, app_failed);
        self.metrics.request(decision);
        if let Some(format) = ctx.config.access_log {
            let req = session.req_header();
            let client = ctx.caller.as_ref().and_then(|c| c.peer).map(|peer| {
                let sent = req.headers.get_all("x-forwarded-for");
                client_address(sent.iter(), &ctx.config.trusted_proxies, peer)
            });
            AccessEntry {
                method: req.method.as_str(),
                path: req.uri.path(),
                status,
                decision: decision.as_str(),
                total: ctx.started.map_or(Duration::ZERO, |t| t.elapsed()),
                auth_api: ctx.auth_wait,
                session: ctx.session.map(|k| k.short()),
                client,
                request_id: request_id(ctx).and_then(|id| id.to_str().ok()),
            }
            .write(format);
        }
    }
}
