//! Issue 11, points 1 and 2, with the real binary: a `refreshTokenEtls` refreshes only together
//! with the auth API session it was minted for (its `sid`), before any auth API call and on
//! every grace hit; tokens of the old routes (no `sid`) follow `tokens.unbound_refresh`; and each
//! kind of token the proxy mints has its own `typ`, so an `etlsUser` never passes as the access
//! token.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

/// A refresh token as the old Next.js routes (or the login) mint it: no `sid`, `typ: JWT`.
fn legacy_refresh(user: &str) -> String {
    sign(
        REFRESH_SECRET,
        json!({"username": user, "exp": now() + 3600}),
    )
}

/// The pair a refresh answered with: `refreshTokenEtls` and `refreshToken`.
fn new_pair(r: &Response) -> (String, String) {
    (
        r.set_cookie_value("refreshTokenEtls")
            .expect("a new refreshTokenEtls"),
        r.set_cookie_value("refreshToken")
            .expect("a new refreshToken"),
    )
}

/// The next request of a session whose access token is gone: the refresh pair only.
fn pair_cookie(etls: &str, rt: &str) -> String {
    format!("refreshTokenEtls={etls}; refreshToken={rt}")
}

/// An auth API that rotates as real ones do: a refresh token works once, a replay is a 403.
async fn rotating_auth_api() -> Stub {
    let used = Mutex::new(HashSet::new());
    Stub::start(move |req| {
        let rt = req.cookie("refreshToken").unwrap_or_default();
        if used.lock().unwrap().insert(rt.clone()) {
            StubReply::json(200, rotated(&rt))
        } else {
            StubReply::json(403, json!({"error": "Invalid refresh token"}))
        }
    })
    .await
}

async fn metrics(admin: SocketAddr) -> String {
    admin_get(admin, "/metrics").await.text()
}

fn unbound(text: &str, result: &str) -> f64 {
    series(
        text,
        &format!("etls_proxy_unbound_refresh_total{{result=\"{result}\"}}"),
    )
}

/// Polls the metrics (requests are counted once answered) until `want` holds, at most 5 s.
async fn metrics_until(admin: SocketAddr, want: impl Fn(&str) -> bool) -> String {
    poll("the metrics", Duration::from_secs(5), || async {
        let text = metrics(admin).await;
        want(&text).then_some(text)
    })
    .await
}

