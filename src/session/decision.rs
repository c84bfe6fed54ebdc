//! The request decision: from a request's cookies to forward, refresh or refuse.
//!
//! Plain function over plain types: the glue hands in the cookies and the clock, and acts on the
//! verdict. The signature of the access token is checked before anything else, so only a token
//! we issued ever leads to a refresh. A refresh token refreshes only together with the auth API
//! session it was minted for (its `sid`): checked here, before any auth API call and before the
//! flight table (so before every grace hit) is consulted.

use crate::session::cookies::{CookieJar, CookieNames, is_cookie_octets};
use crate::session::tokens::{
    AccessState, Binding, RefreshState, TokenFault, TokenKeys, UnboundRefresh,
};

/// What the decision needs from the configuration.
pub struct SessionPolicy<'c> {
    pub names: &'c CookieNames,
    pub keys: &'c TokenKeys,
    /// Browser cookies sent to the auth API (and hashed into the session key).
    pub send_cookies: &'c [String],
}

#[derive(Debug, PartialEq)]
pub enum Verdict<'a> {
    /// Forward to the app. `keep_access` names the one access token value to forward when the
    /// browser sent several (the app must never see two).
    Forward {
        keep_access: Option<&'a [u8]>,
    },
    Refresh(RefreshPlan<'a>),
    Refuse(Refusal),
}

#[derive(Debug, PartialEq)]
pub struct RefreshPlan<'a> {
    /// The verified refresh token; its claims are carried into the new tokens.
    pub refresh_token: &'a [u8],
    /// `name=value; ...` of `send_cookies`, as seed 002 sends them to the auth API: what
    /// identifies the session there, so also what the session key is derived from.
    pub api_cookies: String,
    /// Refresh-ahead: the access token still passes, so a failing auth API must not fail the
    /// request. Holds what `Forward` would have held.
    pub fallback: Option<Option<&'a [u8]>>,
    /// The refresh token carries no binding (old routes), let through by
    /// `tokens.unbound_refresh: allow`: counted, and kept apart in the flight table.
    pub unbound: bool,
}

/// Why the session is over; every refusal is answered with the logout response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NoSession,
    AccessInvalid(TokenFault),
    RefreshMissing,
    RefreshExpired,
    RefreshInvalid(TokenFault),
    /// None of `auth_api.send_cookies` came with the request: nothing to refresh with.
    NoApiSession,
    /// The auth API refused the refresh token.
    AuthApiRejected,
    /// The session was ended (logout, or the auth API refused it) within the grace window.
    SessionEnded,
    /// The refresh token is bound to another auth API session than the cookies sent with it.
    SessionMismatch,
    /// The refresh token carries no binding and `tokens.unbound_refresh` is `refuse`.
    RefreshUnbound,
    /// The auth API renewed the session, but the new cookies exceed `cookies.max_chunks` or
    /// `downstream.max_cookie_bytes`.
    SessionTooLarge,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoSession => "no_session",
            Refusal::AccessInvalid(_) => "access_invalid",
            Refusal::RefreshMissing => "refresh_missing",
            Refusal::RefreshExpired => "refresh_expired",
            Refusal::RefreshInvalid(_) => "refresh_invalid",
            Refusal::NoApiSession => "no_api_session",
            Refusal::AuthApiRejected => "auth_api_rejected",
            Refusal::SessionEnded => "session_ended",
            Refusal::SessionMismatch => "session_mismatch",
            Refusal::RefreshUnbound => "refresh_unbound",
            Refusal::SessionTooLarge => "session_too_large",
        }
    }
}

/// Why a refresh is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// An ordinary request: refresh only when the access token is missing, expired or due.
    Request,
    /// The refresh endpoint: always refresh, whatever the access token says.
    RefreshEndpoint,
}

