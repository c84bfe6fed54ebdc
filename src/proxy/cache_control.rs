//! The cache fields of an app answer that carries refreshed session cookies (the directives are
//! read by `session::cache_control`).
//!
//! Such an answer must never sit in a shared cache, whatever the app said: its `Cache-Control`
//! is parsed as directives (RFC 9111 §5.2; a qualified `private="X-Debug"` is not `private`,
//! §5.2.2.7), kept when it already holds unqualified `private` and `no-store`, replaced by
//! `private, no-store` otherwise; the fields aimed at CDNs alone (`CDN-Cache-Control` and the
//! other `*-CDN-Cache-Control` targeted fields of RFC 9213, and `Surrogate-Control`) are dropped,
//! since a CDN obeys them over `Cache-Control`.

use http::header::CACHE_CONTROL;
use http::{HeaderMap, HeaderValue};

use crate::session::cache_control::{PRIVATE, is_cdn_targeted, private_and_unstored};

/// Makes an answer with these `headers` private to the browser (see the module's note).
pub fn keep_private(headers: &mut HeaderMap) {
    let sent = headers.get_all(CACHE_CONTROL);
    if !private_and_unstored(sent.iter().map(|v| v.as_bytes())) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static(PRIVATE));
    }
    let targeted: Vec<http::HeaderName> = headers
        .keys()
        .filter(|name| is_cdn_targeted(name.as_str()))
        .cloned()
        .collect();
    for name in targeted {
        headers.remove(&name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(fields: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in fields {
            h.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        h
    }

    fn cache_control(h: &HeaderMap) -> Vec<&str> {
        h.get_all("cache-control")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn answers_with_session_cookies_become_private_and_unstored() {
        let cases: [(&[&str], &[&str]); 8] = [
            (&[], &[PRIVATE]),
            (&["public, s-maxage=600, private=\"X-Debug\""], &[PRIVATE]),
            (&["private"], &[PRIVATE]),
            (&["no-store"], &[PRIVATE]),
            (&["public, max-age=60"], &[PRIVATE]),
            (&["no-cache=\"private, no-store\""], &[PRIVATE]),
            // Already both, unqualified, in one field or two: the app's field is kept.
            (
                &["no-store, private, max-age=0"],
                &["no-store, private, max-age=0"],
            ),
            (&["Private", "NO-STORE"], &["Private", "NO-STORE"]),
        ];
        for (fields, want) in cases {
            let fields: Vec<(&str, &str)> = fields.iter().map(|v| ("Cache-Control", *v)).collect();
            let mut h = answer(&fields);
            keep_private(&mut h);
            assert_eq!(cache_control(&h), want, "{fields:?}");
        }
    }

    #[test]
    fn cdn_targeted_cache_fields_are_dropped() {
        let mut h = answer(&[
            ("CDN-Cache-Control", "max-age=600"),
            ("Surrogate-Control", "max-age=600"),
            ("Cloudflare-CDN-Cache-Control", "max-age=600"),
            ("Vary", "Accept"),
            ("X-Cache-Control-Note", "kept"),
        ]);
        keep_private(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["cache-control", "vary", "x-cache-control-note"]);
    }
}
