//! `upstream` (the app's instances) and `upstream_headers` (identity to the app).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use http::HeaderName;
use pingora::upstreams::peer::HttpPeer;

use super::{Checker, Entry, check_timeout, one_or_list, resolve};
use crate::config::file::{DEFAULT_APP_ADDRESS, UpstreamFile};
use crate::config::{Resolve, Upstream};
use crate::session::identity::{IdentityHeaders, is_reserved};

const MAX_HEALTH_CHECK_SECS: u64 = 3600;

/// The app's instances: `upstream.address` or `upstream.addresses` (never both), each resolved
/// once and given the shared TLS, SNI and timeouts.
pub(super) fn check_upstream(
    c: &mut Checker,
    u: &UpstreamFile,
    resolver: Resolve<'_>,
) -> Option<Upstream> {
    let mut c = c.section();
    let connect = check_timeout(&mut c, "upstream.connect_timeout_ms", u.connect_timeout_ms);
    let read = check_timeout(&mut c, "upstream.read_timeout_ms", u.read_timeout_ms);
    let write = check_timeout(&mut c, "upstream.write_timeout_ms", u.write_timeout_ms);
    if !(1..=MAX_HEALTH_CHECK_SECS).contains(&u.health_check_secs) {
        c.problem(
            "upstream.health_check_secs",
            format!("must be between 1 and {MAX_HEALTH_CHECK_SECS} seconds"),
        );
    }
    let entries = one_or_list(
        &mut c,
        (
            "upstream.address",
            u.address.as_deref(),
            DEFAULT_APP_ADDRESS,
        ),
        ("upstream.addresses", u.addresses.as_deref()),
        (
            "upstream.address is also set: give one address or a list, not both",
            "needs at least one host:port",
        ),
    )?;
    let mut peers: Vec<HttpPeer> = Vec::with_capacity(entries.len());
    // The key each peer came from, to name the first of two entries reaching one instance.
    let mut from: Vec<&str> = Vec::with_capacity(entries.len());
    for Entry {
        key,
        value: address,
    } in &entries
    {
        let Some(mut peer) = check_instance(&mut c, key, address, u, resolver) else {
            continue;
        };
        if let Some(i) = peers.iter().position(|p| p._address == peer._address) {
            c.problem(
                key,
                format!("`{address}` is the same instance as {}", from[i]),
            );
            continue;
        }
        from.push(key);
        peer.options.connection_timeout = Some(connect);
        peer.options.total_connection_timeout = Some(connect);
        peer.options.read_timeout = Some(read);
        peer.options.write_timeout = Some(write);
        peer.options.idle_timeout = Some(Duration::from_secs(u.idle_timeout_secs));
        peers.push(peer);
    }
    c.done(Upstream {
        peers,
        health_check: Duration::from_secs(u.health_check_secs),
    })
}

/// One instance: `host:port`, resolved; SNI defaults to its host.
pub(super) fn check_instance(
    c: &mut Checker,
    key: &str,
    address: &str,
    u: &UpstreamFile,
    resolver: Resolve<'_>,
) -> Option<HttpPeer> {
    let host = match split_host_port(address) {
        Some((host, _)) if !address.contains("://") => host,
        _ => {
            c.problem(key, format!("`{address}` must be host:port (no scheme)"));
            return None;
        }
    };
    let addr = resolve(c, resolver, key, address)?;
    let sni = if u.sni.is_empty() {
        host
    } else {
        u.sni.clone()
    };
    Some(HttpPeer::new(addr, u.tls, sni))
}

fn split_host_port(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_owned(), port.parse().ok()?))
}

