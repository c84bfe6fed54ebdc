//! Values too large for one cookie, split into numbered chunks (`etlsUser.0`, `etlsUser.1`, ...,
//! the convention of Auth.js and oauth2-proxy) on the way out, and joined again on the way in so
//! the app and the auth API see one cookie as if nothing was split.
//!
//! Browsers drop, without a word, a cookie whose name and value exceed 4096 bytes
//! (RFC 6265bis §5.4); every line built here, attributes included, stays within that.
//!
//! Reading rules (one of the five names, `N`):
//! - a plain `N` wins: chunks sent beside it are leftovers, ignored (and cleared by the next
//!   answer that sets `N`);
//! - otherwise `N.0`, `N.1`, ... are joined in index order up to the first missing index; chunks
//!   after a gap are ignored (the joined prefix then fails verification like any damaged token);
//! - more than `cookies.max_chunks` contiguous chunks cannot be a value the proxy set: the value
//!   counts as absent;
//! - a chunk index is one or two digits without a leading zero (`N.0` to `N.99`); any other
//!   suffix is an ordinary cookie of the app, passed through untouched;
//! - the first crumb of each `N.i` counts, as for every cookie.

use http::HeaderValue;

use crate::session::cookies::{CookieJar, CookieNames};
use crate::session::set_cookie::CookiePolicy;

/// RFC 6265bis §5.4: what a browser keeps of one cookie; here the bound of a whole line.
pub const MAX_LINE_BYTES: usize = 4096;
/// `cookies.max_chunks` when the file gives none.
pub const DEFAULT_MAX_CHUNKS: usize = 8;
/// The highest `cookies.max_chunks` accepted.
pub const MAX_CHUNKS: usize = 64;
/// Chunk indices recognised on the way in (two digits).
const MAX_INDEX: usize = 99;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error(
        "needs {needed} cookies of at most {MAX_LINE_BYTES} bytes, over cookies.max_chunks ({max})"
    )]
    TooManyChunks { needed: usize, max: usize },
    #[error("the cookie attributes leave no room for a value within {MAX_LINE_BYTES} bytes")]
    NoRoom,
    #[error("holds bytes that are not ASCII")]
    NotAscii,
}

/// `N.i`.
pub fn chunk_name(name: &str, index: usize) -> String {
    format!("{name}.{index}")
}

/// The Set-Cookie lines of one value: the plain line when it fits in [`MAX_LINE_BYTES`], else
/// as few chunk lines as fit (at most `max_chunks`), of near-equal size.
pub fn set_lines(
    policy: &CookiePolicy,
    name: &str,
    value: &str,
    max_chunks: usize,
) -> Result<Vec<String>, SplitError> {
    let line = policy.set_line(name, value);
    if line.len() <= MAX_LINE_BYTES {
        return Ok(vec![line]);
    }
    if !value.is_ascii() {
        return Err(SplitError::NotAscii);
    }
    // The widest chunk name (most digits) bounds what the name and attributes take.
    let widest = max_chunks.clamp(2, MAX_INDEX + 1) - 1;
    let overhead = policy.set_line(&chunk_name(name, widest), "").len();
    let room = MAX_LINE_BYTES
        .checked_sub(overhead)
        .filter(|r| *r > 0)
        .ok_or(SplitError::NoRoom)?;
    let needed = value.len().div_ceil(room);
    if needed > max_chunks {
        return Err(SplitError::TooManyChunks {
            needed,
            max: max_chunks,
        });
    }
    let size = value.len().div_ceil(needed);
    Ok(value
        .as_bytes()
        .chunks(size)
        .enumerate()
        .map(|(i, part)| {
            // ASCII, checked above: every byte boundary is a char boundary.
            let part = std::str::from_utf8(part).unwrap_or_default();
            policy.set_line(&chunk_name(name, i), part)
        })
        .collect())
}

/// `(slot among the five, index)` when `name` is a chunk of one of the five.
fn chunk_of(name: &[u8], names: &[&str; 5]) -> Option<(usize, usize)> {
    if !name.last().is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let dot = name.iter().rposition(|b| *b == b'.')?;
    let index = match &name[dot + 1..] {
        [d @ b'0'..=b'9'] => usize::from(d - b'0'),
        [t @ b'1'..=b'9', u @ b'0'..=b'9'] => usize::from(t - b'0') * 10 + usize::from(u - b'0'),
        _ => return None,
    };
    let slot = names.iter().position(|n| n.as_bytes() == &name[..dot])?;
    Some((slot, index))
}

