//! Every row of the request-flow table, against a real proxy, app and auth API.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn public_paths_are_forwarded_untouched() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    for path in [
        "/_next/static/chunks/main.js",
        "/_next/image?url=%2Fa.png&w=64",
        "/favicon.ico",
    ] {
        let r = proxy.get(path, "accessTokenEtls=garbage; x=1").await;
        assert_eq!(r.status, 200, "{path}");
        assert!(r.set_cookies().is_empty());
        assert_eq!(
            app.last().header("cookie"),
            Some("accessTokenEtls=garbage; x=1")
        );
    }
    assert_eq!(app.calls(), 3);
    assert_eq!(auth.calls(), 0);
}

#[tokio::test]
async fn dot_segments_cannot_escape_a_public_prefix() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    for path in [
        "/_next/static/../../dashboard",
        "/_next/static/%2e%2e/dashboard",
        "/_next/static/..%2fdashboard",
    ] {
        let r = proxy.get(path, "").await;
        assert_refused_without_clears(&r);
    }
    assert_eq!(app.calls(), 0);
}

#[tokio::test]
async fn valid_access_token_passes_with_the_cookie_header_untouched() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let cookie = format!(
        "a=1; accessTokenEtls={}; refreshTokenEtls={};  b=2",
        access_token(600),
        refresh_token(3600)
    );
    let r = proxy.get("/dashboard?tab=1", &cookie).await;
    assert_eq!(r.status, 200);
    assert!(r.set_cookies().is_empty(), "{:?}", r.set_cookies());
    assert_eq!(app.last().all("cookie"), vec![cookie.as_str()]);
    assert_eq!(app.last().path, "/dashboard?tab=1");
    assert_eq!(auth.calls(), 0);
}

#[tokio::test]
async fn expired_access_token_is_refreshed_inside_the_request() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let before = now();
    let r = proxy.get("/dashboard", &expired_session("rt-1")).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // The auth API got seed 002's call.
    assert_eq!(auth.calls(), 1);
    let call = auth.last();
    assert_eq!(call.method, "POST");
    assert_eq!(call.path, "/refreshtoken");
    assert_eq!(call.header("content-type"), Some("application/json"));
    assert_eq!(call.header("cookie"), Some("refreshToken=rt-1"));

    // The app got one Cookie header with the five new values in place and the rest in order.
    let seen = app.last();
    assert_eq!(seen.all("cookie").len(), 1);
    let names: Vec<&str> = seen
        .header("cookie")
        .unwrap()
        .split("; ")
        .map(|c| c.split('=').next().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "theme",
            "accessTokenEtls",
            "refreshTokenEtls",
            "accessToken",
            "refreshToken",
            "etlsUser",
            "lang"
        ]
    );
    let new_access = seen.cookie("accessTokenEtls").unwrap();
    assert!(verifies(&new_access, ACCESS_SECRET));
    let claims = payload(&new_access);
    assert_eq!(claims["username"], "ann");
    let exp = claims["exp"].as_u64().unwrap();
    assert!(exp >= before + 900 && exp <= now() + 900, "exp {exp}");
    let new_refresh = seen.cookie("refreshTokenEtls").unwrap();
    assert!(verifies(&new_refresh, REFRESH_SECRET) && !verifies(&new_refresh, ACCESS_SECRET));
    assert_eq!(payload(&new_refresh)["username"], "ann");
    assert_eq!(seen.cookie("accessToken").unwrap(), "api-access-for-rt-1");
    assert_eq!(
        seen.cookie("refreshToken").unwrap(),
        "api-refresh-after-rt-1"
    );
    let user = seen.cookie("etlsUser").unwrap();
    assert!(verifies(&user, ACCESS_SECRET));
    assert_eq!(payload(&user)["role"], "admin");
    assert_eq!(payload(&user)["id"], 7);

    // The browser gets the same values, one Set-Cookie header each, with the seed's attributes.
    let lines = r.set_cookies();
    assert_eq!(lines.len(), 5, "{lines:?}");
    for (line, name) in lines.iter().zip(CLEARED) {
        assert!(line.starts_with(&format!("{name}=")), "{line}");
        for attr in ["HttpOnly", "Path=/", "Max-Age=43200", "SameSite=Lax"] {
            assert!(
                line.split("; ").any(|a| a == attr),
                "{attr} missing in {line}"
            );
        }
        assert!(!line.contains("Secure"), "{line}");
        assert_eq!(r.set_cookie_value(name), seen.cookie(name), "{name}");
    }
    assert_eq!(r.header("cache-control"), Some("private, no-store"));
}

