//! The decision for one request, from its headers: forward (with what the app gets), answer
//! it here (the endpoints, refusals, failed refreshes), or refresh first. Pingora's session is
//! not touched here: `mod.rs` moves the data in and out.

use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;
use pingora::Result;
use pingora::http::RequestHeader;
use pingora::proxy::Session;

use super::ctx::{Outcome, RequestCtx, request_id};
use super::{EtlsProxy, guard};
use crate::config::RuntimeConfig;
use crate::ops::metrics::{AuthApiOutcome, Metrics};
use crate::proxy::answer::Answer;
use crate::refresh::auth_api::{AuthApiClient, AuthApiError};
use crate::refresh::flight::{CallGate, Joined, Landing, SessionKey, SessionKeyer};
use crate::refresh::renew::{
    Minting, RefreshError, RenewedSession, backend_logout, land, next_api_cookies, renew,
};
use crate::refresh::shared_store::{SharedFlight, SharedStore};
use crate::session::chunks::{self, Layout};
use crate::session::cookies::{CookieJar, rewrite};
use crate::session::decision::{Purpose, RefreshPlan, Refusal, Verdict, api_cookie_header, assess};
use crate::session::routes::{Route, is_page_navigation};
use crate::session::tokens::{Binding, RefreshState, UnboundRefresh};

/// How long the app may take before an answer carrying renewed cookies asks Redis whether the
/// session was ended meanwhile on another instance: a faster answer is out before a logout
/// could have landed there and reached Redis.
const SHARED_END_CHECK_AFTER: std::time::Duration = std::time::Duration::from_millis(10);

