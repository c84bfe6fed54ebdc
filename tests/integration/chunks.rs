//! Values over one cookie: split into `name.0..k` chunks on the way out, joined on the way in,
//! stale chunks cleared, bounded by `cookies.max_chunks`.

use serde_json::{Value, json};

use crate::support::*;

/// A user record of about `kb` KB of JSON (its signed token takes a third more).
fn big_user(kb: usize) -> Value {
    let perms: Vec<String> = (0..kb * 1024 / 18)
        .map(|i| format!("perm:read:{i:05}"))
        .collect();
    json!({"id": 7, "role": "admin", "perms": perms})
}

/// What a browser keeps from Set-Cookie lines (set, replace, clear by `Max-Age=0`), and the
/// Cookie header it sends back.
#[derive(Default)]
struct Jar(Vec<(String, String)>);

impl Jar {
    fn from_header(header: &str) -> Jar {
        Jar(header
            .split("; ")
            .filter_map(|c| c.split_once('='))
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect())
    }

    fn apply(&mut self, r: &Response) {
        for line in r.set_cookies() {
            let (name, value) = line.split(';').next().unwrap().split_once('=').unwrap();
            self.0.retain(|(n, _)| n != name);
            if !line.contains("Max-Age=0") {
                self.0.push((name.to_owned(), value.to_owned()));
            }
        }
    }

    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn names(&self) -> Vec<&str> {
        self.0.iter().map(|(n, _)| n.as_str()).collect()
    }

    fn set(&mut self, name: &str, value: &str) {
        self.0.retain(|(n, _)| n != name);
        self.0.push((name.to_owned(), value.to_owned()));
    }
}

/// Names of the cookies a response sets (with a value) and clears.
fn set_and_cleared(r: &Response) -> (Vec<String>, Vec<String>) {
    let (mut set, mut cleared) = (Vec::new(), Vec::new());
    for line in r.set_cookies() {
        assert!(line.len() <= 4096, "a line over 4096 bytes: {}", line.len());
        let name = line.split_once('=').unwrap().0.to_owned();
        if line.contains("Max-Age=0") {
            cleared.push(name);
        } else {
            set.push(name);
        }
    }
    (set, cleared)
}

fn app_cookie(app: &Stub) -> String {
    let req = app.last();
    let all = req.all("cookie");
    assert_eq!(all.len(), 1, "one Cookie header: {all:?}");
    all[0].to_owned()
}

#[tokio::test]
async fn a_large_user_record_is_chunked_and_the_app_sees_it_whole() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    auth.set_handler(|req| {
        let rt = req.cookie("refreshToken").unwrap_or_default();
        let mut answer = rotated(&rt);
        answer["userData"] = big_user(12);
        StubReply::json(200, answer)
    });
    // 12 KB of user data signs to 16 KB: more than the default 16 KiB of cookies.
    let proxy = Proxy::builder(&app, &auth)
        .extra("downstream: {max_cookie_bytes: 32768}")
        .start()
        .await;
    let session = expired_session("rt-big");
    let r = proxy.get("/dashboard", &session).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (set, cleared) = set_and_cleared(&r);
    let chunks: Vec<&String> = set.iter().filter(|n| n.starts_with("etlsUser.")).collect();
    assert!(chunks.len() >= 3, "{set:?}");
    for (i, name) in chunks.iter().enumerate() {
        assert_eq!(**name, format!("etlsUser.{i}"));
    }
    assert!(
        !set.iter().any(|n| n == "etlsUser"),
        "no plain etlsUser: {set:?}"
    );
    // The browser's plain etlsUser would shadow the chunks: cleared.
    assert_eq!(cleared, ["etlsUser"]);
    let joined: String = chunks
        .iter()
        .map(|n| r.set_cookie_value(n).unwrap())
        .collect();
    assert!(
        verifies(&joined, ACCESS_SECRET),
        "the chunks join to the signed user token"
    );
    assert_eq!(payload(&joined)["perms"], big_user(12)["perms"]);
    // The refreshed request reached the app with one etlsUser, the new one.
    let forwarded = Jar::from_header(&app_cookie(&app));
    assert!(!forwarded.names().iter().any(|n| n.starts_with("etlsUser.")));
    let user = forwarded.0.iter().find(|(n, _)| n == "etlsUser").unwrap();
    assert_eq!(user.1, joined);

    // The next request carries the chunks: the app sees one etlsUser, nothing refreshed.
    let mut jar = Jar::from_header(&session);
    jar.apply(&r);
    assert!(jar.names().contains(&"etlsUser.0") && !jar.names().contains(&"etlsUser"));
    let r = proxy.get("/next", &jar.header()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.set_cookies().is_empty(), "{:?}", r.set_cookies());
    assert_eq!(auth.calls(), 1);
    let forwarded = app_cookie(&app);
    let forwarded_jar = Jar::from_header(&forwarded);
    let names = forwarded_jar.names();
    assert_eq!(
        names,
        [
            "theme",
            "lang",
            "accessTokenEtls",
            "refreshTokenEtls",
            "accessToken",
            "refreshToken",
            "etlsUser"
        ],
        "{forwarded}"
    );
    assert_eq!(forwarded_jar.0[6].1, joined);
}