#[tokio::test]
async fn missing_access_token_with_a_valid_refresh_token_is_refreshed() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let r = proxy
        .get(
            "/",
            &format!("refreshTokenEtls={}; refreshToken=rt-2", refresh_token(60)),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(auth.calls(), 1);
    assert_eq!(r.set_cookies().len(), 5);
    assert!(verifies(
        &app.last().cookie("accessTokenEtls").unwrap(),
        ACCESS_SECRET
    ));
}

#[tokio::test]
async fn invalid_access_tokens_are_logged_out_without_any_call() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let valid = access_token(600);
    let (head, rest) = valid.split_once('.').unwrap();
    let sig = rest.split_once('.').unwrap().1;
    let forged_payload = payload_b64(&json!({"username": "admin", "exp": now() + 600}));
    let none_header = payload_b64(&json!({"alg": "none", "typ": "JWT"}));
    let cases = [
        (
            "bad signature",
            sign(
                "another-secret-another-secret-0123",
                json!({"exp": now() + 600}),
            ),
        ),
        (
            "bad signature, expired",
            sign(
                "another-secret-another-secret-0123",
                json!({"exp": now() - 600}),
            ),
        ),
        (
            "refresh secret",
            sign(REFRESH_SECRET, json!({"exp": now() + 600})),
        ),
        (
            "HS384",
            sign_with(
                jsonwebtoken::Algorithm::HS384,
                ACCESS_SECRET,
                json!({"exp": now() + 600}),
            ),
        ),
        (
            "HS512",
            sign_with(
                jsonwebtoken::Algorithm::HS512,
                ACCESS_SECRET,
                json!({"exp": now() + 600}),
            ),
        ),
        ("alg none", format!("{none_header}.{forged_payload}.")),
        ("tampered payload", format!("{head}.{forged_payload}.{sig}")),
        ("malformed", "not.a.jwt".to_owned()),
        ("no exp", sign(ACCESS_SECRET, json!({"username": "ann"}))),
    ];
    for (what, token) in cases {
        let r = proxy
            .get(
                "/dashboard",
                &format!(
                    "accessTokenEtls={token}; refreshTokenEtls={}; refreshToken=rt",
                    refresh_token(600)
                ),
            )
            .await;
        assert_eq!(r.status, 401, "{what}");
        assert_logout(&r);
    }
    assert_eq!(app.calls(), 0);
    assert_eq!(auth.calls(), 0);
}

fn sign_with(alg: jsonwebtoken::Algorithm, secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn payload_b64(v: &serde_json::Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn unusable_refresh_tokens_are_logged_out_without_calling_the_auth_api() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let expired = access_token(-5);
    for (what, refresh) in [
        ("missing", String::new()),
        (
            "expired",
            format!("; refreshTokenEtls={}", refresh_token(-1)),
        ),
        (
            "wrong secret",
            format!(
                "; refreshTokenEtls={}",
                sign(ACCESS_SECRET, json!({"exp": now() + 600}))
            ),
        ),
        ("garbage", "; refreshTokenEtls=abc".to_owned()),
    ] {
        let r = proxy
            .get(
                "/",
                &format!("accessTokenEtls={expired}{refresh}; refreshToken=rt"),
            )
            .await;
        assert_eq!(r.status, 401, "{what}");
        assert_logout(&r);
    }
    assert_eq!(app.calls(), 0);
    assert_eq!(auth.calls(), 0);
}

#[tokio::test]
async fn no_session_cookies_at_all_is_a_logout() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    assert_refused_without_clears(&proxy.get("/dashboard", "").await);
    assert_logout(&proxy.get("/dashboard", "theme=dark; accessToken=x").await);
    assert_eq!((app.calls(), auth.calls()), (0, 0));
}

