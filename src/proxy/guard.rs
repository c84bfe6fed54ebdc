//! Checks on what a browser sends before any token is read: the Host (RFC 9110 §7.2, RFC 9112
//! §3.2, as nginx answers), the origin of a POST to the proxy's own endpoints, header names the
//! app must not see, and the request line that may be logged.

use http::Version;
use pingora::http::RequestHeader;

/// Why a request is a 400 before anything else, for the debug log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadHost {
    /// HTTP/1.1 (or HTTP/2 without `:authority`) without `Host`.
    Missing,
    /// More than one `Host` field.
    Duplicate,
    /// Not `uri-host [ ":" port ]`.
    Invalid,
}

/// The request's authority: its one `Host` field, or for HTTP/2 its `:authority`. An HTTP/1.0
/// request may omit it (nginx accepts those, as RFC 9112 only requires Host from HTTP/1.1 on).
pub fn check_host(req: &RequestHeader) -> Result<Option<&[u8]>, BadHost> {
    let mut fields = req.headers.get_all(http::header::HOST).iter();
    let host = match (fields.next(), fields.next()) {
        (Some(_), Some(_)) => return Err(BadHost::Duplicate),
        (Some(value), None) => Some(value.as_bytes()),
        (None, _) => match req.version {
            Version::HTTP_2 | Version::HTTP_3 => req.uri.authority().map(|a| a.as_str().as_bytes()),
            _ => None,
        },
    };
    match host {
        Some(host) if valid_host(host) => Ok(Some(host)),
        Some(_) => Err(BadHost::Invalid),
        None if req.version <= Version::HTTP_10 => Ok(None),
        None => Err(BadHost::Missing),
    }
}

/// Most options one request's `Connection` headers may list (Pingora's bound).
const MAX_CONNECTION_OPTIONS: usize = 9;

/// The longest field name the `http` crate holds: a longer option names nothing Pingora can
/// parse, and it refuses the request.
const MAX_FIELD_NAME_BYTES: usize = 65_535;

/// A `Connection` header Pingora will not build the app's request from (an error, logged as the
/// app's, after the refresh had already run): one naming `Host`, an `X-Forwarded-*` field the
/// proxy sets, or a pseudo-header, an option that is not an HTTP token (RFC 9110 §5.6.2, §7.6.1),
/// or more options than Pingora takes.
pub fn check_connection(req: &RequestHeader) -> Result<(), &'static str> {
    let options = req
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|o| !o.is_empty());
    for (n, option) in options.enumerate() {
        if n >= MAX_CONNECTION_OPTIONS {
            return Err("lists too many options");
        }
        if !option.iter().all(|&b| is_tchar(b)) {
            return Err("lists an option that is not a token");
        }
        if option.len() > MAX_FIELD_NAME_BYTES {
            return Err("lists an option longer than any field name");
        }
        const SET_BY_THE_PROXY: [&[u8]; 4] = [
            b"host",
            b"x-forwarded-for",
            b"x-forwarded-host",
            b"x-forwarded-proto",
        ];
        if SET_BY_THE_PROXY
            .iter()
            .any(|p| option.eq_ignore_ascii_case(p))
        {
            return Err("names a field the proxy sets");
        }
    }
    Ok(())
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 9110 §7.2 `Host = uri-host [ ":" port ]`, with RFC 3986's `uri-host` (`IP-literal`,
/// `IPv4address` or `reg-name`, here not empty) and `port = *DIGIT`.
pub fn valid_host(value: &[u8]) -> bool {
    let (host, port) = split_port(value);
    let host_ok = match host {
        [] => false,
        [b'[', inner @ .., b']'] => {
            !inner.is_empty()
                && inner.iter().all(|&b| {
                    b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'-' | b'_' | b'~')
                })
        }
        reg_name => valid_reg_name(reg_name),
    };
    host_ok && port.is_none_or(|p| p.iter().all(u8::is_ascii_digit))
}

