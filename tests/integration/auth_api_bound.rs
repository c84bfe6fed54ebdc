//! `auth_api.max_in_flight`: refreshes beyond the bound are answered 503 at once, cookies kept,
//! while valid tokens pass and a refresh-ahead forwards on its still valid token.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refreshes_beyond_max_in_flight_are_503_and_nothing_else_is_affected() {
    let app = Stub::app().await;
    let auth = Stub::slow_auth_api(Duration::from_secs(2)).await;
    let admin_port = free_port();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let proxy = Proxy::builder(&app, &auth)
        .extra(format!(
            "{{auth_api: {{max_in_flight: 2, timeout_ms: 8000, logout_url: 'http://{}/logout'}}, tokens: {{refresh_ahead_secs: 60}}, admin: {{listen: '127.0.0.1:{admin_port}'}}, pingora: {{threads: 2}}}}",
            auth.addr
        ))
        .start()
        .await;
    // Two sessions take both places ...
    let addr = proxy.addr;
    let mut slow = Vec::new();
    for n in 0..2 {
        let cookie = expired_session(&format!("opaque-rt-slow-{n}"));
        slow.push(tokio::spawn(async move {
            send_raw(
                addr,
                format!("GET /slow HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n").as_bytes(),
            )
            .await
        }));
    }
    until("two calls at the auth API", Duration::from_secs(5), || {
        auth.calls() == 2
    })
    .await;
    // ... so six other sessions are refused at once, cookies kept, never a logout.
    let mut busy = Vec::new();
    for n in 0..6 {
        let cookie = expired_session(&format!("opaque-rt-busy-{n}"));
        busy.push(tokio::spawn(async move {
            send_raw(
                addr,
                format!("GET /busy HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n").as_bytes(),
            )
            .await
        }));
    }
    for r in busy {
        let r = r.await.unwrap();
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(
            r.json(),
            json!({"error": "Service Unavailable", "reason": "auth API busy"})
        );
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(r.set_cookies().is_empty(), "{:?}", r.set_cookies());
    }
    // The refresh endpoint is refused the same way.
    let r = proxy
        .post(
            "/api/auth/refreshtoken",
            &expired_session("opaque-rt-endpoint"),
            b"",
        )
        .await;
    assert_eq!(r.status, 503);
    assert!(r.set_cookies().is_empty());
    // A valid token passes untouched.
    let valid = format!("accessTokenEtls={}", access_token(600));
    let r = proxy.get("/valid", &valid).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.set_cookies().is_empty());
    // A refresh-ahead forwards on its still valid token.
    let due = format!(
        "accessTokenEtls={}; refreshTokenEtls={}; refreshToken=opaque-rt-due",
        access_token(30),
        refresh_token(3600)
    );
    let r = proxy.get("/due", &due).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.set_cookies().is_empty());
    // The backend logout waits for no place: the browser is logged out, the call is skipped.
    let r = proxy
        .post("/api/auth/logout", &expired_session("opaque-rt-out"), b"")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.set_cookies().len(), 5);
    assert_eq!(auth.calls(), 2, "exactly two calls reached the auth API");
    assert_eq!(
        app.requests().iter().filter(|r| r.path == "/busy").count(),
        0,
        "nothing refused was forwarded"
    );

    for r in slow {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.set_cookies().len(), 5);
    }
    // The places are free again: a new refresh works.
    let r = proxy
        .get("/after", &expired_session("opaque-rt-after"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.set_cookies().len(), 5);
    assert_eq!(auth.calls(), 3);

    let text = admin_get(admin, "/metrics").await.text();
    // Six requests, the endpoint, the refresh-ahead.
    assert_eq!(series(&text, "etls_proxy_auth_api_busy_total"), 8.0);
    assert_eq!(
        series(&text, "etls_proxy_auth_api_logout_total{outcome=\"busy\"}"),
        1.0
    );
}

#[test]
fn check_refuses_a_zero_bound_and_a_bad_logout_url() {
    for (yaml, key) in [
        ("auth_api: {max_in_flight: 0}", "auth_api.max_in_flight"),
        (
            "auth_api: {logout_url: 'ftp://x/logout'}",
            "auth_api.logout_url",
        ),
    ] {
        let (out, text) = check_config(yaml);
        assert_eq!(out.status.code(), Some(2), "{yaml}: {text}");
        assert!(text.contains(&format!("{key}: ")), "{yaml}: {text}");
        assert!(!text.contains("panicked"), "{text}");
    }
    let (out, _) =
        check_config("auth_api: {max_in_flight: 1, logout_url: 'http://127.0.0.1:3001/logout'}");
    assert!(out.status.success(), "{out:?}");
}