#[tokio::test]
async fn a_chunked_refresh_token_reaches_the_auth_api_whole_and_shrinks_back() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let long = format!("opaque-{}", "R".repeat(4500));
    let answer_long = long.clone();
    auth.set_handler(move |req| {
        let rt = req.cookie("refreshToken").unwrap_or_default();
        // The first refresh rotates to a 4.5 KB token, the next one back to a short one.
        let next = if rt == answer_long {
            "opaque-short".to_owned()
        } else {
            answer_long.clone()
        };
        StubReply::json(
            200,
            json!({"accessToken": "opaque-a", "refreshToken": next, "userData": {"id": 1}}),
        )
    });
    let proxy = Proxy::start(&app, &auth).await;
    let session = expired_session("rt-1");
    let r = proxy.get("/", &session).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (set, cleared) = set_and_cleared(&r);
    assert!(set.contains(&"refreshToken.0".to_owned()), "{set:?}");
    assert!(set.contains(&"refreshToken.1".to_owned()), "{set:?}");
    assert!(!set.contains(&"refreshToken".to_owned()), "{set:?}");
    assert_eq!(cleared, ["refreshToken"]);
    let mut jar = Jar::from_header(&session);
    jar.apply(&r);

    // The refresh endpoint always refreshes: the auth API gets the joined token, once.
    let r = proxy
        .post("/api/auth/refreshtoken", &jar.header(), b"")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(auth.calls(), 2);
    let sent = auth.last();
    assert_eq!(
        sent.header("cookie"),
        Some(format!("refreshToken={long}").as_str())
    );
    // The short token is plain again, and both chunks are cleared.
    let (set, cleared) = set_and_cleared(&r);
    assert!(set.contains(&"refreshToken".to_owned()), "{set:?}");
    assert_eq!(cleared, ["refreshToken.0", "refreshToken.1"]);
    jar.apply(&r);
    assert!(!jar.names().iter().any(|n| n.starts_with("refreshToken.")));
    assert_eq!(
        jar.0.iter().find(|(n, _)| n == "refreshToken").unwrap().1,
        "opaque-short"
    );
}

#[tokio::test]
async fn a_shorter_value_clears_the_chunks_it_no_longer_needs() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    auth.set_handler(|req| {
        let rt = req.cookie("refreshToken").unwrap_or_default();
        let mut answer = rotated(&rt);
        answer["userData"] = big_user(4);
        StubReply::json(200, answer)
    });
    let proxy = Proxy::start(&app, &auth).await;
    // The browser holds four chunks from an earlier, larger user record.
    let mut jar = Jar::from_header(&expired_session("rt-shrink"));
    jar.0.retain(|(n, _)| n != "etlsUser");
    for i in 0..4 {
        jar.set(&format!("etlsUser.{i}"), &format!("old{i}"));
    }
    let r = proxy.get("/", &jar.header()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (set, cleared) = set_and_cleared(&r);
    let chunks: Vec<&String> = set.iter().filter(|n| n.starts_with("etlsUser.")).collect();
    assert_eq!(chunks, ["etlsUser.0", "etlsUser.1"], "{set:?}");
    assert_eq!(cleared, ["etlsUser.2", "etlsUser.3"]);
    // The app got the new record, joined, not the old chunks.
    let forwarded = Jar::from_header(&app_cookie(&app));
    let user = &forwarded.0.iter().find(|(n, _)| n == "etlsUser").unwrap().1;
    assert!(verifies(user, ACCESS_SECRET));
    assert!(!forwarded.names().iter().any(|n| n.starts_with("etlsUser.")));
}

