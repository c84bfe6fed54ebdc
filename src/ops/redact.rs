//! No token, cookie value or secret ever reaches a log line, whatever `RUST_LOG` says.
//!
//! Pingora prints whole request headers at debug level and the raw request buffer at error
//! level when a header is malformed; we cannot change what it formats, so every record from every
//! module passes through `Redactor` before it is written.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use log::{Log, Metadata, Record};

use crate::session::secret::Secret;

const MASK: &str = "[redacted]";

/// What to scrub: the values of the managed cookies, anything after a `cookie:` header name,
/// anything shaped like a JWT, and the secrets themselves (a [`Secret`] prints nothing, so the
/// derived `Debug` shows the names only).
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    cookie_names: Vec<String>,
    secrets: Vec<Secret>,
}

impl Redactor {
    pub fn new(cookie_names: Vec<String>, secrets: Vec<Secret>) -> Self {
        Redactor {
            cookie_names,
            secrets: secrets.into_iter().filter(|s| !s.is_empty()).collect(),
        }
    }

    /// This redactor, also scrubbing what `other` scrubs: after a reload, old secrets and old
    /// cookie names stay hidden too.
    pub fn merged(&self, other: &Redactor) -> Redactor {
        let mut merged = self.clone();
        for name in &other.cookie_names {
            if !merged.cookie_names.contains(name) {
                merged.cookie_names.push(name.clone());
            }
        }
        for secret in &other.secrets {
            if !merged.secrets.contains(secret) {
                merged.secrets.push(secret.clone());
            }
        }
        merged
    }

    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let bytes = text.as_bytes();
        let mut spans: Vec<(usize, usize)> = Vec::new();
        header_values(bytes, &mut spans);
        for name in &self.cookie_names {
            cookie_values(bytes, name.as_bytes(), &mut spans);
        }
        jwt_like(bytes, &mut spans);
        query_strings(bytes, &mut spans);
        for secret in &self.secrets {
            literal(bytes, secret.expose(), &mut spans);
        }
        if spans.is_empty() {
            return Cow::Borrowed(text);
        }
        spans.sort_unstable();
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (start, end) in spans {
            if end <= at {
                continue;
            }
            let start = start.max(at);
            out.push_str(&String::from_utf8_lossy(&bytes[at..start]));
            out.push_str(MASK);
            at = end;
        }
        out.push_str(&String::from_utf8_lossy(&bytes[at..]));
        Cow::Owned(out)
    }
}

/// Where a bare value (a cookie's, after `name=`) ends.
fn ends_value(b: u8) -> bool {
    matches!(b, b'"' | b'\'' | b'\r' | b'\n' | b'\\')
}

/// `Cookie: ...`, `"cookie": "..."`, `Set-Cookie: ...` in any case: the whole header value,
/// however it is printed: raw (up to CRLF), escaped (up to `\r\n`, skipping `\"`), or quoted
/// (up to the closing `"`). Folded continuation lines belong to the value.
fn header_values(text: &[u8], spans: &mut Vec<(usize, usize)>) {
    let mut i = 0;
    while let Some(pos) = find_ignore_case(&text[i..], b"cookie") {
        let mut j = i + pos + b"cookie".len();
        let sep_start = j;
        while j < text.len() && matches!(text[j], b'"' | b'\'' | b':' | b' ' | b'\t') {
            j += 1;
        }
        if text[sep_start..j].contains(&b':') {
            let start = j;
            j = header_value_end(text, j);
            if j > start {
                spans.push((start, j));
            }
        }
        i = j.max(i + pos + 1);
    }
}

fn header_value_end(text: &[u8], mut j: usize) -> usize {
    let folded = |k: usize| matches!(text.get(k), Some(b' ' | b'\t'));
    while j < text.len() {
        match text[j] {
            b'"' => return j,
            b'\r' | b'\n' => {
                let mut k = j;
                while matches!(text.get(k), Some(b'\r' | b'\n')) {
                    k += 1;
                }
                if !folded(k) {
                    return j;
                }
                j = k;
            }
            b'\\' => match text.get(j + 1) {
                Some(b'r' | b'n') => {
                    let mut k = j;
                    while text.get(k) == Some(&b'\\')
                        && matches!(text.get(k + 1), Some(b'r' | b'n'))
                    {
                        k += 2;
                    }
                    if !folded(k) {
                        return j;
                    }
                    j = k;
                }
                Some(_) => j += 2,
                None => j += 1,
            },
            _ => j += 1,
        }
    }
    text.len()
}

