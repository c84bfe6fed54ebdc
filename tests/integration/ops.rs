//! What ops rely on: reload on SIGHUP, the admin listener (metrics, health, readiness), the
//! access log, and a graceful stop.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

#[tokio::test]
async fn sighup_applies_a_new_file_and_a_broken_one_changes_nothing() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let admin_port = free_port();
    let admin = format!("admin: {{listen: '127.0.0.1:{admin_port}'}}");
    let proxy = Proxy::builder(&app, &auth)
        .extra(admin.clone())
        .start()
        .await;
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    assert_eq!(proxy.get("/open/page", "").await.status, 401);

    proxy.reload_with(&format!(
        "{{admin: {{listen: '127.0.0.1:{admin_port}'}}, routes: {{public: ['/open/']}}}}"
    ));
    until_async("the reload", Duration::from_secs(5), || async {
        proxy.get("/open/page", "").await.status == 200
    })
    .await;
    assert_eq!(app.last().path, "/open/page");

    // A typo: refused with one log line, the running configuration stays.
    proxy.reload_raw("listen: ['127.0.0.1:1']\nrouts: {public: []}\n");
    until_async("the refusal", Duration::from_secs(5), || async {
        proxy.log().contains("configuration reload refused")
    })
    .await;
    let log = proxy.log();
    let refusal: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("configuration reload refused"))
        .collect();
    assert_eq!(refusal.len(), 1, "{log}");
    assert!(refusal[0].contains("routs"), "{}", refusal[0]);
    assert_eq!(proxy.get("/open/page", "").await.status, 200);
    assert_eq!(proxy.get("/closed", "").await.status, 401);

    let metrics = admin_get(admin, "/metrics").await.text();
    assert_eq!(
        series(
            &metrics,
            "etls_proxy_config_reloads_total{result=\"applied\"}"
        ),
        1.0
    );
    assert_eq!(
        series(
            &metrics,
            "etls_proxy_config_reloads_total{result=\"refused\"}"
        ),
        1.0
    );
    assert_eq!(
        series(&metrics, "etls_proxy_config_last_reload_success"),
        0.0
    );
}

/// A reload changing `listen` applies only after a restart: readiness keeps probing the
/// listener bound at start, which still serves (it answered 503 "not listening" before, which
/// would have taken every replica out of a balancer).
#[tokio::test]
async fn readiness_probes_the_listeners_bound_at_start_across_a_reload() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let admin_port = free_port();
    let admin_yaml = format!("admin: {{listen: '127.0.0.1:{admin_port}'}}");
    let proxy = Proxy::builder(&app, &auth)
        .extra(admin_yaml.clone())
        .start()
        .await;
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    assert_eq!(admin_get(admin, "/readyz").await.status, 200);
    proxy.reload_raw(&config_yaml(free_port(), app.addr, auth.addr, &admin_yaml));
    until("the reload", Duration::from_secs(5), || {
        proxy.log().contains("listen changed")
    })
    .await;
    let ready = admin_get(admin, "/readyz").await;
    assert_eq!((ready.status, ready.text().as_str()), (200, "ready\n"));
    let valid = format!("accessTokenEtls={}", access_token(600));
    assert_eq!(proxy.get("/", &valid).await.status, 200);
}

#[tokio::test]
async fn reloads_under_load_fail_no_request() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let addr = proxy.addr;
    let cookie = format!("accessTokenEtls={}", access_token(600));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let cookie = cookie.clone();
            tokio::spawn(async move {
                let mut conn = Conn::open(addr).await;
                let raw = format!("GET / HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n");
                let mut statuses = Vec::new();
                for _ in 0..150 {
                    match conn.request(raw.as_bytes()).await {
                        Some(r) => statuses.push(r.status),
                        // A connection closed between requests is not a failed request.
                        None => conn = Conn::open(addr).await,
                    }
                }
                statuses
            })
        })
        .collect();
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        proxy.reload_with(&format!("refresh: {{grace_secs: {}}}", 10 + i));
    }
    let mut total = 0;
    for w in workers {
        let statuses = w.await.unwrap();
        total += statuses.len();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    assert!(total >= 590, "{total}");
    until_async("five reloads logged", Duration::from_secs(5), || async {
        proxy.log().matches("configuration reloaded").count() == 5
    })
    .await;
}

