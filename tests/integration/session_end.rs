//! Logout ends the session: the kept result of a refresh is gone whichever cookies of the
//! session the logout carries (the renewed ones or the old ones), so replayed cookies get the
//! logout response and no auth API call; a rejection by the auth API ends it the same way; the
//! backend logout (`auth_api.logout_url`) gets the session's cookies and can never stop the
//! logout.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

const LOGOUT: &str = "/api/auth/logout";
const REFRESH: &str = "/api/auth/refreshtoken";

fn assert_logged_out(r: &Response) {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"message": "Logged out"}));
    let lines = r.set_cookies();
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(lines.iter().all(|l| l.contains("Max-Age=0")), "{lines:?}");
}

/// A session refreshed once: its old cookies and the cookies the browser holds after.
async fn refreshed(proxy: &Proxy, rt: &str) -> (String, String) {
    let old = expired_session(rt);
    let r = proxy.get("/page", &old).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.set_cookies().len(), 5);
    let renewed = stored(&old, &r);
    (old, renewed)
}

#[tokio::test]
async fn logout_with_the_renewed_cookies_ends_the_old_ones_too() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let (old, renewed) = refreshed(&proxy, "opaque-rt-renewed").await;
    // Without a logout the old cookies get the kept result (the control).
    let grace = proxy.get("/page", &old).await;
    assert_eq!(grace.status, 200);
    assert_eq!(grace.set_cookies().len(), 5);
    assert_eq!(auth.calls(), 1);

    assert_logged_out(&proxy.post(LOGOUT, &renewed, b"").await);
    assert_logout(&proxy.get("/page", &old).await);
    assert_logout(&proxy.get("/other", &old).await);
    // The renewed cookies cannot refresh either.
    assert_logout(&proxy.post(REFRESH, &renewed, b"").await);
    assert_eq!(auth.calls(), 1, "no auth API call after the logout");
    // Another session is untouched.
    let (other, _) = refreshed(&proxy, "opaque-rt-other").await;
    assert_eq!(proxy.get("/page", &other).await.status, 200);
    assert_eq!(auth.calls(), 2);
}

#[tokio::test]
async fn logout_with_the_old_cookies_ends_the_renewed_ones_too() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let (old, renewed) = refreshed(&proxy, "opaque-rt-old").await;
    assert_logged_out(&proxy.post(LOGOUT, &old, b"").await);
    assert_logout(&proxy.get("/page", &old).await);
    assert_logout(&proxy.post(REFRESH, &renewed, b"").await);
    assert_eq!(auth.calls(), 1);
    assert_eq!(app.calls(), 1, "nothing forwarded after the logout");
}

#[tokio::test]
async fn page_navigations_with_ended_cookies_get_the_login_redirect() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth)
        .extra("routes: {login_redirect: /login, public: [/login, /_next/static/]}")
        .start()
        .await;
    let (old, renewed) = refreshed(&proxy, "opaque-rt-nav").await;
    assert_logged_out(&proxy.post(LOGOUT, &renewed, b"").await);
    let navigate = format!(
        "GET /dashboard HTTP/1.1\r\nHost: x\r\nSec-Fetch-Mode: navigate\r\nAccept: text/html\r\nCookie: {old}\r\n\r\n"
    );
    let r = proxy.send(&navigate).await;
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(r.header("location"), Some("/login?next=/dashboard"));
    assert_eq!(r.set_cookies().len(), 5);
    assert_eq!(auth.calls(), 1);
}