/// `name=value` (or a chunk's `name.3=value`) of a managed cookie wherever it appears.
fn cookie_values(text: &[u8], name: &[u8], spans: &mut Vec<(usize, usize)>) {
    let mut i = 0;
    while let Some(pos) = find(&text[i..], name) {
        let mut j = i + pos + name.len();
        if text.get(j) == Some(&b'.') {
            let digits = text[j + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if digits > 0 {
                j += 1 + digits;
            }
        }
        if j < text.len() && text[j] == b'=' {
            j += 1;
            let start = j;
            while j < text.len()
                && !ends_value(text[j])
                && !matches!(text[j], b';' | b',' | b' ' | b'&')
            {
                j += 1;
            }
            if j > start {
                spans.push((start, j));
            }
        }
        i = j.max(i + pos + 1);
    }
}

/// `eyJ...`: base64url JSON (a JWT header or payload), with or without its other segments.
fn jwt_like(text: &[u8], spans: &mut Vec<(usize, usize)>) {
    let b64 = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.';
    let mut i = 0;
    while let Some(pos) = find(&text[i..], b"eyJ") {
        let start = i + pos;
        let mut j = start;
        while j < text.len() && b64(text[j]) {
            j += 1;
        }
        if j - start >= 10 {
            spans.push((start, j));
        }
        i = j.max(start + 1);
    }
}

/// The query of anything shaped like a path or a URL (`/login?password=...`,
/// `http://app/x?token=...`): the README promises the query is never logged.
fn query_strings(text: &[u8], spans: &mut Vec<(usize, usize)>) {
    let boundary =
        |b: u8| b.is_ascii_whitespace() || matches!(b, b'"' | b'\'' | b'(' | b'<' | b'[');
    let mut i = 0;
    while let Some(pos) = text[i..].iter().position(|&b| b == b'?') {
        let q = i + pos;
        let start = text[..q]
            .iter()
            .rposition(|&b| boundary(b))
            .map_or(0, |s| s + 1);
        let token = &text[start..q];
        let mut end = q + 1;
        while end < text.len()
            && !boundary(text[end])
            && !matches!(text[end], b',' | b'>' | b')' | b']')
        {
            end += 1;
        }
        if (token.first() == Some(&b'/') || find(token, b"://").is_some()) && end > q + 1 {
            spans.push((q + 1, end));
        }
        i = end.max(q + 1);
    }
}

/// Every control character (C0, DEL, C1) and every Unicode line, paragraph or bidi control
/// escaped (`\n`, `\u{2028}`): one record stays one line whatever a client sent, in any log
/// viewer. Borrowed when there is none.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unsafe_in_log) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if !unsafe_in_log(c) {
            out.push(c);
        } else if c.is_ascii() {
            out.extend(c.escape_default());
        } else {
            out.extend(c.escape_unicode());
        }
    }
    Cow::Owned(out)
}