#[tokio::test]
async fn the_admin_listener_counts_what_happened() {
    let auth = Stub::slow_auth_api(Duration::from_millis(300)).await;
    let app = Stub::app().await;
    let admin_port = free_port();
    let proxy = Proxy::builder(&app, &auth)
        .extra(format!(
            "{{admin: {{listen: '127.0.0.1:{admin_port}'}}, routes: {{login_redirect: /login, public: ['/_next/static/', '/login']}}}}"
        ))
        .start()
        .await;
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let health = admin_get(admin, "/healthz").await;
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    assert_eq!(admin_get(admin, "/readyz").await.status, 200);
    assert_eq!(admin_get(admin, "/nope").await.status, 404);

    assert_eq!(
        proxy
            .get("/", &format!("accessTokenEtls={}", access_token(600)))
            .await
            .status,
        200
    );
    // One refresh led, four coalesced waiters, then a grace hit.
    let expired = expired_session("opaque-metrics");
    let answers = fan_out(proxy.addr, &expired, 5).await;
    assert!(answers.iter().all(|r| r.status == 200));
    assert_eq!(proxy.get("/", &expired).await.status, 200);
    assert_eq!(proxy.get("/_next/static/a.js", "").await.status, 200);
    assert_eq!(proxy.get("/", "").await.status, 401);
    let page = proxy
        .send("GET /page HTTP/1.1\r\nHost: x\r\nSec-Fetch-Mode: navigate\r\n\r\n")
        .await;
    assert_eq!(page.status, 302);
    app.set_handler(|_| StubReply::Reset);
    let failed = proxy
        .get("/", &format!("accessTokenEtls={}", access_token(600)))
        .await;
    assert_eq!(failed.status, 502);

    // Counted once each answer is out: wait for the last one.
    until_async(
        "the last request counted",
        Duration::from_secs(5),
        || async {
            let text = admin_get(admin, "/metrics").await.text();
            text.contains("etls_proxy_requests_total{decision=\"app_error\"} 1")
        },
    )
    .await;
    let text = admin_get(admin, "/metrics").await.text();
    let requests = |d: &str| {
        series(
            &text,
            &format!("etls_proxy_requests_total{{decision=\"{d}\"}}"),
        )
    };
    assert_eq!(requests("passed"), 1.0);
    assert_eq!(requests("refreshed"), 1.0);
    assert_eq!(requests("coalesced"), 4.0);
    assert_eq!(requests("grace_hit"), 1.0);
    assert_eq!(requests("public"), 1.0);
    assert_eq!(requests("logged_out"), 1.0);
    assert_eq!(requests("redirected"), 1.0);
    assert_eq!(requests("auth_api_error"), 0.0);
    assert_eq!(requests("app_error"), 1.0);
    assert_eq!(
        series(&text, "etls_proxy_auth_api_calls_total{outcome=\"ok\"}"),
        1.0
    );
    assert_eq!(
        series(&text, "etls_proxy_auth_api_duration_seconds_count"),
        1.0
    );
    assert_eq!(
        series(
            &text,
            "etls_proxy_auth_api_duration_seconds_bucket{le=\"0.25\"}"
        ),
        0.0,
        "the auth API took 300 ms"
    );
    assert_eq!(series(&text, "etls_proxy_refresh_table_entries"), 1.0);
    assert!(text.contains(&format!(
        "etls_proxy_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
    assert_eq!(auth.calls(), 1);
}

#[tokio::test]
async fn access_log_lines_in_json_name_the_decision_never_a_token() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth)
        .extra("log: {format: json}")
        .rust_log("warn")
        .start()
        .await;
    proxy
        .get(
            "/a?token=opaque-query",
            &format!("accessTokenEtls={}", access_token(600)),
        )
        .await;
    proxy.get("/b", &expired_session("opaque-access-log")).await;
    proxy.get("/c", "").await;
    // Written once the answer is out: wait for it.
    until_async("three access lines", Duration::from_secs(5), || async {
        proxy.log().lines().filter(|l| l.starts_with('{')).count() == 3
    })
    .await;
    let log = proxy.log();
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(lines.len(), 3, "{log}");
    let field = |i: usize, k: &str| lines[i][k].clone();
    assert_eq!(field(0, "path"), "/a");
    assert_eq!(field(0, "decision"), "passed");
    assert_eq!(field(0, "status"), 200);
    assert_eq!(field(0, "auth_api_ms"), Value::Null);
    assert_eq!(field(1, "decision"), "refreshed");
    assert!(field(1, "auth_api_ms").as_f64().unwrap() > 0.0);
    assert_eq!(field(1, "session").as_str().unwrap().len(), 8);
    assert!(field(1, "ms").as_f64().unwrap() >= field(1, "auth_api_ms").as_f64().unwrap());
    assert_eq!(field(2, "decision"), "logged_out");
    assert_eq!(field(2, "status"), 401);
}

#[tokio::test]
async fn access_log_text_lines_and_off_switch() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth).rust_log("warn").start().await;
    proxy.get("/x", "").await;
    until_async("the access line", Duration::from_secs(5), || async {
        proxy.log().contains("GET \"/x\"")
    })
    .await;
    let log = proxy.log();
    let line = log
        .lines()
        .find(|l| l.starts_with("GET "))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.starts_with("GET \"/x\" 401 logged_out ") && line.ends_with(" auth_api=- session=-"),
        "{line}"
    );
    let quiet = Proxy::builder(&app, &auth)
        .extra("log: {access: false}")
        .rust_log("warn")
        .start()
        .await;
    quiet.get("/x", "").await;
    quiet.get("/y", "").await;
    assert!(!quiet.log().contains("GET \"/x\""), "{}", quiet.log());
}

