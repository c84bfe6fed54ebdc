//! The Pingora glue: moves data between Pingora's session and the modules that decide, and
//! holds nothing but the shared state those modules need.

pub mod answer;
pub mod cache_control;
pub mod downstream;
pub mod forwarded;
pub mod guard;
pub mod status;
pub mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::config::RuntimeConfig;
use crate::ops::access_log::AccessEntry;
use crate::ops::metrics::{AuthApiOutcome, Decision, Metrics};
use crate::proxy::answer::Answer;
use crate::proxy::forwarded::{Caller, client_address};
use crate::proxy::upstream::AppUpstream;
use crate::refresh::auth_api::{AuthApiClient, AuthApiError};
use crate::refresh::flight::{Joined, SessionKey, SessionKeyer};
use crate::refresh::renew::{
    Minting, RefreshError, RenewedSession, backend_logout, land, next_api_cookies, renew,
};
use crate::refresh::shared_store::{SharedFlight, SharedStore};
use crate::session::chunks::{self, Layout};
use crate::session::cookies::{CookieJar, rewrite};
use crate::session::decision::{Purpose, Refusal, Verdict, api_cookie_header, assess};
use crate::session::routes::{Route, is_page_navigation};
use crate::session::tokens::{Binding, RefreshState, UnboundRefresh};
use crate::state::{Flights, LiveConfig, State};

pub struct EtlsProxy {
    live: Arc<LiveConfig>,
    flights: Arc<Flights>,
    client: Arc<AuthApiClient>,
    metrics: Arc<Metrics>,
    app: Arc<AppUpstream>,
    /// `refresh.store: redis`: the flights' leaders coordinate with the other instances.
    shared: Option<Arc<SharedStore>>,
}

impl EtlsProxy {
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
    /// A cross-site POST to an endpoint of the proxy (403).
    CrossSite,
}

pub struct RequestCtx {
    /// The configuration this request started with, kept through a reload.
    config: Arc<RuntimeConfig>,
    started: Instant,
    /// Time spent waiting for a refresh.
    auth_wait: Option<Duration>,
    /// Connections refused by an app instance on this request (each retried on the next one).
    refused_connects: usize,
    /// Identity headers from the verified (or freshly minted) access token.
    identity: Vec<(http::HeaderName, HeaderValue)>,
    /// The one Cookie header the app gets, when it differs from what the browser sent.
    forward_cookie: Option<HeaderValue>,
    /// Set-Cookie lines to append to the app's answer.
    renewed: Option<Arc<RenewedSession>>,
    pub outcome: Outcome,
    pub session: Option<SessionKey>,
    /// Peer, trust and request id, settled first so every answer carries the id.
    caller: Option<Caller>,
}

impl RequestCtx {
    pub fn new(config: Arc<RuntimeConfig>) -> Self {
        RequestCtx {
            config,
            started: Instant::now(),
            auth_wait: None,
            refused_connects: 0,
            identity: Vec::new(),
            forward_cookie: None,
            renewed: None,
            outcome: Outcome::Pending,
            session: None,
            caller: None,
        }
    }
}

/// What `request_filter` does once the decision is made.
enum Step {
    Forward,
    Reply(Reply),
}

/// An answer decided while the request was borrowed, written once it is not.
enum Reply {
    Logout(Option<String>),
    LoggedOut,
    MethodNotAllowed,
    CookiesTooLarge,
    BadRequest,
    Forbidden,
    Refreshed(Arc<RenewedSession>),
    RefreshFailed(RefreshError),
}