pub fn assess<'a>(
    jar: &CookieJar<'a>,
    policy: &SessionPolicy<'_>,
    now: u64,
    purpose: Purpose,
) -> Verdict<'a> {
    let names = policy.names;
    let mut fallback = None;
    if purpose == Purpose::Request {
        let access = best_access(jar, policy, now);
        if access.is_none() && jar.get(&names.refresh_etls).is_none() {
            return Verdict::Refuse(Refusal::NoSession);
        }
        match access {
            Some(Best {
                state: AccessState::Fresh,
                value,
                duplicated,
            }) => {
                return Verdict::Forward {
                    keep_access: duplicated.then_some(value),
                };
            }
            Some(Best {
                state: AccessState::Invalid(fault),
                ..
            }) => {
                return Verdict::Refuse(Refusal::AccessInvalid(fault));
            }
            Some(Best {
                state: AccessState::Due,
                value,
                duplicated,
            }) => {
                fallback = Some(duplicated.then_some(value));
            }
            Some(Best {
                state: AccessState::Expired,
                ..
            })
            | None => {}
        }
    }
    let refuse = |refusal| match fallback {
        Some(keep_access) => Verdict::Forward { keep_access },
        None => Verdict::Refuse(refusal),
    };
    let mut api_cookies = api_cookie_header(jar, policy.send_cookies);
    let (refresh_token, binding) = match valid_refresh(jar, policy, &api_cookies, now) {
        Ok(found) => found,
        Err(refusal) => return refuse(refusal),
    };
    // An auth API cookie sent twice (a stale one left at another Path or Domain): the values
    // the refresh token is bound to, whichever comes first.
    let (refresh_token, binding) = match bound_duplicate(jar, policy, &api_cookies, binding, now) {
        Some((cookies, token, binding)) => {
            api_cookies = cookies;
            (token, binding)
        }
        None => (refresh_token, binding),
    };
    if api_cookies.is_empty() {
        return refuse(Refusal::NoApiSession);
    }
    // The pair must belong together. A mismatch is a logout even when a refresh-ahead access
    // token still passes: the cookies sent are not the session that token was minted for.
    let unbound = match binding {
        Binding::Unbound => match policy.keys.unbound_refresh {
            UnboundRefresh::Allow => true,
            UnboundRefresh::Refuse => return Verdict::Refuse(Refusal::RefreshUnbound),
        },
        Binding::Bound { .. } if policy.keys.bound_to(binding, &api_cookies) => false,
        Binding::Bound { .. } => return Verdict::Refuse(Refusal::SessionMismatch),
    };
    Verdict::Refresh(RefreshPlan {
        refresh_token,
        api_cookies,
        fallback,
        unbound,
    })
}

struct Best<'a> {
    value: &'a [u8],
    state: AccessState,
    duplicated: bool,
}

/// The best of the access token values sent: duplicates give the same outcome in any order.
fn best_access<'a>(jar: &CookieJar<'a>, policy: &SessionPolicy<'_>, now: u64) -> Option<Best<'a>> {
    let mut best: Option<Best<'a>> = None;
    for value in jar.values(&policy.names.access_etls) {
        match &mut best {
            None => {
                best = Some(Best {
                    value,
                    state: policy.keys.check_access(value, now),
                    duplicated: false,
                })
            }
            Some(b) => {
                b.duplicated = true;
                if b.state != AccessState::Fresh {
                    let state = policy.keys.check_access(value, now);
                    if state.rank() > b.state.rank() {
                        b.value = value;
                        b.state = state;
                    }
                }
            }
        }
    }
    best
}