#[tokio::test]
async fn page_navigations_get_the_login_redirect_other_requests_the_401() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth)
        .extra("routes: {login_redirect: /login, public: [/login, /_next/static/]}")
        .start()
        .await;
    let navigate = "GET /dashboard/a?tab=2 HTTP/1.1\r\nHost: x\r\nSec-Fetch-Mode: navigate\r\nAccept: text/html\r\n\r\n";
    let r = proxy.send(navigate).await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some("/login?next=/dashboard/a%3Ftab%3D2")
    );
    assert!(
        r.set_cookies().is_empty(),
        "nothing to clear: the request carried none of the five"
    );
    let with_cookie = "GET /dashboard HTTP/1.1\r\nHost: x\r\nSec-Fetch-Mode: navigate\r\nAccept: text/html\r\nCookie: etlsUser=u\r\n\r\n";
    let r = proxy.send(with_cookie).await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.set_cookies().len(),
        5,
        "the redirect still clears the cookies"
    );
    let html_no_fetch_mode = "GET /x HTTP/1.1\r\nHost: x\r\nAccept: text/html,*/*\r\n\r\n";
    assert_eq!(proxy.send(html_no_fetch_mode).await.status, 302);
    let rsc = "GET /x HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\nRSC: 1\r\n\r\n";
    assert_refused_without_clears(&proxy.send(rsc).await);
    let fetch = "GET /api/x HTTP/1.1\r\nHost: x\r\nSec-Fetch-Mode: cors\r\nAccept: */*\r\n\r\n";
    assert_refused_without_clears(&proxy.send(fetch).await);
    // Every logout of a page navigation is the redirect: an invalid token, an auth API rejection.
    let tampered = format!(
        "GET /p HTTP/1.1\r\nHost: x\r\nSec-Fetch-Mode: navigate\r\nCookie: accessTokenEtls={}x\r\n\r\n",
        access_token(600)
    );
    assert_eq!(proxy.send(&tampered).await.status, 302);
    auth.set_handler(|_| StubReply::json(403, json!({"error": "invalid_grant"})));
    let rejected = format!(
        "GET /p HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\nSec-Fetch-Mode: cors\r\nCookie: {}\r\n\r\n",
        expired_session("rt-nav")
    );
    let r = proxy.send(&rejected).await;
    assert_eq!(
        (r.status, r.header("location")),
        (302, Some("/login?next=/p"))
    );
    assert_eq!(auth.calls(), 1);
    // The login page itself is public.
    assert_eq!(
        proxy
            .send("GET /login HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\n\r\n")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn auth_api_rejection_is_a_logout() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    for status in [400, 401, 403] {
        auth.set_handler(move |_| StubReply::json(status, json!({"error": "invalid_grant"})));
        let r = proxy
            .get("/", &expired_session(&format!("rt-{status}")))
            .await;
        assert_logout(&r);
    }
    assert_eq!(auth.calls(), 3);
    assert_eq!(app.calls(), 0);
}

#[tokio::test]
async fn auth_api_failures_are_502_and_keep_the_cookies() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    // (An answer too large for the cookies is a logout: chunks.rs.)
    type Case = (
        &'static str,
        Box<dyn Fn(&StubRequest) -> StubReply + Send + Sync>,
    );
    let cases: Vec<Case> = vec![
        (
            "500",
            Box::new(|_| StubReply::json(500, json!({"error": "boom"}))),
        ),
        ("503", Box::new(|_| StubReply::json(503, json!({})))),
        ("404", Box::new(|_| StubReply::json(404, json!({})))),
        ("429", Box::new(|_| StubReply::json(429, json!({})))),
        ("302", Box::new(|_| StubReply::raw(302, "", vec![]))),
        (
            "html",
            Box::new(|_| StubReply::raw(200, "text/html", b"<html>login</html>".to_vec())),
        ),
        (
            "json as text",
            Box::new(|_| StubReply::raw(200, "text/plain", rotated("x").to_string().into_bytes())),
        ),
        (
            "empty body",
            Box::new(|_| StubReply::raw(200, "application/json", vec![])),
        ),
        (
            "invalid json",
            Box::new(|_| StubReply::raw(200, "application/json", b"{\"accessToken\":".to_vec())),
        ),
        (
            "missing field",
            Box::new(|_| StubReply::json(200, json!({"accessToken": "a", "userData": {}}))),
        ),
        (
            "mistyped field",
            Box::new(|_| {
                StubReply::json(
                    200,
                    json!({"accessToken": 1, "refreshToken": "r", "userData": {}}),
                )
            }),
        ),
        (
            "missing user",
            Box::new(|_| StubReply::json(200, json!({"accessToken": "a", "refreshToken": "r"}))),
        ),
        (
            "CRLF in token",
            Box::new(|_| {
                StubReply::json(
                    200,
                    json!({"accessToken": "a\r\nSet-Cookie: evil=1", "refreshToken": "r", "userData": {}}),
                )
            }),
        ),
        (
            "semicolon",
            Box::new(|_| {
                StubReply::json(
                    200,
                    json!({"accessToken": "a;Domain=evil", "refreshToken": "r", "userData": {}}),
                )
            }),
        ),
        (
            "comma",
            Box::new(|_| {
                StubReply::json(
                    200,
                    json!({"accessToken": "a", "refreshToken": "r,x", "userData": {}}),
                )
            }),
        ),
        (
            "space",
            Box::new(|_| {
                StubReply::json(
                    200,
                    json!({"accessToken": "a b", "refreshToken": "r", "userData": {}}),
                )
            }),
        ),
        ("reset", Box::new(|_| StubReply::Reset)),
        (
            "reset mid-answer",
            Box::new(|_| {
                StubReply::ResetAfter(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"acc".to_vec())
            }),
        ),
        (
            "body over 64 KiB",
            Box::new(|_| {
                StubReply::json(
                    200,
                    json!({"accessToken": "a", "refreshToken": "r", "userData": {"x": "y".repeat(70_000)}}),
                )
            }),
        ),
    ];
    for (i, (what, handler)) in cases.into_iter().enumerate() {
        auth.set_handler(handler);
        let r = proxy.get("/", &expired_session(&format!("rt-{i}"))).await;
        assert_eq!(r.status, 502, "{what}: {}", r.text());
        assert_eq!(r.json()["error"], "Bad Gateway", "{what}");
        assert!(r.set_cookies().is_empty(), "{what}: cookies must be kept");
    }
    assert_eq!(app.calls(), 0);
}

