//! Which requests the proxy checks, which it answers itself, and where a refused page
//! navigation is sent.

use std::borrow::Cow;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode, utf8_percent_encode};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes {
    pub public: Vec<String>,
    pub refresh_endpoint: Option<String>,
    pub logout_endpoint: Option<String>,
    pub login_redirect: Option<String>,
}

/// The seeds' routes: Next.js's static files and the favicon public, the refresh and logout
/// endpoints where the seed 001/002 routes were, no login redirect.
impl Default for Routes {
    fn default() -> Self {
        Routes {
            public: vec![
                "/_next/static/".into(),
                "/_next/image".into(),
                "/favicon.ico".into(),
            ],
            refresh_endpoint: Some("/api/auth/refreshtoken".into()),
            logout_endpoint: Some("/api/auth/logout".into()),
            login_redirect: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Public,
    RefreshEndpoint,
    LogoutEndpoint,
    Protected,
}

impl Routes {
    /// The path is percent-decoded (and `\` read as `/`, as Node's URL parser does) before it
    /// is matched. A path that could resolve differently in the app than here (dot segments,
    /// `//`, including encoded ones) is never public: browsers resolve those before sending, so
    /// only a crafted request carries them, and it gets the token check. Otherwise both the raw
    /// and the decoded path must be public.
    pub fn classify(&self, raw_path: &[u8]) -> Route {
        let decoded = decode_path(raw_path);
        let decoded = decoded.as_ref();
        let ambiguous = is_ambiguous(decoded);
        if !ambiguous {
            if self.refresh_endpoint.as_deref().map(str::as_bytes) == Some(decoded) {
                return Route::RefreshEndpoint;
            }
            if self.logout_endpoint.as_deref().map(str::as_bytes) == Some(decoded) {
                return Route::LogoutEndpoint;
            }
        }
        if !ambiguous && self.is_public(raw_path) && self.is_public(decoded) {
            Route::Public
        } else {
            Route::Protected
        }
    }

    fn is_public(&self, path: &[u8]) -> bool {
        self.public
            .iter()
            .any(|p| prefix_matches(p.as_bytes(), path))
            || self.is_login_page(path)
    }

    /// The login redirect's path (without its query) is public without being listed: the
    /// logged-out user must be able to load it. Exactly that path, not what lies under it
    /// (`login_redirect: /` must not make the whole site public).
    fn is_login_page(&self, path: &[u8]) -> bool {
        self.login_redirect
            .as_deref()
            .and_then(|target| target.split(['?', '#']).next())
            .is_some_and(|login| login.as_bytes() == path)
    }

    /// `login_redirect?next=<original path and query>`, or `None` when not configured.
    pub fn login_location(&self, path_and_query: &str) -> Option<String> {
        let target = self.login_redirect.as_deref()?;
        let sep = if target.contains('?') { '&' } else { '?' };
        let next = utf8_percent_encode(path_and_query, NEXT_PARAM);
        Some(format!("{target}{sep}next={next}"))
    }
}

/// `/a/` matches everything under it; `/a` matches `/a` and `/a/...` but not `/ab`.
fn prefix_matches(prefix: &[u8], path: &[u8]) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with(b"/") || rest.is_empty() || rest.starts_with(b"/"),
    }
}

/// Characters kept as they are in the `next` parameter: unreserved ones and `/`.
const NEXT_PARAM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// Percent-decodes and reads `\` as `/`; borrows when there is nothing to decode, the common
/// case.
pub fn decode_path(raw: &[u8]) -> Cow<'_, [u8]> {
    if raw.iter().any(|b| matches!(b, b'%' | b'\\')) {
        Cow::Owned(
            percent_decode(raw)
                .map(|b| if b == b'\\' { b'/' } else { b })
                .collect(),
        )
    } else {
        Cow::Borrowed(raw)
    }
}

/// Dot segments or an empty segment (`//`): the app may resolve such a path to another one.
pub fn is_ambiguous(decoded: &[u8]) -> bool {
    decoded.windows(2).any(|w| w == b"//")
        || decoded
            .split(|b| *b == b'/')
            .any(|seg| seg == b"." || seg == b"..")
}

/// A page load in the browser (as opposed to `fetch`, or a Next.js RSC request), which gets the
/// login redirect instead of a bare 401.
pub fn is_page_navigation(
    sec_fetch_mode: Option<&[u8]>,
    accept: Option<&[u8]>,
    has_rsc_header: bool,
) -> bool {
    let navigate = sec_fetch_mode.is_some_and(|m| m.eq_ignore_ascii_case(b"navigate"));
    let wants_html =
        accept.is_some_and(|a| a.windows(9).any(|w| w.eq_ignore_ascii_case(b"text/html")));
    navigate || (wants_html && !has_rsc_header)
}