#[tokio::test]
async fn sigterm_lets_requests_in_flight_finish() {
    let auth = Stub::auth_api().await;
    let app = Stub::app().await;
    app.set_handler(|_| {
        StubReply::json(200, serde_json::json!({"slow": true})).delayed(Duration::from_millis(800))
    });
    let mut proxy = Proxy::start(&app, &auth).await;
    let cookie = format!("accessTokenEtls={}", access_token(600));
    let in_flight = {
        let addr = proxy.addr;
        tokio::spawn(async move { fan_out(addr, &cookie, 10).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.signal("TERM");
    let answers = in_flight.await.unwrap();
    assert!(
        answers.iter().all(|r| r.status == 200),
        "{:?}",
        answers.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let status = proxy
        .wait_exit(Duration::from_secs(15))
        .expect("exits by itself");
    assert!(status.success(), "{status:?}");
    assert_eq!(app.calls(), 10);
}

#[tokio::test]
async fn a_reload_rereads_the_env_file_so_secrets_change_without_a_restart() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let first = "first-access-secret-0123456789abcdef";
    let second = "second-access-secret-0123456789abcde";
    let env_file = TempFile::new("secrets.env", &format!("ETLS_ACCESS={first}\n"));
    let extra = format!("env_file: {}", env_file.0.display());
    let proxy = Proxy::builder(&app, &auth)
        .extra(extra.clone())
        .start()
        .await;
    let token = |secret: &str| {
        format!(
            "accessTokenEtls={}",
            sign(secret, serde_json::json!({"exp": now() + 600}))
        )
    };
    assert_eq!(proxy.get("/", &token(first)).await.status, 200);
    assert_eq!(
        proxy.get("/", &token(ACCESS_SECRET)).await.status,
        401,
        "the file wins"
    );

    std::fs::write(&env_file.0, format!("ETLS_ACCESS={second}\n")).unwrap();
    proxy.reload_with(&extra);
    until_async("the new secret", Duration::from_secs(5), || async {
        proxy.get("/", &token(second)).await.status == 200
    })
    .await;
    assert_eq!(proxy.get("/", &token(first)).await.status, 401);
}

#[tokio::test]
async fn identity_headers_come_from_the_token_and_never_from_the_client() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth)
        .extra("upstream_headers: {username: X-Etls-User, role: X-Etls-Role}")
        .start()
        .await;
    let token = sign(
        ACCESS_SECRET,
        serde_json::json!({"username": "ann", "role": "editor", "exp": now() + 600}),
    );
    let spoofed = format!(
        "GET /page HTTP/1.1\r\nHost: x\r\nX-Etls-User: admin\r\nx-etls-role: owner\r\nX-Etls-User: root\r\nCookie: accessTokenEtls={token}\r\n\r\n"
    );
    assert_eq!(proxy.send(&spoofed).await.status, 200);
    let seen = app.last();
    assert_eq!(seen.all("x-etls-user"), vec!["ann"]);
    assert_eq!(seen.all("x-etls-role"), vec!["editor"]);

    // On a public path nothing is verified, so nothing is vouched for: the headers are dropped.
    let public = "GET /_next/static/a.js HTTP/1.1\r\nHost: x\r\nX-Etls-User: admin\r\n\r\n";
    assert_eq!(proxy.send(public).await.status, 200);
    assert!(app.last().all("x-etls-user").is_empty());

    // After a refresh: the claims carried into the new token (`username` of the refresh token).
    let r = proxy
        .send(&format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Etls-User: admin\r\nCookie: {}\r\n\r\n",
            expired_session("opaque-identity")
        ))
        .await;
    assert_eq!(r.status, 200);
    let seen = app.last();
    assert_eq!(seen.all("x-etls-user"), vec!["ann"]);
    assert!(
        seen.all("x-etls-role").is_empty(),
        "the refresh token has no role"
    );
}

