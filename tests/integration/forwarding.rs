//! X-Forwarded-For/-Proto/-Host and X-Request-Id toward the app, the request id on every
//! answer, the client and the id in the access log, and `downstream.trusted_proxies`.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

const SPOOFED: &str = "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7, 8.8.8.8\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n";

fn valid_cookie() -> String {
    format!("accessTokenEtls={}", access_token(600))
}

fn request(path: &str, cookie: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nCookie: {cookie}\r\n{extra}\r\n")
}

fn is_generated_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn values_from_an_untrusted_peer_are_replaced() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let extra = format!("{SPOOFED}X-Request-Id: chosen-by-the-client\r\n");
    let r = proxy.send(&request("/a", &valid_cookie(), &extra)).await;
    assert_eq!(r.status, 200);
    let seen = app.last();
    assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.all("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.all("x-forwarded-host"), ["app.test"]);
    let ids = seen.all("x-request-id");
    assert_eq!(ids.len(), 1);
    assert!(is_generated_id(ids[0]), "{ids:?}");
    assert_eq!(
        r.all("x-request-id"),
        ids,
        "the answer carries the app's id"
    );

    // A new id per request.
    let r2 = proxy.send(&request("/a", &valid_cookie(), "")).await;
    let id2 = r2.header("x-request-id").unwrap().to_owned();
    assert!(is_generated_id(&id2));
    assert_ne!(id2, ids[0]);
    assert_eq!(app.last().header("x-request-id"), Some(id2.as_str()));
}

#[tokio::test]
async fn a_trusted_peer_keeps_its_chain_proto_host_and_valid_id() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth)
        .extra("downstream: {trusted_proxies: ['10.0.0.0/8', '127.0.0.1/32']}")
        .start()
        .await;
    let extra = format!("{SPOOFED}X-Request-Id: edge-4f1c.a_9\r\n");
    let r = proxy.send(&request("/a", &valid_cookie(), &extra)).await;
    assert_eq!(r.status, 200);
    let seen = app.last();
    assert_eq!(
        seen.all("x-forwarded-for"),
        ["6.6.6.6, 7.7.7.7, 8.8.8.8, 127.0.0.1"]
    );
    assert_eq!(seen.all("x-forwarded-proto"), ["https"]);
    assert_eq!(seen.all("x-forwarded-host"), ["evil.example"]);
    assert_eq!(seen.all("x-request-id"), ["edge-4f1c.a_9"]);
    assert_eq!(r.header("x-request-id"), Some("edge-4f1c.a_9"));

    // Nothing sent: the proxy's own values, even from a trusted peer.
    proxy.send(&request("/b", &valid_cookie(), "")).await;
    let seen = app.last();
    assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.all("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.all("x-forwarded-host"), ["app.test"]);
    assert!(is_generated_id(seen.header("x-request-id").unwrap()));

    // An invalid id is replaced, from a trusted peer too.
    for bad in ["has space", "a,b", &"x".repeat(129)] {
        let r = proxy
            .send(&request(
                "/c",
                &valid_cookie(),
                &format!("X-Request-Id: {bad}\r\n"),
            ))
            .await;
        let id = app.last().header("x-request-id").unwrap().to_owned();
        assert!(is_generated_id(&id), "{bad:?} became {id:?}");
        assert_eq!(r.header("x-request-id"), Some(id.as_str()));
    }
}

#[tokio::test]
async fn the_proxys_own_answers_carry_the_request_id() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth)
        .extra("{downstream: {trusted_proxies: ['127.0.0.1']}, routes: {login_redirect: /login}}")
        .start()
        .await;
    // 401: no session.
    let r = proxy.send(&request("/p", "theme=dark", "")).await;
    assert_refused_without_clears(&r);
    assert!(is_generated_id(r.header("x-request-id").unwrap()));
    // 401 keeping a trusted peer's id.
    let r = proxy
        .send(&request("/p", "theme=dark", "X-Request-Id: edge-77\r\n"))
        .await;
    assert_refused_without_clears(&r);
    assert_eq!(r.all("x-request-id"), ["edge-77"]);
    // 302: the login redirect.
    let navigate =
        "GET /p HTTP/1.1\r\nHost: x\r\nSec-Fetch-Mode: navigate\r\nX-Request-Id: edge-78\r\n\r\n";
    let r = proxy.send(navigate).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("x-request-id"), Some("edge-78"));
    // 405 from an endpoint, 200 from the logout endpoint.
    let r = proxy.get("/api/auth/logout", "").await;
    assert_eq!(r.status, 405);
    assert!(is_generated_id(r.header("x-request-id").unwrap()));
    let r = proxy.post("/api/auth/logout", "", b"").await;
    assert_eq!(r.status, 200);
    assert!(is_generated_id(r.header("x-request-id").unwrap()));
    // 502: the app is down (after a refresh, the new cookies still go out).
    app.stop().await;
    let r = proxy
        .send(&request(
            "/p",
            &expired_session("rt-down"),
            "X-Request-Id: edge-79\r\n",
        ))
        .await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.set_cookies().len(), 5);
    assert_eq!(r.header("x-request-id"), Some("edge-79"));
    assert_eq!(app.calls(), 0);
}