#[tokio::test]
async fn logout_and_refusals_clear_every_chunk_present() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    let chunks = "etlsUser.0=opaque-a; etlsUser.1=opaque-b; refreshToken.0=opaque-c; other.0=x";
    let r = proxy
        .post("/api/auth/logout", &format!("theme=dark; {chunks}"), b"")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (set, cleared) = set_and_cleared(&r);
    assert!(set.is_empty(), "{set:?}");
    let mut want: Vec<String> = CLEARED.iter().map(|s| s.to_string()).collect();
    want.extend(["refreshToken.0", "etlsUser.0", "etlsUser.1"].map(String::from));
    assert_eq!(cleared, want);
    // A refused session (no tokens at all) gets the logout answer, chunks cleared too.
    let r = proxy.get("/", chunks).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(set_and_cleared(&r).1, want);
    // Without chunks, the logout is the five lines it always was.
    let r = proxy.get("/", "theme=dark; etlsUser=u").await;
    assert_logout(&r);
    assert_eq!(auth.calls() + app.calls(), 0);
}

/// The auth API renewed the session (a rotating one has spent the old refresh token), but the
/// new cookies cannot be carried: a logout that says why in the log, and the session ended, so
/// the old cookies are not replayed into a refusal that would name the wrong cause.
#[tokio::test]
async fn over_the_bounds_is_a_logout_that_says_why_in_the_log() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    auth.set_handler(|req| {
        let rt = req.cookie("refreshToken").unwrap_or_default();
        let mut answer = rotated(&rt);
        answer["userData"] = big_user(12);
        StubReply::json(200, answer)
    });
    let cases = [
        (
            "{cookies: {max_chunks: 2}, downstream: {max_cookie_bytes: 32768}}",
            "`etlsUser` needs 5 cookies of at most 4096 bytes, over cookies.max_chunks (2)",
        ),
        // The default 16 KiB: the browser would be refused with 431 on its next request.
        ("{}", "bytes) over downstream.max_cookie_bytes (16384)"),
    ];
    for (i, (extra, reason)) in cases.into_iter().enumerate() {
        let proxy = Proxy::builder(&app, &auth).extra(extra).start().await;
        let session = expired_session(&format!("rt-over-{i}"));
        let calls = auth.calls();
        assert_logout(&proxy.get("/", &session).await);
        // Replayed: the ended session's logout again, without a second call.
        assert_logout(&proxy.get("/", &session).await);
        assert_eq!(auth.calls(), calls + 1, "{extra}");
        let log = proxy.log();
        let line = log
            .lines()
            .find(|l| l.contains("the auth API renewed it, but"))
            .unwrap_or_else(|| panic!("{extra}: {log}"));
        assert!(
            line.contains("WARN") && line.contains(reason),
            "{extra}: {line}"
        );
        assert!(line.contains("logged out"), "{line}");
        assert!(!log.contains("refused by the auth API"), "{extra}: {log}");
        assert_no_secrets(&log);
    }
    assert_eq!(app.calls(), 0);
}

#[tokio::test]
async fn a_valid_request_without_chunks_is_forwarded_byte_for_byte() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    // Names that look like chunks but are not: another cookie's, a leading zero, three digits.
    let cookie = format!(
        "theme=dark; accessTokenEtls={}; refreshTokenEtls={}; app.0=x; etlsUser.01=y; etlsUser.100=z;  etlsUser=u",
        access_token(600),
        refresh_token(3600)
    );
    let r = proxy.get("/", &cookie).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.set_cookies().is_empty());
    assert_eq!(app_cookie(&app), cookie);
    // With chunks (and a stale one after a gap): joined, the others kept in order.
    let cookie = format!(
        "accessTokenEtls={}; etlsUser.1=BB; theme=dark; etlsUser.0=AA; etlsUser.3=DD",
        access_token(600)
    );
    let r = proxy.get("/", &cookie).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.set_cookies().is_empty());
    assert_eq!(
        app_cookie(&app),
        format!(
            "accessTokenEtls={}; etlsUser=AABB; theme=dark",
            access_token(600)
        )
    );
    assert_eq!(auth.calls(), 0);
}