#[tokio::test]
async fn a_rejected_refresh_ends_the_session_and_its_kept_result() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    auth.set_handler(|req| {
        let rt = req.cookie("refreshToken").unwrap_or_default();
        if rt.contains("revoked") {
            StubReply::json(403, json!({"error": "invalid_grant"}))
        } else {
            StubReply::json(200, rotated(&rt))
        }
    });
    let proxy = Proxy::start(&app, &auth).await;
    // Refused once: the same cookies again get the logout, not a second call.
    let revoked = expired_session("opaque-revoked");
    assert_logout(&proxy.get("/page", &revoked).await);
    assert_logout(&proxy.get("/page", &revoked).await);
    assert_logout(&proxy.post(REFRESH, &revoked, b"").await);
    assert_eq!(auth.calls(), 1);

    // A refreshed session whose renewed cookies are then refused: the old cookies, which the
    // grace window would have answered, are logged out too.
    let (old, renewed) = refreshed(&proxy, "opaque-rt-chain").await;
    assert_eq!(auth.calls(), 2);
    auth.set_handler(|_| StubReply::json(403, json!({"error": "invalid_grant"})));
    assert_logout(&proxy.post(REFRESH, &renewed, b"").await);
    assert_eq!(auth.calls(), 3);
    assert_logout(&proxy.get("/page", &old).await);
    assert_logout(&proxy.post(REFRESH, &renewed, b"").await);
    assert_eq!(auth.calls(), 3, "no call for the ended chain");
}

#[tokio::test]
async fn the_backend_logout_gets_the_sessions_cookies() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let (admin, admin_extra) = admin_yaml();
    let proxy = Proxy::builder(&app, &auth)
        .extra(format!(
            "{{auth_api: {{logout_url: 'http://{}/logout?everywhere=1'}}, {admin_extra}}}",
            auth.addr
        ))
        .start()
        .await;
    let (_, renewed) = refreshed(&proxy, "opaque-rt-backend").await;
    assert_logged_out(&proxy.post(LOGOUT, &renewed, b"").await);
    assert_eq!(auth.calls(), 2);
    let call = auth.last();
    assert_eq!(call.method, "POST");
    assert_eq!(call.path, "/logout?everywhere=1");
    assert_eq!(
        call.header("cookie"),
        Some("refreshToken=api-refresh-after-opaque-rt-backend"),
        "the auth API's cookies, as a refresh sends them, and nothing else"
    );
    assert_eq!(call.header("content-type"), Some("application/json"));
    assert_eq!(call.body, b"{}");
    // No auth API cookie: nothing to end, no call.
    assert_logged_out(&proxy.post(LOGOUT, "theme=dark", b"").await);
    assert_eq!(auth.calls(), 2);
    let text = admin_get(admin, "/metrics").await.text();
    assert_eq!(
        series(&text, "etls_proxy_auth_api_logout_total{outcome=\"ok\"}"),
        1.0
    );
    assert_eq!(
        series(
            &text,
            "etls_proxy_auth_api_logout_total{outcome=\"failed\"}"
        ),
        0.0
    );
}

#[tokio::test]
async fn a_failing_backend_logout_never_stops_the_logout() {
    // (what the logout URL does, the metric it counts under)
    let down = free_port();
    for (case, outcome) in [("500", "failed"), ("slow", "timeout"), ("down", "failed")] {
        let (app, auth) = (Stub::app().await, Stub::auth_api().await);
        auth.set_handler(move |req| {
            if !req.path.starts_with("/logout") {
                let rt = req.cookie("refreshToken").unwrap_or_default();
                return StubReply::json(200, rotated(&rt));
            }
            match case {
                "500" => StubReply::json(500, json!({"error": "boom"})),
                _ => StubReply::json(200, json!({})).delayed(Duration::from_secs(5)),
            }
        });
        let logout_url = match case {
            "down" => format!("http://127.0.0.1:{down}/logout"),
            _ => format!("http://{}/logout", auth.addr),
        };
        let (admin, admin_extra) = admin_yaml();
        let proxy = Proxy::builder(&app, &auth)
            .extra(format!(
                "{{auth_api: {{logout_url: '{logout_url}', timeout_ms: 400}}, {admin_extra}}}"
            ))
            .start()
            .await;
        let (old, renewed) = refreshed(&proxy, "opaque-rt-failing").await;
        let started = Instant::now();
        let r = proxy.post(LOGOUT, &renewed, b"").await;
        assert_logged_out(&r);
        // Bounded by the auth API deadline (generous margin: only a sanity bound).
        assert!(started.elapsed() < Duration::from_secs(4), "{case}");
        // The session is over in the proxy whatever the auth API did.
        assert_logout(&proxy.get("/page", &old).await);
        let text = admin_get(admin, "/metrics").await.text();
        assert_eq!(
            series(
                &text,
                &format!("etls_proxy_auth_api_logout_total{{outcome=\"{outcome}\"}}")
            ),
            1.0,
            "{case}"
        );
        assert_eq!(
            series(&text, "etls_proxy_auth_api_logout_total{outcome=\"ok\"}"),
            0.0,
            "{case}"
        );
        let log = proxy.log();
        assert!(log.contains("backend logout failed"), "{case}: {log}");
    }
}