async fn access_line(proxy: &Proxy, path: &str) -> String {
    let needle = format!("GET \"{path}\"");
    let what = format!("an access line for {path}");
    poll(&what, Duration::from_secs(5), || {
        let line = proxy
            .log()
            .lines()
            .find(|l| l.starts_with(&needle) || l.contains(&format!("\"path\":\"{path}\"")))
            .map(str::to_owned);
        std::future::ready(line)
    })
    .await
}

#[tokio::test]
async fn the_access_log_names_the_client_and_the_request_id() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth).rust_log("warn").start().await;
    let r = proxy.send(&request("/t", &valid_cookie(), SPOOFED)).await;
    let id = r.header("x-request-id").unwrap().to_owned();
    let line = access_line(&proxy, "/t").await;
    assert!(
        line.contains(&format!(" client=127.0.0.1 id={id} ")),
        "{line}"
    );

    // Behind a trusted proxy, the client is the first hop that is not one; JSON lines too.
    let json = Proxy::builder(&app, &auth)
        .extra("{downstream: {trusted_proxies: ['127.0.0.1/32']}, log: {format: json}}")
        .rust_log("warn")
        .start()
        .await;
    let xff = "X-Forwarded-For: 203.0.113.7\r\nX-Request-Id: edge-42\r\n";
    let r = json.send(&request("/j", "theme=dark", xff)).await;
    assert_eq!(r.status, 401);
    let line = access_line(&json, "/j").await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["client"], "203.0.113.7", "{line}");
    assert_eq!(v["request_id"], "edge-42", "{line}");
    assert_eq!(v["status"], 401);
}

#[tokio::test]
async fn a_tls_listener_forwards_https() {
    let cert = Certificate::new();
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start_tls(&app, &auth, &cert).await;
    let url = format!("https://127.0.0.1:{}/s", proxy.addr.port());
    let cookie = valid_cookie();
    for http in ["--http1.1", "--http2"] {
        let (url, cookie) = (url.clone(), cookie.clone());
        let status = tokio::task::spawn_blocking(move || {
            let out = Command::new("curl")
                .args(["-sk", http, "-o", "/dev/null", "-w", "%{http_code}"])
                .args(["-H", &format!("Cookie: {cookie}")])
                .args(["-H", "X-Forwarded-Proto: http"])
                .arg(&url)
                .output()
                .expect("curl is installed");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .await
        .unwrap();
        assert_eq!(status, "200", "{http}");
        let seen = app.last();
        assert_eq!(seen.all("x-forwarded-proto"), ["https"], "{http}");
        assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"], "{http}");
        let host = format!("127.0.0.1:{}", proxy.addr.port());
        assert_eq!(seen.all("x-forwarded-host"), [host.as_str()], "{http}");
    }
}

#[test]
fn the_check_names_a_bad_trusted_proxy_entry() {
    for (yaml, key, needle) in [
        (
            "downstream: {trusted_proxies: ['10.0.0.0/8', 'proxy.internal']}",
            "downstream.trusted_proxies[1]",
            "proxy.internal",
        ),
        (
            "downstream: {trusted_proxies: ['10.0.0.1/8']}",
            "downstream.trusted_proxies[0]",
            "10.0.0.0/8",
        ),
        (
            "downstream: {trusted_proxies: ['::1', '::/200']}",
            "downstream.trusted_proxies[1]",
            "0 to 128",
        ),
    ] {
        let (out, text) = check_config(yaml);
        assert_eq!(out.status.code(), Some(2), "{yaml}: {text}");
        assert!(
            text.contains(key) && text.contains(needle),
            "{yaml}: {text}"
        );
        assert!(!text.contains("panicked"), "{text}");
    }
}

/// An HTTP/1.0 request may leave Host out; the app is spoken to in HTTP/1.1, which requires
/// it (found with Node's http server, which answers such a request 400): the app gets its own
/// address, as nginx sends `$proxy_host`.
#[tokio::test]
async fn an_http10_request_without_host_reaches_the_app_with_one() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let request = format!(
        "GET /old HTTP/1.0\r\nCookie: accessTokenEtls={}\r\n\r\n",
        access_token(600)
    );
    let r = proxy.send(&request).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(app.last().all("host"), [app.addr.to_string()]);
    // A Host the client sent is the app's, as always.
    let r = proxy
        .send(&format!(
            "GET /old HTTP/1.0\r\nHost: app.test\r\nCookie: accessTokenEtls={}\r\n\r\n",
            access_token(600)
        ))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(app.last().all("host"), ["app.test"]);
}
