//! One refresh per session, however many requests race; the grace window; sessions never mixed.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use crate::support::*;

fn session(refresh_etls: &str, rt: &str) -> String {
    format!(
        "accessTokenEtls={}; refreshTokenEtls={refresh_etls}; refreshToken={rt}",
        access_token(-10)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_requests_share_one_auth_api_call() {
    let app = Stub::app().await;
    let auth = Stub::slow_auth_api(Duration::from_millis(300)).await;
    let proxy = Proxy::builder(&app, &auth)
        .extra("pingora: {threads: 2}")
        .start()
        .await;
    let cookie = session(&refresh_token(3600), "rt-herd");
    let responses = fan_out(proxy.addr, &cookie, 50).await;
    let mut set_cookie_sets = HashSet::new();
    for r in responses {
        assert_eq!(r.status, 200, "{}", r.text());
        set_cookie_sets.insert(r.set_cookies().join("\n"));
    }
    assert_eq!(auth.calls(), 1, "exactly one auth API call");
    assert_eq!(
        set_cookie_sets.len(),
        1,
        "every request got byte-identical cookies"
    );
    let forwarded: HashSet<String> = app
        .requests()
        .iter()
        .map(|r| r.header("cookie").unwrap().to_owned())
        .collect();
    assert_eq!(app.calls(), 50);
    assert_eq!(
        forwarded.len(),
        1,
        "the app saw the same new tokens on every request"
    );
}

#[tokio::test]
async fn the_grace_window_reuses_the_result_then_lets_go() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth)
        .extra("refresh: {grace_secs: 2}")
        .start()
        .await;
    let cookie = session(&refresh_token(3600), "rt-grace");
    let first = proxy.get("/a", &cookie).await;
    assert_eq!(first.status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A late request still carrying the old cookies: same tokens, in its Cookie and its Set-Cookie.
    let late = proxy.get("/b", &cookie).await;
    assert_eq!(late.status, 200);
    assert_eq!(auth.calls(), 1);
    assert_eq!(late.set_cookies(), first.set_cookies());
    let reqs = app.requests();
    assert_eq!(reqs[0].header("cookie"), reqs[1].header("cookie"));
    // Once the window is over, the old refresh token goes to the auth API again.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let after = proxy.get("/c", &cookie).await;
    assert_eq!(after.status, 200);
    assert_eq!(auth.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_share_a_failure_but_the_next_request_tries_again() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    auth.set_handler(|_| StubReply::json(500, json!({})).delayed(Duration::from_millis(300)));
    let proxy = Proxy::start(&app, &auth).await;
    let cookie = session(&refresh_token(3600), "rt-fail");
    let responses = fan_out(proxy.addr, &cookie, 10).await;
    for r in responses {
        assert_eq!(r.status, 502);
    }
    assert_eq!(auth.calls(), 1);
    auth.set_handler(|req| StubReply::json(200, rotated(&req.cookie("refreshToken").unwrap())));
    assert_eq!(proxy.get("/", &cookie).await.status, 200);
    assert_eq!(auth.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_devices_with_the_same_etls_token_never_share_a_flight() {
    let app = Stub::app().await;
    let auth = Stub::slow_auth_api(Duration::from_millis(200)).await;
    let proxy = Proxy::start(&app, &auth).await;
    // Same username, same second: byte-identical refreshTokenEtls on both devices.
    let shared = refresh_token(3600);
    let (laptop, phone) = (session(&shared, "rt-laptop"), session(&shared, "rt-phone"));
    let (a, b) = tokio::join!(proxy.get("/", &laptop), proxy.get("/", &phone));
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(auth.calls(), 2);
    assert_eq!(
        a.set_cookie_value("refreshToken").as_deref(),
        Some("api-refresh-after-rt-laptop")
    );
    assert_eq!(
        b.set_cookie_value("refreshToken").as_deref(),
        Some("api-refresh-after-rt-phone")
    );
    let sent: HashSet<String> = auth
        .requests()
        .iter()
        .map(|r| r.header("cookie").unwrap().to_owned())
        .collect();
    assert_eq!(
        sent,
        HashSet::from([
            "refreshToken=rt-laptop".to_owned(),
            "refreshToken=rt-phone".to_owned()
        ])
    );
}

/// Found with a page slower than the grace window: the window started when the refresh
/// landed, not when the new cookies reached the browser, so a request with the old cookies
/// while the slow answer was still on its way refreshed again (a rotating auth API refuses
/// that: a logout). Now the result is kept until the answer carrying it has left, and a grace
/// window from then.
#[tokio::test]
async fn a_result_is_kept_while_a_slow_answer_carries_it_and_a_grace_window_after() {
    let app = Stub::app_slow_at("/slow", Duration::from_millis(2500)).await;
    let auth = Stub::auth_api().await;
    let proxy = Proxy::builder(&app, &auth)
        .extra("refresh: {grace_secs: 1}")
        .start()
        .await;
    let old = expired_session("rt-slow-page");
    let slow = spawn_get(proxy.addr, "/slow", &old);
    app.wait_for_calls(1).await;
    // Past the grace window counted from the refresh, the slow answer still on its way.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let meanwhile = proxy.get("/fast", &old).await;
    assert_eq!(meanwhile.status, 200, "{}", meanwhile.text());
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, 200);
    assert_eq!(
        slow.set_cookies(),
        meanwhile.set_cookies(),
        "the same tokens"
    );
    // Within a grace window of the slow answer leaving.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(proxy.get("/fast", &old).await.status, 200);
    assert_eq!(auth.calls(), 1, "one refresh for the three requests");
    // And then the window passes as it always did.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(proxy.get("/fast", &old).await.status, 200);
    assert_eq!(auth.calls(), 2);
}
