//! The hot path, a request with a valid access token, allocates nothing on the heap: routing,
//! reading the Cookie header, verifying the token and deciding to forward.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use etls_proxy::proxy::RequestCtx;
use etls_proxy::session::cookies::{CookieJar, CookieNames};
use etls_proxy::session::decision::{Purpose, SessionPolicy, Verdict, assess};
use etls_proxy::session::routes::{Route, Routes};
use etls_proxy::session::tokens::{TokenKeys, TokenTimes};
use etls_proxy::testkit::tokens::{ACCESS, REFRESH, keys};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations_in(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn a_valid_request_allocates_nothing() {
    let keys = keys();
    let now = etls_proxy::unix_now();
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"username": "ann", "role": "admin", "exp": now + 600}),
        &EncodingKey::from_secret(ACCESS),
    )
    .unwrap();
    let cookie =
        format!("theme=dark; accessTokenEtls={token}; refreshTokenEtls=x; lang=uk; _ga=GA1.2.3");
    let names = CookieNames::default();
    let send = vec!["refreshToken".to_owned()];
    let routes = Routes::default();
    let policy = SessionPolicy {
        names: &names,
        keys: &keys,
        send_cookies: &send,
    };
    let env = |name: &str| match name {
        "ETLS_ACCESS" => Some(std::ffi::OsString::from(
            "hot-path-access-secret-0123456789",
        )),
        "ETLS_REFRESH" => Some(std::ffi::OsString::from(
            "hot-path-refresh-secret-012345678",
        )),
        _ => None,
    };
    let outside = etls_proxy::config::Outside {
        env: &env,
        resolve: &etls_proxy::config::system_resolve,
    };
    let runtime = std::sync::Arc::new(
        etls_proxy::config::load_str("listen: ['127.0.0.1:8080']", "hot.yaml", outside)
            .unwrap_or_else(|e| panic!("{e}"))
            .runtime,
    );
    let decide = || {
        let ctx = RequestCtx::new(std::sync::Arc::clone(&runtime));
        assert_eq!(routes.classify(b"/dashboard/settings"), Route::Protected);
        let jar = CookieJar::from_headers([cookie.as_bytes()]);
        // The scan for chunk cookies (`chunks`) every request pays.
        assert!(!etls_proxy::session::chunks::any_chunk(
            &jar,
            &runtime.names
        ));
        let verdict = assess(&jar, &policy, now, Purpose::Request);
        assert_eq!(verdict, Verdict::Forward { keep_access: None });
        drop(ctx);
    };
    decide(); // warm-up: lazily initialised statics, if any
    assert_eq!(allocations_in(decide), 0);

    // Secret rotation: a token with a `kid` (as the proxy mints them) checked against the key it
    // names, and one without (the old routes') tried against each secret, allocate nothing.
    let rotating = TokenKeys::rotating(
        &[b"newer-access-secret-newer-access-01", ACCESS],
        &[REFRESH],
        TokenTimes::default(),
    );
    let claims = serde_json::from_value(serde_json::json!({"username": "ann"})).unwrap();
    let minted = rotating.mint_access(&claims, now).unwrap();
    let policy = SessionPolicy {
        names: &names,
        keys: &rotating,
        send_cookies: &send,
    };
    for token in [&minted, &token] {
        let cookie = format!("theme=dark; accessTokenEtls={token}; lang=uk");
        let decide = || {
            let jar = CookieJar::from_headers([cookie.as_bytes()]);
            let verdict = assess(&jar, &policy, now, Purpose::Request);
            assert_eq!(verdict, Verdict::Forward { keep_access: None });
        };
        decide();
        assert_eq!(allocations_in(decide), 0, "{token}");
    }
    // Typed tokens (as the proxy mints them) and the refresh token's `sid`, read with its time
    // claims and checked against the auth API cookies, allocate nothing either.
    let refresh = rotating
        .mint_refresh(&claims, "refreshToken=rt", now)
        .unwrap();
    assert!(minted.starts_with("eyJ") && refresh.starts_with("eyJ"));
    let check = || {
        let etls_proxy::session::tokens::RefreshState::Valid(binding) =
            rotating.check_refresh(refresh.as_bytes(), now)
        else {
            panic!("the minted refresh token verifies");
        };
        assert!(rotating.bound_to(binding, "refreshToken=rt"));
    };
    check();
    assert_eq!(allocations_in(check), 0, "refresh token with sid");
    // Joining chunks is off the hot path: it allocates.
    let chunked = format!("{cookie}; etlsUser.0=a; etlsUser.1=b");
    let jar = CookieJar::from_headers([chunked.as_bytes()]);
    assert!(etls_proxy::session::chunks::any_chunk(&jar, &names));
    assert!(allocations_in(|| drop(etls_proxy::session::chunks::normalise(&jar, &names, 8))) > 0);
    // The counter does count: a refresh-path rewrite allocates.
    assert!(
        allocations_in(|| drop(etls_proxy::session::cookies::rewrite(
            &CookieJar::from_headers([cookie.as_bytes()]),
            &[("a", "b")]
        ))) > 0
    );
}

