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

impl CookiePolicy {
    /// The name of the cookie a Set-Cookie line deletes where this policy sets it (same Path
    /// and Domain), if that is what the line does. The app logging a user out this way must win
    /// over a refresh that happened on the same request.
    pub fn deleted_by<'l>(&self, line: &'l str) -> Option<&'l str> {
        let c = Cookie::parse(line).ok()?;
        let expired = c.max_age().is_some_and(|m| m <= Duration::ZERO)
            || c.expires_datetime()
                .is_some_and(|t| t <= OffsetDateTime::now_utc());
        let same_path = c.path().is_none_or(|p| p == self.path);
        let domain = |d: Option<&str>| d.map(|d| d.trim_start_matches('.').to_ascii_lowercase());
        let same_domain = domain(c.domain()) == domain(self.domain.as_deref());
        let name = c.name_raw()?;
        (expired && same_path && same_domain).then_some(name)
    }

    /// The merge of a refresh into the app's answer: the names the app's own Set-Cookie lines
    /// delete (see [`CookiePolicy::deleted_by`]). Those win: the refresh's lines for them are
    /// left out and their chunks cleared; ours are appended after the app's, never replacing.
    pub fn deleted_among<'l>(&self, app_lines: impl IntoIterator<Item = &'l str>) -> Vec<String> {
        app_lines
            .into_iter()
            .filter_map(|line| self.deleted_by(line).map(str::to_owned))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a Set-Cookie line holds bytes not allowed in a header")]
pub struct InvalidLine;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_deleting_our_cookies_is_read_from_its_own_lines() {
        let policy = CookiePolicy::default();
        let app = [
            "theme=dark; Path=/",
            "etlsUser=; Path=/; Max-Age=0",
            "accessTokenEtls=gone; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
            "refreshTokenEtls=; Path=/other; Max-Age=0",
            "not a cookie line",
        ];
        assert_eq!(
            policy.deleted_among(app),
            ["etlsUser", "accessTokenEtls"],
            "only expired lines on our Path and Domain delete"
        );
        assert!(policy.deleted_among([]).is_empty());
    }

    fn attrs(line: &str) -> Vec<String> {
        let mut parts: Vec<String> = line.split("; ").map(str::to_owned).collect();
        parts[1..].sort();
        parts
    }

    #[test]
    fn deletions_at_our_path_and_domain_are_recognised() {
        let policy = CookiePolicy::default();
        let cases = [
            ("a=; Path=/; Max-Age=0", Some("a")),
            ("a=; Max-Age=0", Some("a")),
            (
                "a=x; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
                Some("a"),
            ),
            ("a=new; Path=/; Max-Age=60", None),
            ("a=new; Path=/", None),
            ("a=; Path=/api; Max-Age=0", None),
            ("a=; Path=/; Domain=example.com; Max-Age=0", None),
            ("not a cookie", None),
        ];
        for (line, want) in cases {
            assert_eq!(policy.deleted_by(line), want, "{line}");
        }
        let scoped = CookiePolicy {
            domain: Some("example.com".into()),
            ..CookiePolicy::default()
        };
        assert_eq!(
            scoped.deleted_by("a=; Domain=.example.com; Max-Age=0"),
            Some("a")
        );
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