#[test]
fn check_reports_max_chunks_by_its_path() {
    for (yaml, code, want) in [
        (
            "cookies: {max_chunks: 0}\n",
            Some(2),
            "cookies.max_chunks: must be between 1 and 64, got 0",
        ),
        (
            "cookies: {max_chunks: 12}\n",
            Some(0),
            "cookies.max_chunks: 12 cookies of up to 4096 bytes (49152) exceed downstream.max_cookie_bytes (16384)",
        ),
    ] {
        let (out, text) = check_config(yaml);
        assert_eq!(out.status.code(), code, "{text}");
        assert!(text.contains(want), "{text}");
        assert!(!text.contains("panicked"), "{text}");
    }
}

#[tokio::test]
async fn an_app_failure_after_a_refresh_still_clears_the_stale_chunks() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let proxy = Proxy::start(&app, &auth).await;
    app.stop().await;
    let mut jar = Jar::from_header(&expired_session("rt-app-down"));
    jar.0.retain(|(n, _)| n != "etlsUser");
    for i in 0..3 {
        jar.set(&format!("etlsUser.{i}"), &format!("old{i}"));
    }
    let r = proxy.get("/", &jar.header()).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["reason"], "app unavailable");
    let (set, cleared) = set_and_cleared(&r);
    assert_eq!(
        set, CLEARED,
        "the five new cookies, the user record plain again"
    );
    assert_eq!(cleared, ["etlsUser.0", "etlsUser.1", "etlsUser.2"]);
}

/// A session whose `refreshToken` came back chunked is ended by a logout carrying those chunks:
/// the session key is read from the joined value, as the refresh read it.
#[tokio::test]
async fn a_logout_with_a_chunked_refresh_token_ends_the_session() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    let long = format!("opaque-{}", "L".repeat(4500));
    let answer = long.clone();
    auth.set_handler(move |_| {
        StubReply::json(
            200,
            json!({"accessToken": "opaque-a", "refreshToken": answer, "userData": {"id": 1}}),
        )
    });
    let proxy = Proxy::start(&app, &auth).await;
    let old = expired_session("rt-chunked-logout");
    let r = proxy.get("/", &old).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut jar = Jar::from_header(&old);
    jar.apply(&r);
    assert!(jar.names().contains(&"refreshToken.1"), "{:?}", jar.names());
    // Within the grace window the old cookies would get the kept result; after the logout
    // with the renewed (chunked) cookies they get the logout response, with no auth API call.
    let r = proxy.post("/api/auth/logout", &jar.header(), b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_logout(&proxy.get("/", &old).await);
    assert_eq!(auth.calls(), 1);
}

/// The browser sends the app's own cookies beside the five: new cookies that fit alone but not
/// beside them would lock the user out with 431 on every later request, and the auth API has
/// already spent the old refresh token: a logout, its reason in the log.
#[tokio::test]
async fn new_cookies_that_fit_only_without_the_apps_cookies_are_a_logout() {
    let (app, auth) = (Stub::app().await, Stub::auth_api().await);
    auth.set_handler(|req| {
        let rt = req.cookie("refreshToken").unwrap_or_default();
        StubReply::json(
            200,
            json!({"accessToken": "opaque-a", "refreshToken": format!("api-refresh-after-{rt}"),
                   "userData": big_user(9)}),
        )
    });
    let proxy = Proxy::start(&app, &auth).await;
    // Alone, the session fits in the default 16 KiB...
    let r = proxy.get("/", &expired_session("rt-alone")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let session_bytes: usize = r
        .set_cookies()
        .iter()
        .filter(|l| !l.contains("Max-Age=0"))
        .map(|l| l.split(';').next().unwrap().len() + 2)
        .sum();
    // ...but not beside an app cookie taking what is left, and a little more.
    let room = (16 * 1024usize).saturating_sub(session_bytes);
    let crowded = format!(
        "{}; app-prefs={}",
        expired_session("rt-crowded"),
        "p".repeat(room + 100)
    );
    assert!(crowded.len() < 16 * 1024, "the request itself passes");
    let r = proxy.get("/", &crowded).await;
    assert_logout(&r);
    let log = proxy.log();
    assert!(
        log.contains("with the request's other cookies")
            && log.contains("over downstream.max_cookie_bytes (16384); logged out"),
        "{log}"
    );
}
