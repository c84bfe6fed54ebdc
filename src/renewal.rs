//! One refresh, end to end: the auth API round trip, then the new eTLS tokens minted once and
//! turned into cookie values and Set-Cookie lines that every request of the flight shares
//! byte for byte.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;

use crate::auth_api::{ApiTokens, AuthApiClient, AuthApiError, AuthApiSettings, UserData};
use crate::chunks::{self, Layout};
use crate::cookies::CookieNames;
use crate::flight::FlightLost;
use crate::set_cookie::{CookiePolicy, InvalidLine};
use crate::tokens::{Claims, TokenKeys};

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

    /// `(name, whole value, its lines)` per cookie.
    pub fn from_cookies(cookies: &[(&str, &str, &[String])]) -> Result<Self, InvalidLine> {
        let buffer = Bytes::from(
            cookies
                .iter()
                .flat_map(|(_, _, lines)| lines.iter().map(String::as_str))
                .collect::<String>(),
        );
        let mut text = String::new();
        let mut entries = Vec::with_capacity(cookies.len());
        let mut set_cookie = Vec::new();
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
    #[error("the refresh task ended without an answer")]
    Lost,
}

impl From<FlightLost> for RefreshError {
    fn from(_: FlightLost) -> Self {
        RefreshError::Lost
    }
}

/// What a refresh needs from the configuration.
pub struct Minting<'c> {
    pub keys: &'c TokenKeys,
    pub names: &'c CookieNames,
    pub policy: &'c CookiePolicy,
    /// `cookies.max_chunks`: the most lines one value may take.
    pub max_chunks: usize,
    /// `downstream.max_cookie_bytes`: the new cookies must fit in what the proxy accepts back.
    pub max_cookie_bytes: usize,
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
    mint_session(minting, &claims, tokens, crate::unix_now()).map(Arc::new)
}

/// Seed 000's minting, with seed 002's user token: new `accessTokenEtls` and
/// `refreshTokenEtls` carrying the old refresh token's claims, the auth API's tokens as they
/// came, and `etlsUser` signed from `userData` (or taken as is when it is a string).
pub fn mint_session(
    minting: &Minting<'_>,
    claims: &Claims,
    api: ApiTokens,
    now: u64,
) -> Result<RenewedSession, RefreshError> {
    let Minting {
        keys,
        names,
        policy,
        max_chunks,
        max_cookie_bytes,
    } = minting;
    let mint_err = |e: crate::tokens::MintError| RefreshError::Mint(e.to_string());
    let mut cookies = vec![
        (
            names.access_etls.clone(),
            keys.mint_access(claims, now).map_err(mint_err)?,
        ),
        (
            names.refresh_etls.clone(),
            keys.mint_refresh(claims, now).map_err(mint_err)?,
        ),
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
    // Values too large for one cookie are split into chunks, bounded by `cookies.max_chunks`;
    // the auth API's values (and the user record) over the bound are its answer's fault.
    let mut lines = Vec::with_capacity(cookies.len());
    for (i, (name, value)) in cookies.iter().enumerate() {
        if i < 2 && value.len() > crate::tokens::MAX_TOKEN_BYTES {
            // The proxy would refuse its own token on the next request.
            return Err(RefreshError::Mint(format!(
                "`{name}` is over {} bytes",
                crate::tokens::MAX_TOKEN_BYTES
            )));
        }
        let split = chunks::set_lines(policy, name, value, *max_chunks).map_err(|e| {
            let why = format!("`{name}` {e}");
            match i {
                0 | 1 => RefreshError::Mint(why),
                _ => AuthApiError::BadAnswer(why).into(),
            }
        })?;
        lines.push(split);
    }
    // What the browser sends back must pass `downstream.max_cookie_bytes`, or every later
    // request of the user would be refused with 431.
    let total: usize = lines
        .iter()
        .flatten()
        .map(|line| line.split(';').next().unwrap_or_default().len() + 2)
        .sum();
    if total > *max_cookie_bytes + 2 {
        return Err(AuthApiError::BadAnswer(format!(
            "the new cookies take {} bytes, over downstream.max_cookie_bytes ({max_cookie_bytes})",
            total - 2
        ))
        .into());
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
    use crate::tokens::AccessState;
    use crate::tokens::tests::{NOW, keys};
    use serde_json::json;

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
        let m = Minting {
            keys: &k,
            names: &names,
            policy: &policy,
            max_chunks: 8,
            max_cookie_bytes: 16 * 1024,
        };
        let record: Claims = serde_json::from_value(json!({"id": 1, "role": "admin"})).unwrap();
        let s = mint_session(&m, &claims(), api(Some(UserData::Record(record))), NOW).unwrap();
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
        // etlsUser is an access-key JWT of the record.
        assert_eq!(
            k.check_access(cookies[4].1.as_bytes(), NOW),
            AccessState::Fresh
        );
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
        let m = Minting {
            keys: &k,
            names: &names,
            policy: &policy,
            max_chunks: 8,
            max_cookie_bytes: 16 * 1024,
        };
        let s = mint_session(
            &m,
            &claims(),
            api(Some(UserData::Token("u.t.v".into()))),
            NOW,
        )
        .unwrap();
        assert_eq!(s.cookies().nth(4), Some(("etlsUser", "u.t.v")));
        let s = mint_session(&m, &claims(), api(None), NOW).unwrap();
        assert_eq!(s.cookies().count(), 4);
        assert_eq!(s.set_cookie().len(), 4);
    }

    #[test]
    fn large_values_are_chunked_within_the_bounds() {
        let (k, names, policy) = (keys(), CookieNames::default(), CookiePolicy::default());
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
            let m = Minting {
                keys: &k,
                names: &names,
                policy: &policy,
                max_chunks,
                max_cookie_bytes,
            };
            let user = answer.user.clone();
            let expect_refresh = answer.refresh_token.clone();
            match (mint_session(&m, &claims(), answer, NOW), want) {
                (Ok(s), Ok(layout)) => {
                    let got = s.layout(&names);
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
                    assert!(
                        matches!(e, RefreshError::AuthApi(AuthApiError::BadAnswer(_))),
                        "{what}: {e:?}"
                    );
                    let e = e.to_string();
                    assert!(e.contains(text), "{what}: {e}");
                    assert!(!e.contains("xxxx") && !e.contains("rrrr"), "{what}: {e}");
                }
                (got, want) => panic!("{what}: {got:?} {want:?}"),
            }
        }
    }
}
