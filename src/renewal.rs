//! One refresh, end to end: the auth API round trip, then the new eTLS tokens minted once and
//! turned into cookie values and Set-Cookie lines that every request of the flight shares
//! byte for byte.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;

use crate::auth_api::{
    ApiTokens, AuthApiClient, AuthApiError, AuthApiSettings, MAX_API_TOKEN_BYTES, UserData,
};
use crate::config::RuntimeConfig;
use crate::cookies::CookieNames;
use crate::decision::renewed_api_cookies;
use crate::flight::{AuthApiBusy, FlightLost, Landing, SessionEnded};
use crate::flight::{CallGate, SessionKey};
use crate::metrics::LogoutOutcome;
use crate::set_cookie::{CookiePolicy, InvalidLine};
use crate::tokens::{Claims, TokenKeys};

/// The result of a refresh, shared by every request of its flight and grace window, and kept
/// for the grace window: so it is stored compactly, as its Set-Cookie lines only, all slices of
/// one buffer. The cookie values are read back from the lines.
#[derive(Debug, PartialEq)]
pub struct RenewedSession {
    set_cookie: Vec<HeaderValue>,
}

impl RenewedSession {
    /// One line per cookie, in the seeds' order, appended one header each.
    pub fn set_cookie(&self) -> &[HeaderValue] {
        &self.set_cookie
    }

    /// `(name, value)` of every cookie the refresh sets, in the seeds' order.
    pub fn cookies(&self) -> impl Iterator<Item = (&str, &str)> {
        self.set_cookie.iter().filter_map(|line| {
            let pair = line.to_str().ok()?.split(';').next()?;
            pair.split_once('=')
        })
    }

    /// Builds the lines into one allocation.
    pub fn from_lines(lines: &[String]) -> Result<Self, InvalidLine> {
        let buffer = Bytes::from(lines.concat());
        let mut at = 0;
        let set_cookie = lines
            .iter()
            .map(|line| {
                let slice = buffer.slice(at..at + line.len());
                at += line.len();
                HeaderValue::from_maybe_shared(slice).map_err(|_| InvalidLine)
            })
            .collect::<Result<_, _>>()?;
        Ok(RenewedSession { set_cookie })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    AuthApi(#[from] AuthApiError),
    #[error("could not mint the new tokens: {0}")]
    Mint(String),
    #[error("the refresh task ended without an answer")]
    Lost,
    #[error("the session was ended (logout or refused by the auth API)")]
    Ended,
    #[error("auth API busy (auth_api.max_in_flight calls in flight)")]
    Busy,
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
    K: Into<Option<crate::flight::SessionKey>>,
{
    match result {
        Ok(renewed) => Landing::Renewed {
            next: next(&renewed).into(),
            value: renewed,
        },
        Err(error @ RefreshError::AuthApi(AuthApiError::Rejected(_))) => Landing::Ended(error),
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
    } = minting;
    let mint_err = |e: crate::tokens::MintError| RefreshError::Mint(e.to_string());
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
            if token.len() > MAX_API_TOKEN_BYTES {
                return Err(AuthApiError::BadAnswer(format!(
                    "user record too large for a cookie ({} bytes signed)",
                    token.len()
                ))
                .into());
            }
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
    let lines: Vec<String> = cookies
        .iter()
        .map(|(name, value)| policy.set_line(name, value))
        .collect();
    RenewedSession::from_lines(&lines).map_err(|e| RefreshError::Mint(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::tests::{NOW, keys};
    use crate::tokens::{AccessState, RefreshState, TYP_ACCESS, TYP_REFRESH, TYP_USER, TokenFault};
    use serde_json::json;

    const OLD_SESSION: &str = "theme=dark; refreshToken=api-refresh-old";

    /// `auth_api.send_cookies` with a cookie the refresh does not set, before the one it does.
    fn send() -> Vec<String> {
        vec!["theme".into(), "refreshToken".into()]
    }

    fn claims() -> Claims {
        serde_json::from_value(json!({"username": "ann"})).unwrap()
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
        let (k, names, policy) = (keys(), CookieNames::default(), CookiePolicy::default());
        let send = send();
        let m = Minting {
            keys: &k,
            names: &names,
            policy: &policy,
            send_cookies: &send,
        };
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
            k.check_access(cookies[0].1.as_bytes(), NOW),
            AccessState::Fresh
        );
        assert_eq!(cookies[2].1, "api-access");
        assert_eq!(cookies[3].1, "api-refresh");
        // etlsUser is an access-key JWT of the record, typed so it never passes as the access
        // token; each minted token carries its kind's typ.
        assert_eq!(
            k.check_access(cookies[4].1.as_bytes(), NOW),
            AccessState::Invalid(TokenFault::Type)
        );
        let typ = |token: &str| jsonwebtoken::decode_header(token).unwrap().typ;
        assert_eq!(typ(cookies[0].1).as_deref(), Some(TYP_ACCESS));
        assert_eq!(typ(cookies[1].1).as_deref(), Some(TYP_REFRESH));
        assert_eq!(typ(cookies[4].1).as_deref(), Some(TYP_USER));
        // The new refresh token is bound to the new auth API session (the request's other
        // cookie, the renewed refreshToken), never to the old one, and its sid holds no token.
        let RefreshState::Valid(binding) = k.check_refresh(cookies[1].1.as_bytes(), NOW) else {
            panic!("the new refresh token verifies");
        };
        assert!(k.bound_to(binding, "theme=dark; refreshToken=api-refresh"));
        assert!(!k.bound_to(binding, OLD_SESSION));
        assert!(!k.bound_to(binding, "refreshToken=api-refresh"));
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
        let (k, names, policy) = (keys(), CookieNames::default(), CookiePolicy::default());
        let send = send();
        let m = Minting {
            keys: &k,
            names: &names,
            policy: &policy,
            send_cookies: &send,
        };
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
            land::<Option<crate::flight::SessionKey>>(Err(rejected), |_| None),
            Landing::Ended(RefreshError::AuthApi(AuthApiError::Rejected(403)))
        ));
        for error in [
            RefreshError::AuthApi(AuthApiError::BadAnswer("HTTP 500".into())),
            RefreshError::AuthApi(AuthApiError::Timeout(std::time::Duration::from_secs(1))),
            RefreshError::Mint("x".into()),
        ] {
            assert!(matches!(
                land::<Option<crate::flight::SessionKey>>(Err(error), |_| None),
                Landing::Failed(_)
            ));
        }
    }

    #[test]
    fn oversized_user_record_is_the_auth_apis_fault() {
        let (k, names, policy) = (keys(), CookieNames::default(), CookiePolicy::default());
        let send = send();
        let m = Minting {
            keys: &k,
            names: &names,
            policy: &policy,
            send_cookies: &send,
        };
        let record: Claims = serde_json::from_value(json!({"blob": "x".repeat(5000)})).unwrap();
        let err = mint_session(
            &m,
            &claims(),
            api(Some(UserData::Record(record))),
            OLD_SESSION,
            NOW,
        )
        .unwrap_err();
        assert!(
            matches!(err, RefreshError::AuthApi(AuthApiError::BadAnswer(_))),
            "{err:?}"
        );
    }
}