#[tokio::test]
async fn unreachable_auth_api_is_502() {
    let app = Stub::app().await;
    let auth = Stub::auth_api().await;
    let closed = free_port();
    let proxy = Proxy::builder(&app, &auth)
        .extra(format!(
            "auth_api: {{refresh_url: 'http://127.0.0.1:{closed}/refreshtoken'}}"
        ))
        .start()
        .await;
    let r = proxy.get("/", &expired_session("rt")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.set_cookies().is_empty());
    assert_eq!(app.calls(), 0);
}

#[tokio::test]
async fn slow_auth_api_is_504_without_waiting_for_it() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth)
        .extra("auth_api: {timeout_ms: 300}")
        .start()
        .await;
    auth.set_handler(|req| {
        StubReply::json(200, rotated(&req.cookie("refreshToken").unwrap()))
            .delayed(Duration::from_secs(10))
    });
    let started = Instant::now();
    let r = proxy.get("/", &expired_session("rt-slow")).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"], "Gateway Timeout");
    assert!(r.set_cookies().is_empty());
    // Answered on the proxy's 300 ms deadline (plus a margin for a loaded machine), not the
    // auth API's 10 s.
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    // Dripping the answer slower than the deadline is a timeout too.
    auth.set_handler(|_| StubReply::Drip {
        head: b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n"
            .to_vec(),
        body: b"{\"accessToken\":\"a\",\"refreshToken\":\"b\"} ".to_vec(),
        every: Duration::from_millis(100),
    });
    let r = proxy.get("/", &expired_session("rt-drip")).await;
    assert_eq!(r.status, 504);
    assert_eq!(app.calls(), 0);
}

#[tokio::test]
async fn app_down_after_a_refresh_still_delivers_the_new_cookies() {
    let auth = Stub::auth_api().await;
    let app = Stub::app().await;
    let down = free_port();
    let proxy = Proxy::builder(&app, &auth)
        .extra(format!("upstream: {{address: '127.0.0.1:{down}'}}"))
        .start()
        .await;
    let r = proxy.get("/", &expired_session("rt-appdown")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["reason"], "app unavailable");
    assert_eq!(r.set_cookies().len(), 5);
    assert_eq!(
        r.set_cookie_value("refreshToken").as_deref(),
        Some("api-refresh-after-rt-appdown")
    );
}

#[tokio::test]
async fn post_body_is_forwarded_intact_after_a_refresh() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let r = proxy
        .post("/api/upload", &expired_session("rt-post"), &body)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.set_cookies().len(), 5);
    let seen = app.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body, body);
    assert_eq!(
        seen.cookie("refreshToken").as_deref(),
        Some("api-refresh-after-rt-post")
    );
}

