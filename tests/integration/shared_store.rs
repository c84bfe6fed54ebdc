//! `refresh.store: redis`: several proxy instances share one refresh per session through a real
//! `redis-server` (each test starts its own); Redis failing never fails a request.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::redis_support::RedisServer;
use crate::support::*;

const LOGOUT: &str = "/api/auth/logout";

async fn metric(admin: SocketAddr, name: &str) -> f64 {
    series(&admin_get(admin, "/metrics").await.text(), name)
}

/// `n` instances sharing `redis`, each with its own admin listener.
async fn instances(
    n: usize,
    app: &Stub,
    auth: &Stub,
    redis: &RedisServer,
    extra: &str,
) -> Vec<(Proxy, SocketAddr)> {
    fleet(n, app, auth, &format!("{}\n{extra}", redis.yaml())).await
}

/// `n` instances on `yaml` (which names the store), each with its admin listener.
async fn fleet(n: usize, app: &Stub, auth: &Stub, yaml: &str) -> Vec<(Proxy, SocketAddr)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (admin, admin_yaml) = admin_yaml();
        let proxy = Proxy::builder(app, auth)
            .extra(format!("{yaml}\n{admin_yaml}"))
            .start()
            .await;
        out.push((proxy, admin));
    }
    out
}

/// `n` concurrent GETs of `cookie`, spread round robin over `addrs`.
async fn spread(addrs: &[SocketAddr], cookie: &str, n: usize) -> Vec<Response> {
    let raw = format!("GET /page HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n");
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (raw, addr) = (raw.clone(), addrs[i % addrs.len()]);
            tokio::spawn(async move { send_raw(addr, raw.as_bytes()).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn lines(r: &Response) -> Vec<String> {
    r.set_cookies().iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn three_instances_make_one_auth_api_call_and_hand_out_identical_cookies() {
    let redis = RedisServer::start().await;
    // Slower than a third of the lease (auth timeout 1.5 s + 1 s): the lease is renewed.
    let (app, auth) = (
        Stub::app().await,
        Stub::slow_auth_api(Duration::from_millis(1200)).await,
    );
    let fleet = instances(3, &app, &auth, &redis, "").await;
    let addrs: Vec<SocketAddr> = fleet.iter().map(|(p, _)| p.addr).collect();
    let old = expired_session("opaque-rt-herd");
    let answers = spread(&addrs, &old, 100).await;
    let first = lines(&answers[0]);
    assert_eq!(first.len(), 5, "{}", answers[0].text());
    for r in &answers {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(lines(r), first, "byte-identical cookies on every instance");
    }
    assert_eq!(auth.calls(), 1, "one auth API call for the whole fleet");
    assert_eq!(
        answers[0].set_cookie_value("refreshToken").as_deref(),
        Some("api-refresh-after-opaque-rt-herd")
    );
    let mut renewals = 0.0;
    let mut shared = 0.0;
    for (_, admin) in &fleet {
        renewals += metric(*admin, "etls_proxy_shared_store_lease_renewals_total").await;
        shared += metric(*admin, "etls_proxy_shared_store_results_total").await;
        assert_eq!(
            metric(*admin, "etls_proxy_shared_store_errors_total").await,
            0.0
        );
    }
    assert!(
        renewals >= 1.0,
        "the lease was renewed during the slow call"
    );
    assert_eq!(
        shared, 2.0,
        "the two other instances took the stored result"
    );
    // Replayed later to each instance (kept locally or not): the same tokens, no call.
    for addr in &addrs {
        let r = send_raw(
            *addr,
            format!("GET /again HTTP/1.1\r\nHost: x\r\nCookie: {old}\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(lines(&r), first);
    }
    // A fourth instance that never saw the session gets it from Redis.
    let late = instances(1, &app, &auth, &redis, "").await;
    let r = late[0].0.get("/late", &old).await;
    assert_eq!(r.status, 200);
    assert_eq!(lines(&r), first, "the grace window spans instances");
    assert_eq!(auth.calls(), 1);
    // What Redis holds names no cookie and holds no token in the clear.
    let dump = redis.cli(&["--scan"]);
    assert!(
        !dump.contains("opaque") && !dump.contains("refreshToken"),
        "{dump}"
    );
    for key in redis.keys("etls:*:result") {
        let value = redis.cli(&["GET", &key]);
        assert!(!value.contains("api-refresh-after") && !value.contains("eyJ"));
    }
}

#[tokio::test]
async fn two_sessions_never_share_across_instances() {
    let redis = RedisServer::start().await;
    let (app, auth) = (
        Stub::app().await,
        Stub::slow_auth_api(Duration::from_millis(200)).await,
    );
    let fleet = instances(2, &app, &auth, &redis, "").await;
    let addrs: Vec<SocketAddr> = fleet.iter().map(|(p, _)| p.addr).collect();
    let (a, b) = (
        expired_session("opaque-rt-a"),
        expired_session("opaque-rt-b"),
    );
    let (ra, rb) = tokio::join!(spread(&addrs, &a, 10), spread(&addrs, &b, 10));
    for (answers, rt) in [(ra, "opaque-rt-a"), (rb, "opaque-rt-b")] {
        for r in answers {
            assert_eq!(r.status, 200);
            assert_eq!(
                r.set_cookie_value("refreshToken"),
                Some(format!("api-refresh-after-{rt}"))
            );
        }
    }
    assert_eq!(auth.calls(), 2, "one call per session");
}

#[tokio::test]
async fn a_logout_on_one_instance_is_a_logout_on_every_instance() {
    let redis = RedisServer::start().await;
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let fleet = instances(3, &app, &auth, &redis, "").await;
    for logout_with_renewed in [true, false] {
        let rt = if logout_with_renewed {
            "opaque-rt-lo-new"
        } else {
            "opaque-rt-lo-old"
        };
        let calls = auth.calls();
        let old = expired_session(rt);
        // Refreshed on the first instance, then replayed to the others: each keeps the result.
        let first = fleet[0].0.get("/page", &old).await;
        assert_eq!(first.status, 200);
        for (proxy, _) in &fleet[1..] {
            let r = proxy.get("/page", &old).await;
            assert_eq!(lines(&r), lines(&first));
        }
        assert_eq!(auth.calls(), calls + 1);
        let renewed = stored(&old, &first);
        let cookies = if logout_with_renewed { &renewed } else { &old };
        let r = fleet[1].0.post(LOGOUT, cookies, b"").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json(), json!({"message": "Logged out"}));
        // The old cookies are a logout everywhere, the instances holding a kept result too.
        for (proxy, _) in &fleet {
            assert_logout(&proxy.get("/page", &old).await);
        }
        assert_eq!(auth.calls(), calls + 1, "no auth API call after the logout");
    }
    let mut ended = 0.0;
    for (_, admin) in &fleet {
        ended += metric(*admin, "etls_proxy_shared_store_ended_total").await;
    }
    assert!(ended >= 2.0);
}

#[tokio::test]
async fn a_rejected_refresh_ends_the_session_on_every_instance() {
    let redis = RedisServer::start().await;
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    // The renewed refresh token is refused (the auth API revoked the family).
    auth.set_handler(|req| {
        let rt = req.cookie("refreshToken").unwrap_or_default();
        if rt.starts_with("api-refresh-after-") {
            StubReply::json(403, json!({"error": "invalid_grant"}))
        } else {
            StubReply::json(200, rotated(&rt))
        }
    });
    let fleet = instances(2, &app, &auth, &redis, "").await;
    let old = expired_session("opaque-rt-rej");
    let first = fleet[0].0.get("/page", &old).await;
    assert_eq!(first.status, 200);
    // The second instance keeps the result too.
    assert_eq!(lines(&fleet[1].0.get("/page", &old).await), lines(&first));
    assert_eq!(auth.calls(), 1);
    // The renewed cookies, their access token expired, are refused on instance 0 ...
    let renewed_expired = access_expired(&stored(&old, &first));
    assert_logout(&fleet[0].0.get("/page", &renewed_expired).await);
    assert_eq!(auth.calls(), 2);
    // ... which ends the chain everywhere: the old cookies on instance 1, which keeps their
    // result, and the renewed ones there, without a call.
    assert_logout(&fleet[1].0.get("/page", &old).await);
    assert_logout(&fleet[1].0.get("/page", &renewed_expired).await);
    assert_eq!(
        auth.calls(),
        2,
        "the rejection is known on the other instance"
    );
}

/// A renewal too large for the cookies ends the session on every instance too: the other
/// instance's requests with the old cookies get the logout, not a second call that a rotating
/// auth API would refuse under another reason.
#[tokio::test]
async fn a_renewal_too_large_for_cookies_ends_the_session_on_every_instance() {
    let redis = RedisServer::start().await;
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    auth.set_handler(|req| {
        let rt = req.cookie("refreshToken").unwrap_or_default();
        let mut answer = rotated(&rt);
        answer["userData"] = json!({"blob": "u".repeat(40_000)});
        StubReply::json(200, answer)
    });
    let fleet = instances(2, &app, &auth, &redis, "").await;
    let old = expired_session("opaque-rt-too-large");
    assert_logout(&fleet[0].0.get("/page", &old).await);
    assert_logout(&fleet[1].0.get("/page", &old).await);
    assert_eq!(auth.calls(), 1, "ended everywhere: no second call");
    assert_eq!(app.calls(), 0);
}

#[tokio::test]
async fn redis_down_fails_no_request_and_sharing_resumes_when_it_is_back() {
    let mut redis = RedisServer::start().await;
    let (app, auth) = (
        Stub::app().await,
        Stub::slow_auth_api(Duration::from_millis(150)).await,
    );
    let fleet = instances(2, &app, &auth, &redis, "").await;
    let addrs: Vec<SocketAddr> = fleet.iter().map(|(p, _)| p.addr).collect();
    // Shared first.
    let answers = spread(&addrs, &expired_session("opaque-rt-up"), 10).await;
    assert!(answers.iter().all(|r| r.status == 200));
    assert_eq!(auth.calls(), 1);
    redis.stop();
    for n in 0..3 {
        let cookie = expired_session(&format!("opaque-rt-down-{n}"));
        let answers = spread(&addrs, &cookie, 10).await;
        for r in &answers {
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.set_cookies().len(), 5);
        }
        // Each instance refreshed on its own, once (its in-process flight).
        assert!(auth.calls() <= 1 + 2 * (n + 1), "{}", auth.calls());
    }
    let mut errors = 0.0;
    for (_, admin) in &fleet {
        errors += metric(*admin, "etls_proxy_shared_store_errors_total").await;
        let _ = metric(*admin, "etls_proxy_shared_store_fallbacks_total").await;
    }
    assert!(errors >= 2.0, "errors counted: {errors}");
    for (proxy, _) in &fleet {
        assert!(proxy.log().contains("shared store redis://127.0.0.1"));
    }
    redis.restart().await;
    // The client reconnects by itself: within a few sessions, one call per session again.
    let mut shared_again = false;
    for n in 0..20 {
        let calls = auth.calls();
        let cookie = expired_session(&format!("opaque-rt-back-{n}"));
        let answers = spread(&addrs, &cookie, 10).await;
        assert!(answers.iter().all(|r| r.status == 200));
        if auth.calls() == calls + 1 && !redis.keys("etls:*:result").is_empty() {
            shared_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(shared_again, "sharing resumed after the restart");
}

#[tokio::test]
async fn garbage_in_redis_falls_back_and_fails_nothing() {
    let redis = RedisServer::start().await;
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let fleet = instances(2, &app, &auth, &redis, "").await;
    // A kept result replaced by garbage, by a tampered copy, or by a value of another type.
    for (n, spoil) in ["garbage", "tamper", "type"].iter().enumerate() {
        let old = expired_session(&format!("opaque-rt-spoil-{n}"));
        let calls = auth.calls();
        let first = fleet[0].0.get("/page", &old).await;
        assert_eq!(first.status, 200);
        let keys = redis.keys("etls:*:result");
        assert_eq!(keys.len(), 1, "{keys:?}");
        let key = &keys[0];
        match *spoil {
            "garbage" => {
                redis.cli(&["SET", key, "not a sealed value at all", "PX", "30000"]);
            }
            "tamper" => {
                // Same length, one byte changed: the AEAD tag refuses it.
                redis.cli(&[
                    "EVAL",
                    "local v = redis.call('GET', KEYS[1]); local b = string.byte(v, 20); \
                     return redis.call('SET', KEYS[1], string.sub(v, 1, 19) .. string.char((b + 1) % 256) .. string.sub(v, 21), 'PX', 30000)",
                    "1",
                    key,
                ]);
            }
            _ => {
                redis.cli(&["DEL", key]);
                redis.cli(&["HSET", key, "a", "b"]);
            }
        }
        // The other instance, which keeps nothing locally, serves it through its own call.
        let r = fleet[1].0.get("/page", &old).await;
        assert_eq!(r.status, 200, "{spoil}: {}", r.text());
        assert_eq!(r.set_cookies().len(), 5);
        assert_eq!(
            auth.calls(),
            calls + 2,
            "{spoil}: served by a call of its own"
        );
        redis.cli(&["DEL", key]);
    }
    let errors = metric(fleet[1].1, "etls_proxy_shared_store_errors_total").await;
    assert!(errors >= 3.0, "{errors}");
}

#[tokio::test]
async fn an_unreachable_redis_at_start_is_a_warning_and_requests_are_served() {
    let port = free_port();
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::builder(&app, &auth)
        .extra("refresh: {store: redis, redis: {url_env: ETLS_TEST_REDIS_URL}}")
        .env(
            "ETLS_TEST_REDIS_URL",
            &format!("redis://:opaque-redis-password@127.0.0.1:{port}/0"),
        )
        .start()
        .await;
    let r = proxy
        .get("/page", &expired_session("opaque-rt-nored"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        proxy
            .get("/page", &expired_session("opaque-rt-nored"))
            .await
            .status,
        200
    );
    assert_eq!(auth.calls(), 1, "the in-process grace window still holds");
    let log = proxy.log();
    assert!(log.contains("does not answer"), "{log}");
    assert!(
        log.contains(&format!("redis://127.0.0.1:{port}/0")),
        "{log}"
    );
}

/// A Redis that wants a password this proxy does not give, or not the one it gives: an error at
/// start that says the credentials were refused (not "does not answer"), each failed command
/// logged with Redis's error code, and every request served; the right password shares.
#[tokio::test]
async fn a_redis_refusing_the_credentials_says_so_and_requests_are_served() {
    let redis = RedisServer::start_with_password("opaque-right-password").await;
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let port = redis.port;
    let table = [
        (
            "no password",
            format!("redis://127.0.0.1:{port}/0"),
            "NOAUTH",
        ),
        (
            "a wrong password",
            format!("redis://:opaque-wrong-password@127.0.0.1:{port}/0"),
            "authentication failed",
        ),
    ];
    for (what, url, says) in &table {
        let proxy = Proxy::builder(&app, &auth)
            .extra("refresh: {store: redis, redis: {url_env: ETLS_TEST_REDIS_URL}}")
            .env("ETLS_TEST_REDIS_URL", url)
            .start()
            .await;
        let cookie = expired_session(&format!("opaque-rt-creds-{}", what.replace(' ', "-")));
        let r = proxy.get("/page", &cookie).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        let log = until_log(&proxy, "refuses this proxy's credentials").await;
        assert!(log.contains(says), "{what}: {log}");
        assert!(!log.contains("does not answer"), "{what}: {log}");
        assert!(!log.contains("opaque-wrong-password"), "{what}: {log}");
    }
    assert!(redis.keys("etls:*").is_empty());
    let proxy = Proxy::builder(&app, &auth)
        .extra("refresh: {store: redis, redis: {url_env: ETLS_TEST_REDIS_URL}}")
        .env(
            "ETLS_TEST_REDIS_URL",
            &format!("redis://:opaque-right-password@127.0.0.1:{port}/0"),
        )
        .start()
        .await;
    let r = proxy
        .get("/page", &expired_session("opaque-rt-creds-right"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        redis.keys("etls:*:result").len(),
        1,
        "shared with the right password"
    );
}

/// The proxy's log once it holds `text` (the start probe runs beside the first requests).
async fn until_log(proxy: &Proxy, text: &str) -> String {
    until(
        &format!("the log says {text:?}"),
        Duration::from_secs(10),
        || proxy.log().contains(text),
    )
    .await;
    proxy.log()
}

#[test]
fn check_refuses_bad_store_settings_by_key() {
    let cases = [
        (
            "refresh: {store: redis}",
            "refresh.redis.url: refresh.store is `redis`",
        ),
        (
            "refresh: {store: redis, redis: {url: 'redis://127.0.0.1:notaport'}}",
            "refresh.redis.url: not a Redis URL",
        ),
        (
            "refresh: {store: redis, redis: {url: 'redis://:opaque-pw@127.0.0.1:6379'}}",
            "refresh.redis.url: holds a password",
        ),
        (
            "refresh: {store: redis, redis: {url_env: ETLS_NO_SUCH_VAR}}",
            "refresh.redis.url_env: environment variable ETLS_NO_SUCH_VAR is not set",
        ),
        (
            "refresh: {store: redis, redis: {url: 'redis://127.0.0.1', timeout_ms: 0}}",
            "refresh.redis.timeout_ms",
        ),
        ("refresh: {store: valkey}", "unknown variant `valkey`"),
    ];
    for (yaml, expected) in cases {
        let (out, text) = check_config(yaml);
        assert_eq!(out.status.code(), Some(2), "{yaml}: {text}");
        assert!(text.contains(expected), "{yaml}: {text}");
        assert!(
            !text.contains("opaque-pw") && !text.contains("panicked"),
            "{text}"
        );
    }
    // Unreachable is not a refusal: -t connects to nothing.
    let (out, _) = check_config("refresh: {store: redis, redis: {url: 'redis://127.0.0.1:1/0'}}");
    assert!(out.status.success());
}

#[tokio::test]
async fn redis_killed_while_a_refresh_runs_fails_no_request() {
    let mut redis = RedisServer::start().await;
    let (app, auth) = (
        Stub::app().await,
        Stub::slow_auth_api(Duration::from_millis(400)).await,
    );
    let fleet = instances(2, &app, &auth, &redis, "").await;
    let addrs: Vec<SocketAddr> = fleet.iter().map(|(p, _)| p.addr).collect();
    let cookie = expired_session("opaque-rt-midflight");
    let herd = {
        let addrs = addrs.clone();
        tokio::spawn(async move { spread(&addrs, &cookie, 20).await })
    };
    // The lock is taken and the call is running when Redis goes away.
    tokio::time::sleep(Duration::from_millis(150)).await;
    redis.stop();
    for r in herd.await.unwrap() {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.set_cookies().len(), 5);
    }
    assert!(auth.calls() <= 2, "at most one call per instance");
}

#[tokio::test]
async fn the_valid_path_never_touches_redis() {
    // Redis down from the start: a valid token must not even try it.
    let port = free_port();
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let (admin, admin_yaml) = admin_yaml();
    let proxy = Proxy::builder(&app, &auth)
        .extra(format!(
            "refresh: {{store: redis, redis: {{url: 'redis://127.0.0.1:{port}/0'}}}}\n{admin_yaml}"
        ))
        .start()
        .await;
    let valid = format!(
        "accessTokenEtls={}; refreshTokenEtls={}; refreshToken=opaque-rt-valid",
        access_token(600),
        refresh_token(3600)
    );
    for _ in 0..20 {
        let r = proxy.get("/page", &valid).await;
        assert_eq!(r.status, 200);
        assert!(r.set_cookies().is_empty());
    }
    assert_eq!(
        metric(admin, "etls_proxy_shared_store_errors_total").await,
        0.0
    );
    // The control: an expired one does try (and falls back).
    let r = proxy.get("/page", &expired_session("opaque-rt-exp")).await;
    assert_eq!(r.status, 200);
    assert!(metric(admin, "etls_proxy_shared_store_errors_total").await >= 1.0);
    assert_eq!(auth.calls(), 1);
}

#[tokio::test]
async fn rediss_shares_over_tls_verified_against_the_system_roots() {
    let cert = Certificate::new();
    let (cert_pem, key_pem) = (cert.cert(), cert.key());
    let redis = RedisServer::start_tls(&cert_pem, &key_pem).await;
    let (app, auth) = (
        Stub::app().await,
        Stub::slow_auth_api(Duration::from_millis(200)).await,
    );
    let mut fleet = Vec::new();
    for _ in 0..2 {
        let (admin, admin_yaml) = admin_yaml();
        // The test's certificate as the only root (rustls-native-certs reads SSL_CERT_FILE);
        // a generous timeout, for a TLS handshake by a debug build on a loaded machine.
        let proxy = Proxy::builder(&app, &auth)
            .extra(format!(
                "refresh: {{store: redis, redis: {{url: '{}', timeout_ms: 2000}}}}\n{admin_yaml}",
                redis.url()
            ))
            .env("SSL_CERT_FILE", &cert_pem.display().to_string())
            .start()
            .await;
        fleet.push((proxy, admin));
    }
    assert!(redis.url().starts_with("rediss://"));
    let addrs: Vec<SocketAddr> = fleet.iter().map(|(p, _)| p.addr).collect();
    let answers = spread(&addrs, &expired_session("opaque-rt-tls"), 10).await;
    let first = lines(&answers[0]);
    for r in &answers {
        assert_eq!(r.status, 200);
        assert_eq!(lines(r), first);
    }
    assert_eq!(auth.calls(), 1, "shared over TLS");
    for (_, admin) in &fleet {
        assert_eq!(
            metric(*admin, "etls_proxy_shared_store_errors_total").await,
            0.0
        );
    }
    assert_eq!(redis.keys("etls:*:result").len(), 1);
}

#[tokio::test]
async fn a_refresh_landing_after_a_logout_elsewhere_hands_out_nothing() {
    let redis = RedisServer::start().await;
    let (app, auth) = (
        Stub::app().await,
        Stub::slow_auth_api(Duration::from_millis(600)).await,
    );
    let fleet = instances(2, &app, &auth, &redis, "").await;
    let old = expired_session("opaque-rt-race");
    let running = {
        let (addr, old) = (fleet[0].0.addr, old.clone());
        tokio::spawn(async move { fan_out(addr, &old, 3).await })
    };
    // The call is running on instance 0 (its lock taken) when instance 1 logs the session out.
    let mut locked = false;
    for _ in 0..100 {
        if !redis.keys("etls:*:lock").is_empty() {
            locked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(locked, "the refresh took the lock");
    let r = fleet[1].0.post(LOGOUT, &old, b"").await;
    assert_eq!(r.status, 200);
    // The tokens landing after the logout are not handed out, nor kept.
    for r in running.await.unwrap() {
        assert_logout(&r);
    }
    for (proxy, _) in &fleet {
        assert_logout(&proxy.get("/page", &old).await);
    }
    assert_eq!(auth.calls(), 1);
    assert!(redis.keys("etls:*:result").is_empty());
}

/// A daemon (`-d`) instance, killed by the pid in its pid file when dropped.
struct Daemon {
    addr: SocketAddr,
    pid_file: std::path::PathBuf,
    _conf: TempFile,
}

impl Daemon {
    async fn start(app: &Stub, auth: &Stub, extra: &str) -> Daemon {
        let port = free_port();
        let conf = TempFile::new(
            "daemon.yaml",
            &config_yaml(port, app.addr, auth.addr, extra),
        );
        let status = Command::new(proxy_bin())
            .arg("-d")
            .arg("-c")
            .arg(&conf.0)
            .env("ETLS_ACCESS", ACCESS_SECRET)
            .env("ETLS_REFRESH", REFRESH_SECRET)
            .env("RUST_LOG", "warn")
            .status()
            .unwrap();
        assert!(status.success());
        let daemon = Daemon {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            pid_file: format!("/tmp/etls-test-{port}.pid").into(),
            _conf: conf,
        };
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(daemon.addr).await.is_ok() {
                return daemon;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the daemon did not listen");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pid_file) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

#[tokio::test]
async fn daemon_instances_share_too() {
    // Pingora's `-d` forks after the configuration is loaded: the client must start after it.
    let redis = RedisServer::start().await;
    let (app, auth) = (
        Stub::app().await,
        Stub::slow_auth_api(Duration::from_millis(200)).await,
    );
    let a = Daemon::start(&app, &auth, &redis.yaml()).await;
    let b = Daemon::start(&app, &auth, &redis.yaml()).await;
    let answers = spread(&[a.addr, b.addr], &expired_session("opaque-rt-daemon"), 10).await;
    let first = lines(&answers[0]);
    for r in &answers {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(lines(r), first);
    }
    assert_eq!(auth.calls(), 1);
}

#[tokio::test]
async fn a_reload_that_changes_the_store_says_a_restart_is_needed() {
    let redis = RedisServer::start().await;
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    proxy.reload_with(&redis.yaml());
    let mut said = false;
    for _ in 0..250 {
        let log = proxy.log();
        if log.contains("configuration reloaded") {
            said = log.contains("refresh.store/refresh.redis changed");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(said, "{}", proxy.log());
    // Still one process's table: nothing was written to Redis.
    let r = proxy
        .get("/page", &expired_session("opaque-rt-reload"))
        .await;
    assert_eq!(r.status, 200);
    assert!(redis.keys("etls:*").is_empty());
}

/// A session whose user record is chunked is shared whole: the other instance hands out the same
/// chunk lines, and its app sees one `etlsUser`, the joined token.
#[tokio::test]
async fn a_chunked_session_is_shared_whole_across_instances() {
    let redis = RedisServer::start().await;
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let perms: Vec<String> = (0..400).map(|i| format!("perm:read:{i:05}")).collect();
    auth.set_handler(move |req| {
        let rt = req.cookie("refreshToken").unwrap_or_default();
        StubReply::json(
            200,
            json!({"accessToken": "opaque-a", "refreshToken": format!("api-refresh-after-{rt}"),
                   "userData": {"id": 1, "perms": perms}}),
        )
    });
    let fleet = instances(
        2,
        &app,
        &auth,
        &redis,
        "downstream: {max_cookie_bytes: 32768}",
    )
    .await;
    let old = expired_session("opaque-rt-chunked");
    let first = fleet[0].0.get("/page", &old).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let second = fleet[1].0.get("/page", &old).await;
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(
        auth.calls(),
        1,
        "the second instance took the shared result"
    );
    assert_eq!(lines(&first), lines(&second));
    let chunks: Vec<String> = (0..)
        .map_while(|i| first.set_cookie_value(&format!("etlsUser.{i}")))
        .collect();
    assert!(chunks.len() >= 2, "{:?}", lines(&first));
    assert_eq!(app.last().cookie("etlsUser"), Some(chunks.concat()));
    assert!(app.last().cookie("etlsUser.0").is_none());
}

/// Calls of Redis scripts so far (`EVAL` and `EVALSHA`), from `INFO commandstats`.
fn script_calls(redis: &RedisServer) -> u64 {
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter(|l| l.starts_with("cmdstat_eval"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// `auth_api.max_in_flight` bounds calls to the auth API, not requests waiting for another
/// instance's call: an instance whose only place would be held by such a wait still refreshes
/// another session.
#[tokio::test]
async fn waiting_for_another_instance_takes_no_place_of_max_in_flight() {
    let redis = RedisServer::start().await;
    let (app, auth) = (
        Stub::app().await,
        Stub::slow_auth_api(Duration::from_millis(1000)).await,
    );
    let fleet = instances(2, &app, &auth, &redis, "auth_api: {max_in_flight: 1}").await;
    let one = expired_session("opaque-rt-one");
    let leading = {
        let (addr, one) = (fleet[0].0.addr, one.clone());
        tokio::spawn(async move { fan_out(addr, &one, 1).await })
    };
    for _ in 0..200 {
        if auth.calls() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(auth.calls(), 1, "instance 0 is calling the auth API");
    // Instance 1 waits for instance 0's call for the same session...
    let waiting = {
        let (addr, one) = (fleet[1].0.addr, one.clone());
        tokio::spawn(async move { fan_out(addr, &one, 1).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...and still has its place for another session.
    let other = fleet[1]
        .0
        .get("/page", &expired_session("opaque-rt-two"))
        .await;
    assert_eq!(other.status, 200, "{}", other.text());
    for r in leading
        .await
        .unwrap()
        .into_iter()
        .chain(waiting.await.unwrap())
    {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.set_cookie_value("refreshToken"),
            Some("api-refresh-after-opaque-rt-one".into())
        );
    }
    assert_eq!(auth.calls(), 2);
}

/// A logout needs no valid token, so the cookies it carries must not multiply its work: a
/// cookie header full of made-up `refreshTokenEtls` crumbs costs no more Redis scripts than one.
#[tokio::test]
async fn a_logout_full_of_made_up_refresh_tokens_costs_a_few_redis_scripts() {
    let redis = RedisServer::start().await;
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let fleet = instances(1, &app, &auth, &redis, "").await;
    // As many as the default 16 KiB of cookies holds.
    let crumbs: Vec<String> = (0..600).map(|i| format!("refreshTokenEtls=m{i}")).collect();
    let cookie = format!("refreshToken=opaque-rt-flood; {}", crumbs.join("; "));
    let before = script_calls(&redis);
    let r = fleet[0].0.post(LOGOUT, &cookie, b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let used = script_calls(&redis) - before;
    assert!(
        (1..=3).contains(&used),
        "{used} Redis scripts for one logout"
    );
}

/// The shared tombstone outlives a refresh still running, whatever the grace window: with
/// `grace_secs: 0` a refresh landing after a logout elsewhere still hands out nothing.
#[tokio::test]
async fn a_refresh_landing_after_a_logout_hands_out_nothing_with_no_grace_window() {
    let redis = RedisServer::start().await;
    let (app, auth) = (
        Stub::app().await,
        // Under the test config's 1500 ms deadline, past the 1 s a tombstone once lived.
        Stub::slow_auth_api(Duration::from_millis(1400)).await,
    );
    let fleet = fleet(2, &app, &auth, &redis.yaml_with("grace_secs: 0")).await;
    let old = expired_session("opaque-rt-race-0");
    let running = {
        let (addr, old) = (fleet[0].0.addr, old.clone());
        tokio::spawn(async move { fan_out(addr, &old, 2).await })
    };
    for _ in 0..100 {
        if !redis.keys("etls:*:lock").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !redis.keys("etls:*:lock").is_empty(),
        "the refresh took the lock"
    );
    assert_eq!(fleet[1].0.post(LOGOUT, &old, b"").await.status, 200);
    for r in running.await.unwrap() {
        assert_logout(&r);
    }
    assert!(redis.keys("etls:*:result").is_empty());
    assert_eq!(auth.calls(), 1);
}

/// Each request thread sends through a connection of its own: sessions led on any of an
/// instance's threads are shared with the next instance, and the connections stay one per thread.
#[tokio::test]
async fn every_thread_of_an_instance_shares_and_keeps_one_connection() {
    let redis = RedisServer::start().await;
    let (app, auth) = (
        Stub::app().await,
        Stub::slow_auth_api(Duration::from_millis(50)).await,
    );
    let threads = 4;
    let fleet = instances(
        2,
        &app,
        &auth,
        &redis,
        &format!("pingora: {{threads: {threads}}}"),
    )
    .await;
    let sessions: Vec<String> = (0..24)
        .map(|i| expired_session(&format!("opaque-rt-thread-{i}")))
        .collect();
    let (first, second) = ([fleet[0].0.addr], [fleet[1].0.addr]);
    let led = futures_util::future::join_all(sessions.iter().map(|s| spread(&first, s, 2))).await;
    for answers in led {
        for r in answers {
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    assert_eq!(auth.calls(), 24, "one call per session");
    let replayed =
        futures_util::future::join_all(sessions.iter().map(|s| spread(&second, s, 1))).await;
    for (i, answers) in replayed.iter().enumerate() {
        assert_eq!(answers[0].status, 200);
        assert_eq!(
            answers[0].set_cookie_value("refreshToken"),
            Some(format!("api-refresh-after-opaque-rt-thread-{i}"))
        );
    }
    assert_eq!(auth.calls(), 24, "the second instance called for none");
    assert_eq!(
        metric(fleet[1].1, "etls_proxy_shared_store_results_total").await,
        24.0
    );
    for (_, admin) in &fleet {
        assert_eq!(
            metric(*admin, "etls_proxy_shared_store_errors_total").await,
            0.0
        );
    }
    // Every request thread of both instances, and the start probe of each.
    let clients = redis.cli(&["CLIENT", "LIST"]);
    let connected = clients
        .lines()
        .filter(|l| !l.contains("cmd=client"))
        .count();
    assert!(
        (1..=2 * (threads + 1)).contains(&connected),
        "{connected} connections:\n{clients}"
    );
}

/// A connection belongs to the runtime it was made on: when that runtime ends (as a test's
/// does), the next runtime of the same thread connects anew, and its first command is served.
#[test]
fn a_new_runtime_on_a_thread_gets_a_connection_of_its_own() {
    use etls_proxy::refresh::shared_store::SharedStore;
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let redis = runtime().block_on(RedisServer::start());
    let loaded = etls_proxy::testkit::config::loaded(&config_yaml(
        free_port(),
        "127.0.0.1:9".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
        &redis.yaml(),
    ));
    let settings = loaded.runtime.shared_store.expect("store: redis");
    let store = SharedStore::start(settings, &prometheus::Registry::new()).unwrap();
    for round in 0..3 {
        let answered = runtime().block_on(store.ping());
        assert_eq!(answered, Ok(()), "round {round}");
    }
    assert_eq!(store.metrics.errors.get(), 0);
}

/// An auth API that rotates refresh tokens, as seed 002's does: the first use of a token is
/// answered after `delay`, any later use refused with a 403 after `refusing`.
async fn rotating_auth_api(delay: Duration, refusing: Duration) -> Stub {
    let used = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    Stub::start(move |req| {
        let rt = req.cookie("refreshToken").unwrap_or_default();
        if used.lock().unwrap().insert(rt.clone()) {
            StubReply::json(200, rotated(&rt)).delayed(delay)
        } else {
            StubReply::json(403, json!({"error": "refresh token already used"})).delayed(refusing)
        }
    })
    .await
}

/// `refresh: {store: redis}` on `redis` with a command timeout of `timeout_ms`.
fn store_yaml(redis: &RedisServer, timeout_ms: u64) -> String {
    format!(
        "refresh: {{store: redis, redis: {{url: '{}', timeout_ms: {timeout_ms}}}}}",
        redis.url()
    )
}

/// Redis stalls while an instance takes a session's lock: that instance refreshes alone, then
/// stores its result once Redis answers again, so the old cookies on another instance get the
/// same tokens instead of replaying the rotated refresh token (a 403, a logout).
#[tokio::test]
async fn a_refresh_made_while_redis_stalled_is_shared_once_redis_answers_again() {
    let redis = RedisServer::start().await;
    let (app, auth) = (
        Stub::app().await,
        rotating_auth_api(Duration::from_millis(1200), Duration::ZERO).await,
    );
    let fleet = fleet(2, &app, &auth, &store_yaml(&redis, 300)).await;
    let cookie = expired_session("opaque-rt-stalled");
    redis.pause(Duration::from_millis(800));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let first = spread(&[fleet[0].0.addr], &cookie, 1).await.remove(0);
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.set_cookies().len(), 5);
    assert!(
        metric(fleet[0].1, "etls_proxy_shared_store_fallbacks_total").await >= 1.0,
        "the lock could not be taken"
    );
    for (proxy, _) in fleet.iter().rev() {
        let again = spread(&[proxy.addr], &cookie, 1).await.remove(0);
        assert_eq!(again.status, 200, "{}", again.text());
        assert_eq!(lines(&again), lines(&first));
    }
    assert_eq!(auth.calls(), 1, "the rotated token was never replayed");
}

/// Two instances refresh one session alone while Redis stalls: the auth API answers one and
/// refuses the other the rotated token; the refused one serves the result the first stored,
/// rather than a logout (and ends nothing: the session is alive).
#[tokio::test]
async fn a_rejection_after_another_instance_refreshed_alone_serves_that_refresh() {
    both_alone("opaque-rt-both-alone", 500, 1000, 700).await;
}

/// The same, with Redis still frozen when the refusal comes back and longer than the winner's
/// attempt to store its result: the winner stores it once Redis answers (in the background, its
/// own answer does not wait), and the refused instance looks for it until then (found by a
/// tester with `CLIENT PAUSE`: the refused instances answered the logout).
#[tokio::test]
async fn a_rejection_while_redis_is_still_frozen_waits_for_the_other_refresh() {
    both_alone("opaque-rt-still-frozen", 300, 0, 1500).await;
}

/// Redis frozen for `frozen_ms` as two instances refresh `rt` alone, the auth API answering the
/// first in `answer_ms` and refusing the second in `refuse_ms`: both answers carry the first's
/// tokens, nothing is ended, and replays make no call.
async fn both_alone(rt: &str, answer_ms: u64, refuse_ms: u64, frozen_ms: u64) {
    let redis = RedisServer::start().await;
    let (app, auth) = (
        Stub::app().await,
        rotating_auth_api(
            Duration::from_millis(answer_ms),
            Duration::from_millis(refuse_ms),
        )
        .await,
    );
    let fleet = fleet(2, &app, &auth, &store_yaml(&redis, 300)).await;
    let addrs: Vec<SocketAddr> = fleet.iter().map(|(p, _)| p.addr).collect();
    let cookie = expired_session(rt);
    redis.pause(Duration::from_millis(frozen_ms));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let answers = spread(&addrs, &cookie, 2).await;
    assert_eq!(auth.calls(), 2, "both instances called while Redis stalled");
    for r in &answers {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(lines(r), lines(&answers[0]));
    }
    assert!(
        redis.keys("etls:*:ended").is_empty(),
        "the session was not ended"
    );
    let later = spread(&addrs, &cookie, 2).await;
    assert!(later.iter().all(|r| lines(r) == lines(&answers[0])));
    assert_eq!(auth.calls(), 2);
}

/// Redis freezes while one instance calls the auth API under the lock and another waits for
/// it: the waiter keeps waiting through the stall instead of calling itself (which would replay
/// the token the first call rotates: a reuse, fatal with an auth API that revokes the family),
/// and the caller stores its result once Redis answers.
#[tokio::test]
async fn a_waiter_seeing_the_lock_waits_through_a_redis_stall() {
    let redis = RedisServer::start().await;
    let (app, auth) = (
        Stub::app().await,
        rotating_auth_api(Duration::from_millis(1000), Duration::ZERO).await,
    );
    let fleet = fleet(2, &app, &auth, &store_yaml(&redis, 300)).await;
    let cookie = expired_session("opaque-rt-wait-through");
    let leader = spawn_get(fleet[0].0.addr, "/page", &cookie);
    auth.wait_for_calls(1).await;
    let waiter = spawn_get(fleet[1].0.addr, "/page", &cookie);
    tokio::time::sleep(Duration::from_millis(150)).await;
    redis.pause(Duration::from_millis(1500));
    let (leader, waiter) = (leader.await.unwrap(), waiter.await.unwrap());
    assert_eq!(leader.status, 200, "{}", leader.text());
    assert_eq!(waiter.status, 200, "{}", waiter.text());
    assert_eq!(lines(&waiter), lines(&leader));
    assert_eq!(
        auth.calls(),
        1,
        "the waiter never replayed the rotated token"
    );
}

/// After a Redis restart, each thread's connection is found dropped at its first command and
/// that command is sent again on a new one: the very first sessions are shared, one call each,
/// on every thread.
#[tokio::test]
async fn after_a_redis_restart_the_first_sessions_are_shared_at_once() {
    let mut redis = RedisServer::start().await;
    let (app, auth) = (
        Stub::app().await,
        Stub::slow_auth_api(Duration::from_millis(100)).await,
    );
    let fleet = instances(2, &app, &auth, &redis, "pingora: {threads: 2}").await;
    let addrs: Vec<SocketAddr> = fleet.iter().map(|(p, _)| p.addr).collect();
    let round = |tag: &'static str| {
        let addrs = addrs.clone();
        async move {
            let sessions: Vec<String> = (0..6)
                .map(|i| expired_session(&format!("opaque-rt-{tag}-{i}")))
                .collect();
            let answers =
                futures_util::future::join_all(sessions.iter().map(|s| spread(&addrs, s, 4))).await;
            for r in answers.iter().flatten() {
                assert_eq!(r.status, 200, "{}", r.text());
            }
        }
    };
    // Every thread of both instances has led a refresh, so each holds a connection.
    round("before").await;
    assert_eq!(auth.calls(), 6);
    redis.restart().await;
    round("after").await;
    assert_eq!(
        auth.calls(),
        12,
        "one call per session right after the restart"
    );
}

/// `cookie` with its access token expired: the next request refreshes.
fn access_expired(cookie: &str) -> String {
    cookie
        .split("; ")
        .map(|c| match c.split_once('=') {
            Some(("accessTokenEtls", _)) => format!("accessTokenEtls={}", access_token(-30)),
            _ => c.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A logout on an instance that did not make the session's latest refreshes, with the cookies
/// they rotated away: the backend logout names the newest session Redis keeps along the chain
/// (found from the logout's own cookies, each result opened with the cookies it renewed), not
/// the spent refresh token, which would leave the browser's real session alive at the auth API.
#[tokio::test]
async fn a_logout_elsewhere_with_old_cookies_names_the_newest_session() {
    let redis = RedisServer::start().await;
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let extra = format!("auth_api: {{logout_url: 'http://{}/logout'}}", auth.addr);
    let fleet = instances(2, &app, &auth, &redis, &extra).await;
    // First refresh on the logout's instance (it keeps that result) or on the other one (it
    // knows nothing of the session); the second refresh always on the other one.
    for first_here in [true, false] {
        let rt = format!("opaque-rt-newest-{first_here}");
        let s0 = expired_session(&rt);
        let first = if first_here { &fleet[0] } else { &fleet[1] };
        let r1 = first.0.get("/page", &s0).await;
        assert_eq!(r1.status, 200);
        let s1 = access_expired(&stored(&s0, &r1));
        let r2 = fleet[1].0.get("/page", &s1).await;
        assert_eq!(r2.status, 200);
        let newest = format!("refreshToken=api-refresh-after-api-refresh-after-{rt}");
        assert_eq!(
            r2.set_cookie_value("refreshToken")
                .map(|v| format!("refreshToken={v}")),
            Some(newest.clone())
        );
        let calls = auth.calls();
        let r = fleet[0].0.post(LOGOUT, &s0, b"").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json(), json!({"message": "Logged out"}));
        assert_eq!(auth.calls(), calls + 1, "one backend logout");
        let backend = auth.last();
        assert_eq!(backend.path, "/logout");
        assert_eq!(
            backend.header("cookie"),
            Some(newest.as_str()),
            "the newest session, not a rotated-away one (first refresh here: {first_here})"
        );
        for (proxy, _) in &fleet {
            assert_logout(&proxy.get("/page", &s0).await);
            assert_logout(&proxy.get("/page", &s1).await);
        }
    }
}
