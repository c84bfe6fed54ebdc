//! Who is calling, for the app: `X-Forwarded-For`, `-Proto`, `-Host` and `X-Request-Id`, as
//! nginx and oauth2-proxy send them.
//!
//! What a client sends under those names is replaced, unless the peer (the TCP connection's
//! address) is in `downstream.trusted_proxies`: then the chain is kept and the peer appended,
//! and its Proto, Host and (valid) request id are kept. CIDR matching over `std::net` only.

use std::io::Write as _;
use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;

/// An address block, `10.0.0.0/8` or `2001:db8::/32`; a bare address is one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Refuses host bits beyond the prefix (`10.0.0.1/8`): almost always a typo for a host or
    /// another block, so it is named rather than silently masked.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{text}` is not an IPv4 or IPv6 address or CIDR block"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => {
                let digits = !p.is_empty()
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && (p == "0" || !p.starts_with('0'));
                match p.parse::<u8>() {
                    Ok(p) if digits && p <= max => p,
                    _ => return Err(format!("`{text}`: the prefix length must be 0 to {max}")),
                }
            }
        };
        let cidr = Cidr { network, prefix };
        if cidr.masked(network) != network {
            return Err(format!(
                "`{text}` has bits set after the first {prefix}: write `{}/{prefix}` for the block, or the address alone for one host",
                cidr.masked(network)
            ));
        }
        Ok(cidr)
    }

    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        }
    }

    /// An IPv4 peer seen through an IPv6 socket (`::ffff:10.0.0.1`) matches IPv4 blocks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.network.is_ipv4() && self.masked(ip) == self.network
    }
}

/// `downstream.trusted_proxies`: empty by default, so no client-sent value is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<Cidr>);

impl TrustedProxies {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// 1 to 128 of `[A-Za-z0-9._-]`: what a UUID, a ULID, a trace id or our own ids are made of,
/// and nothing that could split a log line or a header.
pub fn is_valid_request_id(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// 32 lowercase hex digits (128 random bits): one allocation, the header value itself.
pub fn new_request_id() -> HeaderValue {
    let bits: [u8; 16] = rand::random();
    let mut buf = [0u8; 32];
    crate::hex::encode_into(&bits, &mut buf);
    HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value")
}

/// The request id the app and the answer get: the client's own only from a trusted peer and
/// only when valid, a new one otherwise.
///
/// Marked sensitive, which HTTP/2's HPACK sends as a literal never indexed: a value new on
/// every answer would otherwise be added to the connection's header table each time, pushing
/// out the lines that do repeat (`server`, `content-type`, `date`) and making every later
/// answer compare against a chain of dead ids. HTTP/1 ignores the mark.
pub fn request_id(sent: Option<&HeaderValue>, trusted: bool) -> HeaderValue {
    let mut id = match sent {
        Some(v) if trusted && is_valid_request_id(v.as_bytes()) => v.clone(),
        _ => new_request_id(),
    };
    id.set_sensitive(true);
    id
}

/// `X-Forwarded-For` for the app: the trusted peer's chain (every header sent, in order,
/// joined with `, `) with the peer appended; only the peer otherwise.
pub fn forwarded_for<'v>(
    sent: impl Iterator<Item = &'v HeaderValue>,
    trusted: bool,
    peer: IpAddr,
) -> HeaderValue {
    let mut out = Vec::with_capacity(48);
    if trusted {
        for v in sent {
            let v = trim(v.as_bytes());
            if !v.is_empty() {
                out.extend_from_slice(v);
                out.extend_from_slice(b", ");
            }
        }
    }
    push_ip(&mut out, peer.to_canonical());
    // Built from header values and an address: always valid; the fallback is never taken.
    HeaderValue::from_maybe_shared(Bytes::from(out))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The client's address for the access log: the peer itself, or behind trusted proxies the
/// rightmost address of the chain that is not one of them (what nginx's realip module gives).
/// An entry that is no address ends the walk: nothing left of it can be believed.
pub fn client_address<'v>(
    sent: impl DoubleEndedIterator<Item = &'v HeaderValue>,
    trusted: &TrustedProxies,
    peer: IpAddr,
) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return peer;
    }
    let mut client = peer;
    for header in sent.rev() {
        for entry in header.as_bytes().rsplit(|b| *b == b',') {
            let entry = trim(entry);
            if entry.is_empty() {
                continue;
            }
            let Some(ip) = std::str::from_utf8(entry)
                .ok()
                .and_then(|s| s.parse::<IpAddr>().ok())
            else {
                return client;
            };
            client = ip.to_canonical();
            if !trusted.contains(client) {
                return client;
            }
        }
    }
    client
}