/// Each claim names one header; a header is named once, and never one that frames the request.
pub(super) fn check_identity(c: &mut Checker, map: &BTreeMap<String, String>) -> IdentityHeaders {
    let mut seen = HashSet::new();
    let mut identity = IdentityHeaders::default();
    for (claim, header) in map {
        let key = format!("upstream_headers.{claim}");
        match HeaderName::from_bytes(header.as_bytes()) {
            Err(_) => c.problem(key, format!("`{header}` is not a header name")),
            Ok(name) if is_reserved(&name) => {
                c.problem(key, format!("`{header}` cannot carry identity"))
            }
            Ok(name) if !seen.insert(name.clone()) => {
                c.problem(key, format!("`{header}` is mapped from two claims"))
            }
            Ok(name) => identity.map.push((claim.clone(), name)),
        }
    }
    identity
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::build;
    use crate::config::file::parse;
    use crate::testkit::SECRETS;
    use std::net::SocketAddr;

    use crate::config::Outside;
    use crate::testkit::config::{env_with, outside};

    /// `appN.internal` resolves to 10.0.0.N, IP addresses to themselves; anything else fails.
    fn fake_resolve(host_port: &str) -> std::io::Result<Vec<SocketAddr>> {
        if let Ok(addr) = host_port.parse() {
            return Ok(vec![addr]);
        }
        let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, "0"));
        match host
            .strip_prefix("app")
            .and_then(|h| h.strip_suffix(".internal"))
        {
            Some(n) => Ok(vec![format!("10.0.0.{n}:{port}").parse().unwrap()]),
            None => Err(std::io::Error::other("no such host")),
        }
    }

    fn build_upstream(yaml: &str) -> Result<Upstream, Vec<String>> {
        let env = env_with(SECRETS);
        let outside = Outside {
            env: &env,
            resolve: &fake_resolve,
        };
        build(parse(yaml).expect("parses"), outside)
            .map(|loaded| loaded.runtime.upstream)
            .map_err(|p| p.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn one_app_address_or_a_list_share_tls_sni_and_timeouts() {
        let one = build_upstream("upstream: {address: 'app1.internal:3000'}").unwrap();
        assert_eq!(one.peers.len(), 1);
        assert_eq!(one.peers[0]._address.to_string(), "10.0.0.1:3000");
        assert_eq!(one.peers[0].sni, "app1.internal");
        assert_eq!(one.health_check, Duration::from_secs(5));

        let yaml = "upstream: {addresses: ['app1.internal:3000', 'app2.internal:3001'], tls: true, read_timeout_ms: 700, health_check_secs: 2}";
        let many = build_upstream(yaml).unwrap();
        let addresses: Vec<String> = many.peers.iter().map(|p| p._address.to_string()).collect();
        assert_eq!(addresses, ["10.0.0.1:3000", "10.0.0.2:3001"]);
        let snis: Vec<&str> = many.peers.iter().map(|p| p.sni.as_str()).collect();
        assert_eq!(snis, ["app1.internal", "app2.internal"]);
        for peer in &many.peers {
            assert!(peer.is_tls());
            assert_eq!(peer.options.read_timeout, Some(Duration::from_millis(700)));
            assert_eq!(
                peer.options.connection_timeout,
                Some(Duration::from_millis(2000))
            );
        }
        assert_eq!(many.health_check, Duration::from_secs(2));

        let yaml =
            "upstream: {addresses: ['app1.internal:3000', 'app2.internal:3000'], sni: app.example}";
        let named = build_upstream(yaml).unwrap();
        assert!(named.peers.iter().all(|p| p.sni == "app.example"));
    }

    #[test]
    fn app_address_defaults_to_the_seeds_next_server() {
        let env = env_with(SECRETS);
        let rt = build(parse("{}").unwrap(), outside(&env))
            .unwrap_or_else(|p| panic!("{p:?}"))
            .runtime;
        assert_eq!(rt.upstream.peers.len(), 1);
        assert_eq!(rt.upstream.peers[0]._address.to_string(), "127.0.0.1:3000");
    }

    #[test]
    fn app_address_problems_name_the_key_and_the_entry() {
        let keys = |yaml: &str| -> Vec<String> {
            build_upstream(yaml)
                .err()
                .unwrap_or_default()
                .iter()
                .map(|p| p.split(": ").next().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            keys("upstream: {address: 'app1.internal:1', addresses: ['app2.internal:1']}"),
            ["upstream.addresses"]
        );
        assert_eq!(keys("upstream: {addresses: []}"), ["upstream.addresses"]);
        let yaml = "upstream: {addresses: ['app1.internal:1', 'http://app2.internal:1', 'nowhere:80', 'app1.internal:1', 'app3.internal']}";
        let got = build_upstream(yaml).err().expect("refused");
        assert_eq!(
            keys(yaml),
            [
                "upstream.addresses[1]",
                "upstream.addresses[2]",
                "upstream.addresses[3]",
                "upstream.addresses[4]"
            ],
            "{got:?}"
        );
        assert!(got[1].contains("cannot resolve `nowhere:80`"), "{got:?}");
        assert!(
            got[2].contains("same instance as upstream.addresses[0]"),
            "{got:?}"
        );
        assert_eq!(keys("upstream: {address: nowhere:1}"), ["upstream.address"]);
        for secs in [0, 3601] {
            assert_eq!(
                keys(&format!(
                    "upstream: {{address: 'app1.internal:1', health_check_secs: {secs}}}"
                )),
                ["upstream.health_check_secs"]
            );
        }
    }
}
