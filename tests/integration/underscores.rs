//! Header names with underscores never reach the app (nginx's `underscores_in_headers off`):
//! CGI, WSGI, Rack and PHP read `X_Etls_User` and `X-Etls-User` as the same variable.

use crate::support::*;

#[tokio::test]
async fn underscore_names_are_dropped_and_the_identity_header_still_arrives() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth)
        .extra("upstream_headers: {username: X-Etls-User}")
        .start()
        .await;
    let raw = format!(
        "GET /page HTTP/1.1\r\nHost: app.test\r\nX_Etls_User: admin\r\nx_etls_user: root\r\nMy_Header: 1\r\nX-Other: kept\r\nCookie: accessTokenEtls={}\r\n\r\n",
        access_token(600)
    );
    let r = proxy.send(&raw).await;
    assert_eq!(r.status, 200);
    let seen = app.last();
    assert_eq!(seen.all("x-etls-user"), ["ann"]);
    assert_eq!(seen.header("x-other"), Some("kept"));
    let underscored: Vec<&String> = seen
        .headers
        .iter()
        .map(|(name, _)| name)
        .filter(|name| name.contains('_'))
        .collect();
    assert!(underscored.is_empty(), "{underscored:?}");
}
