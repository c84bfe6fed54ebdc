//! `cookies`: names, attributes and `max_chunks`.

use std::collections::HashSet;

use cookie::SameSite;

use super::Checker;
use crate::config::file::CookiesFile;
use crate::session::chunks::{DEFAULT_MAX_CHUNKS, MAX_CHUNKS, MAX_LINE_BYTES};
use crate::session::cookies::{CookieNames, is_cookie_name};
use crate::session::set_cookie::CookiePolicy;

/// The `cookies` section as checked: the names and the attributes of the lines we write.
pub(super) struct Cookies {
    pub names: CookieNames,
    pub policy: CookiePolicy,
}

pub(super) fn check_cookies(c: &mut Checker, k: &CookiesFile, any_tls: bool) -> Option<Cookies> {
    let mut c = c.section();
    let secure = k.secure.unwrap_or(any_tls);
    let n = &k.names;
    let names = CookieNames {
        access_etls: n.access_etls.clone(),
        refresh_etls: n.refresh_etls.clone(),
        access_api: n.access_api.clone(),
        refresh_api: n.refresh_api.clone(),
        user: n.user.clone(),
    };
    let keys = [
        "access_etls",
        "refresh_etls",
        "access_api",
        "refresh_api",
        "user",
    ];
    let mut seen = HashSet::new();
    for (key, name) in keys.iter().zip(names.all()) {
        if !is_cookie_name(name) {
            c.problem(
                format!("cookies.names.{key}"),
                format!("`{name}` is not a valid cookie name"),
            );
        } else if !seen.insert(name) {
            c.problem(
                format!("cookies.names.{key}"),
                format!("`{name}` is used for two cookies"),
            );
        }
    }
    let same_site = match k.same_site.to_ascii_lowercase().as_str() {
        "strict" => Some(SameSite::Strict),
        "lax" => Some(SameSite::Lax),
        "none" => Some(SameSite::None),
        _ => {
            c.problem(
                "cookies.same_site",
                format!("`{}` must be Strict, Lax or None", k.same_site),
            );
            None
        }
    };
    if same_site == Some(SameSite::None) && !secure {
        c.problem(
            "cookies.same_site",
            "None needs cookies.secure: true (browsers drop it otherwise)",
        );
    }
    // RFC 6265bis §4.1.3: browsers drop a `__Secure-` cookie without `Secure`, and a `__Host-`
    // one unless it is also host-only at `Path=/`; the jar would end half-renewed.
    for (key, name) in keys.iter().zip(names.all()) {
        let host = name
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("__Host-"));
        let secure_prefix = name
            .get(..9)
            .is_some_and(|p| p.eq_ignore_ascii_case("__Secure-"));
        if (host || secure_prefix) && !secure {
            c.problem(
                format!("cookies.names.{key}"),
                format!("`{name}` needs cookies.secure: true (browsers drop it otherwise)"),
            );
        }
        if host && (k.domain.is_some() || k.path != "/") {
            c.problem(
                format!("cookies.names.{key}"),
                format!("`{name}` needs cookies.path: / and no cookies.domain (browsers drop it otherwise)"),
            );
        }
    }
    if !k.path.starts_with('/') || !is_attribute_value(&k.path) {
        c.problem(
            "cookies.path",
            format!(
                "`{}` must start with / and hold no ; or control characters",
                k.path
            ),
        );
    }
    if let Some(domain) = &k.domain {
        let valid = !domain.is_empty()
            && domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if !valid {
            c.problem("cookies.domain", format!("`{domain}` is not a domain name"));
        }
    }
    let policy = CookiePolicy {
        max_age_secs: k.max_age_secs,
        path: k.path.clone(),
        domain: k.domain.clone(),
        secure,
        same_site: same_site?,
    };
    c.done(Cookies { names, policy })
}

/// `cookies.max_chunks`: 1 (no value is ever split) to 64. Chunks of up to 4096 bytes can add
/// up to more than `downstream.max_cookie_bytes`; each refresh checks the total (a logout with a
/// warning naming it rather than a browser locked out by 431), and a bound set that high gets a
/// warning.
pub(super) fn check_max_chunks(
    c: &mut Checker,
    max_chunks: Option<usize>,
    max_cookie_bytes: usize,
) -> usize {
    let Some(max) = max_chunks else {
        return DEFAULT_MAX_CHUNKS;
    };
    if !(1..=MAX_CHUNKS).contains(&max) {
        c.problem(
            "cookies.max_chunks",
            format!("must be between 1 and {MAX_CHUNKS}, got {max}"),
        );
    } else if max * MAX_LINE_BYTES > max_cookie_bytes {
        c.warnings.push(format!(
            "cookies.max_chunks: {max} cookies of up to {MAX_LINE_BYTES} bytes ({}) exceed downstream.max_cookie_bytes ({max_cookie_bytes}); a refresh whose cookies would take more ends the session (a logout, with a warning naming the size)",
            max * MAX_LINE_BYTES
        ));
    }
    max
}

fn is_attribute_value(v: &str) -> bool {
    v.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b';')
}

#[cfg(test)]
mod tests {
    use crate::config::build;
    use crate::config::file::parse;
    use crate::testkit::SECRETS;
    use crate::testkit::config::{env_with, outside, problems};

    #[test]
    fn max_chunks_is_checked_with_its_path() {
        let env = env_with(SECRETS);
        let load = |yaml: &str| build(parse(yaml).unwrap(), outside(&env));
        let loaded = load("").unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(loaded.runtime.max_chunks, 8);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        for (yaml, want) in [
            (
                "cookies: {max_chunks: 0}",
                "cookies.max_chunks: must be between 1 and 64, got 0",
            ),
            (
                "cookies: {max_chunks: 65}",
                "cookies.max_chunks: must be between 1 and 64, got 65",
            ),
        ] {
            assert_eq!(problems(yaml, SECRETS), [want], "{yaml}");
        }
        let loaded = load("cookies: {max_chunks: 3}").unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(loaded.runtime.max_chunks, 3);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let loaded = load("cookies: {max_chunks: 8}\ndownstream: {max_cookie_bytes: 20000}")
            .unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(loaded.runtime.max_chunks, 8);
        assert_eq!(
            loaded.warnings,
            [
                "cookies.max_chunks: 8 cookies of up to 4096 bytes (32768) exceed downstream.max_cookie_bytes (20000); a refresh whose cookies would take more ends the session (a logout, with a warning naming the size)"
            ]
        );
    }

    #[test]
    fn cookie_name_prefixes_get_the_attributes_browsers_demand() {
        let refused = |yaml: &str| problems(yaml, SECRETS);
        let got = refused("cookies: {names: {access_etls: __Host-at}}");
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with("cookies.names.access_etls: `__Host-at` needs cookies.secure"));
        let got = refused("cookies: {secure: true, domain: example.com, names: {user: __Host-u}}");
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains("no cookies.domain"), "{got:?}");
        let got = refused("cookies: {names: {refresh_api: __secure-rt}}");
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(refused("cookies: {secure: true, names: {access_etls: __Host-at, refresh_etls: __Secure-rt}}").is_empty());
    }

    #[test]
    fn same_site_none_needs_secure() {
        let got = problems("cookies: {same_site: None}", SECRETS);
        assert!(
            got.iter().any(|p| p.starts_with("cookies.same_site")),
            "{got:?}"
        );
        assert!(problems("cookies: {same_site: none, secure: true}", SECRETS).is_empty());
    }
}