fn valid_reg_name(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'%' => {
                let hex = name.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
                continue;
            }
            b if b.is_ascii_alphanumeric() => {}
            // unreserved and sub-delims
            b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+'
            | b',' | b';' | b'=' => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// `host` and its port, if any: `[::1]:8080` → (`[::1]`, `8080`); `a:` → (`a`, ``).
fn split_port(value: &[u8]) -> (&[u8], Option<&[u8]>) {
    let colon = if value.first() == Some(&b'[') {
        let close = value.iter().position(|&b| b == b']');
        match close {
            Some(c) if value.get(c + 1) == Some(&b':') => Some(c + 1),
            Some(c) if c + 1 == value.len() => None,
            // Anything after `]` but a port: left in the host, which then fails.
            _ => return (value, None),
        }
    } else {
        value.iter().rposition(|&b| b == b':')
    };
    match colon {
        Some(c) => (&value[..c], Some(&value[c + 1..])),
        None => (value, None),
    }
}

/// Whether a POST to the proxy's own endpoints comes from the app's own pages: `Sec-Fetch-Site`
/// `same-origin` or `none` (typed or bookmarked) where the browser sends it; otherwise an
/// `Origin` on the request's own host and port (`null` is cross-site); neither header (curl,
/// server-side callers) passes, as no browser leaves both out of a cross-site POST.
pub fn same_origin(
    sec_fetch_site: Option<&[u8]>,
    origin: Option<&[u8]>,
    host: Option<&[u8]>,
) -> bool {
    if let Some(site) = sec_fetch_site {
        return site.eq_ignore_ascii_case(b"same-origin") || site.eq_ignore_ascii_case(b"none");
    }
    let Some(origin) = origin else {
        return true;
    };
    let Some(host) = host else {
        return false;
    };
    let (scheme, authority) = match origin.iter().position(|&b| b == b':') {
        Some(i) if origin[i + 1..].starts_with(b"//") => (&origin[..i], &origin[i + 3..]),
        _ => return false, // `null` and anything not `scheme://host[:port]`
    };
    let default_port: &[u8] = if scheme.eq_ignore_ascii_case(b"https") {
        b"443"
    } else if scheme.eq_ignore_ascii_case(b"http") {
        b"80"
    } else {
        return false;
    };
    let (origin_host, origin_port) = split_port(authority);
    let (host_name, host_port) = split_port(host);
    // A Host without a port is the origin's default one: behind a TLS-terminating balancer the
    // browser's `https://app` reaches a plain listener with `Host: app`.
    !origin_host.is_empty()
        && origin_host.eq_ignore_ascii_case(host_name)
        && port_or(origin_port, default_port) == port_or(host_port, default_port)
}

fn port_or<'a>(port: Option<&'a [u8]>, default: &'a [u8]) -> &'a [u8] {
    match port {
        Some(p) if !p.is_empty() => p,
        _ => default,
    }
}

/// The same check on a request. A browser sends each of the two headers once at most: a request
/// with two of either is not a browser's on this origin, whatever the first says.
pub fn same_origin_request(req: &RequestHeader, host: Option<&[u8]>) -> bool {
    let header = |name: &str| {
        let mut all = req.headers.get_all(name).iter();
        match (all.next(), all.next()) {
            (first, None) => Ok(first.map(|v| v.as_bytes())),
            (_, Some(_)) => Err(()),
        }
    };
    match (header("sec-fetch-site"), header("origin")) {
        (Ok(site), Ok(origin)) => same_origin(site, origin, host),
        _ => false,
    }
}

/// What Pingora's error lines say about a request: the method, the path without its query
/// (which may hold a password) and the Host with every byte outside printable ASCII escaped.
pub fn request_summary(req: &RequestHeader) -> String {
    let host = req
        .headers
        .get(http::header::HOST)
        .map(|v| v.as_bytes())
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()))
        .unwrap_or(b"-");
    format!(
        "{} {}, Host: {}",
        req.method.as_str(),
        req.uri.path(),
        host.escape_ascii()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Pingora refuses to build the app's request from, refused before any refresh.
    #[test]
    fn connection_options() {
        let ten = "a, b, c, d, e, f, g, h, i, j";
        let (longest, too_long) = ("b".repeat(65_535), "b".repeat(65_536));
        let cases: [(&[&str], bool); 13] = [
            (&[&longest], true),
            (&[&too_long], false),
            (&[], true),
            (&["keep-alive"], true),
            (&["close, Upgrade"], true),
            (&["x-request-id", "cookie"], true),
            (&["a, b, c, d, e, f, g, h, i"], true),
            (&["X-Forwarded-For"], false),
            (&["keep-alive", "host"], false),
            (&["upgrade, x-forwarded-proto"], false),
            (&[":authority"], false),
            (&["\"x-forwarded-for\""], false),
            (&[ten], false),
        ];
        for (headers, ok) in cases {
            let mut req = RequestHeader::build("GET", b"/", None).unwrap();
            for value in headers {
                req.append_header("connection", *value).unwrap();
            }
            assert_eq!(check_connection(&req).is_ok(), ok, "{headers:?}");
        }
    }

    #[test]
    fn host_grammar() {
        let cases: [(&[u8], bool); 24] = [
            (b"app.test", true),
            (b"app.test:8080", true),
            (b"APP.Test:", true),
            (b"127.0.0.1:3000", true),
            (b"[::1]", true),
            (b"[::1]:8443", true),
            (b"[::1]:", true),
            (b"xn--bcher-kva.example", true),
            (b"a%20b", true),
            (b"under_score.test", true),
            (b"", false),
            (b":80", false),
            (b"a b", false),
            (b"a\tb", false),
            (b"app.test:80a", false),
            (b"app.test:8080:1", false),
            (b"a%2", false),
            (b"a%zz", false),
            (b"user@app.test", false),
            (b"app.test/path", false),
            (b"[::1", false),
            (b"[::1]x", false),
            ("app\u{2028}.test".as_bytes(), false),
            (b"app\x00.test", false),
        ];
        for (host, want) in cases {
            assert_eq!(
                valid_host(host),
                want,
                "{:?}",
                host.escape_ascii().to_string()
            );
        }
    }

    fn request(version: Version, hosts: &[&[u8]]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.set_version(version);
        for h in hosts {
            req.append_header("host", http::HeaderValue::from_bytes(h).unwrap())
                .unwrap();
        }
        req
    }

    #[test]
    fn host_is_required_from_http_1_1_on_and_must_be_single() {
        use BadHost::*;
        type Case<'a> = (Version, &'a [&'a [u8]], Result<Option<&'a [u8]>, BadHost>);
        let cases: [Case<'_>; 7] = [
            (Version::HTTP_11, &[b"app.test"], Ok(Some(b"app.test"))),
            (Version::HTTP_11, &[], Err(Missing)),
            (Version::HTTP_10, &[], Ok(None)),
            (Version::HTTP_10, &[b"a b"], Err(Invalid)),
            (Version::HTTP_11, &[b"a b"], Err(Invalid)),
            (Version::HTTP_11, &[b"a", b"a"], Err(Duplicate)),
            (Version::HTTP_2, &[], Err(Missing)),
        ];
        for (version, hosts, want) in cases {
            assert_eq!(
                check_host(&request(version, hosts)),
                want,
                "{version:?} {hosts:?}"
            );
        }
        let mut h2 = RequestHeader::build("GET", b"/", None).unwrap();
        h2.set_version(Version::HTTP_2);
        h2.set_uri("https://app.test:8443/x".parse().unwrap());
        assert_eq!(check_host(&h2), Ok(Some(&b"app.test:8443"[..])));
    }

    #[test]
    fn same_origin_cases() {
        type Case<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>, bool);
        let cases: [Case<'_>; 20] = [
            // Fetch metadata decides where present, whatever Origin says.
            (Some("same-origin"), None, Some("app.test"), true),
            (Some("none"), None, Some("app.test"), true),
            (Some("SAME-ORIGIN"), None, Some("app.test"), true),
            (
                Some("same-site"),
                Some("http://app.test"),
                Some("app.test"),
                false,
            ),
            (
                Some("cross-site"),
                Some("http://app.test"),
                Some("app.test"),
                false,
            ),
            (Some(""), None, Some("app.test"), false),
            // Origin against Host.
            (None, Some("http://app.test"), Some("app.test"), true),
            (None, Some("https://app.test"), Some("app.test"), true),
            (None, Some("https://APP.test"), Some("app.test:443"), true),
            (
                None,
                Some("http://app.test:8080"),
                Some("app.test:8080"),
                true,
            ),
            (None, Some("http://[::1]:8080"), Some("[::1]:8080"), true),
            (None, Some("http://app.test:8080"), Some("app.test"), false),
            (None, Some("http://app.test"), Some("app.test:8080"), false),
            (None, Some("https://evil.test"), Some("app.test"), false),
            (
                None,
                Some("https://app.test.evil.test"),
                Some("app.test"),
                false,
            ),
            (None, Some("null"), Some("app.test"), false),
            (None, Some("ftp://app.test"), Some("app.test"), false),
            (None, Some("http://app.test"), None, false),
            // Neither header: curl, server-side callers.
            (None, None, Some("app.test"), true),
            (None, None, None, true),
        ];
        for (site, origin, host, want) in cases {
            fn b(s: Option<&str>) -> Option<&[u8]> {
                s.map(str::as_bytes)
            }
            assert_eq!(
                same_origin(b(site), b(origin), b(host)),
                want,
                "{site:?} {origin:?} {host:?}"
            );
        }
    }

    #[test]
    fn summary_has_no_query_and_no_raw_control_bytes() {
        let mut req = RequestHeader::build("GET", b"/login?password=hunter2", None).unwrap();
        let host = http::HeaderValue::from_bytes("a\u{2028}b\r".as_bytes())
            .unwrap_or_else(|_| http::HeaderValue::from_bytes("a\u{2028}b".as_bytes()).unwrap());
        req.insert_header("host", host).unwrap();
        let line = request_summary(&req);
        assert_eq!(line, r"GET /login, Host: a\xe2\x80\xa8b");
    }
}