/// Alice's `refreshTokenEtls` (stolen, or her own from before a role change) beside a live
/// auth API session of someone else's (a throwaway account) is a logout: the auth API is never
/// asked, so nothing refreshes as alice.
#[tokio::test]
async fn a_refresh_token_with_another_api_session_is_a_logout_without_an_auth_api_call() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    // Alice's first refresh (her login's token has no binding) binds the new pair.
    let r = proxy
        .get(
            "/",
            &pair_cookie(&legacy_refresh("alice"), "opaque-alice-rt"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(auth.calls(), 1);
    let (alice_etls, alice_rt) = new_pair(&r);

    let throwaway = [
        pair_cookie(&alice_etls, "opaque-throwaway-rt"),
        format!(
            "accessTokenEtls={}; {}",
            access_token(-30),
            pair_cookie(&alice_etls, "opaque-throwaway-rt")
        ),
        // Her old auth API token (rotated away) does not match the new pair either.
        pair_cookie(&alice_etls, "opaque-alice-rt"),
    ];
    let app_calls = app.calls();
    for cookie in &throwaway {
        assert_logout(&proxy.get("/", cookie).await);
        assert_logout(&proxy.post("/api/auth/refreshtoken", cookie, b"").await);
    }
    assert_eq!(
        auth.calls(),
        1,
        "a refreshToken that does not match never reaches the auth API"
    );
    assert_eq!(app.calls(), app_calls, "nothing forwarded");

    // With her own pair she still refreshes, and the auth API sees her own token.
    let r = proxy.get("/", &pair_cookie(&alice_etls, &alice_rt)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(auth.calls(), 2);
    assert_eq!(auth.last().cookie("refreshToken"), Some(alice_rt));
    let log = proxy.stop();
    assert!(
        log.contains("session_mismatch"),
        "the refusal is named in the log"
    );
}

/// Within the grace window, an attacker's own valid `refreshTokenEtls` plus the victim's old
/// `refreshToken` does not get the victim's rotated tokens: 401, no auth API call. The victim's
/// own late request still gets them from the grace window.
#[tokio::test]
async fn the_grace_window_never_hands_a_session_to_another_refresh_token() {
    let (app, auth) = (Stub::app().await, rotating_auth_api().await);
    let proxy = Proxy::builder(&app, &auth)
        .extra("refresh: {grace_secs: 120}")
        .start()
        .await;
    // Both sessions bound: each one's first refresh from a login token.
    let r = proxy
        .get(
            "/",
            &pair_cookie(&legacy_refresh("mallory"), "opaque-mallory-rt"),
        )
        .await;
    assert_eq!(r.status, 200);
    let (mallory_etls, _) = new_pair(&r);
    let r = proxy
        .get(
            "/",
            &pair_cookie(&legacy_refresh("victim"), "opaque-victim-rt"),
        )
        .await;
    assert_eq!(r.status, 200);
    let (victim_etls, victim_rt) = new_pair(&r);

    // The victim refreshes; the result is kept for the grace window.
    let victim_cookie = pair_cookie(&victim_etls, &victim_rt);
    let refreshed = proxy.get("/", &victim_cookie).await;
    assert_eq!(refreshed.status, 200);
    let calls = auth.calls();
    assert_eq!(calls, 3);
    let (rotated_etls, rotated_rt) = new_pair(&refreshed);

    // Mallory, with his own valid bound token, or a login (unbound) token, and the victim's old
    // refreshToken.
    for attacker_etls in [mallory_etls.clone(), legacy_refresh("mallory")] {
        let r = proxy
            .get("/", &pair_cookie(&attacker_etls, &victim_rt))
            .await;
        assert_logout(&r);
        for line in r.set_cookies() {
            assert!(
                !line.contains(&rotated_rt) && !line.contains(&rotated_etls),
                "the victim's tokens leaked: {line}"
            );
        }
    }
    // The bound one is refused before any call; the unbound one (allowed for the migration) is
    // kept apart from the victim's grace entry, so it goes to the auth API, which refuses the
    // replayed token.
    assert_eq!(auth.calls(), calls + 1);
    assert_eq!(auth.last().cookie("refreshToken"), Some(victim_rt.clone()));

    // The victim's own late request with the old pair is a grace hit: the same tokens.
    let again = proxy.get("/", &victim_cookie).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.set_cookies(), refreshed.set_cookies());
    assert_eq!(auth.calls(), calls + 1);
}

/// Each refresh binds the new `refreshTokenEtls` to the new `refreshToken`: a chain of three
/// refreshes works, each `sid` is the keyed hash of the new auth API session (never a token),
/// and the claims carried on hold no old `sid`.
#[tokio::test]
async fn a_chain_of_refreshes_binds_each_new_pair() {
    let (app, auth) = (Stub::app().await, rotating_auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let mut cookie = pair_cookie(&legacy_refresh("ann"), "opaque-chain-rt");
    let mut previous_rt = "opaque-chain-rt".to_owned();
    let mut sids = Vec::new();
    for round in 1..=3 {
        let r = proxy.get("/", &cookie).await;
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        assert_eq!(auth.calls(), round);
        assert_eq!(
            auth.last().cookie("refreshToken"),
            Some(previous_rt.clone())
        );
        let (etls, rt) = new_pair(&r);
        assert!(verifies(&etls, REFRESH_SECRET));
        let claims = payload(&etls);
        let sid = claims["sid"].as_str().expect("a sid claim").to_owned();
        assert_eq!(
            sid,
            expected_sid(&format!("refreshToken={rt}")),
            "round {round}"
        );
        assert_eq!(claims["username"], "ann");
        let keys: Vec<&String> = claims.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["exp", "sid", "username"], "round {round}");
        for token in [&rt, &previous_rt] {
            assert!(!sid.contains(token.as_str()) && !claims.to_string().contains(token.as_str()));
        }
        // The access token carries the session claims only, no sid.
        let access = r.set_cookie_value("accessTokenEtls").unwrap();
        assert!(payload(&access).get("sid").is_none());
        sids.push(sid);
        previous_rt = rt.clone();
        cookie = pair_cookie(&etls, &rt);
    }
    sids.dedup();
    assert_eq!(sids.len(), 3, "every round has its own sid");
}

/// Tokens of the old routes carry no binding: refreshed under `tokens.unbound_refresh: allow`
/// (the default) and counted; a logout without an auth API call under `refuse`, where bound
/// pairs keep refreshing.
#[tokio::test]
async fn unbound_refresh_tokens_follow_the_setting_and_are_counted() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let admin_port = free_port();
    let allow = Proxy::builder(&app, &auth)
        .extra(format!("admin: {{listen: '127.0.0.1:{admin_port}'}}"))
        .start()
        .await;
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let before = metrics(admin).await;
    assert_eq!(unbound(&before, "allowed"), 0.0);
    assert_eq!(unbound(&before, "refused"), 0.0);
    let r = allow
        .get(
            "/",
            &pair_cookie(&legacy_refresh("ann"), "opaque-legacy-rt"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(auth.calls(), 1);
    let (etls, rt) = new_pair(&r);
    // The new pair is bound: refreshing with it does not move the counter.
    assert_eq!(allow.get("/", &pair_cookie(&etls, &rt)).await.status, 200);
    assert_eq!(auth.calls(), 2);
    let text = metrics(admin).await;
    assert_eq!(unbound(&text, "allowed"), 1.0);
    assert_eq!(unbound(&text, "refused"), 0.0);
    drop(allow);

    let admin_port = free_port();
    let refuse = Proxy::builder(&app, &auth)
        .extra(format!(
            "{{admin: {{listen: '127.0.0.1:{admin_port}'}}, tokens: {{unbound_refresh: refuse}}}}"
        ))
        .start()
        .await;
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let legacy = pair_cookie(&legacy_refresh("ann"), "opaque-legacy-rt-2");
    assert_logout(&refuse.get("/", &legacy).await);
    assert_logout(&refuse.post("/api/auth/refreshtoken", &legacy, b"").await);
    assert_eq!(auth.calls(), 2, "the auth API is not asked");
    let text = metrics_until(admin, |t| {
        t.contains("etls_proxy_requests_total{decision=\"logged_out\"} 2")
    })
    .await;
    assert_eq!(unbound(&text, "refused"), 2.0);
    assert_eq!(unbound(&text, "allowed"), 0.0);
    assert_eq!(
        series(&text, "etls_proxy_requests_total{decision=\"logged_out\"}"),
        2.0,
        "counted as logouts"
    );
    // A pair the proxy bound still refreshes under `refuse`.
    let r = refuse.get("/", &pair_cookie(&etls, &rt)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(auth.calls(), 3);
    let log = refuse.stop();
    assert!(
        log.contains("refresh_unbound"),
        "the refusal is named in the log"
    );
}

/// An `etlsUser` is signed with the access secret too: typed `etls-user+jwt`, it is refused as
/// the access token (401, the app never sees it, no `X-Etls-User: admin`), while untyped and
/// `JWT`-typed tokens of the old routes keep passing; minted tokens carry their kind's `typ`.
#[tokio::test]
async fn an_etls_user_token_never_passes_as_the_access_token() {
    let app = Stub::app().await;
    let auth = Stub::start(|req| {
        let rt = req.cookie("refreshToken").unwrap_or_default();
        StubReply::json(
            200,
            json!({
                "accessToken": format!("api-access-for-{rt}"),
                "refreshToken": format!("api-refresh-after-{rt}"),
                "userData": {"username": "admin", "role": "admin"},
            }),
        )
    })
    .await;
    let proxy = Proxy::builder(&app, &auth)
        .extra("upstream_headers: {username: X-Etls-User}")
        .start()
        .await;
    let r = proxy
        .get("/", &pair_cookie(&legacy_refresh("ann"), "opaque-typ-rt"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(app.last().all("x-etls-user"), vec!["ann"]);
    let minted = |name: &str| r.set_cookie_value(name).unwrap();
    let typ = |token: &str| jsonwebtoken::decode_header(token).unwrap().typ;
    let (access, refresh, user) = (
        minted("accessTokenEtls"),
        minted("refreshTokenEtls"),
        minted("etlsUser"),
    );
    assert_eq!(typ(&access).as_deref(), Some("etls-access+jwt"));
    assert_eq!(typ(&refresh).as_deref(), Some("etls-refresh+jwt"));
    assert_eq!(typ(&user).as_deref(), Some("etls-user+jwt"));
    assert_eq!(payload(&user)["username"], "admin");
    assert!(
        verifies(&user, ACCESS_SECRET),
        "signed with the access secret"
    );

    let typed = |secret: &str, typ: Option<&str>, claims: Value| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.typ = typ.map(str::to_owned);
        let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    };
    let admin = json!({"username": "admin", "exp": now() + 600});
    let app_calls = app.calls();
    for token in [
        user.clone(),
        typed(ACCESS_SECRET, Some("etls-user+jwt"), admin.clone()),
        typed(ACCESS_SECRET, Some("ETLS-USER+JWT"), admin.clone()),
        typed(
            ACCESS_SECRET,
            Some("application/etls-user+jwt"),
            admin.clone(),
        ),
        typed(ACCESS_SECRET, Some("etls-refresh+jwt"), admin.clone()),
    ] {
        let r = proxy.get("/", &format!("accessTokenEtls={token}")).await;
        assert_logout(&r);
    }
    assert_eq!(app.calls(), app_calls, "never forwarded");

    // Untyped, `JWT` (any case) and the proxy's own access tokens pass, identity from them.
    let ann = json!({"username": "ann", "exp": now() + 600});
    for token in [
        typed(ACCESS_SECRET, None, ann.clone()),
        typed(ACCESS_SECRET, Some("JWT"), ann.clone()),
        typed(ACCESS_SECRET, Some("jwt"), ann.clone()),
        typed(ACCESS_SECRET, Some("etls-access+jwt"), ann.clone()),
        access.clone(),
    ] {
        let r = proxy.get("/", &format!("accessTokenEtls={token}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(app.last().all("x-etls-user"), vec!["ann"]);
    }

    // Likewise for the refresh token: one typed as another kind is refused before any call.
    let calls = auth.calls();
    let as_access = typed(
        REFRESH_SECRET,
        Some("etls-access+jwt"),
        json!({"username": "ann", "exp": now() + 600}),
    );
    assert_logout(
        &proxy
            .get("/", &pair_cookie(&as_access, "opaque-typ-rt-2"))
            .await,
    );
    let untyped = typed(
        REFRESH_SECRET,
        None,
        json!({"username": "ann", "exp": now() + 600}),
    );
    assert_eq!(
        proxy
            .get("/", &pair_cookie(&untyped, "opaque-typ-rt-3"))
            .await
            .status,
        200
    );
    assert_eq!(auth.calls(), calls + 1);
}