#[tokio::test]
async fn several_cookie_headers_reach_the_app_as_one() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let valid = access_token(600);
    let raw = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nCookie: a=1\r\nCookie: accessTokenEtls={valid}\r\nCookie: b=2\r\n\r\n"
    );
    assert_eq!(proxy.send(&raw).await.status, 200);
    assert_eq!(
        app.last().all("cookie"),
        vec![format!("a=1; accessTokenEtls={valid}; b=2")]
    );
    // And after a refresh.
    let raw = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nCookie: a=1; accessTokenEtls={}\r\nCookie: refreshTokenEtls={}\r\nCookie: refreshToken=rt-split\r\n\r\n",
        access_token(-1),
        refresh_token(600)
    );
    assert_eq!(proxy.send(&raw).await.status, 200);
    let seen = app.last();
    assert_eq!(seen.all("cookie").len(), 1);
    assert!(
        seen.header("cookie")
            .unwrap()
            .starts_with("a=1; accessTokenEtls=eyJ")
    );
    assert_eq!(
        seen.cookie("refreshToken").as_deref(),
        Some("api-refresh-after-rt-split")
    );
}

#[tokio::test]
async fn duplicate_access_cookies_give_one_outcome_and_one_value() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let valid = access_token(600);
    for cookie in [
        format!("accessTokenEtls={valid}; accessTokenEtls=junk"),
        format!("accessTokenEtls=junk; accessTokenEtls={valid}"),
    ] {
        let r = proxy.get("/", &cookie).await;
        assert_eq!(r.status, 200, "{cookie}");
        assert_eq!(
            app.last().header("cookie"),
            Some(format!("accessTokenEtls={valid}").as_str())
        );
    }
}

#[tokio::test]
async fn refresh_ahead_refreshes_a_token_that_is_about_to_expire() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth)
        .extra("tokens: {refresh_ahead_secs: 120}")
        .start()
        .await;
    let cookie = format!(
        "accessTokenEtls={}; refreshTokenEtls={}; refreshToken=rt-ahead",
        access_token(60),
        refresh_token(600)
    );
    let r = proxy.get("/", &cookie).await;
    assert_eq!((r.status, auth.calls(), r.set_cookies().len()), (200, 1, 5));
    // When the auth API fails, the still valid token carries the request.
    auth.set_handler(|_| StubReply::json(500, json!({})));
    let cookie = format!(
        "accessTokenEtls={}; refreshTokenEtls={}; refreshToken=rt-ahead-2",
        access_token(60),
        refresh_token(600)
    );
    let r = proxy.get("/", &cookie).await;
    assert_eq!(r.status, 200);
    assert!(r.set_cookies().is_empty());
    assert_eq!(app.last().header("cookie"), Some(cookie.as_str()));
}

#[tokio::test]
async fn configured_field_names_and_string_user_of_seed_000() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth)
        .extra("auth_api: {fields: {access_token: newAccessToken, refresh_token: newRefreshToken, user: newEtlsUser}}\ncookies: {secure: true, domain: example.com}")
        .start()
        .await;
    auth.set_handler(|_| StubReply::json(200, json!({"newAccessToken": "na", "newRefreshToken": "nr", "newEtlsUser": "user.jwt.value"})));
    let r = proxy.get("/", &expired_session("rt-000")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.set_cookie_value("etlsUser").as_deref(),
        Some("user.jwt.value")
    );
    assert_eq!(r.set_cookie_value("accessToken").as_deref(), Some("na"));
    let lines = r.set_cookies();
    let (set, host_only): (Vec<&str>, Vec<&str>) = lines
        .iter()
        .copied()
        .partition(|l| !l.contains("Max-Age=0"));
    assert_eq!((set.len(), host_only.len()), (5, 5), "{lines:?}");
    for line in set {
        assert!(
            line.contains("; Secure") && line.contains("Domain=example.com"),
            "{line}"
        );
    }
    // The host-only cookies of the login cleared, so the browser holds one of each.
    for line in host_only {
        assert!(!line.contains("Domain="), "{line}");
    }
}

#[tokio::test]
async fn without_a_user_field_etls_user_is_left_alone() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth)
        .extra("auth_api: {fields: {user: null}}")
        .start()
        .await;
    auth.set_handler(|_| StubReply::json(200, json!({"accessToken": "a", "refreshToken": "r"})));
    let r = proxy.get("/", &expired_session("rt-nouser")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.set_cookies().len(), 4);
    assert_eq!(r.set_cookie_value("etlsUser"), None);
    assert_eq!(app.last().cookie("etlsUser").as_deref(), Some("old-user"));
}

