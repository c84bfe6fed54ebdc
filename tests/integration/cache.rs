//! An app answer on a refreshed request: its cache fields are parsed, the answer made private
//! and unstored, and the CDN-targeted cache fields dropped (RFC 9111 §5.2.2.7, RFC 9213).

use crate::support::*;

#[tokio::test]
async fn a_refreshed_answer_is_private_whatever_the_app_said() {
    let app = Stub::start(|_| StubReply::Respond {
        status: 200,
        headers: [
            ("Content-Type", "text/html"),
            ("Cache-Control", "public, s-maxage=600, private=\"X-Debug\""),
            ("CDN-Cache-Control", "max-age=600"),
            ("Surrogate-Control", "max-age=600"),
            ("Vercel-CDN-Cache-Control", "max-age=600"),
            ("Vary", "Accept"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        body: b"page".to_vec(),
        delay: std::time::Duration::ZERO,
    })
    .await;
    let auth = Stub::auth_api().await;
    let proxy = Proxy::start(&app, &auth).await;

    let r = proxy.get("/dashboard", &expired_session("rt-cache")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.set_cookies().len(), 5);
    assert_eq!(r.all("cache-control"), ["private, no-store"]);
    for name in [
        "cdn-cache-control",
        "surrogate-control",
        "vercel-cdn-cache-control",
    ] {
        assert_eq!(r.header(name), None, "{name}");
    }
    assert_eq!(r.header("vary"), Some("Accept"));

    // Without a refresh the app's answer passes as it is.
    let r = proxy.get("/_next/static/a.js", "").await;
    assert_eq!(
        r.header("cache-control"),
        Some("public, s-maxage=600, private=\"X-Debug\"")
    );
    assert_eq!(r.header("cdn-cache-control"), Some("max-age=600"));
    assert_eq!(auth.calls(), 1);

    // The proxy's own answers carrying session cookies say the same.
    let r = proxy
        .post(
            "/api/auth/refreshtoken",
            &expired_session("rt-cache-2"),
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.set_cookies().len(), 5);
    assert_eq!(r.all("cache-control"), ["private, no-store"]);
    let r = proxy.post("/api/auth/logout", "", b"").await;
    assert_eq!(r.all("cache-control"), ["private, no-store"]);
}