#[tokio::test]
async fn a_logout_during_a_refresh_wins_over_its_result() {
    let app = Stub::app().await;
    let auth = Stub::slow_auth_api(Duration::from_millis(800)).await;
    let proxy = Proxy::start(&app, &auth).await;
    let old = expired_session("opaque-rt-racing");
    let racing = spawn_get(proxy.addr, "/page", &old);
    auth.wait_for_calls(1).await;
    assert_logged_out(&proxy.post(LOGOUT, &old, b"").await);
    // The refresh lands after the logout: its request gets the logout, not new tokens.
    assert_logout(&racing.await.unwrap());
    // Neither the old cookies nor the ones the auth API handed out can refresh.
    assert_logout(&proxy.get("/page", &old).await);
    // As the proxy would have minted them: bound to the new auth API session.
    let new_api = "refreshToken=api-refresh-after-opaque-rt-racing";
    let handed_out = format!(
        "refreshTokenEtls={}; {new_api}",
        bound_refresh_token(new_api, 3600)
    );
    assert_logout(&proxy.post(REFRESH, &handed_out, b"").await);
    assert_eq!(auth.calls(), 1);
    assert_eq!(app.calls(), 0);
}

/// Alone, a reload (here one rotating the first refresh secret) never changes the key of a
/// session: a request after it joins the refresh running since before it, no second call.
#[tokio::test]
async fn a_reload_rotating_the_refresh_secret_joins_the_refresh_in_flight() {
    let app = Stub::app().await;
    let auth = Stub::slow_auth_api(Duration::from_millis(1000)).await;
    let proxy = Proxy::builder(&app, &auth)
        .env("ETLS_REFRESH_NEXT", "next-refresh-secret-0123456789abcdef")
        .start()
        .await;
    let old = expired_session("opaque-rt-reload");
    let first = {
        let (addr, old) = (proxy.addr, old.clone());
        tokio::spawn(async move { fan_out(addr, &old, 1).await })
    };
    auth.wait_for_calls(1).await;
    proxy.reload_with("tokens: {refresh_secret_envs: [ETLS_REFRESH_NEXT, ETLS_REFRESH]}");
    let reloaded = || proxy.log().contains("configuration reloaded");
    until("the reload", Duration::from_secs(5), reloaded).await;
    let second = proxy.get("/page", &old).await;
    let first = first.await.unwrap().remove(0);
    assert_eq!(
        (first.status, second.status),
        (200, 200),
        "{}",
        second.text()
    );
    assert_eq!(first.set_cookies(), second.set_cookies());
    assert_eq!(auth.calls(), 1);
}

/// Found with Chromium and a slow page: the refresh landed, the request went on to the app,
/// the user logged out, and then the app's answer arrived with the renewed cookies, logging the
/// browser back in. Now that answer sets nothing, and the backend logout names the renewed
/// session (the old refresh token was already rotated away).
#[tokio::test]
async fn an_answer_on_its_way_when_the_user_logs_out_hands_out_nothing() {
    let app = Stub::app_slow_at("/slow", Duration::from_millis(700)).await;
    let auth = Stub::auth_api().await;
    let proxy = Proxy::builder(&app, &auth)
        .extra(format!(
            "{{auth_api: {{logout_url: 'http://{}/logout'}}}}",
            auth.addr
        ))
        .start()
        .await;
    let old = expired_session("opaque-rt-late");
    let slow = spawn_get(proxy.addr, "/slow", &old);
    app.wait_for_calls(1).await;
    assert_logged_out(&proxy.post(LOGOUT, &old, b"").await);
    let late = slow.await.unwrap();
    assert_eq!(late.status, 200, "the app's answer itself goes through");
    // Nothing of the ended session: no renewal, and no clear lines either, which would wipe a
    // login made since (the logout's own answer cleared the cookies).
    assert!(late.set_cookies().is_empty(), "{:?}", late.set_cookies());
    let backend = auth.last();
    assert_eq!(backend.path, "/logout");
    assert_eq!(
        backend.header("cookie"),
        Some("refreshToken=api-refresh-after-opaque-rt-late"),
        "the renewed session, not the rotated-away one"
    );
    assert_logout(&proxy.get("/page", &old).await);
    assert_eq!(auth.calls(), 2, "the refresh and the backend logout");
}