/// Bytes of the Cookie headers that are not the five names nor their chunks (each crumb with
/// its `; `): what the browser will send beside whatever the proxy sets for the five.
pub fn other_cookie_bytes(jar: &CookieJar<'_>, names: &CookieNames) -> usize {
    let five = names.all();
    jar.crumbs()
        .filter(|c| {
            !five.iter().any(|n| n.as_bytes() == c.name) && chunk_of(c.name, &five).is_none()
        })
        .map(|c| c.raw.len() + 2)
        .sum()
}

/// True when the request carries a chunk (with a value) of one of the five names: the one
/// check every request pays. No allocation, and no crumb parsing: a SIMD search for `=`, and
/// only a name ending in a digit is looked at further.
pub fn any_chunk(jar: &CookieJar<'_>, names: &CookieNames) -> bool {
    let all = names.all();
    jar.headers().any(|header| {
        memchr::memchr_iter(b'=', header).any(|eq| {
            let before = trim_end_ows(&header[..eq]);
            if !before.last().is_some_and(u8::is_ascii_digit) {
                return false;
            }
            // The crumb's name; for a later `=` of a value this holds the first `=`, so it
            // never matches one of the five names.
            let start = memchr::memrchr(b';', before).map_or(0, |p| p + 1);
            chunk_of(trim_start_ows(&before[start..]), &all).is_some()
        })
    })
}

fn trim_end_ows(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn trim_start_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    s
}

/// What a request holds of the five names: the plain cookie, and which chunk indices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    plain: [bool; 5],
    chunks: [u128; 5],
}

impl Held {
    pub fn scan(jar: &CookieJar<'_>, names: &CookieNames) -> Held {
        let all = names.all();
        let mut held = Held::default();
        for crumb in jar.crumbs() {
            if let Some((slot, index)) = chunk_of(crumb.name, &all) {
                held.chunks[slot] |= 1 << index;
            } else if let Some(slot) = all.iter().position(|n| n.as_bytes() == crumb.name) {
                held.plain[slot] |= crumb.value.is_some();
            }
        }
        held
    }

    pub fn any_chunks(&self) -> bool {
        self.chunks.iter().any(|c| *c != 0)
    }
}

/// The Cookie header with every chunked value joined under its own name, in the place of its
/// first chunk, and every chunk crumb of the five names removed (see the module's reading
/// rules); other crumbs are kept in order, byte for byte. `None` when there is no chunk.
pub fn normalise(jar: &CookieJar<'_>, names: &CookieNames, max_chunks: usize) -> Option<Vec<u8>> {
    let all = names.all();
    let mut parts: Vec<(usize, usize, &[u8])> = Vec::new();
    let mut plain = [false; 5];
    let mut any = false;
    for crumb in jar.crumbs() {
        if let Some((slot, index)) = chunk_of(crumb.name, &all) {
            any = true;
            if let Some(value) = crumb.value
                && !parts.iter().any(|(s, i, _)| (*s, *i) == (slot, index))
            {
                parts.push((slot, index, value));
            }
        } else if let Some(slot) = all.iter().position(|n| n.as_bytes() == crumb.name) {
            plain[slot] |= crumb.value.is_some();
        }
    }
    if !any {
        return None;
    }
    let part = |slot: usize, index: usize| {
        parts
            .iter()
            .find(|(s, i, _)| (*s, *i) == (slot, index))
            .map(|(_, _, v)| *v)
    };
    let joined: Vec<Option<Vec<u8>>> = (0..5)
        .map(|slot| {
            if plain[slot] {
                return None;
            }
            let count = (0..=MAX_INDEX)
                .take_while(|i| part(slot, *i).is_some())
                .count();
            if count == 0 || count > max_chunks {
                return None;
            }
            Some(
                (0..count)
                    .filter_map(|i| part(slot, i))
                    .flatten()
                    .copied()
                    .collect(),
            )
        })
        .collect();
    let mut written = [false; 5];
    let mut out = Vec::with_capacity(jar.crumbs().map(|c| c.raw.len() + 2).sum());
    let mut push = |bytes: &[&[u8]]| {
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        for b in bytes {
            out.extend_from_slice(b);
        }
    };
    for crumb in jar.crumbs() {
        match chunk_of(crumb.name, &all) {
            Some((slot, _)) => {
                if let Some(value) = &joined[slot]
                    && !written[slot]
                {
                    written[slot] = true;
                    push(&[all[slot].as_bytes(), b"=", value]);
                }
            }
            None => push(&[crumb.raw]),
        }
    }
    Some(out)
}