/// What the proxy knows of one request's caller, settled before any answer is written.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The TCP peer; `None` only on a listener without an IP address.
    pub peer: Option<IpAddr>,
    pub trusted: bool,
    /// The listener speaks TLS.
    pub tls: bool,
    pub request_id: HeaderValue,
}

impl Caller {
    pub fn new(
        peer: Option<IpAddr>,
        tls: bool,
        sent_id: Option<&HeaderValue>,
        trusted: &TrustedProxies,
    ) -> Caller {
        let trusted = !trusted.is_empty() && peer.is_some_and(|ip| trusted.contains(ip));
        Caller {
            peer,
            trusted,
            tls,
            request_id: request_id(sent_id, trusted),
        }
    }

    /// What the app's copy of the request gets under the forwarding names (see
    /// [`crate::proxy::app_request::rebuild`], which writes it).
    pub fn forwarding(&self, req: &RequestHeader) -> Forwarding {
        let for_ = match self.peer {
            Some(peer) => Edit::Set(forwarded_for(
                req.headers.get_all(&X_FORWARDED_FOR).iter(),
                self.trusted,
                peer,
            )),
            None if !self.trusted => Edit::Remove,
            None => Edit::Keep,
        };
        let proto = if self.trusted && req.headers.contains_key(&X_FORWARDED_PROTO) {
            Edit::Keep
        } else {
            Edit::Set(HeaderValue::from_static(if self.tls {
                "https"
            } else {
                "http"
            }))
        };
        let host = if self.trusted && req.headers.contains_key(&X_FORWARDED_HOST) {
            Edit::Keep
        } else {
            let host = req.headers.get(http::header::HOST).cloned().or_else(|| {
                let authority = req.uri.authority()?;
                HeaderValue::from_str(authority.as_str()).ok()
            });
            host.map_or(Edit::Remove, Edit::Set)
        };
        Forwarding {
            for_,
            proto,
            host,
            request_id: self.request_id.clone(),
        }
    }
}

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What happens to one forwarding header of the client's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// What the (trusted) client sent stays.
    Keep,
    Set(HeaderValue),
    Remove,
}

/// The forwarding headers of the app's copy of one request.
#[derive(Debug, Clone)]
pub struct Forwarding {
    pub for_: Edit,
    pub proto: Edit,
    pub host: Edit,
    /// Always the proxy's choice (see [`request_id`]).
    pub request_id: HeaderValue,
}

impl Forwarding {
    /// Whether the client's header `name` gives way to the proxy's value (or to none).
    pub fn replaces(&self, name: &HeaderName) -> bool {
        let edit = if name == X_FORWARDED_FOR {
            &self.for_
        } else if name == X_FORWARDED_PROTO {
            &self.proto
        } else if name == X_FORWARDED_HOST {
            &self.host
        } else {
            return name == X_REQUEST_ID;
        };
        *edit != Edit::Keep
    }

    /// The proxy's values, to add after the client's headers.
    pub fn values(&self) -> impl Iterator<Item = (HeaderName, &HeaderValue)> {
        fn set(name: HeaderName, edit: &Edit) -> Option<(HeaderName, &HeaderValue)> {
            match edit {
                Edit::Set(value) => Some((name, value)),
                Edit::Keep | Edit::Remove => None,
            }
        }
        [
            set(X_FORWARDED_FOR, &self.for_),
            set(X_FORWARDED_PROTO, &self.proto),
            set(X_FORWARDED_HOST, &self.host),
            Some((X_REQUEST_ID, &self.request_id)),
        ]
        .into_iter()
        .flatten()
    }
}