/// Replacing the binary: the new process takes the listening sockets over (`-u`, then SIGQUIT
/// to the old one), and requests keep being answered throughout.
#[tokio::test]
async fn a_graceful_upgrade_hands_the_listener_over_without_refusing_a_request() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let mut old = Proxy::start(&app, &auth).await;
    let addr = old.addr;
    let cookie = format!("accessTokenEtls={}", access_token(600));
    let mut new = old.successor();
    // Give the new process the time to wait on the upgrade socket.
    until_async(
        "the new process waits for the sockets",
        Duration::from_secs(5),
        || async { std::path::Path::new(&format!("/tmp/etls-test-{}.sock", addr.port())).exists() },
    )
    .await;
    // A reload sent while it waits (systemctl reload, config management) must not end it.
    new.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(new.is_running(), "SIGHUP while waiting for the sockets");
    let load = {
        let cookie = cookie.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..60 {
                statuses.push(
                    send_raw(
                        addr,
                        format!("GET /during HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n")
                            .as_bytes(),
                    )
                    .await
                    .status,
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            statuses
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    old.signal("QUIT");
    let statuses = load.await.unwrap();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(
        old.wait_exit(Duration::from_secs(15)).is_some(),
        "the old process exits"
    );
    assert!(new.is_running());
    assert_eq!(proxy_get(addr, &cookie).await, 200);
    until_async(
        "the new process answers",
        Duration::from_secs(5),
        || async { new.log().contains("GET \"/after\"") },
    )
    .await;
}

async fn proxy_get(addr: SocketAddr, cookie: &str) -> u16 {
    send_raw(
        addr,
        format!("GET /after HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n").as_bytes(),
    )
    .await
    .status
}
