//! Several app instances (`upstream.addresses`): round robin, a TCP health check that takes a
//! stopped instance out of rotation and brings it back, and the 502 when none is left.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

/// A stand-in app that says which instance answered.
async fn instance(name: &'static str) -> Stub {
    Stub::start(move |_| StubReply::json(200, json!({"instance": name}))).await
}

/// Replaces the single `upstream.address` of the base test configuration with a list.
fn addresses(list: &[String], health_check_secs: u64) -> String {
    format!(
        "upstream: {{address: null, addresses: [{}], health_check_secs: {health_check_secs}}}",
        list.iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Which instance answered a public path (no token involved), or the status when none did.
async fn who(proxy: &Proxy) -> Result<String, u16> {
    let r = proxy.get("/_next/static/app.js", "").await;
    match r.status {
        200 => Ok(r.json()["instance"].as_str().unwrap().to_owned()),
        status => Err(status),
    }
}

#[tokio::test]
async fn instances_take_turns_and_a_stopped_one_leaves_and_rejoins_the_rotation() {
    let (a, b, auth) = (
        instance("a").await,
        instance("b").await,
        Stub::auth_api().await,
    );
    let list = [a.addr.to_string(), b.addr.to_string()];
    let proxy = Proxy::builder(&a, &auth)
        .extra(addresses(&list, 1))
        .start()
        .await;

    // Round robin: one request each, in turn.
    let mut answered = Vec::new();
    for _ in 0..10 {
        answered.push(who(&proxy).await.expect("both instances are up"));
    }
    for pair in answered.windows(2) {
        assert_ne!(pair[0], pair[1], "{answered:?}");
    }
    assert_eq!((a.calls(), b.calls()), (5, 5));

    // b goes away: once the health check has seen it, every request goes to a, none fails.
    b.stop().await;
    let port = format!(":{})", b.addr.port());
    until_async("b marked unhealthy", Duration::from_secs(5), || async {
        proxy
            .log()
            .lines()
            .any(|l| l.contains("becomes unhealthy") && l.contains(&port))
    })
    .await;
    let b_calls = b.calls();
    for _ in 0..10 {
        assert_eq!(who(&proxy).await, Ok("a".to_owned()));
    }
    assert_eq!(b.calls(), b_calls);

    // b is back on its port: the next check puts it back in rotation, and nothing fails while
    // it waits for that check.
    b.restart().await;
    until_async("b gets a request", Duration::from_secs(5), || async {
        let answer = who(&proxy).await;
        assert!(answer.is_ok(), "{answer:?}");
        answer == Ok("b".to_owned())
    })
    .await;
    assert!(b.calls() > b_calls);
    assert!(proxy.log().contains("becomes healthy"));
}

#[tokio::test]
async fn an_instance_down_from_the_start_gets_nothing_once_checked() {
    let (a, auth) = (instance("a").await, Stub::auth_api().await);
    let down = free_port();
    let list = [format!("127.0.0.1:{down}"), a.addr.to_string()];
    let proxy = Proxy::builder(&a, &auth)
        .extra(addresses(&list, 1))
        .start()
        .await;
    until_async("the first health check", Duration::from_secs(5), || async {
        proxy.log().contains("becomes unhealthy")
    })
    .await;
    for _ in 0..10 {
        assert_eq!(who(&proxy).await, Ok("a".to_owned()));
    }
    assert_eq!(a.calls(), 10);
}

#[tokio::test]
async fn no_healthy_instance_is_the_502_answer_still_carrying_the_renewed_cookies() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let list = [
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    ];
    let proxy = Proxy::builder(&app, &auth)
        .extra(addresses(&list, 1))
        .start()
        .await;
    until_async(
        "both instances marked unhealthy",
        Duration::from_secs(5),
        || async { proxy.log().matches("becomes unhealthy").count() >= 2 },
    )
    .await;
    let r = proxy.get("/", &expired_session("rt-nobody")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"error": "Bad Gateway", "reason": "app unavailable"})
    );
    assert_eq!(r.set_cookies().len(), 5, "{:?}", r.set_cookies());
    assert_eq!(
        r.set_cookie_value("refreshToken").as_deref(),
        Some("api-refresh-after-rt-nobody")
    );
    assert_eq!(auth.calls(), 1);
    assert_eq!(app.calls(), 0);
    let r = proxy.get("/_next/static/app.js", "").await;
    assert_eq!(r.status, 502);
    assert!(
        proxy.log().contains("no healthy app instance"),
        "{}",
        proxy.log()
    );
}

#[tokio::test]
async fn a_reload_that_changes_the_instances_says_a_restart_is_needed() {
    let (a, b, auth) = (
        instance("a").await,
        instance("b").await,
        Stub::auth_api().await,
    );
    let list = [a.addr.to_string(), b.addr.to_string()];
    let proxy = Proxy::builder(&a, &auth)
        .extra(addresses(&list, 5))
        .start()
        .await;
    proxy.reload_with(&addresses(&list[..1], 5));
    until_async("the reload", Duration::from_secs(5), || async {
        proxy.log().contains("configuration reloaded")
    })
    .await;
    let line = proxy
        .log()
        .lines()
        .find(|l| l.contains("configuration reloaded"))
        .unwrap()
        .to_owned();
    assert!(
        line.contains("upstream.addresses changed") && line.contains("restart"),
        "{line}"
    );
    // The instances of the start stay in rotation until then.
    for _ in 0..4 {
        assert!(who(&proxy).await.is_ok());
    }
    assert_eq!((a.calls(), b.calls()), (2, 2));
}

#[tokio::test]
async fn a_refused_connection_is_retried_on_the_next_instance_before_any_check_notices() {
    let (a, b, auth) = (
        instance("a").await,
        instance("b").await,
        Stub::auth_api().await,
    );
    let list = [a.addr.to_string(), b.addr.to_string()];
    // The first check runs at start; the next one only in an hour.
    let proxy = Proxy::builder(&a, &auth)
        .extra(addresses(&list, 3600))
        .start()
        .await;
    assert!(who(&proxy).await.is_ok());
    b.stop().await;
    for _ in 0..10 {
        assert_eq!(who(&proxy).await, Ok("a".to_owned()));
    }
    // A refresh crossing the dead instance is neither lost nor repeated.
    let r = proxy.get("/", &expired_session("opaque-retry")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.set_cookies().len(), 5);
    assert_eq!(auth.calls(), 1);
}
