//! The cache fields of an app answer that carries refreshed session cookies.
//!
//! Such an answer must never sit in a shared cache, whatever the app said: its `Cache-Control`
//! is parsed as directives (RFC 9111 §5.2; a qualified `private="X-Debug"` is not `private`,
//! §5.2.2.7), kept when it already holds unqualified `private` and `no-store`, replaced by
//! `private, no-store` otherwise; the fields aimed at CDNs alone (`CDN-Cache-Control` and the
//! other `*-CDN-Cache-Control` targeted fields of RFC 9213, and `Surrogate-Control`) are dropped,
//! since a CDN obeys them over `Cache-Control`.

use pingora::http::ResponseHeader;

pub const PRIVATE: &str = "private, no-store";

/// Makes `response` private to the browser (see the module's note).
pub fn keep_private(response: &mut ResponseHeader) -> pingora::Result<()> {
    let (mut private, mut no_store) = (false, false);
    for value in response.headers.get_all("cache-control") {
        for (name, argument) in directives(value.as_bytes()) {
            private |= argument.is_none() && name.eq_ignore_ascii_case(b"private");
            no_store |= argument.is_none() && name.eq_ignore_ascii_case(b"no-store");
        }
    }
    if !(private && no_store) {
        response.insert_header("Cache-Control", PRIVATE)?;
    }
    let targeted: Vec<http::HeaderName> = response
        .headers
        .keys()
        .filter(|name| is_cdn_targeted(name.as_str()))
        .cloned()
        .collect();
    for name in targeted {
        response.remove_header(&name);
    }
    Ok(())
}

/// `CDN-Cache-Control`, `Cloudflare-CDN-Cache-Control`, `Surrogate-Control`... (lower case, as
/// `http` keeps names).
pub fn is_cdn_targeted(name: &str) -> bool {
    name == "surrogate-control"
        || name == "cdn-cache-control"
        || name.ends_with("-cdn-cache-control")
}

/// The directives of one `Cache-Control` field value: `name` or `name=argument` (a token or a
/// quoted string, returned with its quotes), separated by commas outside quoted strings.
/// Empty elements are skipped; a malformed element is returned as is, so it matches nothing.
pub fn directives(value: &[u8]) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
    let mut rest = value;
    std::iter::from_fn(move || {
        loop {
            if rest.is_empty() {
                return None;
            }
            let end = element_end(rest);
            let element = trim(&rest[..end]);
            rest = rest.get(end + 1..).unwrap_or(&[]);
            if element.is_empty() {
                continue;
            }
            return Some(match element.iter().position(|&b| b == b'=') {
                Some(eq) => (trim(&element[..eq]), Some(trim(&element[eq + 1..]))),
                None => (element, None),
            });
        }
    })
}

/// Where the element starting at `text[0]` ends: the first comma outside a quoted string.
fn element_end(text: &[u8]) -> usize {
    let mut quoted = false;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => quoted = !quoted,
            b'\\' if quoted => i += 1,
            b',' if !quoted => return i,
            _ => {}
        }
        i += 1;
    }
    text.len()
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', tail @ ..] = s {
        s = tail;
    }
    while let [head @ .., b' ' | b'\t'] = s {
        s = head;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_split_outside_quoted_strings() {
        type Parsed<'a> = Vec<(&'a str, Option<&'a str>)>;
        let cases: [(&str, Parsed<'_>); 7] = [
            ("no-store", vec![("no-store", None)]),
            (
                "public, s-maxage=600, private=\"X-Debug\"",
                vec![
                    ("public", None),
                    ("s-maxage", Some("600")),
                    ("private", Some("\"X-Debug\"")),
                ],
            ),
            (
                "private=\"a, b\", no-cache",
                vec![("private", Some("\"a, b\"")), ("no-cache", None)],
            ),
            (
                r#"x="a\", private", max-age=0"#,
                vec![("x", Some(r#""a\", private""#)), ("max-age", Some("0"))],
            ),
            (
                " , ,PRIVATE ,\tNo-Store ",
                vec![("PRIVATE", None), ("No-Store", None)],
            ),
            ("", vec![]),
            ("max-age = 5", vec![("max-age", Some("5"))]),
        ];
        for (value, want) in cases {
            let got: Parsed<'_> = directives(value.as_bytes())
                .map(|(n, a)| {
                    let s = |b: &[u8]| std::str::from_utf8(b).unwrap().to_owned().leak() as &str;
                    (s(n), a.map(s))
                })
                .collect();
            assert_eq!(got, want, "{value:?}");
        }
    }

    fn answer(fields: &[(&str, &str)]) -> ResponseHeader {
        let mut h = ResponseHeader::build(200, None).unwrap();
        for (name, value) in fields {
            h.append_header(name.to_string(), *value).unwrap();
        }
        h
    }

    fn cache_control(h: &ResponseHeader) -> Vec<&str> {
        h.headers
            .get_all("cache-control")
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
            keep_private(&mut h).unwrap();
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
        keep_private(&mut h).unwrap();
        let mut names: Vec<&str> = h.headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["cache-control", "vary", "x-cache-control-note"]);
    }
}
