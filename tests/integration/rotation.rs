//! Secret rotation end to end, with the real binary: old tokens keep working until the old
//! secret is removed, and tokens from before `kid` existed verify against every secret.

use serde_json::json;

use crate::support::*;

const OLD: &str = "old-access-secret-old-access-secret-01";
const NEW: &str = "new-access-secret-new-access-secret-01";

#[tokio::test]
async fn the_whole_rotation_keeps_sessions_until_the_old_secret_goes() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = |list: &'static str| {
        Proxy::builder(&app, &auth)
            .extra(format!("tokens: {{access_secret_envs: {list}}}"))
            .env("ETLS_ACCESS_OLD", OLD)
            .env("ETLS_ACCESS_NEW", NEW)
            .start()
    };
    let cookie = |token: &str| format!("accessTokenEtls={token}");
    let no_kid_old = sign(OLD, json!({"username": "ann", "exp": now() + 600}));

    // 1. Only the old secret: a token it mints (via a refresh) and an old-routes token pass.
    let one = proxy("[ETLS_ACCESS_OLD]").await;
    let r = one.get("/", &expired_under(OLD, "opaque-rot-1")).await;
    assert_eq!(r.status, 200);
    let old_minted = r.set_cookie_value("accessTokenEtls").unwrap();
    assert_eq!(one.get("/", &cookie(&old_minted)).await.status, 200);
    assert_eq!(one.get("/", &cookie(&no_kid_old)).await.status, 200);

    // 2. New first, old kept: both old tokens pass; refreshes now mint with the new secret.
    let two = proxy("[ETLS_ACCESS_NEW, ETLS_ACCESS_OLD]").await;
    assert_eq!(two.get("/", &cookie(&old_minted)).await.status, 200);
    assert_eq!(two.get("/", &cookie(&no_kid_old)).await.status, 200);
    let r = two.get("/", &expired_under(OLD, "opaque-rot-2")).await;
    let new_minted = r.set_cookie_value("accessTokenEtls").unwrap();
    assert!(verifies(&new_minted, NEW) && !verifies(&new_minted, OLD));
    assert_ne!(
        header_kid(&new_minted),
        header_kid(&old_minted),
        "each secret has its own kid"
    );
    assert_eq!(two.get("/", &cookie(&new_minted)).await.status, 200);

    // 3. Old secret removed: old tokens are logged out without an auth API call; new ones pass.
    let three = proxy("[ETLS_ACCESS_NEW]").await;
    let calls = auth.calls();
    for token in [&old_minted, &no_kid_old] {
        let r = three.get("/", &cookie(token)).await;
        assert_logout(&r);
    }
    assert_eq!(auth.calls(), calls);
    assert_eq!(three.get("/", &cookie(&new_minted)).await.status, 200);
}

/// An expired session whose access token `secret` signed.
fn expired_under(secret: &str, rt: &str) -> String {
    format!(
        "accessTokenEtls={}; refreshTokenEtls={}; refreshToken={rt}",
        sign(secret, json!({"username": "ann", "exp": now() - 30})),
        refresh_token(3600)
    )
}

fn header_kid(token: &str) -> Option<String> {
    jsonwebtoken::decode_header(token).unwrap().kid
}