/// What `request_filter` does once the decision is made: forward to the app, or write this
/// answer (decided while the request was borrowed, written once it is not).
pub(super) enum Step {
    Forward,
    /// Boxed: the valid path's future (which holds a `Step`) stays small.
    Reply(Box<Answer<'static>>),
}

impl Step {
    fn reply(answer: Answer<'static>) -> Step {
        Step::Reply(Box::new(answer))
    }
}

impl EtlsProxy {
    pub(super) async fn decide(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Step {
        let config = Arc::clone(&ctx.config);
        let config = config.as_ref();
        let post = req.method == http::Method::POST;
        let host = match guard::check_host(req) {
            Ok(host) => host,
            Err(bad) => {
                log::debug!("bad Host ({bad:?}): 400");
                ctx.outcome = Outcome::BadHost;
                return Step::reply(Answer::bad_request());
            }
        };
        // Pingora refuses to build the app's request from these; refused here, before a refresh
        // would spend the refresh token on an answer that cannot come.
        if let Err(bad) = guard::check_connection(req) {
            log::debug!("Connection header {bad}: 400");
            ctx.outcome = Outcome::BadConnection;
            return Step::reply(Answer::bad_request());
        }
        let cookies = req.headers.get_all("cookie");
        let cookie_bytes: usize = cookies.iter().map(|v| v.len() + 2).sum();
        if cookie_bytes > config.max_cookie_bytes + 2 {
            ctx.outcome = Outcome::CookiesTooLarge;
            return Step::reply(Answer::cookies_too_large());
        }
        let purpose = match config.routes.classify(req.uri.path().as_bytes()) {
            Route::Public => {
                ctx.outcome = Outcome::Public;
                let jar = CookieJar::from_headers(cookies.iter().map(|v| v.as_bytes()));
                ctx.forward_cookie = joined_chunks(config, &jar, ctx).and_then(header_value);
                return Step::Forward;
            }
            Route::LogoutEndpoint | Route::RefreshEndpoint
                if post && !guard::same_origin_request(req, host) =>
            {
                ctx.outcome = Outcome::CrossSite;
                return Step::reply(Answer::forbidden());
            }
            Route::LogoutEndpoint if post => {
                ctx.outcome = Outcome::LoggedOut;
                Box::pin(self.end_session(req, ctx)).await;
                return Step::reply(logged_out(ctx, req));
            }
            Route::LogoutEndpoint | Route::RefreshEndpoint if !post => {
                ctx.outcome = Outcome::MethodNotAllowed;
                return Step::reply(Answer::method_not_allowed());
            }
            Route::RefreshEndpoint => Purpose::RefreshEndpoint,
            _ => Purpose::Request,
        };
        let joined: Vec<u8>;
        let mut jar = CookieJar::from_headers(cookies.iter().map(|v| v.as_bytes()));
        // Chunked values are joined: the decision, the session key, the auth API and the app
        // all read one cookie per name.
        if let Some(header) = joined_chunks(config, &jar, ctx) {
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
        // Boxed: the valid path's future stays small (it is moved and allocated per request).
        Box::pin(self.refresh(req, ctx, &jar, plan, purpose)).await
    }

    /// The refresh of a request whose access token is due: one flight per session, its result
    /// kept for the grace window.
    async fn refresh(
        &self,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
        jar: &CookieJar<'_>,
        plan: RefreshPlan<'_>,
        purpose: Purpose,
    ) -> Step {
        let config = Arc::clone(&ctx.config);
        let config = config.as_ref();
        let cookies = req.headers.get_all("cookie");
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
        // Only the request that starts the flight copies what the flight needs, and counts what
        // the browser sends beside the new cookies (against the same limit).
        let start = move || {
            let sent = CookieJar::from_headers(cookies.iter().map(|v| v.as_bytes()));
            let other_cookie_bytes = chunks::other_cookie_bytes(&sent, &config.names);
            FlightStart {
                config: flight_config,
                client,
                metrics,
                shared,
                call_gate,
                max_in_flight,
                key,
                refresh_token: refresh_token.to_vec(),
                api_cookies,
                other_cookie_bytes,
            }
            .run()
        };
        // Only the access log reports the wait: no clock read for it otherwise.
        let waiting = config.access_log.is_some().then(Instant::now);
        let (mut outcome, joined) = self.flights.run_bounded(key, flight_bound, start).await;
        // A result kept here may belong to a session another instance has ended since.
        if let (Ok(_), Joined::Grace, Some(store)) = (&outcome, joined, &self.shared)
            && store.is_ended(key).await == Some(true)
        {
            self.flights.end(key);
            outcome = Err(RefreshError::Ended);
        }
        ctx.auth_wait = waiting.map(|t| t.elapsed());
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
                Step::reply(refreshed(ctx, req, &renewed))
            }
            (Ok(renewed), Purpose::Request) => {
                ctx.outcome = Outcome::Refreshed(joined);
                let updates: Vec<(&str, &str)> = renewed.cookies().collect();
                ctx.forward_cookie = header_value(rewrite(jar, &updates));
                if !config.identity.is_empty()
                    && let Some((_, token)) = updates
                        .iter()
                        .find(|(name, _)| *name == config.names.access_etls)
                {
                    ctx.identity = config.identity.from_verified(token.as_bytes());
                }
                ctx.renewed = Some(renewed);
                // Kept for this request's old cookies until its answer has left.
                ctx.held = self.flights.hold(&key);
                if self.shared.is_some() {
                    ctx.decided = Some(Instant::now());
                }
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
            (Err(RefreshError::Uncarriable(why)), _) => {
                log::warn!(
                    "session {}: the auth API renewed it, but {why}; logged out (raise cookies.max_chunks or downstream.max_cookie_bytes, or send less user data)",
                    key.short()
                );
                refuse(config, req, ctx, Refusal::SessionTooLarge)
            }
            (Err(RefreshError::Busy), _) => {
                self.metrics.auth_api_busy();
                match plan.fallback {
                    Some(keep_access) => forward(config, ctx, jar, keep_access),
                    None => {
                        ctx.outcome = Outcome::AuthApiFailed;
                        Step::reply(Answer::refresh_failed(&RefreshError::Busy))
                    }
                }
            }
            (Err(error), _) => match plan.fallback {
                Some(keep_access) => {
                    log::warn!(
                        "refresh ahead failed, forwarding on the still valid token: {error}"
                    );
                    forward(config, ctx, jar, keep_access)
                }
                None => {
                    log::warn!("session {}: {error}", key.short());
                    ctx.outcome = Outcome::AuthApiFailed;
                    Step::reply(Answer::refresh_failed(&error))
                }
            },
        }
    }

    /// Logout: the session of the auth API cookies sent (and its whole chain) is ended in the
    /// table, then the backend logout runs when configured; nothing here can stop the answer.
    pub(super) async fn end_session(&self, req: &RequestHeader, ctx: &mut RequestCtx) {
        let config = &ctx.config;
        let sent =
            CookieJar::from_headers(req.headers.get_all("cookie").iter().map(|v| v.as_bytes()));
        // A chunked `refreshToken` names its session joined, as the refresh read it.
        let joined = joined_chunk_header(config, &sent);
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
        // The backend logout names the newest session of the chain: a logout sent with cookies
        // an answer still on its way was renewing would name a refresh token already rotated.
        let newest = match config.auth_api.logout {
            Some(_) => self.newest_session(config, &keys, &api_cookies).await,
            None => None,
        };
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
            let send = &config.auth_api.send_cookies;
            let api_cookies = match newest {
                Some(renewed) => next_api_cookies(&api_cookies, &renewed, send),
                None => api_cookies,
            };
            let gate = self.flights.gate();
            let outcome = backend_logout(&self.client, gate, config, api_cookies, key).await;
            self.metrics.logout(outcome);
        }
    }

