//! The response side of cookies: one `Set-Cookie` line per cookie, with the attributes ops
//! configured. Seed 000's bug was joining the lines with `, ` into one header; lines built here
//! are always appended one header each.

use cookie::time::{Duration, OffsetDateTime};
use cookie::{Cookie, SameSite};
use http::HeaderValue;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookiePolicy {
    pub max_age_secs: u64,
    pub path: String,
    pub domain: Option<String>,
    pub secure: bool,
    pub same_site: SameSite,
}

impl Default for CookiePolicy {
    fn default() -> Self {
        CookiePolicy {
            max_age_secs: 43_200,
            path: "/".into(),
            domain: None,
            secure: false,
            same_site: SameSite::Lax,
        }
    }
}

impl CookiePolicy {
    /// `name=value; HttpOnly; Path=..; Max-Age=..; SameSite=..` (+ `Secure`, `Domain`).
    pub fn set_line(&self, name: &str, value: &str) -> String {
        use std::fmt::Write;
        // Sized once: `to_string` grew the line piece by piece, a token of ~200 bytes and more.
        let attributes = 96 + self.path.len() + self.domain.as_ref().map_or(0, String::len);
        let mut line = String::with_capacity(name.len() + value.len() + attributes);
        write!(line, "{}", self.cookie(name, value, self.max_age_secs))
            .expect("writing to a String cannot fail");
        line
    }

    /// Clears a cookie with the same Path/Domain it was set with, or the browser keeps it.
    pub fn clear_line(&self, name: &str) -> String {
        let mut c = self.cookie(name, "", 0);
        c.set_expires(OffsetDateTime::UNIX_EPOCH);
        c.to_string()
    }

    /// With a `Domain`, the line clearing the host-only cookie of that name (no `Domain`): the
    /// login sets the seeds' cookies host-only, and a browser holding both sends both, the older
    /// first; once cleared, only the proxy's remain.
    pub fn host_only_clear_line(&self, name: &str) -> Option<String> {
        self.domain.as_ref()?;
        let host_only = CookiePolicy {
            domain: None,
            ..self.clone()
        };
        Some(host_only.clear_line(name))
    }

    fn cookie<'c>(&'c self, name: &'c str, value: &'c str, max_age: u64) -> Cookie<'c> {
        let max_age = Duration::seconds(i64::try_from(max_age).unwrap_or(i64::MAX));
        let mut c = Cookie::build((name, value))
            .http_only(true)
            .path(self.path.as_str())
            .max_age(max_age)
            .same_site(self.same_site)
            .secure(self.secure)
            .build();
        if let Some(domain) = &self.domain {
            c.set_domain(domain.as_str());
        }
        c
    }
}

/// A Set-Cookie line as a header value; lines are built from validated parts only, so a value
/// that is not a valid header is a bug upstream of here and is reported as such.
pub fn header_value(line: String) -> Result<HeaderValue, InvalidLine> {
    HeaderValue::try_from(line).map_err(|_| InvalidLine)
}

/// One of the app's Set-Cookie lines for a cookie the proxy sets (same name, Path and Domain as
/// the browser reads them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppLine {
    pub name: String,
    /// The line deletes the cookie (the app logging the user out) rather than setting it.
    pub deletes: bool,
}

impl CookiePolicy {
    /// What a Set-Cookie line of the app's answer to a request for `request_path` does to a
    /// cookie this policy sets: the browser reads a line without `Path` at the request's default
    /// path (RFC 6265 §5.1.4), and `Max-Age` over `Expires` (§5.3).
    pub fn app_line(&self, line: &str, request_path: &str) -> Option<AppLine> {
        let c = Cookie::parse(line).ok()?;
        let deletes = match c.max_age() {
            Some(max_age) => max_age <= Duration::ZERO,
            None => c
                .expires_datetime()
                .is_some_and(|t| t <= OffsetDateTime::now_utc()),
        };
        let path = c
            .path()
            .filter(|p| p.starts_with('/'))
            .unwrap_or_else(|| default_path(request_path));
        let domain = |d: Option<&str>| d.map(|d| d.trim_start_matches('.').to_ascii_lowercase());
        let same_domain = domain(c.domain()) == domain(self.domain.as_deref());
        let name = c.name_raw()?;
        (path == self.path && same_domain).then(|| AppLine {
            name: name.to_owned(),
            deletes,
        })
    }

    /// The merge of a refresh into the app's answer: the app's own lines for the cookies the
    /// proxy sets. Those win, as the README promises (a logout, or a login as someone else on a
    /// request the proxy refreshed): the refresh's lines for those names are left out and their
    /// chunks cleared.
    pub fn app_lines<'l>(
        &self,
        lines: impl IntoIterator<Item = &'l str>,
        request_path: &str,
    ) -> Vec<AppLine> {
        lines
            .into_iter()
            .filter_map(|line| self.app_line(line, request_path))
            .collect()
    }
}

