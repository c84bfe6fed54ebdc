//! Secret rotation end to end, with the real binary: old tokens keep working until the old
//! secret is removed, and tokens from before `kid` existed verify against every secret.

use etls_proxy::session::tokens::key_id;
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
    let kid_of = |secret: &str| Some(key_id(secret.as_bytes()));

    // 1. Only the old secret: a token it mints (via a refresh) and an old-routes token pass.
    let one = proxy("[ETLS_ACCESS_OLD]").await;
    let r = one.get("/", &expired_under(OLD, "opaque-rot-1")).await;
    assert_eq!(r.status, 200);
    let old_minted = r.set_cookie_value("accessTokenEtls").unwrap();
    assert_eq!(header_kid(&old_minted), kid_of(OLD));
    assert_eq!(one.get("/", &cookie(&old_minted)).await.status, 200);
    assert_eq!(one.get("/", &cookie(&no_kid_old)).await.status, 200);

    // 2. New first, old kept: both old tokens pass; refreshes now mint with the new secret.
    let two = proxy("[ETLS_ACCESS_NEW, ETLS_ACCESS_OLD]").await;
    assert_eq!(two.get("/", &cookie(&old_minted)).await.status, 200);
    assert_eq!(two.get("/", &cookie(&no_kid_old)).await.status, 200);
    let r = two.get("/", &expired_under(OLD, "opaque-rot-2")).await;
    assert_eq!(r.status, 200);
    let new_minted = r.set_cookie_value("accessTokenEtls").unwrap();
    let new_user = r.set_cookie_value("etlsUser").unwrap();
    for token in [&new_minted, &new_user] {
        assert!(verifies(token, NEW) && !verifies(token, OLD));
        assert_eq!(header_kid(token), kid_of(NEW), "signed under the new kid");
    }
    assert_ne!(kid_of(NEW), kid_of(OLD), "each secret has its own kid");
    assert_eq!(two.get("/", &cookie(&new_minted)).await.status, 200);

    // 3. Old secret removed: old tokens are logged out, even with a valid refresh token beside
    // them (expired or not, a token of a removed secret is not ours), without an auth API call;
    // new ones pass.
    let three = proxy("[ETLS_ACCESS_NEW]").await;
    let calls = auth.calls();
    let expired_old_kid = sign_with_kid(OLD, json!({"username": "ann", "exp": now() - 30}));
    assert_eq!(header_kid(&expired_old_kid), kid_of(OLD));
    for token in [&old_minted, &no_kid_old, &expired_old_kid] {
        assert_logout(&three.get("/", &cookie(token)).await);
        assert_logout(&three.get("/", &with_refresh(token, "opaque-rot-3")).await);
    }
    assert_eq!(auth.calls(), calls, "the auth API is never asked");
    assert_eq!(three.get("/", &cookie(&new_minted)).await.status, 200);
    let r = three.get("/", &expired_under(NEW, "opaque-rot-4")).await;
    assert_eq!(r.status, 200, "a session of the new secret still refreshes");
    assert_eq!(auth.calls(), calls + 1);

    for p in [one, two, three] {
        let log = p.stop();
        assert!(
            !log.contains(OLD) && !log.contains(NEW),
            "a secret was logged"
        );
    }
}

/// `token` as the access token beside a valid refresh token and the auth API's cookie.
fn with_refresh(token: &str, rt: &str) -> String {
    format!(
        "accessTokenEtls={token}; refreshTokenEtls={}; refreshToken={rt}",
        refresh_token(3600)
    )
}

/// A token signed with `secret` under its kid, as the proxy mints them.
fn sign_with_kid(secret: &str, claims: serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(key_id(secret.as_bytes()));
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
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
