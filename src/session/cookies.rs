//! The request side of cookies: reading the browser's Cookie header(s) without copying, and
//! writing the one Cookie header the app receives after a refresh.
//!
//! Browsers send one Cookie header over HTTP/1.1 and one "crumb" per cookie over HTTP/2, and
//! Pingora merges neither, so a jar is a view over every Cookie header value in order.

/// The five cookies the proxy manages, by their configured names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieNames {
    pub access_etls: String,
    pub refresh_etls: String,
    pub access_api: String,
    pub refresh_api: String,
    pub user: String,
}

impl CookieNames {
    /// In the order the seeds set them.
    pub fn all(&self) -> [&str; 5] {
        [
            &self.access_etls,
            &self.refresh_etls,
            &self.access_api,
            &self.refresh_api,
            &self.user,
        ]
    }
}

impl Default for CookieNames {
    fn default() -> Self {
        CookieNames {
            access_etls: "accessTokenEtls".into(),
            refresh_etls: "refreshTokenEtls".into(),
            access_api: "accessToken".into(),
            refresh_api: "refreshToken".into(),
            user: "etlsUser".into(),
        }
    }
}

/// One `name=value` pair of a Cookie header, trimmed of optional whitespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crumb<'a> {
    pub name: &'a [u8],
    /// `None` for a crumb without `=`, which is kept verbatim when rewriting.
    pub value: Option<&'a [u8]>,
    /// The crumb as it came, trimmed: what a rewrite copies for cookies it does not touch.
    pub raw: &'a [u8],
}

/// A borrowed view of every Cookie header of one request.
#[derive(Debug, Clone, Default)]
pub struct CookieJar<'a> {
    first: Option<&'a [u8]>,
    /// Only allocated when a request carries more than one Cookie header (HTTP/2 crumbs).
    more: Vec<&'a [u8]>,
}

impl<'a> CookieJar<'a> {
    pub fn from_headers(values: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut values = values.into_iter();
        let first = values.next();
        CookieJar {
            first,
            more: values.collect(),
        }
    }

    /// True when the request carried several Cookie headers, which the app must get as one.
    pub fn is_split(&self) -> bool {
        !self.more.is_empty()
    }

    /// Every Cookie header value, as sent.
    pub fn headers(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.first.into_iter().chain(self.more.iter().copied())
    }

    pub fn crumbs(&self) -> impl Iterator<Item = Crumb<'a>> + '_ {
        self.first
            .into_iter()
            .chain(self.more.iter().copied())
            .flat_map(pieces)
            .filter_map(parse_crumb)
    }

    /// Every value of `name`, in the order the browser sent them.
    pub fn values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a [u8]> + 's {
        self.crumbs()
            .filter(move |c| c.name == name.as_bytes())
            .filter_map(|c| c.value)
    }

    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.values(name).next()
    }
}