/// What an answer does with one of the five names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Not set by this answer (no user data configured): left as the browser has it.
    Untouched,
    /// Set as one plain cookie.
    Plain,
    /// Set as this many chunks.
    Chunks(usize),
    /// Cleared (logout): the plain cookie by the fixed lines, the chunks here.
    Cleared,
}

/// `layout` after the app set or deleted some of the five cookies itself (`deleted`, by name):
/// their chunks are all cleared, whatever the refresh set; the app's own line stands.
pub fn with_deleted(
    mut layout: [Layout; 5],
    names: &CookieNames,
    deleted: &[String],
) -> [Layout; 5] {
    for (slot, name) in names.all().iter().enumerate() {
        if deleted.iter().any(|d| d == name) {
            layout[slot] = Layout::Cleared;
        }
    }
    layout
}

/// Lines clearing what the request holds and the answer no longer uses: chunks past the new
/// count (all of them for a plain value or a logout), and the plain cookie when the value is now
/// chunked. Computed per request; empty (no allocation) when there is nothing to clear.
pub fn clear_lines(
    policy: &CookiePolicy,
    names: &CookieNames,
    held: &Held,
    layout: &[Layout; 5],
) -> Vec<HeaderValue> {
    let mut out = Vec::new();
    for (slot, name) in names.all().iter().enumerate() {
        let (from, plain) = match layout[slot] {
            Layout::Untouched => continue,
            Layout::Plain | Layout::Cleared => (0, false),
            Layout::Chunks(n) => (n, held.plain[slot]),
        };
        if plain {
            out.extend(HeaderValue::try_from(policy.clear_line(name)).ok());
        }
        for index in from..=MAX_INDEX {
            if held.chunks[slot] & (1 << index) != 0 {
                let line = policy.clear_line(&chunk_name(name, index));
                out.extend(HeaderValue::try_from(line).ok());
            }
        }
    }
    out
}

/// Whether an answer of `layout` clears anything for a request that holds no chunk cookie
/// ([`any_chunk`] false): only a value now chunked clears its plain cookie. Lets the hot paths
/// skip the second scan of the request's cookies.
pub fn clears_without_chunks(layout: &[Layout; 5]) -> bool {
    layout.iter().any(|l| matches!(l, Layout::Chunks(_)))
}

