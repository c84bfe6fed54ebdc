//! `downstream`: buffer and cookie sizes, client timeouts, trusted proxies.

use std::time::Duration;

use super::Checker;
use crate::config::file::DownstreamFile;
use crate::proxy::forwarded::{Cidr, TrustedProxies};

/// The `downstream` section as checked.
pub(super) struct Downstream {
    pub read_buffer_bytes: usize,
    pub max_cookie_bytes: usize,
    pub keepalive_secs: u64,
    pub header_timeout: Duration,
    pub trusted_proxies: TrustedProxies,
}

pub(super) fn check_downstream(c: &mut Checker, d: &DownstreamFile) -> Downstream {
    let read_buffer_bytes = d.read_buffer_bytes;
    if !(1024..=1024 * 1024).contains(&read_buffer_bytes) {
        c.problem(
            "downstream.read_buffer_bytes",
            "must be between 1024 and 1048576",
        );
    }
    let max_cookie_bytes = d.max_cookie_bytes;
    if !(1024..=1024 * 1024).contains(&max_cookie_bytes) {
        c.problem(
            "downstream.max_cookie_bytes",
            "must be between 1024 and 1048576",
        );
    }
    let keepalive_secs = d.keepalive_timeout_secs;
    if keepalive_secs > MAX_DOWNSTREAM_SECS {
        c.problem(
            "downstream.keepalive_timeout_secs",
            format!("must be at most {MAX_DOWNSTREAM_SECS} seconds (0 turns keep-alive off)"),
        );
    }
    let header_secs = d.header_timeout_secs;
    if !(1..=MAX_DOWNSTREAM_SECS).contains(&header_secs) {
        c.problem(
            "downstream.header_timeout_secs",
            format!("must be between 1 and {MAX_DOWNSTREAM_SECS} seconds"),
        );
    }
    Downstream {
        read_buffer_bytes,
        max_cookie_bytes,
        keepalive_secs,
        header_timeout: Duration::from_secs(header_secs),
        trusted_proxies: check_trusted_proxies(c, &d.trusted_proxies),
    }
}

/// `downstream.*_timeout_secs`: an hour at most (nginx has no upper bound; more only holds sockets).
const MAX_DOWNSTREAM_SECS: u64 = 3_600;

fn check_trusted_proxies(c: &mut Checker, entries: &[String]) -> TrustedProxies {
    let mut cidrs = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        match Cidr::parse(entry) {
            Ok(cidr) => cidrs.push(cidr),
            Err(e) => c.problem(format!("downstream.trusted_proxies[{i}]"), e),
        }
    }
    TrustedProxies(cidrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::build;
    use crate::config::file::parse;
    use crate::testkit::SECRETS;
    use crate::testkit::config::{env_with, outside, problems};

    #[test]
    fn downstream_timeouts_are_checked_with_their_paths() {
        let cases: [(&str, &[&str]); 5] = [
            ("", &[]),
            (
                "downstream: {keepalive_timeout_secs: 0, header_timeout_secs: 1}",
                &[],
            ),
            (
                "downstream: {keepalive_timeout_secs: 3601}",
                &["downstream.keepalive_timeout_secs"],
            ),
            (
                "downstream: {header_timeout_secs: 0}",
                &["downstream.header_timeout_secs"],
            ),
            (
                "downstream: {header_timeout_secs: 86400}",
                &["downstream.header_timeout_secs"],
            ),
        ];
        for (yaml, want) in cases {
            let got = problems(&format!("listen: ['127.0.0.1:8080']\n{yaml}"), SECRETS);
            let keys: Vec<&str> = got.iter().map(|p| p.split(':').next().unwrap()).collect();
            assert_eq!(keys, want, "{yaml}: {got:?}");
        }
        let env = env_with(SECRETS);
        let rt = build(parse("{}").unwrap(), outside(&env)).unwrap().runtime;
        assert_eq!(
            (rt.keepalive_secs, rt.header_timeout),
            (75, Duration::from_secs(60))
        );
    }

    #[test]
    fn trusted_proxies_are_checked_entry_by_entry() {
        let got = problems(
            "downstream: {trusted_proxies: ['10.0.0.0/8', '10.0.0.1/8', '::1', 'proxy.local', '::/129']}",
            SECRETS,
        );
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(
            got[0].starts_with("downstream.trusted_proxies[1]") && got[0].contains("10.0.0.0/8"),
            "{got:?}"
        );
        assert!(
            got[1].starts_with("downstream.trusted_proxies[3]"),
            "{got:?}"
        );
        assert!(
            got[2].starts_with("downstream.trusted_proxies[4]"),
            "{got:?}"
        );
        let env = env_with(SECRETS);
        let loaded = build(
            parse("downstream: {trusted_proxies: ['127.0.0.1/32', 'fd00::/8']}").unwrap(),
            outside(&env),
        )
        .ok()
        .unwrap();
        let trusted = &loaded.runtime.trusted_proxies;
        assert!(trusted.contains("127.0.0.1".parse().unwrap()));
        assert!(trusted.contains("fd00::5".parse().unwrap()));
        assert!(!trusted.contains("127.0.0.2".parse().unwrap()));
    }
}