impl EtlsProxy {
    async fn decide(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Step {
        let config = Arc::clone(&ctx.config);
        let config = config.as_ref();
        let post = req.method == http::Method::POST;
        let host = match guard::check_host(req) {
            Ok(host) => host,
            Err(bad) => {
                log::debug!("bad Host ({bad:?}): 400");
                ctx.outcome = Outcome::BadHost;
                return Step::Reply(Reply::BadRequest);
            }
        };
        let cookies = req.headers.get_all("cookie");
        let cookie_bytes: usize = cookies.iter().map(|v| v.len() + 2).sum();
        if cookie_bytes > config.max_cookie_bytes + 2 {
            ctx.outcome = Outcome::CookiesTooLarge;
            return Step::Reply(Reply::CookiesTooLarge);
        }
        let purpose = match config.routes.classify(req.uri.path().as_bytes()) {
            Route::Public => {
                ctx.outcome = Outcome::Public;
                let jar = CookieJar::from_headers(cookies.iter().map(|v| v.as_bytes()));
                ctx.forward_cookie = joined_chunks(config, &jar).and_then(header_value);
                return Step::Forward;
            }
            Route::LogoutEndpoint | Route::RefreshEndpoint
                if post && !guard::same_origin_request(req, host) =>
            {
                ctx.outcome = Outcome::CrossSite;
                return Step::Reply(Reply::Forbidden);
            }
            Route::LogoutEndpoint if post => {
                ctx.outcome = Outcome::LoggedOut;
                self.end_session(req, ctx).await;
                return Step::Reply(Reply::LoggedOut);
            }
            Route::LogoutEndpoint | Route::RefreshEndpoint if !post => {
                ctx.outcome = Outcome::MethodNotAllowed;
                return Step::Reply(Reply::MethodNotAllowed);
            }
            Route::RefreshEndpoint => Purpose::RefreshEndpoint,
            _ => Purpose::Request,
        };
        let joined: Vec<u8>;
        let mut jar = CookieJar::from_headers(cookies.iter().map(|v| v.as_bytes()));
        // Chunked values are joined: the decision, the session key, the auth API and the app
        // all read one cookie per name.
        if let Some(header) = joined_chunks(config, &jar) {
            joined = header;
            ctx.forward_cookie = HeaderValue::from_bytes(&joined).ok();
            jar = CookieJar::from_headers([joined.as_slice()]);
        }
        let verdict = assess(&jar, &config.session_policy(), crate::unix_now(), purpose);
        let plan = match verdict {
            Verdict::Forward { keep_access } => return forward(config, ctx, &jar, keep_access),
            Verdict::Refuse(refusal) => {
                if refusal == Refusal::RefreshUnbound {
                    self.metrics.unbound_refresh(false);
                }
                return refuse(config, req, ctx, refusal);
            }
            Verdict::Refresh(plan) => plan,
        };
        // An unbound refresh token (old routes) shares flights and grace hits only with the
        // same token: another one beside these API cookies calls the auth API itself.
        if plan.unbound {
            self.metrics.unbound_refresh(true);
        }
        let unbound = plan.unbound.then_some(plan.refresh_token);
        let key = session_key(&config.session_keyer, &plan.api_cookies, unbound);
        ctx.session = Some(key);
        let (client, flight_config) = (Arc::clone(&self.client), Arc::clone(&ctx.config));
        let (metrics, shared) = (Arc::clone(&self.metrics), self.shared.clone());
        // `auth_api.max_in_flight` bounds calls to the auth API. Alone, every flight is one; with
        // a shared store a flight may only wait for another instance's call, so the place is
        // taken around the call itself.
        let max_in_flight = config.auth_api.max_in_flight;
        let (flight_bound, call_gate) = match shared {
            Some(_) => (None, Some(Arc::clone(self.flights.gate()))),
            None => (Some(max_in_flight), None),
        };
        let (refresh_token, api_cookies) = (plan.refresh_token, plan.api_cookies);
        // What the browser sends beside the new cookies counts against the same limit.
        let sent = CookieJar::from_headers(cookies.iter().map(|v| v.as_bytes()));
        let other_cookie_bytes = chunks::other_cookie_bytes(&sent, &config.names);
        // Only the request that starts the flight copies what the flight needs.
        let start = move || {
            let refresh_token = refresh_token.to_vec();
            async move {
                let config = flight_config;
                let minting = Minting {
                    other_cookie_bytes,
                    ..config.minting()
                };
                let call = async {
                    let _place = match &call_gate {
                        Some(gate) => match gate.try_acquire(max_in_flight) {
                            Some(place) => Some(place),
                            None => return Err(RefreshError::Busy),
                        },
                        None => None,
                    };
                    let started = Instant::now();
                    let result = renew(
                        &client,
                        &config.auth_api,
                        &minting,
                        &refresh_token,
                        &api_cookies,
                    )
                    .await;
                    metrics.auth_api(started.elapsed(), auth_api_outcome(&result));
                    result
                };
                let send = &config.auth_api.send_cookies;
                let keyer = &config.session_keyer;
                let next = |renewed: &RenewedSession| {
                    Some(keyer.key(&[next_api_cookies(&api_cookies, renewed, send).as_bytes()]))
                };
                match shared {
                    Some(store) => {
                        // From the running configuration: follows a secret rotation.
                        let value_key = config
                            .shared_store
                            .as_ref()
                            .map_or(store.value_key(), |s| s.value_key);
                        let flight = SharedFlight {
                            key,
                            value_key: &value_key,
                            api_cookies: &api_cookies,
                            auth_timeout: config.auth_api.timeout,
                            grace: config.grace,
                        };
                        store.coordinate(flight, call, next).await
                    }
                    None => land(call.await, next),
                }
            }
        };
        let waiting = Instant::now();
        let (mut outcome, joined) = self.flights.run_bounded(key, flight_bound, start).await;
        // A result kept here may belong to a session another instance has ended since.
        if let (Ok(_), Joined::Grace, Some(store)) = (&outcome, joined, &self.shared)
            && store.is_ended(key).await == Some(true)
        {
            self.flights.end(key);
            outcome = Err(RefreshError::Ended);
        }
        ctx.auth_wait = Some(waiting.elapsed());
        log::debug!(
            "session {}: refresh {} ({joined:?})",
            key.short(),
            if outcome.is_ok() {
                "succeeded"
            } else {
                "failed"
            }
        );
        match (outcome, purpose) {
            (Ok(renewed), Purpose::RefreshEndpoint) => {
                ctx.outcome = Outcome::RefreshEndpoint(joined);
                Step::Reply(Reply::Refreshed(renewed))
            }
            (Ok(renewed), Purpose::Request) => {
                ctx.outcome = Outcome::Refreshed(joined);
                let updates: Vec<(&str, &str)> = renewed.cookies().collect();
                ctx.forward_cookie = header_value(rewrite(&jar, &updates));
                if !config.identity.is_empty()
                    && let Some((_, token)) = updates
                        .iter()
                        .find(|(name, _)| *name == config.names.access_etls)
                {
                    ctx.identity = config.identity.from_verified(token.as_bytes());
                }
                ctx.renewed = Some(renewed);
                Step::Forward
            }
            (Err(RefreshError::AuthApi(AuthApiError::Rejected(status))), _) => {
                log::info!(
                    "session {} refused by the auth API (HTTP {status})",
                    key.short()
                );
                refuse(config, req, ctx, Refusal::AuthApiRejected)
            }
            (Err(RefreshError::Ended), _) => refuse(config, req, ctx, Refusal::SessionEnded),
            (Err(RefreshError::Busy), _) => {
                self.metrics.auth_api_busy();
                match plan.fallback {
                    Some(keep_access) => forward(config, ctx, &jar, keep_access),
                    None => {
                        ctx.outcome = Outcome::AuthApiFailed;
                        Step::Reply(Reply::RefreshFailed(RefreshError::Busy))
                    }
                }
            }
            (Err(error), _) => match plan.fallback {
                Some(keep_access) => {
                    log::warn!(
                        "refresh ahead failed, forwarding on the still valid token: {error}"
                    );
                    forward(config, ctx, &jar, keep_access)
                }
                None => {
                    log::warn!("session {}: {error}", key.short());
                    ctx.outcome = Outcome::AuthApiFailed;
                    Step::Reply(Reply::RefreshFailed(error))
                }
            },
        }
    }

    /// Logout: the session of the auth API cookies sent (and its whole chain) is ended in the
    /// table, then the backend logout runs when configured; nothing here can stop the answer.
    async fn end_session(&self, req: &RequestHeader, ctx: &mut RequestCtx) {
        let config = &ctx.config;
        let sent =
            CookieJar::from_headers(req.headers.get_all("cookie").iter().map(|v| v.as_bytes()));
        // A chunked `refreshToken` names its session joined, as the refresh read it.
        let joined = joined_chunks(config, &sent);
        let jar = match &joined {
            Some(header) => CookieJar::from_headers([header.as_slice()]),
            None => sent,
        };
        let api_cookies = api_cookie_header(&jar, &config.auth_api.send_cookies);
        if api_cookies.is_empty() {
            return;
        }
        let keyer = &config.session_keyer;
        let key = session_key(keyer, &api_cookies, None);
        ctx.session = Some(key);
        // The keys an unbound refresh token of this request would have refreshed under too
        // (unknown keys leave nothing behind).
        // Only refresh tokens that verify and are unbound, each once and a few at most: a logout
        // needs no valid token, so crumbs must not multiply its work.
        let now = crate::unix_now();
        let mut keys = vec![key];
        if config.keys.unbound_refresh == UnboundRefresh::Allow {
            for token in jar.values(&config.names.refresh_etls) {
                let unbound = matches!(
                    config.keys.check_refresh(token, now),
                    RefreshState::Valid(Binding::Unbound)
                );
                let key = session_key(keyer, &api_cookies, Some(token));
                if unbound && !keys.contains(&key) && keys.len() <= MAX_UNBOUND_ENDED {
                    keys.push(key);
                }
            }
        }
        let mut ended = 0;
        for key in keys {
            ended += self.flights.end(key);
            if let Some(store) = &self.shared {
                store.end(key, config.grace, config.auth_api.timeout).await;
            }
        }
        log::debug!(
            "session {}: logout ended {ended} table entries",
            key.short()
        );
        if config.auth_api.logout.is_some() {
            let gate = self.flights.gate();
            let outcome = backend_logout(&self.client, gate, config, api_cookies, key).await;
            self.metrics.logout(outcome);
        }
    }

    async fn reply(&self, session: &mut Session, ctx: &RequestCtx, reply: Reply) -> Result<()> {
        let clear = &ctx.config.clear_cookies;
        let more = match &reply {
            Reply::Logout(_) | Reply::LoggedOut => {
                chunk_clears(&ctx.config, session.req_header(), &[Layout::Cleared; 5])
            }
            Reply::Refreshed(renewed) => chunk_clears(
                &ctx.config,
                session.req_header(),
                &renewed.layout(&ctx.config.names),
            ),
            _ => Vec::new(),
        };
        let answer = match &reply {
            Reply::Logout(location) => Answer::logout(clear, location.clone()),
            Reply::LoggedOut => Answer::logged_out(clear),
            Reply::MethodNotAllowed => Answer::method_not_allowed(),
            Reply::CookiesTooLarge => Answer::cookies_too_large(),
            Reply::BadRequest => {
                // As nginx: a request this broken ends its connection.
                session.set_keepalive(None);
                Answer::bad_request()
            }
            Reply::Forbidden => Answer::forbidden(),
            Reply::Refreshed(renewed) => Answer::refreshed(renewed),
            Reply::RefreshFailed(error) => Answer::refresh_failed(error),
        };
        answer
            .with_request_id(request_id(ctx))
            .with_cookies(&more)
            .send(session)
            .await
    }
}

/// Unbound refresh tokens of one logout whose keys are ended besides its own.
const MAX_UNBOUND_ENDED: usize = 4;

/// The flight-table key of a session: its auth API cookies, and for an unbound refresh token
/// (old routes) the token too, so such a token shares flights and grace hits only with itself.
fn session_key(
    keyer: &SessionKeyer,
    api_cookies: &str,
    unbound_refresh: Option<&[u8]>,
) -> SessionKey {
    match unbound_refresh {
        Some(token) => keyer.key(&[api_cookies.as_bytes(), token]),
        None => keyer.key(&[api_cookies.as_bytes()]),
    }
}

/// Forwards as sent, but as one Cookie header holding one access token.
fn forward(
    config: &RuntimeConfig,
    ctx: &mut RequestCtx,
    jar: &CookieJar<'_>,
    keep_access: Option<&[u8]>,
) -> Step {
    if ctx.outcome == Outcome::Pending {
        ctx.outcome = Outcome::Passed;
    }
    if let Some(value) = keep_access {
        let value = String::from_utf8_lossy(value);
        let updates = [(config.names.access_etls.as_str(), value.as_ref())];
        ctx.forward_cookie = header_value(rewrite(jar, &updates));
    } else if jar.is_split() {
        ctx.forward_cookie = header_value(rewrite::<&str, &str>(jar, &[]));
    }
    if !config.identity.is_empty()
        && let Some(token) = keep_access.or_else(|| jar.get(&config.names.access_etls))
    {
        ctx.identity = config.identity.from_verified(token);
    }
    Step::Forward
}

fn refuse(
    config: &RuntimeConfig,
    req: &RequestHeader,
    ctx: &mut RequestCtx,
    refusal: Refusal,
) -> Step {
    match refusal {
        // A refresh pair that does not belong together, or one the old routes minted.
        Refusal::SessionMismatch | Refusal::RefreshUnbound => {
            log::info!("refresh refused: {}", refusal.as_str());
        }
        _ => log::debug!("refused: {}", refusal.as_str()),
    }
    ctx.outcome = Outcome::Refused(refusal);
    let routes = &config.routes;
    let header = |name: &str| req.headers.get(name).map(|v| v.as_bytes());
    let navigation = routes.login_redirect.is_some()
        && is_page_navigation(
            header("sec-fetch-mode"),
            header("accept"),
            req.headers.contains_key("rsc"),
        );
    let location = navigation
        .then(|| routes.login_location(req.uri.path_and_query().map_or("/", |p| p.as_str())))
        .flatten();
    Step::Reply(Reply::Logout(location))
}

fn caller(session: &Session, ctx: &RequestCtx) -> Caller {
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    let sent_id = session.req_header().headers.get("x-request-id");
    Caller::new(peer, tls, sent_id, &ctx.config.trusted_proxies)
}

fn request_id(ctx: &RequestCtx) -> Option<&HeaderValue> {
    ctx.caller.as_ref().map(|c| &c.request_id)
}

/// The Cookie header with chunked values joined, when the request carries chunks (a scan
/// without allocation otherwise).
fn joined_chunks(config: &RuntimeConfig, jar: &CookieJar<'_>) -> Option<Vec<u8>> {
    if !chunks::any_chunk(jar, &config.names) {
        return None;
    }
    chunks::normalise(jar, &config.names, config.max_chunks)
}

/// This request's chunk cookies that the answer's `layout` no longer uses, to clear.
fn chunk_clears(
    config: &RuntimeConfig,
    req: &RequestHeader,
    layout: &[Layout; 5],
) -> Vec<HeaderValue> {
    let jar = CookieJar::from_headers(req.headers.get_all("cookie").iter().map(|v| v.as_bytes()));
    chunks::clears_for(&config.cookie_policy, &config.names, &jar, layout)
}

fn header_value(bytes: Vec<u8>) -> Option<HeaderValue> {
    // Built from bytes that already were header values, joined with `; `.
    HeaderValue::from_bytes(&bytes).ok()
}

/// Status for a request that could not be proxied, Pingora's rules with timeouts as 504.
fn failure_status(e: &Error) -> u16 {
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

#[async_trait]
impl ProxyHttp for EtlsProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.live.load())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        downstream::header_read(session);
        downstream::keepalive(session, ctx.config.keepalive_secs);
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
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(cookie) = &ctx.forward_cookie {
            upstream_request.remove_header("cookie");
            upstream_request.insert_header("cookie", cookie.clone())?;
        }
        guard::drop_underscore_names(upstream_request);
        // Whatever the client sent under an identity header's name never reaches the app.
        for name in ctx.config.identity.names() {
            upstream_request.remove_header(name);
        }
        for (name, value) in &ctx.identity {
            upstream_request.insert_header(name.clone(), value.clone())?;
        }
        if let Some(caller) = &ctx.caller {
            caller.apply(upstream_request)?;
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
        if let Some(id) = request_id(ctx) {
            response.insert_header("X-Request-Id", id.clone())?;
        }
        if let Some(renewed) = &ctx.renewed {
            // The app deleting one of our cookies (logging the user out) wins over the refresh;
            // otherwise ours are appended after the app's, never replacing them.
            let policy = &ctx.config.cookie_policy;
            let deleted: Vec<String> = response
                .headers
                .get_all("set-cookie")
                .iter()
                .filter_map(|v| policy.deleted_by(v.to_str().ok()?).map(str::to_owned))
                .collect();
            for (name, lines) in renewed.cookie_lines() {
                if !deleted.iter().any(|d| d == name) {
                    for line in lines {
                        response.append_header("Set-Cookie", line.clone())?;
                    }
                }
            }
            // Chunks this request holds that the new values no longer use; all of them for a
            // cookie the app deleted.
            let names = &ctx.config.names;
            let mut layout = renewed.layout(names);
            for (slot, name) in names.all().iter().enumerate() {
                if deleted.iter().any(|d| d == name) {
                    layout[slot] = Layout::Cleared;
                }
            }
            for line in chunk_clears(&ctx.config, session.req_header(), &layout) {
                response.append_header("Set-Cookie", line)?;
            }
            // A response carrying session cookies must never sit in a shared cache.
            cache_control::keep_private(response)?;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = failure_status(e);
        let final_written = session
            .response_written()
            .is_some_and(|h| !crate::proxy::status::is_interim(h.status));
        if code > 0 && !final_written {
            let more = ctx.renewed.as_deref().map_or_else(Vec::new, |r| {
                chunk_clears(
                    &ctx.config,
                    session.req_header(),
                    &r.layout(&ctx.config.names),
                )
            });
            let answer = Answer::app_failed(code, ctx.renewed.as_deref())
                .with_cookies(&more)
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

    /// A browser that goes away mid-answer is not the proxy's error: keep it out of the error
    /// log (the per-request debug line still records it).
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        *error.esource() == ErrorSource::Downstream
            && matches!(
                error.etype(),
                ErrorType::ConnectionClosed | ErrorType::WriteError | ErrorType::ReadError
            )
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        downstream::next_request(session, ctx.config.header_timeout);
        let status = session.response_written().map_or(0, |h| h.status.as_u16());
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
                total: ctx.started.elapsed(),
                auth_api: ctx.auth_wait,
                session: ctx.session.map(|k| k.short()),
                client,
                request_id: request_id(ctx).and_then(|id| id.to_str().ok()),
            }
            .write(format);
        }
    }
}

/// What a request came to, for metrics and the access log.
fn decision(outcome: Outcome, status: u16, app_failed: bool) -> Decision {
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
        | Outcome::CrossSite => Decision::Rejected,
    }
}

fn auth_api_outcome<T>(result: &std::result::Result<T, RefreshError>) -> AuthApiOutcome {
    match result {
        Ok(_) => AuthApiOutcome::Ok,
        Err(RefreshError::AuthApi(AuthApiError::Rejected(_))) => AuthApiOutcome::Rejected,
        Err(RefreshError::AuthApi(AuthApiError::Timeout(_))) => AuthApiOutcome::Timeout,
        Err(_) => AuthApiOutcome::Failed,
    }
}
