//! The endpoints the proxy answers itself: seed 000's refresh route and the logout.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

fn session(access: &str, rt: &str) -> String {
    format!(
        "accessTokenEtls={access}; refreshTokenEtls={}; refreshToken={rt}",
        refresh_token(3600)
    )
}

#[tokio::test]
async fn refresh_endpoint_refreshes_even_a_valid_session_and_is_not_forwarded() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    for (i, access) in [access_token(600), access_token(-5), "junk".to_owned()]
        .iter()
        .enumerate()
    {
        let r = proxy
            .post(
                "/api/auth/refreshtoken",
                &session(access, &format!("rt-e{i}")),
                b"",
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json(), json!({"message": "Tokens refreshed"}));
        assert_eq!(r.set_cookies().len(), 5);
        assert_eq!(
            r.set_cookie_value("refreshToken"),
            Some(format!("api-refresh-after-rt-e{i}"))
        );
    }
    assert_eq!(auth.calls(), 3);
    assert_eq!(app.calls(), 0);
}

#[tokio::test]
async fn refresh_endpoint_refuses_and_fails_like_the_table() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth)
        .extra("auth_api: {timeout_ms: 300}")
        .start()
        .await;
    let r = proxy
        .post("/api/auth/refreshtoken", "theme=dark", b"")
        .await;
    assert_eq!(r.status, 401);
    assert!(
        r.set_cookies().is_empty(),
        "none of the five sent: nothing to clear"
    );
    assert_eq!(auth.calls(), 0);

    auth.set_handler(|_| StubReply::json(403, json!({"error": "invalid_grant"})));
    let r = proxy
        .post("/api/auth/refreshtoken", &session("x", "rt-403"), b"")
        .await;
    assert_eq!(r.status, 401);

    auth.set_handler(|_| StubReply::json(500, json!({})));
    let r = proxy
        .post("/api/auth/refreshtoken", &session("x", "rt-500"), b"")
        .await;
    assert_eq!(r.status, 502);
    assert!(r.set_cookies().is_empty());

    auth.set_handler(|_| StubReply::json(200, json!({})).delayed(Duration::from_secs(5)));
    let r = proxy
        .post("/api/auth/refreshtoken", &session("x", "rt-slow"), b"")
        .await;
    assert_eq!(r.status, 504);
    assert!(r.set_cookies().is_empty());
    assert_eq!(app.calls(), 0);
}

#[tokio::test]
async fn logout_endpoint_clears_the_five_cookies() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth)
        .extra("cookies: {path: /app, domain: example.com}")
        .start()
        .await;
    let r = proxy
        .post(
            "/api/auth/logout",
            &session(&access_token(600), "rt"),
            b"{}",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"message": "Logged out"}));
    let lines = r.set_cookies();
    // With a Domain, the host-only cookies the login set are cleared too (the last five).
    assert_eq!(lines.len(), 10);
    for (i, line) in lines.iter().enumerate() {
        assert!(line.contains("=;") && line.contains("Max-Age=0"), "{line}");
        assert_eq!(line.contains("Domain=example.com"), i < 5, "{line}");
        assert!(line.contains("Path=/app"), "{line}");
    }
    assert_eq!((app.calls(), auth.calls()), (0, 0));
}

#[tokio::test]
async fn endpoints_answer_405_to_other_methods() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    for path in ["/api/auth/refreshtoken", "/api/auth/logout"] {
        let r = proxy.get(path, &session(&access_token(600), "rt")).await;
        assert_eq!(r.status, 405, "{path}");
        assert_eq!(r.header("allow"), Some("POST"));
    }
    assert_eq!((app.calls(), auth.calls()), (0, 0));
}

#[tokio::test]
async fn disabled_endpoints_are_forwarded_like_any_request() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth)
        .extra("routes: {refresh_endpoint: null, logout_endpoint: null}")
        .start()
        .await;
    let valid = session(&access_token(600), "rt");
    assert_eq!(
        proxy
            .post("/api/auth/refreshtoken", &valid, b"")
            .await
            .status,
        200
    );
    assert_eq!(
        proxy.post("/api/auth/logout", &valid, b"").await.status,
        200
    );
    assert_eq!(app.calls(), 2);
    assert_eq!(auth.calls(), 0);
}

#[tokio::test]
async fn early_answers_keep_the_connection_alive_even_with_a_body() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let mut conn = Conn::open(proxy.addr).await;
    let body = "x".repeat(10_000);
    let logout = format!(
        "POST /api/auth/logout HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(conn.request(logout.as_bytes()).await.unwrap().status, 200);
    let refused = format!(
        "POST /dashboard HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(conn.request(refused.as_bytes()).await.unwrap().status, 401);
    let valid = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nCookie: accessTokenEtls={}\r\n\r\n",
        access_token(600)
    );
    assert_eq!(conn.request(valid.as_bytes()).await.unwrap().status, 200);
    assert_eq!(app.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_refresh_endpoint_and_page_requests_share_one_flight() {
    let app = Stub::app().await;
    let auth = Stub::slow_auth_api(Duration::from_millis(300)).await;
    let proxy = Proxy::builder(&app, &auth)
        .extra("pingora: {threads: 2}")
        .start()
        .await;
    let cookie = session(&access_token(-5), "rt-shared");
    let (page, endpoint) = tokio::join!(
        proxy.get("/", &cookie),
        proxy.post("/api/auth/refreshtoken", &cookie, b"")
    );
    assert_eq!((page.status, endpoint.status), (200, 200));
    assert_eq!(auth.calls(), 1);
    assert_eq!(page.set_cookies(), endpoint.set_cookies());
}
