//! One line per request on stderr, text or JSON. It names the session by a short hash of its
//! key and the path without its query (a query may carry anything): never a token. The client
//! address and the request id (`X-Request-Id`, as the app got it) tie it to the app's logs.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    Text,
    Json,
}

impl AccessLogFormat {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "text" => Some(AccessLogFormat::Text),
            "json" => Some(AccessLogFormat::Json),
            _ => None,
        }
    }
}

/// What one line says.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessEntry<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// 0 when nothing was answered (the browser went away).
    pub status: u16,
    pub decision: &'a str,
    pub total: Duration,
    /// Time this request waited for a refresh (its own auth API call, or the one it shared).
    pub auth_api: Option<Duration>,
    pub session: Option<String>,
    /// The client: the peer, or behind trusted proxies the first untrusted X-Forwarded-For hop.
    pub client: Option<IpAddr>,
    /// Only ever `[A-Za-z0-9._-]` (`forwarded::is_valid_request_id`, or one we made).
    pub request_id: Option<&'a str>,
}

impl AccessEntry<'_> {
    pub fn format(&self, format: AccessLogFormat) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        match format {
            AccessLogFormat::Json => {
                let mut line = serde_json::json!({
                    "method": self.method,
                    "path": self.path,
                    "status": self.status,
                    "decision": self.decision,
                    "ms": round3(ms(self.total)),
                    "auth_api_ms": self.auth_api.map(|d| round3(ms(d))),
                    "session": self.session,
                    "client": self.client.map(|ip| ip.to_string()),
                    "request_id": self.request_id,
                })
                .to_string();
                // Only the path comes from the client (a method is a token).
                if self.path.chars().any(crate::ops::redact::unsafe_in_log) {
                    json_escape_separators(&mut line);
                }
                line.push('\n');
                line
            }
            AccessLogFormat::Text => {
                let mut line = String::with_capacity(160 + self.path.len());
                let _ = write!(
                    line,
                    "{} {:?} {} {} {:.3}ms client=",
                    self.method,
                    self.path,
                    self.status,
                    self.decision,
                    ms(self.total)
                );
                let _ = match self.client {
                    Some(ip) => write!(line, "{ip}"),
                    None => write!(line, "-"),
                };
                let _ = write!(line, " id={} auth_api=", self.request_id.unwrap_or("-"));
                let _ = match self.auth_api {
                    Some(d) => write!(line, "{:.3}ms", ms(d)),
                    None => write!(line, "-"),
                };
                let _ = writeln!(line, " session={}", self.session.as_deref().unwrap_or("-"));
                line
            }
        }
    }

    /// Written in one call, so lines of concurrent requests never interleave.
    pub fn write(&self, format: AccessLogFormat) {
        let line = self.format(format);
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// serde_json leaves U+2028, U+2029, C1 and bidi controls raw (valid JSON, but some viewers
/// break the line on them): written as `\uXXXX`, the same string to a JSON reader.
fn json_escape_separators(line: &mut String) {
    let mut out = String::with_capacity(line.len() + 16);
    for c in line.chars() {
        if crate::ops::redact::unsafe_in_log(c) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    *line = out;
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> AccessEntry<'static> {
        AccessEntry {
            method: "GET",
            path: "/dash \"x\"",
            status: 200,
            decision: "refreshed",
            total: Duration::from_micros(12_345),
            auth_api: Some(Duration::from_micros(10_000)),
            session: Some("a1b2c3d4".into()),
            client: Some("203.0.113.9".parse().unwrap()),
            request_id: Some("0af7651916cd43dd8448eb211c80319c"),
        }
    }

    #[test]
    fn text_lines_quote_the_path_and_end_with_a_newline() {
        assert_eq!(
            entry().format(AccessLogFormat::Text),
            "GET \"/dash \\\"x\\\"\" 200 refreshed 12.345ms client=203.0.113.9 id=0af7651916cd43dd8448eb211c80319c auth_api=10.000ms session=a1b2c3d4\n"
        );
        let plain = AccessEntry {
            auth_api: None,
            session: None,
            client: None,
            request_id: None,
            ..entry()
        };
        assert!(
            plain
                .format(AccessLogFormat::Text)
                .ends_with(" client=- id=- auth_api=- session=-\n")
        );
    }

    #[test]
    fn json_lines_are_one_object_each() {
        let line = entry().format(AccessLogFormat::Json);
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["path"], "/dash \"x\"");
        assert_eq!(v["status"], 200);
        assert_eq!(v["decision"], "refreshed");
        assert_eq!(v["ms"], 12.345);
        assert_eq!(v["auth_api_ms"], 10.0);
        assert_eq!(v["session"], "a1b2c3d4");
        assert_eq!(v["client"], "203.0.113.9");
        assert_eq!(v["request_id"], "0af7651916cd43dd8448eb211c80319c");
    }

    #[test]
    fn no_raw_line_separator_or_control_in_either_format() {
        for path in [
            "/a\u{2028}b",
            "/a\u{2029}b",
            "/a\u{85}b",
            "/a\u{202e}b",
            "/a\u{1b}b\nc",
        ] {
            let entry = AccessEntry { path, ..entry() };
            for format in [AccessLogFormat::Text, AccessLogFormat::Json] {
                let line = entry.format(format);
                let body = line.strip_suffix('\n').unwrap();
                assert!(
                    !body.chars().any(crate::ops::redact::unsafe_in_log),
                    "{line:?}"
                );
            }
            let json = entry.format(AccessLogFormat::Json);
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(v["path"], path, "{json}");
        }
    }

    #[test]
    fn formats_are_named_text_and_json_only() {
        assert_eq!(AccessLogFormat::parse("json"), Some(AccessLogFormat::Json));
        assert_eq!(AccessLogFormat::parse("text"), Some(AccessLogFormat::Text));
        assert_eq!(AccessLogFormat::parse("JSON"), None);
    }
}