/// A redirect target must stay on this site: a path, never a scheme or `//host`.
pub fn is_local_path(target: &str) -> bool {
    target.starts_with('/')
        && !target.starts_with("//")
        && !target.starts_with("/\\")
        && !target
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ' || b == b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes {
        Routes {
            public: vec![
                "/_next/static/".into(),
                "/_next/image".into(),
                "/favicon.ico".into(),
                "/login".into(),
            ],
            refresh_endpoint: Some("/api/auth/refreshtoken".into()),
            logout_endpoint: Some("/api/auth/logout".into()),
            login_redirect: Some("/login".into()),
        }
    }

    #[test]
    fn classify_by_table() {
        let r = routes();
        let cases = [
            ("/_next/static/chunks/app.js", Route::Public),
            ("/_next/image", Route::Public),
            ("/_next/image/x", Route::Public),
            ("/_next/imagex", Route::Protected),
            ("/favicon.ico", Route::Public),
            ("/favicon.icox", Route::Protected),
            ("/login", Route::Public),
            ("/dashboard", Route::Protected),
            ("/", Route::Protected),
            ("/_next/static/../../dashboard", Route::Protected),
            ("/_next/static/%2e%2e/dashboard", Route::Protected),
            ("/_next/static/%2E%2E/dashboard", Route::Protected),
            ("/_next/static/..%2fdashboard", Route::Protected),
            ("/_next/static/..\\dashboard", Route::Protected),
            ("/_next/static/..%5cdashboard", Route::Protected),
            ("/_next/static//../dashboard", Route::Protected),
            ("/_next/static///../../dashboard", Route::Protected),
            ("/_next/static//x.js", Route::Protected),
            ("/_next/static/a/../b.js", Route::Protected),
            ("/_next/static/./x.js", Route::Protected),
            ("/_next/static/a.b/c..d.js", Route::Public),
            ("/dashboard/..%2f_next/static/x", Route::Protected),
            ("/%5fnext/static/x", Route::Protected),
            ("/api/auth/refreshtoken", Route::RefreshEndpoint),
            ("/api/auth/logout", Route::LogoutEndpoint),
            ("/api/auth/logout/", Route::Protected),
            ("/x/../api/auth/logout", Route::Protected),
            ("/api/auth/%6cogout", Route::LogoutEndpoint),
        ];
        for (path, want) in cases {
            assert_eq!(r.classify(path.as_bytes()), want, "{path}");
        }
    }

    #[test]
    fn the_login_page_is_public_without_being_listed() {
        let r = Routes {
            public: vec![],
            login_redirect: Some("/signin?lang=uk".into()),
            ..routes()
        };
        let cases = [
            ("/signin", Route::Public),
            ("/%73ignin", Route::Protected), // raw and decoded must both be public
            ("/signin/x", Route::Protected),
            ("/signinx", Route::Protected),
            ("/x/../signin", Route::Protected),
            ("/login", Route::Protected),
            ("/", Route::Protected),
        ];
        for (path, want) in cases {
            assert_eq!(r.classify(path.as_bytes()), want, "{path}");
        }
        let root = Routes {
            public: vec![],
            login_redirect: Some("/".into()),
            ..routes()
        };
        assert_eq!(root.classify(b"/"), Route::Public);
        assert_eq!(root.classify(b"/dashboard"), Route::Protected);
        let none = Routes {
            public: vec![],
            login_redirect: None,
            ..routes()
        };
        assert_eq!(none.classify(b"/login"), Route::Protected);
    }

    #[test]
    fn endpoints_can_be_disabled() {
        let r = Routes {
            refresh_endpoint: None,
            logout_endpoint: None,
            ..routes()
        };
        assert_eq!(r.classify(b"/api/auth/logout"), Route::Protected);
        assert_eq!(r.classify(b"/api/auth/refreshtoken"), Route::Protected);
    }

    #[test]
    fn decode_and_ambiguity_by_table() {
        let cases = [
            ("/a/b", "/a/b", false),
            ("/a/./b", "/a/./b", true),
            ("/a/../b", "/a/../b", true),
            ("/a/%2e%2E/b", "/a/../b", true),
            ("/a%2fb", "/a/b", false),
            ("/a%2f%2fb", "/a//b", true),
            ("/a\\..\\b", "/a/../b", true),
            ("/a//b", "/a//b", true),
            ("/a/", "/a/", false),
            ("/", "/", false),
            ("/a.b/c", "/a.b/c", false),
            ("/..", "/..", true),
        ];
        for (raw, decoded, ambiguous) in cases {
            let d = decode_path(raw.as_bytes());
            assert_eq!(d.as_ref(), decoded.as_bytes(), "{raw}");
            assert_eq!(is_ambiguous(&d), ambiguous, "{raw}");
        }
        assert!(matches!(decode_path(b"/plain/path.js"), Cow::Borrowed(_)));
    }

    #[test]
    fn login_location_keeps_path_and_query() {
        let r = routes();
        assert_eq!(
            r.login_location("/dash?tab=2&x=a b").unwrap(),
            "/login?next=/dash%3Ftab%3D2%26x%3Da%20b"
        );
        let r2 = Routes {
            login_redirect: Some("/auth?lang=uk".into()),
            ..routes()
        };
        assert_eq!(r2.login_location("/").unwrap(), "/auth?lang=uk&next=/");
        let r3 = Routes {
            login_redirect: None,
            ..routes()
        };
        assert_eq!(r3.login_location("/x"), None);
    }

    #[test]
    fn navigation_detection() {
        let html = Some(b"text/html,application/xhtml+xml".as_slice());
        assert!(is_page_navigation(Some(b"navigate"), None, false));
        assert!(is_page_navigation(Some(b"navigate"), html, true));
        assert!(is_page_navigation(Some(b"cors"), html, false));
        assert!(!is_page_navigation(Some(b"cors"), Some(b"*/*"), false));
        assert!(is_page_navigation(None, html, false));
        assert!(!is_page_navigation(None, html, true));
        assert!(!is_page_navigation(None, Some(b"application/json"), false));
        assert!(!is_page_navigation(None, None, false));
    }

    #[test]
    fn local_paths_only() {
        for ok in ["/login", "/auth?x=1"] {
            assert!(is_local_path(ok), "{ok}");
        }
        for bad in [
            "https://evil",
            "//evil.com",
            "/\\evil.com",
            "login",
            "",
            "/a\nb",
            "/a\\b",
        ] {
            assert!(!is_local_path(bad), "{bad:?}");
        }
    }
}