/// The app logging the user out itself (seed 000's `logoutResponse()`) on a request the proxy
/// refreshed: its lines win on that answer, and the session ends in the table as the logout
/// endpoint ends it, so replayed old cookies get no grace hit.
#[tokio::test]
async fn the_app_deleting_the_cookies_ends_the_session() {
    let app = Stub::app().await;
    let deletions = CLEARED.map(|n| format!("{n}=; Path=/; Max-Age=0"));
    app.set_handler(move |_| StubReply::setting_cookies(&deletions));
    let auth = Stub::auth_api().await;
    let proxy = Proxy::start(&app, &auth).await;
    let old = expired_session("opaque-rt-app-logout");
    let r = proxy.get("/logout-page", &old).await;
    assert_eq!(r.status, 200);
    let lines = r.set_cookies();
    assert_eq!(lines.len(), 5, "only the app's: {lines:?}");
    assert!(lines.iter().all(|l| l.contains("Max-Age=0")), "{lines:?}");
    assert_logout(&proxy.get("/page", &old).await);
    assert_eq!(auth.calls(), 1);
}

/// The app deleting only one refresh cookie is a logout all the same: none of the renewal's
/// lines go out with it.
#[tokio::test]
async fn an_app_deleting_one_refresh_cookie_gets_no_renewal_beside_it() {
    let app = Stub::app().await;
    app.set_handler(|_| StubReply::setting_cookies(&["refreshTokenEtls=; Path=/; Max-Age=0"]));
    let auth = Stub::auth_api().await;
    let proxy = Proxy::start(&app, &auth).await;
    let old = expired_session("opaque-rt-app-deletes-one");
    let r = proxy.get("/logout-page", &old).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.set_cookies(), ["refreshTokenEtls=; Path=/; Max-Age=0"]);
    assert_logout(&proxy.get("/page", &old).await);
}

/// Found with a login route behind the proxy: a user whose access token had expired signs in
/// as someone else; the app's answer sets the new user's five cookies and the proxy, having
/// refreshed the old user on the same request, appended the old user's after them, which the
/// browser kept. The app's lines win, as the README says.
#[tokio::test]
async fn the_apps_own_lines_for_our_cookies_win_over_the_refresh() {
    let app = Stub::app().await;
    app.set_handler(|_| {
        StubReply::setting_cookies(&[
            "accessTokenEtls=bob-access; Path=/; HttpOnly",
            "refreshToken=bob-refresh; Path=/; HttpOnly",
            "theme=dark; Path=/",
        ])
    });
    let auth = Stub::auth_api().await;
    let proxy = Proxy::start(&app, &auth).await;
    let r = proxy.get("/login", &expired_session("opaque-rt-ann")).await;
    assert_eq!(r.status, 200);
    let lines = r.set_cookies();
    let named = |name: &str| {
        lines
            .iter()
            .filter(|l| l.starts_with(&format!("{name}=")))
            .count()
    };
    assert_eq!(named("accessTokenEtls"), 1, "{lines:?}");
    assert_eq!(named("refreshToken"), 1, "{lines:?}");
    assert!(lines.contains(&"accessTokenEtls=bob-access; Path=/; HttpOnly"));
    // The names the app left alone still get the refresh's lines.
    for name in ["refreshTokenEtls", "accessToken", "etlsUser"] {
        assert_eq!(named(name), 1, "{name}: {lines:?}");
    }
}