/// The first refresh token that verifies and is bound to `api_cookies`, else the first unbound
/// one that verifies, else the first one that verifies (each with its binding, for the caller
/// to judge), so duplicates give the same outcome in any order; otherwise why the first one
/// does not verify.
fn valid_refresh<'a>(
    jar: &CookieJar<'a>,
    policy: &SessionPolicy<'_>,
    api_cookies: &str,
    now: u64,
) -> Result<(&'a [u8], Binding), Refusal> {
    let mut first_valid: Option<(&'a [u8], Binding)> = None;
    let mut first_problem = None;
    for value in jar.values(&policy.names.refresh_etls) {
        let problem = match policy.keys.check_refresh(value, now) {
            RefreshState::Valid(binding) if policy.keys.bound_to(binding, api_cookies) => {
                return Ok((value, binding));
            }
            RefreshState::Valid(binding) => {
                let better = match first_valid {
                    None => true,
                    Some((_, kept)) => binding == Binding::Unbound && kept != Binding::Unbound,
                };
                if better {
                    first_valid = Some((value, binding));
                }
                continue;
            }
            RefreshState::Expired => Refusal::RefreshExpired,
            RefreshState::Invalid(fault) => Refusal::RefreshInvalid(fault),
        };
        first_problem.get_or_insert(problem);
    }
    first_valid.ok_or(first_problem.unwrap_or(Refusal::RefreshMissing))
}

/// Most combinations of duplicated auth API cookie values tried against the refresh tokens.
const MAX_API_COMBINATIONS: usize = 8;

/// When an auth API cookie came more than once and the first values are not what the refresh
/// token is bound to: the combination of values that is, with its refresh token. Browsers send
/// the longer Path first and, among equal paths, the older cookie first, so the stale value can
/// come first; without this the outcome depended on the order.
fn bound_duplicate<'a>(
    jar: &CookieJar<'a>,
    policy: &SessionPolicy<'_>,
    first: &str,
    binding: Binding,
    now: u64,
) -> Option<(String, &'a [u8], Binding)> {
    // Only a bound token that does not match the first values is looked at again (an unbound
    // one has nothing to match), and only when a cookie came twice: no allocation otherwise.
    let twice = |name: &String| jar.values(name).nth(1).is_some();
    if binding == Binding::Unbound
        || policy.keys.bound_to(binding, first)
        || !policy.send_cookies.iter().any(twice)
    {
        return None;
    }
    let values: Vec<Vec<&str>> = policy
        .send_cookies
        .iter()
        .map(|name| {
            jar.values(name)
                .filter_map(|v| std::str::from_utf8(v).ok())
                .filter(|v| is_cookie_octets(v.as_bytes()))
                .collect()
        })
        .collect();
    // Every combination, the first values' first (already tried), at most a few.
    let mut combination = vec![0usize; values.len()];
    for _ in 0..MAX_API_COMBINATIONS {
        let mut carry = true;
        for (at, options) in combination.iter_mut().zip(&values) {
            if !carry {
                break;
            }
            *at += 1;
            carry = *at >= options.len().max(1);
            if carry {
                *at = 0;
            }
        }
        if carry {
            return None;
        }
        let mut slot = 0;
        let cookies = api_cookies_of(policy.send_cookies, |_| {
            let pick = values[slot].get(combination[slot]).copied();
            slot += 1;
            pick
        });
        if let Ok((token, binding)) = valid_refresh(jar, policy, &cookies, now)
            && policy.keys.bound_to(binding, &cookies)
        {
            return Some((cookies, token, binding));
        }
    }
    None
}

/// `refreshToken=<value>` (seed 002): the first valid cookie value of each configured cookie
/// (anything else cannot be sent on faithfully, so it counts as absent: a malformed copy tossed
/// in front of the real one by a sibling host must not hide it).
pub fn api_cookie_header(jar: &CookieJar<'_>, send_cookies: &[String]) -> String {
    api_cookies_of(send_cookies, |name| {
        jar.values(name)
            .filter_map(|v| std::str::from_utf8(v).ok())
            .find(|v| is_cookie_octets(v.as_bytes()))
    })
}

/// The auth API cookies of the session a refresh starts, what its new refresh token is bound
/// to: `request` (the string the refresh sent) with the values the refresh sets (`renewed`,
/// `(name, value)`) in place of the old ones, so exactly what the browser's next refresh will
/// send once it holds the new cookies.
pub fn renewed_api_cookies(
    send_cookies: &[String],
    request: &str,
    renewed: &[(&str, &str)],
) -> String {
    api_cookies_of(send_cookies, |name| {
        renewed
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .or_else(|| {
                // Built by `api_cookie_header`: cookie names and values never hold `; `.
                request
                    .split("; ")
                    .find_map(|pair| pair.split_once('=').filter(|(n, _)| *n == name))
                    .map(|(_, v)| v)
            })
    })
}

