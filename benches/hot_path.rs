//! Micro-benchmarks of the pure pieces on the request path, in ns per operation.
//! `make bench-micro` (or `cargo bench --bench hot_path`).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use etls_proxy::refresh::auth_api::{ApiTokens, UserData};
use etls_proxy::refresh::renew::{Minting, mint_session};
use etls_proxy::session::cookies::{CookieJar, CookieNames, rewrite};
use etls_proxy::session::decision::{Purpose, SessionPolicy, assess};
use etls_proxy::session::routes::Routes;
use etls_proxy::session::set_cookie::CookiePolicy;
use etls_proxy::session::tokens::{Claims, TokenKeys};
use etls_proxy::testkit::tokens::{ACCESS, keys};

fn fixtures() -> (TokenKeys, String, u64) {
    let keys = keys();
    let now = etls_proxy::unix_now();
    let claims: Claims = serde_json::from_value(serde_json::json!({"username": "ann"})).unwrap();
    let token = keys.mint_access(&claims, now).unwrap();
    (keys, token, now)
}

fn browser_cookie(token: &str) -> String {
    format!(
        "_ga=GA1.2.1234567890.1700000000; theme=dark; accessTokenEtls={token}; refreshTokenEtls={token}; accessToken=api-access-token-value; refreshToken=api-refresh-token-value; etlsUser={token}; lang=uk"
    )
}

fn benches(c: &mut Criterion) {
    let (keys, token, now) = fixtures();
    let cookie = browser_cookie(&token);
    let names = CookieNames::default();
    let send = vec!["refreshToken".to_owned()];
    let policy = SessionPolicy {
        names: &names,
        keys: &keys,
        send_cookies: &send,
    };
    let routes = Routes::default();

    c.bench_function("cookie header: parse and find accessTokenEtls", |b| {
        b.iter(|| {
            CookieJar::from_headers([black_box(cookie.as_bytes())])
                .get("accessTokenEtls")
                .map(<[u8]>::len)
        })
    });
    c.bench_function("verify a valid access token", |b| {
        b.iter(|| keys.check_access(black_box(token.as_bytes()), now))
    });
    // The same claims under the header the proxy minted before tokens were typed (`typ: JWT`):
    // the verifier's own cost apart from the longer header (`etls-access+jwt` makes the signed
    // message 16 bytes longer, which can cost one more SHA-256 block).
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(etls_proxy::session::tokens::key_id(ACCESS));
    let untyped = jsonwebtoken::encode(
        &header,
        &serde_json::json!({"username": "ann", "exp": now + 900}),
        &jsonwebtoken::EncodingKey::from_secret(ACCESS),
    )
    .unwrap();
    c.bench_function("verify a valid access token, typ JWT", |b| {
        b.iter(|| keys.check_access(black_box(untyped.as_bytes()), now))
    });
    // The reference the hand-written verifier replaced (same checks, allocating).
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let key = jsonwebtoken::DecodingKey::from_secret(ACCESS);
    c.bench_function(
        "verify a valid access token with jsonwebtoken::decode (reference)",
        |b| {
            b.iter(|| {
                jsonwebtoken::decode::<serde_json::Value>(black_box(&token), &key, &validation)
                    .is_ok()
            })
        },
    );
    c.bench_function("whole decision for a valid request", |b| {
        b.iter(|| {
            let route = routes.classify(black_box(b"/dashboard/settings"));
            let jar = CookieJar::from_headers([black_box(cookie.as_bytes())]);
            (
                route,
                matches!(
                    assess(&jar, &policy, now, Purpose::Request),
                    etls_proxy::session::decision::Verdict::Forward { .. }
                ),
            )
        })
    });
    c.bench_function("scan a valid request's cookies for chunks (none)", |b| {
        b.iter(|| {
            let jar = CookieJar::from_headers([black_box(cookie.as_bytes())]);
            etls_proxy::session::chunks::any_chunk(&jar, &names)
        })
    });
    let updates: Vec<(String, String)> = names
        .all()
        .iter()
        .map(|n| (n.to_string(), token.clone()))
        .collect();
    c.bench_function("rewrite the Cookie header with five new values", |b| {
        b.iter(|| {
            rewrite(
                &CookieJar::from_headers([black_box(cookie.as_bytes())]),
                &updates,
            )
        })
    });
    let cookie_policy = CookiePolicy::default();
    let send_cookies = vec!["refreshToken".to_string()];
    let minting = Minting {
        keys: &keys,
        names: &names,
        policy: &cookie_policy,
        send_cookies: &send_cookies,
        max_chunks: etls_proxy::session::chunks::DEFAULT_MAX_CHUNKS,
        max_cookie_bytes: 16 * 1024,
        other_cookie_bytes: 0,
    };
    let claims: Claims = serde_json::from_value(serde_json::json!({"username": "ann"})).unwrap();
    let record: Claims =
        serde_json::from_value(serde_json::json!({"id": 1, "role": "admin"})).unwrap();
    c.bench_function(
        "mint the token pair, user token and five Set-Cookie lines",
        |b| {
            b.iter(|| {
                let api = ApiTokens {
                    access_token: "api-access".into(),
                    refresh_token: "api-refresh".into(),
                    user: Some(UserData::Record(record.clone())),
                };
                mint_session(&minting, black_box(&claims), api, "refreshToken=old", now).unwrap()
            })
        },
    );
}

criterion_group!(hot_path, benches);
criterion_main!(hot_path);