/// RFC 6265 §5.1.4: the directory of the request's path, `/` when it has none.
fn default_path(request_path: &str) -> &str {
    match request_path.rfind('/') {
        Some(0) | None => "/",
        Some(at) => &request_path[..at],
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a Set-Cookie line holds bytes not allowed in a header")]
pub struct InvalidLine;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apps_lines_for_our_cookies_are_read_as_the_browser_reads_them() {
        let policy = CookiePolicy::default();
        let app = [
            "theme=dark; Path=/",
            "etlsUser=; Path=/; Max-Age=0",
            "accessTokenEtls=gone; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
            "refreshTokenEtls=; Path=/other; Max-Age=0",
            "accessToken=bob; Path=/",
            "not a cookie line",
        ];
        let got: Vec<(String, bool)> = policy
            .app_lines(app, "/page")
            .into_iter()
            .map(|l| (l.name, l.deletes))
            .collect();
        let want = [
            ("theme", false),
            ("etlsUser", true),
            ("accessTokenEtls", true),
            ("accessToken", false),
        ]
        .map(|(n, d)| (n.to_owned(), d));
        assert_eq!(got, want, "only lines on our Path and Domain count");
        assert!(policy.app_lines([], "/").is_empty());
    }

    fn attrs(line: &str) -> Vec<String> {
        let mut parts: Vec<String> = line.split("; ").map(str::to_owned).collect();
        parts[1..].sort();
        parts
    }

    #[test]
    fn lines_at_our_path_and_domain_are_recognised() {
        let policy = CookiePolicy::default();
        // (line, request path, Some(deletes) when it is about our cookie)
        let cases = [
            ("a=; Path=/; Max-Age=0", "/x", Some(true)),
            ("a=; Max-Age=0", "/x", Some(true)),
            ("a=; Max-Age=0", "/", Some(true)),
            // No Path: the browser files it under the request's directory, not ours.
            ("a=; Max-Age=0", "/sc/deep/x", None),
            ("a=; Path=api; Max-Age=0", "/sc/x", None),
            (
                "a=x; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
                "/",
                Some(true),
            ),
            // Max-Age wins over Expires: the browser keeps this one.
            (
                "a=keep; Path=/; Max-Age=100; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
                "/",
                Some(false),
            ),
            ("a=new; Path=/; Max-Age=60", "/", Some(false)),
            ("a=new; Path=/", "/", Some(false)),
            ("a=; Path=/api; Max-Age=0", "/", None),
            ("a=; Path=/; Domain=example.com; Max-Age=0", "/", None),
            ("not a cookie", "/", None),
        ];
        for (line, path, want) in cases {
            let got = policy.app_line(line, path);
            assert_eq!(got.as_ref().map(|l| l.deletes), want, "{line} on {path}");
            assert!(got.is_none_or(|l| l.name == "a"), "{line}");
        }
        let scoped = CookiePolicy {
            domain: Some("example.com".into()),
            ..CookiePolicy::default()
        };
        let line = scoped.app_line("a=; Domain=.example.com; Max-Age=0", "/");
        assert_eq!(line.map(|l| l.deletes), Some(true));
    }

    #[test]
    fn default_line_matches_the_seed() {
        let line = CookiePolicy::default().set_line("accessTokenEtls", "abc");
        assert_eq!(
            attrs(&line),
            attrs("accessTokenEtls=abc; HttpOnly; Path=/; Max-Age=43200; SameSite=Lax")
        );
        assert!(!line.contains(", "), "one cookie per line: {line}");
    }

    #[test]
    fn secure_domain_and_same_site_when_configured() {
        let policy = CookiePolicy {
            max_age_secs: 60,
            path: "/app".into(),
            domain: Some("example.com".into()),
            secure: true,
            same_site: SameSite::Strict,
        };
        let line = policy.set_line("t", "v");
        assert_eq!(
            attrs(&line),
            attrs(
                "t=v; HttpOnly; Path=/app; Max-Age=60; SameSite=Strict; Secure; Domain=example.com"
            )
        );
    }

    #[test]
    fn clear_line_uses_the_same_path_and_domain() {
        let policy = CookiePolicy {
            domain: Some("example.com".into()),
            path: "/app".into(),
            ..CookiePolicy::default()
        };
        let line = policy.clear_line("refreshTokenEtls");
        assert!(line.starts_with("refreshTokenEtls=; "), "{line}");
        for want in ["Max-Age=0", "Path=/app", "Domain=example.com", "HttpOnly"] {
            assert!(
                line.split("; ").any(|a| a == want),
                "{want} missing in {line}"
            );
        }
        assert!(
            line.contains("Expires=Thu, 01 Jan 1970 00:00:00 GMT"),
            "{line}"
        );
        assert!(header_value(line).is_ok());
    }
}
