//! The directives of a `Cache-Control` value (RFC 9111 §5.2), for the answers that carry session
//! cookies: a qualified `private="X-Debug"` is not `private` (§5.2.2.7). Pure; the proxy applies
//! it to the app's answer (`proxy::cache_control`).

/// What an answer carrying session cookies gets when it is not already private and unstored.
pub const PRIVATE: &str = "private, no-store";

/// Whether these `Cache-Control` values already hold unqualified `private` and `no-store`.
pub fn private_and_unstored<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> bool {
    let (mut private, mut no_store) = (false, false);
    for value in values {
        for (name, argument) in directives(value) {
            private |= argument.is_none() && name.eq_ignore_ascii_case(b"private");
            no_store |= argument.is_none() && name.eq_ignore_ascii_case(b"no-store");
        }
    }
    private && no_store
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

    #[test]
    fn private_and_unstored_needs_both_unqualified() {
        let cases: [(&[&str], bool); 6] = [
            (&["private, no-store"], true),
            (&["no-store", "Private"], true),
            (&["private"], false),
            (&["private=\"X-Debug\", no-store"], false),
            (&["public, s-maxage=600"], false),
            (&[], false),
        ];
        for (values, want) in cases {
            assert_eq!(
                private_and_unstored(values.iter().map(|v| v.as_bytes())),
                want,
                "{values:?}"
            );
        }
    }
}
