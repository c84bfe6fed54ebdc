//! No token, cookie value or secret reaches the log, even at `RUST_LOG=trace`, where Pingora
//! prints whole request headers, and when it prints the raw buffer of a malformed request.

use crate::support::*;

#[tokio::test]
async fn trace_logs_carry_no_token_and_no_secret() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    // A chunked answer: Pingora traces body chunks one escaped character at a time.
    auth.set_handler(|req| {
        let body = rotated(&req.cookie("refreshToken").unwrap()).to_string();
        let raw = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        );
        StubReply::Raw(raw.into_bytes())
    });
    let proxy = Proxy::builder(&app, &auth).rust_log("trace").start().await;
    let valid = access_token(600);
    let expired = access_token(-5);
    let refresh = refresh_token(3600);
    let api_rt = "rt-log-check-opaque-api-token";
    let tampered = format!("{}x", &valid[..valid.len() - 1]);

    let refreshed = proxy
        .get("/a", &format!("sid=opaque-app-session; accessTokenEtls={expired}; refreshTokenEtls={refresh}; refreshToken={api_rt}; etlsUser=opaque-user-value"))
        .await;
    assert_eq!(refreshed.status, 200);
    assert_eq!(
        proxy
            .get("/b", &format!("accessTokenEtls={valid}"))
            .await
            .status,
        200
    );
    assert_eq!(
        proxy
            .get("/c", &format!("accessTokenEtls={tampered}"))
            .await
            .status,
        401
    );
    let malformed = format!(
        "GET /d HTTP/1.1\r\nHost: x\r\nCookie: accessTokenEtls={valid}; refreshToken={api_rt}\r\nBad Header: x\r\n\r\n"
    );
    let _ = send_raw_lossy(proxy.addr, malformed.as_bytes()).await;
    assert_eq!(
        proxy
            .post("/api/auth/logout", &format!("accessTokenEtls={valid}"), b"")
            .await
            .status,
        200
    );

    let log = proxy.stop();
    assert!(
        log.contains("DEBUG etls_proxy::proxy"),
        "trace logging was on: {log}"
    );
    // Pingora's own header and body dumps are held back whatever the level.
    assert!(
        !log.contains("DEBUG pingora") && !log.contains("TRACE pingora"),
        "{log}"
    );
    let mut secrets: Vec<String> = vec![
        valid.clone(),
        expired,
        refresh,
        tampered,
        api_rt.into(),
        "opaque-user-value".into(),
        "opaque-app-session".into(),
        ACCESS_SECRET.into(),
        REFRESH_SECRET.into(),
    ];
    for name in [
        "accessTokenEtls",
        "refreshTokenEtls",
        "accessToken",
        "refreshToken",
        "etlsUser",
    ] {
        secrets.push(refreshed.set_cookie_value(name).unwrap());
    }
    for s in &secrets {
        // The signature alone is enough to replay nothing, but no part may leak either.
        for part in s.split('.').filter(|p| p.len() >= 12) {
            assert!(!log.contains(part), "{part} leaked into the log:\n{log}");
        }
    }
}

async fn send_raw_lossy(addr: std::net::SocketAddr, raw: &[u8]) -> Option<Response> {
    let mut conn = Conn::open(addr).await;
    conn.request(raw).await
}