/// A character no log line may carry raw: a control character (C0, DEL, C1), or a Unicode line,
/// paragraph or bidi control, which some viewers show as a new line or a reordered one.
pub fn unsafe_in_log(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

fn literal(text: &[u8], needle: &[u8], spans: &mut Vec<(usize, usize)>) {
    let mut i = 0;
    while let Some(pos) = find(&text[i..], needle) {
        spans.push((i + pos, i + pos + needle.len()));
        i += pos + needle.len();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn find_ignore_case(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

/// `env_logger`, behind the redactor.
pub struct RedactingLogger {
    inner: env_logger::Logger,
    redactor: ArcSwap<Redactor>,
}

impl Log for RedactingLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata) && !is_pingora_detail(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.inner.matches(record) || is_pingora_detail(record.metadata()) {
            return;
        }
        let text = record.args().to_string();
        let mut level = record.level();
        if level == log::Level::Error
            && let Some(demoted) = pingora_error_level(record.target(), &text)
        {
            let enabled = |l: log::Level| {
                let metadata = Metadata::builder().level(l).target(record.target()).build();
                self.inner.enabled(&metadata)
            };
            match demoted {
                Some(l) if enabled(l) => level = l,
                _ => return,
            }
        }
        let redactor = self.redactor.load();
        let clean = redactor.redact(&text);
        let clean = escape_controls(&clean);
        self.inner.log(
            &Record::builder()
                .args(format_args!("{clean}"))
                .level(level)
                .target(record.target())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Pingora's debug and trace records dump request headers and body chunks (one escaped character
/// at a time, past any pattern): they are never written, whatever `RUST_LOG` says.
fn is_pingora_detail(metadata: &Metadata<'_>) -> bool {
    metadata.level() > log::Level::Info && metadata.target().starts_with("pingora")
}

/// Pingora's ERROR records that are no fault of the proxy's, and the level they are written at
/// (`None`: not written). Operators read ERROR as something to act on, so these are not ERROR:
/// - a pooled connection still held by its idle watch when it is taken (Pingora then opens a
///   new one, the request does not notice): dropped;
/// - a client that closed or failed its TLS handshake (a TCP health check, `/readyz` itself, a
///   scanner): the client's doing, written at INFO as nginx writes it;
/// - a new process started with `-u` waiting for the old one's sockets: INFO, it is the wait.
fn pingora_error_level(target: &str, text: &str) -> Option<Option<log::Level>> {
    /// (target, the record's text or its start, level written at)
    const DEMOTED: &[(&str, Match, Option<log::Level>)] = &[
        (
            "pingora_core::connectors",
            Match::Whole("failed to acquire reusable stream"),
            None,
        ),
        (
            "pingora_core::services::listening",
            Match::Start("Downstream handshake error"),
            Some(log::Level::Info),
        ),
        (
            "pingora_core::server::transfer_fd",
            Match::Start("No incoming socket transfer"),
            Some(log::Level::Info),
        ),
    ];
    DEMOTED
        .iter()
        .find(|(t, m, _)| {
            target == *t
                && match m {
                    Match::Whole(whole) => text == *whole,
                    Match::Start(start) => text.starts_with(start),
                }
        })
        .map(|(_, _, level)| *level)
}

enum Match {
    Whole(&'static str),
    Start(&'static str),
}

/// Installs the logger (`RUST_LOG`, default `info`). Idempotent enough for tests: a second call
/// is a no-op.
pub fn install(redactor: Redactor) {
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let level = inner.filter();
    let logger: &'static RedactingLogger = Box::leak(Box::new(RedactingLogger {
        inner,
        redactor: ArcSwap::from_pointee(redactor),
    }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
        let _ = INSTALLED.set(logger);
    }
}

static INSTALLED: OnceLock<&'static RedactingLogger> = OnceLock::new();

/// Adds what a reloaded configuration brings (new secrets, renamed cookies) to what the
/// installed logger scrubs.
pub fn extend(more: &Redactor) {
    if let Some(logger) = INSTALLED.get() {
        let merged = logger.redactor.load().merged(more);
        logger.redactor.store(Arc::new(merged));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pingora_errors_that_are_no_fault_of_ours_by_table() {
        use log::Level::Info;
        let table = [
            (
                "pingora_core::connectors",
                "failed to acquire reusable stream",
                Some(None),
            ),
            (
                "pingora_core::connectors",
                "failed to acquire reusable stream!",
                None,
            ),
            ("pingora_proxy", "failed to acquire reusable stream", None),
            (
                "etls_proxy::refresh",
                "failed to acquire reusable stream",
                None,
            ),
            ("pingora_core::connectors", "Fail to connect", None),
            (
                "pingora_core::services::listening",
                "Downstream handshake error from 127.0.0.1:5: TLSHandshakeFailure context: tls handshake eof",
                Some(Some(Info)),
            ),
            (
                "pingora_core::services::listening",
                "Downstream handshake timeout",
                None,
            ),
            (
                "pingora_core::server::transfer_fd",
                "No incoming socket transfer, sleep 1s and try again",
                Some(Some(Info)),
            ),
        ];
        for (target, text, want) in table {
            assert_eq!(pingora_error_level(target, text), want, "{target}: {text}");
        }
    }

    fn r() -> Redactor {
        Redactor::new(
            [
                "accessTokenEtls",
                "refreshTokenEtls",
                "accessToken",
                "refreshToken",
                "etlsUser",
            ]
            .map(String::from)
            .to_vec(),
            vec![Secret::new(b"super-secret-value-0123456789abcd".to_vec())],
        )
    }

    #[test]
    fn its_debug_shows_no_secret() {
        let shown = format!("{:?}", r());
        assert!(shown.contains("accessTokenEtls"), "{shown}");
        assert!(!shown.contains("super-secret"), "{shown}");
        assert!(
            !shown.contains("115, 117"),
            "no byte values either: {shown}"
        );
    }

    #[test]
    fn scrubs_what_pingora_prints() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJ1c2VybmFtZSI6ImEifQ.c2lnbmF0dXJl";
        let cases = [
            // RequestHeader's Debug (an http::HeaderMap)
            format!(r#"headers: {{"host": "x", "cookie": "accessTokenEtls={jwt}; theme=dark"}}"#),
            // The raw buffer of a malformed request
            r#"buf: "GET / HTTP/1.1\r\nCookie: refreshToken=opaque-api-token\r\nHost: x\r\n""#
                .to_owned(),
            "GET / HTTP/1.1\r\nCOOKIE: refreshToken=opaque-api-token\r\n".to_owned(),
            r#"set-cookie": "etlsUser=opaque-user; HttpOnly""#.to_owned(),
            "accessToken=opaque-api-token&x=1".to_owned(),
            "joined etlsUser.0=opaque-user and refreshToken.12=opaque-api-token".to_owned(),
            format!("token {jwt} went by"),
            "secret super-secret-value-0123456789abcd leaked".to_owned(),
            // Escaped quotes and folded lines do not end the header value.
            r#"buf: "GET / HTTP/1.1\r\nCookie: a=\"x\"; sid=opaque-api-token\r\nHost: x""#
                .to_owned(),
            r#"buf: GET / HTTP/1.1\r\nCookie: a=1\r\n sid=opaque-api-token\r\nHost: x"#.to_owned(),
            "GET / HTTP/1.1\r\nCookie: a=1\r\n\tsid=opaque-api-token\r\nHost: x\r\n".to_owned(),
        ];
        for line in cases {
            let out = r().redact(&line).into_owned();
            for leak in [
                jwt,
                "opaque-api-token",
                "opaque-user",
                "super-secret-value",
                "theme=dark",
            ] {
                assert!(!out.contains(leak), "{leak} survived in {out:?}");
            }
            assert!(out.contains(MASK), "{out}");
        }
    }

    #[test]
    fn header_value_stops_at_the_next_header() {
        let out = r()
            .redact("buf: GET / HTTP/1.1\\r\\nCookie: a=1\\r\\nHost: example\\r\\n")
            .into_owned();
        assert!(out.contains("Host: example"), "{out}");
        let out = r()
            .redact(r#"{"cookie": "a=1", "host": "example"}"#)
            .into_owned();
        assert!(out.contains(r#""host": "example""#), "{out}");
    }

    #[test]
    fn pingora_detail_is_dropped_whatever_the_level() {
        let meta = |level, target| Metadata::builder().level(level).target(target).build();
        assert!(is_pingora_detail(&meta(
            log::Level::Debug,
            "pingora_core::protocols"
        )));
        assert!(is_pingora_detail(&meta(log::Level::Trace, "pingora_proxy")));
        assert!(!is_pingora_detail(&meta(
            log::Level::Error,
            "pingora_proxy"
        )));
        assert!(!is_pingora_detail(&meta(
            log::Level::Debug,
            "etls_proxy::proxy"
        )));
    }

    #[test]
    fn no_query_and_no_raw_line_breaks() {
        let cases = [
            (
                "Fail to proxy: Connection refused, GET /login?password=hunter2, Host: x",
                "Fail to proxy: Connection refused, GET /login?[redacted], Host: x",
            ),
            (
                "uri http://app.test:3000/x?token=abc&b=2 failed",
                "uri http://app.test:3000/x?[redacted] failed",
            ),
            (r#"path: "/a?b=c""#, r#"path: "/a?[redacted]""#),
            ("is it? yes, /path? ok", "is it? yes, /path? ok"),
        ];
        for (line, want) in cases {
            assert_eq!(r().redact(line), want);
        }
        let cases = [
            ("Host: a\u{2028}b", r"Host: a\u{2028}b"),
            ("a\u{2029}b\u{85}c", r"a\u{2029}b\u{85}c"),
            (
                "GET / HTTP/1.1\r\nHost: x\x1b[31m",
                r"GET / HTTP/1.1\r\nHost: x\u{1b}[31m",
            ),
            ("rtl \u{202e}txt.exe", r"rtl \u{202e}txt.exe"),
        ];
        for (line, want) in cases {
            assert_eq!(escape_controls(line), want);
        }
        assert!(matches!(
            escape_controls("plain ünïcode line"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn leaves_ordinary_lines_alone() {
        for line in [
            "GET /dashboard -> 200 Passed session=ab12cd34",
            "no cookies on this request",
            "refresh table full (10 entries)",
        ] {
            assert!(matches!(r().redact(line), Cow::Borrowed(_)), "{line}");
        }
    }
}
