//! The Host a request names, and what reaches the log of a failed request: a missing or invalid
//! Host is a 400 that never reaches the app (as nginx answers); no query string and no raw
//! control or line-separator character reaches any log line.

use crate::support::*;

#[tokio::test]
async fn requests_without_a_valid_host_are_400_and_never_reach_the_app() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let cookie = format!("accessTokenEtls={}", access_token(600));
    for head in [
        "GET /page HTTP/1.1\r\n".to_owned(),
        "GET /page HTTP/1.1\r\nHost: a b\r\n".to_owned(),
        "GET /page HTTP/1.1\r\nHost: \r\n".to_owned(),
        "GET /page HTTP/1.1\r\nHost: app.test/x\r\n".to_owned(),
        "GET /page HTTP/1.1\r\nHost: app.test:80x\r\n".to_owned(),
        "GET /favicon.ico HTTP/1.1\r\nHost: a\u{2028}b\r\n".to_owned(),
    ] {
        let r = proxy.send(&format!("{head}Cookie: {cookie}\r\n\r\n")).await;
        assert_eq!(r.status, 400, "{head:?}");
        assert_eq!(r.text(), r#"{"error":"Bad Request"}"#, "{head:?}");
        assert_eq!(r.header("connection"), Some("close"), "{head:?}");
    }
    // Two Host fields: Pingora answers its own 400 before any hook.
    let r = proxy
        .send("GET /page HTTP/1.1\r\nHost: app.test\r\nHost: other.test\r\n\r\n")
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(app.calls(), 0);
    // HTTP/1.0 may leave Host out (nginx too); a valid Host passes.
    for head in [
        "GET /page HTTP/1.0\r\n",
        "GET /page HTTP/1.1\r\nHost: app.test:8080\r\n",
        "GET /page HTTP/1.1\r\nHost: [::1]:8080\r\n",
    ] {
        let r = proxy.send(&format!("{head}Cookie: {cookie}\r\n\r\n")).await;
        assert_eq!(r.status, 200, "{head:?}");
    }
    assert_eq!(app.calls(), 3);
}

#[tokio::test]
async fn a_failed_request_logs_neither_its_query_nor_raw_host_bytes() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    app.stop().await;
    let r = proxy
        .send("GET /favicon.ico?password=hunter2 HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    assert_eq!(r.status, 502);
    let r = proxy
        .send("GET /favicon.ico?password=hunter2 HTTP/1.1\r\nHost: app\u{2028}.test\r\n\r\n")
        .await;
    assert_eq!(r.status, 400);
    // The error line is written after the answer: wait for it, bounded.
    let logged = || proxy.log().contains("Fail to proxy");
    until("the error line", std::time::Duration::from_secs(5), logged).await;
    let log = proxy.log();
    assert!(log.contains("Fail to proxy"), "{log}");
    assert!(log.contains("GET /favicon.ico, Host: app.test"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
    assert!(!log.contains("password"), "{log}");
    assert!(!log.contains('\u{2028}'), "{log}");
}

#[tokio::test]
async fn no_raw_line_separator_reaches_the_json_access_log() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth)
        .extra("log: {format: json}")
        .start()
        .await;
    for path in ["/a\u{2028}b", "/a\u{2029}b", "/a\u{202e}b"] {
        let r = proxy
            .send(&format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n"))
            .await;
        assert_eq!(r.status, 401);
    }
    let logged = || proxy.log().matches("\"decision\"").count() >= 3;
    until(
        "three access lines",
        std::time::Duration::from_secs(5),
        logged,
    )
    .await;
    let log = proxy.log();
    assert_eq!(log.matches("\"decision\"").count(), 3, "{log}");
    assert!(log.contains(r#""path":"/a\u2028b""#), "{log}");
    for raw in ['\u{2028}', '\u{2029}', '\u{202e}'] {
        assert!(!log.contains(raw), "{log}");
    }
}

/// A `Connection` header naming a field the proxy sets (or a pseudo-header) is a 400 before
/// anything else: Pingora would refuse to build the app's request from it, after the refresh
/// had spent the refresh token, with an error line blaming the app.
#[tokio::test]
async fn a_connection_header_naming_what_the_proxy_sets_is_400_before_any_refresh() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let expired = expired_session("opaque-rt-connection");
    for option in [
        "x-forwarded-for",
        "Host",
        "keep-alive, X-Forwarded-Proto",
        ":authority",
    ] {
        let r = proxy
            .send(&format!(
                "GET /page HTTP/1.1\r\nHost: app.test\r\nConnection: {option}\r\nCookie: {expired}\r\n\r\n"
            ))
            .await;
        assert_eq!(r.status, 400, "{option}");
        assert_eq!(r.text(), r#"{"error":"Bad Request"}"#, "{option}");
        assert!(
            r.set_cookies().is_empty(),
            "{option}: {:?}",
            r.set_cookies()
        );
    }
    assert_eq!(
        (auth.calls(), app.calls()),
        (0, 0),
        "no refresh, nothing forwarded"
    );
    assert!(!proxy.log().contains("Fail to proxy"), "{}", proxy.log());
    // Options that name nothing the proxy sets pass, and the refresh runs.
    let r = proxy
        .send(&format!(
            "GET /page HTTP/1.1\r\nHost: app.test\r\nConnection: keep-alive, x-request-id\r\nCookie: {expired}\r\n\r\n"
        ))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(auth.calls(), 1);
}
