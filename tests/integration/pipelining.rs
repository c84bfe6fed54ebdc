//! HTTP/1.1 pipelining (RFC 9112 §9.3.2): a request sent before the answer to the previous one
//! is served after it, in order, on the same connection, while the app is slow and while a
//! refresh runs. Pingora's default answered the pending request with a 400 instead.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

fn get(path: &str, cookie: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n").into_bytes()
}

fn lines(r: &Response) -> Vec<String> {
    r.set_cookies().iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn a_request_pipelined_behind_a_pending_answer_is_served_after_it() {
    let app = Stub::start(|req| {
        StubReply::json(200, json!({"path": req.path, "cookie": req.all("cookie")}))
            .delayed(Duration::from_millis(300))
    })
    .await;
    let auth = Stub::slow_auth_api(Duration::from_millis(200)).await;
    let proxy = Proxy::start(&app, &auth).await;
    let valid = format!("accessTokenEtls={}", access_token(600));
    let expired = expired_session("opaque-rt-pipelined");
    for (what, cookie) in [("valid", &valid), ("expired", &expired)] {
        let mut conn = Conn::open(proxy.addr).await;
        conn.send(&get("/first", cookie)).await;
        // The first answer is pending (the refresh, then the app) when the second arrives.
        tokio::time::sleep(Duration::from_millis(100)).await;
        conn.send(&get("/second", cookie)).await;
        let first = conn.next_response().await.expect("the first answer");
        let second = conn.next_response().await.expect("the second answer");
        for (r, path) in [(&first, "/first"), (&second, "/second")] {
            assert_eq!(r.status, 200, "{what} {path}: {}", r.text());
            assert_eq!(r.json()["path"], path, "{what}: in order");
        }
        if what == "expired" {
            assert_eq!(first.set_cookies().len(), 5);
            assert_eq!(
                lines(&second),
                lines(&first),
                "the kept result, the same tokens"
            );
            assert_eq!(auth.calls(), 1);
        }
        // The connection is still good for the next request.
        let third = conn
            .request(&get("/third", &valid))
            .await
            .expect("kept alive");
        assert_eq!(third.status, 200, "{what}");
    }
}

/// A WebSocket handshake the app declines (an ordinary answer, not a 101) is an ordinary
/// request: one pipelined behind it is served after it too.
#[tokio::test]
async fn a_request_pipelined_behind_a_declined_upgrade_is_served_after_it() {
    let app = Stub::start(|req| {
        StubReply::json(403, json!({"path": req.path})).delayed(Duration::from_millis(300))
    })
    .await;
    let auth = Stub::auth_api().await;
    let proxy = Proxy::start(&app, &auth).await;
    let cookie = expired_session("opaque-rt-declined-upgrade");
    let upgrade = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Cookie: {cookie}\r\n\r\n"
    );
    let mut conn = Conn::open(proxy.addr).await;
    conn.send(upgrade.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.send(&get("/after", &cookie)).await;
    let declined = conn.next_response().await.expect("the app's answer");
    assert_eq!(declined.status, 403, "{}", declined.text());
    assert_eq!(declined.json()["path"], "/ws");
    assert_eq!(declined.set_cookies().len(), 5, "the rotated tokens");
    let after = conn.next_response().await.expect("the pipelined answer");
    assert_eq!(after.status, 403, "{}", after.text());
    assert_eq!(after.json()["path"], "/after");
    assert_eq!(lines(&after), lines(&declined));
    assert_eq!(auth.calls(), 1);
}