/// The checks every request passes before the decision (Host, origin, header names) allocate
/// nothing when the request is an ordinary one.
#[test]
fn the_request_guards_allocate_nothing() {
    use etls_proxy::proxy::guard;
    let mut req = pingora::http::RequestHeader::build("GET", b"/dashboard?tab=2", None).unwrap();
    for (name, value) in [
        ("host", "app.example.com:8443"),
        ("accept", "text/html"),
        ("sec-fetch-site", "same-origin"),
        ("origin", "https://app.example.com:8443"),
        ("x-requested-with", "fetch"),
        ("cookie", "theme=dark; accessTokenEtls=x"),
    ] {
        req.append_header(name, value).unwrap();
    }
    let check = || {
        let host = guard::check_host(&req).unwrap();
        assert!(guard::same_origin_request(&req, host));
        assert!(matches!(
            etls_proxy::ops::redact::escape_controls("GET \"/dashboard\" 200 passed 1.2ms"),
            std::borrow::Cow::Borrowed(_)
        ));
    };
    check();
    assert_eq!(allocations_in(check), 0);
    assert_eq!(req.headers.len(), 6);
}

/// The app's copy of a browser-like request is rebuilt with a bounded number of allocations:
/// five, where the same four headers through Pingora's `insert_header` took fourteen (each name
/// parsed again and copied into a second map, both maps grown).
#[test]
fn the_app_request_is_rebuilt_with_few_allocations() {
    use etls_proxy::proxy::app_request::{AppEdits, rebuild};
    use etls_proxy::proxy::forwarded::{Caller, TrustedProxies};
    let mut req = pingora::http::RequestHeader::build("GET", b"/dashboard?tab=2", None).unwrap();
    for (name, value) in [
        ("Host", "app.example.com"),
        ("User-Agent", "Mozilla/5.0"),
        ("Accept", "text/html"),
        ("Accept-Language", "uk,en;q=0.8"),
        ("Sec-Fetch-Site", "same-origin"),
        ("Sec-Fetch-Mode", "navigate"),
        ("Cookie", "theme=dark; accessTokenEtls=x"),
    ] {
        req.append_header(name, value).unwrap();
    }
    let caller = Caller::new(
        Some("203.0.113.9".parse().unwrap()),
        true,
        None,
        &TrustedProxies::default(),
    );
    let edits = AppEdits {
        caller: Some(&caller),
        ..AppEdits::default()
    };
    let mut copy = req.clone();
    let allocations = allocations_in(|| rebuild(&mut copy, &edits).unwrap());
    assert!(allocations <= 5, "{allocations} allocations");
    assert_eq!(copy.headers.len(), 7 + 4);
    assert_eq!(copy.headers["x-forwarded-for"], "203.0.113.9");
    assert_eq!(copy.headers["x-forwarded-proto"], "https");
    assert_eq!(copy.headers["x-forwarded-host"], "app.example.com");
}