#[tokio::test]
async fn the_app_deleting_a_cookie_wins_other_app_cookies_are_kept_beside_ours() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    app.set_handler(|_| StubReply::Respond {
        status: 200,
        headers: vec![
            (
                "Set-Cookie".into(),
                "accessTokenEtls=; Path=/; Max-Age=0".into(),
            ),
            ("Set-Cookie".into(), "refreshToken=scoped; Path=/api".into()),
            ("Set-Cookie".into(), "theme=light; Path=/".into()),
        ],
        body: b"ok".to_vec(),
        delay: Duration::ZERO,
    });
    let proxy = Proxy::start(&app, &auth).await;
    let r = proxy.get("/app-logout", &expired_session("rt-app")).await;
    assert_eq!(r.status, 200);
    let lines = r.set_cookies();
    assert_eq!(lines.len(), 7, "{lines:?}");
    assert_eq!(
        &lines[..3],
        [
            "accessTokenEtls=; Path=/; Max-Age=0",
            "refreshToken=scoped; Path=/api",
            "theme=light; Path=/"
        ]
    );
    // The app's deletion stands: no new accessTokenEtls after it.
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("accessTokenEtls="))
            .count(),
        1
    );
    // The rotated refresh token is still delivered at Path=/.
    assert!(
        lines[3..]
            .iter()
            .any(|l| l.starts_with("refreshToken=api-refresh-after-rt-app;")),
        "{lines:?}"
    );
    for name in ["refreshTokenEtls", "accessToken", "etlsUser"] {
        assert!(
            lines[3..]
                .iter()
                .any(|l| l.starts_with(&format!("{name}="))),
            "{name}"
        );
    }
}

#[tokio::test]
async fn auth_api_connect_timeout_is_504() {
    // A listener whose accept queue is full: further SYNs go unanswered, so connecting hangs.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = socket.listen(0).unwrap();
    let port = full.local_addr().unwrap().port();
    let _queued = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth)
        .extra(format!(
            "auth_api: {{refresh_url: 'http://127.0.0.1:{port}/refreshtoken', timeout_ms: 300}}"
        ))
        .start()
        .await;
    let r = proxy.get("/", &expired_session("rt-connect")).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.set_cookies().is_empty());
    assert_eq!(app.calls(), 0);
}

#[tokio::test]
async fn the_logout_clears_with_the_configured_path_and_domain() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth)
        .extra("cookies: {path: /app, domain: example.com, secure: true, same_site: Strict}")
        .start()
        .await;
    let r = proxy.get("/app/x", "accessTokenEtls=junk").await;
    assert_eq!(r.status, 401);
    let lines = r.set_cookies();
    assert_eq!(lines.len(), 10, "and the host-only ones: {lines:?}");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line.contains("Domain=example.com"), i < 5, "{line}");
        for attr in [
            "Max-Age=0",
            "Path=/app",
            "Secure",
            "SameSite=Strict",
            "HttpOnly",
        ] {
            assert!(
                line.split("; ").any(|a| a == attr),
                "{attr} missing in {line}"
            );
        }
    }
}

#[tokio::test]
async fn a_refresh_call_is_never_sent_twice() {
    // The first call leaves a pooled connection; the second is received on it and the
    // connection dropped without an answer. Replaying it would reuse a rotated token.
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    assert_eq!(
        proxy.get("/", &expired_session("rt-pool-1")).await.status,
        200
    );
    auth.set_handler(|_| StubReply::Reset);
    let r = proxy.get("/", &expired_session("rt-pool-2")).await;
    assert_eq!(r.status, 502);
    assert!(r.set_cookies().is_empty());
    let sent: Vec<String> = auth
        .requests()
        .iter()
        .map(|r| r.header("cookie").unwrap().to_owned())
        .collect();
    assert_eq!(sent, ["refreshToken=rt-pool-1", "refreshToken=rt-pool-2"]);
}

#[tokio::test]
async fn interim_responses_do_not_take_the_new_cookies() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    app.set_handler(|_| {
        StubReply::Raw(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        )
    });
    let proxy = Proxy::start(&app, &auth).await;
    let mut conn = Conn::open(proxy.addr).await;
    let raw = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nCookie: {}\r\n\r\n",
        expired_session("rt-103")
    );
    let mut r = conn.request(raw.as_bytes()).await.unwrap();
    if r.status == 103 {
        assert!(r.set_cookies().is_empty());
        r = conn.next_response().await.unwrap();
    }
    assert_eq!(r.status, 200);
    assert_eq!(r.set_cookies().len(), 5);
}

#[tokio::test]
async fn expect_continue_gets_the_early_answer_at_once() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let started = Instant::now();
    let r = proxy
        .send("POST /dashboard HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\n")
        .await;
    assert_eq!(r.status, 401);
    // Not held until a body that never comes (the drain would wait 2 s).
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(app.calls(), 0);
}