/// The `;`-separated pieces of one header, found with `memchr` (the valid path reads the jar
/// two or three times: a byte-at-a-time split was the larger part of the decision's cost).
fn pieces(header: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(header);
    std::iter::from_fn(move || {
        let current = rest?;
        match memchr::memchr(b';', current) {
            Some(at) => {
                rest = Some(&current[at + 1..]);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

fn parse_crumb(piece: &[u8]) -> Option<Crumb<'_>> {
    let raw = trim_ows(piece);
    if raw.is_empty() {
        return None;
    }
    Some(match memchr::memchr(b'=', raw) {
        Some(eq) => Crumb {
            name: trim_ows(&raw[..eq]),
            value: Some(trim_ows(&raw[eq + 1..])),
            raw,
        },
        None => Crumb {
            name: raw,
            value: None,
            raw,
        },
    })
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Builds the single Cookie header for the app: each `(name, value)` of `updates` takes the
/// place of the first crumb of that name (later crumbs of the name are dropped, so the app
/// never sees two values), names not sent by the browser are appended, and every other crumb is
/// kept in order, byte for byte.
pub fn rewrite<N: AsRef<str>, V: AsRef<str>>(jar: &CookieJar<'_>, updates: &[(N, V)]) -> Vec<u8> {
    // One allocation: the header as sent plus every new value (an update replaces at most its
    // own old crumb, so this is never too little).
    let sent: usize = jar.headers().map(|h| h.len() + 2).sum();
    let added: usize = updates
        .iter()
        .map(|(n, v)| n.as_ref().len() + v.as_ref().len() + 3)
        .sum();
    let mut out = Vec::with_capacity(sent + added);
    let mut written = vec![false; updates.len()];
    let push = |out: &mut Vec<u8>, bytes: &[&[u8]]| {
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        for b in bytes {
            out.extend_from_slice(b);
        }
    };
    for crumb in jar.crumbs() {
        match updates
            .iter()
            .position(|(n, _)| n.as_ref().as_bytes() == crumb.name)
        {
            Some(i) if !written[i] => {
                written[i] = true;
                push(
                    &mut out,
                    &[crumb.name, b"=", updates[i].1.as_ref().as_bytes()],
                );
            }
            Some(_) => {}
            None => push(&mut out, &[crumb.raw]),
        }
    }
    for (i, (name, value)) in updates.iter().enumerate() {
        if !written[i] {
            push(
                &mut out,
                &[name.as_ref().as_bytes(), b"=", value.as_ref().as_bytes()],
            );
        }
    }
    out
}

/// RFC 6265 `cookie-octet`: what a value may hold without quoting, so a token from the auth
/// API can never split or inject a cookie (no CR/LF, `;`, `,`, space, `"`, `\`, controls, 8-bit).
pub fn is_cookie_octets(value: &[u8]) -> bool {
    value
        .iter()
        .all(|b| matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E))
}

/// RFC 6265 cookie-name (an RFC 7230 token).
pub fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jar<'a>(headers: &[&'a str]) -> CookieJar<'a> {
        CookieJar::from_headers(headers.iter().map(|h| h.as_bytes()))
    }

    #[test]
    fn reads_values_across_headers_and_odd_spacing() {
        let cases: &[(&[&str], &str, Option<&str>)] = &[
            (&["a=1; b=2"], "b", Some("2")),
            (&["a=1;b=2"], "b", Some("2")),
            (&["  a = 1 ;\tb=2  "], "a", Some("1")),
            (&["a=1", "b=2"], "b", Some("2")),
            (&["a=x=y"], "a", Some("x=y")),
            (&["a="], "a", Some("")),
            (&["flag; a=1"], "flag", None),
            (&[";;; a=1 ;;"], "a", Some("1")),
            (&["=v; a=1"], "a", Some("1")),
            (&["ab=1"], "a", None),
            (&[], "a", None),
            (&["a=first; a=second"], "a", Some("first")),
        ];
        for (headers, name, want) in cases {
            let j = jar(headers);
            assert_eq!(
                j.get(name).map(|v| std::str::from_utf8(v).unwrap()),
                *want,
                "{headers:?} {name}"
            );
        }
    }

    #[test]
    fn pieces_split_as_the_slice_split_does() {
        for header in [
            "",
            ";",
            "a",
            "a;",
            ";a",
            "a;;b",
            "a=1; b=2;c",
            " ; ;",
            "x=a=b;y",
        ] {
            let want: Vec<&[u8]> = header.as_bytes().split(|b| *b == b';').collect();
            assert_eq!(
                pieces(header.as_bytes()).collect::<Vec<_>>(),
                want,
                "{header:?}"
            );
        }
    }

    #[test]
    fn lists_duplicates_in_order() {
        let j = jar(&["t=1; x=0", "t=2"]);
        let all: Vec<&[u8]> = j.values("t").collect();
        assert_eq!(all, vec![b"1".as_slice(), b"2".as_slice()]);
        assert!(j.is_split());
        assert!(!jar(&["t=1"]).is_split());
    }

    #[test]
    fn rewrite_replaces_in_place_keeps_others_and_appends_missing() {
        type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (
                &["theme=dark; accessTokenEtls=old; lang=uk"],
                &[("accessTokenEtls", "new")],
                "theme=dark; accessTokenEtls=new; lang=uk",
            ),
            (
                &["theme=dark"],
                &[("a", "1"), ("b", "2")],
                "theme=dark; a=1; b=2",
            ),
            (&[], &[("a", "1")], "a=1"),
            (&["a=old; x=1; a=older"], &[("a", "new")], "a=new; x=1"),
            (&["x=1", "a=old", "y=2"], &[("a", "new")], "x=1; a=new; y=2"),
            (&["flag;  x = 1 ", "a=0"], &[("a", "n")], "flag; x = 1; a=n"),
            (&["x=1; ; y=2"], &[("z", "1")], "x=1; y=2; z=1"),
        ];
        for (headers, updates, want) in cases {
            let out = rewrite(&jar(headers), updates);
            assert_eq!(std::str::from_utf8(&out).unwrap(), *want, "{headers:?}");
        }
    }

    #[test]
    fn rewritten_header_parses_back_to_the_same_cookies() {
        let original = jar(&["a=1; s=old; b=2", "c=3"]);
        let out = rewrite(&original, &[("s", "new"), ("t", "added")]);
        let back = CookieJar::from_headers([out.as_slice()]);
        let pairs: Vec<(&[u8], Option<&[u8]>)> = back.crumbs().map(|c| (c.name, c.value)).collect();
        let want: Vec<(&[u8], Option<&[u8]>)> = vec![
            (b"a", Some(b"1")),
            (b"s", Some(b"new")),
            (b"b", Some(b"2")),
            (b"c", Some(b"3")),
            (b"t", Some(b"added")),
        ];
        assert_eq!(pairs, want);
    }

    #[test]
    fn cookie_octets_refuse_separators_and_controls() {
        for ok in ["abc", "eyJ.a-b_c", "a/b+c=", "!#$%&'()*+-./:<=>?@[]^_`{|}~"] {
            assert!(is_cookie_octets(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "a b", "a;b", "a,b", "a\"b", "a\\b", "a\rb", "a\nb", "a\x7fb", "\u{e9}",
        ] {
            assert!(!is_cookie_octets(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn cookie_names_are_tokens() {
        assert!(is_cookie_name("accessTokenEtls"));
        assert!(is_cookie_name("__Host-x"));
        for bad in ["", "a b", "a=b", "a;b", "a\"", "a,b"] {
            assert!(!is_cookie_name(bad), "{bad:?}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        const MANAGED: [&str; 5] = [
            "accessTokenEtls",
            "refreshTokenEtls",
            "accessToken",
            "refreshToken",
            "etlsUser",
        ];

        /// Bytes a browser may put in a header value, `;` excluded (it separates crumbs).
        fn text(max: usize) -> impl Strategy<Value = String> {
            prop::collection::vec(
                prop::sample::select(
                    b" \t!\"#$%&'()*+,-./0123456789:<=>?@AZaz[]^_`{|}~"
                        .iter()
                        .map(|b| *b as char)
                        .chain(['\u{e9}', 'x', 'y'])
                        .collect::<Vec<_>>(),
                ),
                0..max,
            )
            .prop_map(|chars| chars.into_iter().collect())
        }

        fn octets() -> impl Strategy<Value = String> {
            prop::collection::vec(
                prop::sample::select(b"abcXYZ019-_.~!#$%&'()*+/:<=>?@[]^`{|}".to_vec()),
                0..24,
            )
            .prop_map(|b| String::from_utf8(b).unwrap())
        }

        fn crumb() -> impl Strategy<Value = String> {
            let name = prop_oneof![
                prop::sample::select(MANAGED.to_vec()).prop_map(str::to_owned),
                text(10),
            ];
            (name, prop::option::of(text(20)), text(2), text(2)).prop_map(|(n, v, pre, post)| {
                match v {
                    Some(v) => format!("{pre}{n}={v}{post}"),
                    None => format!("{pre}{n}{post}"),
                }
            })
        }

        proptest! {
            /// Parsing a rewritten Cookie header gives back exactly the input cookies with the
            /// five values replaced (`fuzzing::check_rewrite` holds the model).
            #[test]
            fn rewrite_keeps_every_cookie_and_replaces_the_five(
                crumbs in prop::collection::vec(crumb(), 0..12),
                splits in prop::collection::vec(any::<bool>(), 12),
                values in prop::collection::vec(octets(), 5),
                take in 0usize..=5,
            ) {
                let mut headers = vec![String::new()];
                for (i, c) in crumbs.iter().enumerate() {
                    let last = headers.last_mut().unwrap();
                    if !last.is_empty() {
                        last.push(';');
                    }
                    last.push_str(c);
                    if splits[i] {
                        headers.push(String::new());
                    }
                }
                let headers: Vec<&[u8]> = headers.iter().map(|h| h.as_bytes()).collect();
                let updates: Vec<(&str, &str)> = MANAGED
                    .iter()
                    .copied()
                    .zip(values.iter().map(String::as_str))
                    .take(take)
                    .collect();
                crate::fuzzing::check_rewrite(&headers, &updates);
            }
        }
    }
}