    /// The newest session of a logout's chain, which the backend logout names: this table's
    /// newest kept result, then, with `store: redis`, what other instances renewed after it (a
    /// logout on this instance with cookies another instance refreshed names the refresh token
    /// that refresh handed out, not the one it rotated away).
    async fn newest_session(
        &self,
        config: &RuntimeConfig,
        keys: &[SessionKey],
        api_cookies: &str,
    ) -> Option<Arc<RenewedSession>> {
        let local = keys.iter().find_map(|k| self.flights.newest_kept(*k));
        let Some(store) = &self.shared else {
            return local;
        };
        let (send, keyer) = (&config.auth_api.send_cookies, &config.session_keyer);
        let next = |cookies: &str, renewed: &RenewedSession| {
            let cookies = next_api_cookies(cookies, renewed, send);
            let key = keyer.key(&[cookies.as_bytes()]);
            (cookies, key)
        };
        let value_key = config
            .shared_store
            .as_ref()
            .map_or(store.value_key(), |s| s.value_key);
        let starts: Vec<(String, SessionKey)> = match &local {
            Some(renewed) => vec![next(api_cookies, renewed)],
            None => keys.iter().map(|k| (api_cookies.to_owned(), *k)).collect(),
        };
        for (cookies, key) in starts {
            let found = store.newest_stored(&value_key, key, &cookies, &next).await;
            if found.is_some() {
                return found;
            }
        }
        local
    }

    /// Whether the session of a refreshed (or grace) request was ended since it was decided,
    /// its hold on the kept result released: in this process's table always; with `store: redis`, in Redis too once the app has taken
    /// [`SHARED_END_CHECK_AFTER`] (a logout on another instance needs a round trip to land).
    pub(super) async fn ended_since_decided(&self, ctx: &mut RequestCtx) -> bool {
        let Some(key) = ctx.session else {
            return false;
        };
        if self.flights.leaving(&key, std::mem::take(&mut ctx.held)) {
            return true;
        }
        match (&self.shared, ctx.decided) {
            // Boxed: a Redis call in the answer's future would copy its size on every answer.
            (Some(store), Some(at)) if at.elapsed() >= SHARED_END_CHECK_AFTER => {
                Box::pin(store.is_ended(key)).await == Some(true)
            }
            _ => false,
        }
    }

    /// Writes an answer of the proxy's own, with the request's id.
    pub(super) async fn reply(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        answer: Box<Answer<'static>>,
    ) -> Result<()> {
        answer.with_request_id(request_id(ctx)).send(session).await
    }
}

/// What one refresh flight needs: copied only by the request that starts the flight.
struct FlightStart {
    config: Arc<RuntimeConfig>,
    client: Arc<AuthApiClient>,
    metrics: Arc<Metrics>,
    shared: Option<Arc<SharedStore>>,
    /// With a shared store, `auth_api.max_in_flight` is taken around the call itself.
    call_gate: Option<Arc<CallGate>>,
    max_in_flight: usize,
    key: SessionKey,
    refresh_token: Vec<u8>,
    api_cookies: String,
    /// What the browser sends beside the new cookies, against `downstream.max_cookie_bytes`.
    other_cookie_bytes: usize,
}

impl FlightStart {
    /// The auth API call and the minting, then the landing of the result: in this process's
    /// table, or coordinated with the other instances through the shared store.
    async fn run(mut self) -> Landing<Arc<RenewedSession>, RefreshError> {
        let shared = self.shared.take();
        let (config, api_cookies, key) = (&self.config, self.api_cookies.as_str(), self.key);
        let minting = Minting {
            other_cookie_bytes: self.other_cookie_bytes,
            ..config.minting()
        };
        // Boxed once here: the auth API exchange is a large future (Pingora's client session),
        // and the flight is moved into its task; unboxed, each refresh copied tens of KiB.
        let call = Box::pin(async {
            let _place = match &self.call_gate {
                Some(gate) => match gate.try_acquire(self.max_in_flight) {
                    Some(place) => Some(place),
                    None => return Err(RefreshError::Busy),
                },
                None => None,
            };
            let started = Instant::now();
            let result = renew(
                &self.client,
                &config.auth_api,
                &minting,
                &self.refresh_token,
                api_cookies,
            )
            .await;
            self.metrics
                .auth_api(started.elapsed(), auth_api_outcome(&result));
            result
        });
        let send = &config.auth_api.send_cookies;
        let keyer = &config.session_keyer;
        let next = |renewed: &RenewedSession| {
            Some(keyer.key(&[next_api_cookies(api_cookies, renewed, send).as_bytes()]))
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
                    api_cookies,
                    auth_timeout: config.auth_api.timeout,
                    grace: config.grace,
                };
                Box::pin(store.coordinate(flight, call, next)).await
            }
            None => land(call.await, next),
        }
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
    // Nothing to clear when the request carried none of the five cookies: a cross-site form
    // the browser sent without them must not log the user out through a 401's clear lines.
    let jar = CookieJar::from_headers(req.headers.get_all("cookie").iter().map(|v| v.as_bytes()));
    let carried = config
        .names
        .all()
        .iter()
        .any(|name| jar.get(name).is_some())
        || chunks::any_chunk(&jar, &config.names);
    if !carried {
        return Step::reply(Answer::logout(&[], location));
    }
    let clears = chunk_clears(ctx, req, &[Layout::Cleared; 5]);
    Step::reply(Answer::logout(&config.clear_cookies, location).with_cookies(clears))
}

