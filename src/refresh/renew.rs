//! One refresh, end to end: the auth API round trip, then the new eTLS tokens minted once and
//! turned into cookie values and Set-Cookie lines that every request of the flight shares
//! byte for byte.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;

use crate::config::RuntimeConfig;
use crate::ops::metrics::LogoutOutcome;
use crate::refresh::auth_api::{ApiTokens, AuthApiClient, AuthApiError, AuthApiSettings, UserData};
use crate::refresh::flight::{AuthApiBusy, FlightLost, Landing, SessionEnded};
use crate::refresh::flight::{CallGate, SessionKey};
use crate::session::chunks::{self, Layout};
use crate::session::cookies::CookieNames;
use crate::session::decision::renewed_api_cookies;
use crate::session::set_cookie::{CookiePolicy, InvalidLine};
use crate::session::tokens::{Claims, TokenKeys};

/// The result of a refresh, shared by every request of its flight and grace window, and kept
/// for the grace window: so it is stored compactly, as its Set-Cookie lines (all slices of one
/// buffer) and the cookies' names and whole values (one string), a value split into chunks
/// being kept joined.
#[derive(Debug, PartialEq)]
pub struct RenewedSession {
    set_cookie: Vec<HeaderValue>,
    text: Box<str>,
    entries: Vec<Entry>,
}

/// One cookie: its name and whole value in `text`, and how many lines it takes (more than one
/// when chunked).
#[derive(Debug, PartialEq)]
struct Entry {
    name: Range<usize>,
    value: Range<usize>,
    lines: usize,
}

impl RenewedSession {
    /// Every line, in the seeds' order (a chunked value's chunks in index order), appended one
    /// header each.
    pub fn set_cookie(&self) -> &[HeaderValue] {
        &self.set_cookie
    }

