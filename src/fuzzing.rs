//! Properties checked on arbitrary input, shared by the cargo-fuzz targets (`fuzz/`), the
//! replay of their committed corpus (`tests/fuzz_corpus.rs`) and the property tests. Each entry
//! point takes bytes, must never panic on its own account, and panics when the property its
//! module promises does not hold: that panic is the finding.

use http::HeaderValue;
use serde_json::Value;

use crate::config::{Outside, load_str};
use crate::refresh::auth_api::{AuthFields, read_answer};
use crate::refresh::renew::{Minting, mint_session};
use crate::session::cookies::{CookieJar, CookieNames, rewrite};
use crate::session::decision::{Purpose, SessionPolicy, Verdict, assess};
use crate::session::routes::{Route, Routes};
use crate::session::set_cookie::CookiePolicy;
use crate::session::tokens::{AccessState, Claims, RefreshState, TokenKeys, TokenTimes};

/// The fuzz targets' own secrets, not the test kit's: the committed corpus (`fuzz/corpus`,
/// written by `fuzz/make-seeds.py`) holds tokens signed with them.
pub const ACCESS_SECRET: &[u8] = b"fuzz-access-secret-fuzz-access-01";
pub const REFRESH_SECRET: &[u8] = b"fuzz-refresh-secret-fuzz-refresh1";
/// The clock every entry point runs at (the test kit's), so a corpus replays the same way on
/// any day.
pub use crate::testkit::NOW;
const REFRESH_AHEAD_SECS: u64 = 60;

pub fn keys() -> TokenKeys {
    TokenKeys::new(
        ACCESS_SECRET,
        REFRESH_SECRET,
        TokenTimes {
            refresh_ahead_secs: REFRESH_AHEAD_SECS,
            ..TokenTimes::default()
        },
    )
}

/// Header values as Pingora could hand them over: `\n`-separated, each a valid header value.
fn header_values(data: &[u8]) -> Vec<&[u8]> {
    data.split(|b| *b == b'\n')
        .filter(|v| HeaderValue::from_bytes(v).is_ok())
        .collect()
}

/// The Cookie header parser and rewriter: see [`check_rewrite`].
pub fn cookie_header(data: &[u8]) {
    let names = CookieNames::default();
    let updates: Vec<(&str, &str)> = names
        .all()
        .into_iter()
        .zip([
            "new-a.b.c",
            "new-r.s.t",
            "new-api-a",
            "new-api-r",
            "new-user",
        ])
        .collect();
    // Half the inputs rewrite only two names, as a refresh without a user field does.
    let take = if data.first().is_some_and(|b| b & 1 == 1) {
        2
    } else {
        5
    };
    check_rewrite(&header_values(data), &updates[..take]);
}

/// Parsing the rewritten Cookie header gives back exactly the cookies sent, in order, with each
/// updated cookie's first occurrence holding its new value, later ones dropped, and updated
/// cookies the browser did not send appended; and the result is one valid header value.
pub fn check_rewrite(headers: &[&[u8]], updates: &[(&str, &str)]) {
    let jar = CookieJar::from_headers(headers.iter().copied());
    let sent: Vec<(&[u8], Option<&[u8]>)> = jar.crumbs().map(|c| (c.name, c.value)).collect();
    let mut expected: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    let mut done = vec![false; updates.len()];
    for (name, value) in &sent {
        match updates.iter().position(|(n, _)| n.as_bytes() == *name) {
            Some(i) if !done[i] => {
                done[i] = true;
                expected.push((name.to_vec(), Some(updates[i].1.as_bytes().to_vec())));
            }
            Some(_) => {}
            None => expected.push((name.to_vec(), value.map(<[u8]>::to_vec))),
        }
    }
    for (i, (name, value)) in updates.iter().enumerate() {
        if !done[i] {
            expected.push((name.as_bytes().to_vec(), Some(value.as_bytes().to_vec())));
        }
    }
    let out = rewrite(&jar, updates);
    assert!(
        HeaderValue::from_bytes(&out).is_ok(),
        "the rewritten header is not a valid header value: {out:?}"
    );
    let reparsed = CookieJar::from_headers([out.as_slice()]);
    let got: Vec<(Vec<u8>, Option<Vec<u8>>)> = reparsed
        .crumbs()
        .map(|c| (c.name.to_vec(), c.value.map(<[u8]>::to_vec)))
        .collect();
    assert_eq!(got, expected, "rewrite of {headers:?}");
    for (name, value) in updates {
        assert_eq!(reparsed.get(name), Some(value.as_bytes()), "{name}");
    }
}