/// The logout endpoint's answer: the five cookies cleared, and this request's chunks.
fn logged_out(ctx: &RequestCtx, req: &RequestHeader) -> Answer<'static> {
    let clears = chunk_clears(ctx, req, &[Layout::Cleared; 5]);
    Answer::logged_out(&ctx.config.clear_cookies).with_cookies(clears)
}

/// The refresh endpoint's answer: the new cookies, and the chunks they no longer use cleared.
fn refreshed(ctx: &RequestCtx, req: &RequestHeader, renewed: &RenewedSession) -> Answer<'static> {
    let mut clears = chunk_clears(ctx, req, &renewed.layout(&ctx.config.names));
    clears.extend(ctx.config.clear_host_only.iter().cloned());
    Answer::refreshed(renewed).with_cookies(clears)
}

/// The Cookie header with chunked values joined, when the request carries chunks (a scan
/// without allocation otherwise); notes in `ctx` whether it does.
fn joined_chunks(
    config: &RuntimeConfig,
    jar: &CookieJar<'_>,
    ctx: &mut RequestCtx,
) -> Option<Vec<u8>> {
    let chunked = chunks::any_chunk(jar, &config.names);
    ctx.sent_chunks = Some(chunked);
    if !chunked {
        return None;
    }
    chunks::normalise(jar, &config.names, config.max_chunks)
}

fn joined_chunk_header(config: &RuntimeConfig, jar: &CookieJar<'_>) -> Option<Vec<u8>> {
    if !chunks::any_chunk(jar, &config.names) {
        return None;
    }
    chunks::normalise(jar, &config.names, config.max_chunks)
}

/// This request's cookies that the answer's `layout` no longer uses, to clear. A request known
/// to hold no chunk needs no second look at its cookies unless a value is now chunked.
pub(super) fn chunk_clears(
    ctx: &RequestCtx,
    req: &RequestHeader,
    layout: &[Layout; 5],
) -> Vec<HeaderValue> {
    if ctx.sent_chunks == Some(false) && !chunks::clears_without_chunks(layout) {
        return Vec::new();
    }
    let config = &ctx.config;
    let jar = CookieJar::from_headers(req.headers.get_all("cookie").iter().map(|v| v.as_bytes()));
    chunks::clears_for(&config.cookie_policy, &config.names, &jar, layout)
}

fn header_value(bytes: Vec<u8>) -> Option<HeaderValue> {
    // Built from bytes that already were header values, joined with `; `; taken as they are,
    // not copied.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(bytes)).ok()
}

pub(super) fn auth_api_outcome<T>(result: &std::result::Result<T, RefreshError>) -> AuthApiOutcome {
    match result {
        Ok(_) => AuthApiOutcome::Ok,
        Err(RefreshError::AuthApi(AuthApiError::Rejected(_))) => AuthApiOutcome::Rejected,
        Err(RefreshError::AuthApi(AuthApiError::Timeout(_))) => AuthApiOutcome::Timeout,
        Err(_) => AuthApiOutcome::Failed,
    }
}
