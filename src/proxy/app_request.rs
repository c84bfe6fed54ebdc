//! The app's copy of the request, rebuilt in one pass.
//!
//! Pingora hands `upstream_request_filter` a clone of the browser's request whose header maps
//! are full. Each `insert_header` on it parses the name again (an allocation for every name
//! outside the standard set), writes it into a second map that keeps the client's spelling,
//! and grows both maps. Rebuilding the header once, into one map sized for everything it will
//! hold, with the proxy's names as constants, costs less than the four or five inserts
//! (`bench/RESULTS.md`). Names reach the app in lower case (titled for the standard ones), as
//! over HTTP/2; HTTP says they are case-insensitive, and Node reads them lower-cased anyway.

use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::RequestHeader;

use crate::proxy::forwarded::{Caller, Forwarding};
use crate::session::identity::IdentityHeaders;

/// What the proxy changes in the app's copy of the request.
#[derive(Default)]
pub struct AppEdits<'a> {
    /// The one Cookie header the app gets, when it differs from what the browser sent.
    pub cookie: Option<&'a HeaderValue>,
    /// Names whose client-sent values never reach the app.
    pub identity_names: Option<&'a IdentityHeaders>,
    /// The identity headers of the verified (or freshly minted) access token.
    pub identity: &'a [(HeaderName, HeaderValue)],
    pub caller: Option<&'a Caller>,
}

/// Rewrites `req` as the app gets it: every header of the client's except the ones replaced
/// here, identity names, and every name holding `_` (`X_Etls_User` beside `X-Etls-User`: CGI,
/// WSGI, Rack and PHP read both as `HTTP_X_ETLS_USER`; nginx drops them by default,
/// `underscores_in_headers off`); then the Cookie, the identity headers and the forwarding ones.
pub fn rebuild(req: &mut RequestHeader, edits: &AppEdits<'_>) -> pingora::Result<()> {
    let forwarding = edits.caller.map(|c| c.forwarding(req));
    let replaced = |name: &HeaderName| {
        name.as_str().contains('_')
            || (edits.cookie.is_some() && name == http::header::COOKIE)
            || edits
                .identity_names
                .is_some_and(|identity| identity.names().any(|n| n == name))
            || forwarding.as_ref().is_some_and(|f| f.replaces(name))
    };
    let added = usize::from(edits.cookie.is_some()) + edits.identity.len() + 4;
    let mut headers = HeaderMap::with_capacity(req.headers.len() + added);
    for (name, value) in &req.headers {
        if !replaced(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Some(cookie) = edits.cookie {
        headers.insert(http::header::COOKIE, cookie.clone());
    }
    for (name, value) in edits.identity {
        headers.insert(name.clone(), value.clone());
    }
    for (name, value) in forwarding.iter().flat_map(Forwarding::values) {
        headers.insert(name, value.clone());
    }
    *req = with_headers(req, headers)?;
    Ok(())
}

/// `req` with `headers` instead of its own (and no case map); everything else as it was.
fn with_headers(req: &RequestHeader, headers: HeaderMap) -> pingora::Result<RequestHeader> {
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = req.method.clone();
    parts.uri = req.uri.clone();
    parts.version = req.version;
    parts.headers = headers;
    parts.extensions = req.extensions.clone();
    let mut app = RequestHeader::from(parts);
    // A target the URI does not reproduce (absolute-form, not UTF-8) is kept as it came.
    let from_uri = req.uri.path_and_query().map(|p| p.as_str().as_bytes());
    if from_uri != Some(req.raw_path()) {
        app.set_raw_path(req.raw_path())?;
    }
    if let Some(end_stream) = req.send_end_stream() {
        app.set_send_end_stream(end_stream);
    }
    Ok(app)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &[u8], headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", path, None).unwrap();
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    fn values<'r>(req: &'r RequestHeader, name: &str) -> Vec<&'r str> {
        req.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn keeps_the_clients_headers_in_order_and_replaces_what_the_proxy_owns() {
        let identity = IdentityHeaders {
            map: vec![("username".into(), HeaderName::from_static("x-etls-user"))],
        };
        let mut req = request(
            b"/a?b=1",
            &[
                ("Host", "app.example"),
                ("Accept", "*/*"),
                ("X-Etls-User", "admin"),
                ("X_Etls_User", "admin"),
                ("Cookie", "a=1"),
                ("Cookie", "b=2"),
                ("X-Custom", "one"),
                ("x-custom", "two"),
            ],
        );
        let cookie = HeaderValue::from_static("a=1; b=2");
        let user = [(
            HeaderName::from_static("x-etls-user"),
            HeaderValue::from_static("ann"),
        )];
        rebuild(
            &mut req,
            &AppEdits {
                cookie: Some(&cookie),
                identity_names: Some(&identity),
                identity: &user,
                caller: None,
            },
        )
        .unwrap();
        let names: Vec<&str> = req.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(
            names,
            ["host", "accept", "x-custom", "cookie", "x-etls-user"]
        );
        assert_eq!(values(&req, "x-custom"), ["one", "two"]);
        assert_eq!(values(&req, "cookie"), ["a=1; b=2"]);
        assert_eq!(values(&req, "x-etls-user"), ["ann"]);
        assert_eq!(req.uri, "/a?b=1");
        assert_eq!(req.method, http::Method::GET);
        assert!(!req.has_case());
        // On the wire: every header once, in this order, the path as sent.
        let mut wire = Vec::new();
        req.header_to_h1_wire(&mut wire);
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "Host: app.example\r\naccept: */*\r\nx-custom: one\r\nx-custom: two\r\n\
             cookie: a=1; b=2\r\nx-etls-user: ann\r\n"
        );
    }

    #[test]
    fn without_edits_only_underscore_names_go() {
        let mut req = request(b"/", &[("Cookie", "a=1"), ("my_header", "1")]);
        rebuild(&mut req, &AppEdits::default()).unwrap();
        assert_eq!(values(&req, "cookie"), ["a=1"]);
        assert!(req.headers.get("my_header").is_none());
    }

    #[test]
    fn a_target_the_uri_does_not_reproduce_is_kept() {
        for target in [
            &b"http://app.example/x?y"[..],
            b"/caf\xc3\xa9",
            b"/a%20b",
            b"*",
        ] {
            let mut req = request(target, &[("Host", "app.example")]);
            let before = req.raw_path().to_vec();
            rebuild(&mut req, &AppEdits::default()).unwrap();
            assert_eq!(
                req.raw_path(),
                before,
                "{:?}",
                String::from_utf8_lossy(target)
            );
        }
    }
}