/// The Set-Cookie builder fed with an auth API answer: whatever the body, either a clean error
/// or five (four without a user record) cookies of well-formed lines (several chunks for a
/// value over one cookie) whose values are the API's tokens
/// and freshly minted eTLS tokens that verify.
pub fn auth_answer(data: &[u8]) {
    let (fields, body) = match data.split_first() {
        // Seed 000's field names, with `etlsUser` as a string.
        Some((b'0', rest)) => (
            AuthFields {
                access_token: "newAccessToken".into(),
                refresh_token: "newRefreshToken".into(),
                user: Some("newEtlsUser".into()),
            },
            rest,
        ),
        Some((b'n', rest)) => (
            AuthFields {
                user: None,
                ..AuthFields::default()
            },
            rest,
        ),
        _ => (AuthFields::default(), data),
    };
    let Ok(api) = read_answer(200, Some(b"application/json"), body, &fields) else {
        return;
    };
    let (keys, names) = (keys(), CookieNames::default());
    let policy = CookiePolicy {
        domain: Some("example.test".into()),
        secure: true,
        ..CookiePolicy::default()
    };
    let send_cookies = vec![names.refresh_api.clone()];
    let minting = Minting {
        keys: &keys,
        names: &names,
        policy: &policy,
        send_cookies: &send_cookies,
        max_chunks: 8,
        max_cookie_bytes: 64 * 1024,
        other_cookie_bytes: 0,
    };
    let claims: Claims = serde_json::from_str(r#"{"username":"ann"}"#).expect("claims");
    let expected_api = (api.access_token.clone(), api.refresh_token.clone());
    let has_user = api.user.is_some();
    let Ok(session) = mint_session(&minting, &claims, api, "refreshToken=old", NOW) else {
        return;
    };
    let cookies: Vec<(&str, &[http::HeaderValue])> = session.cookie_lines().collect();
    assert_eq!(cookies.len(), if has_user { 5 } else { 4 });
    for ((cookie, lines), name) in cookies.iter().zip(names.all()) {
        assert_eq!(*cookie, name);
        let mut joined = String::new();
        for (i, line) in lines.iter().enumerate() {
            let text = line.to_str().expect("a Set-Cookie line is visible ASCII");
            assert!(
                text.len() <= crate::session::chunks::MAX_LINE_BYTES,
                "{}",
                text.len()
            );
            let parsed = cookie::Cookie::parse(text).expect("a Set-Cookie line parses");
            let want = match lines.len() {
                1 => name.to_owned(),
                _ => crate::session::chunks::chunk_name(name, i),
            };
            assert_eq!(parsed.name(), want, "{text}");
            assert_eq!(parsed.http_only(), Some(true), "{text}");
            assert_eq!(parsed.secure(), Some(true), "{text}");
            assert_eq!(parsed.path(), Some("/"), "{text}");
            assert_eq!(parsed.domain(), Some("example.test"), "{text}");
            assert_eq!(
                text.matches(';').count(),
                5 + 1,
                "one value, six attributes: {text}"
            );
            joined.push_str(parsed.value());
        }
        let whole = session.cookies().find(|(n, _)| n == cookie).map(|(_, v)| v);
        assert_eq!(Some(joined.as_str()), whole, "chunks join to the value");
    }
    let values: Vec<(&str, &str)> = session.cookies().collect();
    assert_eq!(values[2].1, expected_api.0);
    assert_eq!(values[3].1, expected_api.1);
    assert_eq!(
        keys.check_access(values[0].1.as_bytes(), NOW),
        AccessState::Fresh
    );
    // The new refresh token is bound to the new auth API session, not to the old one.
    let RefreshState::Valid(binding) = keys.check_refresh(values[1].1.as_bytes(), NOW) else {
        panic!("the minted refresh token does not verify");
    };
    let new_session = format!("{}={}", names.refresh_api, expected_api.1);
    assert!(keys.bound_to(binding, &new_session), "{new_session}");
    assert!(!keys.bound_to(binding, "refreshToken=old"));
}

/// jsonwebtoken's reading of a token, the reference the hand-written verifier must agree with:
/// `exp` when the HS256 signature under `secret` holds, `exp` is a positive integer and `nbf`,
/// when present, is an integer not after `now`.
pub fn reference_exp(token: &[u8], secret: &[u8], now: u64) -> Option<u64> {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    let token = std::str::from_utf8(token).ok()?;
    // A `kid` names the one secret to verify with; here that is `secret` or none.
    if jsonwebtoken::decode_header(token)
        .ok()?
        .kid
        .is_some_and(|kid| kid != crate::session::tokens::key_id(secret))
    {
        return None;
    }
    let data = jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(secret),
        &validation,
    )
    .ok()?;
    let exp = data.claims.get("exp")?.as_u64().filter(|e| *e > 0)?;
    match data.claims.get("nbf") {
        None => Some(exp),
        Some(nbf) => nbf.as_u64().filter(|nbf| *nbf <= now).map(|_| exp),
    }
}