/// The per-request lines of an answer: what the request's cookies hold (one scan) against what
/// the answer does with each name (`[Layout::Cleared; 5]` for a logout).
pub fn clears_for(
    policy: &CookiePolicy,
    names: &CookieNames,
    jar: &CookieJar<'_>,
    layout: &[Layout; 5],
) -> Vec<HeaderValue> {
    clear_lines(policy, names, &Held::scan(jar, names), layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_the_app_deleted_have_all_their_chunks_cleared() {
        let names = CookieNames::default();
        let layout = [
            Layout::Plain,
            Layout::Plain,
            Layout::Plain,
            Layout::Untouched,
            Layout::Chunks(3),
        ];
        let deleted = vec!["etlsUser".to_owned(), "accessToken".to_owned()];
        assert_eq!(
            with_deleted(layout, &names, &deleted),
            [
                Layout::Plain,
                Layout::Plain,
                Layout::Cleared,
                Layout::Untouched,
                Layout::Cleared,
            ]
        );
        assert_eq!(with_deleted(layout, &names, &[]), layout);
    }

    fn jar<'a>(headers: &[&'a str]) -> CookieJar<'a> {
        CookieJar::from_headers(headers.iter().map(|h| h.as_bytes()))
    }

    fn names() -> CookieNames {
        CookieNames::default()
    }

    fn pair(line: &str) -> (&str, &str) {
        line.split(';').next().unwrap().split_once('=').unwrap()
    }

    #[test]
    fn other_cookies_are_all_but_the_five_and_their_chunks() {
        let n = names();
        let cases: &[(&[&str], usize)] = &[
            (&[""], 0),
            (&["accessTokenEtls=a; etlsUser.0=b; etlsUser.1=c"], 0),
            (&["theme=dark; accessTokenEtls=a"], "theme=dark".len() + 2),
            (
                &["theme=dark", "app.0=x; etlsUser.01=y"],
                10 + 2 + 7 + 2 + 13 + 2,
            ),
        ];
        for (headers, want) in cases {
            assert_eq!(other_cookie_bytes(&jar(headers), &n), *want, "{headers:?}");
        }
    }

    #[test]
    fn chunk_names_are_one_of_the_five_and_a_short_index() {
        let n = names();
        let all = n.all();
        let cases: &[(&str, Option<(usize, usize)>)] = &[
            ("etlsUser.0", Some((4, 0))),
            ("etlsUser.7", Some((4, 7))),
            ("etlsUser.42", Some((4, 42))),
            ("refreshToken.1", Some((3, 1))),
            ("accessTokenEtls.3", Some((0, 3))),
            ("etlsUser", None),
            ("etlsUser.", None),
            ("etlsUser.01", None),
            ("etlsUser.100", None),
            ("etlsUser.a", None),
            ("etlsUser.-1", None),
            ("other.0", None),
            ("xetlsUser.0", None),
            ("etlsUser.0.1", None),
        ];
        for (name, want) in cases {
            assert_eq!(chunk_of(name.as_bytes(), &all), *want, "{name}");
        }
    }

    #[test]
    fn small_values_stay_one_plain_line() {
        let p = CookiePolicy::default();
        let lines = set_lines(&p, "etlsUser", "abc", 8).unwrap();
        assert_eq!(lines, vec![p.set_line("etlsUser", "abc")]);
    }

    #[test]
    fn large_values_split_into_lines_within_4096() {
        let policy = CookiePolicy {
            domain: Some("app.example.com".into()),
            secure: true,
            ..CookiePolicy::default()
        };
        // Fits exactly at the bound; one byte more needs chunks.
        let fixed = policy.set_line("etlsUser", "").len();
        let at_bound = "v".repeat(MAX_LINE_BYTES - fixed);
        assert_eq!(
            set_lines(&policy, "etlsUser", &at_bound, 8).unwrap().len(),
            1
        );
        let cases: &[(usize, usize, Result<usize, SplitError>)] = &[
            (MAX_LINE_BYTES - fixed + 1, 8, Ok(2)),
            (12_000, 8, Ok(3)),
            (
                13_000,
                3,
                Err(SplitError::TooManyChunks { needed: 4, max: 3 }),
            ),
            (
                5000,
                1,
                Err(SplitError::TooManyChunks { needed: 2, max: 1 }),
            ),
            (30_000, 8, Ok(8)),
            (
                40_000,
                8,
                Err(SplitError::TooManyChunks { needed: 10, max: 8 }),
            ),
            (200_000, 64, Ok(50)),
        ];
        for (len, max, want) in cases {
            let value: String = (0..*len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
            let got = set_lines(&policy, "etlsUser", &value, *max);
            match (got, want) {
                (Ok(lines), Ok(n)) => {
                    assert_eq!(lines.len(), *n, "{len}");
                    let mut joined = String::new();
                    for (i, line) in lines.iter().enumerate() {
                        assert!(line.len() <= MAX_LINE_BYTES, "{len}: {}", line.len());
                        let (name, part) = pair(line);
                        assert_eq!(name, format!("etlsUser.{i}"));
                        assert!(line.contains("Domain=app.example.com"), "{line}");
                        assert!(line.contains("Secure") && line.contains("HttpOnly"));
                        joined.push_str(part);
                    }
                    assert_eq!(joined, value);
                }
                (got, want) => assert_eq!(got.map(|l| l.len()), *want, "{len}"),
            }
        }
        let long_path = CookiePolicy {
            path: format!("/{}", "p".repeat(4100)),
            ..CookiePolicy::default()
        };
        assert_eq!(
            set_lines(&long_path, "etlsUser", "x", 8),
            Err(SplitError::NoRoom)
        );
        assert_eq!(
            set_lines(&policy, "etlsUser", &"é".repeat(3000), 8),
            Err(SplitError::NotAscii)
        );
    }

    #[test]
    fn normalise_joins_chunks_by_the_reading_rules() {
        let cases: &[(&[&str], usize, Option<&str>)] = &[
            // No chunk: nothing to do.
            (&["a=1; etlsUser=u; etlsUser.x=1"], 8, None),
            // Joined in index order, in the place of the first chunk crumb.
            (
                &["a=1; etlsUser.1=BB; b=2; etlsUser.0=AA; c=3"],
                8,
                Some("a=1; etlsUser=AABB; b=2; c=3"),
            ),
            // Across Cookie headers (HTTP/2 crumbs).
            (
                &[
                    "etlsUser.0=AA",
                    "refreshToken.0=R1; etlsUser.1=BB",
                    "refreshToken.1=R2",
                ],
                8,
                Some("etlsUser=AABB; refreshToken=R1R2"),
            ),
            // A plain cookie wins; its chunks are dropped.
            (
                &["etlsUser.0=AA; etlsUser=plain; etlsUser.1=BB"],
                8,
                Some("etlsUser=plain"),
            ),
            // A gap: only the prefix is joined.
            (&["etlsUser.0=AA; etlsUser.2=CC"], 8, Some("etlsUser=AA")),
            // No chunk 0: the value is absent.
            (&["x=1; etlsUser.1=BB; etlsUser.2=CC"], 8, Some("x=1")),
            // More than max_chunks: absent.
            (&["etlsUser.0=A; etlsUser.1=B; etlsUser.2=C"], 2, Some("")),
            (
                &["etlsUser.0=A; etlsUser.1=B; z=9"],
                2,
                Some("etlsUser=AB; z=9"),
            ),
            // The first crumb of an index counts; one without `=` is dropped.
            (
                &["etlsUser.0=A; etlsUser.0=X; etlsUser.1; etlsUser.1=B"],
                8,
                Some("etlsUser=AB"),
            ),
            // Not chunks: kept as they came.
            (
                &["etlsUser.01=x; etlsUser.100=y; app.0=z; etlsUser.0=A"],
                8,
                Some("etlsUser.01=x; etlsUser.100=y; app.0=z; etlsUser=A"),
            ),
        ];
        let n = names();
        for (headers, max, want) in cases {
            let got = normalise(&jar(headers), &n, *max);
            let got = got.as_deref().map(|b| std::str::from_utf8(b).unwrap());
            assert_eq!(got, *want, "{headers:?}");
            assert_eq!(any_chunk(&jar(headers), &n), want.is_some(), "{headers:?}");
        }
    }

    #[test]
    fn without_chunk_cookies_only_a_newly_chunked_value_clears_anything() {
        let p = CookiePolicy::default();
        let n = names();
        let layouts = [
            Layout::Untouched,
            Layout::Plain,
            Layout::Cleared,
            Layout::Chunks(2),
        ];
        let requests: [&[&str]; 3] = [
            &["etlsUser=u; accessTokenEtls=a"],
            &["refreshToken=r", "other=1"],
            &[""],
        ];
        for headers in requests {
            let sent = jar(headers);
            assert!(!any_chunk(&sent, &n));
            let held = Held::scan(&sent, &n);
            for a in layouts {
                for b in layouts {
                    let layout = [a, b, a, b, a];
                    if !clears_without_chunks(&layout) {
                        let lines = clear_lines(&p, &n, &held, &layout);
                        assert!(lines.is_empty(), "{headers:?} {layout:?}: {lines:?}");
                    }
                }
            }
        }
        // The exception: a plain `etlsUser` the new, chunked value replaces.
        let held = Held::scan(&jar(&["etlsUser=u"]), &n);
        let mut layout = [Layout::Plain; 5];
        layout[4] = Layout::Chunks(2);
        assert!(clears_without_chunks(&layout));
        assert_eq!(clear_lines(&p, &n, &held, &layout).len(), 1);
    }

    #[test]
    fn clear_lines_drop_what_the_new_value_no_longer_uses() {
        let p = CookiePolicy::default();
        let n = names();
        let cleared = |headers: &[&str], user: Layout| -> Vec<String> {
            let held = Held::scan(&jar(headers), &n);
            let mut layout = [Layout::Plain; 5];
            layout[4] = user;
            clear_lines(&p, &n, &held, &layout)
                .iter()
                .map(|v| pair(v.to_str().unwrap()).0.to_owned())
                .collect()
        };
        let cases: &[(&[&str], Layout, &[&str])] = &[
            (&["etlsUser=u; a=1"], Layout::Plain, &[]),
            (&["etlsUser=u"], Layout::Chunks(3), &["etlsUser"]),
            (&["a=1"], Layout::Chunks(3), &[]),
            (
                &["etlsUser.0=a; etlsUser.1=b; etlsUser.2=c"],
                Layout::Plain,
                &["etlsUser.0", "etlsUser.1", "etlsUser.2"],
            ),
            (
                &["etlsUser.0=a; etlsUser.1=b; etlsUser.2=c; etlsUser.5=f"],
                Layout::Chunks(2),
                &["etlsUser.2", "etlsUser.5"],
            ),
            (&["etlsUser.0=a; etlsUser.1=b"], Layout::Chunks(2), &[]),
            (&["etlsUser.0=a; etlsUser.1=b"], Layout::Untouched, &[]),
            (
                &["etlsUser.0=a; refreshToken.3=r"],
                Layout::Cleared,
                &["refreshToken.3", "etlsUser.0"],
            ),
            (&["etlsUser.99=z"], Layout::Cleared, &["etlsUser.99"]),
        ];
        for (headers, user, want) in cases {
            assert_eq!(cleared(headers, *user), *want, "{headers:?} {user:?}");
        }
        for line in clear_lines(
            &p,
            &n,
            &Held::scan(&jar(&["etlsUser.1=x"]), &n),
            &[Layout::Cleared; 5],
        ) {
            let line = line.to_str().unwrap();
            assert!(
                line.contains("Max-Age=0") && line.contains("Path=/"),
                "{line}"
            );
        }
    }

    #[test]
    fn logout_clears_every_chunk_held() {
        let (p, n) = (CookiePolicy::default(), names());
        let logout = [Layout::Cleared; 5];
        assert!(clears_for(&p, &n, &jar(&["etlsUser=u; a=1"]), &logout).is_empty());
        let held = jar(&["accessToken.0=a; accessToken.1=b; x.0=1"]);
        let lines = clears_for(&p, &n, &held, &logout);
        let got: Vec<&str> = lines.iter().map(|l| pair(l.to_str().unwrap()).0).collect();
        assert_eq!(got, ["accessToken.0", "accessToken.1"]);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn crumb() -> impl Strategy<Value = String> {
            let name = prop_oneof![
                prop::sample::select(vec![
                    "etlsUser",
                    "etlsUser.0",
                    "etlsUser.12",
                    "etlsUser.01",
                    "refreshToken.3",
                    "x.1",
                    "a",
                    "etlsUser.",
                    "etlsUser.100",
                ])
                .prop_map(str::to_owned),
                "[a-z.0-9]{0,6}",
            ];
            (
                name,
                prop::option::of("[a-z0-9=.]{0,6}"),
                "[ \t]{0,2}",
                "[ \t]{0,2}",
            )
                .prop_map(|(n, v, pre, post)| match v {
                    Some(v) => format!("{pre}{n}{post}={pre}{v}{post}"),
                    None => format!("{pre}{n}{post}"),
                })
        }

        proptest! {
            /// The fast scan finds a chunk exactly when the crumb-by-crumb reading does.
            #[test]
            fn fast_scan_agrees_with_the_crumbs(
                crumbs in prop::collection::vec(crumb(), 0..8),
                split in 0usize..8,
            ) {
                let n = names();
                let all = n.all();
                let split = split.min(crumbs.len());
                let (a, b) = (crumbs[..split].join(";"), crumbs[split..].join(";"));
                let j = jar(&[&a, &b]);
                let slow = j
                    .crumbs()
                    .any(|c| c.value.is_some() && chunk_of(c.name, &all).is_some());
                prop_assert_eq!(any_chunk(&j, &n), slow, "{:?} {:?}", a, b);
            }

            /// Split then join is the identity, and every line stays within 4096 bytes.
            #[test]
            fn split_then_join_is_identity(
                value in "[A-Za-z0-9._~-]{1,40000}",
                max in 1usize..=16,
                other in "[a-z]{1,8}",
            ) {
                let (p, n) = (CookiePolicy::default(), names());
                let Ok(lines) = set_lines(&p, "etlsUser", &value, max) else {
                    return Ok(());
                };
                prop_assert!(lines.len() <= max.max(1));
                let mut header = format!("{other}=1");
                for line in &lines {
                    prop_assert!(line.len() <= MAX_LINE_BYTES);
                    header.push_str("; ");
                    header.push_str(line.split(';').next().unwrap());
                }
                let j = jar(&[&header]);
                let normalised = normalise(&j, &n, max);
                let header = normalised.map_or(header.clone().into_bytes(), |h| h);
                let back = CookieJar::from_headers([header.as_slice()]);
                prop_assert_eq!(back.get("etlsUser"), Some(value.as_bytes()));
                prop_assert_eq!(back.get(&other), Some(b"1".as_slice()));
                prop_assert_eq!(back.crumbs().count(), 2);
            }
        }
    }
}
