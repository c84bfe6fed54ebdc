//! The fault and bad-input matrix: hostile tokens, cookies and HTTP framing, and neighbours
//! that fail. Each row asserts the status, the cookies, and whether the app or the auth API was
//! reached. Like every test here, it runs the proxy at `RUST_LOG=trace` and fails if anything
//! secret reaches the log (`support::assert_no_secrets`).

use std::time::Duration;

use serde_json::json;

use crate::support::*;

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An HS256 token over a payload written by hand.
fn sign_payload(secret: &str, payload: &str) -> String {
    use hmac::{Hmac, Mac};
    let message = format!(
        "{}.{}",
        b64(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64(payload.as_bytes())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(message.as_bytes());
    format!("{message}.{}", b64(&mac.finalize().into_bytes()))
}

#[tokio::test]
async fn hostile_access_tokens_are_logged_out_without_any_call() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let valid = access_token(600);
    let (h, rest) = valid.split_once('.').unwrap();
    let (p, s) = rest.split_once('.').unwrap();
    let exp = now() + 600;
    let rs256 = b64(br#"{"alg":"RS256","typ":"JWT"}"#);
    let cases = [
        ("RS256 header", format!("{rs256}.{p}.{s}")),
        ("two segments", format!("{h}.{p}")),
        ("four segments", format!("{h}.{p}.{s}.{s}")),
        ("padding", format!("{h}.{p}.{s}=")),
        (
            "standard base64",
            format!("{h}.{p}.{}", s.replace('-', "+").replace('_', "/") + "+/"),
        ),
        ("bad base64url", format!("{h}.{p}*.{s}")),
        (
            "exp a string",
            sign_payload(ACCESS_SECRET, &format!(r#"{{"exp":"{exp}"}}"#)),
        ),
        ("exp negative", sign_payload(ACCESS_SECRET, r#"{"exp":-1}"#)),
        ("exp 1e30", sign_payload(ACCESS_SECRET, r#"{"exp":1e30}"#)),
        (
            "exp a float",
            sign_payload(ACCESS_SECRET, &format!(r#"{{"exp":{exp}.5}}"#)),
        ),
        (
            "exp twice",
            sign_payload(ACCESS_SECRET, &format!(r#"{{"exp":1,"exp":{exp}}}"#)),
        ),
        (
            "nbf in the future",
            sign_payload(
                ACCESS_SECRET,
                &format!(r#"{{"exp":{exp},"nbf":{}}}"#, now() + 300),
            ),
        ),
        ("claims an array", sign_payload(ACCESS_SECRET, "[1,2]")),
        ("empty", String::new()),
    ];
    for (what, token) in cases {
        let r = proxy
            .get(
                "/dashboard",
                &format!(
                    "accessTokenEtls={token}; refreshTokenEtls={}; refreshToken=opaque-rt",
                    refresh_token(600)
                ),
            )
            .await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert_logout(&r);
    }
    assert_eq!(app.calls(), 0);
    assert_eq!(auth.calls(), 0);
}

#[tokio::test]
async fn an_access_token_signed_with_the_refresh_secret_and_the_reverse_are_refused() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let exp = json!({"username": "ann", "exp": now() + 600});
    // The refresh token as access token: refused outright.
    let r = proxy
        .get(
            "/",
            &format!("accessTokenEtls={}", sign(REFRESH_SECRET, exp.clone())),
        )
        .await;
    assert_logout(&r);
    // An expired access token with an access-signed "refresh token": no refresh.
    let r = proxy
        .get(
            "/",
            &format!(
                "accessTokenEtls={}; refreshTokenEtls={}; refreshToken=opaque-rt",
                access_token(-5),
                sign(ACCESS_SECRET, exp)
            ),
        )
        .await;
    assert_logout(&r);
    assert_eq!(app.calls(), 0);
    assert_eq!(auth.calls(), 0);
}

#[tokio::test]
async fn leeway_lets_a_token_expired_a_second_ago_pass() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth)
        .extra("tokens: {leeway_secs: 5}")
        .start()
        .await;
    let token = access_token(-1);
    let r = proxy.get("/", &format!("accessTokenEtls={token}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.set_cookies().is_empty());
    assert_eq!(app.last().cookie("accessTokenEtls"), Some(token));
    // Past the leeway it is an expired token again: refreshed.
    let r = proxy.get("/", &expired_session("opaque-rt-leeway")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.set_cookies().len(), 5);
    assert_eq!(auth.calls(), 1);
}

#[tokio::test]
async fn oversized_cookies_are_431_before_any_check_unless_allowed() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let huge_token = format!(
        "{}.{}.{}",
        "a".repeat(40),
        "b".repeat(100 * 1024),
        "c".repeat(43)
    );
    let session = format!(
        "accessTokenEtls={huge_token}; refreshTokenEtls={}; refreshToken=opaque-rt",
        refresh_token(600)
    );
    let r = proxy.get("/", &session).await;
    assert_eq!(r.status, 431, "{}", r.text());
    assert!(r.set_cookies().is_empty());
    // 64 KiB spread over many cookies and several headers, on a public path too.
    let filler: Vec<String> = (0..16)
        .map(|i| format!("Cookie: pad{i}={}\r\n", "x".repeat(4000)))
        .collect();
    for path in ["/dashboard", "/_next/static/app.js"] {
        let mut conn = Conn::open(proxy.addr).await;
        let raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{}\r\n", filler.concat());
        let r = conn.request(raw.as_bytes()).await.expect("an answer");
        assert_eq!(r.status, 431, "{path}");
        // Nothing was left unread: the connection serves the next request.
        let ok = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nCookie: accessTokenEtls={}\r\n\r\n",
            access_token(600)
        );
        assert_eq!(
            conn.request(ok.as_bytes())
                .await
                .expect("kept alive")
                .status,
            200
        );
    }
    assert_eq!(app.calls(), 2);
    assert_eq!(auth.calls(), 0);

    // With the limit raised, the 100 KB token is read, found too large, and logged out.
    let roomy = Proxy::builder(&app, &auth)
        .extra("downstream: {max_cookie_bytes: 200000}")
        .start()
        .await;
    assert_logout(&roomy.get("/", &session).await);
    assert_eq!(app.calls(), 2);
    assert_eq!(auth.calls(), 0);
}

#[tokio::test]
async fn odd_but_legal_cookies_are_forwarded_byte_for_byte() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let valid = access_token(600);
    for cookie in [
        format!("=; =v; a=; accessTokenEtls={valid}"),
        format!("x=a=b==; accessTokenEtls={valid}; y==="),
        format!("flag; accessTokenEtls={valid}; ; ;"),
        format!("name=caf\u{e9}; accessTokenEtls={valid}; emoji=\u{1f36a}"),
        format!("  accessTokenEtls = {valid} ;\tz=1"),
    ] {
        let r = proxy.get("/", &cookie).await;
        assert_eq!(r.status, 200, "{cookie}: {}", r.text());
        assert!(r.set_cookies().is_empty());
        // HTTP itself trims the whitespace around a header value; the rest is untouched.
        assert_eq!(app.last().all("cookie"), vec![cookie.trim()], "untouched");
    }
    assert_eq!(auth.calls(), 0);
}

#[tokio::test]
async fn control_bytes_in_a_cookie_never_reach_the_app() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let valid = access_token(600);
    for bad in ["\x01", "\x7f", "\0"] {
        let raw = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nCookie: a={bad}; accessTokenEtls={valid}\r\n\r\n"
        );
        let mut conn = Conn::open(proxy.addr).await;
        let r = conn.request(raw.as_bytes()).await;
        assert_eq!(r.map(|r| r.status), Some(400), "{bad:?}");
    }
    assert_eq!(app.calls(), 0);
    assert_eq!(
        proxy
            .get("/", &format!("accessTokenEtls={valid}"))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn two_hundred_cookies_survive_a_refresh_in_order() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let others: Vec<String> = (0..195).map(|i| format!("c{i}=v{i}")).collect();
    let cookie = format!(
        "{}; accessTokenEtls={}; refreshTokenEtls={}; refreshToken=opaque-rt-200; {}",
        others[..100].join("; "),
        access_token(-5),
        refresh_token(600),
        others[100..].join("; "),
    );
    let r = proxy.get("/", &cookie).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.set_cookies().len(), 5);
    let seen = app.last();
    let forwarded: Vec<&str> = seen.header("cookie").unwrap().split("; ").collect();
    let names: Vec<&str> = forwarded
        .iter()
        .map(|c| c.split('=').next().unwrap())
        .collect();
    let mut expected: Vec<String> = (0..100).map(|i| format!("c{i}")).collect();
    expected.extend(["accessTokenEtls", "refreshTokenEtls", "refreshToken"].map(String::from));
    expected.extend((100..195).map(|i| format!("c{i}")));
    expected.extend(["accessToken", "etlsUser"].map(String::from));
    assert_eq!(names, expected);
    assert_eq!(forwarded[0], "c0=v0");
    assert_eq!(forwarded[197], "c194=v194");
    assert_eq!(
        seen.cookie("refreshToken").as_deref(),
        Some("api-refresh-after-opaque-rt-200")
    );
}

#[tokio::test]
async fn duplicate_expired_and_invalid_access_tokens_refresh_in_either_order() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let expired = access_token(-5);
    for (i, pair) in [
        format!("accessTokenEtls={expired}; accessTokenEtls=junk"),
        format!("accessTokenEtls=junk; accessTokenEtls={expired}"),
    ]
    .iter()
    .enumerate()
    {
        let r = proxy
            .get(
                "/",
                &format!(
                    "{pair}; refreshTokenEtls={}; refreshToken=opaque-dup-{i}",
                    refresh_token(600)
                ),
            )
            .await;
        assert_eq!(r.status, 200, "{pair}");
        let forwarded = app.last();
        let access: Vec<&str> = forwarded
            .header("cookie")
            .unwrap()
            .split("; ")
            .filter(|c| c.starts_with("accessTokenEtls="))
            .collect();
        assert_eq!(access.len(), 1, "one value forwarded: {access:?}");
        assert_eq!(
            access[0].trim_start_matches("accessTokenEtls="),
            r.set_cookie_value("accessTokenEtls").unwrap()
        );
    }
    assert_eq!(auth.calls(), 2);
}

#[tokio::test]
async fn an_app_that_resets_or_stalls_after_a_refresh_still_gets_the_cookies_out() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth)
        .extra("upstream: {read_timeout_ms: 300}")
        .start()
        .await;
    app.set_handler(|_| StubReply::Reset);
    let r = proxy.get("/", &expired_session("opaque-rt-reset")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.set_cookies().len(), 5);
    assert_eq!(
        r.set_cookie_value("refreshToken").as_deref(),
        Some("api-refresh-after-opaque-rt-reset")
    );
    app.set_handler(|_| StubReply::json(200, json!({})).delayed(Duration::from_secs(3)));
    let r = proxy.get("/", &expired_session("opaque-rt-slow")).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.set_cookies().len(), 5);
    assert_eq!(auth.calls(), 2);
    // And a valid request against the stalled app: 504, no cookies.
    let r = proxy
        .get("/", &format!("accessTokenEtls={}", access_token(600)))
        .await;
    assert_eq!(r.status, 504);
    assert!(r.set_cookies().is_empty());
}

/// Requests whose framing could be read two ways. The second request hidden in each carries no
/// cookie, so if the app ever saw it, it would have bypassed the check.
#[tokio::test]
async fn ambiguous_framing_smuggles_nothing_to_the_app() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let cookie = format!("Cookie: accessTokenEtls={}\r\n", access_token(600));
    let hidden = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases = [
        format!(
            "POST /a HTTP/1.1\r\nHost: x\r\n{cookie}Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}",
            5 + hidden.len()
        ),
        format!(
            "POST /b HTTP/1.1\r\nHost: x\r\n{cookie}Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n{:x}\r\n{hidden}\r\n0\r\n\r\n",
            hidden.len()
        ),
        format!(
            "POST /c HTTP/1.1\r\nHost: x\r\n{cookie}Content-Length: 0\r\nContent-Length: {}\r\n\r\n{hidden}",
            hidden.len()
        ),
        format!(
            "POST /d HTTP/1.1\r\nHost: x\r\n{cookie}Content-Length: 0, {}\r\n\r\n{hidden}",
            hidden.len()
        ),
        format!(
            "POST /e HTTP/1.1\r\nHost: x\r\n{cookie}Transfer-Encoding: xchunked\r\n\r\n{hidden}"
        ),
        format!(
            "POST /f HTTP/1.1\r\nHost: x\r\n{cookie}Transfer-Encoding: chunked, identity\r\n\r\n{hidden}"
        ),
        format!(
            "POST /g HTTP/1.1\r\nHost: x\r\n{cookie}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n{hidden}"
        ),
        format!(
            "GET /h HTTP/1.0\r\nHost: x\r\n{cookie}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}"
        ),
    ];
    // Both framings: read as chunked, then the connection is closed. The rest: refused.
    let expected = [200, 200, 400, 400, 400, 400, 400, 400];
    for (raw, status) in cases.iter().zip(expected) {
        let mut conn = Conn::open(proxy.addr).await;
        let first = conn.request(raw.as_bytes()).await;
        assert_eq!(first.as_ref().map(|r| r.status), Some(status), "{raw}");
        // Whatever follows on the connection is answered as a request of its own: a logout.
        if let Some(next) = conn.next_response().await {
            assert_eq!(next.status, 401, "{raw}");
        }
    }
    let reached = app.requests();
    assert!(
        reached.iter().all(|r| r.path != "/smuggled"),
        "smuggled: {:?}",
        reached.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    for r in &reached {
        assert!(
            r.header("content-length").is_none() || r.header("transfer-encoding").is_none(),
            "{} reached the app with both framings",
            r.path
        );
        assert!(r.all("content-length").len() <= 1, "{}", r.path);
    }
    assert_eq!(auth.calls(), 0);
    assert_eq!(
        proxy
            .get("/", &format!("accessTokenEtls={}", access_token(600)))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn header_floods_are_refused_and_others_are_still_served() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let valid = format!("Cookie: accessTokenEtls={}\r\n", access_token(600));
    let many: String = (0..300).map(|i| format!("X-Flood-{i}: {i}\r\n")).collect();
    let huge = format!("X-Huge: {}\r\n", "y".repeat(1_100_000));
    for flood in [many, huge] {
        let raw = format!("GET /flood HTTP/1.1\r\nHost: x\r\n{valid}{flood}\r\n");
        let mut conn = Conn::open(proxy.addr).await;
        let r = conn.request(raw.as_bytes()).await;
        assert_eq!(r.map(|r| r.status), Some(400));
    }
    assert_eq!(app.calls(), 0);
    let r = proxy
        .get("/", &format!("accessTokenEtls={}", access_token(600)))
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn slowloris_clients_do_not_starve_the_others() {
    use tokio::io::AsyncWriteExt;
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let addr = proxy.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slow: Vec<_> = (0..200)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                    return;
                };
                let head = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Drip: ";
                let _ = s.write_all(head).await;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if s.write_all(b"a").await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cookie = format!("accessTokenEtls={}", access_token(600));
    for _ in 0..20 {
        let r = tokio::time::timeout(Duration::from_secs(5), proxy.get("/", &cookie))
            .await
            .expect("answered while 200 clients drip");
        assert_eq!(r.status, 200);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in slow {
        t.await.unwrap();
    }
    assert_eq!(app.calls(), 20);
    assert!(app.requests().iter().all(|r| r.path == "/"));
}

#[tokio::test]
async fn auth_api_rejections_with_invalid_grant_clear_the_cookies_other_failures_keep_them() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth)
        .extra("auth_api: {timeout_ms: 400}")
        .start()
        .await;
    for status in [400u16, 401, 403] {
        auth.set_handler(move |_| {
            StubReply::json(
                status,
                json!({"error": "invalid_grant", "error_description": "revoked"}),
            )
        });
        assert_logout(
            &proxy
                .get("/", &expired_session(&format!("opaque-rt-{status}")))
                .await,
        );
    }
    // Dripped: headers at once, then the body a byte at a time, past the timeout.
    auth.set_handler(|req| {
        let body = rotated(&req.cookie("refreshToken").unwrap())
            .to_string()
            .into_bytes();
        StubReply::Drip {
            head: format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes(),
            body,
            every: Duration::from_millis(50),
        }
    });
    let started = std::time::Instant::now();
    let r = proxy.get("/", &expired_session("opaque-rt-drip")).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.set_cookies().is_empty());
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(app.calls(), 0);
}