/// The request decision, with the path: the first line is the path, the others Cookie header
/// values. Only a token that jsonwebtoken also accepts is forwarded or refreshed with, a public
/// path never holds a dot segment, and every access token value is judged as jsonwebtoken
/// judges it.
pub fn decision(data: &[u8]) {
    let mut lines = data.splitn(2, |b| *b == b'\n');
    let path = lines.next().unwrap_or_default();
    let cookie_headers = header_values(lines.next().unwrap_or_default());
    let routes = Routes {
        public: vec!["/_next/static/".into(), "/favicon.ico".into()],
        refresh_endpoint: Some("/api/auth/refreshtoken".into()),
        logout_endpoint: Some("/api/auth/logout".into()),
        login_redirect: Some("/login".into()),
    };
    if routes.classify(path) == Route::Public {
        let decoded = percent_encoding::percent_decode(path).collect::<Vec<u8>>();
        assert!(
            !decoded
                .split(|b| *b == b'/' || *b == b'\\')
                .skip(1)
                .any(|seg| seg == b".." || seg == b"."),
            "public path with a dot segment: {path:?}"
        );
    }
    if let Some(location) = std::str::from_utf8(path)
        .ok()
        .and_then(|p| routes.login_location(p))
    {
        assert!(
            crate::session::routes::is_local_path(&location)
                && HeaderValue::from_str(&location).is_ok(),
            "login redirect leaves the site: {location}"
        );
    }

    let (keys, names) = (keys(), CookieNames::default());
    let send_cookies = vec![names.refresh_api.clone()];
    let policy = SessionPolicy {
        names: &names,
        keys: &keys,
        send_cookies: &send_cookies,
    };
    let jar = CookieJar::from_headers(cookie_headers.iter().copied());
    let access: Vec<&[u8]> = jar.values(&names.access_etls).collect();
    for value in &access {
        let ours = keys.check_access(value, NOW);
        let reference = reference_exp(value, ACCESS_SECRET, NOW);
        if value.len() <= crate::session::tokens::MAX_TOKEN_BYTES {
            assert_eq!(
                !matches!(ours, AccessState::Invalid(_)),
                reference.is_some(),
                "{ours:?} for {}",
                String::from_utf8_lossy(value)
            );
        }
    }
    let fresh = |v: &&[u8]| reference_exp(v, ACCESS_SECRET, NOW).is_some_and(|exp| exp > NOW);
    match assess(&jar, &policy, NOW, Purpose::Request) {
        Verdict::Forward { keep_access } => {
            let forwarded = keep_access.or(jar.get(&names.access_etls));
            assert!(
                forwarded.as_ref().is_some_and(fresh),
                "forwarded without a valid access token"
            );
        }
        Verdict::Refresh(plan) => {
            assert!(
                reference_exp(plan.refresh_token, REFRESH_SECRET, NOW).is_some_and(|e| e > NOW),
                "refreshed with a refresh token jsonwebtoken refuses"
            );
            assert!(
                !access.iter().any(|v| reference_exp(v, ACCESS_SECRET, NOW)
                    .is_some_and(|exp| exp > NOW + REFRESH_AHEAD_SECS)),
                "refreshed although a fresh access token was sent"
            );
            assert!(!plan.api_cookies.is_empty());
        }
        Verdict::Refuse(_) => {
            assert!(
                !access.iter().any(|v| reference_exp(v, ACCESS_SECRET, NOW)
                    .is_some_and(|exp| exp > NOW + REFRESH_AHEAD_SECS)),
                "refused although a fresh access token was sent"
            );
        }
    }
}

/// The configuration loader: any text is either refused with at least one problem naming a
/// key, or builds. Names resolve only as IP literals and `localhost`, so no input reaches DNS.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| match name {
        "ETLS_ACCESS" => Some(std::str::from_utf8(ACCESS_SECRET).expect("ASCII").into()),
        "ETLS_REFRESH" => Some(std::str::from_utf8(REFRESH_SECRET).expect("ASCII").into()),
        _ => None,
    };
    let resolve = |host_port: &str| -> std::io::Result<Vec<std::net::SocketAddr>> {
        let local = host_port.replacen("localhost:", "127.0.0.1:", 1);
        local
            .parse::<std::net::SocketAddr>()
            .map(|a| vec![a])
            .map_err(|_| std::io::Error::other("only IP literals in the fuzzer"))
    };
    let outside = Outside {
        env: &env,
        resolve: &resolve,
    };
    match load_str(text, "fuzz.yaml", outside) {
        Ok(_) => {}
        Err(crate::config::ConfigError::Invalid { problems, .. }) => {
            assert!(!problems.is_empty());
            for p in problems {
                assert!(!p.key.is_empty() && !p.message.is_empty(), "{p:?}");
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}
