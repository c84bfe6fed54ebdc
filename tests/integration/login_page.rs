//! `routes.login_redirect` makes its own path public: no need to list it in `routes.public`.

use crate::support::*;

#[test]
fn a_login_redirect_not_listed_as_public_passes_the_check() {
    let (out, text) =
        check_config("routes: {login_redirect: '/login?from=proxy', public: ['/_next/static/']}\n");
    assert!(out.status.success(), "{text}");
    assert!(text.contains("is valid"), "{text}");
}

#[tokio::test]
async fn the_login_page_reaches_the_app_without_cookies() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth)
        .extra("routes: {login_redirect: /login, public: []}")
        .start()
        .await;
    let navigate = "GET /login?next=/dashboard HTTP/1.1\r\nHost: x\r\nSec-Fetch-Mode: navigate\r\nAccept: text/html\r\n\r\n";
    let r = proxy.send(navigate).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.set_cookies().is_empty());
    assert_eq!(app.calls(), 1);
    assert_eq!(app.last().path, "/login?next=/dashboard");
    // Only the login page: another page navigation still gets the redirect, nothing forwarded.
    let other = navigate.replace("/login?next=/dashboard", "/dashboard");
    let r = proxy.send(&other).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("/login?next=/dashboard"));
    let under = navigate.replace("/login?next=/dashboard", "/login/../dashboard");
    assert_eq!(proxy.send(&under).await.status, 302);
    assert_eq!((app.calls(), auth.calls()), (1, 0));
}