/// `name=value; ...` over `send_cookies`, in their order, with the value `value_of` gives each
/// (a missing one, or one that is not a valid cookie value, is left out).
fn api_cookies_of<'v>(
    send_cookies: &[String],
    mut value_of: impl FnMut(&str) -> Option<&'v str>,
) -> String {
    let mut out = String::new();
    for name in send_cookies {
        let value = value_of(name).filter(|v| is_cookie_octets(v.as_bytes()));
        if let Some(value) = value {
            // Exact for the usual one cookie (a grace hit builds this on every request).
            out.reserve(name.len() + value.len() + 3);
            if !out.is_empty() {
                out.push_str("; ");
            }
            out.push_str(name);
            out.push('=');
            out.push_str(value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::NOW;
    use crate::testkit::tokens::{ACCESS, REFRESH, keys, sign};
    use jsonwebtoken::Algorithm;
    use serde_json::json;

    fn access(exp: u64) -> String {
        sign(
            ACCESS,
            Algorithm::HS256,
            json!({"username":"ann","exp": exp}),
        )
    }
    fn refresh(exp: u64) -> String {
        sign(
            REFRESH,
            Algorithm::HS256,
            json!({"username":"ann","exp": exp}),
        )
    }

    fn run(cookie: &str, purpose: Purpose, ahead: u64) -> Verdict<'static> {
        run_with(cookie, purpose, ahead, UnboundRefresh::Allow)
    }

    fn run_with(
        cookie: &str,
        purpose: Purpose,
        ahead: u64,
        unbound: UnboundRefresh,
    ) -> Verdict<'static> {
        let mut k = keys();
        k.times.refresh_ahead_secs = ahead;
        k.unbound_refresh = unbound;
        let names = CookieNames::default();
        let send = vec!["refreshToken".to_string()];
        let policy = SessionPolicy {
            names: &names,
            keys: &k,
            send_cookies: &send,
        };
        // Leaked so the verdict, which borrows the header, can outlive this helper.
        let header: &'static str = Box::leak(cookie.to_owned().into_boxed_str());
        let jar = CookieJar::from_headers([header.as_bytes()]);
        assess(&jar, &policy, NOW, purpose)
    }

    fn kind(v: &Verdict<'_>) -> String {
        match v {
            Verdict::Forward { keep_access: None } => "forward".into(),
            Verdict::Forward {
                keep_access: Some(_),
            } => "forward-collapsed".into(),
            Verdict::Refresh(p) if p.fallback.is_some() => "refresh-with-fallback".into(),
            Verdict::Refresh(_) => "refresh".into(),
            Verdict::Refuse(r) => format!("refuse:{}", r.as_str()),
        }
    }

    #[test]
    fn verdicts_by_table() {
        let fresh = access(NOW + 600);
        let expired = access(NOW - 10);
        let bad_sig = sign(
            b"not-our-secret-not-our-secret-00",
            Algorithm::HS256,
            json!({"exp": NOW + 600}),
        );
        let bad_sig_expired = sign(
            b"not-our-secret-not-our-secret-00",
            Algorithm::HS256,
            json!({"exp": NOW - 600}),
        );
        let r_ok = refresh(NOW + 600);
        let r_old = refresh(NOW - 1);
        let r_bad = sign(ACCESS, Algorithm::HS256, json!({"exp": NOW + 600}));
        let cases: Vec<(String, &str)> = vec![
            (format!("accessTokenEtls={fresh}"), "forward"),
            (
                format!("accessTokenEtls={fresh}; refreshTokenEtls={r_old}"),
                "forward",
            ),
            (
                format!("accessTokenEtls={expired}; refreshTokenEtls={r_ok}; refreshToken=rt"),
                "refresh",
            ),
            (
                format!("refreshTokenEtls={r_ok}; refreshToken=rt"),
                "refresh",
            ),
            (
                format!("accessTokenEtls={bad_sig}; refreshTokenEtls={r_ok}; refreshToken=rt"),
                "refuse:access_invalid",
            ),
            (
                format!(
                    "accessTokenEtls={bad_sig_expired}; refreshTokenEtls={r_ok}; refreshToken=rt"
                ),
                "refuse:access_invalid",
            ),
            ("accessTokenEtls=garbage".into(), "refuse:access_invalid"),
            (
                format!("accessTokenEtls={expired}"),
                "refuse:refresh_missing",
            ),
            (
                format!("accessTokenEtls={expired}; refreshTokenEtls={r_old}; refreshToken=rt"),
                "refuse:refresh_expired",
            ),
            (
                format!("accessTokenEtls={expired}; refreshTokenEtls={r_bad}; refreshToken=rt"),
                "refuse:refresh_invalid",
            ),
            (
                format!("accessTokenEtls={expired}; refreshTokenEtls={r_ok}"),
                "refuse:no_api_session",
            ),
            ("theme=dark".into(), "refuse:no_session"),
            (String::new(), "refuse:no_session"),
            // Duplicates: the same outcome whatever the order, one value kept.
            (
                format!("accessTokenEtls={fresh}; accessTokenEtls=junk"),
                "forward-collapsed",
            ),
            (
                format!("accessTokenEtls=junk; accessTokenEtls={fresh}"),
                "forward-collapsed",
            ),
            (
                format!(
                    "accessTokenEtls=junk; accessTokenEtls={expired}; refreshTokenEtls={r_ok}; refreshToken=rt"
                ),
                "refresh",
            ),
            (
                format!(
                    "accessTokenEtls={expired}; refreshTokenEtls={r_bad}; refreshTokenEtls={r_ok}; refreshToken=rt"
                ),
                "refresh",
            ),
        ];
        for (cookie, want) in cases {
            assert_eq!(kind(&run(&cookie, Purpose::Request, 0)), want, "{cookie}");
        }
    }

    #[test]
    fn duplicates_keep_the_valid_value() {
        let fresh = access(NOW + 600);
        for cookie in [
            format!("accessTokenEtls={fresh}; accessTokenEtls=junk"),
            format!("accessTokenEtls=junk; accessTokenEtls={fresh}"),
        ] {
            let Verdict::Forward {
                keep_access: Some(kept),
            } = run(&cookie, Purpose::Request, 0)
            else {
                panic!("expected forward for {cookie}");
            };
            assert_eq!(kept, fresh.as_bytes());
        }
    }

    #[test]
    fn refresh_ahead_falls_back_to_forwarding() {
        let due = access(NOW + 20);
        let r_ok = refresh(NOW + 600);
        let v = run(
            &format!("accessTokenEtls={due}; refreshTokenEtls={r_ok}; refreshToken=rt"),
            Purpose::Request,
            60,
        );
        assert_eq!(kind(&v), "refresh-with-fallback");
        // Without a usable refresh token a due access token still passes.
        let v = run(&format!("accessTokenEtls={due}"), Purpose::Request, 60);
        assert_eq!(kind(&v), "forward");
    }

    #[test]
    fn refresh_endpoint_ignores_the_access_token() {
        let r_ok = refresh(NOW + 600);
        let fresh = access(NOW + 600);
        for cookie in [
            format!("accessTokenEtls={fresh}; refreshTokenEtls={r_ok}; refreshToken=rt"),
            format!("accessTokenEtls=junk; refreshTokenEtls={r_ok}; refreshToken=rt"),
        ] {
            assert_eq!(
                kind(&run(&cookie, Purpose::RefreshEndpoint, 0)),
                "refresh",
                "{cookie}"
            );
        }
        assert_eq!(
            kind(&run("", Purpose::RefreshEndpoint, 0)),
            "refuse:refresh_missing"
        );
    }

    #[test]
    fn plan_carries_claims_and_api_cookies() {
        let r_ok = refresh(NOW + 600);
        let Verdict::Refresh(plan) = run(
            &format!("refreshToken=rt-1; refreshTokenEtls={r_ok}; refreshToken=rt-2"),
            Purpose::Request,
            0,
        ) else {
            panic!("expected a refresh");
        };
        assert_eq!(plan.api_cookies, "refreshToken=rt-1");
        assert_eq!(plan.refresh_token, r_ok.as_bytes());
    }

    /// The binding of the pair: every row is one request; `bound(x)` is a refresh token the
    /// proxy minted for the auth API session `x`, `legacy` one of the old routes (no `sid`).
    #[test]
    fn binding_by_table() {
        let k = keys();
        let claims: crate::session::tokens::Claims =
            serde_json::from_value(json!({"username": "ann"})).unwrap();
        let bound = |api: &str| k.mint_refresh(&claims, api, NOW).unwrap();
        let legacy = refresh(NOW + 600);
        let expired = access(NOW - 10);
        let due = access(NOW + 20);
        let (b_rt, b_other) = (bound("refreshToken=rt"), bound("refreshToken=other"));
        let b_expired = {
            let mut k = keys();
            k.times.refresh_ttl_secs = 0;
            k.mint_refresh(&claims, "refreshToken=rt", NOW - 10)
                .unwrap()
        };
        let allow = UnboundRefresh::Allow;
        let deny = UnboundRefresh::Refuse;
        let (req, endpoint) = (Purpose::Request, Purpose::RefreshEndpoint);
        let cases: Vec<(String, Purpose, u64, UnboundRefresh, &str)> = vec![
            // Matching sid: refresh, whatever the setting.
            (
                format!("refreshTokenEtls={b_rt}; refreshToken=rt"),
                req,
                0,
                deny,
                "refresh",
            ),
            (
                format!("accessTokenEtls={expired}; refreshTokenEtls={b_rt}; refreshToken=rt"),
                req,
                0,
                allow,
                "refresh",
            ),
            (
                format!("refreshTokenEtls={b_rt}; refreshToken=rt"),
                endpoint,
                0,
                allow,
                "refresh",
            ),
            // Other auth API cookies (a throwaway session, an old token): refused.
            (
                format!("refreshTokenEtls={b_rt}; refreshToken=throwaway"),
                req,
                0,
                allow,
                "refuse:session_mismatch",
            ),
            (
                format!("accessTokenEtls={expired}; refreshTokenEtls={b_other}; refreshToken=rt"),
                req,
                0,
                allow,
                "refuse:session_mismatch",
            ),
            (
                format!("refreshTokenEtls={b_rt}; refreshToken=rtx"),
                endpoint,
                0,
                allow,
                "refuse:session_mismatch",
            ),
            // Even beside a refresh-ahead access token: the pair does not belong together.
            (
                format!("accessTokenEtls={due}; refreshTokenEtls={b_other}; refreshToken=rt"),
                req,
                60,
                allow,
                "refuse:session_mismatch",
            ),
            // No sid: allowed (and marked unbound) or refused, as configured.
            (
                format!("refreshTokenEtls={legacy}; refreshToken=rt"),
                req,
                0,
                allow,
                "refresh-unbound",
            ),
            (
                format!("refreshTokenEtls={legacy}; refreshToken=rt"),
                req,
                0,
                deny,
                "refuse:refresh_unbound",
            ),
            (
                format!("refreshTokenEtls={legacy}; refreshToken=rt"),
                endpoint,
                0,
                deny,
                "refuse:refresh_unbound",
            ),
            // The other checks come first: expired, missing API session.
            (
                format!("refreshTokenEtls={b_expired}; refreshToken=rt"),
                req,
                0,
                allow,
                "refuse:refresh_expired",
            ),
            (
                format!("refreshTokenEtls={b_other}"),
                req,
                0,
                allow,
                "refuse:no_api_session",
            ),
            (
                format!("refreshTokenEtls={legacy}"),
                req,
                0,
                deny,
                "refuse:no_api_session",
            ),
            // A stale auth API cookie beside the one the token is bound to, in either order.
            (
                format!("refreshTokenEtls={b_rt}; refreshToken=stale; refreshToken=rt"),
                req,
                0,
                deny,
                "refresh",
            ),
            (
                format!("refreshToken=rt; refreshTokenEtls={b_rt}; refreshToken=stale"),
                req,
                0,
                deny,
                "refresh",
            ),
            (
                format!("refreshTokenEtls={b_rt}; refreshToken=stale; refreshToken=older"),
                req,
                0,
                deny,
                "refuse:session_mismatch",
            ),
            // A malformed copy in front (a quote, a space: tossed by a sibling host) hides
            // nothing: it cannot be sent on, so the next value is the first.
            (
                format!("refreshToken=rt-evil\"; refreshTokenEtls={b_rt}; refreshToken=rt"),
                req,
                0,
                deny,
                "refresh",
            ),
            (
                format!("refreshToken=\"rt\"; refreshTokenEtls={b_rt}; refreshToken=rt"),
                req,
                0,
                deny,
                "refresh",
            ),
            (
                format!(
                    "refreshTokenEtls={b_rt}; refreshToken=rt\\evil; refreshToken=stale; refreshToken=rt"
                ),
                req,
                0,
                deny,
                "refresh",
            ),
            // Duplicates: the value bound to the cookies sent wins, in any order.
            (
                format!("refreshTokenEtls={b_other}; refreshTokenEtls={b_rt}; refreshToken=rt"),
                req,
                0,
                deny,
                "refresh",
            ),
            (
                format!("refreshTokenEtls={legacy}; refreshTokenEtls={b_rt}; refreshToken=rt"),
                req,
                0,
                allow,
                "refresh",
            ),
            (
                format!("refreshTokenEtls={b_rt}; refreshTokenEtls={legacy}; refreshToken=rt"),
                req,
                0,
                deny,
                "refresh",
            ),
            // Otherwise an unbound one over one bound elsewhere, in any order.
            (
                format!("refreshTokenEtls={b_other}; refreshTokenEtls={legacy}; refreshToken=rt"),
                req,
                0,
                allow,
                "refresh-unbound",
            ),
            (
                format!("refreshTokenEtls={legacy}; refreshTokenEtls={b_other}; refreshToken=rt"),
                req,
                0,
                allow,
                "refresh-unbound",
            ),
            (
                format!("refreshTokenEtls={b_other}; refreshTokenEtls={legacy}; refreshToken=rt"),
                req,
                0,
                deny,
                "refuse:refresh_unbound",
            ),
            (
                format!("refreshTokenEtls={b_other}; refreshTokenEtls={b_other}; refreshToken=rt"),
                req,
                0,
                allow,
                "refuse:session_mismatch",
            ),
        ];
        for (cookie, purpose, ahead, unbound, want) in cases {
            let verdict = run_with(&cookie, purpose, ahead, unbound);
            let got = match &verdict {
                Verdict::Refresh(p) if p.unbound => "refresh-unbound".to_owned(),
                v => kind(v),
            };
            assert_eq!(got, want, "{cookie} ({unbound:?}, {purpose:?})");
            if let Verdict::Refresh(plan) = verdict
                && !plan.unbound
            {
                assert_eq!(plan.refresh_token, b_rt.as_bytes(), "{cookie}");
                assert_eq!(plan.api_cookies, "refreshToken=rt", "{cookie}");
            }
        }
    }

    /// The string a new refresh token is bound to is the one the browser's next refresh sends.
    #[test]
    fn renewed_api_cookies_are_what_the_next_request_sends() {
        let send = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let renewed = [
            ("accessTokenEtls", "new.etls.access"),
            ("accessToken", "api-access-2"),
            ("refreshToken", "api-refresh-2"),
            ("etlsUser", "new.user.token"),
        ];
        let cases: [(&[&str], &str, &str); 7] = [
            (
                &["refreshToken"],
                "refreshToken=old",
                "refreshToken=api-refresh-2",
            ),
            (
                &["theme", "refreshToken", "accessToken"],
                "theme=dark; refreshToken=old",
                "theme=dark; refreshToken=api-refresh-2; accessToken=api-access-2",
            ),
            // Values holding `=`, names that are prefixes of others.
            (
                &["refreshToken", "dev", "device"],
                "refreshToken=old; device=a=b",
                "refreshToken=api-refresh-2; device=a=b",
            ),
            (
                &["device", "refreshToken"],
                "device=1; refreshToken=old",
                "device=1; refreshToken=api-refresh-2",
            ),
            (
                &["etlsUser", "refreshToken"],
                "refreshToken=old",
                "etlsUser=new.user.token; refreshToken=api-refresh-2",
            ),
            (&["session"], "session=s1", "session=s1"),
            // More names than the first pass sizes for: the later ones still come, in order.
            (
                &["a", "b", "c", "d", "e", "refreshToken"],
                "e=5; b=2; refreshToken=old; a=1",
                "a=1; b=2; e=5; refreshToken=api-refresh-2",
            ),
        ];
        for (names, request, want) in cases {
            let names = send(names);
            let got = renewed_api_cookies(&names, request, &renewed);
            assert_eq!(got, want, "{names:?} {request}");
            // The browser once it holds the new cookies: its next request gives the same string.
            let jar = CookieJar::from_headers([request.as_bytes()]);
            let rewritten = crate::session::cookies::rewrite(&jar, &renewed);
            let next = CookieJar::from_headers([rewritten.as_slice()]);
            assert_eq!(api_cookie_header(&next, &names), got, "{names:?}");
        }
        // A renewed value that cannot be sent as a cookie is left out, as from the browser.
        let names = send(&["refreshToken"]);
        assert_eq!(
            renewed_api_cookies(&names, "refreshToken=old", &[("refreshToken", "a b")]),
            ""
        );
    }
}
