//! `listen` (addresses, TLS pairs) and `admin.listen`.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::Checker;
use crate::config::file::ListenFile;
use crate::config::{Listener, TlsFiles};

pub(super) fn check_listen(c: &mut Checker, listen: Vec<ListenFile>) -> Vec<Listener> {
    if listen.is_empty() {
        c.problem("listen", "needs at least one address");
    }
    let mut seen = HashSet::new();
    let mut checked = Vec::with_capacity(listen.len());
    for (i, entry) in listen.into_iter().enumerate() {
        let key = format!("listen[{i}]");
        let (addr, tls) = entry.into_parts();
        match addr.parse::<SocketAddr>() {
            Err(_) => c.problem(
                &key,
                format!("`{addr}` is not an IP:port address (e.g. 0.0.0.0:8080)"),
            ),
            Ok(sa) if sa.port() == 0 => c.problem(&key, "port 0 is not a fixed address"),
            Ok(sa) if !seen.insert(sa) => c.problem(&key, format!("`{addr}` is listed twice")),
            Ok(_) => {}
        }
        let tls = tls.map(|t| {
            if let Err(message) = check_certificate(&t.cert, &t.key) {
                c.problem(format!("{key}.tls"), message);
            }
            TlsFiles {
                cert: t.cert,
                key: t.key,
            }
        });
        checked.push(Listener { address: addr, tls });
    }
    checked
}

/// The certificate and key load and belong together, as the listener will need them: checked
/// here so a bad pair is refused with its key, not found by Pingora at start.
pub(super) fn check_certificate(cert: &str, key: &str) -> Result<(), String> {
    use pingora::tls::{ServerConfig, install_default_crypto_provider, load_certs_and_key_files};
    install_default_crypto_provider();
    let (certs, key_der) = match load_certs_and_key_files(cert, key) {
        Ok(Some(pair)) => pair,
        Ok(None) => {
            return Err(format!(
                "no certificate in `{cert}` or no private key in `{key}`"
            ));
        }
        Err(e) => return Err(format!("cannot read `{cert}` / `{key}`: {e}")),
    };
    ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map(|_| ())
        .map_err(|e| format!("`{cert}` and `{key}` do not make a usable pair: {e}"))
}

/// The admin listener is off unless set, and never overlaps an address of the proxy's.
pub(super) fn check_admin(
    c: &mut Checker,
    admin: Option<String>,
    listen: &[Listener],
) -> Option<String> {
    let addr = admin?;
    match addr.parse::<SocketAddr>() {
        Err(_) => c.problem(
            "admin.listen",
            format!("`{addr}` is not an IP:port address (e.g. 127.0.0.1:9901)"),
        ),
        Ok(sa) if sa.port() == 0 => c.problem("admin.listen", "port 0 is not a fixed address"),
        Ok(sa)
            if listen
                .iter()
                .filter_map(|l| l.address.parse::<SocketAddr>().ok())
                .any(|l| overlap(l, sa)) =>
        {
            c.problem(
                "admin.listen",
                format!(
                    "`{addr}` overlaps an address of `listen` (same port, same or wildcard IP)"
                ),
            )
        }
        Ok(_) => {}
    }
    Some(addr)
}

/// Two listeners that cannot both be bound: the same port on the same IP, or on a wildcard
/// (`0.0.0.0`, `::`) and any IP. Before, `127.0.0.1:P` beside `0.0.0.0:P` passed `-t`, and at
/// start one service panicked after its bind retries (or the admin one took the proxy's port).
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