    /// `(name, whole value)` of every cookie the refresh sets, in the seeds' order.
    pub fn cookies(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|e| (&self.text[e.name.clone()], &self.text[e.value.clone()]))
    }

    /// `(name, its lines)` of every cookie the refresh sets.
    pub fn cookie_lines(&self) -> impl Iterator<Item = (&str, &[HeaderValue])> {
        let mut at = 0;
        self.entries.iter().map(move |e| {
            let lines = &self.set_cookie[at..at + e.lines];
            at += e.lines;
            (&self.text[e.name.clone()], lines)
        })
    }

    /// What this refresh does with each of the five names, for the per-request clear lines.
    pub fn layout(&self, names: &CookieNames) -> [Layout; 5] {
        names.all().map(|name| {
            match self
                .entries
                .iter()
                .find(|e| &self.text[e.name.clone()] == name)
            {
                None => Layout::Untouched,
                Some(e) if e.lines > 1 => Layout::Chunks(e.lines),
                Some(_) => Layout::Plain,
            }
        })
    }

    /// Builds the lines, one cookie each, into one allocation.
    pub fn from_lines(lines: &[String]) -> Result<Self, InvalidLine> {
        let cookies: Vec<(&str, &str, &[String])> = lines
            .iter()
            .map(|line| {
                let pair = line.split(';').next().unwrap_or_default();
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (name, value, std::slice::from_ref(line))
            })
            .collect();
        Self::from_cookies(&cookies)
    }

    /// One record per cookie, its lines joined by `\r` (which no header value holds; the
    /// shared store's seal already separates records by `\n`): what a store outside the
    /// process keeps, so a chunked value comes back as one cookie.
    pub fn records(&self) -> Vec<Vec<u8>> {
        self.cookie_lines()
            .map(|(_, lines)| {
                let lines: Vec<&[u8]> = lines.iter().map(HeaderValue::as_bytes).collect();
                lines.join(&b'\r')
            })
            .collect()
    }

    /// The session [`RenewedSession::records`] wrote: a record of several lines is one value in
    /// chunks `N.0`, `N.1`, ..., named `N` and joined.
    pub fn from_records(records: &[String]) -> Result<Self, InvalidLine> {
        let pair = |line: &str| {
            let pair = line.split(';').next().unwrap_or_default();
            pair.split_once('=')
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
        };
        let mut cookies = Vec::with_capacity(records.len());
        for record in records {
            let lines: Vec<String> = record.split('\r').map(str::to_owned).collect();
            let (first, mut value) = pair(&lines[0]).ok_or(InvalidLine)?;
            let name = if lines.len() == 1 {
                first
            } else {
                let base = first.strip_suffix(".0").ok_or(InvalidLine)?.to_owned();
                for (i, line) in lines.iter().enumerate().skip(1) {
                    let (name, part) = pair(line).ok_or(InvalidLine)?;
                    if name != crate::session::chunks::chunk_name(&base, i) {
                        return Err(InvalidLine);
                    }
                    value.push_str(&part);
                }
                base
            };
            cookies.push((name, value, lines));
        }
        let parts: Vec<(&str, &str, &[String])> = cookies
            .iter()
            .map(|(n, v, l)| (n.as_str(), v.as_str(), l.as_slice()))
            .collect();
        Self::from_cookies(&parts)
    }

    /// `(name, whole value, its lines)` per cookie.
    pub fn from_cookies(cookies: &[(&str, &str, &[String])]) -> Result<Self, InvalidLine> {
        // Every buffer sized once: a refresh builds this for each session.
        let all_lines = || cookies.iter().flat_map(|(_, _, lines)| lines.iter());
        let mut joined = String::with_capacity(all_lines().map(String::len).sum());
        all_lines().for_each(|line| joined.push_str(line));
        let buffer = Bytes::from(joined);
        let mut text =
            String::with_capacity(cookies.iter().map(|(n, v, _)| n.len() + v.len()).sum());
        let mut entries = Vec::with_capacity(cookies.len());
        let mut set_cookie = Vec::with_capacity(all_lines().count());
        let mut at = 0;
        for (name, value, lines) in cookies {
            let start = text.len();
            text.push_str(name);
            text.push_str(value);
            entries.push(Entry {
                name: start..start + name.len(),
                value: start + name.len()..text.len(),
                lines: lines.len(),
            });
            for line in *lines {
                let slice = buffer.slice(at..at + line.len());
                at += line.len();
                set_cookie.push(HeaderValue::from_maybe_shared(slice).map_err(|_| InvalidLine)?);
            }
        }
        Ok(RenewedSession {
            set_cookie,
            text: text.into_boxed_str(),
            entries,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    AuthApi(#[from] AuthApiError),
    #[error("could not mint the new tokens: {0}")]
    Mint(String),
    /// The auth API renewed the session (and may have rotated its refresh token), but the
    /// answer does not fit in the cookies the browser can carry back: the session is lost
    /// either way, so it ends as a logout does instead of leaving the browser a dead token.
    #[error("the renewed session does not fit in cookies: {0}")]
    Uncarriable(String),
    #[error("the refresh task ended without an answer")]
    Lost,
    #[error("the session was ended (logout or refused by the auth API)")]
    Ended,
    #[error("auth API busy (auth_api.max_in_flight calls in flight)")]
    Busy,
}

impl RefreshError {
    /// A rejection by the auth API, or a renewal the browser cannot carry: either way the
    /// session's refresh token is no use any more, and its whole chain ends as a logout ends it.
    pub fn ends_session(&self) -> bool {
        matches!(
            self,
            RefreshError::AuthApi(AuthApiError::Rejected(_)) | RefreshError::Uncarriable(_)
        )
    }
}

impl From<FlightLost> for RefreshError {
    fn from(_: FlightLost) -> Self {
        RefreshError::Lost
    }
}

impl From<SessionEnded> for RefreshError {
    fn from(_: SessionEnded) -> Self {
        RefreshError::Ended
    }
}

impl From<AuthApiBusy> for RefreshError {
    fn from(_: AuthApiBusy) -> Self {
        RefreshError::Busy
    }
}

/// What a refresh does to its session: a success is kept and chained to `next` (the key of the
/// renewed cookies, see [`next_api_cookies`]); a rejection (400/401/403) ends the session;
/// any other failure leaves it for the next request to try again.
pub fn land<K>(
    result: Result<Arc<RenewedSession>, RefreshError>,
    next: impl FnOnce(&RenewedSession) -> K,
) -> Landing<Arc<RenewedSession>, RefreshError>
where
    K: Into<Option<crate::refresh::flight::SessionKey>>,
{
    match result {
        Ok(renewed) => Landing::Renewed {
            next: next(&renewed).into(),
            value: renewed,
        },
        Err(error) if error.ends_session() => Landing::Ended(error),
        Err(error) => Landing::Failed(error),
    }
}

/// The auth API cookies the browser carries once it has stored `renewed` (see
/// [`renewed_api_cookies`]): so it hashes to the key that browser's next request gets.
pub fn next_api_cookies(
    api_cookies: &str,
    renewed: &RenewedSession,
    send_cookies: &[String],
) -> String {
    let pairs: Vec<(&str, &str)> = renewed.cookies().collect();
    renewed_api_cookies(send_cookies, api_cookies, &pairs)
}

/// What a refresh needs from the configuration.
pub struct Minting<'c> {
    pub keys: &'c TokenKeys,
    pub names: &'c CookieNames,
    pub policy: &'c CookiePolicy,
    /// `auth_api.send_cookies`: what the new refresh token is bound to.
    pub send_cookies: &'c [String],
    /// `cookies.max_chunks`: the most lines one value may take.
    pub max_chunks: usize,
    /// `downstream.max_cookie_bytes`: the new cookies must fit in what the proxy accepts back.
    pub max_cookie_bytes: usize,
    /// The leader request's cookies other than the five (and their chunks): the browser sends
    /// them back beside the new ones.
    pub other_cookie_bytes: usize,
}

/// Calls the auth API with the session's cookies, then mints the new session carrying the
/// claims of `refresh_token` (already verified by the decision).
pub async fn renew(
    client: &AuthApiClient,
    api: &AuthApiSettings,
    minting: &Minting<'_>,
    refresh_token: &[u8],
    api_cookies: &str,
) -> Result<Arc<RenewedSession>, RefreshError> {
    let claims = minting
        .keys
        .refresh_claims(refresh_token)
        .map_err(|fault| RefreshError::Mint(format!("refresh token claims: {fault:?}")))?;
    let tokens = client.refresh(api, api_cookies).await?;
    mint_session(minting, &claims, tokens, api_cookies, crate::unix_now()).map(Arc::new)
}

/// The backend logout (`auth_api.logout_url`, when set), as oauth2-proxy's
/// `backend_logout_url`: sent with the session's auth API cookies, answered before the logout
/// is, so replayed cookies already find the session gone at the auth API. It holds a place of
/// the gate like a refresh (none free: not sent, `Busy`), runs in a task of its own (a browser
/// that leaves does not cancel it) and ends within `auth_api.timeout_ms`. It never fails the
/// logout: the outcome is for the metrics, and the log line names the session's short key,
/// never a cookie.
pub async fn backend_logout(
    client: &Arc<AuthApiClient>,
    gate: &Arc<CallGate>,
    config: &Arc<RuntimeConfig>,
    api_cookies: String,
    session: SessionKey,
) -> LogoutOutcome {
    let Some(permit) = gate.try_acquire(config.auth_api.max_in_flight) else {
        log::warn!(
            "session {}: backend logout not sent, auth API busy ({} calls in flight)",
            session.short(),
            config.auth_api.max_in_flight
        );
        return LogoutOutcome::Busy;
    };
    let (client, task_config) = (Arc::clone(client), Arc::clone(config));
    let call = tokio::spawn(async move {
        let _permit = permit;
        client.logout(&task_config.auth_api, &api_cookies).await
    });
    let (outcome, error) = match call.await {
        Ok(Ok(())) => (LogoutOutcome::Ok, None),
        Ok(Err(error @ AuthApiError::Timeout(_))) => {
            (LogoutOutcome::Timeout, Some(error.to_string()))
        }
        Ok(Err(error)) => (LogoutOutcome::Failed, Some(error.to_string())),
        Err(_) => (
            LogoutOutcome::Failed,
            Some("the call's task ended without an answer".into()),
        ),
    };
    match error {
        None => log::debug!("session {}: backend logout done", session.short()),
        Some(error) => log::warn!(
            "session {}: backend logout failed ({error}); the browser is logged out anyway",
            session.short()
        ),
    }
    outcome
}

/// Seed 000's minting, with seed 002's user token: new `accessTokenEtls` and
/// `refreshTokenEtls` carrying the old refresh token's claims, the auth API's tokens as they
/// came, and `etlsUser` signed from `userData` (or taken as is when it is a string). The new
/// `refreshTokenEtls` is bound to the new auth API session: `api_cookies` (what this refresh
/// sent) with the values this refresh sets.
pub fn mint_session(
    minting: &Minting<'_>,
    claims: &Claims,
    api: ApiTokens,
    api_cookies: &str,
    now: u64,
) -> Result<RenewedSession, RefreshError> {
    let Minting {
        keys,
        names,
        policy,
        send_cookies,
        max_chunks,
        max_cookie_bytes,
        other_cookie_bytes,
    } = minting;
    let mint_err = |e: crate::session::tokens::MintError| RefreshError::Mint(e.to_string());
    let mut cookies = vec![
        (
            names.access_etls.clone(),
            keys.mint_access(claims, now).map_err(mint_err)?,
        ),
        // The refresh token, bound once every other value is known.
        (names.refresh_etls.clone(), String::new()),
        (names.access_api.clone(), api.access_token),
        (names.refresh_api.clone(), api.refresh_token),
    ];
    match api.user {
        Some(UserData::Record(record)) => {
            let token = keys.mint_user(&record, now).map_err(mint_err)?;
            cookies.push((names.user.clone(), token));
        }
        Some(UserData::Token(token)) => cookies.push((names.user.clone(), token)),
        None => {}
    }
    let renewed: Vec<(&str, &str)> = cookies
        .iter()
        .filter(|(name, _)| *name != names.refresh_etls)
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let bound_to = renewed_api_cookies(send_cookies, api_cookies, &renewed);
    cookies[1].1 = keys
        .mint_refresh(claims, &bound_to, now)
        .map_err(mint_err)?;
    // Values too large for one cookie are split into chunks, bounded by `cookies.max_chunks`;
    // the auth API's values (and the user record) over the bound are its answer's fault.
    let mut lines = Vec::with_capacity(cookies.len());
    for (i, (name, value)) in cookies.iter().enumerate() {
        if i < 2 && value.len() > crate::session::tokens::MAX_TOKEN_BYTES {
            // The proxy would refuse its own token on the next request.
            return Err(RefreshError::Uncarriable(format!(
                "`{name}` is over {} bytes",
                crate::session::tokens::MAX_TOKEN_BYTES
            )));
        }
        let split = chunks::set_lines(policy, name, value, *max_chunks)
            .map_err(|e| RefreshError::Uncarriable(format!("`{name}` {e}")))?;
        lines.push(split);
    }
    // What the browser sends back must pass `downstream.max_cookie_bytes`, or every later
    // request of the user would be refused with 431.
    let total: usize = lines
        .iter()
        .flatten()
        .map(|line| line.split(';').next().unwrap_or_default().len() + 2)
        .sum();
    if total + other_cookie_bytes > *max_cookie_bytes + 2 {
        return Err(RefreshError::Uncarriable(format!(
            "the new cookies take {} bytes, with the request's other cookies ({other_cookie_bytes} bytes) over downstream.max_cookie_bytes ({max_cookie_bytes})",
            total - 2
        )));
    }
    let parts: Vec<(&str, &str, &[String])> = cookies
        .iter()
        .zip(&lines)
        .map(|((name, value), lines)| (name.as_str(), value.as_str(), lines.as_slice()))
        .collect();
    RenewedSession::from_cookies(&parts).map_err(|e| RefreshError::Mint(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::tokens::{
        AccessState, RefreshState, TYP_ACCESS, TYP_REFRESH, TYP_USER, TokenFault,
    };
    use crate::testkit::NOW;
    use crate::testkit::tokens::keys;
    use serde_json::json;

    const OLD_SESSION: &str = "theme=dark; refreshToken=api-refresh-old";

    /// `auth_api.send_cookies` with a cookie the refresh does not set, before the one it does.
    fn send() -> Vec<String> {
        vec!["theme".into(), "refreshToken".into()]
    }

    fn claims() -> Claims {
        serde_json::from_value(json!({"username": "ann"})).unwrap()
    }

    /// What minting borrows: the test kit's keys, the default names and policy, [`send`].
    struct Fixture {
        keys: TokenKeys,
        names: CookieNames,
        policy: CookiePolicy,
        send: Vec<String>,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                keys: keys(),
                names: CookieNames::default(),
                policy: CookiePolicy::default(),
                send: send(),
            }
        }

        fn minting(&self, max_chunks: usize, max_cookie_bytes: usize) -> Minting<'_> {
            Minting {
                keys: &self.keys,
                names: &self.names,
                policy: &self.policy,
                send_cookies: &self.send,
                max_chunks,
                max_cookie_bytes,
                other_cookie_bytes: 0,
            }
        }
    }

    fn api(user: Option<UserData>) -> ApiTokens {
        ApiTokens {
            access_token: "api-access".into(),
            refresh_token: "api-refresh".into(),
            user,
        }
    }

    #[test]
    fn mints_five_cookies_with_a_signed_user_record() {
        let fixture = Fixture::new();
        let m = fixture.minting(8, 16 * 1024);
        let record: Claims = serde_json::from_value(json!({"id": 1, "role": "admin"})).unwrap();
        let s = mint_session(
            &m,
            &claims(),
            api(Some(UserData::Record(record))),
            OLD_SESSION,
            NOW,
        )
        .unwrap();
        let cookies: Vec<(&str, &str)> = s.cookies().collect();
        let names_set: Vec<&str> = cookies.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names_set,
            [
                "accessTokenEtls",
                "refreshTokenEtls",
                "accessToken",
                "refreshToken",
                "etlsUser"
            ]
        );
        assert_eq!(
            fixture.keys.check_access(cookies[0].1.as_bytes(), NOW),
            AccessState::Fresh
        );
        assert_eq!(cookies[2].1, "api-access");
        assert_eq!(cookies[3].1, "api-refresh");
        // etlsUser is an access-key JWT of the record, typed so it never passes as the access
        // token; each minted token carries its kind's typ.
        assert_eq!(
            fixture.keys.check_access(cookies[4].1.as_bytes(), NOW),
            AccessState::Invalid(TokenFault::Type)
        );
        let typ = |token: &str| jsonwebtoken::decode_header(token).unwrap().typ;
        assert_eq!(typ(cookies[0].1).as_deref(), Some(TYP_ACCESS));
        assert_eq!(typ(cookies[1].1).as_deref(), Some(TYP_REFRESH));
        assert_eq!(typ(cookies[4].1).as_deref(), Some(TYP_USER));
        // The new refresh token is bound to the new auth API session (the request's other
        // cookie, the renewed refreshToken), never to the old one, and its sid holds no token.
        let RefreshState::Valid(binding) = fixture.keys.check_refresh(cookies[1].1.as_bytes(), NOW)
        else {
            panic!("the new refresh token verifies");
        };
        assert!(
            fixture
                .keys
                .bound_to(binding, "theme=dark; refreshToken=api-refresh")
        );
        assert!(!fixture.keys.bound_to(binding, OLD_SESSION));
        assert!(!fixture.keys.bound_to(binding, "refreshToken=api-refresh"));
        let payload: serde_json::Value = {
            use base64::Engine;
            let part = cookies[1].1.split('.').nth(1).unwrap();
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap();
            serde_json::from_slice(&bytes).unwrap()
        };
        assert_eq!(payload["username"], "ann");
        let sid = payload["sid"].as_str().unwrap();
        assert_eq!(sid.len(), 22);
        assert!(!sid.contains("api-refresh") && !sid.contains("dark"));
        assert_eq!(s.set_cookie().len(), 5);
        for (line, (name, value)) in s.set_cookie().iter().zip(&cookies) {
            let line = line.to_str().unwrap();
            assert!(line.starts_with(&format!("{name}={value}; ")), "{line}");
            assert!(
                line.contains("HttpOnly") && line.contains("Max-Age=43200"),
                "{line}"
            );
        }
    }

    #[test]
    fn string_user_is_kept_and_no_user_sets_four() {
        let fixture = Fixture::new();
        let m = fixture.minting(8, 16 * 1024);
        let s = mint_session(
            &m,
            &claims(),
            api(Some(UserData::Token("u.t.v".into()))),
            OLD_SESSION,
            NOW,
        )
        .unwrap();
        assert_eq!(s.cookies().nth(4), Some(("etlsUser", "u.t.v")));
        let s = mint_session(&m, &claims(), api(None), OLD_SESSION, NOW).unwrap();
        assert_eq!(s.cookies().count(), 4);
        assert_eq!(s.set_cookie().len(), 4);
    }

    #[test]
    fn records_bring_a_chunked_session_back_whole() {
        let fixture = Fixture::new();
        let m = fixture.minting(8, 32 * 1024);
        let record: Claims = serde_json::from_value(json!({"blob": "x".repeat(9000)})).unwrap();
        let answer = ApiTokens {
            refresh_token: "r".repeat(4500),
            ..api(Some(UserData::Record(record)))
        };
        let s = mint_session(&m, &claims(), answer, OLD_SESSION, NOW).unwrap();
        assert!(matches!(s.layout(&fixture.names)[4], Layout::Chunks(_)));
        let text = |records: Vec<Vec<u8>>| -> Vec<String> {
            records
                .into_iter()
                .map(|r| String::from_utf8(r).unwrap())
                .collect()
        };
        // The shared store's seal separates records by `\n`: none may hold one.
        assert!(s.records().iter().all(|r| !r.contains(&b'\n')));
        let back = RenewedSession::from_records(&text(s.records())).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.cookies().nth(3).unwrap().1, "r".repeat(4500));
        // Records that are not what `records` writes are refused, never misread.
        for bad in [
            vec!["no pair here".to_owned()],
            vec!["etlsUser.1=a; Path=/\retlsUser.0=b; Path=/".to_owned()],
            vec!["etlsUser=a; Path=/\retlsUser.1=b; Path=/".to_owned()],
        ] {
            assert!(RenewedSession::from_records(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn renewed_cookies_replace_what_the_refresh_set_and_keep_the_rest() {
        let lines = [
            "accessToken=new-a; Path=/".to_string(),
            "refreshToken=new-r; Path=/".to_string(),
        ];
        let renewed = RenewedSession::from_lines(&lines).unwrap();
        let send = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let cases: [(&str, &[&str], &str); 4] = [
            ("refreshToken=old", &["refreshToken"], "refreshToken=new-r"),
            (
                "refreshToken=old; deviceId=d1",
                &["refreshToken", "deviceId"],
                "refreshToken=new-r; deviceId=d1",
            ),
            // A name the refresh sets but the request lacked is what the browser will send.
            (
                "deviceId=d1",
                &["deviceId", "refreshToken"],
                "deviceId=d1; refreshToken=new-r",
            ),
            ("sid=s", &["sid"], "sid=s"),
        ];
        for (sent, names, want) in cases {
            assert_eq!(
                next_api_cookies(sent, &renewed, &send(names)),
                want,
                "{sent}"
            );
        }
    }

    #[test]
    fn a_rejection_ends_the_session_other_failures_do_not() {
        let rejected = RefreshError::AuthApi(AuthApiError::Rejected(403));
        assert!(matches!(
            land::<Option<crate::refresh::flight::SessionKey>>(Err(rejected), |_| None),
            Landing::Ended(RefreshError::AuthApi(AuthApiError::Rejected(403)))
        ));
        for error in [
            RefreshError::AuthApi(AuthApiError::BadAnswer("HTTP 500".into())),
            RefreshError::AuthApi(AuthApiError::Timeout(std::time::Duration::from_secs(1))),
            RefreshError::Mint("x".into()),
        ] {
            assert!(matches!(
                land::<Option<crate::refresh::flight::SessionKey>>(Err(error), |_| None),
                Landing::Failed(_)
            ));
        }
    }

    #[test]
    fn large_values_are_chunked_within_the_bounds() {
        let fixture = Fixture::new();
        let record = |n: usize| -> Option<UserData> {
            Some(UserData::Record(
                serde_json::from_value(json!({"blob": "x".repeat(n)})).unwrap(),
            ))
        };
        let big_api = |n: usize| ApiTokens {
            refresh_token: "r".repeat(n),
            ..api(None)
        };
        // (what, answer, max_chunks, max_cookie_bytes, layout of accessToken, refreshToken,
        // etlsUser, or the error's text)
        type Case = (
            &'static str,
            ApiTokens,
            usize,
            usize,
            Result<[Layout; 3], &'static str>,
        );
        let cases: Vec<Case> = vec![
            ("small", api(record(10)), 8, 16384, Ok([Layout::Plain; 3])),
            (
                "user record of 5 KB",
                api(record(5000)),
                8,
                16384,
                Ok([Layout::Plain, Layout::Plain, Layout::Chunks(2)]),
            ),
            (
                "user record of 9 KB",
                api(record(9000)),
                8,
                16384,
                Ok([Layout::Plain, Layout::Plain, Layout::Chunks(4)]),
            ),
            (
                "refresh token of 4.5 KB",
                big_api(4500),
                8,
                16384,
                Ok([Layout::Plain, Layout::Chunks(2), Layout::Untouched]),
            ),
            (
                "over max_chunks",
                api(record(9000)),
                2,
                16384,
                Err(
                    "`etlsUser` needs 4 cookies of at most 4096 bytes, over cookies.max_chunks (2)",
                ),
            ),
            (
                "chunking off",
                big_api(4500),
                1,
                16384,
                Err(
                    "`refreshToken` needs 2 cookies of at most 4096 bytes, over cookies.max_chunks (1)",
                ),
            ),
            (
                "over max_cookie_bytes",
                api(record(9000)),
                8,
                8192,
                Err("over downstream.max_cookie_bytes (8192)"),
            ),
        ];
        for (what, answer, max_chunks, max_cookie_bytes, want) in cases {
            let m = fixture.minting(max_chunks, max_cookie_bytes);
            let user = answer.user.clone();
            let expect_refresh = answer.refresh_token.clone();
            match (mint_session(&m, &claims(), answer, OLD_SESSION, NOW), want) {
                (Ok(s), Ok(layout)) => {
                    let got = s.layout(&fixture.names);
                    assert_eq!(&got[2..], &layout, "{what}");
                    assert_eq!(&got[..2], &[Layout::Plain; 2], "{what}");
                    let values: Vec<(&str, &str)> = s.cookies().collect();
                    assert_eq!(values[3].1, expect_refresh, "{what}");
                    if user.is_some() {
                        // The user token is the app's to verify, whatever its size.
                        let token = values[4].1;
                        assert!(token.starts_with("eyJ") && token.matches('.').count() == 2);
                    }
                    let lines: usize = s.cookie_lines().map(|(_, l)| l.len()).sum();
                    assert_eq!(lines, s.set_cookie().len(), "{what}");
                    for line in s.set_cookie() {
                        assert!(line.len() <= chunks::MAX_LINE_BYTES, "{what}");
                    }
                    for (name, lines) in s.cookie_lines() {
                        let joined: String = lines
                            .iter()
                            .map(|l| {
                                let pair = l.to_str().unwrap().split(';').next().unwrap();
                                pair.split_once('=').unwrap().1.to_owned()
                            })
                            .collect();
                        let whole = s.cookies().find(|(n, _)| *n == name).unwrap().1;
                        assert_eq!(joined, whole, "{what} {name}");
                    }
                }
                (Err(e), Err(text)) => {
                    assert!(matches!(e, RefreshError::Uncarriable(_)), "{what}: {e:?}");
                    assert!(e.ends_session(), "{what}");
                    let e = e.to_string();
                    assert!(e.contains(text), "{what}: {e}");
                    assert!(!e.contains("xxxx") && !e.contains("rrrr"), "{what}: {e}");
                }
                (got, want) => panic!("{what}: {got:?} {want:?}"),
            }
        }
    }
}
