//! The proxy's own POST endpoints refuse cross-site requests (a form on another site logging
//! the user out, or refreshing): `403 {"error":"Forbidden"}`, no Set-Cookie, no auth API call.

use crate::support::*;

fn post(path: &str, cookie: &str, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: app.test\r\nCookie: {cookie}\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

const CROSS_SITE: [&str; 7] = [
    "Origin: https://evil.test\r\n",
    // Two of either: a browser sends one, so the request is not a browser's on this origin.
    "Origin: http://app.test\r\nOrigin: https://evil.test\r\n",
    "Sec-Fetch-Site: same-origin\r\nSec-Fetch-Site: cross-site\r\n",
    "Origin: null\r\n",
    "Origin: http://app.test:8080\r\n",
    "Sec-Fetch-Site: cross-site\r\n",
    "Sec-Fetch-Site: same-site\r\nOrigin: http://app.test\r\n",
];

const SAME_ORIGIN: [&str; 5] = [
    "",
    "Origin: http://app.test\r\n",
    "Origin: https://app.test\r\n",
    "Sec-Fetch-Site: same-origin\r\nOrigin: http://app.test\r\n",
    "Sec-Fetch-Site: none\r\n",
];

#[tokio::test]
async fn logout_refuses_cross_site_posts() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let cookie = format!("accessTokenEtls={}", access_token(600));
    for extra in CROSS_SITE {
        let r = proxy.send(&post("/api/auth/logout", &cookie, extra)).await;
        assert_eq!(r.status, 403, "{extra:?}");
        assert_eq!(r.text(), r#"{"error":"Forbidden"}"#);
        assert!(r.set_cookies().is_empty(), "{extra:?}");
    }
    for extra in SAME_ORIGIN {
        let r = proxy.send(&post("/api/auth/logout", &cookie, extra)).await;
        assert_eq!(r.status, 200, "{extra:?}");
        assert_eq!(r.set_cookies().len(), 5, "{extra:?}");
    }
    assert_eq!(app.calls(), 0);
}

#[tokio::test]
async fn refresh_endpoint_refuses_cross_site_posts_before_the_auth_api() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    for (i, extra) in CROSS_SITE.iter().enumerate() {
        let cookie = expired_session(&format!("rt-x{i}"));
        let r = proxy
            .send(&post("/api/auth/refreshtoken", &cookie, extra))
            .await;
        assert_eq!(r.status, 403, "{extra:?}");
        assert_eq!(r.text(), r#"{"error":"Forbidden"}"#);
        assert!(r.set_cookies().is_empty());
    }
    assert_eq!(auth.calls(), 0);
    for (i, extra) in SAME_ORIGIN.iter().enumerate() {
        let cookie = expired_session(&format!("rt-s{i}"));
        let r = proxy
            .send(&post("/api/auth/refreshtoken", &cookie, extra))
            .await;
        assert_eq!(r.status, 200, "{extra:?}: {}", r.text());
        assert_eq!(r.set_cookies().len(), 5);
    }
    assert_eq!(auth.calls(), SAME_ORIGIN.len());
    assert_eq!(app.calls(), 0);
}

/// A form on another site posting to a protected page: the browser leaves the SameSite cookies
/// out, so the proxy sees no session. Its 401 must not carry clear lines, which the browser
/// would apply to the real session (found with Chromium: the jar went from five cookies to
/// none). A request that does carry one of the five still gets them cleared.
#[tokio::test]
async fn a_refusal_clears_only_cookies_the_request_carried() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth)
        .extra("{routes: {login_redirect: /login}}")
        .start()
        .await;
    let form = "Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: navigate\r\nAccept: text/html\r\n";
    for (cookie, extra) in [("theme=dark", form), ("theme=dark", ""), ("", "")] {
        let request = if cookie.is_empty() {
            "POST /dashboard HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0\r\n\r\n".to_owned()
        } else {
            post("/dashboard", cookie, extra)
        };
        let r = proxy.send(&request).await;
        assert!(
            matches!(r.status, 401 | 302),
            "{cookie:?} {extra:?}: {}",
            r.status
        );
        assert!(
            r.set_cookies().is_empty(),
            "{cookie:?}: {:?}",
            r.set_cookies()
        );
    }
    let r = proxy
        .send(&post("/dashboard", "theme=dark; accessTokenEtls=stale", ""))
        .await;
    assert_logout(&r);
    let r = proxy.send(&post("/dashboard", "etlsUser.0=AA", "")).await;
    assert_eq!(r.status, 401);
    assert!(r.set_cookies().len() >= 5, "{:?}", r.set_cookies());
    assert_eq!(app.calls() + auth.calls(), 0);
}