/// Appends `ip` as text: IPv4 by hand (the `fmt` machinery was a tenth of the app request's
/// cost), IPv6 through `Display`.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(_) => {
            let _ = write!(out, "{ip}");
        }
    }
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::app_request::{AppEdits, rebuild};

    /// The app's copy of `req` with only the forwarding headers of `caller` applied.
    fn forwarded(caller: &Caller, mut req: RequestHeader) -> RequestHeader {
        let edits = AppEdits {
            caller: Some(caller),
            ..AppEdits::default()
        };
        rebuild(&mut req, &edits).unwrap();
        req
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn cidr_parsing_by_table() {
        let ok = [
            ("10.0.0.0/8", "10.0.0.0", 8),
            ("127.0.0.1/32", "127.0.0.1", 32),
            ("127.0.0.1", "127.0.0.1", 32),
            ("0.0.0.0/0", "0.0.0.0", 0),
            ("2001:db8::/32", "2001:db8::", 32),
            ("::1", "::1", 128),
            ("::/0", "::", 0),
            ("fd00::/8", "fd00::", 8),
        ];
        for (text, network, prefix) in ok {
            let c = Cidr::parse(text).unwrap();
            assert_eq!((c.network, c.prefix), (ip(network), prefix), "{text}");
        }
        let bad = [
            ("10.0.0.0/33", "0 to 32"),
            ("::/129", "0 to 128"),
            ("10.0.0.0/", "prefix length"),
            ("10.0.0.0/+8", "prefix length"),
            ("10.0.0.0/08", "prefix length"),
            ("10.0.0.0/8/8", "prefix length"),
            ("10.0.0.1/8", "write `10.0.0.0/8`"),
            ("2001:db8::1/32", "write `2001:db8::/32`"),
            ("localhost", "not an IPv4 or IPv6"),
            ("10.0.0", "not an IPv4 or IPv6"),
            ("", "not an IPv4 or IPv6"),
            ("[::1]", "not an IPv4 or IPv6"),
            (" 10.0.0.0/8", "not an IPv4 or IPv6"),
        ];
        for (text, needle) in bad {
            let err = Cidr::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn cidr_matching_by_table() {
        let cases = [
            ("10.0.0.0/8", "10.255.1.2", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("127.0.0.1/32", "127.0.0.1", true),
            ("127.0.0.1/32", "127.0.0.2", false),
            ("192.168.1.128/25", "192.168.1.200", true),
            ("192.168.1.128/25", "192.168.1.127", false),
            ("0.0.0.0/0", "203.0.113.9", true),
            ("0.0.0.0/0", "::1", false),
            ("10.0.0.0/8", "::ffff:10.1.2.3", true),
            ("::/0", "10.1.2.3", false),
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("::1", "::1", true),
            ("::1", "127.0.0.1", false),
        ];
        for (cidr, addr, want) in cases {
            assert_eq!(
                Cidr::parse(cidr).unwrap().contains(ip(addr)),
                want,
                "{cidr} {addr}"
            );
        }
        assert!(!TrustedProxies::default().contains(ip("127.0.0.1")));
    }

    #[test]
    fn request_ids_by_table() {
        let long = "a".repeat(128);
        let too_long = "a".repeat(129);
        for (id, valid) in [
            ("3f2a9c1e-7b4d-4e8a-9f00-1234567890ab", true),
            ("01HZX3V5Q8M2N4P6R8T0W2Y4A6", true),
            ("trace.span_1-2", true),
            (long.as_str(), true),
            (too_long.as_str(), false),
            ("", false),
            ("a b", false),
            ("a,b", false),
            ("a\"b", false),
            ("id=1", false),
            ("über", false),
        ] {
            assert_eq!(is_valid_request_id(id.as_bytes()), valid, "{id:?}");
        }
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert_eq!(id.len(), 32);
            assert!(id.as_bytes().iter().all(|c| c.is_ascii_hexdigit()));
            assert!(is_valid_request_id(id.as_bytes()));
        }
        let sent = hv("from-the-edge-1");
        assert_eq!(request_id(Some(&sent), true), sent);
        assert_ne!(request_id(Some(&sent), false), sent);
        let bad = hv("bad id");
        assert_ne!(request_id(Some(&bad), true), bad);
        assert_eq!(request_id(None, true).len(), 32);
        for id in [
            request_id(Some(&sent), true),
            request_id(Some(&sent), false),
            request_id(None, true),
        ] {
            assert!(id.is_sensitive(), "{id:?} would enter the HPACK table");
        }
    }

    #[test]
    fn forwarded_for_by_table() {
        let cases: &[(&[&str], bool, &str, &str)] = &[
            (&[], false, "203.0.113.9", "203.0.113.9"),
            (&["1.2.3.4"], false, "203.0.113.9", "203.0.113.9"),
            (&["1.2.3.4"], true, "10.0.0.2", "1.2.3.4, 10.0.0.2"),
            (
                &["1.2.3.4, 5.6.7.8", " 9.9.9.9 "],
                true,
                "10.0.0.2",
                "1.2.3.4, 5.6.7.8, 9.9.9.9, 10.0.0.2",
            ),
            (&[""], true, "10.0.0.2", "10.0.0.2"),
            (&[], true, "::1", "::1"),
            (&[], false, "::ffff:10.0.0.2", "10.0.0.2"),
        ];
        for (sent, trusted, peer, want) in cases {
            let sent: Vec<HeaderValue> = sent.iter().map(|s| hv(s)).collect();
            let got = forwarded_for(sent.iter(), *trusted, ip(peer));
            assert_eq!(got, *want, "{sent:?} {trusted}");
        }
    }

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    fn got(req: &RequestHeader, name: &str) -> Vec<String> {
        req.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn forwarding_headers_by_table() {
        let trusted = TrustedProxies(vec![Cidr::parse("10.0.0.0/8").unwrap()]);
        let spoofed: &[(&str, &str)] = &[
            ("host", "app.example"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "7.7.7.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("x-request-id", "chosen-by-client"),
        ];
        // (peer, tls, XFF, Proto, Host, request id kept)
        let cases: &[(&str, bool, &str, &str, &str, bool)] = &[
            (
                "203.0.113.9",
                false,
                "203.0.113.9",
                "http",
                "app.example",
                false,
            ),
            (
                "203.0.113.9",
                true,
                "203.0.113.9",
                "https",
                "app.example",
                false,
            ),
            (
                "10.1.2.3",
                false,
                "6.6.6.6, 7.7.7.7, 10.1.2.3",
                "https",
                "evil.example",
                true,
            ),
        ];
        for &(peer, tls, xff, proto, host, kept) in cases {
            let caller = Caller::new(Some(ip(peer)), tls, Some(&hv("chosen-by-client")), &trusted);
            let req = forwarded(&caller, request(spoofed));
            assert_eq!(got(&req, "x-forwarded-for"), [xff], "{peer}");
            assert_eq!(got(&req, "x-forwarded-proto"), [proto], "{peer}");
            assert_eq!(got(&req, "x-forwarded-host"), [host], "{peer}");
            let id = got(&req, "x-request-id");
            assert_eq!(id.len(), 1);
            assert_eq!(id[0] == "chosen-by-client", kept, "{peer}");
            assert_eq!(id[0], caller.request_id.to_str().unwrap());
        }
        // A trusted peer that sent nothing: the proxy's own values.
        let caller = Caller::new(Some(ip("10.0.0.1")), true, None, &trusted);
        let req = forwarded(&caller, request(&[("host", "app.example")]));
        assert_eq!(got(&req, "x-forwarded-for"), ["10.0.0.1"]);
        assert_eq!(got(&req, "x-forwarded-proto"), ["https"]);
        assert_eq!(got(&req, "x-forwarded-host"), ["app.example"]);
        assert_eq!(caller.request_id.len(), 32);
        // No Host at all: no X-Forwarded-Host either, not the client's.
        let caller = Caller::new(Some(ip("203.0.113.9")), false, None, &trusted);
        let req = forwarded(&caller, request(&[("x-forwarded-host", "evil.example")]));
        assert!(got(&req, "x-forwarded-host").is_empty());
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for text in [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.100.255",
            "203.0.113.9",
            "99.9.10.100",
            "::1",
            "2001:db8::7",
        ] {
            let mut out = Vec::new();
            push_ip(&mut out, ip(text));
            assert_eq!(String::from_utf8(out).unwrap(), ip(text).to_string());
        }
    }

    #[test]
    fn client_address_by_table() {
        let trusted = TrustedProxies(vec![
            Cidr::parse("10.0.0.0/8").unwrap(),
            Cidr::parse("127.0.0.1").unwrap(),
        ]);
        let cases: &[(&[&str], &str, &str)] = &[
            (&["1.2.3.4"], "203.0.113.9", "203.0.113.9"),
            (&["1.2.3.4"], "127.0.0.1", "1.2.3.4"),
            (&["6.6.6.6, 1.2.3.4, 10.0.0.7"], "127.0.0.1", "1.2.3.4"),
            (&["6.6.6.6", "1.2.3.4, 10.0.0.7"], "127.0.0.1", "1.2.3.4"),
            (&["10.0.0.8, 10.0.0.7"], "127.0.0.1", "10.0.0.8"),
            (&["6.6.6.6, garbage, 10.0.0.7"], "127.0.0.1", "10.0.0.7"),
            (&[], "127.0.0.1", "127.0.0.1"),
            (&["::ffff:1.2.3.4"], "127.0.0.1", "1.2.3.4"),
        ];
        for (sent, peer, want) in cases {
            let sent: Vec<HeaderValue> = sent.iter().map(|s| hv(s)).collect();
            let got = client_address(sent.iter(), &trusted, ip(peer));
            assert_eq!(got, ip(want), "{sent:?} via {peer}");
        }
    }
}
